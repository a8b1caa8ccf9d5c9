//! The training loop of `loraforge train`: model + data + optimizer + schedule, run step by step
//! with logging, evaluation, checkpoints and exact resume. Everything a run writes lands in
//! `output_dir` with LLaMA-Factory's / transformers' file names.
//! Test: tests/trainer.rs (LoRA/QLoRA/freeze/full train, resume equals an uninterrupted run,
//! output files, bad-input errors).
//!
//! One optimizer step = `gradient_accumulation_steps` micro-batches of
//! `per_device_train_batch_size` rows from the `Loader`, forward + backward each (token-weighted,
//! see step.rs), clip, AdamW at the schedule's LR for that step.
//!
//! Exactness of resume: everything random in a step is a pure function of (seed, global step):
//! the data order of an epoch (seed, epoch), LoRA dropout and NEFTune noise (seed, step). A
//! checkpoint stores the trainable tensors, AdamW's moments and step, the data position and the
//! global step; restoring them makes the following steps bit-identical to an uninterrupted run
//! (the CPU kernels are deterministic: fixed thread splits, fixed reduction order).
//!
//! Files (in `output_dir`): adapter_model.safetensors + adapter_config.json (LoRA) or
//! model.safetensors (freeze/full: the trained tensors, HF names), training_args.yaml,
//! trainer_log.jsonl, trainer_state.json, train_results.json / eval_results.json / all_results.json,
//! training_loss.png / eval_loss.png (plot_loss), checkpoint-N/ (save_steps, Ctrl-C),
//! generated_predictions.jsonl + predict_results.json (do_predict).

use crate::backend::Backend;
use crate::data::{self, DataOptions, DataPosition, DataStage, Example, Loader, PredictItem, PreparedData};
use crate::error::{Context, Error, Result};
use crate::export::peft::{fingerprint_file, save_adapter, AdapterConfig, QkPermutation};
use crate::generate::{generate, GenerateConfig};
use crate::io::gguf::GgufFile;
use crate::lora::LoraConfig;
use crate::model::{load_model, AdapterSpec, BaseQuant, Batch, ModelConfig, Transformer};
use crate::tokenizer::chat::ChatTokenizer;
use crate::tokenizer::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::train::args::{EvalStrategy, FinetuningType, ResumeFrom, SaveStrategy, Stage, TrainArgs};
use crate::train::checkpoint;
use crate::train::log::{format_hms, save_metrics, write_json_atomic, LogRecord, TrainerLog, TrainerState};
use crate::train::memory::{human_bytes, MemoryPlan};
use crate::train::progress::Progress;
use crate::train::schedule::LrSchedule;
use crate::train::step::accumulate;
use crate::train::{metrics, plot, AdamW, AdamWConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The projections `lora_target: all` means (every linear layer but the LM head, as LLaMA-Factory).
pub const ALL_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The loop's state in a checkpoint (the completeness marker, checkpoint::CHECKPOINT_MARKER, is
/// written after it, last).
const CHECKPOINT_STATE: &str = "trainer_loop.json";
const TRAINABLE_FILE: &str = "trainable.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// What one `Trainer::step` did.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    /// Global step just completed (1-based).
    pub step: usize,
    pub total: usize,
    /// Mean loss of the step over its trained tokens.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens (incl. prompt and padding) per second of this step.
    pub tokens_per_s: f64,
    pub eta_s: f64,
    pub epoch: f64,
    /// Set when this step ran an evaluation.
    pub eval_loss: Option<f64>,
    /// False when the gradient was not finite and the update was skipped.
    pub applied: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Finished,
    Cancelled,
    EarlyStopped,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub global_step: usize,
    pub train_loss: f64,
    pub eval_loss: Option<f64>,
    pub runtime_s: f64,
    pub stop: StopReason,
    pub output_dir: PathBuf,
    /// The checkpoint written when the run was cancelled.
    pub checkpoint: Option<PathBuf>,
}

/// A model ready to train, with where it came from.
pub struct ModelParts<B: Backend> {
    pub model: Transformer<B>,
    pub cfg: ModelConfig,
    /// Tokenizer + chat template; None for a random-init model (synthetic data only).
    pub chat: Option<Arc<ChatTokenizer>>,
    /// The base's path (or a `random-init:NAME` label).
    pub base: String,
    /// Fingerprint of a GGUF base file, recorded in the adapter.
    pub base_fingerprint: Option<String>,
}

/// The loop's state as a checkpoint stores it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct LoopState {
    global_step: usize,
    optimizer_step: u64,
    data: DataPosition,
    seed: u64,
    total_steps: usize,
    loss_sum: f64,
    loss_steps: usize,
    total_tokens: u64,
    best_eval: Option<f64>,
    evals_without_improvement: usize,
    log_history: Vec<serde_json::Value>,
}

pub struct Trainer<B: Backend> {
    pub args: TrainArgs,
    /// One-line notes from the config (ignored keys, dtype choices, ...), shown before training.
    pub notes: Vec<String>,
    be: B,
    pub model: Transformer<B>,
    pub cfg: ModelConfig,
    pub chat: Option<Arc<ChatTokenizer>>,
    base: String,
    base_fingerprint: Option<String>,
    opt: AdamW<B>,
    sched: LrSchedule,
    loader: Loader,
    eval_batches: Vec<Batch>,
    pub data_stats: Option<data::DataStats>,
    pub global_step: usize,
    pub total_steps: usize,
    output_dir: PathBuf,
    log: Option<TrainerLog>,
    log_history: Vec<serde_json::Value>,
    progress: Option<Progress>,
    cancel: Arc<AtomicBool>,
    checkpointing: bool,
    /// The running log window (since the last logged step).
    win_loss: f64,
    win_steps: usize,
    win_grad: f64,
    loss_sum: f64,
    loss_steps: usize,
    total_tokens: u64,
    best_eval: Option<f64>,
    evals_without_improvement: usize,
    started: Instant,
    /// Wall seconds of the steps of this process, for ETA.
    step_secs: Vec<f64>,
    pub plan: MemoryPlan,
    early_stopped: bool,
}

