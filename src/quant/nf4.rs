//! nf4: bitsandbytes 4-bit NormalFloat weights (QLoRA), bit-exact with bitsandbytes 0.50 on CPU.
//! Spec: this file   Test: tests/quant_nf4.rs (fixture ../shared/fixtures/quant/nf4.safetensors)
//!
//! Layout (Dettmers et al. 2023, QLoRA, https://arxiv.org/abs/2305.14314):
//!   - the (rows, cols) weight is flattened row-major and cut into blocks of `blocksize` values
//!     (a block may straddle two rows when cols is not a multiple of blocksize);
//!   - absmax[b] = max |w| over block b; each w / absmax[b] is mapped to the nearest of the 16
//!     NF4 code values `quant_map`;
//!   - two 4-bit codes per byte, the FIRST element in the HIGH nibble (bitsandbytes order);
//!     an odd element count is padded with the code of 0.0 (7);
//!   - double quantization (`compress_statistics`): offset = mean(absmax), then absmax - offset
//!     is quantized blockwise (blocks of 256) to 8 bits with the signed dynamic map (256 values),
//!     each nested block with its own f32 `nested_absmax`.
//!
//! Decoding: w = quant_map[q] * absmax[b], absmax[b] = code[qa[b]] * nested_absmax[b / 256] + offset,
//! all in f32, then rounded to the quant state's dtype (bf16 / f16) when it is not f32.
//!
//! Contract easy to miss: `dequantize` reproduces bitsandbytes' OUTPUT, including the final
//! rounding to bf16/f16 for weights quantized from those dtypes (quant state `dtype`).
//! Quantization follows the CPU backend of bitsandbytes 0.50 (backends/default/ops.py and
//! csrc/cpu_ops.cpp): scaled = clamp(w * (1 / absmax), -1, 1) in f32, code = argmin |scaled - q_i|
//! (first index on ties; NaN, e.g. an all-zero block, gives code 0 as torch.argmin does).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::DequantRows;
use safetensors::Dtype;

