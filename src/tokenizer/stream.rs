//! Streaming decode for generation: ids arrive one at a time, text leaves as soon as it is
//! complete UTF-8. Test: tests/tokenizer.rs (concatenated stream == decode(all ids) on emoji,
//! CJK and byte-fallback text).
//!
//! GGUF models: token bytes are appended to a buffer and the longest valid UTF-8 prefix is
//! emitted; an incomplete char at the end waits for the next token, invalid bytes become U+FFFD.
//! tokenizer.json models (whose decoders work on strings): the window method of HF
//! text-generation-inference: decode ids[prefix..] and ids[prefix..read], emit the difference
//! unless it ends in U+FFFD (an incomplete char).
//!
//! Contract: the concatenation of every `step` output and `finish` equals `decode(all ids)`
//! (for GGUF models; for tokenizer.json up to decoders that look at neighbouring tokens).

use super::{Model, Tokenizer};

pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    skip_special_tokens: bool,
    /// GGUF: bytes not yet emitted (an incomplete UTF-8 char).
    pending: Vec<u8>,
    /// Nothing emitted yet (for the leading-space strip of SentencePiece models).
    at_start: bool,
    /// tokenizer.json: ids of the current window and its offsets.
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'a> DecodeStream<'a> {
    pub(super) fn new(tok: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        DecodeStream {
            tok,
            skip_special_tokens,
            pending: Vec::new(),
            at_start: true,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Feeds one id; returns the text it completes (None while a char is incomplete or the token
    /// adds nothing, e.g. a skipped special token).
    pub fn step(&mut self, id: u32) -> Option<String> {
        if let Model::Hf(_) = self.tok.model {
            return self.step_window(id);
        }
        if !self.tok.append_token_bytes(id, self.skip_special_tokens, &mut self.pending) {
            self.pending.extend_from_slice("\u{FFFD}".as_bytes());
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("checked valid"));
                    match e.error_len() {
                        // Incomplete char at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        self.emit(out)
    }

    fn emit(&mut self, mut out: String) -> Option<String> {
        if out.is_empty() {
            return None;
        }
        if self.at_start {
            self.at_start = false;
            if self.tok.strips_leading_space() && out.starts_with(' ') {
                out.remove(0);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn step_window(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read], self.skip_special_tokens);
        let now = self.tok.decode(&self.ids[self.prefix..], self.skip_special_tokens);
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            let new = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Some(new)
        } else {
            None
        }
    }

    /// Flushes what is left (an incomplete char becomes U+FFFD).
    pub fn finish(mut self) -> Option<String> {
        if let Model::Hf(_) = self.tok.model {
            let before = self.tok.decode(&self.ids[self.prefix..self.read], self.skip_special_tokens);
            let now = self.tok.decode(&self.ids[self.prefix..], self.skip_special_tokens);
            return (now.len() > before.len() && now.is_char_boundary(before.len()))
                .then(|| now[before.len()..].to_string());
        }
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.emit(rest)
    }
}
