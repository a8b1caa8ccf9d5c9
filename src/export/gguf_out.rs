//! GGUF outputs llama.cpp (and Ollama) load unchanged: a merged model in F32/F16/BF16/Q8_0/Q4_0/
//! Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K or llama-quantize's Q4_K_M mix, and a LoRA adapter.
//! Spec: llama.cpp `convert_hf_to_gguf.py` (metadata keys, `LlamaModel.permute`, Gemma norms + 1),
//! `src/llama-quant.cpp` `llama_tensor_get_type` (type per tensor), `convert_lora_to_gguf.py` and
//! `src/llama-adapter.cpp` (adapter keys and tensor shapes).
//! Test: tests/export.rs (F32 GGUF logits == adapter-applied; Q8_0 / Q4_K_M bounds; gguf-py reads
//! the files back; adapter names, shapes, alpha).
//!
//! Contracts easy to miss:
//! - Tensors arrive in HF layout (merge.rs). For GGUF arch "llama" (HF llama and mistral) the Q/K rows
//!   are permuted to llama.cpp's interleaved order; Gemma norms are stored as 1 + w.
//! - Only matrices are quantized; norms and biases stay F32 (as llama.cpp does).
//! - K-quants need rows that are a multiple of 256: llama.cpp then falls back Q4_K → Q5_0,
//!   Q5_K → Q5_1, Q6_K → Q8_0 (and to F16 when even 32 does not divide). We do the same and say so.
//! - The adapter's lora_a is A as PEFT stores it, (r, d_in) row-major (GGUF ne = [d_in, r]); lora_b is
//!   B (d_out, r) (ne = [r, d_out]). llama.cpp scales by alpha / r, so adapter.lora.alpha is written
//!   as scale · r (rsLoRA's alpha/√r becomes an equivalent alpha).

use super::merge::{permute_qk_rows, proj_shape, ExportTensor, LoadedAdapter, PROJ};
use crate::backend::cpu::rope::{llama3_rope_factors, RopeConfig, RopeLayout, RopeScaling};
use crate::error::{Error, Result};
use crate::io::gguf::{GgufValue, GgufWriter};
use crate::model::names::{self, Role};
use crate::model::ModelConfig;
use crate::quant::ggml::{quantize, GgmlType, QK, QK_K};

/// What the GGUF tensors are stored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufQuant {
    /// Every matrix in this type (norms F32; the output matrix Q6_K for quantized types, as llama-quantize).
    Uniform(GgmlType),
    /// llama-quantize's Q4_K_M: Q4_K, with Q6_K for the output and for half the attn_v / ffn_down layers.
    Q4KM,
}

impl GgufQuant {
    /// "q8_0" | "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q4_k" | "q5_k" | "q6_k" | "q4_k_m", or a float type.
    pub fn parse(s: &str) -> Result<GgufQuant> {
        let l = s.to_ascii_lowercase();
        let ty = match l.as_str() {
            "q4_k_m" => return Ok(GgufQuant::Q4KM),
            "f32" | "float32" => GgmlType::F32,
            "f16" | "float16" => GgmlType::F16,
            "bf16" | "bfloat16" => GgmlType::BF16,
            "q8_0" => GgmlType::Q8_0,
            "q4_0" => GgmlType::Q4_0,
            "q4_1" => GgmlType::Q4_1,
            "q5_0" => GgmlType::Q5_0,
            "q5_1" => GgmlType::Q5_1,
            "q4_k" | "q4_k_s" => GgmlType::Q4_K,
            "q5_k" | "q5_k_s" => GgmlType::Q5_K,
            "q6_k" => GgmlType::Q6_K,
            _ => {
                return Err(Error::InvalidArgument {
                    op: "export",
                    msg: format!(
                        "unknown GGUF quantization {s:?}; expected one of f32, f16, bf16, q8_0, q4_0, q4_1, \
                         q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m"
                    ),
                })
            }
        };
        Ok(GgufQuant::Uniform(ty))
    }

    /// llama.cpp's `llama_ftype` for `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            GgufQuant::Q4KM => 15,
            GgufQuant::Uniform(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q4_K => 14, // Q4_K_S: the all-Q4_K preset
                GgmlType::Q5_K => 16, // Q5_K_S
                GgmlType::Q6_K => 18,
                GgmlType::BF16 => 32,
                _ => 0,
            },
        }
    }

    /// File name tag: "q4_k_m", "q8_0", "f16".
    pub fn tag(self) -> &'static str {
        match self {
            GgufQuant::Q4KM => "q4_k_m",
            GgufQuant::Uniform(t) => t.name(),
        }
    }

    fn base(self) -> GgmlType {
        match self {
            GgufQuant::Q4KM => GgmlType::Q4_K,
            GgufQuant::Uniform(t) => t,
        }
    }
}

