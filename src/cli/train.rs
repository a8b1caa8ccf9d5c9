//! `loraforge train CONFIG.yaml [overrides]` and `loraforge plan CONFIG.yaml`: parse the config
//! (LLaMA-Factory keys), show its notes, plan memory, refuse a run that will not fit, train with a
//! progress bar, stop cleanly with a checkpoint on Ctrl-C.

use crate::backend::{CpuBackend, DeviceKind};
use crate::error::{Error, Result};
use crate::train::args::TrainArgs;
use crate::train::memory::{human_bytes, peak_rss, MemoryPlan};
use crate::train::trainer::{StopReason, Trainer};
use std::path::Path;
use std::sync::atomic::Ordering;

fn load_args(config: &Path, overrides: &[String]) -> Result<(TrainArgs, Vec<String>)> {
    let (args, notes) = TrainArgs::load(Some(config), overrides)?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    Ok((args, notes))
}

/// Bytes the device can give a run: `max_memory_gb` when set, else the machine's available RAM
/// (CPU backend).
pub fn device_budget(args: &TrainArgs) -> Option<u64> {
    if let Some(gb) = args.max_memory_gb {
        return Some((gb * (1u64 << 30) as f64) as u64);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The plan as a table.
pub fn format_plan(p: &MemoryPlan, budget: Option<u64>) -> String {
    let mut s = String::new();
    for (k, v) in [
        ("weights", p.weights),
        ("adapters / trainable", p.adapters),
        ("gradients", p.gradients),
        ("optimizer (AdamW)", p.optimizer),
        ("activations (saved)", p.activations),
        ("backward (one layer)*", p.backward),
        ("loss (logit chunk)*", p.loss),
    ] {
        s += &format!("  {k:<22} {:>10}\n", human_bytes(v));
    }
    s += "  * not held at the same time: the total counts the larger\n";
    s += &format!("  {:<22} {:>10}\n", "total", human_bytes(p.total()));
    if let Some(b) = budget {
        s += &format!("  {:<22} {:>10}\n", "available", human_bytes(b));
    }
    s
}

/// What would make a run fit, from the plan's largest parts.
fn advice(args: &TrainArgs, p: &MemoryPlan) -> String {
    let mut v = Vec::new();
    if args.disable_gradient_checkpointing {
        v.push("enable gradient checkpointing (remove disable_gradient_checkpointing)".to_string());
    }
    if p.activations + p.backward > p.weights / 2 {
        if args.per_device_train_batch_size > 1 {
            v.push(format!(
                "per_device_train_batch_size: {} with gradient_accumulation_steps: {} (same effective batch)",
                (args.per_device_train_batch_size / 2).max(1),
                args.gradient_accumulation_steps * 2
            ));
        }
        v.push(format!("cutoff_len: {}", (args.cutoff_len / 2).max(64)));
    }
    if args.quantization_bit.is_none() {
        v.push("quantization_bit: 4 (QLoRA) for a dense base".into());
    }
    if p.optimizer > p.weights / 4 {
        v.push("finetuning_type: lora with a smaller lora_rank".into());
    }
    v.join("; ")
}

pub fn plan(config: &Path, overrides: &[String]) -> Result<()> {
    let (mut args, notes) = load_args(config, overrides)?;
    // Planning never writes: pretend the output dir is free.
    args.overwrite_output_dir = true;
    args.resume_from_checkpoint = None;
    let be = CpuBackend::new();
    let mut n = notes.clone();
    let mut parts = crate::train::trainer::load_parts(&be, &args, &mut n)?;
    let plan = crate::train::trainer::plan_memory(&mut parts.model, &parts.cfg, &args)?;
    let budget = device_budget(&args);
    println!(
        "memory plan for {} ({} x {} tokens, {}):",
        args.model_name_or_path,
        args.per_device_train_batch_size,
        args.cutoff_len,
        if args.disable_gradient_checkpointing { "no checkpointing" } else { "checkpointing" }
    );
    print!("{}", format_plan(&plan, budget));
    match budget {
        Some(b) if plan.total() > b => println!("does NOT fit; try: {}", advice(&args, &plan)),
        Some(_) => println!("fits"),
        None => {}
    }
    Ok(())
}

pub fn train(config: &Path, overrides: &[String]) -> Result<()> {
    let (args, notes) = load_args(config, overrides)?;
    match args.device_kind()? {
        DeviceKind::Cpu | DeviceKind::Auto => run(CpuBackend::new(), args, notes),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => run(crate::backend::wgpu::WgpuBackend::new()?, args, notes),
        other => Err(Error::msg(format!(
            "device {other:?}: training on this backend is not available in this build; use device: cpu or wgpu"
        ))),
    }
}

fn run<B: crate::backend::Backend>(be: B, args: TrainArgs, notes: Vec<String>) -> Result<()> {
    let mut t = Trainer::new(be, args, notes)?;
    eprint!("{}", t.describe()?);
    let budget = device_budget(&t.args);
    if let Some(b) = budget {
        if t.plan.total() > b {
            return Err(Error::msg(format!(
                "this run needs about {} but {} is available:\n{}try: {}",
                human_bytes(t.plan.total()),
                human_bytes(b),
                format_plan(&t.plan, budget),
                advice(&t.args, &t.plan)
            )));
        }
    }
    let flag = t.cancel_flag();
    // First Ctrl-C: stop after this step with a checkpoint. A second one exits at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step and writing a checkpoint (Ctrl-C again to quit at once)");
    });
    t.enable_progress();
    let s = t.run(&mut |_| true)?;
    let peak = crate::backend::Backend::memory(t.backend()).peak;
    eprintln!(
        "memory: predicted {} (plan), measured peak {} ({} accounting), peak RSS {}",
        human_bytes(t.plan.total()),
        human_bytes(peak),
        crate::backend::Backend::name(t.backend()),
        human_bytes(peak_rss())
    );
    match s.stop {
        StopReason::Cancelled => Ok(()),
        _ => {
            eprintln!(
                "done: {} steps, train_loss {:.4}{} in {:.1} s; output in {}",
                s.global_step,
                s.train_loss,
                s.eval_loss.map(|e| format!(", eval_loss {e:.4}")).unwrap_or_default(),
                s.runtime_s,
                s.output_dir.display()
            );
            Ok(())
        }
    }
}

/// `loraforge export CONFIG.yaml`.
pub fn export(config: &Path, overrides: &[String]) -> Result<()> {
    use crate::export::{ExportKind, ExportOptions};
    use crate::train::args::ExportFormat;
    let (args, _) = load_args(config, overrides)?;
    let Some(dir) = args.export_dir.clone() else {
        return Err(Error::msg("export: set export_dir (where the exported model or adapter goes)"));
    };
    let model = crate::train::trainer::resolve_model_path(&args.model_name_or_path)?;
    let adapters: Vec<std::path::PathBuf> = args.adapter_name_or_path.iter().map(std::path::PathBuf::from).collect();
    let opts = ExportOptions {
        kind: match args.export_format {
            ExportFormat::Safetensors => ExportKind::Safetensors,
            ExportFormat::Gguf => ExportKind::Gguf,
            ExportFormat::GgufAdapter => ExportKind::GgufAdapter,
        },
        export_dir: dir.into(),
        export_size_gb: args.export_size as f64,
        dtype: args.export_dtype.clone(),
        quant: args.export_quant.clone(),
        legacy_format: args.export_legacy_format,
        template: args.template.clone(),
    };
    let report = crate::export::export(&model, &adapters, &opts)?;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    for f in &report.files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        println!("wrote {} ({})", f.display(), human_bytes(size));
    }
    Ok(())
}
