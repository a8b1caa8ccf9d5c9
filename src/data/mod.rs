//! Datasets: formats, the dataset_info.json registry, tokenization through chat templates,
//! truncation, packing and batching, compatible with LLaMA-Factory's `data/` folders.
//! Spec: LLaMA-Factory src/llamafactory/data/ (loader.py, converter.py, processor/*.py, collator.py).
//! Test: tests/data.rs
//!
//! The story of `prepare`:
//! ```text
//! registry::resolve   names → DatasetAttr (dataset_info.json entry, or a bare file path)
//! formats::load_samples   rows of .json/.jsonl → Sample (Text | Chat), max_samples per dataset
//! split               eval_dataset, else val_size (seeded shuffle, as HF train_test_split)
//! process::encode_*   Sample → Example: chat template + template-derived mask, infer_seqlen truncation
//! process::pack       greedy knapsack (sft packing / neat_packing) or fixed blocks (pt)
//! collate             Examples → model::Batch (pad, shift labels into targets)
//! loader::Loader      epochs, seeded shuffle per epoch, exact resume; or streaming over JSONL
//! ```
//!
//! Contracts easy to miss:
//! - `Example::labels` are NOT shifted: labels[i] is the token at i (or -100). `collate` shifts:
//!   targets[i] = labels[i + 1], and -100 where i + 1 starts another packed segment, so a packed
//!   sequence never learns to predict its neighbour's first token.
//! - A bad row is an error naming the file and its 1-based row (JSON Lines: its line), never
//!   silently dropped as LLaMA-Factory does. An example whose trained tokens were all cut by
//!   cutoff_len is skipped and counted in `DataStats::skipped`.

pub mod demo;
pub mod formats;
pub mod loader;
pub mod process;
pub mod registry;

pub use loader::{DataPosition, Loader};

use crate::error::{Error, Result};
use crate::model::Batch;
use crate::rng::Rng;
use crate::tokenizer::chat::ChatTokenizer;
use crate::tokenizer::template::Message;
use std::path::PathBuf;

/// The label of a token that is not trained (PyTorch `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i32 = -100;

/// Which LLaMA-Factory stage the data is prepared for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataStage {
    /// Pretraining: plain text + eos, every token trained.
    Pt,
    /// Supervised fine-tuning: conversations through the chat template, responses trained.
    Sft,
}

/// LLaMA-Factory's DataArguments (the subset we support), same names and meanings.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// Dataset names from `dataset_dir/dataset_info.json`, or paths to .json/.jsonl files/dirs.
    pub dataset: Vec<String>,
    /// Evaluation datasets (same resolution). Empty: use the `val_size` split, if any.
    pub eval_dataset: Vec<String>,
    /// The folder holding dataset_info.json and the data files (LLaMA-Factory default "data").
    pub dataset_dir: PathBuf,
    pub stage: DataStage,
    /// Maximum tokens per example (and per packed row). LLaMA-Factory default 2048.
    pub cutoff_len: usize,
    /// Read at most this many rows of EACH dataset (the first ones).
    pub max_samples: Option<usize>,
    /// Pack examples into rows of cutoff_len. pt: concatenate + cut into blocks (the pt default);
    /// sft: greedy knapsack of whole examples (they attend to each other unless neat_packing).
    pub packing: bool,
    /// sft packing where packed sequences cannot attend to each other (segment ids) and positions
    /// restart. Implies packing.
    pub neat_packing: bool,
    /// Train on the prompt tokens too.
    pub train_on_prompt: bool,
    /// Train only the last assistant turn of each conversation.
    pub mask_history: bool,
    /// Held-out fraction (0 < v < 1) or row count (v >= 1) of the train data for evaluation.
    pub val_size: f64,
    /// Read JSONL line by line while training (`Loader::streaming`) instead of loading it all.
    pub streaming: bool,
    /// Seeds the val split and the per-epoch shuffle.
    pub seed: u64,
    /// The system prompt of conversations that have none (None: the template's own default).
    pub default_system: Option<String>,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            dataset: Vec::new(),
            eval_dataset: Vec::new(),
            dataset_dir: PathBuf::from("data"),
            stage: DataStage::Sft,
            cutoff_len: 2048,
            max_samples: None,
            packing: false,
            neat_packing: false,
            train_on_prompt: false,
            mask_history: false,
            val_size: 0.0,
            streaming: false,
            seed: 42,
            default_system: None,
        }
    }
}