/// `~`-free aliases for the models `models/fetch.sh` caches.
pub fn resolve_model_path(name: &str) -> Result<PathBuf> {
    let cache = model_cache_dir();
    let alias = match name.to_ascii_lowercase().as_str() {
        "smollm2-135m" | "smollm2-135m-instruct" | "smollm2" => Some(("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")),
        "gemma3-270m" | "gemma-3-270m" | "gemma3" => Some(("gemma-3-270m-q4_k_m.gguf", "gemma3")),
        _ => None,
    };
    if let Some((file, what)) = alias {
        let p = cache.join(file);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::msg(format!(
            "model alias `{name}` means {}, which is not downloaded yet: run `models/fetch.sh {what}`",
            p.display()
        )));
    }
    let p = PathBuf::from(name);
    if p.exists() {
        return Ok(p);
    }
    Err(Error::msg(format!(
        "model_name_or_path `{name}`: no such file or directory (loraforge reads local GGUF files and Hugging Face \
         directories; the aliases smollm2-135m and gemma3-270m name the models models/fetch.sh caches)"
    )))
}

/// Where `models/fetch.sh` puts models.
pub fn model_cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("LORAFORGE_MODEL_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache"));
    base.join("loraforge").join("models")
}

/// The LoRA targets of `args` (HF module names), `all` expanded.
pub fn lora_targets(args: &TrainArgs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in &args.lora_target {
        let t = t.trim();
        if t.eq_ignore_ascii_case("all") {
            out.extend(ALL_TARGETS.iter().map(|s| s.to_string()));
        } else if ALL_TARGETS.contains(&t) {
            out.push(t.to_string());
        } else {
            let near = crate::data::registry::nearest(t, &ALL_TARGETS);
            return Err(Error::msg(format!(
                "lora_target: unknown module `{t}`{}; expected `all` or some of {}",
                near.map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default(),
                ALL_TARGETS.join(", ")
            )));
        }
    }
    out.dedup();
    let mut sorted = Vec::new();
    for a in ALL_TARGETS {
        if out.iter().any(|t| t == a) {
            sorted.push(a.to_string());
        }
    }
    Ok(sorted)
}

/// The adapter spec `args` asks for (no targets unless finetuning_type is lora).
pub fn adapter_spec(args: &TrainArgs) -> Result<AdapterSpec> {
    let lora = args.finetuning_type == FinetuningType::Lora;
    Ok(AdapterSpec {
        targets: if lora { lora_targets(args)? } else { Vec::new() },
        lora: LoraConfig {
            rank: args.lora_rank,
            alpha: args.lora_alpha_value() as f32,
            dropout: args.lora_dropout as f32,
            use_rslora: args.use_rslora,
            use_dora: args.use_dora,
        },
        seed: args.seed,
        quantize: match args.quantization_bit {
            None => None,
            Some(4) => Some(BaseQuant::Nf4 { double_quant: args.double_quantization }),
            Some(8) => Some(BaseQuant::Int8),
            Some(b) => return Err(Error::msg(format!("quantization_bit: {b} is not supported yet (use 4 or 8)"))),
        },
    })
}

/// Loads the base model, its tokenizer and chat template for `args`.
pub fn load_parts<B: Backend>(be: &B, args: &TrainArgs, notes: &mut Vec<String>) -> Result<ModelParts<B>> {
    let path = resolve_model_path(&args.model_name_or_path)?;
    let mut spec = adapter_spec(args)?;
    // Continued training of an existing PEFT adapter: its rank, alpha and targets win.
    let resume_adapter = match args.adapter_name_or_path.as_slice() {
        [] => None,
        [one] if args.finetuning_type == FinetuningType::Lora => {
            let dir = PathBuf::from(one);
            let ac = AdapterConfig::read(&dir).with_context(|| format!("adapter_name_or_path {}", dir.display()))?;
            if ac.r != args.lora_rank || ac.target_modules != spec.targets {
                notes.push(format!(
                    "adapter_name_or_path: continuing {} with its own r={} and targets {} (not the config's)",
                    dir.display(),
                    ac.r,
                    ac.target_modules.join(",")
                ));
            }
            spec.targets = ac.target_modules.clone();
            spec.lora = LoraConfig { dropout: args.lora_dropout as f32, ..ac.lora() };
            Some(dir)
        }
        [_] => return Err(Error::msg("adapter_name_or_path with finetuning_type freeze/full is not supported yet")),
        _ => {
            return Err(Error::msg(
                "adapter_name_or_path: several adapters (merged, then a new one trained) is not supported yet; \
                 merge them first with `loraforge export` and train on the merged model",
            ))
        }
    };
    let (tok, own_template, fp, stored_quantized) = if path.is_dir() {
        let tok = Tokenizer::from_file(path.join("tokenizer.json")).context("loading the tokenizer")?;
        (tok, ChatTemplate::from_hf_dir(&path)?, None, false)
    } else {
        let f = GgufFile::open(&path)?;
        let tok = Tokenizer::from_gguf(&f).context("loading the tokenizer")?;
        let quantized = f.tensors().iter().any(|t| {
            use crate::quant::ggml::GgmlType;
            t.name.ends_with("attn_q.weight") && !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        });
        (tok, ChatTemplate::from_gguf(&f)?, Some(fingerprint_file(&path)?), quantized)
    };
    if args.quantization_bit.is_some() && stored_quantized {
        notes.push(
            "quantization_bit: the base is already quantized in its GGUF file; it is trained as stored (QLoRA on \
             GGUF blocks), quantization_bit applies only to dense (F32/F16/BF16) weights"
                .to_string(),
        );
    }
    let template = match &args.template {
        Some(name) if !name.eq_ignore_ascii_case("default") || own_template.is_none() => {
            Some(ChatTemplate::builtin(name)?.with_special_tokens(
                tok.bos_id().and_then(|i| tok.token_to_str(i)).unwrap_or_default(),
                tok.eos_id().and_then(|i| tok.token_to_str(i)).unwrap_or_default(),
            ))
        }
        _ => own_template,
    };
    let template = match (template, args.stage) {
        (Some(t), _) => t,
        (None, Stage::Pt) => ChatTemplate::builtin("empty")?,
        (None, _) => {
            return Err(Error::msg(format!(
                "{} has no chat template: set `template` (e.g. chatml, llama3, gemma) for SFT",
                path.display()
            )))
        }
    };
    // PiSSA decomposes the full-precision weights: load them unquantized (zero-copy views), then
    // quantize each residual as QLoRA asks (QPiSSA), or back into its GGUF block type.
    let load_spec = if args.pissa_init { AdapterSpec { quantize: None, ..spec.clone() } } else { spec.clone() };
    let (mut model, cfg) = load_model(be, &path, &load_spec).with_context(|| format!("loading {}", path.display()))?;
    if args.pissa_init {
        if resume_adapter.is_some() {
            return Err(Error::msg("pissa_init with adapter_name_or_path: the adapter is already initialised"));
        }
        apply_pissa(be, &mut model, &spec, args.pissa_iter, notes)?;
    }
    if let Some(dir) = &resume_adapter {
        let qk = QkPermutation::for_config(&cfg);
        let meta = crate::export::peft::load_adapter(&mut model, dir, qk)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
        crate::cli::session::check_base(&meta, &path, dir)?;
    }
    Ok(ModelParts {
        model,
        cfg,
        chat: Some(Arc::new(ChatTokenizer::new(tok, template))),
        base: path.display().to_string(),
        base_fingerprint: fp,
    })
}

