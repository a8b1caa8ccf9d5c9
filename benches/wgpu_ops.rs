//! wgpu kernel throughput: matmul GFLOP/s (linear layer shapes, x · Wᵀ) and frozen-weight
//! "dequant" GB/s (quant_linear at N = 1, which streams the whole weight once).
//! Run: `LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1 cargo bench --bench wgpu_ops` (prints; no harness).
//! Frozen weights stay packed on the device and are decoded in the kernel (quant_linear.wgsl); the
//! GB/s counts the packed bytes the kernel streams. The f32 row is the dense matmul path for
//! comparison; the N = 256 rows are training-shaped (x · Wᵀ over a 256-token micro-batch), in GFLOP/s.
//! Same run, same data: matmul with 16-byte loads (`main_vec4`) and with scalar loads (and on
//! cooperative matrices, matmul_coop.wgsl, where the adapter has them); the one-token
//! quant_linear (the gemv entry, a workgroup reduction per output) with and without subgroup
//! operations when the adapter has them, and the N-token one also on cooperative matrices
//! (quant_linear_coop.wgsl). Last, the host cost of one dispatch (2000 chained `scale`
//! launches on 256 elements, where the kernel is negligible) with the params ring and cached bind
//! groups and with a params buffer and bind group per dispatch: the overhead that bounds generation
//! tokens/s on a fast GPU. Then attention forward and backward (attention.wgsl,
//! attention_backward.wgsl) at training shapes, with the CPU backend's time on the same data.
//! `cargo bench --bench wgpu_ops -- attention` (or `matmul`, `dispatch`, `quant`) runs only those
//! sections.
use loraforge::backend::cpu::matmul::MatmulDims;
use loraforge::backend::wgpu::{WgpuBackend, WgpuOptions};
use loraforge::backend::{Backend, HostQuant};
use loraforge::quant::F32Matrix;
use loraforge::rng::Rng;
use std::sync::Arc;
use std::time::Instant;

