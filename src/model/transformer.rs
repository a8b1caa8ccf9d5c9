//! A decoder-only transformer: embedding → layers → final norm → (tied) LM head + loss.
//! Family differences are data (`BlockConfig`, `embed_scale`, `final_softcap`).
//! Layers are `Arc`s so activation checkpointing can run them again during backward; the
//! optimizer gets mutable access once the tape is gone.

use super::block::{forward_checkpointed, BlockConfig, DecoderLayer, FrozenStore, LayerInputs};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::LoraConfig;
use crate::ops::{self, LossOutput, Weight};
use crate::rng::Rng;
use crate::tape::Tape;
use crate::tensor::{Param, Tensor};
use std::sync::Arc;

pub struct Transformer<B: Backend> {
    pub block: BlockConfig,
    pub vocab_size: usize,
    pub embed: Weight<B>,
    pub layers: Vec<Arc<DecoderLayer<B>>>,
    pub norm: Tensor<B>,
    /// None: tied to `embed`.
    pub lm_head: Option<Weight<B>>,
    /// Gemma multiplies embeddings by √hidden.
    pub embed_scale: Option<f32>,
    /// Gemma-2 final logit soft-capping.
    pub final_softcap: Option<f32>,
    /// NEFTune (arXiv:2310.05914): during training (a dropout seed is given), add uniform noise
    /// in ±alpha/√(T·C) to the embeddings, T the padded row length, as transformers' hook does.
    pub neftune_alpha: Option<f32>,
}

/// One batch of token rows: ids and targets (B*T), with -100 targets ignored.
#[derive(Clone, Debug)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub ids: Arc<[u32]>,
    pub targets: Vec<i32>,
    pub positions: Arc<[u32]>,
    pub segment_ids: Option<Arc<[u32]>>,
}

impl Batch {
    /// Causal LM on plain rows: target[i] = ids[i + 1] within each row, the last one ignored.
    pub fn causal_lm(rows: &[Vec<u32>]) -> Result<Self> {
        let t = rows.first().map_or(0, |r| r.len());
        if t == 0 || rows.iter().any(|r| r.len() != t) {
            return Err(Error::InvalidArgument {
                op: "batch",
                msg: "rows must be non-empty and of equal length".into(),
            });
        }
        let ids: Vec<u32> = rows.iter().flatten().copied().collect();
        let mut targets = Vec::with_capacity(ids.len());
        for r in rows {
            targets.extend(r[1..].iter().map(|&x| x as i32));
            targets.push(-100);
        }
        let positions: Vec<u32> = (0..rows.len() * t).map(|i| (i % t) as u32).collect();
        Ok(Batch { b: rows.len(), t, ids: ids.into(), targets, positions: positions.into(), segment_ids: None })
    }
}

impl<B: Backend> Transformer<B> {
    /// A model with random weights; LoRA on `targets` in every layer.
    #[allow(clippy::too_many_arguments)]
    pub fn random(
        be: &B,
        block: &BlockConfig,
        n_layers: usize,
        vocab_size: usize,
        targets: &[&str],
        lora: &LoraConfig,
        store: &FrozenStore,
        rng: &mut Rng,
    ) -> Result<Self> {
        let c = block.hidden_size;
        let mut e = vec![0.0f32; vocab_size * c];
        rng.fill_normal(&mut e, 0.02);
        let layers = (0..n_layers)
            .map(|l| {
                DecoderLayer::random(be, block, &format!("model.layers.{l}"), targets, lora, store, rng).map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer {
            block: block.clone(),
            vocab_size,
            embed: Weight::Dense(Tensor::from_slice(be, &e, [vocab_size, c])?),
            layers,
            norm: Tensor::from_slice(be, &vec![if block.norm_add_one { 0.0 } else { 1.0 }; c], [c])?,
            lm_head: None,
            embed_scale: None,
            final_softcap: None,
            neftune_alpha: None,
        })
    }

    pub fn params(&self) -> Vec<&Param<B>> {
        self.layers.iter().flat_map(|l| l.params()).collect()
    }
    pub fn trainable_count(&self) -> usize {
        self.params().iter().map(|p| p.elem_count()).sum()
    }
    /// Mutable parameters for the optimizer. Fails while a tape still holds a layer.
    pub fn params_mut(&mut self) -> Result<Vec<&mut Param<B>>> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let l = Arc::get_mut(l).ok_or_else(|| Error::Tape(format!("layer {i} is still held by a tape")))?;
            v.extend(l.params_mut());
        }
        Ok(v)
    }

    /// Final hidden states (B*T, C), after the final norm. `seed`: the step's dropout seed (None:
    /// evaluation, no dropout).
    pub fn hidden(&self, tape: &mut Tape<B>, batch: &Batch, checkpoint: bool, seed: Option<u64>) -> Result<Tensor<B>> {
        let be = self.norm.backend().clone();
        let c = self.block.hidden_size;
        let mut h = ops::embedding(tape, &batch.ids, &self.embed, &be)?;
        if let Some(s) = self.embed_scale {
            h = ops::scale(tape, &h, s)?;
        }
        if let (Some(alpha), Some(seed)) = (self.neftune_alpha, seed) {
            let mag = alpha / ((batch.t * c) as f32).sqrt();
            let mut noise = vec![0.0f32; batch.b * batch.t * c];
            crate::rng::Rng::new(seed ^ 0x6e65_6674_756e_6521).fill_uniform(&mut noise, -mag, mag);
            let noise = Tensor::from_slice(&be, &noise, h.shape().clone())?;
            h = ops::add(tape, &h, &noise)?;
        }
        let mut h = h.reshape([batch.b, batch.t, c])?;
        for (l, layer) in self.layers.iter().enumerate() {
            let inp = LayerInputs {
                positions: batch.positions.clone(),
                segment_ids: batch.segment_ids.clone(),
                seed: seed.map(|s| s.wrapping_mul(1_000_003).wrapping_add(l as u64)),
            };
            h = if checkpoint {
                forward_checkpointed(tape, layer, &h, &inp)?
            } else {
                layer.forward(tape, &h, &inp)?
            };
        }
        let h = ops::rms_norm(tape, &h, &self.norm, self.block.rms_norm_eps, self.block.norm_add_one)?;
        h.reshape([batch.b * batch.t, c])
    }

    /// Mean cross-entropy over the batch's non-ignored targets.
    pub fn loss(
        &self,
        tape: &mut Tape<B>,
        batch: &Batch,
        checkpoint: bool,
        seed: Option<u64>,
    ) -> Result<LossOutput<B>> {
        let h = self.hidden(tape, batch, checkpoint, seed)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        ops::linear_cross_entropy(tape, &h, head, &batch.targets, self.final_softcap)
    }
}

