//! geglu: the gated MLP activation of Gemma, out = gelu_tanh(gate) * up, elementwise.
//! Spec: this file   Test: tests/ops/geglu.rs
//!
//!   gelu_tanh(x) = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
//!   gelu_tanh'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//!   out = gelu_tanh(gate) * up
//!
//! This is PyTorch `gelu(approximate='tanh')` ("gelu_pytorch_tanh" in HF configs), not the erf GELU.
//! Reference: Hendrycks & Gimpel 2016, https://arxiv.org/abs/1606.08415 ;
//! Shazeer 2020, https://arxiv.org/abs/2002.05202 ; https://pytorch.org/docs/stable/generated/torch.nn.GELU.html
//!
//! Layout: gate, up, out are any (N) flat buffers of the same length.
//! Contracts easy to miss: forward WRITES `out`; backward ACCUMULATES (+=) into `dgate` and `dup`.

use super::real::Real;

/// sqrt(2 / pi).
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh approximation (Hendrycks & Gimpel, PyTorch `kKappa`).
const KAPPA: f64 = 0.044715;
/// Beyond |x| > 10, tanh(u) is +-1 to within 1e-37 (u > 43), so gelu'(x) is 1 (x > 0) or 0 (x < 0)
/// to far below any float's resolution. Returning those directly avoids 0 * inf = NaN when x^2
/// overflows (|x| > 1.8e19 in f32).
const GRAD_SATURATION: f64 = 10.0;

/// gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Safe for large |x|: tanh
/// saturates (to +-1 even when x^3 overflows to +-inf), giving x or -0.
#[inline]
pub fn gelu_tanh<T: Real>(x: T) -> T {
    let half = T::from_f64(0.5);
    let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(KAPPA) * x * x * x);
    half * x * (T::ONE + u.tanh())
}

/// d gelu_tanh / dx (see the file header; same form as PyTorch's `GeluBackward` with approximate='tanh').
#[inline]
pub fn gelu_tanh_grad<T: Real>(x: T) -> T {
    if x.abs() > T::from_f64(GRAD_SATURATION) {
        return if x > T::ZERO { T::ONE } else { T::ZERO };
    }
    let half = T::from_f64(0.5);
    let k = T::from_f64(SQRT_2_OVER_PI);
    let kappa = T::from_f64(KAPPA);
    let x2 = x * x;
    let t = (k * (x + kappa * x2 * x)).tanh();
    half * (T::ONE + t) + half * x * (T::ONE - t * t) * k * (T::ONE + T::from_f64(3.0) * kappa * x2)
}

/// out[i] = gelu_tanh(gate[i]) * up[i].
pub fn geglu_forward<T: Real>(
    out: &mut [T], // (N)
    gate: &[T],    // (N)
    up: &[T],      // (N)
) {
    assert!(gate.len() == out.len() && up.len() == out.len());
    for i in 0..out.len() {
        out[i] = gelu_tanh(gate[i]) * up[i];
    }
}

/// dgate[i] += dout[i] * up[i] * gelu_tanh'(gate[i]);   dup[i] += dout[i] * gelu_tanh(gate[i]).
pub fn geglu_backward<T: Real>(
    dgate: &mut [T], // (N)
    dup: &mut [T],   // (N)
    dout: &[T],      // (N)
    gate: &[T],      // (N)
    up: &[T],        // (N)
) {
    let n = dout.len();
    assert!(dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n);
    for i in 0..n {
        let g = gate[i];
        dgate[i] += dout[i] * up[i] * gelu_tanh_grad(g);
        dup[i] += dout[i] * gelu_tanh(g);
    }
}
