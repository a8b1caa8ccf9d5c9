//! quant_linear: the panel-wise fast path against the matmul spec on the dequantized weight, for
//! NF4, int8 and dense weights; backward against matmul_backward and finite differences.
//! Spec: src/backend/cpu/quant_linear.rs (oracle: matmul_forward / matmul_backward)

use crate::common::*;
use loraforge::backend::cpu::matmul::{matmul_backward, matmul_forward, MatmulDims};
use loraforge::backend::cpu::quant_linear::{quant_linear_backward, quant_linear_forward};
use loraforge::quant::int8::Int8Matrix;
use loraforge::quant::nf4::Nf4Matrix;
use loraforge::quant::{DenseRows, DequantRows};
use loraforge::rng::Rng;

/// (N, d_in, d_out): 1, primes, d_in not a multiple of 64 (NF4 blocks then straddle rows),
/// d_out > 128 (more than one panel, last panel partial), N >= 128 (two threads on 2 cores).
const SHAPES: [(usize, usize, usize); 6] =
    [(1, 1, 1), (1, 64, 3), (3, 67, 5), (7, 131, 257), (2, 320, 129), (130, 37, 11)];

fn dense(w: &dyn DequantRows) -> Vec<f32> {
    let mut d = vec![0.0; w.rows() * w.cols()];
    for r in 0..w.rows() {
        w.dequantize_row(r, &mut d[r * w.cols()..(r + 1) * w.cols()]);
    }
    d
}

/// Runs `check` on an NF4 (double quant), an int8 and a dense weight of shape (d_out, d_in).
fn for_each_format(rng: &mut Rng, d_in: usize, d_out: usize, mut check: impl FnMut(&dyn DequantRows, &str)) {
    let w = randn_f32(rng, d_out * d_in, 0.05);
    let nf4 = Nf4Matrix::quantize(&w, d_out, d_in, 64, true).unwrap();
    check(&nf4, "nf4");
    let i8m = Int8Matrix::quantize(&w, d_out, d_in).unwrap();
    check(&i8m, "int8");
    check(&DenseRows { data: &w, rows: d_out, cols: d_in }, "f32");
}

/// Forward vs the spec. Tol::F32: same products, only the summation order may differ once
/// `matmul` is a blocked f32 GEMM (d_in <= 320 terms of size ~0.05: error ~1e-7, far inside).
#[test]
fn forward_matches_matmul_spec() {
    let mut rng = Rng::new(11);
    for (n, d_in, d_out) in SHAPES {
        let x = rand_f32(&mut rng, n * d_in, -1.0, 1.0);
        let bias = rand_f32(&mut rng, d_out, -0.5, 0.5);
        for_each_format(&mut rng, d_in, d_out, |w, fmt| {
            let wd = dense(w);
            for b in [None, Some(bias.as_slice())] {
                let mut want = vec![0.0f32; n * d_out];
                matmul_forward(&mut want, &x, &wd, b, MatmulDims::linear(n, d_out, d_in), false);
                let mut got = vec![f32::NAN; n * d_out + 1]; // NaN: forward must overwrite
                got[n * d_out] = 123.0; // sentinel after the output
                quant_linear_forward(&mut got[..n * d_out], &x, w, b);
                assert_close(
                    &got[..n * d_out],
                    &want,
                    Tol::F32,
                    &format!("{fmt} fwd {n}x{d_in}->{d_out} bias={}", b.is_some()),
                );
                assert_eq!(got[n * d_out], 123.0, "sentinel overwritten");
            }
        });
    }
}

/// Backward vs matmul_backward (dA of x . W^T), and it accumulates into dx.
#[test]
fn backward_matches_matmul_spec_and_accumulates() {
    let mut rng = Rng::new(12);
    for (n, d_in, d_out) in SHAPES {
        let x = rand_f32(&mut rng, n * d_in, -1.0, 1.0);
        let dy = rand_f32(&mut rng, n * d_out, -1.0, 1.0);
        let dx0 = rand_f32(&mut rng, n * d_in, -1.0, 1.0);
        for_each_format(&mut rng, d_in, d_out, |w, fmt| {
            let wd = dense(w);
            let mut want = dx0.clone();
            matmul_backward(Some(&mut want), None, None, &dy, &x, &wd, MatmulDims::linear(n, d_out, d_in));
            let mut got = dx0.clone();
            quant_linear_backward(&mut got, &dy, w);
            // Tol::F32 as forward: d_out <= 257 terms; the +dx0 adds one rounding.
            assert_close(&got, &want, Tol::F32, &format!("{fmt} bwd {n}x{d_in}->{d_out}"));
        });
    }
}

