//! ggml block formats: the tensor types of GGUF files (F32, F16, BF16, Q4_0 .. Q8_0, Q2_K .. Q8_K),
//! their byte layouts, bit-exact dequantization and ggml's *reference* quantizers.
//!
//! Spec: this file (layouts follow ggml-common.h, algorithms ggml-quants.c `dequantize_row_*` and
//! `quantize_row_*_ref`).   Test: tests/quant_ggml.rs, tests/gguf.rs (fixture blocks vs gguf-py).
//!
//! Contracts easy to miss:
//! - A tensor row is a whole number of blocks: `cols % block_size == 0` (`row_bytes` errors otherwise),
//!   and blocks never span two rows, so quantizing a (rows, cols) matrix flat or row by row is the same.
//! - Block structs hold their f16/f32 scales as little-endian *byte arrays*, not `u16`/`f16` fields, so
//!   every block has alignment 1 and a block slice can be viewed in place (`bytemuck::cast_slice`) over
//!   any byte buffer: a `Vec<u8>` or a memory-mapped GGUF file at any offset. GGUF is little-endian.
//! - Dequantization reproduces ggml's float operations in the same order (e.g. Q4_K is
//!   `(d * sc) * q - (dmin * m)`), so results are bit-identical to llama.cpp and gguf-py.
//! - Quantizers use the un-rounded f32 scale for the codes, and store the scale rounded to f16,
//!   exactly as ggml's reference does (this is why quantize(dequantize(b)) is not always b, see tests).
//!
//! Formulas (x = decoded value, q = stored code; Q_K types nest 16- or 32-wide sub-blocks in a
//! 256-wide super-block with 6- or 8-bit sub-scales):
//!   Q4_0: x = d * (q - 8)          Q4_1: x = d * q + m         Q5_0: x = d * (q - 16)
//!   Q5_1: x = d * q + m            Q8_0: x = d * q             Q8_K: x = d * q (f32 d)
//!   Q2_K: x = (d * sc) * q - (dmin * m),  q in 0..3, 16 sub-blocks of 16, 4-bit sc/m
//!   Q3_K: x = (d * (sc - 32)) * (q - 4),  q in 0..7, 16 sub-blocks of 16, 6-bit sc
//!   Q4_K: x = (d * sc) * q - (dmin * m),  q in 0..15, 8 sub-blocks of 32, 6-bit sc/m
//!   Q5_K: x = (d * sc) * q - (dmin * m),  q in 0..31, 8 sub-blocks of 32, 6-bit sc/m
//!   Q6_K: x = (d * sc) * (q - 32),        q in 0..63, 16 sub-blocks of 16, 8-bit signed sc
//! Reference: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-common.h and ggml-quants.c

// Index loops mirror ggml's reference code line by line, which is what makes them checkable.
#![allow(clippy::needless_range_loop)]

use crate::error::{Error, Result};
use crate::quant::DequantRows;
use bytemuck::{Pod, Zeroable};
use std::ops::{Deref, Range};
use std::sync::Arc;

/// Elements per K-quant super-block (ggml `QK_K`).
pub const QK_K: usize = 256;
/// Elements per block of the legacy formats Q4_0 .. Q8_1 (ggml `QK4_0` etc.).
pub const QK: usize = 32;

// ---------------------------------------------------------------------------------------------
// ---- type ids

/// A ggml tensor type that loraforge can store (ids are ggml's `enum ggml_type`, as written in GGUF).
/// Other ids that ggml knows (IQ*, I8.., TQ*, MXFP4) are recognised by name only, for error messages:
/// see `ggml_type_name`.
#[repr(u32)]
#[allow(non_camel_case_types)] // ggml's spelling: Q4_K
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

/// ggml's name (upper case, as gguf-py prints it) for every type id ggml has defined, supported or not.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2", // removed from ggml
        5 => "Q4_3", // removed from ggml
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        31 => "Q4_0_4_4", // removed from ggml
        32 => "Q4_0_4_8", // removed from ggml
        33 => "Q4_0_8_8", // removed from ggml
        34 => "TQ1_0",
        35 => "TQ2_0",
        36 => "IQ4_NL_4_4", // removed from ggml
        37 => "IQ4_NL_4_8", // removed from ggml
        38 => "IQ4_NL_8_8", // removed from ggml
        39 => "MXFP4",
        _ => return None,
    })
}