impl DataOptions {
    /// LLaMA-Factory: pt packs by default, neat_packing implies packing.
    pub fn packs(&self) -> bool {
        self.packing || self.neat_packing
    }
}

/// One training sequence. labels are aligned with input_ids (HF convention: labels[i] is the token
/// at i, -100 = not trained); the shift happens in `collate`. segment_ids: Some for neat-packed rows
/// (1-based segment per token); positions restart at 0 in each segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
    pub segment_ids: Option<Vec<u32>>,
    pub positions: Vec<u32>,
}

impl Example {
    /// An unpacked example: positions 0..len, no segments.
    pub fn new(input_ids: Vec<u32>, labels: Vec<i32>) -> Self {
        debug_assert_eq!(input_ids.len(), labels.len());
        let positions = (0..input_ids.len() as u32).collect();
        Example { input_ids, labels, segment_ids: None, positions }
    }
    /// Every token trained (pretraining).
    pub fn trained(input_ids: Vec<u32>) -> Self {
        let labels = input_ids.iter().map(|&x| x as i32).collect();
        Example::new(input_ids, labels)
    }
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    /// Tokens whose label is not -100.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// For do_predict: the prompt (rendered with generation prompt) and the reference answer text.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictItem {
    pub prompt_ids: Vec<u32>,
    pub prompt: Vec<Message>,
    pub reference: String,
}

/// What `prepare` did, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Rows read (train + eval, after max_samples).
    pub rows: usize,
    /// Train examples (rows of the model input, after packing).
    pub examples: usize,
    /// Train tokens (input ids, no padding).
    pub tokens: usize,
    /// Train tokens with a label.
    pub trained_tokens: usize,
    /// Conversations cut by cutoff_len.
    pub truncated: usize,
    /// Conversations dropped because no trained token survived truncation.
    pub skipped: usize,
}

pub struct PreparedData {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub stats: DataStats,
}

/// One dataset row after format conversion.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    /// Pretraining text.
    Text(String),
    /// A conversation: user/assistant (tool/assistant) turns alternating, ending with assistant.
    /// `system` is "" when the row has none; `tools` the JSON of the tools column, if any.
    Chat { system: String, tools: Option<serde_json::Value>, messages: Vec<Message> },
}

