//! Backends: `cpu` (the reference, always present), `wgpu` and `cuda` (feature-gated).
//!
//! `Backend` is the one trait a device implements: buffers, transfers, synchronisation, memory
//! accounting, and one method per primitive (forward and backward). Methods are functional: they
//! allocate and return their outputs, except gradient accumulation (`add_assign`) and the optimizer
//! (`adamw_step`), which update in place. Activations are f32 on every backend for now; dense
//! weights may be uploaded from f16/bf16 (converted on upload). Frozen quantized weights live in
//! `QStorage` and only ever produce input gradients.
//!
//! Legend: N rows (tokens), C features, B batch, T tokens per row, H heads, KV kv heads, D head dim, V vocab.

pub mod cpu;
pub mod cpu_backend;
pub mod cuda_stub;
#[cfg(feature = "wgpu")]
pub mod wgpu;
pub mod wgpu_stub;

use crate::backend::cpu::attention::AttnParams;
use crate::backend::cpu::linear_cross_entropy::CeStats;
use crate::backend::cpu::matmul::MatmulDims;
use crate::backend::cpu::rope::RopeConfig;
use crate::error::Result;
use crate::quant::DequantRows;
use std::sync::Arc;

pub use cpu_backend::{CpuBackend, CpuStorage};

/// Current and peak bytes held in device buffers, as the backend's own allocator counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub current: u64,
    pub peak: u64,
}

/// A frozen weight on the host, in any format, as given to `Backend::upload_quant`.
pub type HostQuant = Arc<dyn DequantRows + Send + Sync>;

/// AdamW hyper-parameters for one step (PyTorch `torch.optim.AdamW` semantics).
#[derive(Clone, Copy, Debug)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

/// The values a storage written by `Backend::pack_f16_into` holds, read on the host: each f32 slot
/// carries the bits of two halves, low half first.
pub fn unpack_f16_pairs(words: &[f32]) -> Vec<f32> {
    words
        .iter()
        .flat_map(|x| {
            let b = x.to_bits();
            [half::f16::from_bits(b as u16).to_f32(), half::f16::from_bits((b >> 16) as u16).to_f32()]
        })
        .collect()
}

