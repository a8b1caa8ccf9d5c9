//! `lf_model`: a model (GGUF file or Hugging Face directory) with its tokenizer, chat template
//! and an optional PEFT adapter applied, and `lf_chat`, which streams a reply through a callback.
//! The loading logic is `loraforge chat`'s (src/cli/session.rs `load`). Models run on the CPU
//! (`lf_model_new`) or on the device the caller names (`lf_model_new_on`: cpu, wgpu, auto).
//! Header: ffi/include/loraforge.h ("Models and chat"). Test: ffi/src/tests.rs, ffi/tests/c_example.rs.
//!
//! Contract easy to miss: the token callback sees text pieces as soon as they are complete UTF-8
//! (a multi-byte char split over tokens waits for its last token), and the stop token (EOS /
//! end-of-turn) is never handed to it. Returning nonzero from it stops generation; that is a
//! normal end (LF_OK), with `out_text` holding what was generated so far.

use crate::handle::{self, Handle, Kind};
use crate::status::*;
use loraforge::backend::wgpu::WgpuBackend;
use loraforge::backend::{CpuBackend, DeviceKind};
use loraforge::cli::session::Loaded;
use loraforge::generate::{generate, GenerateConfig};
use loraforge::model::{ModelConfig, Transformer};
use loraforge::tokenizer::template::{ChatTemplate, Message, RenderOptions};
use loraforge::tokenizer::Tokenizer;
use serde_json::Value;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// The opaque `lf_model`.
pub struct LfModel {
    magic: u64,
    busy: AtomicBool,
    model: Net,
    cfg: ModelConfig,
    tok: Tokenizer,
    template: Option<ChatTemplate>,
    path: String,
    adapter: Option<String>,
}

impl Handle for LfModel {
    const KIND: Kind = Kind::Model;
    const MAGIC: u64 = 0x4c46_4d4f_4445_4c21; // "LFMODEL!"
    fn magic(&self) -> u64 {
        self.magic
    }
    fn busy(&self) -> &AtomicBool {
        &self.busy
    }
}

/// The network on the backend the caller chose.
enum Net {
    Cpu(Transformer<CpuBackend>),
    Wgpu(Transformer<WgpuBackend>),
}

impl Net {
    fn generate(
        &self,
        ids: &[u32],
        gen: &GenerateConfig,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> loraforge::Result<Vec<u32>> {
        match self {
            Net::Cpu(m) => generate(m, ids, gen, on_token),
            Net::Wgpu(m) => generate(m, ids, gen, on_token),
        }
    }

    /// "cpu", or "wgpu (adapter name)".
    fn device(&self) -> String {
        match self {
            Net::Cpu(_) => "cpu".into(),
            Net::Wgpu(m) => format!("wgpu ({})", m.norm.backend().adapter_name()),
        }
    }
}

/// `int (*lf_token_cb)(const char *piece, void *user)`: nonzero stops generation.
pub type LfTokenCb = Option<unsafe extern "C" fn(piece: *const c_char, user: *mut c_void) -> c_int>;

fn load(path: &Path, adapter: Option<&Path>, template: Option<&str>, device: DeviceKind) -> FfiResult<LfModel> {
    if !path.exists() {
        return Err(FfiError::new(LF_ERR_IO, format!("{}: no such file or directory", path.display())));
    }
    // `loraforge chat`'s loader: tokenizer, template, adapter, and the base-fingerprint check.
    let (model, cfg, tok, template) = match loraforge::backend::resolve_device(device)
        .map_err(lib_err(LF_ERR_UNSUPPORTED))?
    {
        DeviceKind::Cpu | DeviceKind::Auto => {
            let Loaded { model, cfg, tok, template } =
                loraforge::cli::session::load(&CpuBackend::new(), path, adapter, template)
                    .map_err(lib_err(LF_ERR_FORMAT))?;
            (Net::Cpu(model), cfg, tok, template)
        }
        DeviceKind::Wgpu => {
            let be = WgpuBackend::new().map_err(lib_err(LF_ERR_UNSUPPORTED))?;
            let Loaded { model, cfg, tok, template } =
                loraforge::cli::session::load(&be, path, adapter, template).map_err(lib_err(LF_ERR_FORMAT))?;
            (Net::Wgpu(model), cfg, tok, template)
        }
        other => {
            return Err(FfiError::new(LF_ERR_UNSUPPORTED, format!("device {other:?} is not available in this build")));
        }
    };
    Ok(LfModel {
        magic: LfModel::MAGIC,
        busy: AtomicBool::new(false),
        model,
        cfg,
        tok,
        template,
        path: path.display().to_string(),
        adapter: adapter.map(|a| a.display().to_string()),
    })
}

/// Loads a model. `adapter_dir` and `template_name` may be NULL.
///
/// # Safety
/// String arguments are NULL or NUL-terminated; `out` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_model_new(
    path: *const c_char,
    adapter_dir: *const c_char,
    template_name: *const c_char,
    out: *mut *mut LfModel,
) -> c_int {
    guard("lf_model_new", || new_model(path, adapter_dir, template_name, std::ptr::null(), out))
}

