//! Byte-level BPE (GPT-2 style), as GGUF stores it with `tokenizer.ggml.model = "gpt2"`.
//! Spec: HF `tokenizers` ByteLevel pre-tokenizer + BPE model, and llama.cpp `llm_tokenizer_bpe`.
//! Test: tests/tokenizer.rs (SmolLM2 fixture ids, round trips, a tokenizers-crate oracle).
//!
//! Pipeline for one piece of plain text (special tokens were split off before):
//! 1. pre-tokenize: split with the regex list chosen by `tokenizer.ggml.pre` (each regex splits
//!    every piece left by the previous one; matches and the gaps between them both become pieces,
//!    HF's `SplitDelimiterBehavior::Isolated`);
//! 2. each piece's UTF-8 bytes are mapped to printable chars by GPT-2's `bytes_to_unicode` table
//!    (so the vocabulary holds "Ġthe" for " the");
//! 3. BPE: start from one symbol per mapped char and repeatedly merge the adjacent pair with the
//!    lowest merge rank (ties: leftmost), O(n log n) with a heap, as HF `Word::merge_all` does.
//!    Results are cached per piece.
//!
//! Contract easy to miss: merges are "left right" strings over the MAPPED alphabet, rank = index
//! in the list; a merge whose parts or result are not in the vocabulary is an error (HF refuses it too).

use crate::error::{Error, Result};
use fancy_regex::Regex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the other 68 to U+0100.. in order.
/// https://github.com/openai/gpt-2/blob/master/src/encoder.py
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut n = 0u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1 is valid")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("U+0100.. is valid")
        };
    }
    table
}

/// The word-splitting regexes of GPT-2's ByteLevel pre-tokenizer (HF adds the final `|\s+`).
pub const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3 (`llama-bpe`): case-insensitive contractions, numbers in groups of up to 3.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2: like Llama 3 but every digit alone.
pub const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Every digit alone (HF `Digits(individual_digits=true)`), applied before GPT-2's regex by the
/// StarCoder family (SmolLM, StarCoder, Refact, ...).
pub const DIGITS_PATTERN: &str = r"\p{N}";

/// What a `tokenizer.ggml.pre` value selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreTokenizer {
    /// Applied in order, each splitting the pieces the previous one left.
    pub patterns: Vec<&'static str>,
    pub ignore_merges: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value (names as llama.cpp's `llama-vocab.cpp`
    /// spells them). Returns `None` for a name we do not know.
    pub fn from_gguf_name(pre: &str) -> Option<PreTokenizer> {
        let (patterns, ignore_merges) = match pre {
            "gpt2" | "gpt-2" | "default" | "mpt" | "olmo" | "jais" | "trillion" => (vec![GPT2_PATTERN], false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "smaug-bpe" => (vec![LLAMA3_PATTERN], true),
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" | "megrez" => (vec![QWEN2_PATTERN], false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
                (vec![DIGITS_PATTERN, GPT2_PATTERN], false)
            }
            _ => return None,
        };
        Some(PreTokenizer { patterns, ignore_merges })
    }
    /// GPT-2's, the fallback for an unknown name.
    pub fn gpt2() -> PreTokenizer {
        PreTokenizer { patterns: vec![GPT2_PATTERN], ignore_merges: false }
    }
}

/// Most pieces kept in the per-piece cache before it is cleared (bounds memory on long corpora).
const CACHE_CAP: usize = 1 << 16;

