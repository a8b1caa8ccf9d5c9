//! Exports (src/export/): merged safetensors, merged GGUF (float and quantized), GGUF LoRA adapters,
//! Modelfiles, tokenizer.json from GGUF, and every bad input.
//!
//! The base is a small llama-family GGUF built here: SmolLM2-135M-Instruct's tokenizer metadata and
//! chat template (so tokenizer checks are real) with 2 random layers, hidden 256 (so K-quants apply
//! to most matrices) and Q8_0 matrices (so the quantized-base path is exercised). A rank-4 LoRA with
//! random A and B on all seven projections is trained "in GGUF order" and saved as a PEFT adapter.
//! Skips with a message when the SmolLM2 GGUF is missing (run models/fetch.sh).

mod common;

use common::*;
use loraforge::backend::cpu::rope::RopeScaling;
use loraforge::backend::CpuBackend;
use loraforge::export::peft::{save_adapter, AdapterConfig, QkPermutation};
use loraforge::export::{export, ExportKind, ExportOptions};
use loraforge::io::gguf::{GgufFile, GgufValue, GgufWriter};
use loraforge::lora::LoraConfig;
use loraforge::model::{load_gguf, load_hf, AdapterSpec, Batch, Transformer};
use loraforge::quant::ggml::{quantize, GgmlType};
use loraforge::rng::Rng;
use loraforge::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
// Tiny model: hidden 256, 4 heads of 64, 2 kv heads, ffn 512, 2 layers, SmolLM2's 49152 tokens.
const C: usize = 256;
const H: usize = 4;
const KV: usize = 2;
const D: usize = 64;
const F: usize = 512;
const L: usize = 2;

fn smollm2_path() -> Option<PathBuf> {
    let cache = std::env::var_os("LORAFORGE_MODEL_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache").join("loraforge").join("models")
    });
    let p = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIP: {} is missing (run models/fetch.sh)", p.display());
        None
    }
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lf-export-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Writes the tiny base GGUF to `path`; `tokenizer_model` replaces tokenizer.ggml.model.
fn tiny_base(path: &Path, tokenizer_model: &str) {
    tiny_base_with(path, tokenizer_model, None)
}

