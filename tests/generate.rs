//! Generation: the KV-cached forward against a full recompute (`Transformer::logits` on prompt +
//! generated ids) at every step, on the real fixture models and on small random models with LoRA
//! and sliding windows; greedy generation against the fixture's reference next tokens; the sampler
//! (greedy limits, top-k/top-p/min-p sets, repetition penalty, seeds); stop ids and the callback.
//! The fixture models need `models/fetch.sh`; a missing model is a failure.

mod common;

use common::*;
use loraforge::backend::cpu::rope::RopeConfig;
use loraforge::backend::CpuBackend;
use loraforge::generate::{
    apply_repetition_penalty, argmax, candidates, generate, GenerateConfig, KvCache, Sampler, Session,
};
use loraforge::lora::LoraConfig;
use loraforge::model::{load_gguf, AdapterSpec, Batch, BlockConfig, FrozenStore, Proj, Transformer};
use loraforge::rng::Rng;
use loraforge::{Param, Tensor};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    token_ids: Vec<u32>,
    last_top5: Top5,
}

#[derive(Deserialize)]
struct Top5 {
    ids: Vec<u32>,
}

fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var("LORAFORGE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/loraforge/models"));
    let p = dir.join(file);
    assert!(p.exists(), "{} is missing: run models/fetch.sh first", p.display());
    p
}

fn reference(fixture: &str) -> Reference {
    let f = std::fs::File::open(fixtures_dir().join(fixture)).unwrap();
    serde_json::from_reader(std::io::BufReader::new(f)).unwrap()
}

/// Max |Δ| over the vocabulary, and the largest |logit| (to put the error in scale).
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    (d, b.iter().map(|x| x.abs()).fold(0.0, f32::max))
}

/// Prefills `prompt`, then feeds `steps` greedy tokens one by one; at every step the cached logits
/// must match the last row of a full recompute within `tol` (max abs). Returns the max error seen.
fn cached_vs_full(model: &Transformer<CpuBackend>, prompt: &[u32], steps: usize, tol: f32) -> f32 {
    let v = model.vocab_size;
    let mut s = Session::new(model);
    let mut ids = prompt.to_vec();
    let mut z = s.prefill(prompt).unwrap();
    let mut worst = 0.0f32;
    for step in 0..=steps {
        let full = model.logits(&Batch::single(&ids)).unwrap();
        let want = &full[(ids.len() - 1) * v..];
        let (err, scale) = max_diff(&z, want);
        worst = worst.max(err);
        assert!(
            err <= tol,
            "step {step} (position {}): max |Δlogit| = {err:e} (|logit| up to {scale}), allowed {tol:e}",
            ids.len() - 1
        );
        assert_eq!(s.pos(), ids.len());
        if step == steps {
            break;
        }
        let next = argmax(&z);
        ids.push(next);
        z = s.step(next).unwrap();
    }
    worst
}

// ---- (a) cached forward == full recompute

/// SmolLM2 (Q4_1, 30 layers, GQA 9/3): the two paths run the same quantized matmuls on 1 vs T rows
/// and different attention kernels (both f32); logits are up to ~35 in size. Measured max error
/// 5.9e-5 over 8 steps from the 18-token `code` prompt (f32 rounding, ~3e-6 relative): allow 1e-3.
#[test]
fn cached_logits_match_full_recompute_smollm2() {
    let be = CpuBackend::new();
    let (model, _) = load_gguf(&be, model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), &AdapterSpec::default()).unwrap();
    let r = reference("smollm2-135m-instruct/reference.json");
    let p = r.prompts.iter().find(|p| p.name == "code").unwrap();
    let worst = cached_vs_full(&model, &p.token_ids, 8, 1e-3);
    println!("smollm2: cached vs full max |Δlogit| = {worst:.2e}");
}

/// Gemma 3 (sliding layers with window 512 and their own RoPE base, q/k norms, post norms, embedding
/// scale, 262k vocab). The window is not reached here (see the random-model test for that).
/// Measured 3.8e-5 over 6 steps; same tolerance and reasoning as SmolLM2.
#[test]
fn cached_logits_match_full_recompute_gemma3() {
    let be = CpuBackend::new();
    let (model, cfg) = load_gguf(&be, model_path("gemma-3-270m-q4_k_m.gguf"), &AdapterSpec::default()).unwrap();
    assert!(model.layers.iter().any(|l| l.cfg.sliding_window.is_some()), "gemma3 should have sliding layers");
    assert_eq!(cfg.arch, "gemma3");
    let r = reference("gemma3-270m/reference.json");
    let p = r.prompts.iter().find(|p| p.name == "count").unwrap();
    let worst = cached_vs_full(&model, &p.token_ids, 6, 1e-3);
    println!("gemma3: cached vs full max |Δlogit| = {worst:.2e}");
}

