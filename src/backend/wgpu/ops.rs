//! `impl Backend for WgpuBackend`: user-facing checks (lengths, ids, D limits) return `Error`, then
//! each op records one or a few dispatches of its shader (shaders/<op>.wgsl). Nothing here waits for
//! the GPU except the methods that must hand a value to the host (`download`, `grad_norm_sq`,
//! `linear_cross_entropy`'s loss, `sync`). Backward methods return fresh (=) gradients, as the
//! trait asks; the specs' `+=` contract is met by zeroing first where a kernel accumulates.
//!
//! Frozen weights stay packed on the device (`DequantRows::device_blocks`) and are decoded inside
//! quant_linear.wgsl / dequantize.wgsl / row_norms.wgsl. Host-side parts, all marked `// FALLBACK(cpu)`:
//! `upload_quant` decodes to f32 on the host for formats without a device decoder (Q2_K, Q3_K,
//! F32, ...) or packed data larger than one binding.

use super::pipelines::{dispatch, grid_1d, Bind, Buf};
use super::pool::PooledBuffer;
use super::WgpuBackend;
use crate::backend::cpu::attention::AttnParams;
use crate::backend::cpu::linear_cross_entropy::{CeStats, IGNORE_INDEX};
use crate::backend::cpu::matmul::MatmulDims;
use crate::backend::cpu::rope::{rope_inv_freq, RopeConfig, RopeLayout};
use crate::backend::{AdamWParams, Backend, HostQuant, MemoryStats};
use crate::error::{Error, Result};
use crate::quant::DeviceFormat;
use std::collections::HashMap;
use std::sync::Arc;

/// A device buffer of `len` f32 (the pooled buffer may be larger).
pub struct WgpuStorage {
    buf: Arc<PooledBuffer>,
    len: usize,
}

impl WgpuStorage {
    fn b(&self) -> &wgpu::Buffer {
        self.buf.buf()
    }
}

/// A frozen weight (rows, cols) = (d_out, d_in) on the device: its packed blocks, decoded inside
/// the kernels that read it, or (formats without a device decoder, or packed data larger than one
/// binding) rows decoded to f32 at upload.
pub struct WgpuQuant {
    repr: QuantRepr,
    rows: usize,
    cols: usize,
    format: String,
}

