//! Learning-rate schedules: the LR used at each optimizer step, exactly as HF transformers computes it.
//! Spec: transformers `src/transformers/optimization.py` (the `_get_*_lr_lambda` functions, wrapped by
//! `torch.optim.lr_scheduler.LambdaLR`).   Test: tests/schedule.rs
//!
//! Contract easy to miss: `lr_at(step)` is `base_lr * lambda(step)` where `step` is the number of `scheduler.step()`
//! calls made so far, i.e. the 0-based index of the optimizer step about to run. HF calls `optimizer.step()` then
//! `lr_scheduler.step()`, so optimizer step 0 runs with `lambda(0)`: with warmup that is an LR of exactly 0
//! (the first update is a no-op for AdamW apart from weight decay). We reproduce that rather than "fix" it, so
//! loss curves line up with LLaMA-Factory runs.
//!
//! Formulas (w = warmup steps, N = total training steps, p = (s - w) / max(1, N - w)):
//!   warmup (all but `constant` and `warmup_stable_decay`):  s < w  ->  s / max(1, w)
//!   linear:               max(0, (N - s) / max(1, N - w))
//!   cosine:               max(0, 0.5 * (1 + cos(pi * num_cycles * 2 * p)))              num_cycles = 0.5
//!   cosine_with_restarts: p >= 1 -> 0, else max(0, 0.5 * (1 + cos(pi * ((num_cycles * p) % 1))))  num_cycles = 1
//!   polynomial:           s > N -> lr_end / lr; else ((lr - lr_end) * (1 - (s - w)/(N - w))^power + lr_end) / lr
//!                         lr_end = 1e-7, power = 1.0: the end point is an ABSOLUTE lr, the lambda is relative to it
//!   constant:             1
//!   constant_with_warmup: 1 after warmup
//!   inverse_sqrt:         1 / sqrt((s + timescale - w) / timescale)   timescale = w, or 10_000 when w = 0
//!   cosine_with_min_lr:   max(0, c * (1 - r) + r), c = the cosine factor above, r = min_lr_rate or min_lr / lr
//!   warmup_stable_decay:  warmup (linear|cosine|1-sqrt), then 1 for num_stable_steps, then decay (cosine default,
//!                         linear, 1-sqrt) over num_decay_steps, all mapped to [min_lr_ratio, 1]; min_lr_ratio after.
//!                         num_stable_steps defaults to N - w - num_decay_steps.
//! Reference: https://github.com/huggingface/transformers/blob/main/src/transformers/optimization.py

use crate::error::Result;
use crate::train::args::SchedulerType;
use serde_json::{Map, Value};
use std::f64::consts::PI;

/// The shape of the warmup or decay phase of `warmup_stable_decay` (HF `warmup_type` / `decay_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsdShape {
    Linear,
    Cosine,
    OneMinusSqrt,
}

impl WsdShape {
    fn parse(key: &str, v: &Value) -> Result<Self> {
        match v.as_str() {
            Some("linear") => Ok(WsdShape::Linear),
            Some("cosine") => Ok(WsdShape::Cosine),
            Some("1-sqrt") => Ok(WsdShape::OneMinusSqrt),
            _ => crate::bail!("lr_scheduler_kwargs.{key}: expected \"linear\", \"cosine\" or \"1-sqrt\", got {v}"),
        }
    }
}

/// The LR at every step of one run. Cheap to copy: a few numbers, no table.
#[derive(Clone, Debug)]
pub struct LrSchedule {
    pub kind: SchedulerType,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// cosine family: waves over the decay (0.5 = one half-cosine from 1 to 0). Restarts: number of hard restarts.
    pub num_cycles: f64,
    /// polynomial: the final absolute LR.
    pub lr_end: f64,
    /// polynomial: the exponent of the decay.
    pub power: f64,
    /// inverse_sqrt: lambda = 1 / sqrt((s + timescale - w) / timescale), so lambda = 1 at s = w and 1/2 at s = w + 3 * timescale.
    pub timescale: f64,
    /// cosine_with_min_lr: floor as a fraction of base_lr. warmup_stable_decay: `min_lr_ratio`.
    pub min_lr_rate: f64,
    /// warmup_stable_decay phases.
    pub num_stable_steps: i64,
    pub num_decay_steps: usize,
    pub warmup_shape: WsdShape,
    pub decay_shape: WsdShape,
}

/// A kwarg as f64, naming the key on a type error. HF passes these straight to Python, so ints and floats both work.
fn kw_f64(kwargs: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match kwargs.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(x) => Ok(Some(x)),
            Err(_) => crate::bail!("lr_scheduler_kwargs.{key}: expected a number, got {:?}", s),
        },
        Some(v) => crate::bail!("lr_scheduler_kwargs.{key}: expected a number, got {v}"),
    }
}

fn kw_usize(kwargs: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match kw_f64(kwargs, key)? {
        None => Ok(None),
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x < 1e15 => Ok(Some(x as usize)),
        Some(x) => crate::bail!("lr_scheduler_kwargs.{key}: expected a non-negative integer, got {x}"),
    }
}

