//! attention: scaled dot-product attention, flash-attention style. The CPU spec
//! (`attention_forward` / `attention_backward`, generic over `Real`) and the fast CPU paths the
//! backend runs (`attention` / `attention_backward_fast`: f32, threaded, blocked on `gemm`), tested
//! against the spec.
//! Spec: this file   Test: tests/ops/attention.rs
//!
//! Legend: B batch, T tokens (queries and keys have the same length), H query heads,
//! KV key/value heads (H % KV == 0; query head h reads kv head h / (H / KV)), D head dim.
//!
//! For one (batch, query head, query i), with g = h / (H / KV) its kv head:
//!   s_ij   = cap * tanh(scale * <q_i, k_j> / cap)     (softcap, Gemma-2; without it s_ij = scale * <q_i, k_j>)
//!   lse_i  = ln sum_{j visible} exp(s_ij)
//!   P_ij   = exp(s_ij - lse_i)                        (softmax over the visible keys only)
//!   out_i  = sum_{j visible} P_ij v_j
//! Key j is visible to query i iff all of:
//!   causal  => j <= i
//!   window  => i - j < window       (signed; one-sided, as HF `sliding_window`: without `causal`
//!                                   it only cuts keys too far in the PAST, future keys stay visible)
//!   segments=> seg[i] == seg[j]     (sequences packed in one row never see each other)
//!
//! Memory is O(T) per head, never a T x T matrix: keys are visited in tiles of `BLOCK_K` with an
//! online softmax (Dao et al. 2022, FlashAttention, https://arxiv.org/abs/2205.14135, Alg. 1), and the
//! backward recomputes the scores tile by tile from the saved `lse` (Dao 2023, FlashAttention-2,
//! https://arxiv.org/abs/2307.08691, Alg. 2). PyTorch equivalent:
//! https://pytorch.org/docs/stable/generated/torch.nn.functional.scaled_dot_product_attention.html
//!
//! Contracts easy to miss:
//! - `lse` is (B, H, T), natural log, of the CAPPED scores; the backward needs it and `out`.
//! - A query that sees no key at all (only possible with `window = Some(0)`: with window >= 1 every
//!   query sees itself) gets out = 0, lse = 0 (`LSE_EMPTY_ROW`, finite by convention) and zero
//!   gradients. The backward never reads lse for such a row (it has no visible key to use it on).
//! - `attention_backward*` ACCUMULATE (+=) into dq, dk, dv; the caller zeroes them.
//! - Grouped-query: dk, dv of kv head g sum over all H / KV query heads that read it.

use super::real::Real;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Keys per tile in the spec. Any value >= 1 gives the same result up to rounding; 64 matches the
/// key-block size GPU flash kernels use for D <= 128, and tests use T = 67 so a row spans two tiles
/// with a partial last one.
pub const BLOCK_K: usize = 64;

/// The lse written for a query that sees no key: ln(sum over an empty set) would be -inf; we write
/// 0 instead so that lse is always finite. Its out row is 0 and its gradients are 0.
pub const LSE_EMPTY_ROW: f32 = 0.0;

/// Shapes and options of one attention call. See the file header for the masking rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    /// Batch size B.
    pub b: usize,
    /// Tokens T (queries and keys have the same length).
    pub t: usize,
    /// Query heads H.
    pub h: usize,
    /// Key/value heads KV; H % KV == 0 (KV == H: multi-head, KV == 1: multi-query).
    pub kv_heads: usize,
    /// Head dim D.
    pub d: usize,
    /// Multiplies <q, k>; usually 1/sqrt(D) (Gemma: query_pre_attn_scalar^-0.5).
    pub scale: f32,
    /// Query i sees key j only if j <= i.
    pub causal: bool,
    /// Sliding window: query i sees key j only if i - j < window (HF semantics, one-sided).
    pub window: Option<usize>,
    /// Gemma-2 logit soft-capping s = cap * tanh(s / cap), applied after scaling.
    pub softcap: Option<f32>,
}

