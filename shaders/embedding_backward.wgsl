// embedding_backward.wgsl: dtable[v, :] = sum_{n: ids[n] = v} dout[n, :], without atomics.
// Spec: src/backend/cpu/embedding.rs (`embedding_backward`)   Test: tests/wgpu_ops.rs (embedding)
// The host sorts the positions by id (CSR): csr = [uniq (U) | start (U + 1) | order (N)], so each
// thread owns one (unique id, column) and sums its rows in a fixed order: deterministic.
// Rows of dtable whose id never occurs are zeroed by the host (clear_buffer) beforehand.
// A dtable larger than one storage binding is bound in windows of whole rows, one launch each:
// the host passes only the ids of the window, as rows relative to it, and `base`, where the
// window's first row starts inside the binding.
struct Params { u: u32, c: u32, base: u32, _b: u32 };  // u = number of unique ids
@group(0) @binding(0) var<storage, read>       dout: array<f32>;  // (N, C)
@group(0) @binding(1) var<storage, read>       csr: array<u32>;  // (2U + 1 + N)
@group(0) @binding(2) var<storage, read_write> dt:   array<f32>;  // (V, C)
@group(0) @binding(3) var<uniform>             p:    Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.u * p.c) { return; }
    let u = e / p.c;
    let col = e % p.c;
    let start = csr[p.u + u];
    let end = csr[p.u + u + 1u];
    var acc = 0.0;
    for (var k = start; k < end; k++) {
        acc += dout[csr[2u * p.u + 1u + k] * p.c + col];
    }
    dt[p.base + csr[u] * p.c + col] = acc;
}
