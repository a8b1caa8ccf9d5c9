//! Building a `Transformer` from a model's tensors, whatever file they come from. A
//! `WeightSource` hands out 2-D weights as zero-copy `GgmlMatrix` views (GGUF blocks of any type,
//! or safetensors F32/F16/BF16 over the memory map) and 1-D norms/biases decoded to f32; `build`
//! checks every shape against the config and wires the layers. `load_gguf` is the GGUF source;
//! hf.rs the Hugging Face one; `load_model` picks by path.
//! Test: tests/model_layouts.rs (GGUF vs HF logits per family), tests/model_errors.rs, tests/end_to_end.rs.
//!
//! Contracts easy to miss:
//! - Every missing or misshapen tensor is collected and reported in one error (nothing is built).
//! - Fused Phi-3 weights (qkv, gate_up) are split by row ranges of the stored bytes: ggml blocks never
//!   span rows, so a row range of a quantized matrix is itself a valid matrix, still zero-copy.
//! - Adapters are named after the HF module path (`model.layers.N.self_attn.q_proj`), also for Phi-3's
//!   split projections (which have no such module in transformers: its PEFT targets are `qkv_proj`).

use super::block::{DecoderLayer, Proj};
use super::config::ModelConfig;
use super::names::{self, Role};
use super::transformer::Transformer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::gguf::GgufFile;
use crate::lora::{LoraConfig, LoraLinear};
use crate::ops::Weight;
use crate::quant::ggml::GgmlMatrix;
use crate::quant::DequantRows;
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
    /// QLoRA from a dense base: quantize the dense (F32/F16/BF16) projection weights as they are
    /// loaded, one matrix at a time, so no dense copy of the model is ever held. Weights already
    /// stored quantized (GGUF blocks) are trained as they are. Embeddings and the LM head stay as
    /// stored (bitsandbytes also leaves them alone).
    pub quantize: Option<BaseQuant>,
}

/// The format a dense base's projections are quantized to at load (`quantization_bit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseQuant {
    /// `quantization_bit: 4`: NF4 in bitsandbytes' layout (blocks of 64), optional double quantization.
    Nf4 { double_quant: bool },
    /// `quantization_bit: 8`: int8 with a row-wise absmax (LLM.int8's weight format).
    Int8,
}

impl BaseQuant {
    /// Quantizes a dense matrix; other formats are returned unchanged.
    pub fn apply(&self, m: GgmlMatrix) -> Result<crate::backend::HostQuant> {
        use crate::quant::ggml::GgmlType;
        if !matches!(m.ty(), GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return Ok(Arc::new(m));
        }
        let (rows, cols) = (m.rows(), m.cols());
        let mut dense = vec![0.0f32; rows * cols];
        for (r, row) in dense.chunks_mut(cols).enumerate() {
            m.dequantize_row(r, row);
        }
        Ok(match self {
            BaseQuant::Nf4 { double_quant } => {
                Arc::new(crate::quant::nf4::Nf4Matrix::quantize(&dense, rows, cols, 64, *double_quant)?)
            }
            BaseQuant::Int8 => Arc::new(crate::quant::int8::Int8Matrix::quantize(&dense, rows, cols)?),
        })
    }
}

/// The seven projections of a layer, in `DecoderLayer` order: (module name, role).
const PROJ: [(&str, Role); 7] = [
    ("q_proj", Role::Q),
    ("k_proj", Role::K),
    ("v_proj", Role::V),
    ("o_proj", Role::O),
    ("gate_proj", Role::Gate),
    ("up_proj", Role::Up),
    ("down_proj", Role::Down),
];

/// Where a model's tensors come from.
pub(crate) trait WeightSource {
    /// For error messages.
    fn path(&self) -> &str;
    /// The stored name of `role` in layer `layer` ("weight" or "bias" suffix).
    fn name(&self, role: Role, layer: usize, suffix: &str) -> String;
    fn has(&self, name: &str) -> bool;
    /// A 2-D weight, zero-copy, (rows, cols) as stored.
    fn matrix(&self, name: &str) -> Result<GgmlMatrix>;
    /// A tensor decoded to f32.
    fn vector(&self, name: &str) -> Result<Vec<f32>>;
}

