// quant_decode.wgsl: w_at(r, c), one element of a frozen weight decoded from its packed blocks.
// Not a shader of its own: prepended to quant_linear.wgsl, dequantize.wgsl and row_norms.wgsl (see
// src/backend/wgpu/pipelines.rs), which declare `q` (the packed bytes as little-endian u32 words),
// `aux` (the format's f32 side table) and `p` (a Params with cols, p0..p3, offset).
// Spec: src/quant/ggml.rs `dequantize_unchecked`, src/quant/nf4.rs `decode_range`,
// src/quant/int8.rs; the layout of q / aux / p0..p3 per format: src/quant/mod.rs `DeviceBlocks`.
// Test: tests/wgpu_ops.rs (quant_formats_*).
//
// FORMAT (override): 1 q4_0, 2 q4_1, 3 q5_0, 4 q5_1, 5 q8_0, 6 q4_k, 7 q6_k, 8 f16, 9 bf16,
// 10 nf4, 11 nf4 with double-quantized absmax, 12 int8, 13 q5_k, 14 f32. One pipeline per format, so the
// switch below folds away. Every read is a byte (or an aligned f16) of `q`: ggml blocks are 18, 20,
// 22, 24, 34, 144, 176 or 210 bytes, so blocks are not word-aligned and no wider load is safe.
// The arithmetic order follows the CPU decoders (d * sc first, then * q, then - m) so results agree
// to the last bit unless the compiler fuses a multiply-add (then within 1 ulp).
override FORMAT: u32 = 1u;

fn byte_at(off: u32) -> u32 {
    return (q[off >> 2u] >> ((off & 3u) * 8u)) & 0xffu;
}

// Little-endian u16 at an even byte offset.
fn u16_at(off: u32) -> u32 {
    let w = q[off >> 2u];
    return select(w & 0xffffu, w >> 16u, (off & 2u) != 0u);
}

fn f16_at(off: u32) -> f32 {
    return unpack2x16float(u16_at(off)).x;
}

fn i8_of(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}

