//! `loraforge train CONFIG.yaml`: the training configuration, read from LLaMA-Factory-style YAML (or JSON, same keys,
//! for the C ABI) into one typed struct, plus command-line overrides.
//! Spec: LLaMA-Factory `src/llamafactory/hparams/{model,data,finetuning,generating,training}_args.py` and HF
//! `transformers.TrainingArguments` (key names and defaults).   Test: tests/train_args.rs
//!
//! Contracts easy to miss:
//! - Every key is one of four kinds. A *field* of `TrainArgs` (YAML key = field name). An *ignored* key, meaningful
//!   only to PyTorch/distributed tooling (flash_attn, deepspeed, report_to, ...): accepted with a one-line note.
//!   An *unsupported* LLaMA-Factory feature (DPO, GaLore, ...): an error saying "`X` is not supported yet by
//!   loraforge", except that `false`/`null` (the feature switched off) is accepted with a note. Anything else is an
//!   error that suggests the nearest valid key by edit distance.
//! - Parsing accepts what HF's parser accepts: numbers written as strings ("5e-5"), ints for floats, booleans as
//!   true/false/yes/no/1/0, lists as YAML lists or comma strings ("q_proj,v_proj"). YAML `1e-4` is a float here
//!   (YAML 1.2), unlike PyYAML, which reads it as a string.
//! - `from_yaml_str` / `from_json_str` only parse; `validate()` does the cross-field checks; `load()` does both.
//!   Stages rm/ppo/dpo/kto parse (so a LLaMA-Factory YAML reads) but `validate()` rejects them.
//! - Defaults are LLaMA-Factory's, which are HF's where LLaMA-Factory does not override them. In particular
//!   `logging_steps` is HF's 500 (the LLaMA-Factory examples write 10: set it), and `do_train` defaults to true
//!   (HF: false) because `loraforge train` trains.

use crate::error::{Context, Error, Result};
use crate::train::schedule::LrSchedule;
use serde_json::{Map, Number, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

// ---------------------------------------------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------------------------------------------

/// Declares a string-valued enum: `FromStr` (exact names), `as_str`, `Display`, and the list of names for messages.
macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($var),+ }
        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(Error::msg(format!(
                        "unknown {} {:?}: expected one of {}", $what, s, $name::NAMES.join(", ")
                    ))),
                }
            }
        }
    };
}

str_enum!(
    /// LLaMA-Factory `stage`. loraforge trains `pt` (plain causal LM) and `sft` (loss on responses only).
    Stage, "stage" { Pt => "pt", Sft => "sft", Rm => "rm", Ppo => "ppo", Dpo => "dpo", Kto => "kto" }
);
str_enum!(
    /// What is trained: LoRA adapters, the last (or first) few layers, or every weight.
    FinetuningType, "finetuning_type" { Lora => "lora", Freeze => "freeze", Full => "full" }
);
str_enum!(
    /// HF `lr_scheduler_type`; formulas in src/train/schedule.rs.
    SchedulerType, "lr_scheduler_type" {
        Linear => "linear", Cosine => "cosine", CosineWithRestarts => "cosine_with_restarts",
        Polynomial => "polynomial", Constant => "constant", ConstantWithWarmup => "constant_with_warmup",
        InverseSqrt => "inverse_sqrt", CosineWithMinLr => "cosine_with_min_lr", WarmupStableDecay => "warmup_stable_decay",
    }
);
str_enum!(
    /// HF `eval_strategy`: when to run evaluation.
    EvalStrategy, "eval_strategy" { No => "no", Steps => "steps", Epoch => "epoch" }
);
str_enum!(
    /// HF `save_strategy`: when to write a checkpoint.
    SaveStrategy, "save_strategy" { No => "no", Steps => "steps", Epoch => "epoch" }
);
str_enum!(
    /// loraforge `device`: `auto` picks CUDA, then wgpu, then the CPU.
    DeviceChoice, "device" { Auto => "auto", Cpu => "cpu", Wgpu => "wgpu", Cuda => "cuda" }
);
str_enum!(
    /// loraforge `export_format`: merged safetensors (HF layout), merged GGUF, or a llama.cpp LoRA-adapter GGUF.
    ExportFormat, "export_format" { Safetensors => "safetensors", Gguf => "gguf", GgufAdapter => "gguf_adapter" }
);

/// `resume_from_checkpoint: true` (the newest `checkpoint-*` in output_dir) or a checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeFrom {
    Latest,
    Path(PathBuf),
}

// ---------------------------------------------------------------------------------------------------------------
// The struct
// ---------------------------------------------------------------------------------------------------------------

