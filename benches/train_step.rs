//! One LoRA'd transformer layer at Llama-3.2-1B shapes (hidden 2048, 32 heads / 8 KV heads,
//! head dim 64, FFN 8192, llama3 RoPE), r=16 on all 7 projections, 512 tokens: forward +
//! backward on the CPU backend, frozen weights dense f32 and NF4 (QLoRA), with and without
//! activation checkpointing. Prints ms, tokens/s, achieved GFLOP/s and peak memory.
//!
//!   cargo bench --bench train_step [-- --tokens 512 --iters 3] [nf4|f32]

use loraforge::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
use loraforge::backend::{Backend, CpuBackend, HostQuant};
use loraforge::lora::LoraConfig;
use loraforge::model::block::forward_checkpointed;
use loraforge::model::{BlockConfig, DecoderLayer, FrozenStore, LayerInputs};
use loraforge::quant::nf4::Nf4Matrix;
use loraforge::rng::Rng;
use loraforge::{Tape, Tensor};
use std::sync::Arc;
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> loraforge::Result<()> {
    let (t, iters) = (arg("--tokens", 512), arg("--iters", 3));
    let args: Vec<String> = std::env::args().collect();
    // `-- nf4` runs only the cases whose name contains "nf4" (cargo bench passes --bench too).
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--") && a.parse::<usize>().is_err()).cloned();
    let hd = 64;
    let cfg = BlockConfig {
        hidden_size: 2048,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: hd,
        intermediate_size: 8192,
        rms_norm_eps: 1e-5,
        norm_add_one: false,
        gelu: false,
        rope: RopeConfig {
            head_dim: hd,
            rotary_dim: hd,
            theta: 500000.0,
            layout: RopeLayout::HalfSplit,
            scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 8192,
            },
        },
        attn_scale: 1.0 / (hd as f32).sqrt(),
        sliding_window: None,
        attn_softcap: None,
        qk_norm: false,
        post_norms: false,
    };
    let lora = LoraConfig { rank: 16, alpha: 32.0, ..Default::default() };
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    // Dense weights per layer: 2048·(2048 + 512 + 512 + 2048) + 3·2048·8192 = 60.8M params.
    // Forward 2·60.8M FLOP/token + attention 4·T·2048/2 (causal). Backward of a frozen weight is dX
    // only (1× forward; LoRA's dA/dB are < 1% more), so a step is 2× forward, and 3× with
    // checkpointing, which runs the forward again.
    let params = 2048.0 * (2048.0 + 512.0 + 512.0 + 2048.0) + 3.0 * 2048.0 * 8192.0;
    let flops_fwd = t as f64 * (2.0 * params + 2.0 * t as f64 * 2048.0);
    let nf4: FrozenStore =
        FrozenStore::Quant(Box::new(|w: Vec<f32>, rows: usize, cols: usize| -> loraforge::Result<HostQuant> {
            Ok(Arc::new(Nf4Matrix::quantize(&w, rows, cols, 64, true)?))
        }));
    for (name, store) in [("f32 base", FrozenStore::Dense), ("nf4 base (QLoRA)", nf4)] {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        for checkpoint in [false, true] {
            let be = CpuBackend::new();
            let mut rng = Rng::new(0);
            let layer = Arc::new(DecoderLayer::random(&be, &cfg, "model.layers.0", &targets, &lora, &store, &mut rng)?);
            let x = Tensor::from_slice(&be, &(0..t * 2048).map(|_| rng.normal()).collect::<Vec<_>>(), [1, t, 2048])?;
            let inp =
                LayerInputs { positions: (0..t as u32).collect::<Vec<_>>().into(), segment_ids: None, seed: Some(0) };
            let base_mem = be.memory().current;
            let mut times = Vec::new();
            for _ in 0..iters + 1 {
                let start = Instant::now();
                let mut tape = Tape::new();
                let y = if checkpoint {
                    forward_checkpointed(&mut tape, &layer, &x, &inp)?
                } else {
                    layer.forward(&mut tape, &x, &inp)?
                };
                let dy = be.upload(&vec![1e-3; t * 2048])?;
                let g = tape.backward_from(&be, y.var().unwrap(), dy)?;
                be.sync()?;
                drop((g, y));
                times.push(start.elapsed().as_secs_f64());
            }
            times.remove(0); // warm-up
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let med = times[times.len() / 2];
            println!(
                "layer fwd+bwd  {name:<17} ckpt={:<5}  T={t}  {:>8.1} ms  {:>6.0} tokens/s  {:>5.1} GFLOP/s  peak activations+grads {:>6.0} MiB",
                checkpoint,
                med * 1e3,
                t as f64 / med,
                (if checkpoint { 3.0 } else { 2.0 }) * flops_fwd / med / 1e9,
                (be.memory().peak - base_mem) as f64 / (1 << 20) as f64,
            );
        }
    }
    Ok(())
}
