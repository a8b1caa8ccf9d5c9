//! PEFT LoRA adapters, in and out: `adapter_model.safetensors` with PEFT's tensor names and
//! shapes, and `adapter_config.json` with the fields PEFT reads.
//!
//! Names: `base_model.model.<module>.lora_A.weight` (r, d_in), `.lora_B.weight` (d_out, r), and for
//! DoRA `.lora_magnitude_vector` (d_out) — PEFT's saved form, with the adapter name and (for DoRA)
//! the `.weight` suffix removed (peft/utils/save_and_load.py).
//!
//! Layout: always Hugging Face's. A GGUF llama-family base stores Q/K rows permuted for
//! interleaved RoPE (llama.cpp's converter: per head, HF row `i·D/2 + j` is GGUF row `2j + i`);
//! adapters on such a base train in that order, so lora_B's rows (and DoRA's magnitude) of q_proj
//! and k_proj are permuted back on save and forward on load. An adapter trained on a GGUF base
//! therefore applies unchanged to the Hugging Face release of the same model.
//!
//! loraforge's own facts (base name, base fingerprint) go into the safetensors metadata, which PEFT
//! ignores, so adapter_config.json stays exactly what PEFT expects.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::safetensors::{write_safetensors, SafetensorsFile};
use crate::lora::{LoraConfig, LoraLinear};
use crate::model::Transformer;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The fields of PEFT's `LoraConfig` that loraforge writes and reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub base_model_name_or_path: String,
    pub fan_in_fan_out: bool,
    pub bias: String,
    pub inference_mode: bool,
    pub init_lora_weights: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    #[serde(default)]
    pub rank_pattern: HashMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, f32>,
}

impl AdapterConfig {
    pub fn new(lora: &LoraConfig, targets: &[String], base: &str) -> Self {
        AdapterConfig {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r: lora.rank,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            target_modules: targets.to_vec(),
            use_rslora: lora.use_rslora,
            use_dora: lora.use_dora,
            base_model_name_or_path: base.into(),
            fan_in_fan_out: false,
            bias: "none".into(),
            inference_mode: true,
            init_lora_weights: true,
            modules_to_save: None,
            layers_to_transform: None,
            rank_pattern: HashMap::new(),
            alpha_pattern: HashMap::new(),
        }
    }
    pub fn lora(&self) -> LoraConfig {
        LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            use_rslora: self.use_rslora,
            use_dora: self.use_dora,
        }
    }
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(ADAPTER_CONFIG);
        let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let c: AdapterConfig = serde_json::from_str(&s)
            .map_err(|e| Error::Format { path: p.display().to_string(), msg: e.to_string() })?;
        if c.peft_type != "LORA" {
            return Err(Error::Format {
                path: p.display().to_string(),
                msg: format!("peft_type {} is not LORA", c.peft_type),
            });
        }
        if !c.rank_pattern.is_empty() || !c.alpha_pattern.is_empty() {
            return Err(Error::Format {
                path: p.display().to_string(),
                msg: "per-module rank_pattern/alpha_pattern is not supported yet".into(),
            });
        }
        Ok(c)
    }
}

