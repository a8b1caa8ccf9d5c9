//! Merging: a model's tensors in Hugging Face layout as dense f32, with PEFT LoRA adapters folded in.
//! Test: tests/export.rs (adapter-applied logits == merged safetensors == F32 GGUF, every mismatch listed).
//!
//! ```text
//! LoRA:  W' = W + s·B·A,                                s = alpha / r  (rsLoRA: alpha / √r)
//! DoRA:  W' = m / ‖W + s·B·A‖_row ⊙ (W + s·B·A)          (PEFT `LoraLayer.merge`, `DoraLinearLayer.get_weight_norm`)
//! ```
//! A (r, d_in), B (d_out, r), m (d_out). Reference: Hu et al. 2021 https://arxiv.org/abs/2106.09685,
//! Liu et al. 2024 https://arxiv.org/abs/2402.09353.
//!
//! Contracts easy to miss:
//! - Every tensor handed out is in the HF ("canonical") layout: Q/K rows in rotate-half order (a GGUF
//!   llama base is un-permuted, see `export::peft::QkPermutation`), Gemma norms as HF stores them
//!   (w, applied as 1 + w; GGUF files store 1 + w). PEFT adapters are in that layout too, so they are
//!   merged AFTER the base is made canonical: no adapter permutation is needed.
//! - Adapters are validated against the base before anything is written: every unexpected module,
//!   misshapen or missing tensor of every adapter directory is listed in one error.
//! - Several adapters merge in the order given (each DoRA normalises the result of the ones before).

use super::peft::{AdapterConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::backend::cpu::matmul::{matmul, MatmulDims};
use crate::backend::cpu::rope::RopeLayout;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::safetensors::SafetensorsFile;
use crate::model::block::Proj;
use crate::model::names::{self, Role};
use crate::model::{ModelConfig, Transformer};
use crate::tensor::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One tensor of a model, dense f32 in Hugging Face layout.
#[derive(Clone, Debug)]
pub struct ExportTensor {
    pub role: Role,
    /// Layer index (0 for whole-model tensors).
    pub layer: usize,
    /// A bias (`.bias`) rather than a weight.
    pub bias: bool,
    /// Row-major (PyTorch) shape: (d_out, d_in) for matrices, (n) for norms and biases.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl ExportTensor {
    fn suffix(&self) -> &'static str {
        if self.bias {
            "bias"
        } else {
            "weight"
        }
    }
    /// `model.layers.3.self_attn.q_proj.weight`
    pub fn hf_name(&self, arch: &str) -> String {
        names::hf_name(arch, self.role, self.layer, self.suffix())
    }
    /// `blk.3.attn_q.weight`
    pub fn gguf_name(&self) -> String {
        names::gguf_name(self.role, self.layer, self.suffix())
    }
    pub fn is_norm(&self) -> bool {
        matches!(
            self.role,
            Role::FinalNorm
                | Role::AttnNorm
                | Role::FfnNorm
                | Role::QNorm
                | Role::KNorm
                | Role::PostAttnNorm
                | Role::PostFfnNorm
        )
    }
}

/// The seven projections of a layer in `DecoderLayer` order.
pub(crate) const PROJ: [(&str, Role); 7] = [
    ("q_proj", Role::Q),
    ("k_proj", Role::K),
    ("v_proj", Role::V),
    ("o_proj", Role::O),
    ("gate_proj", Role::Gate),
    ("up_proj", Role::Up),
    ("down_proj", Role::Down),
];

/// (d_out, d_in) of projection `role` under `cfg`.
pub(crate) fn proj_shape(cfg: &ModelConfig, role: Role) -> (usize, usize) {
    let (c, h, kv, d, f) =
        (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size);
    match role {
        Role::Q => (h * d, c),
        Role::K | Role::V => (kv * d, c),
        Role::O => (c, h * d),
        Role::Gate | Role::Up => (f, c),
        Role::Down => (c, f),
        _ => unreachable!("not a projection: {role:?}"),
    }
}

/// GGUF row → HF row within one head of `d` rows (llama.cpp's `LlamaModel.permute`, inverted):
/// GGUF row 2j + i holds HF row i·d/2 + j.
fn gguf_to_hf_row(g: usize, d: usize) -> usize {
    (g % 2) * (d / 2) + g / 2
}

