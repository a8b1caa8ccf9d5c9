//! attention_decode: the decode spec (src/backend/cpu/attention_decode.rs) against the training
//! kernel `attention_forward` run causally on the whole sequence (f64): the last TQ output rows must
//! agree for many (past, TQ, window, softcap, H/KV, D); the same with the cache's oldest rows
//! dropped as a sliding-window cache does; the fast f32 path (single- and multi-threaded) against
//! the f32 spec.

use crate::common::*;
use loraforge::backend::cpu::attention::{attention_forward, AttnParams};
use loraforge::backend::cpu::attention_decode::{attention_decode, attention_decode_forward, DecodeParams};
use loraforge::rng::Rng;

/// Both sides in f64 with f64 accumulation; they differ only in summation order (tiled online
/// softmax vs two-pass), ~1e-16 relative per term: 1e-12 leaves room for S = 130 terms.
const F64_SPEC: Tol = Tol { abs: 1e-12, rel: 1e-12 };

/// (past, TQ): decode (TQ = 1) at the start, mid-tile and past one 64-key tile; prefill of a whole
/// prompt (past = 0); chunked prefill (past > 0, TQ > 1); a query block spanning a tile edge.
const STEPS: [(usize, usize); 8] = [(0, 1), (1, 1), (6, 1), (66, 1), (0, 7), (0, 67), (5, 3), (60, 9)];

/// (H, KV, D): single head, multi-query (KV = 1), grouped (H / KV = 3), multi-head; D = 1, 5, 8 (a
/// full 8-lane chunk of the fast dot product) and 13 (one chunk and a remainder).
const HEADS: [(usize, usize, usize); 4] = [(1, 1, 5), (4, 1, 1), (6, 2, 13), (3, 3, 8)];

/// The decode output for the last TQ rows of a T = past + TQ sequence, and the same rows of the
/// training kernel's causal output.
#[allow(clippy::too_many_arguments)]
fn both(
    q: &[f64], // (T, H, D)
    k: &[f64], // (T, KV, D)
    v: &[f64], // (T, KV, D)
    past: usize,
    tq: usize,
    (h, kv, d): (usize, usize, usize),
    window: Option<usize>,
    softcap: Option<f32>,
) -> (Vec<f64>, Vec<f64>) {
    let t = past + tq;
    let scale = 1.0 / (d as f32).sqrt();
    let ap = AttnParams { b: 1, t, h, kv_heads: kv, d, scale, causal: true, window, softcap };
    let mut full = vec![0.0; t * h * d];
    let mut lse = vec![0.0; h * t];
    attention_forward(&mut full, &mut lse, q, k, v, None, &ap);
    let dp = DecodeParams { tq, s: t, h, kv_heads: kv, d, scale, window, softcap };
    let mut out = vec![0.0; tq * h * d];
    attention_decode_forward(&mut out, &q[past * h * d..], k, v, &dp);
    (out, full[past * h * d..].to_vec())
}

