//! attention: the flash-style spec (src/backend/cpu/attention.rs) against a naive full-matrix
//! reference (f64), its backward against central finite differences (f64), the fast f32 paths
//! against the f32 spec, fully masked rows, and packing isolation through segment ids.

use crate::common::*;
use loraforge::backend::cpu::attention::{
    attention, attention_backward, attention_backward_fast, attention_forward, AttnParams, BLOCK_K, LSE_EMPTY_ROW,
};
use loraforge::rng::Rng;

/// (B, T, H, KV, D) shapes for the forward check: T = 1, 7 and 67 (prime, > one tile of 64 keys),
/// D = 1 and 5, multi-head (H = KV), multi-query (KV = 1) and grouped (H / KV = 3), B = 1 and 2.
const FWD_SHAPES: [(usize, usize, usize, usize, usize); 6] =
    [(1, 1, 1, 1, 1), (2, 7, 1, 1, 5), (1, 7, 4, 1, 1), (2, 7, 6, 2, 5), (1, 67, 4, 1, 5), (2, 67, 6, 2, 1)];

fn params(b: usize, t: usize, h: usize, kv_heads: usize, d: usize) -> AttnParams {
    AttnParams { b, t, h, kv_heads, d, scale: 1.0 / (d as f32).sqrt(), causal: false, window: None, softcap: None }
}

/// All 16 combinations of causal, window Some(3)/None, softcap Some(5.0)/None, segments on/off.
fn mask_variants(p: AttnParams) -> Vec<(AttnParams, bool)> {
    let mut v = Vec::new();
    for causal in [false, true] {
        for window in [None, Some(3)] {
            for softcap in [None, Some(5.0)] {
                for segs in [false, true] {
                    v.push((AttnParams { causal, window, softcap, ..p }, segs));
                }
            }
        }
    }
    v
}

/// Segment ids (B, T): each row split into 2 or 3 contiguous segments at random cuts (1 segment
/// when T = 1), with ids that differ between rows and do not start at 0.
fn segments(rng: &mut Rng, b: usize, t: usize) -> Vec<u32> {
    let mut ids = Vec::with_capacity(b * t);
    for row in 0..b {
        let n_seg = (2 + rng.below(2)).min(t);
        let mut cuts: Vec<usize> = (0..n_seg - 1).map(|_| 1 + rng.below(t - 1)).collect();
        cuts.sort_unstable();
        for i in 0..t {
            ids.push(7 * row as u32 + 3 + cuts.iter().filter(|&&c| c <= i).count() as u32);
        }
    }
    ids
}

/// Naive reference in f64: full (T, T) score matrix per (batch, head), masked softmax.
/// The mask is written out here independently of the spec's `visible`.
/// Returns (out (B, T, H, D), lse (B, H, T)); a row with no visible key gives out 0, lse 0.
fn naive(q: &[f64], k: &[f64], v: &[f64], seg: Option<&[u32]>, p: &AttnParams) -> (Vec<f64>, Vec<f64>) {
    let (nb, nt, nh, nkv, nd) = (p.b, p.t, p.h, p.kv_heads, p.d);
    let mut out = vec![0.0; nb * nt * nh * nd];
    let mut lse = vec![0.0; nb * nh * nt];
    for b in 0..nb {
        for h in 0..nh {
            let g = h * nkv / nh;
            let mut s = vec![f64::NEG_INFINITY; nt * nt]; // (T, T), -inf where masked
            for i in 0..nt {
                for j in 0..nt {
                    let causal_ok = !p.causal || j <= i;
                    let window_ok = p.window.is_none_or(|w| (i as i64 - j as i64) < w as i64);
                    let seg_ok = seg.is_none_or(|sg| sg[b * nt + i] == sg[b * nt + j]);
                    if causal_ok && window_ok && seg_ok {
                        let dotp: f64 = (0..nd)
                            .map(|c| q[((b * nt + i) * nh + h) * nd + c] * k[((b * nt + j) * nkv + g) * nd + c])
                            .sum();
                        let raw = p.scale as f64 * dotp;
                        s[i * nt + j] = match p.softcap {
                            Some(cap) => cap as f64 * (raw / cap as f64).tanh(),
                            None => raw,
                        };
                    }
                }
            }
            for i in 0..nt {
                let row = &s[i * nt..(i + 1) * nt];
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue; // no visible key: out 0, lse 0
                }
                let z: f64 = row.iter().map(|&x| (x - m).exp()).sum();
                lse[(b * nh + h) * nt + i] = m + z.ln();
                for (j, &x) in row.iter().enumerate() {
                    let pij = (x - m).exp() / z;
                    for c in 0..nd {
                        out[((b * nt + i) * nh + h) * nd + c] += pij * v[((b * nt + j) * nkv + g) * nd + c];
                    }
                }
            }
        }
    }
    (out, lse)
}

