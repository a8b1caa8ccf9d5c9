// dropout: the Philox4x32-10 hash against the published Random123 known answers, the element ->
// counter mapping against fixed (seed, j) -> u32 vectors (a GPU port checks the same numbers),
// reproducibility, keep-rate statistics, p = 0 identity, and backward vs forward (exact and FD).
// Spec: src/backend/cpu/dropout.rs

use crate::common::*;
use loraforge::backend::cpu::dropout::{
    dropout_backward, dropout_bits, dropout_forward, dropout_keep, dropout_scale, dropout_uniform, philox4x32_10,
};
use loraforge::rng::Rng;

/// Random123 `kat_vectors` (https://github.com/DEShawResearch/random123, tests/kat_vectors), the
/// three "philox4x32 10" lines: counter (4 words), key (2 words) -> output (4 words).
#[test]
fn dropout_philox_known_answers() {
    let kat: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
        ([u32::MAX; 4], [u32::MAX; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (ctr, key, want) in kat {
        assert_eq!(philox4x32_10(ctr, key), want, "philox4x32_10({ctr:08x?}, {key:08x?})");
    }
}

/// (seed, j) -> bits(seed, j), produced by an independent Python implementation of the mapping in
/// the dropout.rs header (Philox4x32-10 written from the paper, checked against the Random123 KAT
/// above). A WGSL/CUDA port must return these exact words. The cases cover: the 4 lanes of group 0
/// and the first lane of group 1, a counter above 2^32 (g_hi != 0 and the lo/hi split), and the
/// all-ones seed (both key words).
const BITS_KAT: [(u64, u64, u32); 10] = [
    (0x0, 0x0, 0x6627e8d5),                               // uniform 0.399046421
    (0x0, 0x1, 0xe169c58d),                               // uniform 0.880520165
    (0x0, 0x2, 0xbc57ac4c),                               // uniform 0.735712767
    (0x0, 0x3, 0x9b00dbd8),                               // uniform 0.605481803
    (0x0, 0x4, 0xf8e4cca4),                               // uniform 0.972241163
    (0x2a, 0x0, 0x9ceaf053),                              // uniform 0.612959862
    (0x2a, 0x7, 0x744e06fb),                              // uniform 0.454315543
    (0x2a, 0xf4243, 0x9973827c),                          // uniform 0.599418759
    (0x0123456789abcdef, 0x100000005, 0xd8a0df28),        // uniform 0.846204698
    (0xffffffffffffffff, 0xfffffffffffffffe, 0xff3b8f4b), // uniform 0.997002542
];

#[test]
fn dropout_bits_known_answers() {
    for (seed, j, want) in BITS_KAT {
        assert_eq!(dropout_bits(seed, j), want, "bits(seed={seed:#x}, j={j:#x})");
        let u = dropout_uniform(seed, j);
        assert_eq!(u, (want >> 8) as f32 / 16_777_216.0, "uniform(seed={seed:#x}, j={j:#x})");
        // keep is exactly "u >= p": at p = u it is kept, one f32 step above it is not.
        assert!(dropout_keep(seed, j, u));
        assert!(!dropout_keep(seed, j, u + 1.0 / 16_777_216.0));
    }
}

fn mask(p: f32, seed: u64, offset: u64, n: usize) -> Vec<bool> {
    let x = vec![1.0f32; n];
    let mut out = vec![f32::NAN; n];
    dropout_forward(&mut out, &x, p, seed, offset);
    out.iter().map(|&o| o != 0.0).collect()
}

#[test]
fn dropout_reproducible_and_seed_dependent() {
    let n = 10_007; // prime: the last group of 4 is partial
    let a = mask(0.5, 1234, 0, n);
    assert_eq!(a, mask(0.5, 1234, 0, n), "same seed, same offset, different mask");
    // Two independent masks at p = 0.5 agree on ~half the elements; identical would be 1 in 2^n.
    let differ = |b: &[bool]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    assert!(differ(&mask(0.5, 1235, 0, n)) > n / 4, "seed 1234 and 1235 give near-identical masks");
    assert!(differ(&mask(0.5, 1234 + (1 << 32), 0, n)) > n / 4, "the high seed word is ignored");
    assert!(differ(&mask(0.5, 1234, n as u64, n)) > n / 4, "offset is ignored");
}

/// Any offset (aligned to the groups of 4 or not, across the 2^32 carry, wrapping at 2^64) gives
/// element i the mask of counter offset + i: the grouped loop equals the per-element definition,
/// and a call that starts k elements earlier sees the same mask shifted by k.
#[test]
fn dropout_offset_is_a_counter() {
    let p = 0.3;
    let n = 23;
    for offset in [0u64, 1, 2, 3, 5, (1 << 32) - 3, u64::MAX - 10] {
        let m = mask(p, 99, offset, n);
        for (i, &kept) in m.iter().enumerate() {
            assert_eq!(kept, dropout_keep(99, offset.wrapping_add(i as u64), p), "offset {offset} element {i}");
        }
        for k in [1u64, 2, 3, 4, 7] {
            let earlier = mask(p, 99, offset.wrapping_sub(k), n + k as usize);
            assert_eq!(&earlier[k as usize..], &m[..], "offset {offset} shifted by {k}");
        }
    }
}

/// Keep rate on 1e5 elements: the kept count is Binomial(n, 1 - p) under a good hash; allow
/// 6 sigma = 6 sqrt(n p (1 - p)) (a false failure has probability ~2e-9). For p = 0.5 that is
/// +-949 (0.95%), for p = 0.1 +-569. Kept values are exactly x * scale, dropped ones exactly 0.
#[test]
fn dropout_keep_rate_within_binomial_bound() {
    let n = 100_000;
    let mut rng = Rng::new(5);
    let x = rand_f32(&mut rng, n, 0.5, 2.0); // never 0, so out == 0 means dropped
    for (p, seed) in [(0.1f32, 7u64), (0.5, 8), (0.1, u64::MAX)] {
        let mut out = vec![0.0f32; n];
        dropout_forward(&mut out, &x, p, seed, 12345);
        let scale = dropout_scale(p);
        let mut kept = 0usize;
        for i in 0..n {
            let k = dropout_keep(seed, 12345 + i as u64, p);
            assert_eq!(out[i], if k { x[i] * scale } else { 0.0 }, "p={p} element {i}");
            kept += k as usize;
        }
        let (nf, pf) = (n as f64, p as f64);
        let sigma = (nf * pf * (1.0 - pf)).sqrt();
        let dev = kept as f64 - nf * (1.0 - pf);
        assert!(dev.abs() <= 6.0 * sigma, "p={p}: kept {kept} of {n}, {:.1} sigma from the mean", dev / sigma);
    }
}

/// Neighbouring elements are independent: over disjoint pairs, "both kept" is Binomial(pairs, 1/4)
/// at p = 0.5. Checked for pairs inside one Philox call (lanes 0,1 and 2,3) and across two calls
/// (lane 3 of group g, lane 0 of group g + 1). Same 6-sigma bound as above.
#[test]
fn dropout_neighbours_independent() {
    let n = 100_000;
    let m = mask(0.5, 31337, 0, n);
    // (name, first element of the first pair, distance between pairs)
    for (name, first, step) in [("within a group", 0usize, 2usize), ("across groups", 3, 4)] {
        let pairs: Vec<(bool, bool)> = (first..n - 1).step_by(step).map(|i| (m[i], m[i + 1])).collect();
        let both = pairs.iter().filter(|(a, b)| *a && *b).count() as f64;
        let np = pairs.len() as f64;
        let sigma = (np * 0.25 * 0.75).sqrt();
        let dev = both - np * 0.25;
        assert!(dev.abs() <= 6.0 * sigma, "{name}: both kept {both} of {np} pairs, {:.1} sigma", dev / sigma);
    }
}

#[test]
fn dropout_p0_is_identity_bit_exact() {
    // NaN with a payload, -0, a subnormal, infinities: all must come through untouched.
    let x = [f32::from_bits(0x7fc0_1234), -0.0, f32::from_bits(1), f32::INFINITY, f32::NEG_INFINITY, 3.5, -1e-30];
    let mut out = [0.0f32; 7];
    dropout_forward(&mut out, &x, 0.0, 1, 2);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&out), bits(&x));
    let mut dx = [1.0f32; 7];
    dropout_backward(&mut dx, &[2.0; 7], 0.0, 1, 2);
    assert_eq!(dx, [3.0; 7], "p = 0 backward must accumulate dout");
}

