//! rms_norm: the f64 spec against finite differences (dx and dw, both weight forms), hand values,
//! invariants (scale invariance, add_one == w + 1), accumulation, and f32 against f64.

use crate::common::*;
use loraforge::backend::cpu::rms_norm::{rms_norm_backward, rms_norm_forward};
use loraforge::rng::Rng;

/// Shapes (rows, C) chosen to break block-based kernels: 1, primes, C not a multiple of 4/8/64.
const SHAPES: [(usize, usize); 5] = [(1, 1), (1, 7), (3, 13), (2, 67), (5, 129)];
const EPS: f32 = 1e-5;

fn fwd(x: &[f64], w: &[f64], rows: usize, c: usize, eps: f32, add_one: bool) -> (Vec<f64>, Vec<f64>) {
    let (mut out, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows]);
    rms_norm_forward(&mut out, &mut rstd, x, w, rows, c, eps, add_one);
    (out, rstd)
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let mut rng = Rng::new(1);
    for &(rows, c) in &SHAPES {
        for add_one in [false, true] {
            let x = rand_f64(&mut rng, rows * c, -2.0, 2.0);
            let w = rand_f64(&mut rng, c, -1.5, 1.5);
            let r = rand_f64(&mut rng, rows * c, -1.0, 1.0);
            let (_, rstd) = fwd(&x, &w, rows, c, EPS, add_one);
            let (mut dx, mut dw) = (vec![0.0; rows * c], vec![0.0; c]);
            rms_norm_backward(&mut dx, Some(&mut dw), &r, &x, &w, &rstd, rows, c, add_one);
            let fd_x = finite_diff(&x, 1e-6, |xs| dot(&fwd(xs, &w, rows, c, EPS, add_one).0, &r));
            let fd_w = finite_diff(&w, 1e-6, |ws| dot(&fwd(&x, ws, rows, c, EPS, add_one).0, &r));
            let what = format!("rows={rows} c={c} add_one={add_one}");
            assert_close(&dx, &fd_x, Tol::FD64, &format!("dx {what}"));
            assert_close(&dw, &fd_w, Tol::FD64, &format!("dw {what}"));
        }
    }
}

#[test]
fn rms_norm_hand_values() {
    // x = (3, 4): mean(x^2) = 12.5, with eps = 0 rstd = 1/sqrt(12.5); w = (2, -1).
    let s = 1.0 / 12.5f64.sqrt();
    let (out, rstd) = fwd(&[3.0, 4.0], &[2.0, -1.0], 1, 2, 0.0, false);
    assert_close(&rstd, &[s], Tol::EXACT, "rstd");
    // out is x * s * w computed in f64 and rounded once; identical to this expression.
    assert_close(&out, &[3.0 * s * 2.0, -(4.0 * s)], Tol::EXACT, "out");
    // Gemma's form multiplies by (1 + w) = (3, 0).
    let (out1, _) = fwd(&[3.0, 4.0], &[2.0, -1.0], 1, 2, 0.0, true);
    assert_close(&out1, &[3.0 * s * 3.0, 0.0], Tol::EXACT, "out add_one");
}

#[test]
fn rms_norm_add_one_equals_shifted_weight() {
    let mut rng = Rng::new(2);
    let (rows, c) = (3, 67);
    let x = rand_f64(&mut rng, rows * c, -3.0, 3.0);
    let w = rand_f64(&mut rng, c, -1.0, 1.0);
    let w1: Vec<f64> = w.iter().map(|v| 1.0 + v).collect();
    let r = rand_f64(&mut rng, rows * c, -1.0, 1.0);
    let (a, rstd) = fwd(&x, &w, rows, c, EPS, true);
    let (b, _) = fwd(&x, &w1, rows, c, EPS, false);
    assert_close(&a, &b, Tol::EXACT, "forward");
    let (mut dxa, mut dwa, mut dxb, mut dwb) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; rows * c], vec![0.0; c]);
    rms_norm_backward(&mut dxa, Some(&mut dwa), &r, &x, &w, &rstd, rows, c, true);
    rms_norm_backward(&mut dxb, Some(&mut dwb), &r, &x, &w1, &rstd, rows, c, false);
    assert_close(&dxa, &dxb, Tol::EXACT, "dx");
    assert_close(&dwa, &dwb, Tol::EXACT, "dw");
}

