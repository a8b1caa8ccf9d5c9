//! What a fine-tune produces: PEFT adapters (`peft`), and later merged models and GGUF files.

pub mod peft;
