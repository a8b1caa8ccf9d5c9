// workgroup_reduce.wgsl: sum / max over the 256 invocations of a workgroup, through workgroup memory
// (a tree: 8 barriers). Prepended to the shaders that reduce rows (pipelines.rs `source`) on
// adapters without SUBGROUP; workgroup_reduce_subgroup.wgsl defines the same functions with subgroup
// builtins. Contract: every invocation of the workgroup calls them (they contain barriers), the
// workgroup has exactly 256 invocations, and each returns the result to every invocation.
// Entry points take `inv: Inv` (its builtins differ between the two files) instead of declaring
// @builtin(local_invocation_index) themselves.
struct Inv {
    @builtin(local_invocation_index) lid: u32,
};

var<workgroup> wg_red: array<vec4<f32>, 256>;

fn wg_sum4(v: vec4<f32>, inv: Inv) -> vec4<f32> {
    wg_red[inv.lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s / 2u) {
        if (inv.lid < s) { wg_red[inv.lid] += wg_red[inv.lid + s]; }
        workgroupBarrier();
    }
    let r = wg_red[0];
    workgroupBarrier();  // wg_red is free for the next call
    return r;
}

fn wg_sum(v: f32, inv: Inv) -> f32 {
    return wg_sum4(vec4<f32>(v, 0.0, 0.0, 0.0), inv).x;
}

fn wg_max(v: f32, inv: Inv) -> f32 {
    wg_red[inv.lid].x = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s / 2u) {
        if (inv.lid < s) { wg_red[inv.lid].x = max(wg_red[inv.lid].x, wg_red[inv.lid + s].x); }
        workgroupBarrier();
    }
    let r = wg_red[0].x;
    workgroupBarrier();
    return r;
}

