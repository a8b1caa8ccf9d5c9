//! Real models against PyTorch/transformers (../shared/fixtures, README there): the GGUF fixture
//! models are loaded as they are (quantized blocks, memory-mapped) and their logits compared with
//! transformers' f32 forward of the same dequantized weights, prompt by prompt.
//! Needs `models/fetch.sh` (the test command runs it first); a missing model is a failure.

mod common;

use common::*;
use loraforge::backend::CpuBackend;
use loraforge::model::{load_gguf, AdapterSpec, Batch};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    token_ids: Vec<u32>,
    last_logits: Vec<f32>,
    positions: Positions,
}

#[derive(Deserialize)]
struct Positions {
    top5_ids: Vec<Vec<u32>>,
    top5_logits: Vec<Vec<f32>>,
}

fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var("LORAFORGE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/loraforge/models"));
    let p = dir.join(file);
    assert!(p.exists(), "{} is missing: run models/fetch.sh first", p.display());
    p
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
}

/// Compares every prompt: last-position logits within `tol` (max abs), and the top-1 token at every
/// position equal to the reference's, unless the reference's own top-2 margin there is below
/// `tie` (then either of the two near-tied tokens is accepted and the case is counted).
fn check(model_file: &str, fixture: &str, tol: f32) {
    let be = CpuBackend::new();
    let (model, cfg) = load_gguf(&be, model_path(model_file), &AdapterSpec::default()).unwrap();
    let r: Reference =
        serde_json::from_reader(std::io::BufReader::new(std::fs::File::open(fixtures_dir().join(fixture)).unwrap()))
            .unwrap();
    let v = cfg.vocab_size;
    for p in &r.prompts {
        let z = model.logits(&Batch::single(&p.token_ids)).unwrap();
        let t = p.token_ids.len();
        assert_eq!(z.len(), t * v);
        let last = &z[(t - 1) * v..];
        let max_err = last.iter().zip(&p.last_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!("{model_file} {}: {t} tokens, last-position max |Δlogit| = {max_err:.2e}", p.name);
        assert!(max_err <= tol, "{}: last-position logits differ by {max_err:e} (allowed {tol:e})", p.name);
        for pos in 0..t {
            let got = argmax(&z[pos * v..(pos + 1) * v]) as u32;
            let (ids, lg) = (&p.positions.top5_ids[pos], &p.positions.top5_logits[pos]);
            // A near-tie (< 2·tol apart) may legitimately flip within the stated tolerance.
            let ok = got == ids[0] || (lg[0] - lg[1] < 2.0 * tol && got == ids[1]);
            assert!(ok, "{}: position {pos}: top-1 {got}, reference {} (top5 {ids:?})", p.name, ids[0]);
        }
    }
}

/// The fixture README: a correct f32 Llama forward on the same dequantized Q4_1 blocks lands
/// within ~1e-3 (llama.cpp in f32: 7e-5). The issue asks for 1e-3; measured 8.1e-5 (chat_gen,
/// 44 tokens), so we hold 3e-4 to catch regressions the bound would let through.
#[test]
fn smollm2_logits_match_transformers() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct/reference.json", 3e-4);
}

/// Gemma 3: SentencePiece vocabulary, sliding-window layers with their own RoPE base, q/k norms,
/// post norms, Q5_0/Q4_K/Q6_K/Q8_0 blocks. The issue asks for 2e-3; measured 6.1e-5: hold 3e-4.
#[test]
fn gemma3_logits_match_transformers() {
    check("gemma-3-270m-q4_k_m.gguf", "gemma3-270m/reference.json", 3e-4);
}
