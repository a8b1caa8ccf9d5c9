//! GGUF: the model file format of ggml / llama.cpp. A memory-mapped reader and an atomic writer,
//! written in-project (the size tables of the crates.io readers are wrong for several types).
//!
//! Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md and ggml's gguf.h.
//! Test: tests/gguf.rs (fixture blocks vs gguf-py, writer -> reader round trips, malformed files).
//! Block layouts and dequantization: src/quant/ggml.rs.
//!
//! File layout (all integers little-endian; big-endian GGUF files are rejected):
//!
//! ```text
//! header
//!   u32    magic            "GGUF" = 0x46554747
//!   u32    version          2 or 3 (v1, with u32 counts, is rejected; v2 and v3 read the same)
//!   u64    n_tensors
//!   u64    n_kv
//! n_kv metadata pairs, in file order
//!   string key              string = u64 byte length + UTF-8 bytes, no terminator
//!   u32    value type       0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool (one byte, 0 or 1),
//!                           8 string, 9 array, 10 u64, 11 i64, 12 f64
//!   value                   array = u32 element type + u64 count + elements (arrays may nest)
//! n_tensors tensor infos
//!   string name
//!   u32    n_dims           <= 4
//!   u64    ne[n_dims]       INNERMOST FIRST: ne[0] is the row length (contiguous), so a PyTorch
//!                           weight of shape (d_out, d_in) is stored as ne = [d_in, d_out]
//!   u32    type             ggml type id (GgmlType)
//!   u64    offset           of the tensor's bytes from the start of the data section;
//!                           a multiple of the alignment
//! padding to a multiple of `alignment` (metadata "general.alignment", a u32 power of two, default 32)
//! data section: tensor bytes, each padded to the alignment
//! ```
//!
//! Contracts easy to miss:
//! - `TensorInfo::ne` is ggml's innermost-first order; `TensorInfo::shape` is the same dims reversed,
//!   in row-major (outermost-first, PyTorch) order. `GgufWriter::add_tensor` takes row-major dims.
//! - The reader never trusts a count: every length, count, offset and size is checked against the
//!   bytes that remain before anything is allocated, with the caps below, in overflow-checked
//!   arithmetic. Memory used is bounded by a small multiple of the file size. Bad input gives
//!   `Error::Format` (header/metadata), `Error::Truncated` (tensor data past the end) or
//!   `Error::MissingKey`, never a panic.
//! - Tensor bytes are borrowed from the mapping (`tensor_bytes`, `matrix` are zero-copy); the file
//!   must not be modified while it is open (the usual memory-map caveat).
//! - Strings that are not valid UTF-8 are read with U+FFFD replacements (the spec requires UTF-8).

use crate::error::{Error, Result};
use crate::quant::ggml::{dequantize, GgmlMatrix, GgmlType};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub use crate::quant::ggml::Bytes;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// The version the writer produces.
pub const GGUF_VERSION: u32 = 3;
/// ggml's default data alignment.
pub const GGUF_DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that overrides the alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";

// Caps: far above any real model, low enough that a crafted file cannot make us loop or allocate
// without bound (each is also checked against the remaining file bytes).
/// Longest string: chat templates and tokenizer JSON blobs reach a few MB.
pub const MAX_STRING_LEN: u64 = 256 << 20;
/// Most elements in one array: vocabularies and merge lists are ~1e5..1e6.
pub const MAX_ARRAY_LEN: u64 = 1 << 28;
/// Deepest array nesting (real files use at most 2 levels).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most tensors: MoE models reach tens of thousands.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata pairs.
pub const MAX_KV: u64 = 1 << 20;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Longest tensor name the writer accepts: ggml's GGML_MAX_NAME is 64 including the terminator.
pub const MAX_TENSOR_NAME_WRITE: usize = 63;

// ---------------------------------------------------------------------------------------------
// ---- values

