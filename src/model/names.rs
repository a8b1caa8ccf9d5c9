//! Tensor names: one table mapping each tensor role to its GGUF (llama.cpp) name and its Hugging
//! Face (transformers) name, per family. Both loaders (load.rs for GGUF, hf.rs for safetensors)
//! and the layout tests use it, so a name is spelled in exactly one place.
//! Test: tests/model_layouts.rs (writes both layouts from this table and checks equal logits).
//!
//! Contracts easy to miss:
//! - HF `post_attention_layernorm` is the pre-MLP norm in Llama/Qwen/Mistral/Phi-3 (GGUF `ffn_norm`),
//!   but the norm AFTER attention in Gemma 2/3 (GGUF `post_attention_norm`), whose pre-MLP norm is
//!   `pre_feedforward_layernorm`. Hence `post_norm_families` below.
//! - Phi-3 fuses q/k/v into `qkv_proj` (GGUF `attn_qkv`, rows [q; k; v]) and gate/up into
//!   `gate_up_proj` (GGUF `ffn_up`, rows [gate; up]); the loaders split them by rows.
//! - Layer names carry the layer index: GGUF `blk.{l}.<name>`, HF `model.layers.{l}.<name>`.
//!
//! Sources: llama.cpp `gguf-py/gguf/tensor_mapping.py` and `constants.py` (MODEL_TENSORS per arch),
//! transformers `modeling_{llama,qwen2,qwen3,gemma,gemma2,gemma3,phi3}.py`.

/// What a tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm,
    Q,
    K,
    V,
    O,
    /// Phi-3: q, k, v stacked by rows.
    Qkv,
    QNorm,
    KNorm,
    PostAttnNorm,
    FfnNorm,
    Gate,
    Up,
    /// Phi-3: gate, up stacked by rows.
    GateUp,
    Down,
    PostFfnNorm,
}

/// Whole-model tensors: (role, GGUF name, HF name without the "model." prefix where HF has one).
const GLOBAL: &[(Role, &str, &str)] = &[
    (Role::Embed, "token_embd", "model.embed_tokens"),
    (Role::FinalNorm, "output_norm", "model.norm"),
    (Role::LmHead, "output", "lm_head"),
];

/// Per-layer tensors of the Llama layout: (role, GGUF name, HF name).
const LAYER: &[(Role, &str, &str)] = &[
    (Role::AttnNorm, "attn_norm", "input_layernorm"),
    (Role::Q, "attn_q", "self_attn.q_proj"),
    (Role::K, "attn_k", "self_attn.k_proj"),
    (Role::V, "attn_v", "self_attn.v_proj"),
    (Role::O, "attn_output", "self_attn.o_proj"),
    (Role::Qkv, "attn_qkv", "self_attn.qkv_proj"),
    (Role::QNorm, "attn_q_norm", "self_attn.q_norm"),
    (Role::KNorm, "attn_k_norm", "self_attn.k_norm"),
    (Role::PostAttnNorm, "post_attention_norm", "post_attention_layernorm"),
    (Role::FfnNorm, "ffn_norm", "post_attention_layernorm"),
    (Role::Gate, "ffn_gate", "mlp.gate_proj"),
    (Role::Up, "ffn_up", "mlp.up_proj"),
    (Role::GateUp, "ffn_up", "mlp.gate_up_proj"),
    (Role::Down, "ffn_down", "mlp.down_proj"),
    (Role::PostFfnNorm, "post_ffw_norm", "post_feedforward_layernorm"),
];

/// Families with norms after attention and after the MLP: their HF pre-MLP norm is
/// `pre_feedforward_layernorm` (the one family-specific override of the table above).
fn post_norm_family(arch: &str) -> bool {
    arch == "gemma2" || arch == "gemma3"
}

/// Does `arch` store q/k/v and gate/up fused (Phi-3)?
pub fn fused_projections(arch: &str) -> bool {
    arch == "phi3"
}

fn entry(role: Role) -> (&'static str, &'static str) {
    GLOBAL.iter().chain(LAYER).find(|e| e.0 == role).map(|e| (e.1, e.2)).expect("every Role has a table entry")
}

fn is_global(role: Role) -> bool {
    GLOBAL.iter().any(|e| e.0 == role)
}

/// GGUF name of `role` in layer `layer` (ignored for whole-model roles), with `suffix`
/// ("weight" or "bias"): `blk.3.attn_q.weight`.
pub fn gguf_name(role: Role, layer: usize, suffix: &str) -> String {
    let (g, _) = entry(role);
    if is_global(role) {
        format!("{g}.{suffix}")
    } else {
        format!("blk.{layer}.{g}.{suffix}")
    }
}

/// HF name of `role` for family `arch`: `model.layers.3.self_attn.q_proj.weight`.
pub fn hf_name(arch: &str, role: Role, layer: usize, suffix: &str) -> String {
    let (_, h) = entry(role);
    let h = if role == Role::FfnNorm && post_norm_family(arch) { "pre_feedforward_layernorm" } else { h };
    if is_global(role) {
        format!("{h}.{suffix}")
    } else {
        format!("model.layers.{layer}.{h}.{suffix}")
    }
}

/// HF module path of a layer's projection (what LoRA adapters are named after), without suffix.
pub fn hf_module(arch: &str, role: Role, layer: usize) -> String {
    let mut n = hf_name(arch, role, layer, "weight");
    n.truncate(n.len() - ".weight".len());
    n
}
