//! Samples → token ids + labels: supervised (sft) through the chat template with per-turn
//! truncation, pretraining (pt) blocks, and packing of sft examples into rows.
//! Spec: LLaMA-Factory src/llamafactory/data/processor/{supervised.py, pretrain.py, processor_utils.py}.
//! Test: tests/data.rs
//!
//! Contracts easy to miss:
//! - `ChatTokenizer::encode_chat` renders the whole conversation once; we cut it back into
//!   (source, target) turn pairs by its mask: a pair is a run of untrained ids (prompt: system,
//!   user turn, assistant header) followed by a run of trained ids (assistant content + end of turn).
//!   Untrained ids after the last trained run (e.g. a newline after `<|im_end|>`) join the last
//!   pair's target, untrained. LLaMA-Factory then truncates pair by pair with `infer_seqlen`.
//! - `train_on_prompt` trains on every id, system and template included (LLaMA-Factory labels the
//!   source with itself); `mask_history` trains only the last assistant turn, and truncation then
//!   gives the last turns priority.
//! - Labels are NOT shifted here: labels[i] is the label of ids[i]. The batcher shifts.

use super::{DataOptions, DataStage, DataStats, Example, Sample, IGNORE_INDEX};
use crate::error::{Error, Result};
use crate::tokenizer::chat::ChatTokenizer;
use crate::tokenizer::template::Message;
use std::collections::BTreeMap;

/// How LLaMA-Factory splits a budget of `cutoff_len` tokens between a turn's source (prompt) and
/// target (response), as (new_source_len, new_target_len):
/// - target shorter than half the budget: keep it whole, cut the source;
/// - else source shorter than half: keep the source whole, cut the target;
/// - else both, in proportion: target gets floor(cutoff · t / (s + t)).
pub fn infer_seqlen(source_len: usize, target_len: usize, cutoff_len: usize) -> (usize, usize) {
    let max_target_len = if target_len * 2 < cutoff_len {
        cutoff_len
    } else if source_len * 2 < cutoff_len {
        cutoff_len - source_len
    } else {
        // Python's int(cutoff_len * (target_len / (source_len + target_len))): f64 then truncate.
        (cutoff_len as f64 * (target_len as f64 / (source_len + target_len) as f64)) as usize
    };
    let new_target_len = max_target_len.min(target_len);
    let max_source_len = cutoff_len.saturating_sub(new_target_len);
    (max_source_len.min(source_len), new_target_len)
}

/// Options of the supervised processor (LLaMA-Factory's DataArguments of the same names).
#[derive(Clone, Copy, Debug)]
pub struct SftOptions {
    /// Maximum tokens per example (LLaMA-Factory default 2048).
    pub cutoff_len: usize,
    /// Train on the prompt too (every id).
    pub train_on_prompt: bool,
    /// Train only the last assistant turn.
    pub mask_history: bool,
}

/// What happened to one sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Encoded {
    /// The example, and whether cutoff_len cut something off.
    Kept(Example, bool),
    /// Dropped: after truncation no id is trained (the response was fully cut, or the template
    /// marked nothing as trained).
    NoTrainedToken,
}

struct Pair<'a> {
    source: &'a [u32],
    target: &'a [u32],
    /// The encoder's mask over `target` (false only for a trailing untrained tail).
    target_mask: &'a [bool],
}

/// Cuts a rendered conversation into (source, target) pairs by its train mask.
fn split_pairs<'a>(ids: &'a [u32], mask: &'a [bool]) -> Vec<Pair<'a>> {
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let s0 = i;
        while i < ids.len() && !mask[i] {
            i += 1;
        }
        let t0 = i;
        while i < ids.len() && mask[i] {
            i += 1;
        }
        if t0 == i {
            // Untrained tail after the last trained run: part of the last target, untrained.
            if let Some(last) = pairs.last_mut() {
                let p: &mut Pair = last;
                let start = p.target.as_ptr() as usize - ids.as_ptr() as usize;
                let start = start / std::mem::size_of::<u32>();
                p.target = &ids[start..i];
                p.target_mask = &mask[start..i];
            }
            break;
        }
        pairs.push(Pair { source: &ids[s0..t0], target: &ids[t0..i], target_mask: &mask[t0..i] });
    }
    pairs
}

