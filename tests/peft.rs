//! PEFT adapters: PEFT's names, shapes and config fields; save → load round trips exactly and gives
//! the same logits; the GGUF Q/K row order is undone on save; bad adapters give one error listing
//! every problem.

mod common;

use common::*;
use loraforge::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
use loraforge::backend::CpuBackend;
use loraforge::export::peft::{
    load_adapter, save_adapter, AdapterConfig, QkPermutation, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use loraforge::io::safetensors::SafetensorsFile;
use loraforge::lora::LoraConfig;
use loraforge::model::{Batch, BlockConfig, FrozenStore, Transformer};
use loraforge::rng::Rng;
use std::collections::HashMap;
use std::path::PathBuf;

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn cfg(layout: RopeLayout) -> BlockConfig {
    BlockConfig {
        hidden_size: 32,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        intermediate_size: 48,
        rms_norm_eps: 1e-5,
        norm_add_one: false,
        gelu: false,
        rope: RopeConfig { head_dim: 8, rotary_dim: 8, theta: 10000.0, layout, scaling: RopeScaling::None },
        attn_scale: 8f32.powf(-0.5),
        sliding_window: None,
        attn_softcap: None,
        qk_norm: false,
        post_norms: false,
    }
}

fn model(lora: &LoraConfig, seed: u64, randomize: bool) -> Transformer<CpuBackend> {
    let be = CpuBackend::new();
    let mut m =
        Transformer::random(&be, &cfg(RopeLayout::HalfSplit), 2, 41, &ALL, lora, &FrozenStore::Dense, &mut Rng::new(0))
            .unwrap();
    // Same frozen weights (seed 0), adapters re-initialised from `seed`.
    let mut rng = Rng::new(seed);
    for l in m.loras_mut().unwrap() {
        for p in l.params_mut() {
            let n = p.elem_count();
            let v = if randomize { randn_f32(&mut rng, n, 0.1) } else { vec![0.0; n] };
            p.storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
        }
    }
    m
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lf-peft-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn save_writes_peft_names_shapes_and_config() {
    let lora = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.05, use_rslora: true, use_dora: true };
    let m = model(&lora, 1, true);
    let dir = tmpdir("names");
    let targets: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    let ac = AdapterConfig::new(&lora, &targets, "HuggingFaceTB/SmolLM2-135M-Instruct");
    let meta = HashMap::from([("loraforge.base".to_string(), "test".to_string())]);
    save_adapter(&m, &dir, &ac, None, meta).unwrap();
    let f = SafetensorsFile::open(dir.join(ADAPTER_WEIGHTS)).unwrap();
    assert_eq!(f.names().len(), 2 * 7 * 3, "A, B and magnitude for 7 modules in 2 layers");
    let (_, s, _) = f.raw("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").unwrap();
    assert_eq!(s, vec![4, 32]);
    let (_, s, _) = f.raw("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").unwrap();
    assert_eq!(s, vec![32, 4]);
    let (_, s, _) = f.raw("base_model.model.model.layers.1.self_attn.k_proj.lora_magnitude_vector").unwrap();
    assert_eq!(s, vec![16]);
    assert_eq!(f.metadata().get("loraforge.base").map(String::as_str), Some("test"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap()).unwrap();
    for (k, v) in [("peft_type", "LORA"), ("task_type", "CAUSAL_LM"), ("bias", "none")] {
        assert_eq!(json[k], v, "{k}");
    }
    assert_eq!(json["r"], 4);
    assert_eq!(json["lora_alpha"], 8.0);
    assert_eq!(json["use_rslora"], true);
    assert_eq!(json["use_dora"], true);
    assert_eq!(json["fan_in_fan_out"], false);
    assert_eq!(json["target_modules"].as_array().unwrap().len(), 7);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn save_load_round_trip_is_exact() {
    for dora in [false, true] {
        let lora = LoraConfig { rank: 4, alpha: 8.0, use_dora: dora, ..Default::default() };
        let trained = model(&lora, 1, true);
        let dir = tmpdir(&format!("rt{dora}"));
        let targets: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
        save_adapter(&trained, &dir, &AdapterConfig::new(&lora, &targets, "base"), None, HashMap::new()).unwrap();
        let mut fresh = model(&lora, 2, false);
        let cfg = AdapterConfig::read(&dir).unwrap();
        assert_eq!(cfg.lora(), lora);
        load_adapter(&mut fresh, &dir, None).unwrap();
        for (a, b) in trained.loras().iter().zip(fresh.loras()) {
            for (p, q) in a.params().iter().zip(b.params()) {
                assert_eq!(p.t.to_vec().unwrap(), q.t.to_vec().unwrap(), "{}", p.name);
            }
        }
        let batch = Batch::single(&[1, 5, 9, 2, 40]);
        assert_eq!(trained.logits(&batch).unwrap(), fresh.logits(&batch).unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// On a GGUF llama base (interleaved Q/K rows), B of q/k is saved in Hugging Face row order and
/// loaded back into GGUF order: llama.cpp permutes HF row i·D/2 + j of each head to row 2j + i.
#[test]
fn qk_rows_are_saved_in_hugging_face_order() {
    let lora = LoraConfig { rank: 2, alpha: 2.0, ..Default::default() };
    let m = model(&lora, 3, true);
    let dir = tmpdir("qk");
    let qk = QkPermutation { n_heads: 4, n_kv_heads: 2, head_dim: 8 };
    let targets: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    save_adapter(&m, &dir, &AdapterConfig::new(&lora, &targets, "base"), Some(qk), HashMap::new()).unwrap();
    let f = SafetensorsFile::open(dir.join(ADAPTER_WEIGHTS)).unwrap();
    let q = &m.loras()[0];
    assert!(q.name.ends_with("q_proj"));
    let b_gguf = q.b.t.to_vec().unwrap(); // (16 rows, r = 2) in GGUF order
    let b_hf = f.tensor_f32("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    for h in 0..4 {
        for i in 0..2 {
            for j in 0..4 {
                let (hf_row, gguf_row) = (h * 8 + i * 4 + j, h * 8 + 2 * j + i);
                assert_eq!(b_hf[hf_row * 2..hf_row * 2 + 2], b_gguf[gguf_row * 2..gguf_row * 2 + 2]);
            }
        }
    }
    // v_proj is not permuted.
    let v = &m.loras()[2];
    assert_eq!(
        f.tensor_f32("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight").unwrap(),
        v.b.t.to_vec().unwrap()
    );
    // And loading with the same permutation restores the GGUF order exactly.
    let mut fresh = model(&lora, 4, false);
    load_adapter(&mut fresh, &dir, Some(qk)).unwrap();
    assert_eq!(fresh.loras()[0].b.t.to_vec().unwrap(), b_gguf);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mismatched_adapter_lists_every_problem() {
    let lora4 = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let m = model(&lora4, 1, true);
    let dir = tmpdir("bad");
    let targets: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    save_adapter(&m, &dir, &AdapterConfig::new(&lora4, &targets, "base"), None, HashMap::new()).unwrap();
    // A rank-8 model: every A and B has the wrong shape: 2 layers × 7 modules × 2 tensors.
    let lora8 = LoraConfig { rank: 8, alpha: 16.0, ..Default::default() };
    let mut other = model(&lora8, 2, false);
    let e = load_adapter(&mut other, &dir, None).unwrap_err().to_string();
    assert!(e.contains("28 problem(s)"), "{e}");
    assert!(e.contains("model.layers.1.mlp.down_proj.lora_B.weight: shape [32, 4], the base needs [32, 8]"), "{e}");
    // A missing directory or file.
    let e = load_adapter(&mut other, &dir.join("nope"), None).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    // A corrupt adapter_config.json.
    std::fs::write(dir.join(ADAPTER_CONFIG), "{ not json").unwrap();
    assert!(AdapterConfig::read(&dir).unwrap_err().to_string().contains(ADAPTER_CONFIG));
    std::fs::remove_dir_all(&dir).ok();
}
