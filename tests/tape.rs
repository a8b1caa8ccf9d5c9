//! The tape: it records only what depends on a trainable parameter, frozen weights never get a
//! gradient, gradients of whole layers match finite differences, activation checkpointing gives
//! the same gradients, and the trainable count of a model-shaped stack is exact.

#![allow(clippy::needless_range_loop)] // index loops over several parallel arrays
mod common;

use common::*;
use loraforge::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
use loraforge::backend::{Backend, CpuBackend};
use loraforge::lora::LoraConfig;
use loraforge::model::block::{forward_checkpointed, BlockConfig, DecoderLayer, FrozenStore, LayerInputs};
use loraforge::ops::{self, Weight};
use loraforge::rng::Rng;
use loraforge::{Param, Tape, Tensor};
use std::sync::Arc;

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn small_cfg(gemma: bool) -> BlockConfig {
    let head_dim = 8;
    BlockConfig {
        hidden_size: 24,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim,
        intermediate_size: 40,
        rms_norm_eps: 1e-5,
        norm_add_one: gemma,
        gelu: gemma,
        rope: RopeConfig {
            head_dim,
            rotary_dim: head_dim,
            theta: 10000.0,
            layout: RopeLayout::HalfSplit,
            scaling: RopeScaling::None,
        },
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        sliding_window: if gemma { Some(3) } else { None },
        attn_softcap: if gemma { Some(20.0) } else { None },
        qk_norm: gemma,
        post_norms: gemma,
    }
}

fn inputs(b: usize, t: usize) -> LayerInputs {
    LayerInputs {
        positions: (0..b * t).map(|i| (i % t) as u32).collect::<Vec<_>>().into(),
        segment_ids: None,
        seed: Some(7),
    }
}

fn lora_cfg() -> LoraConfig {
    LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, use_rslora: false, use_dora: false }
}

/// Makes every B non-zero so gradients flow into A too (B = 0 at init gives dA = 0).
fn perturb_b(layer: &mut DecoderLayer<CpuBackend>, rng: &mut Rng) {
    for p in layer.params_mut() {
        if p.name.ends_with("lora_B") {
            let n = p.elem_count();
            let v = randn_f32(rng, n, 0.05);
            p.storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
        }
    }
}

/// L = <layer(x), r>, in f64 from the f32 forward.
fn loss_of(layer: &DecoderLayer<CpuBackend>, x: &Tensor<CpuBackend>, r: &[f32], inp: &LayerInputs) -> f64 {
    let mut tape = Tape::new();
    let y = layer.forward(&mut tape, x, inp).unwrap().to_vec().unwrap();
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

#[test]
fn frozen_forward_records_nothing() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(1);
    let cfg = small_cfg(false);
    let layer = DecoderLayer::random(&be, &cfg, "l0", &[], &lora_cfg(), &FrozenStore::Dense, &mut rng).unwrap();
    let x = Tensor::from_slice(&be, &randn_f32(&mut rng, 2 * 5 * 24, 1.0), [2, 5, 24]).unwrap();
    let mut tape = Tape::new();
    let y = layer.forward(&mut tape, &x, &inputs(2, 5)).unwrap();
    assert!(tape.is_empty(), "a frozen-only forward recorded {:?}", tape.op_names());
    assert!(!y.is_tracked());
    // Checkpointing a frozen layer records nothing either.
    let y2 = forward_checkpointed(&mut tape, &Arc::new(layer), &x, &inputs(2, 5)).unwrap();
    assert!(tape.is_empty());
    assert_eq!(y.to_vec().unwrap(), y2.to_vec().unwrap());
}

