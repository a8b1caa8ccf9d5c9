// attention_backward.wgsl: our own backward of attention.wgsl (FlashAttention-2 style: scores are
// recomputed from the saved lse, never stored). Two entry points, run in order:
//   dq:   per query block (as attention.wgsl): delta_i = <dout_i, out_i> (saved for dkv), then
//         dq_i = sum_j ds_ij scale k_j
//   dkv:  per key block of one (b, kv head g): over the H/KV query heads of g and the queries i that
//         see j: dv_j += P_ij dout_i;  dk_j += ds_ij scale q_i
// with P_ij = exp(s_ij - lse_i), ds_ij = P_ij (<dout_i, v_j> - delta_i) (1 - (s_ij / cap)^2 with softcap).
// Spec: src/backend/cpu/attention.rs (`attention_backward`)   Test: tests/wgpu_ops.rs (attention_*)
//
// Prepended: workgroup_reduce(_subgroup).wgsl (`lane_index`, `lane_sums`). The work split is
// attention.wgsl's: ROWS = 64 / L rows of L lanes per workgroup, lane c owning dims c + L e (e <
// DPT), a row's registers (dq: q, dout, dq; dkv: k, v, dk, dv) DPT wide. The other side (keys for
// dq, queries for dkv) comes in tiles of BK from global memory; lane_sums adds the rows' partial
// dots. `ranges` holds, per query block, the keys [lo, hi) its queries can see (dq), and from word
// `p.koff`, per key block, the queries [lo, hi) that can see its keys (dkv): host-computed bounds
// (ops.rs `attn_ranges`); the exact rule is applied per (i, j).
// Outputs are WRITTEN (=); every (b, h, i) / (b, g, j) row is owned by one row of lanes: no atomics.
// Every invocation runs every tile (lane_sums may hold barriers), rows past T included.
override L: u32 = 4u;     // lanes per row: 4 or 8
override DPT: u32 = 16u;  // dims per lane, ceil(D / L) <= MAXDPT
const MAXDPT: u32 = 32u;
const WG: u32 = 64u;
const BK: u32 = 16u;
const NONE: u32 = 0xFFFFFFFFu;

struct Params {
    b: u32, t: u32, h: u32, kv: u32, d: u32,
    scale:   f32,
    causal:  u32,
    window:  u32,  // 0xFFFFFFFF = none
    softcap: f32,  // 0 = none
    has_seg: u32,
    nqb: u32,      // row blocks per (b, head): ceil(T / ROWS)
    koff: u32,     // word offset of the key-block ranges in `ranges`
};
@group(0) @binding(0) var<storage, read>       q:      array<f32>;  // (B, T, H, D)
@group(0) @binding(1) var<storage, read>       k:      array<f32>;  // (B, T, KV, D)
@group(0) @binding(2) var<storage, read>       v:      array<f32>;  // (B, T, KV, D)
@group(0) @binding(3) var<storage, read>       dout:   array<f32>;  // (B, T, H, D)
@group(0) @binding(4) var<storage, read>       lse:    array<f32>;  // (B, H, T)
@group(0) @binding(5) var<storage, read>       seg:    array<u32>;  // (B, T) when has_seg
@group(0) @binding(6) var<storage, read>       ranges: array<u32>;  // (B, nqb, 2) query blocks, then key blocks
@group(0) @binding(7) var<storage, read_write> delta:  array<f32>;  // (B, H, T): written by dq, read by dkv
@group(0) @binding(8) var<storage, read_write> g0:     array<f32>;  // dq (B,T,H,D)  | dk (B,T,KV,D)
@group(0) @binding(9) var<storage, read_write> g1:     array<f32>;  // out (B,T,H,D) | dv (B,T,KV,D)
@group(0) @binding(10) var<uniform>            p:      Params;

fn score(raw: f32) -> f32 {
    let s = p.scale * raw;
    if (p.softcap > 0.0) { return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0)); }
    return s;
}

// d s / d (scale <q,k>) times scale: the chain factor from ds to dq/dk.
fn dscore(s: f32) -> f32 {
    if (p.softcap > 0.0) { let r = s / p.softcap; return (1.0 - r * r) * p.scale; }
    return p.scale;
}

fn visible(bb: u32, i: u32, j: u32) -> bool {
    if (p.causal != 0u && j > i) { return false; }
    if (p.window != NONE && j + p.window <= i) { return false; }
    if (p.has_seg != 0u && seg[bb * p.t + i] != seg[bb * p.t + j]) { return false; }
    return true;
}

