//! PiSSA initialisation of a LoRA adapter (Meng et al. 2024, arXiv:2404.02948; PEFT
//! `init_lora_weights="pissa_niter_N"`, LLaMA-Factory `pissa_init` / `pissa_iter`): the adapter
//! starts as the top-r singular directions of the base weight and the base keeps the residual, so
//! the model is unchanged at step 0 but training moves the principal components.
//! Test: tests/lora.rs (`pissa_*`).
//!
//! With W ≈ U S Vᵀ (rank r, randomized SVD with `niter` power iterations as torch.svd_lowrank)
//! and s the LoRA scale: A = diag(√(S/s)) Vᵀ (r, d_in), B = U diag(√(S/s)) (d_out, r), and the
//! residual base W_res = W − s·B·A = W − U S Vᵀ. Saving for the ORIGINAL base (what users load)
//! needs the initial A₀, B₀: ΔW = s(B A − B₀ A₀) = s'[B, −B₀][A; A₀] with rank 2r and the same
//! scale (alpha doubled, or ×√2 for rsLoRA), which is PEFT's `path_initial_model_for_weight_conversion`.
//!
//! Contract easy to miss: the randomized SVD is seeded, so loading the same base with the same
//! seed gives the same residual (exact resume relies on it).

use crate::backend::cpu::matmul::{matmul, MatmulDims};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The adapter's initial factors and the residual base weight.
pub struct PissaInit {
    /// (r, d_in)
    pub a: Vec<f32>,
    /// (d_out, r)
    pub b: Vec<f32>,
    /// (d_out, d_in): W − U_r S_r V_rᵀ
    pub residual: Vec<f32>,
    /// The r singular values found, largest first.
    pub singular_values: Vec<f64>,
}

/// Orthonormalizes the q columns of `y` (rows, q), row-major, in place (modified Gram–Schmidt,
/// twice for stability). A column that vanishes is replaced by zeros.
fn orthonormalize(y: &mut [f64], rows: usize, q: usize) {
    for _pass in 0..2 {
        for j in 0..q {
            for i in 0..j {
                let dot: f64 = (0..rows).map(|r| y[r * q + i] * y[r * q + j]).sum();
                for r in 0..rows {
                    y[r * q + j] -= dot * y[r * q + i];
                }
            }
            let norm = (0..rows).map(|r| y[r * q + j] * y[r * q + j]).sum::<f64>().sqrt();
            let inv = if norm > 1e-300 { 1.0 / norm } else { 0.0 };
            for r in 0..rows {
                y[r * q + j] *= inv;
            }
        }
    }
}

/// Eigen-decomposition of a symmetric (n, n) matrix by cyclic Jacobi rotations: (values,
/// vectors as columns of a row-major (n, n)), sorted by decreasing value.
fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let vals = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vecs = vec![0.0; n * n];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vecs[k * n + new] = v[k * n + old];
        }
    }
    (vals, vecs)
}

/// f32 product through the fast GEMM: out (m, n) = op(a) · op(b).
fn mm(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    let d = MatmulDims { trans_a, trans_b, ..MatmulDims::new(m, n, k) };
    matmul(&mut out, a, b, None, d, false);
    out
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Randomized truncated SVD of `w` (m, n): (U (m, r), S (r), V (n, r)), row-major, with `niter`
/// subspace iterations and 8 columns of oversampling (Halko, Martinsson & Tropp 2011, alg. 4.4).
pub fn svd_lowrank(w: &[f32], m: usize, n: usize, r: usize, niter: usize, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let q = (r + 8).min(m).min(n);
    let mut rng = Rng::new(seed);
    let mut omega = vec![0.0f32; n * q];
    rng.fill_normal(&mut omega, 1.0);
    let mut y: Vec<f64> = mm(w, &omega, m, q, n, false, false).iter().map(|&x| x as f64).collect(); // (m, q)
    orthonormalize(&mut y, m, q);
    for _ in 0..niter {
        let mut z: Vec<f64> = mm(w, &to_f32(&y), n, q, m, true, false).iter().map(|&x| x as f64).collect(); // (n, q)
        orthonormalize(&mut z, n, q);
        y = mm(w, &to_f32(&z), m, q, n, false, false).iter().map(|&x| x as f64).collect();
        orthonormalize(&mut y, m, q);
    }
    // Bm = Qᵀ W (q, n); Bm Bmᵀ = Ũ Σ² Ũᵀ; V = Bmᵀ Ũ Σ⁻¹; U = Q Ũ.
    let bm: Vec<f64> = mm(&to_f32(&y), w, q, n, m, true, false).iter().map(|&x| x as f64).collect();
    let mut g = vec![0.0f64; q * q];
    for i in 0..q {
        for j in 0..=i {
            let s: f64 = (0..n).map(|k| bm[i * n + k] * bm[j * n + k]).sum();
            g[i * q + j] = s;
            g[j * q + i] = s;
        }
    }
    let (vals, ut) = sym_eigen(&g, q);
    let s: Vec<f64> = vals.iter().take(r).map(|&x| x.max(0.0).sqrt()).collect();
    let mut u = vec![0.0f64; m * r];
    for i in 0..m {
        for c in 0..r {
            u[i * r + c] = (0..q).map(|k| y[i * q + k] * ut[k * q + c]).sum();
        }
    }
    let mut v = vec![0.0f64; n * r];
    for c in 0..r {
        let inv = if s[c] > 1e-300 { 1.0 / s[c] } else { 0.0 };
        for j in 0..n {
            v[j * r + c] = inv * (0..q).map(|k| bm[k * n + j] * ut[k * q + c]).sum::<f64>();
        }
    }
    (u, s, v)
}

/// PiSSA factors and residual of `w` (d_out, d_in) for rank `r` and LoRA scale `scale`.
pub fn pissa_init(
    w: &[f32],
    d_out: usize,
    d_in: usize,
    r: usize,
    scale: f32,
    niter: usize,
    seed: u64,
) -> Result<PissaInit> {
    if r == 0
        || r > d_out.min(d_in)
        || w.len() != d_out * d_in
        || scale.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        return Err(Error::msg(format!(
            "pissa_init: rank {r} for a ({d_out}, {d_in}) weight with scale {scale} is not possible"
        )));
    }
    let (u, s, v) = svd_lowrank(w, d_out, d_in, r, niter, seed);
    let mut a = vec![0.0f32; r * d_in];
    let mut b = vec![0.0f32; d_out * r];
    for c in 0..r {
        let root = (s[c] / scale as f64).sqrt();
        for j in 0..d_in {
            a[c * d_in + j] = (root * v[j * r + c]) as f32;
        }
        for i in 0..d_out {
            b[i * r + c] = (root * u[i * r + c]) as f32;
        }
    }
    // residual = W − s·B·A, computed from the f32 factors actually stored so W = W_res + s·B·A
    // holds to rounding.
    let ba = mm(&b, &a, d_out, d_in, r, false, false);
    let residual = w.iter().zip(&ba).map(|(&x, &y)| x - scale * y).collect();
    Ok(PissaInit { a, b, residual, singular_values: s })
}
