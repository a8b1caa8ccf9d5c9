//! `Tokenizer::from_file`: a Hugging Face `tokenizer.json`, run by the `tokenizers` crate (pure
//! Rust build: fancy-regex, no onig), plus `tokenizer_config.json` beside it when present.
//! Test: tests/tokenizer.rs (a tokenizer.json rebuilt from the SmolLM2 GGUF must agree with
//! `from_gguf`; malformed files).
//!
//! Contract easy to miss: BOS/EOS come from the tokenizer.json post-processor, as in HF. When
//! tokenizer_config.json says `add_bos_token: true` (or `add_eos_token: true`) and the
//! post-processor did not add it, we add it, which is what transformers does by rebuilding the
//! post-processor from those flags.

use super::{find_eot, Model, SpecialTokens, TokenType, Tokenizer};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

pub(crate) struct HfModel {
    tk: tokenizers::Tokenizer,
    /// tokenizer_config.json's add_bos_token / add_eos_token, when stated.
    config_add_bos: Option<bool>,
    config_add_eos: Option<bool>,
}

fn bad(path: &Path, msg: String) -> Error {
    Error::Format { path: path.display().to_string(), msg }
}

/// A special token in tokenizer_config.json: "<s>" or {"content": "<s>", ...}.
fn token_name(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

pub(super) fn from_file(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // The crate returns errors for malformed files; the unwind guard is insurance, since a panic
    // must never escape a file parser (STYLE.md 2.8).
    let tk = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
        .map_err(|_| bad(path, "the tokenizers crate panicked while parsing".into()))?
        .map_err(|e| bad(path, format!("not a valid tokenizer.json: {e}")))?;

    let config_path = path.with_file_name("tokenizer_config.json");
    let config: Option<serde_json::Value> = match std::fs::read(&config_path) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| bad(&config_path, format!("not valid JSON: {e}")))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&config_path, e)),
    };
    let cfg = |k: &str| config.as_ref().and_then(|c| c.get(k));
    let config_add_bos = cfg("add_bos_token").and_then(|v| v.as_bool());
    let config_add_eos = cfg("add_eos_token").and_then(|v| v.as_bool());

    // id -> text over the whole vocabulary, added tokens included.
    let vocab = tk.get_vocab(true);
    let n = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    let mut tokens = vec![String::new(); n];
    for (t, &id) in &vocab {
        tokens[id as usize] = t.clone();
    }
    let mut types = vec![TokenType::Normal; n];
    for (id, added) in tk.get_added_tokens_decoder() {
        if let Some(ty) = types.get_mut(id as usize) {
            *ty = if added.special { TokenType::Control } else { TokenType::UserDefined };
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        if types[i] == TokenType::Normal && super::parse_byte_token(t).is_some() {
            types[i] = TokenType::Byte;
        }
    }
    let lookup = |name: Option<String>| name.and_then(|s| tk.token_to_id(&s));
    let first_of = |names: &[&str]| names.iter().find_map(|s| tk.token_to_id(s));
    let mut special = SpecialTokens {
        bos: lookup(token_name(cfg("bos_token")))
            .or_else(|| first_of(&["<|begin_of_text|>", "<bos>", "<s>", "<|startoftext|>"])),
        eos: lookup(token_name(cfg("eos_token")))
            .or_else(|| first_of(&["<|end_of_text|>", "<eos>", "</s>", "<|endoftext|>"])),
        unk: lookup(token_name(cfg("unk_token"))),
        pad: lookup(token_name(cfg("pad_token"))),
        eot: Vec::new(),
        add_bos: false,
        add_eos: false,
    };
    special.eot =
        find_eot(&[], |s| tk.token_to_id(s).filter(|&id| types.get(id as usize).is_some_and(|t| t.is_markup())));
    let model = HfModel { tk, config_add_bos, config_add_eos };
    // Report the flags as they act: what encoding an empty string with special tokens produces.
    let probe = model.encode("", true, &special)?;
    special.add_bos = special.bos.is_some() && probe.first() == special.bos.as_ref();
    special.add_eos = special.eos.is_some() && probe.last() == special.eos.as_ref();
    let token_to_id: HashMap<String, u32> = HashMap::new(); // lookups go through the crate
    Ok(Tokenizer {
        model: Model::Hf(Box::new(model)),
        tokens,
        types,
        token_to_id,
        splitter: Default::default(),
        special,
    })
}

impl HfModel {
    pub(crate) fn encode(&self, text: &str, add_special_tokens: bool, sp: &SpecialTokens) -> Result<Vec<u32>> {
        let enc = self
            .tk
            .encode(text, add_special_tokens)
            .map_err(|e| Error::InvalidArgument { op: "Tokenizer::encode", msg: e.to_string() })?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens {
            if let (Some(true), Some(bos)) = (self.config_add_bos, sp.bos) {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
            if let (Some(true), Some(eos)) = (self.config_add_eos, sp.eos) {
                if ids.last() != Some(&eos) {
                    ids.push(eos);
                }
            }
        }
        Ok(ids)
    }

    /// Ids out of range are dropped by the crate; a decoder error gives an empty string.
    pub(crate) fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        self.tk.decode(ids, skip_special_tokens).unwrap_or_default()
    }

    pub(crate) fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tk.token_to_id(token)
    }
}