#[test]
fn only_lora_params_get_gradients() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(2);
    let cfg = small_cfg(false);
    let mut layer =
        DecoderLayer::random(&be, &cfg, "l0", &["q_proj", "v_proj"], &lora_cfg(), &FrozenStore::Dense, &mut rng)
            .unwrap();
    perturb_b(&mut layer, &mut rng);
    let x = Tensor::from_slice(&be, &randn_f32(&mut rng, 3 * 24, 1.0), [1, 3, 24]).unwrap();
    let mut tape = Tape::new();
    let y = layer.forward(&mut tape, &x, &inputs(1, 3)).unwrap();
    let y2 = ops::mul(&mut tape, &y, &y).unwrap();
    // The first recorded op is the LoRA path of q_proj: nothing before it (the norm, the frozen
    // projections of the attention input) is on the tape.
    let names = tape.op_names();
    assert_eq!(names[0], "matmul", "{names:?}");
    let loss = ops::linear_cross_entropy(
        &mut tape,
        &y2.reshape([3, 24]).unwrap(),
        &Weight::Dense(x.reshape([3, 24]).unwrap()),
        &[0, 1, -100],
        None,
    )
    .unwrap();
    let grads = tape.backward(&loss.loss).unwrap();
    let params = layer.params();
    assert_eq!(params.len(), 4);
    assert_eq!(grads.len(), 4, "gradients exist only for the 4 LoRA tensors");
    for p in params {
        let g = grads.get_param(p).unwrap_or_else(|| panic!("no grad for {}", p.name));
        assert_eq!(be.len(g), p.elem_count());
        assert!(be.download(g).unwrap().iter().any(|&v| v != 0.0), "{} has an all-zero gradient", p.name);
    }
}

/// Directional derivative check on every LoRA parameter of a whole layer, f32 forward:
/// (L(θ + h·u) - L(θ - h·u)) / 2h against <∇L, u> for a random unit direction u.
/// h = 1e-3: the q/k norms of the Gemma variant normalise small vectors, so a step of 1e-2 moves q
/// by ~20% and the curvature term dominates (measured: 22% off at h = 1e-2, 2% at 3e-3, pass at 1e-3
/// and 3e-4 — converging, so not a bug). f32 rounding then costs ~1e-7·|L|/h ~ 1e-4·|L|: allow 1e-2 relative.
fn check_layer_grads(gemma: bool, checkpoint: bool) {
    let be = CpuBackend::new();
    let mut rng = Rng::new(3);
    let cfg = small_cfg(gemma);
    let mut layer = DecoderLayer::random(&be, &cfg, "l0", &ALL, &lora_cfg(), &FrozenStore::Dense, &mut rng).unwrap();
    perturb_b(&mut layer, &mut rng);
    let (b, t) = (2, 5);
    let x = Tensor::from_slice(&be, &randn_f32(&mut rng, b * t * 24, 1.0), [b, t, 24]).unwrap().track();
    let r = randn_f32(&mut rng, b * t * 24, 1.0);
    let inp = inputs(b, t);

    let layer_arc = Arc::new(layer);
    let grads = {
        let mut tape = Tape::new();
        let y = if checkpoint {
            forward_checkpointed(&mut tape, &layer_arc, &x, &inp).unwrap()
        } else {
            layer_arc.forward(&mut tape, &x, &inp).unwrap()
        };
        tape.backward_from(&be, y.var().unwrap(), be.upload(&r).unwrap()).unwrap()
    };
    let mut layer = Arc::try_unwrap(layer_arc).ok().expect("the tape released the layer");
    let names: Vec<String> = layer.params().iter().map(|p| p.name.clone()).collect();
    assert_eq!(grads.len(), names.len() + 1, "one gradient per LoRA tensor plus the tracked input");
    for i in 0..names.len() {
        let (var, n) = {
            let p = &layer.params()[i];
            (p.var(), p.elem_count())
        };
        let g = be.download(grads.get(var).unwrap()).unwrap();
        let u = randn_f32(&mut rng, n, 1.0);
        let analytic: f64 = g.iter().zip(&u).map(|(&a, &b)| a as f64 * b as f64).sum();
        let h = 1e-3f32;
        let orig = layer.params()[i].t.to_vec().unwrap();
        let mut eval = |sign: f32| {
            let v: Vec<f32> = orig.iter().zip(&u).map(|(&p, &d)| p + sign * h * d).collect();
            layer.params_mut()[i].storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
            loss_of(&layer, &x, &r, &inp)
        };
        let numeric = (eval(1.0) - eval(-1.0)) / (2.0 * h as f64);
        layer.params_mut()[i].storage_mut().unwrap().as_mut_slice().copy_from_slice(&orig);
        let err = (numeric - analytic).abs();
        assert!(err <= 1e-3 + 1e-2 * analytic.abs(), "{}: analytic {analytic:e}, numeric {numeric:e}", names[i]);
    }
    // And the input gradient, through everything frozen.
    let gx = be.download(grads.get(x.var().unwrap()).unwrap()).unwrap();
    let u = randn_f32(&mut rng, gx.len(), 1.0);
    let analytic: f64 = gx.iter().zip(&u).map(|(&a, &b)| a as f64 * b as f64).sum();
    let xv = x.to_vec().unwrap();
    let at = |s: f32| {
        let v: Vec<f32> = xv.iter().zip(&u).map(|(&p, &d)| p + s * 1e-3 * d).collect();
        loss_of(&layer, &Tensor::from_slice(&be, &v, [b, t, 24]).unwrap(), &r, &inp)
    };
    let numeric = (at(1.0) - at(-1.0)) / 2e-3;
    assert!(
        (numeric - analytic).abs() <= 1e-3 + 1e-2 * analytic.abs(),
        "dx: analytic {analytic:e}, numeric {numeric:e}"
    );
}

