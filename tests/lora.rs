//! LoRA invariants (mlx-lm test_finetune.py, torchtune recipe tests): an untrained adapter is
//! bit-identical to the base, merging matches the unmerged forward, scales follow rsLoRA, DoRA
//! starts at the base and trains its magnitude, dropout is reproducible, and AdamW moves only
//! what is trainable.

mod common;

use common::*;
use loraforge::backend::{Backend, CpuBackend};
use loraforge::lora::{LoraConfig, LoraLinear};
use loraforge::ops::{self, Weight};
use loraforge::quant::F32Matrix;
use loraforge::rng::Rng;
use loraforge::train::{AdamW, AdamWConfig};
use loraforge::{Tape, Tensor};
use std::sync::Arc;

fn frozen(be: &CpuBackend, w: &[f32], rows: usize, cols: usize) -> Weight<CpuBackend> {
    Weight::Frozen(Arc::new(be.upload_quant(Arc::new(F32Matrix { data: w.to_vec(), rows, cols })).unwrap()))
}

fn setup(
    cfg: &LoraConfig,
    dense: bool,
    seed: u64,
) -> (CpuBackend, LoraLinear<CpuBackend>, Tensor<CpuBackend>, Vec<f32>) {
    let be = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let (d_out, d_in, n) = (13, 29, 7);
    let w = randn_f32(&mut rng, d_out * d_in, 0.3);
    let base = if dense {
        Weight::Dense(Tensor::from_slice(&be, &w, [d_out, d_in]).unwrap())
    } else {
        frozen(&be, &w, d_out, d_in)
    };
    let bias = Tensor::from_slice(&be, &randn_f32(&mut rng, d_out, 0.1), [d_out]).unwrap();
    let lora = LoraLinear::new(&be, "model.layers.0.self_attn.q_proj", base, Some(bias), cfg, &mut rng).unwrap();
    let x = Tensor::from_slice(&be, &randn_f32(&mut rng, n * d_in, 1.0), [n, d_in]).unwrap();
    (be, lora, x, w)
}

#[test]
fn untrained_adapter_is_bit_identical_to_base() {
    for dense in [true, false] {
        for dropout in [0.0, 0.3] {
            let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout, ..Default::default() };
            let (_be, lora, x, _) = setup(&cfg, dense, 1);
            let mut t = Tape::new();
            let base = ops::linear(&mut t, &x, &lora.base, lora.bias.as_ref()).unwrap().to_vec().unwrap();
            let y = lora.forward(&mut t, &x, Some(42)).unwrap();
            assert!(y.is_tracked());
            assert_eq!(
                y.to_vec().unwrap(),
                base,
                "dense={dense} dropout={dropout}: B = 0 must give the base output exactly"
            );
        }
    }
}

#[test]
fn kaiming_uniform_a_and_zero_b() {
    let cfg = LoraConfig { rank: 8, alpha: 16.0, ..Default::default() };
    let (_be, lora, _, _) = setup(&cfg, true, 2);
    let a = lora.a.t.to_vec().unwrap();
    let bound = 1.0 / (29f32).sqrt();
    assert!(a.iter().all(|v| v.abs() <= bound));
    // Uniform on [-b, b] has std b/√3; 232 samples: allow ±25%.
    let std = (a.iter().map(|v| (v * v) as f64).sum::<f64>() / a.len() as f64).sqrt();
    assert!((std / (bound as f64 / 3f64.sqrt()) - 1.0).abs() < 0.25, "std {std}");
    assert!(lora.b.t.to_vec().unwrap().iter().all(|&v| v == 0.0));
    assert_eq!(lora.a.t.dims(), &[8, 29]);
    assert_eq!(lora.b.t.dims(), &[13, 8]);
}

#[test]
fn scale_follows_rslora() {
    let plain = LoraConfig { rank: 16, alpha: 32.0, ..Default::default() };
    assert_eq!(plain.scale(), 2.0);
    let rs = LoraConfig { use_rslora: true, ..plain };
    assert_eq!(rs.scale(), 8.0);
}

fn randomize_b(lora: &mut LoraLinear<CpuBackend>, seed: u64) {
    let mut rng = Rng::new(seed);
    let n = lora.b.elem_count();
    let v = randn_f32(&mut rng, n, 0.2);
    lora.b.storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
}

#[test]
fn merged_weight_matches_unmerged_forward() {
    for (dora, dense) in [(false, true), (false, false), (true, true), (true, false)] {
        let cfg = LoraConfig { rank: 4, alpha: 8.0, use_dora: dora, ..Default::default() };
        let (be, mut lora, x, _) = setup(&cfg, dense, 3);
        randomize_b(&mut lora, 9);
        if let Some(m) = lora.magnitude.as_mut() {
            let v: Vec<f32> = m.t.to_vec().unwrap().iter().map(|v| v * 1.3).collect();
            m.storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
        }
        let mut t = Tape::new();
        let y = lora.forward(&mut t, &x, Some(0)).unwrap().to_vec().unwrap();
        let merged = Weight::Dense(lora.merged_weight(&be).unwrap());
        let ym = ops::linear(&mut Tape::new(), &x, &merged, lora.bias.as_ref()).unwrap().to_vec().unwrap();
        // Two f32 summation orders over d_in = 29 and r = 4 terms of size ~1: ~1e-6 observed.
        assert_close(&ym, &y, Tol::F32, &format!("merge dora={dora} dense={dense}"));
    }
}

