// attention.wgsl: scaled dot-product attention forward with lse, flash-style (online softmax over
// tiles of keys, O(T) memory, no T x T matrix). Causal, sliding window, GQA, softcap, segment ids.
// Spec: src/backend/cpu/attention.rs (masking rules and the empty-row convention are in its header)
// Test: tests/wgpu_ops.rs (attention_*)
//
// Prepended: workgroup_reduce(_subgroup).wgsl (for `lane_index` / `lane_sums`: the sum over the L
// lanes of a row, with subgroup shuffles or through workgroup memory).
//
// Work split: a workgroup of 64 invocations takes ROWS = 64 / L consecutive queries of one (b, h);
// each query is a row of L lanes, lane c owning the dims d = c + L e (e < DPT = ceil(D / L)), so q
// and the output accumulator sit in 2 DPT registers (DPT <= 32: L = 4 for D <= 128, 8 for D <= 256;
// both are override constants, so drivers unroll the loops over them and keep the arrays in
// registers). Keys come in tiles of BK: each lane dots its dims with the BK keys, `lane_sums` adds
// the L partial dots of each row (every lane gets the same score, so every lane keeps the same m
// and l), the tile's maximum rescales l and the accumulator once, then each lane adds p_ij v_j over
// its dims. K and V are read from global memory: the ROWS rows of a workgroup read the same key at
// the same time (broadcast), a row's lanes read consecutive words.
// The keys a workgroup visits: the range [lo, hi) in `ranges` for its block of queries, computed on
// the host from the causal / window / segment rules (ops.rs `attn_ranges`: the union of what the
// block's queries can see, so causal skips the upper triangle and packed sequences skip each other);
// the exact rule is applied per (i, j) inside it.
//   s_ij = cap tanh(scale <q_i, k_j> / cap) (or scale <q_i, k_j>); lse_i = ln sum_j exp(s_ij)
//   out_i = sum_j exp(s_ij - lse_i) v_j;  a query with no visible key: out = 0, lse = 0.
// Contracts easy to miss: every invocation runs every tile (lane_sums may hold barriers), rows past
// T included (they read zeros and write nothing); the workgroup count is B H nqb (a 2D grid, excess
// workgroups return at once, which is uniform).
override L: u32 = 4u;     // lanes per row: 4 or 8 (a power of two <= the subgroup size)
override DPT: u32 = 16u;  // dims per lane, ceil(D / L) <= MAXDPT
const MAXDPT: u32 = 32u;
const WG: u32 = 64u;
const BK: u32 = 16u;      // keys per tile (lane_sums' width)
const NEG: f32 = -3.0e38; // below any score, finite (NEG - NEG = 0, never NaN)
const NONE: u32 = 0xFFFFFFFFu;

struct Params {
    b: u32, t: u32, h: u32, kv: u32, d: u32,
    scale:   f32,
    causal:  u32,
    window:  u32,  // 0xFFFFFFFF = none
    softcap: f32,  // 0 = none
    has_seg: u32,
    nqb: u32,      // query blocks per (b, h): ceil(T / ROWS)
    _a: u32,
};
@group(0) @binding(0) var<storage, read>       q:      array<f32>;  // (B, T, H, D)
@group(0) @binding(1) var<storage, read>       k:      array<f32>;  // (B, T, KV, D)
@group(0) @binding(2) var<storage, read>       v:      array<f32>;  // (B, T, KV, D)
@group(0) @binding(3) var<storage, read>       seg:    array<u32>;  // (B, T) when has_seg
@group(0) @binding(4) var<storage, read>       ranges: array<u32>;  // (B, nqb, 2): keys [lo, hi)
@group(0) @binding(5) var<storage, read_write> out:    array<f32>;  // (B, T, H, D)
@group(0) @binding(6) var<storage, read_write> lse:    array<f32>;  // (B, H, T)
@group(0) @binding(7) var<uniform>             p:      Params;

fn score(raw: f32) -> f32 {
    let s = p.scale * raw;
    if (p.softcap > 0.0) { return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0)); }
    return s;
}

fn visible(bb: u32, i: u32, j: u32) -> bool {
    if (p.causal != 0u && j > i) { return false; }
    if (p.window != NONE && j + p.window <= i) { return false; }
    if (p.has_seg != 0u && seg[bb * p.t + i] != seg[bb * p.t + j]) { return false; }
    return true;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, inv: Inv) {
    // Workgroups in (b, query block, head) order: the heads of one block run side by side and read
    // the same keys (and, with GQA, the same kv head) while they are in cache.
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= p.b * p.nqb * p.h) { return; }
    let hh = wg % p.h;
    let blk = (wg / p.h) % p.nqb;
    let bb = wg / (p.h * p.nqb);
    let g = hh / (p.h / p.kv);
    let t = lane_index(inv);
    let c = t % L;
    let i = blk * (WG / L) + t / L;
    let row_ok = i < p.t;
    let qo = ((bb * p.t + i) * p.h + hh) * p.d;
    var qv: array<f32, MAXDPT>;
    var acc: array<f32, MAXDPT>;
    for (var e = 0u; e < DPT; e++) {
        let d = c + L * e;
        qv[e] = 0.0;
        if (row_ok && d < p.d) { qv[e] = q[qo + d]; }
        acc[e] = 0.0;
    }
    let lo = ranges[(bb * p.nqb + blk) * 2u];
    let hi = ranges[(bb * p.nqb + blk) * 2u + 1u];
    var m = NEG;
    var l = 0.0;
    for (var j0 = lo; j0 < hi; j0 += BK) {
        var sc: array<f32, BK>;
        for (var u = 0u; u < BK; u++) {
            var dot = 0.0;
            let j = j0 + u;
            if (j < hi) {
                let ko = ((bb * p.t + j) * p.kv + g) * p.d;
                for (var e = 0u; e < DPT; e++) {
                    let d = c + L * e;
                    if (d < p.d) { dot += qv[e] * k[ko + d]; }
                }
            }
            sc[u] = dot;
        }
        sc = lane_sums(sc, L, inv);
        var mt = m;
        var vis = 0u;
        for (var u = 0u; u < BK; u++) {
            let j = j0 + u;
            if (row_ok && j < hi && visible(bb, i, j)) {
                sc[u] = score(sc[u]);
                mt = max(mt, sc[u]);
                vis |= 1u << u;
            }
        }
        let corr = exp(m - mt);
        l *= corr;
        for (var e = 0u; e < DPT; e++) { acc[e] *= corr; }
        for (var u = 0u; u < BK; u++) {
            if ((vis & (1u << u)) == 0u) { continue; }
            let pu = exp(sc[u] - mt);
            l += pu;
            let vo = ((bb * p.t + j0 + u) * p.kv + g) * p.d;
            for (var e = 0u; e < DPT; e++) {
                let d = c + L * e;
                if (d < p.d) { acc[e] += pu * v[vo + d]; }
            }
        }
        m = mt;
    }
    if (!row_ok) { return; }
    for (var e = 0u; e < DPT; e++) {
        let d = c + L * e;
        if (d < p.d) { out[qo + d] = select(0.0, acc[e] / l, l > 0.0); }
    }
    if (c == 0u) {
        var r = 0.0;
        if (l > 0.0) { r = m + log(l); }
        lse[(bb * p.h + hh) * p.t + i] = r;
    }
}
