//! The CPU LoRA benchmark of issue 3: LoRA r=16 on all 7 projections of SmolLM2-135M-Instruct,
//! fp32 base (the Q4_1 fixture decoded to dense f32, as PyTorch would hold it), batch 4 × 512
//! tokens, AdamW; seconds per step, tokens/s and peak RSS, with and without activation
//! checkpointing. `--base q4_1` keeps the quantized base as it is instead.
//!
//!   cargo run --release --example bench_lora_smollm2 [-- --steps 3 --batch 4 --seq 512 --base f32|q4_1 --no-checkpoint]
//!
//! Reference (same 2-core machine class, PyTorch 2.15 + PEFT 0.21, fp32): 9.76 s/step (210 tokens/s) at
//! 7.3 GB peak RSS; 5.3 GB and 150 tokens/s with gradient checkpointing.

use loraforge::backend::CpuBackend;
use loraforge::lora::LoraConfig;
use loraforge::model::{load_gguf, AdapterSpec, Batch};
use loraforge::rng::Rng;
use loraforge::train::memory::peak_rss;
use loraforge::train::step::train_step;
use loraforge::train::{AdamW, AdamWConfig};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).cloned()
}

fn main() -> loraforge::Result<()> {
    let steps: usize = arg("--steps").and_then(|v| v.parse().ok()).unwrap_or(3);
    let batch: usize = arg("--batch").and_then(|v| v.parse().ok()).unwrap_or(4);
    let seq: usize = arg("--seq").and_then(|v| v.parse().ok()).unwrap_or(512);
    let base = arg("--base").unwrap_or_else(|| "f32".into());
    let checkpoint = !std::env::args().any(|a| a == "--no-checkpoint");
    let path = std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/loraforge/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let be = CpuBackend::new();
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let spec = AdapterSpec {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        lora: LoraConfig { rank: 16, alpha: 32.0, ..Default::default() },
        seed: 0,
        quantize: None,
    };
    let (mut model, cfg) = load_gguf(&be, &path, &spec)?;
    if base == "f32" {
        model.densify()?;
    }
    let mut rng = Rng::new(0);
    let rows: Vec<Vec<u32>> =
        (0..batch).map(|_| (0..seq).map(|_| rng.below(cfg.vocab_size) as u32).collect()).collect();
    let b = Batch::causal_lm(&rows)?;
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-4, ..Default::default() });
    println!(
        "SmolLM2-135M, {base} base, LoRA r=16 on 7 projections ({} trainable), batch {batch} x {seq}, AdamW, checkpointing {checkpoint}, {}",
        model.trainable_count(),
        loraforge::backend::Backend::name(&be)
    );
    let mut times = Vec::new();
    for s in 0..steps {
        let t = Instant::now();
        let o = train_step(&mut model, &mut opt, std::slice::from_ref(&b), 1e-4, checkpoint, s as u64)?;
        let dt = t.elapsed().as_secs_f64();
        times.push(dt);
        println!(
            "step {}: loss {:.4}  {:.2} s  {:.0} tokens/s  peak RSS {:.2} GB",
            s + 1,
            o.loss,
            dt,
            (batch * seq) as f64 / dt,
            peak_rss() as f64 / 1e9
        );
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    println!(
        "median {med:.2} s/step, {:.0} tokens/s, peak RSS {:.2} GB",
        (batch * seq) as f64 / med,
        peak_rss() as f64 / 1e9
    );
    Ok(())
}
