//! Op benchmarks (harness = false: a plain `main` that prints one line per case; criterion is not a
//! dependency). Each case runs a few warm-up calls, then reports the median of N timed calls.
//!
//!   cargo bench --bench ops               # everything (about a minute on 2 cores)
//!   cargo bench --bench ops -- llama1b    # only cases whose name contains "llama1b"
//!
//! Groups:
//!   matmul/llama1b/*   Llama-3.2-1B layer (hidden 2048, FFN 8192, 8 KV heads x 64) on T = 512 tokens
//!   matmul/smollm2/*   SmolLM2-135M (hidden 576, FFN 1536, 3 KV heads x 64, vocab 49152), T = 512
//!   matmul/lora/*      LoRA rank-16 factors on the Llama-3.2-1B q_proj
//!   matmul/small/*     tiny problems: `matmul` (gemm) against a plain loop
//!   matmul/spec/*      the f64-accumulating spec against the fast path on one small shape
//! Per projection W (N, K): fwd  Y = X·W^T (M=T, N, K), the layer's forward;
//!                          dX   dX = dY·W   (M=T, N=K, K=N), no transpose;
//!                          dW   dW = dY^T·X (M=N, N=K, K=T), transposed A.

use loraforge::backend::cpu::matmul::{matmul, matmul_forward, MatmulDims};
use loraforge::rng::Rng;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Tokens in one micro-batch.
const T: usize = 512;
/// Time the timed runs of one case may take, so that the whole bench stays near a minute on 2 cores.
const CASE_BUDGET: Duration = Duration::from_millis(1200);
/// Bounds on the number of timed runs: at least 3 for a median, at most 25.
const MIN_RUNS: usize = 3;
const MAX_RUNS: usize = 25;
/// A timed sample repeats a tiny call until it lasts this long, so the timer's resolution is noise.
const MIN_SAMPLE: Duration = Duration::from_millis(2);

struct Bench {
    filter: Option<String>,
}

impl Bench {
    fn wants(&self, name: &str) -> bool {
        match &self.filter {
            Some(f) => name.contains(f.as_str()),
            None => true,
        }
    }

    /// Times `f` and prints name, shape, ms per call and GFLOP/s. Returns seconds per call.
    fn run(&self, name: &str, shape: &str, flops: f64, mut f: impl FnMut()) -> Option<f64> {
        if !self.wants(name) {
            return None;
        }
        // Warm-up (packing buffers, rayon threads, caches), then size a sample: double the calls
        // per sample until one sample lasts MIN_SAMPLE.
        let sample = |f: &mut dyn FnMut(), reps: usize| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed()
        };
        sample(&mut f, 2);
        let mut reps = 1;
        let mut once = sample(&mut f, reps);
        while once < MIN_SAMPLE {
            reps *= 2;
            once = sample(&mut f, reps);
        }
        let runs = ((CASE_BUDGET.as_secs_f64() / once.as_secs_f64()) as usize).clamp(MIN_RUNS, MAX_RUNS);
        let mut times: Vec<f64> = (0..runs).map(|_| sample(&mut f, reps).as_secs_f64() / reps as f64).collect();
        times.sort_by(|a, b| a.total_cmp(b));
        let med = times[runs / 2];
        println!(
            "{name:<34} {shape:<20} {:>12.3} us {:>8.2} GFLOP/s   (median of {runs} x {reps})",
            med * 1e6,
            flops / med / 1e9
        );
        Some(med)
    }
}

/// Random f32 operands for `d`, and the output buffer.
fn operands(d: MatmulDims, rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut a = vec![0.0f32; d.a_stride.max(d.m * d.k) * d.batch]; // like A
    let mut b = vec![0.0f32; d.b_stride.max(d.k * d.n) * d.batch]; // like B
    rng.fill_uniform(&mut a, -1.0, 1.0);
    rng.fill_uniform(&mut b, -1.0, 1.0);
    (a, b, vec![0.0f32; d.batch * d.m * d.n])
}

fn shape_str(d: MatmulDims) -> String {
    let t = |x: bool| if x { 'T' } else { 'N' };
    format!("{}x{}x{} {}{}", d.m, d.n, d.k, t(d.trans_a), t(d.trans_b))
}

/// Fast `matmul` on `d` (out = result, no bias).
fn bench_matmul(bench: &Bench, name: &str, d: MatmulDims, rng: &mut Rng) {
    if !bench.wants(name) {
        return;
    }
    let (a, b, mut out) = operands(d, rng);
    bench.run(name, &shape_str(d), d.flops(), || matmul(black_box(&mut out), &a, &b, None, d, false));
}

/// The forward, dX and dW products of one projection W (n_out, n_in) on T tokens.
fn bench_projection(bench: &Bench, group: &str, proj: &str, n_out: usize, n_in: usize, rng: &mut Rng) {
    let fwd = MatmulDims::linear(T, n_out, n_in); // X (T, n_in) · W^T
    let dx = MatmulDims::new(T, n_in, n_out); // dY (T, n_out) · W (n_out, n_in)
    let dw = MatmulDims { trans_a: true, ..MatmulDims::new(n_out, n_in, T) }; // dY^T · X
    bench_matmul(bench, &format!("matmul/{group}/{proj} fwd"), fwd, rng);
    bench_matmul(bench, &format!("matmul/{group}/{proj} dX"), dx, rng);
    bench_matmul(bench, &format!("matmul/{group}/{proj} dW"), dw, rng);
}

