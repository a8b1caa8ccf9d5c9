// linear_cross_entropy: spec forward vs a naive full-logits f64 computation, spec backward vs
// central finite differences (f64, h = 1e-6), the fused f32 fast path vs the spec, and the
// all-ignored edge case. Shapes: N = 1, 5, 13 with chunk 4 (ragged last chunk), V = 7, 37, C = 3, 9.
// Spec: src/backend/cpu/linear_cross_entropy.rs

use crate::common::*;
use loraforge::backend::cpu::linear_cross_entropy::{
    ce_count, linear_cross_entropy, linear_cross_entropy_backward, linear_cross_entropy_forward, CeStats, IGNORE_INDEX,
};
use loraforge::rng::Rng;

const CHUNK: usize = 4;
const SHAPES: [(usize, usize, usize); 6] = [(1, 7, 3), (5, 37, 9), (13, 7, 9), (13, 37, 3), (5, 7, 3), (13, 37, 9)];
// Soft cap 1.5 with logits up to ~|3|: tanh is well inside its nonlinear region, so a wrong
// derivative factor cannot hide.
const SOFTCAPS: [Option<f32>; 2] = [None, Some(1.5)];

/// Targets with ignores: for N >= 8 tokens 4..8 (the whole second chunk) are ignored, plus every
/// third token; N = 1 keeps its only token so the single-token case has a loss.
fn make_targets(rng: &mut Rng, n: usize, v: usize) -> Vec<i32> {
    (0..n)
        .map(|i| {
            let chunk_ignored = n >= 8 && (4..8).contains(&i);
            if chunk_ignored || (n > 1 && i % 3 == 2) {
                IGNORE_INDEX
            } else {
                rng.below(v) as i32
            }
        })
        .collect()
}

/// Naive reference: the whole (N, V) logits matrix, then logsumexp per row, all in f64.
fn naive_loss(
    h: &[f64],
    w: &[f64],
    targets: &[i32],
    n: usize,
    c: usize,
    v: usize,
    softcap: Option<f32>,
) -> (f64, usize) {
    let mut logits = vec![0.0f64; n * v]; // (N, V)
    for i in 0..n {
        for j in 0..v {
            let raw = dot(&h[i * c..(i + 1) * c], &w[j * c..(j + 1) * c]);
            logits[i * v + j] = match softcap {
                Some(cap) => cap as f64 * (raw / cap as f64).tanh(),
                None => raw,
            };
        }
    }
    let (mut sum, mut count) = (0.0, 0);
    for i in 0..n {
        if targets[i] == IGNORE_INDEX {
            continue;
        }
        let row = &logits[i * v..(i + 1) * v];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        sum += lse - row[targets[i] as usize];
        count += 1;
    }
    (sum, count)
}

struct Case {
    h: Vec<f64>,
    w: Vec<f64>,
    targets: Vec<i32>,
}

fn make_case(seed: u64, n: usize, v: usize, c: usize) -> Case {
    let mut rng = Rng::new(seed);
    let h = rand_f64(&mut rng, n * c, -1.0, 1.0);
    let w = rand_f64(&mut rng, v * c, -1.0, 1.0);
    let targets = make_targets(&mut rng, n, v);
    Case { h, w, targets }
}

#[test]
fn linear_cross_entropy_forward_matches_naive() {
    for (si, &(n, v, c)) in SHAPES.iter().enumerate() {
        for softcap in SOFTCAPS {
            let k = make_case(100 + si as u64, n, v, c);
            let got = linear_cross_entropy_forward(&k.h, &k.w, &k.targets, n, c, v, CHUNK, softcap);
            let (want, count) = naive_loss(&k.h, &k.w, &k.targets, n, c, v, softcap);
            assert_eq!(got.count, count, "count n={n} v={v} c={c}");
            assert_eq!(got.count, ce_count(&k.targets));
            assert!(count > 0);
            // Same f64 arithmetic in a different order (fold vs per-chunk): rounding only.
            assert_close(
                &[got.loss_sum],
                &[want],
                Tol { abs: 1e-12, rel: 1e-12 },
                &format!("loss n={n} v={v} c={c} softcap={softcap:?}"),
            );
            // The chunk size only bounds memory: 1, 3 and > N give the same sum in the same order.
            for ch in [1, 3, n + 5] {
                let other = linear_cross_entropy_forward(&k.h, &k.w, &k.targets, n, c, v, ch, softcap);
                assert_eq!(other, got, "chunk {ch} changes the spec result");
            }
        }
    }
}

