//! The tape: a list of the ops whose inputs depend on a trainable parameter, replayed in reverse.
//!
//! Three rules keep it small (STYLE.md 2.4):
//! 1. An op records a node only when some input is tracked. A forward with nothing trainable
//!    records nothing, and its outputs are untracked.
//! 2. Frozen weights (dense without a var, or quantized) pass gradients to their inputs but never
//!    receive one: no buffer, no optimizer state.
//! 3. `BackwardOp` is a closed enum; each variant names what it saves. Each rule lives in
//!    `ops/<op>.rs` and is checked against finite differences in tests/tape.rs.
//!
//! Gradients are freed as soon as they are consumed: a node's output gradient is taken out of the
//! store when the node is processed (every consumer of a value comes after its producer, so it is
//! complete by then), and the node's saved tensors are dropped with it. Only leaves keep gradients.

use crate::backend::cpu::attention::AttnParams;
use crate::backend::cpu::matmul::MatmulDims;
use crate::backend::cpu::rope::RopeConfig;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::{new_var, Param, Tensor, VarId};
use std::collections::HashMap;
use std::sync::Arc;

/// A layer function that activation checkpointing can run again during backward.
pub type CheckpointFn<B> = Arc<dyn Fn(&mut Tape<B>, &Tensor<B>) -> Result<Tensor<B>> + Send + Sync>;

/// Every op that can appear on the tape, with what it saves. Keep backward in reverse order.
pub enum BackwardOp<B: Backend> {
    /// y = a + b (same shape).
    Add {
        a: Option<VarId>,
        b: Option<VarId>,
    },
    /// y = a ⊙ b (same shape): saves both.
    Mul {
        a: Tensor<B>,
        b: Tensor<B>,
    },
    /// y = s · a.
    Scale {
        a: VarId,
        s: f32,
    },
    /// y[r, j] = x[r, j] · v[j].
    MulRows {
        x: Tensor<B>,
        v: Tensor<B>,
        rows: usize,
        c: usize,
    },
    /// y = op(a) · op(b) + bias, with a dense (possibly trainable) b.
    Matmul {
        a: Tensor<B>,
        b: Tensor<B>,
        bias: Option<VarId>,
        dims: MatmulDims,
    },
    /// y = x · Wᵀ (+ bias) with W frozen (any format): dx (and dbias), never dW.
    FrozenLinear {
        x: Option<VarId>,
        bias: Option<VarId>,
        w: Arc<B::QStorage>,
        n: usize,
    },
    /// RMSNorm: saves x, w and rstd.
    RmsNorm {
        x: Tensor<B>,
        w: Tensor<B>,
        rstd: Arc<B::Storage>,
        rows: usize,
        c: usize,
        add_one: bool,
    },
    Rope {
        x: VarId,
        positions: Arc<[u32]>,
        cfg: RopeConfig,
        b: usize,
        t: usize,
        nh: usize,
    },
    /// Flash attention: saves q, k, v, the output and the log-sum-exp.
    Attention {
        q: Tensor<B>,
        k: Tensor<B>,
        v: Tensor<B>,
        out: Arc<B::Storage>,
        lse: Arc<B::Storage>,
        segment_ids: Option<Arc<[u32]>>,
        p: AttnParams,
    },
    /// SwiGLU (`gelu = false`) or GeGLU.
    Glu {
        gate: Tensor<B>,
        up: Tensor<B>,
        gelu: bool,
    },
    /// Counter-based dropout: nothing saved but the seed.
    Dropout {
        x: VarId,
        p: f32,
        seed: u64,
        offset: u64,
    },
    /// Lookup into a trainable table.
    Embedding {
        table: VarId,
        ids: Arc<[u32]>,
        v: usize,
        c: usize,
    },
    /// Fused linear + cross-entropy: the input gradients were computed during the forward
    /// (scaled for the mean loss); backward only multiplies by the incoming scalar.
    LinearCrossEntropy {
        h: Option<VarId>,
        w: Option<VarId>,
        dh: Option<B::Storage>,
        dw: Option<B::Storage>,
    },
    /// Activation checkpointing: keeps only the layer input; the layer runs again in backward.
    Checkpoint {
        input: Tensor<B>,
        f: CheckpointFn<B>,
    },
}

pub struct Node<B: Backend> {
    pub out: VarId,
    pub op: BackwardOp<B>,
}

/// Gradients by tape variable. After `backward`, holds one entry per tracked leaf that received a
/// gradient (parameters, and any tensor made with `Tensor::track`).
pub struct Grads<B: Backend> {
    map: HashMap<VarId, B::Storage>,
}

impl<B: Backend> Default for Grads<B> {
    fn default() -> Self {
        Grads { map: HashMap::new() }
    }
}

