//! `loraforge info`: what a model is and what it needs.

use crate::backend::DeviceKind;
use crate::error::Result;
use crate::io::gguf::GgufFile;
use crate::model::ModelConfig;
use crate::train::memory::{human_bytes, plan_inference, plan_lora_training, LoraShape};
use std::collections::BTreeMap;
use std::path::Path;

pub fn devices() {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| human_bytes(kb * 1024))
        .unwrap_or_else(|| "unknown".into());
    println!("cpu    available: {threads} threads, {mem} RAM, f32 compute (the reference backend)");
    #[cfg(feature = "wgpu")]
    {
        let adapters = crate::backend::wgpu::describe_adapters();
        if adapters.is_empty() {
            println!("wgpu   unavailable: no adapter found (Vulkan/Metal/DX12 driver)");
        }
        for a in adapters {
            println!("wgpu   {a}");
        }
        match crate::backend::wgpu::WgpuBackend::new() {
            Ok(b) => println!("wgpu   selected: {}", b.adapter_name()),
            Err(e) => println!("wgpu   not selectable: {e}"),
        }
    }
    #[cfg(not(feature = "wgpu"))]
    if let Err(e) = crate::backend::wgpu_stub::unavailable::<()>() {
        println!("wgpu   unavailable: {e}");
    }
    if let Err(e) = crate::backend::cuda_stub::unavailable::<()>() {
        println!("cuda   unavailable: {e}");
    }
}

/// What `info` prints about a model's storage, from either kind of source.
struct Facts {
    cfg: ModelConfig,
    label: String,
    /// type name → (tensor count, bytes)
    types: BTreeMap<String, (usize, u64)>,
    weight_bytes: u64,
    n_tensors: usize,
    template: Option<usize>,
    head_quantized: bool,
}

fn gguf_facts(path: &Path) -> Result<Facts> {
    let f = GgufFile::open(path)?;
    let cfg = ModelConfig::from_gguf(&f)?;
    let name = f.get("general.name").and_then(|v| v.as_str()).unwrap_or("");
    let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut weight_bytes = 0u64;
    for t in f.tensors() {
        let e = types.entry(t.ty.upper_name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes as u64;
        weight_bytes += t.n_bytes as u64;
    }
    let head_quantized =
        f.tensor(if cfg.tie_word_embeddings { "token_embd.weight" } else { "output.weight" })?.ty.block_size() > 1;
    Ok(Facts {
        label: format!("{} ({name}, GGUF v{})", path.display(), f.version()),
        types,
        weight_bytes,
        n_tensors: f.tensors().len(),
        template: f.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(|t| t.len()),
        head_quantized,
        cfg,
    })
}

fn hf_facts(dir: &Path) -> Result<Facts> {
    let cfg = ModelConfig::from_hf_file(dir.join("config.json"))?;
    let st = crate::io::safetensors::SafetensorsDir::open(dir)?;
    let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut weight_bytes = 0u64;
    let list = st.list();
    for (_, dtype, shape) in &list {
        let bytes = (shape.iter().product::<usize>() as u64 * dtype.bitsize() as u64).div_ceil(8);
        let e = types.entry(format!("{dtype:?}")).or_default();
        e.0 += 1;
        e.1 += bytes;
        weight_bytes += bytes;
    }
    let template = crate::tokenizer::template::ChatTemplate::from_hf_dir(dir).ok().flatten().map(|t| t.source().len());
    Ok(Facts {
        label: format!("{} (Hugging Face directory, {} safetensors file(s))", dir.display(), st.files().len()),
        types,
        weight_bytes,
        n_tensors: list.len(),
        template,
        head_quantized: false,
        cfg,
    })
}

pub fn model(path: &Path, seq: usize, rank: usize, device: DeviceKind) -> Result<()> {
    let facts = if path.is_dir() { hf_facts(path)? } else { gguf_facts(path)? };
    let Facts { cfg, label, types, weight_bytes, n_tensors, template, head_quantized } = facts;
    println!("model         {label}");
    println!(
        "architecture  {}: {} layers, hidden {}, {} heads / {} KV heads, head dim {}, FFN {}, vocab {}",
        cfg.arch,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size
    );
    println!(
        "parameters    {:.1}M{}",
        cfg.param_count() as f64 / 1e6,
        if cfg.tie_word_embeddings { " (tied embeddings)" } else { "" }
    );
    let ty: Vec<String> = types.iter().map(|(k, (n, b))| format!("{k} ×{n} ({})", human_bytes(*b))).collect();
    println!("tensors       {n_tensors} in {}: {}", human_bytes(weight_bytes), ty.join(", "));
    let window = match (cfg.sliding_window, cfg.sliding_window_pattern) {
        (Some(w), Some(p)) => format!(", sliding window {w} on {} of every {p} layers", p - 1),
        (Some(w), None) => format!(", sliding window {w}"),
        _ => String::new(),
    };
    println!(
        "context       {} tokens; RoPE base {}{}{window}",
        cfg.max_position_embeddings,
        cfg.rope_theta,
        cfg.rope_local_theta.map(|t| format!(" (local layers {t})")).unwrap_or_default()
    );
    match template {
        Some(n) => println!("template      the model's own ({n} characters)"),
        None => {
            println!("template      none in the file: name a built-in one (e.g. `gemma`) when chatting or training")
        }
    }
    let run = plan_inference(&cfg, weight_bytes, seq);
    println!(
        "run           {} = weights {} + KV cache {} ({seq} tokens, f32) on {device:?}",
        human_bytes(run.total()),
        human_bytes(run.weights),
        human_bytes(run.kv_cache)
    );
    let all = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let lora = LoraShape { rank, targets: all.iter().map(|s| s.to_string()).collect(), dora: false };
    // wgpu reads a quantized head packed in the loss kernel; the CPU decodes it to f32 (V × C).
    let head_decoded = head_quantized && !matches!(device, DeviceKind::Wgpu);
    let p = plan_lora_training(&cfg, weight_bytes, &lora, 1, seq, true, head_decoded);
    println!(
        "LoRA train    {} = weights {} + adapters/grads/AdamW {} + activations {} + the larger of backward {} and loss {} (r={rank} on all 7 projections, batch 1 × {seq}, checkpointing)",
        human_bytes(p.total()),
        human_bytes(p.weights),
        human_bytes(p.adapters + p.gradients + p.optimizer),
        human_bytes(p.activations),
        human_bytes(p.backward),
        human_bytes(p.loss)
    );
    Ok(())
}