/// Reorders the rows of a (heads·d, cols) matrix between GGUF (interleaved RoPE) and HF
/// (rotate-half) order, per head.
pub fn permute_qk_rows(v: &[f32], cols: usize, heads: usize, d: usize, to_hf: bool) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for h in 0..heads {
        for g in 0..d {
            let hf = gguf_to_hf_row(g, d);
            let (src, dst) = if to_hf { (g, hf) } else { (hf, g) };
            let (s, t) = ((h * d + src) * cols, (h * d + dst) * cols);
            out[t..t + cols].copy_from_slice(&v[s..s + cols]);
        }
    }
    out
}

/// Does `cfg` store Gemma-style norms as 1 + w (a GGUF Gemma base)?
fn norms_shifted(cfg: &ModelConfig) -> bool {
    cfg.arch.starts_with("gemma") && !cfg.norm_add_one
}

// ---------------------------------------------------------------------------------------------
// ---- adapters

/// One module's adapter tensors, HF layout.
#[derive(Clone, Debug)]
pub struct AdapterModule {
    /// (r, d_in)
    pub a: Vec<f32>,
    /// (d_out, r)
    pub b: Vec<f32>,
    /// DoRA magnitude (d_out).
    pub magnitude: Option<Vec<f32>>,
    pub rank: usize,
    pub scale: f32,
}

/// A PEFT adapter directory, read and checked against a base.
#[derive(Clone, Debug)]
pub struct LoadedAdapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// HF module path (`model.layers.0.self_attn.q_proj`) -> tensors.
    pub modules: BTreeMap<String, AdapterModule>,
}

impl AdapterModule {
    /// ΔW = s·B·A, (d_out, d_in).
    pub fn delta(&self, d_out: usize, d_in: usize) -> Vec<f32> {
        let mut ba = vec![0.0f32; d_out * d_in];
        matmul(&mut ba, &self.b, &self.a, None, MatmulDims::new(d_out, d_in, self.rank), false);
        ba.iter_mut().for_each(|x| *x *= self.scale);
        ba
    }

    /// W ← W + s·B·A (DoRA: then each row scaled to m / ‖row‖).
    pub fn merge_into(&self, w: &mut [f32], d_out: usize, d_in: usize) {
        let delta = self.delta(d_out, d_in);
        w.iter_mut().zip(&delta).for_each(|(w, d)| *w += d);
        if let Some(m) = &self.magnitude {
            for (r, row) in w.chunks_mut(d_in).enumerate() {
                let n = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                let f = m[r] as f64 / n;
                row.iter_mut().for_each(|x| *x = (*x as f64 * f) as f32);
            }
        }
    }
}

