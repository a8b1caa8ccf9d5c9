//! Gated linear units: SwiGLU (silu(gate) · up, Llama/Qwen/Mistral) and GeGLU (gelu_tanh(gate) · up, Gemma).
//! Spec: src/backend/cpu/swiglu.rs, src/backend/cpu/geglu.rs   Test: tests/ops/{swiglu,geglu}.rs

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tape::{BackwardOp, Grads, Tape};
use crate::tensor::Tensor;

pub fn glu<B: Backend>(tape: &mut Tape<B>, gate: &Tensor<B>, up: &Tensor<B>, gelu: bool) -> Result<Tensor<B>> {
    if gate.shape != up.shape {
        return Err(Error::ShapeMismatch {
            op: if gelu { "geglu" } else { "swiglu" },
            lhs: gate.shape.clone(),
            rhs: up.shape.clone(),
        });
    }
    let out = gate.b.glu(&gate.s, &up.s, gelu)?;
    let var = tape.record(gate.is_tracked() || up.is_tracked(), || BackwardOp::Glu {
        gate: gate.clone(),
        up: up.clone(),
        gelu,
    });
    Ok(Tensor::from_storage(&gate.b, out, gate.shape.clone(), var))
}

pub(crate) fn glu_backward<B: Backend>(
    b: &B,
    gate: &Tensor<B>,
    up: &Tensor<B>,
    gelu: bool,
    dout: &B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    let (dg, du) = b.glu_backward(dout, &gate.s, &up.s, gelu)?;
    if let Some(v) = gate.var {
        grads.accumulate(b, v, dg)?;
    }
    if let Some(v) = up.var {
        grads.accumulate(b, v, du)?;
    }
    Ok(())
}
