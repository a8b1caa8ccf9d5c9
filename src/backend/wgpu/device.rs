//! Adapter selection, the device context, and the one command stream every op records into.
//!
//! Adapter order: discrete GPU, then integrated, then virtual; a software adapter (lavapipe,
//! llvmpipe, WARP: `DeviceType::Cpu`) only when `LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1`, because it is
//! far slower than the CPU backend. No adapter is an `Error`, never a panic.
//!
//! Command stream: ops record compute passes (and buffer copies) into one pending `CommandEncoder`;
//! it is submitted when `MAX_PENDING` passes have gathered, or when the host needs results
//! (`download`, `sync`). Uploads are recorded as copies from a fresh staging buffer into the same
//! encoder, never with `queue.write_buffer` (which would run BEFORE already-recorded work and could
//! overwrite a pooled buffer that earlier work still reads).
//!
//! Params uniforms (hardware adapters; `Options::reuse_bindings`): one ring of `MAX_PENDING` slots bound at a dynamic offset, the slot being the
//! pass's index in its submission. The params of a submission's passes are gathered on the host
//! and written with one `queue.write_buffer` just before the submit. That is safe where uploads
//! are not: the write lands before that submission's passes and after every earlier submission
//! (queue order), so each pass reads its own params; and it is one staging copy per submission
//! instead of one buffer per dispatch. Bind groups
//! (storage buffers + the ring) are cached by pipeline and buffer ranges: a training step binds
//! the same pooled buffers every step, so after the first step no bind group is created.

use super::pipelines::Pipelines;
use super::pool::{Pool, PooledBuffer};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Env variable that allows software adapters.
pub const ALLOW_SOFTWARE_ENV: &str = "LORAFORGE_ALLOW_SOFTWARE_ADAPTER";
/// `LORAFORGE_WGPU_SUBGROUPS=0` builds every shader without subgroup operations even on an adapter
/// that has them (a workaround for a driver whose subgroup support misbehaves).
pub const SUBGROUPS_ENV: &str = "LORAFORGE_WGPU_SUBGROUPS";
/// `LORAFORGE_WGPU_VEC4=0`: the matmul loads scalars even where 16-byte loads would do.
pub const VEC4_ENV: &str = "LORAFORGE_WGPU_VEC4";
/// `LORAFORGE_WGPU_REUSE_BINDINGS=0|1`: per-dispatch params and bind groups, or the params ring and
/// cached bind groups, whatever the adapter (`Options::reuse_bindings`).
pub const REUSE_BINDINGS_ENV: &str = "LORAFORGE_WGPU_REUSE_BINDINGS";
/// `LORAFORGE_WGPU_KV_F16=0|1`: generation's KV cache in f32 or f16 whatever the adapter.
pub const KV_F16_ENV: &str = "LORAFORGE_WGPU_KV_F16";
/// `LORAFORGE_WGPU_COOP=1` sets `Options::coop_matrix`.
pub const COOP_ENV: &str = "LORAFORGE_WGPU_COOP";