/// Every training, data, generation and export knob, named exactly as its YAML key. Defaults: see `Default`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainArgs {
    // === model ===
    /// GGUF file, HF model directory, or a fetched-model alias (`smollm2-135m`, `gemma3-270m`). Required.
    pub model_name_or_path: String,
    /// Adapters to load first (LoRA only). Several are merged in order; the last one keeps training unless
    /// `create_new_adapter`.
    pub adapter_name_or_path: Vec<String>,
    /// Chat template name; None = the model's own template (GGUF `tokenizer.chat_template` / tokenizer_config.json).
    pub template: Option<String>,
    /// QLoRA: quantize a dense base to 4 bits (NF4) or 8 bits on load. A GGUF base is trained as stored.
    pub quantization_bit: Option<u32>,
    /// Only bitsandbytes-style on-the-fly quantization exists here; other methods are noted and ignored.
    pub quantization_method: String,
    /// 4-bit data type. Only "nf4".
    pub quantization_type: String,
    /// Quantize the NF4 absmax scales too (QLoRA double quantization): ~0.4 bit/weight less memory.
    pub double_quantization: bool,
    /// Keep every activation instead of recomputing per layer: faster, much more memory.
    pub disable_gradient_checkpointing: bool,

    // === method ===
    pub stage: Stage,
    pub do_train: bool,
    pub do_eval: bool,
    pub do_predict: bool,
    pub finetuning_type: FinetuningType,
    /// LoRA rank r. Trainable scalars per target = r * (d_in + d_out). 8 is a good start; 16-64 for harder tasks.
    pub lora_rank: usize,
    /// Update scale numerator: delta = (alpha / r) B A. None (or 0) = 2 * lora_rank, as LLaMA-Factory.
    pub lora_alpha: Option<f64>,
    /// Dropout on the LoRA input branch. 0 = off (and cheaper).
    pub lora_dropout: f64,
    /// Modules that get adapters: ["all"] = every linear layer except the LM head, or names like q_proj, v_proj.
    pub lora_target: Vec<String>,
    /// Extra modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head).
    pub additional_target: Vec<String>,
    /// Scale by alpha / sqrt(r) instead of alpha / r (rank-stabilized LoRA).
    pub use_rslora: bool,
    /// DoRA: learn a per-output-column magnitude on top of LoRA's direction.
    pub use_dora: bool,
    /// PiSSA: initialize A, B from the principal singular vectors of W (W keeps the residual).
    pub pissa_init: bool,
    /// Fast-SVD iterations for PiSSA; -1 = exact SVD.
    pub pissa_iter: i64,
    /// LoRA+: learning rate of B = learning_rate * ratio (paper suggests 16).
    pub loraplus_lr_ratio: Option<f64>,
    /// LoRA+: learning rate for embedding-layer adapters.
    pub loraplus_lr_embedding: f64,
    /// Start a fresh adapter on top of `adapter_name_or_path` instead of continuing the last one.
    pub create_new_adapter: bool,
    /// Freeze tuning: train the last n layers (negative: the first |n|).
    pub freeze_trainable_layers: i64,
    /// Freeze tuning: modules trained inside those layers (["all"] = all of them).
    pub freeze_trainable_modules: Vec<String>,
    /// Freeze tuning: modules outside the layers also trained (e.g. embed_tokens).
    pub freeze_extra_modules: Vec<String>,

    // === dataset ===
    /// Dataset names from `dataset_dir/dataset_info.json` (or built-in demo datasets).
    pub dataset: Vec<String>,
    pub eval_dataset: Vec<String>,
    pub dataset_dir: String,
    /// Tokens per sample (prompt + response); longer samples are truncated. Memory and time grow with it.
    pub cutoff_len: usize,
    /// Keep at most this many samples per dataset (debugging).
    pub max_samples: Option<usize>,
    /// Concatenate samples up to cutoff_len (no padding waste). None = on for `pt`, off for `sft`.
    pub packing: Option<bool>,
    /// Packing without attention across sample boundaries (implies packing).
    pub neat_packing: bool,
    /// Also compute the loss on prompt tokens.
    pub train_on_prompt: bool,
    /// Loss on the last assistant turn only.
    pub mask_history: bool,
    /// Held-out fraction in [0, 1), or a sample count when > 1.
    pub val_size: f64,
    pub streaming: bool,
    pub buffer_size: usize,
    /// System prompt used when a sample has none.
    pub default_system: Option<String>,

    // === output ===
    /// Where checkpoints, the adapter and logs go. Required for training.
    pub output_dir: String,
    /// Steps between loss log lines. HF default 500: set it (LLaMA-Factory examples use 10).
    pub logging_steps: usize,
    pub save_steps: usize,
    pub save_strategy: SaveStrategy,
    /// Keep only the newest n checkpoints.
    pub save_total_limit: Option<usize>,
    /// Checkpoints without optimizer state (smaller; cannot resume exactly).
    pub save_only_model: bool,
    /// Write training_loss.png at the end.
    pub plot_loss: bool,
    /// Allow writing into a non-empty output_dir.
    pub overwrite_output_dir: bool,

    // === train ===
    /// Sequences per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step. Effective batch = per_device_train_batch_size * gradient_accumulation_steps.
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate. LoRA usually 1e-4 to 2e-4; full fine-tuning 1e-5 to 5e-5.
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    /// Optimizer steps to run; overrides num_train_epochs. None = from epochs (HF -1).
    pub max_steps: Option<usize>,
    pub lr_scheduler_type: SchedulerType,
    /// Extra schedule parameters (num_cycles, power, lr_end, min_lr, min_lr_rate, timescale, num_decay_steps, ...).
    pub lr_scheduler_kwargs: Map<String, Value>,
    /// Warmup as a fraction of total steps (used when warmup_steps is 0).
    pub warmup_ratio: f64,
    pub warmup_steps: usize,
    /// Decoupled AdamW weight decay.
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this; 0 = no clipping.
    pub max_grad_norm: f64,
    /// Optimizer name; every `adamw*` variant runs loraforge's AdamW.
    pub optim: String,
    /// bf16 compute (mixed precision).
    pub bf16: bool,
    pub fp16: bool,
    /// bf16 weights without fp32 master copies.
    pub pure_bf16: bool,
    /// NEFTune: uniform noise of scale alpha / sqrt(T * C) added to embeddings while training. Typical 5.
    pub neftune_noise_alpha: Option<f64>,
    pub seed: u64,
    /// Seed for data shuffling; None = seed.
    pub data_seed: Option<u64>,
    pub resume_from_checkpoint: Option<ResumeFrom>,

    // === eval ===
    pub per_device_eval_batch_size: usize,
    pub eval_strategy: EvalStrategy,
    /// Steps between evaluations; None = logging_steps (HF).
    pub eval_steps: Option<usize>,
    /// Stop when the eval loss has not improved for this many steps.
    pub early_stopping_steps: Option<usize>,
    pub predict_with_generate: bool,

    // === generation (predict / chat after training) ===
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub do_sample: bool,
    pub repetition_penalty: f64,

    // === export ===
    pub export_dir: Option<String>,
    /// Shard size of exported safetensors, in GB.
    pub export_size: usize,
    /// Write .bin instead of .safetensors (LLaMA-Factory); loraforge always writes safetensors and notes it.
    pub export_legacy_format: bool,
    pub export_format: ExportFormat,
    /// "bfloat16", "float16" or "float32".
    pub export_dtype: String,
    /// GGUF quantization of the merged model: q8_0, q4_0, q4_1, q5_0, q4_k, q5_k, q6_k, q4_k_m.
    pub export_quant: Option<String>,

    // === loraforge ===
    pub device: DeviceChoice,
    /// Memory budget in GB for the memory plan (default: what the device reports).
    pub max_memory_gb: Option<f64>,
    /// Tokens per chunk for chunked loss/activation planning (default: from the memory plan).
    pub chunk_tokens: Option<usize>,
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            model_name_or_path: String::new(),
            adapter_name_or_path: Vec::new(),
            template: None,
            quantization_bit: None,
            quantization_method: "bitsandbytes".into(),
            quantization_type: "nf4".into(),
            double_quantization: true,
            disable_gradient_checkpointing: false,
            stage: Stage::Sft,
            do_train: true,
            do_eval: false,
            do_predict: false,
            finetuning_type: FinetuningType::Lora,
            lora_rank: 8,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_target: vec!["all".into()],
            additional_target: Vec::new(),
            use_rslora: false,
            use_dora: false,
            pissa_init: false,
            pissa_iter: 16,
            loraplus_lr_ratio: None,
            loraplus_lr_embedding: 1e-6,
            create_new_adapter: false,
            freeze_trainable_layers: 2,
            freeze_trainable_modules: vec!["all".into()],
            freeze_extra_modules: Vec::new(),
            dataset: Vec::new(),
            eval_dataset: Vec::new(),
            dataset_dir: "data".into(),
            cutoff_len: 2048,
            max_samples: None,
            packing: None,
            neat_packing: false,
            train_on_prompt: false,
            mask_history: false,
            val_size: 0.0,
            streaming: false,
            buffer_size: 16384,
            default_system: None,
            output_dir: String::new(),
            logging_steps: 500,
            save_steps: 500,
            save_strategy: SaveStrategy::Steps,
            save_total_limit: None,
            save_only_model: false,
            plot_loss: false,
            overwrite_output_dir: false,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            num_train_epochs: 3.0,
            max_steps: None,
            lr_scheduler_type: SchedulerType::Linear,
            lr_scheduler_kwargs: Map::new(),
            warmup_ratio: 0.0,
            warmup_steps: 0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            optim: "adamw_torch".into(),
            bf16: false,
            fp16: false,
            pure_bf16: false,
            neftune_noise_alpha: None,
            seed: 42,
            data_seed: None,
            resume_from_checkpoint: None,
            per_device_eval_batch_size: 8,
            eval_strategy: EvalStrategy::No,
            eval_steps: None,
            early_stopping_steps: None,
            predict_with_generate: false,
            max_new_tokens: 1024,
            temperature: 0.95,
            top_p: 0.7,
            top_k: 50,
            do_sample: true,
            repetition_penalty: 1.0,
            export_dir: None,
            export_size: 5,
            export_legacy_format: false,
            export_format: ExportFormat::Safetensors,
            export_dtype: "bfloat16".into(),
            export_quant: None,
            device: DeviceChoice::Auto,
            max_memory_gb: None,
            chunk_tokens: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Key tables
// ---------------------------------------------------------------------------------------------------------------

/// Every field key, in `to_yaml` order. `tests/train_args.rs` checks that `to_yaml` writes exactly these.
pub const FIELD_KEYS: &[&str] = &[
    "model_name_or_path",
    "adapter_name_or_path",
    "template",
    "quantization_bit",
    "quantization_method",
    "quantization_type",
    "double_quantization",
    "disable_gradient_checkpointing",
    "stage",
    "do_train",
    "do_eval",
    "do_predict",
    "finetuning_type",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "additional_target",
    "use_rslora",
    "use_dora",
    "pissa_init",
    "pissa_iter",
    "loraplus_lr_ratio",
    "loraplus_lr_embedding",
    "create_new_adapter",
    "freeze_trainable_layers",
    "freeze_trainable_modules",
    "freeze_extra_modules",
    "dataset",
    "eval_dataset",
    "dataset_dir",
    "cutoff_len",
    "max_samples",
    "packing",
    "neat_packing",
    "train_on_prompt",
    "mask_history",
    "val_size",
    "streaming",
    "buffer_size",
    "default_system",
    "output_dir",
    "logging_steps",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "save_only_model",
    "plot_loss",
    "overwrite_output_dir",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "bf16",
    "fp16",
    "pure_bf16",
    "neftune_noise_alpha",
    "seed",
    "data_seed",
    "resume_from_checkpoint",
    "per_device_eval_batch_size",
    "eval_strategy",
    "eval_steps",
    "early_stopping_steps",
    "predict_with_generate",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "do_sample",
    "repetition_penalty",
    "export_dir",
    "export_size",
    "export_legacy_format",
    "export_format",
    "export_dtype",
    "export_quant",
    "device",
    "max_memory_gb",
    "chunk_tokens",
];