/// llama.cpp `use_more_bits`: the first and last eighth of the layers, and every third one between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as isize - (n / 8) as isize).rem_euclid(3) == 2
}

fn is_k(t: GgmlType) -> bool {
    matches!(t, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K)
}

/// The type of one tensor (llama.cpp `llama_tensor_get_type` for the presets we offer). Returns the
/// type and, when a fallback was needed, a note.
pub fn tensor_type(q: GgufQuant, t: &ExportTensor, n_layers: usize, tied: bool) -> (GgmlType, Option<String>) {
    if t.shape.len() < 2 {
        return (GgmlType::F32, None);
    }
    let cols = *t.shape.last().expect("2-D");
    let base = q.base();
    let float = matches!(base, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    if float {
        return (base, None);
    }
    let is_output = t.role == Role::LmHead || (tied && t.role == Role::Embed);
    let mut ty = base;
    if is_output {
        ty = if !cols.is_multiple_of(QK_K) {
            GgmlType::Q8_0
        } else if base != GgmlType::Q8_0 {
            GgmlType::Q6_K
        } else {
            base
        };
    } else if q == GgufQuant::Q4KM {
        ty = match t.role {
            Role::V | Role::Down if use_more_bits(t.layer, n_layers) => GgmlType::Q6_K,
            Role::Qkv => GgmlType::Q5_K,
            _ => GgmlType::Q4_K,
        };
    }
    let mut note = None;
    if is_k(ty) && !cols.is_multiple_of(QK_K) {
        let fb = match ty {
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            _ => GgmlType::Q8_0,
        };
        note =
            Some(format!("{}: {cols} columns is not a multiple of 256, {} -> {}", t.gguf_name(), ty.name(), fb.name()));
        ty = fb;
    }
    if ty.block_size() == QK && !cols.is_multiple_of(QK) {
        note = Some(format!("{}: {cols} columns is not a multiple of 32, {} -> f16", t.gguf_name(), ty.name()));
        ty = GgmlType::F16;
    }
    (ty, note)
}

/// The GGUF architecture name of `cfg.arch` (llama.cpp converts Mistral checkpoints as "llama").
pub fn gguf_arch(arch: &str) -> &str {
    match arch {
        "mistral" => "llama",
        a => a,
    }
}

/// `general.*` and `{arch}.*` hyperparameter keys for `cfg`. Errors for what llama.cpp cannot express.
pub fn model_kv(cfg: &ModelConfig, name: &str, q: GgufQuant) -> Result<Vec<(String, GgufValue)>> {
    let a = gguf_arch(&cfg.arch).to_string();
    let k = |s: &str| format!("{a}.{s}");
    let u = |x: usize| GgufValue::U32(x as u32);
    let mut kv: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), a.as_str().into()),
        ("general.type".into(), "model".into()),
        ("general.name".into(), name.into()),
        ("general.file_type".into(), q.file_type().into()),
    ];
    if !matches!(q, GgufQuant::Uniform(GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)) {
        kv.push(("general.quantization_version".into(), 2u32.into()));
    }
    kv.extend([
        (k("vocab_size"), u(cfg.vocab_size)),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(cfg.num_key_value_heads)),
        (k("attention.key_length"), u(cfg.head_dim)),
        (k("attention.value_length"), u(cfg.head_dim)),
        (k("attention.layer_norm_rms_epsilon"), GgufValue::F32(cfg.rms_norm_eps)),
        (k("rope.freq_base"), GgufValue::F32(cfg.rope_theta)),
        (k("rope.dimension_count"), u(cfg.rotary_dim)),
    ]);
    match cfg.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            kv.push((k("rope.scaling.type"), "linear".into()));
            kv.push((k("rope.scaling.factor"), GgufValue::F32(factor)));
        }
        RopeScaling::Yarn { factor, original_max_position, .. } => {
            kv.push((k("rope.scaling.type"), "yarn".into()));
            kv.push((k("rope.scaling.factor"), GgufValue::F32(factor)));
            kv.push((k("rope.scaling.original_context_length"), u(original_max_position)));
        }
        // No metadata: llama.cpp reads it from the `rope_freqs.weight` tensor (see `rope_freqs`).
        RopeScaling::Llama3 { .. } if gguf_arch(&cfg.arch) == "llama" => {}
        RopeScaling::Llama3 { .. } => {
            return Err(Error::InvalidArgument {
                op: "export",
                msg: format!(
                    "Llama 3 RoPE scaling on architecture {}: llama.cpp reads rope_freqs.weight only for llama; \
                     export safetensors instead",
                    cfg.arch
                ),
            })
        }
    }
    if let Some(w) = cfg.sliding_window {
        kv.push((k("attention.sliding_window"), u(w)));
    }
    if let Some(c) = cfg.attn_logit_softcapping {
        kv.push((k("attn_logit_softcapping"), GgufValue::F32(c)));
    }
    if let Some(c) = cfg.final_logit_softcapping {
        kv.push((k("final_logit_softcapping"), GgufValue::F32(c)));
    }
    Ok(kv)
}