#[test]
fn linear_cross_entropy_forward_stable_for_large_logits() {
    // Logits around 1e3: exp would overflow without the max subtraction.
    let (n, v, c) = (5, 37, 9);
    let mut k = make_case(7, n, v, c);
    k.h.iter_mut().for_each(|x| *x *= 300.0);
    let got = linear_cross_entropy_forward(&k.h, &k.w, &k.targets, n, c, v, CHUNK, None);
    let (want, _) = naive_loss(&k.h, &k.w, &k.targets, n, c, v, None);
    assert!(got.loss_sum.is_finite() && want > 100.0, "loss {} want {want}", got.loss_sum);
    assert_close(&[got.loss_sum], &[want], Tol { abs: 1e-9, rel: 1e-12 }, "large logits");
    let fast = linear_cross_entropy(&to_f32(&k.h), &to_f32(&k.w), &k.targets, n, c, v, CHUNK, None, None);
    // f32 logits of magnitude ~1e3 carry ~1e-4 absolute rounding each; sum over a few tokens.
    assert_close(&[fast.loss_sum], &[want], Tol { abs: 1e-2, rel: 1e-5 }, "large logits fast");
}

#[test]
fn linear_cross_entropy_backward_matches_finite_differences() {
    // grad_scale != 1 so a missing or doubled scale shows; a nonzero start value in dh/dw checks +=.
    let scale = 0.37;
    for (si, &(n, v, c)) in SHAPES.iter().enumerate() {
        for softcap in SOFTCAPS {
            let k = make_case(200 + si as u64, n, v, c);
            let mut dh = vec![0.5f64; n * c];
            let mut dw = vec![-0.25f64; v * c];
            linear_cross_entropy_backward(
                &mut dh,
                Some(&mut dw),
                &k.h,
                &k.w,
                &k.targets,
                n,
                c,
                v,
                CHUNK,
                softcap,
                scale,
            );
            dh.iter_mut().for_each(|x| *x -= 0.5);
            dw.iter_mut().for_each(|x| *x += 0.25);

            let fd_h = finite_diff(&k.h, 1e-6, |h| {
                scale * linear_cross_entropy_forward(h, &k.w, &k.targets, n, c, v, CHUNK, softcap).loss_sum
            });
            let fd_w = finite_diff(&k.w, 1e-6, |w| {
                scale * linear_cross_entropy_forward(&k.h, w, &k.targets, n, c, v, CHUNK, softcap).loss_sum
            });
            let what = format!("n={n} v={v} c={c} softcap={softcap:?}");
            assert_close(&dh, &fd_h, Tol::FD64, &format!("dh {what}"));
            assert_close(&dw, &fd_w, Tol::FD64, &format!("dw {what}"));
            // Ignored tokens get exactly zero gradient (not just a small one).
            for i in 0..n {
                if k.targets[i] == IGNORE_INDEX {
                    assert!(dh[i * c..(i + 1) * c].iter().all(|&x| x == 0.0), "ignored token {i} has a gradient");
                }
            }
            // dw = None must leave dh unchanged.
            let mut dh2 = vec![0.0f64; n * c];
            linear_cross_entropy_backward(&mut dh2, None, &k.h, &k.w, &k.targets, n, c, v, CHUNK, softcap, scale);
            assert_close(&dh2, &dh, Tol { abs: 1e-15, rel: 1e-12 }, &format!("dh without dw {what}"));
        }
    }
}

