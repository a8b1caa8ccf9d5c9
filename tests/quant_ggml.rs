//! ggml block formats: sizes, dequantization of hand-built blocks with known values, reference
//! quantizer round-trip error, requantization of real fixture blocks, GgmlMatrix.
//! Spec: src/quant/ggml.rs. Bit-exactness against gguf-py on real blocks: tests/gguf.rs.

// Index loops follow the documented layouts element by element.
#![allow(clippy::needless_range_loop)]

#[path = "common/mod.rs"]
mod common;

use loraforge::io::gguf::GgufFile;
use loraforge::quant::ggml::*;
use loraforge::quant::DequantRows;
use loraforge::rng::Rng;

fn h(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

fn deq(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / ty.type_size() * ty.block_size();
    let mut out = vec![0.0; n];
    dequantize(ty, bytes, &mut out).unwrap();
    out
}

#[track_caller]
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}[{i}]: got {g} want {w}");
    }
}

#[test]
fn type_table() {
    // (type, id, block size, bytes per block) from ggml-common.h / ggml.c type_traits.
    let table = [
        (GgmlType::F32, 0, 1, 4),
        (GgmlType::F16, 1, 1, 2),
        (GgmlType::Q4_0, 2, 32, 18),
        (GgmlType::Q4_1, 3, 32, 20),
        (GgmlType::Q5_0, 6, 32, 22),
        (GgmlType::Q5_1, 7, 32, 24),
        (GgmlType::Q8_0, 8, 32, 34),
        (GgmlType::Q8_1, 9, 32, 36),
        (GgmlType::Q2_K, 10, 256, 84),
        (GgmlType::Q3_K, 11, 256, 110),
        (GgmlType::Q4_K, 12, 256, 144),
        (GgmlType::Q5_K, 13, 256, 176),
        (GgmlType::Q6_K, 14, 256, 210),
        (GgmlType::Q8_K, 15, 256, 292),
        (GgmlType::BF16, 30, 1, 2),
    ];
    assert_eq!(table.len(), GgmlType::ALL.len());
    for (ty, id, bs, ts) in table {
        assert_eq!(ty as u32, id);
        assert_eq!(GgmlType::from_u32(id).unwrap(), ty);
        assert_eq!((ty.block_size(), ty.type_size()), (bs, ts), "{ty}");
        assert_eq!(GgmlType::from_name(ty.name()).unwrap(), ty);
        assert_eq!(GgmlType::from_name(ty.upper_name()).unwrap(), ty);
        assert_eq!(ty.name(), ty.upper_name().to_lowercase());
        assert_eq!(ty.row_bytes(3 * bs).unwrap(), 3 * ts);
        assert_eq!(ty.row_bytes(0).unwrap(), 0);
        if bs > 1 {
            let e = ty.row_bytes(bs + 1).unwrap_err().to_string();
            assert!(e.contains("not a multiple of the block size"), "{e}");
        }
    }
    assert_eq!(GgmlType::Q4_K.name(), "q4_k");
    assert_eq!(GgmlType::Q4_K.upper_name(), "Q4_K");
    // Known but unsupported ids are named; unknown ids say so.
    for (id, name) in [(16, "IQ2_XXS"), (23, "IQ4_XS"), (24, "I8"), (28, "F64"), (35, "TQ2_0"), (39, "MXFP4")] {
        let e = GgmlType::from_u32(id).unwrap_err().to_string();
        assert!(e.contains(&format!("type {name} ")) && e.contains("which loraforge does not support"), "{e}");
    }
    assert!(GgmlType::from_u32(4000).unwrap_err().to_string().contains("unknown ggml type id 4000"));
    assert!(GgmlType::from_name("q4_z").is_err());
}

#[test]
fn dequantize_checks_lengths() {
    let mut out = vec![0.0f32; 32];
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out).is_err(), "short data");
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 19], &mut out).is_err(), "long data");
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out[..31]).is_err(), "partial block");
    assert!(dequantize(GgmlType::Q8_1, &[0u8; 36], &mut out).is_err(), "no dequantizer for q8_1");
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out).is_ok());
    assert!(dequantize(GgmlType::Q4_K, &[], &mut []).is_ok(), "empty is fine");
}

// ---- hand-built blocks with known values

