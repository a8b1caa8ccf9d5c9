//! One error type for the whole crate, grouped by kind (candle's `Error`, see STYLE.md 2.8).
//! File and user input never panic: parsers and ops return these instead.

use crate::shape::Shape;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    // === shapes & dtypes ===
    #[error("{op}: shape mismatch, lhs {lhs:?}, rhs {rhs:?}")]
    ShapeMismatch { op: &'static str, lhs: Shape, rhs: Shape },
    #[error("{op}: bad shape {shape:?}: {msg}")]
    BadShape { op: &'static str, shape: Shape, msg: String },
    #[error("{op}: dtype mismatch, expected {expected}, got {got}")]
    DTypeMismatch { op: &'static str, expected: String, got: String },
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange { op: &'static str, index: usize, size: usize },
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    // === quantization ===
    #[error("quant {format}: {msg}")]
    Quant { format: String, msg: String },

    // === files ===
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
    #[error("gguf: tensor {name} needs {need} bytes at offset {offset}, file has {have}")]
    Truncated { name: String, need: u64, offset: u64, have: u64 },
    #[error("gguf: missing metadata key {0}")]
    MissingKey(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),

    // === tape ===
    #[error("tape: {0}")]
    Tape(String),

    // === backends ===
    #[error("{0} backend not compiled in; enable the `{0}` feature")]
    BackendNotCompiled(&'static str),
    #[error("{0} backend is not implemented yet")]
    BackendNotImplemented(&'static str),
    #[error("out of memory on {device}: need {need} bytes, {available} available")]
    OutOfMemory { device: String, need: u64, available: u64 },

    // === anything else, with context ===
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { path: "<io>".into(), source }
    }
}

/// `bail!("...")` returns `Err(Error::Msg(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::Msg(format!($($arg)*))) };
}

/// Adds a line of context to an error: `read(path).context("loading tokenizer")?`.
pub trait Context<T> {
    fn context(self, c: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, c: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context { context: c.into(), source: Box::new(e.into()) })
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Context { context: f().into(), source: Box::new(e.into()) })
    }
}

/// For "did you mean" suggestions (config keys, dataset names, LoRA targets, template names,
/// command-line options): the known name closest to `name` by edit distance, if it is close enough
/// to be a likely typo
/// (distance at most max(2, len/3): catches `identiy`, `alpaca_en` for `alpaca_en_demo` does not).
pub fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let best = known.iter().map(|k| (levenshtein(name, k), *k)).min()?;
    let limit = (name.chars().count() / 3).max(2);
    // Also suggest a name that contains the query or is contained in it (a prefix typed short).
    if best.0 <= limit {
        return Some(best.1);
    }
    known.iter().find(|k| k.contains(name) || name.contains(**k)).copied()
}

/// Levenshtein distance (insert/delete/substitute = 1).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for j in 0..b.len() {
            let sub = prev[j] + usize::from(ca != b[j]);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
