// attention.wgsl: scaled dot-product attention forward with lse, flash-style (online softmax, O(T)
// memory, no T x T matrix). Causal, sliding window, GQA, softcap, segment ids.
// Spec: src/backend/cpu/attention.rs (masking rules and the empty-row convention are in its header)
// Test: tests/wgpu_ops.rs (attention_*)
// One thread per (b, h, query i); q_i and the output accumulator live in registers (D <= DMAX,
// checked on the host). K/V rows are read from global memory (no tiling yet).
//   s_ij = cap tanh(scale <q_i, k_j> / cap) (or scale <q_i, k_j>); lse_i = ln sum_j exp(s_ij)
//   out_i = sum_j exp(s_ij - lse_i) v_j;  a query with no visible key: out = 0, lse = 0.
struct Params {
    b: u32, t: u32, h: u32, kv: u32, d: u32,
    scale:   f32,
    causal:  u32,
    window:  u32,  // 0xFFFFFFFF = none
    softcap: f32,  // 0 = none
    has_seg: u32,
    _a: u32, _b: u32,
};
@group(0) @binding(0) var<storage, read>       q:   array<f32>;  // (B, T, H, D)
@group(0) @binding(1) var<storage, read>       k:   array<f32>;  // (B, T, KV, D)
@group(0) @binding(2) var<storage, read>       v:   array<f32>;  // (B, T, KV, D)
@group(0) @binding(3) var<storage, read>       seg: array<u32>;  // (B, T) when has_seg
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (B, T, H, D)
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;  // (B, H, T)
@group(0) @binding(6) var<uniform>             p:   Params;

const DMAX: u32 = 256u;
const NONE: u32 = 0xFFFFFFFFu;

fn score(raw: f32) -> f32 {
    let s = p.scale * raw;
    if (p.softcap > 0.0) { return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0)); }
    return s;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;  // over (B, H, T)
    if (idx >= p.b * p.h * p.t) { return; }
    let i = idx % p.t;
    let hh = (idx / p.t) % p.h;
    let bb = idx / (p.t * p.h);
    let g = hh / (p.h / p.kv);
    let qo = ((bb * p.t + i) * p.h + hh) * p.d;
    var qr: array<f32, DMAX>;
    var acc: array<f32, DMAX>;
    for (var c = 0u; c < p.d; c++) { qr[c] = q[qo + c]; acc[c] = 0.0; }
    var hi = p.t - 1u;
    if (p.causal != 0u) { hi = i; }
    var lo = 0u;
    if (p.window != NONE) { if (i + 1u > p.window) { lo = i + 1u - p.window; } }
    var m = -3.4e38;
    var l = 0.0;
    for (var j = lo; j <= hi; j++) {
        if (p.window == 0u) { break; }
        if (p.has_seg != 0u && seg[bb * p.t + i] != seg[bb * p.t + j]) { continue; }
        let ko = ((bb * p.t + j) * p.kv + g) * p.d;
        var dot = 0.0;
        for (var c = 0u; c < p.d; c++) { dot += qr[c] * k[ko + c]; }
        let s = score(dot);
        let mn = max(m, s);
        let corr = exp(m - mn);
        let e = exp(s - mn);
        l = l * corr + e;
        for (var c = 0u; c < p.d; c++) { acc[c] = acc[c] * corr + e * v[ko + c]; }
        m = mn;
    }
    let lo_idx = (bb * p.h + hh) * p.t + i;
    if (l == 0.0) {
        for (var c = 0u; c < p.d; c++) { out[qo + c] = 0.0; }
        lse[lo_idx] = 0.0;
        return;
    }
    for (var c = 0u; c < p.d; c++) { out[qo + c] = acc[c] / l; }
    lse[lo_idx] = m + log(l);
}
