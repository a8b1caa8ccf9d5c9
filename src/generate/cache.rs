//! KV cache and the cached forward: the model's own layers run on the new tokens only, their keys
//! and values (after RoPE and k-norm) appended to a per-layer cache, and attention done by
//! `attention_decode` against the cache. Same weights, same ops, same order as
//! `DecoderLayer::forward` / `Transformer::logits`, so `prefill(ids)` followed by `step(id)`s gives
//! the logits a full recompute on the whole sequence gives, to float rounding.
//! Spec: src/model/block.rs (the full forward)   Test: tests/generate.rs
//!
//! Legend: TQ new tokens, S cached positions, C hidden, H, KV heads, D head dim, V vocab.
//!
//! Contracts easy to miss:
//! - LoRA adapters are applied as they are, with dropout OFF (the `LoraLinear` forward with p = 0,
//!   parameters detached so nothing is recorded on a tape). DoRA's magnitude is applied.
//! - The cache lives in backend storage (device memory on wgpu): the new rows are appended with
//!   `Backend::copy_into` and attention runs as `Backend::attention_decode`, so a decode step never
//!   leaves the device until the logits are read back. Where the backend prefers it (wgpu on
//!   SHADER_F16 adapters) the cache holds f16 (`pack_f16_into`, `attention_decode(.., f16)`): half the
//!   memory, logits within f16 rounding of the f32 cache's; `KvCache::with_f16` chooses.
//! - Sliding-window layers keep at most `2 * window` rows: once a layer holds that many, the rows
//!   no future query can see (older than the last `window - 1`) are dropped in one move (a copy to
//!   new buffers), so the cost is amortised and the kernel always gets one contiguous buffer.
//! - Positions are absolute: the n-th token fed (prompt and generated) is at position n.

use crate::backend::cpu::attention_decode::DecodeParams;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{DecoderLayer, Proj, Transformer};
use crate::ops::{self, Weight};
use crate::tape::Tape;
use crate::tensor::Tensor;
use std::sync::Arc;

/// One layer's cached keys and values: rows for absolute positions [pos0, pos0 + rows), in backend
/// storage of `cap` rows (grown by doubling, so appends are amortised copies on the device).
pub struct LayerKv<B: Backend> {
    /// (cap, KV, D), after RoPE (and k-norm when the model has one); the first `rows` are valid.
    k: Option<B::Storage>,
    /// (cap, KV, D)
    v: Option<B::Storage>,
    rows: usize,
    cap: usize,
    /// The buffers hold f16 pairs (u32 words, `Backend::pack_f16_into`) instead of f32.
    f16: bool,
    /// Absolute position of row 0 (> 0 once a sliding-window layer dropped old rows).
    pub pos0: usize,
    /// KV * D: floats per cached position.
    pub row: usize,
    /// The layer's sliding window, if it has one.
    pub window: Option<usize>,
}

impl<B: Backend> std::fmt::Debug for LayerKv<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LayerKv {{ rows: {}, cap: {}, pos0: {}, row: {} }}", self.rows, self.cap, self.pos0, self.row)
    }
}

impl<B: Backend> LayerKv<B> {
    fn new(row: usize, window: Option<usize>, f16: bool) -> Self {
        LayerKv { k: None, v: None, rows: 0, cap: 0, f16, pos0: 0, row, window }
    }

    /// Storage elements (f32 or u32 words) per cached row.
    fn row_words(&self) -> usize {
        if self.f16 {
            self.row / 2
        } else {
            self.row
        }
    }

    /// Does this layer cache f16 values?
    pub fn is_f16(&self) -> bool {
        self.f16
    }