impl GgmlType {
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::BF16,
    ];

    /// The type with ggml id `id`; an error naming the type when ggml knows it but loraforge does not.
    pub fn from_u32(id: u32) -> Result<GgmlType> {
        if let Some(t) = GgmlType::ALL.iter().find(|t| **t as u32 == id) {
            return Ok(*t);
        }
        let msg = match ggml_type_name(id) {
            Some(name) => format!("type {name} (ggml id {id}), which loraforge does not support"),
            None => format!("unknown ggml type id {id}"),
        };
        Err(Error::Quant { format: "ggml".into(), msg })
    }

    /// Parses a name in any case: "q4_k", "Q4_K", "bf16".
    pub fn from_name(name: &str) -> Result<GgmlType> {
        GgmlType::ALL
            .iter()
            .find(|t| t.upper_name().eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| Error::Quant { format: "ggml".into(), msg: format!("unknown ggml type name {name:?}") })
    }

    /// Lower-case name: "f32", "q4_0", "q4_k", "bf16". (ggml's own `type_name` spells K-quants "q4_K".)
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q8_1 => "q8_1",
            GgmlType::Q2_K => "q2_k",
            GgmlType::Q3_K => "q3_k",
            GgmlType::Q4_K => "q4_k",
            GgmlType::Q5_K => "q5_k",
            GgmlType::Q6_K => "q6_k",
            GgmlType::Q8_K => "q8_k",
            GgmlType::BF16 => "bf16",
        }
    }

    /// Upper-case name as gguf-py and the GGUF spec write it: "Q4_K".
    pub fn upper_name(self) -> &'static str {
        ggml_type_name(self as u32).expect("every GgmlType has a name")
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q8_1 => QK,
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use std::mem::size_of;
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => size_of::<BlockQ4_0>(),
            GgmlType::Q4_1 => size_of::<BlockQ4_1>(),
            GgmlType::Q5_0 => size_of::<BlockQ5_0>(),
            GgmlType::Q5_1 => size_of::<BlockQ5_1>(),
            GgmlType::Q8_0 => size_of::<BlockQ8_0>(),
            GgmlType::Q8_1 => size_of::<BlockQ8_1>(),
            GgmlType::Q2_K => size_of::<BlockQ2_K>(),
            GgmlType::Q3_K => size_of::<BlockQ3_K>(),
            GgmlType::Q4_K => size_of::<BlockQ4_K>(),
            GgmlType::Q5_K => size_of::<BlockQ5_K>(),
            GgmlType::Q6_K => size_of::<BlockQ6_K>(),
            GgmlType::Q8_K => size_of::<BlockQ8_K>(),
        }
    }

    /// Bytes of `n` elements; an error if `n` is not a whole number of blocks or the size overflows.
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return Err(Error::Quant {
                format: self.name().into(),
                msg: format!("{n} elements is not a multiple of the block size {bs}"),
            });
        }
        (n / bs).checked_mul(self.type_size()).ok_or_else(|| Error::Quant {
            format: self.name().into(),
            msg: format!("{n} elements overflow usize bytes"),
        })
    }

    /// Types with a reference quantizer in `quantize`.
    pub fn can_quantize(self) -> bool {
        !matches!(self, GgmlType::Q8_1 | GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q8_K)
    }

    /// Types with a dequantizer in `dequantize`.
    pub fn can_dequantize(self) -> bool {
        !matches!(self, GgmlType::Q8_1)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// ---- block layouts (ggml-common.h). `[u8; 2]` = little-endian f16, `[u8; 4]` = little-endian f32.

/// 4-bit, symmetric: x = d * (q - 8). qs[j] holds element j (low nibble) and j + 16 (high nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],   // f16 scale
    pub qs: [u8; 16], // 32 nibbles
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// 4-bit with min: x = d * q + m. Nibble order as Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],   // f16 scale
    pub m: [u8; 2],   // f16 min
    pub qs: [u8; 16], // 32 nibbles
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// 5-bit, symmetric: x = d * (q - 16). Low 4 bits as Q4_0; bit 4 of element j is bit j of qh (u32 LE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],   // f16 scale
    pub qh: [u8; 4],  // 32 high bits
    pub qs: [u8; 16], // 32 low nibbles
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// 5-bit with min: x = d * q + m. Bits as Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],   // f16 scale
    pub m: [u8; 2],   // f16 min
    pub qh: [u8; 4],  // 32 high bits
    pub qs: [u8; 16], // 32 low nibbles
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// 8-bit, symmetric: x = d * q.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],   // f16 scale
    pub qs: [u8; 32], // i8 codes
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// 8-bit with the block sum (ggml's activation format for dot products): x = d * q, s = d * sum(q).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],   // f16 scale
    pub s: [u8; 2],   // f16 d * sum(qs)
    pub qs: [u8; 32], // i8 codes
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// 2-bit K-quant: 16 sub-blocks of 16. scales[j] = sc (low nibble) | m (high nibble).
/// Element 128*h + 32*s + l (h = half, s = shift 0..3, l < 32) is bits 2s..2s+1 of qs[32*h + l].
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2_K {
    pub scales: [u8; 16], // 4-bit scales and mins
    pub qs: [u8; 64],     // 2-bit codes
    pub d: [u8; 2],       // f16 super-scale for scales
    pub dmin: [u8; 2],    // f16 super-scale for mins
}
const _: () = assert!(std::mem::size_of::<BlockQ2_K>() == 84);

/// 3-bit K-quant: 16 sub-blocks of 16, 6-bit signed scales (offset 32) packed in 12 bytes.
/// Low 2 bits as Q2_K; the high bit of element 32*b + l (b < 8) is bit b of hmask[l]; a CLEAR bit means -4.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3_K {
    pub hmask: [u8; 32],  // high bits
    pub qs: [u8; 64],     // low 2 bits
    pub scales: [u8; 12], // 16 x 6-bit scales
    pub d: [u8; 2],       // f16 super-scale
}
const _: () = assert!(std::mem::size_of::<BlockQ3_K>() == 110);