/// The head a cross-entropy reads: a dense f32 matrix or a packed frozen weight.
#[derive(Clone, Copy)]
enum Head<'a> {
    Dense(&'a WgpuStorage),
    Packed(&'a WgpuQuant),
}

enum QuantRepr {
    Dense(WgpuStorage),
    /// Row pieces, each within one storage binding (usually a single piece).
    Packed {
        pieces: Vec<Piece>,
        format: DeviceFormat,
        offset: f32,
    },
}

/// Rows [r0, r0 + rows) of a packed weight: its bytes as u32 words, side table, format params.
struct Piece {
    r0: usize,
    rows: usize,
    q: WgpuStorage,
    aux: WgpuStorage,
    params: [u32; 4],
}

impl WgpuQuant {
    /// True when the weight lives on the device in its packed form.
    pub fn is_packed(&self) -> bool {
        matches!(self.repr, QuantRepr::Packed { .. })
    }

    /// How many row pieces the packed weight is bound in (1 unless it exceeds one binding).
    pub fn pieces(&self) -> usize {
        match &self.repr {
            QuantRepr::Dense(_) => 1,
            QuantRepr::Packed { pieces, .. } => pieces.len(),
        }
    }

    /// The device format the kernels decode ("f32" for host-decoded pieces), None when dense.
    pub fn device_format(&self) -> Option<DeviceFormat> {
        match &self.repr {
            QuantRepr::Dense(_) => None,
            QuantRepr::Packed { format, .. } => Some(*format),
        }
    }
}

/// `LORAFORGE_WGPU_DEQUANT=upload` decodes every frozen weight to f32 at upload (the pre-fused
/// path; for comparisons and as a workaround). Anything else, or unset: packed where possible.
fn packed_weights_enabled() -> bool {
    std::env::var("LORAFORGE_WGPU_DEQUANT").map_or(true, |v| v != "upload")
}

/// Largest head dim attention(_backward).wgsl and attention_decode.wgsl take (8 lanes of 32 dims).
const ATTN_DMAX: usize = 256;

/// How attention(_backward).wgsl split a row (a query, or a key in `dkv`) over lanes: `lanes`
/// invocations (4, or 8 above D = 128) of `dims` = ceil(D / lanes) <= 32 register dims each, and
/// 64 / lanes rows per workgroup.
#[derive(Clone, Copy, Debug)]
struct AttnSplit {
    lanes: usize,
    dims: usize,
}

impl AttnSplit {
    fn new(d: usize) -> Self {
        let lanes = if d <= 128 { 4 } else { 8 };
        AttnSplit { lanes, dims: d.div_ceil(lanes).max(1) }
    }
    /// Rows (queries or keys) per workgroup.
    fn rows(&self) -> usize {
        64 / self.lanes
    }
    /// Row blocks covering `t` rows.
    fn blocks(&self, t: usize) -> usize {
        t.div_ceil(self.rows())
    }
    fn overrides(&self) -> [(&'static str, f64); 2] {
        [("L", self.lanes as f64), ("DPT", self.dims as f64)]
    }
}

/// For each batch row and block of `rows` consecutive rows, the range [lo, hi) of the other side
/// that any row of the block can see under `p`'s rules and the segment ids: keys per query block
/// (`by_keys` false: attention, dq) or queries per key block (`by_keys` true: dkv). The union over
/// the block's rows, so a bound, exact per tile where the rules are bands (causal, window,
/// contiguous segments): the kernels skip what lies outside and test each (i, j) inside. An empty
/// range is (0, 0). Layout (B, blocks, 2) u32.
fn attn_ranges(p: &AttnParams, seg: Option<&[u32]>, rows: usize, by_keys: bool) -> Vec<u32> {
    let t = p.t;
    let blocks = t.div_ceil(rows);
    let mut out = Vec::with_capacity(p.b * blocks * 2);
    let mut span: HashMap<u32, (usize, usize)> = HashMap::new();
    for bb in 0..p.b {
        let row_seg = seg.map(|s| &s[bb * t..(bb + 1) * t]);
        if let Some(s) = row_seg {
            span.clear();
            for (i, &id) in s.iter().enumerate() {
                span.entry(id).and_modify(|e| e.1 = i).or_insert((i, i));
            }
        }
        for blk in 0..blocks {
            let (r0, r1) = (blk * rows, ((blk + 1) * rows).min(t) - 1);
            let (mut lo, mut hi) = if by_keys {
                // queries i that see keys r0..=r1: i >= r0 (causal), i < r1 + w (window)
                let lo = if p.causal { r0 } else { 0 };
                (lo, p.window.map_or(t, |w| t.min(r1.saturating_add(w))))
            } else {
                // keys seen by queries r0..=r1: the spec's per-query ranges, whose bounds grow with i
                (p.key_range(r0).start, p.key_range(r1).end)
            };
            if let Some(s) = row_seg {
                let (first, last) =
                    s[r0..=r1].iter().map(|id| span[id]).fold((usize::MAX, 0), |(f, l), (a, b)| (f.min(a), l.max(b)));
                lo = lo.max(first);
                hi = hi.min(last + 1);
            }
            if lo >= hi {
                (lo, hi) = (0, 0);
            }
            out.extend([u(lo), u(hi)]);
        }
    }
    out
}
/// Logits scratch per cross-entropy chunk: tokens per chunk = this / (4 V), at most 256 (as the CPU).
const CE_SCRATCH_BYTES: usize = 64 << 20;
/// Elements per `sum_sq` workgroup (reduce.wgsl `CHUNK`).
const SUM_SQ_CHUNK: usize = 4096;

/// Row strides (elements) of A, B and C as stored, for matmul.wgsl.
#[derive(Clone, Copy)]
struct Lds {
    a: usize,
    b: usize,
    c: usize,
}

impl Lds {
    /// The strides of contiguous operands of `d`.
    fn contiguous(d: &MatmulDims) -> Self {
        Lds { a: if d.trans_a { d.m } else { d.k }, b: if d.trans_b { d.k } else { d.n }, c: d.n }
    }
}

/// Elements [e0, e0 + len) of `buf` as a binding (e0 aligned by the caller).
fn span(buf: &wgpu::Buffer, e0: usize, len: usize) -> Buf<'_> {
    Buf::at(buf, e0 as u64 * 4, len as u64 * 4)
}

fn bad(op: &'static str, msg: String) -> Error {
    Error::InvalidArgument { op, msg }
}

fn check_len(op: &'static str, what: &str, s: &WgpuStorage, want: usize) -> Result<()> {
    if s.len != want {
        return Err(bad(op, format!("{what} has {} elements, expected {want}", s.len)));
    }
    Ok(())
}

fn u(x: usize) -> u32 {
    x as u32
}

impl WgpuBackend {
    fn alloc(&self, op: &'static str, n: usize) -> Result<WgpuStorage> {
        Ok(WgpuStorage { buf: Arc::new(self.ctx.alloc(op, n)?), len: n })
    }

    fn zeroed(&self, op: &'static str, n: usize) -> Result<WgpuStorage> {
        let s = self.alloc(op, n)?;
        self.clear(&s);
        Ok(s)
    }

    fn clear(&self, s: &WgpuStorage) {
        self.ctx.record(|enc| enc.clear_buffer(s.b(), 0, None));
    }

    /// Does a tensor of `n` f32 fit one storage binding?
    fn fits(&self, n: usize) -> bool {
        (n as u64) * 4 <= self.ctx.max_binding()
    }

    /// Elements per window of a flat split: the most that fit one binding, a multiple of the
    /// binding offset alignment so every window starts aligned (and at element offset 0).
    fn flat_window(&self) -> usize {
        let a = self.ctx.binding_align();
        ((self.ctx.max_binding() / a * a) / 4) as usize
    }

    /// [start, start + len) windows covering `n` elements: one when the tensor fits a binding, none
    /// when it is empty.
    fn flat_windows(&self, n: usize) -> impl Iterator<Item = (usize, usize)> {
        let w = if self.fits(n) { n.max(1) } else { self.flat_window() };
        (0..n).step_by(w).map(move |e0| (e0, w.min(n - e0)))
    }

    /// Windows of whole rows [r0, r0 + rows) of a (rows_total, c) matrix, each within one binding
    /// even when its start is rounded down to the alignment (`window`); the row count is a
    /// multiple of `mult` (for vec4 loads and aligned column offsets). One window when it fits.
    fn row_windows(&self, op: &'static str, rows_total: usize, c: usize, mult: usize) -> Result<Vec<(usize, usize)>> {
        if self.fits(rows_total * c) {
            return Ok(vec![(0, rows_total)]);
        }
        let room = ((self.ctx.max_binding() - self.ctx.binding_align()) / 4) as usize;
        let per = room / c.max(1) / mult * mult;
        if per == 0 {
            return Err(bad(op, format!("{mult} rows of {c} f32 do not fit one storage binding of this adapter")));
        }
        Ok((0..rows_total).step_by(per).map(|r0| (r0, per.min(rows_total - r0))).collect())
    }

    /// Elements [e0, e0 + len) of `buf` as a binding that starts at e0 rounded down to the
    /// binding alignment, and the element offset of e0 inside it.
    fn window<'a>(&self, buf: &'a wgpu::Buffer, e0: usize, len: usize) -> (Buf<'a>, usize) {
        let a = self.ctx.binding_align();
        let start = (e0 as u64 * 4) / a * a;
        let rel = e0 - (start / 4) as usize;
        (Buf::at(buf, start, ((rel + len) as u64 * 4).max(4)), rel)
    }

    /// An elementwise.wgsl entry whose operands are all indexed alike (add, mul, scale,
    /// add_assign, scale_in_place), in windows of one binding when the tensor is larger;
    /// `None` inputs are not read by the entry (bound to a dummy).
    fn ew_flat(
        &self,
        entry: &'static str,
        a: Option<&wgpu::Buffer>,
        b: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
        n: usize,
        s: f32,
    ) -> Result<()> {
        let dummy = Buf::from(&self.ctx.dummy);
        for (e0, len) in self.flat_windows(n) {
            let (wa, wb) = (a.map_or(dummy, |x| span(x, e0, len)), b.map_or(dummy, |x| span(x, e0, len)));
            self.ew(entry, wa, wb, span(out, e0, len), len, 1, s, 0)?;
        }
        Ok(())
    }

    /// A product with no terms (K = 0): out (rows, n) = bias in every row, or 0.
    fn fill_bias(&self, out: &WgpuStorage, bias: Option<&WgpuStorage>, rows: usize, n: usize) -> Result<()> {
        self.clear(out);
        if let (Some(bias), true) = (bias, rows * n > 0) {
            let ones = self.upload(&vec![1.0; rows * n])?;
            self.ew("mul_rows", ones.b().into(), bias.b().into(), out.b().into(), rows * n, n, 0.0, rows)?;
        }
        Ok(())
    }

    /// An exact-size buffer of `n` elements for long-lived data (frozen weights; pool.rs `get_exact`).
    fn alloc_exact(&self, op: &'static str, n: usize) -> Result<WgpuStorage> {
        Ok(WgpuStorage { buf: Arc::new(self.ctx.alloc_exact(op, n)?), len: n })
    }

    /// A long-lived upload of `bytes` (zero-padded to whole words) in an exact-size buffer.
    fn upload_exact(&self, bytes: &[u8]) -> Result<WgpuStorage> {
        let s = self.alloc_exact("upload_quant", bytes.len().div_ceil(4).max(1))?;
        self.ctx.write(s.b(), 0, bytes);
        Ok(s)
    }

    /// The device copy of attention's block ranges, shared with earlier calls that had the same
    /// ranges (device.rs `Ctx::attn_ranges`).
    fn attn_ranges_buf(&self, op: &'static str, words: Vec<u32>) -> Result<WgpuStorage> {
        let mut cache = self.ctx.attn_ranges.lock().unwrap_or_else(|e| e.into_inner());
        let len = words.len();
        if let Some(buf) = cache.get(&words) {
            return Ok(WgpuStorage { buf: buf.clone(), len });
        }
        let s = self.alloc_exact(op, len)?;
        self.ctx.write(s.b(), 0, bytemuck::cast_slice(&words));
        if cache.len() >= super::device::MAX_RANGES {
            cache.clear();
        }
        cache.insert(words, s.buf.clone());
        Ok(s)
    }

    fn upload_words(&self, op: &'static str, words: &[u32]) -> Result<WgpuStorage> {
        let s = self.alloc(op, words.len())?;
        self.ctx.write(s.b(), 0, bytemuck::cast_slice(words));
        Ok(s)
    }

    /// C = A · op(W) for a packed frozen weight (quant_linear.wgsl): forward y (n, rows) = x · Wᵀ
    /// (+ bias), or backward dx (n, cols) = dy · W.
    fn quant_matmul(
        &self,
        a: &WgpuStorage,
        w: &WgpuQuant,
        bias: Option<&WgpuStorage>,
        n: usize,
        backward: bool,
    ) -> Result<WgpuStorage> {
        let (m, nn, k) = if backward { (n, w.cols, w.rows) } else { (n, w.rows, w.cols) };
        let out = self.alloc("quant_linear", m * nn)?;
        if k == 0 || m == 0 || nn == 0 {
            self.fill_bias(&out, bias, m, nn)?;
            return Ok(out);
        }
        let (ldc, lda) = if backward { (w.cols, w.rows) } else { (w.rows, w.cols) };
        self.quant_matmul_into(out.b(), 0, ldc, a.b(), 0, lda, w, bias.map(|b| b.b()), n, backward)?;
        Ok(out)
    }

    /// Uploads the row pieces of one weight (all of the same format, from `split_rows`).
    fn upload_pieces(&self, pieces: Vec<(usize, usize, crate::quant::DeviceBlocks)>) -> Result<QuantRepr> {
        let (format, offset) = match pieces.first() {
            Some((_, _, b)) => (b.format, b.offset),
            None => return Err(Error::msg("upload_quant: a weight with no row pieces")),
        };
        let mut out = Vec::with_capacity(pieces.len());
        for (r0, rows, b) in pieces {
            let q = self.upload_exact(&b.bytes)?;
            let aux = if b.aux.is_empty() { self.zeros(1)? } else { self.upload_exact(bytemuck::cast_slice(&b.aux))? };
            out.push(Piece { r0, rows, q, aux, params: b.params });
        }
        Ok(QuantRepr::Packed { pieces: out, format, offset })
    }

    /// `quant_matmul` into `out`: forward writes C (n, rows) at element offset `out_off` with row
    /// stride `ldc` from A (n, cols) at `a_off` (row stride cols); backward writes C (n, cols) at
    /// `out_off` (row stride `ldc`) from A (n, rows) at `a_off` with row stride `lda`. One launch
    /// per row piece: forward pieces fill their columns of C, backward pieces add their K slices.
    #[allow(clippy::too_many_arguments)]
    fn quant_matmul_into(
        &self,
        out: &wgpu::Buffer,
        out_off: usize,
        ldc: usize,
        a: &wgpu::Buffer,
        a_off: usize,
        lda: usize,
        w: &WgpuQuant,
        bias: Option<&wgpu::Buffer>,
        n: usize,
        backward: bool,
    ) -> Result<()> {
        let QuantRepr::Packed { pieces, format, offset } = &w.repr else {
            return Err(Error::msg("quant_matmul: weight is not packed"));
        };
        let ov = [("FORMAT", *format as u32 as f64), ("BACKWARD", backward as u32 as f64)];
        // Forward products of 16 tokens or more on cooperative matrices where they are turned on
        // (quant_linear_coop.wgsl: f16 inputs, f32 accumulation), as matmul_view does for dense
        // weights; the input gradient keeps f32 (its values fall below f16's range).
        let coop = self.ctx.coop.filter(|_| !backward && n >= 16);
        let coop_ov = coop.map(|c| [("FORMAT", *format as u32 as f64), ("WG", c.wg as f64)]);
        for (i, pc) in pieces.iter().enumerate() {
            let (m, nn, k) = if backward { (n, w.cols, pc.rows) } else { (n, pc.rows, w.cols) };
            if k == 0 || m == 0 || nn == 0 {
                continue;
            }
            // forward: this piece's columns of C; backward: its slice of A's columns (the K sum).
            let (c_off, a_off) = if backward { (out_off, a_off + pc.r0) } else { (out_off + pc.r0, a_off) };
            let accumulate = backward && i > 0;
            // Up to GEMV_MAX tokens (quant_linear.wgsl): one workgroup per output feature.
            let gemv = !backward && m <= 4;
            let (shader, entry, ov, tile): (_, _, &[(&str, f64)], usize) = match (coop, &coop_ov) {
                (Some(c), Some(cov)) => {
                    let shader = if c.tile == 16 { "quant_linear_coop" } else { "quant_linear_coop8" };
                    (shader, "main", cov, 4 * c.tile as usize)
                }
                _ => ("quant_linear", if gemv { "gemv" } else { "main" }, &ov, 64),
            };
            let groups = if gemv && coop.is_none() {
                grid_1d(nn)
            } else {
                (nn.div_ceil(tile) as u32, m.div_ceil(tile) as u32, 1)
            };
            dispatch(
                &self.ctx,
                shader,
                entry,
                ov,
                &[Bind::r(a), Bind::r(pc.q.b()), Bind::r(pc.aux.b()), Bind::r(bias.unwrap_or(a)), Bind::w(out)],
                &[
                    u(m),
                    u(nn),
                    u(k),
                    u(pc.rows),
                    u(w.cols),
                    bias.is_some() as u32,
                    accumulate as u32,
                    pc.params[0],
                    pc.params[1],
                    pc.params[2],
                    pc.params[3],
                    offset.to_bits(),
                    groups.0,
                    u(a_off),
                    u(c_off),
                    u(if backward { lda } else { w.cols }),
                    u(ldc),
                    u(if backward { 0 } else { pc.r0 }),
                ],
                groups,
            )?;
        }
        Ok(())
    }

    /// Rows of a packed weight decoded to f32 (dequantize.wgsl): `ids` rows in that order, or all.
    fn decode_rows(&self, w: &WgpuQuant, ids: Option<&[u32]>) -> Result<WgpuStorage> {
        let QuantRepr::Packed { pieces, format, offset } = &w.repr else {
            return Err(Error::msg("decode_rows: weight is not packed"));
        };
        let n_out = ids.map_or(w.rows, |i| i.len());
        let out = self.alloc("dequantize", n_out * w.cols)?;
        if n_out * w.cols == 0 {
            return Ok(out);
        }
        let ids_buf = match ids {
            Some(i) => self.upload_words("dequantize", i)?,
            None => self.zeros(1)?,
        };
        for pc in pieces {
            // Lookups: one launch per piece into the (ids, cols) output. Every row: launches over
            // windows of the output, which may exceed one binding where the packed piece did not.
            let launches = match ids {
                Some(_) => vec![(0, n_out, Buf::from(out.b()), 0)],
                None => self
                    .row_windows("dequantize", pc.rows, w.cols, 1)?
                    .into_iter()
                    .map(|(r0, rows)| {
                        let (ob, base) = self.window(out.b(), (pc.r0 + r0) * w.cols, rows * w.cols);
                        (r0, rows, ob, base)
                    })
                    .collect(),
            };
            for (row0, n_rows, ob, base) in launches {
                let total = n_rows * w.cols;
                if total == 0 {
                    continue;
                }
                let groups = grid_1d(total.div_ceil(256));
                dispatch(
                    &self.ctx,
                    "dequantize",
                    "main",
                    &[("FORMAT", *format as u32 as f64)],
                    &[Bind::r(ids_buf.b()), Bind::r(pc.q.b()), Bind::r(pc.aux.b()), Bind::w(ob)],
                    &[
                        u(n_rows),
                        u(w.cols),
                        ids.is_some() as u32,
                        groups.0,
                        pc.params[0],
                        pc.params[1],
                        pc.params[2],
                        pc.params[3],
                        offset.to_bits(),
                        u(pc.r0),
                        u(pc.rows),
                        u(row0),
                        u(base),
                    ],
                    groups,
                )?;
            }
        }
        Ok(out)
    }

    /// Chunked linear + cross-entropy (linear_cross_entropy.wgsl between two matmuls) over a
    /// dense or packed head.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        h: &WgpuStorage,
        head: Head<'_>,
        targets: &[i32],
        n: usize,
        c: usize,
        v: usize,
        softcap: Option<f32>,
        grad_scale: Option<f64>,
        need_dw: bool,
    ) -> Result<(CeStats, Option<WgpuStorage>, Option<WgpuStorage>)> {
        const OP: &str = "linear_cross_entropy";
        check_len(OP, "h", h, n * c)?;
        if targets.len() != n {
            return Err(bad(OP, format!("targets has {}, expected N = {n}", targets.len())));
        }
        if let Some(&t) = targets.iter().find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= v)) {
            return Err(bad(OP, format!("target {t} out of range for vocab {v} (and not {IGNORE_INDEX})")));
        }
        let dh = match grad_scale {
            Some(_) => Some(self.zeroed(OP, n * c)?),
            None => None,
        };
        let dw = match (grad_scale, need_dw) {
            (Some(_), true) => Some(self.zeroed(OP, v * c)?),
            _ => None,
        };
        let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
        if n == 0 {
            return Ok((CeStats { loss_sum: 0.0, count }, dh, dw));
        }
        // A dense head larger than one binding (a fully tuned embedding or lm_head) is read, and
        // its gradient written, one window of head rows at a time: logits columns, dh and dW row
        // blocks per window (matmul.wgsl row strides). Rows per window are a multiple of 4 so the
        // column offsets keep vec4 loads aligned.
        let windows = match head {
            Head::Dense(_) => self.row_windows(OP, v, c, 4)?,
            Head::Packed(_) => Vec::new(),
        };
        let scratch = CE_SCRATCH_BYTES.min(self.ctx.max_binding() as usize);
        let chunk = (scratch / (4 * v.max(1))).clamp(1, 256).min(n);
        let logits = self.alloc(OP, chunk * v)?;
        let tb = self.upload_words(OP, bytemuck::cast_slice(targets))?;
        let loss = self.alloc(OP, n)?;
        let mut r0 = 0;
        while r0 < n {
            let rows = chunk.min(n - r0);
            // logits (rows, V) = h[r0..r0+rows] (rows, C) · Wᵀ
            match head {
                Head::Dense(w) => {
                    for &(p0, pr) in &windows {
                        // logits[:, p0..p0+pr] = h[r0..] · W[p0..p0+pr]ᵀ
                        let (wb, rel) = self.window(w.b(), p0 * c, pr * c);
                        let lds = Lds { a: c, b: c, c: v };
                        let d = MatmulDims::linear(rows, pr, c);
                        let offs = (r0 * c, rel, p0);
                        self.matmul_view(
                            logits.b().into(),
                            h.b().into(),
                            wb,
                            None,
                            d,
                            offs,
                            lds,
                            rows * v,
                            false,
                            false,
                        )?;
                    }
                }
                Head::Packed(w) => self.quant_matmul_into(logits.b(), 0, v, h.b(), r0 * c, c, w, None, rows, false)?,
            }
            dispatch(
                &self.ctx,
                OP,
                "main",
                &[],
                &[Bind::r(tb.b()), Bind::w(logits.b()), Bind::w(loss.b())],
                &[
                    u(rows),
                    u(v),
                    u(r0),
                    grad_scale.is_some() as u32,
                    softcap.unwrap_or(0.0).to_bits(),
                    (grad_scale.unwrap_or(0.0) as f32).to_bits(),
                ],
                grid_1d(rows),
            )?;
            if let Some(dh) = &dh {
                // dh[r0..] (rows, C) = dz (rows, V) · W (V, C)
                match head {
                    Head::Dense(w) => {
                        for (i, &(p0, pr)) in windows.iter().enumerate() {
                            // dh[r0..] (+)= dz[:, p0..p0+pr] · W[p0..p0+pr]
                            let (wb, rel) = self.window(w.b(), p0 * c, pr * c);
                            let lds = Lds { a: v, b: c, c };
                            let (d, offs) = (MatmulDims::new(rows, c, pr), (p0, rel, r0 * c));
                            self.matmul_view(
                                dh.b().into(),
                                logits.b().into(),
                                wb,
                                None,
                                d,
                                offs,
                                lds,
                                rows * c,
                                i > 0,
                                false,
                            )?;
                        }
                    }
                    Head::Packed(w) => {
                        self.quant_matmul_into(dh.b(), r0 * c, c, logits.b(), 0, v, w, None, rows, true)?
                    }
                }
            }
            if let Some(dw) = &dw {
                for &(p0, pr) in &windows {
                    // dW[p0..p0+pr] (pr, C) += dz[:, p0..p0+pr]ᵀ · h[r0..] (rows, C)
                    let (db, rel) = self.window(dw.b(), p0 * c, pr * c);
                    let d = MatmulDims { trans_a: true, ..MatmulDims::new(pr, c, rows) };
                    let lds = Lds { a: v, b: c, c };
                    self.matmul_view(
                        db,
                        logits.b().into(),
                        h.b().into(),
                        None,
                        d,
                        (p0, r0 * c, rel),
                        lds,
                        pr * c,
                        true,
                        false,
                    )?;
                }
            }
            r0 += rows;
        }
        let losses = self.download(&loss)?;
        let loss_sum = losses.iter().zip(targets).filter(|(_, &t)| t != IGNORE_INDEX).map(|(&l, _)| l as f64).sum();
        Ok((CeStats { loss_sum, count }, dh, dw))
    }

    /// One elementwise.wgsl launch over `n` threads.
    #[allow(clippy::too_many_arguments)]
    fn ew(
        &self,
        entry: &'static str,
        a: Buf<'_>,
        b: Buf<'_>,
        out: Buf<'_>,
        n: usize,
        c: usize,
        s: f32,
        rows: usize,
    ) -> Result<()> {
        dispatch(
            &self.ctx,
            "elementwise",
            entry,
            &[],
            &[Bind::r(a), Bind::r(b), Bind::w(out)],
            &[u(n), u(c), s.to_bits(), u(rows)],
            grid_1d(n.div_ceil(256)),
        )
    }

    /// out (+)= op(A) · op(B) (+ bias) with element offsets into a, b, out (see matmul.wgsl).
    /// `out_bs` is the output's batch stride; 0 sums every batch item into one matrix (by
    /// launching once per item with accumulate, in batch order).
    #[allow(clippy::too_many_arguments)]
    fn matmul_into(
        &self,
        out: &wgpu::Buffer,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        d: MatmulDims,
        offs: (usize, usize, usize),
        out_bs: usize,
        accumulate: bool,
    ) -> Result<()> {
        let lds = Lds::contiguous(&d);
        self.matmul_view(out.into(), a.into(), b.into(), bias.map(Buf::from), d, offs, lds, out_bs, accumulate, false)
    }

    /// `matmul_into` on bindings that may be windows of larger buffers (offsets are relative to
    /// the binding), with explicit row strides: C may be a column block of a wider matrix, A and B
    /// column blocks or row windows of theirs. `coop`: the caller's values are of order 1 (a
    /// forward linear layer), so the product may run on cooperative matrices with f16 inputs
    /// (matmul_coop.wgsl) where the device has them turned on; gradients never take it (their
    /// magnitudes fall below f16's range).
    #[allow(clippy::too_many_arguments)]
    fn matmul_view(
        &self,
        out: Buf<'_>,
        a: Buf<'_>,
        b: Buf<'_>,
        bias: Option<Buf<'_>>,
        d: MatmulDims,
        offs: (usize, usize, usize),
        lds: Lds,
        out_bs: usize,
        accumulate: bool,
        coop: bool,
    ) -> Result<()> {
        let ov = [("TRANS_A", d.trans_a as u32 as f64), ("TRANS_B", d.trans_b as u32 as f64)];
        let coop = self.ctx.coop.filter(|_| coop);
        // Output tile: 64x64 (matmul.wgsl), 4T x 4T (matmul_coop.wgsl).
        let tile = coop.map_or(64, |c| 4 * c.tile as usize);
        let groups = |batch: usize| ((d.n.div_ceil(tile)) as u32, (d.m.div_ceil(tile)) as u32, batch as u32);
        // 16-byte loads when every row of A and B starts 16-byte aligned and no vec4 straddles the
        // end of a row (matmul.wgsl `main_vec4`); scalar loads otherwise.
        let a_row = if d.trans_a { d.m } else { d.k };
        let b_row = if d.trans_b { d.k } else { d.n };
        let aligned = self.ctx.vec4_loads
            && [a_row, b_row, d.k, offs.0, offs.1, d.a_stride, d.b_stride, lds.a, lds.b].iter().all(|x| x % 4 == 0);
        let entry = if aligned && coop.is_none() { "main_vec4" } else { "main" };
        let (shader, ov) = match coop {
            Some(c) => {
                let shader = if c.tile == 16 { "matmul_coop" } else { "matmul_coop8" };
                (shader, vec![ov[0], ov[1], ("WG", c.wg as f64)])
            }
            None => ("matmul", ov.to_vec()),
        };
        let launch = |a_off: usize, b_off: usize, c_off: usize, batch: usize, acc: bool| {
            dispatch(
                &self.ctx,
                shader,
                entry,
                &ov,
                &[Bind::r(a), Bind::r(b), Bind::r(bias.unwrap_or(a)), Bind::w(out)],
                &[
                    u(d.m),
                    u(d.n),
                    u(d.k),
                    u(a_off),
                    u(b_off),
                    u(c_off),
                    u(d.a_stride),
                    u(d.b_stride),
                    u(out_bs),
                    bias.is_some() as u32,
                    acc as u32,
                    u(lds.a),
                    u(lds.b),
                    u(lds.c),
                ],
                groups(batch),
            )
        };
        if out_bs == 0 && d.batch > 1 {
            for bt in 0..d.batch {
                launch(offs.0 + bt * d.a_stride, offs.1 + bt * d.b_stride, offs.2, 1, accumulate || bt > 0)?;
            }
            Ok(())
        } else {
            // Batches beyond the 65535 grid limit are split.
            let mut bt = 0;
            while bt < d.batch.max(1) {
                let nb = (d.batch - bt).min(65535);
                launch(offs.0 + bt * d.a_stride, offs.1 + bt * d.b_stride, offs.2 + bt * out_bs, nb, accumulate)?;
                bt += nb;
            }
            Ok(())
        }
    }

    /// attention(_backward).wgsl's Params: the shapes and rules, the row blocks per (b, head) and
    /// where the key-block ranges start in the ranges buffer.
    fn attn_params(p: &AttnParams, has_seg: bool, split: AttnSplit, koff: usize) -> Vec<u32> {
        vec![
            u(p.b),
            u(p.t),
            u(p.h),
            u(p.kv_heads),
            u(p.d),
            p.scale.to_bits(),
            p.causal as u32,
            p.window.map_or(u32::MAX, |w| w.min(u32::MAX as usize - 1) as u32),
            p.softcap.unwrap_or(0.0).to_bits(),
            has_seg as u32,
            u(split.blocks(p.t)),
            u(koff),
        ]
    }

    fn check_attn(
        &self,
        op: &'static str,
        q: &WgpuStorage,
        k: &WgpuStorage,
        v: &WgpuStorage,
        p: &AttnParams,
    ) -> Result<()> {
        if p.d > ATTN_DMAX {
            return Err(bad(op, format!("head dim {} > {ATTN_DMAX} (attention.wgsl DMAX)", p.d)));
        }
        if p.kv_heads == 0 || !p.h.is_multiple_of(p.kv_heads) {
            return Err(bad(op, format!("heads {} not a multiple of kv heads {}", p.h, p.kv_heads)));
        }
        check_len(op, "q", q, p.b * p.t * p.h * p.d)?;
        check_len(op, "k", k, p.b * p.t * p.kv_heads * p.d)?;
        check_len(op, "v", v, p.b * p.t * p.kv_heads * p.d)
    }

    fn seg_buf(&self, op: &'static str, seg: Option<&[u32]>, p: &AttnParams) -> Result<Option<WgpuStorage>> {
        match seg {
            Some(s) if s.len() != p.b * p.t => {
                Err(bad(op, format!("segment_ids has {}, expected B*T = {}", s.len(), p.b * p.t)))
            }
            Some(s) => Ok(Some(self.upload_words(op, s)?)),
            None => Ok(None),
        }
    }

    /// (B*T, rot/2, 2) table of m cos(pos inv_freq), m sin(pos inv_freq), in f64 then rounded once.
    fn rope_table(&self, positions: &[u32], cfg: &RopeConfig) -> Result<WgpuStorage> {
        let (inv_freq, m) = rope_inv_freq(cfg);
        let mut cs = Vec::with_capacity(positions.len() * inv_freq.len() * 2);
        for &pos in positions {
            for &f in &inv_freq {
                let a = pos as f64 * f;
                cs.push((m * a.cos()) as f32);
                cs.push((m * a.sin()) as f32);
            }
        }
        self.upload(&cs)
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_launch(
        &self,
        op: &'static str,
        x: &WgpuStorage,
        positions: &[u32],
        cfg: &RopeConfig,
        b: usize,
        t: usize,
        nh: usize,
        sign: f32,
    ) -> Result<WgpuStorage> {
        if !cfg.rotary_dim.is_multiple_of(2) || cfg.rotary_dim > cfg.head_dim {
            return Err(bad(
                op,
                format!("rotary_dim {} must be even and <= head_dim {}", cfg.rotary_dim, cfg.head_dim),
            ));
        }
        check_len(op, "x", x, b * t * nh * cfg.head_dim)?;
        if positions.len() != b * t {
            return Err(bad(op, format!("positions has {}, expected B*T = {}", positions.len(), b * t)));
        }
        let out = self.alloc(op, x.len)?;
        if cfg.rotary_dim == 0 {
            self.ew_flat("scale", Some(x.b()), None, out.b(), x.len, 1.0)?;
            return Ok(out);
        }
        let cs = self.rope_table(positions, cfg)?;
        dispatch(
            &self.ctx,
            "rope",
            "main",
            &[],
            &[Bind::r(x.b()), Bind::r(cs.b()), Bind::w(out.b())],
            &[
                u(x.len),
                u(nh),
                u(cfg.head_dim),
                u(cfg.rotary_dim),
                (cfg.layout == RopeLayout::Interleaved) as u32,
                sign.to_bits(),
            ],
            grid_1d(x.len.div_ceil(256)),
        )?;
        Ok(out)
    }

    fn dropout_launch(&self, x: &WgpuStorage, p: f32, seed: u64, offset: u64) -> Result<WgpuStorage> {
        if !(0.0..1.0).contains(&p) {
            return Err(bad("dropout", format!("p = {p} must be in [0, 1)")));
        }
        let out = self.alloc("dropout", x.len)?;
        let scale = crate::backend::cpu::dropout::dropout_scale(p);
        dispatch(
            &self.ctx,
            "dropout",
            "main",
            &[],
            &[Bind::r(x.b()), Bind::w(out.b())],
            &[
                u(x.len),
                seed as u32,
                (seed >> 32) as u32,
                offset as u32,
                (offset >> 32) as u32,
                p.to_bits(),
                scale.to_bits(),
            ],
            grid_1d(x.len.div_ceil(256)),
        )?;
        Ok(out)
    }
}

