//! attention_decode: attention of `TQ` new queries against a KV cache, for generation (forward
//! only). The CPU spec (`attention_decode_forward`, generic over `Real`, f64 accumulation) and the
//! fast f32 path the generator runs (`attention_decode`, threaded when the call is big enough).
//! Spec: this file   Test: tests/ops/attention_decode.rs (against the training kernel
//! `attention_forward` on the full sequence)
//!
//! Legend: TQ new queries, S keys in the cache (the new ones included: the caller appends the new
//! keys/values before calling), H query heads, KV key/value heads (query head h reads kv head
//! h / (H / KV)), D head dim. Batch 1.
//!
//! Query i (0 <= i < TQ) sits at cache row r_i = S - TQ + i: the last TQ cache rows are the queries'
//! own keys. Scores, softmax and output are those of `attention.rs`:
//!   s_ij  = cap * tanh(scale * <q_i, k_j> / cap)    (without a soft-cap: scale * <q_i, k_j>)
//!   out_i = sum_{j visible} softmax_j(s_ij) v_j
//! Key row j is visible to query i iff
//!   causal  j <= r_i
//!   window  r_i - j < window                       (HF `sliding_window`, as in attention.rs)
//! Only DIFFERENCES of positions matter, so a cache that dropped its oldest rows (a sliding-window
//! cache keeping the last rows only) is called the same way, as long as it still holds every key
//! some query can see: rows back to r_0 - window + 1.
//!
//! Contracts easy to miss:
//! - `k_cache`/`v_cache` hold exactly S rows; S >= TQ.
//! - A query that sees no key (window = Some(0)) gets out = 0, as in `attention_forward`.
//! - PyTorch equivalent: `scaled_dot_product_attention` with the bottom-right-aligned causal mask
//!   (https://pytorch.org/docs/stable/generated/torch.nn.functional.scaled_dot_product_attention.html).

use super::real::Real;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Shapes and options of one decode-attention call. See the file header for the masking rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeParams {
    /// New queries TQ (1 when decoding, the prompt length when prefilling).
    pub tq: usize,
    /// Keys in the cache S, the new ones included; S >= TQ.
    pub s: usize,
    /// Query heads H.
    pub h: usize,
    /// Key/value heads KV; H % KV == 0.
    pub kv_heads: usize,
    /// Head dim D.
    pub d: usize,
    /// Multiplies <q, k>; usually 1/sqrt(D).
    pub scale: f32,
    /// Sliding window: query i sees key j only if r_i - j < window (HF semantics).
    pub window: Option<usize>,
    /// Gemma-2 logit soft-capping s = cap * tanh(s / cap), applied after scaling.
    pub softcap: Option<f32>,
}

impl DecodeParams {
    /// The cache rows query i can see: [lo, r_i + 1).
    #[inline]
    pub fn key_range(&self, i: usize) -> std::ops::Range<usize> {
        let r = self.s - self.tq + i; // the query's own row
        let lo = match self.window {
            Some(w) => (r + 1).saturating_sub(w),
            None => 0,
        };
        lo..(r + 1).max(lo)
    }

    #[track_caller]
    fn check(&self, q: usize, out: usize, k: usize, v: usize) {
        if let Err(e) = check_decode("attention_decode", q, k, v, self) {
            panic!("{e}");
        }
        assert_eq!(out, q, "attention_decode: out is not (TQ, H, D) = {self:?}");
        let need = self.s * self.kv_heads * self.d;
        assert_eq!((k, v), (need, need), "attention_decode: caches are not (S, KV, D)");
    }
}

/// The checks a backend's `attention_decode` makes before launching (as errors, not panics):
/// H a multiple of KV, TQ <= S, q (TQ, H, D), caches of at least S rows (the spec functions
/// above also want exactly S rows and out like q).
pub fn check_decode(op: &'static str, q: usize, k: usize, v: usize, p: &DecodeParams) -> crate::error::Result<()> {
    let bad = |msg: String| Err(crate::error::Error::InvalidArgument { op, msg });
    if p.kv_heads == 0 || !p.h.is_multiple_of(p.kv_heads) {
        return bad(format!("H = {} is not a multiple of KV = {}", p.h, p.kv_heads));
    }
    if p.tq > p.s {
        return bad(format!("{} queries against {} cached keys", p.tq, p.s));
    }
    if q != p.tq * p.h * p.d {
        return bad(format!("q has {q} elements, expected TQ * H * D = {}", p.tq * p.h * p.d));
    }
    let need = p.s * p.kv_heads * p.d;
    if k < need || v < need {
        return bad(format!("caches hold {k} / {v} elements, {need} needed for S = {} rows", p.s));
    }
    Ok(())
}