#[test]
fn layer_gradients_match_finite_differences_llama() {
    check_layer_grads(false, false);
}

#[test]
fn layer_gradients_match_finite_differences_gemma() {
    check_layer_grads(true, false);
}

#[test]
fn checkpointed_layer_gradients_match_finite_differences() {
    check_layer_grads(false, true);
}

/// A 3-layer stack: gradients with and without activation checkpointing are identical.
#[test]
fn checkpointing_gives_identical_gradients() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(4);
    let cfg = small_cfg(false);
    let mut layers = Vec::new();
    for l in 0..3 {
        let mut layer =
            DecoderLayer::random(&be, &cfg, &format!("l{l}"), &ALL, &lora_cfg(), &FrozenStore::Dense, &mut rng)
                .unwrap();
        perturb_b(&mut layer, &mut rng);
        layers.push(Arc::new(layer));
    }
    let (b, t) = (2, 6);
    let x = Tensor::from_slice(&be, &randn_f32(&mut rng, b * t * 24, 1.0), [b, t, 24]).unwrap();
    let head = Weight::Dense(Tensor::from_slice(&be, &randn_f32(&mut rng, 11 * 24, 0.3), [11, 24]).unwrap());
    let targets: Vec<i32> = (0..b * t).map(|i| if i % 5 == 0 { -100 } else { (i % 11) as i32 }).collect();
    let inp = inputs(b, t);
    let run = |ckpt: bool| {
        let mut tape = Tape::new();
        let mut h = x.clone();
        for layer in &layers {
            h = if ckpt {
                forward_checkpointed(&mut tape, layer, &h, &inp).unwrap()
            } else {
                layer.forward(&mut tape, &h, &inp).unwrap()
            };
        }
        let n_nodes = tape.len();
        let loss =
            ops::linear_cross_entropy(&mut tape, &h.reshape([b * t, 24]).unwrap(), &head, &targets, None).unwrap();
        let l = loss.loss.to_vec().unwrap()[0];
        (l, n_nodes, tape.backward(&loss.loss).unwrap())
    };
    let (l0, n0, g0) = run(false);
    let (l1, n1, g1) = run(true);
    assert_eq!(l0, l1, "loss differs with checkpointing");
    assert_eq!(n1, 3, "checkpointing keeps one node per layer");
    assert!(n0 > 3 * 20, "a plain forward records every op ({n0})");
    for layer in &layers {
        for p in layer.params() {
            let a = be.download(g0.get_param(p).unwrap()).unwrap();
            let c = be.download(g1.get_param(p).unwrap()).unwrap();
            assert_eq!(a, c, "{}: gradients differ with checkpointing", p.name);
        }
    }
}

