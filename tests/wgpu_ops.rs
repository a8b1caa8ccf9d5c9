//! Every wgpu kernel against the CPU backend (whose paths are tested against the specs in
//! tests/ops) or the f64 spec itself (matmul), on random data with shapes chosen to break it:
//! 1, primes, workgroup size ± 1, rows longer than a workgroup, partial tiles.
//! Runs on lavapipe in CI: `LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1 cargo test --test wgpu_ops`.
//! With no adapter each test prints SKIP and returns (the only allowed skip).
#![cfg(feature = "wgpu")]

mod common;

use common::*;
use loraforge::backend::cpu::attention::AttnParams;
use loraforge::backend::cpu::matmul::{matmul_forward, MatmulDims};
use loraforge::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
use loraforge::backend::wgpu::{WgpuBackend, WgpuOptions};
use loraforge::backend::{AdamWParams, Backend, CpuBackend};
use loraforge::quant::F32Matrix;
use loraforge::rng::Rng;
use std::sync::{Arc, OnceLock};

/// One device for the whole test binary (opening one is slow, and the backend is Sync).
fn gpu() -> Option<&'static WgpuBackend> {
    static G: OnceLock<Option<WgpuBackend>> = OnceLock::new();
    G.get_or_init(|| match WgpuBackend::new() {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    })
    .as_ref()
}

/// The default device and, when it uses subgroup operations, a second one opened without them (the
/// build an adapter without SUBGROUP gets): the tests of the reducing kernels (norms, cross-entropy,
/// gemv, grad norm) run on both.
fn gpus() -> Vec<&'static WgpuBackend> {
    static PLAIN: OnceLock<WgpuBackend> = OnceLock::new();
    let Some(g) = gpu() else { return Vec::new() };
    let mut v = vec![g];
    if g.uses_subgroups() {
        v.push(PLAIN.get_or_init(|| {
            let p = WgpuBackend::with_options(WgpuOptions { subgroups: false, ..Default::default() }).unwrap();
            assert!(!p.uses_subgroups());
            p
        }));
    }
    v
}

macro_rules! gpus_or_skip {
    () => {{
        let v = gpus();
        if v.is_empty() {
            println!("SKIP: no wgpu adapter (set LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1)");
            return;
        }
        for g in &v {
            println!("on {} (subgroups: {})", g.adapter_name(), g.uses_subgroups());
        }
        v
    }};
}

macro_rules! gpu_or_skip {
    () => {
        match gpu() {
            Some(g) => g,
            None => {
                println!("SKIP: no wgpu adapter (set LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1)");
                return;
            }
        }
    };
}

fn up(g: &WgpuBackend, v: &[f32]) -> <WgpuBackend as Backend>::Storage {
    g.upload(v).unwrap()
}
fn down(g: &WgpuBackend, s: &<WgpuBackend as Backend>::Storage) -> Vec<f32> {
    g.download(s).unwrap()
}
fn cdown(s: &<CpuBackend as Backend>::Storage) -> Vec<f32> {
    s.as_slice().to_vec()
}

/// Elementwise ops do one f32 operation per element, as the CPU does: exact.
#[test]
fn elementwise_exact() {
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(1);
    for &n in &[1usize, 255, 256, 257, 4099] {
        let a = rand_f32(&mut rng, n, -2.0, 2.0);
        let b = rand_f32(&mut rng, n, -2.0, 2.0);
        let (ga, gb, ca, cb) = (up(g, &a), up(g, &b), c.upload(&a).unwrap(), c.upload(&b).unwrap());
        assert_close(&down(g, &g.add(&ga, &gb).unwrap()), &cdown(&c.add(&ca, &cb).unwrap()), Tol::EXACT, "add");
        assert_close(&down(g, &g.mul(&ga, &gb).unwrap()), &cdown(&c.mul(&ca, &cb).unwrap()), Tol::EXACT, "mul");
        assert_close(&down(g, &g.scale(&ga, 0.37).unwrap()), &cdown(&c.scale(&ca, 0.37).unwrap()), Tol::EXACT, "scale");
        let mut gd = up(g, &a);
        let mut cd = c.upload(&a).unwrap();
        g.add_assign(&mut gd, &gb).unwrap();
        c.add_assign(&mut cd, &cb).unwrap();
        g.scale_in_place(&mut gd, -1.5).unwrap();
        c.scale_in_place(&mut cd, -1.5).unwrap();
        assert_close(&down(g, &gd), &cdown(&cd), Tol::EXACT, "add_assign + scale_in_place");
        let k = a[n / 2];
        g.scale_by_in_place(&mut gd, &up(g, &[k])).unwrap();
        c.scale_by_in_place(&mut cd, &c.upload(&[k]).unwrap()).unwrap();
        assert_close(&down(g, &gd), &cdown(&cd), Tol::EXACT, "scale_by_in_place");
        assert!(g.scale_by_in_place(&mut gd, &up(g, &[1.0, 2.0])).is_err(), "a two-element scale must be an Error");
        assert!(g.add(&ga, &up(g, &[1.0])).is_err() || n == 1, "length mismatch must be an Error");
    }
    for &(rows, cols) in &[(1usize, 1usize), (3, 257), (300, 7)] {
        let x = rand_f32(&mut rng, rows * cols, -1.0, 1.0);
        let v = rand_f32(&mut rng, cols, -1.0, 1.0);
        let dy = rand_f32(&mut rng, rows * cols, -1.0, 1.0);
        let got = down(g, &g.mul_rows(&up(g, &x), &up(g, &v), rows, cols).unwrap());
        let want = cdown(&c.mul_rows(&c.upload(&x).unwrap(), &c.upload(&v).unwrap(), rows, cols).unwrap());
        assert_close(&got, &want, Tol::EXACT, "mul_rows");
        let got = down(g, &g.mul_rows_backward_v(&up(g, &dy), &up(g, &x), rows, cols).unwrap());
        let want = cdown(&c.mul_rows_backward_v(&c.upload(&dy).unwrap(), &c.upload(&x).unwrap(), rows, cols).unwrap());
        // f32 sum over `rows` terms of size <= 1 vs the f64 sum: error <= rows * eps = 300 * 6e-8.
        assert_close(&got, &want, Tol { abs: 2e-5, rel: 1e-5 }, "mul_rows_backward_v");
    }
}

fn spec_matmul(a: &[f32], b: &[f32], bias: Option<&[f32]>, d: MatmulDims) -> Vec<f32> {
    let mut out = vec![0.0f64; d.batch * d.m * d.n];
    let bias64 = bias.map(to_f64);
    matmul_forward(&mut out, &to_f64(a), &to_f64(b), bias64.as_deref(), d, false);
    to_f32(&out)
}

/// f32 accumulation over K products of |a|,|b| <= 1: error ~ sqrt(K) eps sum|a b| <= 1e-5 for
/// K <= 131; 1e-4 abs leaves room for the worst case (K eps sum|ab| ~ 2.6e-4 is never reached).
const MATMUL_TOL: Tol = Tol { abs: 1e-4, rel: 1e-4 };

/// `LORAFORGE_TEST_REAL_SIZES=1` adds training-sized cases (Llama-3.2-1B and Gemma 3 shapes) to the
/// matmul and attention tests, for a real GPU (`.ci/gpu-kit`'s run.sh sets it): on lavapipe they
/// would take many minutes.
fn real_sizes() -> bool {
    std::env::var("LORAFORGE_TEST_REAL_SIZES").is_ok_and(|v| v == "1")
}

/// MATMUL_TOL's reasoning at large K: the random-walk error sqrt(K) eps K/4 is 1.4e-3 at K = 2048,
/// under 1e-6 K.
fn real_matmul_tol(k: usize) -> Tol {
    Tol { abs: 1e-6 * k as f64, rel: 1e-4 }
}

/// Linear-layer products at Llama-3.2-1B widths (x · Wᵀ over 512 tokens), run when `real_sizes`.
fn check_real_matmuls(g: &WgpuBackend, rng: &mut Rng, round: impl Fn(Vec<f32>) -> Vec<f32>) {
    if !real_sizes() {
        return;
    }
    for (m, n, k) in [(512usize, 2048usize, 2048usize), (256, 8192, 2048), (256, 2048, 8192)] {
        let d = MatmulDims::linear(m, n, k);
        let a = round(rand_f32(rng, m * k, -1.0, 1.0));
        let b = round(rand_f32(rng, n * k, -1.0, 1.0));
        let got = down(g, &g.matmul(&up(g, &a), &up(g, &b), None, d).unwrap());
        assert_close(&got, &spec_matmul(&a, &b, None, d), real_matmul_tol(k), &format!("real-size matmul {d:?}"));
    }
}

#[test]
fn matmul_forward_all_transposes() {
    let g = gpu_or_skip!();
    let mut rng = Rng::new(2);
    // (4, 4, 4) .. (128, 8, 132): every dimension a multiple of 4, so matmul.wgsl's `main_vec4`
    // (16-byte loads) runs, with partial tiles; the others take the scalar `main`.
    let shapes = [(1usize, 1usize, 1usize), (7, 13, 5), (64, 64, 16), (65, 63, 17), (129, 67, 131)];
    let aligned = [(4, 4, 4), (68, 132, 20), (128, 8, 132)];
    for &(m, n, k) in shapes.iter().chain(&aligned) {
        for ta in [false, true] {
            for tb in [false, true] {
                let d = MatmulDims { trans_a: ta, trans_b: tb, ..MatmulDims::new(m, n, k) };
                let a = rand_f32(&mut rng, m * k, -1.0, 1.0);
                let b = rand_f32(&mut rng, k * n, -1.0, 1.0);
                let bias = rand_f32(&mut rng, n, -1.0, 1.0);
                let got = down(g, &g.matmul(&up(g, &a), &up(g, &b), Some(&up(g, &bias)), d).unwrap());
                assert_close(&got, &spec_matmul(&a, &b, Some(&bias), d), MATMUL_TOL, &format!("matmul {d:?}"));
            }
        }
    }
    // batched, with B broadcast (b_stride 0) as a shared weight
    let d = MatmulDims { batch: 3, b_stride: 0, trans_b: true, ..MatmulDims::new(5, 66, 9) };
    let a = rand_f32(&mut rng, 3 * 5 * 9, -1.0, 1.0);
    let b = rand_f32(&mut rng, 66 * 9, -1.0, 1.0);
    let got = down(g, &g.matmul(&up(g, &a), &up(g, &b), None, d).unwrap());
    assert_close(&got, &spec_matmul(&a, &b, None, d), MATMUL_TOL, "batched matmul");
    let d = MatmulDims { batch: 3, b_stride: 0, trans_b: true, ..MatmulDims::new(8, 68, 12) };
    let a = rand_f32(&mut rng, 3 * 8 * 12, -1.0, 1.0);
    let b = rand_f32(&mut rng, 68 * 12, -1.0, 1.0);
    let got = down(g, &g.matmul(&up(g, &a), &up(g, &b), None, d).unwrap());
    assert_close(&got, &spec_matmul(&a, &b, None, d), MATMUL_TOL, "batched aligned matmul");
    check_real_matmuls(g, &mut rng, |v| v);
    let k = g.kernels_compiled();
    for ta in 0..2 {
        for tb in 0..2 {
            for entry in ["main", "main_vec4"] {
                let want = format!("matmul.{entry}[TRANS_A={ta},TRANS_B={tb}]");
                assert!(k.iter().any(|s| s.starts_with(&want)), "{want} never ran; compiled: {k:?}");
            }
        }
    }
}

