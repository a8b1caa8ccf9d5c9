//! Batches for the trainer: epochs over prepared examples with a seeded shuffle per epoch, or
//! streaming over JSON Lines files; both resume exactly from a saved `DataPosition`.
//! Spec: this file (HF Trainer semantics: a shuffled order per epoch, the last batch of an epoch
//! may be short, `dataloader_drop_last = False`).   Test: tests/data.rs
//!
//! Contracts easy to miss:
//! - The order of epoch e depends only on (seed, e), so a resumed run needs no saved RNG state:
//!   `position()` = (epoch, index of the next example in that order).
//! - A batch never spans two epochs. The first `next_batch` after an epoch's last example starts
//!   the next epoch.
//! - Streaming reads files in order, line by line (never a whole file); its position is
//!   (file, byte offset of the next line, its line number, rows read of the current dataset,
//!   pretraining ids read but not yet emitted). Leftover ids that do not fill a block at the end of
//!   an epoch are dropped, as `prepare` drops them, so an epoch of streaming equals `prepare`.

use super::formats::{self, RowRef};
use super::process::{self, Encoded, PtPacker, SftOptions};
use super::registry::{self, DatasetAttr};
use super::{collate, DataOptions, DataStage, Example};
use crate::error::{Error, Result};
use crate::model::Batch;
use crate::rng::{splitmix64, Rng};
use crate::tokenizer::chat::ChatTokenizer;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the loader is; saved in checkpoints. Only `epoch` and `index` are used in memory; the
/// other fields are streaming state (zero/empty otherwise).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataPosition {
    /// Epochs completed (0-based epoch being read).
    pub epoch: usize,
    /// Examples of this epoch already handed out (in memory: index into the epoch's order).
    pub index: usize,
    /// Streaming: the file being read (index into the dataset files, in order).
    #[serde(default)]
    pub file: usize,
    /// Streaming: byte offset of the next line in that file.
    #[serde(default)]
    pub offset: u64,
    /// Streaming: 1-based number of the last line read in that file (for error messages).
    #[serde(default)]
    pub line: usize,
    /// Streaming: rows read of the current dataset this epoch (for max_samples).
    #[serde(default)]
    pub rows: usize,
    /// Streaming pretraining: ids read but not yet emitted in a block.
    #[serde(default)]
    pub pending: Vec<u32>,
}

/// The order of epoch `epoch`: a permutation of 0..n that depends only on (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut x = seed;
    let mut rng = Rng::new(splitmix64(&mut x) ^ epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    super::shuffle(&mut order, &mut rng);
    order
}

pub struct Loader {
    batch_size: usize,
    pad_id: u32,
    pos: DataPosition,
    src: Source,
}

enum Source {
    Memory { examples: Vec<Example>, seed: u64, order: Vec<usize> },
    Stream(Box<Stream>),
}

struct StreamFile {
    attr: DatasetAttr,
    path: PathBuf,
    /// Index of its dataset in `opts.dataset` (max_samples counts per dataset).
    dataset: usize,
    bytes: u64,
}

struct Stream {
    opts: DataOptions,
    enc: Arc<ChatTokenizer>,
    files: Vec<StreamFile>,
    total_bytes: u64,
    /// The open file (index) and its reader, positioned at `pos.offset`.
    reader: Option<(usize, BufReader<std::fs::File>)>,
}

impl Loader {
    /// Epochs over `examples`, `batch_size` (>= 1) per batch, shuffled per epoch from `seed`.
    pub fn new(examples: Vec<Example>, batch_size: usize, seed: u64, pad_id: u32) -> Self {
        let order = epoch_order(examples.len(), seed, 0);
        Loader {
            batch_size: batch_size.max(1),
            pad_id,
            pos: DataPosition::default(),
            src: Source::Memory { examples, seed, order },
        }
    }

