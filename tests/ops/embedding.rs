//! embedding: forward copies rows exactly, backward scatter-adds (repeated ids accumulate),
//! finite differences in f64, the DequantRows path against the dense path, and id range asserts.

use crate::common::*;
use loraforge::backend::cpu::embedding::{embedding_backward, embedding_forward, embedding_forward_rows};
use loraforge::quant::{DenseRows, DequantRows};
use loraforge::rng::Rng;

/// (V, C, N) chosen to break blocked kernels: 1s, primes, C not a multiple of 4/8/64.
const SHAPES: [(usize, usize, usize); 4] = [(1, 1, 1), (5, 7, 11), (13, 67, 9), (3, 129, 17)];

fn rand_ids(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v) as u32).collect()
}

#[test]
fn embedding_forward_copies_rows() {
    let mut rng = Rng::new(41);
    for &(v, c, n) in &SHAPES {
        let table = rand_f32(&mut rng, v * c, -1.0, 1.0);
        let ids = rand_ids(&mut rng, n, v);
        let mut out = vec![f32::NAN; n * c];
        embedding_forward(&mut out, &ids, &table, c);
        for (k, &id) in ids.iter().enumerate() {
            let want = &table[id as usize * c..(id as usize + 1) * c];
            assert_close(&out[k * c..(k + 1) * c], want, Tol::EXACT, &format!("token {k} (id {id})"));
        }
    }
}

#[test]
fn embedding_backward_scatter_adds_repeated_ids() {
    // ids (2, 0, 2, 2): row 2 gets the sum of three gradient rows, row 0 one, row 1 nothing.
    let c = 3;
    let dout = [1.0f32, 2.0, 3.0, 10.0, 20.0, 30.0, 100.0, 200.0, 300.0, 0.5, 0.25, 0.125];
    let mut dtable = vec![1.0f32; 3 * c]; // non-zero start: the backward accumulates
    embedding_backward(&mut dtable, &dout, &[2, 0, 2, 2], c);
    let want = [11.0f32, 21.0, 31.0, 1.0, 1.0, 1.0, 102.5, 203.25, 304.125];
    assert_close(&dtable, &want, Tol::EXACT, "dtable");
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let mut rng = Rng::new(42);
    for &(v, c, n) in &SHAPES {
        let table = rand_f64(&mut rng, v * c, -1.0, 1.0);
        // Few distinct ids so repeats are certain in the larger shapes.
        let ids = rand_ids(&mut rng, n, v.min(4));
        let r = rand_f64(&mut rng, n * c, -1.0, 1.0);
        let mut dtable = vec![0.0; v * c];
        embedding_backward(&mut dtable, &r, &ids, c);
        let fd = finite_diff(&table, 1e-6, |t| {
            let mut out = vec![0.0; n * c];
            embedding_forward(&mut out, &ids, t, c);
            dot(&out, &r)
        });
        assert_close(&dtable, &fd, Tol::FD64, &format!("dtable v={v} c={c} n={n}"));
    }
}

/// A toy quantized table: int8 codes with one f32 scale per row, to exercise `dyn DequantRows`
/// with a table that is not plain f32.
struct RowScaledI8 {
    codes: Vec<i8>,
    scales: Vec<f32>,
    cols: usize,
}

impl DequantRows for RowScaledI8 {
    fn rows(&self) -> usize {
        self.scales.len()
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (o, &q) in out.iter_mut().zip(&self.codes[r * self.cols..(r + 1) * self.cols]) {
            *o = q as f32 * self.scales[r];
        }
    }
    fn format_name(&self) -> String {
        "test_i8".into()
    }
    fn storage_bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }
}

#[test]
fn embedding_forward_rows_matches_dense() {
    let mut rng = Rng::new(43);
    for &(v, c, n) in &SHAPES {
        let ids = rand_ids(&mut rng, n, v);
        // Dense f32 through the trait: identical to the slice path.
        let table = rand_f32(&mut rng, v * c, -1.0, 1.0);
        let (mut a, mut b) = (vec![f32::NAN; n * c], vec![f32::NAN; n * c]);
        embedding_forward(&mut a, &ids, &table, c);
        embedding_forward_rows(&mut b, &ids, &DenseRows { data: &table, rows: v, cols: c });
        assert_close(&b, &a, Tol::EXACT, &format!("dense v={v} c={c}"));
        // Quantized: equal to the forward over the dequantized table.
        let q = RowScaledI8 {
            codes: (0..v * c).map(|_| (rng.below(255) as i32 - 127) as i8).collect(),
            scales: rand_f32(&mut rng, v, 0.001, 0.1),
            cols: c,
        };
        let mut deq = vec![0.0f32; v * c];
        for r in 0..v {
            q.dequantize_row(r, &mut deq[r * c..(r + 1) * c]);
        }
        embedding_forward(&mut a, &ids, &deq, c);
        embedding_forward_rows(&mut b, &ids, &q);
        assert_close(&b, &a, Tol::EXACT, &format!("quantized v={v} c={c}"));
    }
}

#[test]
#[should_panic(expected = "out of range")]
fn embedding_forward_asserts_id_range() {
    let mut out = vec![0.0f32; 2];
    embedding_forward(&mut out, &[3], &[0.0f32; 6], 2); // V = 3
}

#[test]
#[should_panic(expected = "out of range")]
fn embedding_backward_asserts_id_range() {
    let mut dtable = vec![0.0f32; 6];
    embedding_backward(&mut dtable, &[1.0f32; 2], &[3], 2); // V = 3
}

#[test]
#[should_panic(expected = "out of range")]
fn embedding_forward_rows_asserts_id_range() {
    let table = [0.0f32; 6];
    let mut out = vec![0.0f32; 2];
    embedding_forward_rows(&mut out, &[7], &DenseRows { data: &table, rows: 3, cols: 2 });
}
