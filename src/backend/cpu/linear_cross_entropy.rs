//! linear_cross_entropy: the fused final projection + softmax cross-entropy over the vocabulary,
//! computed `chunk` tokens at a time so the full (N, V) logits matrix never exists (Liger-Kernel's
//! fused linear cross entropy; Wijmans et al. 2024 "Cut Your Losses in Large-Vocabulary Language
//! Models", https://arxiv.org/abs/2411.09009). Scratch memory is O(chunk * V).
//! Spec: this file (`linear_cross_entropy_forward` / `_backward`, generic over `Real`)
//! Fast path: `linear_cross_entropy` (f32, forward and backward in one pass per chunk, `matmul`)
//! Test: tests/ops/linear_cross_entropy.rs
//!
//! Legend: N tokens (B*T flattened), C hidden, V vocab.
//!   h: (N, C) final hidden states, already normed.   w: (V, C) lm head / tied embedding, dense f32.
//!   targets: (N) i32 token ids, `IGNORE_INDEX` (-100) = no loss (prompt tokens, padding).
//!
//! Formula, per token i with t = targets[i] != -100 (PyTorch `F.cross_entropy(reduction="sum")`,
//! https://pytorch.org/docs/stable/generated/torch.nn.functional.cross_entropy.html):
//!   z_raw[j] = sum_k h[i, k] * w[j, k]
//!   z[j]     = cap * tanh(z_raw[j] / cap)   if softcap = Some(cap)  (Gemma-2 final logit soft-capping)
//!            = z_raw[j]                     otherwise
//!   loss_i   = logsumexp_j(z[j]) - z[t]
//!   dloss_i/dz_raw[j] = (softmax(z)[j] - [j == t]) * (1 - (z[j] / cap)^2)   (the last factor only with softcap)
//!   dh[i, :] += s * sum_j dz_raw[j] * w[j, :],   dw[j, :] += s * sum_i dz_raw[j] * h[i, :]
//!
//! Contracts easy to miss:
//! - The result is a SUM over non-ignored tokens plus their count (`CeStats`); the mean loss is
//!   loss_sum / count. The backward takes `grad_scale` (usually 1 / count, see `ce_count`) and
//!   ACCUMULATES (+=) into dh and dw; the caller zeroes them.
//! - The fused fast path needs `grad_scale` BEFORE it sees the loss, so the caller counts the
//!   non-ignored targets up front with `ce_count` (cheap: a scan of N integers).
//! - Targets must be in [0, V) or -100 (asserted). `dw = None` is the frozen lm head case (LoRA):
//!   no dW matmul is done at all.

use super::matmul::{matmul, MatmulDims};
use super::real::Real;

/// Target value that contributes no loss and no gradient (PyTorch's `ignore_index` default).
pub const IGNORE_INDEX: i32 = -100;

/// Sum of per-token losses over the non-ignored tokens, and how many there were.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CeStats {
    /// sum_i loss_i over tokens whose target != -100, accumulated in f64.
    pub loss_sum: f64,
    /// Number of tokens whose target != -100.
    pub count: usize,
}

impl CeStats {
    /// loss_sum / count, or 0 when every token is ignored (PyTorch returns NaN there; a trainer
    /// wants to skip such a batch, not poison its running loss).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.loss_sum / self.count as f64
        }
    }
}