impl AttnParams {
    /// Query heads per kv head, H / KV.
    pub fn group(&self) -> usize {
        self.h / self.kv_heads
    }

    /// Does query i see key j? `seg` is this batch row's segment ids, (T).
    #[inline]
    pub fn visible(&self, i: usize, j: usize, seg: Option<&[u32]>) -> bool {
        if self.causal && j > i {
            return false;
        }
        if let Some(w) = self.window {
            // i - j < w, in signed arithmetic: j + w > i.
            if j + w <= i {
                return false;
            }
        }
        match seg {
            Some(s) => s[i] == s[j],
            None => true,
        }
    }

    /// The range of keys that can pass the causal and window tests for query i (segments are
    /// checked per key). Lets the loops skip whole tiles; visiting 0..T with `visible` is equivalent.
    #[inline]
    pub fn key_range(&self, i: usize) -> std::ops::Range<usize> {
        let lo = match self.window {
            Some(w) => (i + 1).saturating_sub(w),
            None => 0,
        };
        let hi = if self.causal { i + 1 } else { self.t };
        lo..hi.max(lo)
    }

    #[track_caller]
    fn check(&self, q: usize, kv: usize, seg: Option<&[u32]>) {
        let p = self;
        assert!(
            p.kv_heads > 0 && p.h.is_multiple_of(p.kv_heads),
            "attention: H={} not a multiple of KV={}",
            p.h,
            p.kv_heads
        );
        assert_eq!(q, p.b * p.t * p.h * p.d, "attention: q-shaped buffer is not (B, T, H, D) = {p:?}");
        assert_eq!(kv, p.b * p.t * p.kv_heads * p.d, "attention: k/v-shaped buffer is not (B, T, KV, D) = {p:?}");
        if let Some(s) = seg {
            assert_eq!(s.len(), p.b * p.t, "attention: segment_ids is not (B, T)");
        }
    }
}

/// One score and its derivative through the soft-cap:
///   raw = scale * <q, k>,  s = cap * tanh(raw / cap),  ds/draw = 1 - tanh^2(raw / cap)
/// (without a cap: s = raw, ds/draw = 1). Accumulated in f64.
#[inline]
fn score<T: Real>(q: &[T], k: &[T], p: &AttnParams) -> (f64, f64) {
    let raw = p.scale as f64 * q.iter().zip(k).map(|(a, b)| a.to_f64() * b.to_f64()).sum::<f64>();
    match p.softcap {
        Some(cap) => {
            let cap = cap as f64;
            let th = (raw / cap).tanh();
            (cap * th, 1.0 - th * th)
        }
        None => (raw, 1.0),
    }
}

