//! One config type for every supported architecture; family differences are data. Built from GGUF
//! metadata (`<arch>.*` keys) or a Hugging Face config.json, with HF field names.
//!
//! What GGUF does not state is filled in from the family's fixed values (as transformers does from
//! its config classes): Gemma 3's local RoPE base 10000 and its 5:1 sliding/global layer pattern,
//! Gemma's embedding scale √hidden and query_pre_attn_scalar = head_dim.
//!
//! From config.json (`from_hf_json`): the five sizes (vocab_size, hidden_size, intermediate_size,
//! num_hidden_layers, num_attention_heads) are required, and every missing one is named in one
//! error; other fields fall back to the transformers config class defaults of the family
//! (e.g. Gemma head_dim 256, Gemma 2 sliding_window 4096, Gemma 3 sliding_window_pattern 6).
//! RoPE comes from `rope_theta` + `rope_scaling` (transformers 4) or `rope_parameters`
//! (transformers 5, keyed by layer type for Gemma 3). Phi-3's fused `qkv_proj` / `gate_up_proj`
//! are split by rows at load time, so the config is the same as for the unfused families.

use super::block::BlockConfig;
use crate::backend::cpu::rope::{llama3_from_factors, RopeConfig, RopeLayout, RopeScaling};
use crate::error::{Error, Result};
use crate::io::gguf::GgufFile;
use serde_json::Value;
use std::path::Path;

/// Architectures loraforge can run, by GGUF `general.architecture` / HF `model_type`.
/// (HF `gemma3_text` and the multimodal `gemma3`'s `text_config` are read as `gemma3`.)
pub const SUPPORTED: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"];

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Family: one of `SUPPORTED`.
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// RoPE base of sliding-window layers when it differs (Gemma 3: 10000).
    pub rope_local_theta: Option<f32>,
    pub rope_scaling: RopeScaling,
    /// Rotary dims per head (partial rotary when < head_dim).
    pub rotary_dim: usize,
    /// Pair layout of the Q/K weights as stored: GGUF llama-family files are row-permuted for
    /// interleaved RoPE; Hugging Face weights use rotate-half.
    pub rope_layout: RopeLayout,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub sliding_window: Option<usize>,
    /// Every n-th layer is global, the others use the sliding window (Gemma 2: 2, Gemma 3: 6).
    /// None with a window: every layer slides (Mistral).
    pub sliding_window_pattern: Option<usize>,
    /// Per-layer override of the pattern (HF `layer_types`, Qwen2's `max_window_layers`):
    /// true = sliding. Takes precedence over `sliding_window_pattern` when present.
    pub sliding_layers: Option<Vec<bool>>,
    pub attn_logit_softcapping: Option<f32>,
    pub final_logit_softcapping: Option<f32>,
    /// Attention scale is query_pre_attn_scalar^-0.5 (Gemma); else head_dim^-0.5.
    pub query_pre_attn_scalar: Option<f32>,
    /// RMSNorm multiplies by (1 + w): Gemma in HF layout. GGUF stores Gemma norms already shifted.
    pub norm_add_one: bool,
    /// Embeddings scaled by √hidden (Gemma).
    pub embed_scale: bool,
    /// GeGLU (gelu_tanh) MLP (Gemma); else SwiGLU.
    pub gelu: bool,
    /// Per-head RMSNorm on q and k (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the MLP (Gemma 2/3).
    pub post_norms: bool,
    /// Bias on q/k/v projections (Qwen2).
    pub attention_bias: bool,
}

