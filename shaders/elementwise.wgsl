// elementwise.wgsl: add, mul, scale, add_assign, scale_in_place, scale_by_in_place, mul_rows,
// mul_rows_backward_v.
// Spec: src/backend/cpu_backend.rs (the one-line loops there)   Test: tests/wgpu_ops.rs
// One thread per element; the grid is folded into (x, y) when it exceeds 65535 workgroups.
// Binding roles: a, b inputs; out the result (or the in-place operand of add_assign/scale_in_place).
struct Params {
    n:    u32,  // elements of out (or columns for mul_rows_backward_v)
    c:    u32,  // row length (mul_rows, mul_rows_backward_v), in elements
    s:    f32,  // scale factor (scale, scale_in_place)
    rows: u32,  // rows (mul_rows_backward_v)
};
@group(0) @binding(0) var<storage, read>       a:   array<f32>;  // (n) or (rows, c)
@group(0) @binding(1) var<storage, read>       b:   array<f32>;  // (n) or (c) for mul_rows
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (n)
@group(0) @binding(3) var<uniform>             p:   Params;

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] + b[i];
}

@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] * b[i];
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] * p.s;
}

// out += a
@compute @workgroup_size(256)
fn add_assign(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = out[i] + a[i];
}

// out *= s
@compute @workgroup_size(256)
fn scale_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = out[i] * p.s;
}

// out *= b[0]: a scale that lives on the device (the loss's incoming gradient), never read back.
@compute @workgroup_size(256)
fn scale_by_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = out[i] * b[0];
}

// out[r, j] = a[r, j] * b[j]
@compute @workgroup_size(256)
fn mul_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] * b[i % p.c];
}

// out[j] = sum_r a[r, j] * b[r, j]; one thread per column j (p.n = c), summed in f32.
@compute @workgroup_size(256)
fn mul_rows_backward_v(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let j = flat(wid, nwg, lid);
    if (j >= p.n) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc += a[r * p.c + j] * b[r * p.c + j];
    }
    out[j] = acc;
}
