//! Which tensors of a `Transformer` train, beyond LoRA adapters: freeze tuning (the base tensors
//! of the last N layers) and full tuning (every tensor) make base tensors trainable by decoding
//! them to dense f32 and tracking them. The optimizer step then runs over LoRA parameters and
//! these tensors alike, each with its Hugging Face name (for LoRA+ groups, weight-decay groups,
//! checkpoints and saving).
//! Test: tests/trainer.rs (freeze and full runs lower the loss; resume restores these tensors).
//!
//! Contracts easy to miss:
//! - Names are Hugging Face's (`model.layers.3.self_attn.q_proj.weight`,
//!   `model.layers.3.input_layernorm.weight`, `model.embed_tokens.weight`), whatever the file was.
//!   Phi-3's fused qkv/gate_up are held split, so their names here are the split ones.
//! - A trainable base tensor is held as dense f32 (4 bytes per parameter): full tuning of a 1B
//!   model needs ~4 GB for weights plus 8 GB of AdamW moments. The memory plan says so first.
//! - The optimizer moves each trainable base tensor out of the model into a `Param` for the step
//!   and back; its `VarId` is unchanged, so optimizer moments stay attached to it.

use super::block::{DecoderLayer, Proj};
use super::transformer::Transformer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::Weight;
use crate::tape::Grads;
use crate::tensor::{Param, Tensor, VarId};
use crate::train::{AdamW, StepStats};
use std::sync::Arc;

