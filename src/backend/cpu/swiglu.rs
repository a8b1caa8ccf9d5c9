//! swiglu: the gated MLP activation of Llama/Qwen/Mistral, out = silu(gate) * up, elementwise.
//! Spec: this file   Test: tests/ops/swiglu.rs
//!
//!   silu(x)  = x * sigmoid(x)                       (PyTorch `torch.nn.functional.silu`)
//!   silu'(x) = sigmoid(x) * (1 + x * (1 - sigmoid(x)))
//!   out      = silu(gate) * up
//!
//! Reference: Shazeer 2020, "GLU Variants Improve Transformer", https://arxiv.org/abs/2002.05202 ;
//! https://pytorch.org/docs/stable/generated/torch.nn.SiLU.html
//!
//! Layout: gate, up, out are any (N) flat buffers of the same length (N = B*T*intermediate).
//! Contracts easy to miss: forward WRITES `out`; backward ACCUMULATES (+=) into `dgate` and `dup`.
//! The sigmoid never evaluates exp of a large positive number, so no inf/inf NaN for large |x|.

use super::real::Real;

/// sigmoid(x) = 1 / (1 + e^-x), evaluated as e^x / (1 + e^x) for x < 0 so exp never overflows.
#[inline]
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// silu(x) = x * sigmoid(x).
#[inline]
pub fn silu<T: Real>(x: T) -> T {
    x * sigmoid(x)
}

/// d silu / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x))).
#[inline]
pub fn silu_grad<T: Real>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::ONE + x * (T::ONE - s))
}

/// out[i] = silu(gate[i]) * up[i].
pub fn swiglu_forward<T: Real>(
    out: &mut [T], // (N)
    gate: &[T],    // (N)
    up: &[T],      // (N)
) {
    assert!(gate.len() == out.len() && up.len() == out.len());
    for i in 0..out.len() {
        out[i] = silu(gate[i]) * up[i];
    }
}

/// dgate[i] += dout[i] * up[i] * silu'(gate[i]);   dup[i] += dout[i] * silu(gate[i]).
pub fn swiglu_backward<T: Real>(
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
        dgate[i] += dout[i] * up[i] * silu_grad(g);
        dup[i] += dout[i] * silu(g);
    }
}
