// adamw: AdamW steps against numbers worked out by hand and against a direct f64 implementation
// of the PyTorch algorithm, weight decay on/off, the step-1 bias-correction property, clipping
// arithmetic (torch clip_grad_norm_) and non-finite gradient detection.
// Spec: src/backend/cpu/adamw.rs

use crate::common::*;
use loraforge::backend::cpu::adamw::{adamw_step, clip_scale, grad_norm_sq, scale_grads};
use loraforge::rng::Rng;

// PyTorch defaults for the betas and eps; lr and weight decay chosen large so their effect is visible.
const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// torch.optim.AdamW (_single_tensor_adamw, amsgrad = False) written directly in f64 with f64 state.
struct RefAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl RefAdamW {
    fn step(&mut self, g: &[f64], lr: f64, wd: f64) {
        self.t += 1;
        let bc1 = 1.0 - B1.powi(self.t);
        let bc2 = 1.0 - B2.powi(self.t);
        for (i, &gi) in g.iter().enumerate() {
            self.p[i] *= 1.0 - lr * wd;
            self.m[i] = B1 * self.m[i] + (1.0 - B1) * gi;
            self.v[i] = B2 * self.v[i] + (1.0 - B2) * gi * gi;
            let denom = self.v[i].sqrt() / bc2.sqrt() + EPS;
            self.p[i] -= (lr / bc1) * self.m[i] / denom;
        }
    }
}

/// One scalar, three steps, lr = 0.1, grads 0.5, -0.25, 2.0, starting at param 1.0.
/// Step 1 by hand (wd = 0.01): param = 1 * (1 - 0.1 * 0.01) = 0.999; m = 0.1 * 0.5 = 0.05;
/// v = 0.001 * 0.25 = 0.00025; m_hat = 0.05 / 0.1 = 0.5; v_hat = 0.00025 / 0.001 = 0.25;
/// param = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.999 - 0.099999998 = 0.899000002.
/// Step 2: m = 0.045 - 0.025 = 0.02, v = 0.00024975 + 0.0000625 = 0.00031225,
/// m_hat = 0.02 / 0.19 = 0.1052631579, v_hat = 0.00031225 / 0.001999 = 0.1562031016,
/// param = 0.899000002 * 0.999 - 0.1 * 0.1052631579 / (0.3952253808 + 1e-8) = 0.8714672987.
/// Step 3 (same formulas, t = 3): m = 0.218, v = 0.00431193775, param = 0.8035310672.
/// With wd = 0 the decay factor is 1: 0.900000002, 0.8733662987, 0.8063015345.
#[test]
fn adamw_scalar_steps_by_hand() {
    let grads = [0.5f32, -0.25, 2.0];
    let cases: [(f64, [f64; 3]); 2] = [
        (0.01, [0.899000002, 0.8714672987058463, 0.8035310672284473]),
        (0.0, [0.900000002, 0.8733662987078463, 0.8063015345291531]),
    ];
    for (wd, want) in cases {
        let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
        for t in 0..3 {
            adamw_step(&mut p, &[grads[t]], &mut m, &mut v, 0.1, B1, B2, EPS, wd, t as u64 + 1);
            // f32 state rounded once per step (rel 6e-8 each) over 3 steps: 1e-6 relative is ample
            // and still 100x below the step size, so a wrong formula cannot pass.
            assert_close(&p, &[want[t]], Tol { abs: 0.0, rel: 1e-6 }, &format!("param wd={wd} step {}", t + 1));
        }
        assert_close(&m, &[0.218], Tol { abs: 0.0, rel: 1e-6 }, "m after 3 steps");
        assert_close(&v, &[0.00431193775], Tol { abs: 0.0, rel: 1e-6 }, "v after 3 steps");
    }
}

/// Gradient scale of element i in `adamw_matches_f64_reference`: 1e-4 .. 1e2.
fn gscale(i: usize) -> f64 {
    10f64.powi((i % 7) as i32 - 4)
}

