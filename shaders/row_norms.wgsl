// row_norms.wgsl: out[r] = ||W[r, :] + delta[r, :]||_2, or its reciprocal: DoRA's weight norm,
// read straight from the frozen weight's packed blocks (quant_decode.wgsl's `w_at`, prepended) or
// from an f32 weight (FORMAT 14), plus the dense s*BA when `has_delta`.
// Spec: src/backend/cpu/row_norms.rs   Test: tests/wgpu_ops.rs (row_norms, quant_formats_*)
//
// One workgroup of 256 per row; a lane sums the squares of columns lid, lid + 256, ... in f32, then
// wg_sum (workgroup_reduce(_subgroup).wgsl, prepended) adds the lanes. The spec sums in f64: with
// C / 256 terms per lane and a tree of 8 levels the f32 sum is within (C / 256 + 8) eps relative.
// One launch per row piece of the weight (and per window of delta, when delta or an f32 weight is
// larger than one binding): rows [row0, row0 + rows) of the piece; delta and an f32 weight are bound
// from their first row of the launch (`delta_base`, `q_base`: element offsets inside the binding).
struct Params {
    rows: u32,        // rows this launch computes
    cols: u32,
    has_delta: u32,
    recip: u32,
    p0: u32, p1: u32, p2: u32, p3: u32,
    offset: f32,
    row0: u32,        // first row of the launch inside the packed piece (w_at's row index)
    q_base: u32,      // FORMAT 14: element offset of the launch's first row in the bound q
    delta_base: u32,  // element offset of the launch's first row in the bound delta
    out_row0: u32,    // index in out of the launch's first row
};
@group(0) @binding(0) var<storage, read>       q:     array<u32>;
@group(0) @binding(1) var<storage, read>       aux:   array<f32>;
@group(0) @binding(2) var<storage, read>       delta: array<f32>;  // (rows, cols) when has_delta
@group(0) @binding(3) var<storage, read_write> out:   array<f32>;  // (all rows of the weight)
@group(0) @binding(4) var<uniform>             p:     Params;

const WG: u32 = 256u;

fn weight(r: u32, c: u32) -> f32 {
    if (FORMAT == 14u) { return bitcast<f32>(q[p.q_base + r * p.cols + c]); }
    return w_at(p.row0 + r, c);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, inv: Inv) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) { return; }  // uniform per workgroup: the barriers in wg_sum stay uniform
    var acc = 0.0;
    for (var c = inv.lid; c < p.cols; c += WG) {
        var v = weight(r, c);
        if (p.has_delta != 0u) { v += delta[p.delta_base + r * p.cols + c]; }
        acc += v * v;
    }
    let n = sqrt(wg_sum(acc, inv));
    if (inv.lid == 0u) { out[p.out_row0 + r] = select(n, 1.0 / n, p.recip != 0u); }
}
