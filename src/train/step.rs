//! One optimizer step: forward + backward over the micro-batches of a gradient-accumulation group,
//! then global-norm clipping and AdamW.
//!
//! The loss is the mean over every trained token of the whole group (each token weighs the same,
//! as transformers' Trainer does with `num_items_in_batch`): micro-batch i, whose fused loss is its
//! own mean over `count_i` tokens, is backpropagated with seed `count_i / Σ count`. So splitting a
//! batch of 4 into 2 micro-batches of 2 gives the same gradients (tested in tests/train_step.rs).

use crate::backend::Backend;
use crate::error::Result;
use crate::model::{Batch, Transformer};
use crate::tape::{Grads, Tape};
use crate::train::AdamW;
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, Default)]
pub struct StepOutput {
    /// Mean loss over the group's trained tokens.
    pub loss: f64,
    /// Trained tokens (targets != -100) in the group.
    pub trained_tokens: usize,
    /// All tokens processed (including prompt and padding), for tokens/s.
    pub tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// False when the gradient was not finite and the step was skipped.
    pub applied: bool,
}

/// Forward + backward of one group, returning the accumulated gradients (not applied).
pub fn accumulate<B: Backend>(
    model: &Transformer<B>,
    micro: &[Batch],
    checkpoint: bool,
    seed: u64,
) -> Result<(Grads<B>, StepOutput)> {
    let be = model.norm.backend().clone();
    let total: usize = micro.iter().map(|b| b.targets.iter().filter(|&&t| t != -100).count()).sum();
    let micro = fit_backend(model, micro);
    let mut grads = Grads::default();
    let mut out = StepOutput { trained_tokens: total, ..Default::default() };
    let mut loss_sum = 0.0;
    for (i, batch) in micro.iter().enumerate() {
        out.tokens += batch.b * batch.t;
        let mut tape = Tape::new();
        let l = model.loss(&mut tape, batch, checkpoint, Some(seed.wrapping_mul(1_000_003).wrapping_add(i as u64)))?;
        loss_sum += l.loss_sum;
        if l.count == 0 || total == 0 {
            continue; // nothing trained in this micro-batch: no gradient
        }
        let Some(var) = l.loss.var() else { continue };
        let seed_grad = be.upload(&[(l.count as f64 / total as f64) as f32])?;
        drop(l);
        grads.merge(&be, tape.backward_from(&be, var, seed_grad)?)?;
    }
    out.loss = if total > 0 { loss_sum / total as f64 } else { 0.0 };
    Ok((grads, out))
}

/// One full step: accumulate, clip, AdamW at learning rate `lr`.
pub fn train_step<B: Backend>(
    model: &mut Transformer<B>,
    opt: &mut AdamW<B>,
    micro: &[Batch],
    lr: f64,
    checkpoint: bool,
    seed: u64,
) -> Result<StepOutput> {
    let (mut grads, mut out) = accumulate(model, micro, checkpoint, seed)?;
    let stats = model.optimizer_step(opt, &mut grads, lr, &|_| (1.0, true))?;
    out.grad_norm = stats.grad_norm;
    out.applied = stats.applied;
    Ok(out)
}

/// Mean loss over the trained tokens of `batches`, no gradients (evaluation).
pub fn evaluate<B: Backend>(model: &Transformer<B>, batches: &[Batch]) -> Result<(f64, usize)> {
    let (mut sum, mut count) = (0.0, 0);
    for b in &fit_backend(model, batches) {
        let mut tape = Tape::no_grad();
        let l = model.loss(&mut tape, b, false, None)?;
        sum += l.loss_sum;
        count += l.count;
    }
    Ok((if count > 0 { sum / count as f64 } else { 0.0 }, count))
}

/// The micro-batches, each split in rows where its activations would not fit one kernel launch of
/// the backend (`Backend::max_tensor_bytes`: one storage binding on wgpu, 128 MiB on lavapipe).
/// Gradients are unchanged (every piece is weighed by its own token count, above); with dropout
/// the pieces draw their own masks. A single row too wide to fit is left whole (the op that
/// cannot take it says so).
fn fit_backend<'a, B: Backend>(model: &Transformer<B>, micro: &'a [Batch]) -> Vec<Cow<'a, Batch>> {
    let max = model.norm.backend().max_tensor_bytes();
    micro
        .iter()
        .flat_map(|b| {
            let rows = max.map_or(b.b, |m| (m / model.activation_row_bytes(b.t).max(1)) as usize);
            if b.b <= rows.max(1) {
                vec![Cow::Borrowed(b)]
            } else {
                b.split_rows(rows).into_iter().map(Cow::Owned).collect()
            }
        })
        .collect()
}