/// Set in the child that `matmul_coop_matches_the_cpu` starts under Mesa 26's lavapipe.
const COOP_CHILD: &str = "LORAFORGE_TEST_COOP_CHILD";

/// The root `.ci/lavapipe-coop` unpacked Mesa 26's lavapipe into, if it did.
fn coop_lavapipe() -> Option<std::path::PathBuf> {
    let root = match std::env::var_os("LORAFORGE_COOP_LAVAPIPE") {
        Some(r) => r.into(),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
            cache.join("loraforge/lavapipe-coop")
        }
    };
    root.join("ok").exists().then_some(root)
}

/// A backend with cooperative matrices turned on (`WgpuOptions::coop_matrix`), or None when the
/// default adapter has none: then `test` runs again in a child under the Mesa 26 lavapipe that
/// `.ci/setup` unpacks (`.ci/lavapipe-coop`, 8x8x8 tiles), which must pass and print `ran`; only
/// where that root is missing does the test skip, with a message.
fn coop_or_rerun(test: &str, ran: &str) -> Option<WgpuBackend> {
    if gpu().is_none() {
        println!("SKIP: no wgpu adapter (set LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1)");
        return None;
    }
    let g = WgpuBackend::with_options(WgpuOptions { coop_matrix: true, ..Default::default() }).unwrap();
    if g.uses_coop_matrix() {
        return Some(g);
    }
    assert!(
        std::env::var_os(COOP_CHILD).is_none(),
        "started under Mesa 26's lavapipe, but {} offers no cooperative-matrix configuration",
        g.name()
    );
    let Some(root) = coop_lavapipe() else {
        println!(
            "SKIP: {} has no f16 16x16x16 or 8x8x8 cooperative-matrix configuration (see `loraforge info \
             --devices`), and .ci/lavapipe-coop has not unpacked Mesa 26's lavapipe",
            g.name()
        );
        return None;
    };
    // The test again, in a child under Mesa 26's loader and lavapipe (.ci/lavapipe-coop).
    let out = std::process::Command::new(root.join("lib/ld-linux-x86-64.so.2"))
        .arg("--library-path")
        .arg(root.join("lib"))
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env("VK_DRIVER_FILES", root.join("lvp_icd.json"))
        .env(COOP_CHILD, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("under {}:\n{stdout}{stderr}", root.display());
    assert!(out.status.success(), "{test} failed under Mesa 26's lavapipe");
    assert!(stdout.contains(ran), "the child of {test} under Mesa 26's lavapipe never printed {ran:?}");
    None
}

/// matmul_coop.wgsl (cooperative matrices, f16 inputs, f32 accumulation) against the spec, where
/// an adapter runs it (`coop_or_rerun`): a GPU's 16x16x16 tiles, or the 8x8x8 ones of lavapipe
/// from Mesa 26 (Debian 12's Mesa 25 has no VK_KHR_cooperative_matrix).
/// The inputs are rounded to f16 on the host first, so the kernel's own rounding is exact and
/// only the f32 accumulation order differs from the f64 spec: the tolerance is MATMUL_TOL's, and a
/// transposed or misplaced tile fails it by orders of magnitude. Shapes: 16-row minimum (smaller
/// products keep matmul.wgsl), partial tiles, K not a multiple of the tile, all transposes, bias,
/// a batch with a broadcast weight.
#[test]
fn matmul_coop_matches_the_cpu() {
    let Some(g) = coop_or_rerun("matmul_coop_matches_the_cpu", "matmul_coop ran on") else { return };
    let f16r = |v: Vec<f32>| v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect::<Vec<f32>>();
    let mut rng = Rng::new(61);
    let shapes = [(16usize, 1usize, 1usize), (16, 16, 16), (17, 63, 15), (64, 64, 64), (65, 130, 33), (100, 67, 300)];
    for &(m, n, k) in &shapes {
        for ta in [false, true] {
            for tb in [false, true] {
                let d = MatmulDims { trans_a: ta, trans_b: tb, ..MatmulDims::new(m, n, k) };
                let a = f16r(rand_f32(&mut rng, m * k, -1.0, 1.0));
                let b = f16r(rand_f32(&mut rng, k * n, -1.0, 1.0));
                let bias = rand_f32(&mut rng, n, -1.0, 1.0);
                let got = down(&g, &g.matmul(&up(&g, &a), &up(&g, &b), Some(&up(&g, &bias)), d).unwrap());
                assert_close(&got, &spec_matmul(&a, &b, Some(&bias), d), MATMUL_TOL, &format!("coop matmul {d:?}"));
            }
        }
    }
    let d = MatmulDims { batch: 3, b_stride: 0, trans_b: true, ..MatmulDims::new(20, 66, 24) };
    let a = f16r(rand_f32(&mut rng, 3 * 20 * 24, -1.0, 1.0));
    let b = f16r(rand_f32(&mut rng, 66 * 24, -1.0, 1.0));
    let got = down(&g, &g.matmul(&up(&g, &a), &up(&g, &b), None, d).unwrap());
    assert_close(&got, &spec_matmul(&a, &b, None, d), MATMUL_TOL, "batched coop matmul");
    check_real_matmuls(&g, &mut rng, f16r);
    let k = g.kernels_compiled();
    assert!(k.iter().any(|s| s.starts_with("matmul_coop")), "matmul_coop never ran: {k:?}");
    println!("matmul_coop ran on {}: {k:?}", g.name());
}

#[test]
fn matmul_backward_all_transposes() {
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(3);
    let mut cases = Vec::new();
    for ta in [false, true] {
        for tb in [false, true] {
            cases.push(MatmulDims { trans_a: ta, trans_b: tb, ..MatmulDims::new(67, 5, 33) });
            cases.push(MatmulDims { trans_a: ta, trans_b: tb, ..MatmulDims::new(68, 8, 36) });
            // main_vec4
        }
    }
    cases.push(MatmulDims { batch: 3, ..MatmulDims::new(4, 7, 65) });
    cases.push(MatmulDims { batch: 3, b_stride: 0, trans_b: true, ..MatmulDims::new(4, 7, 65) });
    cases.push(MatmulDims { batch: 2, a_stride: 0, trans_a: true, ..MatmulDims::new(3, 70, 5) });
    cases.push(MatmulDims { batch: 3, b_stride: 0, trans_b: true, ..MatmulDims::new(4, 8, 64) });
    for d in cases {
        let na = if d.a_stride == 0 { d.m * d.k } else { d.batch * d.m * d.k };
        let nb = if d.b_stride == 0 { d.k * d.n } else { d.batch * d.k * d.n };
        let a = rand_f32(&mut rng, na, -1.0, 1.0);
        let b = rand_f32(&mut rng, nb, -1.0, 1.0);
        let dc = rand_f32(&mut rng, d.batch * d.m * d.n, -1.0, 1.0);
        let (ga, gb, gbias) = g.matmul_backward(&up(g, &dc), &up(g, &a), &up(g, &b), d, (true, true, true)).unwrap();
        let (ca, cb, cbias) = c
            .matmul_backward(
                &c.upload(&dc).unwrap(),
                &c.upload(&a).unwrap(),
                &c.upload(&b).unwrap(),
                d,
                (true, true, true),
            )
            .unwrap();
        assert_close(&down(g, &ga.unwrap()), &cdown(&ca.unwrap()), MATMUL_TOL, &format!("dA {d:?}"));
        assert_close(&down(g, &gb.unwrap()), &cdown(&cb.unwrap()), MATMUL_TOL, &format!("dB {d:?}"));
        assert_close(&down(g, &gbias.unwrap()), &cdown(&cbias.unwrap()), MATMUL_TOL, &format!("dbias {d:?}"));
    }
}

/// The frozen-weight path: quant_linear / its input gradient / dequantize / embedding_quant.
#[test]
fn quant_linear_dense_weight() {
    for g in gpus_or_skip!() {
        check_quant_linear_dense_weight(g);
    }
}

/// n = 1 and 3 take the gemv entry (a workgroup reduction per output feature), n = 5 the tiles.
fn check_quant_linear_dense_weight(g: &WgpuBackend) {
    let c = CpuBackend::new();
    let mut rng = Rng::new(4);
    let (d_out, d_in) = (67, 300);
    let w = rand_f32(&mut rng, d_out * d_in, -1.0, 1.0);
    let q: loraforge::backend::HostQuant = Arc::new(F32Matrix { data: w.clone(), rows: d_out, cols: d_in });
    let (gq, cq) = (g.upload_quant(q.clone()).unwrap(), c.upload_quant(q).unwrap());
    assert_eq!(g.quant_shape(&gq), (d_out, d_in));
    assert_close(&down(g, &g.dequantize(&gq).unwrap()), &w, Tol::EXACT, "dequantize");
    for n in [1, 3, 5] {
        let x = rand_f32(&mut rng, n * d_in, -1.0, 1.0);
        let dy = rand_f32(&mut rng, n * d_out, -1.0, 1.0);
        let got = down(g, &g.quant_linear(&up(g, &x), &gq, None, n).unwrap());
        assert_close(
            &got,
            &cdown(&c.quant_linear(&c.upload(&x).unwrap(), &cq, None, n).unwrap()),
            MATMUL_TOL,
            &format!("quant_linear n={n}"),
        );
        let got = down(g, &g.quant_linear_backward(&up(g, &dy), &gq, n).unwrap());
        let want = cdown(&c.quant_linear_backward(&c.upload(&dy).unwrap(), &cq, n).unwrap());
        assert_close(&got, &want, MATMUL_TOL, &format!("quant_linear_backward n={n}"));
    }
    let ids = [3u32, 0, 66, 3];
    assert_close(
        &down(g, &g.embedding_quant(&ids, &gq).unwrap()),
        &cdown(&c.embedding_quant(&ids, &cq).unwrap()),
        Tol::EXACT,
        "embedding_quant",
    );
    check_row_norms(g, &c, &gq, &cq, &mut rng, "f32");
}

/// DoRA's row norms (row_norms.wgsl), ‖W[r] + delta[r]‖ and its reciprocal, with and without delta,
/// vs the spec (f64 sums). The kernel sums squares in f32: within (C / 256 + 8) eps relative of the
/// f64 sum (C <= 2048 here: 2e-6; the square root halves it), decoding agrees to 1 ulp; so 1e-5
/// relative, while a wrong row, piece, window offset or a missed delta moves a norm by 1% or more.
fn check_row_norms(
    g: &WgpuBackend,
    c: &CpuBackend,
    gq: &<WgpuBackend as Backend>::QStorage,
    cq: &<CpuBackend as Backend>::QStorage,
    rng: &mut Rng,
    name: &str,
) {
    let (rows, cols) = g.quant_shape(gq);
    let delta = rand_f32(rng, rows * cols, -0.1, 0.1);
    let (gd, cd) = (up(g, &delta), c.upload(&delta).unwrap());
    for with_delta in [false, true] {
        for recip in [false, true] {
            let got = down(g, &g.row_norms(gq, with_delta.then_some(&gd), recip).unwrap());
            let want = cdown(&c.row_norms(cq, with_delta.then_some(&cd), recip).unwrap());
            assert_close(
                &got,
                &want,
                Tol { abs: 0.0, rel: 1e-5 },
                &format!("{name} row_norms delta={with_delta} recip={recip}"),
            );
        }
    }
}

/// row_norms on both reduction builds: rows 1 and 67, columns 1, 255, 257 (a workgroup of 256
/// lanes ± 1), 600 and 2048, dense f32 and packed formats (ggml blocks, K-quants, f16, NF4 with
/// double quant, int8).
#[test]
fn row_norms_match_the_spec() {
    use loraforge::quant::ggml::{GgmlMatrix, GgmlType};
    use loraforge::quant::int8::Int8Matrix;
    use loraforge::quant::nf4::Nf4Matrix;
    let c = CpuBackend::new();
    for g in gpus_or_skip!() {
        let mut rng = Rng::new(41);
        let mut cases: Vec<(String, loraforge::backend::HostQuant)> = Vec::new();
        for (rows, cols) in [(1, 1), (67, 255), (3, 257), (5, 2048)] {
            let w = rand_f32(&mut rng, rows * cols, -1.0, 1.0);
            cases.push((format!("f32 {rows}x{cols}"), Arc::new(F32Matrix { data: w, rows, cols })));
        }
        for (ty, cols) in [(GgmlType::Q4_0, 96), (GgmlType::Q4_K, 512), (GgmlType::Q6_K, 2048), (GgmlType::F16, 257)] {
            let w = rand_f32(&mut rng, 67 * cols, -1.0, 1.0);
            cases.push((ty.name().into(), Arc::new(GgmlMatrix::quantize(ty, 67, cols, &w).unwrap())));
        }
        let w = rand_f32(&mut rng, 67 * 600, -1.0, 1.0);
        cases.push(("nf4_dq".into(), Arc::new(Nf4Matrix::quantize(&w, 67, 600, 64, true).unwrap())));
        cases.push(("int8".into(), Arc::new(Int8Matrix::quantize(&w, 67, 600).unwrap())));
        for (name, q) in cases {
            let (gq, cq) = (g.upload_quant(q.clone()).unwrap(), c.upload_quant(q).unwrap());
            check_row_norms(g, &c, &gq, &cq, &mut rng, &name);
        }
        // A delta of the wrong length is an error, not a read past its end.
        let q: loraforge::backend::HostQuant = Arc::new(F32Matrix { data: vec![1.0; 12], rows: 3, cols: 4 });
        let gq = g.upload_quant(q).unwrap();
        assert!(g.row_norms(&gq, Some(&up(g, &[0.0; 11])), false).is_err());
    }
}

/// One weight of `rows` rows in every format the device decodes packed (all GGUF types of
/// quant_decode.wgsl, NF4 plain and double-quantized in f32/bf16/f16, int8), with names. Columns:
/// 3 blocks of 32 or 2 of 256 per row; NF4 with 33 columns so its 64-element blocks straddle rows
/// and bytes split across rows.
fn packed_cases(rng: &mut Rng, rows: usize) -> Vec<(String, loraforge::backend::HostQuant)> {
    use loraforge::dtype::DType;
    use loraforge::quant::ggml::{GgmlMatrix, GgmlType};
    use loraforge::quant::int8::Int8Matrix;
    use loraforge::quant::nf4::Nf4Matrix;
    use loraforge::quant::DequantRows;
    let mut cases: Vec<(String, loraforge::backend::HostQuant)> = Vec::new();
    for (ty, cols) in [
        (GgmlType::Q4_0, 96),
        (GgmlType::Q4_1, 96),
        (GgmlType::Q5_0, 96),
        (GgmlType::Q5_1, 96),
        (GgmlType::Q8_0, 96),
        (GgmlType::Q4_K, 512),
        (GgmlType::Q5_K, 512),
        (GgmlType::Q6_K, 512),
        (GgmlType::F16, 45),
        (GgmlType::BF16, 45),
    ] {
        let w = rand_f32(rng, rows * cols, -1.0, 1.0);
        cases.push((ty.name().into(), Arc::new(GgmlMatrix::quantize(ty, rows, cols, &w).unwrap())));
    }
    for (dq, dtype) in [(false, DType::F32), (true, DType::F32), (true, DType::BF16), (false, DType::F16)] {
        let w = rand_f32(rng, rows * 33, -1.0, 1.0);
        let m = Nf4Matrix::quantize_as(&w, rows, 33, 64, dq, dtype).unwrap();
        cases.push((format!("{} {dtype:?}", m.format_name()), Arc::new(m)));
    }
    let w = rand_f32(rng, rows * 50, -1.0, 1.0);
    cases.push(("int8".into(), Arc::new(Int8Matrix::quantize(&w, rows, 50).unwrap())));
    cases
}

/// The packed frozen-weight path: every format with a device decoder (quant_decode.wgsl) uploaded
/// packed (asserted: a silent fallback to f32 would prove nothing), then dequantize,
/// embedding_quant, quant_linear (+ bias) and its input gradient against the CPU backend, which
/// decodes with src/quant. Shapes: `packed_cases` at 67 rows (a 64-row tile + 3), n = 1 and 4
/// tokens (the one-workgroup-per-feature `gemv` entry), 5 and 70 (one and two tiles of the tiled
/// entry).
///
/// Tolerances: decoding does the CPU's f32 operations in the same order: equal up to a fused
/// multiply-add (1 ulp), so 1e-6 relative. The products accumulate in f32 in tile order while the
/// CPU sums differently: for K <= 512 terms with |x| <= 1 and |w| <~ 1 the difference is ~sqrt(K)
/// eps sum|x w| <~ 1e-4; 3e-4 abs + 1e-4 rel, while any decoding error (a wrong nibble, scale or
/// offset) moves outputs by O(0.01-1).
#[test]
fn quant_formats_fused_decode_matches_cpu() {
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(21);
    let rows = 67;
    let cases = packed_cases(&mut rng, rows);
    let decode_tol = Tol { abs: 1e-7, rel: 1e-6 };
    let mm_tol = Tol { abs: 3e-4, rel: 1e-4 };
    for (name, q) in cases {
        let cols = q.cols();
        let (gq, cq) = (g.upload_quant(q.clone()).unwrap(), c.upload_quant(q).unwrap());
        assert!(gq.is_packed(), "{name}: not uploaded packed");
        assert_eq!(g.quant_shape(&gq), (rows, cols));
        let want = cdown(&c.dequantize(&cq).unwrap());
        assert_close(&down(g, &g.dequantize(&gq).unwrap()), &want, decode_tol, &format!("{name} dequantize"));
        let ids = [66u32, 0, 3, 3, 65];
        assert_close(
            &down(g, &g.embedding_quant(&ids, &gq).unwrap()),
            &cdown(&c.embedding_quant(&ids, &cq).unwrap()),
            decode_tol,
            &format!("{name} embedding_quant"),
        );
        assert!(g.embedding_quant(&[67], &gq).is_err(), "{name}: id out of range accepted");
        let bias = rand_f32(&mut rng, rows, -1.0, 1.0);
        for n in [1, 4, 5, 70] {
            let x = rand_f32(&mut rng, n * cols, -1.0, 1.0);
            let dy = rand_f32(&mut rng, n * rows, -1.0, 1.0);
            let got = down(g, &g.quant_linear(&up(g, &x), &gq, Some(&up(g, &bias)), n).unwrap());
            let want = cdown(&c.quant_linear(&c.upload(&x).unwrap(), &cq, Some(&c.upload(&bias).unwrap()), n).unwrap());
            assert_close(&got, &want, mm_tol, &format!("{name} quant_linear n={n}"));
            let got = down(g, &g.quant_linear_backward(&up(g, &dy), &gq, n).unwrap());
            let want = cdown(&c.quant_linear_backward(&c.upload(&dy).unwrap(), &cq, n).unwrap());
            assert_close(&got, &want, mm_tol, &format!("{name} quant_linear_backward n={n}"));
        }
        println!("{name}: packed decode, quant_linear and backward match the CPU");
    }
}

/// quant_linear_coop.wgsl (the forward of a packed weight on cooperative matrices, decoded weights
/// and inputs rounded to f16, f32 accumulation) against the spec, where an adapter runs it
/// (`coop_or_rerun`: a GPU's 16x16x16 tiles, or Mesa 26 lavapipe's 8x8x8 ones), for every
/// device format. The spec is the f64 product of x rounded to f16 and the CPU's decoded weight
/// rounded to f16: the kernel's roundings are then exact and only the f32 accumulation order
/// differs (MATMUL_TOL's reasoning, `real_matmul_tol` for K > 131), while a misplaced tile,
/// row or K slice moves outputs by O(0.1-1). Shapes: `packed_cases` at 67 weight rows (partial
/// column tiles; NF4's 33 columns make K not a multiple of the tile), 16 tokens (the first that
/// takes the coop path), 17 and 70 (partial row tiles, several); weights in row pieces (a 64 KiB
/// binding cap; f32, which is packed only then) write their column slices with bias offsets. The
/// input gradient must keep quant_linear.wgsl's f32 path: it is held to the f32 tolerance that
/// f16-rounded products (errors ~1e-3 here) would fail.
#[test]
fn quant_linear_coop_matches_the_cpu() {
    use loraforge::quant::ggml::{GgmlMatrix, GgmlType};
    use loraforge::quant::nf4::Nf4Matrix;
    let Some(g) = coop_or_rerun("quant_linear_coop_matches_the_cpu", "quant_linear_coop ran on") else { return };
    let c = CpuBackend::new();
    let mut rng = Rng::new(67);
    let f16r = |v: Vec<f32>| v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect::<Vec<f32>>();
    let cases = packed_cases(&mut rng, 67);
    let check = |g: &WgpuBackend, name: &str, q: loraforge::backend::HostQuant, ns: &[usize], rng: &mut Rng| {
        let (rows, cols) = (q.rows(), q.cols());
        let (gq, cq) = (g.upload_quant(q.clone()).unwrap(), c.upload_quant(q).unwrap());
        assert!(gq.is_packed(), "{name}: not uploaded packed");
        let w16 = f16r(cdown(&c.dequantize(&cq).unwrap()));
        let bias = rand_f32(rng, rows, -1.0, 1.0);
        for &n in ns {
            let x = f16r(rand_f32(rng, n * cols, -1.0, 1.0));
            let got = down(g, &g.quant_linear(&up(g, &x), &gq, Some(&up(g, &bias)), n).unwrap());
            let d = MatmulDims::linear(n, rows, cols);
            let tol = if cols > 131 { real_matmul_tol(cols) } else { MATMUL_TOL };
            assert_close(&got, &spec_matmul(&x, &w16, Some(&bias), d), tol, &format!("{name} coop quant_linear n={n}"));
            let dy = rand_f32(rng, n * rows, -1.0, 1.0);
            let got = down(g, &g.quant_linear_backward(&up(g, &dy), &gq, n).unwrap());
            let want = cdown(&c.quant_linear_backward(&c.upload(&dy).unwrap(), &cq, n).unwrap());
            assert_close(&got, &want, Tol { abs: 3e-4, rel: 1e-4 }, &format!("{name} quant_linear_backward n={n}"));
        }
        gq
    };
    for (name, q) in cases {
        check(&g, &name, q, &[16, 17, 70], &mut rng);
        println!("{name}: coop quant_linear matches the spec");
    }
    // Row pieces: each launch writes its columns of C at c_off with bias_off.
    let small =
        WgpuBackend::with_options(WgpuOptions { coop_matrix: true, binding_cap: Some(64 << 10), ..Default::default() })
            .unwrap();
    assert!(small.uses_coop_matrix());
    let mut w = |n: usize| rand_f32(&mut rng, n, -1.0, 1.0);
    let q8: loraforge::backend::HostQuant =
        Arc::new(GgmlMatrix::quantize(GgmlType::Q8_0, 1000, 96, &w(96_000)).unwrap());
    let nf4: loraforge::backend::HostQuant = Arc::new(Nf4Matrix::quantize(&w(320 * 960), 320, 960, 64, true).unwrap());
    // A dense f32 weight is packed (format 14) only when it needs pieces.
    let f32w: loraforge::backend::HostQuant = Arc::new(F32Matrix { data: w(300 * 96), rows: 300, cols: 96 });
    for (name, q) in [("q8_0 in pieces", q8), ("nf4_dq in pieces", nf4), ("f32 in pieces", f32w)] {
        // 16 tokens: x and y stay within the 64 KiB cap (only weights are split in pieces).
        let gq = check(&small, name, q, &[16], &mut rng);
        assert!(gq.pieces() >= 2, "{name}: {} piece(s)", gq.pieces());
    }
    let k = g.kernels_compiled();
    assert!(k.iter().any(|s| s.starts_with("quant_linear_coop")), "quant_linear_coop never ran: {k:?}");
    println!("quant_linear_coop ran on {}: {k:?}", g.name());
}

/// f32 tree sum of C squares vs f64: relative error ~ log2(C) eps; rstd and out to ~1e-6 relative.
#[test]
fn rms_norm_forward_backward() {
    for g in gpus_or_skip!() {
        check_rms_norm(g);
    }
}

fn check_rms_norm(g: &WgpuBackend) {
    let c = CpuBackend::new();
    let mut rng = Rng::new(5);
    for &(rows, cols) in &[(1usize, 1usize), (3, 255), (2, 257), (7, 1000)] {
        for add_one in [false, true] {
            let x = rand_f32(&mut rng, rows * cols, -2.0, 2.0);
            let w = rand_f32(&mut rng, cols, -1.0, 1.0);
            let dout = rand_f32(&mut rng, rows * cols, -1.0, 1.0);
            let (go, gr) = g.rms_norm(&up(g, &x), &up(g, &w), rows, cols, 1e-5, add_one).unwrap();
            let (co, cr) =
                c.rms_norm(&c.upload(&x).unwrap(), &c.upload(&w).unwrap(), rows, cols, 1e-5, add_one).unwrap();
            let tol = Tol { abs: 1e-5, rel: 1e-5 };
            assert_close(&down(g, &go), &cdown(&co), tol, "rms_norm out");
            assert_close(&down(g, &gr), &cdown(&cr), tol, "rms_norm rstd");
            let (gdx, gdw) =
                g.rms_norm_backward(&up(g, &dout), &up(g, &x), &up(g, &w), &gr, rows, cols, add_one, true).unwrap();
            let (cdx, cdw) = c
                .rms_norm_backward(
                    &c.upload(&dout).unwrap(),
                    &c.upload(&x).unwrap(),
                    &c.upload(&w).unwrap(),
                    &cr,
                    rows,
                    cols,
                    add_one,
                    true,
                )
                .unwrap();
            // dx subtracts two O(1) terms: abs error ~ C eps |terms|, 1e-4 at C = 1000.
            assert_close(&down(g, &gdx), &cdown(&cdx), Tol { abs: 1e-4, rel: 1e-4 }, "rms_norm dx");
            assert_close(&down(g, &gdw.unwrap()), &cdown(&cdw.unwrap()), Tol { abs: 1e-5, rel: 1e-5 }, "rms_norm dw");
        }
    }
}

/// cos/sin come from the same f64 table rounded once to f32, so out differs by a few ulp only.
#[test]
fn rope_forward_backward() {
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(6);
    let cfgs = [
        RopeConfig::new(8, 10000.0),
        RopeConfig {
            head_dim: 10,
            rotary_dim: 6,
            theta: 500000.0,
            layout: RopeLayout::Interleaved,
            scaling: RopeScaling::None,
        },
        RopeConfig { scaling: RopeScaling::yarn(4.0, 64), ..RopeConfig::new(16, 10000.0) },
    ];
    for cfg in cfgs {
        let (b, t, nh) = (2, 5, 3);
        let positions: Vec<u32> = (0..b * t).map(|_| rng.below(5000) as u32).collect();
        let x = rand_f32(&mut rng, b * t * nh * cfg.head_dim, -1.0, 1.0);
        let got = down(g, &g.rope(&up(g, &x), &positions, &cfg, b, t, nh).unwrap());
        let want = cdown(&c.rope(&c.upload(&x).unwrap(), &positions, &cfg, b, t, nh).unwrap());
        assert_close(&got, &want, Tol { abs: 1e-6, rel: 1e-6 }, &format!("rope {cfg:?}"));
        let got = down(g, &g.rope_backward(&up(g, &x), &positions, &cfg, b, t, nh).unwrap());
        let want = cdown(&c.rope_backward(&c.upload(&x).unwrap(), &positions, &cfg, b, t, nh).unwrap());
        assert_close(&got, &want, Tol { abs: 1e-6, rel: 1e-6 }, &format!("rope_backward {cfg:?}"));
    }
}

/// exp/tanh in WGSL are not correctly rounded (a few ulp on lavapipe; WGSL allows more), so
/// relative 1e-5.
#[test]
fn glu_forward_backward() {
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(7);
    for gelu in [false, true] {
        for &n in &[1usize, 257, 1000] {
            let mut gate = rand_f32(&mut rng, n, -6.0, 6.0);
            if n > 2 {
                gate[0] = 40.0; // saturated: no NaN from exp/tanh
                gate[1] = -40.0;
            }
            let upv = rand_f32(&mut rng, n, -1.0, 1.0);
            let dout = rand_f32(&mut rng, n, -1.0, 1.0);
            let got = down(g, &g.glu(&up(g, &gate), &up(g, &upv), gelu).unwrap());
            let want = cdown(&c.glu(&c.upload(&gate).unwrap(), &c.upload(&upv).unwrap(), gelu).unwrap());
            let tol = Tol { abs: 1e-6, rel: 1e-5 };
            assert_close(&got, &want, tol, "glu");
            let (gdg, gdu) = g.glu_backward(&up(g, &dout), &up(g, &gate), &up(g, &upv), gelu).unwrap();
            let (cdg, cdu) = c
                .glu_backward(&c.upload(&dout).unwrap(), &c.upload(&gate).unwrap(), &c.upload(&upv).unwrap(), gelu)
                .unwrap();
            assert_close(&down(g, &gdg), &cdown(&cdg), tol, "glu dgate");
            assert_close(&down(g, &gdu), &cdown(&cdu), tol, "glu dup");
        }
    }
}

/// The mask is integer Philox arithmetic and one f32 multiply: bit-for-bit equal to the CPU.
#[test]
fn dropout_matches_cpu_bit_for_bit() {
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(8);
    for &(n, p, seed, offset) in &[
        (1usize, 0.5f32, 1u64, 0u64),
        (1031, 0.1, 0xDEAD_BEEF_1234_5678, 3),
        (777, 0.3, 42, (1u64 << 32) - 5), // the counter carries into its high word mid-buffer
        (300, 0.0, 7, 9),
    ] {
        let x = rand_f32(&mut rng, n, -1.0, 1.0);
        let got = down(g, &g.dropout(&up(g, &x), p, seed, offset).unwrap());
        let want = cdown(&c.dropout(&c.upload(&x).unwrap(), p, seed, offset).unwrap());
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let got = down(g, &g.dropout_backward(&up(g, &x), p, seed, offset).unwrap());
        let want = cdown(&c.dropout_backward(&c.upload(&x).unwrap(), p, seed, offset).unwrap());
        assert_eq!(got, want, "dropout_backward n={n} p={p}");
    }
    assert!(g.dropout(&up(g, &[1.0]), 1.0, 0, 0).is_err());
}

#[test]
fn embedding_forward_backward() {
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(9);
    let (v, cc) = (11, 257);
    let table = rand_f32(&mut rng, v * cc, -1.0, 1.0);
    let ids = [3u32, 0, 10, 3, 3, 7];
    let got = down(g, &g.embedding(&ids, &up(g, &table), cc).unwrap());
    assert_close(&got, &cdown(&c.embedding(&ids, &c.upload(&table).unwrap(), cc).unwrap()), Tol::EXACT, "embedding");
    let dout = rand_f32(&mut rng, ids.len() * cc, -1.0, 1.0);
    let got = down(g, &g.embedding_backward(&up(g, &dout), &ids, v, cc).unwrap());
    let want = cdown(&c.embedding_backward(&c.upload(&dout).unwrap(), &ids, v, cc).unwrap());
    // sums in the same (position) order, in f32 like the CPU: exact
    assert_close(&got, &want, Tol::EXACT, "embedding_backward");
    assert!(g.embedding(&[11], &up(g, &table), cc).is_err(), "id out of range must be an Error");
}

/// Losses: f32 logsumexp over V terms (CPU: same in f32 via gemm logits); 1e-5 relative of the sum.
/// Gradients: two f32 matmuls over V (or N) terms, as MATMUL_TOL.
#[test]
fn linear_cross_entropy_forward_backward() {
    for g in gpus_or_skip!() {
        check_linear_cross_entropy(g);
    }
}

fn check_linear_cross_entropy(g: &WgpuBackend) {
    let c = CpuBackend::new();
    let mut rng = Rng::new(10);
    for &(n, cc, v, cap) in &[(1usize, 1usize, 2usize, None), (5, 7, 300, Some(3.0f32)), (300, 8, 37, None)] {
        let h = rand_f32(&mut rng, n * cc, -1.0, 1.0);
        let w = rand_f32(&mut rng, v * cc, -1.0, 1.0);
        let targets: Vec<i32> = (0..n).map(|i| if i % 4 == 1 { -100 } else { rng.below(v as _) as i32 }).collect();
        let s = Some(0.25);
        let (gs, gdh, gdw) = g.linear_cross_entropy(&up(g, &h), &up(g, &w), &targets, n, cc, v, cap, s, true).unwrap();
        let (cs, cdh, cdw) = c
            .linear_cross_entropy(&c.upload(&h).unwrap(), &c.upload(&w).unwrap(), &targets, n, cc, v, cap, s, true)
            .unwrap();
        assert_eq!(gs.count, cs.count);
        assert!(
            (gs.loss_sum - cs.loss_sum).abs() <= 1e-5 * cs.loss_sum.abs().max(1.0),
            "loss {} vs {}",
            gs.loss_sum,
            cs.loss_sum
        );
        assert_close(&down(g, &gdh.unwrap()), &cdown(&cdh.unwrap()), MATMUL_TOL, "ce dh");
        assert_close(&down(g, &gdw.unwrap()), &cdown(&cdw.unwrap()), MATMUL_TOL, "ce dw");
    }
    assert!(g.linear_cross_entropy(&up(g, &[0.0]), &up(g, &[0.0]), &[5], 1, 1, 1, None, None, false).is_err());
}

/// The cross-entropy over a frozen packed head (Q8_0, NF4) reads the head through quant_linear.wgsl
/// and never makes it dense: loss and dh against the CPU (which decodes the head, then runs the
/// dense op). n = 300 tokens span two 256-token chunks (offsets into h and dh); one case soft-caps.
/// Same bounds as the dense cross-entropy above (sums of C = 96 products: 3e-4 abs on dh).
#[test]
fn linear_cross_entropy_over_a_packed_head() {
    use loraforge::quant::ggml::{GgmlMatrix, GgmlType};
    use loraforge::quant::nf4::Nf4Matrix;
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(12);
    let v = 211;
    for (n, cc, cap, nf4) in [(300usize, 96usize, None, false), (7, 33, Some(4.0f32), true)] {
        let w = rand_f32(&mut rng, v * cc, -1.0, 1.0);
        let q: loraforge::backend::HostQuant = if nf4 {
            Arc::new(Nf4Matrix::quantize(&w, v, cc, 64, true).unwrap())
        } else {
            Arc::new(GgmlMatrix::quantize(GgmlType::Q8_0, v, cc, &w).unwrap())
        };
        let (gq, cq) = (g.upload_quant(q.clone()).unwrap(), c.upload_quant(q).unwrap());
        assert!(gq.is_packed());
        let h = rand_f32(&mut rng, n * cc, -1.0, 1.0);
        let targets: Vec<i32> = (0..n).map(|i| if i % 5 == 2 { -100 } else { rng.below(v as _) as i32 }).collect();
        let s = Some(0.5);
        let (gs, gdh) = g.linear_cross_entropy_frozen(&up(g, &h), &gq, &targets, n, cc, v, cap, s).unwrap();
        let (cs, cdh) = c.linear_cross_entropy_frozen(&c.upload(&h).unwrap(), &cq, &targets, n, cc, v, cap, s).unwrap();
        assert_eq!(gs.count, cs.count);
        assert!(
            (gs.loss_sum - cs.loss_sum).abs() <= 1e-5 * cs.loss_sum.abs().max(1.0),
            "loss {} vs {}",
            gs.loss_sum,
            cs.loss_sum
        );
        assert_close(&down(g, &gdh.unwrap()), &cdown(&cdh.unwrap()), Tol { abs: 3e-4, rel: 1e-4 }, "packed ce dh");
    }
    let bad = Arc::new(GgmlMatrix::quantize(GgmlType::Q8_0, 3, 32, &[0.5; 96]).unwrap());
    let bq = g.upload_quant(bad).unwrap();
    assert!(g.linear_cross_entropy_frozen(&up(g, &[0.0; 32]), &bq, &[1], 1, 32, 4, None, None).is_err());
}

/// Frozen weights larger than one storage binding are bound in row pieces. A backend capped at
/// 64 KiB per binding (`WgpuBackend::with_binding_limit`) stands in for a 128k-vocabulary table on
/// a 128 MiB device: every weight here needs 2-3 pieces (asserted), including an f32 weight (host
/// f32 split the same way) and NF4 with double quantization (pieces on nested-block boundaries).
/// Embedding lookups, full decodes (their f32 output bound in windows), quant_linear (+ bias), its
/// input gradient, the cross-entropy over a split head and DoRA's row norms must equal the unsplit
/// CPU results (same bounds as the unsplit tests).
#[test]
fn weights_larger_than_a_binding_are_split_in_row_pieces() {
    use loraforge::quant::ggml::{GgmlMatrix, GgmlType};
    use loraforge::quant::int8::Int8Matrix;
    use loraforge::quant::nf4::Nf4Matrix;
    use loraforge::quant::DeviceFormat;
    if gpu().is_none() {
        println!("SKIP: no wgpu adapter (set LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1)");
        return;
    }
    let g = WgpuBackend::with_binding_limit(64 << 10).unwrap();
    let c = CpuBackend::new();
    let mut rng = Rng::new(31);
    let mut cases: Vec<(&str, usize, usize, loraforge::backend::HostQuant)> = Vec::new();
    let mut w = |n: usize| rand_f32(&mut rng, n, -1.0, 1.0);
    let (r, k) = (1000, 96);
    cases.push(("q8_0", r, k, Arc::new(GgmlMatrix::quantize(GgmlType::Q8_0, r, k, &w(r * k)).unwrap())));
    // 416 columns: decode windows of 39 rows, so windows start mid-alignment (base != 0).
    cases.push((
        "q8_0 416",
        200,
        416,
        Arc::new(GgmlMatrix::quantize(GgmlType::Q8_0, 200, 416, &w(200 * 416)).unwrap()),
    ));
    cases.push(("int8", r, k, Arc::new(Int8Matrix::quantize(&w(r * k), r, k).unwrap())));
    cases.push(("f32", 300, k, Arc::new(F32Matrix { data: w(300 * k), rows: 300, cols: k })));
    cases.push(("q4_k", 300, 512, Arc::new(GgmlMatrix::quantize(GgmlType::Q4_K, 300, 512, &w(300 * 512)).unwrap())));
    cases.push(("nf4", 3000, 64, Arc::new(Nf4Matrix::quantize(&w(192_000), 3000, 64, 64, false).unwrap())));
    cases.push(("nf4_dq", 160, 2048, Arc::new(Nf4Matrix::quantize(&w(160 * 2048), 160, 2048, 64, true).unwrap())));
    let tol = Tol { abs: 3e-4, rel: 1e-4 };
    for (name, rows, cols, q) in cases {
        let (gq, cq) = (g.upload_quant(q.clone()).unwrap(), c.upload_quant(q).unwrap());
        assert!(gq.pieces() >= 2, "{name}: {} piece(s)", gq.pieces());
        if name == "f32" {
            assert_eq!(gq.device_format(), Some(DeviceFormat::F32));
        }
        let ids = [0u32, rows as u32 - 1, (rows / 2) as u32, 1, rows as u32 - 1];
        assert_close(
            &down(&g, &g.embedding_quant(&ids, &gq).unwrap()),
            &cdown(&c.embedding_quant(&ids, &cq).unwrap()),
            Tol { abs: 1e-7, rel: 1e-6 },
            &format!("{name} embedding_quant"),
        );
        // Every row decoded: the f32 output (4-8x the packed bytes) is written in windows.
        assert_close(
            &down(&g, &g.dequantize(&gq).unwrap()),
            &cdown(&c.dequantize(&cq).unwrap()),
            Tol { abs: 1e-7, rel: 1e-6 },
            &format!("{name} dequantize"),
        );
        let bias = rand_f32(&mut rng, rows, -1.0, 1.0);
        for n in [1, 5] {
            let x = rand_f32(&mut rng, n * cols, -1.0, 1.0);
            let dy = rand_f32(&mut rng, n * rows, -1.0, 1.0);
            let got = down(&g, &g.quant_linear(&up(&g, &x), &gq, Some(&up(&g, &bias)), n).unwrap());
            let want = cdown(&c.quant_linear(&c.upload(&x).unwrap(), &cq, Some(&c.upload(&bias).unwrap()), n).unwrap());
            assert_close(&got, &want, tol, &format!("{name} quant_linear n={n}"));
            let got = down(&g, &g.quant_linear_backward(&up(&g, &dy), &gq, n).unwrap());
            let want = cdown(&c.quant_linear_backward(&c.upload(&dy).unwrap(), &cq, n).unwrap());
            // K = rows (up to 1000) products per output: sqrt(K) eps sum|x w| ~ 1e-4.
            assert_close(&got, &want, Tol { abs: 1e-3, rel: 1e-4 }, &format!("{name} quant_linear_backward n={n}"));
        }
        if name == "q8_0" {
            let n = 7;
            let h = rand_f32(&mut rng, n * cols, -1.0, 1.0);
            let t: Vec<i32> = (0..n).map(|i| if i == 3 { -100 } else { rng.below(rows as _) as i32 }).collect();
            let (gs, gdh) =
                g.linear_cross_entropy_frozen(&up(&g, &h), &gq, &t, n, cols, rows, None, Some(1.0)).unwrap();
            let (cs, cdh) =
                c.linear_cross_entropy_frozen(&c.upload(&h).unwrap(), &cq, &t, n, cols, rows, None, Some(1.0)).unwrap();
            assert!((gs.loss_sum - cs.loss_sum).abs() <= 1e-5 * cs.loss_sum.abs(), "{} {}", gs.loss_sum, cs.loss_sum);
            assert_close(
                &down(&g, &gdh.unwrap()),
                &cdown(&cdh.unwrap()),
                Tol { abs: 1e-3, rel: 1e-4 },
                "split head ce dh",
            );
        }
        // DoRA's norms per piece, their delta (4-8x the packed bytes) bound in row windows.
        check_row_norms(&g, &c, &gq, &cq, &mut rng, name);
        println!("{name}: {} pieces, lookups / matmuls / gradients match the CPU", gq.pieces());
    }
}

/// Trainable tensors larger than one storage binding (the embedding, head, their gradients and
/// AdamW state in a full fine-tune of a 128k-vocabulary model) live in one buffer and are bound in
/// windows. A backend capped at 64 KiB per binding stands in for a 128 MiB device; the cap is
/// enforced by `dispatch` (a whole binding over it is an error), so every op that succeeds here
/// bound its large operands in windows. Shapes: C = 37 (windows start mid-row and at unaligned
/// element offsets: scalar matmul loads) and C = 40 (vec4 loads), V = 1001 (3 windows and a
/// partial). Each result must equal the CPU's with the unsplit tests' bounds.
#[test]
fn trainable_tensors_larger_than_a_binding_are_bound_in_windows() {
    if gpu().is_none() {
        println!("SKIP: no wgpu adapter (set LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1)");
        return;
    }
    let g = WgpuBackend::with_binding_limit(64 << 10).unwrap();
    let c = CpuBackend::new();
    let mut rng = Rng::new(37);
    let exact = Tol { abs: 0.0, rel: 0.0 };
    // Flat ops over 50 003 elements (~200 KB: 4 windows).
    let n = 50_003;
    let (a, b) = (rand_f32(&mut rng, n, -1.0, 1.0), rand_f32(&mut rng, n, -1.0, 1.0));
    let (ga, gb) = (up(&g, &a), up(&g, &b));
    let (ca, cb) = (c.upload(&a).unwrap(), c.upload(&b).unwrap());
    assert_close(&down(&g, &g.add(&ga, &gb).unwrap()), &cdown(&c.add(&ca, &cb).unwrap()), exact, "add");
    assert_close(&down(&g, &g.mul(&ga, &gb).unwrap()), &cdown(&c.mul(&ca, &cb).unwrap()), exact, "mul");
    assert_close(&down(&g, &g.scale(&ga, 0.3).unwrap()), &cdown(&c.scale(&ca, 0.3).unwrap()), exact, "scale");
    let (mut gd, mut cd) = (up(&g, &a), c.upload(&a).unwrap());
    g.add_assign(&mut gd, &gb).unwrap();
    c.add_assign(&mut cd, &cb).unwrap();
    g.scale_in_place(&mut gd, -1.5).unwrap();
    c.scale_in_place(&mut cd, -1.5).unwrap();
    assert_close(&down(&g, &gd), &cdown(&cd), exact, "add_assign, scale_in_place");
    g.scale_by_in_place(&mut gd, &up(&g, &[0.7])).unwrap();
    c.scale_by_in_place(&mut cd, &c.upload(&[0.7]).unwrap()).unwrap();
    assert_close(&down(&g, &gd), &cdown(&cd), exact, "scale_by_in_place");
    // Sum of squares: partials of 4096 in f32, then f64 (as the unsplit test).
    let (gn, cn) = (g.grad_norm_sq(&[&ga, &gb]).unwrap(), c.grad_norm_sq(&[&ca, &cb]).unwrap());
    assert!((gn - cn).abs() <= 1e-5 * cn, "grad_norm_sq {gn} vs {cn}");
    let p = AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step: 3 };
    let (mut gp, mut gm, mut gv) = (up(&g, &a), g.zeros(n).unwrap(), g.zeros(n).unwrap());
    let (mut cp, mut cm, mut cv) = (c.upload(&a).unwrap(), c.zeros(n).unwrap(), c.zeros(n).unwrap());
    for _ in 0..2 {
        g.adamw_step(&mut gp, &gb, &mut gm, &mut gv, &p).unwrap();
        c.adamw_step(&mut cp, &cb, &mut cm, &mut cv, &p).unwrap();
    }
    // The unsplit adamw test's bound (f32 update vs the spec's f64 rounded once).
    let tol = Tol { abs: 1e-6, rel: 1e-5 };
    assert_close(&down(&g, &gp), &cdown(&cp), tol, "adamw param");
    assert_close(&down(&g, &gv), &cdown(&cv), tol, "adamw v");

    for cc in [37usize, 40] {
        let v = 1001;
        let w = rand_f32(&mut rng, v * cc, -1.0, 1.0);
        let (gw, cw) = (up(&g, &w), c.upload(&w).unwrap());
        // Lookups and the scatter-add of their gradient, ids in every window, repeated, both ends.
        let ids: Vec<u32> = [0u32, 1000, 500, 3, 1000, 444, 445, 999, 0, 700, 701, 702].to_vec();
        let got = down(&g, &g.embedding(&ids, &gw, cc).unwrap());
        assert_close(&got, &cdown(&c.embedding(&ids, &cw, cc).unwrap()), exact, &format!("embedding C={cc}"));
        let dout = rand_f32(&mut rng, ids.len() * cc, -1.0, 1.0);
        let got = down(&g, &g.embedding_backward(&up(&g, &dout), &ids, v, cc).unwrap());
        let want = cdown(&c.embedding_backward(&c.upload(&dout).unwrap(), &ids, v, cc).unwrap());
        assert_close(&got, &want, exact, &format!("embedding_backward C={cc}"));
        // A linear layer over the whole head (+ bias): logits for generation.
        let m = 3;
        let x = rand_f32(&mut rng, m * cc, -1.0, 1.0);
        let bias = rand_f32(&mut rng, v, -1.0, 1.0);
        let d = MatmulDims::linear(m, v, cc);
        let got = down(&g, &g.matmul(&up(&g, &x), &gw, Some(&up(&g, &bias)), d).unwrap());
        let want = cdown(&c.matmul(&c.upload(&x).unwrap(), &cw, Some(&c.upload(&bias).unwrap()), d).unwrap());
        assert_close(&got, &want, Tol { abs: 3e-5, rel: 1e-5 }, &format!("linear over a split head C={cc}"));
        // The cross-entropy over the trainable head: loss, dh and dW.
        for softcap in [None, Some(5.0f32)] {
            let nt = 9;
            let h = rand_f32(&mut rng, nt * cc, -1.0, 1.0);
            let t: Vec<i32> = (0..nt).map(|i| if i == 4 { -100 } else { rng.below(v as _) as i32 }).collect();
            let (gs, gdh, gdw) =
                g.linear_cross_entropy(&up(&g, &h), &gw, &t, nt, cc, v, softcap, Some(0.5), true).unwrap();
            let (cs, cdh, cdw) =
                c.linear_cross_entropy(&c.upload(&h).unwrap(), &cw, &t, nt, cc, v, softcap, Some(0.5), true).unwrap();
            assert!((gs.loss_sum - cs.loss_sum).abs() <= 1e-5 * cs.loss_sum.abs(), "{} {}", gs.loss_sum, cs.loss_sum);
            // dh sums V = 1001 products: as the split frozen head's bound.
            let what = format!("split trainable head C={cc} softcap={softcap:?}");
            assert_close(
                &down(&g, &gdh.unwrap()),
                &cdown(&cdh.unwrap()),
                Tol { abs: 1e-3, rel: 1e-4 },
                &format!("{what} dh"),
            );
            assert_close(
                &down(&g, &gdw.unwrap()),
                &cdown(&cdw.unwrap()),
                Tol { abs: 1e-5, rel: 1e-4 },
                &format!("{what} dW"),
            );
        }
    }
    // An op with no windowed path refuses a tensor over the binding with an error naming it.
    let big = up(&g, &vec![1.0; 40 * 1001]);
    let err = g.rms_norm(&big, &up(&g, &[1.0; 40]), 1001, 40, 1e-5, false).err().expect("over the binding").to_string();
    assert!(err.contains("rms_norm") && err.contains("storage binding"), "{err}");
    println!("flat ops, embedding, linear and cross-entropy over 64 KiB windows match the CPU; {err}");
}