/// The fused f32 path against the f64 spec: loss and both gradients, with and without dw.
#[test]
fn linear_cross_entropy_fast_matches_spec() {
    let mut worst = [0.0f64; 3];
    let shapes = SHAPES.iter().copied().chain([(64, 301, 67), (29, 1031, 16)]);
    for (si, (n, v, c)) in shapes.enumerate() {
        for softcap in SOFTCAPS {
            let k = make_case(300 + si as u64, n, v, c);
            let (h32, w32) = (to_f32(&k.h), to_f32(&k.w));
            // The spec runs in f64 on the f32-rounded inputs, so only the fast path's f32 arithmetic differs.
            let (h64, w64) = (to_f64(&h32), to_f64(&w32));
            let count = ce_count(&k.targets);
            let scale = 1.0 / count as f64;
            let want = linear_cross_entropy_forward(&h64, &w64, &k.targets, n, c, v, CHUNK, softcap);
            let mut dh_want = vec![0.0f64; n * c];
            let mut dw_want = vec![0.0f64; v * c];
            linear_cross_entropy_backward(
                &mut dh_want,
                Some(&mut dw_want),
                &h64,
                &w64,
                &k.targets,
                n,
                c,
                v,
                CHUNK,
                softcap,
                scale,
            );

            let fwd_only = linear_cross_entropy(&h32, &w32, &k.targets, n, c, v, CHUNK, softcap, None);
            let mut dh = vec![0.0f32; n * c];
            let mut dw = vec![0.0f32; v * c];
            let got = linear_cross_entropy(
                &h32,
                &w32,
                &k.targets,
                n,
                c,
                v,
                CHUNK,
                softcap,
                Some((&mut dh, Some(&mut dw), scale)),
            );
            let mut dh_nodw = vec![0.0f32; n * c];
            linear_cross_entropy(&h32, &w32, &k.targets, n, c, v, CHUNK, softcap, Some((&mut dh_nodw, None, scale)));

            let what = format!("n={n} v={v} c={c} softcap={softcap:?}");
            assert_eq!(got.count, want.count, "{what}");
            assert_eq!(fwd_only, got, "forward-only and fused pass disagree: {what}");
            assert_eq!(dh_nodw, dh, "dw = None changed dh: {what}");
            // Loss: f32 logits (K <= 67 products, rel err ~1e-7 * sqrt(K)) of size ~|8|, per token
            // error ~1e-7, summed over <= 64 tokens. Measured max 8.8e-7 abs; allow 2e-5 + 1e-6 rel.
            assert_close(&[got.loss_sum], &[want.loss_sum], Tol { abs: 2e-5, rel: 1e-6 }, &format!("loss {what}"));
            // Gradients: f32 dlogits (|.| <= scale) through an f32 matmul over V <= 1031.
            // Measured max 6.9e-8 abs on gradients of size ~1e-2; Tol::F32 (1e-5 abs, 1e-4 rel) has margin.
            assert_close(&dh, &dh_want, Tol::F32, &format!("dh {what}"));
            assert_close(&dw, &dw_want, Tol::F32, &format!("dw {what}"));
            worst[0] = worst[0].max((got.loss_sum - want.loss_sum).abs());
            worst[1] = worst[1].max(dh.iter().zip(&dh_want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max));
            worst[2] = worst[2].max(dw.iter().zip(&dw_want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max));
        }
    }
    eprintln!(
        "linear_cross_entropy fast vs spec: max abs err loss {:e}, dh {:e}, dw {:e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn linear_cross_entropy_all_ignored() {
    let (n, v, c) = (13, 37, 9);
    let k = make_case(400, n, v, c);
    let targets = vec![IGNORE_INDEX; n];
    for softcap in SOFTCAPS {
        let spec = linear_cross_entropy_forward(&k.h, &k.w, &targets, n, c, v, CHUNK, softcap);
        assert_eq!(spec, CeStats { loss_sum: 0.0, count: 0 });
        assert_eq!(spec.mean(), 0.0);
        let mut dh = vec![0.0f64; n * c];
        let mut dw = vec![0.0f64; v * c];
        linear_cross_entropy_backward(&mut dh, Some(&mut dw), &k.h, &k.w, &targets, n, c, v, CHUNK, softcap, 1.0);
        assert!(dh.iter().chain(&dw).all(|&x| x == 0.0), "spec grads not zero");

        let (h32, w32) = (to_f32(&k.h), to_f32(&k.w));
        let mut dh32 = vec![0.0f32; n * c];
        let mut dw32 = vec![0.0f32; v * c];
        let fast = linear_cross_entropy(
            &h32,
            &w32,
            &targets,
            n,
            c,
            v,
            CHUNK,
            softcap,
            Some((&mut dh32, Some(&mut dw32), 1.0)),
        );
        assert_eq!(fast, CeStats { loss_sum: 0.0, count: 0 });
        assert!(dh32.iter().chain(&dw32).all(|&x| x == 0.0), "fast grads not zero");
    }
    // N = 0 is not an error either.
    assert_eq!(linear_cross_entropy(&[], &to_f32(&k.w), &[], 0, c, v, CHUNK, None, None), CeStats::default());
}

#[test]
#[should_panic(expected = "outside [0, 7)")]
fn linear_cross_entropy_rejects_out_of_range_target() {
    let k = make_case(500, 1, 7, 3);
    linear_cross_entropy_forward(&k.h, &k.w, &[7], 1, 3, 7, CHUNK, None);
}