/// GGUF metadata value type ids.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    fn from_u32(v: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
    /// Fewest bytes one value of this type takes in a file (used to bound counts before allocating).
    fn min_file_size(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8, // a string is at least its u64 length
            Array => 12,                   // u32 type + u64 count
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored typed (an array of a million u8 costs a million bytes, not a million enums).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// Nested arrays; each may have its own element type.
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufArray {
    pub fn elem_type(&self) -> GgufValueType {
        use GgufArray as A;
        match self {
            A::U8(_) => GgufValueType::U8,
            A::I8(_) => GgufValueType::I8,
            A::U16(_) => GgufValueType::U16,
            A::I16(_) => GgufValueType::I16,
            A::U32(_) => GgufValueType::U32,
            A::I32(_) => GgufValueType::I32,
            A::F32(_) => GgufValueType::F32,
            A::Bool(_) => GgufValueType::Bool,
            A::String(_) => GgufValueType::String,
            A::Array(_) => GgufValueType::Array,
            A::U64(_) => GgufValueType::U64,
            A::I64(_) => GgufValueType::I64,
            A::F64(_) => GgufValueType::F64,
        }
    }
    pub fn len(&self) -> usize {
        use GgufArray as A;
        match self {
            A::U8(v) => v.len(),
            A::I8(v) => v.len(),
            A::U16(v) => v.len(),
            A::I16(v) => v.len(),
            A::U32(v) => v.len(),
            A::I32(v) => v.len(),
            A::F32(v) => v.len(),
            A::Bool(v) => v.len(),
            A::String(v) => v.len(),
            A::Array(v) => v.len(),
            A::U64(v) => v.len(),
            A::I64(v) => v.len(),
            A::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        use GgufValue as V;
        match self {
            V::U8(_) => GgufValueType::U8,
            V::I8(_) => GgufValueType::I8,
            V::U16(_) => GgufValueType::U16,
            V::I16(_) => GgufValueType::I16,
            V::U32(_) => GgufValueType::U32,
            V::I32(_) => GgufValueType::I32,
            V::F32(_) => GgufValueType::F32,
            V::Bool(_) => GgufValueType::Bool,
            V::String(_) => GgufValueType::String,
            V::Array(_) => GgufValueType::Array,
            V::U64(_) => GgufValueType::U64,
            V::I64(_) => GgufValueType::I64,
            V::F64(_) => GgufValueType::F64,
        }
    }
    /// "u32", or "array of string" for arrays (for error messages).
    pub fn type_description(&self) -> String {
        match self {
            GgufValue::Array(a) => format!("array of {}", a.elem_type().name()),
            v => v.value_type().name().to_string(),
        }
    }
    /// Any integer value as i128 (every GGUF integer fits), for lossless range-checked conversion.
    pub fn as_int(&self) -> Option<i128> {
        use GgufValue as V;
        Some(match *self {
            V::U8(v) => v as i128,
            V::I8(v) => v as i128,
            V::U16(v) => v as i128,
            V::I16(v) => v as i128,
            V::U32(v) => v as i128,
            V::I32(v) => v as i128,
            V::U64(v) => v as i128,
            V::I64(v) => v as i128,
            _ => return None,
        })
    }
    /// An f32 or f64 value as f64.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            GgufValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for GgufValue { fn from(x: $t) -> Self { GgufValue::$v(x) } }
        impl From<Vec<$t>> for GgufValue { fn from(x: Vec<$t>) -> Self { GgufValue::Array(GgufArray::$v(x)) } }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32, bool => Bool,
            String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for GgufValue {
    fn from(s: &str) -> Self {
        GgufValue::String(s.to_string())
    }
}
impl From<Vec<&str>> for GgufValue {
    fn from(v: Vec<&str>) -> Self {
        GgufValue::Array(GgufArray::String(v.into_iter().map(String::from).collect()))
    }
}
impl From<GgufArray> for GgufValue {
    fn from(a: GgufArray) -> Self {
        GgufValue::Array(a)
    }
}

// ---------------------------------------------------------------------------------------------
// ---- tensor infos

/// One tensor's header entry, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order, innermost (contiguous) dim first, as stored in the file.
    pub ne: Vec<u64>,
    /// Row-major order (outermost first): `ne` reversed. A (d_out, d_in) weight is `[d_out, d_in]`.
    pub shape: Vec<usize>,
    /// Offset of the bytes from the start of the data section.
    pub offset: u64,
    /// Size of the bytes.
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
    /// ne[0], the length of one row (1 for a 0-d tensor).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// Product of every dim but the innermost: the row count when viewed as a matrix.
    pub fn rows(&self) -> usize {
        self.n_elements().checked_div(self.cols()).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// ---- reader

/// An open GGUF file: parsed metadata and tensor infos, with tensor data left in the mapping.
pub struct GgufFile {
    path: String,
    data: Bytes,
    version: u32,
    alignment: u32,
    metadata: Vec<(String, GgufValue)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufFile({}, v{}, {} metadata, {} tensors, {} bytes)",
            self.path,
            self.version,
            self.metadata.len(),
            self.tensors.len(),
            self.data.len()
        )
    }
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: String) -> Error {
        Error::Format { path: self.path.to_string(), msg }
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "unexpected end of file reading {what} at byte {}: needs {n} bytes, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count of items that each take at least `min_size` bytes, checked against `cap` and the bytes left.
    fn count(&mut self, what: &str, cap: u64, min_size: u64) -> Result<u64> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > cap {
            return Err(self.err(format!("{what} at byte {at} is {n}, more than the limit {cap}")));
        }
        if n.saturating_mul(min_size) > self.remaining() {
            return Err(self.err(format!(
                "{what} at byte {at} is {n}, but only {} bytes remain (each item needs >= {min_size})",
                self.remaining()
            )));
        }
        Ok(n)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, MAX_STRING_LEN, 1)?;
        let bytes = self.take(n, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value_type(&mut self, what: &str) -> Result<GgufValueType> {
        let at = self.pos;
        let t = self.u32(what)?;
        GgufValueType::from_u32(t).ok_or_else(|| self.err(format!("{what} at byte {at}: unknown value type {t}")))
    }
    fn value(&mut self, ty: GgufValueType, what: &str) -> Result<GgufValue> {
        use GgufValue as V;
        Ok(match ty {
            GgufValueType::U8 => V::U8(self.array::<1>(what)?[0]),
            GgufValueType::I8 => V::I8(self.array::<1>(what)?[0] as i8),
            GgufValueType::U16 => V::U16(u16::from_le_bytes(self.array(what)?)),
            GgufValueType::I16 => V::I16(i16::from_le_bytes(self.array(what)?)),
            GgufValueType::U32 => V::U32(self.u32(what)?),
            GgufValueType::I32 => V::I32(i32::from_le_bytes(self.array(what)?)),
            GgufValueType::F32 => V::F32(f32::from_le_bytes(self.array(what)?)),
            GgufValueType::Bool => V::Bool(self.bool(what)?),
            GgufValueType::String => V::String(self.string(what)?),
            GgufValueType::Array => V::Array(self.array_value(what, 0)?),
            GgufValueType::U64 => V::U64(self.u64(what)?),
            GgufValueType::I64 => V::I64(i64::from_le_bytes(self.array(what)?)),
            GgufValueType::F64 => V::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }
    fn bool(&mut self, what: &str) -> Result<bool> {
        let at = self.pos;
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("{what} at byte {at}: bool byte is {b}, not 0 or 1"))),
        }
    }
    /// Element type, count, elements. `depth` counts enclosing arrays.
    fn array_value(&mut self, what: &str, depth: usize) -> Result<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
        }
        let et = self.value_type(what)?;
        let n = self.count(what, MAX_ARRAY_LEN, et.min_file_size())? as usize;
        // n * min_file_size <= remaining bytes was checked, so these allocations are bounded by the file.
        macro_rules! fixed {
            ($v:ident, $t:ty) => {{
                const S: usize = std::mem::size_of::<$t>();
                let raw = self.take((n * S) as u64, what)?;
                GgufArray::$v(raw.chunks_exact(S).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect())
            }};
        }
        Ok(match et {
            GgufValueType::U8 => GgufArray::U8(self.take(n as u64, what)?.to_vec()),
            GgufValueType::I8 => fixed!(I8, i8),
            GgufValueType::U16 => fixed!(U16, u16),
            GgufValueType::I16 => fixed!(I16, i16),
            GgufValueType::U32 => fixed!(U32, u32),
            GgufValueType::I32 => fixed!(I32, i32),
            GgufValueType::F32 => fixed!(F32, f32),
            GgufValueType::U64 => fixed!(U64, u64),
            GgufValueType::I64 => fixed!(I64, i64),
            GgufValueType::F64 => fixed!(F64, f64),
            GgufValueType::Bool => GgufArray::Bool((0..n).map(|_| self.bool(what)).collect::<Result<_>>()?),
            GgufValueType::String => GgufArray::String((0..n).map(|_| self.string(what)).collect::<Result<_>>()?),
            GgufValueType::Array => {
                GgufArray::Array((0..n).map(|_| self.array_value(what, depth + 1)).collect::<Result<_>>()?)
            }
        })
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`. Tensor data stays in the mapping.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let name = path.display().to_string();
        if len < 24 {
            return Err(Error::Format { path: name, msg: format!("{len} bytes is too short for a GGUF header (24)") });
        }
        // SAFETY: the mapping is read-only; as with every mmap-based loader, the file must not be
        // truncated or rewritten while it is open (documented in the module header).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        GgufFile::parse(name, Bytes::from_mmap(std::sync::Arc::new(mmap)))
    }

    /// Parses a GGUF image held in memory; `name` is used in error messages.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Bytes>) -> Result<GgufFile> {
        GgufFile::parse(name.into(), bytes.into())
    }

    fn parse(path: String, data: Bytes) -> Result<GgufFile> {
        let mut c = Cursor { buf: &data, pos: 0, path: &path };
        let magic = c.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(c.err(format!("bad magic {:?} (0x{magic:08x}), not a GGUF file", magic.to_le_bytes())));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err(c.err("GGUF v1 is not supported (only v2 and v3)".into())),
            v if v.swap_bytes() <= 3 => {
                return Err(c.err(format!("big-endian GGUF (version {}) is not supported", v.swap_bytes())))
            }
            v => return Err(c.err(format!("unsupported GGUF version {v} (only 2 and 3)"))),
        }
        // A tensor info takes >= 24 bytes (name length, n_dims, type, offset); a pair >= 13.
        let n_tensors = c.count("tensor count", MAX_TENSORS, 24)? as usize;
        let n_kv = c.count("metadata count", MAX_KV, 13)? as usize;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut kv_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&format!("key of metadata pair {i}"))?;
            if key.is_empty() {
                return Err(c.err(format!("metadata pair {i} has an empty key")));
            }
            let what = format!("metadata {key}");
            let ty = c.value_type(&what)?;
            let value = c.value(ty, &what)?;
            if kv_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("duplicate metadata key {key}")));
            }
            metadata.push((key, value));
        }

        let alignment = match kv_index.get(KEY_ALIGNMENT).map(|&i| &metadata[i].1) {
            None => GGUF_DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => *a,
            Some(v) => {
                return Err(c.err(format!("{KEY_ALIGNMENT} must be a u32 power of two, got {v:?}")));
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor {i}"))?;
            let info = GgufFile::parse_tensor_info(&mut c, name, alignment as u64)?;
            if tensor_index.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(c.err(format!("duplicate tensor name {}", info.name)));
            }
            tensors.push(info);
        }

        let file_len = data.len() as u64;
        let data_offset = (c.pos as u64).div_ceil(alignment as u64) * alignment as u64; // no overflow: pos < 2^63
                                                                                        // Every tensor must lie inside the file, and no two may overlap.
        for t in &tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes as u64));
            if !matches!(end, Some(e) if e <= file_len) {
                return Err(Error::Truncated {
                    name: format!("{} (in {path})", t.name),
                    need: t.n_bytes as u64,
                    offset: start.unwrap_or(u64::MAX),
                    have: file_len,
                });
            }
        }
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].offset);
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.offset + a.n_bytes as u64 > b.offset {
                return Err(c.err(format!(
                    "tensors {} (bytes {}..{}) and {} (from {}) overlap",
                    a.name,
                    a.offset,
                    a.offset + a.n_bytes as u64,
                    b.name,
                    b.offset
                )));
            }
        }
        Ok(GgufFile { path, data, version, alignment, metadata, kv_index, tensors, tensor_index, data_offset })
    }

    fn parse_tensor_info(c: &mut Cursor, name: String, alignment: u64) -> Result<TensorInfo> {
        let n_dims = c.u32(&format!("n_dims of tensor {name}"))? as usize;
        if n_dims > MAX_DIMS {
            return Err(c.err(format!("tensor {name} has {n_dims} dims, more than {MAX_DIMS}")));
        }
        let mut ne = Vec::with_capacity(n_dims);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let v = c.u64(&format!("dim {d} of tensor {name}"))?;
            // ggml stores dims as int64; the product must also fit in usize.
            n_elements = n_elements
                .checked_mul(v)
                .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok() && usize::try_from(v).is_ok())
                .ok_or_else(|| c.err(format!("tensor {name}: element count overflows at dim {d} = {v}")))?;
            ne.push(v);
        }
        let type_id = c.u32(&format!("type of tensor {name}"))?;
        let ty = GgmlType::from_u32(type_id).map_err(|e| c.err(format!("tensor {name} has {}", strip_quant(&e))))?;
        let offset = c.u64(&format!("offset of tensor {name}"))?;
        if offset % alignment != 0 {
            return Err(c.err(format!("tensor {name}: offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let cols = ne.first().copied().unwrap_or(1) as usize;
        let rows = (n_elements as usize).checked_div(cols).unwrap_or(0);
        let n_bytes = ty.row_bytes(cols).ok().and_then(|rb| rb.checked_mul(rows)).ok_or_else(|| {
            c.err(format!(
                "tensor {name}: row length {cols} is not a whole number of {ty} blocks ({})",
                ty.block_size()
            ))
        })?;
        let shape = ne.iter().rev().map(|&v| v as usize).collect();
        Ok(TensorInfo { name, ty, ne, shape, offset, n_bytes })
    }

    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u32 {
        self.alignment
    }
    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// All metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv_index.get(key).map(|&i| &self.metadata[i].1)
    }
    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key).ok_or_else(|| Error::MissingKey(format!("{key} (in {})", self.path)))
    }
    fn type_err(&self, key: &str, v: &GgufValue, want: &str) -> Error {
        Error::Format {
            path: self.path.clone(),
            msg: format!("metadata {key} is {} {v:?}, expected {want}", v.type_description()),
        }
    }
    fn get_int<T: TryFrom<i128>>(&self, key: &str, want: &str) -> Result<T> {
        let v = self.require(key)?;
        v.as_int().and_then(|i| T::try_from(i).ok()).ok_or_else(|| self.type_err(key, v, want))
    }
    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_int(key, "a u32")
    }
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_int(key, "a u64")
    }
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_int(key, "an i64")
    }
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.get_int(key, "a usize")
    }
    /// An f32, or an f64 rounded to f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_float().map(|f| f as f32).ok_or_else(|| self.type_err(key, v, "a float"))
    }
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_float().ok_or_else(|| self.type_err(key, v, "a float"))
    }
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.type_err(key, v, "a bool"))
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.type_err(key, v, "a string"))
    }
    pub fn get_array(&self, key: &str) -> Result<&GgufArray> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.type_err(key, v, "an array"))
    }
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::String(s)) => Ok(s),
            v => Err(self.type_err(key, v, "an array of string")),
        }
    }
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::F32(s)) => Ok(s),
            v => Err(self.type_err(key, v, "an array of f32")),
        }
    }
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::I32(s)) => Ok(s),
            v => Err(self.type_err(key, v, "an array of i32")),
        }
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::Format { path: self.path.clone(), msg: format!("no tensor named {name}") })
    }
    fn tensor_range(&self, info: &TensorInfo) -> Result<std::ops::Range<usize>> {
        // Checked at open; re-checked here because `info` may come from elsewhere.
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes as u64));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.data.len() as u64 => Ok(s as usize..e as usize),
            _ => Err(Error::Truncated {
                name: info.name.clone(),
                need: info.n_bytes as u64,
                offset: start.unwrap_or(u64::MAX),
                have: self.data.len() as u64,
            }),
        }
    }
    /// The tensor's encoded bytes, borrowed from the mapping.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        Ok(&self.data[self.tensor_range(info)?])
    }
    /// The tensor as a (rows, cols) matrix, zero-copy: cols = ne[0], rows = the product of the other dims.
    pub fn matrix(&self, name: &str) -> Result<GgmlMatrix> {
        let info = self.tensor(name)?;
        let bytes = self.data.slice(self.tensor_range(info)?)?;
        GgmlMatrix::new(info.ty, info.rows(), info.cols(), bytes)
            .map_err(|e| Error::Format { path: self.path.clone(), msg: format!("tensor {name}: {e}") })
    }
    /// The tensor decoded to f32 in row-major order (its `shape`).
    pub fn dequantize_tensor(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor(name)?;
        let mut out = vec![0.0f32; info.n_elements()];
        dequantize(info.ty, self.tensor_bytes(info)?, &mut out)
            .map_err(|e| Error::Format { path: self.path.clone(), msg: format!("tensor {name}: {e}") })?;
        Ok(out)
    }
}

/// "quant ggml: type IQ2_XXS ..." -> "type IQ2_XXS ...", to splice into a tensor error.
fn strip_quant(e: &Error) -> String {
    match e {
        Error::Quant { msg, .. } => msg.clone(),
        e => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// ---- writer

struct PendingTensor {
    name: String,
    shape: Vec<usize>, // row-major
    ty: GgmlType,
    data: Bytes,
}

/// Builds a GGUF v3 file: metadata in insertion order, tensors in insertion order, each aligned.
pub struct GgufWriter {
    alignment: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

fn werr(msg: String) -> Error {
    Error::InvalidArgument { op: "GgufWriter", msg }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter { alignment: GGUF_DEFAULT_ALIGNMENT, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// A writer with a non-default alignment (a power of two); records it as `general.alignment`.
    pub fn with_alignment(alignment: u32) -> Result<GgufWriter> {
        if !alignment.is_power_of_two() {
            return Err(werr(format!("alignment {alignment} is not a power of two")));
        }
        let mut w = GgufWriter::new();
        w.alignment = alignment;
        w.metadata.push((KEY_ALIGNMENT.into(), GgufValue::U32(alignment)));
        Ok(w)
    }

    /// Adds a metadata pair. Keys must be non-empty and unique; use `with_alignment` for the alignment.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<GgufValue>) -> Result<()> {
        let key = key.into();
        if key.is_empty() || key == KEY_ALIGNMENT || self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(werr(format!("metadata key {key:?} is empty, reserved or already added")));
        }
        let value = value.into();
        if let GgufValue::Array(a) = &value {
            if array_depth(a) > MAX_ARRAY_DEPTH {
                return Err(werr(format!("metadata {key}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
            }
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Adds a tensor with row-major `shape` (written to the file reversed, innermost first).
    /// `data.len()` must be the encoded size of the shape in `ty`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        ty: GgmlType,
        data: impl Into<Bytes>,
    ) -> Result<()> {
        let (name, data) = (name.into(), data.into());
        if name.is_empty() || name.len() > MAX_TENSOR_NAME_WRITE || self.tensors.iter().any(|t| t.name == name) {
            return Err(werr(format!(
                "tensor name {name:?} is empty, longer than {MAX_TENSOR_NAME_WRITE} bytes or already added"
            )));
        }
        if shape.len() > MAX_DIMS {
            return Err(werr(format!("tensor {name}: {} dims, more than {MAX_DIMS}", shape.len())));
        }
        let cols = shape.last().copied().unwrap_or(1);
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let need = n
            .and_then(|n| n.checked_div(cols).or(Some(0)))
            .and_then(|rows| ty.row_bytes(cols).ok().and_then(|rb| rb.checked_mul(rows)));
        match need {
            Some(need) if need == data.len() => {}
            _ => {
                return Err(werr(format!(
                    "tensor {name}: shape {shape:?} in {ty} needs {need:?} bytes, got {}",
                    data.len()
                )));
            }
        }
        self.tensors.push(PendingTensor { name, shape: shape.to_vec(), ty, data });
        Ok(())
    }

    /// Serializes to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> Result<()> {
        let align = self.alignment as u64;
        let pad = |n: u64| n.div_ceil(align) * align;
        let mut pos: u64 = 0;
        fn put(w: &mut impl Write, b: &[u8], pos: &mut u64) -> Result<()> {
            w.write_all(b)?;
            *pos += b.len() as u64;
            Ok(())
        }
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_string(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            write_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut head, &t.name);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&(t.ty as u32).to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = pad(offset + t.data.len() as u64);
        }
        put(w, &head, &mut pos)?;
        let zeros = vec![0u8; self.alignment as usize];
        let data_start = pad(pos);
        put(w, &zeros[..(data_start - pos) as usize], &mut pos)?;
        for t in &self.tensors {
            put(w, &t.data, &mut pos)?;
            let next = data_start + pad(pos - data_start);
            put(w, &zeros[..(next - pos) as usize], &mut pos)?;
        }
        Ok(())
    }

    /// The file image in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Writes atomically: to `<path>.tmp`, fsync, then rename over `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let result = (|| -> Result<()> {
            let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut bw = std::io::BufWriter::new(file);
            self.write_to(&mut bw).map_err(|e| match e {
                Error::Io { source, .. } => Error::io(&tmp, source),
                e => e,
            })?;
            let file = bw.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// 1 for a flat array, 2 for an array of arrays, ...
fn array_depth(a: &GgufArray) -> usize {
    match a {
        GgufArray::Array(v) => 1 + v.iter().map(array_depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &GgufValue) {
    use GgufValue as V;
    match v {
        V::U8(x) => out.push(*x),
        V::I8(x) => out.push(*x as u8),
        V::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::Bool(x) => out.push(*x as u8),
        V::String(s) => write_string(out, s),
        V::Array(a) => write_array(out, a),
        V::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn write_array(out: &mut Vec<u8>, a: &GgufArray) {
    use GgufArray as A;
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        A::U8(v) => out.extend_from_slice(v),
        A::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        A::U16(v) => le!(v),
        A::I16(v) => le!(v),
        A::U32(v) => le!(v),
        A::I32(v) => le!(v),
        A::F32(v) => le!(v),
        A::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        A::String(v) => v.iter().for_each(|s| write_string(out, s)),
        A::Array(v) => v.iter().for_each(|x| write_array(out, x)),
        A::U64(v) => le!(v),
        A::I64(v) => le!(v),
        A::F64(v) => le!(v),
    }
}