/// A small Gemma-like block: GQA 4/2, D = 8, q/k norms, post norms, GeGLU, attention soft-cap.
fn small_block(window: Option<usize>) -> BlockConfig {
    BlockConfig {
        hidden_size: 24,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        intermediate_size: 40,
        rms_norm_eps: 1e-6,
        norm_add_one: false,
        gelu: true,
        rope: RopeConfig::new(8, 10000.0),
        attn_scale: 1.0 / 8f32.sqrt(),
        sliding_window: window,
        attn_softcap: Some(50.0),
        qk_norm: true,
        post_norms: true,
    }
}

/// A random 4-layer model, LoRA on every projection with B randomised (so the adapters change the
/// output), layers 0 and 2 sliding with `window`, layers 1 and 3 global (Gemma's mix).
fn small_model(window: usize, dropout: f32) -> Transformer<CpuBackend> {
    let be = CpuBackend::new();
    let mut rng = Rng::new(5);
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let lora = LoraConfig { rank: 3, alpha: 6.0, dropout, ..LoraConfig::default() };
    let mut m =
        Transformer::random(&be, &small_block(Some(window)), 4, 53, &targets, &lora, &FrozenStore::Dense, &mut rng)
            .unwrap();
    m.embed_scale = Some(24f32.sqrt());
    m.final_softcap = Some(30.0);
    for (l, layer) in m.layers.iter_mut().enumerate() {
        let layer = Arc::get_mut(layer).unwrap();
        if l % 2 == 1 {
            layer.cfg.sliding_window = None;
        }
        for p in [
            &mut layer.q_proj,
            &mut layer.k_proj,
            &mut layer.v_proj,
            &mut layer.o_proj,
            &mut layer.gate_proj,
            &mut layer.up_proj,
            &mut layer.down_proj,
        ] {
            let Proj::Lora(l) = p else { panic!("every projection has LoRA") };
            let b = randn_f32(&mut rng, l.d_out * l.cfg.rank, 0.3);
            l.b = Param::new(l.b.name.clone(), Tensor::from_slice(&be, &b, [l.d_out, l.cfg.rank]).unwrap());
        }
    }
    m
}

/// The window and the cache trimming: window 4, 40 positions (the sliding layers trim their cache
/// several times), prompts fed in one chunk, and a second chunk after some steps. Dense f32 weights,
/// logits ~ 1: measured 2.1e-7; allow 1e-4 (still 500x below any logit gap that would matter).
#[test]
fn cached_logits_match_full_recompute_sliding_window_lora() {
    let window = 4;
    let m = small_model(window, 0.0);
    let prompt: Vec<u32> = (0..7).map(|i| (i * 13 % 53) as u32).collect();
    let worst = cached_vs_full(&m, &prompt, 33, 1e-4);
    println!("random sliding-window model: cached vs full max |Δlogit| = {worst:.2e}");

    // Chunked prefill: 7 tokens, 5 steps, then a chunk of 6 tokens in one call.
    let mut s = Session::new(&m);
    let mut ids = prompt.clone();
    let mut z = s.prefill(&prompt).unwrap();
    for _ in 0..5 {
        let t = argmax(&z);
        ids.push(t);
        z = s.step(t).unwrap();
    }
    let chunk = [3u32, 50, 7, 7, 1, 22];
    ids.extend_from_slice(&chunk);
    let z = s.prefill(&chunk).unwrap();
    let full = m.logits(&Batch::single(&ids)).unwrap();
    assert_close(&z, &full[(ids.len() - 1) * 53..], Tol { abs: 1e-4, rel: 0.0 }, "chunked prefill");

    // Memory bound: sliding layers hold at most 2 * window rows, global ones every position.
    for (l, kv) in s.cache.layers.iter().enumerate() {
        if l % 2 == 0 {
            assert!(kv.rows() < 2 * window && kv.pos0 > 0, "layer {l}: {} rows from {}", kv.rows(), kv.pos0);
        } else {
            assert_eq!((kv.rows(), kv.pos0), (ids.len(), 0), "layer {l}");
        }
        assert_eq!(kv.pos0 + kv.rows(), ids.len());
    }
    let row_bytes = 2 * 2 * 8 * 4; // K and V, KV = 2 heads x D = 8 floats each
    let want_bytes: usize = s.cache.layers.iter().map(|kv| kv.rows() * row_bytes).sum();
    assert_eq!(s.cache_bytes(), want_bytes);
}

