// dropout.wgsl: out = keep ? x * scale : 0, the keep mask regenerated from Philox4x32-10.
// Spec: src/backend/cpu/dropout.rs (the exact bit recipe is in its header)   Test: tests/wgpu_ops.rs (dropout)
// Same kernel for forward (x) and backward (dout): the mask depends only on (seed, offset + i).
// WGSL has no u64: j = offset + i is carried by hand, and mulhilo is built from 16-bit halves.
// scale = 1 / (1 - p) comes from the host (WGSL division is not correctly rounded).
struct Params {
    n:      u32,
    seed_lo: u32, seed_hi: u32,
    off_lo: u32, off_hi: u32,
    p:      f32,
    scale:  f32,
    _a:     u32,
};
@group(0) @binding(0) var<storage, read>       x:   array<f32>;  // (n)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // (n)
@group(0) @binding(2) var<uniform>             p:   Params;

const M0: u32 = 0xD2511F53u;
const M1: u32 = 0xCD9E8D57u;
const W0: u32 = 0x9E3779B9u;
const W1: u32 = 0xBB67AE85u;

// (hi, lo) 32-bit halves of the 64-bit product a * b.
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xFFFFu;
    let ah = a >> 16u;
    let bl = b & 0xFFFFu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let hh = ah * bh;
    let mid = (ll >> 16u) + (lh & 0xFFFFu) + (hl & 0xFFFFu);  // < 2^18, no overflow
    let lo = (mid << 16u) | (ll & 0xFFFFu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, lo);
}

fn philox(ctr0: vec4<u32>, key0: vec2<u32>) -> vec4<u32> {
    var c = ctr0;
    var k = key0;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) { k = vec2<u32>(k.x + W0, k.y + W1); }
        let r0 = mulhilo(M0, c.x);
        let r1 = mulhilo(M1, c.z);
        c = vec4<u32>(r1.x ^ c.y ^ k.x, r1.y, r0.x ^ c.w ^ k.y, r0.y);
    }
    return c;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= p.n) { return; }
    let j_lo = p.off_lo + i;
    var j_hi = p.off_hi;
    if (j_lo < p.off_lo) { j_hi = j_hi + 1u; }  // carry
    let g_lo = (j_lo >> 2u) | (j_hi << 30u);
    let g_hi = j_hi >> 2u;
    let bits = philox(vec4<u32>(g_lo, g_hi, 0u, 0u), vec2<u32>(p.seed_lo, p.seed_hi))[j_lo & 3u];
    let u = f32(bits >> 8u) * (1.0 / 16777216.0);  // 2^-24, exact
    if (u >= p.p) { out[i] = x[i] * p.scale; } else { out[i] = 0.0; }
}