#[test]
fn dequantize_dense_types() {
    let f16s = [0x3C00u16, 0xC000, 0x7C00, 0x0001, 0x3555];
    let b: Vec<u8> = f16s.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_bits(&deq(GgmlType::F16, &b), &[1.0, -2.0, f32::INFINITY, 5.960_464_5e-8, 0.333_251_95], "f16");
    let bf: Vec<u8> = [0x3F80u16, 0xC040, 0x0000].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_bits(&deq(GgmlType::BF16, &bf), &[1.0, -3.0, 0.0], "bf16");
    let f: Vec<u8> = [1.5f32, -0.0, 1e-40].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_bits(&deq(GgmlType::F32, &f), &[1.5, -0.0, 1e-40], "f32");
    // bf16 rounding: ties to even, NaN stays NaN.
    let x = [f32::from_bits(0x3F80_8000), f32::from_bits(0x3F81_8000), f32::from_bits(0x3F80_8001), f32::NAN];
    assert_eq!(f32_to_bf16_bits(x[0]), 0x3F80);
    assert_eq!(f32_to_bf16_bits(x[1]), 0x3F82);
    assert_eq!(f32_to_bf16_bits(x[2]), 0x3F81);
    assert!(f32::from_bits((f32_to_bf16_bits(x[3]) as u32) << 16).is_nan());
}

#[test]
fn dequantize_legacy_blocks() {
    // Q4_0: d = 0.5, element j < 16 has code j, element j + 16 has code 15 - j.
    let mut b = vec![];
    b.extend(h(0.5));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let want: Vec<f32> =
        (0..32).map(|e| if e < 16 { (e - 8) as f32 * 0.5 } else { (7 - (e - 16)) as f32 * 0.5 }).collect();
    assert_bits(&deq(GgmlType::Q4_0, &b), &want, "q4_0");

    // Q4_1: d = 0.25, m = -1, both halves code j.
    let mut b = vec![];
    b.extend(h(0.25));
    b.extend(h(-1.0));
    b.extend((0..16u8).map(|j| j | (j << 4)));
    let want: Vec<f32> = (0..32).map(|e| (e % 16) as f32 * 0.25 - 1.0).collect();
    assert_bits(&deq(GgmlType::Q4_1, &b), &want, "q4_1");

    // Q5_0: d = 1, high bits set for the second half only: codes j and 16 + j.
    let mut b = vec![];
    b.extend(h(1.0));
    b.extend(0xFFFF_0000u32.to_le_bytes());
    b.extend((0..16u8).map(|j| j | (j << 4)));
    let want: Vec<f32> = (0..32).map(|e| if e < 16 { e as f32 - 16.0 } else { (e - 16) as f32 }).collect();
    assert_bits(&deq(GgmlType::Q5_0, &b), &want, "q5_0");

    // Q5_1: d = 2, m = 0.5, only element 0 has its high bit; low codes 1 (first half), 2 (second).
    let mut b = vec![];
    b.extend(h(2.0));
    b.extend(h(0.5));
    b.extend(1u32.to_le_bytes());
    b.extend([0x21u8; 16]);
    let want: Vec<f32> = (0..32)
        .map(|e| {
            if e == 0 {
                34.5
            } else if e < 16 {
                2.5
            } else {
                4.5
            }
        })
        .collect();
    assert_bits(&deq(GgmlType::Q5_1, &b), &want, "q5_1");

    // Q8_0: d = 0.125, codes -128, -120, ..., 120.
    let mut b = vec![];
    b.extend(h(0.125));
    b.extend((0..32).map(|j| (j * 8 - 128) as i8 as u8));
    let want: Vec<f32> = (0..32).map(|j| (j * 8 - 128) as f32 * 0.125).collect();
    assert_bits(&deq(GgmlType::Q8_0, &b), &want, "q8_0");

    // Q8_K: f32 d = 0.1, codes e - 128, bsums ignored by dequantization.
    let mut b = vec![];
    b.extend(0.1f32.to_le_bytes());
    b.extend((0..256).map(|e| (e - 128) as i8 as u8));
    b.extend([0xAAu8; 32]);
    let want: Vec<f32> = (0..256).map(|e| 0.1f32 * (e - 128) as f32).collect();
    assert_bits(&deq(GgmlType::Q8_K, &b), &want, "q8_k");
}

/// Codes in 0..2^bits for element e of a super-block: a spread pattern so every bit matters.
fn codes(bits: u32, mul: usize) -> Vec<u8> {
    (0..256).map(|e| ((e * mul + e / 7) % (1 << bits)) as u8).collect()
}