/// `tiny_base`, plus a Llama 3.1+ `rope_freqs.weight` tensor when given.
fn tiny_base_with(path: &Path, tokenizer_model: &str, rope_freqs: Option<&[f32]>) {
    let src = GgufFile::open(smollm2_path().unwrap()).unwrap();
    let mut w = GgufWriter::new();
    let u = |x: usize| GgufValue::U32(x as u32);
    for (k, v) in [
        ("general.architecture", GgufValue::from("llama")),
        ("general.name", "tiny-smollm2".into()),
        ("llama.block_count", u(L)),
        ("llama.context_length", u(2048)),
        ("llama.embedding_length", u(C)),
        ("llama.feed_forward_length", u(F)),
        ("llama.attention.head_count", u(H)),
        ("llama.attention.head_count_kv", u(KV)),
        ("llama.rope.freq_base", GgufValue::F32(100000.0)),
        ("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5)),
    ] {
        w.add(k, v).unwrap();
    }
    for (k, v) in src.metadata() {
        if k.starts_with("tokenizer.") {
            let v = if k == "tokenizer.ggml.model" { tokenizer_model.into() } else { v.clone() };
            w.add(k.clone(), v).unwrap();
        }
    }
    let mut rng = Rng::new(7);
    let mut mat = |w: &mut GgufWriter, name: String, rows: usize, cols: usize| {
        let v = randn_f32(&mut rng, rows * cols, 0.05);
        w.add_tensor(name, &[rows, cols], GgmlType::Q8_0, quantize(GgmlType::Q8_0, &v).unwrap()).unwrap();
    };
    mat(&mut w, "token_embd.weight".into(), 49152, C);
    for l in 0..L {
        for (n, r, c) in [
            ("attn_q", H * D, C),
            ("attn_k", KV * D, C),
            ("attn_v", KV * D, C),
            ("attn_output", C, H * D),
            ("ffn_gate", F, C),
            ("ffn_up", F, C),
            ("ffn_down", C, F),
        ] {
            mat(&mut w, format!("blk.{l}.{n}.weight"), r, c);
        }
    }
    let mut rng = Rng::new(8);
    let mut norm = |w: &mut GgufWriter, name: String| {
        let v: Vec<f32> = randn_f32(&mut rng, C, 0.1).iter().map(|x| 1.0 + x).collect();
        w.add_tensor(name, &[C], GgmlType::F32, quantize(GgmlType::F32, &v).unwrap()).unwrap();
    };
    for l in 0..L {
        norm(&mut w, format!("blk.{l}.attn_norm.weight"));
        norm(&mut w, format!("blk.{l}.ffn_norm.weight"));
    }
    norm(&mut w, "output_norm.weight".into());
    if let Some(f) = rope_freqs {
        w.add_tensor("rope_freqs.weight", &[f.len()], GgmlType::F32, quantize(GgmlType::F32, f).unwrap()).unwrap();
    }
    w.write(path).unwrap();
}

/// The fixture set shared by the tests: base GGUF, a PEFT adapter dir, and the adapter-applied model.
struct Fixture {
    base: PathBuf,
    adapter: PathBuf,
    model: Transformer<CpuBackend>,
}

fn fixture(tag: &str, lora: LoraConfig) -> Option<Fixture> {
    smollm2_path()?;
    let dir = tmp(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("tiny.gguf");
    tiny_base(&base, "gpt2");
    let spec = AdapterSpec {
        targets: ALL.iter().map(|s| s.to_string()).collect(),
        lora: lora.clone(),
        seed: 1,
        quantize: None,
    };
    let (mut model, _) = load_gguf(&CpuBackend::new(), &base, &spec).unwrap();
    let mut rng = Rng::new(11);
    for l in model.loras_mut().unwrap() {
        for p in l.params_mut() {
            let n = p.elem_count();
            let is_mag = p.name.ends_with("magnitude_vector");
            let v: Vec<f32> = if is_mag {
                // DoRA magnitude near the base row norms, perturbed
                let cur = p.t.to_vec().unwrap();
                cur.iter().zip(randn_f32(&mut rng, n, 0.05)).map(|(c, r)| c * (1.0 + r)).collect()
            } else {
                randn_f32(&mut rng, n, 0.05)
            };
            p.storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
        }
    }
    let adapter = dir.join("adapter");
    let targets: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    let qk = QkPermutation { n_heads: H, n_kv_heads: KV, head_dim: D };
    save_adapter(&model, &adapter, &AdapterConfig::new(&lora, &targets, "tiny"), Some(qk), HashMap::new()).unwrap();
    Some(Fixture { base, adapter, model })
}

fn opts(kind: ExportKind, dir: PathBuf) -> ExportOptions {
    ExportOptions { kind, export_dir: dir, ..Default::default() }
}

/// Token rows the logits are compared on: a chat-ish prompt through the real tokenizer.
fn batch() -> Batch {
    let g = GgufFile::open(smollm2_path().unwrap()).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let ids = tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n", false).unwrap();
    Batch::single(&ids)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Mean over rows of KL(softmax(p) || softmax(q)), in nats, accumulated in f64.
fn mean_kl(p: &[f32], q: &[f32], v: usize) -> f64 {
    let log_softmax = |r: &[f32]| {
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        r.iter().map(move |&x| x as f64 - lse).collect::<Vec<f64>>()
    };
    let rows = p.len() / v;
    let total: f64 = (0..rows)
        .map(|r| {
            let (lp, lq) = (log_softmax(&p[r * v..(r + 1) * v]), log_softmax(&q[r * v..(r + 1) * v]));
            lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>()
        })
        .sum();
    total / rows as f64
}

fn top1_agreement(a: &[f32], b: &[f32], v: usize) -> f64 {
    let arg = |r: &[f32]| r.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
    let rows = a.len() / v;
    (0..rows).filter(|&r| arg(&a[r * v..(r + 1) * v]) == arg(&b[r * v..(r + 1) * v])).count() as f64 / rows as f64
}

#[test]
fn merged_exports_match_adapter_logits() {
    for dora in [false, true] {
        let lora = LoraConfig { rank: 4, alpha: 8.0, use_dora: dora, ..Default::default() };
        let Some(fx) = fixture(&format!("merge{dora}"), lora) else { return };
        let b = batch();
        let want = fx.model.logits(&b).unwrap();
        let out = tmp(&format!("merge{dora}-out"));
        let be = CpuBackend::new();

        // Merged safetensors, f32, loaded by our HF loader.
        let st = out.join("hf");
        let r = export(
            &fx.base,
            std::slice::from_ref(&fx.adapter),
            &ExportOptions { dtype: "float32".into(), ..opts(ExportKind::Safetensors, st.clone()) },
        )
        .unwrap();
        for f in
            ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
        {
            assert!(st.join(f).is_file(), "{f} missing; wrote {:?}", r.files);
        }
        let (m, cfg) = load_hf(&be, &st, &AdapterSpec::default()).unwrap();
        assert_eq!((cfg.arch.as_str(), cfg.num_hidden_layers, cfg.head_dim), ("llama", L, D));
        let got = m.logits(&b).unwrap();
        let e = max_abs(&got, &want);
        eprintln!("dora={dora}: merged safetensors f32 vs adapter logits: max abs {e:.2e}");
        // f32 merge vs the unmerged f32 forward: rounding of W + sBA only (measured ~1e-6).
        assert!(e < 1e-4, "safetensors f32: {e}");

        // Merged GGUF, F32, loaded by our GGUF loader (Q/K re-permuted for llama).
        let gg = out.join("gguf32");
        export(
            &fx.base,
            std::slice::from_ref(&fx.adapter),
            &ExportOptions { dtype: "float32".into(), ..opts(ExportKind::Gguf, gg.clone()) },
        )
        .unwrap();
        let (m, _) = load_gguf(&be, gg.join("model-f32.gguf"), &AdapterSpec::default()).unwrap();
        let got = m.logits(&b).unwrap();
        let e = max_abs(&got, &want);
        eprintln!("dora={dora}: merged GGUF f32 vs adapter logits: max abs {e:.2e}");
        assert!(e < 1e-4, "gguf f32: {e}");

        if !dora {
            // bf16 safetensors (default dtype): 8-bit mantissa weights.
            let st16 = out.join("hf16");
            export(&fx.base, std::slice::from_ref(&fx.adapter), &opts(ExportKind::Safetensors, st16.clone())).unwrap();
            let (m, _) = load_hf(&be, &st16, &AdapterSpec::default()).unwrap();
            let got = m.logits(&b).unwrap();
            let e = max_abs(&got, &want);
            let agree = top1_agreement(&got, &want, 49152);
            eprintln!("bf16 safetensors: max abs {e:.2e}, top-1 agreement {agree}");
            assert!(e < 5e-2 && agree >= 0.9, "bf16: {e} {agree}");
            // Quantized GGUF exports: bound and top-1 agreement with the adapter-applied logits.
            let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            // (quant, max relative logit error, min top-1 agreement). This base has random weights,
            // whose logits are flat (top-1 flips on small errors) and whose errors are not damped by
            // trained structure; measured: q8_0 1.8e-2 / 1.0, q4_k_m 2.1e-1 / 0.67 over 15 positions.
            for (q, bound, min_agree) in [("q8_0", 0.03f32, 0.9), ("q4_k_m", 0.3, 0.5)] {
                let d = out.join(q);
                let r = export(
                    &fx.base,
                    std::slice::from_ref(&fx.adapter),
                    &ExportOptions { quant: Some(q.into()), ..opts(ExportKind::Gguf, d.clone()) },
                )
                .unwrap();
                let (m, _) = load_gguf(&be, d.join(format!("model-{q}.gguf")), &AdapterSpec::default()).unwrap();
                let got = m.logits(&b).unwrap();
                let e = max_abs(&got, &want);
                let agree = top1_agreement(&got, &want, 49152);
                eprintln!("{q}: max abs {e:.2e} (max |logit| {scale:.2}, relative {:.2e}), top-1 agreement {agree:.3}, notes {:?}", e / scale, r.notes);
                // Bound relative to the largest logit: requantizing the merged weights costs about
                // what the base's own quantization does (measured: see the report in eprintln).
                assert!(e / scale < bound && agree >= min_agree, "{q}: max abs {e}, top-1 {agree}");
            }
        }
        std::fs::remove_dir_all(&out).ok();
        std::fs::remove_dir_all(fx.base.parent().unwrap()).ok();
    }
}

#[test]
fn tokenizer_json_from_gguf_reproduces_our_ids() {
    let Some(p) = smollm2_path() else { return };
    let g = GgufFile::open(&p).unwrap();
    let ours = Tokenizer::from_gguf(&g).unwrap();
    let (tj, notes) = loraforge::export::tokenizer_json::tokenizer_json_from_gguf(&g).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let dir = tmp("tokjson");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tj).unwrap()).unwrap();
    // The tokenizers crate directly (no tokenizer_config.json, so nothing is patched on top).
    let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let r: serde_json::Value = serde_json::from_reader(
        std::fs::File::open(fixtures_dir().join("smollm2-135m-instruct/reference.json")).unwrap(),
    )
    .unwrap();
    let mut n = 0;
    for p in r["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let add = p["add_special_tokens"].as_bool().unwrap();
        let want: Vec<u32> = p["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(hf.encode(text, add).unwrap().get_ids(), &want[..], "tokenizers crate, prompt {}", p["name"]);
        assert_eq!(ours.encode(text, add).unwrap(), want, "our GGUF tokenizer, prompt {}", p["name"]);
        n += 1;
    }
    assert!(n > 0);
    for s in ["<|im_start|>user\nHéllo 😀 1234<|im_end|>\n", "  spaces\t\ttabs\n\nnewlines", "I'm DON'T ½ 日本語"]
    {
        assert_eq!(hf.encode(s, true).unwrap().get_ids(), &ours.encode(s, true).unwrap()[..], "{s:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gemma3_tokenizer_json_from_gguf_reproduces_fixture_ids() {
    let Some(sp) = smollm2_path() else { return };
    let p = sp.with_file_name("gemma-3-270m-q4_k_m.gguf");
    if !p.exists() {
        eprintln!("SKIP: {} is missing", p.display());
        return;
    }
    let g = GgufFile::open(&p).unwrap();
    let ours = Tokenizer::from_gguf(&g).unwrap();
    let (tj, _) = loraforge::export::tokenizer_json::tokenizer_json_from_gguf(&g).unwrap();
    let hf = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&tj).unwrap()).unwrap();
    let r: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(fixtures_dir().join("gemma3-270m/reference.json")).unwrap())
            .unwrap();
    for p in r["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let add = p["add_special_tokens"].as_bool().unwrap();
        let want: Vec<u32> = p["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(hf.encode(text, add).unwrap().get_ids(), &want[..], "tokenizers crate, prompt {}", p["name"]);
        assert_eq!(ours.encode(text, add).unwrap(), want, "ours, prompt {}", p["name"]);
    }
}

/// Runs python3 with gguf-py on `file`, printing "name|type|shape" per tensor and "key=value" for
/// scalar metadata. None (with a SKIP message) when python3 or gguf is unavailable.
fn gguf_py(file: &Path) -> Option<String> {
    let script = format!(
        r#"
import sys
try:
    import gguf
except Exception as e:
    print("NOGGUF", e); sys.exit(0)
r = gguf.GGUFReader({:?})
for t in r.tensors:
    print("T", t.name, t.tensor_type.name, ",".join(str(int(x)) for x in t.shape))
for k, f in r.fields.items():
    if k.startswith("GGUF."): continue
    try:
        v = f.contents()
    except Exception:
        continue
    if isinstance(v, list):
        print("K", k, "len", len(v))
    else:
        print("K", k, v)
"#,
        file.display().to_string()
    );
    let out = std::process::Command::new("python3").arg("-c").arg(&script).output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            if s.starts_with("NOGGUF") {
                eprintln!("SKIP: python gguf package missing: {s}");
                return None;
            }
            Some(s)
        }
        Ok(o) => panic!("gguf-py failed on {}: {}", file.display(), String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("SKIP: python3 not runnable: {e}");
            None
        }
    }
}

