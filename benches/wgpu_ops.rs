//! wgpu kernel throughput: matmul GFLOP/s (linear layer shapes, x · Wᵀ) and frozen-weight
//! "dequant" GB/s (quant_linear at N = 1, which streams the whole weight once).
//! Run: `LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1 cargo bench --bench wgpu_ops` (prints; no harness).
//! Note: frozen weights are decoded to f32 on upload (see src/backend/wgpu/ops.rs), so the GB/s
//! is of f32 weight bytes read.
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
    for &(rows, cols) in &[(576usize, 576usize), (1536, 576)] {
        let q: HostQuant = Arc::new(F32Matrix { data: rand(rows * cols), rows, cols });
        let w = g.upload_quant(q).unwrap();
        let x = g.upload(&rand(cols)).unwrap();
        let s = time(&g, 5, || {
            let _ = g.quant_linear(&x, &w, None, 1).unwrap();
        });
        println!(
            "quant_linear N=1 ({rows}x{cols} f32 weight): {:8.3} ms  {:8.2} GB/s",
            s * 1e3,
            (rows * cols * 4) as f64 / s / 1e9
        );
    }
}
