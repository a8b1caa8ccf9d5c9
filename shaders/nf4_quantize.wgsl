// nf4_quantize.wgsl: NF4 quantization of a dense f32 weight on the device (bitsandbytes'
// `quantize_4bit(quant_type="nf4")` layout: blocks of `bs` consecutive elements of the flattened
// matrix, one absmax each, codes packed two per byte, the first element in the high nibble).
// Spec: src/quant/nf4.rs `Nf4Matrix::quantize_as`   Test: tests/wgpu_ops.rs (nf4_quantize_*)
//
// Two entries, with a host step between (src/backend/wgpu/ops.rs `quantize_nf4`):
//   absmax: one 64-thread workgroup per block, max |x| (exact: max involves no rounding).
//   codes:  one thread per output u32 word (8 elements); s = clamp(x * inv[b], -1, 1) and the
//           nearest of the 16 NF4 values (first index on ties), as the CPU quantizer.
// The 16 NF4 values come from the host's table (src/quant/nf4.rs NF4_QUANT_MAP), so both sides
// compare against the same f32 numbers. The reciprocals inv[b] = 1 / absmax[b] are computed on the host: WGSL division may be off by
// 2.5 ulp, and a different reciprocal would move codes at their boundaries. An all-zero block has
// inv 0 and gets code 0 everywhere (on the CPU x * inf is NaN, whose nearest code is index 0).
// Elements past n (the pad nibble of an odd count) get the code of 0.0, as bitsandbytes pads.

struct Params {
    n: u32,        // elements
    bs: u32,       // block size
    n_words: u32,  // output words: ceil(ceil(n / 2) / 4)
    nwg_x: u32,
};
@group(0) @binding(0) var<storage, read>       x:    array<f32>;  // (n)
@group(0) @binding(1) var<storage, read>       tab:  array<f32>;  // codes: NF4 values (16) ++ inv (n_blocks)
@group(0) @binding(2) var<storage, read_write> out:  array<u32>;  // absmax (n_blocks) or codes (n_words)
@group(0) @binding(3) var<uniform>             p:    Params;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn absmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wid.y * p.nwg_x + wid.x;
    let start = b * p.bs;
    var m = 0.0;
    if (start < p.n) {
        let end = min(start + p.bs, p.n);
        for (var e = start + lid.x; e < end; e += 64u) {
            m = max(m, abs(x[e]));
        }
    }
    red[lid.x] = m;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) { red[lid.x] = max(red[lid.x], red[lid.x + s]); }
        workgroupBarrier();
    }
    if (lid.x == 0u && start < p.n) { out[b] = bitcast<u32>(red[0]); }
}

fn code_of(e: u32) -> u32 {
    var s = 0.0;
    if (e < p.n) {
        let r = tab[16u + e / p.bs];
        if (r == 0.0) { return 0u; }
        s = clamp(x[e] * r, -1.0, 1.0);
    }
    var best = 0u;
    var best_d = abs(s - tab[0]);
    for (var i = 1u; i < 16u; i++) {
        let d = abs(s - tab[i]);
        if (d < best_d) { best_d = d; best = i; }
    }
    return best;
}

@compute @workgroup_size(256)
fn codes(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let w = (wid.y * p.nwg_x + wid.x) * 256u + lid.x;
    if (w >= p.n_words) { return; }
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let e = (w * 4u + j) * 2u;  // first element of byte 4w + j
        if (e < p.n) {
            word |= ((code_of(e) << 4u) | code_of(e + 1u)) << (8u * j);
        }
    }
    out[w] = word;
}
