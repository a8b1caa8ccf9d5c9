// matmul.wgsl: C = op(A) · op(B) (+ bias), batched, register-blocked.
// Spec: src/backend/cpu/matmul.rs (`matmul_forward`)   Test: tests/wgpu_ops.rs (matmul_*)
// Variants (override constants): TRANS_A, TRANS_B. The backward is two calls of this kernel with
// transposes flipped (see src/backend/wgpu/ops.rs `matmul_backward`), no separate shader.
//
// Tiling: a workgroup of 16x16 threads computes a 64x64 tile of C; each thread a 4x4 block held in
// registers. K advances 16 at a time through two workgroup tiles stored as vec4 (4 rows of A /
// 4 columns of B per word), so the inner loop is 2 vec4 loads + 16 FMAs per k. The global loads are
// arranged so consecutive threads read consecutive addresses for either transpose.
// Entry `main_vec4`: the same tiles with 16-byte global loads (one vec4 per thread per tile instead
// of four scalars), for operands whose rows are 16-byte aligned: the launcher picks it when every
// offset, row stride and batch stride is a multiple of 4 elements, K % 4 == 0 and the contiguous dimension of each
// operand (K, or M / N when transposed) is a multiple of 4 (then a vec4 is wholly in or out of
// range). `a4` / `b4` alias `a` / `b` (same bindings, only this entry uses them).
// Row strides lda / ldb / ldc are parameters (the launcher passes K or M, N or K, and N for
// contiguous operands), so a launch can read or write a column block of a wider matrix: the
// cross-entropy over a head larger than one storage binding computes its logits, dh and dW one
// window of head rows at a time (src/backend/wgpu/ops.rs `cross_entropy`).
// Contract easy to miss: `accumulate` = 1 makes C += result (backward into an existing gradient).
override TRANS_A: bool = false;  // A stored (K, M) instead of (M, K)
override TRANS_B: bool = false;  // B stored (N, K) instead of (K, N)

struct Params {
    m: u32, n: u32, k: u32,
    a_off: u32,       // element offset of batch item 0 in a
    b_off: u32,
    c_off: u32,
    a_bs: u32,        // elements between batch items (0 = broadcast)
    b_bs: u32,
    c_bs: u32,
    has_bias: u32,    // bias (N) added to every row
    accumulate: u32,  // 1: C += A·B
    lda: u32,         // elements between rows of A as stored (K, or M when TRANS_A)
    ldb: u32,         // elements between rows of B as stored (N, or K when TRANS_B)
    ldc: u32,         // elements between rows of C
};
@group(0) @binding(0) var<storage, read>       a:    array<f32>;  // (batch, M, K) or (batch, K, M)
@group(0) @binding(1) var<storage, read>       b:    array<f32>;  // (batch, K, N) or (batch, N, K)
@group(0) @binding(2) var<storage, read>       bias: array<f32>;  // (N) when has_bias
@group(0) @binding(3) var<storage, read_write> c:    array<f32>;  // (batch, M, N)
@group(0) @binding(4) var<uniform>             p:    Params;
@group(0) @binding(0) var<storage, read>       a4:   array<vec4<f32>>;  // a, for main_vec4
@group(0) @binding(1) var<storage, read>       b4:   array<vec4<f32>>;  // b, for main_vec4

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
var<workgroup> As: array<vec4<f32>, 256>;  // [BK][BM/4]
var<workgroup> Bs: array<vec4<f32>, 256>;  // [BK][BN/4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tid = lid.y * 16u + lid.x;
    let a0 = p.a_off + wid.z * p.a_bs;
    let b0 = p.b_off + wid.z * p.b_bs;
    var acc: array<vec4<f32>, 4>;  // acc[i] = C[row0 + 4 ly + i, col0 + 4 lx .. +4]
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;  // 0..1023 over the 16x64 tile
            var kk: u32;
            var mm: u32;
            if (TRANS_A) { mm = idx % BM; kk = idx / BM; } else { kk = idx % BK; mm = idx / BK; }
            let gm = row0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) {
                if (TRANS_A) { v = a[a0 + gk * p.lda + gm]; } else { v = a[a0 + gm * p.lda + gk]; }
            }
            As[kk * 16u + mm / 4u][mm % 4u] = v;
            var nn: u32;
            if (TRANS_B) { kk = idx % BK; nn = idx / BK; } else { nn = idx % BN; kk = idx / BN; }
            let gn = col0 + nn;
            let gk2 = k0 + kk;
            var w = 0.0;
            if (gn < p.n && gk2 < p.k) {
                if (TRANS_B) { w = b[b0 + gn * p.ldb + gk2]; } else { w = b[b0 + gk2 * p.ldb + gn]; }
            }
            Bs[kk * 16u + nn / 4u][nn % 4u] = w;
        }
        workgroupBarrier();
        tile_fma(lid, &acc);
        workgroupBarrier();
    }
    store_tile(wid, lid, acc);
}

