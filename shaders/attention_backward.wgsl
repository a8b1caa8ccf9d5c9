// attention_backward.wgsl: our own backward of attention.wgsl (FlashAttention-2 style: scores are
// recomputed from the saved lse, never stored). Two entry points, run in order:
//   dq:   one thread per (b, h, i): delta_i = <dout_i, out_i> (saved for dkv), then
//         dq_i = sum_j ds_ij scale k_j
//   dkv:  one thread per (b, kv head g, key j): over the H/KV query heads of g and the queries i
//         that see j: dv_j += P_ij dout_i;  dk_j += ds_ij scale q_i
// with P_ij = exp(s_ij - lse_i), ds_ij = P_ij (<dout_i, v_j> - delta_i) (1 - (s_ij / cap)^2 with softcap).
// Spec: src/backend/cpu/attention.rs (`attention_backward`)   Test: tests/wgpu_ops.rs (attention_*)
// Outputs are WRITTEN (=); every (b, h, i) / (b, g, j) is owned by one thread: no atomics.
struct Params {
    b: u32, t: u32, h: u32, kv: u32, d: u32,
    scale:   f32,
    causal:  u32,
    window:  u32,  // 0xFFFFFFFF = none
    softcap: f32,  // 0 = none
    has_seg: u32,
    _a: u32, _b: u32,
};
@group(0) @binding(0) var<storage, read>       q:     array<f32>;  // (B, T, H, D)
@group(0) @binding(1) var<storage, read>       k:     array<f32>;  // (B, T, KV, D)
@group(0) @binding(2) var<storage, read>       v:     array<f32>;  // (B, T, KV, D)
@group(0) @binding(3) var<storage, read>       dout:  array<f32>;  // (B, T, H, D)
@group(0) @binding(4) var<storage, read>       lse:   array<f32>;  // (B, H, T)
@group(0) @binding(5) var<storage, read>       seg:   array<u32>;  // (B, T) when has_seg
@group(0) @binding(6) var<storage, read_write> delta: array<f32>;  // (B, H, T): written by dq, read by dkv
@group(0) @binding(7) var<storage, read_write> g0:    array<f32>;  // dq (B,T,H,D)  | dk (B,T,KV,D)
@group(0) @binding(8) var<storage, read_write> g1:    array<f32>;  // out (B,T,H,D) | dv (B,T,KV,D)
@group(0) @binding(9) var<uniform>             p:     Params;

const DMAX: u32 = 256u;
const NONE: u32 = 0xFFFFFFFFu;

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
fn dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;  // over (B, H, T)
    if (idx >= p.b * p.h * p.t) { return; }
    let i = idx % p.t;
    let hh = (idx / p.t) % p.h;
    let bb = idx / (p.t * p.h);
    let g = hh / (p.h / p.kv);
    let qo = ((bb * p.t + i) * p.h + hh) * p.d;
    var qr: array<f32, DMAX>;
    var gr: array<f32, DMAX>;
    var acc: array<f32, DMAX>;
    var di = 0.0;
    for (var c = 0u; c < p.d; c++) {
        qr[c] = q[qo + c];
        gr[c] = dout[qo + c];
        acc[c] = 0.0;
        di += gr[c] * g1[qo + c];
    }
    let li = (bb * p.h + hh) * p.t + i;
    delta[li] = di;
    let l = lse[li];
    for (var j = 0u; j < p.t; j++) {
        if (!visible(bb, i, j)) { continue; }
        let ko = ((bb * p.t + j) * p.kv + g) * p.d;
        var dot = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < p.d; c++) { dot += qr[c] * k[ko + c]; dp += gr[c] * v[ko + c]; }
        let s = score(dot);
        let ds = exp(s - l) * (dp - di) * dscore(s);
        for (var c = 0u; c < p.d; c++) { acc[c] += ds * k[ko + c]; }
    }
    for (var c = 0u; c < p.d; c++) { g0[qo + c] = acc[c]; }
}

@compute @workgroup_size(64)
fn dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.y * nwg.x + wid.x) * 64u + lid;  // over (B, KV, T)
    if (idx >= p.b * p.kv * p.t) { return; }
    let j = idx % p.t;
    let g = (idx / p.t) % p.kv;
    let bb = idx / (p.t * p.kv);
    let ko = ((bb * p.t + j) * p.kv + g) * p.d;
    var kr: array<f32, DMAX>;
    var vr: array<f32, DMAX>;
    var dk: array<f32, DMAX>;
    var dv: array<f32, DMAX>;
    for (var c = 0u; c < p.d; c++) { kr[c] = k[ko + c]; vr[c] = v[ko + c]; dk[c] = 0.0; dv[c] = 0.0; }
    let grp = p.h / p.kv;
    for (var hh = g * grp; hh < (g + 1u) * grp; hh++) {
        for (var i = 0u; i < p.t; i++) {
            if (!visible(bb, i, j)) { continue; }
            let qo = ((bb * p.t + i) * p.h + hh) * p.d;
            let li = (bb * p.h + hh) * p.t + i;
            var dot = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < p.d; c++) { dot += q[qo + c] * kr[c]; dp += dout[qo + c] * vr[c]; }
            let s = score(dot);
            let pij = exp(s - lse[li]);
            let ds = pij * (dp - delta[li]) * dscore(s);
            for (var c = 0u; c < p.d; c++) {
                dv[c] += pij * dout[qo + c];
                dk[c] += ds * q[qo + c];
            }
        }
    }
    for (var c = 0u; c < p.d; c++) { g0[ko + c] = dk[c]; g1[ko + c] = dv[c]; }
}
