//! quant_linear: a linear layer whose frozen weight is stored in any format (`DequantRows`:
//! NF4, int8, GGUF blocks, dense f32). out = x W^T + b forward; dx += dy W backward, never a dW
//! (STYLE.md 2.4: frozen weights get dX, never dW).
//! Spec: `matmul_forward` / `matmul_backward` on the dequantized weight   Test: tests/ops/quant_linear.rs
//!
//! Dims: N rows of activations (B*T), d_in = K, d_out = M. W is (d_out, d_in), PyTorch's layout.
//! The weight is never materialised whole: panels of PANEL rows are dequantized into a scratch
//! buffer and multiplied with `matmul` (the fastest CPU matmul), so memory stays
//! O(PANEL * d_in). Threads come from `matmul` (gemm); the panel decode is serial. Splitting rows
//! of x across threads instead made every thread decode all of W and oversubscribed the cores:
//! measured on the Llama-3.2-1B layer bench (NF4, T=512, 2 cores), 1196 ms with the split vs
//! 865 ms without (`cargo bench --bench train_step -- nf4`). Splitting W's panels between threads
//! for decode steps (N = 1) measured slower too (25 vs 28 tokens/s, `cargo run --release --example
//! generate_bench`): there the cost is decoding each row to f32 (~0.3 ns per weight); a fused
//! quantized dot product per format (llama.cpp's vec_dot) is the way to go faster.
//! Contract easy to miss: forward OVERWRITES out; backward ACCUMULATES into dx.
//! Reference: https://pytorch.org/docs/stable/generated/torch.nn.Linear.html

use super::matmul::{matmul, MatmulDims};
use crate::quant::DequantRows;

/// Rows of W dequantized at a time: 128 rows x 4096 d_in x 4 B = 2 MiB of scratch, about L2.
const PANEL: usize = 128;

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
    forward_rows(out, x, w, bias, n);
}

/// The forward on `n` rows of x, panel by panel.
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
    backward_rows(dx, dy, w, n);
}

/// The backward on `n` rows of dy, panel by panel.
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
