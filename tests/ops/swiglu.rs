//! swiglu: the f64 spec against finite differences on odd lengths, known values of silu, edge
//! values (0, large |x|, f32 overflow range) with no NaN, accumulation, and f32 against f64.

use crate::common::*;
use loraforge::backend::cpu::swiglu::{sigmoid, silu, silu_grad, swiglu_backward, swiglu_forward};
use loraforge::rng::Rng;

/// Lengths chosen to break vectorised kernels: 1, primes, not multiples of 4/8/64.
const LENS: [usize; 5] = [1, 7, 13, 67, 131];

fn fwd(gate: &[f64], up: &[f64]) -> Vec<f64> {
    let mut out = vec![f64::NAN; gate.len()];
    swiglu_forward(&mut out, gate, up);
    out
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let mut rng = Rng::new(21);
    for &n in &LENS {
        // gate spans both branches of the stable sigmoid and its saturating tails.
        let gate = rand_f64(&mut rng, n, -12.0, 12.0);
        let up = rand_f64(&mut rng, n, -2.0, 2.0);
        let r = rand_f64(&mut rng, n, -1.0, 1.0);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&mut dg, &mut du, &r, &gate, &up);
        let fd_g = finite_diff(&gate, 1e-6, |g| dot(&fwd(g, &up), &r));
        let fd_u = finite_diff(&up, 1e-6, |u| dot(&fwd(&gate, u), &r));
        assert_close(&dg, &fd_g, Tol::FD64, &format!("dgate n={n}"));
        assert_close(&du, &fd_u, Tol::FD64, &format!("dup n={n}"));
    }
}

#[test]
fn silu_known_values() {
    // silu(1) = 1 / (1 + e^-1), silu(-2) = -2 / (1 + e^2) (python math, f64).
    let got = [silu(0.0f64), silu(1.0), silu(-2.0)];
    assert_close(&got, &[0.0, 0.7310585786300049, -0.2384058440442351], Tol { abs: 0.0, rel: 1e-15 }, "silu");
    assert_eq!(silu_grad(0.0f64), 0.5);
    assert_eq!(sigmoid(0.0f64), 0.5);
    // silu'(x) against the quotient rule form d/dx x / (1 + e^-x) at a few points.
    for x in [-3.0f64, -0.5, 0.7, 4.0] {
        let e = (-x).exp();
        let want = (1.0 + e + x * e) / (1.0 + e).powi(2);
        assert!((silu_grad(x) - want).abs() < 1e-15, "silu'({x})");
    }
}

#[test]
fn silu_edge_values_are_finite_and_saturate() {
    // f32: exp overflows past 88.7; the stable sigmoid must never form inf / inf.
    for &x in &[88.0f32, 89.0, 1e4, 1e30, f32::MAX] {
        assert_eq!(sigmoid(x), 1.0);
        assert_eq!(silu(x), x, "silu({x})");
        assert_eq!(silu_grad(x), 1.0, "silu'({x})");
        assert!(sigmoid(-x) >= 0.0 && sigmoid(-x) < 1e-38, "sigmoid({})", -x); // e^-88 = 6e-39
        assert!(silu(-x) <= 0.0 && silu(-x) > -1e-30, "silu({}) = {}", -x, silu(-x));
        assert!(silu_grad(-x).is_finite() && silu_grad(-x).abs() < 1e-30, "silu'({})", -x);
    }
    for &x in &[700.0f64, 710.0, 1e300, f64::MAX] {
        assert_eq!(silu(x), x);
        assert_eq!(silu_grad(x), 1.0);
        // -x e^-x: -7e-302 at x = 700, underflows to -0 beyond ~745.
        assert!(silu(-x) <= 0.0 && silu(-x) > -1e-300, "silu({}) = {}", -x, silu(-x));
        assert!(silu_grad(-x) <= 0.0 && silu_grad(-x) > -1e-300, "silu'({}) = {}", -x, silu_grad(-x));
    }
    // Zeros in gate or up give exactly zero output and a zero dup where gate = 0.
    let (mut out, mut dg, mut du) = ([1.0f32; 3], [0.0f32; 3], [0.0f32; 3]);
    swiglu_forward(&mut out, &[0.0, 5.0, -0.0], &[3.0, 0.0, 2.0]);
    assert_eq!(out, [0.0, 0.0, 0.0]);
    swiglu_backward(&mut dg, &mut du, &[1.0; 3], &[0.0, 5.0, -0.0], &[3.0, 0.0, 2.0]);
    assert_eq!(dg, [1.5, 0.0, 1.0]); // silu'(0) = 0.5 times up
    assert_eq!(du[0], 0.0);
}

#[test]
fn swiglu_backward_accumulates() {
    let mut rng = Rng::new(22);
    let n = 13;
    let (gate, up, g) =
        (rand_f64(&mut rng, n, -4.0, 4.0), rand_f64(&mut rng, n, -1.0, 1.0), rand_f64(&mut rng, n, -1.0, 1.0));
    let (mut dg1, mut du1) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&mut dg1, &mut du1, &g, &gate, &up);
    let (mut dg2, mut du2) = (vec![0.5; n], vec![-0.25; n]);
    swiglu_backward(&mut dg2, &mut du2, &g, &gate, &up);
    let shift = |v: &[f64], s: f64| v.iter().map(|a| a + s).collect::<Vec<_>>();
    // (0.5 + a) vs (a + 0.5): both exact roundings of the same sum.
    assert_close(&dg2, &shift(&dg1, 0.5), Tol::EXACT, "dgate accumulates");
    assert_close(&du2, &shift(&du1, -0.25), Tol::EXACT, "dup accumulates");
}

#[test]
fn swiglu_f32_matches_f64() {
    let mut rng = Rng::new(23);
    let n = 1031;
    let (gate, up, g) =
        (rand_f32(&mut rng, n, -10.0, 10.0), rand_f32(&mut rng, n, -3.0, 3.0), rand_f32(&mut rng, n, -1.0, 1.0));
    let mut out = vec![0.0f32; n];
    swiglu_forward(&mut out, &gate, &up);
    assert_close(&out, &fwd(&to_f64(&gate), &to_f64(&up)), Tol::F32, "forward");
    let (mut dg, mut du) = (vec![0.0f32; n], vec![0.0f32; n]);
    swiglu_backward(&mut dg, &mut du, &g, &gate, &up);
    let (mut dg64, mut du64) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&mut dg64, &mut du64, &to_f64(&g), &to_f64(&gate), &to_f64(&up));
    assert_close(&dg, &dg64, Tol::F32, "dgate");
    assert_close(&du, &du64, Tol::F32, "dup");
}
