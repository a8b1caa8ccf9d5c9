//! rope: the f64 spec against finite differences, against an independent transcription of HF's
//! `rotate_half` formula, layout equivalence (the GGUF permutation), rotation invariants, partial
//! rotary, packed positions, each scaling's inv_freq against hand-computed values, and RopeTable.

use crate::common::*;
use loraforge::backend::cpu::rope::{
    rope_backward, rope_forward, rope_inv_freq, RopeConfig, RopeLayout, RopeScaling, RopeTable,
};
use loraforge::rng::Rng;
use std::f64::consts::PI;

fn cfg(head_dim: usize, rotary_dim: usize, theta: f32, layout: RopeLayout, scaling: RopeScaling) -> RopeConfig {
    RopeConfig { head_dim, rotary_dim, theta, layout, scaling }
}

fn fwd(x: &[f64], pos: &[u32], c: &RopeConfig, b: usize, t: usize, nh: usize) -> Vec<f64> {
    let mut out = vec![f64::NAN; x.len()]; // NaN: every element must be written
    rope_forward(&mut out, x, pos, c, b, t, nh);
    out
}

fn rand_pos(rng: &mut Rng, n: usize, max: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(max) as u32).collect()
}

/// Configs chosen to break index arithmetic: D = 1 pair, odd D with partial rotary, rot < D in both
/// layouts, and a YaRN config so the attention scaling m != 1 is exercised in the backward.
fn configs() -> Vec<RopeConfig> {
    use RopeLayout::*;
    vec![
        cfg(2, 2, 10000.0, HalfSplit, RopeScaling::None),
        cfg(10, 10, 10000.0, HalfSplit, RopeScaling::None),
        cfg(10, 10, 10000.0, Interleaved, RopeScaling::None),
        cfg(13, 6, 500000.0, HalfSplit, RopeScaling::Linear { factor: 2.0 }),
        cfg(13, 6, 500000.0, Interleaved, RopeScaling::None),
        cfg(16, 16, 10000.0, HalfSplit, RopeScaling::yarn(4.0, 64)),
        cfg(
            16,
            12,
            500000.0,
            Interleaved,
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 64 },
        ),
    ]
}

#[test]
fn rope_backward_matches_finite_differences() {
    let mut rng = Rng::new(11);
    for c in configs() {
        for &(b, t, nh) in &[(1, 1, 1), (2, 3, 3)] {
            let n = b * t * nh * c.head_dim;
            let x = rand_f64(&mut rng, n, -2.0, 2.0);
            let r = rand_f64(&mut rng, n, -1.0, 1.0);
            let pos = rand_pos(&mut rng, b * t, 200);
            let mut dx = vec![0.0; n];
            rope_backward(&mut dx, &r, &pos, &c, b, t, nh);
            let fd = finite_diff(&x, 1e-6, |xs| dot(&fwd(xs, &pos, &c, b, t, nh), &r));
            assert_close(&dx, &fd, Tol::FD64, &format!("dx {c:?} b={b} t={t} nh={nh}"));
        }
    }
}

#[test]
fn rope_half_split_matches_hf_rotate_half() {
    // Independent transcription of HF `apply_rotary_pos_emb`: emb = cat(freqs, freqs),
    // out = x * cos(emb) + rotate_half(x) * sin(emb), rotate_half(x) = cat(-x2, x1), on x[..rot].
    let mut rng = Rng::new(12);
    let c = cfg(12, 8, 10000.0, RopeLayout::HalfSplit, RopeScaling::None);
    let (b, t, nh) = (2, 5, 3);
    let x = rand_f64(&mut rng, b * t * nh * 12, -1.0, 1.0);
    let pos = rand_pos(&mut rng, b * t, 4096);
    let got = fwd(&x, &pos, &c, b, t, nh);
    let (rot, h) = (8, 4);
    let mut want = x.clone();
    for (n, &p) in pos.iter().enumerate() {
        for hd in 0..nh {
            let o = (n * nh + hd) * 12;
            let xh = &x[o..o + 12];
            for j in 0..rot {
                let freq = 1.0 / 10000f64.powf((2 * (j % h)) as f64 / rot as f64);
                let a = p as f64 * freq;
                let rh = if j < h { -xh[j + h] } else { xh[j - h] };
                want[o + j] = xh[j] * a.cos() + rh * a.sin();
            }
        }
    }
    // Same math in a different association: a few ulps of the values (|x| <= ~1.4).
    assert_close(&got, &want, Tol { abs: 1e-14, rel: 1e-14 }, "rope vs rotate_half");
}

