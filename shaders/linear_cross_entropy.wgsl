// linear_cross_entropy.wgsl: the softmax/loss part of the chunked fused cross-entropy. The host
// computes a chunk of logits z_raw = h_chunk · Wᵀ with matmul.wgsl, this kernel turns each row into
// its loss and (in place) into dz_raw, and matmul.wgsl then accumulates dh += dz · W, dW += dzᵀ · h.
// Spec: src/backend/cpu/linear_cross_entropy.rs   Test: tests/wgpu_ops.rs (linear_cross_entropy)
//   z = cap tanh(z_raw / cap) (softcap) or z_raw;  loss = logsumexp(z) - z[t]
//   dz_raw[j] = s (softmax(z)[j] - [j == t]) (1 - (z[j]/cap)^2)
// One workgroup per row; target -100 gives loss 0 and a zero gradient row.
struct Params {
    rows:      u32,  // rows in this chunk
    v:         u32,  // vocab
    row_off:   u32,  // index of the chunk's first token (for targets and loss)
    has_grad:  u32,
    softcap:   f32,  // 0 = none
    grad_scale: f32,
    _a: u32, _b: u32,
};
@group(0) @binding(0) var<storage, read>       targets: array<i32>;  // (N)
@group(0) @binding(1) var<storage, read_write> logits:  array<f32>;  // (rows, V): z_raw in, dz_raw out
@group(0) @binding(2) var<storage, read_write> loss:    array<f32>;  // (N)
@group(0) @binding(3) var<uniform>             p:       Params;

const WG: u32 = 256u;  // row max and sum: workgroup_reduce*.wgsl's wg_max / wg_sum (prepended)

fn capped(z: f32) -> f32 {
    if (p.softcap > 0.0) { return p.softcap * tanh(clamp(z / p.softcap, -15.0, 15.0)); }
    return z;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, inv: Inv) {
    let lid = inv.lid;
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let base = row * p.v;
    let t = targets[p.row_off + row];
    if (t < 0) {
        if (lid == 0u) { loss[p.row_off + row] = 0.0; }
        if (p.has_grad != 0u) { for (var j = lid; j < p.v; j += WG) { logits[base + j] = 0.0; } }
        return;
    }
    var mx = -3.4e38;
    for (var j = lid; j < p.v; j += WG) { mx = max(mx, capped(logits[base + j])); }
    let m = wg_max(mx, inv);
    var acc = 0.0;
    for (var j = lid; j < p.v; j += WG) { acc += exp(capped(logits[base + j]) - m); }
    let lse = m + log(wg_sum(acc, inv));
    let zt = capped(logits[base + u32(t)]);
    workgroupBarrier();  // every thread has read logits[t] before it is overwritten
    if (lid == 0u) { loss[p.row_off + row] = lse - zt; }
    if (p.has_grad != 0u) {
        for (var j = lid; j < p.v; j += WG) {
            let z = capped(logits[base + j]);
            var d = exp(z - lse);
            if (j == u32(t)) { d -= 1.0; }
            if (p.softcap > 0.0) { let r = z / p.softcap; d *= 1.0 - r * r; }
            logits[base + j] = p.grad_scale * d;
        }
    }
}