/// Keys that mean nothing to a native single-process engine: accepted, each with a one-line note saying why.
const IGNORED: &[(&str, &str)] = &[
    ("flash_attn", "loraforge uses its own attention kernels"),
    ("deepspeed", "loraforge trains in one process, no DeepSpeed"),
    ("report_to", "loraforge logs to the console and output_dir/trainer_log.jsonl"),
    ("run_name", "experiment trackers are not used"),
    ("logging_dir", "logs go to output_dir"),
    ("logging_strategy", "loraforge logs every logging_steps"),
    ("logging_first_step", "loraforge logs every logging_steps"),
    ("logging_nan_inf_filter", "non-finite steps are skipped and reported"),
    ("use_unsloth", "an unsloth (PyTorch) option"),
    ("use_unsloth_gc", "an unsloth (PyTorch) option"),
    ("enable_liger_kernel", "a PyTorch kernel library"),
    ("torch_compile", "a PyTorch option"),
    ("gradient_checkpointing", "loraforge checkpoints unless disable_gradient_checkpointing: true"),
    ("gradient_checkpointing_kwargs", "a PyTorch option"),
    ("use_reentrant_gc", "a PyTorch option"),
    ("upcast_layernorm", "norms are always computed in f32"),
    ("upcast_lmhead_output", "logits are always f32"),
    ("trust_remote_code", "no Python code is ever run"),
    ("cache_dir", "models are local paths or fetched aliases"),
    ("model_revision", "models are local paths or fetched aliases"),
    ("use_fast_tokenizer", "loraforge always uses tokenizer.json / the GGUF vocabulary"),
    ("split_special_tokens", "special tokens are never split"),
    ("low_cpu_mem_usage", "weights are memory-mapped"),
    ("infer_backend", "loraforge generates with its own engine"),
    ("infer_dtype", "loraforge picks the inference dtype"),
    ("offload_folder", "no offloading"),
    ("use_kv_cache", "generation always uses the KV cache"),
    ("print_param_status", "the trainable parameter count is always printed"),
    ("quantization_device_map", "a bitsandbytes option"),
    ("moe_aux_loss_coef", "mixture-of-experts models are not loaded"),
    ("overwrite_cache", "tokenized data is not cached"),
    ("tool_format", "tool-calling samples are not formatted yet"),
    ("media_dir", "multimodal data is not read"),
    ("eval_num_beams", "evaluation generation is greedy or sampled"),
    ("ignore_pad_token_for_loss", "padding never counts in the loss"),
    ("eval_on_each_dataset", "evaluation runs on the union of eval data"),
    ("mix_strategy", "datasets are concatenated"),
    ("disable_tqdm", "progress is printed as log lines"),
    ("remove_unused_columns", "a HF Trainer option"),
    ("label_names", "a HF Trainer option"),
    ("tf32", "a CUDA matmul mode of PyTorch"),
    ("local_rank", "single process"),
    ("bf16_full_eval", "evaluation uses the training precision"),
    ("fp16_full_eval", "evaluation uses the training precision"),
    ("half_precision_backend", "a PyTorch option"),
    ("include_num_input_tokens_seen", "tokens seen are always logged"),
    ("include_tokens_per_second", "tokens per second are always logged"),
    ("include_effective_tokens_per_second", "tokens per second are always logged"),
    ("eval_accumulation_steps", "a HF Trainer option"),
    ("eval_delay", "a HF Trainer option"),
    ("eval_on_start", "a HF Trainer option"),
    ("group_by_length", "a HF Trainer option"),
    ("length_column_name", "a HF Trainer option"),
    ("ignore_data_skip", "resume always skips the data already seen"),
    ("full_determinism", "loraforge's CPU path is deterministic for a given seed"),
    ("save_safetensors", "checkpoints are always safetensors"),
    ("save_on_each_node", "single process"),
    ("use_cpu", "use `device: cpu`"),
    ("no_cuda", "use `device: cpu`"),
    ("prediction_loss_only", "a HF Trainer option"),
    ("accelerator_config", "a HF Accelerate option"),
    ("metric_for_best_model", "early stopping watches eval_loss"),
    ("greater_is_better", "early stopping watches eval_loss"),
    ("generation_max_length", "prediction uses max_new_tokens"),
    ("generation_num_beams", "no beam search"),
    ("max_length", "generation uses max_new_tokens"),
    ("length_penalty", "no beam search"),
    ("skip_special_tokens", "special tokens are always skipped in decoded text"),
    ("enable_thinking", "the chat template decides"),
    ("export_device", "export runs where the weights are"),
    ("export_quantization_dataset", "GPTQ export is not supported; see export_quant"),
    ("export_quantization_nsamples", "GPTQ export is not supported; see export_quant"),
    ("export_quantization_maxlen", "GPTQ export is not supported; see export_quant"),
    ("export_hub_model_id", "nothing is uploaded"),
    ("push_to_hub", "nothing is uploaded"),
    ("hf_hub_token", "nothing is downloaded or uploaded"),
    ("ms_hub_token", "nothing is downloaded or uploaded"),
    ("om_hub_token", "nothing is downloaded or uploaded"),
    ("use_swanlab", "experiment trackers are not used"),
    ("freeze_vision_tower", "multimodal models are not loaded"),
    ("freeze_multi_modal_projector", "multimodal models are not loaded"),
    ("freeze_language_model", "multimodal models are not loaded"),
    ("use_audio_in_video", "multimodal data is not read"),
    ("crop_to_patches", "multimodal data is not read"),
    ("audio_sampling_rate", "multimodal data is not read"),
    ("placement_strategy", "no Ray"),
    ("resources_per_worker", "no Ray"),
    ("auto_find_batch_size", "loraforge sizes micro-batches from its memory plan (max_memory_gb)"),
];

/// Prefixes of ignored key families (checked after exact keys).
const IGNORED_PREFIXES: &[(&str, &str)] = &[
    ("fsdp", "loraforge trains in one process, no FSDP"),
    ("ddp_", "loraforge trains in one process, no DDP"),
    ("dataloader_", "data is prepared in-process"),
    ("preprocessing_", "data is prepared in-process"),
    ("torch_compile", "a PyTorch option"),
    ("hub_", "nothing is uploaded"),
    ("push_to_hub", "nothing is uploaded"),
    ("swanlab_", "experiment trackers are not used"),
    ("ray_", "no Ray"),
    ("vllm_", "loraforge generates with its own engine"),
    ("sglang_", "loraforge generates with its own engine"),
    ("image_", "multimodal data is not read"),
    ("video_", "multimodal data is not read"),
];

/// Real LLaMA-Factory / HF features loraforge does not have yet. `false` / `null` is accepted (with a note).
const UNSUPPORTED: &[&str] = &[
    "pref_beta",
    "pref_ftx",
    "pref_loss",
    "pref_bco_weight",
    "dpo_label_smoothing",
    "kto_chosen_weight",
    "kto_rejected_weight",
    "simpo_gamma",
    "ld_alpha",
    "ppo_buffer_size",
    "ppo_epochs",
    "ppo_score_norm",
    "ppo_target",
    "ppo_whiten_rewards",
    "ref_model",
    "ref_model_adapters",
    "ref_model_quantization_bit",
    "reward_model",
    "reward_model_adapters",
    "reward_model_quantization_bit",
    "reward_model_type",
    "use_galore",
    "galore_target",
    "galore_rank",
    "galore_update_interval",
    "galore_scale",
    "galore_proj_type",
    "galore_layerwise",
    "use_apollo",
    "apollo_target",
    "apollo_rank",
    "apollo_update_interval",
    "apollo_scale",
    "apollo_proj",
    "apollo_proj_type",
    "apollo_scale_type",
    "apollo_layerwise",
    "apollo_scale_front",
    "use_badam",
    "badam_mode",
    "badam_start_block",
    "badam_switch_mode",
    "badam_switch_interval",
    "badam_update_ratio",
    "badam_mask_mode",
    "badam_verbose",
    "use_llama_pro",
    "use_adam_mini",
    "use_muon",
    "use_dft_loss",
    "use_mca",
    "use_kt",
    "use_v1_kernels",
    "mixture_of_depths",
    "rope_scaling",
    "shift_attn",
    "resize_vocab",
    "add_tokens",
    "add_special_tokens",
    "new_special_tokens_config",
    "train_from_scratch",
    "fp8",
    "oft_rank",
    "oft_block_size",
    "oft_target",
    "module_dropout",
    "pissa_convert",
    "compute_accuracy",
    "disable_shuffling",
    "interleave_probs",
    "tokenized_path",
    "export_quantization_bit",
    "label_smoothing_factor",
    "optim_args",
    "adapter_folder",
    "load_best_model_at_end",
];

/// Prefixes of unsupported key families (so `galore_foo` from a newer LLaMA-Factory still reads clearly).
const UNSUPPORTED_PREFIXES: &[&str] =
    &["galore_", "apollo_", "badam_", "ppo_", "pref_", "kto_", "dpo_", "fp8_", "oft_", "reward_model", "ref_model"];

