//! matmul tests: the spec backward against central finite differences (f64), then the fast f32
//! path (`matmul`, `matmul_backward_fast`, gemm crate) against the spec on shapes chosen to break it.
//! Spec: src/backend/cpu/matmul.rs   Bench: benches/ops.rs (`matmul`)
//! Dims legend: M rows of op(A) and out, N columns of op(B) and out, K the reduced dim.

use crate::common::{assert_close, dot, finite_diff, rand_f32, rand_f64, Tol};
use loraforge::backend::cpu::matmul::{matmul, matmul_backward, matmul_backward_fast, matmul_forward, MatmulDims};
use loraforge::rng::Rng;

/// Guard words written after every output buffer; the test asserts they are untouched (ggml sentinels).
const GUARD: usize = 8;
const SENTINEL: f32 = -7777.25;

/// Every (trans_a, trans_b) combination.
const TRANS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// Elements a strided operand spans: the last item starts at (batch-1)*stride.
fn span(batch: usize, stride: usize, item: usize) -> usize {
    (batch - 1) * stride + item
}

// ---- spec backward vs finite differences ----------------------------------------------------------

/// L = dot(out, r) with out = out0 + matmul(a, b) + bias (accumulate = true), all in f64. The spec
/// backward fed dout = r must add dL/da, dL/db, dL/dbias onto pre-filled gradients (+= contract).
fn fd_case(d: MatmulDims, seed: u64) {
    let mut rng = Rng::new(seed);
    let (m, n, k) = (d.m, d.n, d.k);
    let a = rand_f64(&mut rng, span(d.batch, d.a_stride, m * k), -1.0, 1.0); // like A
    let b = rand_f64(&mut rng, span(d.batch, d.b_stride, k * n), -1.0, 1.0); // like B
    let bias = rand_f64(&mut rng, n, -1.0, 1.0); // (N)
    let out0 = rand_f64(&mut rng, d.batch * m * n, -1.0, 1.0); // (batch, M, N)
    let r = rand_f64(&mut rng, d.batch * m * n, -1.0, 1.0); // (batch, M, N) = dL/dout

    let loss = |a: &[f64], b: &[f64], bias: &[f64]| {
        let mut out = out0.clone();
        matmul_forward(&mut out, a, b, Some(bias), d, true);
        dot(&out, &r)
    };
    let fd_a = finite_diff(&a, 1e-6, |x| loss(x, &b, &bias));
    let fd_b = finite_diff(&b, 1e-6, |x| loss(&a, x, &bias));
    let fd_bias = finite_diff(&bias, 1e-6, |x| loss(&a, &b, x));

    // Start the gradients from random values: backward must add, not overwrite.
    let (ga0, gb0, gbias0) = (
        rand_f64(&mut rng, a.len(), -1.0, 1.0),
        rand_f64(&mut rng, b.len(), -1.0, 1.0),
        rand_f64(&mut rng, n, -1.0, 1.0),
    );
    let (mut ga, mut gb, mut gbias) = (ga0.clone(), gb0.clone(), gbias0.clone());
    matmul_backward(Some(&mut ga), Some(&mut gb), Some(&mut gbias), &r, &a, &b, d);
    let sub = |g: &[f64], g0: &[f64]| g.iter().zip(g0).map(|(x, y)| x - y).collect::<Vec<f64>>();

    // Padding between strided items (a_stride > M*K) has zero gradient, and FD gives exactly 0 there.
    assert_close(&sub(&ga, &ga0), &fd_a, Tol::FD64, &format!("dA {d:?}"));
    assert_close(&sub(&gb, &gb0), &fd_b, Tol::FD64, &format!("dB {d:?}"));
    assert_close(&sub(&gbias, &gbias0), &fd_bias, Tol::FD64, &format!("dbias {d:?}"));
}

#[test]
fn matmul_backward_spec_vs_finite_differences() {
    // Small primes so every index mixes; batch 2 with B broadcast (dB sums over the batch), A
    // broadcast (dA sums), and padded item strides (gaps must get no gradient).
    let (m, n, k) = (3, 5, 4);
    for (i, &(trans_a, trans_b)) in TRANS.iter().enumerate() {
        let base = MatmulDims { batch: 2, m, n, k, trans_a, trans_b, a_stride: m * k, b_stride: 0 };
        fd_case(base, 10 + i as u64);
        fd_case(MatmulDims { a_stride: 0, b_stride: k * n, ..base }, 20 + i as u64);
        fd_case(MatmulDims { a_stride: m * k + 3, b_stride: k * n + 2, ..base }, 30 + i as u64);
    }
}

// ---- fast path vs spec ---------------------------------------------------------------------------