pub struct ByteLevelBpe {
    regexes: Vec<Regex>,
    /// (left id, right id) -> (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// byte -> id of its mapped single-char token (None if the vocabulary lacks it)
    byte_ids: [Option<u32>; 256],
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    /// A pre-token that is itself a vocabulary entry is emitted as is, merges skipped (HF BPE
    /// `ignore_merges`, set by Llama 3's tokenizer.json; llama.cpp does the same for llama-bpe).
    ignore_merges: bool,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl ByteLevelBpe {
    /// Vocabulary in mapped form; `merges` as "left right" strings, in rank order.
    pub fn new(token_to_id: &HashMap<String, u32>, merges: &[String], pre: &PreTokenizer) -> Result<Self> {
        let (patterns, ignore_merges) = (&pre.patterns, pre.ignore_merges);
        let bad = |msg: String| Error::Format { path: "tokenizer".into(), msg };
        let regexes = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| bad(format!("pre-tokenizer regex {p:?}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
                .ok_or_else(|| bad(format!("merge {rank} {m:?} is not two space-separated tokens")))?;
            let id = |t: &str| {
                token_to_id
                    .get(t)
                    .copied()
                    .ok_or_else(|| bad(format!("merge {rank} {m:?}: token {t:?} is not in the vocabulary")))
            };
            let (ia, ib) = (id(a)?, id(b)?);
            let merged = id(&format!("{a}{b}"))?;
            // Keep the first (lowest) rank if a pair repeats, as HF does.
            merge_map.entry((ia, ib)).or_insert((rank as u32, merged));
        }
        let byte_to_char = bytes_to_unicode();
        let mut byte_ids = [None; 256];
        let mut char_to_byte = HashMap::with_capacity(256);
        for b in 0..256 {
            let c = byte_to_char[b];
            char_to_byte.insert(c, b as u8);
            byte_ids[b] = token_to_id.get(c.encode_utf8(&mut [0; 4]) as &str).copied();
        }
        Ok(ByteLevelBpe {
            regexes,
            merges: merge_map,
            byte_ids,
            byte_to_char,
            char_to_byte,
            ignore_merges,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Splits plain text into pre-tokens (byte offsets into `text`).
    pub fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    // fancy-regex can only fail on backtrack-limit blowups; treat the rest as one gap.
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }

    /// Encodes plain text (no special-token markup) and appends the ids to `out`.
    /// `unk` replaces a byte whose single-char token is missing (never for real byte-level vocabularies).
    pub fn encode(&self, text: &str, token_to_id: &HashMap<String, u32>, unk: Option<u32>, out: &mut Vec<u32>) {
        for piece in self.pre_tokenize(text) {
            if let Some(ids) = self.cache.lock().ok().and_then(|c| c.get(piece).cloned()) {
                out.extend_from_slice(&ids);
                continue;
            }
            let whole = if self.ignore_merges { token_to_id.get(&self.map_text(piece)).copied() } else { None };
            let ids = match whole {
                Some(id) => vec![id],
                None => self.bpe_word(piece, unk),
            };
            out.extend_from_slice(&ids);
            if let Ok(mut c) = self.cache.lock() {
                if c.len() >= CACHE_CAP {
                    c.clear();
                }
                c.insert(piece.to_string(), ids);
            }
        }
    }

    /// The mapped form of raw text (" the" -> "Ġthe").
    fn map_text(&self, text: &str) -> String {
        text.bytes().map(|b| self.byte_to_char[b as usize]).collect()
    }

    /// BPE over one pre-token: one symbol per byte, merged by rank with a heap (HF `Word::merge_all`).
    fn bpe_word(&self, piece: &str, unk: Option<u32>) -> Vec<u32> {
        struct Sym {
            id: u32,
            prev: usize, // usize::MAX = none
            next: usize,
            alive: bool,
        }
        const NONE: usize = usize::MAX;
        let ids: Vec<u32> = piece.bytes().filter_map(|b| self.byte_ids[b as usize].or(unk)).collect();
        let n = ids.len();
        let mut syms: Vec<Sym> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Sym {
                id,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 < n { i + 1 } else { NONE },
                alive: true,
            })
            .collect();
        // (rank, left position): lowest rank first, then leftmost.
        let mut heap = BinaryHeap::new();
        for i in 0..n.saturating_sub(1) {
            if let Some(&(rank, _)) = self.merges.get(&(syms[i].id, syms[i + 1].id)) {
                heap.push(Reverse((rank, i)));
            }
        }
        while let Some(Reverse((rank, pos))) = heap.pop() {
            let next = syms[pos].next;
            if !syms[pos].alive || next == NONE {
                continue;
            }
            // Stale entry: the pair at `pos` changed since it was pushed.
            let Some(&(r, merged)) = self.merges.get(&(syms[pos].id, syms[next].id)) else { continue };
            if r != rank {
                continue;
            }
            syms[pos].id = merged;
            syms[next].alive = false;
            let after = syms[next].next;
            syms[pos].next = after;
            if after != NONE {
                syms[after].prev = pos;
            }
            let prev = syms[pos].prev;
            if prev != NONE {
                if let Some(&(r, _)) = self.merges.get(&(syms[prev].id, merged)) {
                    heap.push(Reverse((r, prev)));
                }
            }
            if after != NONE {
                if let Some(&(r, _)) = self.merges.get(&(merged, syms[after].id)) {
                    heap.push(Reverse((r, pos)));
                }
            }
        }
        syms.iter().filter(|s| s.alive).map(|s| s.id).collect()
    }

    /// The raw bytes a vocabulary entry stands for (mapped chars back to bytes; a char outside the
    /// table, which only malformed vocabularies have, is kept as its UTF-8).
    pub fn token_bytes(&self, token: &str, out: &mut Vec<u8>) {
        for c in token.chars() {
            match self.char_to_byte.get(&c) {
                Some(&b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
}
