//! Next-token sampling from one position's logits, with Hugging Face `generate` semantics:
//! repetition penalty (a logits processor) first, then the warpers in HF's order
//! temperature → top-k → top-p → min-p, then one draw from the renormalised distribution.
//! Spec: this file   Test: tests/generate.rs (sampler_*)
//!
//! ```text
//! repetition penalty θ (Keskar et al. 2019, https://arxiv.org/abs/1909.05858, HF
//!   RepetitionPenaltyLogitsProcessor): for every token id already in the sequence (prompt +
//!   generated, each id once), z = z / θ if z > 0, z = z · θ otherwise
//! temperature T:  z = z / T;   T = 0 is greedy: argmax of the penalised logits
//! top-k k:        keep the k largest (ties broken by the lower token id)
//! top-p p:        (Holtzman et al. 2019, https://arxiv.org/abs/1904.09751) sorted by probability,
//!                 keep the smallest prefix whose mass is >= p (at least one token)
//! min-p m:        keep tokens with prob >= m · max prob (HF MinPLogitsWarper)
//! draw:           u ~ U[0, 1) from the seeded `Rng`; the first token whose cumulative
//!                 renormalised probability exceeds u
//! ```
//!
//! Contracts easy to miss: greedy (T = 0) ignores top-k/top-p/min-p and the rng, exactly as HF's
//! `do_sample=False`; probabilities are computed in f64; the same seed and logits give the same
//! tokens on every run and platform (no hashing, a stable sort order).

use crate::error::{Error, Result};
use crate::rng::Rng;

/// How to pick tokens; the fields HF `GenerationConfig` has, under the same names.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateConfig {
    /// Tokens to generate at most (the stop token, when one comes, is counted and returned).
    pub max_new_tokens: usize, // 128
    /// Softmax temperature. 0 = greedy (argmax, deterministic); 1 = the model's distribution;
    /// < 1 sharper, > 1 flatter. Usual chat value 0.7.
    pub temperature: f32, // 0.0
    /// Keep only the k most likely tokens before sampling. 0 = off. Usual 40-50.
    pub top_k: usize, // 0
    /// Nucleus sampling: keep the most likely tokens up to cumulative probability p. 1 = off.
    pub top_p: f32, // 1.0
    /// Drop tokens less likely than min_p times the most likely one. 0 = off. Usual 0.05-0.1.
    pub min_p: f32, // 0.0
    /// > 1 discourages tokens already in the prompt or output (HF semantics). 1 = off. Usual 1.1.
    pub repetition_penalty: f32, // 1.0
    /// Seed of the sampling rng: the same seed, model and prompt give the same tokens.
    pub seed: u64, // 0
    /// Generation stops after any of these ids (EOS and the chat template's end-of-turn ids).
    pub stop_ids: Vec<u32>, // []
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop_ids: Vec::new(),
        }
    }
}

impl GenerateConfig {
    /// Checks every field's range, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument { op: "generate", msg });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature {} must be finite and >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!("repetition_penalty {} must be finite and > 0", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Index of the largest logit; the lowest index among equal maxima (as `torch.argmax`). NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &z) in logits.iter().enumerate() {
        if z > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// HF repetition penalty, in place: for each distinct id in `seen`, z / penalty if z > 0, else
/// z · penalty. Ids outside the vocabulary are ignored.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &id in seen {
        let i = id as usize;
        if i < logits.len() && !done[i] {
            done[i] = true;
            let z = &mut logits[i];
            *z = if *z > 0.0 { *z / penalty } else { *z * penalty };
        }
    }
}

/// Tokens sorted first when top-p or min-p will cut the distribution (grown x4 until enough).
const PREFIX_START: usize = 256;

