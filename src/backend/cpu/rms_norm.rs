//! rms_norm: RMSNorm over the last dim of a (rows, C) matrix, with a per-channel weight.
//! Spec: this file   Test: tests/ops/rms_norm.rs
//!
//! Legend: R rows (= B*T), C channels (hidden size).
//!
//!   rstd[r]   = 1 / sqrt(mean_i(x[r, i]^2) + eps)            (computed in f64)
//!   out[r, i] = x[r, i] * rstd[r] * w'[i],   w' = w, or (1 + w) when `add_one` (Gemma stores w - 1)
//!
//! Reference: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization",
//! https://arxiv.org/abs/1910.07467 ; PyTorch `torch.nn.RMSNorm`.
//!
//! Contracts easy to miss:
//! - forward WRITES `out` and `rstd` (=); `rstd` is saved for the backward.
//! - backward ACCUMULATES (+=) into `dx` and `dw`; the caller zeroes them.
//! - `dw` is the same for both forms, since d(1 + w)/dw = 1.

use super::real::Real;

/// The effective multiplier for channel `i`: w[i], or 1 + w[i] in Gemma's form.
#[inline]
fn scale(w: f64, add_one: bool) -> f64 {
    if add_one {
        1.0 + w
    } else {
        w
    }
}

/// out = x * rstd * w' (see the file header). All arithmetic in f64, rounded once to T.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_forward<T: Real>(
    out: &mut [T],  // (R, C)
    rstd: &mut [T], // (R)
    x: &[T],        // (R, C)
    w: &[T],        // (C)
    rows: usize,
    c: usize,
    eps: f32,
    add_one: bool,
) {
    assert!(out.len() >= rows * c && x.len() >= rows * c && w.len() >= c && rstd.len() >= rows);
    for r in 0..rows {
        let x_r = &x[r * c..(r + 1) * c]; // (C)
        let ms = x_r.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>() / c as f64;
        let s = 1.0 / (ms + eps as f64).sqrt();
        rstd[r] = T::from_f64(s);
        let out_r = &mut out[r * c..(r + 1) * c]; // (C)
        for i in 0..c {
            out_r[i] = T::from_f64(x_r[i].to_f64() * s * scale(w[i].to_f64(), add_one));
        }
    }
}

/// Backward of `rms_norm_forward`, with g = dout and s = rstd[r] (as saved by the forward):
///
///   dx[r, j] += s * g[j] * w'[j]  -  s^3 * x[r, j] / C * sum_i g[i] * w'[i] * x[r, i]
///   dw[j]    += sum_r g[r, j] * x[r, j] * s          (only when `dw` is given)
///
/// (from ds/dx_j = -s^3 x_j / C).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_backward<T: Real>(
    dx: &mut [T],         // (R, C)
    dw: Option<&mut [T]>, // (C)
    dout: &[T],           // (R, C)
    x: &[T],              // (R, C)
    w: &[T],              // (C)
    rstd: &[T],           // (R)
    rows: usize,
    c: usize,
    add_one: bool,
) {
    assert!(dx.len() >= rows * c && dout.len() >= rows * c && x.len() >= rows * c);
    assert!(w.len() >= c && rstd.len() >= rows);
    for r in 0..rows {
        let x_r = &x[r * c..(r + 1) * c]; // (C)
        let g_r = &dout[r * c..(r + 1) * c]; // (C)
        let s = rstd[r].to_f64();
        // sum_i g_i * w'_i * x_i, the projection of the upstream gradient on x
        let dot: f64 = (0..c).map(|i| g_r[i].to_f64() * scale(w[i].to_f64(), add_one) * x_r[i].to_f64()).sum();
        let k = s * s * s * dot / c as f64;
        let dx_r = &mut dx[r * c..(r + 1) * c]; // (C)
        for j in 0..c {
            let d = s * g_r[j].to_f64() * scale(w[j].to_f64(), add_one) - k * x_r[j].to_f64();
            dx_r[j] = T::from_f64(dx_r[j].to_f64() + d);
        }
    }
    if let Some(dw) = dw {
        assert!(dw.len() >= c);
        // Reduce over rows in f64, then add once, so a long (B*T) reduction is not done in T.
        for j in 0..c {
            let mut acc = 0.0f64;
            for r in 0..rows {
                acc += dout[r * c + j].to_f64() * x[r * c + j].to_f64() * rstd[r].to_f64();
            }
            dw[j] = T::from_f64(dw[j].to_f64() + acc);
        }
    }
}
