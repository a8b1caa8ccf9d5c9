//! adamw: the AdamW optimizer step and global gradient-norm clipping, with PyTorch semantics
//! (torch.optim.AdamW, https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html, default
//! amsgrad = False, maximize = False; torch.nn.utils.clip_grad_norm_,
//! https://pytorch.org/docs/stable/generated/torch.nn.utils.clip_grad_norm_.html).
//! Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", https://arxiv.org/abs/1711.05101
//! Spec: this file   Test: tests/ops/adamw.rs
//!
//! One step, t = `step` (1-based), per element, exactly PyTorch's order:
//!   param *= 1 - lr * weight_decay            (decoupled decay, applied to the OLD param, scaled by lr)
//!   m      = beta1 * m + (1 - beta1) * g
//!   v      = beta2 * v + (1 - beta2) * g^2
//!   m_hat  = m / (1 - beta1^t),   v_hat = v / (1 - beta2^t)
//!   param -= lr * m_hat / (sqrt(v_hat) + eps)   (PyTorch: sqrt(v) / sqrt(1 - beta2^t) + eps, the same)
//!
//! Precision: param, m, v are f32 (the stored state); the per-element update is computed in f64 and
//! rounded once when stored. Why f64: the step is memory-bound (4 f32 streams per element), so f64
//! arithmetic costs nothing on a CPU, and the spec then gives the correctly-rounded result of the
//! algorithm (PyTorch's f32 kernel differs from it by a few ulp). The hyper-parameters are f64 so
//! that the bias corrections 1 - beta^t are not spoiled by f32 betas (0.999f32 differs from 0.999 by
//! 1.3e-5 relative in 1 - beta2). A GPU kernel takes the per-step scalars (decay factor, lr / bc1,
//! sqrt(bc2), eps) from the host in f32.
//!
//! Contracts easy to miss:
//! - `step` starts at 1 (step 0 would divide by 1 - beta^0 = 0; asserted).
//! - `grad_norm_sq` returns a NON-FINITE value exactly when some gradient element is NaN or +-inf
//!   (the squares of finite f32 values cannot overflow an f64 sum), so the trainer checks
//!   `total.is_finite()` and SKIPS the step (no clipping, no AdamW update, no step increment), as a
//!   loss scaler does. `clip_scale` of a non-finite norm is NaN, so forgetting the check poisons the
//!   weights visibly instead of silently.

/// One AdamW step over one parameter tensor; updates param, m, v in place.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    param: &mut [f32], // (n)
    grad: &[f32],      // (n)
    m: &mut [f32],     // (n) first moment, zero at step 1
    v: &mut [f32],     // (n) second moment, zero at step 1
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64, // 1-based
) {
    assert!(step >= 1, "adamw: step is 1-based");
    let n = param.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n, "adamw: param, grad, m, v lengths differ");
    let t = step.min(i32::MAX as u64) as i32; // beta^t underflows to 0 long before 2^31 steps
    let decay = 1.0 - lr * weight_decay;
    let bc1 = 1.0 - beta1.powi(t);
    let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
    let step_size = lr / bc1;
    for i in 0..n {
        let g = grad[i] as f64;
        let mi = beta1 * m[i] as f64 + (1.0 - beta1) * g;
        let vi = beta2 * v[i] as f64 + (1.0 - beta2) * g * g;
        let denom = vi.sqrt() / bc2_sqrt + eps;
        param[i] = (param[i] as f64 * decay - step_size * mi / denom) as f32;
        m[i] = mi as f32;
        v[i] = vi as f32;
    }
}

/// Global L2 norm squared over all gradient tensors, accumulated in f64: sum_t sum_i g[t][i]^2.
/// Non-finite exactly when some element is non-finite: the trainer must then skip the step.
pub fn grad_norm_sq(grads: &[&[f32]]) -> f64 {
    grads.iter().flat_map(|g| g.iter()).map(|&x| x as f64 * x as f64).sum()
}

/// The factor torch.nn.utils.clip_grad_norm_ multiplies every gradient by:
/// min(max_norm / (total_norm + 1e-6), 1). 1e-6 is torch's constant (guards total_norm = 0). This
/// is < 1 only when total_norm > max_norm - 1e-6, i.e. in practice when total_norm > max_norm.
/// `total_norm` is sqrt(grad_norm_sq). Non-finite total_norm gives NaN (see the header).
pub fn clip_scale(total_norm: f64, max_norm: f64) -> f32 {
    if !total_norm.is_finite() {
        return f32::NAN;
    }
    (max_norm / (total_norm + 1e-6)).min(1.0) as f32
}

/// g *= s for every gradient tensor (a no-op when s == 1).
pub fn scale_grads(grads: &mut [&mut [f32]], s: f32) {
    if s == 1.0 {
        return;
    }
    for g in grads.iter_mut() {
        g.iter_mut().for_each(|x| *x *= s);
    }
}
