//! Embedding lookup. The table is frozen (dense or quantized: no gradient) unless it is a dense
//! tensor with a var (full tuning, or `additional_target: embed_tokens`).
//! Spec: src/backend/cpu/embedding.rs   Test: tests/ops/embedding.rs

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tape::{BackwardOp, Tape};
use crate::tensor::Tensor;
use std::sync::Arc;

use super::Weight;

/// A (V, C) table.
pub type Embedding<B> = Weight<B>;

/// ids (N) → (N, C). Every id must be < V (checked: an error names the first bad one).
pub fn embedding<B: Backend>(tape: &mut Tape<B>, ids: &Arc<[u32]>, table: &Weight<B>, be: &B) -> Result<Tensor<B>> {
    let (v, c) = table.dims(be);
    if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= v) {
        return Err(Error::IndexOutOfRange { op: "embedding", index: bad as usize, size: v }).map_err(|e| {
            crate::Error::Context { context: format!("token {i} of {}", ids.len()), source: Box::new(e) }
        });
    }
    let shape = Shape::new(&[ids.len(), c]);
    match table {
        Weight::Dense(t) => {
            let out = be.embedding(ids, &t.s, c)?;
            let var =
                tape.record(t.is_tracked(), || BackwardOp::Embedding { table: t.var.unwrap(), ids: ids.clone(), v, c });
            Ok(Tensor::from_storage(be, out, shape, var))
        }
        Weight::Frozen(q) => Ok(Tensor::from_storage(be, be.embedding_quant(ids, q)?, shape, None)),
    }
}