/// The spec forward (FlashAttention Alg. 1 with one query row per block).
/// For each query i the keys are visited in tiles of `BLOCK_K`, keeping a running max m, a running
/// normaliser l and an unnormalised output acc:
///   m'  = max(m, max_{j in tile} s_ij)
///   l   = exp(m - m') * l   + sum_{j in tile} exp(s_ij - m')
///   acc = exp(m - m') * acc + sum_{j in tile} exp(s_ij - m') v_j
/// and at the end out_i = acc / l, lse_i = m + ln l (a row with no visible key: out 0, lse 0).
pub fn attention_forward<T: Real>(
    out: &mut [T],               // (B, T, H, D)
    lse: &mut [T],               // (B, H, T)
    q: &[T],                     // (B, T, H, D)
    k: &[T],                     // (B, T, KV, D)
    v: &[T],                     // (B, T, KV, D)
    segment_ids: Option<&[u32]>, // (B, T)
    p: &AttnParams,
) {
    let AttnParams { b: nb, t: nt, h: nh, kv_heads: nkv, d: nd, .. } = *p;
    p.check(q.len(), k.len(), segment_ids);
    assert_eq!((out.len(), v.len(), lse.len()), (q.len(), k.len(), nb * nh * nt), "attention_forward: buffer sizes");
    let mut s_tile = [0.0f64; BLOCK_K]; // scores of the current tile
    let mut vis = [false; BLOCK_K]; // which keys of the tile are visible
    let mut acc = vec![0.0f64; nd]; // (D) unnormalised output of one query
    for b in 0..nb {
        let seg = segment_ids.map(|s| &s[b * nt..(b + 1) * nt]); // (T)
        for h in 0..nh {
            let g = h / p.group();
            for i in 0..nt {
                let q_i = &q[((b * nt + i) * nh + h) * nd..][..nd]; // (D)
                let (mut m, mut l) = (f64::NEG_INFINITY, 0.0f64);
                acc.fill(0.0);
                for j0 in (0..nt).step_by(BLOCK_K) {
                    let len = BLOCK_K.min(nt - j0);
                    // Scores of the tile and their max over visible keys.
                    let mut m_tile = f64::NEG_INFINITY;
                    for jj in 0..len {
                        let j = j0 + jj;
                        vis[jj] = p.visible(i, j, seg);
                        if vis[jj] {
                            let k_j = &k[((b * nt + j) * nkv + g) * nd..][..nd]; // (D)
                            s_tile[jj] = score(q_i, k_j, p).0;
                            m_tile = m_tile.max(s_tile[jj]);
                        }
                    }
                    if m_tile == f64::NEG_INFINITY {
                        continue; // no visible key in this tile
                    }
                    // Online softmax update: rescale what we have to the new max, add the tile.
                    let m_new = m.max(m_tile);
                    let alpha = (m - m_new).exp(); // exp(-inf) = 0 on the first visible tile
                    l *= alpha;
                    acc.iter_mut().for_each(|a| *a *= alpha);
                    for jj in (0..len).filter(|&jj| vis[jj]) {
                        let pij = (s_tile[jj] - m_new).exp();
                        l += pij;
                        let v_j = &v[((b * nt + j0 + jj) * nkv + g) * nd..][..nd]; // (D)
                        for (a, &vv) in acc.iter_mut().zip(v_j) {
                            *a += pij * vv.to_f64();
                        }
                    }
                    m = m_new;
                }
                let o_i = &mut out[((b * nt + i) * nh + h) * nd..][..nd]; // (D)
                if l > 0.0 {
                    for (o, &a) in o_i.iter_mut().zip(&acc) {
                        *o = T::from_f64(a / l);
                    }
                    lse[(b * nh + h) * nt + i] = T::from_f64(m + l.ln());
                } else {
                    o_i.fill(T::ZERO);
                    lse[(b * nh + h) * nt + i] = T::from_f32(LSE_EMPTY_ROW);
                }
            }
        }
    }
}

