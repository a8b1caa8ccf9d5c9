//! Dataset files → `Sample`s: alpaca, sharegpt (and OpenAI `messages` through sharegpt tags), and
//! pretraining text, from JSON arrays or JSON Lines, one file or a directory of files.
//! Spec: LLaMA-Factory src/llamafactory/data/converter.py (AlpacaDatasetConverter,
//! SharegptDatasetConverter).   Test: tests/data.rs
//!
//! Contract easy to miss: LLaMA-Factory silently DROPS a malformed row; we refuse it with an error
//! naming the file and the 1-based row (for JSON Lines, the row is the line number), because a
//! silently shrinking dataset is the harder bug to find.
//! Roles: user_tag → "user", assistant_tag → "assistant", observation_tag → "tool",
//! function_tag → "assistant" (a tool call is trained output; its JSON is the content), system_tag → "system".

use super::registry::{DatasetAttr, Formatting};
use super::{DataStage, Sample};
use crate::error::{Error, Result};
use crate::tokenizer::template::Message;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Where a row came from, for error messages: "file: row N: ...".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowRef<'a> {
    pub file: &'a Path,
    /// 1-based; for JSON Lines, the line number.
    pub row: usize,
}

impl RowRef<'_> {
    pub fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Format { path: self.file.display().to_string(), msg: format!("row {}: {msg}", self.row) }
    }
}

/// The data files of a dataset path: the file itself, or the .json/.jsonl files of a directory
/// (sorted by name, so the order is reproducible).
pub fn data_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        check_ext(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if p.is_file() && !hidden {
            check_ext(&p)?;
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Format { path: path.display().to_string(), msg: "directory holds no data files".into() });
    }
    Ok(files)
}

fn check_ext(p: &Path) -> Result<()> {
    match p.extension().and_then(|e| e.to_str()) {
        Some("json") | Some("jsonl") => Ok(()),
        Some(ext) => Err(Error::Format {
            path: p.display().to_string(),
            msg: format!(".{ext} files are not supported yet: convert to .json or .jsonl"),
        }),
        None => Err(Error::Format { path: p.display().to_string(), msg: "expected a .json or .jsonl file".into() }),
    }
}

/// Is this file JSON Lines? `.jsonl`, or a `.json` whose first non-blank byte is not `[`
/// (HF `datasets` reads JSON Lines from `.json` files too).
pub fn is_json_lines(path: &Path, head: &str) -> bool {
    path.extension().is_some_and(|e| e == "jsonl") || !head.trim_start().starts_with('[')
}

/// All rows of one file, with their 1-based row numbers (line numbers for JSON Lines).
pub fn read_rows(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fmt_err = |msg: String| Error::Format { path: path.display().to_string(), msg };
    if is_json_lines(path, &text) {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if let Some(v) = parse_line(path, i + 1, line)? {
                rows.push((i + 1, v));
            }
        }
        Ok(rows)
    } else {
        let v: Value = serde_json::from_str(&text).map_err(|e| fmt_err(format!("not valid JSON: {e}")))?;
        match v {
            Value::Array(a) => Ok(a.into_iter().enumerate().map(|(i, v)| (i + 1, v)).collect()),
            _ => Err(fmt_err("expected a JSON array of rows".into())),
        }
    }
}

/// The first row of a file (None if it has none), reading only the first line of JSON Lines.
pub fn first_row(path: &Path) -> Result<Option<Value>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = std::io::BufReader::new(f);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| Error::io(path, e))? == 0 {
            return Ok(None);
        }
        n += 1;
        if !line.trim().is_empty() {
            break;
        }
    }
    if is_json_lines(path, &line) {
        return parse_line(path, n, &line);
    }
    Ok(read_rows(path)?.into_iter().next().map(|(_, v)| v))
}

/// One JSON Lines line; `None` for a blank line.
pub fn parse_line(path: &Path, row: usize, line: &str) -> Result<Option<Value>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(line).map(Some).map_err(|e| RowRef { file: path, row }.err(format!("not valid JSON: {e}")))
}

/// Reads every sample of one registered dataset: at most `max_samples` (the first ones, before any
/// tokenizing, as LLaMA-Factory's `max_samples`).
pub fn load_samples(attr: &DatasetAttr, stage: DataStage, max_samples: Option<usize>) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    let cap = max_samples.unwrap_or(usize::MAX);
    for file in data_files(&attr.path)? {
        if out.len() >= cap {
            break;
        }
        for (row, v) in read_rows(&file)? {
            if out.len() >= cap {
                break;
            }
            out.push(convert_row(attr, stage, &RowRef { file: &file, row }, &v)?);
        }
    }
    if out.is_empty() {
        return Err(Error::Format {
            path: attr.path.display().to_string(),
            msg: format!("dataset '{}' is empty", attr.name),
        });
    }
    Ok(out)
}