/// 4-bit K-quant: 8 sub-blocks of 32, 6-bit scales and mins packed in 12 bytes (`scale_min_k4`).
/// Sub-block 2i is the low nibbles of qs[32i..32i+32], sub-block 2i+1 the high nibbles.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_K {
    pub d: [u8; 2],       // f16 super-scale for scales
    pub dmin: [u8; 2],    // f16 super-scale for mins
    pub scales: [u8; 12], // 8 x (6-bit scale, 6-bit min)
    pub qs: [u8; 128],    // 4-bit codes
}
const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == 144);

/// 5-bit K-quant: Q4_K plus a high bit: bit 4 of the element at position l of sub-block s is bit s of qh[l].
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_K {
    pub d: [u8; 2],       // f16 super-scale for scales
    pub dmin: [u8; 2],    // f16 super-scale for mins
    pub scales: [u8; 12], // 8 x (6-bit scale, 6-bit min)
    pub qh: [u8; 32],     // high bits
    pub qs: [u8; 128],    // low 4 bits
}
const _: () = assert!(std::mem::size_of::<BlockQ5_K>() == 176);

/// 6-bit K-quant: 16 sub-blocks of 16, signed 8-bit scales. In each 128-half, element 32k + l has
/// low nibble from ql[l + 32(k&1)] (k<2: low nibble, else high) and 2 high bits (2k..2k+1) of qh[l].
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6_K {
    pub ql: [u8; 128],    // low 4 bits
    pub qh: [u8; 64],     // high 2 bits
    pub scales: [u8; 16], // i8 scales
    pub d: [u8; 2],       // f16 super-scale
}
const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == 210);

/// 8-bit K-quant (ggml's activation format for K-quant dot products): x = d * q, f32 d.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_K {
    pub d: [u8; 4],      // f32 scale
    pub qs: [u8; 256],   // i8 codes
    pub bsums: [u8; 32], // 16 x i16 sums of groups of 16 codes
}
const _: () = assert!(std::mem::size_of::<BlockQ8_K>() == 292);

