// matmul_coop.wgsl: matmul.wgsl's C = op(A) · op(B) (+ bias) on cooperative matrices (tensor
// cores on NVIDIA through VK_KHR_cooperative_matrix): TxTxT products of f16 tiles accumulated in
// f32, T = 16 or 8 from the prelude (matmul_coop_tile16.wgsl / matmul_coop_tile8.wgsl, which also
// holds the enables and the matrix types). Same Params, bindings, transposes, batching, bias and
// `accumulate` as matmul.wgsl, so the launcher (src/backend/wgpu/ops.rs `matmul_view`) only
// changes the shader name.
// Spec: src/backend/cpu/matmul.rs (`matmul_forward`)   Test: tests/wgpu_ops.rs (matmul_coop_*)
//
// Used only when asked for (`WgpuOptions::coop_matrix`, LORAFORGE_WGPU_COOP=1) on an adapter
// that lists an f16 16x16x16 (preferred) or 8x8x8 -> f32 subgroup configuration, has SHADER_F16
// and SUBGROUP, and one subgroup size (device.rs). The inputs are rounded to f16 on their way into
// workgroup memory: 11 significant bits, and magnitudes outside [6e-8, 65504] lose everything
// (flush or overflow). Fine for activations and weights of order 1; gradients of order 1e-6 are
// not, so the backward keeps matmul.wgsl (see the launcher).
//
// Tiling: a workgroup of 4 subgroups (WG = 4 x the subgroup size, set by the launcher) computes a
// 4T x 4T tile of C; subgroup s owns rows T s .. T s + T and all four T-column blocks (four f32
// accumulators). K advances T at a time: every invocation converts its share of the 4T x T A tile
// and the T x 4T B tile (zero outside the matrix, so any shape works) into row-major f16
// workgroup arrays, then each subgroup loads its A block and the four B blocks as cooperative
// matrices. The result leaves through a per-subgroup T x T f32 staging block, one accumulator at
// a time, so edges, bias and accumulate are plain per-element code.
// Contract easy to miss: every coop* call must be reached by the whole subgroup (no early return
// before the last barrier; out-of-range work is masked, not skipped).

override TRANS_A: bool = false;  // A stored (K, M) instead of (M, K)
override TRANS_B: bool = false;  // B stored (N, K) instead of (K, N)
override WG: u32 = 128u;         // invocations: 4 subgroups

struct Params {
    m: u32, n: u32, k: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    a_bs: u32,
    b_bs: u32,
    c_bs: u32,
    has_bias: u32,
    accumulate: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
};
@group(0) @binding(0) var<storage, read>       a:    array<f32>;
@group(0) @binding(1) var<storage, read>       b:    array<f32>;
@group(0) @binding(2) var<storage, read>       bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c:    array<f32>;
@group(0) @binding(4) var<uniform>             p:    Params;

const BM: u32 = 4u * T;
const BN: u32 = 4u * T;
const BK: u32 = T;
const TT: u32 = T * T;
var<workgroup> As: array<f16, 4u * TT>;  // [BM][BK] row-major
var<workgroup> Bs: array<f16, 4u * TT>;  // [BK][BN] row-major
var<workgroup> Cs: array<f32, 4u * TT>;  // per subgroup s: [T][T] at TT s

// op(A)[r, kk] for the tile at (row0, k0), 0 outside.
fn load_a(a0: u32, r: u32, kk: u32) -> f16 {
    if (r >= p.m || kk >= p.k) { return f16(0.0); }
    if (TRANS_A) { return f16(a[a0 + kk * p.lda + r]); }
    return f16(a[a0 + r * p.lda + kk]);
}

// op(B)[kk, col], 0 outside.
fn load_b(b0: u32, kk: u32, col: u32) -> f16 {
    if (kk >= p.k || col >= p.n) { return f16(0.0); }
    if (TRANS_B) { return f16(b[b0 + col * p.ldb + kk]); }
    return f16(b[b0 + kk * p.ldb + col]);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32,
        @builtin(subgroup_size) sg_size: u32) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let a0 = p.a_off + wid.z * p.a_bs;
    let b0 = p.b_off + wid.z * p.b_bs;
    var acc0: TileC;
    var acc1: TileC;
    var acc2: TileC;
    var acc3: TileC;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // 4T² elements of each tile over WG invocations; consecutive invocations take
        // consecutive addresses of the operand as stored.
        for (var idx = tid; idx < BM * BK; idx += WG) {
            var r = idx / BK;
            var kk = idx % BK;
            if (TRANS_A) { r = idx % BM; kk = idx / BM; }
            As[r * BK + kk] = load_a(a0, row0 + r, k0 + kk);
            var cc = idx % BN;
            var kb = idx / BN;
            if (TRANS_B) { kb = idx % BK; cc = idx / BK; }
            Bs[kb * BN + cc] = load_b(b0, k0 + kb, col0 + cc);
        }
        workgroupBarrier();
        let at = coopLoadT<TileA>(&As[sg * T * BK], BK);
        acc0 = coopMultiplyAdd(at, coopLoadT<TileB>(&Bs[0u], BN), acc0);
        acc1 = coopMultiplyAdd(at, coopLoadT<TileB>(&Bs[T], BN), acc1);
        acc2 = coopMultiplyAdd(at, coopLoadT<TileB>(&Bs[2u * T], BN), acc2);
        acc3 = coopMultiplyAdd(at, coopLoadT<TileB>(&Bs[3u * T], BN), acc3);
        workgroupBarrier();
    }
    let c0 = p.c_off + wid.z * p.c_bs;
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
                if (p.has_bias != 0u) { v += bias[col]; }
                let o = c0 + r * p.ldc + col;
                if (p.accumulate != 0u) { v += c[o]; }
                c[o] = v;
            }
        }
        workgroupBarrier();
    }
}