/// `lf_model_new` on a chosen device: "cpu", "wgpu" or "auto" (a hardware GPU through wgpu when
/// there is one, else the CPU); NULL means "cpu".
///
/// # Safety
/// String arguments are NULL or NUL-terminated; `out` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_model_new_on(
    path: *const c_char,
    adapter_dir: *const c_char,
    template_name: *const c_char,
    device: *const c_char,
    out: *mut *mut LfModel,
) -> c_int {
    guard("lf_model_new_on", || new_model(path, adapter_dir, template_name, device, out))
}

/// The body of both constructors (`device` NULL = cpu).
unsafe fn new_model(
    path: *const c_char,
    adapter_dir: *const c_char,
    template_name: *const c_char,
    device: *const c_char,
    out: *mut *mut LfModel,
) -> FfiResult<()> {
    if out.is_null() {
        return Err(FfiError::invalid("out is NULL"));
    }
    clear_out(out);
    let path = arg_str(path, "path")?;
    let adapter = opt_str(adapter_dir, "adapter_dir")?;
    let template = opt_str(template_name, "template_name")?;
    let device: DeviceKind =
        opt_str(device, "device")?.unwrap_or("cpu").parse().map_err(lib_err(LF_ERR_INVALID_ARGUMENT))?;
    let m = load(Path::new(path), adapter.map(Path::new), template, device)?;
    *out = handle::register(m);
    Ok(())
}

/// Frees a model; NULL is a no-op.
///
/// # Safety
/// `m` is NULL or a pointer returned by `lf_model_new` (a freed one is detected, see handle.rs).
#[no_mangle]
pub unsafe extern "C" fn lf_model_free(m: *mut LfModel) {
    guard("lf_model_free", || handle::free(m));
}

/// JSON facts about a loaded model.
///
/// # Safety
/// `m` is a model handle; `out_json` is valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_model_info(m: *mut LfModel, out_json: *mut *mut c_char) -> c_int {
    guard("lf_model_info", || {
        if out_json.is_null() {
            return Err(FfiError::invalid("out_json is NULL"));
        }
        clear_out(out_json);
        let mut lease = handle::acquire(m)?;
        let m = lease.get();
        let c = &m.cfg;
        let v = serde_json::json!({
            "path": m.path,
            "adapter": m.adapter,
            "device": m.model.device(),
            "arch": c.arch,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "max_position_embeddings": c.max_position_embeddings,
            "parameters": c.param_count(),
            "chat_template": m.template.as_ref().map(|t| t.name().to_string()),
            "tokenizer": m.tok.kind(),
        });
        write_out_string(out_json, &v.to_string());
        Ok(())
    })
}

/// `[{"role": "user", "content": "..."}, ...]` → messages.
pub fn parse_messages(text: &str) -> FfiResult<Vec<Message>> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| FfiError::new(LF_ERR_FORMAT, format!("messages_json: {e}")))?;
    let arr = v.as_array().ok_or_else(|| {
        FfiError::new(LF_ERR_FORMAT, "messages_json: expected an array of {\"role\": ..., \"content\": ...} objects")
    })?;
    if arr.is_empty() {
        return Err(FfiError::invalid("messages_json: no messages"));
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let obj = m
            .as_object()
            .ok_or_else(|| FfiError::new(LF_ERR_FORMAT, format!("messages_json[{i}]: expected an object")))?;
        let field = |k: &str| -> FfiResult<String> {
            obj.get(k).and_then(Value::as_str).map(String::from).ok_or_else(|| {
                FfiError::new(LF_ERR_FORMAT, format!("messages_json[{i}]: missing string field \"{k}\""))
            })
        };
        let mut msg = Message::new(field("role")?, field("content")?);
        msg.tool_calls = obj.get("tool_calls").cloned();
        msg.name = obj.get("name").cloned();
        out.push(msg);
    }
    Ok(out)
}