/// Finite differences of L = <out, r> w.r.t. x. The op is linear in x, so the central difference
/// has no truncation error for any h; h = 0.5 keeps the f32 rounding of out (~6e-8 relative per
/// element, over <= 67 * 5 terms of size <= ~1) at ~1e-5 in the quotient: abs 1e-4, rel 1e-3.
#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng::new(13);
    for (n, d_in, d_out) in [(1, 1, 1), (3, 67, 5), (2, 13, 7)] {
        let x = rand_f32(&mut rng, n * d_in, -1.0, 1.0);
        let r = rand_f64(&mut rng, n * d_out, -1.0, 1.0);
        let r32 = to_f32(&r);
        for_each_format(&mut rng, d_in, d_out, |w, fmt| {
            let loss = |xs: &[f64]| {
                let mut out = vec![0.0f32; n * d_out];
                quant_linear_forward(&mut out, &to_f32(xs), w, None);
                dot(&to_f64(&out), &r)
            };
            let fd = finite_diff(&to_f64(&x), 0.5, loss);
            let mut dx = vec![0.0f32; n * d_in];
            quant_linear_backward(&mut dx, &r32, w);
            assert_close(&dx, &fd, Tol { abs: 1e-4, rel: 1e-3 }, &format!("{fmt} FD {n}x{d_in}->{d_out}"));
        });
    }
}

/// A weight of 300 x 1000 (several panels) with N = 200 (threads) still matches the spec.
#[test]
fn larger_nf4_layer() {
    let mut rng = Rng::new(14);
    let (n, d_in, d_out) = (200, 1000, 300);
    let w = randn_f32(&mut rng, d_out * d_in, 0.02);
    let nf4 = Nf4Matrix::quantize(&w, d_out, d_in, 64, true).unwrap();
    let wd = dense(&nf4);
    let x = rand_f32(&mut rng, n * d_in, -1.0, 1.0);
    let mut want = vec![0.0f32; n * d_out];
    matmul_forward(&mut want, &x, &wd, None, MatmulDims::linear(n, d_out, d_in), false);
    let mut got = vec![0.0f32; n * d_out];
    quant_linear_forward(&mut got, &x, &nf4, None);
    // 1000-term sums of size ~0.02: f32 GEMM error ~1e-6; NMSE limit 1e-10 ~ (1e-5 relative)^2
    let e = nmse(&got, &want);
    assert!(e < 1e-10, "nmse {e}");
}

/// Every GGUF block type as a frozen weight: forward and input-gradient against the matmul spec on
/// the decoded weight. Quantizable types use our quantizer on random data (d_in = 512: two
/// K-quant super-blocks); Q2_K and Q3_K (no quantizer) use the fixture's llama.cpp blocks.
#[test]
fn quant_linear_every_ggml_type() {
    use loraforge::io::gguf::GgufFile;
    use loraforge::quant::ggml::{GgmlMatrix, GgmlType};
    let mut rng = Rng::new(17);
    let (n, d_in, d_out) = (5, 512, 3);
    let mut mats: Vec<(String, GgmlMatrix)> = Vec::new();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let w = randn_f32(&mut rng, d_out * d_in, 0.05);
        mats.push((ty.name().to_string(), GgmlMatrix::quantize(ty, d_out, d_in, &w).unwrap()));
    }
    let f = GgufFile::open(fixtures_dir().join("quant/blocks.gguf")).unwrap();
    for name in ["synthetic.q2_k", "synthetic.q3_k"] {
        mats.push((name.to_string(), f.matrix(name).unwrap()));
    }
    for (name, m) in &mats {
        assert_eq!((m.rows(), m.cols()), (d_out, d_in), "{name}");
        let wd = dense(m);
        let x = randn_f32(&mut rng, n * d_in, 1.0);
        let d = MatmulDims::linear(n, d_out, d_in);
        let mut want = vec![0.0f32; n * d_out];
        matmul_forward(&mut want, &x, &wd, None, d, false);
        let mut got = vec![f32::NAN; n * d_out];
        quant_linear_forward(&mut got, &x, m, None);
        // f32 gemm vs f64-accumulated spec over K = 512 terms of size ~0.05: ~1e-6 observed.
        assert_close(&got, &want, Tol { abs: 1e-5, rel: 1e-4 }, &format!("{name} forward"));
        let dy = randn_f32(&mut rng, n * d_out, 1.0);
        let mut dx_want = vec![0.0f32; n * d_in];
        matmul_backward(Some(&mut dx_want), None, None, &dy, &x, &wd, d);
        let mut dx = vec![0.0f32; n * d_in];
        quant_linear_backward(&mut dx, &dy, m);
        assert_close(&dx, &dx_want, Tol { abs: 1e-5, rel: 1e-4 }, &format!("{name} backward"));
    }
}
