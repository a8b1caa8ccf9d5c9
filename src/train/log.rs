//! The text files a training run writes, in the formats LLaMA-Factory and HF Trainer tools read:
//!   trainer_log.jsonl   one line per log event (LLaMA-Factory `LogCallback.on_log`, train/callbacks.py)
//!   trainer_state.json  HF `TrainerState.save_to_json` (json.dumps(asdict(state), indent=2, sort_keys=True))
//!   {split}_results.json, all_results.json   HF `Trainer.save_metrics(split, metrics, combined=True)` (indent=4, sort_keys)
//! Spec: this file   Test: tests/runout.rs (trainer_log_*, trainer_state_*, save_metrics_*, write_json_atomic_*)
//!
//! Byte compatibility: JSON is written the way Python's `json.dumps` writes it (", " and ": " separators on one
//! line, float repr as Python's `repr(float)`: 9.8e-05, 1e-05, 0.0001, 2.0; non-ASCII escaped as \uXXXX), so a
//! line of ours and a line of LLaMA-Factory's for the same numbers are identical.
//! Contract easy to miss: JSON has no NaN/Infinity; a non-finite number is written as `null` (Python would write
//! the invalid token NaN). LogRecord fields that are None are omitted, as LLaMA-Factory drops None values.

use crate::error::{Error, Result};
use crate::train::checkpoint::write_bytes_atomic;
use serde_json::{Map, Value};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// LLaMA-Factory's `TRAINER_LOG`.
pub const TRAINER_LOG: &str = "trainer_log.jsonl";
/// HF's `TRAINER_STATE_NAME`.
pub const TRAINER_STATE_NAME: &str = "trainer_state.json";

/// One line of trainer_log.jsonl. Field names and order are LLaMA-Factory's (`LogCallback.on_log`);
/// `grad_norm` is ours (HF logs it in log_history, LLaMA-Factory does not copy it here).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    pub current_steps: usize,
    pub total_steps: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predict_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
    /// LLaMA-Factory copies `rewards/accuracies` here (DPO); None for SFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Learning rate of this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    /// round(current / total * 100, 2); 100 when total is 0.
    pub percentage: f64,
    /// "H:MM:SS" (`format_hms`).
    pub elapsed_time: String,
    pub remaining_time: String,
    /// Input tokens per second since the start, rounded to 2 decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f64>,
    /// Input tokens seen since the start (HF `num_input_tokens_seen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
}

impl LogRecord {
    /// A record with the progress fields filled as LLaMA-Factory's `LogCallback._timing` does:
    /// remaining = (total - current) * elapsed / current; percentage = round(current / total * 100, 2).
    pub fn with_timing(current_steps: usize, total_steps: usize, elapsed_secs: f64) -> Self {
        let avg = if current_steps != 0 { elapsed_secs / current_steps as f64 } else { 0.0 };
        let remaining = total_steps.saturating_sub(current_steps) as f64 * avg;
        let percentage =
            if total_steps != 0 { round_to(current_steps as f64 / total_steps as f64 * 100.0, 2) } else { 100.0 };
        LogRecord {
            current_steps,
            total_steps,
            percentage,
            elapsed_time: format_hms(elapsed_secs),
            remaining_time: format_hms(remaining),
            ..Default::default()
        }
    }
    /// The line written to trainer_log.jsonl (no trailing newline).
    pub fn to_json_line(&self) -> String {
        let v = serde_json::to_value(self).expect("LogRecord always serializes");
        python_json(&v, None, false)
    }
}

