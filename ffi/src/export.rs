//! `lf_export`: merged safetensors (HF directory), merged GGUF, or a llama.cpp GGUF LoRA adapter,
//! from a base model path and a PEFT adapter directory, through `loraforge::export::export`
//! (src/export/run.rs). The PEFT adapter itself comes from `lf_trainer_save_adapter`.
//! Header: ffi/include/loraforge.h ("Export"). Test: ffi/src/tests.rs, ffi/tests/c_example.rs.
//!
//! Contract easy to miss: `export_dir` must not exist or be empty, and nothing that looks like a
//! finished export is left behind on failure (export writes to a temporary sibling first).

use crate::status::*;
use loraforge::export::{export, ExportKind, ExportOptions};
use serde_json::Value;
use std::ffi::{c_char, c_int};
use std::path::PathBuf;

// Export kinds. Values are ABI (checked against the header by ffi/tests/header.rs).
pub const LF_EXPORT_SAFETENSORS: c_int = 0;
pub const LF_EXPORT_GGUF: c_int = 1;
pub const LF_EXPORT_GGUF_ADAPTER: c_int = 2;

fn kind_of(k: c_int) -> FfiResult<ExportKind> {
    match k {
        LF_EXPORT_SAFETENSORS => Ok(ExportKind::Safetensors),
        LF_EXPORT_GGUF => Ok(ExportKind::Gguf),
        LF_EXPORT_GGUF_ADAPTER => Ok(ExportKind::GgufAdapter),
        _ => Err(FfiError::invalid(format!(
            "kind {k}: expected LF_EXPORT_SAFETENSORS (0), LF_EXPORT_GGUF (1) or LF_EXPORT_GGUF_ADAPTER (2)"
        ))),
    }
}

/// `{"dtype": "float16", "quant": "q4_k_m", "template": "chatml", "export_size_gb": 5}`, all optional.
fn parse_options(opts: &mut ExportOptions, text: Option<&str>) -> FfiResult<()> {
    let Some(text) = text else { return Ok(()) };
    let bad = |msg: String| FfiError::new(LF_ERR_CONFIG, format!("options_json: {msg}"));
    let v: Value =
        serde_json::from_str(text).map_err(|e| FfiError::new(LF_ERR_FORMAT, format!("options_json: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
    for (k, v) in obj {
        let s = || v.as_str().map(String::from).ok_or_else(|| bad(format!("{k}: expected a string, got {v}")));
        match k.as_str() {
            "dtype" => opts.dtype = s()?,
            "quant" => opts.quant = Some(s()?),
            "template" => opts.template = Some(s()?),
            "export_size_gb" => {
                opts.export_size_gb = v.as_f64().ok_or_else(|| bad(format!("{k}: expected a number, got {v}")))?
            }
            _ => return Err(bad(format!("unknown key \"{k}\" (expected dtype, quant, template, export_size_gb)"))),
        }
    }
    Ok(())
}

/// Exports `base_model` (+ `adapter_dir`, required for LF_EXPORT_GGUF_ADAPTER) into `export_dir`.
/// `out_report_json` (nullable) receives `{"files": [...], "notes": [...]}`.
///
/// # Safety
/// Strings are NULL or NUL-terminated; `out_report_json` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_export(
    base_model: *const c_char,
    adapter_dir: *const c_char,
    kind: c_int,
    export_dir: *const c_char,
    options_json: *const c_char,
    out_report_json: *mut *mut c_char,
) -> c_int {
    guard("lf_export", || {
        clear_out(out_report_json);
        let base = PathBuf::from(arg_str(base_model, "base_model")?);
        let adapters: Vec<PathBuf> = opt_str(adapter_dir, "adapter_dir")?.map(PathBuf::from).into_iter().collect();
        let mut opts = ExportOptions {
            kind: kind_of(kind)?,
            export_dir: PathBuf::from(arg_str(export_dir, "export_dir")?),
            ..Default::default()
        };
        if opts.export_dir.as_os_str().is_empty() {
            return Err(FfiError::invalid("export_dir is empty"));
        }
        parse_options(&mut opts, opt_str(options_json, "options_json")?)?;
        if opts.kind == ExportKind::GgufAdapter && opts.dtype == "bfloat16" {
            // llama.cpp LoRA adapters are usually F16; bfloat16 (the merged-model default) would
            // be written as F16 anyway (src/export/run.rs), say so by choosing it.
            opts.dtype = "float16".into();
        }
        if !base.exists() {
            return Err(FfiError::new(LF_ERR_IO, format!("{}: no such file or directory", base.display())));
        }
        let report = export(&base, &adapters, &opts).map_err(lib_err(LF_ERR_CONFIG))?;
        let files: Vec<String> = report.files.iter().map(|p| opts.export_dir.join(p).display().to_string()).collect();
        let v = serde_json::json!({ "files": files, "notes": report.notes });
        write_out_string(out_report_json, &v.to_string());
        Ok(())
    })
}
