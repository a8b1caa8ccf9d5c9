//! What a fine-tune produces: PEFT adapters (`peft`); merged models as Hugging Face directories
//! (`hf_dir`) or GGUF files (`gguf_out`), llama.cpp GGUF LoRA adapters, Ollama Modelfiles
//! (`modelfile`), all behind one entry point, [`export`] (`run`).

pub mod gguf_out;
pub mod hf_dir;
pub mod merge;
pub mod modelfile;
pub mod peft;
pub mod run;
pub mod tokenizer_json;

pub use run::{export, ExportKind, ExportOptions, ExportReport};
