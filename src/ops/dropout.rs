//! Dropout with a counter-based RNG: element i is kept iff hash(seed, offset + i) ≥ p, so nothing is
//! stored and a recomputation (activation checkpointing) or another backend draws the same mask.
//! Spec: src/backend/cpu/dropout.rs   Test: tests/ops/dropout.rs

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tape::{BackwardOp, Tape};
use crate::tensor::Tensor;

pub fn dropout<B: Backend>(tape: &mut Tape<B>, x: &Tensor<B>, p: f32, seed: u64, offset: u64) -> Result<Tensor<B>> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::InvalidArgument { op: "dropout", msg: format!("p = {p} is not in [0, 1)") });
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let out = x.b.dropout(&x.s, p, seed, offset)?;
    let var = tape.record(x.is_tracked(), || BackwardOp::Dropout { x: x.var.unwrap(), p, seed, offset });
    Ok(Tensor::from_storage(&x.b, out, x.shape.clone(), var))
}
