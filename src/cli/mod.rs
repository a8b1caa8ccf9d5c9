//! The `loraforge` command line. Each subcommand lives in its own file; `run` parses arguments,
//! runs one, and turns an error into a message and a non-zero exit code (never a panic).

mod info;
mod logits;

use crate::backend::{resolve_device, DeviceKind};
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
    /// Architecture, parameter count, tensor types, context length, chat template, and the memory a
    /// model needs to run and to LoRA-train.
    Info {
        /// A GGUF file.
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
        /// A GGUF model file.
        #[arg(long)]
        model: PathBuf,
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

/// Parses `--device`, resolving `auto` to what can run here.
pub fn device(s: &str) -> Result<DeviceKind> {
    resolve_device(s.parse()?)
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
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
        Command::Logits { model, prompts, out, template, device: d } => {
            device(&d)?;
            logits::run(&model, &prompts, &out, template.as_deref())
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