/// Rounds to `digits` decimals (half away from zero; Python's round() is half-even on the binary value, which
/// differs only on exact ties).
pub fn round_to(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// "H:MM:SS" like Python's `str(timedelta(seconds=int(s)))`: "0:01:05", "12:00:00", "1 day, 2:03:04".
/// Negative or non-finite input gives "0:00:00".
pub fn format_hms(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 { seconds.trunc() as u64 } else { 0 };
    let (days, rem) = (s / 86_400, s % 86_400);
    let hms = format!("{}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60);
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

/// Python's `repr(float)`: shortest round-trip digits; fixed notation when -4 <= exponent < 16, else
/// d.ddde±XX with at least two exponent digits; always a '.' or 'e' so it reads back as a float.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` is the shortest round-trip representation, the same digits Python's repr picks.
    let s = format!("{x:e}");
    let (mant, exp) = s.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

fn python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn python_json_into(v: &Value, indent: Option<usize>, sort_keys: bool, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => out.push_str(&u.to_string()),
            (None, Some(i)) => out.push_str(&i.to_string()),
            _ => match n.as_f64() {
                Some(f) if f.is_finite() => out.push_str(&python_float_repr(f)),
                _ => out.push_str("null"),
            },
        },
        Value::String(s) => python_string(s, out),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                python_json_into(x, indent, sort_keys, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut keys: Vec<&String> = m.keys().collect();
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                python_string(k, out);
                out.push_str(": ");
                python_json_into(&m[k], indent, sort_keys, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

/// `json.dumps(v, indent=indent, sort_keys=sort_keys)` as Python writes it (see the file header).
pub fn python_json(v: &Value, indent: Option<usize>, sort_keys: bool) -> String {
    let mut out = String::new();
    python_json_into(v, indent, sort_keys, 0, &mut out);
    out
}

/// Writes `v` as indented JSON (2 spaces, keys in the map's order, trailing newline) atomically:
/// tmp file + fsync + rename + fsync of the directory.
pub fn write_json_atomic(path: &Path, v: &Value) -> Result<()> {
    write_bytes_atomic(path, (python_json(v, Some(2), false) + "\n").as_bytes())
}

/// Appends LogRecords to `output_dir/trainer_log.jsonl`, one JSON line each, flushed after every line.
pub struct TrainerLog {
    path: PathBuf,
    file: std::fs::File,
}

impl TrainerLog {
    /// resume = false truncates the file; true appends (and first cuts a torn last line left by a crash).
    pub fn open(output_dir: &Path, resume: bool) -> Result<Self> {
        std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
        let path = output_dir.join(TRAINER_LOG);
        let io = |e| Error::io(&path, e);
        let file = if resume {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            let mut text = Vec::new();
            f.read_to_end(&mut text).map_err(io)?;
            let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if keep != text.len() {
                f.set_len(keep as u64).map_err(io)?;
            }
            f.seek(std::io::SeekFrom::End(0)).map_err(io)?;
            f
        } else {
            std::fs::File::create(&path).map_err(io)?
        };
        Ok(TrainerLog { path, file })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// One JSON line, flushed to the OS (not fsynced: a log line is not worth a disk flush per step).
    pub fn append(&mut self, r: &LogRecord) -> Result<()> {
        let line = r.to_json_line() + "\n";
        self.file.write_all(line.as_bytes()).and_then(|()| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }
    /// On resume from checkpoint-`step`: drops the lines with current_steps > step (logged after that checkpoint,
    /// they will be logged again) and any line that does not parse (a torn write). Rewrites atomically.
    /// A missing file is fine.
    pub fn truncate_after(output_dir: &Path, step: usize) -> Result<()> {
        let path = output_dir.join(TRAINER_LOG);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            match v.get("current_steps").and_then(Value::as_u64) {
                Some(s) if s as usize <= step => {
                    out.push_str(line);
                    out.push('\n');
                }
                _ => {}
            }
        }
        write_bytes_atomic(&path, out.as_bytes())
    }
    /// Reads all parseable records (for plotting from trainer_log.jsonl).
    pub fn read(output_dir: &Path) -> Result<Vec<LogRecord>> {
        let path = output_dir.join(TRAINER_LOG);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// HF `transformers.TrainerState` (trainer_callback.py), field for field, so HF's `TrainerState.load_from_json`
/// (which is `cls(**json)`: an unknown key would crash it) reads ours and we read theirs. Fields HF may write as
/// null (epoch, train_batch_size, ...) read as 0 here.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainerState {
    /// Optimizer steps done.
    #[serde(deserialize_with = "null_as_default")]
    pub global_step: usize,
    #[serde(deserialize_with = "null_as_default")]
    pub max_steps: usize,
    #[serde(deserialize_with = "null_as_default")]
    pub num_train_epochs: f64,
    /// Fractional epoch reached (HF: 1.5 = halfway through the second epoch).
    #[serde(deserialize_with = "null_as_default")]
    pub epoch: f64,
    #[serde(deserialize_with = "null_as_default")]
    pub logging_steps: usize,
    #[serde(deserialize_with = "null_as_default")]
    pub eval_steps: usize,
    #[serde(deserialize_with = "null_as_default")]
    pub save_steps: usize,
    /// Per-device micro-batch size.
    #[serde(deserialize_with = "null_as_default")]
    pub train_batch_size: usize,
    #[serde(deserialize_with = "null_as_default")]
    pub num_input_tokens_seen: u64,
    /// HF's entries: {"epoch", "grad_norm", "learning_rate", "loss", "step"} per logging step,
    /// {"eval_loss", ..., "step"} per evaluation, and a final {"train_loss", "train_runtime", ...}.
    #[serde(deserialize_with = "null_as_default")]
    pub log_history: Vec<Value>,
    pub best_metric: Option<f64>,
    pub best_global_step: Option<usize>,
    pub best_model_checkpoint: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub total_flos: f64,
    #[serde(deserialize_with = "null_as_default")]
    pub is_local_process_zero: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub is_world_process_zero: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub is_hyper_param_search: bool,
    pub trial_name: Option<String>,
    pub trial_params: Option<Value>,
    /// HF stores callback states here ({"TrainerControl": {...}}); null is accepted by HF.
    pub stateful_callbacks: Option<Value>,
}

impl Default for TrainerState {
    fn default() -> Self {
        TrainerState {
            global_step: 0,
            max_steps: 0,
            num_train_epochs: 0.0,
            epoch: 0.0,
            logging_steps: 0,
            eval_steps: 0,
            save_steps: 0,
            train_batch_size: 0,
            num_input_tokens_seen: 0,
            log_history: Vec::new(),
            best_metric: None,
            best_global_step: None,
            best_model_checkpoint: None,
            total_flos: 0.0,
            is_local_process_zero: true,
            is_world_process_zero: true,
            is_hyper_param_search: false,
            trial_name: None,
            trial_params: None,
            stateful_callbacks: None,
        }
    }
}

impl TrainerState {
    /// Writes like HF's `save_to_json` (indent 2, keys sorted at every level, trailing newline), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let v = serde_json::to_value(self)?;
        write_bytes_atomic(path, (python_json(&v, Some(2), true) + "\n").as_bytes())
    }
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.display().to_string(),
            msg: format!("not a trainer_state.json: {e}"),
        })
    }
}

/// As HF `Trainer.save_metrics(split, metrics, combined=True)`: writes `{split}_results.json` and merges the
/// metrics into `all_results.json` (existing keys updated, others kept); both indent 4, keys sorted, atomic.
/// `split` is "train", "eval" or "predict" (any plain name is accepted). A corrupt all_results.json is an error,
/// not silently replaced.
pub fn save_metrics(output_dir: &Path, split: &str, metrics: &Map<String, Value>) -> Result<()> {
    if split.is_empty() || split.contains(['/', '\\']) || split.starts_with('.') {
        return Err(Error::InvalidArgument { op: "save_metrics", msg: format!("bad split name {split:?}") });
    }
    let dump = |v: &Value| python_json(v, Some(4), true);
    write_bytes_atomic(
        &output_dir.join(format!("{split}_results.json")),
        dump(&Value::Object(metrics.clone())).as_bytes(),
    )?;
    let all_path = output_dir.join("all_results.json");
    let mut all = match std::fs::read_to_string(&all_path) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Error::Format {
                    path: all_path.display().to_string(),
                    msg: "not a JSON object; not overwriting it".into(),
                })
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(Error::io(&all_path, e)),
    };
    for (k, v) in metrics {
        all.insert(k.clone(), v.clone());
    }
    write_bytes_atomic(&all_path, dump(&Value::Object(all)).as_bytes())
}