/// Number of non-ignored targets: the divisor of the mean loss, needed before the fused pass.
pub fn ce_count(targets: &[i32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

#[track_caller]
fn check_target(t: i32, v: usize) {
    assert!(
        t == IGNORE_INDEX || (t >= 0 && (t as usize) < v),
        "linear_cross_entropy: target {t} outside [0, {v}) and not -100"
    );
}

/// The logits of one token, in f64: z[j] = (softcapped) h_i · w_j. Returns nothing; fills `z` (V).
fn token_logits<T: Real>(z: &mut [f64], h_i: &[T], w: &[T], c: usize, softcap: Option<f32>) {
    for (j, zj) in z.iter_mut().enumerate() {
        let w_j = &w[j * c..(j + 1) * c]; // (C)
        let mut acc = 0.0f64;
        for k in 0..c {
            acc += h_i[k].to_f64() * w_j[k].to_f64();
        }
        *zj = match softcap {
            Some(cap) => cap as f64 * (acc / cap as f64).tanh(),
            None => acc,
        };
    }
}

/// Stable logsumexp of a row, in f64: m + ln(sum_j exp(z[j] - m)), m = max_j z[j].
fn logsumexp(z: &[f64]) -> f64 {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + z.iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
}

/// The spec forward: sum of per-token cross-entropy losses over non-ignored tokens, computed stably
/// in f64, `chunk` tokens at a time (the chunking only bounds memory; it does not change the result).
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_forward<T: Real>(
    h: &[T],         // (N, C)
    w: &[T],         // (V, C)
    targets: &[i32], // (N)
    n: usize,
    c: usize,
    v: usize,
    chunk: usize,
    softcap: Option<f32>,
) -> CeStats {
    assert!(chunk > 0, "linear_cross_entropy: chunk must be > 0");
    debug_assert!(h.len() >= n * c && w.len() >= v * c && targets.len() >= n);
    let mut stats = CeStats::default();
    let mut z = vec![0.0f64; chunk * v]; // (chunk, V) scratch: the only logits that ever exist
    for t0 in (0..n).step_by(chunk) {
        let t1 = (t0 + chunk).min(n);
        for i in t0..t1 {
            let t = targets[i];
            check_target(t, v);
            if t == IGNORE_INDEX {
                continue;
            }
            let z_i = &mut z[(i - t0) * v..(i - t0 + 1) * v]; // (V)
            token_logits(z_i, &h[i * c..(i + 1) * c], w, c, softcap);
            stats.loss_sum += logsumexp(z_i) - z_i[t as usize];
            stats.count += 1;
        }
    }
    stats
}

/// The spec backward: accumulates grad_scale * d(loss_sum)/dh into dh and (if given) /dw into dw,
/// recomputing each chunk's logits. Ignored tokens get no gradient.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_backward<T: Real>(
    dh: &mut [T],         // (N, C), accumulated (+=)
    dw: Option<&mut [T]>, // (V, C), accumulated (+=)
    h: &[T],              // (N, C)
    w: &[T],              // (V, C)
    targets: &[i32],      // (N)
    n: usize,
    c: usize,
    v: usize,
    chunk: usize,
    softcap: Option<f32>,
    grad_scale: f64,
) {
    assert!(chunk > 0, "linear_cross_entropy: chunk must be > 0");
    let mut dw = dw;
    let mut dz = vec![0.0f64; chunk * v]; // (chunk, V): dloss/dz_raw for the chunk, scaled
    for t0 in (0..n).step_by(chunk) {
        let t1 = (t0 + chunk).min(n);
        // 1. dz_raw for every token of the chunk (zero rows for ignored tokens).
        for i in t0..t1 {
            let t = targets[i];
            check_target(t, v);
            let dz_i = &mut dz[(i - t0) * v..(i - t0 + 1) * v]; // (V)
            if t == IGNORE_INDEX {
                dz_i.fill(0.0);
                continue;
            }
            token_logits(dz_i, &h[i * c..(i + 1) * c], w, c, softcap);
            let lse = logsumexp(dz_i);
            for (j, g) in dz_i.iter_mut().enumerate() {
                let z = *g;
                let p = (z - lse).exp(); // softmax(z)[j]
                let onehot = if j == t as usize { 1.0 } else { 0.0 };
                let dcap = match softcap {
                    Some(cap) => 1.0 - (z / cap as f64).powi(2), // d(cap tanh(x/cap))/dx = 1 - tanh^2
                    None => 1.0,
                };
                *g = grad_scale * (p - onehot) * dcap;
            }
        }
        // 2. dh[i, :] += sum_j dz[i, j] * w[j, :]
        for i in t0..t1 {
            if targets[i] == IGNORE_INDEX {
                continue;
            }
            let dz_i = &dz[(i - t0) * v..(i - t0 + 1) * v];
            for k in 0..c {
                let mut acc = 0.0f64;
                for j in 0..v {
                    acc += dz_i[j] * w[j * c + k].to_f64();
                }
                let o = &mut dh[i * c + k];
                *o = T::from_f64(o.to_f64() + acc);
            }
        }
        // 3. dw[j, :] += sum_i dz[i, j] * h[i, :]
        if let Some(dw) = dw.as_deref_mut() {
            for j in 0..v {
                for k in 0..c {
                    let mut acc = 0.0f64;
                    for i in t0..t1 {
                        acc += dz[(i - t0) * v + j] * h[i * c + k].to_f64();
                    }
                    let o = &mut dw[j * c + k];
                    *o = T::from_f64(o.to_f64() + acc);
                }
            }
        }
    }
}

/// Gradient outputs of the fused fast path: (dh (N, C), dw (V, C) or None for a frozen head,
/// grad_scale). Both accumulate (+=).
pub type CeGrad<'a> = (&'a mut [f32], Option<&'a mut [f32]>, f64);

/// The fast f32 path: forward AND (optionally) backward in one pass per chunk.
/// Per chunk: gather the non-ignored rows of h (so masked prompt tokens and all-ignored chunks
/// cost nothing), logits = h_c · w^T with `matmul`, loss per row (f32 exp, f64 sums), then
/// dlogits = grad_scale * (softmax - onehot) * softcap', dh += dlogits · w, dw += dlogits^T · h_c.
/// Scratch: chunk * (V + 2C) f32. Same contract as the spec; tested against it.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy(
    h: &[f32],       // (N, C)
    w: &[f32],       // (V, C)
    targets: &[i32], // (N)
    n: usize,
    c: usize,
    v: usize,
    chunk: usize,
    softcap: Option<f32>,
    grad: Option<CeGrad<'_>>,
) -> CeStats {
    assert!(chunk > 0, "linear_cross_entropy: chunk must be > 0");
    assert!(h.len() >= n * c && w.len() >= v * c && targets.len() >= n, "linear_cross_entropy: buffer too short");
    let mut grad = grad;
    if let Some((dh, dw, _)) = grad.as_ref() {
        assert!(
            dh.len() >= n * c && dw.as_ref().is_none_or(|dw| dw.len() >= v * c),
            "linear_cross_entropy: grad too short"
        );
    }
    let grad_scale = grad.as_ref().map(|g| g.2);
    let chunk = chunk.min(n.max(1));
    let mut stats = CeStats::default();
    let mut rows: Vec<usize> = Vec::with_capacity(chunk); // token index of each packed row
    let mut hc = vec![0.0f32; chunk * c]; // (rows, C) packed non-ignored hidden states
    let mut z = vec![0.0f32; chunk * v]; // (rows, V) logits, then dlogits in place
    let mut dhc = vec![0.0f32; if grad.is_some() { chunk * c } else { 0 }]; // (rows, C)

    for t0 in (0..n).step_by(chunk) {
        let t1 = (t0 + chunk).min(n);
        rows.clear();
        for i in t0..t1 {
            check_target(targets[i], v);
            if targets[i] != IGNORE_INDEX {
                hc[rows.len() * c..(rows.len() + 1) * c].copy_from_slice(&h[i * c..(i + 1) * c]);
                rows.push(i);
            }
        }
        let r = rows.len();
        if r == 0 {
            continue;
        }
        let (hc, z) = (&hc[..r * c], &mut z[..r * v]);
        matmul(z, hc, w, None, MatmulDims::linear(r, v, c), false);

        for (ri, &i) in rows.iter().enumerate() {
            let t = targets[i] as usize;
            let z_r = &mut z[ri * v..(ri + 1) * v]; // (V)
            if let Some(cap) = softcap {
                let inv = 1.0 / cap;
                z_r.iter_mut().for_each(|x| *x = cap * (*x * inv).tanh());
            }
            let m = z_r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = z_r.iter().map(|&x| (x - m).exp() as f64).sum();
            let lse = m as f64 + sum.ln();
            stats.loss_sum += lse - z_r[t] as f64;
            stats.count += 1;
            if let Some(scale) = grad_scale {
                // dlogits = scale * (softmax - onehot) * softcap', in place over the logits.
                // With softcap, z_r holds the capped logits and softcap' = 1 - (z / cap)^2.
                let dcap = |x: f32| softcap.map_or(1.0, |cap| 1.0 - (x / cap) * (x / cap));
                let zt = z_r[t];
                let s = (scale / sum) as f32; // so that s * exp(x - m) = scale * softmax
                for x in z_r.iter_mut() {
                    *x = s * (*x - m).exp() * dcap(*x);
                }
                // Target column: p_t - 1 in f64, since p_t is close to 1 for a well-fit token.
                let pt = (zt as f64 - lse).exp();
                z_r[t] = (scale * (pt - 1.0) * dcap(zt) as f64) as f32;
            }
        }
        if let Some((dh, dw, _)) = grad.as_mut() {
            let dhc = &mut dhc[..r * c];
            matmul(dhc, z, w, None, MatmulDims::new(r, c, v), false);
            for (ri, &i) in rows.iter().enumerate() {
                let dst = &mut dh[i * c..(i + 1) * c];
                for (d, s) in dst.iter_mut().zip(&dhc[ri * c..(ri + 1) * c]) {
                    *d += *s;
                }
            }
            if let Some(dw) = dw.as_deref_mut() {
                // dw (V, C) += dlogits^T (V, rows) · hc (rows, C)
                let d = MatmulDims { trans_a: true, ..MatmulDims::new(v, c, r) };
                matmul(dw, z, hc, None, d, true);
            }
        }
    }
    stats
}
