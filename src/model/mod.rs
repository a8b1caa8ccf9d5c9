//! Models. `block` is the Llama-family decoder layer built from the ops (the same code serves
//! llama, mistral, qwen2/3 and gemma variants through `BlockConfig`); `transformer` the whole
//! decoder-only model around it.

pub mod block;
pub mod transformer;

pub use block::{BlockConfig, DecoderLayer, FrozenStore, LayerInputs, Proj};
pub use transformer::{Batch, Transformer};