#[test]
fn rms_norm_is_scale_invariant_and_has_unit_rms() {
    // With eps = 0, rms_norm(k x) = rms_norm(x), and with w = 1 each output row has mean square 1.
    let mut rng = Rng::new(3);
    let (rows, c) = (4, 131);
    let x = rand_f64(&mut rng, rows * c, -2.0, 2.0);
    let xk: Vec<f64> = x.iter().map(|v| v * 37.5).collect();
    let ones = vec![1.0; c];
    let (a, _) = fwd(&x, &ones, rows, c, 0.0, false);
    let (b, _) = fwd(&xk, &ones, rows, c, 0.0, false);
    // A few f64 roundings apart: 1e-14 relative is ~50 ulps.
    assert_close(&a, &b, Tol { abs: 0.0, rel: 1e-14 }, "scale invariance");
    for r in 0..rows {
        let ms: f64 = a[r * c..(r + 1) * c].iter().map(|v| v * v).sum::<f64>() / c as f64;
        assert!((ms - 1.0).abs() < 1e-13, "row {r}: mean square {ms}");
    }
}

#[test]
fn rms_norm_zero_rows_are_finite() {
    // An all-zero row (padding) must give out = 0, rstd = 1/sqrt(eps), finite gradients.
    let c = 9;
    let w = vec![0.5; c];
    let x = vec![0.0; c];
    let (out, rstd) = fwd(&x, &w, 1, c, EPS, false);
    assert!(out.iter().all(|&v| v == 0.0));
    assert_close(&rstd, &[1.0 / (EPS as f64).sqrt()], Tol::EXACT, "rstd");
    let (mut dx, mut dw) = (vec![0.0; c], vec![0.0; c]);
    rms_norm_backward(&mut dx, Some(&mut dw), &vec![1.0; c], &x, &w, &rstd, 1, c, false);
    assert!(dx.iter().chain(&dw).all(|v| v.is_finite()));
    // At x = 0 the norm is linear: dx = rstd * w * g.
    assert_close(&dx, &vec![0.5 / (EPS as f64).sqrt(); c], Tol { abs: 0.0, rel: 1e-15 }, "dx at 0");
}

#[test]
fn rms_norm_backward_accumulates_and_dw_is_optional() {
    let mut rng = Rng::new(4);
    let (rows, c) = (3, 13);
    let x = rand_f64(&mut rng, rows * c, -2.0, 2.0);
    let w = rand_f64(&mut rng, c, -1.0, 1.0);
    let g = rand_f64(&mut rng, rows * c, -1.0, 1.0);
    let (_, rstd) = fwd(&x, &w, rows, c, EPS, false);
    let (mut dx1, mut dw1) = (vec![0.0; rows * c], vec![0.0; c]);
    rms_norm_backward(&mut dx1, Some(&mut dw1), &g, &x, &w, &rstd, rows, c, false);
    let (mut dx2, mut dw2) = (vec![0.0; rows * c], vec![0.0; c]);
    rms_norm_backward(&mut dx2, Some(&mut dw2), &g, &x, &w, &rstd, rows, c, false);
    rms_norm_backward(&mut dx2, Some(&mut dw2), &g, &x, &w, &rstd, rows, c, false);
    let twice = |v: &[f64]| v.iter().map(|a| 2.0 * a).collect::<Vec<_>>();
    assert_close(&dx2, &twice(&dx1), Tol::EXACT, "dx accumulates");
    assert_close(&dw2, &twice(&dw1), Tol::EXACT, "dw accumulates");
    let mut dx3 = vec![0.0; rows * c];
    rms_norm_backward(&mut dx3, None, &g, &x, &w, &rstd, rows, c, false);
    assert_close(&dx3, &dx1, Tol::EXACT, "dx without dw");
}

#[test]
fn rms_norm_f32_matches_f64() {
    let mut rng = Rng::new(5);
    let (rows, c) = (7, 257);
    let x = rand_f32(&mut rng, rows * c, -3.0, 3.0);
    let w = rand_f32(&mut rng, c, -1.0, 1.0);
    let g = rand_f32(&mut rng, rows * c, -1.0, 1.0);
    let (mut out, mut rstd) = (vec![0.0f32; rows * c], vec![0.0f32; rows]);
    rms_norm_forward(&mut out, &mut rstd, &x, &w, rows, c, EPS, true);
    let (out64, rstd64) = fwd(&to_f64(&x), &to_f64(&w), rows, c, EPS, true);
    assert_close(&out, &out64, Tol::F32, "out");
    assert_close(&rstd, &rstd64, Tol::F32, "rstd");
    let (mut dx, mut dw) = (vec![0.0f32; rows * c], vec![0.0f32; c]);
    rms_norm_backward(&mut dx, Some(&mut dw), &g, &x, &w, &rstd, rows, c, true);
    let (mut dx64, mut dw64) = (vec![0.0; rows * c], vec![0.0; c]);
    rms_norm_backward(&mut dx64, Some(&mut dw64), &to_f64(&g), &to_f64(&x), &to_f64(&w), &rstd64, rows, c, true);
    assert_close(&dx, &dx64, Tol::F32, "dx");
    assert_close(&dw, &dw64, Tol::F32, "dw");
}
