//! Chat templates: a model's own Jinja template rendered exactly as Hugging Face transformers renders it
//! (`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`), LLaMA-Factory's
//! named built-in templates for models that carry none, and the byte spans of every assistant turn for
//! loss masking.
//!
//! Spec: transformers `utils/chat_template_utils.py` (`_compile_jinja_template`, `render_jinja_template`).
//! Test: tests/chat_template.rs.
//!
//! The engine is minijinja configured like transformers' `ImmutableSandboxedEnvironment`:
//! - `trim_blocks=True`, `lstrip_blocks=True`, `keep_trailing_newline=False` (Jinja's default, which
//!   transformers keeps: one trailing newline at the end of the template source is dropped);
//! - the `loopcontrols` extension (`{% break %}`, `{% continue %}`);
//! - `{% generation %}...{% endgeneration %}` (transformers' AssistantTracker tag) renders its body
//!   unchanged; we rewrite it to `{% if true %}...{% endif %}` so whitespace control is identical;
//! - Python string/dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, `.get()`, ...) through
//!   minijinja-contrib's `pycompat`;
//! - globals `raise_exception(msg)` (-> `Err` carrying `msg`) and `strftime_now(fmt)`, and the `tojson`
//!   filter overridden as transformers does: `json.dumps(x, ensure_ascii=False, indent=None,
//!   separators=None, sort_keys=False)` (no HTML escaping, Python's `", "`/`": "` separators);
//! - context: `messages`, `add_generation_prompt`, `tools`, `documents` (always none here), `bos_token`,
//!   `eos_token`, then `RenderOptions::extra` (which may override any of them).
//!
//! Contracts easy to miss:
//! - Object key order in `tools` / `tool_calls` is that of `serde_json::Map`; without serde_json's
//!   `preserve_order` feature it is sorted, while Python keeps insertion order, so `tojson` of such objects
//!   can differ from transformers in key order only.
//! - `strftime_now` formats the current time in UTC (std has no time-zone database); transformers uses the
//!   machine's local time. Identical on machines that run in UTC.
//! - Built-in templates follow LLaMA-Factory's `data/template.py` formats, split the HF way: the assistant
//!   header (LLaMA-Factory's tail of `format_user`) is written before each assistant message and, with
//!   `add_generation_prompt`, at the end. For a conversation that alternates user/assistant the text equals
//!   LLaMA-Factory's; they ignore `tools`.
//! - `render_with_spans` derives assistant spans from the template itself; see its doc for the algorithm.

use crate::error::{Error, Result};
use crate::io::gguf::{GgufArray, GgufFile};
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::ops::Range;

/// One chat message, as transformers receives it (`{"role": ..., "content": ...}` plus optional fields).
/// Absent optional fields are not passed to the template at all, so `message.tool_calls is defined` and
/// `'tool_calls' in message` behave as in Python.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// "system", "user", "assistant", "tool", ... (whatever the template understands).
    pub role: String,
    pub content: String,
    /// OpenAI-style tool calls of an assistant message: `[{"type": "function", "function": {...}}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// The tool or participant name some templates print (e.g. for `role: "tool"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<serde_json::Value>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into(), tool_calls: None, name: None }
    }
    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

/// What `apply_chat_template` takes besides the messages.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Append the header that opens an assistant turn (HF `add_generation_prompt`). False for training.
    pub add_generation_prompt: bool,
    /// JSON schemas of the tools (HF `tools=`), a list of `{"type": "function", "function": {...}}`.
    pub tools: Option<serde_json::Value>,
    /// Extra template variables (HF `**kwargs`, e.g. `enable_thinking`, `date_string`); they override the
    /// standard ones of the same name.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RenderOptions {
    /// `add_generation_prompt = true`, nothing else.
    pub fn generation() -> RenderOptions {
        RenderOptions { add_generation_prompt: true, ..Default::default() }
    }
}

/// A compiled chat template plus the special tokens it is rendered with.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    name: String,
    source: String,
    bos_token: String,
    eos_token: String,
}

