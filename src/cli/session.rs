//! What `chat` and `logits` share: a model (GGUF file or Hugging Face directory) with its tokenizer,
//! chat template and (optionally) a PEFT adapter applied.

use crate::backend::Backend;
use crate::error::{Context, Result};
use crate::export::peft::{load_adapter, AdapterConfig, QkPermutation};
use crate::io::gguf::GgufFile;
use crate::model::{load_model, AdapterSpec, ModelConfig, Transformer};
use crate::tokenizer::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use std::path::Path;

pub struct Loaded<B: Backend> {
    pub model: Transformer<B>,
    pub cfg: ModelConfig,
    pub tok: Tokenizer,
    pub template: Option<ChatTemplate>,
}

/// GGUF llama-family bases store Q/K rows permuted for interleaved RoPE; adapters are in HF order.
pub fn qk_permutation(cfg: &ModelConfig) -> Option<QkPermutation> {
    QkPermutation::for_config(cfg)
}

/// Loads onto `be` (frozen weights stay in their stored format where the backend can run it).
pub fn load<B: Backend>(be: &B, model: &Path, adapter: Option<&Path>, template: Option<&str>) -> Result<Loaded<B>> {
    let (cfg, tok, own_template) = if model.is_dir() {
        let cfg = ModelConfig::from_hf_file(model.join("config.json"))?;
        let tok = Tokenizer::from_file(model.join("tokenizer.json")).context("loading the tokenizer")?;
        (cfg, tok, ChatTemplate::from_hf_dir(model)?)
    } else {
        let f = GgufFile::open(model)?;
        let cfg = ModelConfig::from_gguf(&f)?;
        let tok = Tokenizer::from_gguf(&f).context("loading the tokenizer")?;
        let t = ChatTemplate::from_gguf(&f)?;
        (cfg, tok, t)
    };
    let template = match template {
        Some(name) => Some(ChatTemplate::builtin(name)?.with_special_tokens(
            tok.bos_id().and_then(|i| tok.token_to_str(i)).unwrap_or_default(),
            tok.eos_id().and_then(|i| tok.token_to_str(i)).unwrap_or_default(),
        )),
        None => own_template,
    };
    let model = match adapter {
        None => load_model(be, model, &AdapterSpec::default())?.0,
        Some(dir) => {
            let ac = AdapterConfig::read(dir)?;
            let spec = AdapterSpec { targets: ac.target_modules.clone(), lora: ac.lora(), seed: 0, quantize: None };
            let (mut m, _) = load_model(be, model, &spec)?;
            let meta = load_adapter(&mut m, dir, qk_permutation(&cfg))
                .with_context(|| format!("applying adapter {}", dir.display()))?;
            check_base(&meta, model, dir)?;
            m
        }
    };
    Ok(Loaded { model, cfg, tok, template })
}

/// An adapter trained on a GGUF base records that file's fingerprint; applying it to a different
/// GGUF file (another model, or another quantization of it) is refused. Hugging Face directories
/// are accepted: the adapter is stored in Hugging Face layout, for the HF release of the model.
/// `LORAFORGE_ALLOW_BASE_MISMATCH=1` overrides the check.
pub fn check_base(meta: &std::collections::HashMap<String, String>, model: &Path, adapter: &Path) -> Result<()> {
    let Some(want) = meta.get("loraforge.base_fingerprint") else { return Ok(()) };
    if model.is_dir() || std::env::var("LORAFORGE_ALLOW_BASE_MISMATCH").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let got = crate::export::peft::fingerprint_file(model)?;
    if &got != want {
        let base = meta.get("loraforge.base").map(String::as_str).unwrap_or("another file");
        return Err(crate::Error::InvalidArgument {
            op: "adapter",
            msg: format!(
            "adapter {} was trained on {base} (fingerprint {want}), but {} has fingerprint {got}: it is a different \
             base (another model or quantization). Use the adapter's base, its Hugging Face release, or set \
             LORAFORGE_ALLOW_BASE_MISMATCH=1 to apply it anyway",
            adapter.display(),
            model.display()
        ),
        });
    }
    Ok(())
}
