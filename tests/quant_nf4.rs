//! NF4 (bitsandbytes) against bitsandbytes 0.50's own output in
//! ../shared/fixtures/quant/nf4.safetensors (see its README and nf4_manifest.json).
//! Spec: src/quant/nf4.rs

#[path = "common/mod.rs"]
mod common;

use common::*;
use loraforge::io::safetensors::SafetensorsFile;
use loraforge::quant::nf4::{torch_mean_f32, Nf4Absmax, Nf4Matrix, DYNAMIC_MAP, NF4_QUANT_MAP};
use loraforge::quant::DequantRows;
use loraforge::rng::Rng;
use loraforge::DType;

const CASES: [&str; 4] = ["plain_64", "double_64", "odd_rows_64", "bf16_input_64"];

fn fixture() -> SafetensorsFile {
    let p = fixtures_dir().join("quant").join("nf4.safetensors");
    SafetensorsFile::open(&p).unwrap_or_else(|e| panic!("NF4 fixture needed at {}: {e}", p.display()))
}

fn manifest() -> serde_json::Value {
    let p = fixtures_dir().join("quant").join("nf4_manifest.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn load(f: &SafetensorsFile, case: &str) -> Nf4Matrix {
    Nf4Matrix::from_hf_tensors(case, |n| f.raw(n).ok()).unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn tables_match_bitsandbytes() {
    let f = fixture();
    for case in CASES {
        let qm = f.tensor_f32(&format!("{case}.weight.quant_map")).unwrap();
        assert_eq!(bits(&qm), bits(&NF4_QUANT_MAP), "{case}: NF4 quant_map");
        if let Ok(code) = f.tensor_f32(&format!("{case}.weight.nested_quant_map")) {
            assert_eq!(bits(&code), bits(&DYNAMIC_MAP), "{case}: dynamic map");
        }
    }
}

/// Decoding bitsandbytes' bytes gives bitsandbytes' dequantized tensor bit for bit: measured
/// max |diff| = 0 on every case (f32 products in the same order; bf16 rounding is RNE in both).
#[test]
fn dequantize_matches_bitsandbytes_exactly() {
    let f = fixture();
    for case in CASES {
        let m = load(&f, case);
        let want = f.tensor_f32(&format!("{case}.dequant")).unwrap();
        let mut got = vec![0.0f32; m.rows * m.cols];
        m.dequantize(&mut got);
        assert_close(&got, &want, Tol::EXACT, case);
        assert_eq!(bits(&got), bits(&want), "{case}: bit pattern (sign of zero included)");
        // Row by row through DequantRows (rows that straddle blocks: odd_shapes_round_trip_and_rows).
        let mut row = vec![0.0f32; m.cols];
        for r in 0..m.rows {
            m.dequantize_row(r, &mut row);
            assert_eq!(bits(&row), bits(&want[r * m.cols..(r + 1) * m.cols]), "{case}: row {r}");
        }
        let want_dtype = if case.starts_with("bf16") { DType::BF16 } else { DType::F32 };
        assert_eq!(m.dtype, want_dtype, "{case}: dtype from quant state");
    }
}

/// Our quantizer reproduces bitsandbytes' packed bytes, absmax tensors and offset.
/// One known exception, written down rather than hidden: in double_64 the 8-bit code of absmax
/// block 127 is 70 for us (the nearest code: |z - code| = 1.4044e-3 vs 1.4081e-3) and 71 in the
/// fixture; its normalised value lies 2.3e-5 (relative) from the decision midpoint, 15x closer
/// than any other value in the fixture, and no f32 ordering of the documented CPU algorithm
/// (csrc/common.cpp: a / absmax, BinSearch Direct2, distance check; or the torch argmin path)
/// gives 71. So: every other byte must match exactly, and any mismatch must be an adjacent code
/// whose input is within 1e-4 (relative) of a midpoint.
#[test]
fn quantize_reproduces_bitsandbytes_bytes() {
    let f = fixture();
    for case in CASES {
        let want = load(&f, case);
        let input = f.tensor_f32(&format!("{case}.input")).unwrap();
        let dq = matches!(want.absmax, Nf4Absmax::Double { .. });
        let got = Nf4Matrix::quantize_as(&input, want.rows, want.cols, want.blocksize, dq, want.dtype).unwrap();
        assert_eq!(got.packed, want.packed, "{case}: packed NF4 bytes");
        match (&got.absmax, &want.absmax) {
            (Nf4Absmax::Plain(a), Nf4Absmax::Plain(b)) => {
                assert_eq!(bits(a), bits(b), "{case}: absmax")
            }
            (
                Nf4Absmax::Double { q, nested_absmax, offset, code, .. },
                Nf4Absmax::Double { q: q2, nested_absmax: n2, offset: o2, .. },
            ) => {
                assert_eq!(offset.to_bits(), o2.to_bits(), "{case}: offset {offset} vs {o2}");
                assert_eq!(bits(nested_absmax), bits(n2), "{case}: nested absmax");
                let mut mismatches = 0;
                for i in 0..q.len() {
                    if q[i] != q2[i] {
                        mismatches += 1;
                        let (a, b) = (q[i] as usize, q2[i] as usize);
                        assert_eq!(a.abs_diff(b), 1, "{case}: absmax code {i}: {a} vs {b} not adjacent");
                        let mid = (code[a] as f64 + code[b] as f64) / 2.0;
                        let blk = &input[i * want.blocksize..((i + 1) * want.blocksize).min(input.len())];
                        let am = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let z = ((am - offset) / nested_absmax[i / 256]) as f64;
                        assert!(
                            ((z - mid) / z).abs() < 1e-4,
                            "{case}: code {i} differs but z={z} is not at a midpoint {mid}"
                        );
                    }
                }
                // measured: 1 in double_64 (block 127), 0 elsewhere
                assert!(mismatches <= 1, "{case}: {mismatches} absmax codes differ");
            }
            _ => panic!("{case}: plain vs double absmax"),
        }
    }
}

/// Round trip |w - dequant(quant(w))| stays within bitsandbytes' own measured max error.
#[test]
fn round_trip_within_manifest_bound() {
    let f = fixture();
    for c in manifest()["cases"].as_array().unwrap() {
        let case = c["case"].as_str().unwrap();
        let bound = c["max_abs_err"].as_f64().unwrap();
        let want = load(&f, case);
        let input = f.tensor_f32(&format!("{case}.input")).unwrap();
        let dq = c["double_quant"].as_bool().unwrap();
        let m = Nf4Matrix::quantize_as(&input, want.rows, want.cols, 64, dq, want.dtype).unwrap();
        let mut out = vec![0.0; input.len()];
        m.dequantize(&mut out);
        let err = input.iter().zip(&out).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
        // bitsandbytes' bound, plus nothing: our bytes are (almost) its bytes
        assert!(err <= bound, "{case}: max err {err} > {bound}");
    }
}

/// Odd sizes, rows straddling blocks, double quant with more than one nested block.
#[test]
fn odd_shapes_round_trip_and_rows() {
    let mut rng = Rng::new(7);
    for &(rows, cols, bs, dq) in
        &[(1, 1, 64, false), (3, 7, 64, true), (5, 97, 64, true), (37, 131, 64, true), (2, 50, 32, false)]
    {
        let w = randn_f32(&mut rng, rows * cols, 0.02);
        let m = Nf4Matrix::quantize(&w, rows, cols, bs, dq).unwrap();
        m.validate().unwrap();
        let mut full = vec![0.0; rows * cols];
        m.dequantize(&mut full);
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row);
            assert_eq!(bits(&row), bits(&full[r * cols..(r + 1) * cols]), "{rows}x{cols}: row {r}");
        }
        // Per element: |w - w'| <= absmax_b * (largest NF4 half-gap, between -1 and -0.6961928: (1 - 0.6961928) / 2
        // = 0.1519) + the double-quant absmax error (half an 8-bit code step, <= 0.0071 of the nested
        // absmax, which is <= absmax_max; 0.02 * am is loose but these matrices have similar blocks).
        for (i, (&a, &b)) in w.iter().zip(&full).enumerate() {
            let am = w[(i / bs) * bs..((i / bs + 1) * bs).min(w.len())].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let tol = am * 0.1520 + if dq { 0.02 * am } else { 0.0 } + 1e-7;
            assert!((a - b).abs() <= tol, "{rows}x{cols} elem {i}: {a} vs {b}");
        }
        // and HF round trip through the tensor names
        let t = m.to_hf_tensors("layer");
        let back = Nf4Matrix::from_hf_tensors("layer", |n| {
            t.iter().find(|x| x.0 == n).map(|x| (x.1, x.2.clone(), x.3.as_slice()))
        })
        .unwrap();
        assert_eq!(back, m);
    }
}

