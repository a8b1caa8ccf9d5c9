//! `export`: the one entry point behind `loraforge export CONFIG.yaml`. Loads a base (GGUF file or
//! HF directory), reads PEFT adapter directories, and writes one of
//! - `Safetensors`: the merged model as a Hugging Face directory (hf_dir.rs);
//! - `Gguf`: the merged model as one GGUF file (+ an Ollama Modelfile) (gguf_out.rs, modelfile.rs);
//! - `GgufAdapter`: each adapter as a llama.cpp GGUF LoRA (no merge).
//!
//! Test: tests/export.rs.
//!
//! Contract easy to miss: everything is written into a temporary directory beside `export_dir`
//! and renamed onto it only when complete, so a failure (bad adapter, full disk, a tokenizer that
//! cannot be converted) leaves no directory that looks like a finished export. `export_dir` must
//! not exist or be empty.

use super::gguf_out::{self, GgufQuant};
use super::hf_dir::{self, SpecialIds};
use super::merge::{check_target_dir, for_each_tensor, read_adapters, LoadedAdapter};
use super::modelfile;
use super::tokenizer_json;
use crate::backend::CpuBackend;
use crate::error::{Error, Result};
use crate::io::gguf::{GgufFile, GgufWriter};
use crate::model::{load_model, AdapterSpec, ModelConfig};
use crate::quant::ggml::GgmlType;
use crate::tokenizer::template::ChatTemplate;
use std::path::{Path, PathBuf};

/// What to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportKind {
    /// Merged model, Hugging Face directory (safetensors + config + tokenizer files).
    Safetensors,
    /// Merged model, one GGUF file + Ollama Modelfile.
    Gguf,
    /// The adapter(s) as llama.cpp GGUF LoRA files, not merged.
    GgufAdapter,
}

impl ExportKind {
    /// "safetensors" | "hf" | "gguf" | "gguf_adapter" | "gguf-adapter" | "lora_gguf".
    pub fn parse(s: &str) -> Result<ExportKind> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "safetensors" | "hf" | "huggingface" => Ok(ExportKind::Safetensors),
            "gguf" => Ok(ExportKind::Gguf),
            "gguf_adapter" | "lora_gguf" | "gguf_lora" => Ok(ExportKind::GgufAdapter),
            _ => Err(Error::InvalidArgument {
                op: "export",
                msg: format!("unknown export type {s:?}; expected safetensors, gguf or gguf_adapter"),
            }),
        }
    }
}

/// Export settings (LLaMA-Factory's `export_*` arguments).
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub kind: ExportKind,
    /// Directory to create (must not exist, or be empty).
    pub export_dir: PathBuf,
    /// Largest safetensors shard, in GB (10^9 bytes). Default 5, as transformers.
    pub export_size_gb: f64,
    /// "bfloat16" (default) | "float16" | "float32": safetensors weights, GGUF matrices when `quant`
    /// is None, GGUF adapter tensors.
    pub dtype: String,
    /// GGUF quantization: q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | q4_k | q5_k | q6_k | q4_k_m (None: `dtype`).
    pub quant: Option<String>,
    /// LLaMA-Factory's `export_legacy_format` (.bin files): not supported, safetensors are written
    /// and a note says so.
    pub legacy_format: bool,
    /// Chat template: a built-in name (`ChatTemplate::builtin`) or Jinja source; None: the base's.
    pub template: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            kind: ExportKind::Safetensors,
            export_dir: PathBuf::from("export"),
            export_size_gb: 5.0,
            dtype: "bfloat16".into(),
            quant: None,
            legacy_format: false,
            template: None,
        }
    }
}

/// What `export` wrote (final paths) and anything the user should know (fallback types, ...).
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    pub files: Vec<PathBuf>,
    pub notes: Vec<String>,
}

/// The base model's non-weight facts.
enum Base {
    Gguf(GgufFile),
    Hf(PathBuf),
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument { op: "export", msg }
}