#[inline]
fn f16_le(b: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
}
#[inline]
fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}
/// f32 -> bf16 bits, round to nearest even, NaN kept quiet (ggml `GGML_FP32_TO_BF16`).
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16; // NaN: force quiet
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Round to nearest, ties to even, as ggml's `nearest_int` (adds 1.5 * 2^23 and reads the mantissa).
/// Valid for |x| <= 2^22; ggml asserts that, here larger inputs give a wrong but harmless code.
#[inline]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0; // 1.5 * 2^23: the float spacing becomes 1, so the add rounds
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// 6-bit scale and min of sub-block j (0..8) from the 12 packed bytes (ggml `get_scale_min_k4`).
#[inline]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Inverse of `scale_min_k4` for all 8 sub-blocks (values must be < 64).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// ---- dequantization (ggml-quants.c `dequantize_row_*`)

fn quant_err(ty: GgmlType, msg: String) -> Error {
    Error::Quant { format: ty.name().into(), msg }
}

/// Decodes `data` (whole blocks of type `ty`) into `out`; `out.len()` must be the element count.
/// Bit-identical to ggml's `dequantize_row_*` / `to_float`.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    if !ty.can_dequantize() {
        return Err(quant_err(ty, "no dequantizer for this type (ggml has none either)".into()));
    }
    let need = ty.row_bytes(out.len())?;
    if data.len() != need {
        return Err(quant_err(ty, format!("{} elements need {need} bytes, got {}", out.len(), data.len())));
    }
    dequantize_unchecked(ty, data, out);
    Ok(())
}

