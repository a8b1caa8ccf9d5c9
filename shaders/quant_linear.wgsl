// quant_linear.wgsl: y = x · Wᵀ (+ bias) and its input gradient dx = dy · W, with the frozen weight W
// (rows = d_out, cols = d_in) decoded from its packed blocks inside the tile load (quant_decode.wgsl,
// prepended). W never exists as f32 in device memory.
// Spec: src/backend/cpu/quant_linear.rs   Test: tests/wgpu_ops.rs (quant_formats_*)
// Variants (override constants): FORMAT (see quant_decode.wgsl), BACKWARD.
//   forward:  C (M=n, N=rows) = A (n, cols) · B with B[k][j] = W[j][k]   (K = cols)
//   backward: C (M=n, N=cols) = A (n, rows) · B with B[k][j] = W[k][j]   (K = rows)
// Tiling as matmul.wgsl: 16x16 threads, a 64x64 tile of C, 4x4 per thread, K in steps of 16 through
// workgroup tiles of vec4. The B-tile load is arranged so consecutive threads decode consecutive
// elements of one W row (the packed bytes they share are then read from the same cache lines).
// Entry `gemv` (forward, M <= GEMV_MAX tokens: generation, short prompts): one 256-thread workgroup
// per output feature j; thread t decodes W[j][t], W[j][t + 256], ... once and multiplies each by
// the M token rows, then a workgroup tree reduction. The tiled kernel would leave 63 of its 64
// tile rows idle at M = 1 and decode every element 64 times over.
// A weight larger than one storage binding arrives in row pieces (src/quant/mod.rs `split_rows`):
// the launcher calls this kernel once per piece with offsets and leading dimensions (lda, ldc) so a
// piece writes its slice of C's columns (forward) or adds its part of the K sum (backward).
// Contract easy to miss: `accumulate` = 1 makes C += result.
override BACKWARD: bool = false;

struct Params {
    m: u32, n: u32, k: u32,
    rows: u32, cols: u32,
    has_bias: u32,
    accumulate: u32,
    p0: u32, p1: u32, p2: u32, p3: u32,
    offset: f32,
    nwg_x: u32,    // gemv: workgroups along x of the folded 1-D grid
    a_off: u32,    // element offset of A's first row in `a`
    c_off: u32,    // element offset of C's first row in `c`
    lda: u32,      // elements between rows of A (K unless A is a column slice)
    ldc: u32,      // elements between rows of C (N unless C is a column slice)
    bias_off: u32, // bias index of C's first column
};
@group(0) @binding(0) var<storage, read>       a:    array<f32>;  // (M, K)
@group(0) @binding(1) var<storage, read>       q:    array<u32>;  // packed W
@group(0) @binding(2) var<storage, read>       aux:  array<f32>;  // format side table
@group(0) @binding(3) var<storage, read>       bias: array<f32>;  // (N) when has_bias
@group(0) @binding(4) var<storage, read_write> c:    array<f32>;  // (M, N)
@group(0) @binding(5) var<uniform>             p:    Params;

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
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;  // 0..1023 over the 16x64 tile
            let kk = idx % BK;
            let mm = idx / BK;
            let gm = row0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) { v = a[p.a_off + gm * p.lda + gk]; }
            As[kk * 16u + mm / 4u][mm % 4u] = v;
            var kb: u32;
            var nn: u32;
            if (BACKWARD) { nn = idx % BN; kb = idx / BN; } else { kb = idx % BK; nn = idx / BK; }
            let gn = col0 + nn;
            let gk2 = k0 + kb;
            var w = 0.0;
            if (gn < p.n && gk2 < p.k) {
                if (BACKWARD) { w = w_at(gk2, gn); } else { w = w_at(gn, gk2); }
            }
            Bs[kb * 16u + nn / 4u][nn % 4u] = w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let av = As[kk * 16u + lid.y];
            let bv = Bs[kk * 16u + lid.x];
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let gr = row0 + lid.y * 4u + i;
        if (gr >= p.m) { break; }
        for (var j = 0u; j < 4u; j++) {
            let gc = col0 + lid.x * 4u + j;
            if (gc >= p.n) { break; }
            var v = acc[i][j];
            if (p.has_bias != 0u) { v += bias[p.bias_off + gc]; }
            let o = p.c_off + gr * p.ldc + gc;
            if (p.accumulate != 0u) { c[o] = c[o] + v; } else { c[o] = v; }
        }
    }
}

const GEMV_MAX: u32 = 4u;
const GEMV_WG: u32 = 256u;  // the 4 token sums: workgroup_reduce*.wgsl's wg_sum4 (prepended)

@compute @workgroup_size(256)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, inv: Inv) {
    let j = wid.y * p.nwg_x + wid.x;  // output feature (row of W); uniform per workgroup
    let t = inv.lid;
    var acc = vec4<f32>(0.0);
    if (j < p.n) {
        for (var k = t; k < p.k; k += GEMV_WG) {
            let w = w_at(j, k);
            for (var i = 0u; i < p.m; i++) {
                acc[i] += a[p.a_off + i * p.lda + k] * w;
            }
        }
    }
    let total = wg_sum4(acc, inv);
    if (t < p.m && j < p.n) {
        var v = total[t];
        if (p.has_bias != 0u) { v += bias[p.bias_off + j]; }
        let o = p.c_off + t * p.ldc + j;
        if (p.accumulate != 0u) { c[o] = c[o] + v; } else { c[o] = v; }
    }
}