    /// Streams the JSON Lines files of `opts.dataset` in order, tokenizing on the fly.
    /// pt packs into cutoff_len blocks when `opts.packs()`; sft packing needs the whole dataset
    /// and is refused here, as is val_size (use eval_dataset).
    pub fn streaming(opts: &DataOptions, enc: Arc<ChatTokenizer>, batch_size: usize, pad_id: u32) -> Result<Self> {
        if opts.stage == DataStage::Sft && opts.packs() {
            return Err(Error::msg(
                "streaming: sft packing needs the whole dataset; turn packing off or streaming off",
            ));
        }
        if opts.val_size > 0.0 {
            return Err(Error::msg("streaming: val_size is not supported; give an eval_dataset instead"));
        }
        if opts.cutoff_len == 0 {
            return Err(Error::msg("cutoff_len must be at least 1"));
        }
        if opts.dataset.is_empty() {
            return Err(Error::msg("no dataset given: set `dataset` (names from dataset_info.json or file paths)"));
        }
        let mut files = Vec::new();
        for (d, name) in opts.dataset.iter().enumerate() {
            let attr = registry::resolve(&opts.dataset_dir, name)?;
            for path in formats::data_files(&attr.path)? {
                let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
                let mut head = String::new();
                let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
                BufReader::new(f).read_line(&mut head).map_err(|e| Error::io(&path, e))?;
                if !formats::is_json_lines(&path, &head) {
                    return Err(Error::Format {
                        path: path.display().to_string(),
                        msg: "streaming needs JSON Lines (one row per line), not a JSON array".into(),
                    });
                }
                files.push(StreamFile { attr: attr.clone(), path, dataset: d, bytes: meta.len() });
            }
        }
        let total_bytes = files.iter().map(|f| f.bytes).sum();
        let stream = Stream { opts: opts.clone(), enc, files, total_bytes, reader: None };
        Ok(Loader {
            batch_size: batch_size.max(1),
            pad_id,
            pos: DataPosition::default(),
            src: Source::Stream(Box::new(stream)),
        })
    }

    /// The next batch; wraps into the next epoch automatically.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let mut batch: Vec<Example> = Vec::with_capacity(self.batch_size);
        let mut wrapped = false;
        while batch.len() < self.batch_size {
            match self.next_example()? {
                Some(e) => batch.push(e),
                None if !batch.is_empty() => break, // a short last batch of the epoch
                None => {
                    if wrapped || (self.pos.index == 0 && self.pos.epoch == 0 && self.at_start()) {
                        return Err(Error::msg("the dataset yields no example (is it empty?)"));
                    }
                    self.start_epoch(self.pos.epoch + 1);
                    wrapped = true;
                }
            }
        }
        let refs: Vec<&Example> = batch.iter().collect();
        collate(&refs, self.pad_id)
    }

    /// Is the position the very start of an epoch (nothing read yet)?
    fn at_start(&self) -> bool {
        self.pos.file == 0 && self.pos.offset == 0 && self.pos.pending.is_empty()
    }

    fn start_epoch(&mut self, epoch: usize) {
        self.pos = DataPosition { epoch, ..Default::default() };
        match &mut self.src {
            Source::Memory { examples, seed, order } => *order = epoch_order(examples.len(), *seed, epoch),
            Source::Stream(s) => s.reader = None,
        }
    }

    fn next_example(&mut self) -> Result<Option<Example>> {
        match &mut self.src {
            Source::Memory { examples, order, .. } => {
                let Some(&i) = order.get(self.pos.index) else { return Ok(None) };
                self.pos.index += 1;
                Ok(Some(examples[i].clone()))
            }
            Source::Stream(s) => {
                let e = s.next_example(&mut self.pos)?;
                if e.is_some() {
                    self.pos.index += 1;
                }
                Ok(e)
            }
        }
    }

    pub fn position(&self) -> DataPosition {
        self.pos.clone()
    }

    /// Continues from a position returned by `position()` (of a loader over the same data).
    pub fn seek(&mut self, p: &DataPosition) -> Result<()> {
        match &mut self.src {
            Source::Memory { examples, seed, order } => {
                if p.index > examples.len() {
                    return Err(Error::msg(format!(
                        "data position {} is past the {} examples of the dataset (was the data changed?)",
                        p.index,
                        examples.len()
                    )));
                }
                *order = epoch_order(examples.len(), *seed, p.epoch);
            }
            Source::Stream(s) => {
                if p.file > s.files.len() || s.files.get(p.file).is_some_and(|f| p.offset > f.bytes) {
                    return Err(Error::msg(format!(
                        "data position (file {}, offset {}) is past the streamed files (was the data changed?)",
                        p.file, p.offset
                    )));
                }
                s.reader = None;
            }
        }
        self.pos = p.clone();
        Ok(())
    }

    /// Batches per epoch; None when streaming (the length is unknown: set max_steps).
    pub fn batches_per_epoch(&self) -> Option<usize> {
        match &self.src {
            Source::Memory { examples, .. } => Some(examples.len().div_ceil(self.batch_size)),
            Source::Stream(_) => None,
        }
    }

    /// Fractional epoch, for logs (streaming: by bytes read).
    pub fn epoch_progress(&self) -> f64 {
        let frac = match &self.src {
            Source::Memory { examples, .. } if !examples.is_empty() => self.pos.index as f64 / examples.len() as f64,
            Source::Memory { .. } => 0.0,
            Source::Stream(s) if s.total_bytes > 0 => {
                let before: u64 = s.files.iter().take(self.pos.file).map(|f| f.bytes).sum();
                (before + self.pos.offset) as f64 / s.total_bytes as f64
            }
            Source::Stream(_) => 0.0,
        };
        self.pos.epoch as f64 + frac.min(1.0)
    }
}