impl ModelConfig {
    /// Is layer `l` a sliding-window layer?
    pub fn is_sliding(&self, l: usize) -> bool {
        if let (Some(_), Some(v)) = (self.sliding_window, &self.sliding_layers) {
            return v.get(l).copied().unwrap_or(false);
        }
        match (self.sliding_window, self.sliding_window_pattern) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(_), Some(p)) => !(l + 1).is_multiple_of(p),
        }
    }

    pub fn block_config(&self, l: usize) -> BlockConfig {
        let sliding = self.is_sliding(l);
        let theta = if sliding { self.rope_local_theta.unwrap_or(self.rope_theta) } else { self.rope_theta };
        // Gemma 3's local layers use plain RoPE even when the global ones are scaled.
        let scaling = if sliding && self.rope_local_theta.is_some() { RopeScaling::None } else { self.rope_scaling };
        BlockConfig {
            hidden_size: self.hidden_size,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            intermediate_size: self.intermediate_size,
            rms_norm_eps: self.rms_norm_eps,
            norm_add_one: self.norm_add_one,
            gelu: self.gelu,
            rope: RopeConfig {
                head_dim: self.head_dim,
                rotary_dim: self.rotary_dim,
                theta,
                layout: self.rope_layout,
                scaling,
            },
            attn_scale: 1.0 / self.query_pre_attn_scalar.unwrap_or(self.head_dim as f32).sqrt(),
            sliding_window: if sliding { self.sliding_window } else { None },
            attn_softcap: self.attn_logit_softcapping,
            qk_norm: self.qk_norm,
            post_norms: self.post_norms,
        }
    }

    /// Parameters of the dense model (embeddings counted once when tied).
    pub fn param_count(&self) -> u64 {
        let (c, f, h, kv, d) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.num_attention_heads as u64,
            self.num_key_value_heads as u64,
            self.head_dim as u64,
        );
        let attn = c * h * d * 2 + c * kv * d * 2;
        let mlp = 3 * c * f;
        let norms = c * if self.post_norms { 4 } else { 2 } + if self.qk_norm { 2 * d } else { 0 };
        let embed = self.vocab_size as u64 * c * if self.tie_word_embeddings { 1 } else { 2 };
        self.num_hidden_layers as u64 * (attn + mlp + norms) + embed + c
    }

    /// Reads the config of a GGUF model file.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.get_str("general.architecture")?.to_string();
        if !SUPPORTED.contains(&arch.as_str()) {
            return Err(Error::Format {
                path: f.path().into(),
                msg: format!("architecture `{arch}` is not supported; supported: {}", SUPPORTED.join(", ")),
            });
        }
        let k = |s: &str| format!("{arch}.{s}");
        let opt_f32 = |s: &str| f.get(&k(s)).and_then(|v| v.as_float()).map(|v| v as f32);
        let opt_usize = |s: &str| f.get(&k(s)).and_then(|v| v.as_int()).map(|v| v as usize);
        let hidden = f.get_usize(&k("embedding_length"))?;
        let heads = f.get_usize(&k("attention.head_count"))?;
        if heads == 0 {
            return Err(Error::Format { path: f.path().into(), msg: "attention.head_count is 0".into() });
        }
        let kv_heads = opt_usize("attention.head_count_kv").unwrap_or(heads);
        let head_dim = opt_usize("attention.key_length").unwrap_or(hidden / heads);
        let vocab = match opt_usize("vocab_size") {
            Some(v) => v,
            None => f.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let gemma = arch.starts_with("gemma");
        let rope_scaling = match f.get(&k("rope.scaling.type")).and_then(|v| v.as_str()) {
            Some("linear") => RopeScaling::Linear { factor: opt_f32("rope.scaling.factor").unwrap_or(1.0) },
            Some("yarn") => RopeScaling::yarn(
                opt_f32("rope.scaling.factor").unwrap_or(1.0),
                opt_usize("rope.scaling.original_context_length").unwrap_or(4096),
            ),
            _ => RopeScaling::None,
        };
        if f.tensor("rope_factors_long.weight").is_ok() {
            return Err(Error::Format {
                path: f.path().into(),
                msg: "LongRoPE factors (rope_factors_long/short, Phi-3 128k GGUFs) are not supported yet".into(),
            });
        }
        let rotary_dim = opt_usize("rope.dimension_count").unwrap_or(head_dim);
        let rope_theta = opt_f32("rope.freq_base").unwrap_or(10000.0);
        // Llama 3.1+ GGUFs carry the llama3 scaling as per-frequency divisors, not as metadata.
        let rope_scaling = if f.tensor("rope_freqs.weight").is_ok() {
            if !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
                return Err(Error::Format {
                    path: f.path().into(),
                    msg: format!("rope.dimension_count {rotary_dim} does not fit head dim {head_dim}"),
                });
            }
            let factors = f.dequantize_tensor("rope_freqs.weight")?;
            let rope = RopeConfig {
                head_dim,
                rotary_dim,
                theta: rope_theta,
                layout: RopeLayout::HalfSplit,
                scaling: RopeScaling::None,
            };
            if factors.len() != rotary_dim / 2 || rope_scaling != RopeScaling::None {
                return Err(Error::Format {
                    path: f.path().into(),
                    msg: format!(
                        "rope_freqs.weight has {} values for rotary dim {rotary_dim} (needs {}){}",
                        factors.len(),
                        rotary_dim / 2,
                        if rope_scaling != RopeScaling::None {
                            " and the file also sets rope.scaling.type"
                        } else {
                            ""
                        }
                    ),
                });
            }
            llama3_from_factors(&rope, &factors).ok_or_else(|| Error::Format {
                path: f.path().into(),
                msg: "rope_freqs.weight holds per-frequency RoPE factors that do not follow Llama 3's \
                      formula (the only one loraforge knows for this tensor)"
                    .into(),
            })?
        } else {
            rope_scaling
        };
        let cfg = ModelConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: f.get_usize(&k("feed_forward_length"))?,
            num_hidden_layers: f.get_usize(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: opt_f32("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta,
            rope_local_theta: if arch == "gemma3" { Some(10000.0) } else { None },
            rope_scaling,
            rotary_dim,
            // llama.cpp permutes Q/K rows for the llama architecture (its "normal" RoPE);
            // the other families use rotate-half (NEOX) as stored.
            rope_layout: if arch == "llama" { RopeLayout::Interleaved } else { RopeLayout::HalfSplit },
            max_position_embeddings: opt_usize("context_length").unwrap_or(4096),
            tie_word_embeddings: f.tensor("output.weight").is_err(),
            sliding_window: opt_usize("attention.sliding_window"),
            sliding_window_pattern: match arch.as_str() {
                "gemma3" => Some(6),
                "gemma2" => Some(2),
                _ => None,
            },
            sliding_layers: None,
            attn_logit_softcapping: opt_f32("attn_logit_softcapping"),
            final_logit_softcapping: opt_f32("final_logit_softcapping"),
            query_pre_attn_scalar: if gemma { Some(head_dim as f32) } else { None },
            norm_add_one: false,
            embed_scale: gemma,
            gelu: gemma,
            qk_norm: arch == "qwen3" || arch == "gemma3",
            post_norms: arch == "gemma2" || arch == "gemma3",
            attention_bias: arch == "qwen2",
            arch,
        };
        cfg.validate(f.path())
    }

    fn validate(self, path: &str) -> Result<Self> {
        let bad = |msg: String| Err(Error::Format { path: path.into(), msg });
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 || self.head_dim == 0 {
            return bad(format!("config has a zero size: {self:?}"));
        }
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if let Some(v) = &self.sliding_layers {
            if v.len() != self.num_hidden_layers {
                return bad(format!("{} layer types for {} layers", v.len(), self.num_hidden_layers));
            }
        }
        if self.rotary_dim > self.head_dim || !self.rotary_dim.is_multiple_of(2) {
            return bad(format!("rotary dim {} does not fit head dim {}", self.rotary_dim, self.head_dim));
        }
        Ok(self)
    }
}

