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
//!
//! The fast path (`matmul`, `matmul_backward_fast`, f32 only) hands each batch item to the `gemm`
//! crate (https://github.com/sarah-quinones/gemm: packed SIMD microkernels, threads through rayon).
//! gemm takes a row stride and a column stride per operand, so a transpose is only a swap of the two
//! strides: nothing is copied. It sums in f32 in a blocked order, so it differs from the f64 spec by
//! about sqrt(K) * eps * sum_p |A[i,p]| |B[p,j]| (the test measures and bounds this).

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

// ---- fast path (f32) --------------------------------------------------------------------------

// No plain-loop path for small problems: gemm has its own small-size kernels. Measured with
// `cargo bench --bench ops small` (benches/ops.rs keeps the loop as `small_loop`): gemm is 2-3x
// faster from 8x8x8 to 16x16x16 (NN and NT); below that a loop wins only for NN, by at most 0.2 us
// a call (4x4x4: 0.07 vs 0.29 us), which no caller here will notice.

/// Threads for gemm: all available cores, read once. gemm itself falls back to one thread when a
/// problem is too small to split (its `threading_threshold`).
fn parallelism() -> gemm::Parallelism {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let n = *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// (row stride, column stride) of op(X) for a row-major matrix X stored as (rows, cols), or as
/// (cols, rows) when `trans`. `rows`/`cols` are the logical (op(X)) dims.
fn strides(trans: bool, rows: usize, cols: usize) -> (isize, isize) {
    if trans {
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

/// The fastest CPU matmul (f32). Same contract as `matmul_forward`:
/// out[b, i, j] (+)= sum_p op(A)[b, i, p] * op(B)[b, p, j] + bias[j].
/// Panics (never UB) when a slice is shorter than the dims say.
pub fn matmul(
    out: &mut [f32],      // (batch, M, N)
    a: &[f32],            // per item (M, K), or (K, M) with trans_a; items a_stride apart
    b: &[f32],            // per item (K, N), or (N, K) with trans_b; items b_stride apart
    bias: Option<&[f32]>, // (N)
    d: MatmulDims,
    accumulate: bool,
) {
    let (m, n, k) = (d.m, d.n, d.k);
    assert!(out.len() >= d.batch * m * n, "matmul: out has {} elements, need {}", out.len(), d.batch * m * n);
    if d.batch == 0 || m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (d.batch - 1) * d.a_stride + m * k, "matmul: a too short for {d:?}");
    assert!(b.len() >= (d.batch - 1) * d.b_stride + k * n, "matmul: b too short for {d:?}");
    if let Some(bias) = bias {
        assert!(bias.len() >= n, "matmul: bias has {} elements, need {n}", bias.len());
    }
    let out = &mut out[..d.batch * m * n];

    // One weight shared by every item and A's items packed back to back: the batch is just more
    // rows, (batch*M, K) · (K, N), which gives gemm one large problem instead of `batch` small ones.
    if d.batch > 1 && d.b_stride == 0 && !d.trans_a && d.a_stride == m * k {
        let flat = MatmulDims { batch: 1, m: d.batch * m, a_stride: d.batch * m * k, ..d };
        return matmul(out, a, b, bias, flat, accumulate);
    }

    // Seed out with what gemm adds onto: the bias (on top of the old out when accumulating).
    let read_out = accumulate || bias.is_some();
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(n) {
            if accumulate {
                row.iter_mut().zip(bias).for_each(|(o, &c)| *o += c);
            } else {
                row.copy_from_slice(&bias[..n]);
            }
        }
    }
    if k == 0 {
        if !read_out {
            out.fill(0.0);
        }
        return;
    }

    let (a_rs, a_cs) = strides(d.trans_a, m, k);
    let (b_rs, b_cs) = strides(d.trans_b, k, n);
    for bt in 0..d.batch {
        let a_item = &a[bt * d.a_stride..bt * d.a_stride + m * k];
        let b_item = &b[bt * d.b_stride..bt * d.b_stride + k * n];
        let o_item = &mut out[bt * m * n..(bt + 1) * m * n];
        // SAFETY: every index gemm forms is i*rs + p*cs with i < rows and p < cols of the logical
        // matrix, and the strides above map exactly those onto the m*k, k*n and m*n elements of the
        // item slices, whose lengths were checked. out does not alias a or b (&mut vs &).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                o_item.as_mut_ptr(),
                1,          // dst column stride
                n as isize, // dst row stride
                read_out,   // false: dst = A·B (old values, even NaN, are never read)
                a_item.as_ptr(),
                a_cs,
                a_rs,
                b_item.as_ptr(),
                b_cs,
                b_rs,
                1.0, // alpha: dst = alpha*dst + beta*A·B
                1.0, // beta
                false,
                false,
                false,
                parallelism(),
            );
        }
    }
}

