//! TEMPORARY (replaced by the h-nf4 branch).
use crate::quant::DequantRows;
pub fn quant_linear_forward(out: &mut [f32], x: &[f32], w: &dyn DequantRows, bias: Option<&[f32]>) {
    let (r, c) = (w.rows(), w.cols());
    let n = x.len() / c;
    let mut row = vec![0.0; c];
    for j in 0..r {
        w.dequantize_row(j, &mut row);
        for i in 0..n {
            out[i * r + j] =
                x[i * c..(i + 1) * c].iter().zip(&row).map(|(a, b)| a * b).sum::<f32>() + bias.map_or(0.0, |b| b[j]);
        }
    }
}
pub fn quant_linear_backward(dx: &mut [f32], dy: &[f32], w: &dyn DequantRows) {
    let (r, c) = (w.rows(), w.cols());
    let n = dy.len() / r;
    let mut row = vec![0.0; c];
    for j in 0..r {
        w.dequantize_row(j, &mut row);
        for i in 0..n {
            for k in 0..c {
                dx[i * c + k] += dy[i * r + j] * row[k];
            }
        }
    }
}
