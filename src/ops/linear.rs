//! matmul and linear. `linear` is what every projection of a transformer calls: the weight is
//! `Weight::Dense` (f32, trainable when it carries a var: full and freeze tuning) or
//! `Weight::Frozen` (any format: f32/f16/bf16 rows, GGUF blocks, NF4, int8), which passes the
//! gradient to x but never owns one.
//! Spec: src/backend/cpu/matmul.rs, src/backend/cpu/quant_linear.rs   Test: tests/ops, tests/tape.rs

use crate::backend::cpu::matmul::MatmulDims;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tape::{BackwardOp, Grads, Tape};
use crate::tensor::{Tensor, VarId};
use std::sync::Arc;

use super::give;

/// A weight matrix (d_out, d_in), PyTorch layout.
pub enum Weight<B: Backend> {
    Dense(Tensor<B>),
    Frozen(Arc<B::QStorage>),
}

impl<B: Backend> Clone for Weight<B> {
    fn clone(&self) -> Self {
        match self {
            Weight::Dense(t) => Weight::Dense(t.clone()),
            Weight::Frozen(q) => Weight::Frozen(q.clone()),
        }
    }
}

impl<B: Backend> Weight<B> {
    /// (d_out, d_in)
    pub fn dims(&self, b: &B) -> (usize, usize) {
        match self {
            Weight::Dense(t) => (t.shape.rows(), t.shape.last()),
            Weight::Frozen(q) => b.quant_shape(q),
        }
    }
    pub fn format(&self, b: &B) -> String {
        match self {
            Weight::Dense(_) => "f32".into(),
            Weight::Frozen(q) => b.quant_format(q),
        }
    }
    /// The weight as a dense f32 tensor (dequantized when frozen).
    pub fn to_dense(&self, b: &B) -> Result<Tensor<B>> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Frozen(q) => {
                let (r, c) = b.quant_shape(q);
                Ok(Tensor::from_storage(b, b.dequantize(q)?, Shape::new(&[r, c]), None))
            }
        }
    }
}

/// y = op(a) · op(b) (+ bias), batched as `dims` says. Output shape (batch, m, n), or (m, n) for batch 1.
pub fn matmul<B: Backend>(
    tape: &mut Tape<B>,
    a: &Tensor<B>,
    b: &Tensor<B>,
    bias: Option<&Tensor<B>>,
    dims: MatmulDims,
) -> Result<Tensor<B>> {
    let need_a = if dims.a_stride == 0 { dims.m * dims.k } else { dims.batch * dims.m * dims.k };
    let need_b = if dims.b_stride == 0 { dims.k * dims.n } else { dims.batch * dims.k * dims.n };
    if a.elem_count() != need_a || b.elem_count() != need_b {
        return Err(Error::ShapeMismatch { op: "matmul", lhs: a.shape.clone(), rhs: b.shape.clone() });
    }
    if let Some(bias) = bias {
        if bias.elem_count() != dims.n {
            return Err(Error::ShapeMismatch {
                op: "matmul bias",
                lhs: Shape::new(&[dims.n]),
                rhs: bias.shape.clone(),
            });
        }
    }
    let s = a.b.matmul(&a.s, &b.s, bias.map(|t| &*t.s), dims)?;
    let tracked = a.is_tracked() || b.is_tracked() || bias.is_some_and(|t| t.is_tracked());
    let var = tape.record(tracked, || BackwardOp::Matmul {
        a: a.clone(),
        b: b.clone(),
        bias: bias.and_then(|t| t.var),
        dims,
    });
    let shape = if dims.batch == 1 { Shape::new(&[dims.m, dims.n]) } else { Shape::new(&[dims.batch, dims.m, dims.n]) };
    Ok(Tensor::from_storage(&a.b, s, shape, var))
}

pub(crate) fn matmul_backward<B: Backend>(
    be: &B,
    a: &Tensor<B>,
    b: &Tensor<B>,
    bias: Option<VarId>,
    dims: MatmulDims,
    dout: &B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    let (da, db, dbias) =
        be.matmul_backward(dout, &a.s, &b.s, dims, (a.is_tracked(), b.is_tracked(), bias.is_some()))?;
    if let (Some(v), Some(g)) = (a.var, da) {
        grads.accumulate(be, v, g)?;
    }
    if let (Some(v), Some(g)) = (b.var, db) {
        grads.accumulate(be, v, g)?;
    }
    if let (Some(v), Some(g)) = (bias, dbias) {
        grads.accumulate(be, v, g)?;
    }
    Ok(())
}

/// y = x · Wᵀ + bias: x (..., d_in) → y (..., d_out).
pub fn linear<B: Backend>(
    tape: &mut Tape<B>,
    x: &Tensor<B>,
    w: &Weight<B>,
    bias: Option<&Tensor<B>>,
) -> Result<Tensor<B>> {
    let be = &x.b;
    let (d_out, d_in) = w.dims(be);
    if x.shape.last() != d_in {
        return Err(Error::ShapeMismatch { op: "linear", lhs: x.shape.clone(), rhs: Shape::new(&[d_out, d_in]) });
    }
    let n = x.shape.rows();
    let mut out_dims = x.shape.dims().to_vec();
    *out_dims.last_mut().unwrap() = d_out;
    match w {
        Weight::Dense(wt) => {
            let y = matmul(tape, &x.reshape([n, d_in])?, wt, bias, MatmulDims::linear(n, d_out, d_in))?;
            y.reshape(out_dims)
        }
        Weight::Frozen(q) => {
            if let Some(bias) = bias {
                if bias.elem_count() != d_out {
                    return Err(Error::ShapeMismatch {
                        op: "linear bias",
                        lhs: Shape::new(&[d_out]),
                        rhs: bias.shape.clone(),
                    });
                }
            }
            let s = be.quant_linear(&x.s, q, bias.map(|t| &*t.s), n)?;
            let bias_var = bias.and_then(|t| t.var);
            let var = tape.record(x.is_tracked() || bias_var.is_some(), || BackwardOp::FrozenLinear {
                x: x.var,
                bias: bias_var,
                w: q.clone(),
                n,
            });
            Ok(Tensor::from_storage(be, s, Shape::from(out_dims), var))
        }
    }
}

pub(crate) fn frozen_linear_backward<B: Backend>(
    be: &B,
    x: Option<VarId>,
    bias: Option<VarId>,
    w: &B::QStorage,
    n: usize,
    dout: &B::Storage,
    grads: &mut Grads<B>,
) -> Result<()> {
    give(be, grads, x, || be.quant_linear_backward(dout, w, n))?;
    if let Some(v) = bias {
        let (d_out, _) = be.quant_shape(w);
        let ones = be.upload(&vec![1.0; n])?;
        // dbias[j] = sum_r dout[r, j]: (1, N) · (N, d_out)
        let g = be.matmul(&ones, dout, None, MatmulDims::new(1, d_out, n))?;
        grads.accumulate(be, v, g)?;
    }
    Ok(())
}