/// Gemma3TextConfig defaults (transformers `configuration_gemma3.py`): the multimodal Gemma 3
/// config.json lists only the fields that differ from these in its `text_config`.
const GEMMA3_TEXT_DEFAULTS: &[(&str, f64)] = &[
    ("vocab_size", 262_208.0),
    ("hidden_size", 2304.0),
    ("intermediate_size", 9216.0),
    ("num_hidden_layers", 26.0),
    ("num_attention_heads", 8.0),
    ("num_key_value_heads", 4.0),
    ("head_dim", 256.0),
    ("query_pre_attn_scalar", 256.0),
    ("sliding_window", 4096.0),
    ("rope_theta", 1_000_000.0),
    ("rope_local_base_freq", 10_000.0),
    ("rms_norm_eps", 1e-6),
    ("max_position_embeddings", 131_072.0),
];

/// Reads config.json fields, collecting every missing or mistyped one.
struct Fields<'a> {
    v: &'a Value,
    missing: Vec<String>,
    bad: Vec<String>,
}

impl Fields<'_> {
    /// A present, non-null field.
    fn get(&self, k: &str) -> Option<&Value> {
        self.v.get(k).filter(|x| !x.is_null())
    }
    fn opt_usize(&mut self, k: &str) -> Option<usize> {
        let x = self.get(k)?;
        match x.as_u64() {
            Some(n) => Some(n as usize),
            None => {
                self.bad.push(format!("{k} = {x} is not a non-negative integer"));
                None
            }
        }
    }
    fn req_usize(&mut self, k: &str) -> usize {
        if self.get(k).is_none() {
            self.missing.push(k.into());
        }
        self.opt_usize(k).unwrap_or(0)
    }
    fn opt_f32(&mut self, k: &str) -> Option<f32> {
        let x = self.get(k)?;
        match x.as_f64() {
            Some(n) => Some(n as f32),
            None => {
                self.bad.push(format!("{k} = {x} is not a number"));
                None
            }
        }
    }
    fn opt_bool(&mut self, k: &str) -> Option<bool> {
        let x = self.get(k)?;
        match x.as_bool() {
            Some(b) => Some(b),
            None => {
                self.bad.push(format!("{k} = {x} is not a boolean"));
                None
            }
        }
    }
    fn opt_str(&mut self, k: &str) -> Option<String> {
        let x = self.get(k)?;
        match x.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.bad.push(format!("{k} = {x} is not a string"));
                None
            }
        }
    }
}