    /// Cached positions.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows the buffers can hold before they grow.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The cached keys and values (first `rows()` rows of each, (rows, KV, D)), downloaded.
    pub fn to_vecs(&self, be: &B) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.rows * self.row_words();
        let f16 = self.f16;
        let values = |s: &B::Storage| -> Result<Vec<f32>> {
            let mut w = be.download(s)?;
            w.truncate(n);
            if !f16 {
                return Ok(w);
            }
            Ok(crate::backend::unpack_f16_pairs(&w))
        };
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Ok((values(k)?, values(v)?)),
            _ => Ok((Vec::new(), Vec::new())),
        }
    }

    /// New buffers of `cap` rows holding rows [from, from + keep) of the current ones at row 0.
    fn moved(&self, be: &B, cap: usize, from: usize, keep: usize) -> Result<(B::Storage, B::Storage)> {
        let rw = self.row_words();
        let (mut k, mut v) = (be.zeros(cap * rw)?, be.zeros(cap * rw)?);
        if let (Some(ok), Some(ov), true) = (&self.k, &self.v, keep > 0) {
            be.copy_into(&mut k, 0, ok, from * rw, keep * rw)?;
            be.copy_into(&mut v, 0, ov, from * rw, keep * rw)?;
        }
        Ok((k, v))
    }

    /// Appends TQ new rows: k, v (TQ, KV, D).
    fn append(&mut self, be: &B, k: &B::Storage, v: &B::Storage, tq: usize) -> Result<()> {
        if self.rows + tq > self.cap {
            let cap = (self.rows + tq).max(2 * self.cap).max(64);
            let (nk, nv) = self.moved(be, cap, 0, self.rows)?;
            (self.k, self.v, self.cap) = (Some(nk), Some(nv), cap);
        }
        let (Some(dk), Some(dv)) = (self.k.as_mut(), self.v.as_mut()) else {
            return Err(Error::msg("kv cache: buffers missing after growth"));
        };
        if self.f16 {
            be.pack_f16_into(dk, self.rows * self.row / 2, k, tq * self.row)?;
            be.pack_f16_into(dv, self.rows * self.row / 2, v, tq * self.row)?;
        } else {
            be.copy_into(dk, self.rows * self.row, k, 0, tq * self.row)?;
            be.copy_into(dv, self.rows * self.row, v, 0, tq * self.row)?;
        }
        self.rows += tq;
        Ok(())
    }

    /// Drops rows no future query can see (sliding-window layers), once the cache holds 2 * window
    /// rows. After this call the next query sits at position pos0 + rows and sees positions back to
    /// pos0 + rows - window + 1, so the last window - 1 rows are kept (moved to row 0 of new
    /// buffers of the same capacity: a device copy cannot overlap its source).
    fn trim(&mut self, be: &B) -> Result<()> {
        let Some(w) = self.window else { return Ok(()) };
        if self.rows < 2 * w.max(1) {
            return Ok(());
        }
        let drop = self.rows - w.saturating_sub(1);
        let keep = self.rows - drop;
        let (nk, nv) = self.moved(be, self.cap, drop, keep)?;
        (self.k, self.v) = (Some(nk), Some(nv));
        self.rows = keep;
        self.pos0 += drop;
        Ok(())
    }
}

