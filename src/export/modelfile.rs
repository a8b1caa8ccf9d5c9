//! An Ollama Modelfile beside a GGUF export: `FROM ./<file>.gguf`, the chat template in Ollama's Go
//! template syntax for the families we recognise (ChatML as SmolLM2/Qwen use it, Llama 3, Gemma),
//! `PARAMETER stop` for the end-of-turn tokens and `SYSTEM` when the Jinja template injects a
//! default system prompt. Any other template is left to Ollama, which then reads the GGUF's
//! `tokenizer.chat_template` (a comment says so).
//! Spec: https://github.com/ollama/ollama/blob/main/docs/modelfile.md (FROM, TEMPLATE, SYSTEM,
//! PARAMETER stop; .System, .Messages, .Role, .Content). Test: tests/export.rs.
//!
//! Contract easy to miss: in Ollama `.System` is the system prompt (the Modelfile's SYSTEM unless the
//! request has one) while `.Messages` may also hold system messages; the templates skip system
//! messages in the loop so a system prompt is never rendered twice.

use crate::tokenizer::template::{ChatTemplate, Message, RenderOptions};

/// A chat template family with an Ollama form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateFamily {
    ChatMl,
    Llama3,
    Gemma,
}

impl TemplateFamily {
    /// Recognises the family by its markup.
    pub fn detect(source: &str) -> Option<TemplateFamily> {
        if source.contains("<|im_start|>") {
            Some(TemplateFamily::ChatMl)
        } else if source.contains("<|start_header_id|>") {
            Some(TemplateFamily::Llama3)
        } else if source.contains("<start_of_turn>") {
            Some(TemplateFamily::Gemma)
        } else {
            None
        }
    }

    /// The template in Ollama's Go text/template syntax.
    pub fn ollama_template(self) -> &'static str {
        match self {
            TemplateFamily::ChatMl => {
                "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\
                 {{- range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}\
                 <|im_start|>assistant\n"
            }
            TemplateFamily::Llama3 => {
                "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}\
                 {{- range .Messages }}{{ if ne .Role \"system\" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}{{ end }}\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            }
            TemplateFamily::Gemma => {
                "{{- $sys := .System }}\
                 {{- range .Messages }}{{ if ne .Role \"system\" }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}user{{ end }}\n\
                 {{ if $sys }}{{ $sys }}\n\n{{ $sys = \"\" }}{{ end }}{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}\
                 <start_of_turn>model\n"
            }
        }
    }

    /// Stop strings of the family.
    pub fn stops(self) -> &'static [&'static str] {
        match self {
            TemplateFamily::ChatMl => &["<|im_end|>"],
            TemplateFamily::Llama3 => &["<|eot_id|>", "<|end_of_text|>"],
            TemplateFamily::Gemma => &["<end_of_turn>"],
        }
    }

    /// (start, end) markup around a system turn, to find a default system prompt in a rendering.
    fn system_markers(self) -> (&'static str, &'static str) {
        match self {
            TemplateFamily::ChatMl => ("<|im_start|>system\n", "<|im_end|>"),
            TemplateFamily::Llama3 => ("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
            // Gemma has no system turn: a default system would be text before the user's content.
            TemplateFamily::Gemma => ("", ""),
        }
    }
}

/// The default system prompt a Jinja chat template inserts when the conversation has none (e.g.
/// SmolLM2's "You are a helpful AI assistant named SmolLM, ..."), if any.
pub fn default_system(tpl: &ChatTemplate, family: TemplateFamily) -> Option<String> {
    let (start, end) = family.system_markers();
    if start.is_empty() {
        return None;
    }
    let text = tpl.render(&[Message::user("@@user@@")], &RenderOptions::generation()).ok()?;
    let s = text.find(start)? + start.len();
    let e = s + text[s..].find(end)?;
    let sys = text[s..e].trim_end_matches('\n').to_string();
    (!sys.is_empty() && !sys.contains("@@user@@")).then_some(sys)
}

/// The Modelfile text for `gguf_file` (a name in the same directory). `template`: the model's Jinja
/// chat template (None: the GGUF has none). `stops`: extra stop strings (the vocabulary's
/// end-of-turn tokens).
pub fn modelfile(gguf_file: &str, template: Option<&ChatTemplate>, stops: &[String]) -> String {
    let mut s = format!("# Ollama Modelfile written by loraforge. Create the model with:\n#   ollama create NAME -f Modelfile\nFROM ./{gguf_file}\n");
    let family = template.and_then(|t| TemplateFamily::detect(t.source()));
    let mut all_stops: Vec<String> = Vec::new();
    match (template, family) {
        (Some(t), Some(f)) => {
            s.push_str(&format!("\nTEMPLATE \"\"\"{}\"\"\"\n", f.ollama_template()));
            if let Some(sys) = default_system(t, f) {
                s.push_str(&format!("\nSYSTEM \"\"\"{sys}\"\"\"\n"));
            }
            all_stops.extend(f.stops().iter().map(|x| x.to_string()));
        }
        (Some(_), None) => s.push_str(
            "\n# The chat template could not be expressed in Ollama's template syntax; Ollama will use the\n\
             # GGUF's tokenizer.chat_template.\n",
        ),
        (None, _) => s.push_str("\n# The model has no chat template; Ollama will treat prompts as raw text.\n"),
    }
    for x in stops {
        if !all_stops.contains(x) {
            all_stops.push(x.clone());
        }
    }
    if !all_stops.is_empty() {
        s.push('\n');
    }
    for x in &all_stops {
        s.push_str(&format!("PARAMETER stop \"{}\"\n", x.replace('"', "\\\"")));
    }
    s
}
