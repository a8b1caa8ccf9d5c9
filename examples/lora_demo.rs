//! LoRA training on the CPU with the numerical core: a SmolLM2-135M-shaped model (30 layers,
//! hidden 576, 9 heads / 3 KV heads, FFN 1536, vocab 49152) with random weights learns a
//! sequence. LoRA r=16 on all 7 projections, AdamW, activation checkpointing.
//! Prints loss, seconds per step, tokens/s and peak memory per step.
//!
//!   cargo run --release --example lora_demo [-- --steps 8 --seq 128 --layers 30 --rank 16 --no-checkpoint]
//!
//! (Real weights, tokenizers and the trainer arrive with model loading and `loraforge train`.)

use loraforge::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
use loraforge::backend::{Backend, CpuBackend};
use loraforge::lora::LoraConfig;
use loraforge::model::{Batch, BlockConfig, FrozenStore, Transformer};
use loraforge::rng::Rng;
use loraforge::train::{AdamW, AdamWConfig};
use loraforge::Tape;
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> loraforge::Result<()> {
    let (steps, seq, n_layers, rank) = (arg("--steps", 8), arg("--seq", 128), arg("--layers", 30), arg("--rank", 16));
    let checkpoint = !std::env::args().any(|a| a == "--no-checkpoint");
    let head_dim = 64;
    let block = BlockConfig {
        hidden_size: 576,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim,
        intermediate_size: 1536,
        rms_norm_eps: 1e-5,
        norm_add_one: false,
        gelu: false,
        rope: RopeConfig {
            head_dim,
            rotary_dim: head_dim,
            theta: 100000.0,
            layout: RopeLayout::HalfSplit,
            scaling: RopeScaling::None,
        },
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        sliding_window: None,
        attn_softcap: None,
        qk_norm: false,
        post_norms: false,
    };
    let be = CpuBackend::new();
    let mut rng = Rng::new(0);
    let lora = LoraConfig { rank, alpha: 2.0 * rank as f32, dropout: 0.0, use_rslora: false, use_dora: false };
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    // setup
    let t0 = Instant::now();
    let mut model = Transformer::random(&be, &block, n_layers, 49152, &targets, &lora, &FrozenStore::Dense, &mut rng)?;
    println!(
        "setup: SmolLM2-135M shape ({} layers, random init) in {:.1}s; LoRA r={rank} on {} projections: {} trainable parameters; device {}",
        n_layers,
        t0.elapsed().as_secs_f64(),
        targets.len(),
        model.trainable_count(),
        be.name()
    );
    // A fixed token sequence to learn: a repeating pseudo-random pattern of period 17.
    let pattern: Vec<u32> = (0..17).map(|_| rng.below(49152) as u32).collect();
    let row: Vec<u32> = (0..seq).map(|i| pattern[i % 17]).collect();
    let batch = Batch::causal_lm(&[row])?;
    let mut opt = AdamW::new(AdamWConfig { lr: 2e-3, ..Default::default() });
    // train
    for step in 1..=steps {
        let t = Instant::now();
        let mut tape = Tape::new();
        let out = model.loss(&mut tape, &batch, checkpoint, Some(step as u64))?;
        let loss = out.loss.to_vec()?[0];
        let mut grads = tape.backward(&out.loss)?;
        drop(out);
        let lr = opt.cfg.lr;
        let stats = opt.step(&be, &mut model.params_mut()?, &mut grads, lr)?;
        let dt = t.elapsed().as_secs_f64();
        println!(
            "step {step:>3}/{steps}  loss {loss:.4}  grad_norm {:.3}  {dt:.2} s/step  {:.0} tokens/s  peak {:.0} MiB",
            stats.grad_norm,
            seq as f64 / dt,
            be.memory().peak as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