/// NF4 quantization on the device (nf4_quantize.wgsl, reciprocals and double quantization of the
/// absmax on the host) gives exactly the host quantizer's codes: both weights decode to the same
/// f32 values, compared bit for bit. Cases: odd element count (the pad nibble), a last partial
/// block, an all-zero block, values on both sides of code boundaries, double quantization, and a
/// training-shaped matrix; the quantized weight then multiplies like the host one.
#[test]
fn nf4_quantize_on_the_device_matches_the_host() {
    use loraforge::quant::nf4::Nf4Matrix;
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(41);
    for (rows, cols, dq) in [(7usize, 33usize, false), (7, 33, true), (5, 64, false), (96, 130, true), (256, 512, true)]
    {
        let mut w = rand_f32(&mut rng, rows * cols, -2.0, 2.0);
        if rows * cols >= 128 {
            w[64..128].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        }
        let gq = g.quantize_nf4(&w, rows, cols, dq).unwrap();
        assert!(gq.is_packed());
        let host = Arc::new(Nf4Matrix::quantize(&w, rows, cols, 64, dq).unwrap());
        let hq = g.upload_quant(host.clone()).unwrap();
        assert_eq!(g.quant_format(&gq), g.quant_format(&hq));
        let (a, b) = (down(g, &g.dequantize(&gq).unwrap()), down(g, &g.dequantize(&hq).unwrap()));
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(differ, 0, "{rows}x{cols} dq={dq}: {differ} decoded values differ from the host quantizer's");
        let cq = c.quantize_nf4(&w, rows, cols, dq).unwrap();
        let x = rand_f32(&mut rng, 3 * cols, -1.0, 1.0);
        let got = down(g, &g.quant_linear(&up(g, &x), &gq, None, 3).unwrap());
        let want = cdown(&c.quant_linear(&c.upload(&x).unwrap(), &cq, None, 3).unwrap());
        assert_close(&got, &want, Tol { abs: 3e-4, rel: 1e-4 }, "nf4 device-quantized linear");
    }
}