/// One row → a `Sample`, validating every column it uses.
pub fn convert_row(attr: &DatasetAttr, stage: DataStage, at: &RowRef, v: &Value) -> Result<Sample> {
    let Value::Object(obj) = v else {
        return Err(at.err(format!("expected a JSON object, got {}", kind(v))));
    };
    match (stage, attr.formatting) {
        (DataStage::Pt, Formatting::Alpaca) => text_row(attr, at, obj),
        (DataStage::Pt, Formatting::Sharegpt) => Err(at.err(format!(
            "dataset '{}' is sharegpt; pretraining needs text rows (alpaca formatting with a \"text\" column)",
            attr.name
        ))),
        (DataStage::Sft, Formatting::Alpaca) => alpaca_row(attr, at, obj),
        (DataStage::Sft, Formatting::Sharegpt) => sharegpt_row(attr, at, obj),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string column: missing or null → None; anything but a string → error.
fn opt_str(at: &RowRef, obj: &Map<String, Value>, col: &Option<String>) -> Result<Option<String>> {
    let Some(col) = col else { return Ok(None) };
    match obj.get(col) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(at.err(format!("column \"{col}\" must be a string, got {}", kind(v)))),
    }
}

fn req_str(at: &RowRef, obj: &Map<String, Value>, col: &Option<String>, what: &str) -> Result<String> {
    let Some(name) = col else {
        return Err(at.err(format!("the dataset has no {what} column configured (dataset_info.json \"columns\")")));
    };
    opt_str(at, obj, col)?.ok_or_else(|| at.err(format!("missing {what} column \"{name}\"")))
}

/// The tools column: a string holding JSON (LLaMA-Factory's form), or the JSON itself.
fn tools_col(at: &RowRef, obj: &Map<String, Value>, col: &Option<String>) -> Result<Option<Value>> {
    let Some(c) = col else { return Ok(None) };
    match obj.get(c) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| at.err(format!("column \"{c}\" (tools) is not valid JSON: {e}"))),
        Some(v @ (Value::Array(_) | Value::Object(_))) => Ok(Some(v.clone())),
        Some(v) => Err(at.err(format!("column \"{c}\" (tools) must be a JSON string or array, got {}", kind(v)))),
    }
}

fn text_row(attr: &DatasetAttr, at: &RowRef, obj: &Map<String, Value>) -> Result<Sample> {
    // The mapped prompt column (LLaMA-Factory: `"columns": {"prompt": "text"}`), else `text`.
    let col = match &attr.prompt {
        Some(p) if obj.contains_key(p) => Some(p.clone()),
        _ => Some("text".to_string()),
    };
    let mut text = opt_str(at, obj, &col)?.ok_or_else(|| {
        let mapped = attr.prompt.as_deref().map(|p| format!("\"{p}\" or ")).unwrap_or_default();
        at.err(format!("missing text column ({mapped}\"text\")"))
    })?;
    if let Some(q) = opt_str(at, obj, &attr.query)?.filter(|q| !q.is_empty()) {
        text = if text.is_empty() { q } else { format!("{text}\n{q}") };
    }
    Ok(Sample::Text(text))
}

fn msg(role: &str, content: impl Into<String>) -> Message {
    Message::new(role, content)
}

fn alpaca_row(attr: &DatasetAttr, at: &RowRef, obj: &Map<String, Value>) -> Result<Sample> {
    let mut messages = Vec::new();
    if let Some(h) = &attr.history {
        match obj.get(h) {
            None | Some(Value::Null) => {}
            Some(Value::Array(turns)) => {
                for (i, t) in turns.iter().enumerate() {
                    let pair = t.as_array().filter(|p| p.len() == 2);
                    let strs = pair.and_then(|p| Some((p[0].as_str()?, p[1].as_str()?)));
                    let Some((q, a)) = strs else {
                        return Err(
                            at.err(format!("history[{i}] must be a pair of strings [prompt, response], got {t}"))
                        );
                    };
                    messages.push(msg("user", q));
                    messages.push(msg("assistant", a));
                }
            }
            Some(v) => return Err(at.err(format!("column \"{h}\" (history) must be an array, got {}", kind(v)))),
        }
    }
    let prompt = opt_str(at, obj, &attr.prompt)?;
    let query = opt_str(at, obj, &attr.query)?;
    if prompt.is_none() && query.is_none() {
        let name = attr.prompt.as_deref().unwrap_or("instruction");
        return Err(at.err(format!("missing prompt column \"{name}\"")));
    }
    // "prompt\nquery", skipping empty parts (converter.py).
    let user: Vec<String> = [prompt, query].into_iter().flatten().filter(|s| !s.is_empty()).collect();
    messages.push(msg("user", user.join("\n")));
    messages.push(msg("assistant", req_str(at, obj, &attr.response, "response")?));
    Ok(Sample::Chat {
        system: opt_str(at, obj, &attr.system)?.unwrap_or_default(),
        tools: tools_col(at, obj, &attr.tools)?,
        messages,
    })
}

