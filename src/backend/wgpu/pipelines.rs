//! Compute pipelines cached by a readable key, and the one dispatch helper every op uses.
//!
//! `KernelKey` = (shader file, entry point, override constants, binding layout); Display gives e.g.
//! `matmul.main[TRANS_A=0,TRANS_B=1]{rrwu}`. Each key compiles once per process (drivers recompile
//! WGSL on every run, so first use is expensive; cubecl/ratchet do the same). Compile and validation
//! errors come back as `Error` carrying naga's message (caught with an error scope), never a panic.
//!
//! Binding convention of every shader: storage buffers at bindings 0..n in the order the launcher
//! passes them (read-only or read-write), then the `Params` uniform at binding n (a slot of the
//! device's params ring, bound with a dynamic offset). A storage binding is a whole buffer or a
//! window of one (`Buf::at`); `dispatch` refuses one over the adapter's binding limit. Bind groups
//! are cached by (kernel, buffer ranges), see device.rs.

use super::device::Ctx;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// `shaders/<file>` as a string literal.
macro_rules! wgsl {
    ($f:literal) => {
        include_str!(concat!("../../../shaders/", $f))
    };
}

/// The two builds of a shader that reduces across a workgroup: `workgroup_reduce_subgroup.wgsl`
/// (subgroup builtins) or `workgroup_reduce.wgsl` (workgroup memory) prepended, then the
/// shader's own prelude(s) and file. WGSL has no include and a module that names a subgroup
/// builtin does not compile on a device without SUBGROUP, so the choice is made here.
macro_rules! reducing {
    ($subgroups:expr, $($f:literal),+) => {
        if $subgroups {
            concat!(wgsl!("workgroup_reduce_subgroup.wgsl"), $(wgsl!($f)),+)
        } else {
            concat!(wgsl!("workgroup_reduce.wgsl"), $(wgsl!($f)),+)
        }
    };
}

/// The WGSL source of a shader file in shaders/, for a device with (`subgroups`) or without
/// subgroup operations.
fn source(shader: &str, subgroups: bool) -> Option<&'static str> {
    Some(match shader {
        "elementwise" => wgsl!("elementwise.wgsl"),
        "matmul" => wgsl!("matmul.wgsl"),
        // The cooperative-matrix tile size (16 or 8) comes with a prelude: WGSL's matrix types
        // take literal sizes.
        "matmul_coop" => concat!(wgsl!("matmul_coop_tile16.wgsl"), wgsl!("matmul_coop.wgsl")),
        "matmul_coop8" => concat!(wgsl!("matmul_coop_tile8.wgsl"), wgsl!("matmul_coop.wgsl")),
        "reduce" => reducing!(subgroups, "reduce.wgsl"),
        "rms_norm" => reducing!(subgroups, "rms_norm.wgsl"),
        "rms_norm_backward" => reducing!(subgroups, "rms_norm_backward.wgsl"),
        "glu" => wgsl!("glu.wgsl"),
        "glu_backward" => wgsl!("glu_backward.wgsl"),
        "rope" => wgsl!("rope.wgsl"),
        "embedding" => wgsl!("embedding.wgsl"),
        "embedding_backward" => wgsl!("embedding_backward.wgsl"),
        "adamw" => wgsl!("adamw.wgsl"),
        "dropout" => wgsl!("dropout.wgsl"),
        "linear_cross_entropy" => reducing!(subgroups, "linear_cross_entropy.wgsl"),
        "attention" => reducing!(subgroups, "attention.wgsl"),
        "attention_backward" => reducing!(subgroups, "attention_backward.wgsl"),
        "attention_decode" => wgsl!("attention_decode.wgsl"),
        "nf4_quantize" => wgsl!("nf4_quantize.wgsl"),
        // The shaders that read packed weights share the decoder, prepended.
        "quant_linear" => reducing!(subgroups, "quant_decode.wgsl", "quant_linear.wgsl"),
        "dequantize" => concat!(wgsl!("quant_decode.wgsl"), wgsl!("dequantize.wgsl")),
        "row_norms" => reducing!(subgroups, "quant_decode.wgsl", "row_norms.wgsl"),
        // Tile prelude first (its enables must open the module), then the decoder.
        "quant_linear_coop" => {
            concat!(wgsl!("matmul_coop_tile16.wgsl"), wgsl!("quant_decode.wgsl"), wgsl!("quant_linear_coop.wgsl"))
        }
        "quant_linear_coop8" => {
            concat!(wgsl!("matmul_coop_tile8.wgsl"), wgsl!("quant_decode.wgsl"), wgsl!("quant_linear_coop.wgsl"))
        }
        _ => return None,
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub shader: &'static str,
    pub entry: &'static str,
    /// Override constants, rendered "NAME=value,...".
    pub variant: String,
    /// One letter per storage binding: r (read) or w (read_write); then u for the params uniform.
    pub layout: String,
}

impl std::fmt::Display for KernelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}[{}]{{{}}}", self.shader, self.entry, self.variant, self.layout)
    }
}