/// Valid `export_quant` values (GGUF types loraforge can write).
pub const EXPORT_QUANTS: &[&str] = &["q8_0", "q4_0", "q4_1", "q5_0", "q4_k", "q5_k", "q6_k", "q4_k_m"];

// ---------------------------------------------------------------------------------------------------------------
// Value conversion (every value is a serde_json::Value; YAML is converted first)
// ---------------------------------------------------------------------------------------------------------------

fn got(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    // A list pasted into a scalar key can be long: keep the message to one short line.
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

fn type_err(key: &str, expected: &str, v: &Value) -> Error {
    Error::msg(format!("{key}: expected {expected}, got {}", got(v)))
}

fn unsupported(what: &str) -> Error {
    Error::msg(format!("`{what}` is not supported yet by loraforge"))
}

/// HF `string_to_bool` plus YAML 1.1 spellings (PyYAML reads `on`/`off`/`yes`/`no` as booleans).
fn to_bool(key: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "t" | "1" | "on" => Ok(true),
            "false" | "no" | "n" | "f" | "0" | "off" => Ok(false),
            _ => Err(type_err(key, "true or false", v)),
        },
        _ => Err(type_err(key, "true or false", v)),
    }
}

fn parse_float_text(s: &str) -> Option<f64> {
    let t = s.trim();
    match t {
        ".inf" | ".Inf" | ".INF" | "+.inf" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        // Require a digit so words like "inf" or "nan" stay errors, as YAML would have them.
        _ if t.bytes().any(|b| b.is_ascii_digit()) => t.parse::<f64>().ok(),
        _ => None,
    }
}

fn to_f64(key: &str, v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| type_err(key, "a number", v)),
        Value::String(s) => parse_float_text(s).ok_or_else(|| type_err(key, "a number", v)),
        _ => Err(type_err(key, "a number", v)),
    }
}

fn to_i64(key: &str, v: &Value) -> Result<i64> {
    if let Value::Number(n) = v {
        if let Some(i) = n.as_i64() {
            return Ok(i);
        }
    }
    if let Value::String(s) = v {
        if let Ok(i) = s.trim().parse::<i64>() {
            return Ok(i);
        }
    }
    // `8.0` or "8.0": an integral float is fine (JSON writers often emit these).
    match to_f64(key, v) {
        Ok(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(x as i64),
        _ => Err(type_err(key, "an integer", v)),
    }
}

fn to_usize(key: &str, v: &Value) -> Result<usize> {
    let i = to_i64(key, v).map_err(|_| type_err(key, "a non-negative integer", v))?;
    usize::try_from(i).map_err(|_| type_err(key, "a non-negative integer", v))
}

fn to_u64(key: &str, v: &Value) -> Result<u64> {
    Ok(to_usize(key, v)? as u64)
}

fn to_string(key: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        // `template: 3` or `dataset: 2024`: YAML made a number of what the user meant as a name.
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(type_err(key, "a string", v)),
    }
}

/// A list of names: a YAML/JSON list, or a comma-separated string (LLaMA-Factory `split_arg`). null = empty.
fn to_list(key: &str, v: &Value) -> Result<Vec<String>> {
    let items: Vec<String> = match v {
        Value::Null => Vec::new(),
        Value::String(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
        Value::Number(n) => vec![n.to_string()],
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for item in a {
                match item {
                    Value::String(s) => out.push(s.trim().to_string()),
                    Value::Number(n) => out.push(n.to_string()),
                    _ => return Err(type_err(key, "a list of names or a comma-separated string", v)),
                }
            }
            out
        }
        _ => return Err(type_err(key, "a list of names or a comma-separated string", v)),
    };
    Ok(items.into_iter().filter(|s| !s.is_empty()).collect())
}

fn opt<T>(v: &Value, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    if v.is_null() {
        Ok(None)
    } else {
        f().map(Some)
    }
}

/// Parses a string-valued enum, naming the key and the accepted values on failure.
fn to_enum<E: FromStr + Copy>(key: &str, v: &Value, names: &[&str]) -> Result<E> {
    let s = match v {
        Value::String(s) => s.trim(),
        _ => return Err(type_err(key, &format!("one of {}", names.join(", ")), v)),
    };
    s.parse::<E>().map_err(|_| type_err(key, &format!("one of {}", names.join(", ")), v))
}

/// `eval_strategy: no` reads as the boolean false under YAML 1.1 (PyYAML, OmegaConf): accept it.
fn strategy_text(v: &Value) -> Value {
    match v {
        Value::Bool(false) => Value::String("no".into()),
        other => other.clone(),
    }
}

/// YAML node -> JSON value. Floats stay exact: YAML keeps their text and `f64::from_str` is correctly rounded.
fn yaml_to_json(y: &yaml_rust2::Yaml) -> Result<Value> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::Real(s) => match parse_float_text(s).and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(s.clone()), // inf / nan: kept as text, to_f64 reads it back
        },
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Result<_>>()?),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => crate::bail!("yaml: mapping keys must be plain names, got {k:?}"),
                };
                m.insert(key, yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => crate::bail!("yaml: unsupported or invalid value {y:?}"),
    })
}

/// Parses YAML text into one JSON value; errors carry the line and column.
fn parse_yaml(text: &str) -> Result<Value> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| {
        let m = e.marker();
        // yaml-rust2 writes duplicates as `String("key"): duplicated key in mapping`: say it plainly.
        let info = match e.info().strip_suffix(": duplicated key in mapping") {
            Some(k) => {
                let k = k.strip_prefix("String(\"").and_then(|k| k.strip_suffix("\")")).unwrap_or(k);
                format!("duplicated key `{k}`")
            }
            None => e.info().to_string(),
        };
        // The scanner reports where it noticed the problem: for an unclosed `[` that can be a line or two later.
        Error::msg(format!("invalid YAML at line {} column {}: {info}", m.line(), m.col() + 1))
    })?;
    match docs.len() {
        0 => Ok(Value::Object(Map::new())), // empty file: all defaults (validate() then asks for the model)
        1 => yaml_to_json(&docs[0]),
        n => crate::bail!("invalid YAML: expected one document, found {n} (remove the `---` separators)"),
    }
}