#[test]
fn rope_interleaved_equals_half_split_after_gguf_permutation() {
    // GGUF stores Q/K rows permuted so that interleaved pair (2i, 2i+1) holds half-split (i, i + rot/2).
    let mut rng = Rng::new(13);
    for (d, rot) in [(8, 8), (14, 10), (2, 2)] {
        let half = cfg(d, rot, 10000.0, RopeLayout::HalfSplit, RopeScaling::yarn(2.0, 32));
        let inter = RopeConfig { layout: RopeLayout::Interleaved, ..half };
        let (b, t, nh) = (1, 4, 2);
        let x = rand_f64(&mut rng, b * t * nh * d, -1.0, 1.0);
        let pos = rand_pos(&mut rng, b * t, 100);
        let perm = |v: &[f64]| -> Vec<f64> {
            let mut p = v.to_vec();
            for head in 0..b * t * nh {
                let o = head * d;
                for i in 0..rot / 2 {
                    p[o + 2 * i] = v[o + i];
                    p[o + 2 * i + 1] = v[o + i + rot / 2];
                }
            }
            p
        };
        let a = perm(&fwd(&x, &pos, &half, b, t, nh));
        let bb = fwd(&perm(&x), &pos, &inter, b, t, nh);
        assert_close(&bb, &a, Tol::EXACT, &format!("forward d={d} rot={rot}"));
        let (mut dh, mut di) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        rope_backward(&mut dh, &x, &pos, &half, b, t, nh);
        rope_backward(&mut di, &perm(&x), &pos, &inter, b, t, nh);
        assert_close(&di, &perm(&dh), Tol::EXACT, &format!("backward d={d} rot={rot}"));
    }
}