/// A storage buffer argument: a whole buffer, or a byte range of one (`Buf::at`).
pub enum Bind<'a> {
    R(Buf<'a>),
    W(Buf<'a>),
}

impl<'a> Bind<'a> {
    /// Read-only.
    pub fn r(b: impl Into<Buf<'a>>) -> Self {
        Bind::R(b.into())
    }
    /// Read-write.
    pub fn w(b: impl Into<Buf<'a>>) -> Self {
        Bind::W(b.into())
    }
}

/// A buffer bound whole, or `bytes` bytes from byte `offset` (a window of a tensor larger than one
/// storage binding; the offset is a multiple of the adapter's storage offset alignment).
#[derive(Clone, Copy)]
pub struct Buf<'a> {
    pub buf: &'a wgpu::Buffer,
    pub range: Option<(u64, u64)>,
}

impl<'a> From<&'a wgpu::Buffer> for Buf<'a> {
    fn from(buf: &'a wgpu::Buffer) -> Self {
        Buf { buf, range: None }
    }
}

impl<'a> Buf<'a> {
    pub fn at(buf: &'a wgpu::Buffer, offset: u64, bytes: u64) -> Self {
        Buf { buf, range: Some((offset, bytes)) }
    }

    /// (offset, bytes) this binding covers.
    fn span(&self) -> (u64, u64) {
        self.range.unwrap_or((0, self.buf.size()))
    }
}

struct Compiled {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub struct Pipelines {
    /// Build the reducing shaders with subgroup builtins (the device has SUBGROUP and they were
    /// not turned off).
    pub subgroups: bool,
    /// Params at dynamic offsets of the device's ring and cached bind groups (else a buffer and
    /// a bind group per dispatch): `Options::reuse_bindings`, resolved for the adapter.
    pub reuse_bindings: bool,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    cache: Mutex<HashMap<KernelKey, Arc<Compiled>>>,
    /// Bind groups by pipeline and (buffer, offset, size) of each storage binding.
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
}

type BindKey = (KernelKey, Vec<(wgpu::Buffer, u64, u64)>);

/// Bind groups kept at most; past it the cache starts over (a run reuses far fewer: the pool
/// hands the same buffers to the same ops every step).
const MAX_BIND_GROUPS: usize = 8192;

impl Pipelines {
    pub fn new(subgroups: bool, reuse_bindings: bool) -> Self {
        Pipelines { subgroups, reuse_bindings, ..Default::default() }
    }

