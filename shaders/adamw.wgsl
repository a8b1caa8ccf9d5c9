// adamw.wgsl: one AdamW step, in place, PyTorch semantics (decoupled decay on the old param).
// Spec: src/backend/cpu/adamw.rs (`adamw_step`)   Test: tests/wgpu_ops.rs (adamw)
// The per-step scalars come from the host, computed in f64 and rounded once to f32:
//   decay = 1 - lr wd, step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t).
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   param = param * decay - step_size * m / (sqrt(v) / bc2_sqrt + eps)
// The spec does the update in f64; here it is f32 (error a few ulp of param, see the test).
struct Params {
    n: u32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    _a: u32, _b: u32, _c: u32,
};
@group(0) @binding(0) var<storage, read>       grad:  array<f32>;  // (n)
@group(0) @binding(1) var<storage, read_write> param: array<f32>;  // (n)
@group(0) @binding(2) var<storage, read_write> m:     array<f32>;  // (n)
@group(0) @binding(3) var<storage, read_write> v:     array<f32>;  // (n)
@group(0) @binding(4) var<uniform>             p:     Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= p.n) { return; }
    let g = grad[i];
    let mi = p.beta1 * m[i] + p.one_minus_beta1 * g;
    let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
    let denom = sqrt(vi) / p.bc2_sqrt + p.eps;
    param[i] = param[i] * p.decay - p.step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
}
