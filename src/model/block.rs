//! One decoder layer of the Llama family, built from tape ops:
//!
//!   h = x + post_attn_norm?( o( attn( rope(q_norm?(q(n))), rope(k_norm?(k(n))), v(n) ) ) ),  n = attn_norm(x)
//!   y = h + post_ffn_norm?( down( glu(gate(m), up(m)) ) ),                                  m = ffn_norm(h)
//!
//! Llama/Mistral/Qwen2: no q/k norms, no post norms, SwiGLU. Qwen3: q/k norms. Gemma 2/3: (1 + w)
//! norms, post norms, GeGLU, soft-capping / sliding window / q/k norms per variant.
//! Every projection is a `Proj`: a frozen weight, a trainable dense weight, or a LoRA layer.

use crate::backend::cpu::attention::AttnParams;
use crate::backend::cpu::rope::RopeConfig;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::LoraLinear;
use crate::ops::{self, Weight};
use crate::tape::Tape;
use crate::tensor::{Param, Tensor};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct BlockConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f32,
    /// Gemma's RMSNorm multiplies by (1 + w).
    pub norm_add_one: bool,
    /// GeGLU (gelu_tanh) instead of SwiGLU.
    pub gelu: bool,
    pub rope: RopeConfig,
    /// Attention scale, usually 1/√head_dim.
    pub attn_scale: f32,
    pub sliding_window: Option<usize>,
    pub attn_softcap: Option<f32>,
    pub qk_norm: bool,
    pub post_norms: bool,
}

/// A projection: frozen (any format), or LoRA-adapted. (The size gap between variants is one
/// allocation per projection per layer; boxing would cost more indirection than it saves.)
#[allow(clippy::large_enum_variant)]
pub enum Proj<B: Backend> {
    Frozen { w: Weight<B>, bias: Option<Tensor<B>> },
    Lora(LoraLinear<B>),
}

impl<B: Backend> Proj<B> {
    pub fn forward(&self, tape: &mut Tape<B>, x: &Tensor<B>, seed: Option<u64>) -> Result<Tensor<B>> {
        match self {
            Proj::Frozen { w, bias } => ops::linear(tape, x, w, bias.as_ref()),
            Proj::Lora(l) => l.forward(tape, x, seed),
        }
    }
    /// The stored format of the base weight ("f32", "nf4", "q4_1", ...).
    pub fn base_format(&self, be: &B) -> String {
        match self {
            Proj::Frozen { w, .. } => w.format(be),
            Proj::Lora(l) => l.base.format(be),
        }
    }
    pub fn params(&self) -> Vec<&Param<B>> {
        match self {
            Proj::Frozen { .. } => vec![],
            Proj::Lora(l) => l.params(),
        }
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        match self {
            Proj::Frozen { .. } => vec![],
            Proj::Lora(l) => l.params_mut(),
        }
    }
}

pub struct DecoderLayer<B: Backend> {
    pub cfg: BlockConfig,
    pub attn_norm: Tensor<B>,
    pub q_proj: Proj<B>,
    pub k_proj: Proj<B>,
    pub v_proj: Proj<B>,
    pub o_proj: Proj<B>,
    pub q_norm: Option<Tensor<B>>,
    pub k_norm: Option<Tensor<B>>,
    pub post_attn_norm: Option<Tensor<B>>,
    pub ffn_norm: Tensor<B>,
    pub gate_proj: Proj<B>,
    pub up_proj: Proj<B>,
    pub down_proj: Proj<B>,
    pub post_ffn_norm: Option<Tensor<B>>,
}

