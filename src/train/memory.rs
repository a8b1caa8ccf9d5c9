//! Memory plan: what a model needs to run and to LoRA-train, predicted from its config before any
//! buffer exists. Counted the way the backends count (f32 activations, weights as stored).
//!
//! Training, per micro-batch of N = batch · seq tokens (C hidden, F FFN, H·D query width, KV·D kv
//! width, L layers, V vocab):
//! - frozen weights: the bytes of the file (quantized blocks stay quantized);
//! - adapters: r · (d_in + d_out) per target, ×4 bytes, plus the same again for gradients and
//!   twice for AdamW's moments (DoRA adds d_out per target);
//! - activations saved for backward, per layer (from `model::block`'s forward): the layer input,
//!   two norm outputs and rstd, q/k/v before and after RoPE, the attention output and lse, the
//!   residual, gate/up/activation (3·F), plus per LoRA target its input dropout copy and A·x:
//!   ≈ N · (6C + 3·(H·D) + 4·(KV·D) + 3F) floats. With checkpointing only the layer inputs
//!   (N·C per layer) stay (`activations`), and one layer's activations exist at a time during
//!   backward (`backward`, with the gradients in flight: about 4 · N · max(C, F) floats);
//! - the fused loss (`loss`): one chunk of 256 tokens' logits, turned into their gradient in
//!   place, 256 · (V + 2C) floats, plus dh (N · C), and the LM head decoded to f32 (V · C floats)
//!   when it is stored quantized and the backend cannot read it packed (the CPU decodes it; wgpu
//!   reads the packed head in its kernel).
//!
//! The loss runs before the backward through the layers and frees its scratch first, so the total
//! counts the larger of `loss` and `backward`, not both: checked against the wgpu pool's measured
//! peak in tests/wgpu_train.rs (`memory_plan_bounds_the_measured_peak`).

use crate::model::ModelConfig;

/// Bytes per part of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryPlan {
    pub weights: u64,
    pub adapters: u64,
    pub gradients: u64,
    pub optimizer: u64,
    /// Activations held through the step (the layer inputs with checkpointing, all of them without).
    pub activations: u64,
    /// One layer's recomputed activations and the gradients in flight during backward (0 without
    /// checkpointing: counted in `activations`). Never held together with `loss`'s scratch.
    pub backward: u64,
    /// The fused cross-entropy's scratch (a chunk of logits, dh, a decoded head if any).
    pub loss: u64,
    /// KV cache for inference (per `run` estimate).
    pub kv_cache: u64,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.weights
            + self.adapters
            + self.gradients
            + self.optimizer
            + self.activations
            + self.backward.max(self.loss)
            + self.kv_cache
    }
}

/// LoRA shape for a plan.
#[derive(Clone, Debug)]
pub struct LoraShape {
    pub rank: usize,
    /// HF module names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub targets: Vec<String>,
    pub dora: bool,
}

fn proj_dims(cfg: &ModelConfig, name: &str) -> Option<(usize, usize)> {
    let (c, f, q, kv) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    Some(match name {
        "q_proj" => (q, c),
        "k_proj" | "v_proj" => (kv, c),
        "o_proj" => (c, q),
        "gate_proj" | "up_proj" => (f, c),
        "down_proj" => (c, f),
        _ => return None,
    })
}

/// Trainable LoRA scalars of the whole model.
pub fn lora_params(cfg: &ModelConfig, lora: &LoraShape) -> u64 {
    let per_layer: usize = lora
        .targets
        .iter()
        .filter_map(|t| proj_dims(cfg, t))
        .map(|(o, i)| lora.rank * (i + o) + if lora.dora { o } else { 0 })
        .sum();
    (per_layer * cfg.num_hidden_layers) as u64
}

/// Inference: weights plus a KV cache for `context` tokens (f32).
pub fn plan_inference(cfg: &ModelConfig, weight_bytes: u64, context: usize) -> MemoryPlan {
    let kv = 2 * cfg.num_hidden_layers * context * cfg.num_key_value_heads * cfg.head_dim * 4;
    MemoryPlan { weights: weight_bytes, kv_cache: kv as u64, ..Default::default() }
}

/// LoRA training of `batch` rows of `seq` tokens.
pub fn plan_lora_training(
    cfg: &ModelConfig,
    weight_bytes: u64,
    lora: &LoraShape,
    batch: usize,
    seq: usize,
    checkpoint: bool,
    head_decoded: bool,
) -> MemoryPlan {
    let n = (batch * seq) as u64;
    let (c, f, l, v) =
        (cfg.hidden_size as u64, cfg.intermediate_size as u64, cfg.num_hidden_layers as u64, cfg.vocab_size as u64);
    let (q, kv) = ((cfg.num_attention_heads * cfg.head_dim) as u64, (cfg.num_key_value_heads * cfg.head_dim) as u64);
    let p = lora_params(cfg, lora);
    let targets = lora.targets.len() as u64;
    let per_layer = n * (6 * c + 3 * q + 4 * kv + 3 * f + targets * (c.max(f) + lora.rank as u64));
    let in_flight = 4 * n * c.max(f);
    let (activations, backward) =
        if checkpoint { (l * n * c, per_layer + in_flight) } else { (l * per_layer, in_flight) };
    let loss = 256.min(n) * (v + 2 * c) + if head_decoded { v * c } else { 0 } + n * c;
    MemoryPlan {
        weights: weight_bytes,
        adapters: 4 * p,
        gradients: 4 * p,
        optimizer: 8 * p,
        activations: 4 * activations,
        backward: 4 * backward,
        loss: 4 * loss,
        kv_cache: 0,
    }
}

/// "1.23 GiB", "456 MiB", "12 KiB".
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// Peak resident set size of this process (Linux VmHWM), in bytes; 0 where unknown.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0u64)
        * 1024
}
