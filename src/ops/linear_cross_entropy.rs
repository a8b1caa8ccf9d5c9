//! Fused final projection + cross-entropy, chunked over tokens so the (N, V) logits never exist.
//! The gradient is computed during the forward pass (it needs the same chunk logits), scaled for
//! the mean over non-ignored tokens, and kept on the tape; backward only rescales it.
//! Spec: src/backend/cpu/linear_cross_entropy.rs   Test: tests/ops/linear_cross_entropy.rs, tests/tape.rs

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tape::{BackwardOp, Grads, Tape};
use crate::tensor::{Tensor, VarId};

use super::Weight;

pub struct LossOutput<B: Backend> {
    /// Mean loss over non-ignored tokens, a scalar tensor (tracked when h or w is).
    pub loss: Tensor<B>,
    pub loss_sum: f64,
    /// Number of tokens that count (target != -100).
    pub count: usize,
}

/// h (..., C), w (V, C), targets (N) with -100 = ignore. `softcap` is Gemma-2's final logit cap.
pub fn linear_cross_entropy<B: Backend>(
    tape: &mut Tape<B>,
    h: &Tensor<B>,
    w: &Weight<B>,
    targets: &[i32],
    softcap: Option<f32>,
) -> Result<LossOutput<B>> {
    let be = &h.b;
    let (v, c) = w.dims(be);
    let n = h.shape.rows();
    if h.shape.last() != c || targets.len() != n {
        return Err(Error::ShapeMismatch {
            op: "linear_cross_entropy",
            lhs: h.shape.clone(),
            rhs: Shape::new(&[targets.len(), v, c]),
        });
    }
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t != -100 && (t < 0 || t as usize >= v)) {
        return Err(Error::InvalidArgument {
            op: "linear_cross_entropy",
            msg: format!("target {t} at position {i} is outside the vocabulary (V = {v})"),
        });
    }
    let count = targets.iter().filter(|&&t| t != -100).count();
    let w_var = match w {
        Weight::Dense(t) => t.var,
        Weight::Frozen(_) => None,
    };
    let tracked = h.is_tracked() || w_var.is_some();
    let grad_scale = (tracked && count > 0).then(|| 1.0 / count as f64);
    let (stats, dh, dw) = match w {
        Weight::Dense(wd) => {
            be.linear_cross_entropy(&h.s, &wd.s, targets, n, c, v, softcap, grad_scale, w_var.is_some())?
        }
        // A frozen head is read as stored (packed on GPU backends that can), never made dense here.
        Weight::Frozen(q) => {
            let (stats, dh) = be.linear_cross_entropy_frozen(&h.s, q, targets, n, c, v, softcap, grad_scale)?;
            (stats, dh, None)
        }
    };
    let mean = if stats.count > 0 { stats.loss_sum / stats.count as f64 } else { 0.0 };
    let out = be.upload(&[mean as f32])?;
    let var = tape.record(tracked, || BackwardOp::LinearCrossEntropy { h: h.var, w: w_var, dh, dw });
    Ok(LossOutput {
        loss: Tensor::from_storage(be, out, Shape::new(&[]), var),
        loss_sum: stats.loss_sum,
        count: stats.count,
    })
}

pub(crate) fn backward<B: Backend>(
    b: &B,
    h: Option<VarId>,
    w: Option<VarId>,
    dh: Option<B::Storage>,
    dw: Option<B::Storage>,
    dout: &B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    // The incoming gradient stays on the device (1 when the loss is the root, 1/accumulation or a
    // preference-loss weight otherwise): scaling by it costs a tiny dispatch, reading it back
    // would stall the stream once per micro-batch.
    for (var, g) in [(h, dh), (w, dw)] {
        if let (Some(var), Some(mut g)) = (var, g) {
            b.scale_by_in_place(&mut g, dout)?;
            grads.accumulate(b, var, g)?;
        }
    }
    Ok(())
}

impl<B: Backend> std::fmt::Debug for LossOutput<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LossOutput(sum {}, count {})", self.loss_sum, self.count)
    }
}