fn sharegpt_row(attr: &DatasetAttr, at: &RowRef, obj: &Map<String, Value>) -> Result<Sample> {
    let Some(col) = &attr.messages else {
        return Err(at.err("the dataset has no messages column configured (dataset_info.json \"columns\")"));
    };
    let turns = match obj.get(col) {
        None | Some(Value::Null) => return Err(at.err(format!("missing messages column \"{col}\""))),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(at.err(format!("column \"{col}\" must be an array of messages, got {}", kind(v)))),
    };
    let role_tag = attr.role_tag.as_deref().unwrap_or("from");
    let content_tag = attr.content_tag.as_deref().unwrap_or("value");
    let mut parsed: Vec<(String, String)> = Vec::with_capacity(turns.len());
    for (i, t) in turns.iter().enumerate() {
        let Value::Object(m) = t else {
            return Err(at.err(format!("message {} must be an object, got {}", i + 1, kind(t))));
        };
        let role = match m.get(role_tag) {
            Some(Value::String(s)) => s.clone(),
            None if m.contains_key("role") => {
                return Err(at.err(format!(
                "message {} has no \"{role_tag}\" key; OpenAI-style messages need \"tags\": {{\"role_tag\": \"role\", \
                     \"content_tag\": \"content\", \"user_tag\": \"user\", \"assistant_tag\": \"assistant\", \
                     \"system_tag\": \"system\"}} in dataset_info.json",
                i + 1
            )))
            }
            _ => return Err(at.err(format!("message {} has no string \"{role_tag}\"", i + 1))),
        };
        let content = match m.get(content_tag) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                return Err(at.err(format!("message {}: \"{content_tag}\" must be a string, got {}", i + 1, kind(v))))
            }
            None => return Err(at.err(format!("message {} has no \"{content_tag}\"", i + 1))),
        };
        parsed.push((role, content));
    }
    let is = |tag: &Option<String>, r: &str| tag.as_deref() == Some(r);
    let mut system = String::new();
    let mut rest = &parsed[..];
    if let Some(first) = parsed.first() {
        if is(&attr.system_tag, &first.0) {
            system = first.1.clone();
            rest = &parsed[1..];
        }
    }
    if rest.is_empty() {
        return Err(at.err("empty conversation"));
    }
    if system.is_empty() {
        system = opt_str(at, obj, &attr.system)?.unwrap_or_default();
    }
    let mut messages = Vec::with_capacity(rest.len());
    for (i, (role, content)) in rest.iter().enumerate() {
        let mapped = if is(&attr.user_tag, role) {
            "user"
        } else if is(&attr.assistant_tag, role) {
            "assistant"
        } else if is(&attr.observation_tag, role) {
            "tool"
        } else if is(&attr.function_tag, role) {
            // A tool call is an assistant output: trained, its JSON as the content (templates
            // without tool-call markup still render it).
            "assistant"
        } else {
            let known: Vec<&str> = [&attr.user_tag, &attr.assistant_tag, &attr.observation_tag, &attr.function_tag]
                .into_iter()
                .flatten()
                .map(|s| s.as_str())
                .collect();
            let sys = if is(&attr.system_tag, role) { " (a system message may only come first)" } else { "" };
            return Err(at.err(format!(
                "message {}: unknown role \"{role}\"{sys}; expected one of {known:?}",
                i + 1 + (parsed.len() - rest.len())
            )));
        };
        // Turns alternate: user/tool at even positions, assistant/function at odd ones.
        let want_user = i % 2 == 0;
        let is_user = matches!(mapped, "user" | "tool");
        if want_user != is_user {
            return Err(at.err(format!(
                "message {}: role \"{role}\" out of order; turns must alternate user (or observation) then \
                 assistant (or function_call)",
                i + 1 + (parsed.len() - rest.len())
            )));
        }
        messages.push(msg(mapped, content.clone()));
    }
    if messages.len() % 2 != 0 {
        return Err(
            at.err(format!("odd number of turns ({}): a conversation must end with an assistant turn", messages.len()))
        );
    }
    Ok(Sample::Chat { system, tools: tools_col(at, obj, &attr.tools)?, messages })
}
