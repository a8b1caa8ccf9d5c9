//! The CPU backend: THE reference. One file per op, each holding `<op>_forward` / `<op>_backward`
//! written as plain loops over slices (f64 accumulation where a reduction is long), generic over
//! `Real` so tests can run them in f64 against finite differences. Gradient outputs of every
//! `_backward` ACCUMULATE (+=): the caller zeroes them once.

pub mod real;

pub mod adamw;
pub mod attention;
pub mod attention_decode;
pub mod dropout;
pub mod embedding;
pub mod geglu;
pub mod linear_cross_entropy;
pub mod matmul;
pub mod quant_linear;
pub mod rms_norm;
pub mod rope;
pub mod row_norms;
pub mod swiglu;

pub use real::Real;