/// One chat sample → an example, as LLaMA-Factory's `SupervisedDatasetProcessor`.
/// `default_system` is used when the sample has no system prompt.
pub fn encode_sft(
    enc: &ChatTokenizer,
    sample: &Sample,
    opt: &SftOptions,
    default_system: Option<&str>,
) -> Result<Encoded> {
    let Sample::Chat { system, tools, messages } = sample else {
        return Err(Error::msg("supervised fine-tuning needs chat samples, got plain text"));
    };
    let mut all = Vec::with_capacity(messages.len() + 1);
    let system = if system.is_empty() { default_system.unwrap_or("") } else { system.as_str() };
    if !system.is_empty() {
        all.push(Message::system(system));
    }
    all.extend(messages.iter().cloned());
    let (ids, mask) = enc.encode_chat(&all, tools.clone())?;
    if ids.len() != mask.len() {
        return Err(Error::msg(format!("chat encoder returned {} ids but {} mask entries", ids.len(), mask.len())));
    }
    Ok(encode_pairs(&ids, &mask, opt))
}

/// The truncation + labelling half of `encode_sft`, on an already rendered conversation.
pub fn encode_pairs(ids: &[u32], mask: &[bool], opt: &SftOptions) -> Encoded {
    let mut pairs = split_pairs(ids, mask);
    if opt.mask_history {
        pairs.reverse(); // the last turns get the budget first
    }
    let mut total = 0usize;
    let mut pieces: Vec<(Vec<u32>, Vec<i32>)> = Vec::with_capacity(pairs.len());
    for (turn, p) in pairs.iter().enumerate() {
        if total >= opt.cutoff_len {
            break;
        }
        let (sl, tl) = infer_seqlen(p.source.len(), p.target.len(), opt.cutoff_len - total);
        total += sl + tl;
        let mut piece_ids = p.source[..sl].to_vec();
        let mut labels: Vec<i32> =
            if opt.train_on_prompt { piece_ids.iter().map(|&x| x as i32).collect() } else { vec![IGNORE_INDEX; sl] };
        let masked_turn = opt.mask_history && turn != 0;
        for (&id, &m) in p.target[..tl].iter().zip(&p.target_mask[..tl]) {
            piece_ids.push(id);
            let trained = !masked_turn && (m || opt.train_on_prompt);
            labels.push(if trained { id as i32 } else { IGNORE_INDEX });
        }
        pieces.push((piece_ids, labels));
    }
    if opt.mask_history {
        pieces.reverse();
    }
    let input_ids: Vec<u32> = pieces.iter().flat_map(|p| p.0.iter().copied()).collect();
    let labels: Vec<i32> = pieces.iter().flat_map(|p| p.1.iter().copied()).collect();
    if !labels.iter().any(|&l| l != IGNORE_INDEX) {
        return Encoded::NoTrainedToken;
    }
    let truncated = input_ids.len() < ids.len();
    Encoded::Kept(Example::new(input_ids, labels), truncated)
}

/// Pretraining, as LLaMA-Factory's `PretrainDatasetProcessor`: every text + eos.
/// - `packing`: all texts concatenated and cut into blocks of exactly `cutoff_len`; the remainder
///   that does not fill a block is dropped; with a BOS id, each block's first id becomes BOS.
/// - no packing: one example per text, `[bos] + text + eos`, truncated to `cutoff_len`.
///
/// Labels are the ids (every token trained).
pub fn encode_pt(enc: &ChatTokenizer, texts: &[&str], cutoff_len: usize, packing: bool) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    let mut packer = PtPacker::new(cutoff_len, bos_to_add(enc));
    for t in texts {
        let ids = pt_ids(enc, t)?;
        if packing {
            packer.push(&ids, &mut out);
        } else {
            out.push(pt_row(enc, ids, cutoff_len).0);
        }
    }
    Ok(out)
}