struct GgufSource<'a>(&'a GgufFile);

impl WeightSource for GgufSource<'_> {
    fn path(&self) -> &str {
        self.0.path()
    }
    fn name(&self, role: Role, layer: usize, suffix: &str) -> String {
        names::gguf_name(role, layer, suffix)
    }
    fn has(&self, name: &str) -> bool {
        self.0.tensor(name).is_ok()
    }
    fn matrix(&self, name: &str) -> Result<GgmlMatrix> {
        self.0.matrix(name)
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.0.dequantize_tensor(name)
    }
}

/// Splits a (sum(parts), cols) matrix into row blocks, sharing its bytes.
fn split_rows(m: &GgmlMatrix, parts: &[usize]) -> Result<Vec<GgmlMatrix>> {
    let rb = m.ty().row_bytes(m.cols())?;
    let mut r0 = 0;
    let mut out = Vec::with_capacity(parts.len());
    for &n in parts {
        out.push(GgmlMatrix::new(m.ty(), n, m.cols(), m.data().slice(r0 * rb..(r0 + n) * rb)?)?);
        r0 += n;
    }
    Ok(out)
}

struct Loader<'a, B: Backend> {
    src: &'a dyn WeightSource,
    be: &'a B,
    problems: Vec<String>,
    /// Applied to the projections' weights (not to embeddings / LM head).
    quantize: Option<BaseQuant>,
}

