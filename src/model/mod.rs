//! Models. `block` is the Llama-family decoder layer built from the ops (the same code serves
//! llama, mistral, qwen2/3 and gemma variants through `BlockConfig`); `transformer` the whole
//! decoder-only model around it; `config` the one config type; `load` reads model files.

pub mod block;
pub mod config;
pub mod hf;
pub mod load;
pub mod names;
pub mod presets;
pub mod trainable;
pub mod transformer;

pub use block::{BlockConfig, DecoderLayer, FrozenStore, LayerInputs, Proj};
pub use config::ModelConfig;
pub use hf::load_hf;
pub use load::{load_gguf, load_model, AdapterSpec, BaseQuant};
pub use transformer::{Batch, Transformer};