impl LrSchedule {
    /// Builds the schedule, checking `kwargs` the way HF does (an unexpected key is a TypeError there, an error here).
    /// Accepted kwargs per kind:
    ///   cosine: num_cycles. cosine_with_restarts: num_cycles. polynomial: lr_end, power.
    ///   inverse_sqrt: timescale (HF's `get_scheduler` never forwards it, so HF always uses the default; we honor it).
    ///   cosine_with_min_lr: num_cycles, exactly one of min_lr / min_lr_rate.
    ///   warmup_stable_decay: num_decay_steps (required), num_stable_steps, warmup_type, decay_type, min_lr_ratio,
    ///   num_cycles.   linear, constant, constant_with_warmup: none.
    pub fn new(
        kind: SchedulerType,
        base_lr: f64,
        warmup_steps: usize,
        total_steps: usize,
        kwargs: &Map<String, Value>,
    ) -> Result<Self> {
        let allowed: &[&str] = match kind {
            SchedulerType::Linear | SchedulerType::Constant | SchedulerType::ConstantWithWarmup => &[],
            SchedulerType::Cosine | SchedulerType::CosineWithRestarts => &["num_cycles"],
            SchedulerType::Polynomial => &["lr_end", "power"],
            SchedulerType::InverseSqrt => &["timescale"],
            SchedulerType::CosineWithMinLr => &["num_cycles", "min_lr", "min_lr_rate"],
            SchedulerType::WarmupStableDecay => {
                &["num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio", "num_cycles"]
            }
        };
        for key in kwargs.keys() {
            if !allowed.contains(&key.as_str()) {
                let accepted = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                crate::bail!(
                    "lr_scheduler_kwargs: `{key}` is not used by lr_scheduler_type `{}` (it accepts: {accepted})",
                    kind.as_str()
                );
            }
        }
        if !(base_lr.is_finite() && base_lr >= 0.0) {
            crate::bail!("learning_rate must be a finite number >= 0, got {base_lr}");
        }
        let default_cycles = if kind == SchedulerType::CosineWithRestarts { 1.0 } else { 0.5 };
        let mut s = LrSchedule {
            kind,
            base_lr,
            warmup_steps,
            total_steps,
            num_cycles: kw_f64(kwargs, "num_cycles")?.unwrap_or(default_cycles),
            lr_end: kw_f64(kwargs, "lr_end")?.unwrap_or(1e-7),
            power: kw_f64(kwargs, "power")?.unwrap_or(1.0),
            // HF: `timescale = num_warmup_steps or 10_000`.
            timescale: kw_f64(kwargs, "timescale")?.unwrap_or(if warmup_steps > 0 {
                warmup_steps as f64
            } else {
                10_000.0
            }),
            min_lr_rate: 0.0,
            num_stable_steps: 0,
            num_decay_steps: 0,
            warmup_shape: WsdShape::Linear,
            decay_shape: WsdShape::Cosine,
        };
        match kind {
            // HF raises unless lr_init > lr_end.
            SchedulerType::Polynomial if base_lr.is_nan() || base_lr <= s.lr_end => {
                crate::bail!(
                    "polynomial schedule: lr_end ({}) must be smaller than the learning_rate ({base_lr})",
                    s.lr_end
                );
            }
            SchedulerType::InverseSqrt if s.timescale.is_nan() || s.timescale <= 0.0 => {
                crate::bail!("lr_scheduler_kwargs.timescale must be > 0, got {}", s.timescale);
            }
            SchedulerType::CosineWithMinLr => {
                let min_lr = kw_f64(kwargs, "min_lr")?;
                let rate = kw_f64(kwargs, "min_lr_rate")?;
                s.min_lr_rate = match (min_lr, rate) {
                    (Some(_), Some(_)) => crate::bail!("cosine_with_min_lr: set only one of min_lr or min_lr_rate"),
                    (Some(m), None) if base_lr > 0.0 => m / base_lr,
                    (Some(_), None) => crate::bail!("cosine_with_min_lr: min_lr needs a learning_rate > 0"),
                    (None, Some(r)) => r,
                    (None, None) => crate::bail!(
                        "cosine_with_min_lr needs min_lr or min_lr_rate in lr_scheduler_kwargs, e.g. \
                         `lr_scheduler_kwargs: {{min_lr_rate: 0.1}}`"
                    ),
                };
            }
            SchedulerType::WarmupStableDecay => {
                let Some(decay) = kw_usize(kwargs, "num_decay_steps")? else {
                    crate::bail!(
                        "warmup_stable_decay needs num_decay_steps in lr_scheduler_kwargs, e.g. \
                         `lr_scheduler_kwargs: {{num_decay_steps: 100}}`"
                    )
                };
                s.num_decay_steps = decay;
                // HF: num_stable_steps wins over num_training_steps; otherwise N - w - decay (may be negative,
                // which HF allows: the stable phase is then empty and decay starts right after warmup).
                s.num_stable_steps = match kw_usize(kwargs, "num_stable_steps")? {
                    Some(n) => n as i64,
                    None => total_steps as i64 - warmup_steps as i64 - decay as i64,
                };
                s.min_lr_rate = kw_f64(kwargs, "min_lr_ratio")?.unwrap_or(0.0);
                if let Some(v) = kwargs.get("warmup_type") {
                    s.warmup_shape = WsdShape::parse("warmup_type", v)?;
                }
                if let Some(v) = kwargs.get("decay_type") {
                    s.decay_shape = WsdShape::parse("decay_type", v)?;
                }
            }
            _ => {}
        }
        Ok(s)
    }