#[test]
fn dequantize_q2_k_block() {
    let (d, dmin) = (0.5f32, 0.25f32);
    let l = codes(2, 3);
    let sm: Vec<(u8, u8)> = (0..16).map(|j| ((j as u8 * 7) % 16, 15 - j as u8)).collect(); // (scale, min) per 16
    let mut b = vec![];
    b.extend(sm.iter().map(|&(s, m)| s | (m << 4)));
    let mut qs = [0u8; 64];
    for e in 0..256 {
        // element 128*half + 32*shift + l sits in bits 2*shift of qs[32*half + l]
        let (half, shift, i) = (e / 128, (e % 128) / 32, e % 32);
        qs[32 * half + i] |= l[e] << (2 * shift);
    }
    b.extend(qs);
    b.extend(h(d));
    b.extend(h(dmin));
    let want: Vec<f32> = (0..256)
        .map(|e| {
            let (s, m) = sm[e / 16];
            (d * s as f32) * l[e] as f32 - dmin * m as f32
        })
        .collect();
    assert_bits(&deq(GgmlType::Q2_K, &b), &want, "q2_k");
}

#[test]
fn dequantize_q3_k_block() {
    let d = 0.75f32;
    let l = codes(3, 5); // q + 4, in 0..8
    let s: Vec<u8> = (0..16).map(|j| ((j * 9 + 3) % 64) as u8).collect(); // 6-bit scales, offset 32
    let (mut hmask, mut qs, mut sc) = ([0u8; 32], [0u8; 64], [0u8; 12]);
    for e in 0..256 {
        let (half, shift, i) = (e / 128, (e % 128) / 32, e % 32);
        qs[32 * half + i] |= (l[e] & 3) << (2 * shift);
        if l[e] & 4 != 0 {
            hmask[i] |= 1 << (e / 32);
        }
    }
    for j in 0..16 {
        if j < 8 {
            sc[j] |= s[j] & 0xF;
        } else {
            sc[j - 8] |= (s[j] & 0xF) << 4;
        }
        sc[8 + j % 4] |= (s[j] >> 4) << (2 * (j / 4));
    }
    let mut b = vec![];
    b.extend(hmask);
    b.extend(qs);
    b.extend(sc);
    b.extend(h(d));
    let want: Vec<f32> = (0..256).map(|e| (d * (s[e / 16] as i32 - 32) as f32) * (l[e] as i32 - 4) as f32).collect();
    assert_bits(&deq(GgmlType::Q3_K, &b), &want, "q3_k");
}

/// The 12-byte 6-bit scale/min packing of Q4_K and Q5_K, written from the layout description.
fn pack_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    s
}

#[test]
fn dequantize_q4_k_and_q5_k_blocks() {
    let (d, dmin) = (0.5f32, 0.125f32);
    // Scales and mins >= 16 in sub-blocks 4..8 exercise the split high bits.
    let sc: [u8; 8] = [1, 13, 40, 63, 17, 33, 62, 5];
    let m: [u8; 8] = [0, 63, 7, 31, 48, 16, 2, 59];
    for (ty, bits) in [(GgmlType::Q4_K, 4u32), (GgmlType::Q5_K, 5)] {
        let l = codes(bits, 11);
        let mut b = vec![];
        b.extend(h(d));
        b.extend(h(dmin));
        b.extend(pack_k4(&sc, &m));
        let (mut qh, mut qs) = ([0u8; 32], [0u8; 128]);
        for e in 0..256 {
            // sub-block s = e / 32; sub-blocks 2i and 2i+1 share qs[32i..32i+32] (low / high nibble)
            let (s, i) = (e / 32, e % 32);
            qs[32 * (s / 2) + i] |= (l[e] & 0xF) << (4 * (s % 2));
            if l[e] & 16 != 0 {
                qh[i] |= 1 << s;
            }
        }
        if ty == GgmlType::Q5_K {
            b.extend(qh);
        }
        b.extend(qs);
        let want: Vec<f32> =
            (0..256).map(|e| (d * sc[e / 32] as f32) * l[e] as f32 - dmin * m[e / 32] as f32).collect();
        assert_bits(&deq(ty, &b), &want, ty.name());
    }
}

