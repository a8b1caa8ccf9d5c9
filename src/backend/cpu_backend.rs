//! `CpuBackend`: the `Backend` trait over plain host memory. Each method calls the fastest CPU
//! path of its op in `backend::cpu` (the spec itself, or a threaded/GEMM path tested against it).
//! Allocation accounting: every `CpuStorage` adds its bytes to the backend's counter on creation
//! and removes them on drop, so `memory()` reports current and peak activation/gradient bytes.

use super::cpu::{self, attention::AttnParams, linear_cross_entropy::CeStats, matmul::MatmulDims, rope::RopeConfig};
use super::{AdamWParams, Backend, HostQuant, MemoryStats};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Tokens per chunk in the fused cross-entropy: 256 tokens × 49152 vocab × 4 B = 48 MiB of logits scratch.
const CE_CHUNK: usize = 256;

#[derive(Default, Debug)]
struct Counter {
    current: AtomicU64,
    peak: AtomicU64,
}

impl Counter {
    fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[derive(Clone, Default, Debug)]
pub struct CpuBackend {
    counter: Arc<Counter>,
}

/// A host buffer of f32, counted by its backend.
pub struct CpuStorage {
    data: Vec<f32>,
    counter: Arc<Counter>,
}

impl CpuStorage {
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        self.counter.sub(self.data.len() as u64 * 4);
    }
}