/// Tolerance of the f32 fast path against the f64 spec, per element:
///   |got - want| <= C * eps_f32 * sqrt(L + 2) * S,   S = sum of |terms| (|a||b| products, |bias|,
/// |old out|), L = number of terms summed. Rounding-error analysis bounds a length-L f32 sum by
/// L * eps * S in the worst case; errors of independent roundings add like a random walk, so
/// sqrt(L) * eps * S is the typical size (Higham, "Accuracy and Stability of Numerical Algorithms",
/// sec. 3.1 and 4.2). The largest ratio err / (eps * sqrt(L + 2) * S) measured over every case below
/// was 0.53 (printed by `cargo test --test ops matmul -- --nocapture`); C = 2 leaves ~4x room
/// without admitting a wrong term (a single misplaced product is ~|a||b| ~ S / L, far above this).
const C_TOL: f64 = 2.0;

/// Checks got (f32, with GUARD sentinels after `want.len()` values) against the f64 spec `want`,
/// with the bound above (`bound[i]` = S for element i). Returns the largest measured ratio.
#[track_caller]
fn check_fast(got: &[f32], want: &[f64], bound: &[f64], terms: usize, what: &str) -> f64 {
    assert_eq!(got.len(), want.len() + GUARD, "{what}: buffer length");
    for (i, g) in got[want.len()..].iter().enumerate() {
        assert_eq!(g.to_bits(), SENTINEL.to_bits(), "{what}: guard word {i} after the output was overwritten");
    }
    let scale = f32::EPSILON as f64 * ((terms + 2) as f64).sqrt();
    let mut worst = 0.0f64;
    for i in 0..want.len() {
        let err = (got[i] as f64 - want[i]).abs();
        let lim = C_TOL * scale * bound[i];
        assert!(err <= lim, "{what}: element {i}: got {:e} want {:e}, err {err:e} > {lim:e}", got[i], want[i]);
        if bound[i] > 0.0 {
            worst = worst.max(err / (scale * bound[i]));
        }
    }
    worst
}

fn with_guard(v: &[f32]) -> Vec<f32> {
    let mut g = v.to_vec();
    g.extend_from_slice(&[SENTINEL; GUARD]);
    g
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn abs64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| (x as f64).abs()).collect()
}

/// One forward + backward comparison; returns the worst measured ratio (see `C_TOL`).
fn fast_case(d: MatmulDims, bias_on: bool, accumulate: bool, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let (m, n, k) = (d.m, d.n, d.k);
    let what = format!("{d:?} bias={bias_on} acc={accumulate}");
    let a = rand_f32(&mut rng, span(d.batch, d.a_stride, m * k), -1.0, 1.0); // like A
    let b = rand_f32(&mut rng, span(d.batch, d.b_stride, k * n), -1.0, 1.0); // like B
    let bias = rand_f32(&mut rng, n, -1.0, 1.0); // (N)
    let bias = bias_on.then_some(&bias[..]);
    // Old out: random when accumulating; NaN otherwise, which must never leak into out = result.
    let out0: Vec<f32> =
        if accumulate { rand_f32(&mut rng, d.batch * m * n, -1.0, 1.0) } else { vec![f32::NAN; d.batch * m * n] };

    // forward: want = f64 spec on the same f32 values; bound = the spec on |values|.
    let mut got = with_guard(&out0);
    matmul(&mut got, &a, &b, bias, d, accumulate);
    let mut want = if accumulate { f64s(&out0) } else { vec![0.0; out0.len()] };
    let bias64 = bias.map(f64s);
    matmul_forward(&mut want, &f64s(&a), &f64s(&b), bias64.as_deref(), d, accumulate);
    let mut bound = if accumulate { abs64(&out0) } else { vec![0.0; out0.len()] };
    matmul_forward(&mut bound, &abs64(&a), &abs64(&b), bias.map(abs64).as_deref(), d, accumulate);
    let mut worst = check_fast(&got, &want, &bound, k, &format!("forward {what}"));

    // backward: gradients start random (+= contract), dC random.
    let dc = rand_f32(&mut rng, d.batch * m * n, -1.0, 1.0); // (batch, M, N)
    let ga0 = rand_f32(&mut rng, a.len(), -1.0, 1.0);
    let gb0 = rand_f32(&mut rng, b.len(), -1.0, 1.0);
    let gbias0 = rand_f32(&mut rng, n, -1.0, 1.0);
    let (mut ga, mut gb, mut gbias) = (with_guard(&ga0), with_guard(&gb0), with_guard(&gbias0));
    matmul_backward_fast(Some(&mut ga[..a.len()]), Some(&mut gb[..b.len()]), Some(&mut gbias[..n]), &dc, &a, &b, d);
    let (mut wa, mut wb) = (f64s(&ga0), f64s(&gb0));
    matmul_backward(Some(&mut wa), Some(&mut wb), None, &f64s(&dc), &f64s(&a), &f64s(&b), d);
    let (mut ba, mut bb) = (abs64(&ga0), abs64(&gb0));
    matmul_backward(Some(&mut ba), Some(&mut bb), None, &abs64(&dc), &abs64(&a), &abs64(&b), d);
    // Terms per gradient element: dA sums N products per item (times batch when A is broadcast),
    // dB sums M per item (times batch when B is broadcast).
    let items = |stride: usize| if stride == 0 { d.batch } else { 1 };
    worst = worst.max(check_fast(&ga, &wa, &ba, n * items(d.a_stride), &format!("dA {what}")));
    worst = worst.max(check_fast(&gb, &wb, &bb, m * items(d.b_stride), &format!("dB {what}")));

    // dbias adds rows in the spec's own order, in f32: it must be bit-identical to the f32 spec.
    let mut wbias = gbias0.clone();
    matmul_backward::<f32>(None, None, Some(&mut wbias), &dc, &a, &b, d);
    wbias.extend_from_slice(&[SENTINEL; GUARD]);
    assert_close(&gbias, &wbias, Tol::EXACT, &format!("dbias {what}"));
    worst
}

