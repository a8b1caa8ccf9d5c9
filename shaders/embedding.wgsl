// embedding.wgsl: out[n, :] = table[ids[n], :], one thread per output element.
// Spec: src/backend/cpu/embedding.rs (`embedding_forward`)   Test: tests/wgpu_ops.rs (embedding)
// ids are validated (< V) on the host before the launch.
struct Params { n: u32, c: u32, _a: u32, _b: u32 };  // n = N * C elements of out
@group(0) @binding(0) var<storage, read>       table: array<f32>;  // (V, C)
@group(0) @binding(1) var<storage, read>       ids:   array<u32>;  // (N)
@group(0) @binding(2) var<storage, read_write> out:   array<f32>;  // (N, C)
@group(0) @binding(3) var<uniform>             p:     Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.n) { return; }
    let row = e / p.c;
    out[e] = table[ids[row] * p.c + e % p.c];
}