/// Many elements, 5 steps with fresh random gradients of mixed scales, against the f64 reference.
#[test]
fn adamw_matches_f64_reference() {
    let n = 1031;
    let mut rng = Rng::new(77);
    for wd in [0.0, 0.1] {
        let p0 = rand_f64(&mut rng, n, -1.0, 1.0);
        let mut r = RefAdamW { p: p0.clone(), m: vec![0.0; n], v: vec![0.0; n], t: 0 };
        let (mut p, mut m, mut v) = (to_f32(&p0), vec![0.0f32; n], vec![0.0f32; n]);
        let mut worst = 0.0f64;
        for step in 1..=5u64 {
            // gradient scales from 1e-4 to 1e2: tiny and large gradients in the same tensor
            let g: Vec<f32> = (0..n).map(|i| rng.uniform(-1.0, 1.0) * gscale(i) as f32).collect();
            adamw_step(&mut p, &g, &mut m, &mut v, 1e-2, B1, B2, EPS, wd, step);
            r.step(&to_f64(&g), 1e-2, wd);
            // Only the f32 storage of param/m/v differs from the reference: a few ulp of |param| <= ~1.
            // Measured max abs err 1.3e-7; allow 1e-6 abs (1% of lr = 1e-2, far below one update).
            assert_close(&p, &r.p, Tol { abs: 1e-6, rel: 0.0 }, &format!("param wd={wd} step {step}"));
            // The moments can cancel (m = 0.9 m + 0.1 g with g of the other sign), so compare them
            // relative to their element's gradient scale s_i: the f32 rounding of the stored m
            // (6e-8 of |m| ~ s_i) is then ~1e-7 of s_i. Allow 1e-6.
            let unit = |x: &[f64], pow: i32| -> Vec<f64> {
                x.iter().enumerate().map(|(i, &x)| x / gscale(i).powi(pow)).collect()
            };
            assert_close(
                &unit(&to_f64(&m), 1),
                &unit(&r.m, 1),
                Tol { abs: 1e-6, rel: 0.0 },
                &format!("m wd={wd} step {step}"),
            );
            assert_close(
                &unit(&to_f64(&v), 2),
                &unit(&r.v, 2),
                Tol { abs: 1e-6, rel: 0.0 },
                &format!("v wd={wd} step {step}"),
            );
            worst = worst.max(p.iter().zip(&r.p).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max));
        }
        eprintln!("adamw vs f64 reference, wd={wd}: max abs param err {worst:e}");
    }
}

/// Weight decay is decoupled: at step 1 the only difference between wd = 0 and wd > 0 is the
/// decay of the old param, -lr * wd * param0 (the gradient part is identical).
#[test]
fn adamw_weight_decay_is_decoupled() {
    let p0 = [2.0f32, -3.0, 0.5, 0.0];
    let g = [0.1f32, 0.1, -7.0, 1.0];
    let (lr, wd) = (0.05, 0.2);
    let run = |wd: f64| {
        let (mut p, mut m, mut v) = (p0, [0.0f32; 4], [0.0f32; 4]);
        adamw_step(&mut p, &g, &mut m, &mut v, lr, B1, B2, EPS, wd, 1);
        (p, m, v)
    };
    let (p_wd, m_wd, v_wd) = run(wd);
    let (p_0, m_0, v_0) = run(0.0);
    assert_eq!((m_wd, v_wd), (m_0, v_0), "weight decay leaked into the moments");
    let diff: Vec<f64> = p_wd.iter().zip(&p_0).map(|(a, b)| *a as f64 - *b as f64).collect();
    let want: Vec<f64> = p0.iter().map(|&p| -lr * wd * p as f64).collect();
    // f32 params near 2: one ulp 2.4e-7 on each of the two values.
    assert_close(&diff, &want, Tol { abs: 5e-7, rel: 0.0 }, "decay difference");
    // Zero gradient, zero state, no decay: the param does not move at all (0 / (0 + eps) = 0).
    let (mut p, mut m, mut v) = (p0, [0.0f32; 4], [0.0f32; 4]);
    adamw_step(&mut p, &[0.0; 4], &mut m, &mut v, lr, B1, B2, EPS, 0.0, 1);
    assert_eq!(p, p0);
}

