//! LoRA linear layers (Hu et al. 2021, https://arxiv.org/abs/2106.09685):
//!
//! ```text
//! y = W₀x + b + s · B(A · dropout(x)),   s = alpha / r   (rsLoRA: alpha / √r, Kalajdzievski 2023)
//! ```
//!
//! A: (r, d_in), Kaiming-uniform as PEFT does it (`kaiming_uniform_(a=√5)`: bound = 1/√d_in).
//! B: (d_out, r), zeros, so an untrained adapter gives output bit-identical to the base.
//! W₀ is frozen: dense, f16/bf16 rows or quantized blocks (QLoRA); it passes gradients to x only.
//!
//! DoRA (Liu et al. 2024, https://arxiv.org/abs/2402.09353), as PEFT implements it:
//! ```text
//! y = m / ‖W₀ + sBA‖_row ⊙ (W₀x + s·B(A·dropout(x))) + b
//! ```
//! with the row norm detached from the graph (the paper's §4.3; PEFT `weight_norm.detach()`), and
//! m initialised to ‖W₀‖_row, so at init the scale is exactly 1.

pub mod pissa;
use crate::backend::cpu::matmul::MatmulDims;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::{self, Weight};
use crate::rng::Rng;
use crate::shape::Shape;
use crate::tape::Tape;
use crate::tensor::{Param, Tensor};

/// How a LoRA adapter is shaped and scaled.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r. Higher means more capacity and more memory.
    pub rank: usize,
    /// Scale numerator: the update is (alpha / r) · BA. Usually 2 * rank.
    pub alpha: f32,
    /// Dropout on the adapter's input (not on the base path). 0 disables it.
    pub dropout: f32,
    /// rsLoRA: scale alpha / √r instead of alpha / r (stable at high ranks).
    pub use_rslora: bool,
    /// DoRA: a trainable magnitude per output row.
    pub use_dora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, use_rslora: false, use_dora: false }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }
}

pub struct LoraLinear<B: Backend> {
    /// The base weight's name as the checkpoint spells it, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub base: Weight<B>,
    pub bias: Option<Tensor<B>>,
    /// (r, d_in)
    pub a: Param<B>,
    /// (d_out, r)
    pub b: Param<B>,
    /// DoRA magnitude, (d_out).
    pub magnitude: Option<Param<B>>,
    pub cfg: LoraConfig,
    pub d_in: usize,
    pub d_out: usize,
    /// PiSSA: the initial (A₀ (r, d_in), B₀ (d_out, r)), kept so the adapter can be saved for the
    /// original base (see pissa.rs). None for a standard initialisation.
    pub pissa_init: Option<(Vec<f32>, Vec<f32>)>,
}