/// Runs every transpose combination, with and without bias and accumulate, on one shape.
fn fast_shape(batch: usize, m: usize, n: usize, k: usize, stride: impl Fn(usize, usize) -> (usize, usize)) -> f64 {
    let mut worst = 0.0f64;
    for (t, &(trans_a, trans_b)) in TRANS.iter().enumerate() {
        let (a_stride, b_stride) = stride(m * k, k * n);
        let d = MatmulDims { batch, m, n, k, trans_a, trans_b, a_stride, b_stride };
        for (bias_on, accumulate) in [(false, false), (true, false), (false, true), (true, true)] {
            let seed = (batch * 1_000_003 + m * 10_007 + n * 101 + k) as u64 * 16 + t as u64 * 4;
            worst = worst.max(fast_case(d, bias_on, accumulate, seed + bias_on as u64 * 2 + accumulate as u64));
        }
    }
    worst
}

fn packed(ak: usize, bk: usize) -> (usize, usize) {
    (ak, bk)
}

#[test]
fn matmul_fast_vs_spec_single() {
    let mut worst = 0.0f64;
    // 1x1x1; primes; vectors (M = 1, N = 1, K = 1); a reduction of length 0 (out = bias);
    // 16x16x16 and one below (gemm's register tiles are multiples of 8/16); 65x257x129 is one past
    // gemm's block sizes and above its threading threshold (48*48*256), so it runs threaded.
    let shapes = [
        (1, 1, 1),
        (7, 13, 17),
        (1, 257, 129),
        (129, 1, 65),
        (33, 31, 1),
        (4, 5, 0),
        (16, 16, 15),
        (16, 16, 16),
        (65, 257, 129),
    ];
    for (m, n, k) in shapes {
        worst = worst.max(fast_shape(1, m, n, k, packed));
    }
    println!("matmul fast vs spec (single): worst err / (eps sqrt(L+2) S) = {worst:.3}");
}

#[test]
fn matmul_fast_vs_spec_batched() {
    let mut worst = 0.0f64;
    for (m, n, k) in [(1, 1, 1), (7, 13, 17), (33, 65, 31)] {
        // Items packed back to back; B broadcast (the flattened path when !trans_a); A broadcast;
        // padded item strides (gaps must stay untouched: compared with the spec, which leaves them).
        worst = worst.max(fast_shape(3, m, n, k, packed));
        worst = worst.max(fast_shape(3, m, n, k, |ak, _| (ak, 0)));
        worst = worst.max(fast_shape(3, m, n, k, |_, bk| (0, bk)));
        worst = worst.max(fast_shape(3, m, n, k, |ak, bk| (ak + 5, bk + 3)));
    }
    println!("matmul fast vs spec (batched): worst err / (eps sqrt(L+2) S) = {worst:.3}");
}

#[test]
fn matmul_fast_large_k_threaded() {
    // A long reduction through gemm's threaded path (K = 1031 > gemm's K blocking), checked on one
    // layout per transpose; guards the tolerance scaling with sqrt(K).
    let mut worst = 0.0f64;
    for (t, &(trans_a, trans_b)) in TRANS.iter().enumerate() {
        let d = MatmulDims { trans_a, trans_b, ..MatmulDims::new(37, 97, 1031) };
        worst = worst.max(fast_case(d, true, true, 500 + t as u64));
    }
    println!("matmul fast vs spec (K=1031): worst err / (eps sqrt(L+2) S) = {worst:.3}");
}