/// The name under which the template source is registered in its environment.
const TEMPLATE_KEY: &str = "chat_template";

/// The error `raise_exception` raises, found again in the minijinja error's source chain.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// Compiles `source` (named "chat_template" in errors). A syntax error is an `Err` naming the template
    /// and the line.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        ChatTemplate::with_name("chat_template", source, bos_token, eos_token)
    }

    /// As `new`, with the name errors use (e.g. the file it came from).
    pub fn with_name(name: &str, source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson_filter);
        env.add_template_owned(TEMPLATE_KEY, rewrite_generation_tags(source))
            .map_err(|e| convert_error(name, "compile", e))?;
        Ok(ChatTemplate {
            env,
            name: name.to_string(),
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template stored in a GGUF file's `tokenizer.chat_template`, with the file's BOS/EOS token
    /// strings (`tokenizer.ggml.{bos,eos}_token_id` looked up in `tokenizer.ggml.tokens`; "" when absent).
    /// `Ok(None)` when the file carries no template (e.g. Gemma 3 270M): use `builtin` then.
    pub fn from_gguf(g: &GgufFile) -> Result<Option<ChatTemplate>> {
        let Some(value) = g.get("tokenizer.chat_template") else { return Ok(None) };
        let source = value.as_str().ok_or_else(|| Error::Format {
            path: g.path().to_string(),
            msg: format!("tokenizer.chat_template is {}, expected string", value.type_description()),
        })?;
        let token = |key: &str| -> String {
            let id = g.get(key).and_then(|v| v.as_int());
            match (id, g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array())) {
                (Some(id), Some(GgufArray::String(tokens))) => {
                    usize::try_from(id).ok().and_then(|i| tokens.get(i)).cloned().unwrap_or_default()
                }
                _ => String::new(),
            }
        };
        let (bos, eos) = (token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"));
        let name = format!("{}:tokenizer.chat_template", g.path());
        ChatTemplate::with_name(&name, source, &bos, &eos).map(Some)
    }

    /// Replaces the BOS/EOS strings the template is rendered with (e.g. a built-in with the model's own).
    pub fn with_special_tokens(mut self, bos_token: &str, eos_token: &str) -> ChatTemplate {
        self.bos_token = bos_token.to_string();
        self.eos_token = eos_token.to_string();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The Jinja source as given (before the `{% generation %}` rewrite).
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders the conversation as `apply_chat_template(messages, tokenize=False, ...)` does.
    /// A template that calls `raise_exception(msg)` gives an `Err` whose text contains `msg`.
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), serde_json::to_value(messages)?);
        ctx.insert("tools".into(), opts.tools.clone().unwrap_or(serde_json::Value::Null));
        ctx.insert("documents".into(), serde_json::Value::Null);
        ctx.insert("add_generation_prompt".into(), opts.add_generation_prompt.into());
        ctx.insert("bos_token".into(), self.bos_token.clone().into());
        ctx.insert("eos_token".into(), self.eos_token.clone().into());
        for (k, v) in &opts.extra {
            ctx.insert(k.clone(), v.clone());
        }
        let tmpl = self.env.get_template(TEMPLATE_KEY).map_err(|e| convert_error(&self.name, "render", e))?;
        tmpl.render(Value::from_serialize(&ctx)).map_err(|e| convert_error(&self.name, "render", e))
    }

    /// Renders the conversation for training and returns the byte ranges (into the returned text) of every
    /// assistant message's output: its content plus the end-of-turn marker the template writes after it
    /// (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...), and nothing of the next turn.
    ///
    /// Algorithm (derived from the template, no per-template table): for each assistant message `i`
    /// - `prompt = render(messages[..i], add_generation_prompt = true)`: everything the model is given;
    /// - `through = render(messages[..=i], add_generation_prompt = false)`: the conversation through turn i;
    /// - the turn's output is `through[prompt.len()..]`, minus trailing whitespace that follows the
    ///   content: what the template writes after the end-of-turn marker (ChatML's `\n` after `<|im_end|>`,
    ///   Alpaca's `\n\n` after `</s>`) is never generated by the model, which stops at the marker, so it
    ///   belongs to the separator before the next turn. The content itself is never cut, even when it
    ///   ends in whitespace (located by searching for it in the turn; if the template rewrote it, e.g.
    ///   `| trim`, only the whitespace rule applies).
    ///
    /// Assumptions, each checked (an `Err` names the message index when one fails):
    /// 1. `prompt` is a prefix of `through`: the generation prompt is exactly the header the template writes
    ///    before an assistant message (fails for e.g. templates that add `<think>` only to the prompt).
    /// 2. `through` is a prefix of the full rendering: rendering a prefix of the conversation gives a prefix
    ///    of the whole (fails for templates that render earlier turns differently once later turns exist,
    ///    e.g. those that drop past reasoning).
    ///
    /// Cost: two renders per assistant message plus one; each render is linear in the conversation.
    pub fn render_with_spans(&self, messages: &[Message], opts: &RenderOptions) -> Result<(String, Vec<Range<usize>>)> {
        let full = self.render(messages, opts)?;
        let with_gen = RenderOptions { add_generation_prompt: true, ..opts.clone() };
        let without_gen = RenderOptions { add_generation_prompt: false, ..opts.clone() };
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let ctx =
                |e: Error| Error::Context { context: format!("chat template spans, message {i}"), source: Box::new(e) };
            let prompt = self.render(&messages[..i], &with_gen).map_err(ctx)?;
            let through = self.render(&messages[..=i], &without_gen).map_err(ctx)?;
            if !through.starts_with(&prompt) {
                return Err(Error::Msg(format!(
                    "chat template `{}`: cannot find the output of assistant message {i}: the prompt rendered with \
                     add_generation_prompt=true is not a prefix of the conversation rendered through message {i} \
                     (the generation prompt differs from the header before an assistant message)",
                    self.name
                )));
            }
            if !full.starts_with(&through) {
                return Err(Error::Msg(format!(
                    "chat template `{}`: cannot find the output of assistant message {i}: rendering messages[..={i}] \
                     is not a prefix of rendering the whole conversation (the template renders earlier turns \
                     differently once later turns exist)",
                    self.name
                )));
            }
            let (start, end) = (prompt.len(), through.len());
            let turn = &full[start..end];
            let mut keep = turn.trim_end().len();
            if let Some(p) = turn.find(m.content.as_str()) {
                keep = keep.max(p + m.content.len());
            }
            spans.push(start..start + keep);
        }
        Ok((full, spans))
    }
}