/// bitsandbytes' NF4 code values (`get_4bit_type("nf4")`, as f32), index = 4-bit code.
pub const NF4_QUANT_MAP: [f32; 16] = [
    -1.0,
    -0.6961928,
    -0.52507305,
    -0.3949175,
    -0.28444138,
    -0.18477343,
    -0.091050036,
    0.0,
    0.0795803,
    0.1609302,
    0.2461123,
    0.33791524,
    0.44070983,
    0.562617,
    0.72295684,
    1.0,
];

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`, as f32), used for
/// the double-quantized absmax. Copied bit for bit from the fixture; tests/quant_nf4.rs checks it.
pub const DYNAMIC_MAP: [f32; 256] = [
    -0.99296874,
    -0.9789063,
    -0.96484375,
    -0.9507812,
    -0.93671876,
    -0.92265624,
    -0.9085938,
    -0.89453125,
    -0.8804687,
    -0.86640626,
    -0.85234374,
    -0.8382813,
    -0.82421875,
    -0.8101562,
    -0.79609376,
    -0.78203124,
    -0.7679688,
    -0.75390625,
    -0.7398437,
    -0.72578126,
    -0.7117188,
    -0.6976563,
    -0.68359375,
    -0.6695312,
    -0.65546876,
    -0.6414063,
    -0.6273438,
    -0.61328125,
    -0.5992187,
    -0.58515626,
    -0.5710938,
    -0.5570313,
    -0.54296875,
    -0.5289062,
    -0.5148437,
    -0.50078124,
    -0.4867187,
    -0.47265625,
    -0.45859373,
    -0.44453126,
    -0.43046874,
    -0.41640624,
    -0.40234375,
    -0.38828123,
    -0.37421876,
    -0.36015624,
    -0.34609374,
    -0.33203125,
    -0.31796873,
    -0.30390626,
    -0.28984374,
    -0.27578127,
    -0.26171875,
    -0.24765624,
    -0.23359375,
    -0.21953125,
    -0.20546874,
    -0.19140625,
    -0.17734376,
    -0.16328125,
    -0.14921875,
    -0.13515624,
    -0.12109375,
    -0.107031256,
    -0.09859375,
    -0.09578126,
    -0.092968754,
    -0.09015625,
    -0.08734375,
    -0.08453125,
    -0.08171876,
    -0.07890625,
    -0.07609375,
    -0.07328125,
    -0.070468746,
    -0.067656256,
    -0.06484375,
    -0.06203125,
    -0.059218753,
    -0.05640625,
    -0.05359375,
    -0.05078125,
    -0.04796875,
    -0.04515625,
    -0.042343747,
    -0.03953125,
    -0.036718752,
    -0.03390625,
    -0.03109375,
    -0.028281251,
    -0.02546875,
    -0.02265625,
    -0.019843752,
    -0.01703125,
    -0.01421875,
    -0.01140625,
    -0.00971875,
    -0.009156249,
    -0.00859375,
    -0.00803125,
    -0.00746875,
    -0.00690625,
    -0.00634375,
    -0.00578125,
    -0.0052187503,
    -0.0046562497,
    -0.00409375,
    -0.0035312497,
    -0.00296875,
    -0.00240625,
    -0.00184375,
    -0.0012812499,
    -0.0009437501,
    -0.00083125,
    -0.00071875006,
    -0.0006062501,
    -0.00049375003,
    -0.00038125002,
    -0.00026875004,
    -0.00015625001,
    -8.875e-05,
    -6.625e-05,
    -4.375e-05,
    -2.1249998e-05,
    -7.75e-06,
    -3.2500002e-06,
    -5.5000004e-07,
    0.0,
    5.5000004e-07,
    3.2500002e-06,
    7.75e-06,
    2.1249998e-05,
    4.375e-05,
    6.625e-05,
    8.875e-05,
    0.00015625001,
    0.00026875004,
    0.00038125002,
    0.00049375003,
    0.0006062501,
    0.00071875006,
    0.00083125,
    0.0009437501,
    0.0012812499,
    0.00184375,
    0.00240625,
    0.00296875,
    0.0035312497,
    0.00409375,
    0.0046562497,
    0.0052187503,
    0.00578125,
    0.00634375,
    0.00690625,
    0.00746875,
    0.00803125,
    0.00859375,
    0.009156249,
    0.00971875,
    0.01140625,
    0.01421875,
    0.01703125,
    0.019843752,
    0.02265625,
    0.02546875,
    0.028281251,
    0.03109375,
    0.03390625,
    0.036718752,
    0.03953125,
    0.042343747,
    0.04515625,
    0.04796875,
    0.05078125,
    0.05359375,
    0.05640625,
    0.059218753,
    0.06203125,
    0.06484375,
    0.067656256,
    0.070468746,
    0.07328125,
    0.07609375,
    0.07890625,
    0.08171876,
    0.08453125,
    0.08734375,
    0.09015625,
    0.092968754,
    0.09578126,
    0.09859375,
    0.107031256,
    0.12109375,
    0.13515624,
    0.14921875,
    0.16328125,
    0.17734376,
    0.19140625,
    0.20546874,
    0.21953125,
    0.23359375,
    0.24765624,
    0.26171875,
    0.27578127,
    0.28984374,
    0.30390626,
    0.31796873,
    0.33203125,
    0.34609374,
    0.36015624,
    0.37421876,
    0.38828123,
    0.40234375,
    0.41640624,
    0.43046874,
    0.44453126,
    0.45859373,
    0.47265625,
    0.4867187,
    0.50078124,
    0.5148437,
    0.5289062,
    0.54296875,
    0.5570313,
    0.5710938,
    0.58515626,
    0.5992187,
    0.61328125,
    0.6273438,
    0.6414063,
    0.65546876,
    0.6695312,
    0.68359375,
    0.6976563,
    0.7117188,
    0.72578126,
    0.7398437,
    0.75390625,
    0.7679688,
    0.78203124,
    0.79609376,
    0.8101562,
    0.82421875,
    0.8382813,
    0.85234374,
    0.86640626,
    0.8804687,
    0.89453125,
    0.9085938,
    0.92265624,
    0.93671876,
    0.9507812,
    0.96484375,
    0.9789063,
    0.99296874,
    1.0,
];

/// Block size of the nested (double) quantization: bitsandbytes hard-codes 256.
pub const NESTED_BLOCKSIZE: usize = 256;

/// The per-block absmax, plain or double-quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum Nf4Absmax {
    /// One f32 per block. // (n_blocks)
    Plain(Vec<f32>),
    /// absmax[b] = code[q[b]] * nested_absmax[b / nested_blocksize] + offset.
    Double {
        q: Vec<u8>,              // (n_blocks)
        code: Vec<f32>,          // (256) the dynamic map
        nested_absmax: Vec<f32>, // (ceil(n_blocks / nested_blocksize))
        nested_blocksize: usize, // 256
        offset: f32,             // mean of the original absmax
    },
}

/// A (rows, cols) NF4 matrix in bitsandbytes' layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Nf4Matrix {
    pub rows: usize,
    pub cols: usize,
    pub blocksize: usize,
    /// Two codes per byte, first element in the high nibble. // (ceil(rows * cols / 2))
    pub packed: Vec<u8>,
    pub absmax: Nf4Absmax,
    pub quant_map: [f32; 16],
    /// The dtype of the weight that was quantized (quant state `dtype`); decoded values are
    /// rounded to it, as bitsandbytes does.
    pub dtype: DType,
}

/// One tensor as a Hugging Face checkpoint stores it: (dtype, shape, little-endian bytes).
pub type HfTensor<'a> = (Dtype, Vec<usize>, &'a [u8]);

fn qerr(msg: impl Into<String>) -> Error {
    Error::Quant { format: "nf4".into(), msg: msg.into() }
}

/// Index of the code value nearest to `x` (f32 |x - c|, first index on ties, NaN -> 0):
/// torch.argmin(|x - code|) as bitsandbytes' CPU quantizers use it.
fn nearest_code(x: f32, code: &[f32]) -> usize {
    if x.is_nan() {
        return 0;
    }
    let mut best = 0;
    let mut best_d = (x - code[0]).abs();
    for (i, &c) in code.iter().enumerate().skip(1) {
        let d = (x - c).abs();
        if d < best_d {
            best = i;
            best_d = d;
        }
    }
    best
}

/// torch's CPU `mean()` of a contiguous f32 vector, reproducing its summation order
/// (aten SumKernel.cpp `vectorized_inner_sum` with 8-lane AVX2 vectors, `row_sum` with 4
/// accumulators and the 4-level cascade), then `sum / n`. bitsandbytes stores this as the
/// double-quantization offset; the order matters to the last ulp (fixture case odd_rows_64).
/// Exact for single-threaded reductions (torch splits above 32768 elements, which can move
/// the result by an ulp; the decoded weights then differ by far less than the NF4 step).
pub fn torch_mean_f32(x: &[f32]) -> f32 {
    const V: usize = 8; // AVX2 lanes
    const ILP: usize = 4; // row_sum's accumulators
    let n = x.len();
    if n == 0 {
        return f32::NAN;
    }
    let sum = if n >= V {
        let nvec = n / V;
        let vec = |i: usize| -> [f32; V] { x[i * V..(i + 1) * V].try_into().unwrap() };
        let add = |a: &mut [f32; V], b: [f32; V]| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        // row_sum over vectors: (-1, ILP) view -> multi_row_sum, then the leftovers into acc 0.
        let size_ilp = nvec / ILP;
        let mut partial = multi_row_sum(size_ilp, |i, k| vec(i * ILP + k), add);
        for i in size_ilp * ILP..nvec {
            add(&mut partial[0], vec(i));
        }
        for k in 1..ILP {
            let p = partial[k];
            add(&mut partial[0], p);
        }
        let mut acc = 0.0f32;
        for &v in &x[nvec * V..] {
            acc += v;
        }
        for l in partial[0] {
            acc += l;
        }
        acc
    } else {
        let size_ilp = n / ILP;
        let mut partial = multi_row_sum(size_ilp, |i, k| x[i * ILP + k], |a: &mut f32, b| *a += b);
        for &v in &x[size_ilp * ILP..] {
            partial[0] += v;
        }
        let mut acc = partial[0];
        for p in &partial[1..] {
            acc += p;
        }
        acc
    };
    sum / n as f32
}

#[allow(clippy::needless_range_loop)] // written index-by-index to mirror aten's loops
/// aten `multi_row_sum` with nrows = 4: sums `size` rows of 4 accumulators in a 4-level cascade.
fn multi_row_sum<A: Copy + Default>(size: usize, load: impl Fn(usize, usize) -> A, add: impl Fn(&mut A, A)) -> [A; 4] {
    const LEVELS: usize = 4;
    let ceil_log2 = |v: usize| {
        if v <= 2 {
            1
        } else {
            (usize::BITS - (v - 1).leading_zeros()) as usize
        }
    };
    let level_power = (ceil_log2(size) / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[A::default(); 4]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for k in 0..4 {
                add(&mut acc[0][k], load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..4 {
                let lower = acc[j - 1][k];
                add(&mut acc[j][k], lower);
                acc[j - 1][k] = A::default();
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for k in 0..4 {
            add(&mut acc[0][k], load(i, k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..4 {
            let v = acc[j][k];
            add(&mut acc[0][k], v);
        }
    }
    acc[0]
}

/// Rounds a decoded f32 to the weight's dtype (round to nearest even), as bitsandbytes'
/// dequantize writes its output in that dtype.
#[inline]
fn round_to(v: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F32 => v,
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
    }
}

fn dtype_to_torch(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
    }
}

fn dtype_from_torch(s: &str) -> Result<DType> {
    match s.trim_start_matches("torch.") {
        "float32" => Ok(DType::F32),
        "bfloat16" => Ok(DType::BF16),
        "float16" => Ok(DType::F16),
        o => Err(qerr(format!("unsupported quant state dtype {o:?}"))),
    }
}

/// The JSON quant state bitsandbytes stores as `<prefix>.weight.quant_state.bitsandbytes__nf4`.
#[derive(serde::Deserialize)]
struct QuantStateJson {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Vec<usize>,
    nested_blocksize: Option<usize>,
    nested_dtype: Option<String>,
    nested_offset: Option<f64>,
}

impl Nf4Matrix {
    /// Quantizes a row-major (rows, cols) f32 weight. See `quantize_as`.
    pub fn quantize(src: &[f32], rows: usize, cols: usize, blocksize: usize, double_quant: bool) -> Result<Self> {
        Self::quantize_as(src, rows, cols, blocksize, double_quant, DType::F32)
    }

    /// Quantizes `src` (// (rows, cols)) recording `dtype` as the original weight dtype: give
    /// the exact f32 values of a bf16/f16 weight with DType::BF16/F16 to get what bitsandbytes
    /// produces for that weight (its quantizer computes in f32; only the decoding rounds).
    pub fn quantize_as(
        src: &[f32],
        rows: usize,
        cols: usize,
        blocksize: usize,
        double_quant: bool,
        dtype: DType,
    ) -> Result<Self> {
        let n = rows.checked_mul(cols).ok_or_else(|| qerr("rows * cols overflows"))?;
        if src.len() != n {
            return Err(qerr(format!("src has {} values, expected {rows} x {cols} = {n}", src.len())));
        }
        if n == 0 || blocksize == 0 {
            return Err(qerr(format!("empty matrix or zero blocksize ({rows} x {cols}, blocksize {blocksize})")));
        }
        let n_blocks = n.div_ceil(blocksize);
        let mut absmax = Vec::with_capacity(n_blocks);
        let mut codes = Vec::with_capacity(n + 1);
        for block in src.chunks(blocksize) {
            let am = block.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            absmax.push(am);
            let inv = 1.0 / am; // bitsandbytes multiplies by the f32 reciprocal
            for &v in block {
                let s = (v * inv).clamp(-1.0, 1.0); // clamp keeps NaN, as torch.clamp does
                codes.push(nearest_code(s, &NF4_QUANT_MAP) as u8);
            }
        }
        if n % 2 == 1 {
            codes.push(nearest_code(0.0, &NF4_QUANT_MAP) as u8); // bitsandbytes pads with 0.0
        }
        let packed = codes.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        let absmax = if double_quant { Self::double_quantize(&absmax) } else { Nf4Absmax::Plain(absmax) };
        Ok(Nf4Matrix { rows, cols, blocksize, packed, absmax, quant_map: NF4_QUANT_MAP, dtype })
    }

    /// bitsandbytes `quantize_blockwise(absmax - mean(absmax), blocksize=256)` with the dynamic
    /// map: per nested block, z = a / max|a| (f32 division, as csrc/common.cpp), nearest code.
    pub fn double_quantize(absmax: &[f32]) -> Nf4Absmax {
        let offset = torch_mean_f32(absmax);
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let mut q = Vec::with_capacity(centred.len());
        let mut nested_absmax = Vec::new();
        for block in centred.chunks(NESTED_BLOCKSIZE) {
            let m = block.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            nested_absmax.push(m);
            for &v in block {
                // m == 0 means every absmax equals the offset: store code 0.0, decoding to offset.
                let z = if m == 0.0 { 0.0 } else { v / m };
                q.push(nearest_code(z, &DYNAMIC_MAP) as u8);
            }
        }
        Nf4Absmax::Double { q, code: DYNAMIC_MAP.to_vec(), nested_absmax, nested_blocksize: NESTED_BLOCKSIZE, offset }
    }

    pub fn n_blocks(&self) -> usize {
        (self.rows * self.cols).div_ceil(self.blocksize)
    }

    /// The f32 absmax of block `b` (decoding the double quantization if any).
    #[inline]
    pub fn block_absmax(&self, b: usize) -> f32 {
        match &self.absmax {
            Nf4Absmax::Plain(a) => a[b],
            Nf4Absmax::Double { q, code, nested_absmax, nested_blocksize, offset } => {
                code[q[b] as usize] * nested_absmax[b / nested_blocksize] + offset
            }
        }
    }

    /// Decodes elements [start, start + out.len()) of the flattened matrix into `out`.
    fn decode_range(&self, start: usize, out: &mut [f32]) {
        let bs = self.blocksize;
        if start.is_multiple_of(2) && bs.is_multiple_of(2) {
            // Fast path (every row of an even-width matrix): whole bytes, two codes each, the
            // block scale hoisted and the dtype rounding done once per segment. Same values as
            // the element loop below (tested: tests/quant_nf4.rs decodes bit-exactly either way).
            let end = start + out.len();
            let mut e = start;
            while e < end {
                let b = e / bs;
                let seg_end = ((b + 1) * bs).min(end);
                let scale = self.block_absmax(b);
                let o = &mut out[e - start..seg_end - start];
                let bytes = &self.packed[e / 2..seg_end.div_ceil(2)];
                let pairs = o.len() / 2;
                for k in 0..pairs {
                    let byte = bytes[k];
                    o[2 * k] = self.quant_map[(byte >> 4) as usize] * scale;
                    o[2 * k + 1] = self.quant_map[(byte & 0x0f) as usize] * scale;
                }
                if o.len() % 2 == 1 {
                    o[2 * pairs] = self.quant_map[(bytes[pairs] >> 4) as usize] * scale;
                }
                if self.dtype != DType::F32 {
                    o.iter_mut().for_each(|v| *v = round_to(*v, self.dtype));
                }
                e = seg_end;
            }
            return;
        }
        let mut e = start;
        let end = start + out.len();
        while e < end {
            let b = e / bs;
            let seg_end = ((b + 1) * bs).min(end);
            let scale = self.block_absmax(b);
            for i in e..seg_end {
                let byte = self.packed[i / 2];
                let nib = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
                out[i - start] = round_to(self.quant_map[nib as usize] * scale, self.dtype);
            }
            e = seg_end;
        }
    }

    /// Decodes the whole matrix. // out: (rows, cols)
    pub fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.rows * self.cols, "nf4 dequantize: out length");
        self.decode_range(0, out);
    }

    /// Checks every size against the others (for matrices built by hand or read from a file).
    pub fn validate(&self) -> Result<()> {
        let n = self.rows.checked_mul(self.cols).ok_or_else(|| qerr("rows * cols overflows"))?;
        if n == 0 || self.blocksize == 0 {
            return Err(qerr(format!("empty matrix or zero blocksize ({} x {})", self.rows, self.cols)));
        }
        if self.packed.len() != n.div_ceil(2) {
            return Err(qerr(format!("packed has {} bytes, expected {}", self.packed.len(), n.div_ceil(2))));
        }
        let nb = self.n_blocks();
        match &self.absmax {
            Nf4Absmax::Plain(a) if a.len() != nb => Err(qerr(format!("absmax has {} values, expected {nb}", a.len()))),
            Nf4Absmax::Plain(_) => Ok(()),
            Nf4Absmax::Double { q, code, nested_absmax, nested_blocksize, .. } => {
                if q.len() != nb {
                    return Err(qerr(format!("quantized absmax has {} values, expected {nb}", q.len())));
                }
                if code.len() != 256 {
                    return Err(qerr(format!("nested quant map has {} values, expected 256", code.len())));
                }
                if *nested_blocksize == 0 || nested_absmax.len() != nb.div_ceil(*nested_blocksize) {
                    return Err(qerr(format!(
                        "nested absmax has {} values, expected ceil({nb} / {nested_blocksize})",
                        nested_absmax.len()
                    )));
                }
                Ok(())
            }
        }
    }

    /// Reads the tensors a Hugging Face bnb-4bit checkpoint stores for one linear weight:
    /// `<prefix>.weight` (packed), `.weight.absmax`, `.weight.quant_map`, and when double
    /// quantized `.weight.nested_absmax`, `.weight.nested_quant_map`; the JSON quant state
    /// `.weight.quant_state.bitsandbytes__nf4` gives shape, blocksize, dtype and offset.
    /// `prefix` is the module name, e.g. "model.layers.0.self_attn.q_proj".
    pub fn from_hf_tensors<'a>(prefix: &str, get: impl Fn(&str) -> Option<HfTensor<'a>>) -> Result<Self> {
        let name = |s: &str| format!("{prefix}.weight{s}");
        let need = |s: &str| get(&name(s)).ok_or_else(|| qerr(format!("missing tensor {}", name(s))));
        let (_, _, qs_bytes) = need(".quant_state.bitsandbytes__nf4")?;
        let qs: QuantStateJson = serde_json::from_slice(qs_bytes)
            .map_err(|e| qerr(format!("{}: bad quant state JSON: {e}", name(".quant_state.bitsandbytes__nf4"))))?;
        if qs.quant_type != "nf4" {
            return Err(qerr(format!("{prefix}: quant_type {:?} is not supported (only nf4)", qs.quant_type)));
        }
        let dtype = dtype_from_torch(&qs.dtype)?;
        let (rows, cols) = match qs.shape[..] {
            [r, c] => (r, c),
            [c] => (1, c),
            _ => return Err(qerr(format!("{prefix}: quant state shape {:?} is not 1-D or 2-D", qs.shape))),
        };
        // The packed storage may be any dtype (quant_storage); only its bytes matter.
        let (_, _, packed) = need("")?;
        let (am_dtype, _, am_bytes) = need(".absmax")?;
        let quant_map: [f32; 16] = f32_vec(&need(".quant_map")?, &name(".quant_map"))?
            .try_into()
            .map_err(|v: Vec<f32>| qerr(format!("{}: {} values, expected 16", name(".quant_map"), v.len())))?;
        let absmax = match am_dtype {
            Dtype::U8 => {
                let nested_absmax = f32_vec(&need(".nested_absmax")?, &name(".nested_absmax"))?;
                let code = f32_vec(&need(".nested_quant_map")?, &name(".nested_quant_map"))?;
                let offset =
                    qs.nested_offset.ok_or_else(|| qerr(format!("{prefix}: quant state has no nested_offset")))?;
                if let Some(d) = &qs.nested_dtype {
                    if dtype_from_torch(d)? != DType::F32 {
                        return Err(qerr(format!("{prefix}: nested_dtype {d:?} is not supported (only float32)")));
                    }
                }
                Nf4Absmax::Double {
                    q: am_bytes.to_vec(),
                    code,
                    nested_absmax,
                    nested_blocksize: qs.nested_blocksize.unwrap_or(NESTED_BLOCKSIZE),
                    offset: offset as f32,
                }
            }
            Dtype::F32 => Nf4Absmax::Plain(f32_vec(&(am_dtype, vec![], am_bytes), &name(".absmax"))?),
            d => return Err(qerr(format!("{}: dtype {d:?}, expected F32 or U8", name(".absmax")))),
        };
        let m = Nf4Matrix { rows, cols, blocksize: qs.blocksize, packed: packed.to_vec(), absmax, quant_map, dtype };
        m.validate().map_err(|e| qerr(format!("{prefix}: {e}")))?;
        Ok(m)
    }

    /// The inverse of `from_hf_tensors`: (name, dtype, shape, bytes) as bitsandbytes writes them
    /// (`QuantState.as_dict(packed=True)`), the JSON byte for byte as Python's json.dumps does.
    pub fn to_hf_tensors(&self, prefix: &str) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let name = |s: &str| format!("{prefix}.weight{s}");
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut json = format!(
            "{{\"quant_type\": \"nf4\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}, {}]",
            self.blocksize,
            dtype_to_torch(self.dtype),
            self.rows,
            self.cols
        );
        let mut out = vec![(name(""), Dtype::U8, vec![self.packed.len(), 1], self.packed.clone())];
        match &self.absmax {
            Nf4Absmax::Plain(a) => out.push((name(".absmax"), Dtype::F32, vec![a.len()], f32_bytes(a))),
            Nf4Absmax::Double { q, code, nested_absmax, nested_blocksize, offset } => {
                out.push((name(".absmax"), Dtype::U8, vec![q.len()], q.clone()));
                out.push((name(".nested_absmax"), Dtype::F32, vec![nested_absmax.len()], f32_bytes(nested_absmax)));
                out.push((name(".nested_quant_map"), Dtype::F32, vec![code.len()], f32_bytes(code)));
                // Python prints the f64 of the f32 offset with the shortest repr, as ryu does.
                let off = serde_json::to_string(&(*offset as f64)).unwrap_or_else(|_| "NaN".into());
                json += &format!(
                    ", \"nested_blocksize\": {nested_blocksize}, \"nested_dtype\": \"float32\", \"nested_offset\": {off}"
                );
            }
        }
        json.push('}');
        out.push((name(".quant_map"), Dtype::F32, vec![16], f32_bytes(&self.quant_map)));
        let jb = json.into_bytes();
        out.push((name(".quant_state.bitsandbytes__nf4"), Dtype::U8, vec![jb.len()], jb));
        out
    }
}

/// Little-endian F32 bytes to a Vec, with a clear error for another dtype or a ragged length.
fn f32_vec(t: &HfTensor<'_>, what: &str) -> Result<Vec<f32>> {
    if t.0 != Dtype::F32 {
        return Err(qerr(format!("{what}: dtype {:?}, expected F32", t.0)));
    }
    if !t.2.len().is_multiple_of(4) {
        return Err(qerr(format!("{what}: {} bytes is not a whole number of f32", t.2.len())));
    }
    Ok(t.2.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

impl DequantRows for Nf4Matrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    /// Row r covers elements [r * cols, (r + 1) * cols), which may straddle blocks.
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.cols);
        self.decode_range(r * self.cols, out);
    }
    fn format_name(&self) -> String {
        match self.absmax {
            Nf4Absmax::Plain(_) => "nf4".into(),
            Nf4Absmax::Double { .. } => "nf4_dq".into(),
        }
    }
    fn storage_bytes(&self) -> usize {
        let am = match &self.absmax {
            Nf4Absmax::Plain(a) => a.len() * 4,
            Nf4Absmax::Double { q, code, nested_absmax, .. } => q.len() + code.len() * 4 + nested_absmax.len() * 4 + 4,
        };
        self.packed.len() + am + 16 * 4
    }
    fn device_blocks(&self) -> Option<crate::quant::DeviceBlocks> {
        use crate::quant::{DeviceBlocks, DeviceFormat};
        let round = match self.dtype {
            DType::F32 => 0,
            DType::BF16 => 1,
            DType::F16 => 2,
        };
        let bs = u32::try_from(self.blocksize).ok()?;
        let mut aux = self.quant_map.to_vec();
        Some(match &self.absmax {
            Nf4Absmax::Plain(a) => {
                aux.extend_from_slice(a);
                DeviceBlocks {
                    format: DeviceFormat::Nf4,
                    bytes: self.packed.clone(),
                    aux,
                    params: [bs, round, 0, 0],
                    offset: 0.0,
                }
            }
            Nf4Absmax::Double { q, code, nested_absmax, nested_blocksize, offset } => {
                if code.len() != 256 {
                    return None;
                }
                aux.extend_from_slice(code);
                aux.extend_from_slice(nested_absmax);
                let mut bytes = self.packed.clone();
                let absq = u32::try_from(bytes.len()).ok()?;
                bytes.extend_from_slice(q);
                DeviceBlocks {
                    format: DeviceFormat::Nf4Double,
                    bytes,
                    aux,
                    params: [bs, round, absq, u32::try_from(*nested_blocksize).ok()?],
                    offset: *offset,
                }
            }
        })
    }
}