/// The `rope_freqs.weight` tensor llama.cpp's converter writes for `rope_type: llama3` (Llama 3.1+):
/// one f32 divisor per rotary frequency. `None` for every other scaling.
pub fn rope_freqs(cfg: &ModelConfig) -> Option<Vec<f32>> {
    let rope = RopeConfig {
        head_dim: cfg.head_dim,
        rotary_dim: cfg.rotary_dim,
        theta: cfg.rope_theta,
        layout: RopeLayout::HalfSplit,
        scaling: cfg.rope_scaling,
    };
    llama3_rope_factors(&rope)
}

/// Converts one HF-layout tensor to its GGUF layout (llama Q/K permutation, Gemma norms + 1).
pub fn to_gguf_layout(cfg: &ModelConfig, t: &mut ExportTensor) {
    if gguf_arch(&cfg.arch) == "llama" {
        let heads = match t.role {
            Role::Q => Some(cfg.num_attention_heads),
            Role::K => Some(cfg.num_key_value_heads),
            _ => None,
        };
        if let Some(h) = heads {
            let cols = if t.bias { 1 } else { *t.shape.last().expect("shape") };
            t.data = permute_qk_rows(&t.data, cols, h, cfg.head_dim, false);
        }
    }
    if cfg.arch.starts_with("gemma") && t.is_norm() {
        t.data.iter_mut().for_each(|x| *x += 1.0);
    }
}

/// Adds one tensor to `w`, in the type the preset gives it. Returns a fallback note, if any.
pub fn add_tensor(
    w: &mut GgufWriter,
    cfg: &ModelConfig,
    q: GgufQuant,
    mut t: ExportTensor,
) -> Result<(GgmlType, Option<String>)> {
    to_gguf_layout(cfg, &mut t);
    let (ty, note) = tensor_type(q, &t, cfg.num_hidden_layers, cfg.tie_word_embeddings);
    let bytes = quantize(ty, &t.data)?;
    w.add_tensor(t.gguf_name(), &t.shape, ty, bytes)?;
    Ok((ty, note))
}

/// llama.cpp GGUF LoRA adapter for `adapter` on a base with config `cfg`. `ty`: F32, F16 or BF16.
pub fn adapter_writer(cfg: &ModelConfig, adapter: &LoadedAdapter, ty: GgmlType, name: &str) -> Result<GgufWriter> {
    let bad = |msg: String| Error::InvalidArgument { op: "export gguf adapter", msg };
    if adapter.config.use_dora {
        return Err(bad(format!(
            "{}: DoRA adapters have no llama.cpp GGUF form (no magnitude vector); export a merged model instead",
            adapter.dir.display()
        )));
    }
    if names::fused_projections(&cfg.arch) {
        return Err(bad(format!(
            "{}: llama.cpp stores {} q/k/v and gate/up fused, which a per-projection LoRA cannot target; \
             export a merged model instead",
            adapter.dir.display(),
            cfg.arch
        )));
    }
    if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(bad(format!("adapter tensors must be f32, f16 or bf16, not {ty}")));
    }
    let arch = gguf_arch(&cfg.arch);
    let mut w = GgufWriter::new();
    let rank = adapter.config.r;
    let scale = adapter.config.lora().scale();
    w.add("general.architecture", arch)?;
    w.add("general.type", "adapter")?;
    w.add("general.name", name)?;
    w.add("adapter.type", "lora")?;
    w.add("adapter.lora.alpha", scale * rank as f32)?;
    for l in 0..cfg.num_hidden_layers {
        for (_, role) in PROJ {
            let module = names::hf_module(&cfg.arch, role, l);
            let Some(m) = adapter.modules.get(&module) else { continue };
            let (d_out, d_in) = proj_shape(cfg, role);
            let mut b = m.b.clone();
            let heads = match role {
                Role::Q => Some(cfg.num_attention_heads),
                Role::K => Some(cfg.num_key_value_heads),
                _ => None,
            };
            if let (true, Some(h)) = (arch == "llama", heads) {
                b = permute_qk_rows(&b, m.rank, h, cfg.head_dim, false);
            }
            let base = names::gguf_name(role, l, "weight");
            w.add_tensor(format!("{base}.lora_a"), &[m.rank, d_in], ty, quantize(ty, &m.a)?)?;
            w.add_tensor(format!("{base}.lora_b"), &[d_out, m.rank], ty, quantize(ty, &b)?)?;
        }
    }
    Ok(w)
}