/// attention_decode.wgsl against the CPU (`Backend::attention_decode`, the f32 path generation
/// runs, itself tested against the f64 spec and the training attention in tests/ops). Shapes: one
/// query against 1 key; S = 300 and 600 (more than one 256-key chunk, a partial last one); a
/// prefill (TQ = S = 67); GQA 4/2, MQA 3/1; D = 8, 64, 256 (the limit); sliding windows 7 and
/// 300; soft-capping; window 0 (no key visible: zeros). The caches hold 5 more rows than S, filled
/// with NaN: a read past S would poison the output. Scores and sums in f32 in a different order
/// than the CPU's: 1e-5 relative (outputs are convex combinations of values in [-1, 1]).
#[test]
fn attention_decode_matches_cpu() {
    use loraforge::backend::cpu::attention_decode::DecodeParams;
    let g = gpu_or_skip!();
    let c = CpuBackend::new();
    let mut rng = Rng::new(61);
    let base = DecodeParams { tq: 1, s: 1, h: 4, kv_heads: 2, d: 8, scale: 0.35, window: None, softcap: None };
    let cases = [
        base,
        DecodeParams { s: 300, d: 64, ..base },
        DecodeParams { s: 600, h: 3, kv_heads: 1, d: 256, scale: 0.06, ..base },
        DecodeParams { tq: 67, s: 67, d: 16, ..base },
        DecodeParams { tq: 3, s: 40, window: Some(7), ..base },
        DecodeParams { tq: 2, s: 520, d: 64, window: Some(300), softcap: Some(5.0), ..base },
        DecodeParams { tq: 2, s: 9, window: Some(0), ..base },
    ];
    for p in cases {
        let q = rand_f32(&mut rng, p.tq * p.h * p.d, -1.0, 1.0);
        let row = p.kv_heads * p.d;
        let mut k = rand_f32(&mut rng, (p.s + 5) * row, -1.0, 1.0);
        let mut v = rand_f32(&mut rng, (p.s + 5) * row, -1.0, 1.0);
        let want = cdown(
            &c.attention_decode(
                &c.upload(&q).unwrap(),
                &c.upload(&k[..p.s * row]).unwrap(),
                &c.upload(&v[..p.s * row]).unwrap(),
                &p,
                false,
            )
            .unwrap(),
        );
        k[p.s * row..].fill(f32::NAN);
        v[p.s * row..].fill(f32::NAN);
        let got = down(g, &g.attention_decode(&up(g, &q), &up(g, &k), &up(g, &v), &p, false).unwrap());
        assert_close(&got, &want, Tol { abs: 1e-6, rel: 1e-5 }, &format!("attention_decode {p:?}"));
        if p.window == Some(0) {
            assert!(got.iter().all(|&x| x == 0.0));
        }
        // The f16 cache: rows packed on the device (after 3 rows of offset, as an append does),
        // equal to half's round-to-nearest-even; attention over them equals the CPU's over the
        // same f16 values (as above: only the cache's rounding differs from the f32 path).
        let n = p.s * row;
        let (mut kh, mut vh) = (g.zeros((p.s + 8) * row / 2).unwrap(), g.zeros((p.s + 8) * row / 2).unwrap());
        g.pack_f16_into(&mut kh, 3 * row / 2, &up(g, &k[..n]), n).unwrap();
        g.pack_f16_into(&mut vh, 3 * row / 2, &up(g, &v[..n]), n).unwrap();
        let unpack = |w: &[f32]| loraforge::backend::unpack_f16_pairs(w);
        let (k16, v16) =
            (unpack(&down(g, &kh))[3 * row..][..n].to_vec(), unpack(&down(g, &vh))[3 * row..][..n].to_vec());
        let rne: Vec<f32> = k[..n].iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        assert_eq!(k16, rne, "pack_f16 rounds to nearest even");
        let want16 = cdown(
            &c.attention_decode(&c.upload(&q).unwrap(), &c.upload(&k16).unwrap(), &c.upload(&v16).unwrap(), &p, false)
                .unwrap(),
        );
        // The kernel reads rows from word 0: hand it the packed rows from their start.
        let (mut k0, mut v0) = (g.zeros((p.s + 5) * row / 2).unwrap(), g.zeros((p.s + 5) * row / 2).unwrap());
        g.copy_into(&mut k0, 0, &kh, 3 * row / 2, n / 2).unwrap();
        g.copy_into(&mut v0, 0, &vh, 3 * row / 2, n / 2).unwrap();
        let got16 = down(g, &g.attention_decode(&up(g, &q), &k0, &v0, &p, true).unwrap());
        assert_close(&got16, &want16, Tol { abs: 1e-6, rel: 1e-5 }, &format!("attention_decode_f16 {p:?}"));
    }
    // Bad shapes are errors: H not a multiple of KV, more queries than keys, short caches, D > 256.
    let p = DecodeParams { h: 3, ..base };
    assert!(g.attention_decode(&up(g, &[0.0; 24]), &up(g, &[0.0; 16]), &up(g, &[0.0; 16]), &p, false).is_err());
    let p = DecodeParams { tq: 2, ..base };
    assert!(g.attention_decode(&up(g, &[0.0; 64]), &up(g, &[0.0; 16]), &up(g, &[0.0; 16]), &p, false).is_err());
    let p = DecodeParams { s: 3, ..base };
    assert!(g.attention_decode(&up(g, &[0.0; 32]), &up(g, &[0.0; 16]), &up(g, &[0.0; 16]), &p, false).is_err());
    let p = DecodeParams { d: 320, h: 1, kv_heads: 1, ..base };
    assert!(g.attention_decode(&up(g, &[0.0; 320]), &up(g, &[0.0; 320]), &up(g, &[0.0; 320]), &p, false).is_err());
    // The cache's copies and packing refuse ranges past either end and an odd f16 count; the CPU
    // refuses f16 caches.
    let (mut dst, src) = (g.zeros(8).unwrap(), up(g, &[1.0; 6]));
    assert!(g.copy_into(&mut dst, 4, &src, 0, 5).is_err());
    assert!(g.copy_into(&mut dst, 0, &src, 2, 5).is_err());
    assert!(g.pack_f16_into(&mut dst, 0, &src, 5).is_err());
    assert!(g.pack_f16_into(&mut dst, 6, &src, 6).is_err());
    let (mut cd, cs) = (c.zeros(8).unwrap(), c.upload(&[1.0; 6]).unwrap());
    assert!(c.copy_into(&mut cd, 4, &cs, 0, 5).is_err());
    assert!(c.copy_into(&mut cd, 0, &cs, usize::MAX, 2).is_err());
    let (q1, k1) = (c.upload(&[0.0; 32]).unwrap(), c.upload(&[0.0; 16]).unwrap());
    assert!(c.attention_decode(&q1, &k1, &k1, &base, true).is_err());
}

