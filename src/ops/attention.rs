//! Flash attention (causal, grouped-query, sliding window, soft-capping, segment ids).
//! q (B, T, H, D), k/v (B, T, KV, D) → out (B, T, H, D). Saves the log-sum-exp for backward.
//! Spec: src/backend/cpu/attention.rs   Test: tests/ops/attention.rs

use crate::backend::cpu::attention::AttnParams;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tape::{BackwardOp, Grads, Tape};
use crate::tensor::Tensor;
use std::sync::Arc;

/// `p.b, p.t, p.h, p.kv_heads, p.d` must match the tensors; `segment_ids` is (B*T) when given.
pub fn attention<B: Backend>(
    tape: &mut Tape<B>,
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    segment_ids: Option<&Arc<[u32]>>,
    p: &AttnParams,
) -> Result<Tensor<B>> {
    let want_q = Shape::new(&[p.b, p.t, p.h, p.d]);
    let want_kv = Shape::new(&[p.b, p.t, p.kv_heads, p.d]);
    if q.shape != want_q {
        return Err(Error::ShapeMismatch { op: "attention q", lhs: q.shape.clone(), rhs: want_q });
    }
    if k.shape != want_kv || v.shape != want_kv {
        return Err(Error::ShapeMismatch { op: "attention k/v", lhs: k.shape.clone(), rhs: want_kv });
    }
    if p.kv_heads == 0 || !p.h.is_multiple_of(p.kv_heads) {
        return Err(Error::InvalidArgument {
            op: "attention",
            msg: format!("{} query heads not a multiple of {} kv heads", p.h, p.kv_heads),
        });
    }
    if let Some(s) = segment_ids {
        if s.len() != p.b * p.t {
            return Err(Error::InvalidArgument {
                op: "attention",
                msg: format!("{} segment ids for B*T = {}", s.len(), p.b * p.t),
            });
        }
    }
    let (out, lse) = q.b.attention(&q.s, &k.s, &v.s, segment_ids.map(|s| &s[..]), p)?;
    let out = Arc::new(out);
    let tracked = q.is_tracked() || k.is_tracked() || v.is_tracked();
    let var = tape.record(tracked, || BackwardOp::Attention {
        q: q.clone(),
        k: k.clone(),
        v: v.clone(),
        out: out.clone(),
        lse: Arc::new(lse),
        segment_ids: segment_ids.cloned(),
        p: *p,
    });
    // The output tensor and the tape share one buffer.
    Ok(Tensor { s: out, shape: q.shape.clone(), var, b: q.b.clone() })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward<B: Backend>(
    b: &B,
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    out: &B::Storage,
    lse: &B::Storage,
    segment_ids: Option<&[u32]>,
    p: &AttnParams,
    dout: &B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    let (dq, dk, dv) = b.attention_backward(dout, &q.s, &k.s, &v.s, out, lse, segment_ids, p)?;
    for (t, g) in [(q, dq), (k, dk), (v, dv)] {
        if let Some(var) = t.var {
            grads.accumulate(b, var, g)?;
        }
    }
    Ok(())
}
