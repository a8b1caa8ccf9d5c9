//! One config type for every supported architecture; family differences are data. Built from GGUF
//! metadata (`<arch>.*` keys) or a Hugging Face config.json, with HF field names.
//!
//! What GGUF does not state is filled in from the family's fixed values (as transformers does from
//! its config classes): Gemma 3's local RoPE base 10000 and its 5:1 sliding/global layer pattern,
//! Gemma's embedding scale √hidden and query_pre_attn_scalar = head_dim.

use super::block::BlockConfig;
use crate::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
use crate::error::{Error, Result};
use crate::io::gguf::GgufFile;

/// Architectures loraforge can run, by GGUF `general.architecture` / HF `model_type`.
pub const SUPPORTED: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"];

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
        match (self.sliding_window, self.sliding_window_pattern) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(_), Some(p)) => (l + 1) % p != 0,
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
        if f.tensor("rope_freqs.weight").is_ok() {
            return Err(Error::Format {
                path: f.path().into(),
                msg: "per-frequency RoPE factors (rope_freqs.weight, Llama 3.1+ GGUFs) are not supported yet".into(),
            });
        }
        let cfg = ModelConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: f.get_usize(&k("feed_forward_length"))?,
            num_hidden_layers: f.get_usize(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: opt_f32("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: opt_f32("rope.freq_base").unwrap_or(10000.0),
            rope_local_theta: if arch == "gemma3" { Some(10000.0) } else { None },
            rope_scaling,
            rotary_dim: opt_usize("rope.dimension_count").unwrap_or(head_dim),
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
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.rotary_dim > self.head_dim || self.rotary_dim % 2 != 0 {
            return bad(format!("rotary dim {} does not fit head dim {}", self.rotary_dim, self.head_dim));
        }
        Ok(self)
    }
}
