//! Loading a model file into a `Transformer`. GGUF: weights stay in their blocks, memory-mapped
//! (zero-copy `GgmlMatrix` frozen weights, any block type); norms are decoded to f32.
//! Tensor names map to the Hugging Face names (`model.layers.N.self_attn.q_proj`), which LoRA
//! adapters are named after. Every missing or misshapen tensor is collected and reported at once.

use super::block::{DecoderLayer, Proj};
use super::config::ModelConfig;
use super::transformer::Transformer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::gguf::GgufFile;
use crate::lora::{LoraConfig, LoraLinear};
use crate::ops::Weight;
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::path::Path;
use std::sync::Arc;

/// Which projections get LoRA adapters, by HF module name ("q_proj", ..., "down_proj").
#[derive(Clone, Debug, Default)]
pub struct AdapterSpec {
    pub targets: Vec<String>,
    pub lora: LoraConfig,
    pub seed: u64,
}

/// GGUF name of each projection, and its HF module path.
const PROJ: [(&str, &str, &str); 7] = [
    ("attn_q", "self_attn", "q_proj"),
    ("attn_k", "self_attn", "k_proj"),
    ("attn_v", "self_attn", "v_proj"),
    ("attn_output", "self_attn", "o_proj"),
    ("ffn_gate", "mlp", "gate_proj"),
    ("ffn_up", "mlp", "up_proj"),
    ("ffn_down", "mlp", "down_proj"),
];

struct Loader<'a, B: Backend> {
    f: &'a GgufFile,
    be: &'a B,
    problems: Vec<String>,
}

impl<B: Backend> Loader<'_, B> {
    fn has(&self, name: &str) -> bool {
        self.f.tensor(name).is_ok()
    }
    fn vector(&mut self, name: &str, len: usize) -> Option<Tensor<B>> {
        let v = match self.f.dequantize_tensor(name) {
            Ok(v) => v,
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                return None;
            }
        };
        if v.len() != len {
            self.problems.push(format!("{name}: {} elements, expected {len}", v.len()));
            return None;
        }
        Tensor::from_slice(self.be, &v, [len]).map_err(|e| self.problems.push(format!("{name}: {e}"))).ok()
    }
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Option<Weight<B>> {
        let m = match self.f.matrix(name) {
            Ok(m) => m,
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                return None;
            }
        };
        use crate::quant::DequantRows;
        if (m.rows(), m.cols()) != (rows, cols) {
            self.problems.push(format!("{name}: shape ({}, {}), expected ({rows}, {cols})", m.rows(), m.cols()));
            return None;
        }
        match self.be.upload_quant(Arc::new(m)) {
            Ok(q) => Some(Weight::Frozen(Arc::new(q))),
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                None
            }
        }
    }
}

/// Loads a GGUF model with LoRA adapters on `spec.targets` of every layer.
pub fn load_gguf<B: Backend>(
    be: &B,
    path: impl AsRef<Path>,
    spec: &AdapterSpec,
) -> Result<(Transformer<B>, ModelConfig)> {
    let f = GgufFile::open(path.as_ref())?;
    let cfg = ModelConfig::from_gguf(&f)?;
    for t in &spec.targets {
        if !PROJ.iter().any(|p| p.2 == t) {
            return Err(Error::InvalidArgument {
                op: "lora_target",
                msg: format!("unknown module `{t}`; expected some of {}", PROJ.map(|p| p.2).join(", ")),
            });
        }
    }
    let mut rng = Rng::new(spec.seed);
    let mut ld = Loader { f: &f, be, problems: Vec::new() };
    let (c, h, kv, d, ff) =
        (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size);
    let embed = ld.matrix("token_embd.weight", cfg.vocab_size, c);
    let lm_head = if cfg.tie_word_embeddings { None } else { ld.matrix("output.weight", cfg.vocab_size, c) };
    let norm = ld.vector("output_norm.weight", c);
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        let shapes = [(h * d, c), (kv * d, c), (kv * d, c), (c, h * d), (ff, c), (ff, c), (c, ff)];
        let mut projs = Vec::with_capacity(7);
        for ((gg, module, name), (rows, cols)) in PROJ.iter().zip(shapes) {
            let w = ld.matrix(&b(gg), rows, cols);
            let bias_name = format!("blk.{l}.{gg}.bias");
            let bias = if ld.has(&bias_name) { ld.vector(&bias_name, rows) } else { None };
            let hf = format!("model.layers.{l}.{module}.{name}");
            projs.push(w.map(|w| (hf, name, w, bias)));
        }
        let attn_norm = ld.vector(&b("attn_norm"), c);
        let ffn_norm = ld.vector(&b("ffn_norm"), c);
        let (q_norm, k_norm) =
            if cfg.qk_norm { (ld.vector(&b("attn_q_norm"), d), ld.vector(&b("attn_k_norm"), d)) } else { (None, None) };
        let (post_attn, post_ffn) = if cfg.post_norms {
            (ld.vector(&b("post_attention_norm"), c), ld.vector(&b("post_ffw_norm"), c))
        } else {
            (None, None)
        };
        if !ld.problems.is_empty() {
            continue; // keep collecting problems; build nothing
        }
        let mut ps = Vec::with_capacity(7);
        for p in projs {
            let (hf, name, w, bias) = p.expect("no problems recorded");
            ps.push(if spec.targets.iter().any(|t| t == name) {
                Proj::Lora(LoraLinear::new(be, &hf, w, bias, &spec.lora, &mut rng)?)
            } else {
                Proj::Frozen { w, bias }
            });
        }
        let mut it = ps.into_iter();
        let mut next = || it.next().expect("7 projections");
        layers.push(Arc::new(DecoderLayer {
            cfg: cfg.block_config(l),
            attn_norm: attn_norm.expect("checked"),
            q_proj: next(),
            k_proj: next(),
            v_proj: next(),
            o_proj: next(),
            q_norm,
            k_norm,
            post_attn_norm: post_attn,
            ffn_norm: ffn_norm.expect("checked"),
            gate_proj: next(),
            up_proj: next(),
            down_proj: next(),
            post_ffn_norm: post_ffn,
        }));
    }
    if !ld.problems.is_empty() {
        return Err(Error::Format {
            path: f.path().into(),
            msg: format!("{} tensor problem(s):\n  {}", ld.problems.len(), ld.problems.join("\n  ")),
        });
    }
    let model = Transformer {
        block: cfg.block_config(0),
        vocab_size: cfg.vocab_size,
        embed: embed.expect("checked"),
        layers,
        norm: norm.expect("checked"),
        lm_head,
        embed_scale: cfg.embed_scale.then(|| (cfg.hidden_size as f32).sqrt()),
        final_softcap: cfg.final_logit_softcapping,
    };
    Ok((model, cfg))
}