/// PiSSA-initialises every LoRA layer; residuals are stored as `spec.quantize` says, else in the
/// base's own GGUF block type when loraforge can quantize to it, else as F32.
pub fn apply_pissa<B: Backend>(
    be: &B,
    model: &mut Transformer<B>,
    spec: &AdapterSpec,
    pissa_iter: i64,
    notes: &mut Vec<String>,
) -> Result<()> {
    use crate::quant::ggml::{GgmlMatrix, GgmlType};
    // pissa_iter -1 means an exact SVD in LLaMA-Factory; 32 subspace iterations converge to it
    // for the leading singular directions of real weights.
    let niter = if pissa_iter < 0 { 32 } else { pissa_iter as usize };
    let mut fallback = Vec::new();
    for (i, l) in model.loras_mut()?.into_iter().enumerate() {
        let format = l.base.format(be);
        let original = GgmlType::from_name(&format).ok();
        let q = spec.quantize;
        let store = move |w: Vec<f32>, rows: usize, cols: usize| -> Result<crate::backend::HostQuant> {
            let m = GgmlMatrix::quantize(GgmlType::F32, rows, cols, &w)?;
            match (q, original) {
                (Some(q), _) => q.apply(m),
                (None, Some(ty)) if ty != GgmlType::F32 => match GgmlMatrix::quantize(ty, rows, cols, &w) {
                    Ok(m) => Ok(std::sync::Arc::new(m)),
                    Err(_) => Ok(std::sync::Arc::new(m)),
                },
                _ => Ok(std::sync::Arc::new(m)),
            }
        };
        l.init_pissa(be, niter, spec.seed.wrapping_add(i as u64), &store)?;
        let now = l.base.format(be);
        if spec.quantize.is_none() && now != format && !fallback.contains(&format) {
            fallback.push(format);
        }
    }
    if !fallback.is_empty() {
        notes.push(format!(
            "pissa_init: residual weights of format {} are kept as F32 (no quantizer for it)",
            fallback.join(", ")
        ));
    }
    Ok(())
}

fn data_options(args: &TrainArgs) -> DataOptions {
    DataOptions {
        dataset: args.dataset.clone(),
        eval_dataset: args.eval_dataset.clone(),
        dataset_dir: PathBuf::from(&args.dataset_dir),
        stage: if args.stage == Stage::Pt { DataStage::Pt } else { DataStage::Sft },
        cutoff_len: args.cutoff_len,
        max_samples: args.max_samples,
        packing: args.packing_enabled(),
        neat_packing: args.neat_packing,
        train_on_prompt: args.train_on_prompt,
        mask_history: args.mask_history,
        val_size: args.val_size,
        streaming: args.streaming,
        seed: args.data_seed.unwrap_or(args.seed),
        default_system: args.default_system.clone(),
    }
}

/// Random token rows of `cutoff_len` (for random-init speed and memory runs).
pub fn synthetic_data(vocab: usize, rows: usize, len: usize, seed: u64) -> PreparedData {
    let mut rng = crate::rng::Rng::new(seed);
    let train = (0..rows)
        .map(|_| {
            let ids: Vec<u32> = (0..len).map(|_| rng.below(vocab) as u32).collect();
            Example {
                labels: ids.iter().map(|&i| i as i32).collect(),
                positions: (0..len as u32).collect(),
                input_ids: ids,
                segment_ids: None,
            }
        })
        .collect::<Vec<_>>();
    let stats = data::DataStats {
        rows,
        examples: rows,
        tokens: rows * len,
        trained_tokens: rows * len,
        truncated: 0,
        skipped: 0,
    };
    PreparedData { train, eval: Vec::new(), stats }
}

/// Does `output_dir` hold another run (anything but an empty directory)?
fn holds_a_run(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}

impl<B: Backend> Trainer<B> {
    /// Loads model and data as `args` says and prepares the run (output dir checks, memory plan,
    /// resume). Nothing is trained yet.
    pub fn new(be: B, args: TrainArgs, mut notes: Vec<String>) -> Result<Self> {
        args.validate()?;
        check_output_dir(&args)?;
        let parts = load_parts(&be, &args, &mut notes)?;
        Self::from_parts(be, args, notes, parts, None)
    }

