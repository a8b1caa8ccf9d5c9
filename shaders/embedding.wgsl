// embedding.wgsl: out[n, :] = table[ids[n], :], one thread per output element.
// Spec: src/backend/cpu/embedding.rs (`embedding_forward`)   Test: tests/wgpu_ops.rs (embedding)
// ids are validated (< V) on the host before the launch.
// A table larger than one storage binding is bound in windows of whole rows [row0, row0 + rows),
// one launch each; a launch writes only the outputs whose id falls in its window, so every output
// element is written by exactly one launch. `base` is where row0 starts inside the binding (the
// binding begins at an aligned offset at or before it).
struct Params {
    n: u32,     // N * C elements of out
    c: u32,
    row0: u32,  // first table row in this window
    rows: u32,  // table rows in this window
    base: u32,  // element offset of row row0 inside the bound table
};
@group(0) @binding(0) var<storage, read>       table: array<f32>;  // (V, C)
@group(0) @binding(1) var<storage, read>       ids:   array<u32>;  // (N)
@group(0) @binding(2) var<storage, read_write> out:   array<f32>;  // (N, C)
@group(0) @binding(3) var<uniform>             p:     Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.n) { return; }
    let id = ids[e / p.c];
    if (id < p.row0 || id - p.row0 >= p.rows) { return; }
    out[e] = table[p.base + (id - p.row0) * p.c + e % p.c];
}