/// One RoPE dict (HF `rope_scaling`, or one entry of transformers-5 `rope_parameters`) -> (theta if
/// stated, scaling). `rope_type` (or the older `type`): default, linear, llama3, yarn.
fn parse_rope(r: &Value, max_pos: usize, bad: &mut Vec<String>) -> (Option<f32>, RopeScaling) {
    let num = |k: &str| r.get(k).and_then(|x| x.as_f64());
    let theta = num("rope_theta").map(|t| t as f32);
    let ty = r.get("rope_type").or_else(|| r.get("type")).and_then(|x| x.as_str()).unwrap_or("default");
    let factor = num("factor");
    let need_factor = |bad: &mut Vec<String>| {
        factor.map(|f| f as f32).unwrap_or_else(|| {
            bad.push(format!("rope type {ty} needs `factor`"));
            1.0
        })
    };
    let orig = num("original_max_position_embeddings").map(|x| x as usize);
    let scaling = match ty {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need_factor(bad) },
        "llama3" => RopeScaling::Llama3 {
            factor: need_factor(bad),
            // transformers' Llama 3.1 values are the ones every llama3 config states; 1 and 4 as fallbacks.
            low_freq_factor: num("low_freq_factor").unwrap_or(1.0) as f32,
            high_freq_factor: num("high_freq_factor").unwrap_or(4.0) as f32,
            original_max_position: orig.unwrap_or_else(|| {
                bad.push("rope type llama3 needs `original_max_position_embeddings`".into());
                8192
            }),
        },
        "yarn" => RopeScaling::Yarn {
            factor: need_factor(bad),
            original_max_position: orig.unwrap_or(max_pos),
            beta_fast: num("beta_fast").unwrap_or(32.0) as f32,
            beta_slow: num("beta_slow").unwrap_or(1.0) as f32,
            attention_factor: num("attention_factor").map(|x| x as f32),
        },
        other => {
            bad.push(format!("rope type `{other}` is not supported (supported: default, linear, llama3, yarn)"));
            RopeScaling::None
        }
    };
    (theta, scaling)
}