/// Per-call inputs shared by every layer of a forward pass.
#[derive(Clone)]
pub struct LayerInputs {
    /// (B*T) positions, restarting per packed sequence.
    pub positions: Arc<[u32]>,
    /// (B*T) segment ids for packed rows, or None.
    pub segment_ids: Option<Arc<[u32]>>,
    /// Seed for the adapters' dropout in this layer and step; None disables dropout (evaluation).
    pub seed: Option<u64>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn projections(&self) -> [(&'static str, &Proj<B>); 7] {
        [
            ("q_proj", &self.q_proj),
            ("k_proj", &self.k_proj),
            ("v_proj", &self.v_proj),
            ("o_proj", &self.o_proj),
            ("gate_proj", &self.gate_proj),
            ("up_proj", &self.up_proj),
            ("down_proj", &self.down_proj),
        ]
    }
    pub fn params(&self) -> Vec<&Param<B>> {
        self.projections().iter().flat_map(|(_, p)| p.params()).collect()
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = Vec::new();
        for p in [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ] {
            v.extend(p.params_mut());
        }
        v
    }

    /// x: (B, T, C) → (B, T, C).
    pub fn forward(&self, tape: &mut Tape<B>, x: &Tensor<B>, inp: &LayerInputs) -> Result<Tensor<B>> {
        let c = &self.cfg;
        let d = x.dims();
        if d.len() != 3 || d[2] != c.hidden_size {
            return Err(Error::BadShape {
                op: "decoder_layer",
                shape: x.shape().clone(),
                msg: format!("expected (B, T, {})", c.hidden_size),
            });
        }
        let (b, t) = (d[0], d[1]);
        let (h, kv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let seed = |i: u64| inp.seed.map(|s| s.wrapping_mul(31).wrapping_add(i));

        let n = ops::rms_norm(tape, x, &self.attn_norm, c.rms_norm_eps, c.norm_add_one)?;
        let mut q = self.q_proj.forward(tape, &n, seed(0))?.reshape([b, t, h, hd])?;
        let mut k = self.k_proj.forward(tape, &n, seed(1))?.reshape([b, t, kv, hd])?;
        let v = self.v_proj.forward(tape, &n, seed(2))?.reshape([b, t, kv, hd])?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = ops::rms_norm(tape, &q, qn, c.rms_norm_eps, c.norm_add_one)?;
            k = ops::rms_norm(tape, &k, kn, c.rms_norm_eps, c.norm_add_one)?;
        }
        let q = ops::rope(tape, &q, &inp.positions, &c.rope)?;
        let k = ops::rope(tape, &k, &inp.positions, &c.rope)?;
        let p = AttnParams {
            b,
            t,
            h,
            kv_heads: kv,
            d: hd,
            scale: c.attn_scale,
            causal: true,
            window: c.sliding_window,
            softcap: c.attn_softcap,
        };
        let a = ops::attention(tape, &q, &k, &v, inp.segment_ids.as_ref(), &p)?.reshape([b, t, h * hd])?;
        let mut o = self.o_proj.forward(tape, &a, seed(3))?;
        if let Some(pn) = &self.post_attn_norm {
            o = ops::rms_norm(tape, &o, pn, c.rms_norm_eps, c.norm_add_one)?;
        }
        let hres = ops::add(tape, x, &o)?;

        let m = ops::rms_norm(tape, &hres, &self.ffn_norm, c.rms_norm_eps, c.norm_add_one)?;
        let g = self.gate_proj.forward(tape, &m, seed(4))?;
        let u = self.up_proj.forward(tape, &m, seed(5))?;
        let act = ops::glu(tape, &g, &u, c.gelu)?;
        let mut f = self.down_proj.forward(tape, &act, seed(6))?;
        if let Some(pn) = &self.post_ffn_norm {
            f = ops::rms_norm(tape, &f, pn, c.rms_norm_eps, c.norm_add_one)?;
        }
        ops::add(tape, &hres, &f)
    }
}

/// Runs `layer` under activation checkpointing: only x is kept; the layer runs again in backward.
pub fn forward_checkpointed<B: Backend>(
    tape: &mut Tape<B>,
    layer: &Arc<DecoderLayer<B>>,
    x: &Tensor<B>,
    inp: &LayerInputs,
) -> Result<Tensor<B>> {
    let (layer, inp) = (layer.clone(), inp.clone());
    tape.checkpoint(x, Arc::new(move |t: &mut Tape<B>, x: &Tensor<B>| layer.forward(t, x, &inp)))
}

/// How to store the frozen weights of a randomly initialised layer.
pub enum FrozenStore {
    /// Dense f32, untracked (fast matmul path).
    Dense,
    /// Through any `DequantRows` format built from the f32 values (QLoRA: NF4, GGUF blocks, ...).
    Quant(Box<dyn Fn(Vec<f32>, usize, usize) -> Result<crate::backend::HostQuant>>),
    /// NF4 quantized by the backend (`Backend::quantize_nf4`: on the device for wgpu).
    Nf4 { double_quant: bool },
}

impl<B: Backend> DecoderLayer<B> {
    /// A layer with random weights (normal, std 0.02, norms 1), LoRA on the projections named in
    /// `targets` ("q_proj", ..., "down_proj"). For tests, benchmarks and `--random-init`.
    pub fn random(
        be: &B,
        cfg: &BlockConfig,
        prefix: &str,
        targets: &[&str],
        lora: &crate::lora::LoraConfig,
        store: &FrozenStore,
        rng: &mut crate::rng::Rng,
    ) -> Result<Self> {
        let (c, h, kv, hd, f) =
            (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size);
        let proj = |name: &str, d_out: usize, d_in: usize, rng: &mut crate::rng::Rng| -> Result<Proj<B>> {
            let mut w = vec![0.0f32; d_out * d_in];
            rng.fill_normal(&mut w, 0.02);
            let w = match store {
                FrozenStore::Dense => Weight::Dense(Tensor::from_slice(be, &w, [d_out, d_in])?),
                FrozenStore::Quant(q) => Weight::Frozen(Arc::new(be.upload_quant(q(w, d_out, d_in)?)?)),
                FrozenStore::Nf4 { double_quant } => {
                    Weight::Frozen(Arc::new(be.quantize_nf4(&w, d_out, d_in, *double_quant)?))
                }
            };
            // The Hugging Face module path, which adapters are named after.
            let module = if matches!(name, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
            let full = format!("{prefix}.{module}.{name}");
            Ok(if targets.contains(&name) {
                Proj::Lora(LoraLinear::new(be, &full, w, None, lora, rng)?)
            } else {
                Proj::Frozen { w, bias: None }
            })
        };
        let ones = |n: usize| Tensor::from_slice(be, &vec![if cfg.norm_add_one { 0.0 } else { 1.0 }; n], [n]);
        Ok(DecoderLayer {
            cfg: cfg.clone(),
            attn_norm: ones(c)?,
            q_proj: proj("q_proj", h * hd, c, rng)?,
            k_proj: proj("k_proj", kv * hd, c, rng)?,
            v_proj: proj("v_proj", kv * hd, c, rng)?,
            o_proj: proj("o_proj", c, h * hd, rng)?,
            q_norm: if cfg.qk_norm { Some(ones(hd)?) } else { None },
            k_norm: if cfg.qk_norm { Some(ones(hd)?) } else { None },
            post_attn_norm: if cfg.post_norms { Some(ones(c)?) } else { None },
            ffn_norm: ones(c)?,
            gate_proj: proj("gate_proj", f, c, rng)?,
            up_proj: proj("up_proj", f, c, rng)?,
            down_proj: proj("down_proj", c, f, rng)?,
            post_ffn_norm: if cfg.post_norms { Some(ones(c)?) } else { None },
        })
    }
}