fn time<F: FnMut()>(g: &WgpuBackend, reps: usize, mut f: F) -> f64 {
    f();
    g.sync().unwrap();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    g.sync().unwrap();
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let g = match WgpuBackend::new() {
        Ok(g) => g,
        Err(e) => {
            println!("SKIP: {e}");
            return;
        }
    };
    println!("device: {} (subgroups: {})", g.name(), g.uses_subgroups());
    let scalar = WgpuBackend::with_options(WgpuOptions { vec4_loads: false, ..Default::default() }).unwrap();
    let no_subgroups = if g.uses_subgroups() {
        Some(WgpuBackend::with_options(WgpuOptions { subgroups: false, ..Default::default() }).unwrap())
    } else {
        None
    };
    // Cooperative matrices where the adapter has them (matmul_coop.wgsl, opt-in).
    let coop = WgpuBackend::with_options(WgpuOptions { coop_matrix: true, ..Default::default() })
        .ok()
        .filter(|c| c.uses_coop_matrix());
    println!("cooperative-matrix matmul: {}", if coop.is_some() { "yes" } else { "not on this adapter" });
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|a| a == section);
    if run("attention") {
        attention(&g);
    }
    let mut rng = Rng::new(0);
    let mut rand = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
    let scale: usize = std::env::var("WGPU_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let matmuls: &[(usize, usize, usize)] =
        &[(64, 64, 64), (256, 256, 256), (128 * scale, 576, 576), (256 * scale, 1536, 576)];
    for &(m, n, k) in if run("matmul") { matmuls } else { &[] } {
        let d = MatmulDims::linear(m, n, k);
        let (a, b) = (rand(m * k), rand(n * k));
        let mut line = format!("matmul x·Wᵀ m={m:5} n={n:5} k={k:5}:");
        let mut backends = vec![("vec4 loads", &g), ("scalar loads", &scalar)];
        if let Some(c) = &coop {
            backends.push(("coop f16", c));
        }
        for (label, be) in backends {
            let (a, b) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
            let s = time(be, 3, || {
                let _ = be.matmul(&a, &b, None, d).unwrap();
            });
            line += &format!("  {label} {:8.3} ms {:6.2} GFLOP/s", s * 1e3, d.flops() / s / 1e9);
        }
        println!("{line}");
    }
    if run("dispatch") {
        dispatch_overhead();
    }
    if !run("quant") {
        return;
    }
    use loraforge::quant::ggml::{GgmlMatrix, GgmlType};
    use loraforge::quant::nf4::Nf4Matrix;
    let (rows, cols) = (1536usize, 1536usize);
    let w32 = rand(rows * cols);
    let formats: Vec<(&str, HostQuant)> = vec![
        ("f32", Arc::new(F32Matrix { data: w32.clone(), rows, cols })),
        ("q8_0", Arc::new(GgmlMatrix::quantize(GgmlType::Q8_0, rows, cols, &w32).unwrap())),
        ("q4_0", Arc::new(GgmlMatrix::quantize(GgmlType::Q4_0, rows, cols, &w32).unwrap())),
        ("q4_k", Arc::new(GgmlMatrix::quantize(GgmlType::Q4_K, rows, cols, &w32).unwrap())),
        ("q6_k", Arc::new(GgmlMatrix::quantize(GgmlType::Q6_K, rows, cols, &w32).unwrap())),
        ("nf4_dq", Arc::new(Nf4Matrix::quantize(&w32, rows, cols, 64, true).unwrap())),
    ];
    for (name, q) in formats {
        let bytes = q.storage_bytes();
        let q2 = q.clone();
        let w = g.upload_quant(q).unwrap();
        let x1_host = rand(cols);
        let x1 = g.upload(&x1_host).unwrap();
        let s1 = time(&g, 5, || {
            let _ = g.quant_linear(&x1, &w, None, 1).unwrap();
        });
        let n = 256 * scale;
        let xn = g.upload(&rand(n * cols)).unwrap();
        let sn = time(&g, 2, || {
            let _ = g.quant_linear(&xn, &w, None, n).unwrap();
        });
        let plain = no_subgroups.as_ref().map(|p| {
            let (w, x1) = (p.upload_quant(q2.clone()).unwrap(), p.upload(&x1_host).unwrap());
            let s = time(p, 5, || {
                let _ = p.quant_linear(&x1, &w, None, 1).unwrap();
            });
            format!(" (no subgroups {:8.3} ms)", s * 1e3)
        });
        let flops = 2.0 * (n * rows * cols) as f64;
        // The same N-token product on cooperative matrices (quant_linear_coop.wgsl).
        let on_coop = coop.as_ref().map(|c| {
            let (w, xn) = (c.upload_quant(q2.clone()).unwrap(), c.upload(&rand(n * cols)).unwrap());
            let s = time(c, 2, || {
                let _ = c.quant_linear(&xn, &w, None, n).unwrap();
            });
            format!(" | coop f16 {:8.2} ms {:7.2} GFLOP/s", s * 1e3, flops / s / 1e9)
        });
        println!(
            "quant_linear {name:6} ({rows}x{cols}, packed {}): N=1 {:8.3} ms {:7.2} GB/s{} | N={n} {:8.2} ms {:7.2} GFLOP/s{}",
            w.is_packed(),
            s1 * 1e3,
            bytes as f64 / s1 / 1e9,
            plain.unwrap_or_default(),
            sn * 1e3,
            flops / sn / 1e9,
            on_coop.unwrap_or_default()
        );
    }
}

/// Microseconds per dispatch of a chain of tiny launches in the two binding modes (WgpuOptions
/// `reuse_bindings`; the default is the ring on hardware adapters, per dispatch on software ones).
fn dispatch_overhead() {
    let mode = |reuse| WgpuBackend::with_options(WgpuOptions { reuse_bindings: Some(reuse), ..Default::default() });
    let (ring, fresh) = (mode(true).unwrap(), mode(false).unwrap());
    let mut line = "dispatch overhead (2000 x scale, 256 elements):".to_string();
    for (label, be) in
        [("params ring + cached bind groups", &ring), ("params buffer + bind group per dispatch", &fresh)]
    {
        let x0 = be.upload(&[1.0; 256]).unwrap();
        let s = time(be, 3, || {
            let mut x = be.scale(&x0, 1.0).unwrap();
            for _ in 0..1999 {
                x = be.scale(&x, 1.0).unwrap();
            }
        });
        line += &format!("  {label} {:6.1} us", s / 2000.0 * 1e6);
    }
    println!("{line}");
}

