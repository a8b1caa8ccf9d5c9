//! rope: rotary position embedding of queries/keys, with per-token positions and the HF scalings.
//! Spec: this file   Test: tests/ops/rope.rs
//!
//! Legend: B batch, T tokens, NH heads, D head dim, rot = rotary_dim (<= D, even), h = rot / 2.
//! x and out are (B, T, NH, D); positions are (B, T) u32, one per token, so packed sequences can
//! restart their positions.
//!
//! For each frequency index i < h, with a = pos * inv_freq[i] (in f64) and m the attention scaling
//! (1 except for YaRN), a pair (p, q) of dims is rotated:
//!
//!   out[p] = m * (x[p] cos a - x[q] sin a)
//!   out[q] = m * (x[q] cos a + x[p] sin a)
//!
//!   HalfSplit   (HF `rotate_half`):     (p, q) = (i, i + h)
//!   Interleaved (GGUF llama, "normal"): (p, q) = (2i, 2i + 1)
//!
//! Dims rot..D pass through unchanged (partial rotary, HF `partial_rotary_factor`).
//! inv_freq[i] = 1 / theta^(2i / rot), then rescaled by `RopeScaling` exactly as transformers'
//! `modeling_rope_utils.py` does (see `rope_inv_freq`).
//!
//! Reference: Su et al. 2021, "RoFormer", https://arxiv.org/abs/2104.09864 ; YaRN: Peng et al. 2023,
//! https://arxiv.org/abs/2309.00071 ; transformers `src/transformers/modeling_rope_utils.py`.
//!
//! Contracts easy to miss:
//! - forward WRITES `out` (tail dims copied); backward ACCUMULATES (+=) into `dx`.
//! - The backward is the transpose rotation (angle -a), times m; the tail's gradient passes through.
//! - Angles are computed in f64 here; transformers and llama.cpp compute pos * inv_freq in f32,
//!   which at pos ~ 8k differs from this by up to ~1e-3 rad.

use super::real::Real;

/// Which dims form a rotated pair (see the file header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// HF `rotate_half`: pairs (i, i + rot/2).
    HalfSplit,
    /// Pairs (2i, 2i+1): the GGUF llama layout (llama.cpp permutes Q/K rows into it on conversion).
    Interleaved,
}

/// Context-extension scalings of the frequencies, named after HF `rope_scaling.rope_type`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// "default": inv_freq[i] = 1 / theta^(2i / rot).
    None,
    /// "linear" (position interpolation): inv_freq / factor, the same as positions / factor.
    Linear { factor: f32 },
    /// "llama3" (Llama 3.1): long wavelengths divided by `factor`, short ones unchanged, a smooth
    /// ramp between. Llama 3.1: factor 8, low 1, high 4, original 8192.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position: usize },
    /// "yarn": per-frequency blend of interpolation (/factor) and extrapolation, plus an attention
    /// scaling of cos/sin (default 0.1 ln(factor) + 1). HF defaults: beta_fast 32, beta_slow 1.
    /// `factor` is used as given (for DeepSeek-style configs the caller passes
    /// max_position_embeddings / original_max_position_embeddings).
    Yarn { factor: f32, original_max_position: usize, beta_fast: f32, beta_slow: f32, attention_factor: Option<f32> },
}

