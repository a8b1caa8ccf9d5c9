// glu_backward.wgsl: dgate = dout * up * act'(gate), dup = dout * act(gate).
// Spec: src/backend/cpu/swiglu.rs, src/backend/cpu/geglu.rs (`*_backward`)   Test: tests/wgpu_ops.rs (glu)
//   silu'(x) = sig(x) (1 + x (1 - sig(x)))
//   gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
override GELU: bool = false;
struct Params { n: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read>       dout:  array<f32>;  // (n)
@group(0) @binding(1) var<storage, read>       gate:  array<f32>;  // (n)
@group(0) @binding(2) var<storage, read>       up:    array<f32>;  // (n)
@group(0) @binding(3) var<storage, read_write> dgate: array<f32>;  // (n)
@group(0) @binding(4) var<storage, read_write> dup:   array<f32>;  // (n)
@group(0) @binding(5) var<uniform>             p:     Params;

const WG: u32 = 256u;
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const KAPPA: f32 = 0.044715;

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n) { return; }
    let x = gate[i];
    let g = dout[i];
    var a: f32;
    var da: f32;
    if (GELU) {
        let u = clamp(SQRT_2_OVER_PI * (x + KAPPA * x * x * x), -15.0, 15.0);
        let t = tanh(u);
        a = 0.5 * x * (1.0 + t);
        da = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * KAPPA * x * x);
    } else {
        let s = sigmoid(x);
        a = x * s;
        da = s * (1.0 + x * (1.0 - s));
    }
    dgate[i] = g * up[i] * da;
    dup[i] = g * a;
}