/// The spec backward (FlashAttention-2 Alg. 2: outer loop over key tiles, inner over queries).
/// With dO = dout, for each visible pair (i, j), recomputing s_ij and P_ij = exp(s_ij - lse_i):
///   D_i    = <dO_i, out_i>                     (= sum_j P_ij <dO_i, v_j>, precomputed once per row)
///   dv_j  += P_ij dO_i
///   dP_ij  = <dO_i, v_j>
///   dS_ij  = P_ij (dP_ij - D_i)                (softmax backward)
///   dR_ij  = dS_ij * (1 - tanh^2(raw_ij / cap)) (through the soft-cap; 1 without it)
///   dq_i  += scale * dR_ij k_j,   dk_j += scale * dR_ij q_i
/// dk, dv of one key tile and dq of one kv-head group are accumulated in f64, then added (+=)
/// into the outputs. Extra memory: O(T * D) per head group plus O(BLOCK_K * D).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    dq: &mut [T],                // (B, T, H, D)
    dk: &mut [T],                // (B, T, KV, D)
    dv: &mut [T],                // (B, T, KV, D)
    dout: &[T],                  // (B, T, H, D)
    q: &[T],                     // (B, T, H, D)
    k: &[T],                     // (B, T, KV, D)
    v: &[T],                     // (B, T, KV, D)
    out: &[T],                   // (B, T, H, D) from attention_forward
    lse: &[T],                   // (B, H, T) from attention_forward
    segment_ids: Option<&[u32]>, // (B, T)
    p: &AttnParams,
) {
    let AttnParams { b: nb, t: nt, h: nh, kv_heads: nkv, d: nd, .. } = *p;
    p.check(q.len(), k.len(), segment_ids);
    for (n, what) in [(dq.len(), "dq"), (dout.len(), "dout"), (out.len(), "out")] {
        assert_eq!(n, q.len(), "attention_backward: {what} is not (B, T, H, D)");
    }
    for (n, what) in [(dk.len(), "dk"), (dv.len(), "dv"), (v.len(), "v")] {
        assert_eq!(n, k.len(), "attention_backward: {what} is not (B, T, KV, D)");
    }
    assert_eq!(lse.len(), nb * nh * nt, "attention_backward: lse is not (B, H, T)");
    let rep = p.group();
    let scale = p.scale as f64;
    let qi = |b: usize, i: usize, h: usize| ((b * nt + i) * nh + h) * nd; // offset of a (D) row in (B, T, H, D)
    let kj = |b: usize, j: usize, g: usize| ((b * nt + j) * nkv + g) * nd; // offset of a (D) row in (B, T, KV, D)
    let mut delta = vec![0.0f64; rep * nt]; // (H/KV, T) D_i of the group's query heads
    let mut dq_acc = vec![0.0f64; rep * nt * nd]; // (H/KV, T, D)
    let mut dk_tile = vec![0.0f64; BLOCK_K * nd]; // (BLOCK_K, D)
    let mut dv_tile = vec![0.0f64; BLOCK_K * nd]; // (BLOCK_K, D)
    for b in 0..nb {
        let seg = segment_ids.map(|s| &s[b * nt..(b + 1) * nt]); // (T)
        for g in 0..nkv {
            let heads = g * rep..(g + 1) * rep; // the query heads that read kv head g
                                                // Preprocessing (FA-2): D_i = <dO_i, out_i>.
            for (r, h) in heads.clone().enumerate() {
                for i in 0..nt {
                    let (do_i, o_i) = (&dout[qi(b, i, h)..][..nd], &out[qi(b, i, h)..][..nd]);
                    delta[r * nt + i] = do_i.iter().zip(o_i).map(|(a, c)| a.to_f64() * c.to_f64()).sum();
                }
            }
            dq_acc.fill(0.0);
            for j0 in (0..nt).step_by(BLOCK_K) {
                let len = BLOCK_K.min(nt - j0);
                dk_tile.fill(0.0);
                dv_tile.fill(0.0);
                for (r, h) in heads.clone().enumerate() {
                    for i in 0..nt {
                        let (q_i, do_i) = (&q[qi(b, i, h)..][..nd], &dout[qi(b, i, h)..][..nd]);
                        let lse_i = lse[(b * nh + h) * nt + i].to_f64();
                        for jj in 0..len {
                            let j = j0 + jj;
                            if !p.visible(i, j, seg) {
                                continue;
                            }
                            let (k_j, v_j) = (&k[kj(b, j, g)..][..nd], &v[kj(b, j, g)..][..nd]);
                            let (s, dcap) = score(q_i, k_j, p);
                            let pij = (s - lse_i).exp();
                            let dp: f64 = do_i.iter().zip(v_j).map(|(a, c)| a.to_f64() * c.to_f64()).sum();
                            let dr = pij * (dp - delta[r * nt + i]) * dcap * scale;
                            let dq_i = &mut dq_acc[(r * nt + i) * nd..][..nd];
                            for c in 0..nd {
                                dv_tile[jj * nd + c] += pij * do_i[c].to_f64();
                                dk_tile[jj * nd + c] += dr * q_i[c].to_f64();
                                dq_i[c] += dr * k_j[c].to_f64();
                            }
                        }
                    }
                }
                for jj in 0..len {
                    let o = kj(b, j0 + jj, g);
                    for c in 0..nd {
                        dk[o + c] = T::from_f64(dk[o + c].to_f64() + dk_tile[jj * nd + c]);
                        dv[o + c] = T::from_f64(dv[o + c].to_f64() + dv_tile[jj * nd + c]);
                    }
                }
            }
            for (r, h) in heads.enumerate() {
                for i in 0..nt {
                    let o = qi(b, i, h);
                    for c in 0..nd {
                        dq[o + c] = T::from_f64(dq[o + c].to_f64() + dq_acc[(r * nt + i) * nd + c]);
                    }
                }
            }
        }
    }
}