    /// The pipelines compiled so far, as `KernelKey` displays them, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// Number of distinct pipelines compiled so far.
    pub fn len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn module(&self, device: &wgpu::Device, shader: &'static str) -> Result<Arc<wgpu::ShaderModule>> {
        if let Some(m) = self.modules.lock().unwrap_or_else(|e| e.into_inner()).get(shader) {
            return Ok(m.clone());
        }
        let src =
            source(shader, self.subgroups).ok_or_else(|| Error::msg(format!("wgpu: unknown shader `{shader}`")))?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            let hint = if self.subgroups {
                " (built with subgroup operations: set LORAFORGE_WGPU_SUBGROUPS=0 to build without them)"
            } else {
                ""
            };
            return Err(Error::msg(format!("wgpu: compiling shaders/{shader}.wgsl: {e}{hint}")));
        }
        let m = Arc::new(m);
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).insert(shader, m.clone());
        Ok(m)
    }

    fn get(&self, device: &wgpu::Device, key: &KernelKey, overrides: &[(&str, f64)]) -> Result<Arc<Compiled>> {
        if let Some(c) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(c.clone());
        }
        let module = self.module(device, key.shader)?;
        let mut entries = Vec::new();
        for (i, ch) in key.layout.chars().enumerate() {
            let (ty, has_dynamic_offset) = match ch {
                'r' => (wgpu::BufferBindingType::Storage { read_only: true }, false),
                'w' => (wgpu::BufferBindingType::Storage { read_only: false }, false),
                // The params uniform: a slot of the device's params ring (device.rs), or its own
                // buffer per dispatch.
                _ => (wgpu::BufferBindingType::Uniform, self.reuse_bindings),
            };
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset, min_binding_size: None },
                count: None,
            });
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout =
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let label = key.to_string();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants: overrides, ..Default::default() },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::msg(format!("wgpu: creating pipeline {label}: {e}")));
        }
        let c = Arc::new(Compiled { pipeline, layout });
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), c.clone());
        Ok(c)
    }
}

/// The storage entries of a bind group: binding i = spans[i] (buffer, byte offset, bytes).
fn bind_entries<'a>(spans: &[(&'a wgpu::Buffer, u64, u64)]) -> Vec<wgpu::BindGroupEntry<'a>> {
    spans
        .iter()
        .enumerate()
        .map(|(i, &(buffer, offset, bytes))| {
            let size = std::num::NonZeroU64::new(bytes);
            let resource = wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset, size });
            wgpu::BindGroupEntry { binding: i as u32, resource }
        })
        .collect()
}

/// Max workgroups along one dispatch dimension (WebGPU's default limit).
pub const MAX_GROUPS: u32 = 65535;

/// A 1-D grid of `n` workgroups folded into (x, y) so x <= 65535. Shaders recover the flat index as
/// `wid.y * nwg.x + wid.x` and bounds-check it.
pub fn grid_1d(n: usize) -> (u32, u32, u32) {
    let n = n.max(1) as u64;
    if n <= MAX_GROUPS as u64 {
        (n as u32, 1, 1)
    } else {
        let y = n.div_ceil(MAX_GROUPS as u64);
        (n.div_ceil(y) as u32, y as u32, 1)
    }
}

