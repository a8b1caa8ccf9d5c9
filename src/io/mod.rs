//! Model files: GGUF (read + write, written in-project) and safetensors.

pub mod gguf;
pub mod safetensors;
