//! Text generation on token ids: a KV-cached forward of the `Transformer` (`cache`), sampling
//! (`sampler`), and the loop that ties them (`generate`). The model runs with its frozen weights
//! and its LoRA adapters as they are (dropout off), so a fine-tuned model can be tried right after
//! training without merging.
//!
//! ```text
//! let mut s = Session::new(&model);
//! let mut z = s.prefill(&prompt_ids)?;          // logits of the last prompt token, (V)
//! loop { let id = sampler.sample(&z, &seen); ...; z = s.step(id)?; }
//! ```
//! Test: tests/generate.rs (cached logits == full recompute, fixture greedy tokens, sampler).

pub mod cache;
pub mod sampler;

pub use cache::{forward_cached, KvCache, LayerKv};
pub use sampler::{apply_repetition_penalty, argmax, candidates, GenerateConfig, Sampler};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Transformer;

/// A model and its KV cache: feed tokens, get the next token's logits.
pub struct Session<'m, B: Backend> {
    pub model: &'m Transformer<B>,
    pub cache: KvCache<B>,
}

impl<'m, B: Backend> Session<'m, B> {
    pub fn new(model: &'m Transformer<B>) -> Self {
        Session { model, cache: KvCache::new(model) }
    }

    /// Feeds the prompt (or any further chunk of tokens) in one pass; returns the logits (V) of the
    /// token after it.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        forward_cached(self.model, &mut self.cache, ids)
    }

    /// Feeds one token; returns the logits (V) of the token after it.
    pub fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        forward_cached(self.model, &mut self.cache, &[id])
    }

    /// Tokens fed so far.
    pub fn pos(&self) -> usize {
        self.cache.pos
    }

    /// Bytes held by the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Forgets the context (a new conversation).
    pub fn reset(&mut self) {
        self.cache.clear();
    }
}

/// Generates up to `cfg.max_new_tokens` tokens after `prompt_ids` and returns them. Each new token
/// is handed to `on_token` as soon as it is chosen (for streaming); returning false stops
/// generation after that token. A token in `cfg.stop_ids` ends generation: it is included in the
/// returned ids (as HF does with EOS) but NOT handed to `on_token`.
pub fn generate<B: Backend>(
    model: &Transformer<B>,
    prompt_ids: &[u32],
    cfg: &GenerateConfig,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    cfg.validate()?;
    if prompt_ids.is_empty() {
        return Err(Error::InvalidArgument { op: "generate", msg: "empty prompt".into() });
    }
    let mut out = Vec::new();
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut session = Session::new(model);
    // The whole context is known: size the KV cache once (no growth copies, no slack).
    let context = prompt_ids.len() + cfg.max_new_tokens - 1;
    session.cache.reserve(model.norm.backend(), context)?;
    let mut sampler = Sampler::new(cfg);
    let mut seen = prompt_ids.to_vec();
    let mut logits = session.prefill(prompt_ids)?;
    loop {
        let id = sampler.sample(&logits, &seen);
        out.push(id);
        seen.push(id);
        if cfg.stop_ids.contains(&id) || !on_token(id) || out.len() == cfg.max_new_tokens {
            return Ok(out);
        }
        logits = session.step(id)?;
    }
}
