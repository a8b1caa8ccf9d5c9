//! safetensors: Hugging Face weight files, read memory-mapped and written atomically.
//! Spec: this file (format: https://github.com/huggingface/safetensors#format)   Test: tests/safetensors_io.rs
//!
//! A file is: u64 LE header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[start, end)},
//! "__metadata__": {str: str}}, then the data; offsets are relative to the end of the header.
//! The header is parsed and validated by the `safetensors` crate (offsets contiguous, sizes
//! consistent with dtype x shape, file length exact); we keep our own index of (dtype, shape, range)
//! beside the memory map so that tensors borrow from the map without copying.
//!
//! Contract easy to miss: `tensor_f32` converts F32/F16/BF16 (exactly: f16/bf16 -> f32 is exact);
//! every other dtype is an error there, use `raw` for U8 (packed NF4) and friends.
//! The memory map assumes the file is not truncated or rewritten while open (memmap2's contract).

use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where one tensor lives in a file.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the file (absolute).
    pub start: usize,
    pub end: usize,
}

/// One memory-mapped .safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    entries: BTreeMap<String, TensorEntry>,
    metadata: HashMap<String, String>,
}

fn ferr(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.display().to_string(), msg: msg.into() }
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map; the file must not be modified while mapped (documented above).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (n, meta) =
            SafeTensors::read_metadata(&mmap).map_err(|e| ferr(path, format!("not a valid safetensors file: {e}")))?;
        let base = 8 + n;
        let mut entries = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            // read_metadata already checked this; re-check so a crate change cannot make us read out of bounds.
            if s > e || base + e > mmap.len() {
                return Err(ferr(path, format!("tensor {name}: data [{s}, {e}) outside the file")));
            }
            entries.insert(
                name,
                TensorEntry { dtype: info.dtype, shape: info.shape.clone(), start: base + s, end: base + e },
            );
        }
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap, entries, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(|s| s.as_str()).collect()
    }
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }
    /// The `__metadata__` map (empty if absent).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }
    /// (dtype, shape, bytes) of a tensor, borrowed from the map.
    pub fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let e = self.entries.get(name).ok_or_else(|| ferr(&self.path, format!("no tensor named {name}")))?;
        Ok((e.dtype, e.shape.clone(), &self.mmap[e.start..e.end]))
    }
    /// A tensor converted to f32 (F32, F16, BF16; anything else is an error).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (dtype, _, bytes) = self.raw(name)?;
        bytes_to_f32(dtype, bytes).map_err(|m| ferr(&self.path, format!("tensor {name}: {m}")))
    }
}

/// Little-endian F32/F16/BF16 bytes to f32 (exact conversions).
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let size = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        d => return Err(format!("dtype {d:?} cannot be read as f32 (only F32, F16, BF16); use raw()")),
    };
    if !bytes.len().is_multiple_of(size) {
        return Err(format!("{} bytes is not a whole number of {dtype:?} values", bytes.len()));
    }
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    })
}

/// A model directory: `model.safetensors`, or shards listed by `model.safetensors.index.json`
/// (`{"weight_map": {tensor name: shard file}}`).
pub struct SafetensorsDir {
    files: Vec<SafetensorsFile>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

impl SafetensorsDir {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        if single.is_file() {
            let f = SafetensorsFile::open(&single)?;
            let index = f.entries.keys().map(|k| (k.clone(), 0)).collect();
            return Ok(SafetensorsDir { files: vec![f], index });
        }
        if !index_path.is_file() {
            return Err(ferr(dir, "neither model.safetensors nor model.safetensors.index.json found"));
        }
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let idx: Index = serde_json::from_str(&text).map_err(|e| ferr(&index_path, format!("bad index JSON: {e}")))?;
        let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (name, shard) in &idx.weight_map {
            if shard.contains('/') || shard.contains('\\') || shard == ".." {
                return Err(ferr(&index_path, format!("shard name {shard:?} must be a plain file name")));
            }
            let id = match shard_ids.get(shard) {
                Some(&id) => id,
                None => {
                    let p = dir.join(shard);
                    if !p.is_file() {
                        return Err(ferr(&index_path, format!("shard {shard} (holding {name}) is missing")));
                    }
                    files.push(SafetensorsFile::open(&p)?);
                    shard_ids.insert(shard.clone(), files.len() - 1);
                    files.len() - 1
                }
            };
            if files[id].entry(name).is_none() {
                return Err(ferr(&index_path, format!("tensor {name} is mapped to {shard}, which does not hold it")));
            }
            index.insert(name.clone(), id);
        }
        Ok(SafetensorsDir { files, index })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.index.keys().map(|s| s.as_str()).collect()
    }
    /// (name, dtype, shape) for every tensor, sorted by name.
    pub fn list(&self) -> Vec<(&str, Dtype, &[usize])> {
        self.index
            .iter()
            .map(|(n, &i)| {
                let e = &self.files[i].entries[n];
                (n.as_str(), e.dtype, e.shape.as_slice())
            })
            .collect()
    }
    fn file_of(&self, name: &str) -> Result<&SafetensorsFile> {
        let &i = self.index.get(name).ok_or_else(|| Error::msg(format!("safetensors: no tensor named {name}")))?;
        Ok(&self.files[i])
    }
    pub fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        self.file_of(name)?.raw(name)
    }
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.file_of(name)?.tensor_f32(name)
    }
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }
}

struct RawView<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: &'a [u8],
}

impl safetensors::View for RawView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes a .safetensors file atomically: a temporary file beside `path`, fsync, rename, then
/// fsync of the directory (best effort), so a crash leaves either the old file or the new one.
/// Each tensor is (name, dtype, shape, little-endian bytes); sizes are checked before writing.
pub fn write_safetensors<S: AsRef<str>, B: AsRef<[u8]>>(
    path: impl AsRef<Path>,
    tensors: &[(S, Dtype, Vec<usize>, B)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let mut views = Vec::with_capacity(tensors.len());
    let mut seen = std::collections::HashSet::new();
    for (name, dtype, shape, bytes) in tensors {
        let name = name.as_ref();
        if !seen.insert(name) {
            return Err(ferr(path, format!("tensor {name} given twice")));
        }
        let numel: usize = shape.iter().product();
        let need = (numel * dtype.bitsize()).div_ceil(8);
        if bytes.as_ref().len() != need {
            return Err(ferr(
                path,
                format!("tensor {name}: {} bytes for {dtype:?} {shape:?}, expected {need}", bytes.as_ref().len()),
            ));
        }
        views.push((name.to_string(), RawView { dtype: *dtype, shape, data: bytes.as_ref() }));
    }
    let buf = safetensors::serialize(views, metadata).map_err(|e| ferr(path, format!("serialize: {e}")))?;
    let file_name = path.file_name().ok_or_else(|| ferr(path, "not a file path"))?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all(); // not supported everywhere; the rename itself is already atomic
        }
    }
    Ok(())
}