/// The BOS id when the tokenizer adds one (HF `add_bos_token`).
pub fn bos_to_add(enc: &ChatTokenizer) -> Option<u32> {
    enc.tok.bos_id().filter(|_| enc.tok.special_tokens().add_bos)
}

/// Pretraining ids of one text: text + eos (no eos id: text alone).
pub fn pt_ids(enc: &ChatTokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = enc.encode_text(text)?;
    ids.extend(enc.tok.eos_id());
    Ok(ids)
}

/// One unpacked pt example, [bos] + ids cut to cutoff_len, and whether it was cut.
pub fn pt_row(enc: &ChatTokenizer, ids: Vec<u32>, cutoff_len: usize) -> (Example, bool) {
    let mut row: Vec<u32> = bos_to_add(enc).into_iter().collect();
    row.extend(ids);
    let cut = row.len() > cutoff_len;
    row.truncate(cutoff_len);
    (Example::trained(row), cut)
}

/// Every sample of one split → examples (packed when `opts` packs), counting truncated and
/// skipped conversations in `stats`.
pub fn encode_samples(
    samples: &[Sample],
    opts: &DataOptions,
    enc: &ChatTokenizer,
    stats: &mut DataStats,
) -> Result<Vec<Example>> {
    match opts.stage {
        DataStage::Pt => {
            let texts: Vec<&str> = samples
                .iter()
                .map(|s| match s {
                    Sample::Text(t) => Ok(t.as_str()),
                    Sample::Chat { .. } => Err(Error::msg("pretraining needs text samples, got a conversation")),
                })
                .collect::<Result<_>>()?;
            // LLaMA-Factory turns packing on for stage pt when the user leaves it unset; the
            // config layer does that (a bool here cannot say "unset").
            let packing = opts.packs();
            if !packing {
                for t in &texts {
                    let ids = pt_ids(enc, t)?;
                    let full = ids.len() + usize::from(bos_to_add(enc).is_some());
                    stats.truncated += usize::from(full > opts.cutoff_len);
                }
            }
            encode_pt(enc, &texts, opts.cutoff_len, packing)
        }
        DataStage::Sft => {
            let opt = SftOptions {
                cutoff_len: opts.cutoff_len,
                train_on_prompt: opts.train_on_prompt,
                mask_history: opts.mask_history,
            };
            let mut out = Vec::with_capacity(samples.len());
            for s in samples {
                match encode_sft(enc, s, &opt, opts.default_system.as_deref())? {
                    Encoded::Kept(e, cut) => {
                        stats.truncated += usize::from(cut);
                        out.push(e);
                    }
                    Encoded::NoTrainedToken => stats.skipped += 1,
                }
            }
            Ok(if opts.packs() { pack(out, opts.cutoff_len, opts.neat_packing) } else { out })
        }
    }
}

/// Incremental pt packing (shared with streaming): ids in, full blocks out.
pub struct PtPacker {
    block: usize,
    bos: Option<u32>,
    buf: Vec<u32>,
}

impl PtPacker {
    pub fn new(block: usize, bos: Option<u32>) -> Self {
        PtPacker { block, bos, buf: Vec::new() }
    }
    /// Appends ids and moves every completed block into `out`.
    pub fn push(&mut self, ids: &[u32], out: &mut Vec<Example>) {
        self.buf.extend_from_slice(ids);
        let full = self.buf.len() / self.block * self.block;
        for chunk in self.buf[..full].chunks(self.block) {
            let mut row = chunk.to_vec();
            if let Some(b) = self.bos {
                row[0] = b;
            }
            out.push(Example::trained(row));
        }
        self.buf.drain(..full);
    }
    /// Ids left over that do not fill a block (dropped, as LLaMA-Factory does).
    pub fn leftover(&self) -> usize {
        self.buf.len()
    }
}

