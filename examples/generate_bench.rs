//! Greedy decoding speed with a real GGUF model (KV cache, one token per step) on the CPU or wgpu.
//! Prints prefill and decode tokens/s, time per token, and the KV cache size.
//!
//!   cargo run --release --example generate_bench [-- --model PATH --prompt 64 --new 64 --repeat 2
//!                                                    --device cpu|wgpu]
//!
//! Default model: ~/.cache/loraforge/models/SmolLM2-135M-Instruct.Q4_1.gguf (models/fetch.sh).
//! The prompt is synthetic (token ids 1000, 1001, ...): speed does not depend on the text.

use loraforge::backend::CpuBackend;
use loraforge::generate::{argmax, GenerateConfig, Sampler, Session};
use loraforge::model::ModelConfig;
use loraforge::model::{load_gguf, AdapterSpec};
use loraforge::Backend;
use std::path::PathBuf;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() -> loraforge::Result<()> {
    let path = arg("--model").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").expect("HOME"))
            .join(".cache/loraforge/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    match arg("--device").as_deref().unwrap_or("cpu") {
        "cpu" => bench(CpuBackend::new(), &path),
        #[cfg(feature = "wgpu")]
        "wgpu" => bench(loraforge::backend::wgpu::WgpuBackend::new()?, &path),
        other => Err(loraforge::Error::msg(format!("--device {other}: expected cpu or wgpu"))),
    }
}

fn bench<B: Backend>(be: B, path: &std::path::Path) -> loraforge::Result<()> {
    let num = |name: &str, default: usize| arg(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (n_prompt, n_new, repeat) = (num("--prompt", 64), num("--new", 64), num("--repeat", 2));
    let (model, cfg): (_, ModelConfig) = load_gguf(&be, path, &AdapterSpec::default())?;
    println!("{} ({}, {} layers), backend {}", path.display(), cfg.arch, cfg.num_hidden_layers, be.name());
    let prompt: Vec<u32> = (0..n_prompt).map(|i| (1000 + i % (cfg.vocab_size - 1000)) as u32).collect();
    // Run `repeat` times and report the last (the first run warms page cache and allocator).
    for run in 0..repeat {
        let mut s = Session::new(&model);
        let t0 = Instant::now();
        let mut z = s.prefill(&prompt)?;
        let t_prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..n_new {
            z = s.step(argmax(&z))?;
        }
        let t_decode = t1.elapsed().as_secs_f64();
        println!(
            "run {run}: prefill {n_prompt} tokens in {:.3} s ({:.1} tok/s); decode {n_new} tokens in {:.3} s \
             ({:.1} tok/s, {:.1} ms/token); KV cache {:.2} MiB at {} positions",
            t_prefill,
            n_prompt as f64 / t_prefill,
            t_decode,
            n_new as f64 / t_decode,
            1e3 * t_decode / n_new as f64,
            s.cache_bytes() as f64 / (1 << 20) as f64,
            s.pos()
        );
        // Sampling cost per token (full-vocabulary sort for top-p), on the last logits.
        let mut sampler = Sampler::new(&GenerateConfig { temperature: 0.7, top_p: 0.9, ..GenerateConfig::default() });
        let t2 = Instant::now();
        for _ in 0..20 {
            std::hint::black_box(sampler.sample(&z, &prompt));
        }
        println!(
            "  sampling (T 0.7, top-p 0.9, V {}): {:.2} ms/token",
            z.len(),
            1e3 * t2.elapsed().as_secs_f64() / 20.0
        );
    }
    Ok(())
}