impl Backend for WgpuBackend {
    type Storage = WgpuStorage;
    type QStorage = WgpuQuant;

    fn name(&self) -> String {
        format!("wgpu ({})", self.adapter_name())
    }

    fn zeros(&self, n: usize) -> Result<WgpuStorage> {
        self.zeroed("zeros", n)
    }
    fn upload(&self, data: &[f32]) -> Result<WgpuStorage> {
        let s = self.alloc("upload", data.len())?;
        self.ctx.write(s.b(), 0, bytemuck::cast_slice(data));
        Ok(s)
    }
    fn download(&self, s: &WgpuStorage) -> Result<Vec<f32>> {
        let bytes = self.ctx.read(s.b(), 0, s.len as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
    fn len(&self, s: &WgpuStorage) -> usize {
        s.len
    }
    fn upload_quant(&self, q: HostQuant) -> Result<WgpuQuant> {
        let (rows, cols) = (q.rows(), q.cols());
        let format = q.format_name();
        let max = self.ctx.max_binding() as usize;
        let blocks = if packed_weights_enabled() { q.device_blocks() } else { None };
        let small = rows.checked_mul(cols).is_some_and(|n| n <= u32::MAX as usize);
        if let (Some(b), true) = (blocks, small) {
            if let Some(pieces) = b.split_rows(rows, cols, max) {
                let repr = self.upload_pieces(pieces)?;
                return Ok(WgpuQuant { repr, rows, cols, format });
            }
        }
        // FALLBACK(cpu): no device decoder for this format (q2_k, q3_k, f32, ...): rows decoded to
        // f32 on the host, then one dense buffer, or f32 row pieces when it exceeds a binding.
        let mut data = vec![0.0f32; rows * cols];
        for (r, row) in data.chunks_mut(cols.max(1)).enumerate().take(rows) {
            q.dequantize_row(r, row);
        }
        if ((rows * cols) as u64) * 4 <= max as u64 || !small {
            let dense = self.upload_exact(bytemuck::cast_slice(&data))?;
            return Ok(WgpuQuant { repr: QuantRepr::Dense(dense), rows, cols, format });
        }
        let b = crate::quant::DeviceBlocks::from_f32(&data, cols)
            .ok_or_else(|| bad("upload_quant", format!("{rows} x {cols} f32 weight is too large")))?;
        drop(data);
        let pieces = b.split_rows(rows, cols, max).ok_or_else(|| {
            bad("upload_quant", format!("a row of {cols} f32 does not fit one storage binding ({max} bytes)"))
        })?;
        let repr = self.upload_pieces(pieces)?;
        Ok(WgpuQuant { repr, rows, cols, format })
    }
    fn quantize_nf4(&self, dense: &[f32], rows: usize, cols: usize, double_quant: bool) -> Result<WgpuQuant> {
        use crate::quant::nf4::{Nf4Absmax, Nf4Matrix, NF4_QUANT_MAP};
        const BS: usize = 64;
        let n = rows.checked_mul(cols).filter(|&n| n == dense.len() && n > 0 && n <= u32::MAX as usize);
        let max = self.ctx.max_binding();
        let host = |be: &Self| be.upload_quant(Arc::new(Nf4Matrix::quantize(dense, rows, cols, BS, double_quant)?));
        // The host quantizer for what the kernels do not cover: sizes above one binding (row
        // pieces are made from host blocks) and non-finite values (GPU NaN handling is loose).
        let Some(n) = n else { return host(self) };
        if (n as u64) * 4 > max || dense.iter().any(|v| !v.is_finite()) {
            return host(self);
        }
        let n_blocks = n.div_ceil(BS);
        let n_words = n.div_ceil(2).div_ceil(4);
        let x = self.upload(dense)?;
        let am = self.alloc("quantize_nf4", n_blocks)?;
        let groups = grid_1d(n_blocks);
        let params = [u(n), u(BS), u(n_words), groups.0];
        dispatch(
            &self.ctx,
            "nf4_quantize",
            "absmax",
            &[],
            &[Bind::r(x.b()), Bind::r(x.b()), Bind::w(am.b())],
            &params,
            groups,
        )?;
        let absmax = self.download(&am)?;
        drop(am);
        // Exact reciprocals on the host (see nf4_quantize.wgsl); 0 marks an all-zero block.
        let mut tab = NF4_QUANT_MAP.to_vec();
        tab.extend(absmax.iter().map(|&a| if a == 0.0 { 0.0 } else { 1.0 / a }));
        let tab = self.upload(&tab)?;
        let absq = if double_quant { Some(Nf4Matrix::double_quantize(&absmax)) } else { None };
        let absq_words = match &absq {
            Some(Nf4Absmax::Double { q, .. }) => q.len().div_ceil(4),
            _ => 0,
        };
        let words = WgpuStorage {
            buf: Arc::new(self.ctx.alloc_exact("quantize_nf4", n_words + absq_words)?),
            len: n_words + absq_words,
        };
        let params = [u(n), u(BS), u(n_words), grid_1d(n_words.div_ceil(256)).0];
        dispatch(
            &self.ctx,
            "nf4_quantize",
            "codes",
            &[],
            &[Bind::r(x.b()), Bind::r(tab.b()), Bind::w(words.b())],
            &params,
            grid_1d(n_words.div_ceil(256)),
        )?;
        let (format, aux, p, offset) = match absq {
            Some(Nf4Absmax::Double { q, code, nested_absmax, nested_blocksize, offset }) => {
                // The absmax codes follow the packed codes, from a word boundary.
                let mut b = q.clone();
                b.resize(absq_words * 4, 0);
                self.ctx.write(words.b(), (n_words * 4) as u64, &b);
                let mut aux = NF4_QUANT_MAP.to_vec();
                aux.extend_from_slice(&code);
                aux.extend_from_slice(&nested_absmax);
                (DeviceFormat::Nf4Double, aux, [u(BS), 0, u(n_words * 4), u(nested_blocksize)], offset)
            }
            _ => {
                let mut aux = NF4_QUANT_MAP.to_vec();
                aux.extend_from_slice(&absmax);
                (DeviceFormat::Nf4, aux, [u(BS), 0, 0, 0], 0.0)
            }
        };
        if (aux.len() as u64) * 4 > max {
            return host(self);
        }
        let aux = self.upload_exact(bytemuck::cast_slice(&aux))?;
        let name = if double_quant { "nf4_dq" } else { "nf4" };
        let pieces = vec![Piece { r0: 0, rows, q: words, aux, params: p }];
        Ok(WgpuQuant { repr: QuantRepr::Packed { pieces, format, offset }, rows, cols, format: name.into() })
    }
    fn quant_shape(&self, q: &WgpuQuant) -> (usize, usize) {
        (q.rows, q.cols)
    }
    fn quant_format(&self, q: &WgpuQuant) -> String {
        q.format.clone()
    }
    fn quant_bytes(&self, q: &WgpuQuant) -> u64 {
        match &q.repr {
            QuantRepr::Dense(w) => w.b().size(),
            QuantRepr::Packed { pieces, .. } => pieces.iter().map(|p| p.q.b().size() + p.aux.b().size()).sum(),
        }
    }
    fn reads_packed_head(&self) -> bool {
        true
    }
    fn dequantize(&self, q: &WgpuQuant) -> Result<WgpuStorage> {
        match &q.repr {
            QuantRepr::Dense(w) => {
                let out = self.alloc("dequantize", w.len)?;
                self.ew_flat("scale", Some(w.b()), None, out.b(), w.len, 1.0)?;
                Ok(out)
            }
            QuantRepr::Packed { .. } => self.decode_rows(q, None),
        }
    }
    fn sync(&self) -> Result<()> {
        self.ctx.wait()
    }
    fn memory(&self) -> MemoryStats {
        let (current, peak, _) = self.ctx.pool.stats();
        MemoryStats { current, peak }
    }

    fn add(&self, a: &WgpuStorage, b: &WgpuStorage) -> Result<WgpuStorage> {
        check_len("add", "rhs", b, a.len)?;
        let out = self.alloc("add", a.len)?;
        self.ew_flat("add", Some(a.b()), Some(b.b()), out.b(), a.len, 0.0)?;
        Ok(out)
    }
    fn add_assign(&self, dst: &mut WgpuStorage, src: &WgpuStorage) -> Result<()> {
        check_len("add_assign", "src", src, dst.len)?;
        self.ew_flat("add_assign", Some(src.b()), None, dst.b(), dst.len, 0.0)
    }
    fn mul(&self, a: &WgpuStorage, b: &WgpuStorage) -> Result<WgpuStorage> {
        check_len("mul", "rhs", b, a.len)?;
        let out = self.alloc("mul", a.len)?;
        self.ew_flat("mul", Some(a.b()), Some(b.b()), out.b(), a.len, 0.0)?;
        Ok(out)
    }
    fn scale(&self, a: &WgpuStorage, s: f32) -> Result<WgpuStorage> {
        let out = self.alloc("scale", a.len)?;
        self.ew_flat("scale", Some(a.b()), None, out.b(), a.len, s)?;
        Ok(out)
    }
    fn mul_rows(&self, x: &WgpuStorage, v: &WgpuStorage, rows: usize, c: usize) -> Result<WgpuStorage> {
        check_len("mul_rows", "x", x, rows * c)?;
        check_len("mul_rows", "v", v, c)?;
        let out = self.alloc("mul_rows", x.len)?;
        self.ew("mul_rows", x.b().into(), v.b().into(), out.b().into(), x.len, c.max(1), 0.0, rows)?;
        Ok(out)
    }
    fn mul_rows_backward_v(&self, dy: &WgpuStorage, x: &WgpuStorage, rows: usize, c: usize) -> Result<WgpuStorage> {
        check_len("mul_rows_backward_v", "dy", dy, rows * c)?;
        check_len("mul_rows_backward_v", "x", x, rows * c)?;
        let out = self.alloc("mul_rows_backward_v", c)?;
        self.ew("mul_rows_backward_v", dy.b().into(), x.b().into(), out.b().into(), c, c, 0.0, rows)?;
        Ok(out)
    }

    fn matmul(
        &self,
        a: &WgpuStorage,
        b: &WgpuStorage,
        bias: Option<&WgpuStorage>,
        d: MatmulDims,
    ) -> Result<WgpuStorage> {
        let need_a = if d.batch == 0 { 0 } else { (d.batch - 1) * d.a_stride + d.m * d.k };
        let need_b = if d.batch == 0 { 0 } else { (d.batch - 1) * d.b_stride + d.k * d.n };
        if a.len < need_a || b.len < need_b {
            return Err(bad("matmul", format!("{d:?} needs a >= {need_a}, b >= {need_b}; got {}, {}", a.len, b.len)));
        }
        if let Some(bias) = bias {
            check_len("matmul", "bias", bias, d.n)?;
        }
        let out = self.alloc("matmul", d.batch * d.m * d.n)?;
        if d.k == 0 {
            self.fill_bias(&out, bias, d.batch * d.m, d.n)?;
            return Ok(out);
        }
        // Cooperative matrices (f16 inputs) for products of 16 rows or more: the bias gradient, the
        // one backward use of `matmul` (a (1, N) row of ones times dout), and one-token decoding
        // stay in f32, where a 16-row tile would also be mostly padding.
        let coop = d.m >= 16;
        if d.trans_b && d.batch == 1 && !self.fits(b.len) {
            // A linear layer over a weight larger than one binding (the logits of a fully tuned
            // head): one launch per window of weight rows, each filling its columns of C. With a
            // bias, windows are a multiple of the offset alignment in rows, so the bias window
            // starts aligned; else of 4 (vec4 loads stay aligned when K is).
            let mult = if bias.is_some() { (self.ctx.binding_align() / 4) as usize } else { 4 };
            for (n0, nn) in self.row_windows("matmul", d.n, d.k, mult)? {
                let (wb, rel) = self.window(b.b(), n0 * d.k, nn * d.k);
                let bw = bias.map(|x| span(x.b(), n0, nn));
                let dd = MatmulDims { n: nn, ..d };
                let lds = Lds::contiguous(&d);
                self.matmul_view(out.b().into(), a.b().into(), wb, bw, dd, (0, rel, n0), lds, d.m * d.n, false, coop)?;
            }
            return Ok(out);
        }
        let bias = bias.map(|x| Buf::from(x.b()));
        self.matmul_view(
            out.b().into(),
            a.b().into(),
            b.b().into(),
            bias,
            d,
            (0, 0, 0),
            Lds::contiguous(&d),
            d.m * d.n,
            false,
            coop,
        )?;
        Ok(out)
    }
    fn matmul_backward(
        &self,
        dc: &WgpuStorage,
        a: &WgpuStorage,
        b: &WgpuStorage,
        d: MatmulDims,
        need: (bool, bool, bool),
    ) -> Result<(Option<WgpuStorage>, Option<WgpuStorage>, Option<WgpuStorage>)> {
        check_len("matmul_backward", "dc", dc, d.batch * d.m * d.n)?;
        let (m, n, k) = (d.m, d.n, d.k);
        let da = if need.0 {
            let da = self.zeroed("matmul_backward", a.len)?;
            let dd = if !d.trans_a {
                // dA (M, K) = dC (M, N) · op(B)ᵀ
                MatmulDims {
                    batch: d.batch,
                    m,
                    n: k,
                    k: n,
                    trans_a: false,
                    trans_b: !d.trans_b,
                    a_stride: m * n,
                    b_stride: d.b_stride,
                }
            } else {
                // dA (K, M) = op(B) (K, N) · dCᵀ
                MatmulDims {
                    batch: d.batch,
                    m: k,
                    n: m,
                    k: n,
                    trans_a: d.trans_b,
                    trans_b: true,
                    a_stride: d.b_stride,
                    b_stride: m * n,
                }
            };
            let (x, y) = if !d.trans_a { (dc, b) } else { (b, dc) };
            if n > 0 {
                self.matmul_into(da.b(), x.b(), y.b(), None, dd, (0, 0, 0), d.a_stride, true)?;
            }
            Some(da)
        } else {
            None
        };
        let db = if need.1 {
            let db = self.zeroed("matmul_backward", b.len)?;
            let dd = if !d.trans_b {
                // dB (K, N) = op(A)ᵀ (K, M) · dC (M, N)
                MatmulDims {
                    batch: d.batch,
                    m: k,
                    n,
                    k: m,
                    trans_a: !d.trans_a,
                    trans_b: false,
                    a_stride: d.a_stride,
                    b_stride: m * n,
                }
            } else {
                // dB (N, K) = dCᵀ (N, M) · op(A) (M, K)
                MatmulDims {
                    batch: d.batch,
                    m: n,
                    n: k,
                    k: m,
                    trans_a: true,
                    trans_b: d.trans_a,
                    a_stride: m * n,
                    b_stride: d.a_stride,
                }
            };
            let (x, y) = if !d.trans_b { (a, dc) } else { (dc, a) };
            if m > 0 {
                self.matmul_into(db.b(), x.b(), y.b(), None, dd, (0, 0, 0), d.b_stride, true)?;
            }
            Some(db)
        } else {
            None
        };
        let dbias = if need.2 {
            let out = self.alloc("matmul_backward", n)?;
            let rows = d.batch * m;
            dispatch(
                &self.ctx,
                "reduce",
                "col_sum",
                &[],
                &[Bind::r(dc.b()), Bind::w(out.b())],
                &[u(rows), u(n), 0, 0],
                grid_1d(n.div_ceil(256)),
            )?;
            Some(out)
        } else {
            None
        };
        Ok((da, db, dbias))
    }
    fn quant_linear(
        &self,
        x: &WgpuStorage,
        w: &WgpuQuant,
        bias: Option<&WgpuStorage>,
        n: usize,
    ) -> Result<WgpuStorage> {
        check_len("quant_linear", "x", x, n * w.cols)?;
        if let Some(b) = bias {
            check_len("quant_linear", "bias", b, w.rows)?;
        }
        match &w.repr {
            QuantRepr::Dense(d) => self.matmul(x, d, bias, MatmulDims::linear(n, w.rows, w.cols)),
            QuantRepr::Packed { .. } => self.quant_matmul(x, w, bias, n, false),
        }
    }
    fn quant_linear_backward(&self, dy: &WgpuStorage, w: &WgpuQuant, n: usize) -> Result<WgpuStorage> {
        check_len("quant_linear_backward", "dy", dy, n * w.rows)?;
        match &w.repr {
            // dx (N, d_in) = dy (N, d_out) · W (d_out, d_in)
            QuantRepr::Dense(d) => self.matmul(dy, d, None, MatmulDims::new(n, w.cols, w.rows)),
            QuantRepr::Packed { .. } => self.quant_matmul(dy, w, None, n, true),
        }
    }
    fn row_norms(&self, w: &WgpuQuant, delta: Option<&WgpuStorage>, recip: bool) -> Result<WgpuStorage> {
        const OP: &str = "row_norms";
        let (rows, cols) = (w.rows, w.cols);
        if let Some(d) = delta {
            check_len(OP, "delta", d, rows * cols)?;
        }
        let out = self.alloc(OP, rows)?;
        if rows == 0 {
            return Ok(out);
        }
        let dummy = Buf::from(&self.ctx.dummy);
        // One piece of `n_rows` rows from row `r0`: delta (f32, up to 8x the packed bytes) bound in
        // windows of whole rows that fit one binding, a launch per window.
        let piece =
            |q: Buf, aux: Buf, format: DeviceFormat, params: [u32; 4], offset: f32, r0: usize, n_rows: usize| {
                for (row0, n) in self.row_windows(OP, n_rows, cols, 1)? {
                    let (db, delta_base) = match delta {
                        Some(d) => self.window(d.b(), (r0 + row0) * cols, n * cols),
                        None => (dummy, 0),
                    };
                    let groups = grid_1d(n);
                    dispatch(
                        &self.ctx,
                        OP,
                        "main",
                        &[("FORMAT", format as u32 as f64)],
                        &[Bind::r(q), Bind::r(aux), Bind::r(db), Bind::w(out.b())],
                        &[
                            u(n),
                            u(cols),
                            delta.is_some() as u32,
                            recip as u32,
                            params[0],
                            params[1],
                            params[2],
                            params[3],
                            offset.to_bits(),
                            u(row0),
                            u(row0 * cols),
                            u(delta_base),
                            u(r0 + row0),
                        ],
                        groups,
                    )?;
                }
                Ok::<(), Error>(())
            };
        match &w.repr {
            // A dense weight fits one binding (upload_quant splits larger ones into f32 pieces).
            QuantRepr::Dense(d) => piece(d.b().into(), dummy, DeviceFormat::F32, [u(4 * cols), 0, 0, 0], 0.0, 0, rows)?,
            QuantRepr::Packed { pieces, format, offset } => {
                for pc in pieces {
                    piece(pc.q.b().into(), pc.aux.b().into(), *format, pc.params, *offset, pc.r0, pc.rows)?;
                }
            }
        }
        Ok(out)
    }

    fn rms_norm(
        &self,
        x: &WgpuStorage,
        w: &WgpuStorage,
        rows: usize,
        c: usize,
        eps: f32,
        add_one: bool,
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        check_len("rms_norm", "x", x, rows * c)?;
        check_len("rms_norm", "weight", w, c)?;
        let out = self.alloc("rms_norm", rows * c)?;
        let rstd = self.alloc("rms_norm", rows)?;
        dispatch(
            &self.ctx,
            "rms_norm",
            "main",
            &[],
            &[Bind::r(x.b()), Bind::r(w.b()), Bind::w(out.b()), Bind::w(rstd.b())],
            &[u(rows), u(c), eps.to_bits(), add_one as u32],
            grid_1d(rows),
        )?;
        Ok((out, rstd))
    }
    fn rms_norm_backward(
        &self,
        dout: &WgpuStorage,
        x: &WgpuStorage,
        w: &WgpuStorage,
        rstd: &WgpuStorage,
        rows: usize,
        c: usize,
        add_one: bool,
        need_dw: bool,
    ) -> Result<(WgpuStorage, Option<WgpuStorage>)> {
        check_len("rms_norm_backward", "dout", dout, rows * c)?;
        check_len("rms_norm_backward", "x", x, rows * c)?;
        check_len("rms_norm_backward", "rstd", rstd, rows)?;
        let params = [u(rows), u(c), add_one as u32, 0];
        let launch = |entry: &'static str, dst: &WgpuStorage, groups| {
            dispatch(
                &self.ctx,
                "rms_norm_backward",
                entry,
                &[],
                &[Bind::r(dout.b()), Bind::r(x.b()), Bind::r(w.b()), Bind::r(rstd.b()), Bind::w(dst.b())],
                &params,
                groups,
            )
        };
        let dx = self.alloc("rms_norm_backward", rows * c)?;
        launch("dx", &dx, grid_1d(rows))?;
        let dw = if need_dw {
            let dw = self.alloc("rms_norm_backward", c)?;
            launch("dw", &dw, grid_1d(c.div_ceil(256)))?;
            Some(dw)
        } else {
            None
        };
        Ok((dx, dw))
    }
    fn rope(
        &self,
        x: &WgpuStorage,
        positions: &[u32],
        cfg: &RopeConfig,
        b: usize,
        t: usize,
        nh: usize,
    ) -> Result<WgpuStorage> {
        self.rope_launch("rope", x, positions, cfg, b, t, nh, 1.0)
    }
    fn rope_backward(
        &self,
        dout: &WgpuStorage,
        positions: &[u32],
        cfg: &RopeConfig,
        b: usize,
        t: usize,
        nh: usize,
    ) -> Result<WgpuStorage> {
        self.rope_launch("rope_backward", dout, positions, cfg, b, t, nh, -1.0)
    }
    fn attention(
        &self,
        q: &WgpuStorage,
        k: &WgpuStorage,
        v: &WgpuStorage,
        segment_ids: Option<&[u32]>,
        p: &AttnParams,
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        const OP: &str = "attention";
        self.check_attn(OP, q, k, v, p)?;
        let seg = self.seg_buf(OP, segment_ids, p)?;
        let split = AttnSplit::new(p.d);
        let ranges = self.attn_ranges_buf(OP, attn_ranges(p, segment_ids, split.rows(), false))?;
        let out = self.alloc(OP, q.len)?;
        let lse = self.alloc(OP, p.b * p.h * p.t)?;
        dispatch(
            &self.ctx,
            OP,
            "main",
            &split.overrides(),
            &[
                Bind::r(q.b()),
                Bind::r(k.b()),
                Bind::r(v.b()),
                Bind::r(seg.as_ref().map_or(q.b(), |s| s.b())),
                Bind::r(ranges.b()),
                Bind::w(out.b()),
                Bind::w(lse.b()),
            ],
            &Self::attn_params(p, seg.is_some(), split, 0),
            grid_1d(p.b * split.blocks(p.t) * p.h),
        )?;
        Ok((out, lse))
    }
    fn attention_backward(
        &self,
        dout: &WgpuStorage,
        q: &WgpuStorage,
        k: &WgpuStorage,
        v: &WgpuStorage,
        out: &WgpuStorage,
        lse: &WgpuStorage,
        segment_ids: Option<&[u32]>,
        p: &AttnParams,
    ) -> Result<(WgpuStorage, WgpuStorage, WgpuStorage)> {
        const OP: &str = "attention_backward";
        self.check_attn(OP, q, k, v, p)?;
        check_len(OP, "dout", dout, q.len)?;
        check_len(OP, "out", out, q.len)?;
        check_len(OP, "lse", lse, p.b * p.h * p.t)?;
        let seg = self.seg_buf(OP, segment_ids, p)?;
        let split = AttnSplit::new(p.d);
        let mut ranges = attn_ranges(p, segment_ids, split.rows(), false);
        let koff = ranges.len();
        ranges.extend(attn_ranges(p, segment_ids, split.rows(), true));
        let ranges = self.attn_ranges_buf(OP, ranges)?;
        let delta = self.alloc(OP, p.b * p.h * p.t)?;
        let dq = self.alloc(OP, q.len)?;
        let dk = self.alloc(OP, k.len)?;
        let dv = self.alloc(OP, v.len)?;
        let params = Self::attn_params(p, seg.is_some(), split, koff);
        let sb = seg.as_ref().map_or(q.b(), |s| s.b());
        let launch = |entry: &'static str, g0: &WgpuStorage, g1: &WgpuStorage, heads: usize| {
            dispatch(
                &self.ctx,
                OP,
                entry,
                &split.overrides(),
                &[
                    Bind::r(q.b()),
                    Bind::r(k.b()),
                    Bind::r(v.b()),
                    Bind::r(dout.b()),
                    Bind::r(lse.b()),
                    Bind::r(sb),
                    Bind::r(ranges.b()),
                    Bind::w(delta.b()),
                    Bind::w(g0.b()),
                    Bind::w(g1.b()),
                ],
                &params,
                grid_1d(p.b * split.blocks(p.t) * heads),
            )
        };
        launch("dq", &dq, out, p.h)?;
        launch("dkv", &dk, &dv, p.kv_heads)?;
        Ok((dq, dk, dv))
    }
    fn glu(&self, gate: &WgpuStorage, up: &WgpuStorage, gelu: bool) -> Result<WgpuStorage> {
        check_len("glu", "up", up, gate.len)?;
        let out = self.alloc("glu", gate.len)?;
        dispatch(
            &self.ctx,
            "glu",
            "main",
            &[("GELU", gelu as u32 as f64)],
            &[Bind::r(gate.b()), Bind::r(up.b()), Bind::w(out.b())],
            &[u(gate.len)],
            grid_1d(gate.len.div_ceil(256)),
        )?;
        Ok(out)
    }
    fn glu_backward(
        &self,
        dout: &WgpuStorage,
        gate: &WgpuStorage,
        up: &WgpuStorage,
        gelu: bool,
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        check_len("glu_backward", "up", up, gate.len)?;
        check_len("glu_backward", "dout", dout, gate.len)?;
        let dg = self.alloc("glu_backward", gate.len)?;
        let du = self.alloc("glu_backward", gate.len)?;
        dispatch(
            &self.ctx,
            "glu_backward",
            "main",
            &[("GELU", gelu as u32 as f64)],
            &[Bind::r(dout.b()), Bind::r(gate.b()), Bind::r(up.b()), Bind::w(dg.b()), Bind::w(du.b())],
            &[u(gate.len)],
            grid_1d(gate.len.div_ceil(256)),
        )?;
        Ok((dg, du))
    }
    fn dropout(&self, x: &WgpuStorage, p: f32, seed: u64, offset: u64) -> Result<WgpuStorage> {
        self.dropout_launch(x, p, seed, offset)
    }
    fn dropout_backward(&self, dout: &WgpuStorage, p: f32, seed: u64, offset: u64) -> Result<WgpuStorage> {
        self.dropout_launch(dout, p, seed, offset)
    }