    /// Prepares a run on an already built model; `data` replaces the configured datasets (used by
    /// random-init runs on synthetic rows).
    pub fn from_parts(
        be: B,
        args: TrainArgs,
        mut notes: Vec<String>,
        parts: ModelParts<B>,
        data: Option<PreparedData>,
    ) -> Result<Self> {
        args.validate()?;
        check_output_dir(&args)?;
        let ModelParts { mut model, cfg, chat, base, base_fingerprint } = parts;
        if args.stage != Stage::Pt && args.stage != Stage::Sft {
            return Err(Error::msg(format!(
                "stage `{:?}` is not supported yet by loraforge (pt and sft are)",
                args.stage
            )));
        }
        if args.bf16 || args.fp16 || args.pure_bf16 {
            notes.push(format!(
                "{}: the {} backend computes in f32 (same results as mixed precision, more memory)",
                if args.bf16 {
                    "bf16"
                } else if args.fp16 {
                    "fp16"
                } else {
                    "pure_bf16"
                },
                be.name()
            ));
        }
        if !args.additional_target.is_empty() {
            return Err(Error::msg("additional_target is not supported yet by loraforge"));
        }
        match args.finetuning_type {
            FinetuningType::Lora => {}
            FinetuningType::Full => {
                model.make_trainable(&|_| true)?;
            }
            FinetuningType::Freeze => {
                let names = freeze_selection(&args, cfg.num_hidden_layers)?;
                let made = model.make_trainable(&|n| names(n))?;
                if made.is_empty() {
                    return Err(Error::msg(
                        "freeze: freeze_trainable_layers / freeze_trainable_modules select no tensor to train",
                    ));
                }
            }
        }
        model.neftune_alpha = args.neftune_noise_alpha.map(|a| a as f32);

        // Data.
        let pad_id = chat.as_ref().and_then(|c| c.tok.eos_id()).unwrap_or(0);
        let batch = args.per_device_train_batch_size;
        let (loader, eval_examples, stats) = match data {
            Some(d) => (Loader::new(d.train, batch, args.seed, pad_id), d.eval, Some(d.stats)),
            None => {
                let chat = chat.as_ref().ok_or_else(|| Error::msg("no tokenizer: data must be given"))?;
                let opts = data_options(&args);
                if args.streaming {
                    let prepared = if opts.eval_dataset.is_empty() {
                        Vec::new()
                    } else {
                        let mut o = opts.clone();
                        o.dataset = o.eval_dataset.clone();
                        o.eval_dataset.clear();
                        o.streaming = false;
                        data::prepare(&o, chat)?.train
                    };
                    (Loader::streaming(&opts, chat.clone(), batch, pad_id)?, prepared, None)
                } else {
                    let d = data::prepare(&opts, chat)?;
                    (Loader::new(d.train, batch, opts.seed, pad_id), d.eval, Some(d.stats))
                }
            }
        };
        let eval_batches = eval_examples
            .chunks(args.per_device_eval_batch_size.max(1))
            .map(|c| data::collate(&c.iter().collect::<Vec<_>>(), pad_id))
            .collect::<Result<Vec<_>>>()?;
        if args.eval_strategy != EvalStrategy::No && eval_batches.is_empty() {
            return Err(Error::msg(
                "eval_strategy is set but there is no evaluation data: set val_size (e.g. 0.1) or eval_dataset",
            ));
        }

        // Steps.
        let accum = args.gradient_accumulation_steps.max(1);
        let total_steps = match (args.max_steps, loader.batches_per_epoch()) {
            (Some(m), _) => m,
            (None, Some(per_epoch)) => {
                let updates = (per_epoch / accum).max(1);
                (args.num_train_epochs * updates as f64).ceil() as usize
            }
            (None, None) => return Err(Error::msg("streaming: set max_steps (the length of a stream is unknown)")),
        };
        if total_steps == 0 {
            return Err(Error::msg("nothing to train: max_steps / num_train_epochs give 0 steps"));
        }
        let warmup = args.warmup_steps_for(total_steps);
        let sched = LrSchedule::new(
            args.lr_scheduler_type,
            args.learning_rate,
            warmup,
            total_steps,
            &args.lr_scheduler_kwargs,
        )?;
        let opt = AdamW::new(AdamWConfig {
            lr: args.learning_rate,
            beta1: args.adam_beta1,
            beta2: args.adam_beta2,
            eps: args.adam_epsilon,
            weight_decay: args.weight_decay,
            max_grad_norm: args.max_grad_norm,
        });
        let checkpointing = !args.disable_gradient_checkpointing;
        let plan = plan_memory(&mut model, &cfg, &args)?;
        let output_dir = PathBuf::from(&args.output_dir);
        let mut t = Trainer {
            args,
            notes,
            be,
            model,
            cfg,
            chat,
            base,
            base_fingerprint,
            opt,
            sched,
            loader,
            eval_batches,
            data_stats: stats,
            global_step: 0,
            total_steps,
            output_dir,
            log: None,
            log_history: Vec::new(),
            progress: None,
            cancel: Arc::new(AtomicBool::new(false)),
            checkpointing,
            win_loss: 0.0,
            win_steps: 0,
            win_grad: 0.0,
            loss_sum: 0.0,
            loss_steps: 0,
            total_tokens: 0,
            best_eval: None,
            evals_without_improvement: 0,
            started: Instant::now(),
            step_secs: Vec::new(),
            plan,
            early_stopped: false,
        };
        t.open_output()?;
        Ok(t)
    }