/// The spec forward: for each (query, head), all visible scores in f64, then a two-pass softmax
///   m = max_j s_ij,   out_i = sum_j exp(s_ij - m) v_j / sum_j exp(s_ij - m).
pub fn attention_decode_forward<T: Real>(
    out: &mut [T], // (TQ, H, D)
    q: &[T],       // (TQ, H, D)
    k_cache: &[T], // (S, KV, D)
    v_cache: &[T], // (S, KV, D)
    p: &DecodeParams,
) {
    p.check(q.len(), out.len(), k_cache.len(), v_cache.len());
    let DecodeParams { tq, h: nh, kv_heads: nkv, d: nd, .. } = *p;
    let group = nh / nkv;
    let mut s = Vec::with_capacity(p.s); // (visible keys) scores of one query
    let mut acc = vec![0.0f64; nd]; // (D)
    for i in 0..tq {
        let keys = p.key_range(i);
        for h in 0..nh {
            let g = h / group;
            let q_i = &q[(i * nh + h) * nd..][..nd]; // (D)
            s.clear();
            for j in keys.clone() {
                let k_j = &k_cache[(j * nkv + g) * nd..][..nd]; // (D)
                let raw = p.scale as f64 * q_i.iter().zip(k_j).map(|(a, b)| a.to_f64() * b.to_f64()).sum::<f64>();
                s.push(match p.softcap {
                    Some(cap) => cap as f64 * (raw / cap as f64).tanh(),
                    None => raw,
                });
            }
            let o_i = &mut out[(i * nh + h) * nd..][..nd]; // (D)
            if s.is_empty() {
                o_i.fill(T::ZERO);
                continue;
            }
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut l = 0.0f64;
            acc.fill(0.0);
            for (jj, j) in keys.clone().enumerate() {
                let pij = (s[jj] - m).exp();
                l += pij;
                let v_j = &v_cache[(j * nkv + g) * nd..][..nd]; // (D)
                for (a, &vv) in acc.iter_mut().zip(v_j) {
                    *a += pij * vv.to_f64();
                }
            }
            for (o, &a) in o_i.iter_mut().zip(&acc) {
                *o = T::from_f64(a / l);
            }
        }
    }
}

// ---- fast CPU path (f32, threaded), tested against the spec

/// Multiply-adds below which a call runs on the calling thread: spawning scoped threads costs
/// ~10-30 µs each, about what 2^16 f32 multiply-adds take, so a single decode step over a short
/// context (SmolLM2: 9 heads x 64 dims x a few hundred keys) stays single-threaded.
const PAR_MIN_WORK: usize = 1 << 16;

/// Query rows (one (i, h) pair each) per work item of the threaded path.
const ROWS_PER_ITEM: usize = 8;

/// <a, b> in f32 with 8 independent partial sums (vectorisable; same as attention.rs).
#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// One output row (query i, head h) in f32: scores, max-subtracted exp, weighted sum of values.
/// `s` is scratch of at least S elements.
#[allow(clippy::too_many_arguments)]
fn decode_row(o: &mut [f32], i: usize, h: usize, q: &[f32], k: &[f32], v: &[f32], s: &mut [f32], p: &DecodeParams) {
    let (nh, nkv, nd) = (p.h, p.kv_heads, p.d);
    let g = h / (nh / nkv);
    let q_i = &q[(i * nh + h) * nd..][..nd]; // (D)
    let keys = p.key_range(i);
    o.fill(0.0);
    if keys.is_empty() {
        return;
    }
    let s = &mut s[..keys.len()];
    for (x, j) in s.iter_mut().zip(keys.clone()) {
        let raw = p.scale * dot_f32(q_i, &k[(j * nkv + g) * nd..][..nd]);
        *x = match p.softcap {
            Some(cap) => cap * (raw / cap).tanh(),
            None => raw,
        };
    }
    let m = s.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let mut l = 0.0f32;
    for (x, j) in s.iter_mut().zip(keys) {
        *x = (*x - m).exp();
        l += *x;
        for (oo, &vv) in o.iter_mut().zip(&v[(j * nkv + g) * nd..][..nd]) {
            *oo += *x * vv;
        }
    }
    let inv = 1.0 / l;
    o.iter_mut().for_each(|x| *x *= inv);
}

/// The fast forward (what the generator runs). Same contract as `attention_decode_forward`.
/// Rows (i, h) are independent; big calls (prefill, long contexts) spread blocks of
/// `ROWS_PER_ITEM` rows over all cores through an atomic counter (causal rows cost differently).
pub fn attention_decode(
    out: &mut [f32], // (TQ, H, D)
    q: &[f32],       // (TQ, H, D)
    k_cache: &[f32], // (S, KV, D)
    v_cache: &[f32], // (S, KV, D)
    p: &DecodeParams,
) {
    p.check(q.len(), out.len(), k_cache.len(), v_cache.len());
    let (rows, nh, nd) = (p.tq * p.h, p.h, p.d);
    let work = rows * p.s * nd;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if work < PAR_MIN_WORK || threads == 1 || rows == 1 {
        let mut s = vec![0.0f32; p.s];
        for (r, o) in out.chunks_mut(nd).enumerate() {
            decode_row(o, r / nh, r % nh, q, k_cache, v_cache, &mut s, p);
        }
        return;
    }
    let items = rows.div_ceil(ROWS_PER_ITEM);
    let next = AtomicUsize::new(0);
    let blocks: Vec<Mutex<&mut [f32]>> = out.chunks_mut(ROWS_PER_ITEM * nd).map(Mutex::new).collect();
    std::thread::scope(|sc| {
        for _ in 0..threads.min(items) {
            sc.spawn(|| {
                let mut s = vec![0.0f32; p.s];
                loop {
                    let it = next.fetch_add(1, Ordering::Relaxed);
                    if it >= items {
                        break;
                    }
                    // Each block is taken by exactly one item: the lock is never contended.
                    let mut blk = blocks[it].lock().unwrap();
                    for (rr, o) in blk.chunks_mut(nd).enumerate() {
                        let r = it * ROWS_PER_ITEM + rr;
                        decode_row(o, r / nh, r % nh, q, k_cache, v_cache, &mut s, p);
                    }
                }
            });
        }
    });
}