/// Load base (GGUF file or HF dir) + optional PEFT adapter dir(s), merge, write.
pub fn export(model_path: &Path, adapters: &[PathBuf], opts: &ExportOptions) -> Result<ExportReport> {
    // ---- validate everything cheap before loading anything
    let (st_dtype, torch_dtype) = hf_dir::parse_dtype(&opts.dtype)?;
    let quant = match (&opts.quant, opts.kind) {
        (Some(q), ExportKind::Gguf) => GgufQuant::parse(q)?,
        (Some(q), _) => {
            return Err(invalid(format!(
                "quant {q:?} applies to GGUF model exports only (export type {:?})",
                opts.kind
            )))
        }
        (None, _) => GgufQuant::parse(torch_dtype)?,
    };
    if opts.export_size_gb.is_nan() || opts.export_size_gb <= 0.0 {
        return Err(invalid(format!("export_size_gb must be > 0, got {}", opts.export_size_gb)));
    }
    if opts.kind == ExportKind::GgufAdapter && adapters.is_empty() {
        return Err(invalid("export type gguf_adapter needs at least one adapter directory".into()));
    }
    check_target_dir(&opts.export_dir)?;

    // ---- base and adapters
    let is_gguf = model_path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let base = if is_gguf && model_path.is_file() {
        Base::Gguf(GgufFile::open(model_path)?)
    } else if model_path.is_dir() {
        Base::Hf(model_path.to_path_buf())
    } else {
        return Err(Error::Format {
            path: model_path.display().to_string(),
            msg: "expected a .gguf file or a Hugging Face model directory".into(),
        });
    };
    let cfg = match &base {
        Base::Gguf(g) => ModelConfig::from_gguf(g)?,
        Base::Hf(d) => ModelConfig::from_hf_file(d.join("config.json"))?,
    };
    let adapters = read_adapters(adapters, &cfg)?;
    let template = chat_template(&base, opts.template.as_deref())?;
    let name = match &base {
        Base::Gguf(g) => g.get("general.name").and_then(|v| v.as_str()).map(String::from),
        Base::Hf(_) => None,
    }
    .unwrap_or_else(|| model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());

    // ---- write into a temporary sibling, then rename
    let target = &opts.export_dir;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let leaf = target.file_name().ok_or_else(|| invalid(format!("export_dir {} has no name", target.display())))?;
    let tmp = parent.join(format!(".{}.partial-{}", leaf.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut report = ExportReport::default();
    if opts.legacy_format {
        report.notes.push("legacy_format (.bin) is not supported: wrote safetensors".into());
    }
    let res = (|| -> Result<()> {
        match opts.kind {
            ExportKind::Safetensors => write_hf(
                &tmp,
                model_path,
                &base,
                &cfg,
                &adapters,
                st_dtype,
                torch_dtype,
                opts,
                template.as_ref(),
                &mut report,
            ),
            ExportKind::Gguf => {
                write_gguf(&tmp, model_path, &base, &cfg, &adapters, quant, &name, template.as_ref(), &mut report)
            }
            ExportKind::GgufAdapter => {
                let ty = match quant {
                    GgufQuant::Uniform(t @ (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)) => t,
                    _ => GgmlType::F16,
                };
                for (i, a) in adapters.iter().enumerate() {
                    let file =
                        if adapters.len() == 1 { "adapter.gguf".to_string() } else { format!("adapter-{i}.gguf") };
                    let w = gguf_out::adapter_writer(&cfg, a, ty, &name)?;
                    w.write(tmp.join(&file))?;
                    report.files.push(PathBuf::from(file));
                }
                Ok(())
            }
        }
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if target.exists() {
        std::fs::remove_dir(target).map_err(|e| Error::io(target, e))?; // checked empty above
    }
    if let Err(e) = std::fs::rename(&tmp, target) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::io(target, e));
    }
    report.files = report.files.iter().map(|f| target.join(f)).collect();
    Ok(report)
}

/// The chat template: `over` (a built-in name or Jinja source), else the base's own.
fn chat_template(base: &Base, over: Option<&str>) -> Result<Option<ChatTemplate>> {
    if let Some(t) = over {
        if crate::tokenizer::template::builtin_names().contains(&t) {
            return ChatTemplate::builtin(t).map(Some);
        }
        if !t.contains("{%") && !t.contains("{{") {
            // A name we do not know, not Jinja: let `builtin` produce its "did you mean" error.
            return ChatTemplate::builtin(t).map(Some);
        }
        return ChatTemplate::new(t, "", "").map(Some);
    }
    match base {
        Base::Gguf(g) => ChatTemplate::from_gguf(g),
        Base::Hf(d) => ChatTemplate::from_hf_dir(d),
    }
}

/// Special ids from GGUF metadata (without building a tokenizer, so a tokenizer that cannot be
/// converted fails where it is converted).
fn gguf_special_ids(g: &GgufFile) -> SpecialIds {
    let id = |k: &str| g.get(k).and_then(|v| v.as_int()).and_then(|i| u32::try_from(i).ok());
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap_or(&[]);
    let types = g.get_i32_array("tokenizer.ggml.token_type").unwrap_or(&[]);
    let eot = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>"]
        .iter()
        .filter_map(|n| tokens.iter().position(|t| t == n))
        .filter(|&i| types.get(i).is_some_and(|&t| t == 3 || t == 4))
        .map(|i| i as u32)
        .collect();
    SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        pad: id("tokenizer.ggml.padding_token_id"),
        eot,
    }
}

fn hf_special_ids(dir: &Path) -> Result<SpecialIds> {
    let p = dir.join("tokenizer.json");
    if !p.is_file() {
        return Ok(SpecialIds::default());
    }
    let t = crate::tokenizer::Tokenizer::from_file(&p)?;
    Ok(SpecialIds { bos: t.bos_id(), eos: t.eos_id(), pad: t.pad_id(), eot: t.eot_ids().to_vec() })
}

fn load_cpu(model_path: &Path) -> Result<crate::model::Transformer<CpuBackend>> {
    Ok(load_model(&CpuBackend::new(), model_path, &AdapterSpec::default())?.0)
}

#[allow(clippy::too_many_arguments)]
fn write_hf(
    dir: &Path,
    model_path: &Path,
    base: &Base,
    cfg: &ModelConfig,
    adapters: &[LoadedAdapter],
    dtype: safetensors::Dtype,
    torch_dtype: &str,
    opts: &ExportOptions,
    template: Option<&ChatTemplate>,
    report: &mut ExportReport,
) -> Result<()> {
    let model = load_cpu(model_path)?;
    let mut tensors = Vec::new();
    for_each_tensor(&model, cfg, adapters, |t| {
        let bytes = hf_dir::encode(&t.data, dtype);
        tensors.push((super::merge::ExportTensor { data: Vec::new(), ..t }, bytes));
        Ok(())
    })?;
    drop(model);
    let shard = (opts.export_size_gb * 1e9) as u64;
    for f in hf_dir::write_weights(dir, &cfg.arch, tensors, dtype, shard)? {
        report.files.push(PathBuf::from(f.file_name().expect("file")));
    }
    // The HF config describes the HF layout: Gemma norms are (1 + w), RoPE rotate-half.
    let mut hf_cfg = cfg.clone();
    hf_cfg.norm_add_one = cfg.arch.starts_with("gemma");
    let ids = match base {
        Base::Gguf(g) => gguf_special_ids(g),
        Base::Hf(d) => hf_special_ids(d)?,
    };
    let put = |report: &mut ExportReport, name: &str, v: &serde_json::Value| -> Result<()> {
        hf_dir::write_json(&dir.join(name), v)?;
        report.files.push(PathBuf::from(name));
        Ok(())
    };
    put(report, "config.json", &hf_dir::config_json(&hf_cfg, &ids, torch_dtype))?;
    put(report, "generation_config.json", &hf_dir::generation_config_json(&ids))?;
    match base {
        Base::Gguf(g) => {
            let (tj, notes) = tokenizer_json::tokenizer_json_from_gguf(g)?;
            report.notes.extend(notes);
            let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
            let types = match g.get("tokenizer.ggml.token_type") {
                Some(_) => g.get_i32_array("tokenizer.ggml.token_type")?.to_vec(),
                None => vec![1; tokens.len()],
            };
            let is_llama = g.get_str("tokenizer.ggml.model")? == "llama";
            let flag = |k: &str, d: bool| g.get(k).and_then(|v| v.as_bool()).unwrap_or(d);
            let unk = g.get("tokenizer.ggml.unknown_token_id").and_then(|v| v.as_int()).map(|i| i as u32);
            let tc = hf_dir::tokenizer_config_json(
                tokens,
                &types,
                &ids,
                unk,
                flag("tokenizer.ggml.add_bos_token", is_llama),
                flag("tokenizer.ggml.add_eos_token", false),
                template.map(|t| t.source()),
                cfg.max_position_embeddings,
            );
            put(report, "tokenizer.json", &tj)?;
            put(report, "tokenizer_config.json", &tc)?;
        }
        Base::Hf(src) => {
            for f in ["tokenizer.json", "special_tokens_map.json", "tokenizer.model"] {
                if src.join(f).is_file() {
                    std::fs::copy(src.join(f), dir.join(f)).map_err(|e| Error::io(src.join(f), e))?;
                    report.files.push(PathBuf::from(f));
                }
            }
            let p = src.join("tokenizer_config.json");
            if p.is_file() {
                let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
                let mut v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::Format { path: p.display().to_string(), msg: e.to_string() })?;
                if let (Some(t), Some(o)) = (template, v.as_object_mut()) {
                    o.insert("chat_template".into(), t.source().into());
                }
                put(report, "tokenizer_config.json", &v)?;
            } else {
                report.notes.push(format!("{} has no tokenizer_config.json; none written", src.display()));
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_gguf(
    dir: &Path,
    model_path: &Path,
    base: &Base,
    cfg: &ModelConfig,
    adapters: &[LoadedAdapter],
    quant: GgufQuant,
    name: &str,
    template: Option<&ChatTemplate>,
    report: &mut ExportReport,
) -> Result<()> {
    let mut w = GgufWriter::new();
    for (k, v) in gguf_out::model_kv(cfg, name, quant)? {
        w.add(k, v)?;
    }
    // Tokenizer first, so a tokenizer we cannot convert fails before the long part.
    let stops: Vec<String> = match base {
        Base::Gguf(g) => {
            for (k, v) in tokenizer_json::gguf_tokenizer_kv(g) {
                w.add(k, v)?;
            }
            let ids = gguf_special_ids(g);
            let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
            ids.eot.iter().filter_map(|&i| tokens.get(i as usize).cloned()).collect()
        }
        Base::Hf(d) => {
            let p = d.join("tokenizer.json");
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let tj: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Format { path: p.display().to_string(), msg: e.to_string() })?;
            let tc: Option<serde_json::Value> = std::fs::read_to_string(d.join("tokenizer_config.json"))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok());
            let (kv, notes) = tokenizer_json::gguf_tokenizer_from_json(&tj, tc.as_ref(), &p.display().to_string())?;
            report.notes.extend(notes);
            for (k, v) in kv {
                w.add(k, v)?;
            }
            let t = crate::tokenizer::Tokenizer::from_file(&p)?;
            t.eot_ids().iter().filter_map(|&i| t.token_to_str(i).map(String::from)).collect()
        }
    };
    if let Some(t) = template {
        w.add("tokenizer.chat_template", t.source())?;
    }
    if let Some(f) = gguf_out::rope_freqs(cfg) {
        let bytes: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor("rope_freqs.weight", &[f.len()], GgmlType::F32, bytes)?;
    }
    let model = load_cpu(model_path)?;
    let mut notes = Vec::new();
    for_each_tensor(&model, cfg, adapters, |t| {
        let (_, note) = gguf_out::add_tensor(&mut w, cfg, quant, t)?;
        notes.extend(note);
        Ok(())
    })?;
    drop(model);
    if !notes.is_empty() {
        report.notes.push(format!(
            "{} tensor(s) used llama.cpp's fallback type (row length not a multiple of the block size), e.g. {}",
            notes.len(),
            notes[0]
        ));
    }
    let file = format!("model-{}.gguf", quant.tag());
    w.write(dir.join(&file))?;
    report.files.push(PathBuf::from(&file));
    let mf = modelfile::modelfile(&file, template, &stops);
    std::fs::write(dir.join("Modelfile"), mf).map_err(|e| Error::io(dir.join("Modelfile"), e))?;
    report.files.push(PathBuf::from("Modelfile"));
    Ok(())
}