impl RopeScaling {
    /// YaRN with transformers' defaults (beta_fast 32, beta_slow 1, attention_factor from factor).
    pub fn yarn(factor: f32, original_max_position: usize) -> Self {
        RopeScaling::Yarn { factor, original_max_position, beta_fast: 32.0, beta_slow: 1.0, attention_factor: None }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    /// D, the per-head dimension.
    pub head_dim: usize,
    /// Leading dims of each head that are rotated (even, <= head_dim); the rest pass through.
    pub rotary_dim: usize,
    /// Base of the frequencies (HF `rope_theta`): 10000 for Llama 2, 500000 for Llama 3.
    pub theta: f32,
    pub layout: RopeLayout,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Full rotary, HF half-split layout, no scaling.
    pub fn new(head_dim: usize, theta: f32) -> Self {
        RopeConfig { head_dim, rotary_dim: head_dim, theta, layout: RopeLayout::HalfSplit, scaling: RopeScaling::None }
    }

    #[track_caller]
    fn check(&self) {
        assert!(
            self.rotary_dim.is_multiple_of(2) && self.rotary_dim <= self.head_dim,
            "rope: rotary_dim {} must be even and <= head_dim {}",
            self.rotary_dim,
            self.head_dim
        );
    }

    /// The dims (p, q) rotated together by frequency i.
    #[inline]
    fn pair(&self, i: usize) -> (usize, usize) {
        match self.layout {
            RopeLayout::HalfSplit => (i, i + self.rotary_dim / 2),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        }
    }
}

/// The inverse frequencies (rot/2 of them) and the attention scaling multiplier applied to cos and
/// sin (1 unless YaRN), following transformers' `modeling_rope_utils.py`, in f64:
///
/// - default: inv_freq[i] = 1 / theta^(2i / rot)    (`_compute_default_rope_parameters`)
/// - linear:  inv_freq[i] / factor                  (`_compute_linear_scaling_rope_parameters`)
/// - llama3:  wavelen = 2 pi / inv_freq; wavelen > orig / low_ff: inv_freq / factor;
///   wavelen < orig / high_ff: unchanged; between: (1 - s) inv_freq / factor + s inv_freq with
///   s = (orig / wavelen - low_ff) / (high_ff - low_ff)   (`_compute_llama3_parameters`)
/// - yarn:    dim(r) = rot ln(orig / (2 pi r)) / (2 ln theta); low = max(floor(dim(beta_fast)), 0),
///   high = min(ceil(dim(beta_slow)), rot - 1) (+0.001 if equal); ramp[i] = clamp((i - low) / (high - low), 0, 1);
///   inv_freq[i] = ramp / (factor theta^(2i/rot)) + (1 - ramp) / theta^(2i/rot);
///   scaling = attention_factor or (factor <= 1 ? 1 : 0.1 ln(factor) + 1)   (`_compute_yarn_parameters`)
pub fn rope_inv_freq(cfg: &RopeConfig) -> (Vec<f64>, f64) {
    cfg.check();
    let rot = cfg.rotary_dim;
    let base = cfg.theta as f64;
    let default: Vec<f64> = (0..rot / 2).map(|i| 1.0 / base.powf((2 * i) as f64 / rot as f64)).collect();
    match cfg.scaling {
        RopeScaling::None => (default, 1.0),
        RopeScaling::Linear { factor } => (default.iter().map(|f| f / factor as f64).collect(), 1.0),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
            let (factor, low_ff, high_ff) = (factor as f64, low_freq_factor as f64, high_freq_factor as f64);
            let old_ctx = original_max_position as f64;
            let low_freq_wavelen = old_ctx / low_ff;
            let high_freq_wavelen = old_ctx / high_ff;
            let inv = default
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f // high frequency: unchanged
                    } else if wavelen > low_freq_wavelen {
                        f / factor // low frequency: fully interpolated
                    } else {
                        let s = (old_ctx / wavelen - low_ff) / (high_ff - low_ff);
                        (1.0 - s) * f / factor + s * f
                    }
                })
                .collect();
            (inv, 1.0)
        }
        RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor } => {
            let factor = factor as f64;
            let orig = original_max_position as f64;
            let scaling = match attention_factor {
                Some(a) => a as f64,
                None if factor <= 1.0 => 1.0,
                None => 0.1 * factor.ln() + 1.0,
            };
            // The (fractional) dim index whose frequency makes `num_rot` full turns over `orig` positions.
            let correction_dim =
                |num_rot: f64| rot as f64 * (orig / (num_rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
            let low = correction_dim(beta_fast as f64).floor().max(0.0);
            let mut high = correction_dim(beta_slow as f64).ceil().min((rot - 1) as f64);
            if low == high {
                high += 0.001; // as transformers: avoids 0/0 in the ramp
            }
            let inv = default
                .iter()
                .enumerate()
                .map(|(i, &f)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    // ramp = 0: extrapolation (high freq, unchanged); ramp = 1: interpolation (/factor)
                    (f / factor) * ramp + f * (1.0 - ramp)
                })
                .collect();
            (inv, scaling)
        }
    }
}