/// How to open the device. `Default`: the adapter's own limits, subgroup operations when the
/// adapter has them (unless `LORAFORGE_WGPU_SUBGROUPS=0`).
#[derive(Clone, Debug)]
pub struct Options {
    /// Cap storage bindings at this many bytes (below the adapter's limit): behaves like a smaller
    /// device, so the split paths run on small shapes in tests.
    pub binding_cap: Option<u64>,
    /// Use subgroup operations if the adapter has SUBGROUP; `false` opens the device without the
    /// feature, as on an adapter that lacks it.
    pub subgroups: bool,
    /// Let the matmul use 16-byte global loads where its operands are aligned (matmul.wgsl
    /// `main_vec4`); `false` keeps scalar loads everywhere.
    pub vec4_loads: bool,
    /// Params in one ring of uniform slots bound at dynamic offsets, and bind groups cached by
    /// the buffers they bind (`true`); or a fresh params buffer and bind group per dispatch
    /// (`false`). `None`: the ring on hardware adapters, per dispatch on software ones (on lavapipe,
    /// Mesa 25, the ring measured 64-78 us per tiny dispatch against 39-83 us, median 54, per
    /// dispatch: its dynamic offsets cost more than the buffers they save; profiled, the ring
    /// halves the host time spent in wgpu and loraforge, what a hardware GPU waits on). `LORAFORGE_WGPU_REUSE_BINDINGS=0|1` overrides the default.
    pub reuse_bindings: Option<bool>,
    /// Keep generation's KV cache in f16 (`true`) or f32. `None`: f16 where the adapter has
    /// SHADER_F16. `LORAFORGE_WGPU_KV_F16=0|1` overrides the default.
    pub kv_f16: Option<bool>,
    /// Run forward matmuls of dense and packed weights on cooperative matrices (matmul_coop.wgsl,
    /// quant_linear_coop.wgsl: f16 inputs, f32 accumulation, tensor cores) where the adapter
    /// supports them (`coop_config`). Off unless asked for: wgpu marks the feature experimental,
    /// and its 16x16 tiles have not yet been checked on a GPU against the CPU (tests/wgpu_ops.rs
    /// `matmul_coop_matches_the_cpu` and `quant_linear_coop_matches_the_cpu` check the 8x8 ones on
    /// Mesa 26's lavapipe in every test run, and any configuration where they find one).
    pub coop_matrix: bool,
}

impl Default for Options {
    fn default() -> Self {
        let on = |var: &str| std::env::var(var).map(|v| v != "0").unwrap_or(true);
        let reuse_bindings = std::env::var(REUSE_BINDINGS_ENV).ok().map(|v| v != "0");
        let kv_f16 = std::env::var(KV_F16_ENV).ok().map(|v| v != "0");
        let coop_matrix = std::env::var(COOP_ENV).map(|v| v == "1").unwrap_or(false);
        Options {
            binding_cap: None,
            subgroups: on(SUBGROUPS_ENV),
            vec4_loads: on(VEC4_ENV),
            reuse_bindings,
            kv_f16,
            coop_matrix,
        }
    }
}
/// Passes recorded before the encoder is submitted (bounds the host-side command memory and
/// lets the GPU start early; small enough to keep latency low).
const MAX_PENDING: usize = 64;
/// Largest params uniform a shader declares, in bytes (a ring slot is at least this).
pub const PARAMS_MAX_BYTES: u64 = 128;

pub struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pub pool: Arc<Pool>,
    pub pipelines: Pipelines,
    /// A 16-byte storage buffer bound where a shader's binding is unused by the call (in-place ops).
    pub dummy: wgpu::Buffer,
    pending: Mutex<Pending>,
    /// The first uncaptured device error (validation, out of memory), reported at the next sync.
    error: Arc<Mutex<Option<String>>>,
    /// A cap on storage bindings below the adapter's (`open`).
    binding_cap: Option<u64>,
    /// `Options::vec4_loads`.
    pub vec4_loads: bool,
    /// The params ring (`MAX_PENDING` slots of `param_slot` bytes), see the module docs.
    pub params_ring: wgpu::Buffer,
    pub param_slot: u64,
    /// `Options::kv_f16`, resolved for this adapter.
    pub kv_f16: bool,
    /// Dispatches recorded and bind groups created (cache misses), for tests and benchmarks.
    pub counters: Mutex<DispatchStats>,
    /// Set by wgpu's device-lost callback (driver reset, GPU removed, `destroy`). From then on
    /// every allocation, sync and readback is an error instead of work on a dead device.
    lost: Arc<Mutex<Option<String>>>,
    /// Attention's key/query block ranges (ops.rs `attn_ranges`), keyed by their words: a training
    /// step repeats the same shapes and segments every step, so it reuses the buffer (no write, and
    /// the bind groups that name it stay cached). Cleared when it holds `MAX_RANGES` entries.
    pub attn_ranges: Mutex<HashMap<Vec<u32>, Arc<PooledBuffer>>>,
    /// matmul_coop.wgsl's workgroup size and tile when forward matmuls use it (`coop_config`).
    pub coop: Option<Coop>,
}