impl<B: Backend> LoraLinear<B> {
    pub fn new(
        be: &B,
        name: &str,
        base: Weight<B>,
        bias: Option<Tensor<B>>,
        cfg: &LoraConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        if cfg.rank == 0 {
            return Err(Error::InvalidArgument { op: "lora", msg: format!("{name}: rank must be > 0") });
        }
        let (d_out, d_in) = base.dims(be);
        let bound = 1.0 / (d_in as f32).sqrt();
        let mut a = vec![0.0f32; cfg.rank * d_in];
        rng.fill_uniform(&mut a, -bound, bound);
        let a = Param::new(format!("{name}.lora_A"), Tensor::from_slice(be, &a, [cfg.rank, d_in])?);
        let b = Param::new(format!("{name}.lora_B"), Tensor::zeros(be, [d_out, cfg.rank])?);
        let magnitude = if cfg.use_dora {
            let norms = match &base {
                Weight::Frozen(q) => be.row_norms(q, None, false)?,
                Weight::Dense(t) => {
                    let v = t.to_vec()?;
                    let n: Vec<f32> = v
                        .chunks(d_in)
                        .map(|r| r.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32)
                        .collect();
                    be.upload(&n)?
                }
            };
            Some(Param::new(
                format!("{name}.lora_magnitude_vector"),
                Tensor::from_storage(be, norms, Shape::new(&[d_out]), None),
            ))
        } else {
            None
        };
        Ok(LoraLinear {
            name: name.into(),
            base,
            bias,
            a,
            b,
            magnitude,
            cfg: cfg.clone(),
            d_in,
            d_out,
            pissa_init: None,
        })
    }

    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v = vec![&self.a, &self.b];
        v.extend(self.magnitude.as_ref());
        v
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = vec![&mut self.a, &mut self.b];
        v.extend(self.magnitude.as_mut());
        v
    }
    pub fn trainable_count(&self) -> usize {
        self.params().iter().map(|p| p.elem_count()).sum()
    }

    /// s · B·A as a dense (d_out, d_in) tensor, untracked.
    pub fn delta(&self) -> Result<Tensor<B>> {
        let mut t = Tape::new();
        let d = MatmulDims::new(self.d_out, self.d_in, self.cfg.rank);
        let ba = ops::matmul(&mut t, &self.b.t.detach(), &self.a.t.detach(), None, d)?;
        ops::scale(&mut t, &ba, self.cfg.scale())
    }

    /// x (..., d_in) → (..., d_out). `dropout_seed` makes the adapter dropout reproducible (and
    /// identical when activation checkpointing recomputes the layer); None (evaluation) disables it.
    pub fn forward(&self, tape: &mut Tape<B>, x: &Tensor<B>, dropout_seed: Option<u64>) -> Result<Tensor<B>> {
        let be = x.backend().clone();
        let base_no_bias =
            ops::linear(tape, x, &self.base, if self.magnitude.is_some() { None } else { self.bias.as_ref() })?;
        let xd = match dropout_seed {
            Some(seed) => ops::dropout(tape, x, self.cfg.dropout, seed, 0)?,
            None => x.clone(),
        };
        let ax = ops::linear(tape, &xd, &Weight::Dense(self.a.t.clone()), None)?; // (..., r)
        let bax = ops::linear(tape, &ax, &Weight::Dense(self.b.t.clone()), None)?; // (..., d_out)
        let lora = ops::scale(tape, &bax, self.cfg.scale())?;
        let y = ops::add(tape, &base_no_bias, &lora)?;
        let Some(m) = &self.magnitude else { return Ok(y) };
        // DoRA: scale = m / ‖W₀ + sBA‖ (norm detached), then y = scale ⊙ (W₀x + s·BAx) + b.
        // 1 / ‖W₀ + sBA‖ per row, on the backend (no readback: a GPU step never waits here).
        let inv = match &self.base {
            Weight::Frozen(q) => be.row_norms(q, Some(self.delta()?.storage()), true)?,
            Weight::Dense(w) => {
                // FALLBACK(cpu): a dense (unquantized, random-init) base: merged on the backend,
                // norms on the host.
                let mut t = Tape::new();
                let merged = ops::add(&mut t, &w.detach(), &self.delta()?)?.to_vec()?;
                let n: Vec<f32> = merged
                    .chunks(self.d_in)
                    .map(|r| (1.0 / r.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()) as f32)
                    .collect();
                be.upload(&n)?
            }
        };
        let inv = Tensor::from_storage(&be, inv, Shape::new(&[1, self.d_out]), None);
        let m_row = m.t.reshape([1, self.d_out])?;
        let mag_scale = ops::mul(tape, &m_row, &inv)?; // (1, d_out), tracked through m
        let y = ops::mul_rows(tape, &y, &mag_scale.reshape([self.d_out])?)?;
        match &self.bias {
            Some(b) => {
                let rows = y.shape().rows();
                let ones = Tensor::from_slice(&be, &vec![1.0; rows], [rows, 1])?;
                let bias_rows =
                    ops::matmul(tape, &ones, &b.reshape([1, self.d_out])?, None, MatmulDims::new(rows, self.d_out, 1))?;
                ops::add(tape, &y, &bias_rows.reshape(y.shape().clone())?)
            }
            None => Ok(y),
        }
    }

    /// The merged dense weight W₀ + sBA (DoRA: scaled per row to m / ‖W₀ + sBA‖).
    pub fn merged_weight(&self, be: &B) -> Result<Tensor<B>> {
        let w = self.base.to_dense(be)?.detach();
        let mut t = Tape::new();
        let merged = ops::add(&mut t, &w, &self.delta()?)?;
        let Some(m) = &self.magnitude else { return Ok(merged) };
        let v = merged.to_vec()?;
        let m = m.t.to_vec()?;
        let mut out = Vec::with_capacity(v.len());
        for (r, row) in v.chunks(self.d_in).enumerate() {
            let n = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            out.extend(row.iter().map(|&x| (x as f64 * m[r] as f64 / n) as f32));
        }
        Tensor::from_slice(be, &out, [self.d_out, self.d_in])
    }
}

impl<B: Backend> LoraLinear<B> {
    /// Re-initialises this adapter with PiSSA (see pissa.rs): A, B from the top-r singular
    /// directions of the base weight, the base replaced by the residual, stored by `store` (which
    /// gets the residual (d_out, d_in) in f32 and returns the frozen format to keep it in).
    pub fn init_pissa(
        &mut self,
        be: &B,
        niter: usize,
        seed: u64,
        store: &dyn Fn(Vec<f32>, usize, usize) -> Result<crate::backend::HostQuant>,
    ) -> Result<()> {
        if self.cfg.use_dora {
            return Err(Error::msg("pissa_init cannot be combined with use_dora"));
        }
        let w = self.base.to_dense(be)?.to_vec()?;
        let p = pissa::pissa_init(&w, self.d_out, self.d_in, self.cfg.rank, self.cfg.scale(), niter, seed)
            .map_err(|e| Error::msg(format!("{}: {e}", self.name)))?;
        let (var_a, var_b) = (self.a.var(), self.b.var());
        self.a.t = Tensor::from_slice(be, &p.a, [self.cfg.rank, self.d_in])?;
        self.a.t.var = Some(var_a);
        self.b.t = Tensor::from_slice(be, &p.b, [self.d_out, self.cfg.rank])?;
        self.b.t.var = Some(var_b);
        self.base = Weight::Frozen(std::sync::Arc::new(be.upload_quant(store(p.residual, self.d_out, self.d_in)?)?));
        self.pissa_init = Some((p.a, p.b));
        Ok(())
    }
}