/// Exact count of trainable scalars: layers · Σ_targets r · (d_in + d_out) (mlx-lm test_finetune.py).
#[test]
fn trainable_count_is_exact() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(5);
    let cfg = small_cfg(false);
    let r = 4;
    let (c, q, kv, f) = (24, 4 * 8, 2 * 8, 40);
    let per_layer = r * ((c + q) + (c + kv) + (c + kv) + (q + c) + (c + f) + (c + f) + (f + c));
    let layers: Vec<_> = (0..3)
        .map(|l| {
            DecoderLayer::random(&be, &cfg, &format!("l{l}"), &ALL, &lora_cfg(), &FrozenStore::Dense, &mut rng).unwrap()
        })
        .collect();
    let total: usize = layers.iter().flat_map(|l| l.params()).map(|p| p.elem_count()).sum();
    assert_eq!(total, 3 * per_layer);
    let names: Vec<String> = layers[1].params().iter().map(|p| p.name.clone()).collect();
    assert!(
        names.contains(&"l1.self_attn.q_proj.lora_A".to_string())
            && names.contains(&"l1.mlp.down_proj.lora_B".to_string()),
        "{names:?}"
    );
    // DoRA adds one magnitude per output row of each target.
    let dora = LoraConfig { use_dora: true, ..lora_cfg() };
    let layer = DecoderLayer::random(&be, &cfg, "l0", &ALL, &dora, &FrozenStore::Dense, &mut rng).unwrap();
    let total: usize = layer.params().iter().map(|p| p.elem_count()).sum();
    assert_eq!(total, per_layer + (q + kv + kv + c + f + f + c));
}

#[test]
fn backward_without_trainable_input_is_an_error() {
    let be = CpuBackend::new();
    let x = Tensor::from_slice(&be, &[1.0, 2.0], [2]).unwrap();
    let err = Tape::new().backward(&x).unwrap_err().to_string();
    assert!(err.contains("does not depend on any trainable parameter"), "{err}");
}

#[test]
fn shape_errors_name_the_op() {
    let be = CpuBackend::new();
    let mut tape = Tape::new();
    let a = Tensor::from_slice(&be, &[1.0; 6], [2, 3]).unwrap();
    let b = Tensor::from_slice(&be, &[1.0; 6], [3, 2]).unwrap();
    let e = ops::add(&mut tape, &a, &b).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
    let w = Weight::Dense(Tensor::from_slice(&be, &[1.0; 8], [2, 4]).unwrap());
    let e = ops::linear(&mut tape, &a, &w, None).unwrap_err().to_string();
    assert!(e.contains("linear"), "{e}");
    let p = Param::new("p", a.clone());
    let e =
        ops::linear_cross_entropy(&mut tape, &p.t, &Weight::Dense(b.clone()), &[0, 5], None).unwrap_err().to_string();
    assert!(e.contains("linear_cross_entropy"), "{e}");
    assert!(Tensor::from_slice(&be, &[1.0; 5], [2, 3]).is_err());
    assert!(a.reshape([4, 2]).is_err());
}

