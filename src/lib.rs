//! loraforge: fine-tune large language models on your own machine.
//!
//! The numerical core: `backend::cpu` is the reference implementation of every op; `quant` the
//! quantized weight formats; `io` GGUF and safetensors files.

pub mod backend;
pub mod dtype;
pub mod error;
pub mod io;
pub mod quant;
pub mod rng;
pub mod shape;

pub use dtype::DType;
pub use error::{Context, Error, Result};
pub use shape::Shape;
