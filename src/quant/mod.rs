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
    /// Plain f32 (a frozen f32 weight too large for one binding, or a format decoded on the host).
    F32 = 14,
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
/// - F32: `bytes` = the f32 values; `params` = [4 * cols, 0, 0, 0].
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

impl DeviceBlocks {
    /// Plain f32 rows as device blocks.
    pub fn from_f32(data: &[f32], cols: usize) -> Option<DeviceBlocks> {
        Some(DeviceBlocks {
            format: DeviceFormat::F32,
            bytes: bytemuck::cast_slice(data).to_vec(),
            aux: Vec::new(),
            params: [u32::try_from(cols.checked_mul(4)?).ok()?, 0, 0, 0],
            offset: 0.0,
        })
    }

    /// Splits a (rows, cols) weight into row ranges whose bytes and side table each fit in
    /// `max_bytes` (one storage binding), for weights larger than a binding (a 128k-vocabulary
    /// table). Each piece is the same format over rows [r0, r0 + n), decoded with piece-local row
    /// indices. NF4 pieces start on block boundaries (and nested-block boundaries with double
    /// quantization). Returns (r0, n, piece) triples covering all rows in order, or None when a
    /// single allowed piece would already exceed `max_bytes`.
    pub fn split_rows(self, rows: usize, cols: usize, max_bytes: usize) -> Option<Vec<(usize, usize, DeviceBlocks)>> {
        let fits = |b: &DeviceBlocks| b.bytes.len() <= max_bytes && b.aux.len() * 4 <= max_bytes;
        if fits(&self) {
            return Some(vec![(0, rows, self)]);
        }
        fn gcd(a: usize, b: usize) -> usize {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let bs = self.params[0] as usize;
        // Rows per piece must be a multiple of `g`; `per_row` bytes (data + side table) per row.
        let (g, per_row) = match self.format {
            DeviceFormat::Nf4 => (bs / gcd(cols, bs).max(1), cols.div_ceil(2) + 4 * cols.div_ceil(bs.max(1))),
            DeviceFormat::Nf4Double => {
                let span = bs * self.params[3] as usize;
                (span / gcd(cols, span).max(1), cols.div_ceil(2) + cols.div_ceil(bs.max(1)))
            }
            DeviceFormat::Int8 => (1, cols + 4),
            _ => (1, bs), // ggml and f32: params[0] is the row's byte length
        };
        if g == 0 || per_row == 0 {
            return None;
        }
        let n = (max_bytes.saturating_sub(4096) / per_row) / g * g;
        if n == 0 {
            return None;
        }
        let mut out = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + n).min(rows);
            out.push((r0, r1 - r0, self.rows_piece(r0, r1, cols)?));
            r0 = r1;
        }
        out.iter().all(|(_, _, b)| fits(b)).then_some(out)
    }

    /// Rows [r0, r1) as blocks of their own (only those rows' bytes and side table are copied).
    fn rows_piece(&self, r0: usize, r1: usize, cols: usize) -> Option<DeviceBlocks> {
        let mut p = DeviceBlocks {
            format: self.format,
            bytes: Vec::new(),
            aux: Vec::new(),
            params: self.params,
            offset: self.offset,
        };
        match self.format {
            DeviceFormat::Nf4 | DeviceFormat::Nf4Double => {
                let bs = self.params[0] as usize;
                let (e0, e1) = (r0 * cols, r1 * cols);
                let (b0, b1) = (e0 / bs, e1.div_ceil(bs));
                let packed_len =
                    if self.format == DeviceFormat::Nf4 { self.bytes.len() } else { self.params[2] as usize };
                let mut bytes = self.bytes.get(e0 / 2..e1.div_ceil(2).min(packed_len))?.to_vec();
                let mut aux = self.aux.get(..16)?.to_vec();
                if self.format == DeviceFormat::Nf4 {
                    aux.extend_from_slice(self.aux.get(16 + b0..16 + b1)?);
                } else {
                    let nbs = self.params[3] as usize;
                    let absq = packed_len;
                    p.params[2] = u32::try_from(bytes.len()).ok()?;
                    bytes.extend_from_slice(self.bytes.get(absq + b0..absq + b1)?);
                    aux.extend_from_slice(self.aux.get(16..272)?);
                    aux.extend_from_slice(self.aux.get(272 + b0 / nbs..272 + b1.div_ceil(nbs))?);
                }
                p.bytes = bytes;
                p.aux = aux;
            }
            DeviceFormat::Int8 => {
                p.bytes = self.bytes.get(r0 * cols..r1 * cols)?.to_vec();
                p.aux = self.aux.get(r0..r1)?.to_vec();
            }
            _ => {
                let rb = self.params[0] as usize;
                p.bytes = self.bytes.get(r0 * rb..r1 * rb)?.to_vec();
            }
        }
        Some(p)
    }
}