/// llama.cpp's per-frequency RoPE divisors (`rope_freqs.weight` in Llama 3.1+ GGUFs): the ratio
/// default inv_freq / scaled inv_freq for each of the rot/2 frequencies, as `convert_hf_to_gguf.py`
/// computes them for `rope_type: llama3` (1 for high frequencies, `factor` for low ones, the smooth
/// ramp between). llama.cpp divides each angle by its factor. `None` for the other scalings, whose
/// GGUF form is metadata only.
pub fn llama3_rope_factors(cfg: &RopeConfig) -> Option<Vec<f32>> {
    if !matches!(cfg.scaling, RopeScaling::Llama3 { .. }) {
        return None;
    }
    let plain = RopeConfig { scaling: RopeScaling::None, ..*cfg };
    let (default, _) = rope_inv_freq(&plain);
    let (scaled, _) = rope_inv_freq(cfg);
    Some(default.iter().zip(&scaled).map(|(d, s)| (d / s) as f32).collect())
}

/// The inverse of [`llama3_rope_factors`]: the `Llama3` scaling whose factors equal `factors`
/// (relative difference <= 1e-4; the file's values were computed in f32). `cfg.scaling` is ignored.
/// All-ones factors give `RopeScaling::None`. The formula depends on `original_max_position`
/// only through orig / low_freq_factor and orig / high_freq_factor, so the search fixes the
/// parameters Meta uses (low 1, high 4, original 8192) first and then tries other common values;
/// any match is an exactly equivalent model. `None` when no Llama 3 scaling reproduces the factors.
pub fn llama3_from_factors(cfg: &RopeConfig, factors: &[f32]) -> Option<RopeScaling> {
    if factors.len() != cfg.rotary_dim / 2 || factors.iter().any(|f| !f.is_finite() || *f <= 0.0) {
        return None;
    }
    if factors.iter().all(|&f| (f - 1.0).abs() <= 1e-6) {
        return Some(RopeScaling::None);
    }
    let factor = factors.iter().fold(0.0f32, |m, &f| m.max(f));
    let matches = |s: RopeScaling| {
        let c = RopeConfig { scaling: s, ..*cfg };
        let got = llama3_rope_factors(&c).expect("llama3");
        got.iter().zip(factors).all(|(a, b)| ((a - b) / b).abs() <= 1e-4)
    };
    let mut origs: Vec<usize> = vec![8192];
    origs.extend((6..=21).map(|k| 1usize << k).filter(|&o| o != 8192));
    for &orig in &origs {
        for (low, high) in [(1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (1.0, 16.0), (1.0, 32.0), (0.5, 4.0), (2.0, 8.0)] {
            let s = RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position: orig,
            };
            if matches(s) {
                return Some(s);
            }
        }
    }
    None
}

/// Rotates every head of one token: out_tok (+)= R(cos, sin) x_tok, or R^T when `transpose`.
/// `cos` / `sin` (h) already include the attention scaling. Sums are done in f64.
#[allow(clippy::too_many_arguments)]
fn rotate_token<T: Real>(
    out: &mut [T], // (NH, D)
    x: &[T],       // (NH, D)
    cos: &[f64],   // (h)
    sin: &[f64],   // (h)
    cfg: &RopeConfig,
    nh: usize,
    transpose: bool,
    accumulate: bool,
) {
    let d = cfg.head_dim;
    let put = |o: &mut T, v: f64| *o = if accumulate { T::from_f64(o.to_f64() + v) } else { T::from_f64(v) };
    for hd in 0..nh {
        let (o, xh) = (&mut out[hd * d..(hd + 1) * d], &x[hd * d..(hd + 1) * d]);
        for i in 0..cfg.rotary_dim / 2 {
            let (p, q) = cfg.pair(i);
            let (xp, xq) = (xh[p].to_f64(), xh[q].to_f64());
            let (c, s) = (cos[i], if transpose { -sin[i] } else { sin[i] });
            put(&mut o[p], xp * c - xq * s);
            put(&mut o[q], xq * c + xp * s);
        }
        for j in cfg.rotary_dim..d {
            put(&mut o[j], xh[j].to_f64());
        }
    }
}

/// Fills cos/sin (h) for one position: m * cos(pos * inv_freq[i]), m * sin(pos * inv_freq[i]).
fn angles(cos: &mut [f64], sin: &mut [f64], pos: u32, inv_freq: &[f64], m: f64) {
    for (i, &f) in inv_freq.iter().enumerate() {
        let a = pos as f64 * f;
        cos[i] = m * a.cos();
        sin[i] = m * a.sin();
    }
}

