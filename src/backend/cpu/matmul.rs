//! matmul: out = op(A) · op(B) (+ bias), batched. The CPU spec, plus `matmul`, the fastest CPU path
//! (which callers use), tested against the spec in tests/ops/matmul.rs.
//! Spec: this file   Test: tests/ops/matmul.rs   Bench: benches/ops.rs (group `matmul`)
//!
//! Layout (row-major, per batch item):
//!   A: (M, K), or (K, M) when `trans_a`
//!   B: (K, N), or (N, K) when `trans_b`   (a linear layer's weight (d_out, d_in) is B with trans_b)
//!   out: (M, N)
//! `a_stride` / `b_stride` are elements between batch items; 0 broadcasts one matrix to every item.
//! Contract easy to miss: `accumulate = true` means out += result (used by backward), else out = result.

use super::real::Real;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub a_stride: usize,
    pub b_stride: usize,
}

impl MatmulDims {
    /// Plain (M,K)·(K,N), no batch.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatmulDims { batch: 1, m, n, k, trans_a: false, trans_b: false, a_stride: m * k, b_stride: k * n }
    }
    /// x (M, K) · W^T where W is (N, K): a linear layer.
    pub fn linear(m: usize, n: usize, k: usize) -> Self {
        MatmulDims { trans_b: true, ..Self::new(m, n, k) }
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// The spec: out[b, i, j] (+)= sum_p A[b, i, p] * B[b, p, j] + bias[j], accumulated in f64.
pub fn matmul_forward<T: Real>(out: &mut [T], a: &[T], b: &[T], bias: Option<&[T]>, d: MatmulDims, accumulate: bool) {
    let (m, n, k) = (d.m, d.n, d.k);
    for bt in 0..d.batch {
        let a0 = bt * d.a_stride;
        let b0 = bt * d.b_stride;
        let o0 = bt * m * n;
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let av = if d.trans_a { a[a0 + p * m + i] } else { a[a0 + i * k + p] };
                    let bv = if d.trans_b { b[b0 + j * k + p] } else { b[b0 + p * n + j] };
                    acc += av.to_f64() * bv.to_f64();
                }
                if let Some(bias) = bias {
                    acc += bias[j].to_f64();
                }
                let o = &mut out[o0 + i * n + j];
                *o = if accumulate { T::from_f64(o.to_f64() + acc) } else { T::from_f64(acc) };
            }
        }
    }
}

/// Backward of `matmul_forward` (all outputs accumulate, +=):
///   dA = dC · op(B)^T (laid out like A), dB = op(A)^T · dC (laid out like B), dbias = sum_rows dC.
/// When B is broadcast (b_stride == 0), dB sums over the batch.
pub fn matmul_backward<T: Real>(
    da: Option<&mut [T]>,
    db: Option<&mut [T]>,
    dbias: Option<&mut [T]>,
    dc: &[T],
    a: &[T],
    b: &[T],
    d: MatmulDims,
) {
    let (m, n, k) = (d.m, d.n, d.k);
    if let Some(da) = da {
        for bt in 0..d.batch {
            let b0 = bt * d.b_stride;
            let a0 = bt * d.a_stride;
            for i in 0..m {
                for p in 0..k {
                    let mut acc = 0.0f64;
                    for j in 0..n {
                        let bv = if d.trans_b { b[b0 + j * k + p] } else { b[b0 + p * n + j] };
                        acc += dc[bt * m * n + i * n + j].to_f64() * bv.to_f64();
                    }
                    let idx = if d.trans_a { a0 + p * m + i } else { a0 + i * k + p };
                    da[idx] = T::from_f64(da[idx].to_f64() + acc);
                }
            }
        }
    }
    if let Some(db) = db {
        for bt in 0..d.batch {
            let a0 = bt * d.a_stride;
            let b0 = bt * d.b_stride;
            for p in 0..k {
                for j in 0..n {
                    let mut acc = 0.0f64;
                    for i in 0..m {
                        let av = if d.trans_a { a[a0 + p * m + i] } else { a[a0 + i * k + p] };
                        acc += av.to_f64() * dc[bt * m * n + i * n + j].to_f64();
                    }
                    let idx = if d.trans_b { b0 + j * k + p } else { b0 + p * n + j };
                    db[idx] = T::from_f64(db[idx].to_f64() + acc);
                }
            }
        }
    }
    if let Some(dbias) = dbias {
        for bt in 0..d.batch {
            for i in 0..m {
                for j in 0..n {
                    dbias[j] += dc[bt * m * n + i * n + j];
                }
            }
        }
    }
}

/// The fastest CPU matmul (f32). Same contract as `matmul_forward`.
pub fn matmul(out: &mut [f32], a: &[f32], b: &[f32], bias: Option<&[f32]>, d: MatmulDims, accumulate: bool) {
    matmul_forward(out, a, b, bias, d, accumulate)
}
