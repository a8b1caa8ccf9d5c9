//! Bad model files give a clear `Err`, never a panic: truncated GGUF, unsupported architectures
//! (the error names the supported ones), missing and misshapen tensors (all listed in one error),
//! config.json without required fields (all listed), a missing safetensors shard, a path that is
//! neither a .gguf file nor a model directory. The model is a 1-layer llama written here.

use loraforge::backend::CpuBackend;
use loraforge::io::gguf::GgufWriter;
use loraforge::io::safetensors::write_safetensors;
use loraforge::model::config::SUPPORTED;
use loraforge::model::names::{self, Role};
use loraforge::model::{load_gguf, load_hf, load_model, AdapterSpec, ModelConfig};
use loraforge::quant::ggml::GgmlType;
use safetensors::Dtype;
use serde_json::json;
use std::path::PathBuf;

const C: usize = 8;
const H: usize = 2;
const KV: usize = 1;
const D: usize = 4;
const FF: usize = 16;
const V: usize = 11;

fn tensors() -> Vec<(Role, &'static str, Vec<usize>)> {
    let mut v = vec![
        (Role::Embed, "weight", vec![V, C]),
        (Role::LmHead, "weight", vec![V, C]),
        (Role::FinalNorm, "weight", vec![C]),
        (Role::AttnNorm, "weight", vec![C]),
        (Role::FfnNorm, "weight", vec![C]),
    ];
    for (r, s) in [
        (Role::Q, vec![H * D, C]),
        (Role::K, vec![KV * D, C]),
        (Role::V, vec![KV * D, C]),
        (Role::O, vec![C, H * D]),
        (Role::Gate, vec![FF, C]),
        (Role::Up, vec![FF, C]),
        (Role::Down, vec![C, FF]),
    ] {
        v.push((r, "weight", s));
    }
    v
}

fn values(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (0.01 * (i % 17) as f32).to_le_bytes()).collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loraforge-errors-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config() -> serde_json::Value {
    json!({"model_type": "llama", "vocab_size": V, "hidden_size": C, "intermediate_size": FF,
           "num_hidden_layers": 1, "num_attention_heads": H, "num_key_value_heads": KV})
}

/// A HF directory; `edit` may drop or reshape tensors (by HF name) before writing.
fn write_hf(tag: &str, cfg: &serde_json::Value, edit: impl Fn(&str, &mut Vec<usize>) -> bool) -> PathBuf {
    let dir = temp_dir(tag);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut ts = Vec::new();
    for (role, suffix, mut shape) in tensors() {
        let name = names::hf_name("llama", role, 0, suffix);
        if edit(&name, &mut shape) {
            let n = shape.iter().product();
            ts.push((name, Dtype::F32, shape, values(n)));
        }
    }
    write_safetensors(dir.join("model.safetensors"), &ts, None).unwrap();
    dir
}

/// A GGUF image; `edit` as for `write_hf`, by GGUF name.
fn gguf_bytes(arch: &str, edit: impl Fn(&str, &mut Vec<usize>) -> bool) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", arch).unwrap();
    let k = |s: &str| format!("{arch}.{s}");
    for (key, v) in [
        ("embedding_length", C),
        ("block_count", 1),
        ("feed_forward_length", FF),
        ("attention.head_count", H),
        ("attention.head_count_kv", KV),
        ("vocab_size", V),
    ] {
        w.add(k(key), v as u32).unwrap();
    }
    for (role, suffix, mut shape) in tensors() {
        let name = names::gguf_name(role, 0, suffix);
        if edit(&name, &mut shape) {
            let n = shape.iter().product();
            w.add_tensor(name, &shape, GgmlType::F32, values(n)).unwrap();
        }
    }
    w.to_bytes().unwrap()
}

fn write_gguf(tag: &str, bytes: &[u8]) -> PathBuf {
    let p = temp_dir(tag).join("model.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err_of<T>(r: loraforge::error::Result<T>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what}: loaded, expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_unedited_models_load() {
    // Guards the tests below: each failure must come from its edit, not from the writer.
    let be = CpuBackend::new();
    let spec = AdapterSpec::default();
    load_hf(&be, write_hf("ok", &config(), |_, _| true), &spec).unwrap();
    load_gguf(&be, write_gguf("ok", &gguf_bytes("llama", |_, _| true)), &spec).unwrap();
}

#[test]
fn truncated_gguf_is_an_error_at_every_cut() {
    let be = CpuBackend::new();
    let full = gguf_bytes("llama", |_, _| true);
    let dir = temp_dir("trunc");
    // Inside the header, the metadata, the tensor infos, the padding and the data, and one byte short.
    let mut cuts: Vec<usize> = vec![0, 3, 8, 23, 24, 40, 100, 300, 600];
    cuts.extend((1..8).map(|i| full.len() * i / 8));
    cuts.push(full.len() - 1);
    for cut in cuts {
        let p = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &full[..cut]).unwrap();
        let e = err_of(load_gguf(&be, &p, &AdapterSpec::default()), &format!("cut at {cut}"));
        assert!(!e.is_empty(), "cut at {cut}: empty message");
        let e2 = err_of(load_model(&be, &p, &AdapterSpec::default()), "load_model");
        assert_eq!(e, e2);
    }
}