    /// The LR for optimizer step `step` (0-based): `base_lr * lambda(step)`, as LambdaLR after `step` calls to `step()`.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.lambda(step)
    }

    /// The multiplier HF's `lr_lambda(current_step)` returns.
    pub fn lambda(&self, step: usize) -> f64 {
        let s = step as f64;
        let w = self.warmup_steps as f64;
        let n = self.total_steps as f64;
        // `float(current_step) / float(max(1, num_warmup_steps))`
        let warm = s / w.max(1.0);
        let in_warmup = step < self.warmup_steps;
        // `float(current_step - w) / float(max(1, N - w))`; N < w is allowed by HF (a negative difference -> max 1).
        let progress = (s - w) / (n - w).max(1.0);
        match self.kind {
            SchedulerType::Constant => 1.0,
            SchedulerType::ConstantWithWarmup => {
                if in_warmup {
                    warm
                } else {
                    1.0
                }
            }
            SchedulerType::Linear => {
                if in_warmup {
                    warm
                } else {
                    ((n - s) / (n - w).max(1.0)).max(0.0)
                }
            }
            SchedulerType::Cosine => {
                if in_warmup {
                    warm
                } else {
                    (0.5 * (1.0 + (PI * self.num_cycles * 2.0 * progress).cos())).max(0.0)
                }
            }
            SchedulerType::CosineWithRestarts => {
                if in_warmup {
                    warm
                } else if progress >= 1.0 {
                    0.0
                } else {
                    // Python's `%` on floats takes the sign of the divisor; progress >= 0 here so rem_euclid matches.
                    (0.5 * (1.0 + (PI * (self.num_cycles * progress).rem_euclid(1.0)).cos())).max(0.0)
                }
            }
            SchedulerType::Polynomial => {
                let lr = self.base_lr;
                if in_warmup {
                    warm
                } else if step > self.total_steps {
                    self.lr_end / lr
                } else {
                    // HF divides by `decay_steps` with no max(1, .): N == w would be a ZeroDivisionError there.
                    // The only step reaching this branch then is s == N == w, where 0/0 appears: we take pct = 0.
                    let decay_steps = n - w;
                    let pct_remaining = if decay_steps > 0.0 { 1.0 - (s - w) / decay_steps } else { 0.0 };
                    ((lr - self.lr_end) * pct_remaining.powf(self.power) + self.lr_end) / lr
                }
            }
            SchedulerType::InverseSqrt => {
                if in_warmup {
                    warm
                } else {
                    let shift = self.timescale - w;
                    1.0 / ((s + shift) / self.timescale).sqrt()
                }
            }
            SchedulerType::CosineWithMinLr => {
                if in_warmup {
                    warm
                } else {
                    let f = 0.5 * (1.0 + (PI * self.num_cycles * 2.0 * progress).cos());
                    (f * (1.0 - self.min_lr_rate) + self.min_lr_rate).max(0.0)
                }
            }
            SchedulerType::WarmupStableDecay => self.wsd_lambda(step),
        }
    }

    fn wsd_lambda(&self, step: usize) -> f64 {
        let s = step as i64;
        let w = self.warmup_steps as i64;
        let r = self.min_lr_rate;
        if s < w {
            let p = s as f64 / (w.max(1)) as f64;
            let f = match self.warmup_shape {
                WsdShape::Linear => p,
                WsdShape::Cosine => 0.5 * (1.0 - (PI * p).cos()),
                WsdShape::OneMinusSqrt => 1.0 - (1.0 - p).sqrt(),
            };
            return (f * (1.0 - r) + r).max(0.0);
        }
        if s < w + self.num_stable_steps {
            return 1.0;
        }
        let d = self.num_decay_steps as i64;
        if s < w + self.num_stable_steps + d {
            let p = (s - w - self.num_stable_steps) as f64 / d.max(1) as f64;
            let f = match self.decay_shape {
                WsdShape::Linear => 1.0 - p,
                WsdShape::Cosine => 0.5 * (1.0 + (PI * self.num_cycles * 2.0 * p).cos()),
                WsdShape::OneMinusSqrt => 1.0 - p.sqrt(),
            };
            return (f * (1.0 - r) + r).max(0.0);
        }
        r
    }
}