// ---- built-in templates (LLaMA-Factory names and formats, our own Jinja)

/// One LLaMA-Factory template's formats. Slots are literal text with `{content}`, `{bos}`, `{eos}` markers.
struct Builtin {
    name: &'static str,
    /// Written once at the very start (LLaMA-Factory `format_prefix`).
    prefix: &'static str,
    /// The system message (`format_system`); its `{content}` is the system text.
    system: &'static str,
    /// A user turn without the assistant header (`format_user` minus its tail).
    user: &'static str,
    /// The header that opens an assistant turn: the generation prompt (tail of LLaMA-Factory `format_user`).
    gen: &'static str,
    /// An assistant turn after its header (`format_assistant`).
    assistant: &'static str,
    /// Used when the conversation has no system message (`default_system`); "" for none.
    default_system: &'static str,
    /// LLaMA-Factory's `Llama2Template`: the formatted system text is prepended to the first user message's
    /// content instead of standing alone.
    system_in_first_user: bool,
    /// Special tokens `builtin()` renders with; `with_special_tokens` replaces them with the model's.
    bos: &'static str,
    eos: &'static str,
}

const CHATML_USER: &str = "<|im_start|>user\n{content}<|im_end|>\n";
const CHATML_SYSTEM: &str = "<|im_start|>system\n{content}<|im_end|>\n";
const CHATML_GEN: &str = "<|im_start|>assistant\n";
const CHATML_ASSISTANT: &str = "{content}<|im_end|>\n";
const GEMMA_USER: &str = "<start_of_turn>user\n{content}<end_of_turn>\n";
const GEMMA_GEN: &str = "<start_of_turn>model\n";
const GEMMA_ASSISTANT: &str = "{content}<end_of_turn>\n";

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "alpaca",
        prefix: "",
        system: "{content}",
        user: "### Instruction:\n{content}\n\n",
        gen: "### Response:\n",
        assistant: "{content}{eos}\n\n",
        default_system: "Below is an instruction that describes a task. Write a response that appropriately \
                         completes the request.\n\n",
        system_in_first_user: false,
        bos: "<s>",
        eos: "</s>",
    },
    Builtin {
        name: "chatml",
        prefix: "",
        system: CHATML_SYSTEM,
        user: CHATML_USER,
        gen: CHATML_GEN,
        assistant: CHATML_ASSISTANT,
        default_system: "",
        system_in_first_user: false,
        bos: "",
        eos: "<|im_end|>",
    },
    Builtin {
        name: "default",
        prefix: "",
        system: "System: {content}{eos}\n",
        user: "Human: {content}{eos}\n",
        gen: "Assistant:",
        assistant: "{content}{eos}\n",
        default_system: "",
        system_in_first_user: false,
        bos: "<s>",
        eos: "</s>",
    },
    Builtin {
        name: "empty",
        prefix: "",
        system: "{content}",
        user: "{content}",
        gen: "",
        assistant: "{content}",
        default_system: "",
        system_in_first_user: false,
        bos: "",
        eos: "",
    },
    Builtin {
        name: "gemma",
        prefix: "{bos}",
        system: "{content}\n\n",
        user: GEMMA_USER,
        gen: GEMMA_GEN,
        assistant: GEMMA_ASSISTANT,
        default_system: "",
        system_in_first_user: true,
        bos: "<bos>",
        eos: "<eos>",
    },
    // Same formats as gemma in LLaMA-Factory (it differs only in its multimodal plugin).
    Builtin {
        name: "gemma3",
        prefix: "{bos}",
        system: "{content}\n\n",
        user: GEMMA_USER,
        gen: GEMMA_GEN,
        assistant: GEMMA_ASSISTANT,
        default_system: "",
        system_in_first_user: true,
        bos: "<bos>",
        eos: "<eos>",
    },
    Builtin {
        name: "llama2",
        prefix: "",
        system: "<<SYS>>\n{content}\n<</SYS>>\n\n",
        user: "{bos}[INST] {content} [/INST]",
        gen: "",
        assistant: "{content}{eos}",
        default_system: "",
        system_in_first_user: true,
        bos: "<s>",
        eos: "</s>",
    },
    Builtin {
        name: "llama3",
        prefix: "{bos}",
        system: "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user: "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        gen: "<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant: "{content}<|eot_id|>",
        default_system: "",
        system_in_first_user: false,
        bos: "<|begin_of_text|>",
        eos: "<|eot_id|>",
    },
    Builtin {
        name: "mistral",
        prefix: "{bos}",
        system: "{content}\n\n",
        user: "[INST] {content}[/INST]",
        gen: "",
        assistant: " {content}{eos}",
        default_system: "",
        system_in_first_user: true,
        bos: "<s>",
        eos: "</s>",
    },
    Builtin {
        name: "phi",
        prefix: "",
        system: "<|system|>\n{content}<|end|>\n",
        user: "<|user|>\n{content}<|end|>\n",
        gen: "<|assistant|>\n",
        assistant: "{content}<|end|>\n",
        default_system: "",
        system_in_first_user: false,
        bos: "<s>",
        eos: "<|end|>",
    },
    Builtin {
        name: "qwen",
        prefix: "",
        system: CHATML_SYSTEM,
        user: CHATML_USER,
        gen: CHATML_GEN,
        assistant: CHATML_ASSISTANT,
        default_system: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        system_in_first_user: false,
        bos: "",
        eos: "<|im_end|>",
    },
    Builtin {
        name: "smollm2",
        prefix: "",
        system: CHATML_SYSTEM,
        user: CHATML_USER,
        gen: CHATML_GEN,
        assistant: CHATML_ASSISTANT,
        default_system: "You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
        system_in_first_user: false,
        bos: "<|im_start|>",
        eos: "<|im_end|>",
    },
    Builtin {
        name: "vicuna",
        prefix: "",
        system: "{content}",
        user: "USER: {content} ",
        gen: "ASSISTANT:",
        assistant: "{content}{eos}",
        default_system: "A chat between a curious user and an artificial intelligence assistant. The assistant \
                         gives helpful, detailed, and polite answers to the user's questions.",
        system_in_first_user: false,
        bos: "<s>",
        eos: "</s>",
    },
];

