//! RMSNorm over the last dim; `add_one` is Gemma's (1 + w) form. The weight is frozen unless it
//! carries a var (freeze/full tuning of norms).
//! Spec: src/backend/cpu/rms_norm.rs   Test: tests/ops/rms_norm.rs, tests/tape.rs

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tape::{BackwardOp, Grads, Tape};
use crate::tensor::Tensor;
use std::sync::Arc;

pub fn rms_norm<B: Backend>(
    tape: &mut Tape<B>,
    x: &Tensor<B>,
    w: &Tensor<B>,
    eps: f32,
    add_one: bool,
) -> Result<Tensor<B>> {
    let c = x.shape.last();
    if w.elem_count() != c {
        return Err(Error::ShapeMismatch { op: "rms_norm", lhs: x.shape.clone(), rhs: w.shape.clone() });
    }
    let rows = x.shape.rows();
    let (out, rstd) = x.b.rms_norm(&x.s, &w.s, rows, c, eps, add_one)?;
    let var = tape.record(x.is_tracked() || w.is_tracked(), || BackwardOp::RmsNorm {
        x: x.clone(),
        w: w.clone(),
        rstd: Arc::new(rstd),
        rows,
        c,
        add_one,
    });
    Ok(Tensor::from_storage(&x.b, out, x.shape.clone(), var))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_backward<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    w: &Tensor<B>,
    rstd: &B::Storage,
    rows: usize,
    c: usize,
    add_one: bool,
    dout: &B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    let (dx, dw) = b.rms_norm_backward(dout, &x.s, &w.s, rstd, rows, c, add_one, w.is_tracked())?;
    if let Some(v) = x.var {
        grads.accumulate(b, v, dx)?;
    }
    if let (Some(v), Some(dw)) = (w.var, dw) {
        grads.accumulate(b, v, dw)?;
    }
    Ok(())
}