/// to_hf_tensors writes what bitsandbytes writes (the JSON byte for byte included).
#[test]
fn to_hf_tensors_matches_fixture_bytes() {
    let f = fixture();
    for case in CASES {
        let m = load(&f, case);
        for (name, dtype, shape, bytes) in m.to_hf_tensors(case) {
            let (d, s, b) = f.raw(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((dtype, &shape), (d, &s), "{name}: dtype/shape");
            assert_eq!(bytes, b, "{name}: bytes ({})", String::from_utf8_lossy(&bytes));
        }
    }
}

#[test]
fn torch_mean_order() {
    // Values chosen so that summation order changes the f32 result; compare with the
    // fixture's offsets (which torch computed) for the three double-quantized cases.
    let f = fixture();
    for case in ["double_64", "odd_rows_64", "bf16_input_64"] {
        let m = load(&f, case);
        let input = f.tensor_f32(&format!("{case}.input")).unwrap();
        let am: Vec<f32> = input.chunks(64).map(|b| b.iter().fold(0.0f32, |m, v| m.max(v.abs()))).collect();
        let Nf4Absmax::Double { offset, .. } = m.absmax else { panic!() };
        assert_eq!(torch_mean_f32(&am).to_bits(), offset.to_bits(), "{case}");
    }
    // Long inputs go through the cascade: stays within 1e-6 relative of the f64 mean.
    let mut rng = Rng::new(3);
    for n in [1, 3, 7, 8, 9, 33, 1000, 70_000] {
        let v = rand_f32(&mut rng, n, 0.0, 1.0);
        let exact = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let got = torch_mean_f32(&v) as f64;
        assert!((got - exact).abs() <= 1e-6 * exact, "n={n}: {got} vs {exact}");
    }
}

#[test]
fn bad_input_is_an_error() {
    assert!(Nf4Matrix::quantize(&[0.0; 10], 3, 4, 64, false).is_err(), "wrong length");
    assert!(Nf4Matrix::quantize(&[], 0, 4, 64, false).is_err(), "empty");
    assert!(Nf4Matrix::quantize(&[0.0; 4], 1, 4, 0, false).is_err(), "blocksize 0");
    let f = fixture();
    let m = load(&f, "double_64");
    let t = m.to_hf_tensors("x");
    // Loads "x" with the tensor whose name ends with `replace` given new bytes.
    let get_with = |replace: &str, with: Vec<u8>| {
        let mut t2 = t.clone();
        for x in t2.iter_mut().filter(|x| x.0.ends_with(replace)) {
            x.3 = with.clone();
        }
        Nf4Matrix::from_hf_tensors("x", |n| t2.iter().find(|x| x.0 == n).map(|x| (x.1, x.2.clone(), x.3.as_slice())))
    };
    for bad_json in [&b"not json"[..], b"{}", b"{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [16, 512]}",
        b"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [16, 513], \"nested_offset\": 0.1}",
        b"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"int8\", \"shape\": [16, 512], \"nested_offset\": 0.1}",
        b"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [16, 512]}"]
    {
        let r = get_with("bitsandbytes__nf4", bad_json.to_vec());
        assert!(r.is_err(), "accepted quant state {}", String::from_utf8_lossy(bad_json));
    }
    assert!(get_with(".weight", vec![0u8; 10]).is_err(), "short packed weight");
    assert!(get_with(".absmax", vec![0u8; 3]).is_err(), "short absmax");
    assert!(get_with(".weight.quant_map", vec![0u8; 60]).is_err(), "15 quant map values");
    assert!(get_with(".nested_absmax", vec![0u8; 6]).is_err(), "ragged nested absmax");
    assert!(Nf4Matrix::from_hf_tensors("missing", |_| None).is_err(), "missing tensors");
    assert!(get_with("nothing-matches", vec![]).is_ok(), "control: unmodified tensors load");
}

// ---- int8 (row-wise absmax), src/quant/int8.rs

/// |w - w'| <= scale_r / 2 per row (round to nearest), plus one f32 rounding of q * scale
/// (|w'| <= absmax, so 2^-24 * absmax); an all-zero row decodes to exact zeros.
#[test]
fn int8_round_trip_bound() {
    use loraforge::quant::int8::Int8Matrix;
    let mut rng = Rng::new(5);
    for &(rows, cols) in &[(1, 1), (3, 7), (5, 131), (16, 64)] {
        let mut w = randn_f32(&mut rng, rows * cols, 0.1);
        w[..cols].fill(0.0); // row 0 all zeros
        let m = Int8Matrix::quantize(&w, rows, cols).unwrap();
        let mut out = vec![0.0; rows * cols];
        m.dequantize(&mut out);
        for r in 0..rows {
            let s = m.scales[r];
            let absmax = w[r * cols..(r + 1) * cols].iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert_eq!(s, absmax / 127.0, "row {r} scale");
            let mut row = vec![0.0; cols];
            m.dequantize_row(r, &mut row);
            assert_eq!(row, out[r * cols..(r + 1) * cols], "row {r}");
            for c in 0..cols {
                let e = (w[r * cols + c] - row[c]).abs();
                assert!(e <= s / 2.0 + absmax * 6e-8, "({r},{c}): err {e} > scale/2 {}", s / 2.0);
                assert!(m.data[r * cols + c] != -128, "q must stay in [-127, 127]");
            }
            // the absmax element hits +-127 exactly
            if absmax > 0.0 {
                assert!(m.data[r * cols..(r + 1) * cols].iter().any(|&q| q.unsigned_abs() == 127), "row {r}");
            }
        }
        assert!(out[..cols].iter().all(|&v| v == 0.0));
    }
    assert!(Int8Matrix::quantize(&[1.0, f32::NAN], 1, 2).is_err(), "NaN input");
    assert!(Int8Matrix::quantize(&[1.0; 5], 2, 3).is_err(), "wrong length");
}
