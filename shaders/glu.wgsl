// glu.wgsl: SwiGLU (silu(gate) * up) or GeGLU (gelu_tanh(gate) * up), elementwise.
// Spec: src/backend/cpu/swiglu.rs, src/backend/cpu/geglu.rs   Test: tests/wgpu_ops.rs (glu)
// Variant: GELU (override). Sigmoid never takes exp of a large positive number; tanh's argument is
// clamped to +-15 where tanh is +-1 in f32 (some drivers return NaN for tanh of large inputs).
override GELU: bool = false;
struct Params { n: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read>       gate: array<f32>;  // (n)
@group(0) @binding(1) var<storage, read>       up:   array<f32>;  // (n)
@group(0) @binding(2) var<storage, read_write> out:  array<f32>;  // (n)
@group(0) @binding(3) var<uniform>             p:    Params;

const WG: u32 = 256u;
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const KAPPA: f32 = 0.044715;

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}

fn act(x: f32) -> f32 {
    if (GELU) {
        let u = clamp(SQRT_2_OVER_PI * (x + KAPPA * x * x * x), -15.0, 15.0);
        return 0.5 * x * (1.0 + tanh(u));
    }
    return x * sigmoid(x);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n) { return; }
    out[i] = act(gate[i]) * up[i];
}