/// The names `ChatTemplate::builtin` knows, sorted.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

impl ChatTemplate {
    /// A LLaMA-Factory built-in template by name (see `builtin_names`), rendered with that family's
    /// conventional BOS/EOS strings; call `with_special_tokens` to use the model's own.
    /// An unknown name is an `Err` listing the known ones and suggesting the nearest.
    pub fn builtin(name: &str) -> Result<ChatTemplate> {
        let Some(b) = BUILTINS.iter().find(|b| b.name == name) else {
            let names = builtin_names();
            let nearest =
                names.iter().min_by_key(|n| crate::error::levenshtein(&name.to_lowercase(), n)).copied().unwrap_or("");
            return Err(Error::InvalidArgument {
                op: "chat template",
                msg: format!(
                    "unknown built-in template `{name}` (did you mean `{nearest}`?); known: {}",
                    names.join(", ")
                ),
            });
        };
        ChatTemplate::with_name(&format!("builtin:{}", b.name), &builtin_source(b), b.bos, b.eos)
    }
}

/// A slot (literal text with `{content}`/`{bos}`/`{eos}` markers) as a Jinja expression,
/// `'<|im_start|>user\n' + content + '<|im_end|>\n'`, with `content` standing for `var`. Literal text goes
/// through string literals so that trim_blocks/lstrip_blocks never touch it.
fn slot_expr(slot: &str, var: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = slot;
    while !rest.is_empty() {
        let next = ["{content}", "{bos}", "{eos}"].iter().filter_map(|m| rest.find(m).map(|p| (p, *m))).min();
        let Some((p, marker)) = next else {
            parts.push(jinja_string(rest));
            break;
        };
        if p > 0 {
            parts.push(jinja_string(&rest[..p]));
        }
        parts.push(match marker {
            "{content}" => var.to_string(),
            "{bos}" => "bos_token".to_string(),
            _ => "eos_token".to_string(),
        });
        rest = &rest[p + marker.len()..];
    }
    if parts.is_empty() {
        "''".to_string()
    } else {
        parts.join(" + ")
    }
}