struct Inputs<F> {
    q: Vec<F>,
    k: Vec<F>,
    v: Vec<F>,
    seg: Option<Vec<u32>>,
}

/// Random q, k, v in [-2, 2) (with scale 1/sqrt(D) and D <= 16 the scores reach a few units, so
/// the softmax is far from uniform and the soft-cap at 5 bends some of them).
fn inputs(rng: &mut Rng, p: &AttnParams, segs: bool) -> Inputs<f64> {
    let nq = p.b * p.t * p.h * p.d;
    let nkv = p.b * p.t * p.kv_heads * p.d;
    Inputs {
        q: rand_f64(rng, nq, -2.0, 2.0),
        k: rand_f64(rng, nkv, -2.0, 2.0),
        v: rand_f64(rng, nkv, -2.0, 2.0),
        seg: segs.then(|| segments(rng, p.b, p.t)),
    }
}

fn spec_fwd(x: &Inputs<f64>, p: &AttnParams) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![f64::NAN; x.q.len()]; // NaN-filled: every element must be written
    let mut lse = vec![f64::NAN; p.b * p.h * p.t];
    attention_forward(&mut out, &mut lse, &x.q, &x.k, &x.v, x.seg.as_deref(), p);
    (out, lse)
}

fn describe(p: &AttnParams, segs: bool) -> String {
    format!(
        "B{} T{} H{} KV{} D{} causal={} window={:?} softcap={:?} segs={}",
        p.b, p.t, p.h, p.kv_heads, p.d, p.causal, p.window, p.softcap, segs
    )
}

/// (1) The tiled online-softmax spec equals the full-matrix softmax. Both are f64 with different
/// summation orders (per tile with rescaling vs one pass): measured max abs error 8.9e-16, so 1e-12
/// still catches any masking or rescaling mistake (those are O(1e-2) or more).
#[test]
fn attention_forward_matches_naive() {
    const TOL: Tol = Tol { abs: 1e-12, rel: 1e-12 };
    let mut rng = Rng::new(1);
    for &(b, t, h, kv, d) in &FWD_SHAPES {
        for (p, segs) in mask_variants(params(b, t, h, kv, d)) {
            let x = inputs(&mut rng, &p, segs);
            let (out, lse) = spec_fwd(&x, &p);
            let (want_out, want_lse) = naive(&x.q, &x.k, &x.v, x.seg.as_deref(), &p);
            let what = describe(&p, segs);
            assert_close(&out, &want_out, TOL, &format!("out {what}"));
            assert_close(&lse, &want_lse, TOL, &format!("lse {what}"));
        }
    }
}

/// The naive reference is only a useful oracle if the masks change the answer on these shapes.
#[test]
fn attention_masks_change_the_output() {
    let mut rng = Rng::new(2);
    let p = params(1, 67, 2, 1, 5);
    let x = inputs(&mut rng, &p, true);
    let (base, _) = naive(&x.q, &x.k, &x.v, None, &p);
    let variants = [
        (AttnParams { causal: true, ..p }, None),
        (AttnParams { window: Some(3), ..p }, None),
        (AttnParams { softcap: Some(5.0), ..p }, None),
        (p, x.seg.as_deref()),
    ];
    for (pv, seg) in variants {
        let (o, _) = naive(&x.q, &x.k, &x.v, seg, &pv);
        let diff = o.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff > 1e-3, "{}: mask made no difference ({diff:e})", describe(&pv, seg.is_some()));
    }
}

