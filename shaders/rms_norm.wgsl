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

const WG: u32 = 256u;  // the row reduction is workgroup_reduce*.wgsl's wg_sum (prepended)

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, inv: Inv) {
    let lid = inv.lid;
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }  // uniform per workgroup, so the barriers below stay uniform
    let base = row * p.c;
    var acc = 0.0;
    for (var i = lid; i < p.c; i += WG) { let v = x[base + i]; acc += v * v; }
    let r = 1.0 / sqrt(wg_sum(acc, inv) / f32(p.c) + p.eps);
    if (lid == 0u) { rstd[row] = r; }
    for (var i = lid; i < p.c; i += WG) {
        var wi = w[i];
        if (p.add_one != 0u) { wi = 1.0 + wi; }
        out[base + i] = x[base + i] * r * wi;
    }
}