impl Stream {
    /// The next example of this epoch, or None at its end.
    fn next_example(&mut self, pos: &mut DataPosition) -> Result<Option<Example>> {
        let cutoff = self.opts.cutoff_len;
        loop {
            if self.opts.stage == DataStage::Pt && self.opts.packs() && pos.pending.len() >= cutoff {
                let mut out = Vec::with_capacity(1);
                let mut packer = PtPacker::new(cutoff, process::bos_to_add(&self.enc));
                let rest = pos.pending.split_off(cutoff);
                packer.push(&pos.pending, &mut out);
                pos.pending = rest;
                return Ok(out.pop());
            }
            let Some((line_no, line)) = self.next_line(pos)? else {
                pos.pending.clear(); // a partial block at the end of the epoch is dropped
                return Ok(None);
            };
            let f = &self.files[pos.file];
            let at = RowRef { file: &f.path, row: line_no };
            let Some(v) = formats::parse_line(&f.path, line_no, &line)? else { continue };
            pos.rows += 1;
            let sample = formats::convert_row(&f.attr, self.opts.stage, &at, &v)?;
            match (self.opts.stage, &sample) {
                (DataStage::Pt, super::Sample::Text(t)) => {
                    let ids = process::pt_ids(&self.enc, t)?;
                    if self.opts.packs() {
                        pos.pending.extend(ids);
                    } else {
                        return Ok(Some(process::pt_row(&self.enc, ids, cutoff).0));
                    }
                }
                _ => {
                    let opt = SftOptions {
                        cutoff_len: cutoff,
                        train_on_prompt: self.opts.train_on_prompt,
                        mask_history: self.opts.mask_history,
                    };
                    match process::encode_sft(&self.enc, &sample, &opt, self.opts.default_system.as_deref())? {
                        Encoded::Kept(e, _) => return Ok(Some(e)),
                        Encoded::NoTrainedToken => continue,
                    }
                }
            }
        }
    }

    /// The next line (with its 1-based number), moving to the next file at EOF or when the
    /// current dataset reached max_samples. None at the end of the last file.
    fn next_line(&mut self, pos: &mut DataPosition) -> Result<Option<(usize, String)>> {
        loop {
            let Some(f) = self.files.get(pos.file) else { return Ok(None) };
            let cap = self.opts.max_samples.unwrap_or(usize::MAX);
            let exhausted = pos.rows >= cap;
            if !exhausted {
                if self.reader.as_ref().is_none_or(|(i, _)| *i != pos.file) {
                    let mut file = std::fs::File::open(&f.path).map_err(|e| Error::io(&f.path, e))?;
                    file.seek(SeekFrom::Start(pos.offset)).map_err(|e| Error::io(&f.path, e))?;
                    self.reader = Some((pos.file, BufReader::new(file)));
                }
                let (_, r) = self.reader.as_mut().expect("just opened");
                let mut buf = Vec::new();
                let n = r.read_until(b'\n', &mut buf).map_err(|e| Error::io(&f.path, e))?;
                if n > 0 {
                    pos.offset += n as u64;
                    pos.line += 1;
                    let text = String::from_utf8(buf)
                        .map_err(|_| RowRef { file: &f.path, row: pos.line }.err("not valid UTF-8"))?;
                    return Ok(Some((pos.line, text)));
                }
            }
            // Next file; a new dataset starts its max_samples count afresh. When the cap is hit,
            // skip the remaining files of this dataset.
            let cur = f.dataset;
            pos.file += 1;
            if exhausted {
                while self.files.get(pos.file).is_some_and(|g| g.dataset == cur) {
                    pos.file += 1;
                }
            }
            if self.files.get(pos.file).is_none_or(|g| g.dataset != cur) {
                pos.rows = 0;
            }
            pos.offset = 0;
            pos.line = 0;
            self.reader = None;
        }
    }
}