/// A single-quoted Jinja string literal.
fn jinja_string(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The Jinja source of a built-in template.
fn builtin_source(b: &Builtin) -> String {
    let mut s = String::new();
    let default_system = if b.default_system.is_empty() { "none".to_string() } else { jinja_string(b.default_system) };
    s.push_str("{#- LLaMA-Factory `");
    s.push_str(b.name);
    s.push_str("` format, rendered the Hugging Face way (generation prompt = assistant header). -#}\n");
    s.push_str("{%- if messages and messages[0]['role'] == 'system' -%}\n");
    s.push_str("    {%- set system_message = messages[0]['content'] -%}\n");
    s.push_str("    {%- set loop_messages = messages[1:] -%}\n");
    s.push_str("{%- else -%}\n");
    let _ = writeln!(s, "    {{%- set system_message = {default_system} -%}}");
    s.push_str("    {%- set loop_messages = messages -%}\n");
    s.push_str("{%- endif -%}\n");
    if !b.prefix.is_empty() {
        let _ = writeln!(s, "{{{{- {} -}}}}", slot_expr(b.prefix, "''"));
    }
    if !b.system_in_first_user {
        let _ = writeln!(
            s,
            "{{%- if system_message -%}}{{{{- {} -}}}}{{%- endif -%}}",
            slot_expr(b.system, "system_message")
        );
    } else {
        s.push_str("{%- if system_message and loop_messages and loop_messages[0]['role'] != 'user' -%}\n");
        let _ = writeln!(s, "    {{{{- raise_exception('the system message is merged into the first user message, so the first message after it must be from the user') -}}}}");
        s.push_str("{%- endif -%}\n");
    }
    s.push_str("{%- for message in loop_messages -%}\n");
    if b.system_in_first_user {
        s.push_str("    {%- if loop.first and system_message -%}\n");
        let _ = writeln!(
            s,
            "        {{%- set content = {} + message['content'] -%}}",
            slot_expr(b.system, "system_message")
        );
        s.push_str("    {%- else -%}\n");
        s.push_str("        {%- set content = message['content'] -%}\n");
        s.push_str("    {%- endif -%}\n");
    } else {
        s.push_str("    {%- set content = message['content'] -%}\n");
    }
    s.push_str("    {%- if message['role'] == 'user' -%}\n");
    let _ = writeln!(s, "        {{{{- {} -}}}}", slot_expr(b.user, "content"));
    s.push_str("    {%- elif message['role'] == 'assistant' -%}\n");
    let _ = writeln!(s, "        {{{{- {} -}}}}", slot_expr(&format!("{}{}", b.gen, b.assistant), "content"));
    s.push_str("    {%- elif message['role'] == 'system' -%}\n");
    let _ = writeln!(s, "        {{{{- raise_exception('a system message is only allowed first') -}}}}");
    s.push_str("    {%- else -%}\n");
    let _ = writeln!(s, "        {{{{- raise_exception('unsupported role ' ~ message['role']) -}}}}");
    s.push_str("    {%- endif -%}\n");
    s.push_str("{%- endfor -%}\n");
    if !b.gen.is_empty() {
        let _ = writeln!(s, "{{%- if add_generation_prompt -%}}{{{{- {} -}}}}{{%- endif -%}}", slot_expr(b.gen, "''"));
    }
    s
}

// ---- engine helpers

/// `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker) become `{% if true %}` /
/// `{% endif %}`, keeping the whitespace-control markers, so they render their body as transformers does.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let Some(close_rel) = rest[open..].find("%}") else { break };
        let close = open + close_rel;
        let inner = &rest[open + 2..close]; // between "{%" and "%}", e.g. "- generation -"
        let lead = inner.len() - inner.trim_start_matches(['-', '+']).len();
        let trail = inner.len() - inner.trim_end_matches('-').len();
        let word = inner[lead..inner.len() - trail].trim();
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        out.push_str(&rest[..open + 2]);
        match replacement {
            Some(r) => {
                out.push_str(&inner[..lead]);
                out.push(' ');
                out.push_str(r);
                out.push(' ');
                out.push_str(&inner[inner.len() - trail..]);
            }
            None => out.push_str(inner),
        }
        out.push_str("%}");
        rest = &rest[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Turns a minijinja error into ours: the template name, the line, and for `raise_exception` the message.
fn convert_error(name: &str, what: &str, e: minijinja::Error) -> Error {
    let mut raised = None;
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<RaisedException>() {
            raised = Some(r.0.clone());
        }
        src = s.source();
    }
    let line = e.line().map(|l| format!(", line {l}")).unwrap_or_default();
    let msg = match raised {
        Some(m) => format!("{what}{line}: template raised an exception: {m}"),
        None => {
            let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
            format!("{what}{line}: {}{detail}", e.kind())
        }
    };
    Error::Format { path: format!("chat template `{name}`"), msg }
}

/// `raise_exception(msg)`: aborts rendering with `msg`.
fn raise_exception(msg: Value) -> std::result::Result<Value, minijinja::Error> {
    let m = msg.as_str().map(str::to_string).unwrap_or_else(|| msg.to_string());
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, m.clone()).with_source(RaisedException(m)))
}

