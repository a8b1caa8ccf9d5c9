//! Tokenizers between the two worlds: a Hugging Face `tokenizer.json` built from GGUF
//! `tokenizer.ggml.*` metadata, and `tokenizer.ggml.*` metadata built from a `tokenizer.json`.
//! Spec: HF tokenizers' serialized format (models/bpe, pre_tokenizers, normalizers, decoders,
//! processors) and llama.cpp `convert_hf_to_gguf.py` (`_set_vocab_gpt2`, `_set_vocab_sentencepiece`).
//! Test: tests/export.rs (the tokenizers crate on the built tokenizer.json gives our GGUF tokenizer's
//! ids on the fixture prompts of SmolLM2 and Gemma 3).
//!
//! - GGUF "gpt2" (byte-level BPE): vocab + merges as stored; the pre-tokenizer from
//!   `tokenizer.ggml.pre` (same table as src/tokenizer/bpe.rs); ByteLevel decoder.
//! - GGUF "llama" (SentencePiece BPE over scores): HF BPE with byte fallback, whose merges are
//!   derived from the scores as transformers' `SentencePieceExtractor` does (every split of a piece
//!   into two vocabulary pieces is a merge; merges ordered by the merged piece's score, descending).
//!   Normalizer: (Prepend "▁" when add_space_prefix) + Replace " " → "▁".
//! - The reverse (tokenizer.json → GGUF): byte-level BPE → "gpt2" with the pre name recognised
//!   from the pre-tokenizer; byte-fallback BPE → "llama" with scores = −(rank of the first merge
//!   that makes the piece), so higher score = earlier merge, as SentencePiece's scores order them.
//!
//! Contract easy to miss: control tokens (GGUF type 3) become `special: true` added tokens,
//! user-defined ones (type 4) `special: false` added tokens, so both are split off before the model
//! runs, as our tokenizer and llama.cpp do.

use crate::error::{Error, Result};
use crate::io::gguf::{GgufFile, GgufValue};
use crate::tokenizer::{DIGITS_PATTERN, GPT2_PATTERN};
use serde_json::{json, Value};
use std::collections::HashMap;

const SPACE: &str = "\u{2581}";

fn bad(g: &GgufFile, msg: String) -> Error {
    Error::Format { path: g.path().to_string(), msg: format!("tokenizer export: {msg}") }
}

/// The HF pre-tokenizer for a `tokenizer.ggml.pre` name, and BPE `ignore_merges`; None if unknown.
fn pre_tokenizer_json(pre: &str) -> Option<(Value, bool)> {
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
    };
    let p = crate::tokenizer::PreTokenizer::from_gguf_name(pre)?;
    let v = match p.patterns.as_slice() {
        [GPT2_PATTERN] => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
        [DIGITS_PATTERN, GPT2_PATTERN] => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}),
        [re] => split(re),
        _ => return None,
    };
    Some((v, p.ignore_merges))
}