#[test]
fn dora_starts_at_the_base_and_trains_its_magnitude() {
    let cfg = LoraConfig { rank: 4, alpha: 8.0, use_dora: true, ..Default::default() };
    let (_be, mut lora, x, w) = setup(&cfg, false, 4);
    // m = ‖W₀‖ per row at init.
    let m = lora.magnitude.as_ref().unwrap().t.to_vec().unwrap();
    for (r, row) in w.chunks(29).enumerate() {
        let n = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        assert!((m[r] as f64 - n).abs() <= 1e-6 * n);
    }
    let mut t = Tape::new();
    let base = ops::linear(&mut t, &x, &lora.base, lora.bias.as_ref()).unwrap().to_vec().unwrap();
    let y = lora.forward(&mut t, &x, Some(0)).unwrap().to_vec().unwrap();
    // m / ‖W₀‖ rounds to 1 ± 1 ulp: the base output within one f32 rounding.
    assert_close(&y, &base, Tol { abs: 1e-6, rel: 1e-6 }, "dora at init");
    drop(t); // the tape holds the parameters until it is gone

    // Gradient of L = <y, r> w.r.t. the magnitude: directional finite differences.
    randomize_b(&mut lora, 5);
    let mut rng = Rng::new(6);
    let r = randn_f32(&mut rng, 7 * 13, 1.0);
    let loss = |l: &LoraLinear<CpuBackend>| -> f64 {
        let y = l.forward(&mut Tape::new(), &x, Some(0)).unwrap().to_vec().unwrap();
        y.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let mut t = Tape::new();
    let y = lora.forward(&mut t, &x, Some(0)).unwrap();
    let grads = t.backward_from(x.backend(), y.var().unwrap(), x.backend().upload(&r).unwrap()).unwrap();
    drop(y);
    assert_eq!(grads.len(), 3, "A, B and the magnitude");
    // A and B: the row norm is detached (PEFT, the paper's §4.3), so finite differences, which
    // also move the norm, are not their gradient by design; they must exist and be finite.
    for which in 0..2 {
        let g = x.backend().download(grads.get_param(lora.params()[which]).unwrap()).unwrap();
        assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0));
    }
    // The magnitude's gradient is exact: directional finite differences.
    {
        let which = 2;
        let p = &lora.params()[which];
        let g = x.backend().download(grads.get_param(p).unwrap()).unwrap();
        let u = randn_f32(&mut rng, g.len(), 1.0);
        let analytic: f64 = g.iter().zip(&u).map(|(&a, &b)| a as f64 * b as f64).sum();
        let orig = p.t.to_vec().unwrap();
        let h = 1e-2f32;
        let mut at = |s: f32| {
            let v: Vec<f32> = orig.iter().zip(&u).map(|(&a, &d)| a + s * h * d).collect();
            lora.params_mut()[which].storage_mut().unwrap().as_mut_slice().copy_from_slice(&v);
            loss(&lora)
        };
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * h as f64);
        lora.params_mut()[which].storage_mut().unwrap().as_mut_slice().copy_from_slice(&orig);
        // f32 forward, h = 1e-2: see tests/tape.rs for the tolerance's reasoning.
        assert!(
            (numeric - analytic).abs() <= 1e-3 + 1e-2 * analytic.abs(),
            "magnitude: analytic {analytic:e} numeric {numeric:e}"
        );
    }
}

#[test]
fn adapter_dropout_is_reproducible_and_seeded() {
    let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.5, ..Default::default() };
    let (_be, mut lora, x, _) = setup(&cfg, true, 7);
    randomize_b(&mut lora, 8);
    let run = |seed: Option<u64>| lora.forward(&mut Tape::new(), &x, seed).unwrap().to_vec().unwrap();
    assert_eq!(run(Some(1)), run(Some(1)));
    assert_ne!(run(Some(1)), run(Some(2)));
    // Evaluation (no seed) has no dropout: the output is the merged layer's.
    let be = x.backend().clone();
    let merged = Weight::Dense(lora.merged_weight(&be).unwrap());
    let want = ops::linear(&mut Tape::new(), &x, &merged, lora.bias.as_ref()).unwrap().to_vec().unwrap();
    assert_close(&run(None), &want, Tol::F32, "eval forward without dropout");
    assert_ne!(run(None), run(Some(1)));
}

#[test]
fn adamw_updates_only_trainable_params() {
    let cfg = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let (be, mut lora, x, w) = setup(&cfg, true, 10);
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-2, ..Default::default() });
    let targets: Vec<i32> = (0..7).map(|i| i * 3 % 13).collect();
    let head = Weight::Dense(Tensor::from_slice(&be, &randn_f32(&mut Rng::new(1), 13 * 13, 0.5), [13, 13]).unwrap());
    let mut losses = Vec::new();
    for _ in 0..20 {
        let mut t = Tape::new();
        let y = lora.forward(&mut t, &x, Some(0)).unwrap();
        let out = ops::linear_cross_entropy(&mut t, &y, &head, &targets, None).unwrap();
        losses.push(out.loss.to_vec().unwrap()[0]);
        let mut grads = t.backward(&out.loss).unwrap();
        drop(out);
        drop(y);
        let lr = opt.cfg.lr;
        let stats = opt.step(&be, &mut lora.params_mut(), &mut grads, lr).unwrap();
        assert!(stats.applied && stats.grad_norm.is_finite());
    }
    assert!(losses[19] < losses[0] * 0.9, "loss did not go down: {losses:?}");
    assert_eq!(opt.state_len(&be), 2 * lora.trainable_count(), "moments exist only for A and B");
    // The frozen base is untouched.
    match &lora.base {
        Weight::Dense(t) => assert_eq!(t.to_vec().unwrap(), w),
        Weight::Frozen(_) => unreachable!(),
    }
}
