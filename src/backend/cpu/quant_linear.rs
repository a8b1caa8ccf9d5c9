//! quant_linear: a linear layer whose frozen weight is stored in any format (`DequantRows`:
//! NF4, int8, GGUF blocks, dense f32). out = x W^T + b forward; dx += dy W backward, never a dW
//! (STYLE.md 2.4: frozen weights get dX, never dW).
//! Spec: `matmul_forward` / `matmul_backward` on the dequantized weight   Test: tests/ops/quant_linear.rs
//!
//! Dims: N rows of activations (B*T), d_in = K, d_out = M. W is (d_out, d_in), PyTorch's layout.
//! The weight is never materialised whole: panels of PANEL rows are dequantized into a scratch
//! buffer and multiplied with `matmul` (the fastest CPU matmul), so memory stays
//! O(PANEL * d_in) per thread. Work is split over rows of x between threads when N is large
//! enough to pay for each thread dequantizing the weight on its own.
//! Contract easy to miss: forward OVERWRITES out; backward ACCUMULATES into dx.
//! Reference: https://pytorch.org/docs/stable/generated/torch.nn.Linear.html

use super::matmul::{matmul, MatmulDims};
use crate::quant::DequantRows;

/// Rows of W dequantized at a time: 128 rows x 4096 d_in x 4 B = 2 MiB of scratch, about L2.
const PANEL: usize = 128;
/// Rows of x per thread below which one thread does everything: each thread re-decodes all of
/// W (cost ~ d_out * d_in), which should stay small next to its share of the matmul
/// (2 * rows * d_out * d_in flops); 64 rows makes the decode < ~2% of the work.
const MIN_ROWS_PER_THREAD: usize = 64;

fn n_threads(n: usize) -> usize {
    let hw = std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1);
    hw.min(n / MIN_ROWS_PER_THREAD).max(1)
}

/// out = x W^T (+ bias), overwriting out.
pub fn quant_linear_forward(
    out: &mut [f32],      // (N, d_out)
    x: &[f32],            // (N, d_in)
    w: &dyn DequantRows,  // (d_out, d_in)
    bias: Option<&[f32]>, // (d_out)
) {
    let (d_out, d_in) = (w.rows(), w.cols());
    assert_eq!(x.len() % d_in.max(1), 0, "quant_linear_forward: x length {} vs d_in {d_in}", x.len());
    let n = x.len().checked_div(d_in).unwrap_or(out.len() / d_out.max(1));
    assert_eq!(out.len(), n * d_out, "quant_linear_forward: out length");
    if let Some(b) = bias {
        assert_eq!(b.len(), d_out, "quant_linear_forward: bias length");
    }
    if n == 0 || d_out == 0 {
        return;
    }
    if d_in == 0 {
        // empty reduction: out = bias (or 0)
        for row in out.chunks_mut(d_out) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return;
    }
    let threads = n_threads(n);
    if threads == 1 {
        forward_rows(out, x, w, bias, n);
        return;
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (o, xc) in out.chunks_mut(per * d_out).zip(x.chunks(per * d_in)) {
            s.spawn(move || forward_rows(o, xc, w, bias, xc.len() / d_in));
        }
    });
}

/// One thread's forward on `n` rows of x.
fn forward_rows(out: &mut [f32], x: &[f32], w: &dyn DequantRows, bias: Option<&[f32]>, n: usize) {
    let (d_out, d_in) = (w.rows(), w.cols());
    let p_max = PANEL.min(d_out);
    let mut panel = vec![0.0f32; p_max * d_in]; // (P, d_in)
    let mut tmp = vec![0.0f32; n * p_max]; // (N, P)
    for r0 in (0..d_out).step_by(PANEL) {
        let p = PANEL.min(d_out - r0);
        for r in 0..p {
            w.dequantize_row(r0 + r, &mut panel[r * d_in..(r + 1) * d_in]);
        }
        let b = bias.map(|b| &b[r0..r0 + p]);
        matmul(&mut tmp[..n * p], x, &panel[..p * d_in], b, MatmulDims::linear(n, p, d_in), false);
        for i in 0..n {
            out[i * d_out + r0..i * d_out + r0 + p].copy_from_slice(&tmp[i * p..(i + 1) * p]);
        }
    }
}

/// dx += dy W. No gradient for W (frozen); the bias gradient, if the bias is trainable, is
/// sum over rows of dy and is left to the caller.
pub fn quant_linear_backward(
    dx: &mut [f32],      // (N, d_in)
    dy: &[f32],          // (N, d_out)
    w: &dyn DequantRows, // (d_out, d_in)
) {
    let (d_out, d_in) = (w.rows(), w.cols());
    assert_eq!(dy.len() % d_out.max(1), 0, "quant_linear_backward: dy length {} vs d_out {d_out}", dy.len());
    let n = dy.len().checked_div(d_out).unwrap_or(dx.len() / d_in.max(1));
    assert_eq!(dx.len(), n * d_in, "quant_linear_backward: dx length");
    if n == 0 || d_out == 0 || d_in == 0 {
        return;
    }
    let threads = n_threads(n);
    if threads == 1 {
        backward_rows(dx, dy, w, n);
        return;
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (dxc, dyc) in dx.chunks_mut(per * d_in).zip(dy.chunks(per * d_out)) {
            s.spawn(move || backward_rows(dxc, dyc, w, dyc.len() / d_out));
        }
    });
}

/// One thread's backward on `n` rows of dy.
fn backward_rows(dx: &mut [f32], dy: &[f32], w: &dyn DequantRows, n: usize) {
    let (d_out, d_in) = (w.rows(), w.cols());
    let p_max = PANEL.min(d_out);
    let mut panel = vec![0.0f32; p_max * d_in]; // (P, d_in)
    let mut dy_p = vec![0.0f32; n * p_max]; // (N, P): the panel's columns of dy, contiguous
    for r0 in (0..d_out).step_by(PANEL) {
        let p = PANEL.min(d_out - r0);
        for r in 0..p {
            w.dequantize_row(r0 + r, &mut panel[r * d_in..(r + 1) * d_in]);
        }
        for i in 0..n {
            dy_p[i * p..(i + 1) * p].copy_from_slice(&dy[i * d_out + r0..i * d_out + r0 + p]);
        }
        // dx (N, d_in) += dy_p (N, P) . panel (P, d_in)
        matmul(dx, &dy_p[..n * p], &panel[..p * d_in], None, MatmulDims::new(n, d_in, p), true);
    }
}