/// Builds a `tokenizer.json` from the GGUF file's tokenizer metadata. Returns it with notes.
pub fn tokenizer_json_from_gguf(g: &GgufFile) -> Result<(Value, Vec<String>)> {
    let mut notes = Vec::new();
    let model = g.get_str("tokenizer.ggml.model")?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<i32> = match g.get("tokenizer.ggml.token_type") {
        Some(_) => g.get_i32_array("tokenizer.ggml.token_type")?.to_vec(),
        None => vec![1; n],
    };
    if types.len() != n {
        return Err(bad(g, format!("{} token types for {n} tokens", types.len())));
    }
    let id_key = |k: &str| g.get(k).and_then(|v| v.as_int()).and_then(|i| usize::try_from(i).ok()).filter(|&i| i < n);
    let flag = |k: &str, d: bool| g.get(k).and_then(|v| v.as_bool()).unwrap_or(d);
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == 3 || types[*i] == 4)
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types[i] == 3})
        })
        .collect();
    let is_llama = model == "llama";
    let add_bos = flag("tokenizer.ggml.add_bos_token", is_llama);
    let add_eos = flag("tokenizer.ggml.add_eos_token", false);
    let (bos, eos) = (id_key("tokenizer.ggml.bos_token_id"), id_key("tokenizer.ggml.eos_token_id"));
    // BOS/EOS through a TemplateProcessing post-processor, as HF's converters write it.
    let post = |default: Value| -> Value {
        let b = bos.filter(|_| add_bos);
        let e = eos.filter(|_| add_eos);
        if b.is_none() && e.is_none() {
            return default;
        }
        let tok = |i: usize| json!({"SpecialToken": {"id": tokens[i], "type_id": 0}});
        let mut single = Vec::new();
        let mut special = serde_json::Map::new();
        for i in b.iter().chain(e.iter()) {
            special.insert(tokens[*i].clone(), json!({"id": tokens[*i], "ids": [i], "tokens": [tokens[*i]]}));
        }
        single.extend(b.map(tok));
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        single.extend(e.map(tok));
        let mut pair = single.clone();
        pair.extend(b.map(tok));
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        pair.extend(e.map(tok));
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
    };
    let json = match model {
        "gpt2" => {
            let merges = g.get_str_array("tokenizer.ggml.merges")?;
            let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
            let (pre_json, ignore_merges) = pre_tokenizer_json(pre).unwrap_or_else(|| {
                notes.push(format!(
                    "tokenizer.ggml.pre {pre:?} is not known; tokenizer.json uses GPT-2's pre-tokenizer"
                ));
                pre_tokenizer_json("gpt2").expect("gpt2 is known")
            });
            json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": pre_json,
                "post_processor": post(json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})),
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                          "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
            })
        }
        "llama" => {
            let scores: Vec<f32> = match g.get("tokenizer.ggml.scores") {
                Some(_) => g.get_f32_array("tokenizer.ggml.scores")?.to_vec(),
                None => vec![0.0; n],
            };
            if scores.len() != n {
                return Err(bad(g, format!("{} scores for {n} tokens", scores.len())));
            }
            let merges = merges_from_scores(tokens, &types, &scores);
            let space_prefix = flag("tokenizer.ggml.add_space_prefix", true);
            let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
            let normalizer = if space_prefix {
                json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]})
            } else {
                replace
            };
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if space_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let unk = id_key("tokenizer.ggml.unknown_token_id").map(|i| tokens[i].clone());
            json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added,
                "normalizer": normalizer,
                "pre_tokenizer": null,
                "post_processor": post(Value::Null),
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                          "ignore_merges": false, "vocab": vocab, "merges": merges}
            })
        }
        other => return Err(bad(g, format!("tokenizer.ggml.model {other:?} cannot be exported (gpt2, llama)"))),
    };
    Ok((json, notes))
}

/// SentencePiece scores → BPE merges (transformers `SentencePieceExtractor.extract`): for every
/// normal piece, every split into two vocabulary pieces; sorted by the piece's score, descending
/// (stable, so ties keep vocabulary order).
fn merges_from_scores(tokens: &[String], types: &[i32], scores: &[f32]) -> Vec<String> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, usize)> = Vec::new(); // (score, left, right)
    for (i, t) in tokens.iter().enumerate() {
        if types[i] != 1 && types[i] != 0 {
            continue; // only normal pieces are built by merges
        }
        let mut local = Vec::new();
        for (at, _) in t.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (index.get(&t[..at]), index.get(&t[at..])) {
                local.push((scores[i], l, r));
            }
        }
        local.sort_by_key(|&(_, l, r)| (l, r));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges.iter().map(|&(_, l, r)| format!("{} {}", tokens[l], tokens[r])).collect()
}

/// `tokenizer.ggml.*` keys of a GGUF file, as stored (the chat template is handled separately).
pub fn gguf_tokenizer_kv(g: &GgufFile) -> Vec<(String, GgufValue)> {
    g.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.ggml.")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// GGUF metadata (key, value) pairs.
pub type MetadataPairs = Vec<(String, GgufValue)>;

/// The `tokenizer.ggml.pre` name of a tokenizer.json pre-tokenizer (None if not recognised).
fn pre_name_of(pre: &Value) -> Option<&'static str> {
    for name in ["smollm", "llama-bpe", "qwen2", "gpt2"] {
        let (want, _) = pre_tokenizer_json(name)?;
        if normalize_pre(pre) == normalize_pre(&want) {
            return Some(name);
        }
    }
    None
}

/// A pre-tokenizer with the fields that do not change splitting removed (trim_offsets), so
/// equivalent spellings compare equal.
fn normalize_pre(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter().filter(|(k, _)| *k != "trim_offsets").map(|(k, v)| (k.clone(), normalize_pre(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize_pre).collect()),
        v => v.clone(),
    }
}