/// Backward against forward. Dropout is linear and diagonal in x, so backward(dout) from zero must
/// equal forward(dout) bit for bit, and L = <forward(x), r> has gradient backward(r) (FD in f64).
#[test]
fn dropout_backward_matches_forward() {
    let mut rng = Rng::new(11);
    for (n, p, seed, offset) in
        [(1usize, 0.5f32, 3u64, 0u64), (13, 0.1, 4, 7), (257, 0.5, 5, 1 << 33), (1031, 0.9, 6, 2)]
    {
        // Exact check in f32.
        let dout = rand_f32(&mut rng, n, -1.0, 1.0);
        let mut fwd = vec![0.0f32; n];
        dropout_forward(&mut fwd, &dout, p, seed, offset);
        let mut dx = vec![0.0f32; n];
        dropout_backward(&mut dx, &dout, p, seed, offset);
        assert_eq!(dx, fwd, "n={n} p={p}: backward != forward on the same (seed, offset)");
        // Accumulation: a second call adds the same again.
        dropout_backward(&mut dx, &dout, p, seed, offset);
        let twice: Vec<f32> = fwd.iter().map(|v| v + v).collect();
        assert_eq!(dx, twice, "n={n} p={p}: backward does not accumulate");

        // Finite differences in f64 (small n only: FD costs n forward calls).
        if n <= 257 {
            let x = rand_f64(&mut rng, n, -1.0, 1.0);
            let r = rand_f64(&mut rng, n, -1.0, 1.0);
            let fd = finite_diff(&x, 1e-6, |x| {
                let mut out = vec![0.0f64; n];
                dropout_forward(&mut out, x, p, seed, offset);
                dot(&out, &r)
            });
            let mut dx = vec![0.0f64; n];
            dropout_backward(&mut dx, &r, p, seed, offset);
            assert_close(&dx, &fd, Tol::FD64, &format!("dropout FD n={n} p={p}"));
        }
    }
}

#[test]
fn dropout_rejects_bad_p() {
    for p in [1.0f32, 1.5, -0.1, f32::NAN] {
        let r = std::panic::catch_unwind(|| {
            let mut out = [0.0f32; 2];
            dropout_forward(&mut out, &[1.0, 2.0], p, 0, 0);
        });
        assert!(r.is_err(), "p = {p} accepted");
    }
}