/// Adapter dropout is a training-time thing: the cached forward ignores it (same logits with
/// dropout 0.5 in the adapters' config as with 0).
#[test]
fn cached_forward_ignores_adapter_dropout() {
    let (a, b) = (small_model(4, 0.0), small_model(4, 0.5));
    let ids = [1u32, 2, 3, 5, 8, 13];
    let za = Session::new(&a).prefill(&ids).unwrap();
    let zb = Session::new(&b).prefill(&ids).unwrap();
    assert_eq!(za, zb);
    // And the adapters do matter: with B zeroed the logits move.
    let c = Transformer::random(
        &CpuBackend::new(),
        &small_block(Some(4)),
        4,
        53,
        &[],
        &LoraConfig::default(),
        &FrozenStore::Dense,
        &mut Rng::new(5),
    )
    .unwrap();
    let zc = Session::new(&c).prefill(&ids).unwrap();
    assert!(max_diff(&za, &zc).0 > 1e-3, "LoRA adapters had no effect on the cached forward");
}

// ---- (b) greedy generation on the fixture

/// The first greedy token after each fixture prompt is the reference's top-1 next token (HF
/// transformers on the same weights). Margins between top-1 and top-2 there are >= 0.03, far above
/// our measured 8e-5 logit error, so a flip would be a bug.
#[test]
fn greedy_first_token_matches_reference_smollm2() {
    let be = CpuBackend::new();
    let (model, _) = load_gguf(&be, model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), &AdapterSpec::default()).unwrap();
    let r = reference("smollm2-135m-instruct/reference.json");
    let cfg = GenerateConfig { max_new_tokens: 20, ..GenerateConfig::default() };
    for p in &r.prompts {
        let mut streamed = Vec::new();
        let out = generate(&model, &p.token_ids, &cfg, &mut |t| {
            streamed.push(t);
            true
        })
        .unwrap();
        println!("{}: {:?}", p.name, out);
        assert_eq!(out.len(), 20, "{}", p.name);
        assert_eq!(streamed, out, "{}: streamed tokens differ from the returned ones", p.name);
        assert_eq!(out[0], p.last_top5.ids[0], "{}: first greedy token", p.name);
    }
}

/// Gemma 3 through `generate` (sliding layers, 262k vocab): the first greedy token after each
/// fixture prompt is the reference's top-1 (margins >= 0.5 there). Two tokens, to keep it quick.
#[test]
fn greedy_first_token_matches_reference_gemma3() {
    let be = CpuBackend::new();
    let (model, _) = load_gguf(&be, model_path("gemma-3-270m-q4_k_m.gguf"), &AdapterSpec::default()).unwrap();
    let r = reference("gemma3-270m/reference.json");
    let cfg = GenerateConfig { max_new_tokens: 2, ..GenerateConfig::default() };
    for p in &r.prompts {
        let out = generate(&model, &p.token_ids, &cfg, &mut |_| true).unwrap();
        assert_eq!(out[0], p.last_top5.ids[0], "{}: first greedy token", p.name);
    }
}

// ---- (c) sampler

/// Hand-made logits over 6 tokens with a clear order: 2 > 4 > 0 > 5 > 1 > 3.
const Z: [f32; 6] = [1.0, -1.0, 3.0, -2.0, 2.0, 0.5];