/// `strftime_now(fmt)`: Python's `datetime.now().strftime(fmt)`, in UTC. Supports %Y %y %m %d %e %H %I %M
/// %S %p %j %a %A %b %B %% and glibc's `%-d`-style no-padding flag (Llama 3 templates use `%d %b %Y`).
fn strftime_now(fmt: &str) -> std::result::Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime_utc(fmt, secs as i64)
}

/// Formats `secs` since the Unix epoch (UTC).
fn strftime_utc(fmt: &str, secs: i64) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (tod / 3600, tod % 3600 / 60, tod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3 from Monday)
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let h12 = if hh % 12 == 0 { 12 } else { hh % 12 };
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let pad = if spec == Some('-') {
            spec = chars.next();
            false
        } else {
            true
        };
        let num = |v: i64, w: usize| if pad { format!("{v:0w$}") } else { v.to_string() };
        match spec {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&num(y.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(m, 2)),
            Some('d') => out.push_str(&num(d, 2)),
            Some('e') => out.push_str(&if pad { format!("{d:2}") } else { d.to_string() }),
            Some('H') => out.push_str(&num(hh, 2)),
            Some('I') => out.push_str(&num(h12, 2)),
            Some('M') => out.push_str(&num(mm, 2)),
            Some('S') => out.push_str(&num(ss, 2)),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported format directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic Gregorian.
/// Howard Hinnant's algorithm, https://howardhinnant.github.io/date_algorithms.html#civil_from_days
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) -> days since 1970-01-01, the inverse of `civil_from_days`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `x | tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`: transformers' override,
/// i.e. Python's `json.dumps` with those arguments (positional in that order, or by keyword).
fn tojson_filter(value: &Value, args: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
    let mut positional: Vec<Value> = args.0;
    let kwargs = match positional.last().map(|v| Kwargs::try_from(v.clone())) {
        Some(Ok(k)) if positional.last().is_some_and(|v| v.is_kwargs()) => {
            positional.pop();
            Some(k)
        }
        _ => None,
    };
    let bad = |m: String| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {m}"));
    if positional.len() > 4 {
        return Err(bad(format!("takes at most 4 arguments, got {}", positional.len())));
    }
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut opts: [Option<Value>; 4] = Default::default();
    for (i, v) in positional.into_iter().enumerate() {
        opts[i] = Some(v);
    }
    if let Some(k) = &kwargs {
        for (i, n) in names.iter().enumerate() {
            if let Some(v) = k.get::<Option<Value>>(n)? {
                if opts[i].is_some() {
                    return Err(bad(format!("got multiple values for argument '{n}'")));
                }
                opts[i] = Some(v);
            }
        }
        k.assert_all_used()?;
    }
    fn set(v: &Option<Value>) -> Option<&Value> {
        v.as_ref().filter(|v| !v.is_none() && !v.is_undefined())
    }
    let ensure_ascii = set(&opts[0]).is_some_and(|v| v.is_true());
    let indent: Option<String> = match set(&opts[1]) {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => return Err(bad(format!("indent must be an int or a string, got {}", v.kind()))),
        },
    };
    let (item_sep, key_sep) = match set(&opts[2]) {
        None => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
        Some(v) => {
            let parts: Vec<Value> =
                v.try_iter().map_err(|_| bad("separators must be a pair of strings".into()))?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.as_str().unwrap_or_default().to_string(), b.as_str().unwrap_or_default().to_string())
                }
                _ => return Err(bad("separators must be a pair of strings".into())),
            }
        }
    };
    let sort_keys = set(&opts[3]).is_some_and(|v| v.is_true());
    let cfg = JsonCfg { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    write_json(&mut out, value, &cfg, 0).map_err(bad)?;
    Ok(Value::from(out))
}