// ggml get_scale_min_k4: 6-bit scale and min j (0..8) of a Q4_K/Q5_K block's 12 scale bytes at `s`.
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(s + j) & 63u), f32(byte_at(s + j + 4u) & 63u));
    }
    let sc = (byte_at(s + j + 4u) & 0xfu) | ((byte_at(s + j - 4u) >> 6u) << 4u);
    let mn = (byte_at(s + j + 4u) >> 4u) | ((byte_at(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

// Rounds like half::bf16::from_f32 / f16::from_f32 (NF4 decodes to the quantized weight's dtype).
fn round_dtype(v: f32, mode: u32) -> f32 {
    if (mode == 1u) {
        let b = bitcast<u32>(v);
        return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
    }
    if (mode == 2u) {
        // Integer rounding, not unpack2x16float(pack2x16float(v)): Mesa 25's lavapipe folds that
        // pair to the identity (found by tests/wgpu_ops.rs), and other compilers may too.
        let a = abs(v);
        if (a != a) { return v; }  // NaN
        if (a >= 65520.0) { return bitcast<f32>((bitcast<u32>(v) & 0x80000000u) | 0x7f800000u); }  // ±inf
        if (a < 6.103515625e-5) { return round(v * 16777216.0) / 16777216.0; }  // subnormal: k 2^-24, ties even
        let b = bitcast<u32>(v);  // normal: keep 10 of the 23 mantissa bits, ties to even
        return bitcast<f32>((b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u);
    }
    return v;
}

fn w_at(r: u32, c: u32) -> f32 {
    switch FORMAT {
        case 1u: {  // q4_0: d f16, 16 bytes of nibbles; element j < 16 low nibble of byte j
            let blk = r * p.p0 + (c / 32u) * 18u;
            let j = c % 32u;
            let nib = (byte_at(blk + 2u + (j % 16u)) >> ((j / 16u) * 4u)) & 0xfu;
            return f32(i32(nib) - 8) * f16_at(blk);
        }
        case 2u: {  // q4_1: d, m f16, nibbles
            let blk = r * p.p0 + (c / 32u) * 20u;
            let j = c % 32u;
            let nib = (byte_at(blk + 4u + (j % 16u)) >> ((j / 16u) * 4u)) & 0xfu;
            return f32(nib) * f16_at(blk) + f16_at(blk + 2u);
        }
        case 3u: {  // q5_0: d f16, qh (32 high bits), nibbles
            let blk = r * p.p0 + (c / 32u) * 22u;
            let j = c % 32u;
            let nib = (byte_at(blk + 6u + (j % 16u)) >> ((j / 16u) * 4u)) & 0xfu;
            let hi = (byte_at(blk + 2u + j / 8u) >> (j % 8u)) & 1u;
            return f32(i32(nib | (hi << 4u)) - 16) * f16_at(blk);
        }
        case 4u: {  // q5_1: d, m f16, qh, nibbles
            let blk = r * p.p0 + (c / 32u) * 24u;
            let j = c % 32u;
            let nib = (byte_at(blk + 8u + (j % 16u)) >> ((j / 16u) * 4u)) & 0xfu;
            let hi = (byte_at(blk + 4u + j / 8u) >> (j % 8u)) & 1u;
            return f32(nib | (hi << 4u)) * f16_at(blk) + f16_at(blk + 2u);
        }
        case 5u: {  // q8_0: d f16, 32 i8
            let blk = r * p.p0 + (c / 32u) * 34u;
            return i8_of(byte_at(blk + 2u + c % 32u)) * f16_at(blk);
        }
        case 6u: {  // q4_k: d, dmin f16, scales[12], qs[128]; chunk i of 64: low nibbles then high
            let blk = r * p.p0 + (c / 256u) * 144u;
            let e = c % 256u;
            let i = e / 64u;
            let hi = (e % 64u) / 32u;
            let sm = scale_min_k4(blk + 4u, 2u * i + hi);
            let qb = byte_at(blk + 16u + 32u * i + e % 32u);
            let d1 = f16_at(blk) * sm.x;
            let m1 = f16_at(blk + 2u) * sm.y;
            return d1 * f32((qb >> (4u * hi)) & 0xfu) - m1;
        }
        case 13u: {  // q5_k: d, dmin f16, scales[12], qh[32], qs[128]
            let blk = r * p.p0 + (c / 256u) * 176u;
            let e = c % 256u;
            let i = e / 64u;
            let hi = (e % 64u) / 32u;
            let l = e % 32u;
            let sm = scale_min_k4(blk + 4u, 2u * i + hi);
            let lo = (byte_at(blk + 48u + 32u * i + l) >> (4u * hi)) & 0xfu;
            let h = (byte_at(blk + 16u + l) >> (2u * i + hi)) & 1u;
            let d1 = f16_at(blk) * sm.x;
            let m1 = f16_at(blk + 2u) * sm.y;
            return d1 * f32(lo + 16u * h) - m1;
        }
        case 7u: {  // q6_k: ql[128], qh[64], scales[16] i8, d f16 at 208
            let blk = r * p.p0 + (c / 256u) * 210u;
            let e = c % 256u;
            let half = e / 128u;
            let g = (e % 128u) / 32u;   // which of q1..q4
            let l = e % 32u;
            let qlb = byte_at(blk + 64u * half + l + 32u * (g & 1u));
            let qhb = byte_at(blk + 128u + 32u * half + l);
            let v = ((qlb >> (4u * (g / 2u))) & 0xfu) | (((qhb >> (2u * g)) & 3u) << 4u);
            let sc = i8_of(byte_at(blk + 192u + 8u * half + l / 16u + 2u * g));
            return f16_at(blk + 208u) * sc * f32(i32(v) - 32);
        }
        case 8u: {  // f16
            return f16_at(r * p.p0 + 2u * c);
        }
        case 9u: {  // bf16
            return bitcast<f32>(u16_at(r * p.p0 + 2u * c) << 16u);
        }
        case 10u, 11u: {  // nf4: element e = r * cols + c, block e / blocksize, high nibble first
            let e = r * p.cols + c;
            let nib = (byte_at(e / 2u) >> select(0u, 4u, (e & 1u) == 0u)) & 0xfu;
            let b = e / p.p0;
            var absmax: f32;
            if (FORMAT == 10u) {
                absmax = aux[16u + b];
            } else {
                absmax = aux[16u + byte_at(p.p2 + b)] * aux[272u + b / p.p3] + p.offset;
            }
            return round_dtype(aux[nib] * absmax, p.p1);
        }
        case 14u: {  // f32
            return bitcast<f32>(q[(r * p.p0) / 4u + c]);
        }
        case 12u: {  // int8: per-row scale
            return i8_of(byte_at(r * p.cols + c)) * aux[r];
        }
        default: {
            return 0.0;
        }
    }
}