#[test]
fn rope_position_zero_is_identity_and_norms_are_preserved() {
    let mut rng = Rng::new(14);
    for c in configs() {
        let (b, t, nh) = (1, 3, 2);
        let d = c.head_dim;
        let x = rand_f64(&mut rng, b * t * nh * d, -2.0, 2.0);
        let (_, m) = rope_inv_freq(&c);
        // Position 0: cos = 1, sin = 0, so out = m * x on rotated dims and x on the tail, exactly.
        let out0 = fwd(&x, &[0, 0, 0], &c, b, t, nh);
        let want0: Vec<f64> = (0..x.len()).map(|k| if k % d < c.rotary_dim { m * x[k] } else { x[k] }).collect();
        assert_close(&out0, &want0, Tol::EXACT, &format!("pos 0 {c:?}"));
        // Any position: each rotated pair keeps its norm (times m).
        let out = fwd(&x, &[5, 1000, 123456], &c, b, t, nh);
        for head in 0..b * t * nh {
            let o = head * d;
            for i in 0..c.rotary_dim / 2 {
                let (p, q) = match c.layout {
                    RopeLayout::HalfSplit => (i, i + c.rotary_dim / 2),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let nx = m * (x[o + p].powi(2) + x[o + q].powi(2)).sqrt();
                let no = (out[o + p].powi(2) + out[o + q].powi(2)).sqrt();
                assert!((nx - no).abs() <= 1e-14 * nx.max(1.0), "pair norm {nx} -> {no} in {c:?}");
            }
        }
    }
}

#[test]
fn rope_partial_rotary_leaves_tail_untouched() {
    let mut rng = Rng::new(15);
    let c = cfg(13, 6, 10000.0, RopeLayout::HalfSplit, RopeScaling::yarn(8.0, 128));
    let (b, t, nh) = (2, 2, 3);
    let x = rand_f64(&mut rng, b * t * nh * 13, -1.0, 1.0);
    let pos = vec![7, 300, 1, 99];
    let out = fwd(&x, &pos, &c, b, t, nh);
    let g = rand_f64(&mut rng, x.len(), -1.0, 1.0);
    let mut dx = vec![0.0; x.len()];
    rope_backward(&mut dx, &g, &pos, &c, b, t, nh);
    for k in 0..x.len() {
        if k % 13 >= 6 {
            assert_eq!(out[k], x[k], "forward tail at {k}");
            assert_eq!(dx[k], g[k], "backward tail at {k}");
        } else {
            assert_ne!(out[k], x[k], "rotated dim {k} unchanged"); // all positions > 0 here
        }
    }
}

#[test]
fn rope_scores_depend_only_on_relative_position() {
    // The point of RoPE: <rope(q, m), rope(k, n)> depends on m - n only (Su et al., eq. 16).
    let mut rng = Rng::new(16);
    for c in configs() {
        let d = c.head_dim;
        let q = rand_f64(&mut rng, d, -1.0, 1.0);
        let k = rand_f64(&mut rng, d, -1.0, 1.0);
        let score = |m: u32, n: u32| dot(&fwd(&q, &[m], &c, 1, 1, 1), &fwd(&k, &[n], &c, 1, 1, 1));
        let (s1, s2) = (score(10, 3), score(1007, 1000));
        assert!((s1 - s2).abs() < 1e-11, "{s1} vs {s2} for {c:?}");
    }
}

#[test]
fn rope_packed_positions_restart() {
    // One row holding two packed sequences (positions 0,1,2 then 0,1) gives per token exactly
    // what each sequence gives alone.
    let mut rng = Rng::new(17);
    let c = cfg(8, 8, 10000.0, RopeLayout::HalfSplit, RopeScaling::None);
    let nh = 2;
    let x = rand_f64(&mut rng, 5 * nh * 8, -1.0, 1.0);
    let packed = fwd(&x, &[0, 1, 2, 0, 1], &c, 1, 5, nh);
    let first = fwd(&x[..3 * nh * 8], &[0, 1, 2], &c, 1, 3, nh);
    let second = fwd(&x[3 * nh * 8..], &[0, 1], &c, 1, 2, nh);
    assert_close(&packed[..3 * nh * 8], &first, Tol::EXACT, "first sequence");
    assert_close(&packed[3 * nh * 8..], &second, Tol::EXACT, "second sequence");
}

#[test]
fn rope_inv_freq_default_and_linear() {
    let c = cfg(8, 8, 10000.0, RopeLayout::HalfSplit, RopeScaling::None);
    let (f, m) = rope_inv_freq(&c);
    // 1 / 10000^(2i/8) = 1, 0.1, 0.01, 0.001 (powf rounding: allow a few ulps).
    assert_close(&f, &[1.0, 0.1, 0.01, 0.001], Tol { abs: 0.0, rel: 1e-15 }, "default");
    assert_eq!(m, 1.0);
    let (fl, ml) = rope_inv_freq(&RopeConfig { scaling: RopeScaling::Linear { factor: 4.0 }, ..c });
    assert_close(&fl, &f.iter().map(|v| v / 4.0).collect::<Vec<_>>(), Tol::EXACT, "linear");
    assert_eq!(ml, 1.0);
    // Partial rotary: the exponent is over rotary_dim, not head_dim (HF: dim = head_dim * partial_rotary_factor).
    let (fp, _) = rope_inv_freq(&cfg(16, 8, 10000.0, RopeLayout::HalfSplit, RopeScaling::None));
    assert_close(&fp, &f, Tol::EXACT, "partial rotary");
}

#[test]
fn rope_inv_freq_llama3_hand_values() {
    // Llama 3.1: factor 8, low 1, high 4, original 8192, theta 500000, head_dim 64.
    // wavelen_i = 2 pi 500000^(i/32); by hand: wavelen < 8192/4 = 2048 iff i <= 14 (unchanged),
    // wavelen > 8192/1 iff i >= 18 (divided by 8), i = 15..17 on the smooth ramp.
    let scaling =
        RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 };
    let c = cfg(64, 64, 500000.0, RopeLayout::HalfSplit, scaling);
    let (f, m) = rope_inv_freq(&c);
    let (f0, _) = rope_inv_freq(&RopeConfig { scaling: RopeScaling::None, ..c });
    assert_eq!(f.len(), 32);
    assert_eq!(m, 1.0);
    for i in 0..32 {
        if i <= 14 {
            assert_eq!(f[i], f0[i], "high frequency {i} must be unchanged");
        } else if i >= 18 {
            assert_eq!(f[i], f0[i] / 8.0, "low frequency {i} must be divided by factor");
        } else {
            assert!(f[i] < f0[i] && f[i] > f0[i] / 8.0, "medium frequency {i} must be in between");
        }
    }
    // i = 16: inv = 500000^-0.5 = 1.414213562e-3, wavelen = 4442.88, s = (8192/wavelen - 1)/3 = 0.28129,
    // inv' = inv ((1 - s)/8 + s) = 5.248461609929547e-4 (python, f64).
    assert_close(&[f[16]], &[5.248461609929547e-4], Tol { abs: 0.0, rel: 1e-12 }, "llama3 i=16");
    // The ramp is continuous: s(i) is 0 at wavelen = 2048... so inv' is monotone decreasing in i.
    assert!(f.windows(2).all(|w| w[1] < w[0]), "llama3 inv_freq must decrease");
}

