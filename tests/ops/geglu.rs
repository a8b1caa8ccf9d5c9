//! geglu: the f64 spec against finite differences on odd lengths, known values of gelu_tanh
//! (PyTorch approximate='tanh'), edge values with no NaN, the saturation shortcut's continuity,
//! accumulation, and f32 against f64.

use crate::common::*;
use loraforge::backend::cpu::geglu::{geglu_backward, geglu_forward, gelu_tanh, gelu_tanh_grad};
use loraforge::rng::Rng;

/// Lengths chosen to break vectorised kernels: 1, primes, not multiples of 4/8/64.
const LENS: [usize; 5] = [1, 7, 13, 67, 131];

fn fwd(gate: &[f64], up: &[f64]) -> Vec<f64> {
    let mut out = vec![f64::NAN; gate.len()];
    geglu_forward(&mut out, gate, up);
    out
}

#[test]
fn geglu_backward_matches_finite_differences() {
    let mut rng = Rng::new(31);
    for &n in &LENS {
        // gate spans the curved region and crosses the |x| = 10 saturation shortcut.
        let gate = rand_f64(&mut rng, n, -12.0, 12.0);
        let up = rand_f64(&mut rng, n, -2.0, 2.0);
        let r = rand_f64(&mut rng, n, -1.0, 1.0);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        geglu_backward(&mut dg, &mut du, &r, &gate, &up);
        let fd_g = finite_diff(&gate, 1e-6, |g| dot(&fwd(g, &up), &r));
        let fd_u = finite_diff(&up, 1e-6, |u| dot(&fwd(&gate, u), &r));
        assert_close(&dg, &fd_g, Tol::FD64, &format!("dgate n={n}"));
        assert_close(&du, &fd_u, Tol::FD64, &format!("dup n={n}"));
    }
}

#[test]
fn gelu_tanh_known_values() {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) at 1 and -2 (python math, f64; PyTorch
    // F.gelu(torch.tensor(1.0), approximate='tanh') prints 0.8412).
    let got = [gelu_tanh(0.0f64), gelu_tanh(1.0), gelu_tanh(-2.0)];
    assert_close(&got, &[0.0, 0.8411919906082768, -0.04540230591222494], Tol { abs: 0.0, rel: 1e-15 }, "gelu");
    assert_eq!(gelu_tanh_grad(0.0f64), 0.5);
}

#[test]
fn gelu_tanh_grad_is_continuous_at_the_saturation_shortcut() {
    // Just inside |x| = 10 the formula already gives 1 (x > 0) or ~0 (x < 0): the shortcut
    // changes the derivative by less than 1e-30.
    for x in [9.999_999f64, 10.0] {
        assert!((gelu_tanh_grad(x) - 1.0).abs() < 1e-30, "gelu'({x}) = {}", gelu_tanh_grad(x));
        assert!(gelu_tanh_grad(-x).abs() < 1e-30, "gelu'({}) = {}", -x, gelu_tanh_grad(-x));
    }
    assert_eq!((gelu_tanh_grad(10.000_001f64), gelu_tanh_grad(-10.000_001f64)), (1.0, 0.0));
}

#[test]
fn gelu_tanh_edge_values_are_finite_and_saturate() {
    // x^3 overflows f32 past 7e12 and x^2 past 1.8e19: tanh(+-inf) = +-1 keeps gelu finite and
    // the shortcut keeps gelu' from 0 * inf.
    for &x in &[9.0f32, 50.0, 1e13, 1e20, f32::MAX] {
        assert_eq!(gelu_tanh(x), x, "gelu({x})");
        assert_eq!(gelu_tanh_grad(x), 1.0, "gelu'({x})");
        let (y, dy) = (gelu_tanh(-x), gelu_tanh_grad(-x));
        assert!(y == 0.0 && dy == 0.0, "gelu({}) = {y}, gelu' = {dy}", -x);
    }
    for &x in &[50.0f64, 1e200, f64::MAX] {
        assert_eq!((gelu_tanh(x), gelu_tanh_grad(x)), (x, 1.0));
        assert_eq!((gelu_tanh(-x), gelu_tanh_grad(-x)), (0.0, 0.0));
    }
    let (mut out, mut dg, mut du) = ([1.0f32; 3], [0.0f32; 3], [0.0f32; 3]);
    geglu_forward(&mut out, &[0.0, 5.0, -0.0], &[3.0, 0.0, 2.0]);
    assert_eq!(out, [0.0, 0.0, 0.0]);
    geglu_backward(&mut dg, &mut du, &[1.0; 3], &[0.0, 5.0, -0.0], &[3.0, 0.0, 2.0]);
    assert_eq!(dg, [1.5, 0.0, 1.0]); // gelu'(0) = 0.5 times up
    assert_eq!(du[0], 0.0);
}

#[test]
fn geglu_backward_accumulates() {
    let mut rng = Rng::new(32);
    let n = 13;
    let (gate, up, g) =
        (rand_f64(&mut rng, n, -4.0, 4.0), rand_f64(&mut rng, n, -1.0, 1.0), rand_f64(&mut rng, n, -1.0, 1.0));
    let (mut dg1, mut du1) = (vec![0.0; n], vec![0.0; n]);
    geglu_backward(&mut dg1, &mut du1, &g, &gate, &up);
    let (mut dg2, mut du2) = (vec![0.5; n], vec![-0.25; n]);
    geglu_backward(&mut dg2, &mut du2, &g, &gate, &up);
    let shift = |v: &[f64], s: f64| v.iter().map(|a| a + s).collect::<Vec<_>>();
    assert_close(&dg2, &shift(&dg1, 0.5), Tol::EXACT, "dgate accumulates");
    assert_close(&du2, &shift(&du1, -0.25), Tol::EXACT, "dup accumulates");
}

#[test]
fn geglu_f32_matches_f64() {
    let mut rng = Rng::new(33);
    let n = 1031;
    let (gate, up, g) =
        (rand_f32(&mut rng, n, -10.0, 10.0), rand_f32(&mut rng, n, -3.0, 3.0), rand_f32(&mut rng, n, -1.0, 1.0));
    let mut out = vec![0.0f32; n];
    geglu_forward(&mut out, &gate, &up);
    assert_close(&out, &fwd(&to_f64(&gate), &to_f64(&up)), Tol::F32, "forward");
    let (mut dg, mut du) = (vec![0.0f32; n], vec![0.0f32; n]);
    geglu_backward(&mut dg, &mut du, &g, &gate, &up);
    let (mut dg64, mut du64) = (vec![0.0; n], vec![0.0; n]);
    geglu_backward(&mut dg64, &mut du64, &to_f64(&g), &to_f64(&gate), &to_f64(&up));
    assert_close(&dg, &dg64, Tol::F32, "dgate");
    assert_close(&du, &du64, Tol::F32, "dup");
}