/// Entries of `Ctx::attn_ranges` before it is cleared (a run has a few shapes; packed data with
/// varying segments would otherwise grow it without bound).
pub const MAX_RANGES: usize = 64;

/// How many dispatches were recorded, how many bind groups had to be created for them, and how
/// often (and how many bytes) the host waited for a value read back from the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    pub dispatches: u64,
    pub bind_groups_created: u64,
    pub readbacks: u64,
    pub readback_bytes: u64,
}

#[derive(Default)]
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    passes: usize,
    /// The params of this submission's passes, slot by slot (written to the ring at submit).
    params: Vec<u8>,
}

impl Ctx {
    /// Submits the pending encoder: first the params of its passes into the ring (one write, which
    /// wgpu places before this submission and after every earlier one), then the passes.
    fn submit(&self, p: &mut Pending) {
        if let Some(enc) = p.encoder.take() {
            if !p.params.is_empty() {
                self.queue.write_buffer(&self.params_ring, 0, &p.params);
                p.params.clear();
            }
            p.passes = 0;
            self.queue.submit([enc.finish()]);
        }
    }
}

/// Vulkan, Metal and DX12 (primary backends) unless WGPU_BACKEND says otherwise: the GL backend
/// lacks compute features we need and its EGL probing prints noise on headless machines.
fn instance() -> wgpu::Instance {
    let mut d = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        d.backends = wgpu::Backends::PRIMARY;
    }
    wgpu::Instance::new(d)
}

fn software_allowed() -> bool {
    std::env::var(ALLOW_SOFTWARE_ENV).map(|v| v == "1").unwrap_or(false)
}

/// Lower ranks are preferred; None = not usable (software without the env variable).
fn rank(info: &wgpu::AdapterInfo, allow_software: bool) -> Option<u32> {
    use wgpu::DeviceType::*;
    match info.device_type {
        DiscreteGpu => Some(0),
        IntegratedGpu => Some(1),
        VirtualGpu => Some(2),
        Other => Some(3),
        Cpu => allow_software.then_some(4),
    }
}

fn adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY))
}

/// One line per adapter this machine exposes: name, backend, type, notable features, key limits.
/// For `loraforge info --devices`.
pub fn describe_adapters() -> Vec<String> {
    adapters()
        .iter()
        .map(|a| {
            let i = a.get_info();
            let f = a.features();
            let l = a.limits();
            let mut feats = Vec::new();
            if f.contains(wgpu::Features::SHADER_F16) {
                feats.push("SHADER_F16");
            }
            if f.contains(wgpu::Features::SUBGROUP) {
                feats.push("SUBGROUP");
            }
            if f.contains(wgpu::Features::TIMESTAMP_QUERY) {
                feats.push("TIMESTAMP_QUERY");
            }
            let coop = if f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                let c: Vec<String> = a
                    .cooperative_matrix_properties()
                    .iter()
                    .map(|p| format!("{}x{}x{} {:?}->{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
                    .collect();
                format!(" cooperative_matrix [{}]", c.join(", "))
            } else {
                String::new()
            };
            let usable = match rank(&i, software_allowed()) {
                Some(_) => "",
                None => " [software: set LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1 to use]",
            };
            format!(
                "{} ({:?}, {:?}, driver {} {}) features [{}]{} max_storage_binding {} MiB, max_buffer {} MiB, \
                 max_workgroup_invocations {}, max_workgroup_storage {} KiB{}",
                i.name,
                i.backend,
                i.device_type,
                i.driver,
                i.driver_info,
                feats.join(", "),
                coop,
                l.max_storage_buffer_binding_size >> 20,
                l.max_buffer_size >> 20,
                l.max_compute_invocations_per_workgroup,
                l.max_compute_workgroup_storage_size >> 10,
                usable
            )
        })
        .collect()
}

/// How matmul_coop.wgsl and quant_linear_coop.wgsl run on an adapter: its workgroup size (4 subgroups) and cooperative-matrix
/// tile (16, or 8 where only 8x8x8 is listed, as on lavapipe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coop {
    pub wg: u32,
    pub tile: u32,
}