/// The KV cache of a whole model: one `LayerKv` per layer, and the number of positions fed so far.
/// It lives where the model does (device memory on a GPU backend).
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerKv<B>>,
    /// Tokens fed so far = the position of the next token.
    pub pos: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache shaped for `model`, in f16 where the backend prefers it
    /// (`Backend::kv_cache_f16`: wgpu on SHADER_F16 adapters), else f32.
    pub fn new(model: &Transformer<B>) -> Self {
        Self::with_f16(model, model.norm.backend().kv_cache_f16())
    }

    /// An empty cache in f16 (when `f16` and every layer's KV * D is even) or f32.
    pub fn with_f16(model: &Transformer<B>, f16: bool) -> Self {
        let rows: Vec<usize> = model.layers.iter().map(|l| l.cfg.num_key_value_heads * l.cfg.head_dim).collect();
        let f16 = f16 && rows.iter().all(|r| r.is_multiple_of(2));
        let layers =
            model.layers.iter().zip(rows).map(|(l, row)| LayerKv::new(row, l.cfg.sliding_window, f16)).collect();
        KvCache { layers, pos: 0 }
    }

    /// Bytes of the cached keys and values (f32, or f16: half), summed over layers: at most
    /// 2 · 4 · KV · D · (positions, or 2 · window on sliding layers) per layer. The buffers hold up
    /// to twice that (their capacity doubles as the context grows).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| 2 * l.rows * l.row_words() * std::mem::size_of::<f32>()).sum()
    }

    /// Sizes every layer's buffers for `positions` cached rows at once (a generation that knows
    /// its prompt and `max_new_tokens`), so appends never grow them: the cache then holds exactly
    /// what `plan_inference` counts. Sliding-window layers keep at most 2 * window rows between
    /// calls (a prefill longer than that grows them once).
    pub fn reserve(&mut self, be: &B, positions: usize) -> Result<()> {
        for l in &mut self.layers {
            let want = match l.window {
                Some(w) => positions.min(2 * w.max(1)),
                None => positions,
            };
            if want > l.cap {
                let (k, v) = l.moved(be, want, 0, l.rows)?;
                (l.k, l.v, l.cap) = (Some(k), Some(v), want);
            }
        }
        Ok(())
    }

    /// Forgets everything (keeps the allocations).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.rows = 0;
            l.pos0 = 0;
        }
        self.pos = 0;
    }
}

/// The projection's forward for inference: on a no-grad tape with no dropout seed, LoRA is
/// y = W₀x + b + s·B(Ax) (DoRA: scaled per row) and nothing is recorded.
fn proj_eval<B: Backend>(tape: &mut Tape<B>, p: &Proj<B>, x: &Tensor<B>) -> Result<Tensor<B>> {
    p.forward(tape, x, None)
}

/// One decoder layer on TQ new tokens: x (1, TQ, C) → (1, TQ, C), appending their keys and values
/// to `kv`. `pos` is the absolute position of the first new token. Mirrors `DecoderLayer::forward`
/// step by step; only the attention differs (new queries against the cache).
pub fn layer_forward_cached<B: Backend>(
    layer: &DecoderLayer<B>,
    x: &Tensor<B>, // (1, TQ, C)
    kv: &mut LayerKv<B>,
    pos: usize,
) -> Result<Tensor<B>> {
    let c = &layer.cfg;
    let d = x.dims();
    if d.len() != 3 || d[0] != 1 || d[2] != c.hidden_size {
        return Err(Error::BadShape {
            op: "layer_forward_cached",
            shape: x.shape().clone(),
            msg: format!("expected (1, TQ, {})", c.hidden_size),
        });
    }
    if kv.pos0 + kv.rows() != pos {
        return Err(Error::InvalidArgument {
            op: "layer_forward_cached",
            msg: format!("cache holds positions up to {}, new tokens start at {pos}", kv.pos0 + kv.rows()),
        });
    }
    let tq = d[1];
    let (h, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let be = x.backend().clone();
    let tape = &mut Tape::no_grad();
    let positions: Arc<[u32]> = (pos..pos + tq).map(|p| p as u32).collect();

    let n = ops::rms_norm(tape, x, &layer.attn_norm, c.rms_norm_eps, c.norm_add_one)?;
    let mut q = proj_eval(tape, &layer.q_proj, &n)?.reshape([1, tq, h, hd])?;
    let mut k = proj_eval(tape, &layer.k_proj, &n)?.reshape([1, tq, nkv, hd])?;
    let v = proj_eval(tape, &layer.v_proj, &n)?; // (1, TQ, KV*D)
    if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
        q = ops::rms_norm(tape, &q, qn, c.rms_norm_eps, c.norm_add_one)?;
        k = ops::rms_norm(tape, &k, kn, c.rms_norm_eps, c.norm_add_one)?;
    }
    let q = ops::rope(tape, &q, &positions, &c.rope)?; // (TQ, H, D)
    let k = ops::rope(tape, &k, &positions, &c.rope)?; // (TQ, KV, D)
    kv.append(&be, k.storage(), v.storage(), tq)?;
    let p = DecodeParams {
        tq,
        s: kv.rows(),
        h,
        kv_heads: nkv,
        d: hd,
        scale: c.attn_scale,
        window: c.sliding_window,
        softcap: c.attn_softcap,
    };
    let (Some(kc), Some(vc)) = (&kv.k, &kv.v) else {
        return Err(Error::msg("kv cache: no buffers after an append"));
    };
    let a = be.attention_decode(q.storage(), kc, vc, &p, kv.f16)?; // (TQ, H, D)
    kv.trim(&be)?;
    let a = Tensor::from_storage(&be, a, [1, tq, h * hd].into(), None);
    let mut o = proj_eval(tape, &layer.o_proj, &a)?;
    if let Some(pn) = &layer.post_attn_norm {
        o = ops::rms_norm(tape, &o, pn, c.rms_norm_eps, c.norm_add_one)?;
    }
    let hres = ops::add(tape, x, &o)?;

    let m = ops::rms_norm(tape, &hres, &layer.ffn_norm, c.rms_norm_eps, c.norm_add_one)?;
    let g = proj_eval(tape, &layer.gate_proj, &m)?;
    let u = proj_eval(tape, &layer.up_proj, &m)?;
    let act = ops::glu(tape, &g, &u, c.gelu)?;
    let mut f = proj_eval(tape, &layer.down_proj, &act)?;
    if let Some(pn) = &layer.post_ffn_norm {
        f = ops::rms_norm(tape, &f, pn, c.rms_norm_eps, c.norm_add_one)?;
    }
    ops::add(tape, &hres, &f)
}