impl<B: Backend> Loader<'_, B> {
    fn missing(&mut self, name: &str) -> bool {
        if self.src.has(name) {
            return false;
        }
        self.problems.push(format!("{name}: missing"));
        true
    }
    fn vector(&mut self, name: &str, len: usize) -> Option<Vec<f32>> {
        if self.missing(name) {
            return None;
        }
        match self.src.vector(name) {
            Ok(v) if v.len() == len => Some(v),
            Ok(v) => {
                self.problems.push(format!("{name}: {} elements, expected {len}", v.len()));
                None
            }
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                None
            }
        }
    }
    fn tensor(&mut self, v: Option<Vec<f32>>, name: &str) -> Option<Tensor<B>> {
        let v = v?;
        Tensor::from_slice(self.be, &v, [v.len()]).map_err(|e| self.problems.push(format!("{name}: {e}"))).ok()
    }
    fn norm(&mut self, name: &str, len: usize) -> Option<Tensor<B>> {
        let v = self.vector(name, len);
        self.tensor(v, name)
    }
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Option<GgmlMatrix> {
        if self.missing(name) {
            return None;
        }
        match self.src.matrix(name) {
            Ok(m) if (m.rows(), m.cols()) == (rows, cols) => Some(m),
            Ok(m) => {
                self.problems.push(format!("{name}: shape ({}, {}), expected ({rows}, {cols})", m.rows(), m.cols()));
                None
            }
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                None
            }
        }
    }
    fn upload(&mut self, m: GgmlMatrix, name: &str) -> Option<Weight<B>> {
        match self.be.upload_quant(Arc::new(m)) {
            Ok(q) => Some(Weight::Frozen(Arc::new(q))),
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                None
            }
        }
    }
    /// A projection's weight: quantized first when the spec asks for it.
    fn upload_proj(&mut self, m: GgmlMatrix, name: &str) -> Option<Weight<B>> {
        let Some(q) = self.quantize else { return self.upload(m, name) };
        use crate::quant::ggml::GgmlType;
        let dense = matches!(m.ty(), GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let r = match q {
            // NF4 through the backend (on the device for wgpu), from the f32 values.
            BaseQuant::Nf4 { double_quant } if dense => {
                let (rows, cols) = (m.rows(), m.cols());
                let mut w = vec![0.0f32; rows * cols];
                for (r, row) in w.chunks_mut(cols.max(1)).enumerate() {
                    m.dequantize_row(r, row);
                }
                drop(m);
                self.be.quantize_nf4(&w, rows, cols, double_quant)
            }
            _ => q.apply(m).and_then(|h| self.be.upload_quant(h)),
        };
        match r {
            Ok(q) => Some(Weight::Frozen(Arc::new(q))),
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                None
            }
        }
    }
    fn weight(&mut self, name: &str, rows: usize, cols: usize) -> Option<Weight<B>> {
        let m = self.matrix(name, rows, cols)?;
        self.upload(m, name)
    }
    /// One projection's weight (rows, cols) and its bias: q/k/v biases are required where the
    /// config says so (Qwen2); any other stored bias is used too.
    fn single(&mut self, cfg: &ModelConfig, role: Role, l: usize, rows: usize, cols: usize) -> Option<FrozenProj<B>> {
        let wn = self.src.name(role, l, "weight");
        let wt = self.matrix(&wn, rows, cols).and_then(|m| self.upload_proj(m, &wn));
        let bias_name = self.src.name(role, l, "bias");
        let need_bias = cfg.attention_bias && matches!(role, Role::Q | Role::K | Role::V);
        let bias =
            if need_bias || self.src.has(&bias_name) { self.norm(&bias_name, rows).map(Some) } else { Some(None) };
        wt.zip(bias)
    }
    /// A fused weight split into row blocks of `parts`, with its bias (if stored) split alike.
    fn fused(&mut self, role: Role, l: usize, parts: &[usize], cols: usize) -> Vec<Option<FrozenProj<B>>> {
        let (wn, bn) = (self.src.name(role, l, "weight"), self.src.name(role, l, "bias"));
        let total = parts.iter().sum();
        let m = self.matrix(&wn, total, cols);
        let bias = if self.src.has(&bn) { self.vector(&bn, total).map(Some) } else { Some(None) };
        let (Some(m), Some(bias)) = (m, bias) else { return parts.iter().map(|_| None).collect() };
        let ms = match split_rows(&m, parts) {
            Ok(ms) => ms,
            Err(e) => {
                self.problems.push(format!("{wn}: {e}"));
                return parts.iter().map(|_| None).collect();
            }
        };
        let mut r0 = 0;
        let mut out = Vec::new();
        for (m, &n) in ms.into_iter().zip(parts) {
            let b = bias.as_ref().map(|b| b[r0..r0 + n].to_vec());
            r0 += n;
            let b = match b {
                Some(b) => match self.tensor(Some(b), &bn) {
                    Some(t) => Some(t),
                    None => {
                        out.push(None);
                        continue;
                    }
                },
                None => None,
            };
            out.push(self.upload_proj(m, &wn).map(|w| (w, b)));
        }
        out
    }
}

type FrozenProj<B> = (Weight<B>, Option<Tensor<B>>);

/// Checks that every LoRA target names a projection.
fn check_targets(spec: &AdapterSpec) -> Result<()> {
    for t in &spec.targets {
        if !PROJ.iter().any(|p| p.0 == t) {
            return Err(Error::InvalidArgument {
                op: "lora_target",
                msg: format!("unknown module `{t}`; expected some of {}", PROJ.map(|p| p.0).join(", ")),
            });
        }
    }
    Ok(())
}