/// attention.wgsl / attention_backward.wgsl against the CPU on both builds (subgroup shuffles and
/// workgroup memory for the lanes' sums). Shapes that break the split: T = 1; T = 17 and 67 (row
/// blocks of 16 and tiles of 16 keys plus a partial one); D = 3 and 5 (not a multiple of the 4
/// lanes), 8, 16, 128 (4 lanes of 32 dims), 136 and 256 (8 lanes); GQA 4/2, MQA 3/1; windows
/// 5 (causal: a band), 0 (causal: nothing visible, out 0, lse 0; without causal: only the future
/// keys) and 7 without causal (one-sided);
/// softcap; segment ids in runs of 20 (packed rows: blocks skip other sequences) and interleaved
/// (i * 7 % 3: every block sees every segment, the ranges cannot cut). exp and f32 dot products
/// over up to 256 dims: out and lse ~1e-6; the gradients sum up to T terms: 1e-4.
#[test]
fn attention_forward_backward() {
    for (n, g) in gpus_or_skip!().into_iter().enumerate() {
        // The workgroup-memory build (second device) on the small head dims only: its lane sums
        // are the same code whatever D is, and each wide variant costs lavapipe ~20 s to compile.
        check_attention(g, if n == 0 { 256 } else { 16 });
    }
}