/// At step 1, m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps) ~ lr * sign(g)
/// whatever |g| is: the bias correction is what makes Adam's first step scale-free.
#[test]
fn adamw_first_step_is_lr_sign_g() {
    let lr = 1e-3;
    let g = [1e-3f32, -1e-3, 0.37, -0.37, 5.0, -5.0, 1e3, -1e3];
    let p0 = [0.25f32; 8];
    let (mut p, mut m, mut v) = (p0, [0.0f32; 8], [0.0f32; 8]);
    adamw_step(&mut p, &g, &mut m, &mut v, lr, B1, B2, EPS, 0.0, 1);
    for i in 0..8 {
        let update = p0[i] as f64 - p[i] as f64;
        let want = lr * (g[i] as f64).signum();
        // Deviation from lr * sign(g): lr * eps / |g| (<= 1e-8 here) plus the f32 rounding of
        // param = 0.25 (ulp 3e-8).
        let tol = lr * EPS / (g[i] as f64).abs() + 3e-8;
        assert!((update - want).abs() <= tol, "g = {}: update {update:e}, want {want:e}", g[i]);
    }
}

#[test]
fn adamw_clip_arithmetic() {
    let (mut a, mut b) = (vec![3.0f32, 4.0], vec![12.0f32]);
    let sq = grad_norm_sq(&[&a, &b]);
    assert_eq!(sq, 169.0); // 9 + 16 + 144, exact
    let norm = sq.sqrt();
    assert_eq!(norm, 13.0);
    // Over the limit: scale = max / (norm + 1e-6), torch's formula.
    let s = clip_scale(norm, 1.0);
    assert_eq!(s, (1.0 / (13.0 + 1e-6)) as f32);
    scale_grads(&mut [&mut a, &mut b], s);
    let after = grad_norm_sq(&[&a, &b]).sqrt();
    // clipped norm = 13 / (13 + 1e-6) ~ 1 - 7.7e-8, plus f32 rounding of the scaled values (~1e-7).
    assert!((after - 1.0).abs() < 3e-7, "norm after clipping {after}");
    // Under the limit: 1, and scale_grads(1) leaves the values bit-identical.
    assert_eq!(clip_scale(13.0, 20.0), 1.0);
    assert_eq!(clip_scale(0.0, 1.0), 1.0); // zero gradients: no division by zero
    let before = a.clone();
    scale_grads(&mut [&mut a], 1.0);
    assert_eq!(a, before);
    // Exactly at the limit torch still scales by max / (max + 1e-6) (its min(coef, 1)).
    assert_eq!(clip_scale(1.0, 1.0), (1.0 / (1.0 + 1e-6)) as f32);
    assert!(clip_scale(1.0, 1.0) < 1.0);
    // Empty gradient list: norm 0.
    assert_eq!(grad_norm_sq(&[]), 0.0);
}

#[test]
fn adamw_non_finite_gradients_detected() {
    let ok = vec![1.0f32; 100];
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut g = vec![0.5f32; 37];
        g[36] = bad;
        let sq = grad_norm_sq(&[&ok, &g]);
        assert!(!sq.is_finite(), "{bad} not detected: {sq}");
        assert!(clip_scale(sq.sqrt(), 1.0).is_nan(), "clip_scale of a non-finite norm must be NaN");
    }
    // The largest finite f32 values square and sum without overflowing f64: still finite.
    let big = vec![f32::MAX; 1000];
    let sq = grad_norm_sq(&[&big]);
    assert!(sq.is_finite() && sq > 1e79, "{sq}");
}