struct JsonCfg {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// Python's `json.dumps` encoder over a template value.
fn write_json(out: &mut String, v: &Value, cfg: &JsonCfg, level: usize) -> std::result::Result<(), String> {
    match v.kind() {
        ValueKind::Undefined => return Err("cannot serialize an undefined value".into()),
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone()).map_err(|e| e.to_string())?;
                out.push_str(&py_float_repr(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), cfg.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter().map_err(|e| e.to_string())?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&cfg.item_sep);
                }
                newline_indent(out, cfg, level + 1);
                write_json(out, item, cfg, level + 1)?;
            }
            newline_indent(out, cfg, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for k in v.try_iter().map_err(|e| e.to_string())? {
                let val = v.get_item(&k).map_err(|e| e.to_string())?;
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
                    ValueKind::Number if k.is_integer() => k.to_string(),
                    ValueKind::Number => py_float_repr(f64::try_from(k.clone()).map_err(|e| e.to_string())?),
                    kind => return Err(format!("keys must be str, int, float, bool or None, not {kind}")),
                };
                entries.push((key, val));
            }
            if cfg.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&cfg.item_sep);
                }
                newline_indent(out, cfg, level + 1);
                write_json_str(out, key, cfg.ensure_ascii);
                out.push_str(&cfg.key_sep);
                write_json(out, val, cfg, level + 1)?;
            }
            newline_indent(out, cfg, level);
            out.push('}');
        }
        kind => return Err(format!("object of kind {kind} is not JSON serializable")),
    }
    Ok(())
}

