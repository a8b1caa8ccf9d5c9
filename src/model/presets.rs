//! Model shapes by name, for `--random-init NAME`: a randomly initialised model of a real model's
//! exact shape, for speed and memory runs where no checkpoint is at hand. The configs are the
//! published `config.json` values of each model (architecture fields only).
//! Test: tests/trainer.rs (`random_init_*`).

use super::block::{DecoderLayer, FrozenStore};
use super::config::ModelConfig;
use super::load::AdapterSpec;
use super::transformer::Transformer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::Weight;
use crate::quant::ggml::{GgmlMatrix, GgmlType};
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::sync::Arc;

/// (name, Hugging Face config.json) of every preset.
const PRESETS: &[(&str, &str)] = &[
    (
        "llama-3.2-1b",
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "max_position_embeddings": 131072, "tie_word_embeddings": true, "vocab_size": 128256}"#,
    ),
    (
        "llama-3.2-3b",
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 3072,
            "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
            "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "max_position_embeddings": 131072, "tie_word_embeddings": true, "vocab_size": 128256}"#,
    ),
    (
        "smollm2-135m",
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_theta": 100000,
            "max_position_embeddings": 8192, "tie_word_embeddings": true, "vocab_size": 49152}"#,
    ),
    (
        "qwen2.5-0.5b",
        r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
            "max_position_embeddings": 32768, "tie_word_embeddings": true, "vocab_size": 151936}"#,
    ),
];

/// Names accepted by `--random-init`.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// The config of preset `name` (case-insensitive).
pub fn preset_config(name: &str) -> Result<ModelConfig> {
    let Some((_, json)) = PRESETS.iter().find(|p| p.0.eq_ignore_ascii_case(name)) else {
        return Err(Error::InvalidArgument {
            op: "random-init",
            msg: format!("unknown model shape `{name}`; known: {}", preset_names().join(", ")),
        });
    };
    let v: serde_json::Value = serde_json::from_str(json).expect("preset configs are valid JSON");
    ModelConfig::from_hf_json(&v)
}

/// A model of `cfg`'s shape with random weights (normal, std 0.02; norms at identity), LoRA on
/// `spec.targets`. Projection weights are stored as `spec.quantize` says (NF4 / int8), else dense
/// f32; the embedding is stored in BF16, as the published checkpoints are.
pub fn random_model<B: Backend>(be: &B, cfg: &ModelConfig, spec: &AdapterSpec) -> Result<Transformer<B>> {
    let mut rng = Rng::new(spec.seed);
    let store = match spec.quantize {
        None => FrozenStore::Dense,
        Some(super::load::BaseQuant::Nf4 { double_quant }) => FrozenStore::Nf4 { double_quant },
        Some(q) => FrozenStore::Quant(Box::new(move |w: Vec<f32>, rows, cols| {
            q.apply(GgmlMatrix::quantize(GgmlType::F32, rows, cols, &w)?)
        })),
    };
    let targets: Vec<&str> = spec.targets.iter().map(|s| s.as_str()).collect();
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let prefix = format!("model.layers.{l}");
        layers.push(Arc::new(DecoderLayer::random(
            be,
            &cfg.block_config(l),
            &prefix,
            &targets,
            &spec.lora,
            &store,
            &mut rng,
        )?));
    }
    let c = cfg.hidden_size;
    let mut e = vec![0.0f32; cfg.vocab_size * c];
    rng.fill_normal(&mut e, 0.02);
    let embed = GgmlMatrix::quantize(GgmlType::BF16, cfg.vocab_size, c, &e)?;
    drop(e);
    let embed = Weight::Frozen(Arc::new(be.upload_quant(Arc::new(embed))?));
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        let mut h = vec![0.0f32; cfg.vocab_size * c];
        rng.fill_normal(&mut h, 0.02);
        Some(Weight::Frozen(Arc::new(be.upload_quant(Arc::new(GgmlMatrix::quantize(
            GgmlType::BF16,
            cfg.vocab_size,
            c,
            &h,
        )?))?)))
    };
    Ok(Transformer {
        block: cfg.block_config(0),
        vocab_size: cfg.vocab_size,
        embed,
        layers,
        norm: Tensor::from_slice(be, &vec![if cfg.norm_add_one { 0.0 } else { 1.0 }; c], [c])?,
        lm_head,
        embed_scale: cfg.embed_scale.then(|| (c as f32).sqrt()),
        final_softcap: cfg.final_logit_softcapping,
        neftune_alpha: None,
    })
}
