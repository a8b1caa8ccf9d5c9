//! Tokenizers: from GGUF metadata (byte-level BPE, SentencePiece-style) and from tokenizer.json;
//! chat templates in `template`.
//!
//! One type, [`Tokenizer`], with the model's algorithm inside:
//! - GGUF `tokenizer.ggml.model = "gpt2"`: byte-level BPE (`bpe.rs`), pre-tokenizer regexes chosen
//!   by `tokenizer.ggml.pre`;
//! - GGUF `tokenizer.ggml.model = "llama"`: SentencePiece BPE over scores with `<0xXX>` byte
//!   fallback (`spm.rs`);
//! - a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`), run by the `tokenizers` crate (`hf.rs`).
//!
//! Test: tests/tokenizer.rs (ids identical to the HF tokenizer on the fixture prompts and chat
//! renderings of SmolLM2 and Gemma 3, round trips, malformed input).
//!
//! Contracts easy to miss:
//! - `encode` ALWAYS recognises special-token markup in the text (control, user-defined and unknown
//!   tokens, longest match first) and emits the single token id, as HF does for added tokens;
//!   `add_special_tokens` only controls the BOS/EOS the model's flags ask for.
//! - `decode` works on bytes and converts to UTF-8 at the end (invalid sequences become U+FFFD);
//!   for streaming, [`DecodeStream`] holds back a multi-byte char split across tokens.
//! - Ids out of range decode to U+FFFD (GGUF models) or are dropped (tokenizer.json), never a panic.

mod bpe;
pub mod chat;
mod hf;
mod load_gguf;
mod special;
mod spm;
mod stream;
pub mod template;

pub use bpe::{bytes_to_unicode, PreTokenizer, DIGITS_PATTERN, GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN};
pub use stream::DecodeStream;

use crate::error::Result;
use std::collections::HashMap;

/// Token types as GGUF stores them (`tokenizer.ggml.token_type`, SentencePiece's piece types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// 0: not set (treated as normal).
    Undefined,
    Normal,
    Unknown,
    /// BOS/EOS/chat markup: recognised in text, skipped by `decode(.., skip_special_tokens = true)`.
    Control,
    /// Always recognised in text and always decoded verbatim (Gemma's "\n\n" and space runs).
    UserDefined,
    Unused,
    /// `<0xXX>`: one raw byte (SentencePiece byte fallback).
    Byte,
}

impl TokenType {
    pub fn from_i32(v: i32) -> Option<TokenType> {
        use TokenType::*;
        Some(match v {
            0 => Undefined,
            1 => Normal,
            2 => Unknown,
            3 => Control,
            4 => UserDefined,
            5 => Unused,
            6 => Byte,
            _ => return None,
        })
    }
    /// Split out of plain text before the model's algorithm runs.
    pub fn is_markup(self) -> bool {
        matches!(self, TokenType::Control | TokenType::UserDefined | TokenType::Unknown)
    }
    /// Dropped by `decode` with `skip_special_tokens`.
    pub fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::Unknown)
    }
}

/// Special token ids and the model's BOS/EOS flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// End-of-turn ids (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, ...) present in the vocabulary.
    pub eot: Vec<u32>,
    /// `encode(.., add_special_tokens = true)` prepends BOS.
    pub add_bos: bool,
    /// `encode(.., add_special_tokens = true)` appends EOS.
    pub add_eos: bool,
}

/// Names of end-of-turn tokens across model families.
const EOT_NAMES: &[&str] =
    &["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_utterance>"];

pub(crate) enum Model {
    /// GGUF "gpt2".
    ByteLevel(Box<bpe::ByteLevelBpe>),
    /// GGUF "llama".
    SentencePiece {
        scores: Vec<f32>,
        /// byte -> id of `<0xXX>`
        byte_ids: Box<[Option<u32>; 256]>,
        /// Prepend "▁" to the text (to each text fragment that follows a special token, as llama.cpp).
        add_space_prefix: bool,
    },
    /// tokenizer.json through the `tokenizers` crate.
    Hf(Box<hf::HfModel>),
}

/// A tokenizer loaded from GGUF metadata or a Hugging Face tokenizer.json.
pub struct Tokenizer {
    pub(crate) model: Model,
    /// id -> text as the vocabulary spells it ("Ġthe" in byte-level vocabularies, "▁the" in SentencePiece).
    pub(crate) tokens: Vec<String>,
    pub(crate) types: Vec<TokenType>,
    pub(crate) token_to_id: HashMap<String, u32>,
    pub(crate) splitter: special::SpecialSplitter,
    pub(crate) special: SpecialTokens,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({}, {} tokens, {:?})", self.kind(), self.tokens.len(), self.special)
    }
}

impl Tokenizer {
    /// Reads `tokenizer.ggml.*` from an open GGUF file. See `load_gguf.rs` for the keys.
    pub fn from_gguf(gguf: &crate::io::gguf::GgufFile) -> Result<Tokenizer> {
        load_gguf::from_gguf(gguf)
    }