#[test]
fn gguf_model_and_adapter_read_back_by_gguf_py_and_modelfile() {
    let lora = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let Some(fx) = fixture("py", lora) else { return };
    let out = tmp("py-out");
    let d = out.join("q4km");
    let r = export(
        &fx.base,
        std::slice::from_ref(&fx.adapter),
        &ExportOptions { quant: Some("q4_k_m".into()), ..opts(ExportKind::Gguf, d.clone()) },
    )
    .unwrap();
    assert_eq!(r.files, vec![d.join("model-q4_k_m.gguf"), d.join("Modelfile")]);
    let g = GgufFile::open(d.join("model-q4_k_m.gguf")).unwrap();
    let ty = |n: &str| g.tensor(n).unwrap().ty;
    assert_eq!(ty("token_embd.weight"), GgmlType::Q6_K, "tied embedding is the output: Q6_K (256 columns)");
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q4_K);
    // llama.cpp use_more_bits(i, n = 2): i < n/8 = 0 || i >= 7n/8 = 1 || (i - n/8) % 3 == 2 -> layer 1 only.
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.1.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.1.attn_v.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    assert_eq!(g.get_u32("general.file_type").unwrap(), 15);
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert!(g.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));
    if let Some(py) = gguf_py(&d.join("model-q4_k_m.gguf")) {
        assert!(py.contains("T token_embd.weight Q6_K 256,49152"), "{py}");
        assert!(py.contains("T blk.1.attn_k.weight Q4_K 256,128"), "{py}");
        assert!(py.contains("T output_norm.weight F32 256"), "{py}");
        assert!(py.contains("K general.architecture llama"), "{py}");
        assert!(py.contains("K llama.attention.head_count_kv 2"), "{py}");
        assert!(py.contains("K llama.rope.dimension_count 64"), "{py}");
        assert!(py.contains("K tokenizer.ggml.tokens len 49152"), "{py}");
        assert!(py.contains("K tokenizer.ggml.merges len 48900"), "{py}");
        assert_eq!(py.lines().filter(|l| l.starts_with("T ")).count(), 1 + L * 9 + 1, "{py}");
    }
    let mf = std::fs::read_to_string(d.join("Modelfile")).unwrap();
    assert!(mf.contains("FROM ./model-q4_k_m.gguf\n"), "{mf}");
    assert!(mf.contains("TEMPLATE \"\"\"{{- if .System }}<|im_start|>system"), "{mf}");
    assert!(
        mf.contains("SYSTEM \"\"\"You are a helpful AI assistant named SmolLM, trained by Hugging Face\"\"\""),
        "{mf}"
    );
    assert!(mf.contains("PARAMETER stop \"<|im_end|>\""), "{mf}");

    // GGUF LoRA adapter: names, shapes (A (r, d_in) -> ne [d_in, r]), alpha, Q/K permutation of B.
    let a = out.join("adapter");
    let r = export(
        &fx.base,
        std::slice::from_ref(&fx.adapter),
        &ExportOptions { dtype: "float32".into(), ..opts(ExportKind::GgufAdapter, a.clone()) },
    )
    .unwrap();
    assert_eq!(r.files, vec![a.join("adapter.gguf")]);
    let g = GgufFile::open(a.join("adapter.gguf")).unwrap();
    assert_eq!(g.get_str("general.type").unwrap(), "adapter");
    assert_eq!(g.get_str("adapter.type").unwrap(), "lora");
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_f32("adapter.lora.alpha").unwrap(), 8.0);
    assert_eq!(g.tensors().len(), L * 7 * 2);
    let t = g.tensor("blk.1.ffn_down.weight.lora_a").unwrap();
    assert_eq!((t.shape.clone(), t.ne.clone()), (vec![4, F], vec![F as u64, 4]));
    let t = g.tensor("blk.1.ffn_down.weight.lora_b").unwrap();
    assert_eq!(t.shape, vec![C, 4]);
    // B of q_proj in the GGUF file is in the model's (GGUF) row order: equal to the in-memory B.
    let q = &fx.model.loras()[0];
    assert!(q.name.ends_with("layers.0.self_attn.q_proj"));
    assert_eq!(g.dequantize_tensor("blk.0.attn_q.weight.lora_b").unwrap(), q.b.t.to_vec().unwrap());
    assert_eq!(g.dequantize_tensor("blk.0.attn_q.weight.lora_a").unwrap(), q.a.t.to_vec().unwrap());
    if let Some(py) = gguf_py(&a.join("adapter.gguf")) {
        assert!(py.contains("T blk.0.attn_k.weight.lora_a F32 256,4"), "{py}");
        assert!(py.contains("T blk.0.attn_k.weight.lora_b F32 4,128"), "{py}");
        assert!(py.contains("K adapter.lora.alpha 8.0"), "{py}");
        assert!(py.contains("K general.type adapter"), "{py}");
    }
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(fx.base.parent().unwrap()).ok();
}

