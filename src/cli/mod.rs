//! The `loraforge` command line. Each subcommand lives in its own file; `run` parses arguments,
//! runs one, and turns an error into a message and a non-zero exit code (never a panic).

mod chat;
mod info;
mod logits;
pub mod session;
mod train;

#[cfg(feature = "wgpu")]
use crate::backend::wgpu::WgpuBackend;
use crate::backend::{resolve_device, CpuBackend, DeviceKind};
use crate::error::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "loraforge",
    version,
    about = "Fine-tune large language models on your own machine: LoRA/QLoRA with no runtime beyond the GPU driver."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fine-tune a model as a LLaMA-Factory-style YAML (or JSON) config says. Keys can be
    /// overridden after the file as `key=value` or `--key value`.
    #[command(allow_hyphen_values = true)]
    Train {
        /// The config file (.yaml, .yml or .json).
        config: PathBuf,
        /// Overrides: `learning_rate=1e-4`, `--max_steps 50`, `--output_dir=out`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
    /// Export a model (base + LoRA adapters merged) as a Hugging Face safetensors directory or a
    /// GGUF file (with an Ollama Modelfile), or an adapter as a llama.cpp GGUF LoRA adapter, as
    /// a LLaMA-Factory-style export YAML says (`export_dir`, `export_format`, `export_quant`, ...).
    #[command(allow_hyphen_values = true)]
    Export {
        config: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
    /// Print the memory plan of a training config (weights, adapters, gradients, optimizer,
    /// activations, loss) against what the device has, without training.
    #[command(allow_hyphen_values = true)]
    Plan {
        config: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
    /// Chat with a model using its own chat template (or a built-in one), streaming the reply.
    /// Interactive on stdin unless --prompt is given.
    Chat {
        /// A GGUF file or a Hugging Face model directory (config.json + safetensors + tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory to apply.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// A built-in template (llama3, llama2, mistral, qwen, chatml, gemma, gemma3, phi, alpaca, vicuna,
        /// smollm2, default, empty) instead of the model's own.
        #[arg(long)]
        template: Option<String>,
        /// System message.
        #[arg(long)]
        system: Option<String>,
        /// One message: answer it and exit.
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// 0 = off.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// 1 = off.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// 1 = off; > 1 discourages repeating tokens already seen (HF semantics).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// auto | cpu | wgpu | cuda
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Architecture, parameter count, tensor types, context length, chat template, and the memory a
    /// model needs to run and to LoRA-train.
    Info {
        /// A GGUF file or a Hugging Face model directory.
        path: Option<PathBuf>,
        /// List the compute devices loraforge can use here, with their features and limits.
        #[arg(long)]
        devices: bool,
        /// Sequence length for the memory estimates.
        #[arg(long, default_value_t = 2048)]
        seq: usize,
        /// LoRA rank for the training estimate (all 7 linear projections targeted).
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// auto | cpu | wgpu | cuda
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Logits of a model on a prompts file, written as `reflogits/1` JSON (token ids, last-position
    /// logits, per-position top-5, the chat rendering) to compare with any other implementation.
    Logits {
        /// A GGUF file or a Hugging Face model directory (config.json + safetensors + tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) to apply.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// `{"prompts": [{"name", "text", "add_special_tokens"?}], "conversation"?: [{"role", "content"}]}`
        #[arg(long)]
        prompts: PathBuf,
        /// Output JSON path.
        #[arg(long)]
        out: PathBuf,
        /// A built-in chat template name (llama3, chatml, gemma, ...) instead of the model's own.
        #[arg(long)]
        template: Option<String>,
        /// auto | cpu | wgpu | cuda
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn unsupported_device(kind: DeviceKind) -> crate::Error {
    crate::Error::msg(format!("device {kind:?}: this backend is not available in this build; use --device cpu or wgpu"))
}

/// Parses `--device`, resolving `auto` to what can run here.
pub fn device(s: &str) -> Result<DeviceKind> {
    resolve_device(s.parse()?)
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Train { config, overrides } => train::train(&config, &overrides),
        Command::Plan { config, overrides } => train::plan(&config, &overrides),
        Command::Export { config, overrides } => train::export(&config, &overrides),
        Command::Info { path, devices, seq, rank, device: d } => {
            let dev = device(&d)?;
            if devices {
                info::devices();
            }
            match path {
                Some(p) => info::model(&p, seq, rank, dev),
                None if devices => Ok(()),
                None => Err(crate::Error::msg("info: give a model path, or --devices")),
            }
        }
        Command::Logits { model, adapter, prompts, out, template, device: d } => {
            let (a, t) = (adapter.as_deref(), template.as_deref());
            match device(&d)? {
                DeviceKind::Cpu | DeviceKind::Auto => logits::run(&CpuBackend::new(), &model, a, &prompts, &out, t),
                #[cfg(feature = "wgpu")]
                DeviceKind::Wgpu => logits::run(&WgpuBackend::new()?, &model, a, &prompts, &out, t),
                other => Err(unsupported_device(other)),
            }
        }
        Command::Chat {
            model,
            adapter,
            template,
            system,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
            device: d,
        } => {
            let kind = device(&d)?;
            let gen = crate::generate::GenerateConfig {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                seed,
                ..Default::default()
            };
            let a = chat::ChatArgs {
                model: &model,
                adapter: adapter.as_deref(),
                template: template.as_deref(),
                system: system.as_deref(),
                prompt: prompt.as_deref(),
                gen,
            };
            match kind {
                DeviceKind::Cpu | DeviceKind::Auto => chat::run(&CpuBackend::new(), a),
                #[cfg(feature = "wgpu")]
                DeviceKind::Wgpu => chat::run(&WgpuBackend::new()?, a),
                other => Err(unsupported_device(other)),
            }
        }
    }
}

/// The binary's entry point: exit code 0 on success, 1 with the message on error.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