/// matmul_coop.wgsl's configuration on `adapter`, or None where it cannot run: it needs
/// SHADER_F16, SUBGROUP with one subgroup size (its 4 subgroups are counted from it), and a
/// subgroup-scope f16 16x16x16 (preferred) or 8x8x8 -> f32 cooperative-matrix configuration.
fn coop_config(adapter: &wgpu::Adapter) -> Option<Coop> {
    let need = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
    let info = adapter.get_info();
    if !adapter.features().contains(need) || info.subgroup_min_size != info.subgroup_max_size {
        return None;
    }
    let listed = |t: u32| {
        adapter.cooperative_matrix_properties().iter().any(|c| {
            (c.m_size, c.n_size, c.k_size) == (t, t, t)
                && c.ab_type == wgpu::CooperativeScalarType::F16
                && c.cr_type == wgpu::CooperativeScalarType::F32
        })
    };
    let tile = [16, 8].into_iter().find(|&t| listed(t))?;
    let wg = 4 * info.subgroup_min_size;
    (wg <= adapter.limits().max_compute_invocations_per_workgroup).then_some(Coop { wg, tile })
}

/// The smallest subgroup the subgroup builds of the shaders work with.
const MIN_SUBGROUP: u32 = 8;

impl Ctx {
    /// Picks the best usable adapter and opens a device on it.
    pub fn new() -> Result<Arc<Ctx>> {
        Self::open(Options::default())
    }