/// Backward of `matmul` (f32), same contract as `matmul_backward` (every output accumulates, +=),
/// built from `matmul` calls with the transposes folded into the dims:
///   dA (M,K) = dC · op(B)^T            or, stored (K,M) with trans_a:  op(B) · dC^T
///   dB (K,N) = op(A)^T · dC            or, stored (N,K) with trans_b:  dC^T · op(A)
///   dbias    = sum over batch and rows of dC, in the spec's order (bit-identical to the spec)
/// A broadcast operand (stride 0) receives the sum over the batch.
pub fn matmul_backward_fast(
    da: Option<&mut [f32]>,    // like A
    db: Option<&mut [f32]>,    // like B
    dbias: Option<&mut [f32]>, // (N)
    dc: &[f32],                // (batch, M, N)
    a: &[f32],                 // like A in the forward
    b: &[f32],                 // like B in the forward
    d: MatmulDims,
) {
    let (m, n, k) = (d.m, d.n, d.k);
    assert!(dc.len() >= d.batch * m * n, "matmul_backward_fast: dc too short for {d:?}");
    let one = |m, n, k, trans_a, trans_b| MatmulDims { batch: 1, m, n, k, trans_a, trans_b, a_stride: 0, b_stride: 0 };
    if let Some(da) = da {
        // A stored items back to back and B shared: all items at once, (batch*M, N) · op(B)^T.
        if d.batch > 1 && d.b_stride == 0 && !d.trans_a && d.a_stride == m * k {
            let dims = one(d.batch * m, k, n, false, !d.trans_b);
            matmul(&mut da[..d.batch * m * k], dc, b, None, dims, true);
        } else {
            for bt in 0..d.batch {
                let dc_b = &dc[bt * m * n..(bt + 1) * m * n];
                let b_b = &b[bt * d.b_stride..];
                let da_b = &mut da[bt * d.a_stride..bt * d.a_stride + m * k];
                if d.trans_a {
                    matmul(da_b, b_b, dc_b, None, one(k, m, n, d.trans_b, true), true);
                } else {
                    matmul(da_b, dc_b, b_b, None, one(m, k, n, false, !d.trans_b), true);
                }
            }
        }
    }
    if let Some(db) = db {
        // B shared and A's items back to back: dB sums over the batch, which is one product with
        // K' = batch*M: op(A_flat)^T · dC_flat.
        if d.batch > 1 && d.b_stride == 0 && !d.trans_a && d.a_stride == m * k {
            let km = d.batch * m;
            if d.trans_b {
                matmul(&mut db[..n * k], dc, a, None, one(n, k, km, true, false), true);
            } else {
                matmul(&mut db[..k * n], a, dc, None, one(k, n, km, true, false), true);
            }
        } else {
            for bt in 0..d.batch {
                let dc_b = &dc[bt * m * n..(bt + 1) * m * n];
                let a_b = &a[bt * d.a_stride..];
                let db_b = &mut db[bt * d.b_stride..bt * d.b_stride + k * n];
                if d.trans_b {
                    matmul(db_b, dc_b, a_b, None, one(n, k, m, true, d.trans_a), true);
                } else {
                    matmul(db_b, a_b, dc_b, None, one(k, n, m, !d.trans_a, false), true);
                }
            }
        }
    }
    if let Some(dbias) = dbias {
        let dbias = &mut dbias[..n];
        for row in dc[..d.batch * m * n].chunks_exact(n.max(1)) {
            dbias.iter_mut().zip(row).for_each(|(g, &r)| *g += r);
        }
    }
}
