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


// Lanes: rows of n (a power of two <= 8) consecutive `lane_index` values, for kernels that split a
// row of work over a few invocations (attention). lane_sums returns to every lane of a row the sum
// of the row's 16-wide partials, through wg_red (16 floats per invocation: workgroups of at most
// 64), lanes added in order so every lane gets the same bits. Called by every invocation (barriers).
fn lane_index(inv: Inv) -> u32 {
    return inv.lid;
}

fn lane_sums(v: array<f32, 16>, n: u32, inv: Inv) -> array<f32, 16> {
    let t = inv.lid;
    for (var u = 0u; u < 4u; u++) {
        wg_red[t * 4u + u] = vec4<f32>(v[4u * u], v[4u * u + 1u], v[4u * u + 2u], v[4u * u + 3u]);
    }
    workgroupBarrier();
    let base = t - t % n;
    var r: array<f32, 16>;
    for (var u = 0u; u < 4u; u++) {
        var w = wg_red[base * 4u + u];
        for (var s = 1u; s < n; s++) { w += wg_red[(base + s) * 4u + u]; }
        r[4u * u] = w.x;
        r[4u * u + 1u] = w.y;
        r[4u * u + 2u] = w.z;
        r[4u * u + 3u] = w.w;
    }
    workgroupBarrier();
    return r;
}