/// LLaMA-Factory's `greedy_knapsack`: lengths sorted ascending; each row takes the largest example
/// that still fits, repeatedly, until none fits. Returns groups of example indices.
/// Every length must be <= capacity.
pub fn greedy_knapsack(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    // length → indices with that length (LLaMA-Factory pops the last index of a length first).
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in lengths.iter().enumerate() {
        debug_assert!(l <= capacity, "example longer than the packing capacity");
        by_len.entry(l).or_default().push(i);
    }
    let mut groups = Vec::new();
    while !by_len.is_empty() {
        let mut group = Vec::new();
        let mut remaining = capacity;
        while let Some((&l, _)) = by_len.range(..=remaining).next_back() {
            let v = by_len.get_mut(&l).expect("key just found");
            group.push(v.pop().expect("no empty lists are kept"));
            if v.is_empty() {
                by_len.remove(&l);
            }
            remaining -= l;
        }
        if group.is_empty() {
            // Only examples longer than capacity remain; they are the caller's bug.
            break;
        }
        groups.push(group);
    }
    groups
}

/// Packs sft examples into rows of at most `cutoff_len` ids (greedy knapsack).
/// `neat`: each row also carries per-token segment ids 1, 2, ... (one per example) so attention
/// stays within an example and positions restart (LLaMA-Factory's `neat_packing`).
pub fn pack(examples: Vec<Example>, cutoff_len: usize, neat: bool) -> Vec<Example> {
    let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    let groups = greedy_knapsack(&lengths, cutoff_len);
    let mut slots: Vec<Option<Example>> = examples.into_iter().map(Some).collect();
    groups
        .into_iter()
        .map(|g| {
            let mut row = Example::new(Vec::new(), Vec::new());
            let mut seg = Vec::new();
            for (k, i) in g.into_iter().enumerate() {
                let e = slots[i].take().expect("each example is packed once");
                let n = e.input_ids.len() as u32;
                seg.extend(std::iter::repeat_n(k as u32 + 1, n as usize));
                row.input_ids.extend(e.input_ids);
                row.labels.extend(e.labels);
                if neat {
                    row.positions.extend(0..n); // restart per sequence
                }
            }
            if neat {
                row.segment_ids = Some(seg);
            } else {
                // Plain packing: one sequence as far as the model knows (LLaMA-Factory without
                // neat_packing feeds no position ids).
                row.positions = (0..row.input_ids.len() as u32).collect();
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_seqlen_matches_llamafactory_cases() {
        // Target under half the budget: kept whole, source cut.
        assert_eq!(infer_seqlen(100, 10, 64), (54, 10));
        // Source under half: kept whole, target gets the rest.
        assert_eq!(infer_seqlen(10, 100, 64), (10, 54));
        // Both long: split in proportion, int(64 * 60 / 100) = 38 for the target.
        assert_eq!(infer_seqlen(40, 60, 64), (26, 38));
        // Fits: unchanged.
        assert_eq!(infer_seqlen(5, 7, 64), (5, 7));
    }

    #[test]
    fn greedy_knapsack_fills_rows_largest_first() {
        let groups = greedy_knapsack(&[5, 3, 8, 2, 7], 10);
        let sizes: Vec<Vec<usize>> = groups.iter().map(|g| g.iter().map(|&i| [5, 3, 8, 2, 7][i]).collect()).collect();
        assert_eq!(sizes, vec![vec![8, 2], vec![7, 3], vec![5]]);
    }

    #[test]
    fn pairs_split_on_the_mask_with_untrained_tail() {
        let ids = [1, 2, 3, 4, 5, 6, 7, 8];
        let mask = [false, false, true, true, false, true, false, false];
        let p = split_pairs(&ids, &mask);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].source, p[0].target), (&ids[0..2], &ids[2..4]));
        assert_eq!((p[1].source, p[1].target), (&ids[4..5], &ids[5..8]));
        assert_eq!(p[1].target_mask, &[true, false, false]);
        // mask_history: only the last pair is trained; the tail stays untrained.
        let opt = SftOptions { cutoff_len: 100, train_on_prompt: false, mask_history: true };
        let Encoded::Kept(e, cut) = encode_pairs(&ids, &mask, &opt) else { panic!() };
        assert!(!cut);
        assert_eq!(e.input_ids, ids);
        assert_eq!(e.labels, [-100, -100, -100, -100, -100, 6, -100, -100]);
    }
}