fn check_attention(g: &WgpuBackend, max_d: usize) {
    let c = CpuBackend::new();
    let mut rng = Rng::new(11);
    let base =
        AttnParams { b: 2, t: 67, h: 4, kv_heads: 2, d: 8, scale: 0.35, causal: true, window: None, softcap: None };
    #[derive(Clone, Copy)]
    enum Seg {
        None,
        Runs,
        Interleaved,
    }
    let cases = [
        (base, Seg::None),
        (AttnParams { causal: false, h: 3, kv_heads: 1, d: 16, t: 13, ..base }, Seg::None),
        (AttnParams { window: Some(5), ..base }, Seg::None),
        (AttnParams { window: Some(0), t: 5, ..base }, Seg::None),
        (AttnParams { causal: false, window: Some(0), t: 9, ..base }, Seg::None), // only future keys
        (AttnParams { causal: false, window: Some(7), d: 5, t: 40, ..base }, Seg::None),
        (AttnParams { softcap: Some(2.0), ..base }, Seg::Runs),
        (AttnParams { d: 3, ..base }, Seg::Interleaved),
        (AttnParams { b: 1, t: 1, d: 16, ..base }, Seg::None),
        (AttnParams { t: 17, d: 128, scale: 0.09, ..base }, Seg::None),
        (AttnParams { b: 1, t: 17, h: 2, kv_heads: 1, d: 136, scale: 0.09, ..base }, Seg::Runs),
        (AttnParams { b: 1, t: 23, h: 2, kv_heads: 1, d: 256, scale: 0.06, window: Some(9), ..base }, Seg::None),
    ];
    // Training sizes (`real_sizes`): SmolLM2-like GQA at 2048 tokens; Gemma 3's 256-wide heads
    // with its 512-token window over packed sequences.
    let real = [
        (AttnParams { b: 1, t: 2048, h: 32, kv_heads: 8, d: 64, scale: 0.125, ..base }, Seg::None),
        (AttnParams { b: 1, t: 1024, h: 4, kv_heads: 1, d: 256, scale: 0.0625, window: Some(512), ..base }, Seg::Runs),
    ];
    let real = if real_sizes() { &real[..] } else { &[] };
    for (p, seg_kind) in cases.into_iter().chain(real.iter().copied()).filter(|(p, _)| p.d <= max_d) {
        let q = rand_f32(&mut rng, p.b * p.t * p.h * p.d, -1.0, 1.0);
        let k = rand_f32(&mut rng, p.b * p.t * p.kv_heads * p.d, -1.0, 1.0);
        let vv = rand_f32(&mut rng, p.b * p.t * p.kv_heads * p.d, -1.0, 1.0);
        let dout = rand_f32(&mut rng, q.len(), -1.0, 1.0);
        let seg: Vec<u32> = (0..p.b * p.t)
            .map(|i| match seg_kind {
                Seg::Interleaved => (i % p.t * 7 % 3) as u32,
                _ => ((i % p.t) / if p.t > 100 { 300 } else { 20 }) as u32,
            })
            .collect();
        let seg = (!matches!(seg_kind, Seg::None)).then_some(&seg[..]);
        let what = format!("{p:?} seg {} subgroups {}", seg.is_some(), g.uses_subgroups());
        let (gq, gk, gv) = (up(g, &q), up(g, &k), up(g, &vv));
        let (cq, ck, cv) = (c.upload(&q).unwrap(), c.upload(&k).unwrap(), c.upload(&vv).unwrap());
        let (go, gl) = g.attention(&gq, &gk, &gv, seg, &p).unwrap();
        let (co, cl) = c.attention(&cq, &ck, &cv, seg, &p).unwrap();
        // Real sizes sum over up to 2048 keys (16x the small cases): 10x the tolerances.
        let f = if p.t > 100 { 10.0 } else { 1.0 };
        let tol = Tol { abs: 2e-6 * f, rel: 1e-5 * f };
        assert_close(&down(g, &go), &cdown(&co), tol, &format!("attention out {what}"));
        assert_close(&down(g, &gl), &cdown(&cl), tol, &format!("attention lse {what}"));
        let (gdq, gdk, gdv) = g.attention_backward(&up(g, &dout), &gq, &gk, &gv, &go, &gl, seg, &p).unwrap();
        let (cdq, cdk, cdv) =
            c.attention_backward(&c.upload(&dout).unwrap(), &cq, &ck, &cv, &co, &cl, seg, &p).unwrap();
        let tol = Tol { abs: 1e-5 * f, rel: 1e-4 * f };
        assert_close(&down(g, &gdq), &cdown(&cdq), tol, &format!("dq {what}"));
        assert_close(&down(g, &gdk), &cdown(&cdk), tol, &format!("dk {what}"));
        assert_close(&down(g, &gdv), &cdown(&cdv), tol, &format!("dv {what}"));
    }
    // Bad shapes are errors naming the op, not a dispatch.
    let p = AttnParams { d: 257, t: 1, b: 1, h: 1, kv_heads: 1, ..base };
    let x = up(g, &[0.0; 257]);
    let e = g.attention(&x, &x, &x, None, &p).err().expect("D = 257 must be refused");
    assert!(e.to_string().contains("attention"), "{e}");
    let p = AttnParams { d: 4, t: 3, b: 1, h: 2, kv_heads: 1, ..base };
    let (q, kv) = (up(g, &[0.0; 24]), up(g, &[0.0; 11]));
    assert!(g.attention(&q, &kv, &kv, None, &p).is_err(), "k shorter than B T KV D");
}