/// The distribution a sample is drawn from after temperature, top-k, top-p and min-p: (token id,
/// renormalised probability) pairs, most likely first (ties by lower id). `temperature` > 0.
pub fn candidates(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> Vec<(u32, f64)> {
    let t = temperature as f64;
    let mut c: Vec<(u32, f64)> =
        logits.iter().enumerate().filter(|(_, z)| !z.is_nan()).map(|(i, &z)| (i as u32, z as f64 / t)).collect();
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if top_k > 0 && top_k < c.len() {
        c.select_nth_unstable_by(top_k - 1, order); // the k best in front, unordered
        c.truncate(top_k);
    }
    // Softmax over what is left (max-subtracted, so exp never overflows), in any order.
    let m = c.iter().fold(f64::NEG_INFINITY, |a, x| a.max(x.1));
    c.iter_mut().for_each(|x| x.1 = (x.1 - m).exp());
    let sum: f64 = c.iter().map(|x| x.1).sum();
    c.iter_mut().for_each(|x| x.1 /= sum);
    // Sort only as much as top-p / min-p can keep: the best `n` in front (select, then sort them),
    // growing n until the prefix holds mass >= p or reaches a token below the min-p floor. The
    // prefix is the full sort's prefix (the order is total), so the result is the same; it saves
    // sorting a 262k vocabulary for a nucleus of a few hundred tokens.
    let p_max = if m == f64::NEG_INFINITY { 0.0 } else { 1.0 / sum }; // exp(0) / sum
    let enough = |prefix: &[(u32, f64)]| {
        (top_p < 1.0 && prefix.iter().map(|x| x.1).sum::<f64>() >= top_p as f64)
            || (min_p > 0.0 && prefix.last().is_some_and(|x| x.1 < min_p as f64 * p_max))
    };
    let mut n = if top_p < 1.0 || min_p > 0.0 { PREFIX_START.min(c.len()) } else { c.len() };
    loop {
        if n < c.len() {
            c.select_nth_unstable_by(n - 1, order);
        }
        c[..n].sort_unstable_by(order);
        if n == c.len() || enough(&c[..n]) {
            c.truncate(n);
            break;
        }
        n = (4 * n).min(c.len());
    }
    if top_p < 1.0 {
        // Keep token n while the mass before it is < p: the smallest prefix with mass >= p.
        let mut mass = 0.0;
        let keep = c
            .iter()
            .take_while(|x| {
                let before = mass;
                mass += x.1;
                before < top_p as f64
            })
            .count();
        c.truncate(keep.max(1));
    }
    if min_p > 0.0 {
        let floor = min_p as f64 * c.first().map_or(0.0, |x| x.1);
        let keep = c.iter().take_while(|x| x.1 >= floor).count();
        c.truncate(keep.max(1));
    }
    let sum: f64 = c.iter().map(|x| x.1).sum();
    c.iter_mut().for_each(|x| x.1 /= sum);
    c
}

/// Picks tokens from logits under a `GenerateConfig`, with its own seeded rng.
pub struct Sampler {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    rng: Rng,
}

impl Sampler {
    pub fn new(cfg: &GenerateConfig) -> Self {
        Sampler {
            temperature: cfg.temperature,
            top_k: cfg.top_k,
            top_p: cfg.top_p,
            min_p: cfg.min_p,
            repetition_penalty: cfg.repetition_penalty,
            rng: Rng::new(cfg.seed),
        }
    }

    /// The next token for `logits` (V), given the sequence so far `seen` (prompt + generated, for
    /// the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let mut z = logits.to_vec();
        apply_repetition_penalty(&mut z, seen, self.repetition_penalty);
        if self.temperature == 0.0 {
            return argmax(&z);
        }
        let c = candidates(&z, self.temperature, self.top_k, self.top_p, self.min_p);
        let u = self.rng.next_f64();
        let mut cum = 0.0;
        for &(id, p) in &c {
            cum += p;
            if u < cum {
                return id;
            }
        }
        c.last().map_or(0, |x| x.0) // u within rounding of 1: the last candidate
    }
}
