//! Training: the optimizer (AdamW with global-norm clipping) over a set of `Param`s.
//! Frozen weights have no state here at all: only parameters handed to `AdamW::step` do.

use crate::backend::{AdamWParams, Backend};
use crate::error::Result;
use crate::tape::Grads;
use crate::tensor::{Param, VarId};

pub mod args;
pub mod checkpoint;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod schedule;
pub mod step;
pub mod trainer;
use std::collections::HashMap;

/// A parameter's AdamW moments by name: (name, exp_avg, exp_avg_sq).
pub type Moments = (String, Vec<f32>, Vec<f32>);

#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    /// Hyper-parameters in f64: an f32 0.999 is off by 1.3e-5 relative in 1 - β2.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 or less: no clipping). LLaMA-Factory default 1.0.
    pub max_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 }
    }
}

/// What one optimizer step saw.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// False when the norm was not finite: the step was skipped and the parameters are unchanged.
    pub applied: bool,
}

pub struct AdamW<B: Backend> {
    pub cfg: AdamWConfig,
    /// Moments per parameter, by var.
    state: HashMap<VarId, (B::Storage, B::Storage)>,
    pub step: u64,
}

impl<B: Backend> AdamW<B> {
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW { cfg, state: HashMap::new(), step: 0 }
    }
    /// Bytes of optimizer state (two f32 moments per trainable scalar once every param has stepped).
    pub fn state_len(&self, b: &B) -> usize {
        self.state.values().map(|(m, v)| b.len(m) + b.len(v)).sum()
    }
    /// Clips and applies one step with learning rate `lr` to every parameter that has a gradient.
    pub fn step(&mut self, b: &B, params: &mut [&mut Param<B>], grads: &mut Grads<B>, lr: f64) -> Result<StepStats> {
        self.step_grouped(b, params, grads, lr, &|_| (1.0, true))
    }

    /// `step` with parameter groups: `group(name)` gives the learning-rate multiplier of that
    /// parameter and whether weight decay applies to it (LoRA+; transformers' Trainer exempts
    /// biases and norm weights from decay).
    pub fn step_grouped(
        &mut self,
        b: &B,
        params: &mut [&mut Param<B>],
        grads: &mut Grads<B>,
        lr: f64,
        group: &dyn Fn(&str) -> (f64, bool),
    ) -> Result<StepStats> {
        let present: Vec<&B::Storage> = params.iter().filter_map(|p| grads.get_param(p)).collect();
        let norm = b.grad_norm_sq(&present)?.sqrt();
        if !norm.is_finite() {
            return Ok(StepStats { grad_norm: norm, applied: false });
        }
        let clip = if self.cfg.max_grad_norm > 0.0 {
            crate::backend::cpu::adamw::clip_scale(norm, self.cfg.max_grad_norm)
        } else {
            1.0
        };
        self.step += 1;
        let hp = AdamWParams {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            step: self.step,
        };
        for p in params.iter_mut() {
            let var = p.var();
            let Some(mut g) = grads.remove(var) else { continue };
            if clip != 1.0 {
                b.scale_in_place(&mut g, clip)?;
            }
            let n = p.elem_count();
            let (m, v) = match self.state.entry(var) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert((b.zeros(n)?, b.zeros(n)?)),
            };
            let (lr_mult, decay) = group(&p.name);
            let hp = AdamWParams { lr: lr * lr_mult, weight_decay: if decay { hp.weight_decay } else { 0.0 }, ..hp };
            b.adamw_step(p.storage_mut()?, &g, m, v, &hp)?;
        }
        Ok(StepStats { grad_norm: norm, applied: true })
    }

    /// The moments of the named parameters, for a checkpoint: (name, m, v). Parameters that have
    /// not stepped yet are left out.
    pub fn export_state(&self, b: &B, named: &[(String, VarId)]) -> Result<Vec<Moments>> {
        let mut out = Vec::new();
        for (name, var) in named {
            if let Some((m, v)) = self.state.get(var) {
                out.push((name.clone(), b.download(m)?, b.download(v)?));
            }
        }
        Ok(out)
    }

    /// Restores moments saved by `export_state` onto the parameters of this run (matched by name,
    /// since variable ids differ between processes) and the step count.
    pub fn import_state(
        &mut self,
        b: &B,
        named: &[(String, VarId)],
        state: &[(String, Vec<f32>, Vec<f32>)],
        step: u64,
    ) -> Result<()> {
        self.state.clear();
        for (name, m, v) in state {
            let Some((_, var)) = named.iter().find(|(n, _)| n == name) else {
                return Err(crate::Error::InvalidArgument {
                    op: "optimizer state",
                    msg: format!("the checkpoint has moments for `{name}`, which this model does not train"),
                });
            };
            self.state.insert(*var, (b.upload(m)?, b.upload(v)?));
        }
        self.step = step;
        Ok(())
    }
}
