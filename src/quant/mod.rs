//! Quantized weight formats. Frozen base weights may be stored in any of these; the ops only ever
//! need one thing from them: a row decoded to f32 (`DequantRows`). Kernels on GPU backends fuse the
//! decode into their loads; this module is the reference they are tested against.
//!
//! - `ggml`: GGUF block types (Q4_0 .. Q6_K, F16, BF16, F32), layouts as in ggml-common.h.
//! - `nf4`:  bitsandbytes NF4 (blocks of 64 with an absmax, optional double-quantized absmax).
//! - `int8`: row-wise absmax int8 (LLM.int8() style weight storage).

pub mod ggml;
pub mod int8;
pub mod nf4;

/// A (rows, cols) weight matrix that can decode any of its rows to f32.
/// For a linear layer, rows = d_out and cols = d_in (the PyTorch `weight` layout).
pub trait DequantRows: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Decodes row `r` into `out` (len == cols). `r < rows` is the caller's contract.
    fn dequantize_row(&self, r: usize, out: &mut [f32]);
    /// A short name for errors and logs ("q4_k", "nf4", "f32", ...).
    fn format_name(&self) -> String;
    /// Bytes this matrix occupies in memory.
    fn storage_bytes(&self) -> usize;
}

/// A dense f32 matrix viewed through `DequantRows` (used by tests and as the trivial case).
pub struct DenseRows<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
}

impl DequantRows for DenseRows<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[r * self.cols..(r + 1) * self.cols]);
    }
    fn format_name(&self) -> String {
        "f32".into()
    }
    fn storage_bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// An owned dense f32 matrix as a frozen weight.
pub struct F32Matrix {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl DequantRows for F32Matrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[r * self.cols..(r + 1) * self.cols]);
    }
    fn format_name(&self) -> String {
        "f32".into()
    }
    fn storage_bytes(&self) -> usize {
        self.data.len() * 4
    }
}