/// Runs the f64 spec backward with dout = r and checks dq, dk, dv against central finite
/// differences of L = <out, r> w.r.t. every element of q, k and v.
fn check_backward(p: &AttnParams, segs: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = inputs(&mut rng, p, segs);
    let r = rand_f64(&mut rng, x.q.len(), -1.0, 1.0);
    let (out, lse) = spec_fwd(&x, p);
    // Gradients start at 1.0, not 0, so the test also checks that backward adds (+=).
    let (mut dq, mut dk, mut dv) = (vec![1.0; x.q.len()], vec![1.0; x.k.len()], vec![1.0; x.v.len()]);
    attention_backward(&mut dq, &mut dk, &mut dv, &r, &x.q, &x.k, &x.v, &out, &lse, x.seg.as_deref(), p);
    let loss = |q: &[f64], k: &[f64], v: &[f64]| {
        let mut o = vec![0.0; q.len()];
        let mut l = vec![0.0; p.b * p.h * p.t];
        attention_forward(&mut o, &mut l, q, k, v, x.seg.as_deref(), p);
        dot(&o, &r)
    };
    const H: f64 = 1e-6; // central-difference step (see Tol::FD64)
    let fd_q = finite_diff(&x.q, H, |q| loss(q, &x.k, &x.v));
    let fd_k = finite_diff(&x.k, H, |k| loss(&x.q, k, &x.v));
    let fd_v = finite_diff(&x.v, H, |v| loss(&x.q, &x.k, v));
    let plus1 = |g: Vec<f64>| g.into_iter().map(|x| x + 1.0).collect::<Vec<_>>();
    let what = describe(p, segs);
    assert_close(&dq, &plus1(fd_q), Tol::FD64, &format!("dq {what}"));
    assert_close(&dk, &plus1(fd_k), Tol::FD64, &format!("dk {what}"));
    assert_close(&dv, &plus1(fd_v), Tol::FD64, &format!("dv {what}"));
}

/// (2) Backward vs finite differences on every mask combination, on a grouped shape (H / KV = 3,
/// B = 2, D = 3) small enough that 2 forwards per input element stay fast.
#[test]
fn attention_backward_matches_finite_differences() {
    for (i, (p, segs)) in mask_variants(params(2, 7, 6, 2, 3)).into_iter().enumerate() {
        check_backward(&p, segs, 100 + i as u64);
    }
}

/// (2b) Backward vs finite differences across two key tiles (T = 67 > BLOCK_K) with multi-query
/// heads, and H = KV = 1 with D = 1, and the rows-with-no-visible-key case (non-causal window 0).
#[test]
fn attention_backward_matches_finite_differences_multi_tile() {
    const { assert!(67 > BLOCK_K, "T = 67 must span more than one key tile") };
    let base = params(1, 67, 2, 1, 2);
    check_backward(&base, false, 200);
    check_backward(&AttnParams { causal: true, window: Some(5), softcap: Some(5.0), ..base }, true, 201);
    check_backward(&AttnParams { causal: true, ..params(1, 67, 1, 1, 1) }, false, 202);
    // Non-causal window 0: each query sees only later keys of its segment, so the last token of
    // every segment sees nothing and must get zero gradients.
    check_backward(&AttnParams { window: Some(0), ..params(2, 7, 2, 1, 3) }, true, 203);
}

struct Grads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// (out, lse, grads) of the f32 spec or of the fast f32 paths, for dout = r.
fn run_f32(x: &Inputs<f32>, r: &[f32], p: &AttnParams, fast: bool) -> (Vec<f32>, Vec<f32>, Grads) {
    let seg = x.seg.as_deref();
    let mut out = vec![f32::NAN; x.q.len()];
    let mut lse = vec![f32::NAN; p.b * p.h * p.t];
    let mut g = Grads { dq: vec![0.0; x.q.len()], dk: vec![0.0; x.k.len()], dv: vec![0.0; x.v.len()] };
    if fast {
        attention(&mut out, &mut lse, &x.q, &x.k, &x.v, seg, p);
        attention_backward_fast(&mut g.dq, &mut g.dk, &mut g.dv, r, &x.q, &x.k, &x.v, &out, &lse, seg, p);
    } else {
        attention_forward(&mut out, &mut lse, &x.q, &x.k, &x.v, seg, p);
        attention_backward(&mut g.dq, &mut g.dk, &mut g.dv, r, &x.q, &x.k, &x.v, &out, &lse, seg, p);
    }
    (out, lse, g)
}

