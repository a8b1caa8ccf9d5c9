// reduce.wgsl: sum_sq (partial sums of squares for grad_norm_sq) and col_sum (bias gradient).
// Spec: src/backend/cpu/adamw.rs (`grad_norm_sq`), src/backend/cpu/matmul.rs (dbias)
// Test: tests/wgpu_ops.rs (grad_norm_sq, matmul_backward_bias)
// sum_sq: workgroup g writes sum_{i in [g*CHUNK, (g+1)*CHUNK)} x[i]^2 to out[out_off + g]; the host
// sums the partials in f64, so only CHUNK terms are ever summed in f32 (a tree, error ~ 12 ulp).
struct Params {
    n:       u32,  // elements of x (sum_sq) / rows (col_sum)
    c:       u32,  // columns (col_sum)
    out_off: u32,  // first partial slot (sum_sq)
    _pad:    u32,
};
@group(0) @binding(0) var<storage, read>       x:   array<f32>;  // (n) or (rows, c)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // partials, or (c)
@group(0) @binding(2) var<uniform>             p:   Params;

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;  // elements per workgroup: 16 per thread
// (the workgroup sum is workgroup_reduce*.wgsl's wg_sum, prepended)

@compute @workgroup_size(256)
fn sum_sq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, inv: Inv) {
    let lid = inv.lid;
    let g = wid.y * nwg.x + wid.x;
    let base = g * CHUNK;
    var acc = 0.0;
    for (var e = 0u; e < CHUNK / WG; e++) {
        let i = base + e * WG + lid;
        if (i < p.n) { let v = x[i]; acc += v * v; }
    }
    let total = wg_sum(acc, inv);
    if (lid == 0u && base < p.n) { out[p.out_off + g] = total; }
}

// out[j] = sum_r x[r, j], one thread per column.
@compute @workgroup_size(256)
fn col_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let j = (wid.y * nwg.x + wid.x) * WG + lid;
    if (j >= p.c) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.n; r++) { acc += x[r * p.c + j]; }
    out[j] = acc;
}