/// A frozen weight on the host: any `DequantRows` (dense f32, GGUF blocks, NF4, int8).
pub struct CpuQuant {
    q: HostQuant,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }
    fn wrap(&self, data: Vec<f32>) -> CpuStorage {
        self.counter.add(data.len() as u64 * 4);
        CpuStorage { data, counter: self.counter.clone() }
    }
    fn check_len(op: &'static str, what: &str, s: &CpuStorage, want: usize) -> Result<()> {
        if s.data.len() != want {
            return Err(Error::InvalidArgument {
                op,
                msg: format!("{what} has {} elements, expected {want}", s.data.len()),
            });
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    type Storage = CpuStorage;
    type QStorage = CpuQuant;

    fn name(&self) -> String {
        format!("cpu ({} threads)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }

    fn zeros(&self, n: usize) -> Result<CpuStorage> {
        Ok(self.wrap(vec![0.0; n]))
    }
    fn upload(&self, data: &[f32]) -> Result<CpuStorage> {
        Ok(self.wrap(data.to_vec()))
    }
    fn download(&self, s: &CpuStorage) -> Result<Vec<f32>> {
        Ok(s.data.clone())
    }
    fn len(&self, s: &CpuStorage) -> usize {
        s.data.len()
    }
    fn upload_quant(&self, q: HostQuant) -> Result<CpuQuant> {
        Ok(CpuQuant { q })
    }
    fn quant_shape(&self, q: &CpuQuant) -> (usize, usize) {
        (q.q.rows(), q.q.cols())
    }
    fn quant_format(&self, q: &CpuQuant) -> String {
        q.q.format_name()
    }
    fn quant_bytes(&self, q: &CpuQuant) -> u64 {
        q.q.storage_bytes() as u64
    }
    fn dequantize(&self, q: &CpuQuant) -> Result<CpuStorage> {
        let (rows, cols) = (q.q.rows(), q.q.cols());
        let mut out = vec![0.0f32; rows * cols];
        for (r, row) in out.chunks_mut(cols.max(1)).enumerate().take(rows) {
            q.q.dequantize_row(r, row);
        }
        Ok(self.wrap(out))
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    fn memory(&self) -> MemoryStats {
        MemoryStats {
            current: self.counter.current.load(Ordering::Relaxed),
            peak: self.counter.peak.load(Ordering::Relaxed),
        }
    }

    fn add(&self, a: &CpuStorage, b: &CpuStorage) -> Result<CpuStorage> {
        Self::check_len("add", "rhs", b, a.data.len())?;
        Ok(self.wrap(a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect()))
    }
    fn add_assign(&self, dst: &mut CpuStorage, src: &CpuStorage) -> Result<()> {
        Self::check_len("add_assign", "src", src, dst.data.len())?;
        dst.data.iter_mut().zip(&src.data).for_each(|(d, s)| *d += s);
        Ok(())
    }
    fn mul(&self, a: &CpuStorage, b: &CpuStorage) -> Result<CpuStorage> {
        Self::check_len("mul", "rhs", b, a.data.len())?;
        Ok(self.wrap(a.data.iter().zip(&b.data).map(|(x, y)| x * y).collect()))
    }
    fn scale(&self, a: &CpuStorage, s: f32) -> Result<CpuStorage> {
        Ok(self.wrap(a.data.iter().map(|x| x * s).collect()))
    }
    fn mul_rows(&self, x: &CpuStorage, v: &CpuStorage, rows: usize, c: usize) -> Result<CpuStorage> {
        Self::check_len("mul_rows", "x", x, rows * c)?;
        Self::check_len("mul_rows", "v", v, c)?;
        let mut out = x.data.clone();
        for row in out.chunks_mut(c.max(1)) {
            row.iter_mut().zip(&v.data).for_each(|(o, s)| *o *= s);
        }
        Ok(self.wrap(out))
    }
    fn mul_rows_backward_v(&self, dy: &CpuStorage, x: &CpuStorage, rows: usize, c: usize) -> Result<CpuStorage> {
        let mut dv = vec![0.0f64; c];
        for r in 0..rows {
            for j in 0..c {
                dv[j] += dy.data[r * c + j] as f64 * x.data[r * c + j] as f64;
            }
        }
        Ok(self.wrap(dv.into_iter().map(|v| v as f32).collect()))
    }

    fn matmul(&self, a: &CpuStorage, b: &CpuStorage, bias: Option<&CpuStorage>, d: MatmulDims) -> Result<CpuStorage> {
        let mut out = vec![0.0f32; d.batch * d.m * d.n];
        cpu::matmul::matmul(&mut out, &a.data, &b.data, bias.map(|b| b.as_slice()), d, false);
        Ok(self.wrap(out))
    }
    fn matmul_backward(
        &self,
        dc: &CpuStorage,
        a: &CpuStorage,
        b: &CpuStorage,
        d: MatmulDims,
        need: (bool, bool, bool),
    ) -> Result<(Option<CpuStorage>, Option<CpuStorage>, Option<CpuStorage>)> {
        let mut da = need.0.then(|| vec![0.0f32; a.data.len()]);
        let mut db = need.1.then(|| vec![0.0f32; b.data.len()]);
        let mut dbias = need.2.then(|| vec![0.0f32; d.n]);
        cpu::matmul::matmul_backward_fast(
            da.as_deref_mut(),
            db.as_deref_mut(),
            dbias.as_deref_mut(),
            &dc.data,
            &a.data,
            &b.data,
            d,
        );
        Ok((da.map(|v| self.wrap(v)), db.map(|v| self.wrap(v)), dbias.map(|v| self.wrap(v))))
    }
    fn quant_linear(&self, x: &CpuStorage, w: &CpuQuant, bias: Option<&CpuStorage>, n: usize) -> Result<CpuStorage> {
        let (rows, cols) = (w.q.rows(), w.q.cols());
        Self::check_len("quant_linear", "x", x, n * cols)?;
        let mut out = vec![0.0f32; n * rows];
        cpu::quant_linear::quant_linear_forward(&mut out, &x.data, w.q.as_ref(), bias.map(|b| b.as_slice()));
        Ok(self.wrap(out))
    }
    fn quant_linear_backward(&self, dy: &CpuStorage, w: &CpuQuant, n: usize) -> Result<CpuStorage> {
        let (rows, cols) = (w.q.rows(), w.q.cols());
        Self::check_len("quant_linear_backward", "dy", dy, n * rows)?;
        let mut dx = vec![0.0f32; n * cols];
        cpu::quant_linear::quant_linear_backward(&mut dx, &dy.data, w.q.as_ref());
        Ok(self.wrap(dx))
    }
    fn row_norms(&self, w: &CpuQuant, delta: Option<&CpuStorage>, recip: bool) -> Result<CpuStorage> {
        let (rows, cols) = (w.q.rows(), w.q.cols());
        if let Some(d) = delta {
            Self::check_len("row_norms", "delta", d, rows * cols)?;
        }
        let mut out = vec![0.0f32; rows];
        cpu::row_norms::row_norms(&mut out, w.q.as_ref(), delta.map(|d| d.data.as_slice()), recip);
        Ok(self.wrap(out))
    }

    fn rms_norm(
        &self,
        x: &CpuStorage,
        w: &CpuStorage,
        rows: usize,
        c: usize,
        eps: f32,
        add_one: bool,
    ) -> Result<(CpuStorage, CpuStorage)> {
        Self::check_len("rms_norm", "x", x, rows * c)?;
        Self::check_len("rms_norm", "weight", w, c)?;
        let mut out = vec![0.0f32; rows * c];
        let mut rstd = vec![0.0f32; rows];
        cpu::rms_norm::rms_norm_forward(&mut out, &mut rstd, &x.data, &w.data, rows, c, eps, add_one);
        Ok((self.wrap(out), self.wrap(rstd)))
    }
    fn rms_norm_backward(
        &self,
        dout: &CpuStorage,
        x: &CpuStorage,
        w: &CpuStorage,
        rstd: &CpuStorage,
        rows: usize,
        c: usize,
        add_one: bool,
        need_dw: bool,
    ) -> Result<(CpuStorage, Option<CpuStorage>)> {
        let mut dx = vec![0.0f32; rows * c];
        let mut dw = need_dw.then(|| vec![0.0f32; c]);
        cpu::rms_norm::rms_norm_backward(
            &mut dx,
            dw.as_deref_mut(),
            &dout.data,
            &x.data,
            &w.data,
            &rstd.data,
            rows,
            c,
            add_one,
        );
        Ok((self.wrap(dx), dw.map(|v| self.wrap(v))))
    }
    fn rope(
        &self,
        x: &CpuStorage,
        positions: &[u32],
        cfg: &RopeConfig,
        b: usize,
        t: usize,
        nh: usize,
    ) -> Result<CpuStorage> {
        Self::check_len("rope", "x", x, b * t * nh * cfg.head_dim)?;
        let mut out = vec![0.0f32; x.data.len()];
        cpu::rope::rope_forward(&mut out, &x.data, positions, cfg, b, t, nh);
        Ok(self.wrap(out))
    }
    fn rope_backward(
        &self,
        dout: &CpuStorage,
        positions: &[u32],
        cfg: &RopeConfig,
        b: usize,
        t: usize,
        nh: usize,
    ) -> Result<CpuStorage> {
        let mut dx = vec![0.0f32; dout.data.len()];
        cpu::rope::rope_backward(&mut dx, &dout.data, positions, cfg, b, t, nh);
        Ok(self.wrap(dx))
    }
    fn attention(
        &self,
        q: &CpuStorage,
        k: &CpuStorage,
        v: &CpuStorage,
        segment_ids: Option<&[u32]>,
        p: &AttnParams,
    ) -> Result<(CpuStorage, CpuStorage)> {
        Self::check_len("attention", "q", q, p.b * p.t * p.h * p.d)?;
        Self::check_len("attention", "k", k, p.b * p.t * p.kv_heads * p.d)?;
        Self::check_len("attention", "v", v, p.b * p.t * p.kv_heads * p.d)?;
        let mut out = vec![0.0f32; q.data.len()];
        let mut lse = vec![0.0f32; p.b * p.h * p.t];
        cpu::attention::attention(&mut out, &mut lse, &q.data, &k.data, &v.data, segment_ids, p);
        Ok((self.wrap(out), self.wrap(lse)))
    }
    fn attention_backward(
        &self,
        dout: &CpuStorage,
        q: &CpuStorage,
        k: &CpuStorage,
        v: &CpuStorage,
        out: &CpuStorage,
        lse: &CpuStorage,
        segment_ids: Option<&[u32]>,
        p: &AttnParams,
    ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
        let mut dq = vec![0.0f32; q.data.len()];
        let mut dk = vec![0.0f32; k.data.len()];
        let mut dv = vec![0.0f32; v.data.len()];
        cpu::attention::attention_backward_fast(
            &mut dq,
            &mut dk,
            &mut dv,
            &dout.data,
            &q.data,
            &k.data,
            &v.data,
            &out.data,
            &lse.data,
            segment_ids,
            p,
        );
        Ok((self.wrap(dq), self.wrap(dk), self.wrap(dv)))
    }
    fn glu(&self, gate: &CpuStorage, up: &CpuStorage, gelu: bool) -> Result<CpuStorage> {
        Self::check_len("glu", "up", up, gate.data.len())?;
        let mut out = vec![0.0f32; gate.data.len()];
        if gelu {
            cpu::geglu::geglu_forward(&mut out, &gate.data, &up.data);
        } else {
            cpu::swiglu::swiglu_forward(&mut out, &gate.data, &up.data);
        }
        Ok(self.wrap(out))
    }
    fn glu_backward(
        &self,
        dout: &CpuStorage,
        gate: &CpuStorage,
        up: &CpuStorage,
        gelu: bool,
    ) -> Result<(CpuStorage, CpuStorage)> {
        let mut dg = vec![0.0f32; gate.data.len()];
        let mut du = vec![0.0f32; up.data.len()];
        if gelu {
            cpu::geglu::geglu_backward(&mut dg, &mut du, &dout.data, &gate.data, &up.data);
        } else {
            cpu::swiglu::swiglu_backward(&mut dg, &mut du, &dout.data, &gate.data, &up.data);
        }
        Ok((self.wrap(dg), self.wrap(du)))
    }
    fn dropout(&self, x: &CpuStorage, p: f32, seed: u64, offset: u64) -> Result<CpuStorage> {
        let mut out = vec![0.0f32; x.data.len()];
        cpu::dropout::dropout_forward(&mut out, &x.data, p, seed, offset);
        Ok(self.wrap(out))
    }
    fn dropout_backward(&self, dout: &CpuStorage, p: f32, seed: u64, offset: u64) -> Result<CpuStorage> {
        let mut dx = vec![0.0f32; dout.data.len()];
        cpu::dropout::dropout_backward(&mut dx, &dout.data, p, seed, offset);
        Ok(self.wrap(dx))
    }

    fn embedding(&self, ids: &[u32], table: &CpuStorage, c: usize) -> Result<CpuStorage> {
        let mut out = vec![0.0f32; ids.len() * c];
        cpu::embedding::embedding_forward(&mut out, ids, &table.data, c);
        Ok(self.wrap(out))
    }
    fn embedding_quant(&self, ids: &[u32], table: &CpuQuant) -> Result<CpuStorage> {
        let mut out = vec![0.0f32; ids.len() * table.q.cols()];
        cpu::embedding::embedding_forward_rows(&mut out, ids, table.q.as_ref());
        Ok(self.wrap(out))
    }
    fn embedding_backward(&self, dout: &CpuStorage, ids: &[u32], v: usize, c: usize) -> Result<CpuStorage> {
        let mut dt = vec![0.0f32; v * c];
        cpu::embedding::embedding_backward(&mut dt, &dout.data, ids, c);
        Ok(self.wrap(dt))
    }
    fn copy_into(&self, dst: &mut CpuStorage, dst_at: usize, src: &CpuStorage, src_at: usize, n: usize) -> Result<()> {
        let (d, s) = (dst_at.checked_add(n), src_at.checked_add(n));
        match (d, s) {
            (Some(d), Some(s)) if d <= dst.data.len() && s <= src.data.len() => {
                dst.data[dst_at..d].copy_from_slice(&src.data[src_at..s]);
                Ok(())
            }
            _ => Err(Error::InvalidArgument {
                op: "copy_into",
                msg: format!("{n} elements from {src_at} of {} into {dst_at} of {}", src.data.len(), dst.data.len()),
            }),
        }
    }
    fn attention_decode(
        &self,
        q: &CpuStorage,
        k: &CpuStorage,
        v: &CpuStorage,
        p: &cpu::attention_decode::DecodeParams,
        f16: bool,
    ) -> Result<CpuStorage> {
        if f16 {
            return Err(Error::InvalidArgument { op: "attention_decode", msg: "the CPU keeps f32 caches".into() });
        }
        cpu::attention_decode::check_decode("attention_decode", q.data.len(), k.data.len(), v.data.len(), p)?;
        let n = p.s * p.kv_heads * p.d;
        let mut out = vec![0.0f32; p.tq * p.h * p.d];
        cpu::attention_decode::attention_decode(&mut out, &q.data, &k.data[..n], &v.data[..n], p);
        Ok(self.wrap(out))
    }
    fn linear_cross_entropy(
        &self,
        h: &CpuStorage,
        w: &CpuStorage,
        targets: &[i32],
        n: usize,
        c: usize,
        v: usize,
        softcap: Option<f32>,
        grad_scale: Option<f64>,
        need_dw: bool,
    ) -> Result<(CeStats, Option<CpuStorage>, Option<CpuStorage>)> {
        Self::check_len("linear_cross_entropy", "h", h, n * c)?;
        Self::check_len("linear_cross_entropy", "w", w, v * c)?;
        let mut dh = grad_scale.map(|_| vec![0.0f32; n * c]);
        let mut dw = (grad_scale.is_some() && need_dw).then(|| vec![0.0f32; v * c]);
        let grad = match (dh.as_deref_mut(), grad_scale) {
            (Some(dh), Some(s)) => Some((dh, dw.as_deref_mut(), s)),
            _ => None,
        };
        let stats = cpu::linear_cross_entropy::linear_cross_entropy(
            &h.data, &w.data, targets, n, c, v, CE_CHUNK, softcap, grad,
        );
        Ok((stats, dh.map(|v| self.wrap(v)), dw.map(|v| self.wrap(v))))
    }

    fn adamw_step(
        &self,
        param: &mut CpuStorage,
        grad: &CpuStorage,
        m: &mut CpuStorage,
        v: &mut CpuStorage,
        p: &AdamWParams,
    ) -> Result<()> {
        Self::check_len("adamw_step", "grad", grad, param.data.len())?;
        cpu::adamw::adamw_step(
            &mut param.data,
            &grad.data,
            &mut m.data,
            &mut v.data,
            p.lr,
            p.beta1,
            p.beta2,
            p.eps,
            p.weight_decay,
            p.step,
        );
        Ok(())
    }
    fn grad_norm_sq(&self, grads: &[&CpuStorage]) -> Result<f64> {
        let slices: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
        Ok(cpu::adamw::grad_norm_sq(&slices))
    }
    fn scale_in_place(&self, s: &mut CpuStorage, k: f32) -> Result<()> {
        s.data.iter_mut().for_each(|v| *v *= k);
        Ok(())
    }
}