impl<B: Backend> Transformer<B> {
    /// Logits (B*T, V) for a batch, with no tape kept (inference).
    pub fn logits(&self, batch: &Batch) -> Result<Vec<f32>> {
        let mut tape = Tape::no_grad();
        let h = self.hidden(&mut tape, batch, false, None)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut z = ops::linear(&mut tape, &h, head, None)?.to_vec()?;
        if let Some(cap) = self.final_softcap {
            z.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        Ok(z)
    }
}

impl<B: Backend> Transformer<B> {
    /// Bytes of the widest activation one row of `t` tokens makes in the forward or backward
    /// ((T, max(C, intermediate, H * D)) f32): what must fit one kernel launch.
    pub fn activation_row_bytes(&self, t: usize) -> u64 {
        let widest = self
            .layers
            .iter()
            .map(|l| {
                let c = &l.cfg;
                c.hidden_size.max(c.intermediate_size).max(c.num_attention_heads * c.head_dim)
            })
            .max()
            .unwrap_or(self.block.hidden_size);
        (t * widest * 4) as u64
    }
}

impl Batch {
    /// Rows [r0, r1) of the batch, as a batch of its own.
    pub fn rows(&self, r0: usize, r1: usize) -> Batch {
        let (a, z) = (r0 * self.t, r1 * self.t);
        Batch {
            b: r1 - r0,
            t: self.t,
            ids: self.ids[a..z].into(),
            targets: self.targets[a..z].to_vec(),
            positions: self.positions[a..z].into(),
            segment_ids: self.segment_ids.as_ref().map(|s| s[a..z].into()),
        }
    }

    /// The batch in pieces of at most `max_rows` rows (itself when it has no more).
    pub fn split_rows(&self, max_rows: usize) -> Vec<Batch> {
        let m = max_rows.max(1);
        if self.b <= m {
            return vec![self.clone()];
        }
        (0..self.b).step_by(m).map(|r0| self.rows(r0, (r0 + m).min(self.b))).collect()
    }

    /// One row of token ids, for inference.
    pub fn single(ids: &[u32]) -> Self {
        let t = ids.len();
        Batch {
            b: 1,
            t,
            ids: ids.into(),
            targets: vec![-100; t],
            positions: (0..t as u32).collect::<Vec<_>>().into(),
            segment_ids: None,
        }
    }
}

impl<B: Backend> Transformer<B> {
    /// Every LoRA layer, in layer order then q, k, v, o, gate, up, down.
    pub fn loras(&self) -> Vec<&crate::lora::LoraLinear<B>> {
        let mut v = Vec::new();
        for l in &self.layers {
            for (_, p) in l.projections() {
                if let super::block::Proj::Lora(x) = p {
                    v.push(x);
                }
            }
        }
        v
    }
    /// Mutable LoRA layers. Fails while a tape still holds a layer.
    pub fn loras_mut(&mut self) -> Result<Vec<&mut crate::lora::LoraLinear<B>>> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let l = Arc::get_mut(l).ok_or_else(|| Error::Tape(format!("layer {i} is still held by a tape")))?;
            for p in [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
            ] {
                if let super::block::Proj::Lora(x) = p {
                    v.push(x);
                }
            }
        }
        Ok(v)
    }
}

impl<B: Backend> Transformer<B> {
    /// Decodes every frozen weight to dense f32 (an fp32 base, as a PyTorch model loaded in float32
    /// would be). Costs 4 bytes per parameter; the fast dense matmul path then serves every layer.
    pub fn densify(&mut self) -> Result<()> {
        let be = self.norm.backend().clone();
        let dense = |w: &mut Weight<B>| -> Result<()> {
            if let Weight::Frozen(_) = w {
                *w = Weight::Dense(w.to_dense(&be)?);
            }
            Ok(())
        };
        dense(&mut self.embed)?;
        if let Some(h) = self.lm_head.as_mut() {
            dense(h)?;
        }
        for (i, l) in self.layers.iter_mut().enumerate() {
            let l = Arc::get_mut(l).ok_or_else(|| Error::Tape(format!("layer {i} is still held by a tape")))?;
            for p in [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
            ] {
                match p {
                    super::block::Proj::Frozen { w, .. } => dense(w)?,
                    super::block::Proj::Lora(x) => dense(&mut x.base)?,
                }
            }
        }
        Ok(())
    }
}
