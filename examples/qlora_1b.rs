//! QLoRA fine-tuning of a ~1B model on the best device, with the effect measured as a number.
//!
//!   cargo run --release --example qlora_1b                       # SmolLM2-135M-Instruct (fetched if needed)
//!   cargo run --release --example qlora_1b -- --model PATH       # a GGUF file or Hugging Face directory
//!   cargo run --release --example qlora_1b -- --random-init llama-3.2-1b --seq 2048 --steps 3
//!
//! With a real model: evaluates the demo date-rewriting task (data/demo_dates*.json: rewrite a
//! date in ISO 8601, scored by exact match) before and after 4-bit QLoRA on it, saves the
//! adapter, and shows a chat sample. A dense base (HF safetensors in F32/F16/BF16) is quantized to
//! NF4 (double quantization) as it loads; a GGUF base is trained as its blocks are stored.
//! With `--random-init NAME`: a randomly initialised model of that exact shape (NF4 projections)
//! trains on random tokens, printing seconds per step, tokens/s and peak memory.
//!
//! Options: --steps N (default 60), --rank R (16), --lr X (2e-4), --batch B (8), --seq T (cutoff_len, 256),
//! --eval-n N (prompts scored, 50), --out DIR (target/qlora_1b), --device auto|cpu|wgpu|cuda.

use loraforge::backend::{resolve_device, Backend, CpuBackend, DeviceKind};
use loraforge::data::demo::score_dates;
use loraforge::data::DataStage;
use loraforge::generate::generate;
use loraforge::model::presets::{preset_config, random_model};
use loraforge::tokenizer::template::Message;
use loraforge::train::args::{DeviceChoice, FinetuningType, TrainArgs};
use loraforge::train::memory::peak_rss;
use loraforge::train::progress::rate;
use loraforge::train::trainer::{adapter_spec, model_cache_dir, synthetic_data, ModelParts, Trainer};
use loraforge::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).cloned()
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match arg(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| Error::msg(format!("{name}: cannot parse `{v}`"))),
    }
}

/// The default model: SmolLM2-135M-Instruct, fetched through models/fetch.sh when missing.
fn default_model() -> Result<PathBuf> {
    let p = model_cache_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    println!("no --model given: using SmolLM2-135M-Instruct ({})", p.display());
    if !p.is_file() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fetch.sh");
        println!("not cached yet: running {} smollm2", script.display());
        let st = std::process::Command::new("bash")
            .arg(&script)
            .arg("smollm2")
            .status()
            .map_err(|e| Error::msg(format!("running {}: {e}", script.display())))?;
        if !st.success() || !p.is_file() {
            return Err(Error::msg(format!("{} failed; see its output above", script.display())));
        }
    }
    Ok(p)
}

fn base_args(model: &str, out: &Path) -> Result<TrainArgs> {
    let mut a = TrainArgs::default();
    a.model_name_or_path = model.to_string();
    a.stage = loraforge::train::args::Stage::Sft;
    a.finetuning_type = FinetuningType::Lora;
    a.quantization_bit = Some(4);
    a.double_quantization = true;
    a.lora_target = vec!["all".into()];
    a.lora_rank = num("--rank", 16)?;
    a.lora_alpha = Some(2.0 * a.lora_rank as f64);
    a.dataset = vec!["demo_dates".into()];
    a.eval_dataset = vec!["demo_dates_eval".into()];
    a.dataset_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").display().to_string();
    a.cutoff_len = num("--seq", 256)?;
    a.per_device_train_batch_size = num("--batch", 8)?;
    a.per_device_eval_batch_size = 8;
    a.gradient_accumulation_steps = 1;
    a.learning_rate = num("--lr", 2e-4)?;
    a.max_steps = Some(num("--steps", 60)?);
    a.lr_scheduler_type = loraforge::train::args::SchedulerType::Cosine;
    a.warmup_ratio = 0.1;
    a.logging_steps = 10;
    a.save_steps = 0;
    a.save_strategy = loraforge::train::args::SaveStrategy::No;
    a.output_dir = out.display().to_string();
    a.overwrite_output_dir = true;
    a.plot_loss = true;
    a.do_sample = false;
    a.max_new_tokens = 24;
    a.device = match arg("--device").as_deref() {
        None | Some("auto") => DeviceChoice::Auto,
        Some("cpu") => DeviceChoice::Cpu,
        Some("wgpu") => DeviceChoice::Wgpu,
        Some("cuda") => DeviceChoice::Cuda,
        Some(d) => return Err(Error::msg(format!("--device: unknown `{d}` (auto, cpu, wgpu, cuda)"))),
    };
    Ok(a)
}

