//! wgpu kernel throughput: matmul GFLOP/s (linear layer shapes, x · Wᵀ) and frozen-weight
//! "dequant" GB/s (quant_linear at N = 1, which streams the whole weight once).
//! Run: `LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1 cargo bench --bench wgpu_ops` (prints; no harness).
//! Frozen weights stay packed on the device and are decoded in the kernel (quant_linear.wgsl); the
//! GB/s counts the packed bytes the kernel streams. The f32 row is the dense matmul path for
//! comparison; the N = 256 rows are training-shaped (x · Wᵀ over a 256-token micro-batch), in GFLOP/s.
use loraforge::backend::cpu::matmul::MatmulDims;
use loraforge::backend::wgpu::WgpuBackend;
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
    println!("device: {}", g.name());
    let mut rng = Rng::new(0);
    let mut rand = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
    let scale: usize = std::env::var("WGPU_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for &(m, n, k) in &[(64usize, 64usize, 64usize), (256, 256, 256), (128 * scale, 576, 576), (256 * scale, 1536, 576)]
    {
        let d = MatmulDims::linear(m, n, k);
        let (a, b) = (g.upload(&rand(m * k)).unwrap(), g.upload(&rand(n * k)).unwrap());
        let reps = 3;
        let s = time(&g, reps, || {
            let _ = g.matmul(&a, &b, None, d).unwrap();
        });
        println!("matmul x·Wᵀ m={m:5} n={n:5} k={k:5}: {:8.3} ms  {:8.2} GFLOP/s", s * 1e3, d.flops() / s / 1e9);
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
        let w = g.upload_quant(q).unwrap();
        let x1 = g.upload(&rand(cols)).unwrap();
        let s1 = time(&g, 5, || {
            let _ = g.quant_linear(&x1, &w, None, 1).unwrap();
        });
        let n = 256 * scale;
        let xn = g.upload(&rand(n * cols)).unwrap();
        let sn = time(&g, 2, || {
            let _ = g.quant_linear(&xn, &w, None, n).unwrap();
        });
        println!(
            "quant_linear {name:6} ({rows}x{cols}, packed {}): N=1 {:8.3} ms {:7.2} GB/s | N={n} {:8.2} ms {:7.2} GFLOP/s",
            w.is_packed(),
            s1 * 1e3,
            bytes as f64 / s1 / 1e9,
            sn * 1e3,
            2.0 * (n * rows * cols) as f64 / sn / 1e9
        );
    }
}