/// The GPU update is f32, the spec's f64 rounded once: a few ulp of param, m, v.
#[test]
fn adamw_and_grad_norm() {
    for g in gpus_or_skip!() {
        check_adamw_and_grad_norm(g);
    }
}

fn check_adamw_and_grad_norm(g: &WgpuBackend) {
    let c = CpuBackend::new();
    let mut rng = Rng::new(12);
    let n = 1031;
    let p0 = rand_f32(&mut rng, n, -1.0, 1.0);
    let (mut gp, mut gm, mut gv) = (up(g, &p0), g.zeros(n).unwrap(), g.zeros(n).unwrap());
    let (mut cp, mut cm, mut cv) = (c.upload(&p0).unwrap(), c.zeros(n).unwrap(), c.zeros(n).unwrap());
    for step in 1..=3 {
        let grad = rand_f32(&mut rng, n, -1.0, 1.0);
        let hp = AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step };
        g.adamw_step(&mut gp, &up(g, &grad), &mut gm, &mut gv, &hp).unwrap();
        c.adamw_step(&mut cp, &c.upload(&grad).unwrap(), &mut cm, &mut cv, &hp).unwrap();
    }
    let tol = Tol { abs: 1e-6, rel: 1e-5 };
    assert_close(&down(g, &gp), &cdown(&cp), tol, "adamw param");
    assert_close(&down(g, &gm), &cdown(&cm), tol, "adamw m");
    assert_close(&down(g, &gv), &cdown(&cv), tol, "adamw v");

    let bufs: Vec<Vec<f32>> = [1usize, 4095, 4097, 10007].iter().map(|&k| rand_f32(&mut rng, k, -1.0, 1.0)).collect();
    let gb: Vec<_> = bufs.iter().map(|b| up(g, b)).collect();
    let cb: Vec<_> = bufs.iter().map(|b| c.upload(b).unwrap()).collect();
    let got = g.grad_norm_sq(&gb.iter().collect::<Vec<_>>()).unwrap();
    let want = c.grad_norm_sq(&cb.iter().collect::<Vec<_>>()).unwrap();
    // partial sums of 4096 squares in f32: relative ~1e-6
    assert!((got - want).abs() <= 1e-5 * want, "grad_norm_sq {got} vs {want}");
    let nan = up(g, &[1.0, f32::NAN]);
    assert!(!g.grad_norm_sq(&[&nan]).unwrap().is_finite(), "NaN must make the norm non-finite");
}

