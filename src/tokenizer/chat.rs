//! A tokenizer and a chat template together: conversations → token ids with a train mask derived
//! from the template itself (`ChatTemplate::render_with_spans`), for any template.
//!
//! The rendered text is cut at the assistant-span boundaries and each piece is tokenized on its
//! own, as LLaMA-Factory encodes prompt and response pieces separately; the mask is true for the
//! tokens of assistant spans (content + end-of-turn marker). A BOS is prepended when the tokenizer
//! adds one and the template did not already write it.

use super::template::{ChatTemplate, Message, RenderOptions};
use super::Tokenizer;
use crate::error::Result;

pub struct ChatTokenizer {
    pub tok: Tokenizer,
    pub template: ChatTemplate,
}

impl ChatTokenizer {
    pub fn new(tok: Tokenizer, template: ChatTemplate) -> Self {
        ChatTokenizer { tok, template }
    }

    /// ids of the whole conversation and, per id, whether it is trained (assistant output).
    pub fn encode_chat(&self, messages: &[Message], tools: Option<serde_json::Value>) -> Result<(Vec<u32>, Vec<bool>)> {
        let opts = RenderOptions { tools, ..Default::default() };
        let (text, spans) = self.template.render_with_spans(messages, &opts)?;
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        let mut at = 0;
        for s in spans.iter().chain(std::iter::once(&(text.len()..text.len()))) {
            for (range, trained) in [(at..s.start, false), (s.start..s.end, true)] {
                if range.is_empty() {
                    continue;
                }
                let piece = self.tok.encode(&text[range], false)?;
                mask.extend(std::iter::repeat_n(trained, piece.len()));
                ids.extend(piece);
            }
            at = s.end;
        }
        if let Some(bos) = self.tok.bos_id() {
            if self.tok.special_tokens().add_bos && ids.first() != Some(&bos) {
                ids.insert(0, bos);
                mask.insert(0, false);
            }
        }
        Ok((ids, mask))
    }

    /// The prompt for generation: the conversation rendered with the generation prompt.
    pub fn encode_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, &RenderOptions::generation())?;
        let mut ids = self.tok.encode(&text, false)?;
        if let Some(bos) = self.tok.bos_id() {
            if self.tok.special_tokens().add_bos && ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Plain text (pretraining): ids without special tokens.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.tok.encode(text, false)
    }
}