impl<B: Backend> Grads<B> {
    pub fn get(&self, var: VarId) -> Option<&B::Storage> {
        self.map.get(&var)
    }
    pub fn get_param(&self, p: &Param<B>) -> Option<&B::Storage> {
        self.map.get(&p.var())
    }
    pub fn remove(&mut self, var: VarId) -> Option<B::Storage> {
        self.map.remove(&var)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn vars(&self) -> impl Iterator<Item = &VarId> {
        self.map.keys()
    }
    /// grad[var] += g (takes ownership of g when there is nothing yet).
    pub fn accumulate(&mut self, b: &B, var: VarId, g: B::Storage) -> Result<()> {
        match self.map.get_mut(&var) {
            Some(existing) => b.add_assign(existing, &g),
            None => {
                self.map.insert(var, g);
                Ok(())
            }
        }
    }
    /// Adds every gradient of `other` into this store (gradient accumulation over micro-batches).
    pub fn merge(&mut self, b: &B, other: Grads<B>) -> Result<()> {
        for (var, g) in other.map {
            self.accumulate(b, var, g)?;
        }
        Ok(())
    }
}

pub struct Tape<B: Backend> {
    nodes: Vec<Node<B>>,
    /// False for inference: nothing is recorded and every output is untracked, so activations are
    /// freed as soon as they are used.
    enabled: bool,
}

impl<B: Backend> Default for Tape<B> {
    fn default() -> Self {
        Tape { nodes: Vec::new(), enabled: true }
    }
}

impl<B: Backend> Tape<B> {
    pub fn new() -> Self {
        Self::default()
    }
    /// A tape that records nothing (evaluation, generation).
    pub fn no_grad() -> Self {
        Tape { nodes: Vec::new(), enabled: false }
    }
    pub fn is_recording(&self) -> bool {
        self.enabled
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// Names of the recorded ops in order (for tests and debugging).
    pub fn op_names(&self) -> Vec<&'static str> {
        self.nodes.iter().map(|n| op_name(&n.op)).collect()
    }

    /// Records `op` if any input is tracked and returns the output's var (None: nothing recorded).
    pub(crate) fn record(&mut self, any_tracked: bool, op: impl FnOnce() -> BackwardOp<B>) -> Option<VarId> {
        if !any_tracked || !self.enabled {
            return None;
        }
        let out = new_var();
        self.nodes.push(Node { out, op: op() });
        Some(out)
    }

    /// Runs `f` (one transformer layer, say) keeping only its input: the activations inside are
    /// dropped now and recomputed during backward. Gradients are identical to running `f` directly
    /// (tested in tests/tape.rs), provided `f` is deterministic (dropout seeds come from arguments).
    pub fn checkpoint(&mut self, x: &Tensor<B>, f: CheckpointFn<B>) -> Result<Tensor<B>> {
        if !self.enabled {
            return f(self, x);
        }
        let mut inner = Tape::new();
        let out = f(&mut inner, x)?;
        if inner.is_empty() {
            return Ok(out); // nothing trainable inside and x untracked: nothing to record
        }
        drop(inner);
        let var = self.record(true, || BackwardOp::Checkpoint { input: x.clone(), f });
        Ok(Tensor { var, ..out })
    }

    /// Backpropagates from a scalar (or any) tensor with gradient ones.
    pub fn backward(self, loss: &Tensor<B>) -> Result<Grads<B>> {
        let var = loss
            .var
            .ok_or_else(|| Error::Tape("backward: the loss does not depend on any trainable parameter".into()))?;
        let seed = loss.b.upload(&vec![1.0; loss.elem_count()])?;
        self.backward_from(&loss.b, var, seed)
    }

    /// Backpropagates from `var` with the given output gradient.
    pub fn backward_from(mut self, b: &B, var: VarId, seed: B::Storage) -> Result<Grads<B>> {
        let mut grads = Grads::default();
        grads.map.insert(var, seed);
        while let Some(node) = self.nodes.pop() {
            let Some(dout) = grads.map.remove(&node.out) else { continue };
            ops::backward(b, node.op, dout, &mut grads)?;
        }
        Ok(grads)
    }
}

pub(crate) fn op_name<B: Backend>(op: &BackwardOp<B>) -> &'static str {
    match op {
        BackwardOp::Add { .. } => "add",
        BackwardOp::Mul { .. } => "mul",
        BackwardOp::Scale { .. } => "scale",
        BackwardOp::MulRows { .. } => "mul_rows",
        BackwardOp::Matmul { .. } => "matmul",
        BackwardOp::FrozenLinear { .. } => "frozen_linear",
        BackwardOp::RmsNorm { .. } => "rms_norm",
        BackwardOp::Rope { .. } => "rope",
        BackwardOp::Attention { .. } => "attention",
        BackwardOp::Glu { .. } => "glu",
        BackwardOp::Dropout { .. } => "dropout",
        BackwardOp::Embedding { .. } => "embedding",
        BackwardOp::LinearCrossEntropy { .. } => "linear_cross_entropy",
        BackwardOp::Checkpoint { .. } => "checkpoint",
    }
}

impl<B: Backend> std::fmt::Debug for Grads<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grads({} vars)", self.map.len())
    }
}
