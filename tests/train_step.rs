//! Training steps: gradient accumulation weighs every token the same (2 micro-batches of 2 = one
//! batch of 4), evaluation records nothing, and LoRA on the real SmolLM2 Q4_1 GGUF base (trained as
//! it is: the quantized blocks stay as they are) lowers the loss.

mod common;

use common::*;
use loraforge::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
use loraforge::backend::CpuBackend;
use loraforge::lora::LoraConfig;
use loraforge::model::{load_gguf, AdapterSpec, Batch, BlockConfig, FrozenStore, Transformer};
use loraforge::rng::Rng;
use loraforge::train::step::{accumulate, evaluate, train_step};
use loraforge::train::{AdamW, AdamWConfig};
use loraforge::Tape;
use std::path::PathBuf;

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn small() -> Transformer<CpuBackend> {
    let cfg = BlockConfig {
        hidden_size: 32,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        intermediate_size: 48,
        rms_norm_eps: 1e-5,
        norm_add_one: false,
        gelu: false,
        rope: RopeConfig {
            head_dim: 8,
            rotary_dim: 8,
            theta: 10000.0,
            layout: RopeLayout::HalfSplit,
            scaling: RopeScaling::None,
        },
        attn_scale: 8f32.powf(-0.5),
        sliding_window: None,
        attn_softcap: None,
        qk_norm: false,
        post_norms: false,
    };
    let lora = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let mut m =
        Transformer::random(&CpuBackend::new(), &cfg, 2, 29, &ALL, &lora, &FrozenStore::Dense, &mut Rng::new(0))
            .unwrap();
    let mut rng = Rng::new(1);
    for p in m.params_mut().unwrap() {
        if p.name.ends_with("lora_B") {
            let v = randn_f32(&mut rng, p.elem_count(), 0.05);
            p.storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
        }
    }
    m
}

/// Rows of different lengths, right-padded with target -100 (as the batcher does).
fn rows(rng: &mut Rng, lens: &[usize], t: usize) -> Batch {
    let mut ids = Vec::new();
    let mut targets = Vec::new();
    for &n in lens {
        let r: Vec<u32> = (0..t).map(|i| if i < n { rng.below(29) as u32 } else { 0 }).collect();
        for i in 0..t {
            targets.push(if i + 1 < n { r[i + 1] as i32 } else { -100 });
        }
        ids.extend(r);
    }
    Batch {
        b: lens.len(),
        t,
        ids: ids.into(),
        targets,
        positions: (0..lens.len() * t).map(|i| (i % t) as u32).collect::<Vec<_>>().into(),
        segment_ids: None,
    }
}

fn split(b: &Batch, at: usize) -> (Batch, Batch) {
    let cut = |r: std::ops::Range<usize>| Batch {
        b: r.len(),
        t: b.t,
        ids: b.ids[r.start * b.t..r.end * b.t].into(),
        targets: b.targets[r.start * b.t..r.end * b.t].to_vec(),
        positions: b.positions[r.start * b.t..r.end * b.t].into(),
        segment_ids: None,
    };
    (cut(0..at), cut(at..b.b))
}

#[test]
fn accumulation_weighs_every_token_the_same() {
    let m = small();
    let batch = rows(&mut Rng::new(2), &[9, 4, 7, 2], 9);
    let (a, b) = split(&batch, 2);
    let (g1, o1) = accumulate(&m, std::slice::from_ref(&batch), true, 5).unwrap();
    let (g2, o2) = accumulate(&m, &[a, b], true, 5).unwrap();
    assert_eq!(o1.trained_tokens, 8 + 3 + 6 + 1);
    assert_eq!(o1.trained_tokens, o2.trained_tokens);
    // One batch vs two micro-batches: the same sums in another order (f32): ~1e-7 relative.
    assert!((o1.loss - o2.loss).abs() < 1e-6 * o1.loss, "{} vs {}", o1.loss, o2.loss);
    for p in m.params() {
        let x = g1.get_param(p).unwrap().as_slice().to_vec();
        let y = g2.get_param(p).unwrap().as_slice().to_vec();
        assert_close(&y, &x, Tol { abs: 1e-7, rel: 1e-4 }, &p.name);
    }
}

#[test]
fn evaluation_records_nothing_and_matches_training_loss() {
    let m = small();
    let batch = rows(&mut Rng::new(3), &[9, 6], 9);
    let mut tape = Tape::no_grad();
    let l = m.loss(&mut tape, &batch, false, None).unwrap();
    assert!(tape.is_empty() && !l.loss.is_tracked());
    let (eval, n) = evaluate(&m, std::slice::from_ref(&batch)).unwrap();
    let (_, o) = accumulate(&m, std::slice::from_ref(&batch), false, 0).unwrap();
    assert_eq!(n, o.trained_tokens);
    assert!((eval - o.loss).abs() < 1e-6, "dropout is 0: the same loss ({eval} vs {})", o.loss);
}

fn smollm2() -> PathBuf {
    let dir = std::env::var("LORAFORGE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/loraforge/models"));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run models/fetch.sh first", p.display());
    p
}

/// LoRA r=8 on all 7 projections of the Q4_1 base: 6 AdamW steps on one 24-token sequence lower
/// its loss (memorisation), and the frozen base never gets a gradient.
#[test]
fn lora_on_quantized_gguf_base_lowers_the_loss() {
    let be = CpuBackend::new();
    let spec = AdapterSpec {
        targets: ALL.iter().map(|s| s.to_string()).collect(),
        lora: LoraConfig { rank: 8, alpha: 16.0, ..Default::default() },
        seed: 0,
        quantize: None,
    };
    let (mut model, cfg) = load_gguf(&be, smollm2(), &spec).unwrap();
    assert_eq!(model.trainable_count(), 30 * 8 * ((576 + 576) + 2 * (576 + 192) + (576 + 576) + 3 * (576 + 1536)));
    let ids: Vec<u32> = (0..24).map(|i| [504, 3458, 282, 4649, 314, 7042, 30, 216][i % 8]).collect();
    let batch = Batch::causal_lm(&[ids]).unwrap();
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-3, ..Default::default() });
    let mut losses = Vec::new();
    for step in 0..6 {
        let o = train_step(&mut model, &mut opt, std::slice::from_ref(&batch), 1e-3, true, step).unwrap();
        assert!(o.applied && o.grad_norm.is_finite());
        losses.push(o.loss);
    }
    assert!(losses[5] < 0.7 * losses[0], "loss did not fall: {losses:?}");
    assert_eq!(opt.state_len(&be) as u64, 2 * model.trainable_count() as u64);
    assert_eq!(cfg.arch, "llama");
}