// acc += the As · Bs product of this thread's 4x4 block.
fn tile_fma(lid: vec3<u32>, acc: ptr<function, array<vec4<f32>, 4>>) {
    for (var kk = 0u; kk < BK; kk++) {
        let av = As[kk * 16u + lid.y];
        let bv = Bs[kk * 16u + lid.x];
        (*acc)[0] += av.x * bv;
        (*acc)[1] += av.y * bv;
        (*acc)[2] += av.z * bv;
        (*acc)[3] += av.w * bv;
    }
}

fn store_tile(wid: vec3<u32>, lid: vec3<u32>, acc: array<vec4<f32>, 4>) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let c0 = p.c_off + wid.z * p.c_bs;
    for (var i = 0u; i < 4u; i++) {
        let gr = row0 + lid.y * 4u + i;
        if (gr >= p.m) { break; }
        for (var j = 0u; j < 4u; j++) {
            let gc = col0 + lid.x * 4u + j;
            if (gc >= p.n) { break; }
            var v = acc[i][j];
            if (p.has_bias != 0u) { v += bias[gc]; }
            let o = c0 + gr * p.ldc + gc;
            if (p.accumulate != 0u) { c[o] = c[o] + v; } else { c[o] = v; }
        }
    }
}

@compute @workgroup_size(16, 16)
fn main_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tid = lid.y * 16u + lid.x;  // each thread loads one vec4 of each 16x64 tile
    let a0 = p.a_off + wid.z * p.a_bs;  // multiples of 4 (the launcher checks)
    let b0 = p.b_off + wid.z * p.b_bs;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        let z = vec4<f32>(0.0);
        if (TRANS_A) {  // (K, M): 4 consecutive m of row k; thread -> (k = tid / 16, m4 = tid % 16)
            let kk = tid / 16u;
            let m4 = tid % 16u;
            let gk = k0 + kk;
            var v = z;
            if (gk < p.k && row0 + 4u * m4 < p.m) { v = a4[(a0 + gk * p.lda + row0 + 4u * m4) / 4u]; }
            As[kk * 16u + m4] = v;
        } else {  // (M, K): 4 consecutive k of row m; thread -> (m = tid / 4, k4 = tid % 4)
            let mm = tid / 4u;
            let k4 = tid % 4u;
            let gm = row0 + mm;
            var v = z;
            if (gm < p.m && k0 + 4u * k4 < p.k) { v = a4[(a0 + gm * p.lda + k0 + 4u * k4) / 4u]; }
            for (var j = 0u; j < 4u; j++) { As[(4u * k4 + j) * 16u + mm / 4u][mm % 4u] = v[j]; }
        }
        if (TRANS_B) {  // (N, K): 4 consecutive k of row n
            let nn = tid / 4u;
            let k4 = tid % 4u;
            let gn = col0 + nn;
            var w = z;
            if (gn < p.n && k0 + 4u * k4 < p.k) { w = b4[(b0 + gn * p.ldb + k0 + 4u * k4) / 4u]; }
            for (var j = 0u; j < 4u; j++) { Bs[(4u * k4 + j) * 16u + nn / 4u][nn % 4u] = w[j]; }
        } else {  // (K, N): 4 consecutive n of row k
            let kk = tid / 16u;
            let n4 = tid % 16u;
            let gk = k0 + kk;
            var w = z;
            if (gk < p.k && col0 + 4u * n4 < p.n) { w = b4[(b0 + gk * p.ldb + col0 + 4u * n4) / 4u]; }
            Bs[kk * 16u + n4] = w;
        }
        workgroupBarrier();
        tile_fma(lid, &acc);
        workgroupBarrier();
    }
    store_tile(wid, lid, acc);
}
