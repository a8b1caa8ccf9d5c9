//! Elementwise ops: add, mul, scale, and mul_rows (a (C) vector broadcast over rows).
//! Spec: src/backend/cpu_backend.rs (one-line loops)   Test: tests/tape.rs

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tape::{BackwardOp, Grads, Tape};
use crate::tensor::{Tensor, VarId};

use super::give;

fn same_shape<B: Backend>(op: &'static str, a: &Tensor<B>, b: &Tensor<B>) -> Result<()> {
    if a.shape != b.shape {
        return Err(Error::ShapeMismatch { op, lhs: a.shape.clone(), rhs: b.shape.clone() });
    }
    Ok(())
}

/// y = a + b
pub fn add<B: Backend>(tape: &mut Tape<B>, a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    same_shape("add", a, b)?;
    let s = a.b.add(&a.s, &b.s)?;
    let (va, vb) = (a.var, b.var);
    let var = tape.record(va.is_some() || vb.is_some(), || BackwardOp::Add { a: va, b: vb });
    Ok(Tensor::from_storage(&a.b, s, a.shape.clone(), var))
}

pub(crate) fn add_backward<B: Backend>(
    b: &B,
    va: Option<VarId>,
    vb: Option<VarId>,
    dout: B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    match (va, vb) {
        (Some(x), Some(y)) => {
            grads.accumulate(b, x, b.scale(&dout, 1.0)?)?;
            grads.accumulate(b, y, dout)
        }
        (Some(x), None) | (None, Some(x)) => grads.accumulate(b, x, dout),
        (None, None) => Ok(()),
    }
}

/// y = a ⊙ b
pub fn mul<B: Backend>(tape: &mut Tape<B>, a: &Tensor<B>, b: &Tensor<B>) -> Result<Tensor<B>> {
    same_shape("mul", a, b)?;
    let s = a.b.mul(&a.s, &b.s)?;
    let var = tape.record(a.is_tracked() || b.is_tracked(), || BackwardOp::Mul { a: a.clone(), b: b.clone() });
    Ok(Tensor::from_storage(&a.b, s, a.shape.clone(), var))
}

pub(crate) fn mul_backward<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    y: &Tensor<B>,
    dout: &B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    give(b, grads, x.var, || b.mul(dout, &y.s))?;
    give(b, grads, y.var, || b.mul(dout, &x.s))
}

/// y = s · a
pub fn scale<B: Backend>(tape: &mut Tape<B>, a: &Tensor<B>, s: f32) -> Result<Tensor<B>> {
    let out = a.b.scale(&a.s, s)?;
    let var = tape.record(a.is_tracked(), || BackwardOp::Scale { a: a.var.unwrap(), s });
    Ok(Tensor::from_storage(&a.b, out, a.shape.clone(), var))
}

/// y[.., j] = x[.., j] · v[j]: x (..., C), v (C).
pub fn mul_rows<B: Backend>(tape: &mut Tape<B>, x: &Tensor<B>, v: &Tensor<B>) -> Result<Tensor<B>> {
    let c = x.shape.last();
    if v.elem_count() != c {
        return Err(Error::ShapeMismatch { op: "mul_rows", lhs: x.shape.clone(), rhs: v.shape.clone() });
    }
    let rows = x.shape.rows();
    let s = x.b.mul_rows(&x.s, &v.s, rows, c)?;
    let var =
        tape.record(x.is_tracked() || v.is_tracked(), || BackwardOp::MulRows { x: x.clone(), v: v.clone(), rows, c });
    Ok(Tensor::from_storage(&x.b, s, x.shape.clone(), var))
}

pub(crate) fn mul_rows_backward<B: Backend>(
    b: &B,
    x: &Tensor<B>,
    v: &Tensor<B>,
    rows: usize,
    c: usize,
    dout: &B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    give(b, grads, x.var, || b.mul_rows(dout, &v.s, rows, c))?;
    give(b, grads, v.var, || b.mul_rows_backward_v(dout, &x.s, rows, c))
}