/// Exact-match accuracy of greedy answers on the first `n` held-out date prompts.
/// (question, answer, expected) of a few scored prompts.
type Samples = Vec<(String, String, String)>;

fn score<B: Backend>(t: &Trainer<B>, n: usize) -> Result<(f64, Samples)> {
    let chat = t.chat.as_ref().expect("a real model has a tokenizer");
    let opts = loraforge::data::DataOptions {
        dataset: vec!["demo_dates_eval".into()],
        eval_dataset: vec!["demo_dates_eval".into()],
        dataset_dir: PathBuf::from(&t.args.dataset_dir),
        stage: DataStage::Sft,
        cutoff_len: t.args.cutoff_len,
        max_samples: Some(n),
        packing: false,
        neat_packing: false,
        train_on_prompt: false,
        mask_history: false,
        val_size: 0.0,
        streaming: false,
        seed: 0,
        default_system: None,
    };
    let items = loraforge::data::prepare_predict(&opts, chat)?;
    let gen = t.generate_config();
    let mut ok = 0;
    let mut samples = Vec::new();
    for it in items.iter().take(n) {
        let ids = generate(&t.model, &it.prompt_ids, &gen, &mut |_| true)?;
        let ids: Vec<u32> = ids.into_iter().filter(|i| !gen.stop_ids.contains(i)).collect();
        let answer = chat.tok.decode(&ids, true);
        if score_dates(&answer, &it.reference) {
            ok += 1;
        }
        if samples.len() < 3 {
            let q = it.prompt.last().map(|m| m.content.clone()).unwrap_or_default();
            samples.push((q, answer.trim().to_string(), it.reference.clone()));
        }
    }
    Ok((ok as f64 / items.len().min(n).max(1) as f64, samples))
}

/// The options this example takes (each followed by a value).
const OPTIONS: &[&str] =
    &["--model", "--random-init", "--steps", "--rank", "--lr", "--batch", "--seq", "--eval-n", "--out", "--device"];

/// `--help` prints the usage (this file's header); an unknown option or one without a value is an
/// error naming the nearest known one (a typo must not start a run that ignores it).
fn check_args() -> Result<bool> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.iter().any(|x| x == "--help" || x == "-h") {
        let header = include_str!("qlora_1b.rs").lines().take_while(|l| l.starts_with("//!"));
        let usage: Vec<&str> = header.map(|l| l.strip_prefix("//! ").unwrap_or(&l[3..])).collect();
        println!("{}", usage.join("\n"));
        return Ok(false);
    }
    let mut i = 0;
    while i < a.len() {
        let o = a[i].as_str();
        if !OPTIONS.contains(&o) {
            let hint =
                loraforge::error::nearest(o, OPTIONS).map(|n| format!(" (did you mean {n}?)")).unwrap_or_default();
            return Err(Error::msg(format!("unknown argument `{o}`{hint}; --help lists the options")));
        }
        if i + 1 >= a.len() {
            return Err(Error::msg(format!("{o} needs a value")));
        }
        i += 2;
    }
    Ok(true)
}

