// rope.wgsl: rotary position embedding forward (SIGN = +1) and backward (SIGN = -1, the transpose).
// Spec: src/backend/cpu/rope.rs   Test: tests/wgpu_ops.rs (rope)
// The host computes the per-token table cs[n, i] = (m cos(pos_n inv_freq_i), m sin(...)) in f64
// (as the spec does) and rounds once to f32, so no f32 angle error grows with the position.
// One thread per element of x (B, T, NH, D). Pairs (p, q): HalfSplit (i, i + rot/2), Interleaved (2i, 2i+1).
//   forward: out[p] = x[p] c - x[q] s;  out[q] = x[q] c + x[p] s;  tail dims copied.
struct Params {
    n:           u32,  // elements of x = tokens * nh * d
    nh:          u32,
    d:           u32,  // head dim
    rot:         u32,  // rotary dims (even, <= d)
    interleaved: u32,
    sign:        f32,  // +1 forward, -1 backward
    _a: u32, _b: u32,
};
@group(0) @binding(0) var<storage, read>       x:   array<f32>;  // (B*T, NH, D)
@group(0) @binding(1) var<storage, read>       cs:  array<f32>;  // (B*T, rot/2, 2)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (B*T, NH, D)
@group(0) @binding(3) var<uniform>             p:   Params;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * WG + lid;
    if (e >= p.n) { return; }
    let dd = e % p.d;
    if (dd >= p.rot) { out[e] = x[e]; return; }
    let tok = e / (p.nh * p.d);
    let head0 = e - dd;
    let h = p.rot / 2u;
    var i: u32;
    var first: bool;  // is dd the p of its pair (else the q)
    if (p.interleaved != 0u) { i = dd / 2u; first = (dd % 2u) == 0u; } else { i = dd % h; first = dd < h; }
    var pi: u32;
    var qi: u32;
    if (p.interleaved != 0u) { pi = 2u * i; qi = 2u * i + 1u; } else { pi = i; qi = i + h; }
    let c = cs[(tok * h + i) * 2u];
    let s = p.sign * cs[(tok * h + i) * 2u + 1u];
    let xp = x[head0 + pi];
    let xq = x[head0 + qi];
    if (first) { out[e] = xp * c - xq * s; } else { out[e] = xq * c + xp * s; }
}
