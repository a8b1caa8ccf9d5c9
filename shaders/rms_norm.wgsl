// rms_norm.wgsl: RMSNorm forward, one workgroup per row. Writes rstd (rows) for rms_norm_backward.wgsl.
// Spec: src/backend/cpu/rms_norm.rs   Test: tests/wgpu_ops.rs (rms_norm)
//   rstd[r] = 1 / sqrt(mean_i x[r,i]^2 + eps);  out[r,i] = x[r,i] * rstd[r] * w'[i],  w' = w or 1 + w
struct Params {
    rows:    u32,
    c:       u32,  // row length, in elements
    eps:     f32,
    add_one: u32,  // Gemma: multiply by (1 + w)
};
@group(0) @binding(0) var<storage, read>       x:    array<f32>;  // (rows, C)
@group(0) @binding(1) var<storage, read>       w:    array<f32>;  // (C)
@group(0) @binding(2) var<storage, read_write> out:  array<f32>;  // (rows, C)
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;  // (rows)
@group(0) @binding(4) var<uniform>             p:    Params;

const WG: u32 = 256u;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }  // uniform per workgroup, so the barriers below stay uniform
    let base = row * p.c;
    var acc = 0.0;
    for (var i = lid; i < p.c; i += WG) { let v = x[base + i]; acc += v * v; }
    part[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) { part[lid] += part[lid + s]; }
        workgroupBarrier();
    }
    let r = 1.0 / sqrt(part[0] / f32(p.c) + p.eps);
    if (lid == 0u) { rstd[row] = r; }
    for (var i = lid; i < p.c; i += WG) {
        var wi = w[i];
        if (p.add_one != 0u) { wi = 1.0 + wi; }
        out[base + i] = x[base + i] * r * wi;
    }
}
