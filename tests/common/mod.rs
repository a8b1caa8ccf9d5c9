//! Shared test helpers: tolerances, closeness checks, finite differences, random data, fixtures.
#![allow(dead_code)]

use loraforge::rng::Rng;
use std::path::PathBuf;

/// |got - want| <= abs + rel * |want| per element (llm.c `validate_result`).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub abs: f64,
    pub rel: f64,
}

impl Tol {
    /// f32 kernel vs f32 (f64-accumulated) spec on short reductions.
    pub const F32: Tol = Tol { abs: 1e-5, rel: 1e-4 };
    /// f64 spec backward vs f64 central differences with h = 1e-6: truncation error is
    /// O(h^2 * f''') ~ 1e-12 and rounding O(eps / h) ~ 1e-10 per unit of |f|; 1e-6 leaves room for
    /// sums over a few hundred terms.
    pub const FD64: Tol = Tol { abs: 1e-6, rel: 1e-6 };
    pub const F16: Tol = Tol { abs: 1e-3, rel: 1e-2 };
    /// Quantized kernels vs the dequantized-f32 reference.
    pub const Q4: Tol = Tol { abs: 2e-2, rel: 5e-2 };
    pub const EXACT: Tol = Tol { abs: 0.0, rel: 0.0 };
}

/// Checks closeness; NaN/Inf must match exactly. On failure reports the bad count, the max abs
/// error and its index, and the first 5 bad pairs.
#[track_caller]
pub fn assert_close<A: Copy + Into<f64>, B: Copy + Into<f64>>(got: &[A], want: &[B], tol: Tol, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let mut bad = Vec::new();
    let (mut max_err, mut max_i) = (0.0f64, 0usize);
    for i in 0..got.len() {
        let (g, w): (f64, f64) = (got[i].into(), want[i].into());
        let ok = if !w.is_finite() || !g.is_finite() {
            (g.is_nan() && w.is_nan()) || g == w
        } else {
            let e = (g - w).abs();
            if e > max_err {
                max_err = e;
                max_i = i;
            }
            e <= tol.abs + tol.rel * w.abs()
        };
        if !ok {
            bad.push((i, g, w));
        }
    }
    if !bad.is_empty() {
        let first: Vec<String> = bad.iter().take(5).map(|(i, g, w)| format!("[{i}] got {g:e} want {w:e}")).collect();
        panic!(
            "{what}: {} of {} elements outside tol {:?}; max abs err {:e} at {}; first: {}",
            bad.len(),
            got.len(),
            tol,
            max_err,
            max_i,
            first.join(", ")
        );
    }
}

/// Normalised mean squared error sum((a-b)^2) / sum(b^2) (ggml, candle quantized tests).
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    num / den.max(1e-30)
}

/// Central finite differences of a scalar function: df/dx_i = (f(x + h e_i) - f(x - h e_i)) / 2h.
pub fn finite_diff(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    let mut g = vec![0.0; x.len()];
    for i in 0..x.len() {
        let orig = xs[i];
        xs[i] = orig + h;
        let fp = f(&xs);
        xs[i] = orig - h;
        let fm = f(&xs);
        xs[i] = orig;
        g[i] = (fp - fm) / (2.0 * h);
    }
    g
}

/// sum_i a_i * b_i in f64: the scalar "loss" L = <out, r> whose gradient w.r.t. out is r.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn rand_f64(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.next_f64()).collect()
}

pub fn rand_f32(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

pub fn randn_f32(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * std).collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// ../shared/fixtures (beside the checkout), or $LORAFORGE_FIXTURES.
pub fn fixtures_dir() -> PathBuf {
    if let Ok(p) = std::env::var("LORAFORGE_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join("fixtures")
}

/// llama.cpp's `rope_freqs.weight` for `rope_type: llama3`, computed as `convert_hf_to_gguf.py`
/// does (`LlamaModel.generate_extra_tensors`, f32 arithmetic as torch does it): an independent
/// reimplementation to check the loader's and exporter's f64 formula against.
pub fn llama3_rope_freqs_like_llama_cpp(
    rot: usize,
    theta: f32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    old_context_len: f32,
) -> Vec<f32> {
    let low_freq_wavelen = old_context_len / low_freq_factor;
    let high_freq_wavelen = old_context_len / high_freq_factor;
    (0..rot)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / theta.powf(i as f32 / rot as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_freq_wavelen {
                1.0
            } else if wavelen > low_freq_wavelen {
                factor
            } else {
                let smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}