    /// Opens the best usable adapter with `opts`.
    pub fn open(opts: Options) -> Result<Arc<Ctx>> {
        let allow = software_allowed();
        let mut cands: Vec<(u32, wgpu::Adapter)> =
            adapters().into_iter().filter_map(|a| rank(&a.get_info(), allow).map(|r| (r, a))).collect();
        // Prefer Vulkan/Metal/DX12 over GL at equal rank (GL compute is limited).
        cands.sort_by_key(|(r, a)| (*r, a.get_info().backend == wgpu::Backend::Gl));
        let Some((_, adapter)) = cands.into_iter().next() else {
            return Err(Error::msg(format!(
                "wgpu: no GPU adapter found; set {ALLOW_SOFTWARE_ENV}=1 to use a software one"
            )));
        };
        let info = adapter.get_info();
        let mut wanted = wgpu::Features::SHADER_F16;
        // Subgroup builds assume subgroups of at least 8 (attention's rows of up to 8 lanes sum
        // with shuffles inside one subgroup); the rare adapter with 4-wide ones (WARP) gets the
        // workgroup-memory builds.
        if opts.subgroups && info.subgroup_min_size >= MIN_SUBGROUP {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let coop = if opts.coop_matrix { coop_config(&adapter) } else { None };
        if coop.is_some() {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let features = adapter.features() & wanted;
        // Ask for the adapter's own limits: the defaults cap storage bindings at 128 MiB and
        // workgroup storage at 16 KiB, less than most GPUs have.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("loraforge"),
            required_features: features,
            required_limits: limits.clone(),
            // SAFETY: wgpu's experimental features may misbehave when used incorrectly; the only
            // one requested is EXPERIMENTAL_COOPERATIVE_MATRIX, and only when the caller asked for
            // it (`Options::coop_matrix`), for matmul_coop.wgsl, which uses configurations the
            // adapter lists (`coop_config`).
            experimental_features: if coop.is_some() {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            ..Default::default()
        }))
        .map_err(|e| Error::msg(format!("wgpu: request_device on {}: {e}", info.name)))?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut g = sink.lock().unwrap_or_else(|p| p.into_inner());
            if g.is_none() {
                *g = Some(e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None::<String>));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut g = sink.lock().unwrap_or_else(|p| p.into_inner());
            if g.is_none() {
                *g = Some(format!("{reason:?}{}", if msg.is_empty() { String::new() } else { format!(": {msg}") }));
            }
        });
        let mut max_buffer = limits.max_buffer_size.min(limits.max_storage_buffer_binding_size);
        if let Some(cap) = opts.binding_cap {
            max_buffer = max_buffer.min(cap);
        }
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("loraforge.dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let param_slot = (limits.min_uniform_buffer_offset_alignment as u64).max(PARAMS_MAX_BYTES);
        let params_ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("loraforge.params"),
            size: param_slot * MAX_PENDING as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let reuse_bindings = opts.reuse_bindings.unwrap_or(info.device_type != wgpu::DeviceType::Cpu);
        Ok(Arc::new(Ctx {
            dummy,
            params_ring,
            param_slot,
            kv_f16: opts.kv_f16.unwrap_or(features.contains(wgpu::Features::SHADER_F16)),
            counters: Mutex::new(DispatchStats::default()),
            pool: Pool::new(max_buffer),
            pipelines: Pipelines::new(features.contains(wgpu::Features::SUBGROUP), reuse_bindings),
            device,
            queue,
            info,
            features,
            limits,
            pending: Mutex::new(Pending::default()),
            error,
            lost,
            binding_cap: opts.binding_cap,
            vec4_loads: opts.vec4_loads,
            attn_ranges: Mutex::new(HashMap::new()),
            coop,
        }))
    }

    pub fn max_binding(&self) -> u64 {
        let l = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        self.binding_cap.map_or(l, |c| c.min(l))
    }

    /// `Err` once the device is lost: the caller's run stops there (its checkpoints, written
    /// atomically, stay as they were).
    pub fn check_lost(&self) -> Result<()> {
        match &*self.lost.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(Error::msg(format!(
                "wgpu: the GPU device {} was lost ({why}); nothing more can run on it. A training run stops \
                 here and keeps its last checkpoint: resume it with resume_from_checkpoint",
                self.info.name
            ))),
            None => Ok(()),
        }
    }

    /// Destroys the device, as a driver reset would lose it (for tests of the device-lost path).
    pub fn destroy(&self) {
        self.device.destroy();
        // The callback may run on the next poll; record the loss now so it is seen at once.
        let mut g = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert_with(|| "Destroyed".into());
    }

    /// An exact-size (not bucketed) buffer for `n` f32 or u32 of long-lived data (frozen weights).
    pub fn alloc_exact(&self, op: &'static str, n: usize) -> Result<PooledBuffer> {
        let bytes = self.check_alloc(op, n)?;
        Ok(self.pool.get_exact(&self.device, bytes))
    }

    /// A pooled buffer for `n` f32, with an error (not a wgpu panic) past the binding limit.
    pub fn alloc(&self, op: &'static str, n: usize) -> Result<PooledBuffer> {
        let bytes = self.check_alloc(op, n)?;
        Ok(self.pool.get(&self.device, bytes))
    }

    /// Byte alignment of a storage binding's offset (where a window of a large tensor may start).
    /// A capped test device uses 256, WebGPU's largest allowed value (valid everywhere, as every
    /// adapter's alignment is a power of two up to it), so tests on lavapipe (16) also meet
    /// windows that start mid-row.
    pub fn binding_align(&self) -> u64 {
        if self.binding_cap.is_some() {
            return 256;
        }
        (self.limits.min_storage_buffer_offset_alignment as u64).max(16)
    }

    /// The bytes of `n` 4-byte elements, or an error when the device is lost or they exceed the
    /// adapter's largest buffer. A tensor larger than one storage binding is allowed: the ops
    /// that meet one (the embedding and head of a full fine-tune, their gradients and optimizer
    /// state) bind it in windows; any other op says it cannot (pipelines.rs `dispatch`).
    fn check_alloc(&self, op: &'static str, n: usize) -> Result<u64> {
        self.check_lost()?;
        let bytes = (n as u64 * 4).max(4);
        let max = self.limits.max_buffer_size;
        if bytes > max {
            return Err(Error::OutOfMemory {
                device: format!("{} (max buffer size; op {op})", self.info.name),
                need: bytes,
                available: max,
            });
        }
        Ok(bytes)
    }

    /// Runs `f` on the pending encoder (created if needed); submits when enough passes gathered.
    pub fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let enc = p.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("loraforge.ops") })
        });
        f(enc);
        p.passes += 1;
        if p.passes >= MAX_PENDING {
            self.submit(&mut p);
        }
    }

    /// Records one compute pass. `ring_params`: the params go to this pass's ring slot and the
    /// ring (the last binding of `bg`) is bound at that slot's dynamic offset; `None`: `bg` holds
    /// its own params buffer.
    pub fn record_dispatch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        bg: &wgpu::BindGroup,
        ring_params: Option<&[u8]>,
        groups: (u32, u32, u32),
    ) {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).dispatches += 1;
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let off = p.passes as u64 * self.param_slot;
        if let Some(params) = ring_params {
            p.params.resize(off as usize, 0);
            p.params.extend_from_slice(params);
        }
        let offsets: &[u32] = if ring_params.is_some() { &[off as u32] } else { &[] };
        let enc = p.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("loraforge.ops") })
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bg, offsets);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        }
        p.passes += 1;
        if p.passes >= MAX_PENDING {
            self.submit(&mut p);
        }
    }

    /// Submits the pending encoder, if any.
    pub fn flush(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.submit(&mut p);
    }

    /// The first device error since the last check, as an `Error`.
    pub fn check_error(&self) -> Result<()> {
        self.check_lost()?;
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match g.take() {
            Some(e) => Err(Error::msg(format!("wgpu device error: {e}"))),
            None => Ok(()),
        }
    }

    /// Waits for all submitted work.
    pub fn wait(&self) -> Result<()> {
        self.check_lost()?;
        self.flush();
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::msg(format!("wgpu: poll: {e}")))?;
        self.check_error()
    }

    /// Records a copy of `bytes` into `dst` (at byte offset `dst_off`), ordered with all other work.
    pub fn write(&self, dst: &wgpu::Buffer, dst_off: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // copy sizes must be multiples of 4: pad
        let mut padded;
        let src_bytes = if !bytes.len().is_multiple_of(4) {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            &padded[..]
        } else {
            bytes
        };
        let staging = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("loraforge.upload"),
            contents: src_bytes,
            usage: wgpu::BufferUsages::COPY_SRC,
        });
        self.record(|enc| enc.copy_buffer_to_buffer(&staging, 0, dst, dst_off, src_bytes.len() as u64));
    }

    /// Reads `bytes` bytes of `src` from byte offset `off` (submits and waits).
    pub fn read(&self, src: &wgpu::Buffer, off: u64, bytes: u64) -> Result<Vec<u8>> {
        self.check_lost()?;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        {
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            c.readbacks += 1;
            c.readback_bytes += bytes;
        }
        let size = bytes.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("loraforge.readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|enc| enc.copy_buffer_to_buffer(src, off, &staging, 0, size));
        self.flush();
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::msg(format!("wgpu: poll: {e}")))?;
        self.check_error()?;
        rx.recv()
            .map_err(|_| Error::msg("wgpu: readback callback dropped"))?
            .map_err(|e| Error::msg(format!("wgpu: map: {e}")))?;
        let out = slice.get_mapped_range().map_err(|e| Error::msg(format!("wgpu: map range: {e}")))?.to_vec();
        staging.unmap();
        Ok(out[..bytes as usize].to_vec())
    }
}