#[test]
fn sampler_temperature_to_zero_and_top_k_one_are_greedy() {
    let mut rng = Rng::new(3);
    for trial in 0..20 {
        let z = randn_f32(&mut rng, 97, 2.0);
        let want = argmax(&z);
        let mut greedy = Sampler::new(&GenerateConfig { seed: trial, ..GenerateConfig::default() });
        assert_eq!(greedy.sample(&z, &[]), want);
        // T = 1e-3: a logit gap g becomes g / T, so any gap > 0.05 leaves the rest a mass below
        // 97 e^-50: the draw is the argmax for every u < 1.
        let mut cold = Sampler::new(&GenerateConfig { temperature: 1e-3, seed: trial, ..GenerateConfig::default() });
        let mut sorted = z.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 0.05 {
            assert_eq!(cold.sample(&z, &[]), want, "trial {trial}");
        }
        let mut k1 =
            Sampler::new(&GenerateConfig { temperature: 1.5, top_k: 1, seed: trial, ..GenerateConfig::default() });
        for _ in 0..5 {
            assert_eq!(k1.sample(&z, &[]), want, "trial {trial}");
        }
    }
}

#[test]
fn sampler_top_k_top_p_min_p_sets() {
    // softmax(Z) ≈ [2: .621, 4: .228, 0: .084, 5: .051, 1: .011, 3: .004] (ordered), computed here.
    let e: Vec<f64> = Z.iter().map(|&z| (z as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
    let ids = |c: &[(u32, f64)]| c.iter().map(|x| x.0).collect::<Vec<_>>();

    assert_eq!(ids(&candidates(&Z, 1.0, 0, 1.0, 0.0)), vec![2, 4, 0, 5, 1, 3]);
    assert_eq!(ids(&candidates(&Z, 1.0, 3, 1.0, 0.0)), vec![2, 4, 0]);
    // top-p: the smallest prefix with mass >= p. p[2] alone is < 0.7; p[2] + p[4] >= 0.7.
    assert!(p[2] < 0.7 && p[2] + p[4] >= 0.7);
    assert_eq!(ids(&candidates(&Z, 1.0, 0, 0.7, 0.0)), vec![2, 4]);
    // p below p[2]: the top token alone reaches it.
    assert_eq!(ids(&candidates(&Z, 1.0, 0, 0.6, 0.0)), vec![2]);
    // Exactly the mass of the first two: they already reach p, the third is not needed.
    let p2 = (p[2] + p[4]) as f32 - 1e-6;
    assert_eq!(ids(&candidates(&Z, 1.0, 0, p2, 0.0)), vec![2, 4]);
    // Just above it: the third is needed.
    let p3 = (p[2] + p[4]) as f32 + 1e-4;
    assert_eq!(ids(&candidates(&Z, 1.0, 0, p3, 0.0)), vec![2, 4, 0]);
    // A tiny p keeps the top token only.
    assert_eq!(ids(&candidates(&Z, 1.0, 0, 1e-3, 0.0)), vec![2]);
    // min-p 0.1: keep p >= 0.1 * p_max, i.e. z >= z_max + ln 0.1 = 0.697: tokens 2, 4, 0.
    assert_eq!(ids(&candidates(&Z, 1.0, 0, 1.0, 0.1)), vec![2, 4, 0]);
    // Renormalised: top-k 2 gives p[2] / (p[2] + p[4]).
    let c = candidates(&Z, 1.0, 2, 1.0, 0.0);
    assert!((c[0].1 - p[2] / (p[2] + p[4])).abs() < 1e-12 && (c[0].1 + c[1].1 - 1.0).abs() < 1e-12);
    // Temperature 2 halves the logits: the distribution is softmax(Z / 2).
    let c = candidates(&Z, 2.0, 0, 1.0, 0.0);
    let e2: Vec<f64> = Z.iter().map(|&z| (z as f64 / 2.0).exp()).collect();
    let s2: f64 = e2.iter().sum();
    for &(id, q) in &c {
        assert!((q - e2[id as usize] / s2).abs() < 1e-12);
    }
    // Ties: the lower id first.
    assert_eq!(ids(&candidates(&[1.0, 2.0, 2.0, 0.0], 1.0, 2, 1.0, 0.0)), vec![1, 2]);
}

/// On a large vocabulary (where `candidates` sorts only a growing prefix), the kept set and its
/// probabilities equal a naive full sort + cut written out here, for top-p, min-p, top-k and none.
#[test]
fn sampler_prefix_sort_equals_full_sort() {
    let mut rng = Rng::new(21);
    let v = 5003;
    for (std, t, k, p, mp) in [
        (1.0, 1.0, 0, 0.9, 0.0),     // nucleus of thousands: the prefix grows 256 -> 1024 -> 4096 -> all
        (4.0, 0.7, 0, 0.5, 0.0),     // peaked: the first 256 are enough
        (1.0, 1.0, 0, 1.0, 0.2),     // min-p alone
        (2.0, 1.3, 300, 0.95, 0.01), // all three
        (1.0, 1.0, 0, 1.0, 0.0),     // nothing cut
    ] {
        let z = randn_f32(&mut rng, v, std);
        let got = candidates(&z, t, k, p, mp);
        // Naive: full sort by scaled logit (ties by id), top-k, softmax, top-p, min-p, renormalise.
        let mut c: Vec<(u32, f64)> = z.iter().enumerate().map(|(i, &x)| (i as u32, x as f64 / t as f64)).collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if k > 0 {
            c.truncate(k);
        }
        let m = c[0].1;
        let sum: f64 = c.iter().map(|x| (x.1 - m).exp()).sum();
        let probs: Vec<f64> = c.iter().map(|x| (x.1 - m).exp() / sum).collect();
        let mut n = c.len();
        if p < 1.0 {
            let mut mass = 0.0;
            n = probs
                .iter()
                .position(|&q| {
                    mass += q;
                    mass >= p as f64
                })
                .map_or(n, |i| i + 1);
        }
        if mp > 0.0 {
            n = n.min(probs.iter().take_while(|&&q| q >= mp as f64 * probs[0]).count().max(1));
        }
        let kept: f64 = probs[..n].iter().sum();
        assert_eq!(got.len(), n, "std {std} T {t} k {k} p {p} min_p {mp}");
        for (i, &(id, q)) in got.iter().enumerate() {
            assert_eq!(id, c[i].0, "rank {i}");
            assert!((q - probs[i] / kept).abs() < 1e-12, "rank {i}: {q} vs {}", probs[i] / kept);
        }
    }
}

/// Empirical frequencies of 20000 draws follow the top-k = 3 distribution (5 sigma of a binomial
/// with p <= 0.7 and n = 20000 is < 0.017).
#[test]
fn sampler_draws_follow_the_distribution() {
    let want = candidates(&Z, 1.0, 3, 1.0, 0.0);
    let mut s = Sampler::new(&GenerateConfig { temperature: 1.0, top_k: 3, seed: 9, ..GenerateConfig::default() });
    let mut counts = [0usize; 6];
    let n = 20000;
    for _ in 0..n {
        counts[s.sample(&Z, &[]) as usize] += 1;
    }
    for (id, p) in want {
        let f = counts[id as usize] as f64 / n as f64;
        assert!((f - p).abs() < 0.017, "token {id}: frequency {f}, probability {p}");
    }
    assert_eq!(counts[1] + counts[3] + counts[5], 0, "tokens outside the top 3 were drawn");
}

#[test]
fn sampler_repetition_penalty_arithmetic() {
    let mut z = Z.to_vec();
    // Token 2 twice: penalised once. 3 (negative) multiplied; 99 is outside the vocab: ignored.
    apply_repetition_penalty(&mut z, &[2, 3, 2, 99], 2.0);
    assert_eq!(z, vec![1.0, -1.0, 1.5, -4.0, 2.0, 0.5]);
    // Through the sampler, greedy: token 2 (3.0 → 1.5) loses to token 4 (2.0).
    let mut s = Sampler::new(&GenerateConfig { repetition_penalty: 2.0, ..GenerateConfig::default() });
    assert_eq!(s.sample(&Z, &[]), 2);
    assert_eq!(s.sample(&Z, &[2]), 4);
    // 1.0 changes nothing.
    let mut z = Z.to_vec();
    apply_repetition_penalty(&mut z, &[0, 1, 2, 3, 4, 5], 1.0);
    assert_eq!(z, Z.to_vec());
}

#[test]
fn sampler_seeds() {
    let mut rng = Rng::new(1);
    let z = randn_f32(&mut rng, 1000, 1.0);
    let draw = |seed: u64| {
        let mut s = Sampler::new(&GenerateConfig { temperature: 1.0, top_p: 0.95, seed, ..GenerateConfig::default() });
        (0..50).map(|_| s.sample(&z, &[])).collect::<Vec<_>>()
    };
    assert_eq!(draw(42), draw(42));
    // 50 draws from a ~1000-token distribution: two seeds agreeing everywhere has probability
    // ~ (max p)^50, far below 1e-30.
    assert_ne!(draw(42), draw(43));
}

#[test]
fn generate_config_is_validated() {
    let m = small_model(4, 0.0);
    for bad in [
        GenerateConfig { temperature: -1.0, ..GenerateConfig::default() },
        GenerateConfig { top_p: 0.0, ..GenerateConfig::default() },
        GenerateConfig { min_p: 1.5, ..GenerateConfig::default() },
        GenerateConfig { repetition_penalty: 0.0, ..GenerateConfig::default() },
    ] {
        assert!(generate(&m, &[1, 2], &bad, &mut |_| true).is_err(), "{bad:?}");
    }
    assert!(generate(&m, &[], &GenerateConfig::default(), &mut |_| true).is_err(), "empty prompt");
    assert!(generate(&m, &[53], &GenerateConfig::default(), &mut |_| true).is_err(), "id outside vocab");
}

// ---- stopping

#[test]
fn generate_stops_on_stop_ids_max_tokens_and_callback() {
    let m = small_model(4, 0.0);
    let prompt = [5u32, 9, 2];
    let base = GenerateConfig { max_new_tokens: 12, temperature: 0.8, seed: 7, ..GenerateConfig::default() };
    let all = generate(&m, &prompt, &base, &mut |_| true).unwrap();
    assert_eq!(all.len(), 12);
    // Reproducible with the same seed.
    assert_eq!(generate(&m, &prompt, &base, &mut |_| true).unwrap(), all);

    // A stop id: generation ends at its first occurrence, which is returned but not streamed.
    let stop = all[4];
    let first = all.iter().position(|&t| t == stop).unwrap();
    let mut streamed = Vec::new();
    let cfg = GenerateConfig { stop_ids: vec![stop], ..base.clone() };
    let out = generate(&m, &prompt, &cfg, &mut |t| {
        streamed.push(t);
        true
    })
    .unwrap();
    assert_eq!(out, all[..=first].to_vec());
    assert_eq!(streamed, all[..first].to_vec());

    // The callback stops after the token it returned false for.
    let mut n = 0;
    let out = generate(&m, &prompt, &base, &mut |_| {
        n += 1;
        n < 3
    })
    .unwrap();
    assert_eq!(out, all[..3].to_vec());

    // max_new_tokens = 0 generates nothing; 1 exactly one token.
    let zero = GenerateConfig { max_new_tokens: 0, ..base.clone() };
    assert!(generate(&m, &prompt, &zero, &mut |_| true).unwrap().is_empty());
    let one = GenerateConfig { max_new_tokens: 1, ..base.clone() };
    assert_eq!(generate(&m, &prompt, &one, &mut |_| true).unwrap(), all[..1].to_vec());
}

/// `KvCache::reserve` (what `generate` does with prompt + max_new_tokens): the same logits as a
/// cache that grows, and the buffers are sized once. Window-4 layers and global ones.
#[test]
fn reserved_cache_gives_the_same_logits() {
    let m = small_model(4, 0.0);
    let be = CpuBackend::new();
    let prompt: Vec<u32> = (0..9).map(|i| (i * 7 % 53) as u32).collect();
    let (mut grow, mut fixed) = (Session::new(&m), Session::new(&m));
    fixed.cache.reserve(&be, 9 + 80).unwrap();
    let (mut a, mut b) = (grow.prefill(&prompt).unwrap(), fixed.prefill(&prompt).unwrap());
    for _ in 0..80 {
        assert_eq!(a, b);
        let t = argmax(&a);
        (a, b) = (grow.step(t).unwrap(), fixed.step(t).unwrap());
    }
    assert_eq!(a, b);
    assert_eq!(grow.cache_bytes(), fixed.cache_bytes());
    for (l, (g, f)) in grow.cache.layers.iter().zip(&fixed.cache.layers).enumerate() {
        if g.window.is_none() {
            // 89 positions: the reserved buffers were never regrown; the growing ones doubled.
            assert_eq!((f.rows(), f.capacity(), g.capacity()), (89, 89, 128), "layer {l}");
        }
    }
}

/// A cache built for another model is refused, not indexed out of bounds.
#[test]
fn cache_mismatch_is_an_error() {
    let m = small_model(4, 0.0);
    let mut c = KvCache::new(&m);
    c.layers.pop();
    assert!(loraforge::generate::forward_cached(&m, &mut c, &[1]).is_err());
}