@compute @workgroup_size(64)
fn dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, inv: Inv) {
    let wg = wid.y * nwg.x + wid.x;  // (b, query block, head), as attention.wgsl
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
    var gv: array<f32, MAXDPT>;
    var acc: array<f32, MAXDPT>;
    var part: array<f32, BK>;  // lane 0's slot carries delta's partial
    for (var e = 0u; e < DPT; e++) {
        let d = c + L * e;
        qv[e] = 0.0;
        gv[e] = 0.0;
        acc[e] = 0.0;
        if (row_ok && d < p.d) {
            qv[e] = q[qo + d];
            gv[e] = dout[qo + d];
            part[0] += gv[e] * g1[qo + d];
        }
    }
    let di = lane_sums(part, L, inv)[0];
    let li = (bb * p.h + hh) * p.t + i;
    var lse_i = 0.0;
    if (row_ok) {
        lse_i = lse[li];
        if (c == 0u) { delta[li] = di; }
    }
    let lo = ranges[(bb * p.nqb + blk) * 2u];
    let hi = ranges[(bb * p.nqb + blk) * 2u + 1u];
    for (var j0 = lo; j0 < hi; j0 += BK) {
        var qk: array<f32, BK>;
        var dp: array<f32, BK>;
        for (var u = 0u; u < BK; u++) {
            let j = j0 + u;
            var a = 0.0;
            var b = 0.0;
            if (j < hi) {
                let ko = ((bb * p.t + j) * p.kv + g) * p.d;
                for (var e = 0u; e < DPT; e++) {
                    let d = c + L * e;
                    if (d < p.d) { a += qv[e] * k[ko + d]; b += gv[e] * v[ko + d]; }
                }
            }
            qk[u] = a;
            dp[u] = b;
        }
        qk = lane_sums(qk, L, inv);
        dp = lane_sums(dp, L, inv);
        for (var u = 0u; u < BK; u++) {
            let j = j0 + u;
            if (!(row_ok && j < hi && visible(bb, i, j))) { continue; }
            let s = score(qk[u]);
            let ds = exp(s - lse_i) * (dp[u] - di) * dscore(s);
            let ko = ((bb * p.t + j) * p.kv + g) * p.d;
            for (var e = 0u; e < DPT; e++) {
                let d = c + L * e;
                if (d < p.d) { acc[e] += ds * k[ko + d]; }
            }
        }
    }
    if (!row_ok) { return; }
    for (var e = 0u; e < DPT; e++) {
        let d = c + L * e;
        if (d < p.d) { g0[qo + d] = acc[e]; }
    }
}

@compute @workgroup_size(64)
fn dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, inv: Inv) {
    let wg = wid.y * nwg.x + wid.x;  // (b, key block, kv head)
    if (wg >= p.b * p.nqb * p.kv) { return; }
    let g = wg % p.kv;
    let blk = (wg / p.kv) % p.nqb;
    let bb = wg / (p.kv * p.nqb);
    let t = lane_index(inv);
    let c = t % L;
    let j = blk * (WG / L) + t / L;
    let row_ok = j < p.t;
    let ko = ((bb * p.t + j) * p.kv + g) * p.d;
    var kr: array<f32, MAXDPT>;
    var vr: array<f32, MAXDPT>;
    var dk: array<f32, MAXDPT>;
    var dv: array<f32, MAXDPT>;
    for (var e = 0u; e < DPT; e++) {
        let d = c + L * e;
        kr[e] = 0.0;
        vr[e] = 0.0;
        dk[e] = 0.0;
        dv[e] = 0.0;
        if (row_ok && d < p.d) { kr[e] = k[ko + d]; vr[e] = v[ko + d]; }
    }
    let lo = ranges[p.koff + (bb * p.nqb + blk) * 2u];
    let hi = ranges[p.koff + (bb * p.nqb + blk) * 2u + 1u];
    let grp = p.h / p.kv;
    for (var hh = g * grp; hh < (g + 1u) * grp; hh++) {
        for (var i0 = lo; i0 < hi; i0 += BK) {
            var qk: array<f32, BK>;
            var dp: array<f32, BK>;
            for (var u = 0u; u < BK; u++) {
                let i = i0 + u;
                var a = 0.0;
                var b = 0.0;
                if (i < hi) {
                    let qo = ((bb * p.t + i) * p.h + hh) * p.d;
                    for (var e = 0u; e < DPT; e++) {
                        let d = c + L * e;
                        if (d < p.d) { a += q[qo + d] * kr[e]; b += dout[qo + d] * vr[e]; }
                    }
                }
                qk[u] = a;
                dp[u] = b;
            }
            qk = lane_sums(qk, L, inv);
            dp = lane_sums(dp, L, inv);
            for (var u = 0u; u < BK; u++) {
                let i = i0 + u;
                if (!(row_ok && i < hi && visible(bb, i, j))) { continue; }
                let li = (bb * p.h + hh) * p.t + i;
                let s = score(qk[u]);
                let pij = exp(s - lse[li]);
                let ds = pij * (dp[u] - delta[li]) * dscore(s);
                let qo = ((bb * p.t + i) * p.h + hh) * p.d;
                for (var e = 0u; e < DPT; e++) {
                    let d = c + L * e;
                    if (d < p.d) {
                        dv[e] += pij * dout[qo + d];
                        dk[e] += ds * q[qo + d];
                    }
                }
            }
        }
    }
    if (!row_ok) { return; }
    for (var e = 0u; e < DPT; e++) {
        let d = c + L * e;
        if (d < p.d) { g0[ko + d] = dk[e]; g1[ko + d] = dv[e]; }
    }
}
