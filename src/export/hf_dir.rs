//! A merged model as a Hugging Face directory that transformers loads unchanged:
//! config.json, model.safetensors (or model-0000i-of-0000n.safetensors + model.safetensors.index.json
//! when larger than the shard size), tokenizer.json, tokenizer_config.json, generation_config.json.
//! Spec: transformers `modeling_utils.save_pretrained` (shard names, index format), the config classes
//! `configuration_{llama,mistral,qwen2,qwen3,gemma,gemma2,gemma3,phi3}.py`.
//! Test: tests/export.rs (our HF loader gives the adapter-applied logits; tokenizer ids).
//!
//! Contract easy to miss: config.json is produced from `ModelConfig` (for a GGUF base, that is the
//! GGUF metadata), so it must read back through `ModelConfig::from_hf_json` to the same config, with
//! `norm_add_one` and `rope_layout` in their HF meaning.

use super::merge::ExportTensor;
use crate::backend::cpu::rope::RopeScaling;
use crate::error::{Error, Result};
use crate::io::safetensors::write_safetensors;
use crate::model::ModelConfig;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// transformers version written into the JSON files (the format these files follow).
const TRANSFORMERS_VERSION: &str = "4.51.0";

/// Parses "bfloat16" | "float16" | "float32" (also "bf16", "f16", "f32").
pub fn parse_dtype(s: &str) -> Result<(Dtype, &'static str)> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "bfloat16" | "bf16" => (Dtype::BF16, "bfloat16"),
        "float16" | "f16" | "fp16" => (Dtype::F16, "float16"),
        "float32" | "f32" | "fp32" => (Dtype::F32, "float32"),
        other => {
            return Err(Error::InvalidArgument {
                op: "export",
                msg: format!("unknown dtype {other:?}; expected bfloat16, float16 or float32"),
            })
        }
    })
}

/// f32 values as little-endian bytes of `dtype`.
pub fn encode(v: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::BF16 => v.iter().flat_map(|&x| crate::quant::ggml::f32_to_bf16_bits(x).to_le_bytes()).collect(),
        Dtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn rope_scaling_json(s: &RopeScaling) -> Value {
    match *s {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position}),
        RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor } => {
            let mut v = json!({"rope_type": "yarn", "factor": factor,
                "original_max_position_embeddings": original_max_position,
                "beta_fast": beta_fast, "beta_slow": beta_slow});
            if let Some(a) = attention_factor {
                v["attention_factor"] = json!(a);
            }
            v
        }
    }
}

/// Special token ids for config.json / generation_config.json.
#[derive(Clone, Debug, Default)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    /// End-of-turn ids (generation stops on these too).
    pub eot: Vec<u32>,
}

/// HF config.json for `cfg` (HF layout, as `ModelConfig::from_hf_json` reads it).
pub fn config_json(cfg: &ModelConfig, ids: &SpecialIds, torch_dtype: &str) -> Value {
    let (class, model_type) = match cfg.arch.as_str() {
        "llama" => ("LlamaForCausalLM", "llama"),
        "mistral" => ("MistralForCausalLM", "mistral"),
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        "gemma" => ("GemmaForCausalLM", "gemma"),
        "gemma2" => ("Gemma2ForCausalLM", "gemma2"),
        "gemma3" => ("Gemma3ForCausalLM", "gemma3_text"),
        "phi3" => ("Phi3ForCausalLM", "phi3"),
        other => (other, other),
    };
    let gemma = cfg.arch.starts_with("gemma");
    let mut v = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling_json(&cfg.rope_scaling),
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "torch_dtype": torch_dtype,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "transformers_version": TRANSFORMERS_VERSION,
    });
    let o = v.as_object_mut().expect("object");
    if gemma {
        o.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        o.insert("hidden_act".into(), json!("gelu_pytorch_tanh"));
        if let Some(q) = cfg.query_pre_attn_scalar {
            o.insert("query_pre_attn_scalar".into(), json!(q));
        }
    } else {
        o.insert("hidden_act".into(), json!("silu"));
    }
    if matches!(cfg.arch.as_str(), "llama" | "mistral" | "qwen3") {
        o.insert("attention_bias".into(), json!(cfg.attention_bias));
        o.insert("mlp_bias".into(), json!(false));
    }
    if cfg.rotary_dim != cfg.head_dim {
        o.insert("partial_rotary_factor".into(), json!(cfg.rotary_dim as f64 / cfg.head_dim as f64));
    }
    o.insert("sliding_window".into(), json!(cfg.sliding_window));
    match cfg.arch.as_str() {
        "qwen2" | "qwen3" => {
            o.insert("use_sliding_window".into(), json!(cfg.sliding_window.is_some()));
            if let (Some(_), Some(layers)) = (cfg.sliding_window, &cfg.sliding_layers) {
                let first = layers.iter().position(|&s| s).unwrap_or(layers.len());
                o.insert("max_window_layers".into(), json!(first));
            } else {
                o.insert("max_window_layers".into(), json!(cfg.num_hidden_layers));
            }
        }
        "gemma2" | "gemma3" => {
            o.insert("attn_logit_softcapping".into(), json!(cfg.attn_logit_softcapping));
            o.insert("final_logit_softcapping".into(), json!(cfg.final_logit_softcapping));
            if cfg.arch == "gemma3" {
                o.insert("rope_local_base_freq".into(), json!(cfg.rope_local_theta.unwrap_or(10_000.0)));
                if let Some(p) = cfg.sliding_window_pattern {
                    o.insert("sliding_window_pattern".into(), json!(p));
                }
                let types: Vec<&str> = (0..cfg.num_hidden_layers)
                    .map(|l| if cfg.is_sliding(l) { "sliding_attention" } else { "full_attention" })
                    .collect();
                o.insert("layer_types".into(), json!(types));
            }
        }
        _ => {}
    }
    v
}

