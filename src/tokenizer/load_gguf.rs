//! `Tokenizer::from_gguf`: builds a tokenizer from `tokenizer.ggml.*` metadata.
//! Spec: llama.cpp `llama_vocab::impl::load` (key names, defaults). Test: tests/tokenizer.rs.
//!
//! Keys read:
//! ```text
//! tokenizer.ggml.model              "gpt2" | "llama"                             required
//! tokenizer.ggml.tokens             [string; N]                                  required, N >= 1
//! tokenizer.ggml.token_type         [i32; N], 0..=6 (TokenType)                  optional (all normal)
//! tokenizer.ggml.scores             [f32; N]                                     llama: optional (all 0)
//! tokenizer.ggml.merges             ["left right"]                               gpt2: required
//! tokenizer.ggml.pre                pre-tokenizer name                           gpt2: optional ("default")
//! tokenizer.ggml.{bos,eos,unknown,padding,eot,eom}_token_id   u32 < N           optional
//! tokenizer.ggml.add_bos_token      bool   default: llama true, gpt2 false
//! tokenizer.ggml.add_eos_token      bool   default false
//! tokenizer.ggml.add_space_prefix   bool   default: llama true (SentencePiece's default)
//! ```
//! Contract easy to miss: every length and id is checked; a bad file is an `Error`, never a panic.
//! Duplicate token texts: the LAST id wins in text -> id lookups (llama.cpp and a Python dict both do that).

use super::{bpe, find_eot, parse_byte_token, special::SpecialSplitter, Model, SpecialTokens, TokenType, Tokenizer};
use crate::error::{Error, Result};
use crate::io::gguf::GgufFile;
use std::collections::HashMap;

fn bad(g: &GgufFile, msg: String) -> Error {
    Error::Format { path: g.path().to_string(), msg: format!("tokenizer: {msg}") }
}

/// An optional u32 key: absent -> None; present but not an integer, or not a valid id -> Err.
fn opt_id(g: &GgufFile, key: &str, n: usize) -> Result<Option<u32>> {
    if g.get(key).is_none() {
        return Ok(None);
    }
    let id = g.get_u32(key)?;
    if id as usize >= n {
        return Err(bad(g, format!("{key} = {id} is out of range for {n} tokens")));
    }
    Ok(Some(id))
}

fn opt_bool(g: &GgufFile, key: &str, default: bool) -> Result<bool> {
    match g.get(key) {
        None => Ok(default),
        Some(_) => g.get_bool(key),
    }
}

pub(super) fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let model_name = g.get_str("tokenizer.ggml.model")?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(bad(g, format!("tokenizer.ggml.tokens has {n} entries")));
    }
    let types: Vec<TokenType> = match g.get("tokenizer.ggml.token_type") {
        None => vec![TokenType::Normal; n],
        Some(_) => {
            let raw = g.get_i32_array("tokenizer.ggml.token_type")?;
            if raw.len() != n {
                return Err(bad(g, format!("tokenizer.ggml.token_type has {} entries, tokens has {n}", raw.len())));
            }
            raw.iter()
                .enumerate()
                .map(|(i, &t)| TokenType::from_i32(t).ok_or_else(|| bad(g, format!("token {i} has unknown type {t}"))))
                .collect::<Result<_>>()?
        }
    };
    let mut token_to_id = HashMap::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        token_to_id.insert(t.clone(), i as u32);
    }

    let is_llama = match model_name {
        "llama" => true,
        "gpt2" => false,
        other => return Err(bad(g, format!("tokenizer.ggml.model {other:?} is not supported (gpt2, llama)"))),
    };
    let mut special = SpecialTokens {
        bos: opt_id(g, "tokenizer.ggml.bos_token_id", n)?,
        eos: opt_id(g, "tokenizer.ggml.eos_token_id", n)?,
        unk: opt_id(g, "tokenizer.ggml.unknown_token_id", n)?,
        pad: opt_id(g, "tokenizer.ggml.padding_token_id", n)?,
        eot: Vec::new(),
        add_bos: opt_bool(g, "tokenizer.ggml.add_bos_token", is_llama)?,
        add_eos: opt_bool(g, "tokenizer.ggml.add_eos_token", false)?,
    };
    if special.unk.is_none() && is_llama {
        special.unk = token_to_id.get("<unk>").copied();
    }
    let extra_eot: Vec<u32> =
        [opt_id(g, "tokenizer.ggml.eot_token_id", n)?, opt_id(g, "tokenizer.ggml.eom_token_id", n)?]
            .into_iter()
            .flatten()
            .collect();
    // Only markup tokens count as end-of-turn: a normal word spelled "<|end|>" does not.
    special.eot = find_eot(&extra_eot, |s| token_to_id.get(s).copied().filter(|&id| types[id as usize].is_markup()));

    let model = if is_llama {
        let scores = match g.get("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(_) => {
                let s = g.get_f32_array("tokenizer.ggml.scores")?;
                if s.len() != n {
                    return Err(bad(g, format!("tokenizer.ggml.scores has {} entries, tokens has {n}", s.len())));
                }
                s.to_vec()
            }
        };
        let mut byte_ids = Box::new([None; 256]);
        for (i, t) in tokens.iter().enumerate() {
            if let Some(b) = parse_byte_token(t) {
                // Prefer tokens typed BYTE; otherwise the first spelling found.
                if byte_ids[b as usize].is_none() || types[i] == TokenType::Byte {
                    byte_ids[b as usize] = Some(i as u32);
                }
            }
        }
        Model::SentencePiece {
            scores,
            byte_ids,
            add_space_prefix: opt_bool(g, "tokenizer.ggml.add_space_prefix", true)?,
        }
    } else {
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        let pre = match g.get("tokenizer.ggml.pre") {
            None => "default",
            Some(_) => g.get_str("tokenizer.ggml.pre")?,
        };
        let pre_tok = bpe::PreTokenizer::from_gguf_name(pre).unwrap_or_else(|| {
            eprintln!(
                "loraforge: warning: unknown tokenizer.ggml.pre {pre:?} in {}; using GPT-2's pre-tokenizer",
                g.path()
            );
            bpe::PreTokenizer::gpt2()
        });
        Model::ByteLevel(Box::new(
            bpe::ByteLevelBpe::new(&token_to_id, merges, &pre_tok)
                .map_err(|e| bad(g, e.to_string().trim_start_matches("tokenizer: ").to_string()))?,
        ))
    };
    let splitter = SpecialSplitter::new(
        tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, ty))| ty.is_markup())
            .map(|(i, (t, _))| (t.as_str(), i as u32)),
    );
    Ok(Tokenizer { model, tokens: tokens.to_vec(), types, token_to_id, splitter, special })
}
