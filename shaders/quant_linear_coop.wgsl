// quant_linear_coop.wgsl: quant_linear.wgsl's forward y = x · Wᵀ (+ bias) on cooperative matrices
// (tensor cores through VK_KHR_cooperative_matrix), with the frozen weight W (rows = d_out,
// cols = d_in) decoded from its packed blocks (quant_decode.wgsl, prepended after the tile prelude
// matmul_coop_tile16.wgsl / matmul_coop_tile8.wgsl) and rounded to f16 on its way into
// workgroup memory. W never exists as f32 or f16 in device memory.
// Spec: src/backend/cpu/quant_linear.rs   Test: tests/wgpu_ops.rs (quant_linear_coop_matches_the_cpu)
//
// Same Params and bindings as quant_linear.wgsl, so the launcher (src/backend/wgpu/ops.rs
// `quant_matmul_into`) only changes the shader name and overrides. Forward only, and only when
// asked for (`WgpuOptions::coop_matrix`): x and the decoded weights are of order 1, and f16's 11
// significant bits are the same rounding matmul_coop.wgsl makes; the input gradient dx = dy · W
// keeps quant_linear.wgsl (gradients fall below f16's range).
//
// Tiling as matmul_coop.wgsl: 4 subgroups (WG = 4 x the subgroup size) compute a 4T x 4T tile of C
// (M = tokens, N = this piece's rows of W); subgroup s owns rows T s .. T s + T and four
// accumulators. K (= cols) advances T at a time. op(B)[k][j] = W[j][k]: the B tile is stored
// column-major, W row j's T elements contiguous at Bs[j T ..], and loaded with `coopLoad`
// (column-major) — so consecutive invocations decode consecutive elements of one W row, which
// share their packed bytes and scales, exactly as they sit in the A tile (row-major, `coopLoadT`).
// Contract easy to miss: every coop* call must be reached by the whole subgroup (out-of-range
// elements are zeros, never skipped work); `accumulate` = 1 makes C += result.
override WG: u32 = 128u;  // invocations: 4 subgroups

struct Params {
    m: u32, n: u32, k: u32,
    rows: u32, cols: u32,
    has_bias: u32,
    accumulate: u32,
    p0: u32, p1: u32, p2: u32, p3: u32,
    offset: f32,
    nwg_x: u32,    // unused here (quant_linear.wgsl's gemv grid)
    a_off: u32,    // element offset of A's first row in `a`
    c_off: u32,    // element offset of C's first row in `c`
    lda: u32,      // elements between rows of A
    ldc: u32,      // elements between rows of C (N unless C is a column slice)
    bias_off: u32, // bias index of C's first column
};
@group(0) @binding(0) var<storage, read>       a:    array<f32>;  // (M, K)
@group(0) @binding(1) var<storage, read>       q:    array<u32>;  // packed W
@group(0) @binding(2) var<storage, read>       aux:  array<f32>;  // format side table
@group(0) @binding(3) var<storage, read>       bias: array<f32>;  // (N) when has_bias
@group(0) @binding(4) var<storage, read_write> c:    array<f32>;  // (M, N)
@group(0) @binding(5) var<uniform>             p:    Params;

const BM: u32 = 4u * T;
const BN: u32 = 4u * T;
const BK: u32 = T;
const TT: u32 = T * T;
var<workgroup> As: array<f16, 4u * TT>;  // [BM][BK]: A's rows, row-major
var<workgroup> Bs: array<f16, 4u * TT>;  // [BN][BK]: W's rows, i.e. op(B) column-major
var<workgroup> Cs: array<f32, 4u * TT>;  // per subgroup s: [T][T] at TT s

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32,
        @builtin(subgroup_size) sg_size: u32) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    var acc0: TileC;
    var acc1: TileC;
    var acc2: TileC;
    var acc3: TileC;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // BM = BN, so one index walks both tiles: element kk of row r (of A) and of W row r.
        for (var idx = tid; idx < BM * BK; idx += WG) {
            let r = idx / BK;
            let gk = k0 + idx % BK;
            var x = 0.0;
            if (row0 + r < p.m && gk < p.k) { x = a[p.a_off + (row0 + r) * p.lda + gk]; }
            As[idx] = f16(x);
            var w = 0.0;
            if (col0 + r < p.n && gk < p.k) { w = w_at(col0 + r, gk); }
            Bs[idx] = f16(w);
        }
        workgroupBarrier();
        let at = coopLoadT<TileA>(&As[sg * T * BK], BK);
        acc0 = coopMultiplyAdd(at, coopLoad<TileB>(&Bs[0u], BK), acc0);
        acc1 = coopMultiplyAdd(at, coopLoad<TileB>(&Bs[T * BK], BK), acc1);
        acc2 = coopMultiplyAdd(at, coopLoad<TileB>(&Bs[2u * T * BK], BK), acc2);
        acc3 = coopMultiplyAdd(at, coopLoad<TileB>(&Bs[3u * T * BK], BK), acc3);
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        switch j {
            case 0u: { coopStoreT(acc0, &Cs[sg * TT], T); }
            case 1u: { coopStoreT(acc1, &Cs[sg * TT], T); }
            case 2u: { coopStoreT(acc2, &Cs[sg * TT], T); }
            default: { coopStoreT(acc3, &Cs[sg * TT], T); }
        }
        workgroupBarrier();
        for (var e = lane; e < TT; e += sg_size) {
            let r = row0 + sg * T + e / T;
            let col = col0 + j * T + e % T;
            if (r < p.m && col < p.n) {
                var v = Cs[sg * TT + e];
                if (p.has_bias != 0u) { v += bias[p.bias_off + col]; }
                let o = p.c_off + r * p.ldc + col;
                if (p.accumulate != 0u) { v += c[o]; }
                c[o] = v;
            }
        }
        workgroupBarrier();
    }
}