/// The plain loop `matmul` would use for tiny problems if it beat gemm (it does not: see the note
/// in src/backend/cpu/matmul.rs). Kept here as the experiment: out (M, N) = op(A) · B or · B^T.
fn small_loop(out: &mut [f32], a: &[f32], b: &[f32], d: MatmulDims) {
    let (m, n, k) = (d.m, d.n, d.k);
    assert!(!d.trans_a);
    for i in 0..m {
        let row = &mut out[i * n..(i + 1) * n]; // (N)
        let a_i = &a[i * k..(i + 1) * k]; // (K)
        row.fill(0.0);
        if d.trans_b {
            for (j, o) in row.iter_mut().enumerate() {
                *o = a_i.iter().zip(&b[j * k..(j + 1) * k]).map(|(x, y)| x * y).sum::<f32>();
            }
        } else {
            for (p, &av) in a_i.iter().enumerate() {
                row.iter_mut().zip(&b[p * n..(p + 1) * n]).for_each(|(o, &bv)| *o += av * bv);
            }
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the first argument that is not a flag is the name filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let bench = Bench { filter };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("matmul (f32, {threads} threads). GFLOP/s = 2*M*N*K / time. Shape: MxNxK, then N/T for op(A), op(B).");
    let mut rng = Rng::new(0);

    // Llama-3.2-1B: hidden 2048, 32 heads x 64; K/V 8 heads x 64 = 512; FFN 8192.
    bench_projection(&bench, "llama1b", "q_proj", 2048, 2048, &mut rng);
    bench_projection(&bench, "llama1b", "k_proj/v_proj", 512, 2048, &mut rng);
    bench_projection(&bench, "llama1b", "gate/up", 8192, 2048, &mut rng);
    bench_projection(&bench, "llama1b", "down", 2048, 8192, &mut rng);

    // SmolLM2-135M: hidden 576, 9 heads x 64; K/V 3 heads x 64 = 192; FFN 1536; tied lm head 49152.
    bench_projection(&bench, "smollm2", "q_proj", 576, 576, &mut rng);
    bench_projection(&bench, "smollm2", "k_proj/v_proj", 192, 576, &mut rng);
    bench_projection(&bench, "smollm2", "gate/up", 1536, 576, &mut rng);
    bench_projection(&bench, "smollm2", "down", 576, 1536, &mut rng);
    // The lm head is frozen (tied to the embedding): fwd and dX only.
    bench_matmul(&bench, "matmul/smollm2/lm_head fwd", MatmulDims::linear(T, 49152, 576), &mut rng);
    bench_matmul(&bench, "matmul/smollm2/lm_head dX", MatmulDims::new(T, 576, 49152), &mut rng);

    // LoRA rank 16 on the Llama q_proj: the skinny products a LoRA step adds beside the frozen one.
    let r = 16;
    bench_matmul(&bench, "matmul/lora/ax fwd", MatmulDims::linear(T, r, 2048), &mut rng); // X · A^T
    bench_matmul(&bench, "matmul/lora/b(ax) fwd", MatmulDims::linear(T, 2048, r), &mut rng); // (AX) · B^T
    let db = MatmulDims { trans_a: true, ..MatmulDims::new(2048, r, T) }; // dY^T · (AX)
    bench_matmul(&bench, "matmul/lora/dB", db, &mut rng);

    // Tiny problems: `matmul` (gemm) vs a plain loop, the evidence for having no small-size path.
    for (s, trans_b) in [1, 2, 4, 6, 8, 12, 16].into_iter().flat_map(|s| [(s, false), (s, true)]) {
        let d = MatmulDims { trans_b, ..MatmulDims::new(s, s, s) };
        let name = format!("matmul/small/{s}{}", if trans_b { "t" } else { "" });
        if !bench.wants(&name) {
            continue;
        }
        let (a, b, mut out) = operands(d, &mut rng);
        bench.run(&format!("{name} matmul"), &shape_str(d), d.flops(), || {
            matmul(black_box(&mut out), &a, &b, None, d, false)
        });
        bench.run(&format!("{name} small_loop"), &shape_str(d), d.flops(), || {
            small_loop(black_box(&mut out), &a, &b, d)
        });
    }

    // The spec (plain loops, f64 accumulation) for contrast, on a shape it finishes quickly.
    let d = MatmulDims::linear(64, 256, 256);
    if bench.wants("matmul/spec") {
        let (a, b, mut out) = operands(d, &mut rng);
        bench.run("matmul/spec/linear spec", &shape_str(d), d.flops(), || {
            matmul_forward(black_box(&mut out), &a, &b, None, d, false)
        });
        bench.run("matmul/spec/linear fast", &shape_str(d), d.flops(), || {
            matmul(black_box(&mut out), &a, &b, None, d, false)
        });
    }
}