#[test]
fn dequantize_q6_k_block() {
    let d = 0.25f32;
    let l = codes(6, 13);
    let sc: Vec<i8> = (0..16).map(|j| (j * 17 - 128) as i8).collect(); // includes -128 and positives
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for e in 0..256 {
        // in each half of 128: element 32k + i has its low nibble in ql[64*half + 32*(k&1) + i]
        // (low nibble for k < 2, high for k >= 2) and its 2 high bits at bits 2k of qh[32*half + i]
        let (half, k, i) = (e / 128, (e % 128) / 32, e % 32);
        ql[64 * half + 32 * (k & 1) + i] |= (l[e] & 0xF) << (4 * (k / 2));
        qh[32 * half + i] |= (l[e] >> 4) << (2 * k);
    }
    let mut b = vec![];
    b.extend(ql);
    b.extend(qh);
    b.extend(sc.iter().map(|&s| s as u8));
    b.extend(h(d));
    let want: Vec<f32> = (0..256).map(|e| d * sc[e / 16] as f32 * (l[e] as i32 - 32) as f32).collect();
    assert_bits(&deq(GgmlType::Q6_K, &b), &want, "q6_k");
}

// ---- quantizers

/// RMSE of quantize -> dequantize relative to the data's RMS, on N(0, 1) data.
fn rel_rmse(ty: GgmlType, x: &[f32]) -> f64 {
    let y = deq(ty, &quantize(ty, x).unwrap());
    let se: f64 = x.iter().zip(&y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let ss: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (se / ss).sqrt()
}

#[test]
fn quantize_round_trip_error_bounds() {
    let mut rng = Rng::new(42);
    let x = common::randn_f32(&mut rng, 64 * 512, 1.0); // 32768 values, 128 super-blocks
                                                        // Bounds: the measured value (seed 42; `cargo test --test quant_ggml -- --nocapture`) plus ~5%.
                                                        // Each agrees with the uniform-rounding estimate step / sqrt(12), step = block range / levels,
                                                        // using E[max |x|] ~ 2.1 (32 samples) or 1.8 (16 samples) and E[max - min] ~ 4.2 (32 samples).
    let bounds = [
        (GgmlType::F32, 0.0),      // exact
        (GgmlType::F16, 2.2e-4),   // measured 2.078e-4 (11-bit significand)
        (GgmlType::BF16, 1.75e-3), // measured 1.670e-3 (8-bit significand)
        (GgmlType::Q8_0, 5.6e-3),  // measured 5.289e-3; estimate 2.1/127/sqrt(12) = 4.8e-3
        (GgmlType::Q6_K, 1.86e-2), // measured 1.772e-2; estimate 1.8/32/sqrt(12) = 1.6e-2
        (GgmlType::Q5_K, 3.78e-2), // measured 3.596e-2; estimate 4.2/31/sqrt(12) = 3.9e-2 (fitted min/scale)
        (GgmlType::Q5_1, 3.97e-2), // measured 3.777e-2; estimate 3.9e-2
        (GgmlType::Q5_0, 4.47e-2), // measured 4.252e-2; estimate 2.1/16/sqrt(12) = 3.8e-2 (+ an unused level)
        (GgmlType::Q4_K, 7.42e-2), // measured 7.059e-2; estimate 4.2/15/sqrt(12) = 8.1e-2 (fitted min/scale)
        (GgmlType::Q4_1, 8.14e-2), // measured 7.748e-2; estimate 8.1e-2
        (GgmlType::Q4_0, 8.97e-2), // measured 8.539e-2; estimate 2.1/8/sqrt(12) = 7.6e-2 (+ an unused level)
    ];
    let mut failed = vec![];
    for (ty, bound) in bounds {
        let e = rel_rmse(ty, &x);
        println!("{:>5}: relative RMSE {e:.3e} (bound {bound:.2e})", ty.name());
        if e > bound {
            failed.push(format!("{ty}: relative RMSE {e:.3e} > {bound:.2e}"));
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn quantize_degenerate_blocks() {
    let mut rng = Rng::new(9);
    for ty in GgmlType::ALL.into_iter().filter(|t| t.can_quantize()) {
        let n = 2 * ty.block_size().max(QK_K);
        // All zeros decode to zeros.
        assert!(deq(ty, &quantize(ty, &vec![0.0; n]).unwrap()).iter().all(|v| *v == 0.0), "{ty}: zeros");
        // A constant block, a single outlier, tiny values: finite output, error within the block's range.
        let mut cases = vec![vec![0.37f32; n], vec![-2.5f32; n]];
        let mut spike = common::randn_f32(&mut rng, n, 0.01);
        spike[5] = 100.0;
        cases.push(spike);
        cases.push(common::randn_f32(&mut rng, n, 1e-6));
        for x in cases {
            let y = deq(ty, &quantize(ty, &x).unwrap());
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                // 0.51 * amax: at most half a step of a scale <= amax; 1e-5: f16 scales below 2^-24
                // flush to zero, so a block of |x| ~ 1e-6 decodes to 0 (as in ggml).
                assert!(b.is_finite() && (a - b).abs() <= 0.51 * amax + 1e-5, "{ty}[{i}]: {a} -> {b} (amax {amax})");
            }
        }
    }
}

#[test]
fn quantize_rejects_bad_input() {
    assert!(quantize(GgmlType::Q4_0, &[0.0; 33]).is_err(), "not whole blocks");
    assert!(quantize(GgmlType::Q4_K, &[0.0; 32]).is_err(), "not whole super-blocks");
    let mut x = vec![0.0f32; 32];
    x[3] = f32::NAN;
    assert!(quantize(GgmlType::Q8_0, &x).unwrap_err().to_string().contains("element 3"));
    x[3] = f32::INFINITY;
    assert!(quantize(GgmlType::F16, &x).is_err());
    for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q8_K, GgmlType::Q8_1] {
        assert!(quantize(ty, &[0.0; 256]).is_err(), "{ty} has no quantizer");
    }
}

/// quantize(dequantize(blocks)) on the fixture's Q8_0 / Q4_0 blocks (real llama.cpp blocks and
/// synthetic random-byte blocks). A block comes back byte-identical exactly when its extreme code is
/// one the reference quantizer produces for the block's max: Q4_0 code 0 (value -8d), Q8_0 |code| = 127
/// with no -128 and d >= 0. Then the new scale is exactly d (e.g. (-8d) / -8) and every code rounds back to itself.
/// Other blocks (only in the random-byte synthetic tensors) get a new scale: Q8_0 with d < 0 gets -d and
/// negated codes (same values); with a -128 code, d' = 128/127 d and decodes within half a step; Q4_0 with no code 0 has max = +7d, so d' = -7/8 d
/// flips sign and its code for -7d saturates at 15 (= -6.125d): errors up to 7/8 |d|.
#[test]
fn requantize_fixture_blocks() {
    let g = GgufFile::open(common::fixtures_dir().join("quant/blocks.gguf")).unwrap();
    let (mut same, mut other) = (0, 0);
    for t in g.tensors().iter().filter(|t| matches!(t.ty, GgmlType::Q8_0 | GgmlType::Q4_0)) {
        let bytes = g.tensor_bytes(t).unwrap();
        let x = g.dequantize_tensor(&t.name).unwrap();
        let again = quantize(t.ty, &x).unwrap();
        let y = deq(t.ty, &again);
        let ts = t.ty.type_size();
        for (i, (b0, b1)) in bytes.chunks(ts).zip(again.chunks(ts)).enumerate() {
            let d = half::f16::from_bits(u16::from_le_bytes([b0[0], b0[1]])).to_f32().abs();
            let canonical = match t.ty {
                GgmlType::Q4_0 => b0[2..].iter().any(|q| q & 0xF == 0 || q >> 4 == 0),
                _ => {
                    let codes = b0[2..].iter().map(|&q| q as i8);
                    let positive_d = b0[1] & 0x80 == 0; // amax / 127 is never negative
                    positive_d
                        && codes.clone().map(|q| (q as i32).abs()).max() == Some(127)
                        && codes.clone().all(|q| q != -128)
                }
            };
            if canonical || d == 0.0 {
                assert_eq!(b0, b1, "{} block {i}: canonical block must come back identical", t.name);
                same += 1;
            } else {
                assert!(t.name.starts_with("synthetic."), "{} block {i}: real llama.cpp blocks are canonical", t.name);
                other += 1;
                // Q8_0: half a step of d' = 128/127 d plus its f16 rounding (2^-11 relative, times up to
                // 127 steps): 0.504 + 0.062 < 0.57. Q4_0: the saturated code, 7/8, plus f16 rounding of
                // d' (8 steps * 2^-11) < 0.88.
                let bound = if t.ty == GgmlType::Q8_0 { 0.57 * d } else { 0.88 * d };
                for j in 0..32 {
                    let (a, b) = (x[32 * i + j], y[32 * i + j]);
                    assert!((a - b).abs() <= bound, "{} block {i}[{j}]: {a} -> {b}, d {d}", t.name);
                }
            }
        }
    }
    println!("requantized fixture blocks: {same} identical, {other} non-canonical within the bound");
    assert!(same >= 100, "the fixture's real blocks are canonical");
}

#[test]
fn ggml_matrix_rows_and_validation() {
    let mut rng = Rng::new(3);
    let (rows, cols) = (5, 512);
    let x = common::randn_f32(&mut rng, rows * cols, 1.0);
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F16] {
        let m = GgmlMatrix::quantize(ty, rows, cols, &x).unwrap();
        assert_eq!((m.rows(), m.cols(), m.ty()), (rows, cols, ty));
        assert_eq!(m.format_name(), ty.name());
        assert_eq!(m.storage_bytes(), rows * ty.row_bytes(cols).unwrap());
        assert!(!m.data().is_mmap());
        // Quantizing row by row gives the same bytes (blocks never span rows).
        for r in 0..rows {
            assert_eq!(m.row(r), &quantize(ty, &x[r * cols..(r + 1) * cols]).unwrap()[..]);
        }
        let all = m.to_f32();
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row);
            assert_bits(&row, &all[r * cols..(r + 1) * cols], "row");
        }
        common::assert_close(&all, &x, common::Tol { abs: 0.2, rel: 0.1 }, ty.name());
        // coarse: 4-bit
    }
    let b = Bytes::from_vec(vec![0u8; 2 * 144]);
    assert!(GgmlMatrix::new(GgmlType::Q4_K, 2, 256, b.clone()).is_ok());
    assert!(GgmlMatrix::new(GgmlType::Q4_K, 3, 256, b.clone()).is_err(), "too few bytes");
    assert!(GgmlMatrix::new(GgmlType::Q4_K, 1, 512, b.clone()).is_ok());
    assert!(GgmlMatrix::new(GgmlType::Q4_K, 2, 128, b.clone()).is_err(), "cols not whole super-blocks");
    assert!(GgmlMatrix::new(GgmlType::Q8_1, 8, 32, b.clone()).is_err(), "no dequantizer");
    assert!(GgmlMatrix::new(GgmlType::Q4_K, usize::MAX, 256, b.clone()).is_err(), "overflow");
    assert!(GgmlMatrix::quantize(GgmlType::Q8_0, 2, 32, &[0.0; 63]).is_err());
    // Bytes views share storage and check their ranges.
    let s = b.slice(144..288).unwrap();
    assert_eq!(s.len(), 144);
    assert!(s.slice(0..145).is_err());
    assert!(b.slice(std::ops::Range { start: 10, end: 5 }).is_err(), "reversed range");
}