// ---- fast CPU paths (f32, threaded), tested against the spec

/// Threads for the fast paths: all cores, but never more than there are work items.
fn n_threads(items: usize) -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(items).max(1)
}

/// Runs `work(item)` for item in 0..items on a pool of scoped threads, handing items out through
/// an atomic counter (items cost differently under causal masks, so no static split).
fn par_items(items: usize, work: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..n_threads(items) {
            s.spawn(|| loop {
                let it = next.fetch_add(1, Ordering::Relaxed);
                if it >= items {
                    break;
                }
                work(it);
            });
        }
    });
}

/// <a, b> in f32 with 8 independent partial sums, so the compiler can vectorise it (a single
/// running sum fixes the order and stays scalar).
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

/// y += a * x
#[inline]
fn axpy_f32(y: &mut [f32], a: f32, x: &[f32]) {
    for (yy, &xx) in y.iter_mut().zip(x) {
        *yy += a * xx;
    }
}

/// Copies the (T, D) slice of `heads`-strided rows for head `h` out of a (T, heads, D) batch item.
fn gather(src: &[f32], nt: usize, heads: usize, h: usize, nd: usize) -> Vec<f32> {
    let mut dst = Vec::with_capacity(nt * nd);
    for t in 0..nt {
        dst.extend_from_slice(&src[(t * heads + h) * nd..][..nd]);
    }
    dst
}

/// Soft-capped score and its derivative in f32 (see `score`).
#[inline]
fn cap_f32(raw: f32, softcap: Option<f32>) -> (f32, f32) {
    match softcap {
        Some(cap) => {
            let th = (raw / cap).tanh();
            (cap * th, 1.0 - th * th)
        }
        None => (raw, 1.0),
    }
}

/// Query rows and key columns per block in the fast paths: a (64, 64) f32 score block is 16 KiB
/// and the (64, D) Q, K, V, O blocks for D <= 128 are 32 KiB each, so a block pair stays in L2.
const FAST_BQ: usize = 64;
const FAST_BK: usize = 64;

/// c (m, n) = [c +] op(a) · op(b), all row-major f32, through the `gemm` crate (runtime-selected
/// SIMD, single-threaded: the fast paths already run one item per thread).
/// `a` is (m, k), or (k, m) when `ta`; `b` is (k, n), or (n, k) when `tb`.
#[allow(clippy::too_many_arguments)]
fn gemm_f32(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool, acc: bool) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "gemm_f32: buffer too small");
    if m == 0 || n == 0 {
        return;
    }
    // (row stride, column stride) of each operand, in elements.
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the asserts above bound every index the strides reach: a (m, k) or (k, m) view of
    // `a`, a (k, n) or (n, k) view of `b`, and a (m, n) view of `c`; `c` is a unique borrow.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The keys that some query of rows [i0, i1) may see (the causal/window ranges grow with i).
fn block_key_range(p: &AttnParams, i0: usize, i1: usize) -> std::ops::Range<usize> {
    p.key_range(i0).start..p.key_range(i1 - 1).end
}