    fn embedding(&self, ids: &[u32], table: &WgpuStorage, c: usize) -> Result<WgpuStorage> {
        if c == 0 || !table.len.is_multiple_of(c) {
            return Err(bad("embedding", format!("table of {} elements is not (V, {c})", table.len)));
        }
        let v = table.len / c;
        if let Some(&bad_id) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(Error::IndexOutOfRange { op: "embedding", index: bad_id as usize, size: v });
        }
        let out = self.alloc("embedding", ids.len() * c)?;
        if ids.is_empty() {
            return Ok(out);
        }
        let idb = self.upload_words("embedding", ids)?;
        // A table larger than one binding is read one window of rows per launch.
        for (r0, rows) in self.row_windows("embedding", v, c, 1)? {
            if !ids.iter().any(|&i| (i as usize).wrapping_sub(r0) < rows) {
                continue;
            }
            let (tb, base) = self.window(table.b(), r0 * c, rows * c);
            dispatch(
                &self.ctx,
                "embedding",
                "main",
                &[],
                &[Bind::r(tb), Bind::r(idb.b()), Bind::w(out.b())],
                &[u(ids.len() * c), u(c), u(r0), u(rows), u(base)],
                grid_1d((ids.len() * c).div_ceil(256)),
            )?;
        }
        Ok(out)
    }
    fn embedding_quant(&self, ids: &[u32], table: &WgpuQuant) -> Result<WgpuStorage> {
        match &table.repr {
            QuantRepr::Dense(d) => self.embedding(ids, d, table.cols),
            QuantRepr::Packed { .. } => {
                if let Some(&bad_id) = ids.iter().find(|&&i| i as usize >= table.rows) {
                    return Err(Error::IndexOutOfRange { op: "embedding", index: bad_id as usize, size: table.rows });
                }
                self.decode_rows(table, Some(ids))
            }
        }
    }
    fn embedding_backward(&self, dout: &WgpuStorage, ids: &[u32], v: usize, c: usize) -> Result<WgpuStorage> {
        check_len("embedding_backward", "dout", dout, ids.len() * c)?;
        if let Some(&bad_id) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(Error::IndexOutOfRange { op: "embedding_backward", index: bad_id as usize, size: v });
        }
        let dt = self.zeroed("embedding_backward", v * c)?;
        if ids.is_empty() || c == 0 {
            return Ok(dt);
        }
        // CSR of positions grouped by id, in position order within an id (a stable sort), so the
        // sums run in the same order as the spec's loop.
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by_key(|&i| ids[i as usize]);
        let mut uniq = Vec::new();
        let mut start = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            if uniq.last() != Some(&ids[i as usize]) {
                uniq.push(ids[i as usize]);
                start.push(k as u32);
            }
        }
        start.push(order.len() as u32);
        // A table larger than one binding is written one window of rows per launch, each given
        // the CSR of its own ids (rows relative to the window).
        for (r0, rows) in self.row_windows("embedding_backward", v, c, 1)? {
            let lo = uniq.partition_point(|&i| (i as usize) < r0);
            let hi = uniq.partition_point(|&i| (i as usize) < r0 + rows);
            if lo == hi {
                continue;
            }
            let nu = hi - lo;
            // start[] of the window's ids, re-based on its first position, then their positions.
            let s0 = start[lo];
            let meta: Vec<u32> = uniq[lo..hi]
                .iter()
                .map(|&i| i - r0 as u32)
                .chain(start[lo..=hi].iter().map(|&k| k - s0))
                .chain(order[s0 as usize..start[hi] as usize].iter().copied())
                .collect();
            let mb = self.upload_words("embedding_backward", &meta)?;
            let (db, base) = self.window(dt.b(), r0 * c, rows * c);
            dispatch(
                &self.ctx,
                "embedding_backward",
                "main",
                &[],
                &[Bind::r(dout.b()), Bind::r(mb.b()), Bind::w(db)],
                &[u(nu), u(c), u(base), 0],
                grid_1d((nu * c).div_ceil(256)),
            )?;
        }
        Ok(dt)
    }
    fn copy_into(
        &self,
        dst: &mut WgpuStorage,
        dst_at: usize,
        src: &WgpuStorage,
        src_at: usize,
        n: usize,
    ) -> Result<()> {
        let fits = |at: usize, len: usize| at.checked_add(n).is_some_and(|e| e <= len);
        if !fits(dst_at, dst.len) || !fits(src_at, src.len) {
            return Err(bad(
                "copy_into",
                format!("{n} elements from {src_at} of {} into {dst_at} of {}", src.len, dst.len),
            ));
        }
        if n > 0 {
            let (s, d) = (src.b(), dst.b());
            self.ctx.record(|enc| enc.copy_buffer_to_buffer(s, src_at as u64 * 4, d, dst_at as u64 * 4, n as u64 * 4));
        }
        Ok(())
    }
    /// attention_decode.wgsl over f32 caches, or f16 pairs (`F16KV`): both bound as u32 words.
    fn attention_decode(
        &self,
        q: &WgpuStorage,
        k: &WgpuStorage,
        v: &WgpuStorage,
        p: &crate::backend::cpu::attention_decode::DecodeParams,
        f16: bool,
    ) -> Result<WgpuStorage> {
        const OP: &str = "attention_decode";
        // Cache lengths in f32 elements: an f16 cache of N words holds 2N values.
        let f = if f16 { 2 } else { 1 };
        crate::backend::cpu::attention_decode::check_decode(OP, q.len, k.len * f, v.len * f, p)?;
        if p.d > ATTN_DMAX {
            return Err(bad(OP, format!("head dim {} > {ATTN_DMAX} (attention_decode.wgsl)", p.d)));
        }
        let out = self.alloc(OP, q.len)?;
        dispatch(
            &self.ctx,
            OP,
            "main",
            &[("F16KV", f16 as u32 as f64)],
            &[Bind::r(q.b()), Bind::r(k.b()), Bind::r(v.b()), Bind::w(out.b())],
            &[
                u(p.tq),
                u(p.s),
                u(p.h),
                u(p.kv_heads),
                u(p.d),
                p.scale.to_bits(),
                p.window.map_or(u32::MAX, |w| w.min(u32::MAX as usize - 1) as u32),
                p.softcap.unwrap_or(0.0).to_bits(),
            ],
            grid_1d(p.tq * p.h),
        )?;
        Ok(out)
    }
    fn kv_cache_f16(&self) -> bool {
        self.ctx.kv_f16
    }
    fn max_tensor_bytes(&self) -> Option<u64> {
        Some(self.ctx.max_binding())
    }
    fn pack_f16_into(&self, dst: &mut WgpuStorage, dst_word: usize, src: &WgpuStorage, n: usize) -> Result<()> {
        const OP: &str = "pack_f16_into";
        if !n.is_multiple_of(2) || n > src.len || dst_word.checked_add(n / 2).is_none_or(|e| e > dst.len) {
            return Err(bad(OP, format!("{n} f32 of {} into words {dst_word}.. of {}", src.len, dst.len)));
        }
        let words = n / 2;
        dispatch(
            &self.ctx,
            "attention_decode",
            "pack_f16",
            &[],
            &[Bind::r(src.b()), Bind::w(dst.b())],
            &[u(words), u(dst_word), 0, 0],
            grid_1d(words.div_ceil(256)),
        )
    }
    fn linear_cross_entropy(
        &self,
        h: &WgpuStorage,
        w: &WgpuStorage,
        targets: &[i32],
        n: usize,
        c: usize,
        v: usize,
        softcap: Option<f32>,
        grad_scale: Option<f64>,
        need_dw: bool,
    ) -> Result<(CeStats, Option<WgpuStorage>, Option<WgpuStorage>)> {
        check_len("linear_cross_entropy", "w", w, v * c)?;
        self.cross_entropy(h, Head::Dense(w), targets, n, c, v, softcap, grad_scale, need_dw)
    }
    fn linear_cross_entropy_frozen(
        &self,
        h: &WgpuStorage,
        w: &WgpuQuant,
        targets: &[i32],
        n: usize,
        c: usize,
        v: usize,
        softcap: Option<f32>,
        grad_scale: Option<f64>,
    ) -> Result<(CeStats, Option<WgpuStorage>)> {
        if (w.rows, w.cols) != (v, c) {
            return Err(bad("linear_cross_entropy", format!("head is {}x{}, expected {v}x{c}", w.rows, w.cols)));
        }
        let head = match &w.repr {
            QuantRepr::Dense(d) => Head::Dense(d),
            QuantRepr::Packed { .. } => Head::Packed(w),
        };
        let (stats, dh, _) = self.cross_entropy(h, head, targets, n, c, v, softcap, grad_scale, false)?;
        Ok((stats, dh))
    }

    fn adamw_step(
        &self,
        param: &mut WgpuStorage,
        grad: &WgpuStorage,
        m: &mut WgpuStorage,
        v: &mut WgpuStorage,
        p: &AdamWParams,
    ) -> Result<()> {
        check_len("adamw_step", "grad", grad, param.len)?;
        check_len("adamw_step", "m", m, param.len)?;
        check_len("adamw_step", "v", v, param.len)?;
        if p.step == 0 {
            return Err(bad("adamw_step", "step is 1-based".into()));
        }
        let t = p.step.min(i32::MAX as u64) as i32;
        let decay = 1.0 - p.lr * p.weight_decay;
        let step_size = p.lr / (1.0 - p.beta1.powi(t));
        let bc2_sqrt = (1.0 - p.beta2.powi(t)).sqrt();
        let f = |x: f64| (x as f32).to_bits();
        // In windows of one binding for a tensor larger than one (a fully tuned embedding).
        for (e0, len) in self.flat_windows(param.len) {
            dispatch(
                &self.ctx,
                "adamw",
                "main",
                &[],
                &[
                    Bind::r(span(grad.b(), e0, len)),
                    Bind::w(span(param.b(), e0, len)),
                    Bind::w(span(m.b(), e0, len)),
                    Bind::w(span(v.b(), e0, len)),
                ],
                &[
                    u(len),
                    f(decay),
                    f(step_size),
                    f(bc2_sqrt),
                    f(p.eps),
                    f(p.beta1),
                    f(1.0 - p.beta1),
                    f(p.beta2),
                    f(1.0 - p.beta2),
                ],
                grid_1d(len.div_ceil(256)),
            )?;
        }
        Ok(())
    }
    fn grad_norm_sq(&self, grads: &[&WgpuStorage]) -> Result<f64> {
        // One partial per CHUNK elements of each window (a tensor larger than one binding is
        // reduced in windows; the host sums every partial in f64).
        let windows: Vec<(&WgpuStorage, usize, usize)> =
            grads.iter().flat_map(|g| self.flat_windows(g.len).map(move |(e0, n)| (*g, e0, n))).collect();
        let total: usize = windows.iter().map(|w| w.2.div_ceil(SUM_SQ_CHUNK)).sum();
        if total == 0 {
            return Ok(0.0);
        }
        let parts = self.alloc("grad_norm_sq", total)?;
        let mut off = 0;
        for (g, e0, n) in windows {
            let groups = n.div_ceil(SUM_SQ_CHUNK);
            if groups == 0 {
                continue;
            }
            dispatch(
                &self.ctx,
                "reduce",
                "sum_sq",
                &[],
                &[Bind::r(span(g.b(), e0, n)), Bind::w(parts.b())],
                &[u(n), 0, u(off), 0],
                grid_1d(groups),
            )?;
            off += groups;
        }
        Ok(self.download(&parts)?.iter().map(|&x| x as f64).sum())
    }
    fn scale_in_place(&self, s: &mut WgpuStorage, k: f32) -> Result<()> {
        self.ew_flat("scale_in_place", None, None, s.b(), s.len, k)
    }
    fn scale_by_in_place(&self, s: &mut WgpuStorage, k: &WgpuStorage) -> Result<()> {
        check_len("scale_by_in_place", "k", k, 1)?;
        let dummy = Buf::from(&self.ctx.dummy);
        for (e0, len) in self.flat_windows(s.len) {
            self.ew("scale_by_in_place", dummy, span(k.b(), 0, 1), span(s.b(), e0, len), len, 1, 0.0, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible (i, j) lies in the ranges of i's block (keys) and of j's block (queries), for
    /// causal / non-causal, windows 0, 1, 3, 40, none, segment runs and interleaved ids, and block
    /// sizes 8 and 16 with T not a multiple; where the rule is a band the causal range is tight
    /// (no key past the block's last query).
    #[test]
    fn attention_ranges_cover_every_visible_pair() {
        let mut checked = 0;
        for t in [1usize, 5, 16, 17, 37] {
            for causal in [true, false] {
                for window in [None, Some(0), Some(1), Some(3), Some(40)] {
                    for seg_kind in 0..3 {
                        let p =
                            AttnParams { b: 2, t, h: 1, kv_heads: 1, d: 4, scale: 1.0, causal, window, softcap: None };
                        let seg: Vec<u32> = (0..2 * t)
                            .map(|i| match seg_kind {
                                1 => ((i % t) / 6) as u32 + 10 * (i / t) as u32,
                                _ => ((i % t) * 5 % 3) as u32,
                            })
                            .collect();
                        let seg = (seg_kind > 0).then_some(&seg[..]);
                        for rows in [8usize, 16] {
                            let qr = attn_ranges(&p, seg, rows, false);
                            let kr = attn_ranges(&p, seg, rows, true);
                            let nb = t.div_ceil(rows);
                            assert_eq!(qr.len(), 2 * 2 * nb);
                            for bb in 0..2 {
                                for i in 0..t {
                                    let (lo, hi) = (qr[(bb * nb + i / rows) * 2], qr[(bb * nb + i / rows) * 2 + 1]);
                                    if causal && seg.is_none() && window != Some(0) {
                                        assert_eq!(hi as usize, ((i / rows + 1) * rows).min(t), "{p:?}");
                                    }
                                    for j in 0..t {
                                        if !p.visible(i, j, seg.map(|s| &s[bb * t..(bb + 1) * t])) {
                                            continue;
                                        }
                                        let (klo, khi) =
                                            (kr[(bb * nb + j / rows) * 2], kr[(bb * nb + j / rows) * 2 + 1]);
                                        assert!(
                                            (lo..hi).contains(&(j as u32)),
                                            "{p:?} {seg:?} i {i} j {j} keys {lo}..{hi}"
                                        );
                                        assert!(
                                            (klo..khi).contains(&(i as u32)),
                                            "{p:?} {seg:?} i {i} j {j} queries {klo}..{khi}"
                                        );
                                        checked += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
