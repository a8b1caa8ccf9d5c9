// rms_norm_backward.wgsl: dx (one workgroup per row) and dw (one thread per column).
// Spec: src/backend/cpu/rms_norm.rs (`rms_norm_backward`)   Test: tests/wgpu_ops.rs (rms_norm)
//   dx[r,j] = s g[j] w'[j] - s^3 x[r,j] / C * sum_i g[i] w'[i] x[r,i]      (s = rstd[r])
//   dw[j]   = sum_r g[r,j] x[r,j] s_r
// Unlike the spec these WRITE (=) their outputs: the backend returns fresh buffers.
struct Params {
    rows:    u32,
    c:       u32,
    add_one: u32,
    _pad:    u32,
};
@group(0) @binding(0) var<storage, read>       dout: array<f32>;  // (rows, C)
@group(0) @binding(1) var<storage, read>       x:    array<f32>;  // (rows, C)
@group(0) @binding(2) var<storage, read>       w:    array<f32>;  // (C)
@group(0) @binding(3) var<storage, read>       rstd: array<f32>;  // (rows)
@group(0) @binding(4) var<storage, read_write> dst:  array<f32>;  // dx (rows, C) or dw (C)
@group(0) @binding(5) var<uniform>             p:    Params;

const WG: u32 = 256u;  // dx's row reduction is workgroup_reduce*.wgsl's wg_sum (prepended)

fn wprime(i: u32) -> f32 {
    if (p.add_one != 0u) { return 1.0 + w[i]; }
    return w[i];
}

@compute @workgroup_size(256)
fn dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, inv: Inv) {
    let lid = inv.lid;
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let base = row * p.c;
    var acc = 0.0;
    for (var i = lid; i < p.c; i += WG) { acc += dout[base + i] * wprime(i) * x[base + i]; }
    let total = wg_sum(acc, inv);
    let s = rstd[row];
    let k = s * s * s * total / f32(p.c);
    for (var i = lid; i < p.c; i += WG) {
        dst[base + i] = s * dout[base + i] * wprime(i) - k * x[base + i];
    }
}

@compute @workgroup_size(256)
fn dw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let j = (wid.y * nwg.x + wid.x) * WG + lid;
    if (j >= p.c) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) { acc += dout[r * p.c + j] * x[r * p.c + j] * rstd[r]; }
    dst[j] = acc;
}