/// Shared driver of the direct and table paths: `cs(pos, cos, sin)` fills one position's cos/sin.
#[allow(clippy::too_many_arguments)]
fn rope_apply<T: Real>(
    out: &mut [T],     // (B, T, NH, D)
    x: &[T],           // (B, T, NH, D)
    positions: &[u32], // (B, T)
    cfg: &RopeConfig,
    b: usize,
    t: usize,
    nh: usize,
    transpose: bool,
    accumulate: bool,
    mut cs: impl FnMut(u32, &mut [f64], &mut [f64]),
) {
    cfg.check();
    let tok = nh * cfg.head_dim;
    assert!(positions.len() == b * t && x.len() == b * t * tok && out.len() == b * t * tok);
    let h = cfg.rotary_dim / 2;
    let (mut cos, mut sin) = (vec![0.0f64; h], vec![0.0f64; h]);
    for (n, &pos) in positions.iter().enumerate() {
        cs(pos, &mut cos, &mut sin);
        let range = n * tok..(n + 1) * tok;
        rotate_token(&mut out[range.clone()], &x[range], &cos, &sin, cfg, nh, transpose, accumulate);
    }
}

/// out = RoPE(x) at each token's position (see the file header).
pub fn rope_forward<T: Real>(
    out: &mut [T],     // (B, T, NH, D)
    x: &[T],           // (B, T, NH, D)
    positions: &[u32], // (B, T)
    cfg: &RopeConfig,
    b: usize,
    t: usize,
    nh: usize,
) {
    let (inv_freq, m) = rope_inv_freq(cfg);
    rope_apply(out, x, positions, cfg, b, t, nh, false, false, |p, c, s| angles(c, s, p, &inv_freq, m));
}

/// dx += m * R(a)^T dout = m * R(-a) dout, the transpose of the forward; tail dims pass dout through.
pub fn rope_backward<T: Real>(
    dx: &mut [T],      // (B, T, NH, D)
    dout: &[T],        // (B, T, NH, D)
    positions: &[u32], // (B, T)
    cfg: &RopeConfig,
    b: usize,
    t: usize,
    nh: usize,
) {
    let (inv_freq, m) = rope_inv_freq(cfg);
    rope_apply(dx, dout, positions, cfg, b, t, nh, true, true, |p, c, s| angles(c, s, p, &inv_freq, m));
}

/// Precomputed cos/sin for positions 0..max_pos (the same f64 values the direct path computes, so
/// results are bit-identical to `rope_forward` / `rope_backward`). 2 * max_pos * rot/2 f64s.
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub cfg: RopeConfig,
    pub max_pos: usize,
    cos: Vec<f64>, // (max_pos, h)
    sin: Vec<f64>, // (max_pos, h)
}

impl RopeTable {
    pub fn new(cfg: &RopeConfig, max_pos: usize) -> Self {
        let (inv_freq, m) = rope_inv_freq(cfg);
        let h = cfg.rotary_dim / 2;
        let (mut cos, mut sin) = (vec![0.0; max_pos * h], vec![0.0; max_pos * h]);
        for p in 0..max_pos {
            let r = p * h..(p + 1) * h;
            angles(&mut cos[r.clone()], &mut sin[r], p as u32, &inv_freq, m);
        }
        RopeTable { cfg: *cfg, max_pos, cos, sin }
    }

    fn lookup(&self, pos: u32, c: &mut [f64], s: &mut [f64]) {
        let p = pos as usize;
        assert!(p < self.max_pos, "rope: position {p} beyond table size {}", self.max_pos);
        let h = c.len();
        c.copy_from_slice(&self.cos[p * h..(p + 1) * h]);
        s.copy_from_slice(&self.sin[p * h..(p + 1) * h]);
    }

    /// Same contract as `rope_forward`; every position must be < max_pos.
    pub fn forward<T: Real>(
        &self,
        out: &mut [T],     // (B, T, NH, D)
        x: &[T],           // (B, T, NH, D)
        positions: &[u32], // (B, T)
        b: usize,
        t: usize,
        nh: usize,
    ) {
        rope_apply(out, x, positions, &self.cfg, b, t, nh, false, false, |p, c, s| self.lookup(p, c, s));
    }

    /// Same contract as `rope_backward` (accumulates into dx); every position must be < max_pos.
    pub fn backward<T: Real>(
        &self,
        dx: &mut [T],      // (B, T, NH, D)
        dout: &[T],        // (B, T, NH, D)
        positions: &[u32], // (B, T)
        b: usize,
        t: usize,
        nh: usize,
    ) {
        rope_apply(dx, dout, positions, &self.cfg, b, t, nh, true, true, |p, c, s| self.lookup(p, c, s));
    }
}
