//! One test binary for all ops: each module checks one op's CPU spec against finite differences
//! (in f64) and any faster path against the spec.

#[path = "../common/mod.rs"]
mod common;

mod adamw;
mod attention;
mod attention_decode;
mod dropout;
mod embedding;
mod geglu;
mod linear_cross_entropy;
mod matmul;
mod quant_linear;
mod rms_norm;
mod rope;
mod swiglu;
