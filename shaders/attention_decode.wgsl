// attention_decode.wgsl: attention of TQ new queries against the first S rows of a KV cache, for
// generation (forward only). Spec: src/backend/cpu/attention_decode.rs (masking, soft-cap, the
// empty-window case)   Test: tests/wgpu_ops.rs (attention_decode)
//
// One workgroup of 64 threads per (query i, head h); query i sits at cache row r = S - TQ + i and
// sees rows [lo, r] (lo = r + 1 - window with a sliding window, else 0). The keys are walked in
// chunks of 256: each thread scores 4 keys of the chunk (a D-long dot product against q, held in
// workgroup memory), the chunk's maximum updates the running max m (online softmax: the running
// sum l and the output accumulators are rescaled by exp(m_old - m_new)), the probabilities go to
// workgroup memory, and each thread accumulates up to 4 output dims (d = t, t + 64, ...) over the
// chunk's values. O(D) memory per workgroup whatever S is; no scores matrix.
// Contracts easy to miss: the cache buffers may hold more than S rows (capacity); rows >= S are
// never read. A query that sees no key (window 0) gets 0, as the spec. D <= 256 (the launcher checks).
// F16KV (override): the caches hold f16 pairs packed in u32 words (written by `pack_f16` below),
// half the memory and reads; arithmetic stays f32. The caches are bound as u32 words either way.
override F16KV: bool = false;
struct Params {
    tq: u32, s: u32, h: u32, kv: u32,
    d: u32,
    scale: f32,
    window: u32,   // 0xffffffff = no sliding window
    softcap: f32,  // 0 = none
};
@group(0) @binding(0) var<storage, read>       q:   array<f32>;  // (TQ, H, D)
@group(0) @binding(1) var<storage, read>       kc:  array<u32>;  // (>= S, KV, D) f32 bits or f16 pairs
@group(0) @binding(2) var<storage, read>       vc:  array<u32>;  // (>= S, KV, D)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (TQ, H, D)
@group(0) @binding(4) var<uniform>             p:   Params;

fn k_at(i: u32) -> f32 {
    if (F16KV) { return unpack2x16float(kc[i / 2u])[i % 2u]; }
    return bitcast<f32>(kc[i]);
}

fn v_at(i: u32) -> f32 {
    if (F16KV) { return unpack2x16float(vc[i / 2u])[i % 2u]; }
    return bitcast<f32>(vc[i]);
}

const WG: u32 = 64u;
const CH: u32 = 256u;       // keys per chunk: 4 per thread
const NEG: f32 = -3.0e38;   // below any score (finite: NEG - NEG is 0, never NaN)
var<workgroup> qs: array<f32, 256>;
var<workgroup> sc: array<f32, 256>;   // the chunk's scores, then its probabilities
var<workgroup> red: array<f32, 64>;

fn reduce_max(v: f32, t: u32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var o = WG / 2u; o > 0u; o >>= 1u) {
        if (t < o) { red[t] = max(red[t], red[t + o]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(v: f32, t: u32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var o = WG / 2u; o > 0u; o >>= 1u) {
        if (t < o) { red[t] = red[t] + red[t + o]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
    let idx = wid.y * nwg.x + wid.x;  // query i * H + head h
    if (idx >= p.tq * p.h) { return; }
    let i = idx / p.h;
    let g = (idx % p.h) / (p.h / p.kv);
    let r = p.s - p.tq + i;
    var lo = 0u;
    if (p.window != 0xffffffffu && r + 1u > p.window) { lo = r + 1u - p.window; }
    let hi = select(r + 1u, lo, p.window == 0u);  // exclusive; empty when window = 0
    for (var e = t; e < p.d; e += WG) { qs[e] = q[idx * p.d + e]; }
    workgroupBarrier();
    var m = NEG;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);  // output dims t + 64 u
    for (var c0 = lo; c0 < hi; c0 += CH) {
        var cmax = NEG;
        for (var u = 0u; u < 4u; u++) {
            let jj = t + WG * u;
            let j = c0 + jj;
            var sv = NEG;
            if (j < hi) {
                let kb = (j * p.kv + g) * p.d;
                var dot = 0.0;
                for (var e = 0u; e < p.d; e++) { dot += qs[e] * k_at(kb + e); }
                sv = p.scale * dot;
                if (p.softcap > 0.0) { sv = p.softcap * tanh(sv / p.softcap); }
            }
            sc[jj] = sv;
            cmax = max(cmax, sv);
        }
        let mnew = max(m, reduce_max(cmax, t));
        let corr = exp(m - mnew);
        var psum = 0.0;
        for (var u = 0u; u < 4u; u++) {
            let jj = t + WG * u;
            let pj = select(0.0, exp(sc[jj] - mnew), c0 + jj < hi);
            sc[jj] = pj;
            psum += pj;
        }
        l = l * corr + reduce_sum(psum, t);  // its barriers also publish sc
        m = mnew;
        let n = min(CH, hi - c0);
        for (var u = 0u; u < 4u; u++) {
            let e = t + WG * u;
            if (e < p.d) {
                var a = acc[u] * corr;
                for (var jj = 0u; jj < n; jj++) { a += sc[jj] * v_at(((c0 + jj) * p.kv + g) * p.d + e); }
                acc[u] = a;
            }
        }
        workgroupBarrier();  // every thread is done with sc before the next chunk overwrites it
    }
    for (var u = 0u; u < 4u; u++) {
        let e = t + WG * u;
        if (e < p.d) { out[idx * p.d + e] = select(0.0, acc[u] / l, l > 0.0); }
    }
}

// pack_f16: dst[dst_word + i] = the f16 pair (src[2i], src[2i + 1]) for i < n_words: new keys or
// values appended to an f16 cache. One thread per word.
struct PackParams { n_words: u32, dst_word: u32, _a: u32, _b: u32 };
@group(0) @binding(0) var<storage, read>       pk_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> pk_dst: array<u32>;
@group(0) @binding(2) var<uniform>             pk:     PackParams;

@compute @workgroup_size(256)
fn pack_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) t: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + t;
    if (i >= pk.n_words) { return; }
    pk_dst[pk.dst_word + i] = pack2x16float(vec2<f32>(pk_src[2u * i], pk_src[2u * i + 1u]));
}