#[test]
fn unsupported_architecture_names_the_supported_ones() {
    let be = CpuBackend::new();
    let p = write_gguf("arch", &gguf_bytes("gpt2", |_, _| true));
    let e = err_of(load_gguf(&be, &p, &AdapterSpec::default()), "gguf gpt2");
    assert!(e.contains("gpt2") && SUPPORTED.iter().all(|a| e.contains(a)), "{e}");

    let mut cfg = config();
    cfg["model_type"] = json!("bert");
    let e = err_of(ModelConfig::from_hf_json(&cfg), "hf bert");
    assert!(e.contains("bert") && SUPPORTED.iter().all(|a| e.contains(a)), "{e}");
    let e = err_of(ModelConfig::from_hf_json(&json!({"hidden_size": 8})), "no model_type");
    assert!(e.contains("model_type") && e.contains("phi3"), "{e}");
}

#[test]
fn every_missing_and_misshapen_tensor_is_listed_hf() {
    let be = CpuBackend::new();
    let dir = write_hf("bad-hf", &config(), |name, shape| {
        if name.ends_with("k_proj.weight") {
            shape[0] += 1; // misshapen
        }
        if name.ends_with("down_proj.weight") {
            shape.reverse(); // transposed
        }
        !name.ends_with("up_proj.weight") && name != "model.norm.weight" // missing
    });
    let e = err_of(load_hf(&be, &dir, &AdapterSpec::default()), "bad hf");
    for n in [
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.norm.weight",
    ] {
        assert!(e.contains(n), "{n} not named in: {e}");
    }
    assert!(e.contains("4 tensor problem(s)"), "{e}");
    assert!(!e.contains("gate_proj"), "a good tensor was reported: {e}");
}

#[test]
fn every_missing_and_misshapen_tensor_is_listed_gguf() {
    let be = CpuBackend::new();
    let p = write_gguf(
        "bad-gguf",
        &gguf_bytes("llama", |name, shape| {
            if name == "blk.0.attn_q.weight" {
                shape[1] -= 1;
            }
            // (output.weight is kept: GGUF treats its absence as tied embeddings)
            name != "blk.0.ffn_gate.weight" && name != "blk.0.attn_norm.weight"
        }),
    );
    let e = err_of(load_gguf(&be, &p, &AdapterSpec::default()), "bad gguf");
    for n in ["blk.0.attn_q.weight", "blk.0.ffn_gate.weight", "blk.0.attn_norm.weight"] {
        assert!(e.contains(n), "{n} not named in: {e}");
    }
    assert!(e.contains("3 tensor problem(s)"), "{e}");
}

#[test]
fn config_without_required_fields_lists_them_all() {
    let mut cfg = config();
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("hidden_size");
    obj.remove("num_hidden_layers");
    obj.remove("vocab_size");
    let e = err_of(ModelConfig::from_hf_json(&cfg), "missing fields");
    for f in ["hidden_size", "num_hidden_layers", "vocab_size"] {
        assert!(e.contains(f), "{f} not named in: {e}");
    }
    assert!(!e.contains("intermediate_size"), "{e}");
    // Mistyped and unsupported values are listed together too.
    let mut cfg = config();
    cfg["num_key_value_heads"] = json!("two");
    cfg["rope_scaling"] = json!({"rope_type": "longrope", "factor": 4.0});
    cfg["hidden_act"] = json!("relu");
    let e = err_of(ModelConfig::from_hf_json(&cfg), "bad fields");
    for f in ["num_key_value_heads", "longrope", "relu"] {
        assert!(e.contains(f), "{f} not named in: {e}");
    }
    // And through the loader, config.json read from disk.
    let be = CpuBackend::new();
    let mut cfg = config();
    cfg.as_object_mut().unwrap().remove("num_attention_heads");
    let dir = write_hf("nofields", &cfg, |_, _| true);
    let e = err_of(load_hf(&be, &dir, &AdapterSpec::default()), "loader");
    assert!(e.contains("num_attention_heads"), "{e}");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = err_of(load_hf(&be, &dir, &AdapterSpec::default()), "bad json");
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn missing_shard_is_an_error() {
    let be = CpuBackend::new();
    let dir = write_hf("shard", &config(), |_, _| true);
    std::fs::rename(dir.join("model.safetensors"), dir.join("model-00001-of-00002.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for (role, suffix, _) in tensors() {
        map.insert(names::hf_name("llama", role, 0, suffix), json!("model-00001-of-00002.safetensors"));
    }
    map.insert("model.layers.0.mlp.down_proj.weight".into(), json!("model-00002-of-00002.safetensors"));
    std::fs::write(dir.join("model.safetensors.index.json"), json!({"weight_map": map}).to_string()).unwrap();
    let e = err_of(load_hf(&be, &dir, &AdapterSpec::default()), "missing shard");
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("missing"), "{e}");
}

#[test]
fn load_model_rejects_other_paths() {
    let be = CpuBackend::new();
    let dir = temp_dir("paths");
    let e = err_of(load_model(&be, &dir, &AdapterSpec::default()), "empty dir");
    assert!(e.contains("config.json") && e.contains(".gguf"), "{e}");
    let txt = dir.join("model.bin");
    std::fs::write(&txt, b"hello").unwrap();
    err_of(load_model(&be, &txt, &AdapterSpec::default()), "model.bin");
    err_of(load_model(&be, dir.join("nope.gguf"), &AdapterSpec::default()), "no such file");
    // A .gguf that is not GGUF.
    let fake = dir.join("fake.gguf");
    std::fs::write(&fake, vec![7u8; 100]).unwrap();
    err_of(load_model(&be, &fake, &AdapterSpec::default()), "fake gguf");
}
