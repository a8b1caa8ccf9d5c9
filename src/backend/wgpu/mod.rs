//! `WgpuBackend`: the `Backend` trait on wgpu with hand-written WGSL (shaders/*.wgsl), so the model
//! and training code run on any Vulkan/Metal/DX12 GPU unchanged (`Transformer<WgpuBackend>`).
//! Every kernel is tested against its CPU spec in tests/wgpu_ops.rs.
//!
//! - device.rs:    adapter choice (hardware first; software only with LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1),
//!   the one recorded command stream, uploads and readbacks.
//! - pool.rs:      size-bucketed buffer pool with current/peak accounting (`memory()`).
//! - pipelines.rs: `KernelKey` pipeline cache and the dispatch helper.
//! - ops.rs:       `impl Backend for WgpuBackend`: shape checks, then one or a few launches per op.
//!
//! Activations are f32. Frozen quantized weights stay packed on the device and are decoded in the
//! kernels that read them (quant_decode.wgsl; see `WgpuQuant`). Row reductions use subgroup
//! operations where the adapter has SUBGROUP (workgroup_reduce_subgroup.wgsl), workgroup memory
//! otherwise (workgroup_reduce.wgsl).

mod device;
mod ops;
mod pipelines;
mod pool;

pub use device::{
    describe_adapters, DispatchStats, Options as WgpuOptions, ALLOW_SOFTWARE_ENV, SUBGROUPS_ENV, VEC4_ENV,
};
pub use ops::{WgpuQuant, WgpuStorage};

use crate::error::Result;
use std::sync::Arc;

/// The wgpu backend: a cheap handle (Arc) to one device context.
#[derive(Clone)]
pub struct WgpuBackend {
    ctx: Arc<device::Ctx>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBackend({})", self.ctx.info.name)
    }
}

impl WgpuBackend {
    /// Opens the best usable adapter (see device.rs). `Err` when there is none: never a panic.
    pub fn new() -> Result<Self> {
        Ok(WgpuBackend { ctx: device::Ctx::new()? })
    }

    /// `new`, with storage bindings capped at `bytes`: behaves like a device whose
    /// `max_storage_buffer_binding_size` is that small (frozen weights above it are split in row
    /// pieces, other buffers above it are refused). For tests of the split paths on small shapes.
    pub fn with_binding_limit(bytes: u64) -> Result<Self> {
        Self::with_options(WgpuOptions { binding_cap: Some(bytes), ..Default::default() })
    }

    /// Opens the best usable adapter with explicit options (binding cap, subgroups on/off).
    pub fn with_options(opts: WgpuOptions) -> Result<Self> {
        Ok(WgpuBackend { ctx: device::Ctx::open(opts)? })
    }

    /// Do the reducing kernels (norms, cross-entropy, gemv, grad norm) use subgroup operations?
    pub fn uses_subgroups(&self) -> bool {
        self.ctx.pipelines.subgroups
    }

    /// Do forward matmuls of 16 rows or more, of dense or packed weights, run on cooperative
    /// matrices (matmul_coop.wgsl, quant_linear_coop.wgsl)? Only
    /// when asked for (`WgpuOptions::coop_matrix`) on an adapter that supports them.
    pub fn uses_coop_matrix(&self) -> bool {
        self.ctx.coop.is_some()
    }

    /// The adapter in use, as `describe_adapters` prints it (name, backend, type).
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?}, {:?})", self.ctx.info.name, self.ctx.info.backend, self.ctx.info.device_type)
    }

    /// Is the adapter a software rasterizer (lavapipe, llvmpipe)?
    pub fn is_software(&self) -> bool {
        self.ctx.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The optional features enabled on the device (SHADER_F16, SUBGROUP when the adapter has them).
    pub fn features(&self) -> wgpu::Features {
        self.ctx.features
    }

    /// The kernels compiled so far, e.g. `matmul.main_vec4[TRANS_A=0,TRANS_B=1]{rrrwu}` (tests use
    /// it to check which variant ran).
    pub fn kernels_compiled(&self) -> Vec<String> {
        self.ctx.pipelines.keys()
    }

    /// Distinct compute pipelines compiled so far (each compiles once per process).
    pub fn pipelines_compiled(&self) -> usize {
        self.ctx.pipelines.len()
    }

    /// Loses the device on purpose (`wgpu::Device::destroy`), as a driver reset or a removed GPU
    /// would: every later call returns an error. For tests of what a run does when that happens.
    pub fn simulate_device_loss(&self) {
        self.ctx.destroy();
    }

    /// Dispatches recorded, bind groups created (with `reuse_bindings`, a repeated step creates
    /// none) and readbacks (the host waiting for device values) so far.
    pub fn dispatch_stats(&self) -> DispatchStats {
        *self.ctx.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held by idle buffers in the pool (not counted in `memory().current`).
    pub fn pool_cached_bytes(&self) -> u64 {
        self.ctx.pool.stats().2
    }
}