pub trait Backend: Clone + Send + Sync + 'static {
    /// A device buffer of f32 elements.
    type Storage: Send + Sync + 'static;
    /// A frozen (possibly quantized) weight matrix on the device, (rows, cols) = (d_out, d_in).
    type QStorage: Send + Sync + 'static;

    fn name(&self) -> String;

    // === memory and transfers ===
    fn zeros(&self, n: usize) -> Result<Self::Storage>;
    fn upload(&self, data: &[f32]) -> Result<Self::Storage>;
    fn download(&self, s: &Self::Storage) -> Result<Vec<f32>>;
    fn len(&self, s: &Self::Storage) -> usize;
    fn upload_quant(&self, q: HostQuant) -> Result<Self::QStorage>;
    fn quant_shape(&self, q: &Self::QStorage) -> (usize, usize);
    fn quant_format(&self, q: &Self::QStorage) -> String;
    /// Bytes the frozen weight occupies on this backend: its packed blocks and side tables, or f32
    /// where it was decoded at upload. What the memory plan counts.
    fn quant_bytes(&self, q: &Self::QStorage) -> u64;
    /// Does `linear_cross_entropy_frozen` read a packed head in place? When it does not, a run
    /// holds the head decoded to f32 (V × C × 4 bytes) during the loss, and the plan counts it.
    fn reads_packed_head(&self) -> bool {
        false
    }
    /// The whole frozen weight decoded to f32, (rows, cols).
    fn dequantize(&self, q: &Self::QStorage) -> Result<Self::Storage>;
    /// Waits for all queued work.
    fn sync(&self) -> Result<()>;
    fn memory(&self) -> MemoryStats;

    // === elementwise ===
    fn add(&self, a: &Self::Storage, b: &Self::Storage) -> Result<Self::Storage>;
    /// dst += src
    fn add_assign(&self, dst: &mut Self::Storage, src: &Self::Storage) -> Result<()>;
    fn mul(&self, a: &Self::Storage, b: &Self::Storage) -> Result<Self::Storage>;
    fn scale(&self, a: &Self::Storage, s: f32) -> Result<Self::Storage>;
    /// y[r, j] = x[r, j] * v[j]   x: (rows, c)  v: (c)
    fn mul_rows(&self, x: &Self::Storage, v: &Self::Storage, rows: usize, c: usize) -> Result<Self::Storage>;
    /// dv[j] = sum_r dy[r, j] * x[r, j]
    fn mul_rows_backward_v(
        &self,
        dy: &Self::Storage,
        x: &Self::Storage,
        rows: usize,
        c: usize,
    ) -> Result<Self::Storage>;

    // === matmul ===
    fn matmul(
        &self,
        a: &Self::Storage,
        b: &Self::Storage,
        bias: Option<&Self::Storage>,
        d: MatmulDims,
    ) -> Result<Self::Storage>;
    /// Returns (dA, dB, dbias), each only when asked for.
    #[allow(clippy::type_complexity)]
    fn matmul_backward(
        &self,
        dc: &Self::Storage,
        a: &Self::Storage,
        b: &Self::Storage,
        d: MatmulDims,
        need: (bool, bool, bool),
    ) -> Result<(Option<Self::Storage>, Option<Self::Storage>, Option<Self::Storage>)>;
    /// out (N, d_out) = x (N, d_in) · Wᵀ + bias, W frozen.
    fn quant_linear(
        &self,
        x: &Self::Storage,
        w: &Self::QStorage,
        bias: Option<&Self::Storage>,
        n: usize,
    ) -> Result<Self::Storage>;
    /// dx (N, d_in) = dy (N, d_out) · W. Never a gradient for W.
    fn quant_linear_backward(&self, dy: &Self::Storage, w: &Self::QStorage, n: usize) -> Result<Self::Storage>;
    /// ||W[r, :] + delta[r, :]||₂ per row, or its reciprocal when `recip`: (rows). For DoRA's weight
    /// norm (delta = s·BA). Spec: cpu/row_norms.rs.
    fn row_norms(&self, w: &Self::QStorage, delta: Option<&Self::Storage>, recip: bool) -> Result<Self::Storage>;

    // === normalisation, position, attention, activations ===
    /// Returns (out (rows, c), rstd (rows)).
    fn rms_norm(
        &self,
        x: &Self::Storage,
        w: &Self::Storage,
        rows: usize,
        c: usize,
        eps: f32,
        add_one: bool,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// Returns (dx, dw if asked).
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_backward(
        &self,
        dout: &Self::Storage,
        x: &Self::Storage,
        w: &Self::Storage,
        rstd: &Self::Storage,
        rows: usize,
        c: usize,
        add_one: bool,
        need_dw: bool,
    ) -> Result<(Self::Storage, Option<Self::Storage>)>;
    /// x: (B, T, NH, D), positions: (B*T).
    fn rope(
        &self,
        x: &Self::Storage,
        positions: &[u32],
        cfg: &RopeConfig,
        b: usize,
        t: usize,
        nh: usize,
    ) -> Result<Self::Storage>;
    fn rope_backward(
        &self,
        dout: &Self::Storage,
        positions: &[u32],
        cfg: &RopeConfig,
        b: usize,
        t: usize,
        nh: usize,
    ) -> Result<Self::Storage>;
    /// Returns (out (B,T,H,D), lse (B,H,T)).
    fn attention(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        segment_ids: Option<&[u32]>,
        p: &AttnParams,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// Returns (dq, dk, dv).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dout: &Self::Storage,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        out: &Self::Storage,
        lse: &Self::Storage,
        segment_ids: Option<&[u32]>,
        p: &AttnParams,
    ) -> Result<(Self::Storage, Self::Storage, Self::Storage)>;
    /// GLU activations: `gelu = false` is SwiGLU (silu(gate)*up), `true` GeGLU (gelu_tanh(gate)*up).
    fn glu(&self, gate: &Self::Storage, up: &Self::Storage, gelu: bool) -> Result<Self::Storage>;
    /// Returns (dgate, dup).
    fn glu_backward(
        &self,
        dout: &Self::Storage,
        gate: &Self::Storage,
        up: &Self::Storage,
        gelu: bool,
    ) -> Result<(Self::Storage, Self::Storage)>;
    fn dropout(&self, x: &Self::Storage, p: f32, seed: u64, offset: u64) -> Result<Self::Storage>;
    fn dropout_backward(&self, dout: &Self::Storage, p: f32, seed: u64, offset: u64) -> Result<Self::Storage>;

    // === embedding and loss ===
    /// out (N, C) = table[ids]; table (V, C) dense.
    fn embedding(&self, ids: &[u32], table: &Self::Storage, c: usize) -> Result<Self::Storage>;
    fn embedding_quant(&self, ids: &[u32], table: &Self::QStorage) -> Result<Self::Storage>;
    /// dtable (V, C) = scatter-add of dout rows at ids.
    fn embedding_backward(&self, dout: &Self::Storage, ids: &[u32], v: usize, c: usize) -> Result<Self::Storage>;

    /// dst[dst_at .. dst_at + n] = src[src_at .. src_at + n] (the KV cache's appends and moves).
    fn copy_into(
        &self,
        dst: &mut Self::Storage,
        dst_at: usize,
        src: &Self::Storage,
        src_at: usize,
        n: usize,
    ) -> Result<()>;
    /// Attention of TQ new queries q (TQ, H, D) against the first `p.s` rows of the caches k, v
    /// ((rows >= S, KV, D)): out (TQ, H, D). Spec: cpu/attention_decode.rs (generation only).
    /// `f16`: the caches hold f16 pairs written by `pack_f16_into` (only where `kv_cache_f16`).
    fn attention_decode(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        p: &cpu::attention_decode::DecodeParams,
        f16: bool,
    ) -> Result<Self::Storage>;
    /// The largest tensor one kernel launch can take whole (wgpu: one storage binding), if any.
    /// The trainer splits a micro-batch in rows when its activations would exceed it.
    fn max_tensor_bytes(&self) -> Option<u64> {
        None
    }
    /// Should generation keep its KV cache in f16 on this backend (half the memory and reads;
    /// arithmetic stays f32)? The CPU keeps f32; wgpu uses f16 on SHADER_F16 adapters.
    fn kv_cache_f16(&self) -> bool {
        false
    }
    /// Packs `n` (even) f32 of `src` into f16 pairs at words [dst_word, dst_word + n / 2) of `dst`
    /// (a KV cache buffer whose elements are u32 words of two halves).
    fn pack_f16_into(&self, _dst: &mut Self::Storage, _dst_word: usize, _src: &Self::Storage, _n: usize) -> Result<()> {
        Err(crate::error::Error::InvalidArgument {
            op: "pack_f16_into",
            msg: format!("{} keeps f32 caches", self.name()),
        })
    }
    /// Fused, chunked final projection + cross-entropy. h (N, C), w (V, C), targets (N) with -100 = ignore.
    /// When `grad_scale` is Some(s), also returns dh = s · dloss_sum/dh and (if `need_dw`) dw.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn linear_cross_entropy(
        &self,
        h: &Self::Storage,
        w: &Self::Storage,
        targets: &[i32],
        n: usize,
        c: usize,
        v: usize,
        softcap: Option<f32>,
        grad_scale: Option<f64>,
        need_dw: bool,
    ) -> Result<(CeStats, Option<Self::Storage>, Option<Self::Storage>)>;

    /// A dense (rows, cols) f32 weight quantized to NF4 (bitsandbytes' layout, blocks of 64,
    /// optional double quantization; src/quant/nf4.rs) and kept as a frozen weight. The default
    /// quantizes on the host; a GPU backend may do the per-element work on the device, with the
    /// same codes.
    fn quantize_nf4(&self, dense: &[f32], rows: usize, cols: usize, double_quant: bool) -> Result<Self::QStorage> {
        let m = crate::quant::nf4::Nf4Matrix::quantize(dense, rows, cols, 64, double_quant)?;
        self.upload_quant(std::sync::Arc::new(m))
    }

    /// `linear_cross_entropy` with a frozen (possibly quantized) head `w` (V, C): no dW. The
    /// default decodes the whole head to f32 first; a backend that can read the packed head in its
    /// kernels overrides it and never holds the (V, C) f32 matrix (1 GB at a 128k vocabulary).
    #[allow(clippy::too_many_arguments)]
    fn linear_cross_entropy_frozen(
        &self,
        h: &Self::Storage,
        w: &Self::QStorage,
        targets: &[i32],
        n: usize,
        c: usize,
        v: usize,
        softcap: Option<f32>,
        grad_scale: Option<f64>,
    ) -> Result<(CeStats, Option<Self::Storage>)> {
        let dense = self.dequantize(w)?;
        let (stats, dh, _) = self.linear_cross_entropy(h, &dense, targets, n, c, v, softcap, grad_scale, false)?;
        Ok((stats, dh))
    }

    // === optimizer ===
    fn adamw_step(
        &self,
        param: &mut Self::Storage,
        grad: &Self::Storage,
        m: &mut Self::Storage,
        v: &mut Self::Storage,
        p: &AdamWParams,
    ) -> Result<()>;
    /// Σ g² over all buffers, accumulated in f64.
    fn grad_norm_sq(&self, grads: &[&Self::Storage]) -> Result<f64>;
    fn scale_in_place(&self, s: &mut Self::Storage, k: f32) -> Result<()>;
    /// s *= k[0], where `k` is a one-element tensor on the device (a loss's incoming gradient).
    /// The default reads k back and calls `scale_in_place`, which is the spec; a GPU backend
    /// overrides it with a kernel so backward never waits for the host.
    fn scale_by_in_place(&self, s: &mut Self::Storage, k: &Self::Storage) -> Result<()> {
        let k = self.download(k)?;
        match k[..] {
            [k] => self.scale_in_place(s, k),
            _ => Err(crate::error::Error::InvalidArgument {
                op: "scale_by_in_place",
                msg: format!("the scale must hold one element, it holds {}", k.len()),
            }),
        }
    }
}