fn newline_indent(out: &mut String, cfg: &JsonCfg, level: usize) {
    if let Some(ind) = &cfg.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

/// A JSON string literal as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other control
/// characters as `\u00XX`; with `ensure_ascii` everything outside ' '..='~' as `\uXXXX` (surrogate pairs).
fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
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
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation outside 1e-4 <= |x| < 1e16
/// (`1e-05`, `1e+16`), always a `.0` on whole numbers in fixed notation; `NaN`, `Infinity` as json.dumps.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let e = format!("{:e}", f.abs()); // shortest round-trip digits, e.g. "1.5e20", "1e-5"
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        } else if point >= n {
            format!("{sign}{digits}{}.0", "0".repeat((point - n) as usize))
        } else {
            format!("{sign}{}.{}", &digits[..point as usize], &digits[point as usize..])
        }
    } else {
        let m = if n > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits.clone() };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

impl ChatTemplate {
    /// The chat template of a Hugging Face model directory: `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of `{name, template}` from which `default` is taken),
    /// else a `chat_template.jinja` file beside it. None when the model carries no template.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Option<ChatTemplate>> {
        let p = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&p) {
            Ok(s) => serde_json::from_str(&s)
                .map_err(|e| crate::Error::Format { path: p.display().to_string(), msg: e.to_string() })?,
            Err(_) => serde_json::Value::Null,
        };
        let token = |k: &str| -> String {
            match &cfg[k] {
                serde_json::Value::String(s) => s.clone(),
                v => v["content"].as_str().unwrap_or_default().to_string(),
            }
        };
        let source = match &cfg["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| list.first())
                .and_then(|t| t["template"].as_str().map(String::from)),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        match source {
            Some(s) => Ok(Some(ChatTemplate::with_name(
                "tokenizer_config.json",
                &s,
                &token("bos_token"),
                &token("eos_token"),
            )?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_float_repr_matches_python() {
        // Expected strings are Python 3's repr() of the same floats.
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e-5, "1e-05"),
            (1.5e-4, "0.00015"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (100.0, "100.0"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn strftime_known_instant() {
        // 2024-02-29 13:05:09 UTC = 1709211909 s (a Thursday, day 60 of a leap year).
        let s = strftime_utc("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %I%p %-d|%e|%%", 1_709_211_909).unwrap();
        assert_eq!(s, "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 01PM 29|29|%");
        assert_eq!(strftime_utc("%d %b %Y", 0).unwrap(), "01 Jan 1970");
        assert!(strftime_utc("%Q", 0).is_err());
    }

    #[test]
    fn generation_tags_rewritten() {
        let src = "{%- generation -%}x{% endgeneration %}{% if a %}";
        assert_eq!(rewrite_generation_tags(src), "{%- if true -%}x{% endif %}{% if a %}");
    }
}