fn unknown_key(key: &str) -> Error {
    let candidates: Vec<&str> = FIELD_KEYS
        .iter()
        .copied()
        .chain(IGNORED.iter().map(|(k, _)| *k))
        .chain(UNSUPPORTED.iter().copied())
        .chain(std::iter::once("evaluation_strategy"))
        .collect();
    match crate::error::nearest(key, &candidates) {
        Some(c) => Error::msg(format!("unknown key `{key}`: did you mean `{c}`?")),
        None => Error::msg(format!("unknown key `{key}` (the accepted keys are listed in examples/*.yaml)")),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------------------------

impl TrainArgs {
    /// Parses LLaMA-Factory-style YAML. Returns the args and one note per accepted-but-ignored key. Does not validate.
    pub fn from_yaml_str(text: &str) -> Result<(TrainArgs, Vec<String>)> {
        Self::from_value(parse_yaml(text)?)
    }

    /// Same keys as YAML, as one JSON object (the C ABI passes this).
    pub fn from_json_str(text: &str) -> Result<(TrainArgs, Vec<String>)> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::msg(format!("invalid JSON: {e}")))?;
        Self::from_value(v)
    }

    /// Reads `.yaml`, `.yml` or `.json`. Errors are prefixed with the path.
    pub fn from_file(path: &Path) -> Result<(TrainArgs, Vec<String>)> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let r = match ext.as_str() {
            "yaml" | "yml" => Self::from_yaml_str(&text),
            "json" => Self::from_json_str(&text),
            _ => crate::bail!("{}: expected a .yaml, .yml or .json config file", path.display()),
        };
        r.with_context(|| path.display().to_string())
    }

    /// File (if any), then overrides, then `validate()`.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<(TrainArgs, Vec<String>)> {
        let (mut args, mut notes) = match path {
            Some(p) => Self::from_file(p)?,
            None => (TrainArgs::default(), Vec::new()),
        };
        args.apply_overrides(overrides, &mut notes)?;
        args.validate()?;
        Ok((args, notes))
    }

    fn from_value(v: Value) -> Result<(TrainArgs, Vec<String>)> {
        let map = match v {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => crate::bail!("config: expected a mapping of `key: value` lines, got {}", got(&other)),
        };
        let mut args = TrainArgs::default();
        let mut notes = Vec::new();
        for (k, v) in &map {
            args.set_key(k, v, &mut notes)?;
        }
        Ok((args, notes))
    }

    /// Applies `key=value`, `--key value`, `--key=value` and bare `--flag` (= true) items, in order.
    /// Values are parsed as YAML scalars (so `1e-4` is a number and `q_proj,v_proj` a string);
    /// `lr_scheduler_kwargs.NAME=value` sets one schedule kwarg. With `--`, dashes in the key read as underscores.
    pub fn apply_overrides(&mut self, overrides: &[String], notes: &mut Vec<String>) -> Result<()> {
        let mut i = 0;
        while i < overrides.len() {
            let item = overrides[i].as_str();
            let (key, raw): (String, String) = if let Some(rest) = item.strip_prefix("--") {
                if let Some((k, v)) = rest.split_once('=') {
                    (k.replace('-', "_"), v.to_string())
                } else if i + 1 < overrides.len() && !overrides[i + 1].starts_with("--") {
                    i += 1;
                    (rest.replace('-', "_"), overrides[i].clone())
                } else {
                    (rest.replace('-', "_"), "true".to_string())
                }
            } else if let Some((k, v)) = item.split_once('=') {
                (k.to_string(), v.to_string())
            } else {
                crate::bail!("override `{item}`: expected key=value, --key value or --key=value");
            };
            let key = key.trim();
            if key.is_empty() {
                crate::bail!("override `{item}`: empty key");
            }
            // A value YAML cannot read (e.g. `[`) is taken as the plain string the user typed.
            let value = match parse_yaml(&raw) {
                Ok(Value::Object(m)) if m.is_empty() && raw.trim().is_empty() => Value::Null,
                Ok(v) => v,
                Err(_) => Value::String(raw.clone()),
            };
            if let Some(kw) = key.strip_prefix("lr_scheduler_kwargs.") {
                self.lr_scheduler_kwargs.insert(kw.to_string(), value);
            } else {
                self.set_key(key, &value, notes).with_context(|| format!("override `{item}`"))?;
            }
            i += 1;
        }
        Ok(())
    }

    /// Sets one key. The match arms are the schema: one per field, then the ignored / unsupported tables.
    fn set_key(&mut self, key: &str, v: &Value, notes: &mut Vec<String>) -> Result<()> {
        let k = key;
        match key {
            // === model ===
            "model_name_or_path" => self.model_name_or_path = opt(v, || to_string(k, v))?.unwrap_or_default(),
            "adapter_name_or_path" => self.adapter_name_or_path = to_list(k, v)?,
            "template" => self.template = opt(v, || to_string(k, v))?,
            "quantization_bit" => {
                self.quantization_bit = match opt(v, || to_i64(k, v))? {
                    None => None,
                    Some(b @ (4 | 8)) => Some(b as u32),
                    Some(b @ (2 | 3 | 5 | 6)) => return Err(unsupported(&format!("quantization_bit: {b}"))),
                    Some(_) => return Err(type_err(k, "4 or 8", v)),
                }
            }
            "quantization_method" => {
                let m = to_string(k, v)?;
                if !matches!(m.as_str(), "bitsandbytes" | "bnb") {
                    notes.push(format!(
                        "`quantization_method: {m}` is ignored: loraforge quantizes the base itself \
                         (NF4 for 4-bit, q8_0 for 8-bit)"
                    ));
                }
                self.quantization_method = m;
            }
            "quantization_type" => {
                let t = to_string(k, v)?;
                match t.as_str() {
                    "nf4" => {}
                    "fp4" => return Err(unsupported("quantization_type: fp4")),
                    _ => return Err(type_err(k, "\"nf4\"", v)),
                }
                self.quantization_type = t;
            }
            "double_quantization" => self.double_quantization = to_bool(k, v)?,
            "disable_gradient_checkpointing" => self.disable_gradient_checkpointing = to_bool(k, v)?,

            // === method ===
            "stage" => self.stage = to_enum(k, v, Stage::NAMES)?,
            "do_train" => self.do_train = to_bool(k, v)?,
            "do_eval" => self.do_eval = to_bool(k, v)?,
            "do_predict" => self.do_predict = to_bool(k, v)?,
            "finetuning_type" => {
                if v.as_str() == Some("oft") {
                    return Err(unsupported("finetuning_type: oft"));
                }
                self.finetuning_type = to_enum(k, v, FinetuningType::NAMES)?
            }
            "lora_rank" => self.lora_rank = to_usize(k, v)?,
            "lora_alpha" => self.lora_alpha = opt(v, || to_f64(k, v))?,
            "lora_dropout" => self.lora_dropout = to_f64(k, v)?,
            "lora_target" => self.lora_target = to_list(k, v)?,
            "additional_target" => self.additional_target = to_list(k, v)?,
            "use_rslora" => self.use_rslora = to_bool(k, v)?,
            "use_dora" => self.use_dora = to_bool(k, v)?,
            "pissa_init" => self.pissa_init = to_bool(k, v)?,
            "pissa_iter" => self.pissa_iter = to_i64(k, v)?,
            "loraplus_lr_ratio" => self.loraplus_lr_ratio = opt(v, || to_f64(k, v))?,
            "loraplus_lr_embedding" => self.loraplus_lr_embedding = to_f64(k, v)?,
            "create_new_adapter" => self.create_new_adapter = to_bool(k, v)?,
            "freeze_trainable_layers" => self.freeze_trainable_layers = to_i64(k, v)?,
            "freeze_trainable_modules" => self.freeze_trainable_modules = to_list(k, v)?,
            "freeze_extra_modules" => self.freeze_extra_modules = to_list(k, v)?,

            // === dataset ===
            "dataset" => self.dataset = to_list(k, v)?,
            "eval_dataset" => self.eval_dataset = to_list(k, v)?,
            "dataset_dir" => self.dataset_dir = to_string(k, v)?,
            "cutoff_len" => self.cutoff_len = to_usize(k, v)?,
            "max_samples" => self.max_samples = opt(v, || to_usize(k, v))?,
            "packing" => self.packing = opt(v, || to_bool(k, v))?,
            "neat_packing" => self.neat_packing = to_bool(k, v)?,
            "train_on_prompt" => self.train_on_prompt = to_bool(k, v)?,
            "mask_history" => self.mask_history = to_bool(k, v)?,
            "val_size" => self.val_size = to_f64(k, v)?,
            "streaming" => self.streaming = to_bool(k, v)?,
            "buffer_size" => self.buffer_size = to_usize(k, v)?,
            "default_system" => self.default_system = opt(v, || to_string(k, v))?,

            // === output ===
            "output_dir" => self.output_dir = opt(v, || to_string(k, v))?.unwrap_or_default(),
            "logging_steps" => self.logging_steps = steps(k, v)?,
            "save_steps" => self.save_steps = steps(k, v)?,
            "save_strategy" => {
                let v = strategy_text(v);
                if v.as_str() == Some("best") {
                    return Err(unsupported("save_strategy: best"));
                }
                self.save_strategy = to_enum(k, &v, SaveStrategy::NAMES)?
            }
            "save_total_limit" => self.save_total_limit = opt(v, || to_usize(k, v))?,
            "save_only_model" => self.save_only_model = to_bool(k, v)?,
            "plot_loss" => self.plot_loss = to_bool(k, v)?,
            "overwrite_output_dir" => self.overwrite_output_dir = to_bool(k, v)?,

            // === train ===
            "per_device_train_batch_size" => self.per_device_train_batch_size = to_usize(k, v)?,
            "gradient_accumulation_steps" => self.gradient_accumulation_steps = to_usize(k, v)?,
            "learning_rate" => self.learning_rate = to_f64(k, v)?,
            "num_train_epochs" => self.num_train_epochs = to_f64(k, v)?,
            // HF: -1 (any value <= 0) = train for num_train_epochs.
            "max_steps" => {
                self.max_steps = opt(v, || to_i64(k, v))?.and_then(|s| usize::try_from(s).ok()).filter(|&s| s > 0)
            }
            "lr_scheduler_type" => {
                if let Some(s @ ("reduce_lr_on_plateau" | "cosine_warmup_with_min_lr")) = v.as_str() {
                    return Err(unsupported(&format!("lr_scheduler_type: {s}")));
                }
                self.lr_scheduler_type = to_enum(k, v, SchedulerType::NAMES)?
            }
            "lr_scheduler_kwargs" => {
                self.lr_scheduler_kwargs = match v {
                    Value::Null => Map::new(),
                    Value::Object(m) => m.clone(),
                    // HF accepts a JSON string here (from the command line).
                    Value::String(s) if s.trim_start().starts_with('{') => match serde_json::from_str(s) {
                        Ok(Value::Object(m)) => m,
                        _ => return Err(type_err(k, "a mapping like {num_cycles: 1}", v)),
                    },
                    _ => return Err(type_err(k, "a mapping like {num_cycles: 1}", v)),
                }
            }
            "warmup_ratio" => self.warmup_ratio = to_f64(k, v)?,
            "warmup_steps" => self.warmup_steps = to_usize(k, v)?,
            "weight_decay" => self.weight_decay = to_f64(k, v)?,
            "adam_beta1" => self.adam_beta1 = to_f64(k, v)?,
            "adam_beta2" => self.adam_beta2 = to_f64(k, v)?,
            "adam_epsilon" => self.adam_epsilon = to_f64(k, v)?,
            "max_grad_norm" => self.max_grad_norm = to_f64(k, v)?,
            "optim" => {
                let o = to_string(k, v)?;
                if !o.starts_with("adamw") {
                    return Err(unsupported(&format!("optim: {o}")));
                }
                if !matches!(o.as_str(), "adamw_torch" | "adamw_torch_fused" | "adamw_hf") {
                    notes.push(format!("`optim: {o}` runs as loraforge's AdamW (fp32 moments)"));
                }
                self.optim = o;
            }
            "bf16" => self.bf16 = to_bool(k, v)?,
            "fp16" => self.fp16 = to_bool(k, v)?,
            "pure_bf16" => self.pure_bf16 = to_bool(k, v)?,
            "neftune_noise_alpha" => self.neftune_noise_alpha = opt(v, || to_f64(k, v))?,
            "seed" => self.seed = to_u64(k, v)?,
            "data_seed" => self.data_seed = opt(v, || to_u64(k, v))?,
            "resume_from_checkpoint" => {
                self.resume_from_checkpoint = match v {
                    Value::Null | Value::Bool(false) => None,
                    Value::Bool(true) => Some(ResumeFrom::Latest),
                    Value::String(s) => match s.trim() {
                        "" | "false" | "False" => None,
                        "true" | "True" | "latest" => Some(ResumeFrom::Latest),
                        p => Some(ResumeFrom::Path(PathBuf::from(p))),
                    },
                    _ => return Err(type_err(k, "true, false or a checkpoint path", v)),
                }
            }

            // === eval ===
            "per_device_eval_batch_size" => self.per_device_eval_batch_size = to_usize(k, v)?,
            "eval_strategy" => self.eval_strategy = to_enum(k, &strategy_text(v), EvalStrategy::NAMES)?,
            "evaluation_strategy" => {
                notes.push("`evaluation_strategy` is the old name of `eval_strategy`: read as `eval_strategy`".into());
                self.eval_strategy = to_enum(k, &strategy_text(v), EvalStrategy::NAMES)?
            }
            "eval_steps" => self.eval_steps = opt(v, || steps(k, v))?,
            "early_stopping_steps" => self.early_stopping_steps = opt(v, || to_usize(k, v))?,
            "predict_with_generate" => self.predict_with_generate = to_bool(k, v)?,

            // === generation ===
            "max_new_tokens" => self.max_new_tokens = to_usize(k, v)?,
            "temperature" => self.temperature = to_f64(k, v)?,
            "top_p" => self.top_p = to_f64(k, v)?,
            "top_k" => self.top_k = to_usize(k, v)?,
            "do_sample" => self.do_sample = to_bool(k, v)?,
            "repetition_penalty" => self.repetition_penalty = to_f64(k, v)?,
            "num_beams" => {
                if to_usize(k, v)? != 1 {
                    return Err(unsupported("num_beams (beam search)"));
                }
            }

            // === export ===
            "export_dir" => self.export_dir = opt(v, || to_string(k, v))?,
            "export_size" => self.export_size = to_usize(k, v)?,
            "export_legacy_format" => {
                self.export_legacy_format = to_bool(k, v)?;
                if self.export_legacy_format {
                    notes.push("`export_legacy_format: true` is ignored: loraforge writes only .safetensors".into());
                }
            }
            "export_format" => self.export_format = to_enum(k, v, ExportFormat::NAMES)?,
            "export_dtype" => {
                self.export_dtype = match to_string(k, v)?.to_ascii_lowercase().as_str() {
                    "bfloat16" | "bf16" => "bfloat16".into(),
                    "float16" | "fp16" | "f16" | "half" => "float16".into(),
                    "float32" | "fp32" | "f32" | "float" => "float32".into(),
                    _ => return Err(type_err(k, "bfloat16, float16 or float32", v)),
                }
            }
            "export_quant" => {
                self.export_quant = match opt(v, || to_string(k, v))? {
                    None => None,
                    Some(q) => {
                        let q = q.to_ascii_lowercase();
                        if !EXPORT_QUANTS.contains(&q.as_str()) {
                            return Err(type_err(k, &format!("one of {}", EXPORT_QUANTS.join(", ")), v));
                        }
                        Some(q)
                    }
                }
            }

            // === loraforge ===
            "device" => self.device = to_enum(k, v, DeviceChoice::NAMES)?,
            "max_memory_gb" => self.max_memory_gb = opt(v, || to_f64(k, v))?,
            "chunk_tokens" => self.chunk_tokens = opt(v, || to_usize(k, v))?,

            _ => return other_key(key, v, notes),
        }
        Ok(())
    }
}

