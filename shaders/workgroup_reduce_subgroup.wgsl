// workgroup_reduce_subgroup.wgsl: the functions of workgroup_reduce.wgsl (same contract) with
// subgroup builtins, used when the adapter has SUBGROUP: each subgroup reduces in registers
// (subgroupAdd / subgroupMax), its first lane parks the result in workgroup memory, one barrier,
// then every invocation folds the num_subgroups partials (8 to 64 of them: subgroups are 4 to 128
// wide) in the same order, so all of them return the same value. 2 barriers instead of 9.
// No `enable subgroups;` line: naga rejects it; the builtins work once the device has SUBGROUP.
struct Inv {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
};

var<workgroup> wg_red: array<vec4<f32>, 256>;

fn wg_sum4(v: vec4<f32>, inv: Inv) -> vec4<f32> {
    let s = subgroupAdd(v);
    if (inv.sg_lane == 0u) { wg_red[inv.sg_id] = s; }
    workgroupBarrier();
    var r = vec4<f32>(0.0);
    for (var i = 0u; i < inv.n_sg; i++) { r += wg_red[i]; }
    workgroupBarrier();  // wg_red is free for the next call
    return r;
}

fn wg_sum(v: f32, inv: Inv) -> f32 {
    let s = subgroupAdd(v);
    if (inv.sg_lane == 0u) { wg_red[inv.sg_id].x = s; }
    workgroupBarrier();
    var r = 0.0;
    for (var i = 0u; i < inv.n_sg; i++) { r += wg_red[i].x; }
    workgroupBarrier();
    return r;
}

fn wg_max(v: f32, inv: Inv) -> f32 {
    let s = subgroupMax(v);
    if (inv.sg_lane == 0u) { wg_red[inv.sg_id].x = s; }
    workgroupBarrier();
    var r = -3.4e38;
    for (var i = 0u; i < inv.n_sg; i++) { r = max(r, wg_red[i].x); }
    workgroupBarrier();
    return r;
}