/// generation_config.json: BOS, EOS (with the end-of-turn ids, which stop generation), pad.
pub fn generation_config_json(ids: &SpecialIds) -> Value {
    let mut eos: Vec<u32> = ids.eos.into_iter().chain(ids.eot.iter().copied()).collect();
    eos.dedup();
    let eos = match eos.len() {
        0 => Value::Null,
        1 => json!(eos[0]),
        _ => json!(eos),
    };
    json!({"_from_model_config": true, "bos_token_id": ids.bos, "eos_token_id": eos,
           "pad_token_id": ids.pad, "transformers_version": TRANSFORMERS_VERSION})
}

pub(crate) fn write_json(path: &Path, v: &Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v)?;
    std::fs::write(path, s + "\n").map_err(|e| Error::io(path, e))
}

/// One tensor of a shard: (HF name, dtype, shape, bytes).
type ShardTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Writes the weights into `dir`: one file, or shards of at most `shard_bytes` (a tensor larger
/// than that gets a shard of its own) plus the index. Returns the files written.
pub fn write_weights(
    dir: &Path,
    arch: &str,
    tensors: Vec<(ExportTensor, Vec<u8>)>,
    dtype: Dtype,
    shard_bytes: u64,
) -> Result<Vec<PathBuf>> {
    let mut shards: Vec<Vec<ShardTensor>> = vec![Vec::new()];
    let mut cur = 0u64;
    let mut total = 0u64;
    for (t, bytes) in tensors {
        let n = bytes.len() as u64;
        if cur > 0 && cur + n > shard_bytes {
            shards.push(Vec::new());
            cur = 0;
        }
        cur += n;
        total += n;
        shards.last_mut().expect("one shard").push((t.hf_name(arch), dtype, t.shape, bytes));
    }
    let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let mut files = Vec::new();
    if shards.len() == 1 {
        let p = dir.join("model.safetensors");
        write_safetensors(&p, &shards[0], meta)?;
        files.push(p);
        return Ok(files);
    }
    let k = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, s) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, k);
        for t in s {
            weight_map.insert(t.0.clone(), json!(name));
        }
        let p = dir.join(&name);
        write_safetensors(&p, s, meta.clone())?;
        files.push(p);
    }
    let idx = dir.join("model.safetensors.index.json");
    write_json(&idx, &json!({"metadata": {"total_size": total}, "weight_map": weight_map}))?;
    files.push(idx);
    Ok(files)
}

/// tokenizer_config.json for a tokenizer.json built from GGUF metadata.
#[allow(clippy::too_many_arguments)]
pub fn tokenizer_config_json(
    tokens: &[String],
    types: &[i32],
    ids: &SpecialIds,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<&str>,
    max_len: usize,
) -> Value {
    let name = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize)).cloned();
    let mut decoder = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        if types.get(i).is_some_and(|&ty| ty == 3 || ty == 4) {
            decoder.insert(
                i.to_string(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                       "single_word": false, "special": types[i] == 3}),
            );
        }
    }
    let mut v = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "added_tokens_decoder": decoder,
        "bos_token": name(ids.bos),
        "eos_token": name(ids.eos),
        "pad_token": name(ids.pad),
        "unk_token": name(unk),
        "clean_up_tokenization_spaces": false,
        "model_max_length": max_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(t) = chat_template {
        v["chat_template"] = json!(t);
    }
    v
}