/// Reads PEFT adapter directories and checks every tensor against the base `cfg`. All problems of
/// all directories are collected and reported in one error.
pub fn read_adapters(dirs: &[PathBuf], cfg: &ModelConfig) -> Result<Vec<LoadedAdapter>> {
    // module path -> (d_out, d_in)
    let mut expected = BTreeMap::new();
    for l in 0..cfg.num_hidden_layers {
        for (_, role) in PROJ {
            expected.insert(names::hf_module(&cfg.arch, role, l), proj_shape(cfg, role));
        }
    }
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for dir in dirs {
        let d = dir.display();
        if !dir.is_dir() {
            problems.push(format!("{d}: adapter directory does not exist"));
            continue;
        }
        let (cp, wp) = (dir.join(ADAPTER_CONFIG), dir.join(ADAPTER_WEIGHTS));
        let mut missing = false;
        for p in [&cp, &wp] {
            if !p.is_file() {
                problems.push(format!("{d}: missing {}", p.file_name().unwrap_or_default().to_string_lossy()));
                missing = true;
            }
        }
        if missing {
            continue;
        }
        let config = match AdapterConfig::read(dir) {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let f = match SafetensorsFile::open(&wp) {
            Ok(f) => f,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let lora = config.lora();
        let mut modules = BTreeMap::new();
        // Group the file's tensors by module.
        let mut by_module: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
        for n in f.names() {
            let Some(rest) = n.strip_prefix("base_model.model.") else {
                problems.push(format!("{d}: unexpected tensor {n} (not a PEFT LoRA tensor)"));
                continue;
            };
            let split = [".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"]
                .iter()
                .find_map(|s| rest.strip_suffix(s).map(|m| (m.to_string(), *s)));
            match split {
                Some((m, s)) => by_module.entry(m).or_default().push((n, s.to_string())),
                None => problems.push(format!("{d}: unexpected tensor {n} (not a PEFT LoRA tensor)")),
            }
        }
        for (module, parts) in by_module {
            let Some(&(d_out, d_in)) = expected.get(&module) else {
                problems.push(format!("{d}: module {module} does not exist in the base ({} model)", cfg.arch));
                continue;
            };
            let get = |suffix: &str| parts.iter().find(|(_, s)| s == suffix).map(|(n, _)| *n);
            let (Some(an), Some(bn)) = (get(".lora_A.weight"), get(".lora_B.weight")) else {
                problems.push(format!("{d}: {module} needs both lora_A and lora_B"));
                continue;
            };
            let (_, ashape, _) = f.raw(an)?;
            let (_, bshape, _) = f.raw(bn)?;
            let r = lora.rank;
            let mut ok = true;
            if ashape != [r, d_in] {
                problems.push(format!("{d}: {an}: shape {ashape:?}, the base needs [{r}, {d_in}]"));
                ok = false;
            }
            if bshape != [d_out, r] {
                problems.push(format!("{d}: {bn}: shape {bshape:?}, the base needs [{d_out}, {r}]"));
                ok = false;
            }
            let magnitude = match (get(".lora_magnitude_vector"), lora.use_dora) {
                (Some(mn), true) => {
                    let (_, ms, _) = f.raw(mn)?;
                    if ms != [d_out] {
                        problems.push(format!("{d}: {mn}: shape {ms:?}, the base needs [{d_out}]"));
                        ok = false;
                        None
                    } else {
                        Some(f.tensor_f32(mn)?)
                    }
                }
                (None, true) => {
                    problems.push(format!("{d}: {module}: use_dora is set but lora_magnitude_vector is missing"));
                    ok = false;
                    None
                }
                (Some(mn), false) => {
                    problems.push(format!("{d}: unexpected {mn} (use_dora is false)"));
                    ok = false;
                    None
                }
                (None, false) => None,
            };
            if ok {
                let m = AdapterModule {
                    a: f.tensor_f32(an)?,
                    b: f.tensor_f32(bn)?,
                    magnitude,
                    rank: r,
                    scale: lora.scale(),
                };
                modules.insert(module, m);
            }
        }
        if modules.is_empty() && problems.is_empty() {
            problems.push(format!("{d}: the adapter has no LoRA tensors"));
        }
        out.push(LoadedAdapter { dir: dir.clone(), config, modules });
    }
    if !problems.is_empty() {
        return Err(Error::Format {
            path: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
            msg: format!("adapter(s) do not fit the base, {} problem(s):\n  {}", problems.len(), problems.join("\n  ")),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// ---- tensors of a model

fn dense<B: Backend>(be: &B, w: &crate::ops::Weight<B>) -> Result<Vec<f32>> {
    w.to_dense(be)?.to_vec()
}

fn vec_of<B: Backend>(t: &Tensor<B>) -> Result<Vec<f32>> {
    t.to_vec()
}

/// Calls `f` with every tensor of `model` (merged with its own LoRA layers, if any, and then with
/// `adapters`), dense f32 in HF layout, in order: embedding, layers (norms, projections, biases),
/// final norm, LM head (untied only). Phi-3's projections come out fused (qkv_proj, gate_up_proj).
/// Peak memory: one dense tensor (two for fused ones) beyond what `f` keeps.
pub fn for_each_tensor<B: Backend>(
    model: &Transformer<B>,
    cfg: &ModelConfig,
    adapters: &[LoadedAdapter],
    mut f: impl FnMut(ExportTensor) -> Result<()>,
) -> Result<()> {
    let be = model.norm.backend().clone();
    let c = cfg.hidden_size;
    let permuted = cfg.rope_layout == RopeLayout::Interleaved;
    let shift = if norms_shifted(cfg) { -1.0 } else { 0.0 };
    let norm = |role: Role, layer: usize, t: &Tensor<B>| -> Result<ExportTensor> {
        let mut data = vec_of(t)?;
        data.iter_mut().for_each(|x| *x += shift);
        Ok(ExportTensor { role, layer, bias: false, shape: vec![data.len()], data })
    };
    f(ExportTensor {
        role: Role::Embed,
        layer: 0,
        bias: false,
        shape: vec![cfg.vocab_size, c],
        data: dense(&be, &model.embed)?,
    })?;
    let fused = names::fused_projections(&cfg.arch);
    for (l, layer) in model.layers.iter().enumerate() {
        f(norm(Role::AttnNorm, l, &layer.attn_norm)?)?;
        if let (Some(q), Some(k)) = (&layer.q_norm, &layer.k_norm) {
            f(norm(Role::QNorm, l, q)?)?;
            f(norm(Role::KNorm, l, k)?)?;
        }
        if let Some(p) = &layer.post_attn_norm {
            f(norm(Role::PostAttnNorm, l, p)?)?;
        }
        f(norm(Role::FfnNorm, l, &layer.ffn_norm)?)?;
        if let Some(p) = &layer.post_ffn_norm {
            f(norm(Role::PostFfnNorm, l, p)?)?;
        }
        // Fused families collect (weight, bias) per projection, then concatenate rows.
        let mut pending: Vec<(Role, Vec<f32>, Option<Vec<f32>>)> = Vec::new();
        for ((_, role), (_, p)) in PROJ.iter().zip(layer.projections()) {
            let (d_out, d_in) = proj_shape(cfg, *role);
            let (mut w, mut bias) = match p {
                Proj::Frozen { w, bias } => (dense(&be, w)?, bias.as_ref().map(vec_of).transpose()?),
                Proj::Lora(x) => (x.merged_weight(&be)?.to_vec()?, x.bias.as_ref().map(vec_of).transpose()?),
            };
            let heads = match role {
                Role::Q => Some(cfg.num_attention_heads),
                Role::K => Some(cfg.num_key_value_heads),
                _ => None,
            };
            if let (true, Some(h)) = (permuted, heads) {
                w = permute_qk_rows(&w, d_in, h, cfg.head_dim, true);
                bias = bias.map(|b| permute_qk_rows(&b, 1, h, cfg.head_dim, true));
            }
            let module = names::hf_module(&cfg.arch, *role, l);
            for a in adapters {
                if let Some(m) = a.modules.get(&module) {
                    m.merge_into(&mut w, d_out, d_in);
                }
            }
            if fused {
                pending.push((*role, w, bias));
                continue;
            }
            f(ExportTensor { role: *role, layer: l, bias: false, shape: vec![d_out, d_in], data: w })?;
            if let Some(b) = bias {
                f(ExportTensor { role: *role, layer: l, bias: true, shape: vec![d_out], data: b })?;
            }
        }
        if fused {
            // [q; k; v] -> qkv_proj, [gate; up] -> gate_up_proj; o and down as they are.
            let mut it = pending.into_iter();
            let mut take = |n: usize| (0..n).map(|_| it.next().expect("7 projections")).collect::<Vec<_>>();
            let groups: [(Option<Role>, Vec<_>); 4] =
                [(Some(Role::Qkv), take(3)), (None, take(1)), (Some(Role::GateUp), take(2)), (None, take(1))];
            for (fused_role, parts) in groups {
                let role = fused_role.unwrap_or(parts[0].0);
                let d_in = proj_shape(cfg, parts[0].0).1;
                let rows: usize = parts.iter().map(|p| p.1.len() / d_in).sum();
                let has_bias = parts.iter().all(|p| p.2.is_some());
                let mut w = Vec::with_capacity(rows * d_in);
                let mut b = Vec::new();
                for (_, pw, pb) in parts {
                    w.extend(pw);
                    if let Some(pb) = pb {
                        b.extend(pb);
                    }
                }
                f(ExportTensor { role, layer: l, bias: false, shape: vec![rows, d_in], data: w })?;
                if has_bias {
                    f(ExportTensor { role, layer: l, bias: true, shape: vec![rows], data: b })?;
                }
            }
        }
    }
    f(norm(Role::FinalNorm, 0, &model.norm)?)?;
    if let Some(h) = &model.lm_head {
        f(ExportTensor {
            role: Role::LmHead,
            layer: 0,
            bias: false,
            shape: vec![cfg.vocab_size, c],
            data: dense(&be, h)?,
        })?;
    }
    Ok(())
}

/// Whether `path` looks like a directory we may write into: absent, or empty.
pub(crate) fn check_target_dir(path: &Path) -> Result<()> {
    if path.exists() {
        let empty = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?.next().is_none();
        if !path.is_dir() || !empty {
            return Err(Error::InvalidArgument {
                op: "export",
                msg: format!("export_dir {} exists and is not an empty directory; choose a new one", path.display()),
            });
        }
    }
    Ok(())
}