/// `tokenizer.ggml.*` metadata from a tokenizer.json (and tokenizer_config.json, for the BOS/EOS
/// names and flags). Returns (keys, notes).
pub fn gguf_tokenizer_from_json(tj: &Value, tcfg: Option<&Value>, path: &str) -> Result<(MetadataPairs, Vec<String>)> {
    let err = |msg: String| Error::Format { path: path.into(), msg: format!("tokenizer export: {msg}") };
    let mut notes = Vec::new();
    let model = tj.get("model").ok_or_else(|| err("no `model`".into()))?;
    if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
        return Err(err(format!(
            "model type {} is not supported (BPE only)",
            model.get("type").unwrap_or(&Value::Null)
        )));
    }
    let vocab = model.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| err("no model.vocab".into()))?;
    let mut by_id: Vec<(usize, String)> = Vec::with_capacity(vocab.len());
    for (t, id) in vocab {
        let id = id.as_u64().ok_or_else(|| err(format!("vocab id of {t:?} is not an integer")))?;
        by_id.push((id as usize, t.clone()));
    }
    let mut specials: HashMap<usize, bool> = HashMap::new();
    for a in tj.get("added_tokens").and_then(|v| v.as_array()).into_iter().flatten() {
        let (Some(id), Some(c)) = (a.get("id").and_then(|v| v.as_u64()), a.get("content").and_then(|v| v.as_str()))
        else {
            continue;
        };
        specials.insert(id as usize, a.get("special").and_then(|v| v.as_bool()).unwrap_or(false));
        if !vocab.contains_key(c) {
            by_id.push((id as usize, c.to_string()));
        }
    }
    let n = by_id.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
    let mut tokens = vec![String::new(); n];
    for (i, t) in by_id {
        tokens[i] = t;
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]"); // llama.cpp's filler for holes in the id range
        }
    }
    let merges: Vec<String> = model
        .get("merges")
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|m| match m {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(p) if p.len() == 2 => Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let byte_fallback = model.get("byte_fallback").and_then(|v| v.as_bool()).unwrap_or(false);
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let types: Vec<i32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match specials.get(&i) {
            Some(true) => 3,
            Some(false) => 4,
            None if byte_fallback && is_byte_token(t) => 6,
            None => 1,
        })
        .collect();
    let cfg = |k: &str| tcfg.and_then(|c| c.get(k));
    let name_of = |k: &str| match cfg(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    };
    let id_of = |k: &str| name_of(k).and_then(|s| index.get(s.as_str()).copied());
    let mut kv: Vec<(String, GgufValue)> = Vec::new();
    if byte_fallback {
        let mut scores = vec![-1e9f32; n]; // no merge makes it: last resort (see the module header)
        for (rank, m) in merges.iter().enumerate() {
            let merged = m.replacen(' ', "", 1);
            if let Some(&id) = index.get(merged.as_str()) {
                if scores[id] == -1e9 {
                    scores[id] = -(rank as f32);
                }
            }
        }
        for (i, t) in tokens.iter().enumerate() {
            if t.chars().count() == 1 {
                scores[i] = 0.0;
            }
        }
        let prepend = tj.get("normalizer").map(|n| n.to_string().contains("Prepend")).unwrap_or(false);
        kv.push(("tokenizer.ggml.model".into(), "llama".into()));
        kv.push(("tokenizer.ggml.pre".into(), "default".into()));
        kv.push(("tokenizer.ggml.tokens".into(), tokens.clone().into()));
        kv.push(("tokenizer.ggml.scores".into(), scores.into()));
        kv.push(("tokenizer.ggml.token_type".into(), types.into()));
        kv.push(("tokenizer.ggml.add_space_prefix".into(), prepend.into()));
        notes.push("SentencePiece scores derived from the tokenizer.json merge ranks".into());
    } else {
        let pre = match tj.get("pre_tokenizer").and_then(pre_name_of) {
            Some(p) => p,
            None => {
                notes.push("pre-tokenizer not recognised; tokenizer.ggml.pre = \"default\" (GPT-2 regex)".into());
                "default"
            }
        };
        kv.push(("tokenizer.ggml.model".into(), "gpt2".into()));
        kv.push(("tokenizer.ggml.pre".into(), pre.into()));
        kv.push(("tokenizer.ggml.tokens".into(), tokens.clone().into()));
        kv.push(("tokenizer.ggml.token_type".into(), types.into()));
        kv.push(("tokenizer.ggml.merges".into(), merges.into()));
    }
    for (key, k) in [
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.unknown_token_id", "unk_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
    ] {
        if let Some(id) = id_of(k) {
            kv.push((key.into(), (id as u32).into()));
        }
    }
    let add_bos = cfg("add_bos_token").and_then(|v| v.as_bool()).unwrap_or_else(|| {
        // The post-processor adds BOS when its template starts with a special token.
        tj.pointer("/post_processor/single/0/SpecialToken").is_some()
    });
    kv.push(("tokenizer.ggml.add_bos_token".into(), add_bos.into()));
    kv.push((
        "tokenizer.ggml.add_eos_token".into(),
        cfg("add_eos_token").and_then(|v| v.as_bool()).unwrap_or(false).into(),
    ));
    Ok((kv, notes))
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
}
