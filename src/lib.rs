//! loraforge: fine-tune large language models on your own machine.
//!
//! The numerical core, as one story:
//!
//! ```text
//! backend::cpu::<op>      the reference: plain loops over slices, one file per op, the spec every
//!                          GPU kernel is tested against (forward and backward)
//! backend::Backend         the device trait: buffers, transfers, sync, memory accounting, one
//!                          method per primitive; CpuBackend implements it (wgpu, cuda to come)
//! quant                    frozen weight formats: GGUF blocks, NF4, int8; DequantRows
//! io                       GGUF (read + write) and safetensors files
//! Tensor, Param            storage + shape + an optional tape variable
//! tape::Tape               records only ops whose inputs depend on a trainable parameter;
//!                          backward frees gradients as it goes; checkpointing recomputes layers
//! ops                      shape-checked ops on tensors, each with its backward rule
//! lora::LoraLinear         y = W₀x + s·B(A·dropout(x)), rsLoRA and DoRA; W₀ dense or quantized
//! model::block             a Llama-family decoder layer built from the ops
//! ```
//!
//! A LoRA step: build `LoraLinear`s over the frozen weights, run the forward on a `Tape`, end in
//! `ops::linear_cross_entropy`, call `tape.backward(&loss)`, and hand the `Grads` of each `Param`
//! to `train::AdamW`.

// Spec code indexes several arrays with one loop variable (out[r*c+i] = x[r*c+i] * w[i]); an
// index loop is the clearest form of such formulas, so clippy's iterator rewrite is off.
#![allow(clippy::needless_range_loop)]

pub mod backend;
pub mod cli;
pub mod data;
pub mod dtype;
pub mod error;
pub mod export;
pub mod generate;
pub mod io;
pub mod lora;
pub mod model;
pub mod ops;
pub mod quant;
pub mod rng;
pub mod shape;
pub mod tape;
pub mod tensor;
pub mod tokenizer;
pub mod train;

pub use backend::{Backend, CpuBackend};
pub use dtype::DType;
pub use error::{Context, Error, Result};
pub use shape::Shape;
pub use tape::{Grads, Tape};
pub use tensor::{Param, Tensor, VarId};

/// The CUDA backend module always exists, so other code never needs `#[cfg]`.
pub use backend::cuda_stub as cuda;
