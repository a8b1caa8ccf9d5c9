//! dropout: out = x * keep / (1 - p), with the keep mask drawn from a counter-based RNG so no mask
//! is ever stored: forward and backward regenerate it from (seed, offset), and every backend
//! (CPU, WGSL, CUDA) produces the same mask bit for bit (PyTorch's CUDA dropout does the same with
//! Philox, https://pytorch.org/docs/stable/generated/torch.nn.Dropout.html; Srivastava et al. 2014,
//! https://jmlr.org/papers/v15/srivastava14a.html).
//! Spec: this file   Test: tests/ops/dropout.rs
//!
//! Contracts easy to miss:
//! - Element i of a call with (seed, offset) uses counter j = offset + i (a u64). Two dropout calls
//!   that must be independent need different seeds or disjoint counter ranges [offset, offset + n):
//!   the caller advances `offset` by n after each call (as PyTorch advances its Philox offset).
//!   Forward and backward of the same call MUST get the same (seed, offset).
//! - `dropout_backward` ACCUMULATES (dx += mask * dout / (1 - p)); `dropout_forward` overwrites out.
//! - p must be in [0, 1) (asserted). p = 0 is the identity, bit for bit (no hash is evaluated).
//!
//! THE RANDOM BITS, exactly (a GPU port must reproduce this; known answers in tests/ops/dropout.rs):
//!   Philox4x32-10 (Salmon et al. 2011, "Parallel Random Numbers: As Easy as 1, 2, 3",
//!   https://www.thesalmons.org/john/random123/papers/random123sc11.pdf; Random123 `philox4x32`):
//!     M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85
//!     round(ctr, key):  (hi0, lo0) = mulhilo(M0, ctr[0]);  (hi1, lo1) = mulhilo(M1, ctr[2])
//!                       ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
//!     philox(ctr, key): 10 rounds; before rounds 2..10: key[0] += W0, key[1] += W1 (wrapping)
//!     mulhilo(a, b) = high and low 32 bits of the 64-bit product a * b (CUDA `__umulhi`; WGSL has
//!     no u64, so it is built from 16-bit halves there). Everything else is u32 wrapping add / xor.
//!   For element counter j (u64) and seed (u64):
//!     g = j >> 2 (the group of 4 consecutive counters sharing one Philox call), lane = j & 3
//!     ctr = [g_lo, g_hi, 0, 0]   (g_lo = low 32 bits of g, g_hi = high 32 bits)
//!     key = [seed_lo, seed_hi]
//!     bits(seed, j) = philox(ctr, key)[lane]
//!   On a 32-bit machine j = offset + i is (off_lo + i, off_hi + carry) and
//!   g = ((j_lo >> 2) | (j_hi << 30), j_hi >> 2).
//!   uniform(seed, j) = (bits >> 8) * 2^-24 in [0, 1): exact in f32 (24-bit integer times a power of 2).
//!   keep(seed, j, p) = uniform(seed, j) >= p, compared in f32 (exact, so identical everywhere).
//!   scale = 1 / (1 - p), computed ONCE in f32 on the host (WGSL division is not correctly rounded),
//!   out = x * scale when kept, else 0.

use super::real::Real;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32-10: four random u32 from a 128-bit counter and a 64-bit key (Random123 `philox4x32`).
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The four random words of counter group g = j >> 2 (lanes j & 3 = 0..3).
#[inline]
fn group_bits(seed: u64, g: u64) -> [u32; 4] {
    philox4x32_10([g as u32, (g >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32])
}

/// The random word of element counter j under `seed` (see the header).
pub fn dropout_bits(seed: u64, j: u64) -> u32 {
    group_bits(seed, j >> 2)[(j & 3) as usize]
}

/// bits -> uniform in [0, 1) with 24 bits, exact in f32.
#[inline(always)]
fn bits_to_uniform(bits: u32) -> f32 {
    (bits >> 8) as f32 * (1.0 / 16_777_216.0) // 2^-24
}

/// Uniform in [0, 1) of element counter j: (bits >> 8) * 2^-24.
pub fn dropout_uniform(seed: u64, j: u64) -> f32 {
    bits_to_uniform(dropout_bits(seed, j))
}

/// Whether element counter j = offset + i is kept: uniform(seed, j) >= p.
pub fn dropout_keep(seed: u64, j: u64, p: f32) -> bool {
    dropout_uniform(seed, j) >= p
}

/// scale = 1 / (1 - p) in f32: the factor applied to kept elements. Compute it this way (f32 on the
/// host) and pass it to GPU kernels, so every backend multiplies by the same number.
pub fn dropout_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

#[track_caller]
fn check_p(p: f32) {
    assert!((0.0..1.0).contains(&p), "dropout: p = {p} must be in [0, 1)");
}

/// Calls f(i, keep_i) for i in 0..n, one Philox evaluation per group of 4 counters (the groups are
/// aligned on j, not on i, so any offset works; the result equals `dropout_keep(seed, offset + i, p)`).
fn for_each_keep(seed: u64, offset: u64, n: usize, p: f32, mut f: impl FnMut(usize, bool)) {
    let mut i = 0;
    while i < n {
        let j = offset.wrapping_add(i as u64);
        let bits = group_bits(seed, j >> 2);
        for &b in &bits[(j & 3) as usize..] {
            if i == n {
                break;
            }
            f(i, bits_to_uniform(b) >= p);
            i += 1;
        }
    }
}

/// out[i] = x[i] * scale if keep(seed, offset + i, p) else 0, scale = 1 / (1 - p) (f32).
pub fn dropout_forward<T: Real>(
    out: &mut [T], // (n), overwritten
    x: &[T],       // (n)
    p: f32,
    seed: u64,
    offset: u64,
) {
    check_p(p);
    assert_eq!(out.len(), x.len(), "dropout: out and x differ in length");
    if p == 0.0 {
        out.copy_from_slice(x); // identity, bit for bit
        return;
    }
    let scale = T::from_f32(dropout_scale(p));
    for_each_keep(seed, offset, x.len(), p, |i, keep| {
        out[i] = if keep { x[i] * scale } else { T::ZERO };
    });
}

/// dx[i] += dout[i] * scale if keep(seed, offset + i, p) (the same mask as the forward call).
pub fn dropout_backward<T: Real>(
    dx: &mut [T], // (n), accumulated (+=)
    dout: &[T],   // (n)
    p: f32,
    seed: u64,
    offset: u64,
) {
    check_p(p);
    assert_eq!(dx.len(), dout.len(), "dropout: dx and dout differ in length");
    if p == 0.0 {
        dx.iter_mut().zip(dout).for_each(|(d, &g)| *d += g);
        return;
    }
    let scale = T::from_f32(dropout_scale(p));
    for_each_keep(seed, offset, dout.len(), p, |i, keep| {
        if keep {
            dx[i] += dout[i] * scale;
        }
    });
}
