//! embedding: token ids -> rows of an embedding table (the first op of every LM).
//! Spec: this file   Test: tests/ops/embedding.rs
//!
//! Legend: N tokens (= B*T), V vocab, C hidden.
//!
//!   out[n, :] = table[ids[n], :]
//!   dtable[v, :] += sum over n with ids[n] == v of dout[n, :]     (scatter-add)
//!
//! Reference: PyTorch `torch.nn.functional.embedding`,
//! https://pytorch.org/docs/stable/generated/torch.nn.functional.embedding.html
//!
//! Contracts easy to miss:
//! - forward WRITES `out`; backward ACCUMULATES (+=) into `dtable`, and a repeated id accumulates
//!   once per occurrence.
//! - ids are validated (< V) by the caller; here an out-of-range id is an assert (a bug), not an Error.

use super::real::Real;
use crate::quant::DequantRows;

/// out[n, :] = table[ids[n], :].
pub fn embedding_forward<T: Real>(
    out: &mut [T], // (N, C)
    ids: &[u32],   // (N)
    table: &[T],   // (V, C)
    c: usize,
) {
    assert!(c > 0 && table.len().is_multiple_of(c) && out.len() == ids.len() * c);
    let v = table.len() / c;
    for (n, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(id < v, "embedding: id {id} out of range for vocab {v}");
        out[n * c..(n + 1) * c].copy_from_slice(&table[id * c..(id + 1) * c]);
    }
}

/// dtable[ids[n], :] += dout[n, :] for every n (scatter-add; repeated ids accumulate).
pub fn embedding_backward<T: Real>(
    dtable: &mut [T], // (V, C)
    dout: &[T],       // (N, C)
    ids: &[u32],      // (N)
    c: usize,
) {
    assert!(c > 0 && dtable.len().is_multiple_of(c) && dout.len() == ids.len() * c);
    let v = dtable.len() / c;
    for (n, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(id < v, "embedding: id {id} out of range for vocab {v}");
        let (dst, src) = (&mut dtable[id * c..(id + 1) * c], &dout[n * c..(n + 1) * c]);
        for (d, &g) in dst.iter_mut().zip(src) {
            *d += g;
        }
    }
}

/// out[n, :] = dequantize(table row ids[n]): the forward for a quantized (frozen) table, C = table.cols().
pub fn embedding_forward_rows(
    out: &mut [f32],         // (N, C)
    ids: &[u32],             // (N)
    table: &dyn DequantRows, // (V, C)
) {
    let (v, c) = (table.rows(), table.cols());
    assert!(out.len() == ids.len() * c);
    for (n, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(id < v, "embedding: id {id} out of range for vocab {v}");
        table.dequantize_row(id, &mut out[n * c..(n + 1) * c]);
    }
}