/// Full tuning: every weight trainable (norms, dense projections, the tied embedding, which gets
/// gradient from both the lookup and the LM head). Gradients exist for exactly these and match
/// directional finite differences through the whole model loss.
#[test]
fn full_tuning_gradients_match_finite_differences() {
    use loraforge::model::{Batch, Proj, Transformer};
    let be = CpuBackend::new();
    let mut rng = Rng::new(11);
    let cfg = small_cfg(true); // Gemma variant: q/k norms and post norms too
    let vocab = 13;
    let mut model = Transformer::random(&be, &cfg, 2, vocab, &[], &lora_cfg(), &FrozenStore::Dense, &mut rng).unwrap();
    let track = |t: &mut Tensor<CpuBackend>| *t = t.track();
    let mut vars = Vec::new();
    if let Weight::Dense(t) = &mut model.embed {
        track(t);
        vars.push(("embed", t.var().unwrap()));
    }
    track(&mut model.norm);
    vars.push(("final norm", model.norm.var().unwrap()));
    for layer in model.layers.iter_mut() {
        let l = Arc::get_mut(layer).unwrap();
        for t in [&mut l.attn_norm, &mut l.ffn_norm]
            .into_iter()
            .chain([&mut l.q_norm, &mut l.k_norm, &mut l.post_attn_norm, &mut l.post_ffn_norm].into_iter().flatten())
        {
            track(t);
            vars.push(("norm", t.var().unwrap()));
        }
        for p in [
            &mut l.q_proj,
            &mut l.k_proj,
            &mut l.v_proj,
            &mut l.o_proj,
            &mut l.gate_proj,
            &mut l.up_proj,
            &mut l.down_proj,
        ] {
            if let Proj::Frozen { w: Weight::Dense(t), .. } = p {
                track(t);
                vars.push(("proj", t.var().unwrap()));
            }
        }
    }
    // Norm weights of 0 in the (1 + w) form would hide the weight path: give them values.
    let rows: Vec<Vec<u32>> = (0..2).map(|_| (0..6).map(|_| rng.below(vocab) as u32).collect()).collect();
    let batch = Batch::causal_lm(&rows).unwrap();
    let loss_of = |m: &Transformer<CpuBackend>| {
        m.loss(&mut Tape::new(), &batch, false, Some(0)).unwrap().loss.to_vec().unwrap()[0] as f64
    };
    let mut tape = Tape::new();
    let out = model.loss(&mut tape, &batch, true, Some(0)).unwrap();
    let grads = tape.backward(&out.loss).unwrap();
    drop(out);
    assert_eq!(grads.len(), vars.len(), "a gradient for every trainable weight and nothing else");
    assert_eq!(vars.len(), 2 + 2 * (6 + 7));

    // Directional finite differences on the embedding, the final norm, layer 0's attention norm
    // and layer 1's down projection (f32 forward, h = 1e-3: see check_layer_grads).
    type Getter = fn(&mut Transformer<CpuBackend>) -> &mut Tensor<CpuBackend>;
    let picks: [(&str, Getter); 4] = [
        ("embed", |m| match &mut m.embed {
            Weight::Dense(t) => t,
            _ => unreachable!(),
        }),
        ("final norm", |m| &mut m.norm),
        ("layer 0 attn_norm", |m| &mut Arc::get_mut(&mut m.layers[0]).unwrap().attn_norm),
        ("layer 1 down_proj", |m| match &mut Arc::get_mut(&mut m.layers[1]).unwrap().down_proj {
            Proj::Frozen { w: Weight::Dense(t), .. } => t,
            _ => unreachable!(),
        }),
    ];
    for (name, get) in picks {
        let t = get(&mut model).clone();
        let g = be.download(grads.get(t.var().unwrap()).unwrap()).unwrap();
        let orig = t.to_vec().unwrap();
        // Step relative to the tensor's scale: embeddings have std 0.02, and an absolute step of
        // 1e-3 into the first RMSNorm is curvature-dominated (measured: converges only at 3e-4).
        let rms = (orig.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / orig.len() as f64).sqrt() as f32;
        let u = randn_f32(&mut rng, orig.len(), rms.max(1e-2));
        let analytic: f64 = g.iter().zip(&u).map(|(&a, &b)| a as f64 * b as f64).sum();
        let h = 1e-3f32;
        let mut at = |s: f32| {
            let v: Vec<f32> = orig.iter().zip(&u).map(|(&p, &d)| p + s * h * d).collect();
            *get(&mut model) = Tensor::from_slice(&be, &v, t.shape().clone()).unwrap();
            loss_of(&model)
        };
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * h as f64);
        *get(&mut model) = t;
        assert!(
            (numeric - analytic).abs() <= 1e-4 + 1e-2 * analytic.abs(),
            "{name}: analytic {analytic:e}, numeric {numeric:e}"
        );
    }
}

#[test]
fn memory_accounting_tracks_current_and_peak() {
    let be = CpuBackend::new();
    let before = be.memory();
    let a = Tensor::from_slice(&be, &[0.0; 1000], [1000]).unwrap();
    let b = Tensor::from_slice(&be, &[0.0; 500], [500]).unwrap();
    assert_eq!(be.memory().current - before.current, 6000);
    drop(a);
    assert_eq!(be.memory().current - before.current, 2000);
    assert!(be.memory().peak >= before.current + 6000);
    drop(b);
    assert_eq!(be.memory().current, before.current);
}
