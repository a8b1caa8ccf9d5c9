//! Rotary position embedding on (B, T, NH, D) with per-token positions (B*T).
//! Spec: src/backend/cpu/rope.rs   Test: tests/ops/rope.rs

use crate::backend::cpu::rope::RopeConfig;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tape::{BackwardOp, Tape};
use crate::tensor::Tensor;
use std::sync::Arc;

pub fn rope<B: Backend>(
    tape: &mut Tape<B>,
    x: &Tensor<B>,
    positions: &Arc<[u32]>,
    cfg: &RopeConfig,
) -> Result<Tensor<B>> {
    let d = x.dims();
    if d.len() != 4
        || d[3] != cfg.head_dim
        || positions.len() != d[0] * d[1]
        || cfg.rotary_dim > cfg.head_dim
        || !cfg.rotary_dim.is_multiple_of(2)
    {
        return Err(Error::BadShape {
            op: "rope",
            shape: x.shape.clone(),
            msg: format!(
                "expected (B, T, NH, {}) with B*T = {} positions and an even rotary dim <= head dim (got {})",
                cfg.head_dim,
                positions.len(),
                cfg.rotary_dim
            ),
        });
    }
    let (b, t, nh) = (d[0], d[1], d[2]);
    let out = x.b.rope(&x.s, positions, cfg, b, t, nh)?;
    let var = tape.record(x.is_tracked(), || BackwardOp::Rope {
        x: x.var.unwrap(),
        positions: positions.clone(),
        cfg: *cfg,
        b,
        t,
        nh,
    });
    Ok(Tensor::from_storage(&x.b, out, x.shape.clone(), var))
}