/// Which device to run on, as the CLI and configs spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Auto,
    Cpu,
    Wgpu,
    Cuda,
}

impl std::str::FromStr for DeviceKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceKind::Auto),
            "cpu" => Ok(DeviceKind::Cpu),
            "wgpu" => Ok(DeviceKind::Wgpu),
            "cuda" => Ok(DeviceKind::Cuda),
            other => Err(crate::Error::InvalidArgument {
                op: "device",
                msg: format!("unknown device `{other}`; expected one of auto, cpu, wgpu, cuda"),
            }),
        }
    }
}

/// Resolves a device request to what can run here. `auto` picks CUDA, else a hardware wgpu adapter,
/// else the CPU; as the GPU backends are not implemented yet, `auto` is the CPU and the others
/// answer with a clear error.
/// On Linux a GPU shows up as a DRM render node or an NVIDIA device file; without one, `auto`
/// skips probing Vulkan (which is slow and prints driver noise on headless machines).
fn may_have_gpu() -> bool {
    if cfg!(target_os = "linux") {
        let dri = std::fs::read_dir("/dev/dri")
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("renderD")))
            .unwrap_or(false);
        dri || std::path::Path::new("/dev/nvidia0").exists()
    } else {
        true
    }
}

pub fn resolve_device(kind: DeviceKind) -> Result<DeviceKind> {
    match kind {
        DeviceKind::Cpu => Ok(DeviceKind::Cpu),
        // CUDA is not built yet; a hardware wgpu adapter next; software adapters (lavapipe) are
        // slower than the CPU backend, so `auto` never picks them.
        #[cfg(feature = "wgpu")]
        DeviceKind::Auto if !may_have_gpu() => Ok(DeviceKind::Cpu),
        #[cfg(feature = "wgpu")]
        DeviceKind::Auto => Ok(match wgpu::WgpuBackend::new() {
            Ok(b) if !b.is_software() => DeviceKind::Wgpu,
            _ => DeviceKind::Cpu,
        }),
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Auto => Ok(DeviceKind::Cpu),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => wgpu::WgpuBackend::new().map(|_| DeviceKind::Wgpu),
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Wgpu => wgpu_stub::unavailable(),
        DeviceKind::Cuda => cuda_stub::unavailable(),
    }
}
