//! Loading a Hugging Face model directory: config.json + model.safetensors, or shards listed by
//! model.safetensors.index.json. Weights stay in the memory map in their stored dtype: F32, F16
//! and BF16 matrices become frozen `GgmlMatrix` views of type F32/F16/BF16 over the mapped bytes
//! (zero-copy; safetensors and ggml share the little-endian element layout); norms and biases are
//! decoded to f32. Names come from names.rs; shapes are checked by load.rs `build`, which lists
//! every missing or misshapen tensor at once.
//! Test: tests/model_layouts.rs (same logits as the GGUF layout per family), tests/model_errors.rs.
//!
//! Contract easy to miss: HF Gemma norms are stored as w and applied as (1 + w)
//! (`ModelConfig::norm_add_one`), while GGUF Gemma files store 1 + w; HF Q/K rows are in
//! rotate-half order (no llama.cpp permutation).

use super::config::ModelConfig;
use super::load::{build, AdapterSpec, WeightSource};
use super::names::{self, Role};
use super::transformer::Transformer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::gguf::Bytes;
use crate::io::safetensors::SafetensorsDir;
use crate::quant::ggml::{GgmlMatrix, GgmlType};
use safetensors::Dtype;
use std::path::Path;
use std::sync::Arc;

/// Where the language model's tensors sit in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Prefix {
    /// `model.layers.N...`, `lm_head` (every text-only model).
    Plain,
    /// Multimodal Gemma 3, transformers 4: `language_model.model.layers.N...`, `language_model.lm_head`.
    LanguageModel,
    /// Multimodal Gemma 3, transformers 5: `model.language_model.layers.N...`, `lm_head`.
    ModelLanguageModel,
}

struct HfSource {
    path: String,
    arch: String,
    dir: SafetensorsDir,
    /// One zero-copy view of each shard's whole file, in `dir.files()` order.
    maps: Vec<Bytes>,
    prefix: Prefix,
}

impl HfSource {
    fn file_of(&self, name: &str) -> Option<usize> {
        self.dir.files().iter().position(|f| f.entry(name).is_some())
    }
    fn err(&self, msg: String) -> Error {
        Error::Format { path: self.path.clone(), msg }
    }
}

impl WeightSource for HfSource {
    fn path(&self) -> &str {
        &self.path
    }
    fn name(&self, role: Role, layer: usize, suffix: &str) -> String {
        let n = names::hf_name(&self.arch, role, layer, suffix);
        match self.prefix {
            Prefix::Plain => n,
            Prefix::LanguageModel => format!("language_model.{n}"),
            Prefix::ModelLanguageModel => match n.strip_prefix("model.") {
                Some(rest) => format!("model.language_model.{rest}"),
                None => n,
            },
        }
    }
    fn has(&self, name: &str) -> bool {
        self.file_of(name).is_some()
    }
    fn matrix(&self, name: &str) -> Result<GgmlMatrix> {
        let i = self.file_of(name).ok_or_else(|| self.err(format!("no tensor named {name}")))?;
        let e = self.dir.files()[i].entry(name).expect("file_of found it");
        let ty = match e.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            d => return Err(self.err(format!("{name}: dtype {d:?} is not supported (F32, F16, BF16)"))),
        };
        let [rows, cols] = e.shape[..] else {
            return Err(self.err(format!("{name}: shape {:?} is not 2-D", e.shape)));
        };
        GgmlMatrix::new(ty, rows, cols, self.maps[i].slice(e.start..e.end)?)
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.dir.tensor_f32(name)
    }
}

/// Loads a Hugging Face model directory with LoRA adapters on `spec.targets` of every layer.
pub fn load_hf<B: Backend>(be: &B, dir: impl AsRef<Path>, spec: &AdapterSpec) -> Result<(Transformer<B>, ModelConfig)> {
    let dir = dir.as_ref();
    let cfg = ModelConfig::from_hf_file(dir.join("config.json"))?;
    let st = SafetensorsDir::open(dir)?;
    // A second read-only mapping of each shard, owned by `Bytes` so weights can borrow from it
    // (SafetensorsFile keeps its own map private). Mapping twice costs address space, not memory.
    let mut maps = Vec::with_capacity(st.files().len());
    for f in st.files() {
        let file = std::fs::File::open(f.path()).map_err(|e| Error::io(f.path(), e))?;
        // SAFETY: read-only map; the file must not be modified while open (as for SafetensorsFile).
        let m = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(f.path(), e))?;
        maps.push(Bytes::from_mmap(Arc::new(m)));
    }
    let has = |n: &str| st.files().iter().any(|f| f.entry(n).is_some());
    let prefix = if has("model.embed_tokens.weight") {
        Prefix::Plain
    } else if has("language_model.model.embed_tokens.weight") {
        Prefix::LanguageModel
    } else if has("model.language_model.embed_tokens.weight") {
        Prefix::ModelLanguageModel
    } else {
        Prefix::Plain // reported as missing by `build`
    };
    let src = HfSource { path: dir.display().to_string(), arch: cfg.arch.clone(), dir: st, maps, prefix };
    let model = build(be, &cfg, &src, spec)?;
    Ok((model, cfg))
}
