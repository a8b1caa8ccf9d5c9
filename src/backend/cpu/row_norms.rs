//! row_norms: the L2 norm of each row of a frozen weight plus an optional dense delta, or its
//! reciprocal. DoRA's weight norm: ‖W₀ + s·BA‖ per output feature (Liu et al. 2024, "DoRA:
//! Weight-Decomposed Low-Rank Adaptation", https://arxiv.org/abs/2402.09353 ; PEFT's
//! `get_weight_norm`, dim 1 for a Linear's (d_out, d_in) weight).
//! Spec: this file   Kernel: shaders/row_norms.wgsl   Test: tests/wgpu_ops.rs (row_norms, quant_formats_*)
//!
//! Legend: R rows (d_out), C columns (d_in).
//!
//!   v[r, j]   = W[r, j] + delta[r, j]                 (W decoded as `DequantRows::dequantize_row`)
//!   norm[r]   = sqrt(sum_j v[r, j]^2)                 (sum and sum of squares in f64)
//!   out[r]    = norm[r], or 1 / norm[r] when `recip`  (rounded once to f32; 1 / 0 = inf)
//!
//! Contracts easy to miss:
//! - WRITES `out` (=), len R; `delta`, when given, is (R, C) row-major.
//! - No backward: DoRA treats the norm as a constant (detached), as the paper and PEFT do.

use crate::quant::DequantRows;

/// out[r] = ‖W[r, :] + delta[r, :]‖₂ (or its reciprocal): see the file header.
pub fn row_norms(out: &mut [f32], w: &dyn DequantRows, delta: Option<&[f32]>, recip: bool) {
    let (rows, cols) = (w.rows(), w.cols());
    debug_assert_eq!(out.len(), rows);
    debug_assert!(delta.is_none_or(|d| d.len() == rows * cols));
    let mut row = vec![0.0f32; cols];
    for (r, o) in out.iter_mut().enumerate() {
        w.dequantize_row(r, &mut row);
        let mut acc = 0.0f64;
        for (j, &x) in row.iter().enumerate() {
            let v = x as f64 + delta.map_or(0.0, |d| d[r * cols + j] as f64);
            acc += v * v;
        }
        let n = acc.sqrt();
        *o = if recip { (1.0 / n) as f32 } else { n as f32 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::F32Matrix;

    #[test]
    fn norms_of_known_rows() {
        // rows (3, 4) and (1, 2, 2) + delta: norms 5 and 3; the reciprocal 0.2 and 1/3; a zero row.
        let w = F32Matrix { data: vec![3.0, 4.0, 0.0, 1.0, 1.0, 2.0, 0.0, 0.0, 0.0], rows: 3, cols: 3 };
        let delta = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let mut out = [0.0f32; 3];
        row_norms(&mut out, &w, Some(&delta), false);
        assert_eq!(out, [5.0, 3.0, 0.0]);
        row_norms(&mut out, &w, Some(&delta), true);
        assert_eq!(out[..2], [0.2, 1.0 / 3.0]);
        assert!(out[2].is_infinite());
        row_norms(&mut out, &w, None, false);
        assert_eq!(out[1], 6f32.sqrt());
    }
}