#[test]
fn decode_spec_matches_training_kernel_on_full_sequence() {
    let mut rng = Rng::new(11);
    let mut cases = 0;
    for &(past, tq) in &STEPS {
        for &(h, kv, d) in &HEADS {
            // Window 1 (each query sees itself only), 3, 64 (a whole tile) and none.
            for window in [None, Some(1), Some(3), Some(64)] {
                for softcap in [None, Some(5.0f32)] {
                    let t = past + tq;
                    // Range ±2 makes scores large enough (|s| up to ~4 sqrt(D)) for the cap to bite.
                    let q = rand_f64(&mut rng, t * h * d, -2.0, 2.0);
                    let k = rand_f64(&mut rng, t * kv * d, -2.0, 2.0);
                    let v = rand_f64(&mut rng, t * kv * d, -1.0, 1.0);
                    let (got, want) = both(&q, &k, &v, past, tq, (h, kv, d), window, softcap);
                    let what = format!("past {past} tq {tq} H {h} KV {kv} D {d} window {window:?} cap {softcap:?}");
                    assert_close(&got, &want, F64_SPEC, &what);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, STEPS.len() * HEADS.len() * 8);
}

/// A sliding-window cache that kept only rows [past - window + 1, T) gives the same output as the
/// full cache: only position differences matter.
#[test]
fn decode_spec_on_trimmed_window_cache() {
    let mut rng = Rng::new(12);
    let (h, kv, d) = (6, 2, 5);
    for (past, tq, w) in [(10, 1, 3), (70, 1, 64), (20, 4, 5), (9, 1, 10)] {
        let t = past + tq;
        let q = rand_f64(&mut rng, t * h * d, -2.0, 2.0);
        let k = rand_f64(&mut rng, t * kv * d, -2.0, 2.0);
        let v = rand_f64(&mut rng, t * kv * d, -1.0, 1.0);
        let (_, want) = both(&q, &k, &v, past, tq, (h, kv, d), Some(w), None);
        let first = (past + 1).saturating_sub(w); // oldest row the first new query sees
        let s = t - first;
        let dp =
            DecodeParams { tq, s, h, kv_heads: kv, d, scale: 1.0 / (d as f32).sqrt(), window: Some(w), softcap: None };
        let mut got = vec![0.0; tq * h * d];
        attention_decode_forward(&mut got, &q[past * h * d..], &k[first * kv * d..], &v[first * kv * d..], &dp);
        assert_close(&got, &want, F64_SPEC, &format!("trimmed cache past {past} tq {tq} window {w}"));
    }
}

/// window = Some(0): no query sees any key; the output is 0 as in `attention_forward`.
#[test]
fn decode_window_zero_gives_zero_rows() {
    let mut rng = Rng::new(13);
    let dp = DecodeParams { tq: 2, s: 5, h: 2, kv_heads: 1, d: 3, scale: 0.5, window: Some(0), softcap: None };
    let q = rand_f64(&mut rng, 2 * 2 * 3, -1.0, 1.0);
    let kv = rand_f64(&mut rng, 5 * 3, -1.0, 1.0);
    let mut out = vec![7.0; 12];
    attention_decode_forward(&mut out, &q, &kv, &kv, &dp);
    assert!(out.iter().all(|&x| x == 0.0), "{out:?}");
    let mut out32 = vec![7.0f32; 12];
    attention_decode(&mut out32, &to_f32(&q), &to_f32(&kv), &to_f32(&kv), &dp);
    assert!(out32.iter().all(|&x| x == 0.0), "{out32:?}");
}

/// The fast f32 path against the f32 spec (f64-accumulated), on calls below the threading
/// threshold (decode) and above it (prefill of 67 tokens x 6 heads x 130 keys x 13 dims ≈ 680k
/// multiply-adds): Tol::F32, the f32 rounding of D-term dots and S-term sums of values in [-1, 1].
#[test]
fn decode_fast_matches_spec() {
    let mut rng = Rng::new(14);
    for (past, tq, (h, kv, d), window, softcap) in [
        (0, 1, (1, 1, 5), None, None),
        (66, 1, (6, 2, 13), Some(64), Some(5.0)),
        (200, 1, (9, 3, 64), None, None),
        (63, 67, (6, 2, 13), None, Some(5.0)),
        (0, 67, (4, 1, 8), Some(3), None),
    ] {
        let t = past + tq;
        let q = rand_f32(&mut rng, tq * h * d, -2.0, 2.0);
        let k = rand_f32(&mut rng, t * kv * d, -2.0, 2.0);
        let v = rand_f32(&mut rng, t * kv * d, -1.0, 1.0);
        let dp = DecodeParams { tq, s: t, h, kv_heads: kv, d, scale: 1.0 / (d as f32).sqrt(), window, softcap };
        let mut want = vec![0.0f32; tq * h * d];
        attention_decode_forward(&mut want, &q, &k, &v, &dp);
        let mut got = vec![0.0f32; tq * h * d];
        attention_decode(&mut got, &q, &k, &v, &dp);
        assert_close(&got, &want, Tol::F32, &format!("fast past {past} tq {tq} H {h} KV {kv} D {d}"));
    }
}