fn inputs_f32(rng: &mut Rng, p: &AttnParams, segs: bool) -> Inputs<f32> {
    let x = inputs(rng, p, segs);
    Inputs { q: to_f32(&x.q), k: to_f32(&x.k), v: to_f32(&x.v), seg: x.seg }
}

/// (3) The fast f32 paths against the f32 spec (which accumulates in f64 and rounds once).
/// The fast paths accumulate in f32 (gemm blocks of 64 x 64, online softmax across key blocks):
/// dot products over D <= 16, sums over <= T = 130 keys (forward) and over T * H / KV <= 390 query
/// rows (dk, dv). T = 130 spans three query and key blocks. Measured max abs error over these
/// cases (values up to: out 2.0, lse 7.2, dq 2.7, dk 2.8, dv 4.1): out 7.2e-7, lse 9.5e-7,
/// dq 6.6e-7, dk 8.3e-7, dv 1.3e-6. Tol::F32 (abs 1e-5 + rel 1e-4) leaves >= 8x headroom; a
/// masking or indexing bug is O(1e-2) or more.
#[test]
fn attention_fast_matches_spec() {
    let mut rng = Rng::new(3);
    let shapes = [(2, 130, 4, 2, 16), (1, 67, 6, 2, 5), (2, 7, 3, 3, 1), (1, 1, 2, 1, 4)];
    for &(b, t, h, kv, d) in &shapes {
        for (p, segs) in mask_variants(params(b, t, h, kv, d)) {
            let x = inputs_f32(&mut rng, &p, segs);
            let r = rand_f32(&mut rng, x.q.len(), -1.0, 1.0);
            let (out_s, lse_s, g_s) = run_f32(&x, &r, &p, false);
            let (out_f, lse_f, g_f) = run_f32(&x, &r, &p, true);
            let what = describe(&p, segs);
            assert_close(&out_f, &out_s, Tol::F32, &format!("fast out {what}"));
            assert_close(&lse_f, &lse_s, Tol::F32, &format!("fast lse {what}"));
            assert_close(&g_f.dq, &g_s.dq, Tol::F32, &format!("fast dq {what}"));
            assert_close(&g_f.dk, &g_s.dk, Tol::F32, &format!("fast dk {what}"));
            assert_close(&g_f.dv, &g_s.dv, Tol::F32, &format!("fast dv {what}"));
        }
    }
}

/// The fast backward accumulates (+=) like the spec: running it twice doubles the gradients.
#[test]
fn attention_fast_backward_accumulates() {
    let mut rng = Rng::new(4);
    let p = AttnParams { causal: true, ..params(2, 9, 4, 2, 3) };
    let x = inputs_f32(&mut rng, &p, false);
    let r = rand_f32(&mut rng, x.q.len(), -1.0, 1.0);
    let (out, lse, once) = run_f32(&x, &r, &p, true);
    let mut twice = Grads { dq: once.dq.clone(), dk: once.dk.clone(), dv: once.dv.clone() };
    attention_backward_fast(&mut twice.dq, &mut twice.dk, &mut twice.dv, &r, &x.q, &x.k, &x.v, &out, &lse, None, &p);
    let dbl = |v: &[f32]| v.iter().map(|x| 2.0 * x).collect::<Vec<f32>>();
    // x + x == 2x exactly in floating point.
    assert_close(&twice.dq, &dbl(&once.dq), Tol::EXACT, "dq twice");
    assert_close(&twice.dk, &dbl(&once.dk), Tol::EXACT, "dk twice");
    assert_close(&twice.dv, &dbl(&once.dv), Tol::EXACT, "dv twice");
}

