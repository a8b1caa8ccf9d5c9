// dequantize.wgsl: rows of a frozen weight decoded to f32: out[i, c] = W[ids[i], c] (embedding
// lookup of a quantized table), or every row in order when `has_ids` is 0 (Backend::dequantize).
// Called once per row piece of a weight larger than one binding: the piece holds rows
// [row_base, row_base + piece_rows); lookups of other rows are left to the other pieces.
// Decoding every row (has_ids = 0) writes an output that may be larger than one binding (f32 is
// up to 8x the packed bytes): each launch decodes rows [row0, row0 + n_rows) of its piece into a
// window of out that starts `out_base` elements before them.
// The decode is quant_decode.wgsl's `w_at` (prepended).
// Spec: src/quant/{ggml,nf4,int8}.rs `dequantize_row`   Test: tests/wgpu_ops.rs (quant_formats_*)
// One thread per output element on a 1-D grid of 256-thread workgroups folded into (x, y).

struct Params {
    n_rows: u32,   // output rows
    cols: u32,
    has_ids: u32,
    nwg_x: u32,
    p0: u32, p1: u32, p2: u32, p3: u32,
    offset: f32,
    row_base: u32,     // first weight row this piece holds
    piece_rows: u32,
    row0: u32,         // has_ids = 0: first row of the piece this launch decodes
    out_base: u32,     // has_ids = 0: element offset of that row in the bound out
};
@group(0) @binding(0) var<storage, read>       ids: array<u32>;  // (n_rows) when has_ids
@group(0) @binding(1) var<storage, read>       q:   array<u32>;
@group(0) @binding(2) var<storage, read>       aux: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (n_rows, cols)
@group(0) @binding(4) var<uniform>             p:   Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * p.nwg_x + wid.x) * 256u + lid.x;
    if (i >= p.n_rows * p.cols) { return; }
    let row = i / p.cols;
    let col = i % p.cols;
    if (p.has_ids != 0u) {
        let r = ids[row];
        if (r < p.row_base || r >= p.row_base + p.piece_rows) { return; }
        out[i] = w_at(r - p.row_base, col);
    } else {
        out[p.out_base + i] = w_at(p.row0 + row, col);
    }
}
