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
    /// The packed form GPU kernels decode in place (shaders/quant_linear.wgsl), or None when the
    /// format has no device decoder (the backend then uploads rows decoded to f32).
    fn device_blocks(&self) -> Option<DeviceBlocks> {
        None
    }
}

/// Formats with a device decoder. The discriminant is the shader's `FORMAT` override constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DeviceFormat {
    Q4_0 = 1,
    Q4_1 = 2,
    Q5_0 = 3,
    Q5_1 = 4,
    Q8_0 = 5,
    Q4K = 6,
    Q6K = 7,
    Q5K = 13,
    F16 = 8,
    BF16 = 9,
    /// NF4 with one f32 absmax per block.
    Nf4 = 10,
    /// NF4 with double-quantized absmax (u8 codes into a 256-entry map, f32 per nested block).
    Nf4Double = 11,
    Int8 = 12,
}

/// A frozen weight as a GPU kernel reads it (see shaders/quant_linear.wgsl `w_at` for the decode).
///
/// - ggml types: `bytes` = the rows exactly as GGUF stores them (row r at r * row_bytes);
///   `aux` empty; `params` = [row_bytes, 0, 0, 0].
/// - Nf4: `bytes` = packed codes (element e in byte e/2, high nibble first);
///   `aux` = quant_map (16) ++ absmax (n_blocks); `params` = [blocksize, round, 0, 0].
/// - Nf4Double: `bytes` = packed codes ++ absmax codes (u8, from byte `params[2]`);
///   `aux` = quant_map (16) ++ code (256) ++ nested_absmax; `params` = [blocksize, round,
///   absq_byte_offset, nested_blocksize]; `offset` added to every decoded absmax.
/// - Int8: `bytes` = i8 codes (rows, cols); `aux` = per-row scales; `params` = 0.
///
/// `round`: 0 none, 1 bf16, 2 f16 (NF4 rounds decoded values to the quantized weight's dtype).
#[derive(Clone, Debug)]
pub struct DeviceBlocks {
    pub format: DeviceFormat,
    pub bytes: Vec<u8>,
    pub aux: Vec<f32>,
    pub params: [u32; 4],
    pub offset: f32,
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
