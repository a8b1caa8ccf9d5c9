//! int8: row-wise absmax int8 weight storage (the weight format of LLM.int8(), without its
//! outlier decomposition, which concerns activations). Spec: this file   Test: tests/quant_nf4.rs (int8 section)
//!
//!   scale_r = absmax_r / 127,   q[r, c] = clamp(round(w[r, c] / scale_r), -127, 127),   w' = q * scale_r
//! Dettmers et al. 2022, https://arxiv.org/abs/2208.07339 (vector-wise quantization).
//! Contract easy to miss: an all-zero row has scale 0 and decodes to zeros; round() is half away
//! from zero (Rust `f32::round`), so |w - w'| <= scale_r / 2 (up to f32 rounding of the division).

use crate::error::{Error, Result};
use crate::quant::DequantRows;

#[derive(Clone, Debug, PartialEq)]
pub struct Int8Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<i8>,    // (rows, cols)
    pub scales: Vec<f32>, // (rows)
}

impl Int8Matrix {
    /// Quantizes a row-major (rows, cols) f32 weight. Non-finite values are an error.
    pub fn quantize(src: &[f32], rows: usize, cols: usize) -> Result<Self> {
        let err = |msg: String| Error::Quant { format: "int8".into(), msg };
        let n = rows.checked_mul(cols).ok_or_else(|| err("rows * cols overflows".into()))?;
        if src.len() != n {
            return Err(err(format!("src has {} values, expected {rows} x {cols} = {n}", src.len())));
        }
        if let Some(i) = src.iter().position(|v| !v.is_finite()) {
            return Err(err(format!("non-finite value {} at index {i}", src[i])));
        }
        let mut data = Vec::with_capacity(n);
        let mut scales = Vec::with_capacity(rows);
        for r in 0..rows {
            let row = &src[r * cols..(r + 1) * cols]; // (cols)
            let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = absmax / 127.0;
            scales.push(scale);
            for &w in row {
                let q = if scale == 0.0 { 0.0 } else { (w / scale).round().clamp(-127.0, 127.0) };
                data.push(q as i8);
            }
        }
        Ok(Int8Matrix { rows, cols, data, scales })
    }

    /// Decodes the whole matrix. // out: (rows, cols)
    pub fn dequantize(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.rows * self.cols, "int8 dequantize: out length");
        for r in 0..self.rows {
            self.dequantize_row(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
    }
}

impl DequantRows for Int8Matrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let s = self.scales[r];
        for (o, &q) in out.iter_mut().zip(&self.data[r * self.cols..(r + 1) * self.cols]) {
            *o = q as f32 * s;
        }
    }
    fn format_name(&self) -> String {
        "int8".into()
    }
    fn device_blocks(&self) -> Option<crate::quant::DeviceBlocks> {
        Some(crate::quant::DeviceBlocks {
            format: crate::quant::DeviceFormat::Int8,
            bytes: self.data.iter().map(|&q| q as u8).collect(),
            aux: self.scales.clone(),
            params: [0; 4],
            offset: 0.0,
        })
    }
    fn storage_bytes(&self) -> usize {
        self.data.len() + self.scales.len() * 4
    }
}