/// Feeds TQ >= 1 new tokens through the whole model, extending `cache`, and returns the logits of
/// the LAST new token, (V). The final norm and LM head run on that row only.
pub fn forward_cached<B: Backend>(model: &Transformer<B>, cache: &mut KvCache<B>, ids: &[u32]) -> Result<Vec<f32>> {
    if ids.is_empty() {
        return Err(Error::InvalidArgument { op: "forward_cached", msg: "no tokens to feed".into() });
    }
    if cache.layers.len() != model.layers.len() {
        return Err(Error::InvalidArgument {
            op: "forward_cached",
            msg: format!("cache has {} layers, model {}", cache.layers.len(), model.layers.len()),
        });
    }
    let be = model.norm.backend().clone();
    let c = model.block.hidden_size;
    let tq = ids.len();
    let tape = &mut Tape::no_grad();
    let ids_arc: Arc<[u32]> = ids.into();
    let mut h = ops::embedding(tape, &ids_arc, &model.embed, &be)?; // (TQ, C)
    if let Some(s) = model.embed_scale {
        h = ops::scale(tape, &h, s)?;
    }
    let mut h = h.reshape([1, tq, c])?;
    for (layer, kv) in model.layers.iter().zip(&mut cache.layers) {
        h = layer_forward_cached(layer, &h, kv, cache.pos)?;
    }
    cache.pos += tq;
    let last = h.to_vec()?.split_off((tq - 1) * c); // (C)
    let last = Tensor::from_slice(&be, &last, [1, c])?;
    let last = ops::rms_norm(tape, &last, &model.norm, model.block.rms_norm_eps, model.block.norm_add_one)?;
    let head: &Weight<B> = model.lm_head.as_ref().unwrap_or(&model.embed);
    let mut z = ops::linear(tape, &last, head, None)?.to_vec()?; // (V)
    if let Some(cap) = model.final_softcap {
        z.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
    }
    Ok(z)
}