/// Generation settings from JSON; NULL / "" / `{}` mean greedy, 128 tokens. Unknown keys are
/// refused so a typo does not silently do nothing.
pub fn parse_gen_params(text: Option<&str>) -> FfiResult<GenerateConfig> {
    let mut g = GenerateConfig::default();
    let Some(text) = text else { return Ok(g) };
    let bad = |msg: String| FfiError::new(LF_ERR_CONFIG, format!("gen_params_json: {msg}"));
    let v: Value =
        serde_json::from_str(text).map_err(|e| FfiError::new(LF_ERR_FORMAT, format!("gen_params_json: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
    for (k, v) in obj {
        let num = || v.as_f64().ok_or_else(|| bad(format!("{k}: expected a number, got {v}")));
        let uint = || v.as_u64().ok_or_else(|| bad(format!("{k}: expected a non-negative integer, got {v}")));
        match k.as_str() {
            "max_new_tokens" => g.max_new_tokens = uint()? as usize,
            "temperature" => g.temperature = num()? as f32,
            "top_k" => g.top_k = uint()? as usize,
            "top_p" => g.top_p = num()? as f32,
            "min_p" => g.min_p = num()? as f32,
            "repetition_penalty" => g.repetition_penalty = num()? as f32,
            "seed" => g.seed = uint()?,
            _ => {
                return Err(bad(format!(
                    "unknown key \"{k}\" (expected max_new_tokens, temperature, top_k, top_p, min_p, \
                     repetition_penalty, seed)"
                )))
            }
        }
    }
    g.validate().map_err(|e| bad(e.to_string()))?;
    Ok(g)
}

/// Applies the chat template to `messages_json`, generates, streams pieces to `token_cb`.
///
/// # Safety
/// `m` is a model handle; strings are NULL or NUL-terminated; `out_text` is NULL or valid for one
/// pointer write; `token_cb` (nullable) is called on this thread only, during this call.
#[no_mangle]
pub unsafe extern "C" fn lf_chat(
    m: *mut LfModel,
    messages_json: *const c_char,
    gen_params_json: *const c_char,
    token_cb: LfTokenCb,
    user: *mut c_void,
    out_text: *mut *mut c_char,
) -> c_int {
    guard("lf_chat", || {
        clear_out(out_text);
        let mut lease = handle::acquire(m)?;
        let messages = parse_messages(arg_str(messages_json, "messages_json")?)?;
        let mut gen = parse_gen_params(opt_str(gen_params_json, "gen_params_json")?)?;
        let m = lease.get();
        let template = m.template.as_ref().ok_or_else(|| {
            FfiError::state(
                "the model carries no chat template: load it with a template_name (e.g. chatml, llama3, gemma)",
            )
        })?;
        gen.stop_ids = m.tok.stop_ids();
        // ChatTokenizer::encode_prompt, without cloning the tokenizer into one.
        let prompt =
            template.render(&messages, &RenderOptions::generation()).map_err(lib_err(LF_ERR_INVALID_ARGUMENT))?;
        let mut ids = m.tok.encode(&prompt, false).map_err(lib_err(LF_ERR_INVALID_ARGUMENT))?;
        if let Some(bos) = m.tok.bos_id() {
            if m.tok.special_tokens().add_bos && ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        let mut stream = m.tok.decode_stream(true);
        let mut text = String::new();
        let emit = |piece: &str, text: &mut String| -> bool {
            text.push_str(piece);
            match token_cb {
                None => true,
                Some(cb) => {
                    let c = CString::new(piece.replace('\0', "")).unwrap_or_default();
                    cb(c.as_ptr(), user) == 0
                }
            }
        };
        m.model
            .generate(&ids, &gen, &mut |id| match stream.step(id) {
                Some(piece) => emit(&piece, &mut text),
                None => true,
            })
            .map_err(lib_err(LF_ERR_INTERNAL))?;
        if let Some(rest) = stream.finish() {
            emit(&rest, &mut text);
        }
        write_out_string(out_text, &text);
        Ok(())
    })
}