    /// Loads a Hugging Face `tokenizer.json`, and `tokenizer_config.json` beside it when present
    /// (for `add_bos_token`/`add_eos_token` and the special token names).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Tokenizer> {
        hf::from_file(path.as_ref())
    }

    /// "gpt2", "llama" (the GGUF model names) or "tokenizer.json".
    pub fn kind(&self) -> &'static str {
        match self.model {
            Model::ByteLevel(_) => "gpt2",
            Model::SentencePiece { .. } => "llama",
            Model::Hf(_) => "tokenizer.json",
        }
    }

    /// Text -> ids. Special-token markup in `text` is always recognised (longest match); with
    /// `add_special_tokens`, BOS/EOS are added as the model's flags say.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        if let Model::Hf(m) = &self.model {
            return m.encode(text, add_special_tokens, &self.special);
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special_tokens && self.special.add_bos {
            out.extend(self.special.bos);
        }
        let mut prev_special = true; // llama.cpp: a space prefix goes on text that follows a special token
        for frag in self.splitter.split(text) {
            match frag {
                special::Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                special::Fragment::Text(t) => {
                    match &self.model {
                        Model::ByteLevel(b) => b.encode(t, &self.token_to_id, self.special.unk, &mut out),
                        Model::SentencePiece { scores, byte_ids, add_space_prefix } => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if *add_space_prefix && prev_special {
                                s.push(spm::SPACE_MARKER);
                            }
                            s.extend(t.chars().map(|c| if c == ' ' { spm::SPACE_MARKER } else { c }));
                            spm::encode(&s, &self.token_to_id, scores, byte_ids, self.special.unk, &mut out);
                        }
                        Model::Hf(_) => unreachable!("handled above"),
                    }
                    prev_special = false;
                }
            }
        }
        if add_special_tokens && self.special.add_eos {
            out.extend(self.special.eos);
        }
        Ok(out)
    }

    /// The bytes token `id` stands for in decoded text (empty for a skipped special token);
    /// `None` for an id out of range. Not available for tokenizer.json (its decoders work on strings).
    pub fn token_bytes(&self, id: u32, skip_special_tokens: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.append_token_bytes(id, skip_special_tokens, &mut out).then_some(out)
    }

    /// Appends the bytes of `id` to `out`; false for an id out of range or a tokenizer.json model.
    pub(crate) fn append_token_bytes(&self, id: u32, skip_special_tokens: bool, out: &mut Vec<u8>) -> bool {
        let (Some(text), Some(&ty)) = (self.tokens.get(id as usize), self.types.get(id as usize)) else {
            return false;
        };
        if ty.is_special() {
            if !skip_special_tokens {
                out.extend_from_slice(text.as_bytes());
            }
            return true;
        }
        match &self.model {
            Model::Hf(_) => return false,
            _ if ty == TokenType::UserDefined => out.extend_from_slice(text.as_bytes()),
            Model::ByteLevel(b) => b.token_bytes(text, out),
            Model::SentencePiece { .. } => match (ty, parse_byte_token(text)) {
                (TokenType::Byte, Some(b)) => out.push(b),
                _ => {
                    for c in text.chars() {
                        match c {
                            spm::SPACE_MARKER => out.push(b' '),
                            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                }
            },
        }
        true
    }

    /// Ids -> text. With `skip_special_tokens`, control/unknown tokens (BOS, EOS, chat markup) are
    /// dropped. Invalid UTF-8 and ids out of range become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        if let Model::Hf(m) = &self.model {
            return m.decode(ids, skip_special_tokens);
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if !self.append_token_bytes(id, skip_special_tokens, &mut bytes) {
                bytes.extend_from_slice("\u{FFFD}".as_bytes());
            }
        }
        let mut s = String::from_utf8_lossy(&bytes).into_owned();
        if self.strips_leading_space() && s.starts_with(' ') {
            s.remove(0);
        }
        s
    }

    /// SentencePiece models that add a "▁" prefix remove one leading space when decoding (HF's
    /// `Strip` decoder, llama.cpp's `remove_space`).
    pub(crate) fn strips_leading_space(&self) -> bool {
        matches!(self.model, Model::SentencePiece { add_space_prefix: true, .. })
    }

    /// A streaming decoder: feed ids one at a time, get text as soon as it is complete UTF-8.
    pub fn decode_stream(&self, skip_special_tokens: bool) -> DecodeStream<'_> {
        DecodeStream::new(self, skip_special_tokens)
    }

    /// The token's text as the vocabulary spells it ("Ġthe", "▁the", "<|im_end|>").
    pub fn token_to_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }

    /// The id of a vocabulary entry, spelled as the vocabulary spells it.
    pub fn id_of(&self, token: &str) -> Option<u32> {
        match &self.model {
            Model::Hf(m) => m.token_to_id(token),
            _ => self.token_to_id.get(token).copied(),
        }
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// True for control/unknown tokens (the ones `skip_special_tokens` drops).
    pub fn is_special(&self, id: u32) -> bool {
        self.token_type(id).is_some_and(|t| t.is_special())
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.special.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.special.eos
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.special.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.special.pad
    }
    /// End-of-turn ids present in the vocabulary (may include the EOS id).
    pub fn eot_ids(&self) -> &[u32] {
        &self.special.eot
    }
    /// Ids that end generation: EOS and every end-of-turn id, deduplicated.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.special.eos.into_iter().chain(self.special.eot.iter().copied()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }
}

/// "<0x0A>" -> 0x0A.
pub(crate) fn parse_byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// End-of-turn ids: `extra` (e.g. GGUF's eot_token_id) plus every known end-of-turn name that the
/// vocabulary has.
pub(crate) fn find_eot(extra: &[u32], lookup: impl Fn(&str) -> Option<u32>) -> Vec<u32> {
    let mut v: Vec<u32> = extra.to_vec();
    v.extend(EOT_NAMES.iter().filter_map(|n| lookup(n)));
    let mut seen = std::collections::HashSet::new();
    v.retain(|id| seen.insert(*id));
    v
}