/// Builds the model from `src`, LoRA adapters on `spec.targets` of every layer.
pub(crate) fn build<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    src: &dyn WeightSource,
    spec: &AdapterSpec,
) -> Result<Transformer<B>> {
    check_targets(spec)?;
    let mut rng = Rng::new(spec.seed);
    let mut ld = Loader { src, be, problems: Vec::new(), quantize: spec.quantize };
    let (c, h, kv, d, ff) =
        (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size);
    let embed = ld.weight(&src.name(Role::Embed, 0, "weight"), cfg.vocab_size, c);
    let lm_head =
        if cfg.tie_word_embeddings { None } else { ld.weight(&src.name(Role::LmHead, 0, "weight"), cfg.vocab_size, c) };
    let norm = ld.norm(&src.name(Role::FinalNorm, 0, "weight"), c);
    let fused = names::fused_projections(&cfg.arch);
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let w = |r: Role| src.name(r, l, "weight");
        let shapes = [(h * d, c), (kv * d, c), (kv * d, c), (c, h * d), (ff, c), (ff, c), (c, ff)];
        let projs: Vec<Option<FrozenProj<B>>> = if fused {
            let mut v = ld.fused(Role::Qkv, l, &[h * d, kv * d, kv * d], c);
            v.push(ld.single(cfg, Role::O, l, c, h * d));
            v.extend(ld.fused(Role::GateUp, l, &[ff, ff], c));
            v.push(ld.single(cfg, Role::Down, l, c, ff));
            v
        } else {
            PROJ.iter().zip(shapes).map(|((_, role), (rows, cols))| ld.single(cfg, *role, l, rows, cols)).collect()
        };
        let attn_norm = ld.norm(&w(Role::AttnNorm), c);
        let ffn_norm = ld.norm(&w(Role::FfnNorm), c);
        let (q_norm, k_norm) =
            if cfg.qk_norm { (ld.norm(&w(Role::QNorm), d), ld.norm(&w(Role::KNorm), d)) } else { (None, None) };
        let (post_attn, post_ffn) = if cfg.post_norms {
            (ld.norm(&w(Role::PostAttnNorm), c), ld.norm(&w(Role::PostFfnNorm), c))
        } else {
            (None, None)
        };
        if !ld.problems.is_empty() {
            continue; // keep collecting problems; build nothing
        }
        let mut ps = Vec::with_capacity(7);
        for (p, (name, role)) in projs.into_iter().zip(PROJ) {
            let (w, bias) = p.expect("no problems recorded");
            ps.push(if spec.targets.iter().any(|t| t == name) {
                let module = names::hf_module(&cfg.arch, role, l);
                Proj::Lora(LoraLinear::new(be, &module, w, bias, &spec.lora, &mut rng)?)
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
            path: src.path().into(),
            msg: format!("{} tensor problem(s):\n  {}", ld.problems.len(), ld.problems.join("\n  ")),
        });
    }
    Ok(Transformer {
        block: cfg.block_config(0),
        vocab_size: cfg.vocab_size,
        embed: embed.expect("checked"),
        layers,
        norm: norm.expect("checked"),
        lm_head,
        embed_scale: cfg.embed_scale.then(|| (cfg.hidden_size as f32).sqrt()),
        final_softcap: cfg.final_logit_softcapping,
        neftune_alpha: None,
    })
}

/// Loads a GGUF model with LoRA adapters on `spec.targets` of every layer.
pub fn load_gguf<B: Backend>(
    be: &B,
    path: impl AsRef<Path>,
    spec: &AdapterSpec,
) -> Result<(Transformer<B>, ModelConfig)> {
    let f = GgufFile::open(path.as_ref())?;
    let cfg = ModelConfig::from_gguf(&f)?;
    let model = build(be, &cfg, &GgufSource(&f), spec)?;
    Ok((model, cfg))
}

/// Loads `path`: a `.gguf` file, or a Hugging Face directory (config.json + safetensors).
pub fn load_model<B: Backend>(
    be: &B,
    path: impl AsRef<Path>,
    spec: &AdapterSpec,
) -> Result<(Transformer<B>, ModelConfig)> {
    let path = path.as_ref();
    let is_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if path.is_file() && is_gguf {
        return load_gguf(be, path, spec);
    }
    if path.is_dir() && path.join("config.json").is_file() {
        return super::hf::load_hf(be, path, spec);
    }
    Err(Error::Format {
        path: path.display().to_string(),
        msg: "expected a .gguf file or a Hugging Face model directory (config.json + *.safetensors)".into(),
    })
}
