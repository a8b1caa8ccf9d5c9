//! The same small random model written in both layouts, a Hugging Face directory (config.json +
//! safetensors, with transformers' names and conventions) and a GGUF file (llama.cpp's metadata
//! keys, tensor names, Q/K row permutation for `llama`, +1-shifted Gemma norms), for every family
//! (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, phi3). Both are loaded and must give the
//! same logits on a 2x13-token batch: the proof that the two loaders agree. Since the GGUF path
//! matches transformers on real SmolLM2 (llama) and Gemma 3 files (tests/end_to_end.rs), this also
//! carries that check over to the HF path for those families.
//!
//! Sizes: hidden 64, 4 heads, 2 kv heads, head_dim 16, intermediate 96 (all multiples of Q8_0's 32),
//! vocab 97 (prime). Sliding windows (4-5) are shorter than the sequence (13) so they matter;
//! Gemma 2's soft-caps (3, 5) are below the raw score/logit magnitudes so they bend them.

mod common;

use common::*;
use loraforge::backend::CpuBackend;
use loraforge::io::gguf::GgufWriter;
use loraforge::io::safetensors::write_safetensors;
use loraforge::model::names::{self, Role};
use loraforge::model::{load_gguf, load_hf, load_model, AdapterSpec, Batch};
use loraforge::quant::ggml::{GgmlMatrix, GgmlType};
use loraforge::rng::Rng;
use safetensors::Dtype;
use serde_json::json;
use std::path::PathBuf;

const C: usize = 64;
const H: usize = 4;
const KV: usize = 2;
const D: usize = 16;
const FF: usize = 96;
const V: usize = 97;

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// f32 in both files.
    F32,
    /// Weights rounded to bf16: HF stores BF16 (kept as a BF16 frozen matrix), GGUF the same values in F32.
    Bf16,
    /// GGUF stores 2-D weights as Q8_0; HF gets the dequantized values in f32.
    Q8,
    /// f32, HF checkpoint split over two shards with model.safetensors.index.json.
    Sharded,
}

struct Family {
    arch: &'static str,
    layers: usize,
    tied: bool,
    /// HF config.json fields beyond the common sizes.
    hf: serde_json::Value,
    /// GGUF metadata beyond the common keys, without the `<arch>.` prefix.
    gguf: Vec<(&'static str, f32)>,
}

impl Family {
    fn gemma(&self) -> bool {
        self.arch.starts_with("gemma")
    }
    fn fused(&self) -> bool {
        names::fused_projections(self.arch)
    }
    fn qk_norm(&self) -> bool {
        matches!(self.arch, "qwen3" | "gemma3")
    }
    fn post_norms(&self) -> bool {
        matches!(self.arch, "gemma2" | "gemma3")
    }
    /// For `rope_type: llama3`, the `rope_freqs.weight` llama.cpp's converter writes.
    fn llama3_rope(&self) -> Option<Vec<f32>> {
        let rs = self.hf.get("rope_scaling")?;
        if rs["rope_type"] != "llama3" {
            return None;
        }
        let g = |k: &str| rs[k].as_f64().unwrap() as f32;
        let theta = self.hf["rope_theta"].as_f64().unwrap() as f32;
        Some(llama3_rope_freqs_like_llama_cpp(
            D,
            theta,
            g("factor"),
            g("low_freq_factor"),
            g("high_freq_factor"),
            g("original_max_position_embeddings"),
        ))
    }
    /// llama.cpp's converter writes Mistral as the `llama` architecture.
    fn gguf_arch(&self) -> &'static str {
        if self.arch == "mistral" {
            "llama"
        } else {
            self.arch
        }
    }
}

