//! The dataset registry: `<dataset_dir>/dataset_info.json`, in LLaMA-Factory's format, so a user's
//! existing `data/` folder works unchanged.
//! Spec: LLaMA-Factory data/README.md and src/llamafactory/data/parser.py.   Test: tests/data.rs
//!
//! ```json
//! "my_set": {
//!   "file_name": "my_set.json",            // file or directory, relative to dataset_dir
//!   "formatting": "alpaca",                // or "sharegpt" (OpenAI `messages` = sharegpt + tags)
//!   "ranking": false,                      // true = preference data (rm/dpo), not supported yet
//!   "columns": { "prompt": "instruction", "query": "input", "response": "output",
//!                "history": "history", "system": "system", "tools": "tools", "messages": "conversations" },
//!   "tags": { "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
//!             "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system" }
//! }
//! ```
//!
//! Contract easy to miss (as in LLaMA-Factory): when an entry has a `columns` object, every column it
//! does not name is UNSET (not defaulted); likewise for `tags`. So `"columns": {"prompt": "text"}`
//! leaves no response column, which is what a pretraining entry wants.

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file every dataset directory holds (LLaMA-Factory's `DATA_CONFIG`).
pub const DATASET_INFO: &str = "dataset_info.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formatting {
    Alpaca,
    Sharegpt,
}

/// One entry of dataset_info.json, with LLaMA-Factory's defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetAttr {
    /// The name it is registered under.
    pub name: String,
    /// The local file or directory, already joined to dataset_dir.
    pub path: PathBuf,
    pub formatting: Formatting,
    pub ranking: bool,
    // common columns
    pub system: Option<String>,
    pub tools: Option<String>,
    // alpaca columns
    pub prompt: Option<String>,
    pub query: Option<String>,
    pub response: Option<String>,
    pub history: Option<String>,
    // sharegpt column
    pub messages: Option<String>,
    // sharegpt tags
    pub role_tag: Option<String>,
    pub content_tag: Option<String>,
    pub user_tag: Option<String>,
    pub assistant_tag: Option<String>,
    pub observation_tag: Option<String>,
    pub function_tag: Option<String>,
    pub system_tag: Option<String>,
}

impl DatasetAttr {
    /// An entry for a local file with every default (alpaca columns, sharegpt `from`/`value` tags).
    pub fn new(name: &str, path: impl Into<PathBuf>, formatting: Formatting) -> Self {
        let s = |x: &str| Some(x.to_string());
        DatasetAttr {
            name: name.to_string(),
            path: path.into(),
            formatting,
            ranking: false,
            system: None,
            tools: None,
            prompt: s("instruction"),
            query: s("input"),
            response: s("output"),
            history: None,
            messages: s("conversations"),
            role_tag: s("from"),
            content_tag: s("value"),
            user_tag: s("human"),
            assistant_tag: s("gpt"),
            observation_tag: s("observation"),
            function_tag: s("function_call"),
            system_tag: s("system"),
        }
    }
}

impl DatasetAttr {
    /// OpenAI-style `messages` with role/content keys, as LLaMA-Factory's README registers them.
    pub fn openai(name: &str, path: impl Into<PathBuf>) -> Self {
        let s = |x: &str| Some(x.to_string());
        DatasetAttr {
            messages: s("messages"),
            tools: s("tools"),
            role_tag: s("role"),
            content_tag: s("content"),
            user_tag: s("user"),
            assistant_tag: s("assistant"),
            observation_tag: s("tool"),
            function_tag: s("function_call"),
            system_tag: s("system"),
            ..DatasetAttr::new(name, path, Formatting::Sharegpt)
        }
    }
}

/// The parsed dataset_info.json of one dataset directory.
#[derive(Clone, Debug)]
pub struct DatasetInfo {
    pub dir: PathBuf,
    /// Raw entries by name (kept raw so an entry is only validated when it is used).
    entries: BTreeMap<String, Value>,
}