/// HF allows `logging_steps: 0.1` meaning a ratio of total steps; loraforge wants whole steps.
fn steps(key: &str, v: &Value) -> Result<usize> {
    if let Ok(x) = to_f64(key, v) {
        if x > 0.0 && x < 1.0 {
            return Err(unsupported(&format!("{key}: {x} (a ratio of total steps; give a step count)")));
        }
    }
    to_usize(key, v)
}

/// Keys that are not fields: ignored (note), unsupported (error unless off), or unknown (error + suggestion).
fn other_key(key: &str, v: &Value, notes: &mut Vec<String>) -> Result<()> {
    let off = matches!(v, Value::Null | Value::Bool(false));
    if UNSUPPORTED.contains(&key) || UNSUPPORTED_PREFIXES.iter().any(|p| key.starts_with(p)) {
        if off {
            notes.push(format!("`{key}: {}` is ignored (the feature is not supported yet)", got(v)));
            return Ok(());
        }
        return Err(unsupported(key));
    }
    let reason = IGNORED
        .iter()
        .find(|(k, _)| *k == key)
        .or_else(|| IGNORED_PREFIXES.iter().find(|(p, _)| key.starts_with(p)))
        .map(|(_, r)| *r);
    match reason {
        Some(r) => {
            notes.push(format!("`{key}` is ignored: {r}"));
            Ok(())
        }
        None => Err(unknown_key(key)),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Validation and derived values
// ---------------------------------------------------------------------------------------------------------------

impl TrainArgs {
    /// An export-only config (LLaMA-Factory `llamafactory-cli export` YAML): `export_dir` set and no `output_dir`.
    /// Training requirements (dataset, output_dir) are not checked for it.
    pub fn is_export_config(&self) -> bool {
        self.export_dir.is_some() && self.output_dir.is_empty()
    }

    /// Whether samples are packed: `packing`, else on for `pt`; `neat_packing` forces it (LLaMA-Factory).
    pub fn packing_enabled(&self) -> bool {
        self.neat_packing || self.packing.unwrap_or(self.stage == Stage::Pt)
    }

    /// Steps between evaluations: `eval_steps`, else `logging_steps` (HF).
    pub fn eval_steps_value(&self) -> usize {
        self.eval_steps.unwrap_or(self.logging_steps)
    }

    /// Cross-field checks, LLaMA-Factory's and HF's where they apply, each with a message that says what to change.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.stage, Stage::Pt | Stage::Sft) {
            crate::bail!("`stage: {}` is not supported yet by loraforge (it trains stage: pt and sft)", self.stage);
        }
        if self.model_name_or_path.trim().is_empty() {
            crate::bail!(
                "model_name_or_path is required: a GGUF file, an HF model directory, or an alias like smollm2-135m"
            );
        }
        let training = self.do_train && !self.is_export_config();
        if training {
            if self.output_dir.trim().is_empty() {
                crate::bail!("output_dir is required for training (e.g. `output_dir: saves/smollm2-135m/lora/sft`)");
            }
            if self.dataset.is_empty() {
                crate::bail!("dataset is required for training (e.g. `dataset: demo_identity`)");
            }
        }

        // --- method ---
        let lora = self.finetuning_type == FinetuningType::Lora;
        if self.quantization_bit.is_some() {
            if !lora {
                crate::bail!(
                    "quantization_bit needs finetuning_type: lora (a quantized base is frozen; got finetuning_type: {})",
                    self.finetuning_type
                );
            }
            if self.pissa_init {
                crate::bail!("pissa_init cannot be used with quantization_bit (PiSSA needs the dense weights)");
            }
            if self.adapter_name_or_path.len() > 1 {
                crate::bail!("a quantized base accepts a single adapter_name_or_path: merge the adapters first");
            }
            if !self.adapter_name_or_path.is_empty() && self.create_new_adapter {
                crate::bail!("create_new_adapter cannot be used on a quantized base with an existing adapter");
            }
        }
        if !lora {
            if !self.adapter_name_or_path.is_empty() {
                crate::bail!("adapter_name_or_path needs finetuning_type: lora");
            }
            for (on, name) in [
                (self.use_dora, "use_dora"),
                (self.use_rslora, "use_rslora"),
                (self.pissa_init, "pissa_init"),
                (self.loraplus_lr_ratio.is_some(), "loraplus_lr_ratio"),
            ] {
                if on {
                    crate::bail!("{name} is only valid with finetuning_type: lora");
                }
            }
        }
        if self.lora_rank == 0 {
            crate::bail!("lora_rank must be > 0 (8 is a good start)");
        }
        if let Some(a) = self.lora_alpha {
            if !(a.is_finite() && a >= 0.0) {
                crate::bail!("lora_alpha must be >= 0 (0 or unset = 2 * lora_rank), got {a}");
            }
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            crate::bail!("lora_dropout must be in [0, 1), got {}", self.lora_dropout);
        }
        if lora && self.lora_target.is_empty() {
            crate::bail!("lora_target is empty: use `all` or module names like q_proj,v_proj");
        }
        if let Some(r) = self.loraplus_lr_ratio {
            if !(r.is_finite() && r > 0.0) {
                crate::bail!("loraplus_lr_ratio must be > 0, got {r}");
            }
        }

        // --- data ---
        if self.cutoff_len == 0 {
            crate::bail!("cutoff_len must be > 0");
        }
        let v = self.val_size;
        if !(v.is_finite() && v >= 0.0) || v == 1.0 || (v > 1.0 && v.fract() != 0.0) {
            crate::bail!("val_size must be a fraction in [0, 1) or a whole number of samples > 1, got {v}");
        }
        if v > 0.0 && !self.eval_dataset.is_empty() {
            crate::bail!("set either val_size or eval_dataset, not both");
        }
        if self.streaming {
            if v > 0.0 && v < 1.0 {
                crate::bail!("streaming needs val_size as a sample count (> 1), got {v}");
            }
            if self.max_samples.is_some() {
                crate::bail!("max_samples cannot be used with streaming");
            }
            if training && self.max_steps.is_none() {
                crate::bail!("streaming needs max_steps (the dataset length is unknown)");
            }
        }
        if self.mask_history && self.train_on_prompt {
            crate::bail!("mask_history and train_on_prompt cannot both be true");
        }
        if self.neat_packing && self.packing == Some(false) {
            crate::bail!("neat_packing implies packing: remove `packing: false`");
        }
        if self.stage != Stage::Sft {
            for (on, name) in [
                (self.neat_packing, "neat_packing"),
                (self.train_on_prompt, "train_on_prompt"),
                (self.mask_history, "mask_history"),
                (self.predict_with_generate, "predict_with_generate"),
            ] {
                if on {
                    crate::bail!("{name} is only valid with stage: sft (got stage: {})", self.stage);
                }
            }
        }

        // --- training loop ---
        if self.per_device_train_batch_size == 0 {
            crate::bail!("per_device_train_batch_size must be > 0");
        }
        if self.per_device_eval_batch_size == 0 {
            crate::bail!("per_device_eval_batch_size must be > 0");
        }
        if self.gradient_accumulation_steps == 0 {
            crate::bail!("gradient_accumulation_steps must be > 0");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            crate::bail!("learning_rate must be a finite number >= 0, got {}", self.learning_rate);
        }
        if self.max_steps.is_none() && !(self.num_train_epochs.is_finite() && self.num_train_epochs > 0.0) {
            crate::bail!("num_train_epochs must be > 0 (or set max_steps), got {}", self.num_train_epochs);
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            crate::bail!("warmup_ratio must be in [0, 1], got {}", self.warmup_ratio);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            crate::bail!("weight_decay must be >= 0, got {}", self.weight_decay);
        }
        for (b, name) in [(self.adam_beta1, "adam_beta1"), (self.adam_beta2, "adam_beta2")] {
            if !(0.0..1.0).contains(&b) {
                crate::bail!("{name} must be in [0, 1), got {b}");
            }
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0) {
            crate::bail!("adam_epsilon must be > 0, got {}", self.adam_epsilon);
        }
        if self.max_grad_norm.is_nan() {
            crate::bail!("max_grad_norm must be a number (0 = no clipping)");
        }
        if self.bf16 && self.fp16 {
            crate::bail!("set at most one of bf16 and fp16");
        }
        if self.pure_bf16 && self.fp16 {
            crate::bail!("pure_bf16 cannot be combined with fp16");
        }
        if let Some(a) = self.neftune_noise_alpha {
            if !(a.is_finite() && a >= 0.0) {
                crate::bail!("neftune_noise_alpha must be >= 0, got {a}");
            }
        }
        if self.logging_steps == 0 {
            crate::bail!("logging_steps must be > 0");
        }
        if self.save_strategy == SaveStrategy::Steps && self.save_steps == 0 {
            crate::bail!("save_steps must be > 0 with save_strategy: steps (or set save_strategy: no)");
        }
        // Checks the kwargs against the scheduler kind (steps do not matter for that).
        LrSchedule::new(self.lr_scheduler_type, self.learning_rate, 0, 1, &self.lr_scheduler_kwargs)?;

        // --- eval ---
        let has_eval_data = v > 0.0 || !self.eval_dataset.is_empty();
        if self.eval_strategy != EvalStrategy::No && !has_eval_data {
            crate::bail!(
                "eval_strategy: {} needs evaluation data: set val_size (e.g. 0.1) or eval_dataset",
                self.eval_strategy
            );
        }
        if (self.do_eval || self.do_predict) && !has_eval_data {
            crate::bail!("do_eval / do_predict need evaluation data: set val_size (e.g. 0.1) or eval_dataset");
        }
        if self.eval_steps == Some(0) {
            crate::bail!("eval_steps must be > 0");
        }
        if self.early_stopping_steps.is_some() && self.eval_strategy == EvalStrategy::No {
            crate::bail!(
                "early_stopping_steps needs evaluation: set eval_strategy: steps and val_size or eval_dataset"
            );
        }
        if self.stage == Stage::Sft && self.do_predict && !self.predict_with_generate {
            crate::bail!("do_predict needs predict_with_generate: true to save predictions");
        }
        if self.predict_with_generate && self.eval_dataset.is_empty() {
            crate::bail!("predict_with_generate needs eval_dataset");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            crate::bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            crate::bail!("temperature must be >= 0, got {}", self.temperature);
        }

        // --- export ---
        if self.export_size == 0 {
            crate::bail!("export_size (GB per shard) must be > 0");
        }
        if let Some(q) = &self.export_quant {
            if self.export_format != ExportFormat::Gguf {
                crate::bail!("export_quant: {q} needs export_format: gguf (got export_format: {})", self.export_format);
            }
        }

        // --- loraforge ---
        if let Some(m) = self.max_memory_gb {
            if !(m.is_finite() && m > 0.0) {
                crate::bail!("max_memory_gb must be > 0, got {m}");
            }
        }
        if self.chunk_tokens == Some(0) {
            crate::bail!("chunk_tokens must be > 0");
        }
        Ok(())
    }

    /// HF `get_warmup_steps`: `warmup_steps` if > 0, else ceil(warmup_ratio * total_steps).
    pub fn warmup_steps_for(&self, total_steps: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total_steps as f64).ceil() as usize
        }
    }

    /// `lora_alpha`, or 2 * lora_rank when unset or 0 (LLaMA-Factory: `lora_alpha or lora_rank * 2`).
    pub fn lora_alpha_value(&self) -> f64 {
        match self.lora_alpha {
            Some(a) if a != 0.0 => a,
            _ => 2.0 * self.lora_rank as f64,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------------------

/// A YAML double-quoted scalar (JSON string escapes are valid YAML).
fn yq(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
/// f64 in shortest round-trip form (`5e-5`, `3.0`); YAML reads these back bit-exactly.
fn yf(x: f64) -> String {
    if x.is_nan() {
        ".nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { ".inf" } else { "-.inf" }.into()
    } else {
        format!("{x:?}")
    }
}
fn yopt<T>(o: &Option<T>, f: impl Fn(&T) -> String) -> String {
    o.as_ref().map_or_else(|| "null".into(), f)
}
/// A YAML flow sequence of double-quoted strings: `["q_proj", "v_proj"]`.
fn ylist(v: &[String]) -> String {
    format!("[{}]", v.iter().map(|s| yq(s)).collect::<Vec<_>>().join(", "))
}
/// A YAML flow mapping with JSON values: `{"num_cycles": 0.5}` (spaces after `:` and `,` keep YAML parsers happy).
fn ymap(m: &Map<String, Value>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}: {}", yq(k), serde_json::to_string(v).unwrap_or_else(|_| "null".into())))
        .collect();
    format!("{{{}}}", items.join(", "))
}

impl TrainArgs {
    /// Every key, grouped as LLaMA-Factory's examples are; `from_yaml_str(to_yaml())` gives back an equal struct.
    pub fn to_yaml(&self) -> String {
        let mut lines: Vec<(&str, String)> = Vec::with_capacity(FIELD_KEYS.len());
        let mut push = |k: &'static str, v: String| lines.push((k, v));
        push("model_name_or_path", yq(&self.model_name_or_path));
        push("adapter_name_or_path", ylist(&self.adapter_name_or_path));
        push("template", yopt(&self.template, |s| yq(s)));
        push("quantization_bit", yopt(&self.quantization_bit, |b| b.to_string()));
        push("quantization_method", yq(&self.quantization_method));
        push("quantization_type", yq(&self.quantization_type));
        push("double_quantization", self.double_quantization.to_string());
        push("disable_gradient_checkpointing", self.disable_gradient_checkpointing.to_string());
        push("stage", self.stage.to_string());
        push("do_train", self.do_train.to_string());
        push("do_eval", self.do_eval.to_string());
        push("do_predict", self.do_predict.to_string());
        push("finetuning_type", self.finetuning_type.to_string());
        push("lora_rank", self.lora_rank.to_string());
        push("lora_alpha", yopt(&self.lora_alpha, |a| yf(*a)));
        push("lora_dropout", yf(self.lora_dropout));
        push("lora_target", ylist(&self.lora_target));
        push("additional_target", ylist(&self.additional_target));
        push("use_rslora", self.use_rslora.to_string());
        push("use_dora", self.use_dora.to_string());
        push("pissa_init", self.pissa_init.to_string());
        push("pissa_iter", self.pissa_iter.to_string());
        push("loraplus_lr_ratio", yopt(&self.loraplus_lr_ratio, |a| yf(*a)));
        push("loraplus_lr_embedding", yf(self.loraplus_lr_embedding));
        push("create_new_adapter", self.create_new_adapter.to_string());
        push("freeze_trainable_layers", self.freeze_trainable_layers.to_string());
        push("freeze_trainable_modules", ylist(&self.freeze_trainable_modules));
        push("freeze_extra_modules", ylist(&self.freeze_extra_modules));
        push("dataset", ylist(&self.dataset));
        push("eval_dataset", ylist(&self.eval_dataset));
        push("dataset_dir", yq(&self.dataset_dir));
        push("cutoff_len", self.cutoff_len.to_string());
        push("max_samples", yopt(&self.max_samples, |n| n.to_string()));
        push("packing", yopt(&self.packing, |b| b.to_string()));
        push("neat_packing", self.neat_packing.to_string());
        push("train_on_prompt", self.train_on_prompt.to_string());
        push("mask_history", self.mask_history.to_string());
        push("val_size", yf(self.val_size));
        push("streaming", self.streaming.to_string());
        push("buffer_size", self.buffer_size.to_string());
        push("default_system", yopt(&self.default_system, |s| yq(s)));
        push("output_dir", yq(&self.output_dir));
        push("logging_steps", self.logging_steps.to_string());
        push("save_steps", self.save_steps.to_string());
        push("save_strategy", yq(self.save_strategy.as_str())); // quoted: a bare `no` is false in YAML 1.1
        push("save_total_limit", yopt(&self.save_total_limit, |n| n.to_string()));
        push("save_only_model", self.save_only_model.to_string());
        push("plot_loss", self.plot_loss.to_string());
        push("overwrite_output_dir", self.overwrite_output_dir.to_string());
        push("per_device_train_batch_size", self.per_device_train_batch_size.to_string());
        push("gradient_accumulation_steps", self.gradient_accumulation_steps.to_string());
        push("learning_rate", yf(self.learning_rate));
        push("num_train_epochs", yf(self.num_train_epochs));
        push("max_steps", yopt(&self.max_steps, |n| n.to_string()));
        push("lr_scheduler_type", self.lr_scheduler_type.to_string());
        push("lr_scheduler_kwargs", ymap(&self.lr_scheduler_kwargs));
        push("warmup_ratio", yf(self.warmup_ratio));
        push("warmup_steps", self.warmup_steps.to_string());
        push("weight_decay", yf(self.weight_decay));
        push("adam_beta1", yf(self.adam_beta1));
        push("adam_beta2", yf(self.adam_beta2));
        push("adam_epsilon", yf(self.adam_epsilon));
        push("max_grad_norm", yf(self.max_grad_norm));
        push("optim", yq(&self.optim));
        push("bf16", self.bf16.to_string());
        push("fp16", self.fp16.to_string());
        push("pure_bf16", self.pure_bf16.to_string());
        push("neftune_noise_alpha", yopt(&self.neftune_noise_alpha, |a| yf(*a)));
        push("seed", self.seed.to_string());
        push("data_seed", yopt(&self.data_seed, |n| n.to_string()));
        push(
            "resume_from_checkpoint",
            match &self.resume_from_checkpoint {
                None => "false".into(),
                Some(ResumeFrom::Latest) => "true".into(),
                Some(ResumeFrom::Path(p)) => yq(&p.to_string_lossy()),
            },
        );
        push("per_device_eval_batch_size", self.per_device_eval_batch_size.to_string());
        push("eval_strategy", yq(self.eval_strategy.as_str()));
        push("eval_steps", yopt(&self.eval_steps, |n| n.to_string()));
        push("early_stopping_steps", yopt(&self.early_stopping_steps, |n| n.to_string()));
        push("predict_with_generate", self.predict_with_generate.to_string());
        push("max_new_tokens", self.max_new_tokens.to_string());
        push("temperature", yf(self.temperature));
        push("top_p", yf(self.top_p));
        push("top_k", self.top_k.to_string());
        push("do_sample", self.do_sample.to_string());
        push("repetition_penalty", yf(self.repetition_penalty));
        push("export_dir", yopt(&self.export_dir, |s| yq(s)));
        push("export_size", self.export_size.to_string());
        push("export_legacy_format", self.export_legacy_format.to_string());
        push("export_format", self.export_format.to_string());
        push("export_dtype", yq(&self.export_dtype));
        push("export_quant", yopt(&self.export_quant, |s| yq(s)));
        push("device", self.device.to_string());
        push("max_memory_gb", yopt(&self.max_memory_gb, |a| yf(*a)));
        push("chunk_tokens", yopt(&self.chunk_tokens, |n| n.to_string()));
        debug_assert_eq!(lines.iter().map(|(k, _)| *k).collect::<Vec<_>>(), FIELD_KEYS);

        let mut out = String::from("# loraforge training arguments (every key; LLaMA-Factory-compatible)\n");
        for (k, v) in lines {
            let header = match k {
                "model_name_or_path" => Some("### model"),
                "stage" => Some("### method"),
                "dataset" => Some("### dataset"),
                "output_dir" => Some("### output"),
                "per_device_train_batch_size" => Some("### train"),
                "per_device_eval_batch_size" => Some("### eval"),
                "max_new_tokens" => Some("### generation"),
                "export_dir" => Some("### export"),
                "device" => Some("### loraforge"),
                _ => None,
            };
            if let Some(h) = header {
                out.push_str(h);
                out.push('\n');
            }
            out.push_str(k);
            out.push_str(": ");
            out.push_str(&v);
            out.push('\n');
        }
        out
    }
}

impl TrainArgs {
    /// The backend `device` names, resolved (`auto`: a hardware GPU when there is one, else the
    /// CPU); an error says why a named device cannot be used. Shared by `loraforge train` and the C ABI.
    pub fn device_kind(&self) -> Result<crate::backend::DeviceKind> {
        use crate::backend::{resolve_device, DeviceKind};
        resolve_device(match self.device {
            DeviceChoice::Auto => DeviceKind::Auto,
            DeviceChoice::Cpu => DeviceKind::Cpu,
            DeviceChoice::Wgpu => DeviceKind::Wgpu,
            DeviceChoice::Cuda => DeviceKind::Cuda,
        })
    }
}