/// (4) Rows that see no key: out = 0, lse = LSE_EMPTY_ROW, zero gradients, no NaN anywhere,
/// for the spec (f64 and f32) and the fast paths.
#[test]
fn attention_fully_masked_rows_are_zero() {
    let mut rng = Rng::new(5);
    // Causal window 0: no query sees any key. Non-causal window 0 with segments: only the last
    // token of each segment sees nothing (the others see later keys of their segment).
    for (p, segs) in [
        (AttnParams { causal: true, window: Some(0), ..params(2, 67, 4, 2, 5) }, false),
        (AttnParams { causal: false, window: Some(0), softcap: Some(5.0), ..params(2, 67, 4, 2, 5) }, true),
    ] {
        let x = inputs_f32(&mut rng, &p, segs);
        let r = rand_f32(&mut rng, x.q.len(), -1.0, 1.0);
        let seg = x.seg.clone();
        // Which (b, i) rows see nothing, from the problem statement directly.
        let empty = |b: usize, i: usize| match &seg {
            None => true,
            Some(s) => i + 1 == p.t || s[b * p.t + i] != s[b * p.t + i + 1],
        };
        for fast in [false, true] {
            let (out, lse, g) = run_f32(&x, &r, &p, fast);
            let what = format!("fast={fast} {}", describe(&p, segs));
            for buf in [&out, &lse, &g.dq, &g.dk, &g.dv] {
                assert!(buf.iter().all(|v| v.is_finite()), "{what}: non-finite value");
            }
            let mut n_empty = 0;
            for b in 0..p.b {
                for i in 0..p.t {
                    if !empty(b, i) {
                        continue;
                    }
                    n_empty += 1;
                    for h in 0..p.h {
                        let o = ((b * p.t + i) * p.h + h) * p.d;
                        assert!(out[o..o + p.d].iter().all(|&v| v == 0.0), "{what}: out row ({b},{i},{h}) not 0");
                        assert!(g.dq[o..o + p.d].iter().all(|&v| v == 0.0), "{what}: dq row ({b},{i},{h}) not 0");
                        assert_eq!(lse[(b * p.h + h) * p.t + i], LSE_EMPTY_ROW, "{what}: lse ({b},{i},{h})");
                    }
                }
            }
            if seg.is_none() {
                // Nothing sees any key, so no key gets a gradient either.
                assert!(g.dk.iter().chain(&g.dv).all(|&v| v == 0.0), "{what}: dk/dv not 0");
                assert_eq!(n_empty, p.b * p.t);
            } else {
                assert!(n_empty >= 2 * p.b && n_empty < p.b * p.t, "{what}: {n_empty} empty rows");
                assert!(out.iter().any(|&v| v != 0.0), "{what}: all rows empty");
            }
        }
        // And the f64 spec agrees with the naive reference on these rows too.
        let x64 = Inputs { q: to_f64(&x.q), k: to_f64(&x.k), v: to_f64(&x.v), seg: x.seg.clone() };
        let (out, lse) = spec_fwd(&x64, &p);
        let (want_out, want_lse) = naive(&x64.q, &x64.k, &x64.v, x64.seg.as_deref(), &p);
        assert_close(&out, &want_out, Tol { abs: 1e-12, rel: 1e-12 }, "f64 out, masked rows");
        assert_close(&lse, &want_lse, Tol { abs: 1e-12, rel: 1e-12 }, "f64 lse, masked rows");
    }
}

/// Copies token range `r` of batch row 0 out of a (1, T, heads, D) buffer.
fn slice_tokens<F: Copy>(x: &[F], r: std::ops::Range<usize>, heads: usize, d: usize) -> Vec<F> {
    x[r.start * heads * d..r.end * heads * d].to_vec()
}