fn main() {
    match check_args() {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The best device: `--device` (default auto: CUDA, then a hardware wgpu adapter, then the CPU).
fn device() -> Result<DeviceKind> {
    let kind: DeviceKind = arg("--device").unwrap_or_else(|| "auto".into()).parse()?;
    resolve_device(kind)
}

fn run() -> Result<()> {
    match device()? {
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => run_on(loraforge::backend::wgpu::WgpuBackend::new()?),
        DeviceKind::Cpu | DeviceKind::Auto => run_on(CpuBackend::new()),
        other => Err(Error::msg(format!("device {other:?} is not available in this build"))),
    }
}

fn run_on<B: Backend>(be: B) -> Result<()> {
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| "target/qlora_1b".into()));
    if let Some(name) = arg("--random-init") {
        return random_init(&name, &out);
    }
    let model = match arg("--model") {
        Some(m) => PathBuf::from(m),
        None => default_model()?,
    };
    let args = base_args(&model.display().to_string(), &out)?;
    let eval_n: usize = num("--eval-n", 50)?;
    let mut t = Trainer::new(be, args, Vec::new())?;
    for n in &t.notes {
        println!("note: {n}");
    }
    print!("{}", t.describe()?);
    let t0 = Instant::now();
    let loss0 = t.evaluate()?;
    let (acc0, _) = score(&t, eval_n)?;
    println!(
        "before: eval_loss {loss0:.4}, date task exact match {:.1}% ({:.1} s)",
        100.0 * acc0,
        t0.elapsed().as_secs_f64()
    );
    t.enable_progress();
    let t1 = Instant::now();
    let summary = t.run(&mut |_| true)?;
    let train_s = t1.elapsed().as_secs_f64();
    let loss1 = t.evaluate()?;
    let (acc1, samples) = score(&t, eval_n)?;
    println!(
        "after {} steps ({:.1} s, {:.0} tokens/s): eval_loss {loss1:.4}, date task exact match {:.1}%",
        summary.global_step,
        train_s,
        t.total_tokens() as f64 / train_s,
        100.0 * acc1
    );
    println!("| | eval loss | exact match |\n|---|---|---|\n| before | {loss0:.4} | {:.1}% |\n| after | {loss1:.4} | {:.1}% |", 100.0 * acc0, 100.0 * acc1);
    for (q, a, r) in samples {
        println!("  Q: {q}\n  A: {a}   (expected {r})");
    }
    println!("adapter: {}/adapter_model.safetensors", out.display());
    // A chat sample with the adapter.
    let chat = t.chat.as_ref().expect("tokenizer");
    let msgs = vec![Message {
        role: "user".into(),
        content: "Who are you, and what can you do with dates?".into(),
        ..Default::default()
    }];
    let ids = chat.encode_prompt(&msgs)?;
    let mut gen = t.generate_config();
    gen.max_new_tokens = 48;
    let reply = generate(&t.model, &ids, &gen, &mut |_| true)?;
    let reply: Vec<u32> = reply.into_iter().filter(|i| !gen.stop_ids.contains(i)).collect();
    println!("chat> {}\n{}", msgs[0].content, chat.tok.decode(&reply, true).trim());
    println!("peak RSS {:.2} GB", peak_rss() as f64 / 1e9);
    Ok(())
}

fn random_init(name: &str, out: &Path) -> Result<()> {
    match device()? {
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => random_init_on(loraforge::backend::wgpu::WgpuBackend::new()?, name, out),
        DeviceKind::Cpu | DeviceKind::Auto => random_init_on(CpuBackend::new(), name, out),
        other => Err(Error::msg(format!("device {other:?} is not available in this build"))),
    }
}

fn random_init_on<B: Backend>(be: B, name: &str, out: &Path) -> Result<()> {
    let cfg = preset_config(name)?;
    let mut args = base_args(&format!("random-init:{name}"), out)?;
    args.max_steps = Some(num("--steps", 3)?);
    args.per_device_train_batch_size = num("--batch", 1)?;
    args.cutoff_len = num("--seq", 2048)?;
    args.logging_steps = 1;
    args.plot_loss = false;
    args.eval_dataset.clear();
    let t0 = Instant::now();
    let spec = adapter_spec(&args)?;
    let model = random_model(&be, &cfg, &spec)?;
    println!(
        "random-init {name}: {:.2} B parameters, NF4 projections, built in {:.1} s",
        cfg.param_count() as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    let rows = args.per_device_train_batch_size * args.max_steps.unwrap_or(1);
    let data = synthetic_data(cfg.vocab_size, rows, args.cutoff_len, 0);
    let parts = ModelParts { model, cfg, chat: None, base: format!("random-init:{name}"), base_fingerprint: None };
    let mut t = Trainer::from_parts(be, args, Vec::new(), parts, Some(data))?;
    print!("{}", t.describe()?);
    let mut times = Vec::new();
    let tokens = t.args.per_device_train_batch_size * t.args.cutoff_len;
    while !t.is_done() {
        let s = Instant::now();
        let r = t.step()?;
        let dt = s.elapsed().as_secs_f64();
        times.push(dt);
        println!("step {}: loss {:.4}  {dt:.2} s  {} tokens/s", r.step, r.loss, rate(tokens as f64 / dt));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    let mem = loraforge::backend::Backend::memory(t.backend());
    println!(
        "median {med:.2} s/step, {} tokens/s; plan {:.2} GB, backend peak {:.2} GB, peak RSS {:.2} GB",
        rate(tokens as f64 / med),
        t.plan.total() as f64 / 1e9,
        mem.peak as f64 / 1e9,
        peak_rss() as f64 / 1e9
    );
    Ok(())
}