#[test]
fn sharded_safetensors_load_back() {
    let lora = LoraConfig { rank: 2, alpha: 4.0, ..Default::default() };
    let Some(fx) = fixture("shard", lora) else { return };
    let d = tmp("shard-out");
    // 49152 x 256 bf16 embedding = 25 MB; 0.01 GB shards put it alone and the layers after it.
    let r = export(
        &fx.base,
        std::slice::from_ref(&fx.adapter),
        &ExportOptions { export_size_gb: 0.01, ..opts(ExportKind::Safetensors, d.clone()) },
    )
    .unwrap();
    assert!(d.join("model-00001-of-00002.safetensors").is_file(), "{:?}", r.files);
    assert!(d.join("model-00002-of-00002.safetensors").is_file(), "{:?}", r.files);
    let idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(idx["weight_map"]["model.embed_tokens.weight"], "model-00001-of-00002.safetensors");
    assert_eq!(idx["weight_map"]["model.norm.weight"], "model-00002-of-00002.safetensors");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    assert_eq!((cfg["bos_token_id"].as_u64(), cfg["eos_token_id"].as_u64()), (Some(1), Some(2)));
    assert_eq!(cfg["tie_word_embeddings"], true);
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(tc["chat_template"].as_str().unwrap().contains("<|im_start|>"));
    assert_eq!(tc["eos_token"], "<|im_end|>");
    let (m, _) = load_hf(&CpuBackend::new(), &d, &AdapterSpec::default()).unwrap();
    let b = batch();
    let e = max_abs(&m.logits(&b).unwrap(), &fx.model.logits(&b).unwrap());
    assert!(e < 5e-2, "bf16 shards: {e}");
    // Our HF tokenizer path reads the exported tokenizer files and agrees with the GGUF one.
    let t = Tokenizer::from_file(d.join("tokenizer.json")).unwrap();
    let g = Tokenizer::from_gguf(&GgufFile::open(&fx.base).unwrap()).unwrap();
    let s = "<|im_start|>user\nhello there 42<|im_end|>";
    assert_eq!(t.encode(s, true).unwrap(), g.encode(s, true).unwrap());
    assert_eq!((t.bos_id(), t.eos_id()), (g.bos_id(), g.eos_id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(fx.base.parent().unwrap()).ok();
}

#[test]
fn bad_inputs_are_errors_and_leave_nothing() {
    let lora = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let Some(fx) = fixture("bad", lora) else { return };
    let out = tmp("bad-out");
    let ad = std::slice::from_ref(&fx.adapter);
    let err = |r: loraforge::error::Result<loraforge::export::ExportReport>| r.unwrap_err().to_string();

    // Unknown type, quant, dtype.
    assert!(ExportKind::parse("onnx").unwrap_err().to_string().contains("unknown export type"));
    let e = err(export(
        &fx.base,
        ad,
        &ExportOptions { quant: Some("q3_xs".into()), ..opts(ExportKind::Gguf, out.join("a")) },
    ));
    assert!(e.contains("unknown GGUF quantization \"q3_xs\""), "{e}");
    let e = err(export(
        &fx.base,
        ad,
        &ExportOptions { dtype: "float8".into(), ..opts(ExportKind::Safetensors, out.join("a")) },
    ));
    assert!(e.contains("unknown dtype"), "{e}");
    let e = err(export(
        &fx.base,
        ad,
        &ExportOptions { quant: Some("q8_0".into()), ..opts(ExportKind::Safetensors, out.join("a")) },
    ));
    assert!(e.contains("GGUF model exports only"), "{e}");

    // export_dir exists and is not empty.
    std::fs::create_dir_all(out.join("full")).unwrap();
    std::fs::write(out.join("full/keep.txt"), "x").unwrap();
    let e = err(export(&fx.base, ad, &opts(ExportKind::Safetensors, out.join("full"))));
    assert!(e.contains("exists and is not an empty directory"), "{e}");
    assert!(out.join("full/keep.txt").is_file());

    // Missing adapter directory, missing files.
    let e = err(export(&fx.base, &[out.join("nope")], &opts(ExportKind::Safetensors, out.join("a"))));
    assert!(e.contains("adapter directory does not exist"), "{e}");
    std::fs::create_dir_all(out.join("empty_adapter")).unwrap();
    let e = err(export(&fx.base, &[out.join("empty_adapter")], &opts(ExportKind::Safetensors, out.join("a"))));
    assert!(e.contains("missing adapter_config.json") && e.contains("missing adapter_model.safetensors"), "{e}");

    // An adapter of another shape: a rank-4 adapter saved from a model with hidden 128 lists every
    // misshapen tensor (2 layers x 7 modules x A and B = 28, minus v's and k's B which match...).
    let other = out.join("other_adapter");
    {
        use loraforge::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
        use loraforge::model::{BlockConfig, FrozenStore};
        let bc = BlockConfig {
            hidden_size: 128,
            num_attention_heads: H,
            num_key_value_heads: KV,
            head_dim: D,
            intermediate_size: F,
            rms_norm_eps: 1e-5,
            norm_add_one: false,
            gelu: false,
            rope: RopeConfig {
                head_dim: D,
                rotary_dim: D,
                theta: 1e4,
                layout: RopeLayout::HalfSplit,
                scaling: RopeScaling::None,
            },
            attn_scale: 0.125,
            sliding_window: None,
            attn_softcap: None,
            qk_norm: false,
            post_norms: false,
        };
        let lora = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
        let m =
            Transformer::random(&CpuBackend::new(), &bc, 3, 100, &ALL, &lora, &FrozenStore::Dense, &mut Rng::new(0))
                .unwrap();
        let targets: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
        save_adapter(&m, &other, &AdapterConfig::new(&lora, &targets, "x"), None, HashMap::new()).unwrap();
    }
    let e = err(export(&fx.base, &[other.clone(), out.join("nope")], &opts(ExportKind::Safetensors, out.join("a"))));
    // Per layer 0..2: A of q,k,v,gate,up (d_in 128 vs 256) and B of o, down (d_out 128 vs 256) = 7;
    // layer 2 does not exist in the base: 7 modules; plus the missing directory.
    assert!(e.contains("22 problem(s)"), "{e}");
    assert!(e.contains("self_attn.q_proj.lora_A.weight: shape [4, 128], the base needs [4, 256]"), "{e}");
    assert!(e.contains("module model.layers.2.mlp.down_proj does not exist in the base"), "{e}");
    assert!(e.contains("nope: adapter directory does not exist"), "{e}");

    // DoRA cannot become a GGUF LoRA.
    // A write failure halfway (tokenizer model that cannot be converted, found after the weights
    // are written) leaves neither the target nor the temporary directory.
    let bad_base = out.join("bert.gguf");
    tiny_base(&bad_base, "bert");
    let target = out.join("half");
    let e = err(export(&bad_base, &[], &opts(ExportKind::Safetensors, target.clone())));
    assert!(e.contains("\"bert\" cannot be exported"), "{e}");
    assert!(!target.exists(), "a failed export left {}", target.display());
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(fx.base.parent().unwrap()).ok();
}

/// GGUF base -> HF directory -> GGUF again (the HF-base path: names, Q/K permutation, tokenizer
/// metadata from tokenizer.json) gives the same logits and token ids; DoRA has no GGUF adapter form.
#[test]
fn hf_base_round_trips_to_gguf_and_dora_adapter_is_refused() {
    let lora = LoraConfig { rank: 4, alpha: 8.0, use_dora: true, ..Default::default() };
    let Some(fx) = fixture("rt", lora) else { return };
    let out = tmp("rt-out");
    let hf = out.join("hf");
    export(
        &fx.base,
        std::slice::from_ref(&fx.adapter),
        &ExportOptions { dtype: "float32".into(), ..opts(ExportKind::Safetensors, hf.clone()) },
    )
    .unwrap();
    let gg = out.join("gguf");
    let r = export(&hf, &[], &ExportOptions { dtype: "float32".into(), ..opts(ExportKind::Gguf, gg.clone()) }).unwrap();
    let be = CpuBackend::new();
    let (m, _) = load_gguf(&be, gg.join("model-f32.gguf"), &AdapterSpec::default()).unwrap();
    let b = batch();
    let e = max_abs(&m.logits(&b).unwrap(), &fx.model.logits(&b).unwrap());
    eprintln!("GGUF -> HF -> GGUF f32 (DoRA merged): max abs {e:.2e}, notes {:?}", r.notes);
    assert!(e < 1e-4, "{e}");
    let g = GgufFile::open(gg.join("model-f32.gguf")).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    let t2 = Tokenizer::from_gguf(&g).unwrap();
    let t1 = Tokenizer::from_gguf(&GgufFile::open(&fx.base).unwrap()).unwrap();
    let s = "<|im_start|>user\nHéllo wörld 12345 😀<|im_end|>\n";
    assert_eq!(t2.encode(s, true).unwrap(), t1.encode(s, true).unwrap());
    assert_eq!((t2.bos_id(), t2.eos_id(), t2.stop_ids()), (t1.bos_id(), t1.eos_id(), t1.stop_ids()));
    assert!(g.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));
    let e = export(&fx.base, std::slice::from_ref(&fx.adapter), &opts(ExportKind::GgufAdapter, out.join("ad")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("DoRA adapters have no llama.cpp GGUF form"), "{e}");
    assert!(!out.join("ad").exists());
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(fx.base.parent().unwrap()).ok();
}

/// A Llama 3.2-style base (llama3 RoPE scaling stored as llama.cpp's `rope_freqs.weight`, no
/// metadata) exports to an HF directory whose config.json says `rope_type: llama3` with Meta's
/// parameters, and back to a GGUF whose `rope_freqs.weight` equals llama.cpp's values; the logits
/// agree at every step (f32 export: only rounding differs).
#[test]
fn llama3_rope_scaling_survives_gguf_to_hf_to_gguf() {
    if smollm2_path().is_none() {
        return;
    }
    let dir = tmp("llama3-rope");
    std::fs::create_dir_all(&dir).unwrap();
    let factors = llama3_rope_freqs_like_llama_cpp(D, 100000.0, 32.0, 1.0, 4.0, 8192.0);
    let ramp = factors.iter().filter(|&&x| x != 1.0 && x != 32.0).count();
    assert!(ramp >= 2, "the test needs frequencies on the ramp: {factors:?}");
    let base = dir.join("llama32.gguf");
    tiny_base_with(&base, "gpt2", Some(&factors));
    let be = CpuBackend::new();
    let spec = AdapterSpec::default();
    let (m0, c0) = load_gguf(&be, &base, &spec).unwrap();
    assert_eq!(
        c0.rope_scaling,
        RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 }
    );
    let b = batch();
    let z0 = m0.logits(&b).unwrap();

    let hf = dir.join("hf");
    export(&base, &[], &ExportOptions { dtype: "float32".into(), ..opts(ExportKind::Safetensors, hf.clone()) })
        .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    let rs = &cfg["rope_scaling"];
    assert_eq!(rs["rope_type"], "llama3", "{cfg}");
    assert_eq!((rs["factor"].as_f64(), rs["original_max_position_embeddings"].as_u64()), (Some(32.0), Some(8192)));
    let (m1, _) = load_hf(&be, &hf, &spec).unwrap();
    let e1 = max_abs(&m1.logits(&b).unwrap(), &z0);

    let gg = dir.join("gguf");
    export(&hf, &[], &ExportOptions { dtype: "float32".into(), ..opts(ExportKind::Gguf, gg.clone()) }).unwrap();
    let g = GgufFile::open(gg.join("model-f32.gguf")).unwrap();
    let written = g.dequantize_tensor("rope_freqs.weight").unwrap();
    assert_eq!(written.len(), factors.len());
    for (a, b) in written.iter().zip(&factors) {
        assert!(((a - b) / b).abs() < 1e-5, "rope_freqs {written:?} vs llama.cpp's {factors:?}");
    }
    assert!(g.get("llama.rope.scaling.type").is_none(), "llama.cpp's converter writes no scaling metadata for llama3");
    let (m2, _) = load_gguf(&be, gg.join("model-f32.gguf"), &spec).unwrap();
    let e2 = max_abs(&m2.logits(&b).unwrap(), &z0);
    eprintln!("llama3 RoPE: GGUF -> HF max abs {e1:.2e}, -> GGUF max abs {e2:.2e}");
    assert!(e1 < 1e-4 && e2 < 1e-4, "{e1} {e2}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Quantized GGUF exports of a fine-tune of the real SmolLM2-135M-Instruct (its Q4_1 base with a
/// rank-8 LoRA on all seven projections, random A and B of the size training gives) against the
/// adapter applied at run time, on 113 tokens of chat and prose. Unlike the random-weight tiny base
/// above, a trained model's logits are peaked, so top-1 agreement measures what users will see.
/// The export dequantizes the Q4_1 base, adds the LoRA delta and quantizes again, so its error is
/// that of one more quantization of the same weights.
#[test]
fn real_smollm2_quantized_exports_agree_on_top1() {
    let Some(base) = smollm2_path() else { return };
    let dir = tmp("real-q");
    std::fs::create_dir_all(&dir).unwrap();
    let lora = LoraConfig { rank: 8, alpha: 16.0, ..Default::default() };
    let targets: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    let spec = AdapterSpec { targets: targets.clone(), lora: lora.clone(), seed: 1, quantize: None };
    let be = CpuBackend::new();
    let (mut model, cfg) = load_gguf(&be, &base, &spec).unwrap();
    let mut rng = Rng::new(5);
    for l in model.loras_mut().unwrap() {
        for p in l.params_mut() {
            let v = randn_f32(&mut rng, p.elem_count(), if p.name.contains("lora_B") { 0.01 } else { 0.02 });
            p.storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
        }
    }
    let adapter = dir.join("adapter");
    let qk = QkPermutation::for_config(&cfg);
    save_adapter(&model, &adapter, &AdapterConfig::new(&lora, &targets, "smollm2"), qk, HashMap::new()).unwrap();
    let tok = Tokenizer::from_gguf(&GgufFile::open(&base).unwrap()).unwrap();
    let text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nExplain why the \
                sky is blue in two sentences.<|im_end|>\n<|im_start|>assistant\nSunlight is scattered by the \
                molecules of the air, and blue light, with its shorter wavelength, is scattered much more than \
                red light. So when we look at the sky away from the sun, we see mostly this scattered blue \
                light.<|im_end|>\nThe river ran past the old mill, where the miller's children played on summer \
                evenings until the light was gone and their mother called them home for supper.";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.len() >= 100, "{}", ids.len());
    let b = Batch::single(&ids);
    let want = model.logits(&b).unwrap();
    let v = cfg.vocab_size;
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    drop(model);
    // (export, max |logit error| / max |logit|, min top-1 agreement, max mean KL(adapter || export)
    // in nats) over ids.len() positions. Measured (this test's eprintln): f16 1.6e-3 / 1.000 / 3.5e-6;
    // q8_0 3.2e-2 / 0.956 / 1.8e-3; q4_k_m 2.1e-1 / 0.832 / 7.3e-2. The f16 export shows the merge itself
    // is lossless up to f16 rounding; the top-1 flips of the quantized ones are near-ties of this
    // small model (prose has many), which the KL column puts in proportion.
    for (q, bound, min_agree, max_kl) in
        [("f16", 5e-3f32, 0.99, 1e-4), ("q8_0", 0.06, 0.93, 5e-3), ("q4_k_m", 0.3, 0.78, 0.15)]
    {
        let d = dir.join(q);
        let o = match q {
            "f16" => ExportOptions { dtype: "float16".into(), ..opts(ExportKind::Gguf, d.clone()) },
            _ => ExportOptions { quant: Some(q.into()), ..opts(ExportKind::Gguf, d.clone()) },
        };
        let t = std::time::Instant::now();
        export(&base, std::slice::from_ref(&adapter), &o).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let (m, _) = load_gguf(&be, d.join(format!("model-{q}.gguf")), &AdapterSpec::default()).unwrap();
        let got = m.logits(&b).unwrap();
        let e = max_abs(&got, &want);
        let agree = top1_agreement(&got, &want, v);
        let kl = mean_kl(&want, &got, v);
        eprintln!(
            "SmolLM2 + LoRA -> {q}: {} positions, max abs {e:.3} (max |logit| {scale:.1}, relative {:.2e}), \
             top-1 agreement {agree:.3}, mean KL {kl:.2e} nats, export {secs:.1} s",
            ids.len(),
            e / scale
        );
        assert!(e / scale < bound && agree >= min_agree && kl < max_kl, "{q}: max abs {e}, top-1 {agree}, KL {kl}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