impl DatasetInfo {
    /// Reads `<dir>/dataset_info.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(DATASET_INFO);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(&dir, &text).map_err(|e| match e {
            Error::Msg(m) => Error::Format { path: path.display().to_string(), msg: m },
            e => e,
        })
    }

    /// Parses the JSON text of a dataset_info.json whose files live in `dir`.
    pub fn parse(dir: &Path, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::msg(format!("not valid JSON: {e}")))?;
        let Value::Object(map) = v else {
            return Err(Error::msg("the top level must be an object of dataset entries"));
        };
        Ok(DatasetInfo { dir: dir.to_path_buf(), entries: map.into_iter().collect() })
    }

    /// Is `name` registered?
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(|s| s.as_str()).collect()
    }

    /// Resolves one dataset name to its attributes.
    pub fn get(&self, name: &str) -> Result<DatasetAttr> {
        let Some(entry) = self.entries.get(name) else {
            let names = self.names();
            let near = nearest(name, &names).map(|n| format!(" Did you mean '{n}'?")).unwrap_or_default();
            return Err(Error::msg(format!(
                "unknown dataset '{name}' in {}.{near} Known datasets: {}",
                self.dir.join(DATASET_INFO).display(),
                names.join(", ")
            )));
        };
        let err = |m: String| Error::msg(format!("dataset '{name}' in {}: {m}", self.dir.join(DATASET_INFO).display()));
        let Value::Object(e) = entry else {
            return Err(err("the entry must be an object".into()));
        };
        let ranking = match e.get("ranking") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(err(format!("\"ranking\" must be true or false, got {v}"))),
        };
        if ranking {
            return Err(err("ranking datasets need stage rm/dpo, not supported yet".into()));
        }
        let formatting = match e.get("formatting").and_then(|v| v.as_str()) {
            None => Formatting::Alpaca,
            Some("alpaca") => Formatting::Alpaca,
            Some("sharegpt") => Formatting::Sharegpt,
            Some(f) => return Err(err(format!("unknown formatting \"{f}\" (expected \"alpaca\" or \"sharegpt\")"))),
        };
        let file_name = match e.get("file_name") {
            Some(Value::String(f)) => f.clone(),
            Some(v) => return Err(err(format!("\"file_name\" must be a string, got {v}"))),
            None => {
                let hub: Vec<String> = ["hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"]
                    .iter()
                    .filter_map(|k| e.get(*k).and_then(|v| v.as_str()).map(|v| format!("{k} = {v}")))
                    .collect();
                if hub.is_empty() {
                    return Err(err("the entry has no \"file_name\"".into()));
                }
                let place = if e.contains_key("hf_hub_url") { "the Hugging Face hub" } else { "a remote hub" };
                return Err(Error::msg(format!(
                    "`{name}` is only on {place} ({}); not available offline: download it and set file_name \
                     in {}",
                    hub.join(", "),
                    self.dir.join(DATASET_INFO).display()
                )));
            }
        };
        let mut a = DatasetAttr::new(name, self.dir.join(&file_name), formatting);
        a.ranking = ranking;
        if let Some(cols) = e.get("columns") {
            let Value::Object(cols) = cols else { return Err(err("\"columns\" must be an object".into())) };
            let get = |k: &str| -> Result<Option<String>> {
                match cols.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(v) => Err(err(format!("columns.{k} must be a string, got {v}"))),
                }
            };
            // Unnamed columns become unset, as in LLaMA-Factory's parser.
            a.system = get("system")?;
            a.tools = get("tools")?;
            match formatting {
                Formatting::Alpaca => {
                    a.prompt = get("prompt")?;
                    a.query = get("query")?;
                    a.response = get("response")?;
                    a.history = get("history")?;
                }
                Formatting::Sharegpt => a.messages = get("messages")?,
            }
        }
        if formatting == Formatting::Sharegpt {
            if let Some(tags) = e.get("tags") {
                let Value::Object(tags) = tags else { return Err(err("\"tags\" must be an object".into())) };
                let get = |k: &str| -> Result<Option<String>> {
                    match tags.get(k) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(v) => Err(err(format!("tags.{k} must be a string, got {v}"))),
                    }
                };
                a.role_tag = get("role_tag")?;
                a.content_tag = get("content_tag")?;
                a.user_tag = get("user_tag")?;
                a.assistant_tag = get("assistant_tag")?;
                a.observation_tag = get("observation_tag")?;
                a.function_tag = get("function_tag")?;
                a.system_tag = get("system_tag")?;
            }
        }
        Ok(a)
    }
}

/// Resolves one entry of `dataset:`: a name registered in `<dir>/dataset_info.json`, else a path
/// (as given, or relative to `dir`) to a .json/.jsonl file or a directory of them, whose format is
/// guessed from its first row (`conversations` → sharegpt, `messages` → OpenAI, else alpaca/text).
pub fn resolve(dir: &Path, name: &str) -> Result<DatasetAttr> {
    let info = if dir.join(DATASET_INFO).is_file() { Some(DatasetInfo::load(dir)?) } else { None };
    if let Some(info) = &info {
        if info.contains(name) {
            return info.get(name);
        }
    }
    for p in [PathBuf::from(name), dir.join(name)] {
        if p.exists() {
            return attr_for_path(name, &p);
        }
    }
    match info {
        Some(info) => info.get(name), // the "unknown dataset, did you mean" error
        None => Err(Error::msg(format!(
            "dataset '{name}' is neither a file nor registered: {} does not exist",
            dir.join(DATASET_INFO).display()
        ))),
    }
}

/// A bare data file or directory: the attributes its first row suggests.
pub fn attr_for_path(name: &str, path: &Path) -> Result<DatasetAttr> {
    let files = super::formats::data_files(path)?;
    let first = match files.first() {
        Some(f) => super::formats::first_row(f)?,
        None => None,
    };
    let has = |k: &str| first.as_ref().is_some_and(|v| v.get(k).is_some());
    if has("conversations") {
        return Ok(DatasetAttr::new(name, path, Formatting::Sharegpt));
    }
    if has("messages") {
        return Ok(DatasetAttr::openai(name, path));
    }
    let mut a = DatasetAttr::new(name, path, Formatting::Alpaca);
    if has("system") {
        a.system = Some("system".into());
    }
    if has("history") {
        a.history = Some("history".into());
    }
    Ok(a)
}

pub use crate::error::nearest;