/// Params go through a ring of uniform slots and bind groups are cached (device.rs; the default on
/// hardware adapters, asked for here). Two checks:
/// 200 chained scales with distinct factors (over three submissions of 64 passes, each pass
/// binding the same two pooled buffers as the one before last, so only its ring slot tells the
/// factors apart) equal the CPU's exactly; and a step-like sequence (matmul, norm, GLU, attention,
/// cross-entropy, AdamW) run a second time creates no bind group and gives the same bits, as it
/// does with reuse turned off (`reuse_bindings: false`, one bind group per dispatch).
#[test]
fn params_ring_and_bind_group_reuse() {
    let _ = gpu_or_skip!();
    // Devices of their own (the counters of the shared one move with other tests), in both modes
    // whatever the adapter's default.
    let own = WgpuBackend::with_options(WgpuOptions { reuse_bindings: Some(true), ..Default::default() }).unwrap();
    let fresh = WgpuBackend::with_options(WgpuOptions { reuse_bindings: Some(false), ..Default::default() }).unwrap();
    let c = CpuBackend::new();
    let mut rng = Rng::new(53);
    let x0 = rand_f32(&mut rng, 1000, -1.0, 1.0);
    let (mut gx, mut cx) = (up(&own, &x0), c.upload(&x0).unwrap());
    for i in 0..200 {
        let s = 1.0 + (i as f32 + 1.0) * 1e-3 * if i % 2 == 0 { 1.0 } else { -0.5 };
        gx = own.scale(&gx, s).unwrap();
        cx = c.scale(&cx, s).unwrap();
    }
    assert_close(&down(&own, &gx), &cdown(&cx), Tol { abs: 0.0, rel: 0.0 }, "200 chained scales");
    drop(gx);

    let (n, cc, v) = (24usize, 32usize, 50usize);
    let x = rand_f32(&mut rng, n * cc, -1.0, 1.0);
    let w = rand_f32(&mut rng, cc * cc, -0.2, 0.2);
    let head = rand_f32(&mut rng, v * cc, -0.2, 0.2);
    let t: Vec<i32> = (0..n).map(|i| (i * 7 % v) as i32).collect();
    let step = |g: &WgpuBackend| -> Vec<f32> {
        let (gx, gw) = (up(g, &x), up(g, &w));
        let y = g.matmul(&gx, &gw, None, MatmulDims::linear(n, cc, cc)).unwrap();
        let (h, _) = g.rms_norm(&y, &up(g, &[1.0; 32]), n, cc, 1e-5, false).unwrap();
        let z = g.glu(&h, &y, false).unwrap();
        let p = AttnParams {
            b: 2,
            t: n / 2,
            h: 2,
            kv_heads: 1,
            d: 16,
            scale: 0.25,
            causal: true,
            window: None,
            softcap: None,
        };
        let kv = rand_like(n * 16);
        let (o, _) = g.attention(&z, &up(g, &kv), &up(g, &kv), None, &p).unwrap();
        let mut gh = up(g, &head);
        let (_, _, dw) = g.linear_cross_entropy(&o, &gh, &t, n, cc, v, None, Some(1.0), true).unwrap();
        let dw = dw.unwrap();
        let (mut m, mut vv) = (g.zeros(v * cc).unwrap(), g.zeros(v * cc).unwrap());
        let hp = AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1 };
        g.adamw_step(&mut gh, &dw, &mut m, &mut vv, &hp).unwrap();
        down(g, &gh)
    };
    let first = step(&own);
    let s1 = own.dispatch_stats();
    let second = step(&own);
    let s2 = own.dispatch_stats();
    assert!(s2.dispatches > s1.dispatches + 8, "{s1:?} -> {s2:?}");
    assert_eq!(
        s2.bind_groups_created, s1.bind_groups_created,
        "the repeated step created bind groups: {s1:?} -> {s2:?}"
    );
    assert_eq!(first, second, "same step, same bits");
    let (f1, f2) = (step(&fresh), step(&fresh));
    let sf = fresh.dispatch_stats();
    assert_eq!(sf.bind_groups_created, sf.dispatches, "reuse off: one bind group per dispatch");
    assert_eq!(first, f1);
    assert_eq!(first, f2);
    println!(
        "step: {} dispatches, bind groups created: first run {}, second run 0",
        s2.dispatches - s1.dispatches,
        s1.bind_groups_created
    );
}

fn rand_like(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.5).collect()
}

/// Pipelines compile once; the pool returns buffers and counts current/peak.
#[test]
fn pipeline_cache_and_pool() {
    let _ = gpu_or_skip!();
    // A device of its own: the shared one compiles other tests' kernels concurrently.
    let own = WgpuBackend::new().unwrap();
    let g = &own;
    let a = up(g, &[1.0; 1000]);
    let _ = g.scale(&a, 2.0).unwrap();
    g.sync().unwrap();
    let compiled = g.pipelines_compiled();
    for _ in 0..5 {
        let _ = g.scale(&a, 3.0).unwrap();
    }
    g.sync().unwrap();
    assert_eq!(g.pipelines_compiled(), compiled, "same kernel key must not recompile");
    let m = g.memory();
    assert!(m.peak >= m.current && m.current >= 4000, "{m:?}");
    assert!(g.name().starts_with("wgpu"));
    assert!(!loraforge::backend::wgpu::describe_adapters().is_empty());
}
