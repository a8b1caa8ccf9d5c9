//! `Tensor`: device storage + shape + (when it depends on a trainable parameter) a tape variable.
//! Tensors are immutable and cheap to clone (the storage is shared). A tensor knows nothing about
//! gradients: `var` is only the name the tape uses for it. Reshaping keeps the var, because
//! gradients are flat buffers of the same length.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape::Shape;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The tape's name for a tracked value. Unique per process.
pub type VarId = u64;

static NEXT_VAR: AtomicU64 = AtomicU64::new(1);

pub(crate) fn new_var() -> VarId {
    NEXT_VAR.fetch_add(1, Ordering::Relaxed)
}

pub struct Tensor<B: Backend> {
    pub(crate) s: Arc<B::Storage>,
    pub(crate) shape: Shape,
    pub(crate) var: Option<VarId>,
    pub(crate) b: B,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor { s: self.s.clone(), shape: self.shape.clone(), var: self.var, b: self.b.clone() }
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}{}", self.shape, if self.var.is_some() { " (tracked)" } else { "" })
    }
}

impl<B: Backend> Tensor<B> {
    /// Uploads `data` as an untracked tensor of `shape`.
    pub fn from_slice(b: &B, data: &[f32], shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.elem_count() != data.len() {
            return Err(Error::BadShape { op: "tensor", shape, msg: format!("{} elements given", data.len()) });
        }
        Ok(Tensor { s: Arc::new(b.upload(data)?), shape, var: None, b: b.clone() })
    }
    pub fn zeros(b: &B, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        Ok(Tensor { s: Arc::new(b.zeros(shape.elem_count())?), shape, var: None, b: b.clone() })
    }
    pub(crate) fn from_storage(b: &B, s: B::Storage, shape: Shape, var: Option<VarId>) -> Self {
        Tensor { s: Arc::new(s), shape, var, b: b.clone() }
    }
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }
    pub fn backend(&self) -> &B {
        &self.b
    }
    pub fn storage(&self) -> &B::Storage {
        &self.s
    }
    /// The tape variable, if this tensor depends on a trainable parameter.
    pub fn var(&self) -> Option<VarId> {
        self.var
    }
    pub fn is_tracked(&self) -> bool {
        self.var.is_some()
    }
    /// The same values, cut from the tape.
    pub fn detach(&self) -> Self {
        Tensor { var: None, ..self.clone() }
    }
    /// The same values under a fresh tape variable: a leaf the tape differentiates with respect to.
    pub fn track(&self) -> Self {
        Tensor { var: Some(new_var()), ..self.clone() }
    }
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.b.download(&self.s)
    }
    /// A view with other dims and the same element count (free; keeps the tape variable).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape.clone(), rhs: shape });
        }
        Ok(Tensor { shape, ..self.clone() })
    }
}

/// A trainable tensor: a named leaf of the tape. Its value is updated in place by the optimizer.
pub struct Param<B: Backend> {
    pub name: String,
    pub t: Tensor<B>,
}

impl<B: Backend> Param<B> {
    pub fn new(name: impl Into<String>, t: Tensor<B>) -> Self {
        Param { name: name.into(), t: t.track() }
    }
    pub fn var(&self) -> VarId {
        self.t.var.expect("a Param is always tracked")
    }
    pub fn elem_count(&self) -> usize {
        self.t.elem_count()
    }
    /// Mutable access to the value, for the optimizer. Fails while a tape still holds the tensor.
    pub fn storage_mut(&mut self) -> Result<&mut B::Storage> {
        let name = self.name.clone();
        Arc::get_mut(&mut self.t.s).ok_or_else(|| Error::Tape(format!("parameter {name} is still held by a tape")))
    }
}
