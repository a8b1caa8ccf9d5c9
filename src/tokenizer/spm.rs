//! SentencePiece-style BPE over scores, as GGUF stores it with `tokenizer.ggml.model = "llama"`
//! (Llama 1/2, Mistral, Gemma). Spec: llama.cpp `llm_tokenizer_spm_session`, SentencePiece's
//! `bpe_model.cc`. Test: tests/tokenizer.rs (Gemma 3 fixture ids, round trips).
//!
//! For one piece of plain text (special and user-defined tokens were split off before):
//! 1. spaces become U+2581 "▁" (and a "▁" is prepended when `add_space_prefix`, see `Tokenizer`);
//! 2. start from one symbol per UTF-8 char; repeatedly merge the adjacent pair whose concatenation
//!    is a vocabulary token with the HIGHEST score (ties: leftmost), heap-driven, O(n log n);
//! 3. each final symbol is its token if the vocabulary has it, else byte fallback: one `<0xXX>`
//!    token per UTF-8 byte (or `unk` when the byte tokens are missing).
//!
//! Contract easy to miss: there is no whitespace pre-split; a merge may cross "▁" boundaries if
//! the vocabulary has such a token (Gemma's does: "▁▁" runs).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space marker.
pub const SPACE_MARKER: char = '\u{2581}';

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of left+right when pushed; a mismatch later means the entry is stale.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair (llama.cpp `llm_bigram_spm::comparator`).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

struct Sym {
    start: usize, // byte range in the text
    len: usize,   // 0 = merged away
    prev: usize,  // usize::MAX = none
    next: usize,
}
const NONE: usize = usize::MAX;

/// Encodes `text` (already escaped: spaces as "▁") and appends the ids to `out`.
/// `byte_ids[b]` is the id of `<0xXX>`; `unk` is used for a byte without one.
pub fn encode(
    text: &str,
    token_to_id: &HashMap<String, u32>,
    scores: &[f32],
    byte_ids: &[Option<u32>; 256],
    unk: Option<u32>,
    out: &mut Vec<u32>,
) {
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        syms.push(Sym { start, len: c.len_utf8(), prev: i.wrapping_sub(1), next: i + 1 });
    }
    if let Some(last) = syms.last_mut() {
        last.next = NONE;
    }
    let score_of = |s: &str| token_to_id.get(s).map(|&id| scores.get(id as usize).copied().unwrap_or(0.0));
    let mut heap = BinaryHeap::new();
    let try_push = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], left: usize, right: usize| {
        if left == NONE || right == NONE {
            return;
        }
        let (a, b) = (&syms[left], &syms[right]);
        let s = &text[a.start..b.start + b.len];
        if let Some(score) = score_of(s) {
            heap.push(Bigram { score, left, right, size: s.len() });
        }
    };
    for i in 1..syms.len() {
        try_push(&mut heap, &syms, i - 1, i);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (bg.left, bg.right);
        // Stale: one side was merged into something else since the pair was pushed.
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size || syms[l].next != r {
            continue;
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        let after = syms[r].next;
        syms[l].next = after;
        if after != NONE {
            syms[after].prev = l;
        }
        try_push(&mut heap, &syms, syms[l].prev, l);
        try_push(&mut heap, &syms, l, after);
    }
    let mut i = if syms.is_empty() { NONE } else { 0 };
    while i != NONE {
        let s = &syms[i];
        let piece = &text[s.start..s.start + s.len];
        match token_to_id.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_ids[b as usize].or(unk))),
        }
        i = s.next;
    }
}