/// Fills s (bq, bk) = capped scores of query rows i0.. against key columns j0.., or -inf where the
/// key is not visible, given s = Q_blk · K_blk^T on entry. Also writes the soft-cap derivative
/// into `dcap` when given.
#[allow(clippy::too_many_arguments)]
fn mask_and_cap(
    s: &mut [f32],
    mut dcap: Option<&mut [f32]>,
    i0: usize,
    bq: usize,
    j0: usize,
    bk: usize,
    seg: Option<&[u32]>,
    p: &AttnParams,
) {
    for r in 0..bq {
        for c in 0..bk {
            let x = &mut s[r * bk + c];
            if p.visible(i0 + r, j0 + c, seg) {
                let (v, dv) = cap_f32(p.scale * *x, p.softcap);
                *x = v;
                if let Some(d) = dcap.as_deref_mut() {
                    d[r * bk + c] = dv;
                }
            } else {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// The fast forward (what the CPU backend runs). Same contract as `attention_forward`.
/// Parallel over (batch, query head) pairs. Each item runs FlashAttention Alg. 1 with (FAST_BQ,
/// FAST_BK) blocks on f32: S = Q_blk K_blk^T and O += P V_blk are `gemm` calls, the online
/// softmax between them is the spec's, row by row. Key blocks no query of the block can see
/// (causal, window) are skipped. Memory O(T * D) per thread.
pub fn attention(
    out: &mut [f32],             // (B, T, H, D)
    lse: &mut [f32],             // (B, H, T)
    q: &[f32],                   // (B, T, H, D)
    k: &[f32],                   // (B, T, KV, D)
    v: &[f32],                   // (B, T, KV, D)
    segment_ids: Option<&[u32]>, // (B, T)
    p: &AttnParams,
) {
    let AttnParams { b: nb, t: nt, h: nh, kv_heads: nkv, d: nd, .. } = *p;
    p.check(q.len(), k.len(), segment_ids);
    assert_eq!((out.len(), v.len(), lse.len()), (q.len(), k.len(), nb * nh * nt), "attention: buffer sizes");
    let sink = Mutex::new((out, lse));
    par_items(nb * nh, |item| {
        let (b, h) = (item / nh, item % nh);
        let g = h / p.group();
        let seg = segment_ids.map(|s| &s[b * nt..(b + 1) * nt]); // (T)
        let qh = gather(&q[b * nt * nh * nd..][..nt * nh * nd], nt, nh, h, nd); // (T, D)
        let kg = gather(&k[b * nt * nkv * nd..][..nt * nkv * nd], nt, nkv, g, nd); // (T, D)
        let vg = gather(&v[b * nt * nkv * nd..][..nt * nkv * nd], nt, nkv, g, nd); // (T, D)
        let mut o_h = vec![0.0f32; nt * nd]; // (T, D) unnormalised, then normalised
        let mut lse_h = vec![LSE_EMPTY_ROW; nt]; // (T)
        let mut s = vec![0.0f32; FAST_BQ * FAST_BK]; // (BQ, BK) scores, then probabilities
        let (mut m, mut l) = ([0.0f32; FAST_BQ], [0.0f32; FAST_BQ]); // running max and sum per row
        for i0 in (0..nt).step_by(FAST_BQ) {
            let bq = FAST_BQ.min(nt - i0);
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            let o_blk = &mut o_h[i0 * nd..(i0 + bq) * nd]; // (bq, D)
            let keys = block_key_range(p, i0, i0 + bq);
            for j0 in keys.clone().step_by(FAST_BK) {
                let bk = FAST_BK.min(keys.end - j0);
                let s = &mut s[..bq * bk];
                gemm_f32(s, &qh[i0 * nd..], &kg[j0 * nd..], bq, bk, nd, false, true, false);
                mask_and_cap(s, None, i0, bq, j0, bk, seg, p);
                for row in 0..bq {
                    let s_row = &mut s[row * bk..(row + 1) * bk];
                    let m_tile = s_row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                    if m_tile == f32::NEG_INFINITY {
                        s_row.fill(0.0); // nothing visible in this block for this row: adds 0 to O
                        continue;
                    }
                    let m_new = m[row].max(m_tile);
                    let alpha = (m[row] - m_new).exp(); // 0 on the row's first visible block
                    let mut sum = 0.0f32;
                    for x in s_row.iter_mut() {
                        *x = (*x - m_new).exp(); // exp(-inf) = 0 for masked keys
                        sum += *x;
                    }
                    l[row] = alpha * l[row] + sum;
                    m[row] = m_new;
                    o_blk[row * nd..(row + 1) * nd].iter_mut().for_each(|o| *o *= alpha);
                }
                gemm_f32(o_blk, s, &vg[j0 * nd..], bq, nd, bk, false, false, true);
            }
            for row in 0..bq {
                let o_r = &mut o_blk[row * nd..(row + 1) * nd];
                if l[row] > 0.0 {
                    let inv = 1.0 / l[row];
                    o_r.iter_mut().for_each(|o| *o *= inv);
                    lse_h[i0 + row] = m[row] + l[row].ln();
                } else {
                    o_r.fill(0.0); // no visible key: out 0, lse LSE_EMPTY_ROW
                }
            }
        }
        let mut guard = sink.lock().unwrap();
        let (out, lse) = &mut *guard;
        for i in 0..nt {
            out[((b * nt + i) * nh + h) * nd..][..nd].copy_from_slice(&o_h[i * nd..][..nd]);
        }
        lse[(b * nh + h) * nt..][..nt].copy_from_slice(&lse_h);
    });
}

/// The fast backward (what the CPU backend runs). Same contract as `attention_backward` (+=).
/// Parallel over (batch, kv head) pairs: an item owns dk, dv of its kv head and dq of the H / KV
/// query heads that read it, so items never write the same element. Each item runs
/// FlashAttention-2 Alg. 2 on (FAST_BQ, FAST_BK) blocks with `gemm` for the five products
///   S = Q K^T,  dV += P^T dO,  dP = dO V^T,  dQ += dS K,  dK += dS^T Q
/// accumulating in private f32 buffers (O(T * D)), added into the outputs under a lock at the end.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_fast(
    dq: &mut [f32],              // (B, T, H, D)
    dk: &mut [f32],              // (B, T, KV, D)
    dv: &mut [f32],              // (B, T, KV, D)
    dout: &[f32],                // (B, T, H, D)
    q: &[f32],                   // (B, T, H, D)
    k: &[f32],                   // (B, T, KV, D)
    v: &[f32],                   // (B, T, KV, D)
    out: &[f32],                 // (B, T, H, D) from the forward
    lse: &[f32],                 // (B, H, T) from the forward
    segment_ids: Option<&[u32]>, // (B, T)
    p: &AttnParams,
) {
    let AttnParams { b: nb, t: nt, h: nh, kv_heads: nkv, d: nd, .. } = *p;
    p.check(q.len(), k.len(), segment_ids);
    for n in [dq.len(), dout.len(), out.len()] {
        assert_eq!(n, q.len(), "attention_backward_fast: a q-shaped buffer is not (B, T, H, D)");
    }
    for n in [dk.len(), dv.len(), v.len()] {
        assert_eq!(n, k.len(), "attention_backward_fast: a k-shaped buffer is not (B, T, KV, D)");
    }
    assert_eq!(lse.len(), nb * nh * nt, "attention_backward_fast: lse is not (B, H, T)");
    let rep = p.group();
    let sink = Mutex::new((dq, dk, dv));
    par_items(nb * nkv, |item| {
        let (b, g) = (item / nkv, item % nkv);
        let seg = segment_ids.map(|s| &s[b * nt..(b + 1) * nt]); // (T)
        let q_b = &q[b * nt * nh * nd..][..nt * nh * nd]; // (T, H, D)
        let do_b = &dout[b * nt * nh * nd..][..nt * nh * nd]; // (T, H, D)
        let o_b = &out[b * nt * nh * nd..][..nt * nh * nd]; // (T, H, D)
        let kg = gather(&k[b * nt * nkv * nd..][..nt * nkv * nd], nt, nkv, g, nd); // (T, D)
        let vg = gather(&v[b * nt * nkv * nd..][..nt * nkv * nd], nt, nkv, g, nd); // (T, D)
        let mut dk_g = vec![0.0f32; nt * nd]; // (T, D)
        let mut dv_g = vec![0.0f32; nt * nd]; // (T, D)
        let mut dq_g = vec![0.0f32; rep * nt * nd]; // (H/KV, T, D)
        let mut pm = vec![0.0f32; FAST_BQ * FAST_BK]; // (BQ, BK) P
        let mut ds = vec![0.0f32; FAST_BQ * FAST_BK]; // (BQ, BK) dP, then dS
        let mut dcap = vec![0.0f32; FAST_BQ * FAST_BK]; // (BQ, BK) soft-cap derivative
        for r in 0..rep {
            let h = g * rep + r;
            let qh = gather(q_b, nt, nh, h, nd); // (T, D)
            let doh = gather(do_b, nt, nh, h, nd); // (T, D)
            let lse_h = &lse[(b * nh + h) * nt..][..nt]; // (T)
                                                         // D_i = <dO_i, out_i> (FA-2 preprocessing).
            let delta: Vec<f32> =
                (0..nt).map(|i| dot_f32(&do_b[(i * nh + h) * nd..][..nd], &o_b[(i * nh + h) * nd..][..nd])).collect();
            let dq_h = &mut dq_g[r * nt * nd..(r + 1) * nt * nd]; // (T, D)
            for i0 in (0..nt).step_by(FAST_BQ) {
                let bq = FAST_BQ.min(nt - i0);
                let keys = block_key_range(p, i0, i0 + bq);
                for j0 in keys.clone().step_by(FAST_BK) {
                    let bk = FAST_BK.min(keys.end - j0);
                    let (pm, ds, dcap) = (&mut pm[..bq * bk], &mut ds[..bq * bk], &mut dcap[..bq * bk]);
                    // P = exp(S - lse), 0 where masked.
                    gemm_f32(pm, &qh[i0 * nd..], &kg[j0 * nd..], bq, bk, nd, false, true, false);
                    mask_and_cap(pm, Some(dcap), i0, bq, j0, bk, seg, p);
                    for row in 0..bq {
                        for x in &mut pm[row * bk..(row + 1) * bk] {
                            *x = (*x - lse_h[i0 + row]).exp(); // finite lse, so exp(-inf) = 0
                        }
                    }
                    gemm_f32(&mut dv_g[j0 * nd..], pm, &doh[i0 * nd..], bk, nd, bq, true, false, true);
                    gemm_f32(ds, &doh[i0 * nd..], &vg[j0 * nd..], bq, bk, nd, false, true, false);
                    for row in 0..bq {
                        for c in 0..bk {
                            let e = row * bk + c;
                            ds[e] = pm[e] * (ds[e] - delta[i0 + row]) * dcap[e] * p.scale;
                        }
                    }
                    gemm_f32(&mut dq_h[i0 * nd..], ds, &kg[j0 * nd..], bq, nd, bk, false, false, true);
                    gemm_f32(&mut dk_g[j0 * nd..], ds, &qh[i0 * nd..], bk, nd, bq, true, false, true);
                }
            }
        }
        let mut guard = sink.lock().unwrap();
        let (dq, dk, dv) = &mut *guard;
        for t in 0..nt {
            let o = ((b * nt + t) * nkv + g) * nd;
            axpy_f32(&mut dk[o..][..nd], 1.0, &dk_g[t * nd..][..nd]);
            axpy_f32(&mut dv[o..][..nd], 1.0, &dv_g[t * nd..][..nd]);
            for r in 0..rep {
                let o = ((b * nt + t) * nh + g * rep + r) * nd;
                axpy_f32(&mut dq[o..][..nd], 1.0, &dq_g[(r * nt + t) * nd..][..nd]);
            }
        }
    });
}