/// `dequantize` without the length checks: `data.len() == ty.row_bytes(out.len())` is the caller's contract.
fn dequantize_unchecked(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16_le([b[0], b[1]]);
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ4_0>(data).iter().zip(out.chunks_exact_mut(QK)) {
                let d = f16_le(b.d);
                for j in 0..16 {
                    y[j] = ((b.qs[j] & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ4_1>(data).iter().zip(out.chunks_exact_mut(QK)) {
                let (d, m) = (f16_le(b.d), f16_le(b.m));
                for j in 0..16 {
                    y[j] = (b.qs[j] & 0xF) as f32 * d + m;
                    y[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ5_0>(data).iter().zip(out.chunks_exact_mut(QK)) {
                let d = f16_le(b.d);
                let qh = u32::from_le_bytes(b.qh);
                for j in 0..16 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = (((b.qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                    y[j + 16] = (((b.qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ5_1>(data).iter().zip(out.chunks_exact_mut(QK)) {
                let (d, m) = (f16_le(b.d), f16_le(b.m));
                let qh = u32::from_le_bytes(b.qh);
                for j in 0..16 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = ((b.qs[j] & 0xF) as u32 | h0) as f32 * d + m;
                    y[j + 16] = ((b.qs[j] >> 4) as u32 | h1) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ8_0>(data).iter().zip(out.chunks_exact_mut(QK)) {
                let d = f16_le(b.d);
                for j in 0..QK {
                    y[j] = b.qs[j] as i8 as f32 * d;
                }
            }
        }
        GgmlType::Q8_1 => unreachable!("checked by can_dequantize"),
        GgmlType::Q2_K => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ2_K>(data).iter().zip(out.chunks_exact_mut(QK_K)) {
                let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
                let mut is = 0;
                for half in 0..2 {
                    let q = &b.qs[32 * half..32 * half + 32];
                    for shift in 0..4 {
                        for part in 0..2 {
                            let sc = b.scales[is];
                            is += 1;
                            let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                            let base = 128 * half + 32 * shift + 16 * part;
                            for l in 0..16 {
                                y[base + l] = dl * ((q[16 * part + l] >> (2 * shift)) & 3) as f32 - ml;
                            }
                        }
                    }
                }
            }
        }
        GgmlType::Q3_K => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ3_K>(data).iter().zip(out.chunks_exact_mut(QK_K)) {
                let d_all = f16_le(b.d);
                let mut m = 1u8; // hmask bit for the current group of 32
                let mut is = 0;
                for half in 0..2 {
                    let q = &b.qs[32 * half..32 * half + 32];
                    for shift in 0..4 {
                        for part in 0..2 {
                            let dl = d_all * (q3k_scale(&b.scales, is) - 32) as f32;
                            is += 1;
                            let base = 128 * half + 32 * shift + 16 * part;
                            for l in 0..16 {
                                let lo = ((q[16 * part + l] >> (2 * shift)) & 3) as i32;
                                let hi = if b.hmask[16 * part + l] & m != 0 { 0 } else { 4 };
                                y[base + l] = dl * (lo - hi) as f32;
                            }
                        }
                        m <<= 1;
                    }
                }
            }
        }
        GgmlType::Q4_K => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ4_K>(data).iter().zip(out.chunks_exact_mut(QK_K)) {
                let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
                for i in 0..4 {
                    let q = &b.qs[32 * i..32 * i + 32];
                    let (sc1, m1) = scale_min_k4(2 * i, &b.scales);
                    let (sc2, m2) = scale_min_k4(2 * i + 1, &b.scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        y[64 * i + l] = d1 * (q[l] & 0xF) as f32 - m1;
                        y[64 * i + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
        GgmlType::Q5_K => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ5_K>(data).iter().zip(out.chunks_exact_mut(QK_K)) {
                let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
                for i in 0..4 {
                    let ql = &b.qs[32 * i..32 * i + 32];
                    let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
                    let (sc1, m1) = scale_min_k4(2 * i, &b.scales);
                    let (sc2, m2) = scale_min_k4(2 * i + 1, &b.scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                        y[64 * i + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                        y[64 * i + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ6_K>(data).iter().zip(out.chunks_exact_mut(QK_K)) {
                let d = f16_le(b.d);
                for half in 0..2 {
                    let ql = &b.ql[64 * half..64 * half + 64];
                    let qh = &b.qh[32 * half..32 * half + 32];
                    let sc = &b.scales[8 * half..8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * sc[is] as i8 as f32 * q1 as f32;
                        y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                        y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                        y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
                    }
                }
            }
        }
        GgmlType::Q8_K => {
            for (b, y) in bytemuck::cast_slice::<u8, BlockQ8_K>(data).iter().zip(out.chunks_exact_mut(QK_K)) {
                let d = f32::from_le_bytes(b.d);
                for j in 0..QK_K {
                    y[j] = d * b.qs[j] as i8 as f32;
                }
            }
        }
    }
}

/// 6-bit scale j (0..16, still offset by 32) of a Q3_K block: low 4 bits from bytes 0..8, high 2 bits from 8..12.
#[inline]
fn q3k_scale(s: &[u8; 12], j: usize) -> i32 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32
}

// ---------------------------------------------------------------------------------------------
// ---- quantization (ggml-quants.c `quantize_row_*_ref`)

/// Encodes `src` (a whole number of blocks) as type `ty` with ggml's reference quantizer, which is
/// what llama.cpp's `llama-quantize` uses when no importance matrix is given. Non-finite input is an error.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    if !ty.can_quantize() {
        return Err(quant_err(ty, "no reference quantizer in loraforge for this type".into()));
    }
    let n_bytes = ty.row_bytes(src.len())?;
    if let Some(i) = src.iter().position(|v| !v.is_finite()) {
        return Err(quant_err(ty, format!("input element {i} is {}, cannot quantize", src[i])));
    }
    let mut out = vec![0u8; n_bytes];
    match ty {
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16_bytes(*v));
            }
        }
        GgmlType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        GgmlType::Q4_0 => quantize_blocks(&mut out, src, QK, quantize_block_q4_0),
        GgmlType::Q4_1 => quantize_blocks(&mut out, src, QK, quantize_block_q4_1),
        GgmlType::Q5_0 => quantize_blocks(&mut out, src, QK, quantize_block_q5_0),
        GgmlType::Q5_1 => quantize_blocks(&mut out, src, QK, quantize_block_q5_1),
        GgmlType::Q8_0 => quantize_blocks(&mut out, src, QK, quantize_block_q8_0),
        GgmlType::Q4_K => quantize_blocks(&mut out, src, QK_K, quantize_block_q4_k),
        GgmlType::Q5_K => quantize_blocks(&mut out, src, QK_K, quantize_block_q5_k),
        GgmlType::Q6_K => quantize_blocks(&mut out, src, QK_K, quantize_block_q6_k),
        GgmlType::Q8_1 | GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q8_K => {
            unreachable!("checked by can_quantize")
        }
    }
    Ok(out)
}

fn quantize_blocks<B: Pod>(out: &mut [u8], src: &[f32], bs: usize, f: fn(&[f32], &mut B)) {
    for (b, x) in bytemuck::cast_slice_mut::<u8, B>(out).iter_mut().zip(src.chunks_exact(bs)) {
        f(x, b);
    }
}

/// (max |x|, the x that has it): ggml keeps the sign so the extreme maps to code -8 / -16 exactly.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    (min, max)
}

fn quantize_block_q4_0(x: &[f32], b: &mut BlockQ4_0) {
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f16_bytes(d);
    for j in 0..16 {
        // ggml truncates (int8_t)(x*id + 8.5): round half up, then clamp 16 -> 15.
        let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        b.qs[j] = q0 | (q1 << 4);
    }
}

fn quantize_block_q4_1(x: &[f32], b: &mut BlockQ4_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f16_bytes(d);
    b.m = f16_bytes(min);
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        b.qs[j] = q0 | (q1 << 4);
    }
}

fn quantize_block_q5_0(x: &[f32], b: &mut BlockQ5_0) {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f16_bytes(d);
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let q1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        b.qs[j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
        qh |= ((q0 as u32 >> 4) & 1) << j;
        qh |= ((q1 as u32 >> 4) & 1) << (j + 16);
    }
    b.qh = qh.to_le_bytes();
}

fn quantize_block_q5_1(x: &[f32], b: &mut BlockQ5_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f16_bytes(d);
    b.m = f16_bytes(min);
    let mut qh = 0u32;
    for j in 0..16 {
        // ggml has no clamp here: (x - min) * id <= 31 up to rounding, and 31.5 truncates to 31.
        let q0 = (((x[j] - min) * id + 0.5) as u8).min(31);
        let q1 = (((x[j + 16] - min) * id + 0.5) as u8).min(31);
        b.qs[j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
        qh |= ((q0 as u32 >> 4) & 1) << j;
        qh |= ((q1 as u32 >> 4) & 1) << (j + 16);
    }
    b.qh = qh.to_le_bytes();
}

fn quantize_block_q8_0(x: &[f32], b: &mut BlockQ8_0) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f16_bytes(d);
    for j in 0..QK {
        b.qs[j] = (x[j] * id).round() as i8 as u8; // roundf: half away from zero
    }
}

/// ggml `make_qkx2_quants`: fits x ≈ scale * L - min with L in 0..=nmax, minimizing the weighted
/// error (squared, or absolute if `use_mad`) over nstep+1 trial scales around nmax / (max - min),
/// each refined by weighted least squares for (scale, min). Returns (scale, min >= 0) and fills L.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32, use_mad: bool| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        best_error += weights[i] * err(scale * l as f32 + min - x[i], use_mad);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * laux[i] as f32 + this_min - x[i], use_mad);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Shared body of the Q4_K / Q5_K reference quantizers: per 32-wide sub-block, `make_qkx2_quants`
/// with weights av_x + |x|, then 6-bit sub-scales/mins against the largest, then codes recomputed
/// against the rounded scales. Returns (d, dmin, packed scales, codes L in 0..=nmax).
fn quantize_k_scale_min(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let mut weights = [0.0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |a, v| a + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..32 * j + 32], rmin, rdelta, nstep, false);
        scales[j] = s;
        mins[j] = m;
        max_scale = max_scale.max(s);
        max_min = max_min.max(m);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let (d, dmin) = (f16_bytes(max_scale / 63.0), f16_bytes(max_min / 63.0));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = f16_le(d) * sc as f32;
        if dj == 0.0 {
            continue; // keep make_qkx2_quants' codes, as ggml does
        }
        let dm = f16_le(dmin) * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

fn quantize_block_q4_k(x: &[f32], b: &mut BlockQ4_K) {
    // ggml: make_qkx2_quants(32, 15, ..., rmin -1, rdelta 0.1, nstep 20, use_mad false)
    let (d, dmin, scales, l) = quantize_k_scale_min(x, 15, -1.0, 0.1, 20);
    b.d = d;
    b.dmin = dmin;
    b.scales = scales;
    for i in 0..4 {
        for j in 0..32 {
            b.qs[32 * i + j] = l[64 * i + j] | (l[64 * i + 32 + j] << 4);
        }
    }
}

fn quantize_block_q5_k(x: &[f32], b: &mut BlockQ5_K) {
    // ggml: make_qkx2_quants(32, 31, ..., rmin -0.5, rdelta 0.1, nstep 15, use_mad false)
    let (d, dmin, scales, l) = quantize_k_scale_min(x, 31, -0.5, 0.1, 15);
    b.d = d;
    b.dmin = dmin;
    b.scales = scales;
    b.qh = [0; 32];
    for i in 0..4 {
        let (m1, m2) = (1u8 << (2 * i), 2u8 << (2 * i));
        for j in 0..32 {
            let (mut l1, mut l2) = (l[64 * i + j], l[64 * i + 32 + j]);
            if l1 > 15 {
                l1 -= 16;
                b.qh[j] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                b.qh[j] |= m2;
            }
            b.qs[32 * i + j] = l1 | (l2 << 4);
        }
    }
}

/// ggml `make_qx_quants` with rmse_type = 1 and no importance weights (weights x²): symmetric fit
/// x ≈ scale * (L - nmax), L in 0..2*nmax, trying 19 scales around -nmax / max and keeping the
/// best weighted least-squares one. Returns the (possibly negative) scale and fills L.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l_out: &mut [u8]) -> f32 {
    const GROUP_MAX_EPS: f32 = 1e-15; // ggml: below this a group counts as all zero
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..x.len() {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as u8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..x.len() {
                let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                l_out[i] = (l + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn quantize_block_q6_k(x: &[f32], b: &mut BlockQ6_K) {
    const GROUP_MAX_EPS: f32 = 1e-15; // ggml: below this the super-block is stored as zeros
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let s = make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *b = BlockQ6_K::zeroed();
        return;
    }
    let iscale = -128.0 / max_scale;
    b.d = f16_bytes(1.0 / iscale);
    for ib in 0..16 {
        b.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let d = f16_le(b.d) * b.scales[j] as i8 as f32;
        if d == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    for half in 0..2 {
        let (ql, qh) = (&mut b.ql[64 * half..64 * half + 64], &mut b.qh[32 * half..32 * half + 32]);
        let l = &l[128 * half..128 * half + 128];
        for i in 0..32 {
            ql[i] = (l[i] & 0xF) | ((l[i + 64] & 0xF) << 4);
            ql[i + 32] = (l[i + 32] & 0xF) | ((l[i + 96] & 0xF) << 4);
            qh[i] = (l[i] >> 4) | ((l[i + 32] >> 4) << 2) | ((l[i + 64] >> 4) << 4) | ((l[i + 96] >> 4) << 6);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ---- Bytes: owned or memory-mapped storage

#[derive(Clone)]
enum Owner {
    Vec(Arc<Vec<u8>>),
    Mmap(Arc<memmap2::Mmap>),
}

/// An immutable, cheaply clonable byte range: either an owned buffer or a zero-copy view into a
/// memory-mapped file (kept alive by an `Arc`). Derefs to `&[u8]`.
#[derive(Clone)]
pub struct Bytes {
    owner: Owner,
    range: Range<usize>,
}

impl Bytes {
    pub fn from_vec(v: Vec<u8>) -> Bytes {
        let range = 0..v.len();
        Bytes { owner: Owner::Vec(Arc::new(v)), range }
    }
    /// The whole mapping.
    pub fn from_mmap(m: Arc<memmap2::Mmap>) -> Bytes {
        let range = 0..m.len();
        Bytes { owner: Owner::Mmap(m), range }
    }
    /// A sub-range (relative to this view), sharing the storage; an error if out of range.
    pub fn slice(&self, r: Range<usize>) -> Result<Bytes> {
        if r.start > r.end || r.end > self.len() {
            return Err(Error::IndexOutOfRange { op: "Bytes::slice", index: r.end, size: self.len() });
        }
        Ok(Bytes { owner: self.owner.clone(), range: self.range.start + r.start..self.range.start + r.end })
    }
    /// True when the bytes live in a memory-mapped file rather than an owned buffer.
    pub fn is_mmap(&self) -> bool {
        matches!(self.owner, Owner::Mmap(_))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.owner {
            Owner::Vec(v) => &v[self.range.clone()],
            Owner::Mmap(m) => &m[self.range.clone()],
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes::from_vec(v)
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes, {})", self.len(), if self.is_mmap() { "mmap" } else { "owned" })
    }
}

// ---------------------------------------------------------------------------------------------
// ---- GgmlMatrix

/// A (rows, cols) matrix stored in a ggml type, row-major: row r is bytes [r * row_bytes, (r+1) * row_bytes).
/// cols is ggml's ne[0] (the innermost GGUF dim). The bytes may be a zero-copy view into a GGUF file,
/// so a quantized base model can be used as it is, with no dequantized copy.
#[derive(Clone, Debug)]
pub struct GgmlMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Bytes,
}

impl GgmlMatrix {
    /// Checks `data.len() == rows * ty.row_bytes(cols)` and that `ty` can be dequantized.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Bytes) -> Result<GgmlMatrix> {
        if !ty.can_dequantize() {
            return Err(quant_err(ty, "cannot be used as a weight matrix (no dequantizer)".into()));
        }
        let row_bytes = ty.row_bytes(cols)?;
        let need = row_bytes
            .checked_mul(rows)
            .ok_or_else(|| quant_err(ty, format!("({rows}, {cols}) overflows usize bytes")))?;
        if data.len() != need {
            return Err(quant_err(ty, format!("({rows}, {cols}) needs {need} bytes, got {}", data.len())));
        }
        Ok(GgmlMatrix { ty, rows, cols, row_bytes, data })
    }

    /// Quantizes a row-major (rows, cols) f32 matrix with the reference quantizer.
    pub fn quantize(ty: GgmlType, rows: usize, cols: usize, src: &[f32]) -> Result<GgmlMatrix> {
        if rows.checked_mul(cols) != Some(src.len()) {
            return Err(quant_err(ty, format!("({rows}, {cols}) does not match {} elements", src.len())));
        }
        ty.row_bytes(cols)?; // blocks must not span rows
        GgmlMatrix::new(ty, rows, cols, Bytes::from_vec(quantize(ty, src)?))
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    pub fn data(&self) -> &Bytes {
        &self.data
    }
    /// The encoded bytes of row `r` (panics if r >= rows).
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// The whole matrix as row-major f32. // (rows, cols)
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        dequantize_unchecked(self.ty, &self.data, &mut out);
        out
    }
}

impl DequantRows for GgmlMatrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "dequantize_row: row {r} of {}, out {}", self.rows, out.len());
        dequantize_unchecked(self.ty, self.row(r), out);
    }
    fn format_name(&self) -> String {
        self.ty.name().into()
    }
    fn storage_bytes(&self) -> usize {
        self.data.len()
    }
    fn device_blocks(&self) -> Option<super::DeviceBlocks> {
        use super::DeviceFormat as F;
        let format = match self.ty {
            GgmlType::Q4_0 => F::Q4_0,
            GgmlType::Q4_1 => F::Q4_1,
            GgmlType::Q5_0 => F::Q5_0,
            GgmlType::Q5_1 => F::Q5_1,
            GgmlType::Q8_0 => F::Q8_0,
            GgmlType::Q4_K => F::Q4K,
            GgmlType::Q5_K => F::Q5K,
            GgmlType::Q6_K => F::Q6K,
            GgmlType::F16 => F::F16,
            GgmlType::BF16 => F::BF16,
            _ => return None,
        };
        Some(super::DeviceBlocks {
            format,
            bytes: self.data.to_vec(),
            aux: Vec::new(),
            params: [u32::try_from(self.row_bytes).ok()?, 0, 0, 0],
            offset: 0.0,
        })
    }
}