fn family(arch: &str) -> Family {
    let (layers, tied, hf, gguf): (usize, bool, serde_json::Value, Vec<(&str, f32)>) = match arch {
        "llama" => (
            2,
            false,
            json!({"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
            vec![("rope.freq_base", 10000.0), ("rope.scaling.factor", 2.0)],
        ),
        // Our GGUF reader takes `<arch>.attention.sliding_window` for any architecture; llama.cpp's
        // converter drops Mistral's window (it writes `llama`), so this key is ours, to keep the window.
        "mistral" => (
            2,
            false,
            json!({"rope_theta": 1e6, "sliding_window": 5}),
            vec![("rope.freq_base", 1e6), ("attention.sliding_window", 5.0)],
        ),
        "qwen2" => (
            2,
            false,
            json!({"rope_theta": 1e6, "rope_scaling": {"type": "yarn", "factor": 4.0,
                   "original_max_position_embeddings": 32}}),
            vec![("rope.freq_base", 1e6), ("rope.scaling.factor", 4.0), ("rope.scaling.original_context_length", 32.0)],
        ),
        "qwen3" => (2, true, json!({"rope_theta": 1e6}), vec![("rope.freq_base", 1e6)]),
        "gemma" => (2, true, json!({"rope_theta": 10000.0}), vec![("rope.freq_base", 10000.0)]),
        "gemma2" => (
            3,
            true,
            json!({"rope_theta": 10000.0, "sliding_window": 4, "attn_logit_softcapping": 3.0,
                   "final_logit_softcapping": 5.0, "query_pre_attn_scalar": 16}),
            vec![
                ("rope.freq_base", 10000.0),
                ("attention.sliding_window", 4.0),
                ("attn_logit_softcapping", 3.0),
                ("final_logit_softcapping", 5.0),
            ],
        ),
        // transformers-5 style: rope_parameters per layer type, layer_types listed. 6 layers so
        // the GGUF side's fixed 5:1 pattern has its global layer; the global RoPE is scaled.
        "gemma3" => (
            6,
            true,
            json!({"model_type": "gemma3_text", "sliding_window": 4, "query_pre_attn_scalar": 16,
                   "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
                                   "sliding_attention", "sliding_attention", "full_attention"],
                   "rope_parameters": {
                       "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                       "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
            vec![("rope.freq_base", 1e6), ("attention.sliding_window", 4.0), ("rope.scaling.factor", 8.0)],
        ),
        // Phi-4-mini style partial rotary (0.5 of 16 dims) and a window.
        "phi3" => (
            2,
            false,
            json!({"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "sliding_window": 5, "rms_norm_eps": 1e-5}),
            vec![("rope.freq_base", 10000.0), ("attention.sliding_window", 5.0), ("rope.dimension_count", 8.0)],
        ),
        _ => unreachable!("{arch}"),
    };
    Family { arch: Box::leak(arch.to_string().into_boxed_str()), layers, tied, hf, gguf }
}

/// One tensor in HF semantics (HF row order, Gemma norms as w).
struct T {
    role: Role,
    layer: usize,
    suffix: &'static str,
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn is_norm(r: Role) -> bool {
    matches!(
        r,
        Role::AttnNorm
            | Role::FfnNorm
            | Role::FinalNorm
            | Role::QNorm
            | Role::KNorm
            | Role::PostAttnNorm
            | Role::PostFfnNorm
    )
}

fn random_tensors(f: &Family, seed: u64) -> Vec<T> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut add = |role, layer, suffix, shape: Vec<usize>, rng: &mut Rng| {
        let n: usize = shape.iter().product();
        let data = if is_norm(role) {
            // Norm gains near 1 (HF Gemma stores the offset from 1), spread so a wrong +1 shows.
            let base = if f.gemma() { 0.0 } else { 1.0 };
            randn_f32(rng, n, 0.2).into_iter().map(|x| base + x).collect()
        } else if suffix == "bias" {
            randn_f32(rng, n, 0.2)
        } else {
            // ~1/sqrt(fan_in): activations stay O(1), attention far from uniform.
            randn_f32(rng, n, 1.5 / (shape[1] as f32).sqrt())
        };
        out.push(T { role, layer, suffix, shape, data });
    };
    add(Role::Embed, 0, "weight", vec![V, C], &mut rng);
    if !f.tied {
        add(Role::LmHead, 0, "weight", vec![V, C], &mut rng);
    }
    add(Role::FinalNorm, 0, "weight", vec![C], &mut rng);
    for l in 0..f.layers {
        add(Role::AttnNorm, l, "weight", vec![C], &mut rng);
        add(Role::FfnNorm, l, "weight", vec![C], &mut rng);
        if f.fused() {
            add(Role::Qkv, l, "weight", vec![(H + 2 * KV) * D, C], &mut rng);
            add(Role::GateUp, l, "weight", vec![2 * FF, C], &mut rng);
        } else {
            add(Role::Q, l, "weight", vec![H * D, C], &mut rng);
            add(Role::K, l, "weight", vec![KV * D, C], &mut rng);
            add(Role::V, l, "weight", vec![KV * D, C], &mut rng);
            add(Role::Gate, l, "weight", vec![FF, C], &mut rng);
            add(Role::Up, l, "weight", vec![FF, C], &mut rng);
        }
        add(Role::O, l, "weight", vec![C, H * D], &mut rng);
        add(Role::Down, l, "weight", vec![C, FF], &mut rng);
        if f.arch == "qwen2" {
            add(Role::Q, l, "bias", vec![H * D], &mut rng);
            add(Role::K, l, "bias", vec![KV * D], &mut rng);
            add(Role::V, l, "bias", vec![KV * D], &mut rng);
        }
        if f.qk_norm() {
            add(Role::QNorm, l, "weight", vec![D], &mut rng);
            add(Role::KNorm, l, "weight", vec![D], &mut rng);
        }
        if f.post_norms() {
            add(Role::PostAttnNorm, l, "weight", vec![C], &mut rng);
            add(Role::PostFfnNorm, l, "weight", vec![C], &mut rng);
        }
    }
    out
}

/// llama.cpp `LlamaModel.permute`: w.reshape(n_head, 2, rows/n_head/2, *rest).swapaxes(1, 2),
/// here on whole rows of `row_len` bytes/values: new row h*hd + 2i + j = old row h*hd + j*hd/2 + i.
fn permute_rows<X: Copy>(w: &[X], n_head: usize, row_len: usize) -> Vec<X> {
    let rows = w.len() / row_len;
    let hd = rows / n_head;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let old = h * hd + j * hd / 2 + i;
                out.extend_from_slice(&w[old * row_len..(old + 1) * row_len]);
            }
        }
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loraforge-layouts-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the HF directory and the GGUF file for `f`; returns (dir, gguf path).
fn write_both(f: &Family, mode: Mode, seed: u64) -> (PathBuf, PathBuf) {
    let mut ts = random_tensors(f, seed);
    let mut q8: Vec<Option<GgmlMatrix>> = Vec::new();
    for t in &mut ts {
        match mode {
            Mode::Bf16 => t.data.iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32()),
            Mode::Q8 if t.shape.len() == 2 => {
                let m = GgmlMatrix::quantize(GgmlType::Q8_0, t.shape[0], t.shape[1], &t.data).unwrap();
                t.data = m.to_f32(); // HF gets exactly the values the Q8_0 blocks hold
                q8.push(Some(m));
                continue;
            }
            _ => {}
        }
        q8.push(None);
    }
    // Unique per (family, mode, rope, seed): tests writing the same family run in parallel.
    let rope = if f.llama3_rope().is_some() { "-llama3" } else { "" };
    let dir = temp_dir(&format!("{}-{mode:?}{rope}-{seed}", f.arch));

    // ---- Hugging Face directory
    let mut cfg = json!({
        "model_type": f.arch, "vocab_size": V, "hidden_size": C, "intermediate_size": FF,
        "num_hidden_layers": f.layers, "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": D,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 128, "tie_word_embeddings": f.tied,
    });
    if f.gemma() {
        cfg["hidden_activation"] = json!("gelu_pytorch_tanh");
    } else {
        cfg["hidden_act"] = json!("silu");
    }
    for (k, v) in f.hf.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let hf: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = ts
        .iter()
        .map(|t| {
            let name = names::hf_name(f.arch, t.role, t.layer, t.suffix);
            let (dt, bytes) = if mode == Mode::Bf16 {
                (Dtype::BF16, t.data.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect())
            } else {
                (Dtype::F32, f32_bytes(&t.data))
            };
            (name, dt, t.shape.clone(), bytes)
        })
        .collect();
    if mode == Mode::Sharded {
        let (a, b) = hf.split_at(hf.len() / 2);
        write_safetensors(dir.join("model-00001-of-00002.safetensors"), a, None).unwrap();
        write_safetensors(dir.join("model-00002-of-00002.safetensors"), b, None).unwrap();
        let mut map = serde_json::Map::new();
        for (n, _, _, _) in a {
            map.insert(n.clone(), json!("model-00001-of-00002.safetensors"));
        }
        for (n, _, _, _) in b {
            map.insert(n.clone(), json!("model-00002-of-00002.safetensors"));
        }
        let index = json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    } else {
        write_safetensors(dir.join("model.safetensors"), &hf, None).unwrap();
    }

    // ---- GGUF file, as llama.cpp's convert_hf_to_gguf.py writes it
    let a = f.gguf_arch();
    let mut w = GgufWriter::new();
    w.add("general.architecture", a).unwrap();
    let k = |s: &str| format!("{a}.{s}");
    w.add(k("context_length"), 128u32).unwrap();
    w.add(k("embedding_length"), C as u32).unwrap();
    w.add(k("block_count"), f.layers as u32).unwrap();
    w.add(k("feed_forward_length"), FF as u32).unwrap();
    w.add(k("attention.head_count"), H as u32).unwrap();
    w.add(k("attention.head_count_kv"), KV as u32).unwrap();
    w.add(k("attention.key_length"), D as u32).unwrap();
    w.add(k("attention.value_length"), D as u32).unwrap();
    let eps = f.hf.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6) as f32;
    w.add(k("attention.layer_norm_rms_epsilon"), eps).unwrap();
    for (key, v) in &f.gguf {
        let v = *v;
        match *key {
            "attention.sliding_window" | "rope.scaling.original_context_length" | "rope.dimension_count" => {
                w.add(k(key), v as u32).unwrap()
            }
            _ => w.add(k(key), v).unwrap(),
        }
    }
    if !f.gguf.iter().any(|(key, _)| *key == "rope.dimension_count") {
        w.add(k("rope.dimension_count"), D as u32).unwrap();
    }
    if let Some(factors) = f.llama3_rope() {
        // Llama 3.1+: no scaling metadata, a tensor of per-frequency divisors instead.
        w.add_tensor("rope_freqs.weight", &[factors.len()], GgmlType::F32, f32_bytes(&factors)).unwrap();
    } else if let Some(rs) = f.hf.get("rope_scaling").or_else(|| f.hf.pointer("/rope_parameters/full_attention")) {
        let ty = rs.get("rope_type").or_else(|| rs.get("type")).unwrap().as_str().unwrap();
        w.add(k("rope.scaling.type"), ty).unwrap();
    }
    // The vocabulary size comes from the token list (no `<arch>.vocab_size` key), as in most files.
    let tokens: Vec<String> = (0..V).map(|i| format!("<t{i}>")).collect();
    w.add("tokenizer.ggml.tokens", tokens.iter().map(|s| s.as_str()).collect::<Vec<_>>()).unwrap();
    let permute = a == "llama";
    for (t, q) in ts.iter().zip(q8) {
        let name = names::gguf_name(t.role, t.layer, t.suffix);
        let n_head = match t.role {
            Role::Q if permute && t.suffix == "weight" => Some(H),
            Role::K if permute && t.suffix == "weight" => Some(KV),
            _ => None,
        };
        match q {
            Some(m) => {
                let bytes = m.data().to_vec();
                let rb = bytes.len() / t.shape[0];
                let bytes = match n_head {
                    Some(nh) => permute_rows(&bytes, nh, rb),
                    None => bytes,
                };
                w.add_tensor(name, &t.shape, GgmlType::Q8_0, bytes).unwrap();
            }
            None => {
                let mut data = t.data.clone();
                if f.gemma() && is_norm(t.role) {
                    data.iter_mut().for_each(|x| *x += 1.0); // llama.cpp stores Gemma norms as 1 + w
                }
                if let Some(nh) = n_head {
                    data = permute_rows(&data, nh, t.shape[1]);
                }
                w.add_tensor(name, &t.shape, GgmlType::F32, f32_bytes(&data)).unwrap();
            }
        }
    }
    let gguf = dir.join("model.gguf");
    w.write(&gguf).unwrap();
    (dir, gguf)
}

fn batch(seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let rows: Vec<Vec<u32>> = (0..2).map(|_| (0..13).map(|_| rng.below(V) as u32).collect()).collect();
    Batch::causal_lm(&rows).unwrap()
}

/// Loads both layouts, checks the configs agree on what matters and the logits within `tol`.
/// Returns the max abs difference.
fn check(arch: &str, mode: Mode, tol: f32) -> f32 {
    check_family(&family(arch), mode, tol)
}

fn check_family(f: &Family, mode: Mode, tol: f32) -> f32 {
    let arch = f.arch;
    let (dir, gguf) = write_both(f, mode, 7 + arch.len() as u64);
    let be = CpuBackend::new();
    let spec = AdapterSpec::default();
    let (hf_model, hf_cfg) = load_hf(&be, &dir, &spec).unwrap();
    let (gg_model, gg_cfg) = load_gguf(&be, &gguf, &spec).unwrap();
    // load_model dispatches on the path
    assert_eq!(load_model(&be, &dir, &spec).unwrap().1, hf_cfg);
    assert_eq!(load_model(&be, &gguf, &spec).unwrap().1, gg_cfg);
    for l in 0..f.layers {
        assert_eq!(hf_cfg.is_sliding(l), gg_cfg.is_sliding(l), "{arch}: layer {l} sliding");
        let (a, b) = (hf_cfg.block_config(l), gg_cfg.block_config(l));
        assert_eq!((a.sliding_window, a.attn_softcap, a.attn_scale), (b.sliding_window, b.attn_softcap, b.attn_scale));
        assert_eq!(
            (a.rope.theta, a.rope.scaling, a.rope.rotary_dim),
            (b.rope.theta, b.rope.scaling, b.rope.rotary_dim)
        );
    }
    let b = batch(11);
    let (zh, zg) = (hf_model.logits(&b).unwrap(), gg_model.logits(&b).unwrap());
    assert_eq!(zh.len(), 2 * 13 * V);
    let max_err = zh.iter().zip(&zg).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let max_abs = zh.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    println!("{arch} {mode:?}: max |logit| {max_abs:.3}, max |HF - GGUF| {max_err:.2e}");
    assert!(max_abs > 0.5, "{arch}: logits too small ({max_abs}) for the comparison to mean anything");
    assert!(max_err <= tol, "{arch} {mode:?}: HF and GGUF logits differ by {max_err:e} (allowed {tol:e})");
    let _ = std::fs::remove_dir_all(&dir);
    max_err
}

/// f32 weights in both layouts: the two forwards run the same f32 ops on the same values, except that
/// llama's permuted Q/K rows change the summation order of q·k, and (1 + w) is formed once in the
/// file vs at run time (the same f32 addition). Differences are f32 rounding, ~1e-6 on O(1-10)
/// logits; 1e-4 would still catch any wrong layout, norm shift or missed feature by orders of magnitude.
const TOL_F32: f32 = 1e-4;

#[test]
fn llama_hf_and_gguf_logits_match() {
    check("llama", Mode::F32, TOL_F32);
}
#[test]
fn mistral_hf_and_gguf_logits_match() {
    check("mistral", Mode::F32, TOL_F32);
}
#[test]
fn qwen2_hf_and_gguf_logits_match() {
    check("qwen2", Mode::F32, TOL_F32);
}
#[test]
fn qwen3_hf_and_gguf_logits_match() {
    check("qwen3", Mode::F32, TOL_F32);
}
#[test]
fn gemma_hf_and_gguf_logits_match() {
    check("gemma", Mode::F32, TOL_F32);
}
#[test]
fn gemma2_hf_and_gguf_logits_match() {
    check("gemma2", Mode::F32, TOL_F32);
}
#[test]
fn gemma3_hf_and_gguf_logits_match() {
    check("gemma3", Mode::F32, TOL_F32);
}
#[test]
fn phi3_hf_and_gguf_logits_match() {
    check("phi3", Mode::F32, TOL_F32);
}

/// Llama 3.1/3.2 GGUFs carry their `llama3` RoPE scaling as `rope_freqs.weight` (one divisor per
/// frequency) and no metadata; the HF side has `rope_scaling: {rope_type: llama3}`. With head dim
/// 16, theta 5e5 and an original context of 256, the 8 frequencies cover all three regions of the
/// formula (2 unchanged, 1 on the ramp, 5 divided by the factor), so the loader must recover the
/// exact parameters (checked in `check_family`: the two configs' scalings are equal) and the logits
/// must agree to the f32 bound.
#[test]
fn llama31_rope_freqs_gguf_matches_hf_llama3_scaling() {
    let mut f = family("llama");
    f.hf = json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}});
    f.gguf = vec![("rope.freq_base", 500000.0)];
    let factors = f.llama3_rope().unwrap();
    let (ones, full) = (factors.iter().filter(|&&x| x == 1.0).count(), factors.iter().filter(|&&x| x == 8.0).count());
    assert_eq!((ones, full, factors.len()), (2, 5, 8), "{factors:?}");
    check_family(&f, Mode::F32, TOL_F32);
    // The scaling matters at these positions: the same GGUF without the tensor gives other logits.
    let (dir, gguf) = write_both(&f, Mode::F32, 3);
    let be = CpuBackend::new();
    let spec = AdapterSpec::default();
    let scaled = load_gguf(&be, &gguf, &spec).unwrap().0.logits(&batch(5)).unwrap();
    let plain = load_hf(
        &be,
        &{
            let mut c: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
            c["rope_scaling"] = json!(null);
            std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
            dir.clone()
        },
        &spec,
    )
    .unwrap()
    .0
    .logits(&batch(5))
    .unwrap();
    let d = scaled.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d > 1e-3, "llama3 scaling changed the logits by only {d:e}");
    // Factors that follow no Llama 3 formula are refused with a clear error, not guessed.
    let mut bad = f.llama3_rope().unwrap();
    bad[0] = 3.0;
    let mut w = GgufWriter::new();
    let src = loraforge::io::gguf::GgufFile::open(&gguf).unwrap();
    for (k, v) in src.metadata() {
        w.add(k.clone(), v.clone()).unwrap();
    }
    for t in src.tensors() {
        let bytes = if t.name == "rope_freqs.weight" { f32_bytes(&bad) } else { src.tensor_bytes(t).unwrap().to_vec() };
        w.add_tensor(t.name.clone(), &t.shape, t.ty, bytes).unwrap();
    }
    let bad_path = dir.join("bad.gguf");
    w.write(&bad_path).unwrap();
    let e = load_gguf(&be, &bad_path, &spec).err().expect("bad rope_freqs loaded").to_string();
    assert!(e.contains("rope_freqs.weight") && e.contains("Llama 3"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// bf16 checkpoints stay BF16 frozen matrices; the GGUF side holds the same (bf16-exact) values in
/// f32, so bf16 -> f32 decoding is exact and the bound is the f32 one.
#[test]
fn bf16_checkpoints_match_f32_gguf() {
    for arch in ["llama", "gemma3", "phi3"] {
        check(arch, Mode::Bf16, TOL_F32);
    }
}

/// Q8_0 GGUF blocks (row-permuted for llama, row-sliced for Phi-3's fused weights) against HF f32
/// holding the dequantized values: both decode to the same f32 numbers, so again the f32 bound.
#[test]
fn q8_0_gguf_matches_dequantized_hf() {
    for arch in ["llama", "phi3", "gemma2", "qwen2"] {
        check(arch, Mode::Q8, TOL_F32);
    }
}

/// A checkpoint split over two shards with an index loads like the single file.
#[test]
fn sharded_checkpoint_matches_gguf() {
    check("qwen3", Mode::Sharded, TOL_F32);
}

/// The features the families differ in must change the logits, or the tests above prove little:
/// shrinking Gemma 2's window, dropping its soft-caps or Gemma's +1 shift must move the HF logits.
#[test]
fn family_features_change_logits() {
    let f = family("gemma2");
    let (dir, _) = write_both(&f, Mode::F32, 5);
    let be = CpuBackend::new();
    let spec = AdapterSpec::default();
    let b = batch(3);
    let base = load_hf(&be, &dir, &spec).unwrap().0.logits(&b).unwrap();
    let cfg_path = dir.join("config.json");
    let orig: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    for (field, value) in [
        ("sliding_window", json!(64)),
        ("attn_logit_softcapping", json!(null)),
        ("final_logit_softcapping", json!(null)),
        ("model_type", json!("llama")),
    ] {
        let mut c = orig.clone();
        c[field] = value.clone();
        if field == "model_type" {
            c["hidden_act"] = json!("silu"); // llama: SwiGLU, w norms, no embed scale; tensors differ too
        }
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        match load_hf(&be, &dir, &spec) {
            Ok((m, _)) => {
                let z = m.logits(&b).unwrap();
                let d = z.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                println!("gemma2 with {field} = {value}: max change {d:.3}");
                assert!(d > 1e-2, "{field} = {value} changed the logits by only {d:e}");
            }
            // (as llama, gemma2's extra tensors are simply unused)
            Err(e) => panic!("{field}: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