#[test]
fn rope_inv_freq_yarn_hand_values() {
    // head_dim 16, theta 10000, factor 4, original 2048, beta 32/1. By hand:
    // dim(r) = 16 ln(2048 / (2 pi r)) / (2 ln 10000): dim(32) = 2.016 -> low = 2, dim(1) = 5.026 -> high = 6.
    // ramp_i = clamp((i - 2) / 4, 0, 1) = 0, 0, 0, .25, .5, .75, 1, 1; m = 0.1 ln 4 + 1.
    let c = cfg(16, 16, 10000.0, RopeLayout::HalfSplit, RopeScaling::yarn(4.0, 2048));
    let (f, m) = rope_inv_freq(&c);
    let ramp = [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0];
    let want: Vec<f64> = (0..8)
        .map(|i| {
            let base = 10000f64.powf(-(2.0 * i as f64) / 16.0);
            ramp[i] * base / 4.0 + (1.0 - ramp[i]) * base
        })
        .collect();
    assert_close(&f, &want, Tol { abs: 0.0, rel: 1e-15 }, "yarn inv_freq");
    assert_close(&[m], &[0.1 * 4f64.ln() + 1.0], Tol::EXACT, "yarn attention factor");
    // An explicit attention_factor overrides the default.
    let ca = RopeConfig {
        scaling: RopeScaling::Yarn {
            factor: 4.0,
            original_max_position: 2048,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: Some(0.5),
        },
        ..c
    };
    assert_eq!(rope_inv_freq(&ca).1, 0.5);
    // Sanity of the hand numbers above.
    let dim = |r: f64| 16.0 * (2048.0 / (2.0 * PI * r)).ln() / (2.0 * 10000f64.ln());
    assert_eq!((dim(32.0).floor(), dim(1.0).ceil()), (2.0, 6.0));
}

#[test]
fn rope_yarn_factor_one_is_no_scaling() {
    for (d, theta, orig) in [(16, 10000.0, 2048), (64, 1e6, 32768), (6, 500000.0, 8)] {
        let c0 = cfg(d, d, theta, RopeLayout::HalfSplit, RopeScaling::None);
        let cy = RopeConfig { scaling: RopeScaling::yarn(1.0, orig), ..c0 };
        let (f0, m0) = rope_inv_freq(&c0);
        let (fy, my) = rope_inv_freq(&cy);
        // ramp * f + (1 - ramp) * f rounds differently from f where the ramp is fractional: 1 ulp.
        assert_close(&fy, &f0, Tol { abs: 0.0, rel: 4e-16 }, &format!("yarn factor 1, d={d}"));
        assert_eq!((m0, my), (1.0, 1.0));
    }
}

#[test]
fn rope_table_equals_direct_path() {
    let mut rng = Rng::new(18);
    for c in configs() {
        let (b, t, nh) = (2, 5, 3);
        let n = b * t * nh * c.head_dim;
        let table = RopeTable::new(&c, 300);
        let x = rand_f64(&mut rng, n, -2.0, 2.0);
        let pos = rand_pos(&mut rng, b * t, 300);
        let direct = fwd(&x, &pos, &c, b, t, nh);
        let mut via = vec![f64::NAN; n];
        table.forward(&mut via, &x, &pos, b, t, nh);
        assert_close(&via, &direct, Tol::EXACT, &format!("forward {c:?}"));
        // Backward, in f32 this time, with a non-zero dx to check it accumulates.
        let (x32, g32) = (to_f32(&x), rand_f32(&mut rng, n, -1.0, 1.0));
        let mut d_direct = x32.clone();
        rope_backward(&mut d_direct, &g32, &pos, &c, b, t, nh);
        let mut d_table = x32.clone();
        table.backward(&mut d_table, &g32, &pos, b, t, nh);
        assert_close(&d_table, &d_direct, Tol::EXACT, &format!("backward {c:?}"));
        // Accumulation: dx started at x, so dx - x is the plain backward.
        let mut d0 = vec![0.0f32; n];
        rope_backward(&mut d0, &g32, &pos, &c, b, t, nh);
        let sum: Vec<f32> = x32.iter().zip(&d0).map(|(a, b)| a + b).collect();
        // (x + d) is rounded once by the spec and twice here; |x + d| < 4 so 1 ulp <= 2.4e-7.
        assert_close(&d_direct, &sum, Tol { abs: 3e-7, rel: 0.0 }, "accumulates");
    }
}

#[test]
#[should_panic(expected = "beyond table size")]
fn rope_table_rejects_positions_past_its_end() {
    let c = cfg(4, 4, 10000.0, RopeLayout::HalfSplit, RopeScaling::None);
    let table = RopeTable::new(&c, 8);
    let mut out = vec![0.0f32; 4];
    table.forward(&mut out, &[1.0f32; 4], &[8], 1, 1, 1);
}

#[test]
fn rope_f32_matches_f64() {
    let mut rng = Rng::new(19);
    let c = cfg(64, 64, 500000.0, RopeLayout::HalfSplit, RopeScaling::None);
    let (b, t, nh) = (1, 7, 4);
    let x = rand_f32(&mut rng, b * t * nh * 64, -2.0, 2.0);
    let pos = rand_pos(&mut rng, b * t, 100000);
    let mut out = vec![0.0f32; x.len()];
    rope_forward(&mut out, &x, &pos, &c, b, t, nh);
    assert_close(&out, &fwd(&to_f64(&x), &pos, &c, b, t, nh), Tol::F32, "f32 vs f64");
}