impl ModelConfig {
    /// Reads a Hugging Face config.json file.
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Format { path: path.display().to_string(), msg: format!("bad JSON: {e}") })?;
        Self::from_hf_json_at(&v, &path.display().to_string())
    }

    /// Maps a parsed Hugging Face config.json (see the module header).
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        Self::from_hf_json_at(v, "config.json")
    }

    fn from_hf_json_at(root: &Value, path: &str) -> Result<Self> {
        let err = |msg: String| Error::Format { path: path.into(), msg };
        let model_type = root
            .get("model_type")
            .and_then(|x| x.as_str())
            .ok_or_else(|| err(format!("no `model_type` string; supported model types: {}", SUPPORTED.join(", "))))?;
        // The multimodal Gemma 3 nests its language model's config (sparse, see the defaults).
        let merged;
        let (arch, v) = match (model_type, root.get("text_config")) {
            ("gemma3", Some(tc)) if tc.is_object() => {
                let mut m = tc.clone();
                let obj = m.as_object_mut().expect("checked is_object");
                for (k, d) in GEMMA3_TEXT_DEFAULTS {
                    if obj.get(*k).is_none_or(|x| x.is_null()) {
                        obj.insert(k.to_string(), serde_json::json!(d));
                    }
                }
                merged = m;
                ("gemma3", &merged)
            }
            ("gemma3_text", _) => ("gemma3", root),
            (t, _) if SUPPORTED.contains(&t) => (t, root),
            (t, _) => {
                return Err(err(format!(
                    "model_type `{t}` is not supported; supported: {} (and gemma3_text)",
                    SUPPORTED.join(", ")
                )))
            }
        };
        let gemma = arch.starts_with("gemma");
        let mut f = Fields { v, missing: Vec::new(), bad: Vec::new() };
        let vocab = f.req_usize("vocab_size");
        let hidden = f.req_usize("hidden_size");
        let ff = f.req_usize("intermediate_size");
        let layers = f.req_usize("num_hidden_layers");
        let heads = f.req_usize("num_attention_heads");
        if !f.missing.is_empty() {
            return Err(err(format!("{model_type} config is missing required field(s): {}", f.missing.join(", "))));
        }
        let kv = f.opt_usize("num_key_value_heads").unwrap_or(heads);
        let head_dim = f.opt_usize("head_dim").unwrap_or(match arch {
            // transformers' class defaults when config.json leaves head_dim out
            _ if gemma => 256,
            "qwen3" => 128,
            _ => hidden.checked_div(heads).unwrap_or(0),
        });
        let max_pos = f.opt_usize("max_position_embeddings").unwrap_or(4096);
        let rms_eps = f.opt_f32("rms_norm_eps").unwrap_or(if arch == "phi3" { 1e-5 } else { 1e-6 });

        // RoPE: transformers 5 `rope_parameters` (per layer type for Gemma 3), else 4's fields.
        let mut rope_theta = f.opt_f32("rope_theta");
        let mut local_theta = f.opt_f32("rope_local_base_freq");
        let mut scaling = RopeScaling::None;
        if let Some(rp) = f.get("rope_parameters").cloned() {
            match (rp.get("full_attention"), rp.get("sliding_attention")) {
                (None, None) => {
                    let (t, s) = parse_rope(&rp, max_pos, &mut f.bad);
                    rope_theta = t.or(rope_theta);
                    scaling = s;
                }
                (full, sliding) => {
                    if let Some(full) = full {
                        let (t, s) = parse_rope(full, max_pos, &mut f.bad);
                        rope_theta = t.or(rope_theta);
                        scaling = s;
                    }
                    if let Some(sl) = sliding {
                        let (t, s) = parse_rope(sl, max_pos, &mut f.bad);
                        local_theta = t.or(local_theta);
                        if s != RopeScaling::None {
                            f.bad.push("scaled RoPE on sliding layers is not supported".into());
                        }
                    }
                }
            }
        } else if let Some(rs) = f.get("rope_scaling").cloned() {
            scaling = parse_rope(&rs, max_pos, &mut f.bad).1;
        }
        let rope_theta = rope_theta.unwrap_or(if arch == "gemma3" { 1_000_000.0 } else { 10_000.0 });
        let rope_local_theta = if arch == "gemma3" { Some(local_theta.unwrap_or(10_000.0)) } else { None };
        let rotary_dim = match f.opt_f32("partial_rotary_factor") {
            // transformers: int(head_dim * partial_rotary_factor)
            Some(p) => (head_dim as f64 * p as f64) as usize,
            None => head_dim,
        };

        // Sliding windows.
        let window = match arch {
            "mistral" | "phi3" | "gemma3" => f.opt_usize("sliding_window"),
            "gemma2" => Some(f.opt_usize("sliding_window").unwrap_or(4096)),
            // Qwen2/3: the window exists only with use_sliding_window, above max_window_layers.
            "qwen2" | "qwen3" if f.opt_bool("use_sliding_window").unwrap_or(false) => f.opt_usize("sliding_window"),
            _ => None,
        };
        let window = if arch == "gemma3" { Some(window.unwrap_or(4096)) } else { window };
        let mut pattern = match arch {
            "gemma2" => Some(2),
            "gemma3" => Some(6),
            _ => None,
        };
        if let Some(p) = f.opt_usize("sliding_window_pattern") {
            pattern = Some(p);
        }
        let mut sliding_layers = None;
        if let Some(lt) = f.get("layer_types").cloned() {
            let types: Vec<Option<bool>> = lt
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| match t.as_str() {
                            Some("sliding_attention") => Some(true),
                            Some("full_attention") => Some(false),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            if types.is_empty() || types.iter().any(|t| t.is_none()) {
                f.bad.push(format!("layer_types = {lt} is not a list of \"sliding_attention\"/\"full_attention\""));
            } else {
                sliding_layers = Some(types.into_iter().map(|t| t.expect("checked")).collect());
            }
        } else if matches!(arch, "qwen2" | "qwen3") && window.is_some() {
            // transformers 4.5x: layers i >= max_window_layers use the window (default 28).
            let m = f.opt_usize("max_window_layers").unwrap_or(28);
            sliding_layers = Some((0..layers).map(|i| i >= m).collect());
        }
        if sliding_layers.is_some() {
            pattern = None;
        }

        // Activations.
        let act = if gemma {
            f.opt_str("hidden_activation").unwrap_or_else(|| "gelu_pytorch_tanh".into())
        } else {
            f.opt_str("hidden_act").unwrap_or_else(|| "silu".into())
        };
        let want = if gemma { "gelu_pytorch_tanh" } else { "silu" };
        if act != want && !(gemma && act == "gelu_tanh") {
            f.bad.push(format!("activation `{act}` is not supported for {arch} (expected {want})"));
        }

        let attention_bias = arch == "qwen2" || f.opt_bool("attention_bias").unwrap_or(false);
        let cfg = ModelConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: ff,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: rms_eps,
            rope_theta,
            rope_local_theta,
            rope_scaling: scaling,
            rotary_dim,
            rope_layout: RopeLayout::HalfSplit,
            max_position_embeddings: max_pos,
            tie_word_embeddings: f.opt_bool("tie_word_embeddings").unwrap_or(gemma),
            sliding_window: window,
            sliding_window_pattern: if window.is_some() { pattern } else { None },
            sliding_layers,
            attn_logit_softcapping: if gemma { f.opt_f32("attn_logit_softcapping") } else { None },
            final_logit_softcapping: if gemma { f.opt_f32("final_logit_softcapping") } else { None },
            query_pre_attn_scalar: if gemma {
                Some(f.opt_f32("query_pre_attn_scalar").unwrap_or(head_dim as f32))
            } else {
                None
            },
            norm_add_one: gemma,
            embed_scale: gemma,
            gelu: gemma,
            qk_norm: arch == "qwen3" || arch == "gemma3",
            post_norms: arch == "gemma2" || arch == "gemma3",
            attention_bias,
            arch: arch.to_string(),
        };
        if !f.bad.is_empty() {
            return Err(err(format!("{} problem(s) in {model_type} config:\n  {}", f.bad.len(), f.bad.join("\n  "))));
        }
        cfg.validate(path)
    }
}