    /// Creates output_dir, resumes from a checkpoint when asked, opens the log.
    fn open_output(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.output_dir).map_err(|e| Error::io(&self.output_dir, e))?;
        checkpoint::clean_stale_temp(&self.output_dir)?;
        let resume = match &self.args.resume_from_checkpoint {
            None => None,
            Some(ResumeFrom::Latest) => Some(checkpoint::latest_checkpoint(&self.output_dir)?.ok_or_else(|| {
                Error::msg(format!(
                    "resume_from_checkpoint: true, but {} holds no complete checkpoint",
                    self.output_dir.display()
                ))
            })?),
            Some(ResumeFrom::Path(p)) => Some(p.clone()),
        };
        if let Some(dir) = &resume {
            self.load_checkpoint(dir).with_context(|| format!("resuming from {}", dir.display()))?;
            TrainerLog::truncate_after(&self.output_dir, self.global_step)?;
        }
        self.log = Some(TrainerLog::open(&self.output_dir, resume.is_some())?);
        std::fs::write(self.output_dir.join("training_args.yaml"), self.args.to_yaml())
            .map_err(|e| Error::io(self.output_dir.join("training_args.yaml"), e))?;
        Ok(())
    }

    /// The flag that stops the run cleanly (with a checkpoint) at the end of the current step.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn is_done(&self) -> bool {
        self.global_step >= self.total_steps || self.early_stopped
    }

    /// Shows a progress bar on the terminal during `run`.
    pub fn enable_progress(&mut self) {
        let mut p = Progress::new(self.total_steps, self.global_step);
        p.set_line_every(self.args.logging_steps.max(1));
        p.reset_clock(Instant::now());
        self.progress = Some(p);
    }

    /// A one-paragraph description of the run (what trains, on what, how long).
    pub fn describe(&mut self) -> Result<String> {
        let trainable = self.model.trainable_scalars()?;
        let total = self.cfg.param_count() as f64;
        let mut s = format!(
            "model {} ({}, {} layers) on {}\n{}: {} trainable parameters ({:.3}% of {:.0}M)\n",
            self.base,
            self.cfg.arch,
            self.cfg.num_hidden_layers,
            self.be.name(),
            match self.args.finetuning_type {
                FinetuningType::Lora => format!(
                    "LoRA r={} alpha={} on {}{}{}",
                    self.args.lora_rank,
                    self.args.lora_alpha_value(),
                    lora_targets(&self.args)?.join(","),
                    if self.args.use_dora { ", DoRA" } else { "" },
                    if self.args.use_rslora { ", rsLoRA" } else { "" }
                ),
                FinetuningType::Freeze => "freeze tuning".to_string(),
                FinetuningType::Full => "full tuning".to_string(),
            },
            trainable,
            100.0 * trainable as f64 / total,
            total / 1e6
        );
        if let Some(st) = &self.data_stats {
            s +=
                &format!(
                "data: {} examples from {} rows, {} tokens ({} trained), {} truncated, {} skipped; {} eval batches\n",
                st.examples, st.rows, st.tokens, st.trained_tokens, st.truncated, st.skipped, self.eval_batches.len()
            );
        }
        s += &format!(
            "{} steps of {} rows ({} per micro-batch x {} accumulation), lr {:e} {}, checkpointing {}\n",
            self.total_steps,
            self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps,
            self.args.per_device_train_batch_size,
            self.args.gradient_accumulation_steps,
            self.args.learning_rate,
            self.args.lr_scheduler_type.as_str(),
            if self.checkpointing { "on" } else { "off" }
        );
        s += &format!("memory plan: {} in total\n", human_bytes(self.plan.total()));
        Ok(s)
    }

    fn lr_group(&self) -> impl Fn(&str) -> (f64, bool) + 'static {
        let ratio = self.args.loraplus_lr_ratio;
        move |name: &str| {
            let decay = !(name.ends_with(".bias") || name.contains("norm"));
            match ratio {
                Some(r) if name.ends_with(".lora_B") => (r, decay),
                _ => (1.0, decay),
            }
        }
    }

    /// Runs one optimizer step (and the evaluation / logging / checkpoint it is due for).
    pub fn step(&mut self) -> Result<StepReport> {
        if self.is_done() {
            return Err(Error::msg("training is already finished"));
        }
        let t0 = Instant::now();
        let accum = self.args.gradient_accumulation_steps.max(1);
        let mut micro = Vec::with_capacity(accum);
        for _ in 0..accum {
            micro.push(self.loader.next_batch()?);
        }
        let step_seed = self.args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(self.global_step as u64);
        let lr = self.sched.lr_at(self.global_step);
        let (mut grads, mut out) = accumulate(&self.model, &micro, self.checkpointing, step_seed)?;
        let group = self.lr_group();
        let stats = self.model.optimizer_step(&mut self.opt, &mut grads, lr, &group)?;
        out.grad_norm = stats.grad_norm;
        out.applied = stats.applied;
        self.global_step += 1;
        let dt = t0.elapsed().as_secs_f64();
        self.step_secs.push(dt);
        self.total_tokens += out.tokens as u64;
        self.loss_sum += out.loss;
        self.loss_steps += 1;
        self.win_loss += out.loss;
        self.win_grad += out.grad_norm;
        self.win_steps += 1;
        let eta = self.eta();
        let mut report = StepReport {
            step: self.global_step,
            total: self.total_steps,
            loss: out.loss,
            lr,
            grad_norm: out.grad_norm,
            tokens_per_s: out.tokens as f64 / dt.max(1e-9),
            eta_s: eta,
            epoch: self.loader.epoch_progress(),
            eval_loss: None,
            applied: out.applied,
        };
        if !out.applied {
            self.say(&format!("step {}: gradient norm is not finite; the update was skipped", self.global_step));
        }
        if let Some(p) = self.progress.as_mut() {
            p.update(self.global_step, out.loss, lr, out.grad_norm, report.tokens_per_s);
        }
        let a = self.args.clone();
        if self.global_step.is_multiple_of(a.logging_steps.max(1)) || self.global_step == self.total_steps {
            self.log_train(&report)?;
        }
        let eval_due = match a.eval_strategy {
            EvalStrategy::No => false,
            EvalStrategy::Steps => self.global_step.is_multiple_of(a.eval_steps_value().max(1)),
            EvalStrategy::Epoch => self.epoch_boundary(),
        };
        if eval_due {
            let e = self.evaluate()?;
            report.eval_loss = Some(e);
            self.log_eval(e)?;
            self.track_early_stopping(e);
        }
        let save_due = match a.save_strategy {
            SaveStrategy::No => false,
            SaveStrategy::Steps => a.save_steps > 0 && self.global_step.is_multiple_of(a.save_steps),
            SaveStrategy::Epoch => self.epoch_boundary(),
        };
        if save_due && self.global_step < self.total_steps {
            self.save_checkpoint()?;
        }
        Ok(report)
    }

    /// Did the last step finish an epoch?
    fn epoch_boundary(&self) -> bool {
        match self.loader.batches_per_epoch() {
            Some(n) => {
                let per_epoch = (n / self.args.gradient_accumulation_steps.max(1)).max(1);
                self.global_step.is_multiple_of(per_epoch)
            }
            None => false,
        }
    }

    fn eta(&self) -> f64 {
        let recent = &self.step_secs[self.step_secs.len().saturating_sub(20)..];
        let mean = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
        mean * (self.total_steps - self.global_step) as f64
    }

    fn say(&mut self, msg: &str) {
        match self.progress.as_mut() {
            Some(p) => p.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    fn record(&self, loss: Option<f64>, eval_loss: Option<f64>, lr: Option<f64>, grad: Option<f64>) -> LogRecord {
        let elapsed = self.started.elapsed().as_secs_f64();
        LogRecord {
            current_steps: self.global_step,
            total_steps: self.total_steps,
            loss,
            eval_loss,
            lr,
            epoch: Some((self.loader.epoch_progress() * 100.0).round() / 100.0),
            percentage: (10000.0 * self.global_step as f64 / self.total_steps as f64).round() / 100.0,
            elapsed_time: format_hms(elapsed),
            remaining_time: format_hms(self.eta()),
            throughput: Some((self.total_tokens as f64 / elapsed.max(1e-9) * 100.0).round() / 100.0),
            total_tokens: Some(self.total_tokens),
            grad_norm: grad,
            ..Default::default()
        }
    }

    fn log_train(&mut self, r: &StepReport) -> Result<()> {
        let loss = self.win_loss / self.win_steps.max(1) as f64;
        let grad = self.win_grad / self.win_steps.max(1) as f64;
        (self.win_loss, self.win_grad, self.win_steps) = (0.0, 0.0, 0);
        let rec = self.record(Some(round4(loss)), None, Some(r.lr), Some(grad));
        if let Some(l) = self.log.as_mut() {
            l.append(&rec)?;
        }
        self.log_history.push(serde_json::json!({
            "loss": round4(loss), "grad_norm": grad, "learning_rate": r.lr,
            "epoch": rec.epoch, "step": self.global_step,
        }));
        if self.progress.is_none() {
            eprintln!(
                "step {}/{}: loss {:.4} lr {:.3e} grad_norm {:.3} {} tokens/s",
                self.global_step,
                self.total_steps,
                loss,
                r.lr,
                grad,
                crate::train::progress::rate(r.tokens_per_s)
            );
        }
        Ok(())
    }

    fn log_eval(&mut self, e: f64) -> Result<()> {
        let rec = self.record(None, Some(round4(e)), None, None);
        if let Some(l) = self.log.as_mut() {
            l.append(&rec)?;
        }
        self.log_history.push(serde_json::json!({
            "eval_loss": e, "epoch": rec.epoch, "step": self.global_step,
        }));
        let msg = format!("step {}: eval_loss {:.4}", self.global_step, e);
        self.say(&msg);
        Ok(())
    }

    fn track_early_stopping(&mut self, e: f64) {
        if self.best_eval.is_none_or(|b| e < b) {
            self.best_eval = Some(e);
            self.evals_without_improvement = 0;
        } else {
            self.evals_without_improvement += 1;
        }
        if let Some(patience) = self.args.early_stopping_steps {
            if self.evals_without_improvement >= patience {
                self.early_stopped = true;
                let msg = format!(
                    "early stopping: eval_loss did not improve for {patience} evaluations (best {:.4})",
                    self.best_eval.unwrap_or(f64::NAN)
                );
                self.say(&msg);
            }
        }
    }

    /// Mean loss over the evaluation data (no dropout, no gradients).
    pub fn evaluate(&mut self) -> Result<f64> {
        if self.eval_batches.is_empty() {
            return Err(Error::msg("no evaluation data: set val_size or eval_dataset"));
        }
        Ok(crate::train::step::evaluate(&self.model, &self.eval_batches)?.0)
    }

    /// Runs to the end (or until cancelled / early-stopped), then writes the final outputs.
    /// `on_step` sees every step's report; returning false cancels like Ctrl-C does.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&StepReport) -> bool) -> Result<TrainSummary> {
        let mut cancelled = false;
        while !self.is_done() {
            let r = self.step()?;
            let go_on = on_step(&r);
            if !go_on || self.cancel.load(Ordering::SeqCst) {
                cancelled = true;
                break;
            }
        }
        if let Some(p) = self.progress.as_mut() {
            p.finish();
        }
        if cancelled && !self.is_done() {
            let dir = self.save_checkpoint()?;
            eprintln!(
                "stopped at step {}/{}; checkpoint {} (continue with resume_from_checkpoint=true)",
                self.global_step,
                self.total_steps,
                dir.display()
            );
            return Ok(TrainSummary {
                global_step: self.global_step,
                train_loss: self.loss_sum / self.loss_steps.max(1) as f64,
                eval_loss: None,
                runtime_s: self.started.elapsed().as_secs_f64(),
                stop: StopReason::Cancelled,
                output_dir: self.output_dir.clone(),
                checkpoint: Some(dir),
            });
        }
        self.finish()
    }

    /// Writes the final adapter / model, metrics, state and plots.
    pub fn finish(&mut self) -> Result<TrainSummary> {
        let out = self.output_dir.clone();
        self.save_trained(&out)?;
        let runtime = self.started.elapsed().as_secs_f64();
        let train_loss = self.loss_sum / self.loss_steps.max(1) as f64;
        let mut m = serde_json::Map::new();
        m.insert("epoch".into(), serde_json::json!(self.loader.epoch_progress()));
        m.insert("train_loss".into(), serde_json::json!(train_loss));
        m.insert("train_runtime".into(), serde_json::json!((runtime * 1e4).round() / 1e4));
        m.insert("train_steps_per_second".into(), serde_json::json!(self.loss_steps as f64 / runtime.max(1e-9)));
        m.insert("train_tokens_per_second".into(), serde_json::json!(self.total_tokens as f64 / runtime.max(1e-9)));
        m.insert("total_tokens".into(), serde_json::json!(self.total_tokens));
        save_metrics(&out, "train", &m)?;
        let mut eval_loss = None;
        if !self.eval_batches.is_empty() && (self.args.do_eval || self.args.eval_strategy != EvalStrategy::No) {
            let e = self.evaluate()?;
            eval_loss = Some(e);
            let mut m = serde_json::Map::new();
            m.insert("epoch".into(), serde_json::json!(self.loader.epoch_progress()));
            m.insert("eval_loss".into(), serde_json::json!(e));
            m.insert("perplexity".into(), serde_json::json!(e.exp()));
            save_metrics(&out, "eval", &m)?;
        }
        self.trainer_state().save(&out.join("trainer_state.json"))?;
        if self.args.plot_loss {
            for p in plot::plot_loss(&out, &self.log_history)? {
                eprintln!("wrote {}", p.display());
                // LLaMA-Factory's name is training_eval_loss.png; eval_loss.png is the short one.
                if p.file_name().is_some_and(|n| n == "training_eval_loss.png") {
                    let short = out.join("eval_loss.png");
                    std::fs::copy(&p, &short).map_err(|e| Error::io(&short, e))?;
                }
            }
        }
        if self.args.do_predict {
            self.predict()?;
        }
        Ok(TrainSummary {
            global_step: self.global_step,
            train_loss,
            eval_loss,
            runtime_s: runtime,
            stop: if self.early_stopped { StopReason::EarlyStopped } else { StopReason::Finished },
            output_dir: out,
            checkpoint: None,
        })
    }

    fn trainer_state(&self) -> TrainerState {
        TrainerState {
            global_step: self.global_step,
            max_steps: self.total_steps,
            num_train_epochs: self.args.num_train_epochs,
            epoch: self.loader.epoch_progress(),
            logging_steps: self.args.logging_steps,
            eval_steps: self.args.eval_steps.unwrap_or(self.args.logging_steps),
            save_steps: self.args.save_steps,
            train_batch_size: self.args.per_device_train_batch_size,
            log_history: self.log_history.clone(),
            best_metric: self.best_eval,
            is_local_process_zero: true,
            is_world_process_zero: true,
            ..Default::default()
        }
    }

    fn qk(&self) -> Option<QkPermutation> {
        QkPermutation::for_config(&self.cfg)
    }

    /// The adapter config written with the adapter. PiSSA adapters are saved converted for the
    /// original base (rank 2r, alpha scaled so the update's scale is unchanged).
    pub fn adapter_config(&self) -> Result<AdapterConfig> {
        // From the model itself (a continued adapter keeps its own rank and targets).
        let loras = self.model.loras();
        let first = loras.first().ok_or_else(|| Error::msg("the model has no LoRA layers"))?;
        let targets: Vec<String> = ALL_TARGETS
            .iter()
            .filter(|t| loras.iter().any(|l| l.name.rsplit('.').next() == Some(**t)))
            .map(|t| t.to_string())
            .collect();
        let mut lora = first.cfg.clone();
        if self.args.pissa_init {
            lora.rank *= 2;
            lora.alpha *= if lora.use_rslora { std::f32::consts::SQRT_2 } else { 2.0 };
        }
        Ok(AdapterConfig::new(&lora, &targets, &self.base))
    }

    /// The trained result into `dir`: a PEFT adapter (LoRA) or the trained tensors (freeze/full).
    pub fn save_trained(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if self.args.finetuning_type == FinetuningType::Lora {
            let mut meta = HashMap::new();
            meta.insert("loraforge.base".to_string(), self.base.clone());
            if let Some(fp) = &self.base_fingerprint {
                meta.insert("loraforge.base_fingerprint".to_string(), fp.clone());
            }
            save_adapter(&self.model, dir, &self.adapter_config()?, self.qk(), meta)
        } else {
            let vals = self.model.trainable_values()?;
            let tensors: Vec<(String, Vec<usize>, &[f32])> =
                vals.iter().map(|(n, s, d)| (n.clone(), s.clone(), d.as_slice())).collect();
            checkpoint::save_f32_tensors(&dir.join("model.safetensors"), &tensors)
        }
    }

    /// Writes checkpoint-{step} atomically and rotates old ones; returns its path.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let dir = checkpoint::checkpoint_dir(&self.output_dir, self.global_step);
        let named: Vec<(String, crate::VarId)> =
            self.model.trainable_vars()?.into_iter().map(|(n, v, _)| (n, v)).collect();
        let moments = self.opt.export_state(&self.be, &named)?;
        let values = self.model.trainable_values()?;
        let state = LoopState {
            global_step: self.global_step,
            optimizer_step: self.opt.step,
            data: self.loader.position(),
            seed: self.args.seed,
            total_steps: self.total_steps,
            loss_sum: self.loss_sum,
            loss_steps: self.loss_steps,
            total_tokens: self.total_tokens,
            best_eval: self.best_eval,
            evals_without_improvement: self.evals_without_improvement,
            log_history: self.log_history.clone(),
        };
        let trainer_state = self.trainer_state();
        // The adapter goes in too, so a checkpoint is itself a usable PEFT adapter.
        let lora = self.args.finetuning_type == FinetuningType::Lora;
        let adapter = if lora { Some(self.adapter_config()?) } else { None };
        let qk = self.qk();
        let model = &self.model;
        checkpoint::write_dir_atomic(&dir, |tmp| {
            let t: Vec<(String, Vec<usize>, &[f32])> =
                values.iter().map(|(n, s, d)| (n.clone(), s.clone(), d.as_slice())).collect();
            checkpoint::save_f32_tensors(&tmp.join(TRAINABLE_FILE), &t)?;
            let mut o: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
            for (n, m, v) in &moments {
                o.push((format!("{n}.exp_avg"), vec![m.len()], m));
                o.push((format!("{n}.exp_avg_sq"), vec![v.len()], v));
            }
            checkpoint::save_f32_tensors(&tmp.join(OPTIMIZER_FILE), &o)?;
            if let Some(ac) = &adapter {
                save_adapter(model, tmp, ac, qk, HashMap::new())?;
            }
            trainer_state.save(&tmp.join("trainer_state.json"))?;
            write_json_atomic(&tmp.join(CHECKPOINT_STATE), &serde_json::to_value(&state)?)?;
            checkpoint::write_checkpoint_marker(tmp, state.global_step)
        })?;
        checkpoint::rotate_checkpoints(&self.output_dir, self.args.save_total_limit, None)?;
        Ok(dir)
    }

    /// Restores a checkpoint written by `save_checkpoint` of the same configuration.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let sp = dir.join(CHECKPOINT_STATE);
        let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
        let state: LoopState = serde_json::from_str(&text)
            .map_err(|e| Error::Format { path: sp.display().to_string(), msg: e.to_string() })?;
        if state.seed != self.args.seed {
            self.notes.push(format!(
                "resume: the checkpoint was trained with seed {}, this run has seed {}; using the run's seed",
                state.seed, self.args.seed
            ));
        }
        let values = checkpoint::load_f32_tensors(&dir.join(TRAINABLE_FILE))?;
        self.model.set_trainable_values(&values)?;
        let named: Vec<(String, crate::VarId)> =
            self.model.trainable_vars()?.into_iter().map(|(n, v, _)| (n, v)).collect();
        let raw = checkpoint::load_f32_tensors(&dir.join(OPTIMIZER_FILE))?;
        let mut moments = Vec::new();
        for (n, _, m) in &raw {
            if let Some(base) = n.strip_suffix(".exp_avg") {
                let v = raw
                    .iter()
                    .find(|(k, _, _)| k == &format!("{base}.exp_avg_sq"))
                    .ok_or_else(|| Error::msg(format!("{}: {base}.exp_avg_sq missing", dir.display())))?;
                moments.push((base.to_string(), m.clone(), v.2.clone()));
            }
        }
        self.opt.import_state(&self.be, &named, &moments, state.optimizer_step)?;
        self.loader.seek(&state.data)?;
        self.global_step = state.global_step;
        if state.total_steps != self.total_steps {
            self.notes.push(format!(
                "resume: the checkpoint's run had {} steps, this one has {}",
                state.total_steps, self.total_steps
            ));
        }
        self.loss_sum = state.loss_sum;
        self.loss_steps = state.loss_steps;
        self.total_tokens = state.total_tokens;
        self.best_eval = state.best_eval;
        self.evals_without_improvement = state.evals_without_improvement;
        self.log_history = state.log_history;
        Ok(())
    }

    /// Generates an answer for every prediction prompt and writes generated_predictions.jsonl and
    /// predict_results.json (BLEU-4, ROUGE-1/2/L). Returns the metrics.
    pub fn predict(&mut self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let chat = self.chat.as_ref().ok_or_else(|| Error::msg("do_predict needs a tokenizer"))?;
        let items: Vec<PredictItem> = data::prepare_predict(&data_options(&self.args), chat)?;
        let gen = self.generate_config();
        let path = self.output_dir.join("generated_predictions.jsonl");
        let mut lines = String::new();
        let (mut preds, mut refs) = (Vec::new(), Vec::new());
        for it in &items {
            let ids = generate(&self.model, &it.prompt_ids, &gen, &mut |_| true)?;
            let ids: Vec<u32> = ids.into_iter().filter(|i| !gen.stop_ids.contains(i)).collect();
            let text = chat.tok.decode(&ids, true);
            let prompt = chat.tok.decode(&it.prompt_ids, false);
            lines +=
                &serde_json::to_string(&serde_json::json!({"prompt": prompt, "predict": text, "label": it.reference}))?;
            lines.push('\n');
            preds.push(text);
            refs.push(it.reference.clone());
        }
        std::fs::write(&path, lines).map_err(|e| Error::io(&path, e))?;
        let mut m = serde_json::Map::new();
        for (k, v) in metrics::similarity(&preds, &refs) {
            m.insert(if k.starts_with("predict_") { k } else { format!("predict_{k}") }, v);
        }
        save_metrics(&self.output_dir, "predict", &m)?;
        Ok(m)
    }

    /// Generation settings from the config (do_sample, temperature, top_p, top_k, ...).
    pub fn generate_config(&self) -> GenerateConfig {
        let a = &self.args;
        GenerateConfig {
            max_new_tokens: a.max_new_tokens,
            temperature: if a.do_sample { a.temperature as f32 } else { 0.0 },
            top_k: a.top_k,
            top_p: a.top_p as f32,
            repetition_penalty: a.repetition_penalty as f32,
            seed: a.seed,
            stop_ids: self.chat.as_ref().map(|c| c.tok.stop_ids()).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Total tokens seen so far.
    pub fn total_tokens(&self) -> u64 {
        self.total_tokens
    }

    pub fn backend(&self) -> &B {
        &self.be
    }
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Refuses an output_dir holding another run unless overwrite_output_dir or resuming.
fn check_output_dir(args: &TrainArgs) -> Result<()> {
    let dir = Path::new(&args.output_dir);
    if args.resume_from_checkpoint.is_none() && !args.overwrite_output_dir && holds_a_run(dir) {
        return Err(Error::msg(format!(
            "output_dir {} already exists and is not empty: set overwrite_output_dir: true to write over it, or \
             resume_from_checkpoint: true to continue its run",
            dir.display()
        )));
    }
    Ok(())
}

/// Which base tensors freeze tuning trains (LLaMA-Factory's rules): the last
/// `freeze_trainable_layers` layers (the first ones when negative), their modules named in
/// `freeze_trainable_modules` (`all`: every tensor of those layers), plus `freeze_extra_modules`
/// outside the layers (e.g. `embed_tokens`, `norm`, `lm_head`).
pub fn freeze_selection(args: &TrainArgs, n_layers: usize) -> Result<impl Fn(&str) -> bool> {
    let n = args.freeze_trainable_layers;
    if n == 0 || n.unsigned_abs() as usize > n_layers {
        return Err(Error::msg(format!(
            "freeze_trainable_layers: {n} with a {n_layers}-layer model; expected 1..={n_layers} (last layers) or \
             -{n_layers}..=-1 (first layers)"
        )));
    }
    let layers: Vec<usize> =
        if n > 0 { (n_layers - n as usize..n_layers).collect() } else { (0..n.unsigned_abs() as usize).collect() };
    let modules: Vec<String> = args.freeze_trainable_modules.iter().map(|s| s.trim().to_string()).collect();
    let all = modules.iter().any(|m| m.eq_ignore_ascii_case("all"));
    let extra: Vec<String> = args.freeze_extra_modules.iter().map(|s| s.trim().to_string()).collect();
    Ok(move |name: &str| {
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let Ok(idx) = idx.parse::<usize>() else { return false };
            layers.contains(&idx) && (all || modules.iter().any(|m| tail.split('.').any(|part| part == m)))
        } else {
            extra.iter().any(|m| name.split('.').any(|part| part == m))
        }
    })
}

/// The memory plan of a run: weights as stored, trainable tensors with gradients and AdamW
/// moments, activations and the fused loss. (`loraforge plan` prints it.)
pub fn plan_memory<B: Backend>(model: &mut Transformer<B>, cfg: &ModelConfig, args: &TrainArgs) -> Result<MemoryPlan> {
    let be = model.norm.backend().clone();
    let mut weight_bytes = 0u64;
    let trainable = model.trainable_scalars()? as u64;
    for (_, slot) in model.base_slots_mut()? {
        weight_bytes += match slot {
            crate::model::trainable::Slot::Weight(crate::ops::Weight::Frozen(q)) => be.quant_bytes(q),
            crate::model::trainable::Slot::Weight(crate::ops::Weight::Dense(t)) => 4 * t.elem_count() as u64,
            crate::model::trainable::Slot::Tensor(t) => 4 * t.elem_count() as u64,
        };
    }
    let lora = crate::train::memory::LoraShape {
        rank: args.lora_rank,
        targets: if args.finetuning_type == FinetuningType::Lora { lora_targets(args)? } else { Vec::new() },
        dora: args.use_dora,
    };
    // A frozen head the backend cannot read packed is decoded to f32 for the loss.
    let head_decoded = !matches!(model.lm_head.as_ref().unwrap_or(&model.embed), crate::ops::Weight::Dense(_))
        && !be.reads_packed_head();
    let mut p = crate::train::memory::plan_lora_training(
        cfg,
        weight_bytes,
        &lora,
        args.per_device_train_batch_size,
        args.cutoff_len,
        !args.disable_gradient_checkpointing,
        head_decoded,
    );
    // Trainable base tensors (freeze/full): their gradients and moments.
    let lora_scalars = crate::train::memory::lora_params(cfg, &lora);
    let dense_trainable = trainable.saturating_sub(lora_scalars);
    p.gradients += 4 * dense_trainable;
    p.optimizer += 8 * dense_trainable;
    Ok(p)
}
