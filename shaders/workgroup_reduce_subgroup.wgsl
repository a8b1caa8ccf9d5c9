// workgroup_reduce_subgroup.wgsl: the functions of workgroup_reduce.wgsl (same contract) with
// subgroup builtins, used when the adapter has SUBGROUP: each subgroup reduces in registers
// (subgroupAdd / subgroupMax), its first lane parks the result in workgroup memory, one barrier,
// then every subgroup folds the num_subgroups partials itself (2 to 64 of them: subgroups are 4 to
// 128 wide): lane i reads partials i, i + size, ..., then one more subgroup reduction, so no
// invocation reads more than 64 / 4 = 16 of them and no second round trip through workgroup
// memory is needed. 2 barriers instead of 9. (Reading all partials in every invocation made the
// one-token gemv 35% slower than the tree on lavapipe.)
// No `enable subgroups;` line: naga rejects it; the builtins work once the device has SUBGROUP.
struct Inv {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
};

var<workgroup> wg_red: array<vec4<f32>, 256>;

fn wg_sum4(v: vec4<f32>, inv: Inv) -> vec4<f32> {
    let s = subgroupAdd(v);
    if (inv.sg_lane == 0u) { wg_red[inv.sg_id] = s; }
    workgroupBarrier();
    var t = vec4<f32>(0.0);
    for (var i = inv.sg_lane; i < inv.n_sg; i += inv.sg_size) { t += wg_red[i]; }
    let r = subgroupAdd(t);
    workgroupBarrier();  // wg_red is free for the next call
    return r;
}

fn wg_sum(v: f32, inv: Inv) -> f32 {
    let s = subgroupAdd(v);
    if (inv.sg_lane == 0u) { wg_red[inv.sg_id].x = s; }
    workgroupBarrier();
    var t = 0.0;
    for (var i = inv.sg_lane; i < inv.n_sg; i += inv.sg_size) { t += wg_red[i].x; }
    let r = subgroupAdd(t);
    workgroupBarrier();
    return r;
}

fn wg_max(v: f32, inv: Inv) -> f32 {
    let s = subgroupMax(v);
    if (inv.sg_lane == 0u) { wg_red[inv.sg_id].x = s; }
    workgroupBarrier();
    var t = -3.4e38;
    for (var i = inv.sg_lane; i < inv.n_sg; i += inv.sg_size) { t = max(t, wg_red[i].x); }
    let r = subgroupMax(t);
    workgroupBarrier();
    return r;
}


// Lanes: rows of n (a power of two, at most the adapter's smallest subgroup: the launcher checks)
// consecutive `lane_index` values, for kernels that split a row of work over a few invocations
// (attention). lane_index numbers the invocations subgroup by subgroup, so a row never straddles
// two subgroups whatever order the driver gives local_invocation_index. lane_sums returns to every
// lane of a row the sum of the row's 16-wide partials (a butterfly: every lane gets the same
// bits). Any workgroup size that is a multiple of the subgroup size (or smaller than it).
fn lane_index(inv: Inv) -> u32 {
    return inv.sg_id * inv.sg_size + inv.sg_lane;
}

fn lane_sums(v: array<f32, 16>, n: u32, inv: Inv) -> array<f32, 16> {
    var r = v;
    for (var o = 1u; o < n; o <<= 1u) {
        for (var u = 0u; u < 16u; u++) { r[u] += subgroupShuffleXor(r[u], o); }
    }
    return r;
}