/// Q/K row order of a base: `Some((heads of this projection, head_dim))` when the rows are
/// GGUF-permuted (interleaved RoPE), for q_proj and k_proj.
#[derive(Clone, Copy, Debug)]
pub struct QkPermutation {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl QkPermutation {
    /// The permutation a base of `cfg` needs: GGUF llama-family files store Q/K rows permuted for
    /// interleaved RoPE, adapters are in Hugging Face order. None when the rows are HF-ordered.
    pub fn for_config(cfg: &crate::model::ModelConfig) -> Option<Self> {
        (cfg.rope_layout == crate::backend::cpu::rope::RopeLayout::Interleaved).then_some(QkPermutation {
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }
    fn heads_for(&self, module: &str) -> Option<usize> {
        if module.ends_with("q_proj") {
            Some(self.n_heads)
        } else if module.ends_with("k_proj") {
            Some(self.n_kv_heads)
        } else {
            None
        }
    }
}

/// GGUF row → HF row within one head of `d` rows.
fn gguf_to_hf_row(g: usize, d: usize) -> usize {
    let (j, i) = (g / 2, g % 2);
    i * (d / 2) + j
}

/// Reorders `rows` rows of `cols` values: out[to(r)] = v[r], per head.
fn permute_rows(v: &[f32], cols: usize, heads: usize, d: usize, to_hf: bool) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for h in 0..heads {
        for g in 0..d {
            let hf = gguf_to_hf_row(g, d);
            let (src, dst) = if to_hf { (g, hf) } else { (hf, g) };
            let (s, t) = ((h * d + src) * cols, (h * d + dst) * cols);
            out[t..t + cols].copy_from_slice(&v[s..s + cols]);
        }
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes the adapter of every `LoraLinear` in `model` to `dir` (created if needed), PEFT format.
pub fn save_adapter<B: Backend>(
    model: &Transformer<B>,
    dir: &Path,
    cfg: &AdapterConfig,
    qk: Option<QkPermutation>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors = Vec::new();
    for l in model.loras() {
        let prefix = format!("base_model.model.{}", l.name);
        let mut a = l.a.t.to_vec()?;
        let mut b = l.b.t.to_vec()?;
        let mut rank = l.cfg.rank;
        // PiSSA: save the update against the ORIGINAL base, ΔW = s(BA − B₀A₀) = s[B, −B₀][A; A₀]
        // (rank 2r; the caller's config doubles r and scales alpha so s is unchanged).
        if let Some((a0, b0)) = &l.pissa_init {
            a.extend_from_slice(a0);
            let r = l.cfg.rank;
            let mut bb = Vec::with_capacity(2 * b.len());
            for i in 0..l.d_out {
                bb.extend_from_slice(&b[i * r..(i + 1) * r]);
                bb.extend(b0[i * r..(i + 1) * r].iter().map(|x| -x));
            }
            b = bb;
            rank = 2 * r;
        }
        let mut m = match &l.magnitude {
            Some(m) => Some(m.t.to_vec()?),
            None => None,
        };
        if let Some(heads) = qk.and_then(|q| q.heads_for(&l.name)) {
            let d = qk.unwrap().head_dim;
            b = permute_rows(&b, rank, heads, d, true);
            m = m.map(|m| permute_rows(&m, 1, heads, d, true));
        }
        tensors.push((format!("{prefix}.lora_A.weight"), Dtype::F32, vec![rank, l.d_in], f32_bytes(&a)));
        tensors.push((format!("{prefix}.lora_B.weight"), Dtype::F32, vec![l.d_out, rank], f32_bytes(&b)));
        if let Some(m) = m {
            tensors.push((format!("{prefix}.lora_magnitude_vector"), Dtype::F32, vec![l.d_out], f32_bytes(&m)));
        }
    }
    if tensors.is_empty() {
        return Err(Error::msg("save_adapter: the model has no LoRA layers"));
    }
    let mut meta = metadata;
    meta.insert("format".into(), "pt".into());
    write_safetensors(dir.join(ADAPTER_WEIGHTS), &tensors, Some(meta))?;
    let json = serde_json::to_string_pretty(cfg)?;
    let p = dir.join(ADAPTER_CONFIG);
    let tmp = dir.join(format!("{ADAPTER_CONFIG}.tmp"));
    std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))?;
    Ok(())
}

/// Loads adapter weights into the model's `LoraLinear`s (which must exist with the adapter's rank
/// and targets). Every missing, unexpected or misshapen tensor is collected and reported at once.
/// Returns the safetensors metadata.
pub fn load_adapter<B: Backend>(
    model: &mut Transformer<B>,
    dir: &Path,
    qk: Option<QkPermutation>,
) -> Result<HashMap<String, String>> {
    let path = dir.join(ADAPTER_WEIGHTS);
    if !path.exists() {
        return Err(Error::Format {
            path: dir.display().to_string(),
            msg: format!("no {ADAPTER_WEIGHTS} in the adapter directory"),
        });
    }
    let f = SafetensorsFile::open(&path)?;
    let mut problems = Vec::new();
    let mut used = std::collections::HashSet::new();
    let be = model.norm.backend().clone();
    for l in model.loras_mut()? {
        let prefix = format!("base_model.model.{}", l.name);
        let want: Vec<(String, Vec<usize>)> = {
            let mut w = vec![
                (format!("{prefix}.lora_A.weight"), vec![l.cfg.rank, l.d_in]),
                (format!("{prefix}.lora_B.weight"), vec![l.d_out, l.cfg.rank]),
            ];
            if l.magnitude.is_some() {
                w.push((format!("{prefix}.lora_magnitude_vector"), vec![l.d_out]));
            }
            w
        };
        let mut vals = Vec::new();
        for (name, shape) in &want {
            used.insert(name.clone());
            match f.raw(name) {
                Err(_) => problems.push(format!("missing {name} {shape:?}")),
                Ok((_, got, _)) if got != *shape => {
                    problems.push(format!("{name}: shape {got:?}, the base needs {shape:?}"))
                }
                Ok(_) => vals.push(f.tensor_f32(name)?),
            }
        }
        if vals.len() != want.len() {
            continue;
        }
        let heads = qk.and_then(|q| q.heads_for(&l.name));
        let mut it = vals.into_iter();
        let a = it.next().unwrap();
        let mut b = it.next().unwrap();
        let mut m = it.next();
        if let Some(h) = heads {
            let d = qk.unwrap().head_dim;
            b = permute_rows(&b, l.cfg.rank, h, d, false);
            m = m.map(|m| permute_rows(&m, 1, h, d, false));
        }
        set(&be, &mut l.a, &a)?;
        set(&be, &mut l.b, &b)?;
        if let (Some(mp), Some(m)) = (l.magnitude.as_mut(), m) {
            set(&be, mp, &m)?;
        }
    }
    for n in f.names() {
        if !used.contains(n) {
            problems.push(format!("unexpected {n} (no such LoRA module in this base or configuration)"));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(Error::Format {
            path: path.display().to_string(),
            msg: format!("adapter does not fit the base, {} problem(s):\n  {}", problems.len(), problems.join("\n  ")),
        });
    }
    Ok(f.metadata().clone())
}

fn set<B: Backend>(be: &B, p: &mut crate::tensor::Param<B>, v: &[f32]) -> Result<()> {
    let name = p.name.clone();
    let s = p.storage_mut()?;
    if be.len(s) != v.len() {
        return Err(Error::msg(format!("{name}: {} values for {}", v.len(), be.len(s))));
    }
    *s = be.upload(v)?;
    Ok(())
}

/// A LoRA layer's PEFT module name (the base weight's HF path).
pub fn module_name<B: Backend>(l: &LoraLinear<B>) -> &str {
    &l.name
}

/// A 64-bit fingerprint of a file's bytes (4-lane multiply-rotate hash, ~GB/s), as hex. Used to tie
/// an adapter to the exact base it was trained on.
pub fn fingerprint_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only mapping of a file we do not modify; a concurrent writer could change the
    // bytes under us, which only changes the fingerprint.
    let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    Ok(format!("{:016x}", fingerprint(&m)))
}

pub fn fingerprint(bytes: &[u8]) -> u64 {
    const P: u64 = 0x9E37_79B1_85EB_CA87;
    let mut lanes = [0x243F_6A88_85A3_08D3u64, 0x1319_8A2E_0370_7344, 0xA409_3822_299F_31D0, 0x082E_FA98_EC4E_6C89];
    let chunks = bytes.chunks_exact(32);
    let rest = chunks.remainder();
    for c in chunks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap());
            *lane = (*lane ^ w).wrapping_mul(P).rotate_left(31);
        }
    }
    let mut h = bytes.len() as u64;
    for lane in lanes {
        h = (h ^ lane).wrapping_mul(P).rotate_left(27);
    }
    for &b in rest {
        h = (h ^ b as u64).wrapping_mul(P).rotate_left(11);
    }
    h ^ (h >> 29)
}
