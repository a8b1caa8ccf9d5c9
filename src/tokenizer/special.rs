//! Splits text on special-token markup (`<|im_start|>`, `<start_of_turn>`, Gemma's "\n\n" runs...)
//! before the model's own algorithm sees it, as HF does for added tokens (aho-corasick,
//! leftmost-longest) and llama.cpp's `tokenizer_st_partition` does for control/user-defined tokens.
//! Test: tests/tokenizer.rs (markup inside plain text, longest match).
//!
//! A byte trie over the token texts; at each char boundary take the longest token starting there.

use std::collections::HashMap;

/// A run of plain text, or one special token's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

pub struct SpecialSplitter {
    /// (node, byte) -> child node; node 0 is the root.
    children: HashMap<(u32, u8), u32>,
    /// node -> token id ending there
    ends: HashMap<u32, u32>,
    n_nodes: u32,
    /// First bytes of any token, to skip most positions with one lookup.
    first: [bool; 256],
}

impl Default for SpecialSplitter {
    /// Splits nothing.
    fn default() -> Self {
        SpecialSplitter { children: HashMap::new(), ends: HashMap::new(), n_nodes: 1, first: [false; 256] }
    }
}

impl SpecialSplitter {
    /// `tokens`: (text, id). Empty texts are ignored; when two tokens share a text the first wins.
    pub fn new<'a>(tokens: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut s = SpecialSplitter::default();
        for (text, id) in tokens {
            if text.is_empty() {
                continue;
            }
            s.first[text.as_bytes()[0] as usize] = true;
            let mut node = 0u32;
            for &b in text.as_bytes() {
                let next = s.n_nodes;
                node = *s.children.entry((node, b)).or_insert_with(|| next);
                if node == next {
                    s.n_nodes += 1;
                }
            }
            s.ends.entry(node).or_insert(id);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Longest token at the start of `bytes`: (byte length, id).
    fn longest_at(&self, bytes: &[u8]) -> Option<(usize, u32)> {
        let mut node = 0u32;
        let mut best = None;
        for (i, &b) in bytes.iter().enumerate() {
            match self.children.get(&(node, b)) {
                Some(&n) => node = n,
                None => break,
            }
            if let Some(&id) = self.ends.get(&node) {
                best = Some((i + 1, id));
            }
        }
        best
    }

    pub fn split<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut out = Vec::new();
        if self.is_empty() {
            if !text.is_empty() {
                out.push(Fragment::Text(text));
            }
            return out;
        }
        let bytes = text.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i < bytes.len() {
            // Only char boundaries can start a token (token texts are valid UTF-8, so a match that
            // starts on a boundary also ends on one).
            if self.first[bytes[i] as usize] && text.is_char_boundary(i) {
                if let Some((len, id)) = self.longest_at(&bytes[i..]) {
                    if i > start {
                        out.push(Fragment::Text(&text[start..i]));
                    }
                    out.push(Fragment::Token(id));
                    i += len;
                    start = i;
                    continue;
                }
            }
            i += 1;
        }
        if start < bytes.len() {
            out.push(Fragment::Text(&text[start..]));
        }
        out
    }
}