/// A base tensor of the model: a (possibly quantized) weight matrix, or a vector (norm, bias).
pub enum Slot<'a, B: Backend> {
    Weight(&'a mut Weight<B>),
    Tensor(&'a mut Tensor<B>),
}

fn layer_slots<'a, B: Backend>(l: usize, layer: &'a mut DecoderLayer<B>, out: &mut Vec<(String, Slot<'a, B>)>) {
    let p = format!("model.layers.{l}");
    // Gemma-style blocks (post norms) name their four norms differently from Llama's two.
    let gemma = layer.post_attn_norm.is_some();
    let DecoderLayer {
        attn_norm,
        q_proj,
        k_proj,
        v_proj,
        o_proj,
        q_norm,
        k_norm,
        post_attn_norm,
        ffn_norm,
        gate_proj,
        up_proj,
        down_proj,
        post_ffn_norm,
        ..
    } = layer;
    out.push((format!("{p}.input_layernorm.weight"), Slot::Tensor(attn_norm)));
    let projs: [(&str, &mut Proj<B>); 7] = [
        ("self_attn.q_proj", q_proj),
        ("self_attn.k_proj", k_proj),
        ("self_attn.v_proj", v_proj),
        ("self_attn.o_proj", o_proj),
        ("mlp.gate_proj", gate_proj),
        ("mlp.up_proj", up_proj),
        ("mlp.down_proj", down_proj),
    ];
    for (name, proj) in projs {
        let (w, bias) = match proj {
            Proj::Frozen { w, bias } => (w, bias),
            Proj::Lora(x) => (&mut x.base, &mut x.bias),
        };
        out.push((format!("{p}.{name}.weight"), Slot::Weight(w)));
        if let Some(b) = bias.as_mut() {
            out.push((format!("{p}.{name}.bias"), Slot::Tensor(b)));
        }
    }
    if let Some(t) = q_norm.as_mut() {
        out.push((format!("{p}.self_attn.q_norm.weight"), Slot::Tensor(t)));
    }
    if let Some(t) = k_norm.as_mut() {
        out.push((format!("{p}.self_attn.k_norm.weight"), Slot::Tensor(t)));
    }
    if gemma {
        if let Some(t) = post_attn_norm.as_mut() {
            out.push((format!("{p}.post_attention_layernorm.weight"), Slot::Tensor(t)));
        }
        out.push((format!("{p}.pre_feedforward_layernorm.weight"), Slot::Tensor(ffn_norm)));
        if let Some(t) = post_ffn_norm.as_mut() {
            out.push((format!("{p}.post_feedforward_layernorm.weight"), Slot::Tensor(t)));
        }
    } else {
        out.push((format!("{p}.post_attention_layernorm.weight"), Slot::Tensor(ffn_norm)));
    }
}

fn slot_tensor<'a, B: Backend>(s: &'a Slot<'_, B>) -> Option<&'a Tensor<B>> {
    match s {
        Slot::Weight(Weight::Dense(t)) => Some(t),
        Slot::Weight(Weight::Frozen(_)) => None,
        Slot::Tensor(t) => Some(t),
    }
}

impl<B: Backend> Transformer<B> {
    /// Every base tensor with its Hugging Face name. Fails while a tape still holds a layer.
    pub fn base_slots_mut(&mut self) -> Result<Vec<(String, Slot<'_, B>)>> {
        let mut out = Vec::new();
        out.push(("model.embed_tokens.weight".to_string(), Slot::Weight(&mut self.embed)));
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let layer = Arc::get_mut(layer).ok_or_else(|| Error::Tape(format!("layer {l} is still held by a tape")))?;
            layer_slots(l, layer, &mut out);
        }
        out.push(("model.norm.weight".to_string(), Slot::Tensor(&mut self.norm)));
        if let Some(h) = self.lm_head.as_mut() {
            out.push(("lm_head.weight".to_string(), Slot::Weight(h)));
        }
        Ok(out)
    }

    /// Makes every base tensor whose name `select` accepts trainable (decoded to dense f32 and
    /// tracked). Returns the names made trainable, in model order.
    pub fn make_trainable(&mut self, select: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let be = self.norm.backend().clone();
        let mut names = Vec::new();
        for (name, slot) in self.base_slots_mut()? {
            if !select(&name) {
                continue;
            }
            match slot {
                Slot::Weight(w) => {
                    let t = w.to_dense(&be)?;
                    *w = Weight::Dense(if t.is_tracked() { t } else { t.track() });
                }
                Slot::Tensor(t) => {
                    if !t.is_tracked() {
                        *t = t.track();
                    }
                }
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Every trainable tensor: (name, var, shape). LoRA parameters first (PEFT names without the
    /// `base_model.model.` prefix), then trainable base tensors.
    pub fn trainable_vars(&mut self) -> Result<Vec<(String, VarId, Vec<usize>)>> {
        let mut v: Vec<(String, VarId, Vec<usize>)> =
            self.params().iter().map(|p| (p.name.clone(), p.var(), p.t.dims().to_vec())).collect();
        for (name, slot) in self.base_slots_mut()? {
            if let Some(t) = slot_tensor(&slot).filter(|t| t.is_tracked()) {
                v.push((name, t.var().expect("tracked"), t.dims().to_vec()));
            }
        }
        Ok(v)
    }

    /// Number of trainable scalars (LoRA and base tensors).
    pub fn trainable_scalars(&mut self) -> Result<usize> {
        Ok(self.trainable_vars()?.iter().map(|(_, _, s)| s.iter().product::<usize>()).sum())
    }

    /// Values of every trainable tensor (for checkpoints): (name, shape, data).
    pub fn trainable_values(&mut self) -> Result<Vec<crate::train::checkpoint::NamedF32>> {
        let mut out = Vec::new();
        for p in self.params() {
            out.push((p.name.clone(), p.t.dims().to_vec(), p.t.to_vec()?));
        }
        for (name, slot) in self.base_slots_mut()? {
            if let Some(t) = slot_tensor(&slot).filter(|t| t.is_tracked()) {
                out.push((name, t.dims().to_vec(), t.to_vec()?));
            }
        }
        Ok(out)
    }

    /// Restores trainable tensors saved by `trainable_values`; every trainable tensor must be
    /// present with its shape (a checkpoint of another configuration is refused, listing why).
    pub fn set_trainable_values(&mut self, values: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
        let be = self.norm.backend().clone();
        let find = |name: &str| values.iter().find(|(n, _, _)| n == name);
        let mut problems = Vec::new();
        for p in self.params_mut()? {
            match find(&p.name) {
                Some((_, shape, data)) if shape.as_slice() == p.t.dims() => {
                    let var = p.var();
                    p.t = Tensor::from_slice(&be, data, shape.clone())?;
                    p.t.var = Some(var);
                }
                Some((_, shape, _)) => {
                    problems.push(format!("{}: shape {shape:?}, model has {:?}", p.name, p.t.dims()))
                }
                None => problems.push(format!("{}: missing", p.name)),
            }
        }
        for (name, slot) in self.base_slots_mut()? {
            let t = match slot {
                Slot::Weight(Weight::Dense(t)) | Slot::Tensor(t) if t.is_tracked() => t,
                _ => continue,
            };
            match find(&name) {
                Some((_, shape, data)) if shape.as_slice() == t.dims() => {
                    let var = t.var;
                    *t = Tensor::from_slice(&be, data, shape.clone())?;
                    t.var = var;
                }
                Some((_, shape, _)) => problems.push(format!("{name}: shape {shape:?}, model has {:?}", t.dims())),
                None => problems.push(format!("{name}: missing")),
            }
        }
        if !problems.is_empty() {
            return Err(Error::InvalidArgument {
                op: "restore trainable tensors",
                msg: format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")),
            });
        }
        Ok(())
    }

    /// One AdamW step over every trainable tensor. `group(name)` gives the tensor's learning-rate
    /// multiplier and whether weight decay applies (LoRA+, no decay on norms and biases).
    pub fn optimizer_step(
        &mut self,
        opt: &mut AdamW<B>,
        grads: &mut Grads<B>,
        lr: f64,
        group: &dyn Fn(&str) -> (f64, bool),
    ) -> Result<StepStats> {
        let be = self.norm.backend().clone();
        // Move trainable base tensors out into Params (same var), step, and put them back.
        let placeholder = Tensor::zeros(&be, [1])?;
        let mut owned: Vec<Param<B>> = Vec::new();
        for (name, slot) in self.base_slots_mut()? {
            let t = match slot {
                Slot::Weight(Weight::Dense(t)) | Slot::Tensor(t) if t.is_tracked() => t,
                _ => continue,
            };
            owned.push(Param { name, t: std::mem::replace(t, placeholder.clone()) });
        }
        let stats = {
            let mut all: Vec<&mut Param<B>> = owned.iter_mut().collect();
            let mut lora = self.params_mut()?;
            all.append(&mut lora);
            opt.step_grouped(&be, &mut all, grads, lr, group)
        };
        let mut it = owned.into_iter();
        for (name, slot) in self.base_slots_mut()? {
            let t = match slot {
                Slot::Weight(Weight::Dense(t)) | Slot::Tensor(t) if Arc::ptr_eq(&t.s, &placeholder.s) => t,
                _ => continue,
            };
            let p = it.next().ok_or_else(|| Error::Tape("trainable tensors changed during the step".into()))?;
            debug_assert_eq!(p.name, name);
            *t = p.t;
        }
        stats
    }
}
