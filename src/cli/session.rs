//! What `chat` and `logits` share: a GGUF model with its tokenizer, chat template and (optionally)
//! a PEFT adapter applied.

use crate::backend::CpuBackend;
use crate::error::{Context, Error, Result};
use crate::export::peft::{load_adapter, AdapterConfig, QkPermutation};
use crate::io::gguf::GgufFile;
use crate::model::{load_gguf, AdapterSpec, ModelConfig, Transformer};
use crate::tokenizer::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use std::path::Path;

pub struct Loaded {
    pub model: Transformer<CpuBackend>,
    pub cfg: ModelConfig,
    pub tok: Tokenizer,
    pub template: Option<ChatTemplate>,
}

/// GGUF llama-family bases store Q/K rows permuted for interleaved RoPE; adapters are in HF order.
pub fn qk_permutation(cfg: &ModelConfig) -> Option<QkPermutation> {
    (cfg.rope_layout == crate::backend::cpu::rope::RopeLayout::Interleaved).then_some(QkPermutation {
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
    })
}

pub fn load(model: &Path, adapter: Option<&Path>, template: Option<&str>) -> Result<Loaded> {
    if model.is_dir() {
        return Err(Error::msg(format!(
            "{}: Hugging Face directories are not supported by this command yet; give a GGUF file",
            model.display()
        )));
    }
    let f = GgufFile::open(model)?;
    let cfg = ModelConfig::from_gguf(&f)?;
    let tok = Tokenizer::from_gguf(&f).context("loading the tokenizer")?;
    let template = match template {
        Some(name) => Some(ChatTemplate::builtin(name)?.with_special_tokens(
            tok.bos_id().and_then(|i| tok.token_to_str(i)).unwrap_or_default(),
            tok.eos_id().and_then(|i| tok.token_to_str(i)).unwrap_or_default(),
        )),
        None => ChatTemplate::from_gguf(&f)?,
    };
    drop(f);
    let be = CpuBackend::new();
    let model = match adapter {
        None => load_gguf(&be, model, &AdapterSpec::default())?.0,
        Some(dir) => {
            let ac = AdapterConfig::read(dir)?;
            let spec = AdapterSpec { targets: ac.target_modules.clone(), lora: ac.lora(), seed: 0 };
            let (mut m, _) = load_gguf(&be, model, &spec)?;
            load_adapter(&mut m, dir, qk_permutation(&cfg))
                .with_context(|| format!("applying adapter {}", dir.display()))?;
            m
        }
    };
    Ok(Loaded { model, cfg, tok, template })
}