/// Records one dispatch of `shader.entry` with the given overrides, storage buffers and params
/// (u32 words; f32 fields are passed as `to_bits`).
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &Ctx,
    shader: &'static str,
    entry: &'static str,
    overrides: &[(&str, f64)],
    binds: &[Bind<'_>],
    params: &[u32],
    groups: (u32, u32, u32),
) -> Result<()> {
    if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
        return Ok(());
    }
    let mut layout: String = binds.iter().map(|b| if matches!(b, Bind::R(_)) { 'r' } else { 'w' }).collect();
    layout.push('u');
    let variant = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let key = KernelKey { shader, entry, variant, layout };
    let c = ctx.pipelines.get(&ctx.device, &key, overrides)?;
    // The params, padded to 16 bytes (uniform layout rules), go to the pass's ring slot.
    let mut words = params.to_vec();
    words.resize(params.len().div_ceil(4).max(1) * 4, 0);
    if words.len() as u64 * 4 > ctx.param_slot {
        return Err(Error::msg(format!("wgpu: {key}: {} params words exceed a ring slot", words.len())));
    }
    let max = ctx.max_binding();
    let mut spans = Vec::with_capacity(binds.len());
    for (i, b) in binds.iter().enumerate() {
        let (Bind::R(b) | Bind::W(b)) = b;
        let (offset, bytes) = b.span();
        // A launcher that binds a tensor larger than one binding whole has no windowed path:
        // say so (wgpu would report a validation error with no op in it, or on a capped test
        // device, nothing at all).
        if bytes > max {
            return Err(Error::OutOfMemory {
                device: format!(
                    "{} (binding {i} of {shader}.{entry} is over the adapter's max storage binding, and this \
                     op does not split its operands)",
                    ctx.info.name
                ),
                need: bytes,
                available: max,
            });
        }
        spans.push((b.buf, offset, bytes));
    }
    // A bind group of the storage spans and the params uniform (counted for `dispatch_stats`).
    let new_bg = |params: wgpu::BindingResource| {
        let mut entries = bind_entries(&spans);
        entries.push(wgpu::BindGroupEntry { binding: binds.len() as u32, resource: params });
        ctx.counters.lock().unwrap_or_else(|e| e.into_inner()).bind_groups_created += 1;
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &c.layout, entries: &entries })
    };
    if !ctx.pipelines.reuse_bindings {
        // A params buffer and a bind group of its own (created mapped, so the params are in place
        // before any later-recorded work, whatever the order of submissions).
        let ubuf = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("loraforge.params"),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        ctx.record_dispatch(&c.pipeline, &new_bg(ubuf.as_entire_binding()), None, groups);
        return Ok(());
    }
    let bg = {
        let bkey: BindKey = (key, spans.iter().map(|&(b, o, n)| (b.clone(), o, n)).collect());
        let mut cache = ctx.pipelines.bind_groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bg) = cache.get(&bkey) {
            bg.clone()
        } else {
            if cache.len() >= MAX_BIND_GROUPS {
                cache.clear();
            }
            let size = std::num::NonZeroU64::new(ctx.param_slot);
            let ring = wgpu::BufferBinding { buffer: &ctx.params_ring, offset: 0, size };
            let bg = new_bg(wgpu::BindingResource::Buffer(ring));
            cache.insert(bkey, bg.clone());
            bg
        }
    };
    ctx.record_dispatch(&c.pipeline, &bg, Some(bytemuck::cast_slice(&words)), groups);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::source;
    use wgpu::naga;

    /// matmul_coop.wgsl and quant_linear_coop.wgsl run only on adapters with cooperative matrices
    /// (a GPU, or Mesa 26's lavapipe for the 8x8 tiles: tests/wgpu_ops.rs), so their compilation
    /// is also checked on the host, for both tile sizes: naga parses them, validates them with the
    /// capabilities the device would grant, and writes SPIR-V using cooperative-matrix
    /// instructions, at every transpose (matmul) or weight format (quant_linear); without the
    /// capability they are refused.
    #[test]
    fn matmul_coop_compiles_to_spirv() {
        let transposes: Vec<Vec<(&str, f64)>> = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
            .iter()
            .map(|&(a, b)| vec![("TRANS_A", a), ("TRANS_B", b)])
            .collect();
        for shader in ["matmul_coop", "matmul_coop8"] {
            coop_compiles_to_spirv(shader, &transposes);
        }
    }

    #[test]
    fn quant_linear_coop_compiles_to_spirv() {
        let formats: Vec<Vec<(&str, f64)>> = (1..=14).map(|f| vec![("FORMAT", f as f64)]).collect();
        for shader in ["quant_linear_coop", "quant_linear_coop8"] {
            coop_compiles_to_spirv(shader, &formats);
        }
    }

    fn coop_compiles_to_spirv(shader: &str, variants: &[Vec<(&str, f64)>]) {
        use naga::valid::{Capabilities, ValidationFlags, Validator};
        let src = source(shader, true).unwrap();
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
        // SHADER_FLOAT16_IN_FLOAT32: quant_decode.wgsl's unpack2x16float (every Vulkan device).
        let base = Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        let caps = Capabilities::COOPERATIVE_MATRIX | base;
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
        for variant in variants {
            let mut consts = naga::back::PipelineConstants::default();
            for &(name, v) in variant {
                consts.insert(name.into(), v);
            }
            consts.insert("WG".into(), 128.0);
            let (m, i) = naga::back::pipeline_constants::process_overrides(&module, &info, None, &consts).unwrap();
            let opts = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
            let pl = naga::back::spv::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: "main".into(),
            };
            let words = naga::back::spv::write_vec(&m, &i, &opts, Some(&pl)).unwrap();
            // OpCapability CooperativeMatrixKHR (opcode 17, capability 6022) and
            // OpCooperativeMatrixMulAddKHR (opcode 4459) are in the module.
            assert!(words.windows(2).any(|w| w == [(2 << 16) | 17, 6022]), "no CooperativeMatrixKHR capability");
            assert!(words.iter().any(|&w| w & 0xffff == 4459 && w >> 16 == 6), "no cooperative multiply-add");
        }
        assert!(Validator::new(ValidationFlags::all(), base).validate(&module).is_err());
    }
}