/// Our reference quantizers vs gguf-py's numpy ports of the same ggml functions (Q4_0, Q4_1,
/// Q5_0, Q5_1, Q8_0, BF16; gguf-py has no K-quant quantizers). Skips without python3 + gguf.
#[test]
fn quantizers_match_gguf_py() {
    let have = std::process::Command::new("python3").args(["-c", "import gguf, numpy"]).output();
    if !matches!(&have, Ok(o) if o.status.success()) {
        println!("SKIPPED quantizers_match_gguf_py: python3 with the gguf package not found (pip install gguf)");
        return;
    }
    let mut rng = Rng::new(17);
    let x = common::randn_f32(&mut rng, 64 * 256, 1.0);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("quant_ggml_py");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("x.f32");
    std::fs::write(&input, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let types = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::BF16];
    for ty in types {
        let out = dir.join(format!("{}.bin", ty.name()));
        let script = "import sys, numpy as np, gguf\n\
            x = np.fromfile(sys.argv[1], dtype=np.float32).reshape(64, 256)\n\
            t = gguf.GGMLQuantizationType[sys.argv[2]]\n\
            np.asarray(gguf.quants.quantize(x, t)).tofile(sys.argv[3])\n";
        let o = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&input)
            .arg(ty.upper_name())
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let theirs = std::fs::read(&out).unwrap();
        let ours = quantize(ty, &x).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ty}");
        let bs = ty.type_size();
        let differing = ours.chunks(bs).zip(theirs.chunks(bs)).filter(|(a, b)| a != b).count();
        println!("{:>5}: {differing} of {} blocks differ from gguf-py", ty.name(), ours.len() / bs);
        assert_eq!(differing, 0, "{ty}: blocks differ from gguf-py");
    }
}