/// Train and eval samples, with the number of rows read. Shared by `prepare`, `prepare_predict`.
fn load_split(opts: &DataOptions) -> Result<(Vec<Sample>, Vec<Sample>, usize)> {
    if opts.dataset.is_empty() {
        return Err(Error::msg("no dataset given: set `dataset` (names from dataset_info.json or file paths)"));
    }
    if opts.cutoff_len == 0 {
        return Err(Error::msg("cutoff_len must be at least 1"));
    }
    let load = |names: &[String]| -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        for name in names {
            let attr = registry::resolve(&opts.dataset_dir, name)?;
            out.extend(formats::load_samples(&attr, opts.stage, opts.max_samples)?);
        }
        Ok(out)
    };
    let mut train = load(&opts.dataset)?;
    let mut eval = if opts.eval_dataset.is_empty() { Vec::new() } else { load(&opts.eval_dataset)? };
    let rows = train.len() + eval.len();
    if opts.eval_dataset.is_empty() && opts.val_size > 0.0 {
        let n = train.len();
        // HF train_test_split: a float < 1 is a fraction (rounded up), >= 1 a row count.
        let n_eval =
            if opts.val_size < 1.0 { (opts.val_size * n as f64).ceil() as usize } else { opts.val_size as usize };
        if n_eval >= n {
            return Err(Error::msg(format!(
                "val_size {} leaves no training rows (the datasets have {n} rows)",
                opts.val_size
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut Rng::new(opts.seed));
        let mut is_eval = vec![false; n];
        for &i in &order[..n_eval] {
            is_eval[i] = true;
        }
        // Both halves keep file order, so the split is readable and stable.
        let mut tr = Vec::with_capacity(n - n_eval);
        for (s, e) in train.into_iter().zip(is_eval) {
            if e {
                eval.push(s);
            } else {
                tr.push(s);
            }
        }
        train = tr;
    }
    Ok((train, eval, rows))
}

/// Fisher-Yates with our seeded Rng.
pub(crate) fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

/// Loads, splits, tokenizes and packs the datasets of `opts`.
pub fn prepare(opts: &DataOptions, enc: &ChatTokenizer) -> Result<PreparedData> {
    let (train, eval, rows) = load_split(opts)?;
    let mut stats = DataStats { rows, ..Default::default() };
    let train = process::encode_samples(&train, opts, enc, &mut stats)?;
    let mut eval_stats = DataStats::default();
    let eval = process::encode_samples(&eval, opts, enc, &mut eval_stats)?;
    stats.truncated += eval_stats.truncated;
    stats.skipped += eval_stats.skipped;
    if train.is_empty() {
        return Err(Error::msg(format!(
            "no training example left: all {} conversations lost every trained token to truncation \
             (cutoff_len = {} is too small for these responses)",
            stats.skipped, opts.cutoff_len
        )));
    }
    stats.examples = train.len();
    stats.tokens = train.iter().map(|e| e.len()).sum();
    stats.trained_tokens = train.iter().map(|e| e.trained_tokens()).sum();
    Ok(PreparedData { train, eval, stats })
}

/// The prompts and reference answers for do_predict: from eval_dataset, else the val split.
/// Each conversation's last assistant message is the reference; everything before it (with the
/// system prompt) is the prompt.
pub fn prepare_predict(opts: &DataOptions, enc: &ChatTokenizer) -> Result<Vec<PredictItem>> {
    if opts.stage != DataStage::Sft {
        return Err(Error::msg("predict needs stage sft (conversations with reference answers)"));
    }
    let (_, eval, _) = load_split(opts)?;
    if eval.is_empty() {
        return Err(Error::msg("predict needs eval_dataset or val_size > 0"));
    }
    let mut out = Vec::with_capacity(eval.len());
    for s in &eval {
        let Sample::Chat { system, messages, .. } = s else { continue };
        let (last, rest) = messages.split_last().expect("chat samples are never empty");
        let mut prompt = Vec::with_capacity(messages.len());
        let system = if system.is_empty() { opts.default_system.clone().unwrap_or_default() } else { system.clone() };
        if !system.is_empty() {
            prompt.push(Message::system(system));
        }
        prompt.extend(rest.iter().cloned());
        let prompt_ids = enc.encode_prompt(&prompt)?;
        out.push(PredictItem { prompt_ids, prompt, reference: last.content.clone() });
    }
    Ok(out)
}

/// Pads to the longest row (targets -100, pad id `pad_id`), shifts labels: targets[i] = labels[i+1]
/// (-100 at a row's last token, in padding, and where i + 1 starts another segment); copies
/// positions and segment ids. Padding gets position 0 and segment 0 (its own segment, so no real
/// token ever attends to it; with causal attention it could not anyway). Rows without segment ids
/// in a batch that has some get segment 1.
pub fn collate(examples: &[&Example], pad_id: u32) -> Result<Batch> {
    let bad = |msg: String| Error::InvalidArgument { op: "collate", msg };
    if examples.is_empty() {
        return Err(bad("no examples".into()));
    }
    let t = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    if t == 0 {
        return Err(bad("every example is empty".into()));
    }
    let any_seg = examples.iter().any(|e| e.segment_ids.is_some());
    let b = examples.len();
    let mut ids = Vec::with_capacity(b * t); // (B, T)
    let mut targets = Vec::with_capacity(b * t); // (B, T)
    let mut positions = Vec::with_capacity(b * t); // (B, T)
    let mut segs = Vec::with_capacity(if any_seg { b * t } else { 0 }); // (B, T)
    for (r, e) in examples.iter().enumerate() {
        let n = e.len();
        if e.labels.len() != n || e.positions.len() != n || e.segment_ids.as_ref().is_some_and(|s| s.len() != n) {
            return Err(bad(format!("example {r}: input_ids, labels, positions, segment_ids differ in length")));
        }
        let seg_of = |i: usize| e.segment_ids.as_ref().map_or(1, |s| s[i]);
        ids.extend_from_slice(&e.input_ids);
        ids.extend(std::iter::repeat_n(pad_id, t - n));
        for i in 0..n {
            let same = i + 1 < n && seg_of(i) == seg_of(i + 1);
            targets.push(if same { e.labels[i + 1] } else { IGNORE_INDEX });
        }
        targets.extend(std::iter::repeat_n(IGNORE_INDEX, t - n));
        positions.extend_from_slice(&e.positions);
        positions.extend(std::iter::repeat_n(0, t - n));
        if any_seg {
            segs.extend((0..n).map(seg_of));
            segs.extend(std::iter::repeat_n(0, t - n));
        }
    }
    Ok(Batch {
        b,
        t,
        ids: ids.into(),
        targets,
        positions: positions.into(),
        segment_ids: if any_seg { Some(segs.into()) } else { None },
    })
}
