//! Ops on `Tensor`s: shape checks, the call into the backend, and the tape rule.
//! Each file holds one op's forward (validates shapes and returns an `Error` naming the op and the
//! shapes, never panics) and its backward rule. `backward` dispatches a node to its rule.

pub mod attention;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod glu;
pub mod linear;
pub mod linear_cross_entropy;
pub mod rms_norm;
pub mod rope;

pub use attention::attention;
pub use dropout::dropout;
pub use elementwise::{add, mul, mul_rows, scale};
pub use embedding::{embedding, Embedding};
pub use glu::glu;
pub use linear::{linear, matmul, Weight};
pub use linear_cross_entropy::{linear_cross_entropy, LossOutput};
pub use rms_norm::rms_norm;
pub use rope::rope;

use crate::backend::Backend;
use crate::error::Result;
use crate::tape::{BackwardOp, Grads, Tape};
use crate::tensor::VarId;

/// Accumulates `g` into `var`'s gradient when the input was tracked.
pub(crate) fn give<B: Backend>(
    b: &B,
    grads: &mut Grads<B>,
    var: Option<VarId>,
    g: impl FnOnce() -> Result<B::Storage>,
) -> Result<()> {
    match var {
        Some(v) => grads.accumulate(b, v, g()?),
        None => Ok(()),
    }
}

/// Applies one node's backward rule: consumes the output gradient, accumulates input gradients.
pub(crate) fn backward<B: Backend>(b: &B, op: BackwardOp<B>, dout: B::Storage, grads: &mut Grads<B>) -> Result<()> {
    match op {
        BackwardOp::Add { a, b: bv } => elementwise::add_backward(b, a, bv, dout, grads),
        BackwardOp::Mul { a, b: bt } => elementwise::mul_backward(b, &a, &bt, &dout, grads),
        BackwardOp::Scale { a, s } => grads.accumulate(b, a, b.scale(&dout, s)?),
        BackwardOp::MulRows { x, v, rows, c } => elementwise::mul_rows_backward(b, &x, &v, rows, c, &dout, grads),
        BackwardOp::Matmul { a, b: bt, bias, dims } => linear::matmul_backward(b, &a, &bt, bias, dims, &dout, grads),
        BackwardOp::FrozenLinear { x, bias, w, n } => linear::frozen_linear_backward(b, x, bias, &w, n, &dout, grads),
        BackwardOp::RmsNorm { x, w, rstd, rows, c, add_one } => {
            rms_norm::rms_norm_backward(b, &x, &w, &rstd, rows, c, add_one, &dout, grads)
        }
        BackwardOp::Rope { x, positions, cfg, b: bb, t, nh } => {
            grads.accumulate(b, x, b.rope_backward(&dout, &positions, &cfg, bb, t, nh)?)
        }
        BackwardOp::Attention { q, k, v, out, lse, segment_ids, p } => {
            attention::attention_backward(b, &q, &k, &v, &out, &lse, segment_ids.as_deref(), &p, &dout, grads)
        }
        BackwardOp::Glu { gate, up, gelu } => glu::glu_backward(b, &gate, &up, gelu, &dout, grads),
        BackwardOp::Dropout { x, p, seed, offset } => {
            grads.accumulate(b, x, b.dropout_backward(&dout, p, seed, offset)?)
        }
        BackwardOp::Embedding { table, ids, v, c } => {
            grads.accumulate(b, table, b.embedding_backward(&dout, &ids, v, c)?)
        }
        BackwardOp::LinearCrossEntropy { h, w, dh, dw } => {
            linear_cross_entropy::backward(b, h, w, dh, dw, &dout, grads)
        }
        BackwardOp::Checkpoint { input, f } => {
            // Run the layer again on a fresh tape with a tracked copy of its input, then
            // backpropagate through it; parameter gradients land in the outer store.
            let x = input.track();
            let mut inner = Tape::new();
            let out = f(&mut inner, &x)?;
            let out_var =
                out.var.ok_or_else(|| crate::Error::Tape("checkpoint: recomputed output is untracked".into()))?;
            drop(out);
            let mut inner_grads = inner.backward_from(b, out_var, dout)?;
            let dx = inner_grads.remove(x.var.expect("tracked"));
            if let (Some(v), Some(dx)) = (input.var, dx) {
                grads.accumulate(b, v, dx)?;
            }
            grads.merge(b, inner_grads)
        }
    }
}