/// (5) Two sequences packed in one row with segment ids give the outputs (and gradients) of running
/// each sequence alone. For the spec: exact (bitwise) when it sees the same key tiles either way
/// (packed row within one tile); across tile boundaries its online softmax rescales in a different
/// order, so there we allow 1e-12 in f64 (rounding level, ~1e-16). The fast f32 paths group rows
/// and keys into gemm blocks that start at different tokens packed vs alone, so their rounding
/// differs: measured max abs err 6e-8 (1 ulp of values ~0.5); we allow abs 1e-6 + rel 1e-5.
/// A leak across segments changes values by O(1e-2).
#[test]
fn attention_packing_isolation() {
    let mut rng = Rng::new(6);
    for (lens, causal, window, softcap) in [
        ((5, 9), true, None, None),
        ((5, 9), false, Some(3), Some(5.0)),
        ((40, 50), true, Some(17), Some(5.0)), // packed row spans two key tiles
        ((40, 50), false, None, None),
    ] {
        let (n0, n1) = lens;
        let t = n0 + n1;
        let packed = AttnParams { causal, window, softcap, ..params(1, t, 4, 2, 3) };
        let seg: Vec<u32> = (0..t).map(|i| if i < n0 { 1 } else { 2 }).collect();
        let x = inputs(&mut rng, &packed, false);
        let r = rand_f64(&mut rng, x.q.len(), -1.0, 1.0);
        let one_tile = t <= BLOCK_K;
        let (hq, hk, d) = (packed.h, packed.kv_heads, packed.d);
        let x = Inputs { seg: Some(seg), ..x };
        let x32 = Inputs { q: to_f32(&x.q), k: to_f32(&x.k), v: to_f32(&x.v), seg: x.seg.clone() };
        let r32 = to_f32(&r);
        let (out_p, lse_p) = spec_fwd(&x, &packed);
        let mut gp = (vec![0.0; x.q.len()], vec![0.0; x.k.len()], vec![0.0; x.v.len()]);
        attention_backward(
            &mut gp.0,
            &mut gp.1,
            &mut gp.2,
            &r,
            &x.q,
            &x.k,
            &x.v,
            &out_p,
            &lse_p,
            x.seg.as_deref(),
            &packed,
        );
        let (out_pf, lse_pf, gpf) = run_f32(&x32, &r32, &packed, true);
        for (tok, n) in [(0..n0, n0), (n0..t, n1)] {
            let alone = AttnParams { t: n, ..packed };
            let xa = Inputs {
                q: slice_tokens(&x.q, tok.clone(), hq, d),
                k: slice_tokens(&x.k, tok.clone(), hk, d),
                v: slice_tokens(&x.v, tok.clone(), hk, d),
                seg: None,
            };
            let ra = slice_tokens(&r, tok.clone(), hq, d);
            let (out_a, lse_a) = spec_fwd(&xa, &alone);
            let mut ga = (vec![0.0; xa.q.len()], vec![0.0; xa.k.len()], vec![0.0; xa.v.len()]);
            attention_backward(&mut ga.0, &mut ga.1, &mut ga.2, &ra, &xa.q, &xa.k, &xa.v, &out_a, &lse_a, None, &alone);
            let lse_slice =
                |l: &[f64]| (0..hq).flat_map(|h| l[h * t + tok.start..h * t + tok.end].to_vec()).collect::<Vec<_>>();
            let tol = if one_tile { Tol::EXACT } else { Tol { abs: 1e-12, rel: 1e-12 } };
            let what = format!("spec {:?} alone vs packed {}", tok, describe(&packed, true));
            assert_close(&slice_tokens(&out_p, tok.clone(), hq, d), &out_a, tol, &format!("out {what}"));
            assert_close(&lse_slice(&lse_p), &lse_a, tol, &format!("lse {what}"));
            assert_close(&slice_tokens(&gp.0, tok.clone(), hq, d), &ga.0, tol, &format!("dq {what}"));
            assert_close(&slice_tokens(&gp.1, tok.clone(), hk, d), &ga.1, tol, &format!("dk {what}"));
            assert_close(&slice_tokens(&gp.2, tok.clone(), hk, d), &ga.2, tol, &format!("dv {what}"));

            // The fast paths: rounding-level (see above).
            const FAST_TOL: Tol = Tol { abs: 1e-6, rel: 1e-5 };
            let xa32 = Inputs { q: to_f32(&xa.q), k: to_f32(&xa.k), v: to_f32(&xa.v), seg: None };
            let (out_af, lse_af, gaf) = run_f32(&xa32, &to_f32(&ra), &alone, true);
            let lse_slice32 =
                |l: &[f32]| (0..hq).flat_map(|h| l[h * t + tok.start..h * t + tok.end].to_vec()).collect::<Vec<_>>();
            let what = format!("fast {:?} alone vs packed {}", tok, describe(&packed, true));
            assert_close(&slice_tokens(&out_pf, tok.clone(), hq, d), &out_af, FAST_TOL, &format!("out {what}"));
            assert_close(&lse_slice32(&lse_pf), &lse_af, FAST_TOL, &format!("lse {what}"));
            assert_close(&slice_tokens(&gpf.dq, tok.clone(), hq, d), &gaf.dq, FAST_TOL, &format!("dq {what}"));
            assert_close(&slice_tokens(&gpf.dk, tok.clone(), hk, d), &gaf.dk, FAST_TOL, &format!("dk {what}"));
            assert_close(&slice_tokens(&gpf.dv, tok.clone(), hk, d), &gaf.dv, FAST_TOL, &format!("dv {what}"));
        }
    }
}