/// Attention forward (out + lse) and backward (dq, dk, dv) at SmolLM2's heads (9 / 3, D 64) and
/// Gemma 3 270M's (4 / 1, D 256), causal, one row of T tokens; and SmolLM2's with 8 packed
/// sequences of T / 8 (segment ids), where only the blocks of a sequence need visiting. GFLOP/s
/// counts 2 D flops per visible (i, j) pair per product: forward 4 D (q·k, p·v), backward 10 D
/// (q·k recomputed, do·v, dq, dk, dv; a kernel that recomputes more still gets credit for 10 D).
/// The CPU backend's time on the same data in the same run (one call each).
fn attention(g: &WgpuBackend) {
    use loraforge::backend::cpu::attention::AttnParams;
    use loraforge::backend::CpuBackend;
    let c = CpuBackend::new();
    let mut rng = Rng::new(5);
    let t: usize = std::env::var("WGPU_BENCH_ATTN_T").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    for (label, h, kv, d, packed) in [
        ("smollm2 9/3 x 64", 9, 3, 64, false),
        ("smollm2 packed 8 x T/8", 9, 3, 64, true),
        ("gemma3 4/1 x 256", 4, 1, 256, false),
    ] {
        let p = AttnParams {
            b: 1,
            t,
            h,
            kv_heads: kv,
            d,
            scale: 1.0 / (d as f32).sqrt(),
            causal: true,
            window: None,
            softcap: None,
        };
        let seg: Vec<u32> = (0..t).map(|i| (i / t.div_ceil(8)) as u32).collect();
        let seg = packed.then_some(&seg[..]);
        let pairs: f64 =
            (0..t).map(|i| (0..=i).filter(|&j| seg.is_none_or(|s| s[i] == s[j])).count() as f64).sum::<f64>()
                * h as f64;
        let mut rand = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
        let (q, k, v, dout) = (rand(t * h * d), rand(t * kv * d), rand(t * kv * d), rand(t * h * d));
        let mut line = format!("attention {label:24} T={t}:");
        for be in [Which::Gpu(g), Which::Cpu(&c)] {
            let (fwd, bwd) = match be {
                Which::Gpu(g) => {
                    let (q, k, v, dout) =
                        (g.upload(&q).unwrap(), g.upload(&k).unwrap(), g.upload(&v).unwrap(), g.upload(&dout).unwrap());
                    let (o, l) = g.attention(&q, &k, &v, seg, &p).unwrap();
                    let fwd = time(g, 3, || {
                        let _ = g.attention(&q, &k, &v, seg, &p).unwrap();
                    });
                    let bwd = time(g, 3, || {
                        let _ = g.attention_backward(&dout, &q, &k, &v, &o, &l, seg, &p).unwrap();
                    });
                    (fwd, bwd)
                }
                Which::Cpu(c) => {
                    let (q, k, v, dout) =
                        (c.upload(&q).unwrap(), c.upload(&k).unwrap(), c.upload(&v).unwrap(), c.upload(&dout).unwrap());
                    let (o, l) = c.attention(&q, &k, &v, seg, &p).unwrap();
                    let t0 = Instant::now();
                    let _ = c.attention(&q, &k, &v, seg, &p).unwrap();
                    let fwd = t0.elapsed().as_secs_f64();
                    let t0 = Instant::now();
                    let _ = c.attention_backward(&dout, &q, &k, &v, &o, &l, seg, &p).unwrap();
                    (fwd, t0.elapsed().as_secs_f64())
                }
            };
            line += &format!(
                "  {} fwd {:8.2} ms {:6.2} GFLOP/s, bwd {:8.2} ms {:6.2} GFLOP/s",
                be.label(),
                fwd * 1e3,
                4.0 * d as f64 * pairs / fwd / 1e9,
                bwd * 1e3,
                10.0 * d as f64 * pairs / bwd / 1e9
            );
        }
        println!("{line}");
    }
}

#[derive(Clone, Copy)]
enum Which<'a> {
    Gpu(&'a WgpuBackend),
    Cpu(&'a loraforge::backend::CpuBackend),
}

impl Which<'_> {
    fn label(&self) -> &'static str {
        match self {
            Which::Gpu(_) => "wgpu",
            Which::Cpu(_) => "cpu",
        }
    }
}
