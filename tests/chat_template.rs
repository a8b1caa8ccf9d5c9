//! Chat templates (src/tokenizer/template.rs): the SmolLM2 template from its GGUF against transformers'
//! own rendering, every built-in's structure, assistant spans, errors, tojson.
//! Reference: ../shared/fixtures/smollm2-135m-instruct/reference.json `chat` (transformers
//! `apply_chat_template(conversation, tokenize=False, add_generation_prompt=False/True)`).

mod common;

use loraforge::io::gguf::GgufFile;
use loraforge::tokenizer::template::{builtin_names, ChatTemplate, Message, RenderOptions};
use std::path::PathBuf;

fn no_gen() -> RenderOptions {
    RenderOptions::default()
}

/// The fixture-model cache `models/fetch.sh` fills: $LORAFORGE_MODEL_CACHE, else
/// ${XDG_CACHE_HOME:-$HOME/.cache}/loraforge/models.
fn model_cache() -> PathBuf {
    if let Ok(p) = std::env::var("LORAFORGE_MODEL_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
    base.join("loraforge").join("models")
}

/// Only the `chat` section of reference.json (serde skips the rest without building it).
#[derive(serde::Deserialize)]
struct Reference {
    chat: ChatRef,
}

#[derive(serde::Deserialize)]
struct ChatRef {
    conversation: Vec<Message>,
    rendered: String,
    rendered_gen: String,
}

#[test]
fn smollm2_gguf_template_matches_transformers() {
    let path = model_cache().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    // A missing fixture is a failure (CI fetches it in .ci/setup), not a skip.
    assert!(path.exists(), "{} missing: run models/fetch.sh smollm2", path.display());
    let g = GgufFile::open(&path).unwrap();
    let t = ChatTemplate::from_gguf(&g).unwrap().expect("SmolLM2 GGUF carries a chat template");
    assert_eq!(t.bos_token(), "<|im_start|>");
    assert_eq!(t.eos_token(), "<|im_end|>");

    let ref_path = common::fixtures_dir().join("smollm2-135m-instruct").join("reference.json");
    let text = std::fs::read_to_string(&ref_path).unwrap();
    let r: Reference = serde_json::from_str(&text).unwrap();
    let c = &r.chat;
    assert_eq!(t.render(&c.conversation, &no_gen()).unwrap(), c.rendered, "add_generation_prompt=false");
    assert_eq!(
        t.render(&c.conversation, &RenderOptions::generation()).unwrap(),
        c.rendered_gen,
        "add_generation_prompt=true"
    );

    // Without a system message the template inserts its default one (HF's text has no final period).
    let out = t.render(&c.conversation[1..], &no_gen()).unwrap();
    assert!(out.starts_with(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
    ));

    // Spans of the fixture's one assistant turn: "Paris." + "<|im_end|>".
    let (full, spans) = t.render_with_spans(&c.conversation, &no_gen()).unwrap();
    assert_eq!(full, c.rendered);
    let got: Vec<&str> = spans.iter().map(|s| &full[s.clone()]).collect();
    assert_eq!(got, ["Paris.<|im_end|>"]);
}

#[test]
fn gemma3_gguf_has_no_template() {
    let path = model_cache().join("gemma-3-270m-q4_k_m.gguf");
    // A missing fixture is a failure (CI fetches it in .ci/setup), not a skip.
    assert!(path.exists(), "{} missing: run models/fetch.sh gemma3", path.display());
    let g = GgufFile::open(&path).unwrap();
    assert!(ChatTemplate::from_gguf(&g).unwrap().is_none());
}

/// user, assistant, user, assistant, user — optionally after a system message.
fn conversation(system: bool) -> Vec<Message> {
    let mut m = Vec::new();
    if system {
        m.push(Message::system("SYS-TEXT"));
    }
    m.push(Message::user("U1-TEXT"));
    m.push(Message::assistant("A1-TEXT"));
    m.push(Message::user("U2-TEXT"));
    m.push(Message::assistant("A2-TEXT"));
    m.push(Message::user("U3-TEXT"));
    m
}

/// Exact expected renderings of the 3-turn conversation, spelled out from LLaMA-Factory's formats
/// (data/template.py) with each family's conventional BOS/EOS: (name, with system, without system, generation prompt).
fn expected() -> Vec<(&'static str, String, String, &'static str)> {
    let chatml = |sys: &str| {
        format!(
            "{sys}<|im_start|>user\nU1-TEXT<|im_end|>\n<|im_start|>assistant\nA1-TEXT<|im_end|>\n\
             <|im_start|>user\nU2-TEXT<|im_end|>\n<|im_start|>assistant\nA2-TEXT<|im_end|>\n<|im_start|>user\nU3-TEXT<|im_end|>\n"
        )
    };
    let chatml_sys = |s: &str| format!("<|im_start|>system\n{s}<|im_end|>\n");
    let llama3 = |sys: &str| {
        format!(
            "<|begin_of_text|>{sys}<|start_header_id|>user<|end_header_id|>\n\nU1-TEXT<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nA1-TEXT<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nU2-TEXT<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nA2-TEXT<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nU3-TEXT<|eot_id|>"
        )
    };
    let llama2 = |sys: &str| {
        format!(
            "<s>[INST] {sys}U1-TEXT [/INST]A1-TEXT</s><s>[INST] U2-TEXT [/INST]A2-TEXT</s><s>[INST] U3-TEXT [/INST]"
        )
    };
    let mistral = |sys: &str| {
        format!("<s>[INST] {sys}U1-TEXT[/INST] A1-TEXT</s>[INST] U2-TEXT[/INST] A2-TEXT</s>[INST] U3-TEXT[/INST]")
    };
    let gemma = |sys: &str| {
        format!(
            "<bos><start_of_turn>user\n{sys}U1-TEXT<end_of_turn>\n<start_of_turn>model\nA1-TEXT<end_of_turn>\n\
             <start_of_turn>user\nU2-TEXT<end_of_turn>\n<start_of_turn>model\nA2-TEXT<end_of_turn>\n\
             <start_of_turn>user\nU3-TEXT<end_of_turn>\n"
        )
    };
    let phi = |sys: &str| {
        format!(
            "{sys}<|user|>\nU1-TEXT<|end|>\n<|assistant|>\nA1-TEXT<|end|>\n<|user|>\nU2-TEXT<|end|>\n\
             <|assistant|>\nA2-TEXT<|end|>\n<|user|>\nU3-TEXT<|end|>\n"
        )
    };
    let alpaca = |sys: &str| {
        format!(
            "{sys}### Instruction:\nU1-TEXT\n\n### Response:\nA1-TEXT</s>\n\n### Instruction:\nU2-TEXT\n\n\
             ### Response:\nA2-TEXT</s>\n\n### Instruction:\nU3-TEXT\n\n"
        )
    };
    let alpaca_default =
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n";
    let vicuna = |sys: &str| {
        format!("{sys}USER: U1-TEXT ASSISTANT:A1-TEXT</s>USER: U2-TEXT ASSISTANT:A2-TEXT</s>USER: U3-TEXT ")
    };
    let vicuna_default = "A chat between a curious user and an artificial intelligence assistant. \
                          The assistant gives helpful, detailed, and polite answers to the user's questions.";
    let default = |sys: &str| {
        format!("{sys}Human: U1-TEXT</s>\nAssistant:A1-TEXT</s>\nHuman: U2-TEXT</s>\nAssistant:A2-TEXT</s>\nHuman: U3-TEXT</s>\n")
    };
    let qwen_default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
    let smol_default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face.";
    vec![
        ("alpaca", alpaca("SYS-TEXT"), alpaca(alpaca_default), "### Response:\n"),
        ("chatml", chatml(&chatml_sys("SYS-TEXT")), chatml(""), "<|im_start|>assistant\n"),
        ("default", default("System: SYS-TEXT</s>\n"), default(""), "Assistant:"),
        (
            "empty",
            "SYS-TEXTU1-TEXTA1-TEXTU2-TEXTA2-TEXTU3-TEXT".into(),
            "U1-TEXTA1-TEXTU2-TEXTA2-TEXTU3-TEXT".into(),
            "",
        ),
        ("gemma", gemma("SYS-TEXT\n\n"), gemma(""), "<start_of_turn>model\n"),
        ("gemma3", gemma("SYS-TEXT\n\n"), gemma(""), "<start_of_turn>model\n"),
        ("llama2", llama2("<<SYS>>\nSYS-TEXT\n<</SYS>>\n\n"), llama2(""), ""),
        (
            "llama3",
            llama3("<|start_header_id|>system<|end_header_id|>\n\nSYS-TEXT<|eot_id|>"),
            llama3(""),
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        ("mistral", mistral("SYS-TEXT\n\n"), mistral(""), ""),
        ("phi", phi("<|system|>\nSYS-TEXT<|end|>\n"), phi(""), "<|assistant|>\n"),
        ("qwen", chatml(&chatml_sys("SYS-TEXT")), chatml(&chatml_sys(qwen_default)), "<|im_start|>assistant\n"),
        ("smollm2", chatml(&chatml_sys("SYS-TEXT")), chatml(&chatml_sys(smol_default)), "<|im_start|>assistant\n"),
        ("vicuna", vicuna("SYS-TEXT"), vicuna(vicuna_default), "ASSISTANT:"),
    ]
}

#[test]
fn every_builtin_renders_three_turns_with_and_without_system() {
    let table = expected();
    let names: Vec<&str> = table.iter().map(|e| e.0).collect();
    assert_eq!(names, builtin_names(), "every built-in has an expected rendering");
    for (name, with_sys, without_sys, gen) in table {
        let t = ChatTemplate::builtin(name).unwrap();
        assert_eq!(t.render(&conversation(true), &no_gen()).unwrap(), with_sys, "{name} with system");
        assert_eq!(t.render(&conversation(false), &no_gen()).unwrap(), without_sys, "{name} without system");
        let g = t.render(&conversation(true), &RenderOptions::generation()).unwrap();
        assert_eq!(g, format!("{with_sys}{gen}"), "{name} generation prompt");
    }
}

#[test]
fn builtin_special_tokens_can_be_replaced() {
    let t = ChatTemplate::builtin("llama2").unwrap().with_special_tokens("<BOS>", "<EOS>");
    let out = t.render(&conversation(false)[..2], &no_gen()).unwrap();
    assert_eq!(out, "<BOS>[INST] U1-TEXT [/INST]A1-TEXT<EOS>");
}

#[test]
fn builtin_unknown_name_lists_known_and_suggests_nearest() {
    let err = ChatTemplate::builtin("lama3").unwrap_err().to_string();
    assert!(err.contains("`lama3`") && err.contains("did you mean `llama3`"), "{err}");
    for n in builtin_names() {
        assert!(err.contains(n), "{err} lists {n}");
    }
}

#[test]
fn builtin_rejects_roles_it_cannot_render() {
    let t = ChatTemplate::builtin("llama3").unwrap();
    let msgs = [Message::user("u"), Message::new("tool", "{}")];
    let err = t.render(&msgs, &no_gen()).unwrap_err().to_string();
    assert!(err.contains("unsupported role tool"), "{err}");
    let msgs = [Message::user("u"), Message::system("late")];
    let err = t.render(&msgs, &no_gen()).unwrap_err().to_string();
    assert!(err.contains("only allowed first"), "{err}");
}

/// The end-of-turn marker each built-in writes after assistant content, and what it puts before it
/// inside the turn (mistral's leading space). The spans must be exactly prefix + content + marker.
fn assistant_wrapper(name: &str) -> (&'static str, &'static str) {
    match name {
        "chatml" | "qwen" | "smollm2" => ("", "<|im_end|>"),
        "llama3" => ("", "<|eot_id|>"),
        "gemma" | "gemma3" => ("", "<end_of_turn>"),
        "phi" => ("", "<|end|>"),
        "mistral" => (" ", "</s>"),
        "llama2" | "alpaca" | "vicuna" | "default" => ("", "</s>"),
        "empty" => ("", ""),
        other => panic!("no wrapper for {other}"),
    }
}

#[test]
fn assistant_spans_cover_content_and_end_of_turn_only() {
    // Content with leading/trailing whitespace and a newline: the span must keep it whole.
    let mut msgs = conversation(true);
    msgs.push(Message::assistant("A3 ends with space and newline \n"));
    for name in builtin_names() {
        let t = ChatTemplate::builtin(name).unwrap();
        let (full, spans) = t.render_with_spans(&msgs, &no_gen()).unwrap();
        assert_eq!(full, t.render(&msgs, &no_gen()).unwrap(), "{name}: same text as render");
        let (pre, marker) = assistant_wrapper(name);
        let contents: Vec<&str> = msgs.iter().filter(|m| m.role == "assistant").map(|m| m.content.as_str()).collect();
        assert_eq!(spans.len(), contents.len(), "{name}: one span per assistant message");
        for (span, content) in spans.iter().zip(&contents) {
            assert_eq!(&full[span.clone()], format!("{pre}{content}{marker}"), "{name}");
        }
        // Spans are ordered and nothing outside them is assistant content.
        assert!(spans.windows(2).all(|w| w[0].end <= w[1].start), "{name}: ordered");
        let mut outside = full.clone();
        for s in spans.iter().rev() {
            outside.replace_range(s.clone(), "|");
        }
        assert!(!outside.contains("A1-TEXT") && !outside.contains("A2-TEXT"), "{name}: {outside:?}");
    }
}

#[test]
fn assistant_spans_exact_for_chatml() {
    let t = ChatTemplate::builtin("chatml").unwrap();
    let (full, spans) = t.render_with_spans(&conversation(true)[..5], &no_gen()).unwrap();
    let got: Vec<&str> = spans.iter().map(|s| &full[s.clone()]).collect();
    assert_eq!(got, ["A1-TEXT<|im_end|>", "A2-TEXT<|im_end|>"]);
    // What precedes each span is exactly the generation prompt, what follows is the separator newline.
    for s in &spans {
        assert!(full[..s.start].ends_with("<|im_start|>assistant\n"));
        assert!(full[s.end..].starts_with("\n"));
    }
}

#[test]
fn assistant_spans_reject_template_whose_prefix_is_not_a_prefix() {
    // Renders the last assistant message differently from earlier ones: a prefix of the conversation
    // is not a prefix of the whole, so spans cannot be derived by diffing.
    let src = "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}[old]{% endif %}\
               {{ m.role }}: {{ m.content }}\n{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let msgs = [Message::user("u1"), Message::assistant("a1"), Message::user("u2"), Message::assistant("a2")];
    let err = t.render_with_spans(&msgs, &no_gen()).unwrap_err().to_string();
    assert!(err.contains("assistant message 1") && err.contains("not a prefix"), "{err}");

    // A generation prompt that differs from the assistant header (a `<think>` only in the prompt).
    let src = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}\
               {% if add_generation_prompt %}<assistant><think>{% endif %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let err = t.render_with_spans(&msgs, &no_gen()).unwrap_err().to_string();
    assert!(err.contains("assistant message 1") && err.contains("generation prompt"), "{err}");
}

#[test]
fn raise_exception_is_an_error_with_the_message() {
    let src = "{% for m in messages %}\n{% if m.role == 'tool' %}\n{{ raise_exception('Tool role is not supported by this model') }}\n{% endif %}\n{{ m.content }}{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(t.render(&[Message::user("hi")], &no_gen()).unwrap(), "hi");
    let err = t.render(&[Message::new("tool", "x")], &no_gen()).unwrap_err().to_string();
    assert!(err.contains("Tool role is not supported by this model"), "{err}");
    assert!(err.contains("chat_template") && err.contains("line 3"), "names template and line: {err}");
}

#[test]
fn malformed_template_is_an_error_naming_template_and_line() {
    let src = "{% for m in messages %}\n{{ m.content }\n{% endfor %}";
    let err = ChatTemplate::with_name("broken.jinja", src, "", "").unwrap_err().to_string();
    assert!(err.contains("broken.jinja") && err.contains("line 2") && err.contains("syntax error"), "{err}");
    let err = ChatTemplate::new("{% if messages %}never closed", "", "").unwrap_err().to_string();
    assert!(err.contains("syntax error"), "{err}");
    // A runtime error (unknown filter) is an Err too, not a panic.
    let t = ChatTemplate::new("{{ messages | no_such_filter }}", "", "");
    let err = match t {
        Ok(t) => t.render(&[], &no_gen()).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no_such_filter") || err.contains("unknown filter"), "{err}");
}

#[test]
fn tojson_matches_python_json_dumps() {
    let t = ChatTemplate::new(
        "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(ensure_ascii=true) }}|{{ s | tojson }}",
        "",
        "",
    )
    .unwrap();
    let mut opts = no_gen();
    opts.extra.insert("x".into(), serde_json::json!({"e": {}, "n": [1, 2.5, true, null], "name": "café ☕ 日本"}));
    opts.extra.insert("s".into(), serde_json::json!("quote \" backslash \\ tab \t nl \n ctl \u{1} <html>"));
    let out = t.render(&[], &opts).unwrap();
    let parts: Vec<&str> = out.split('|').collect();
    // Expected strings are Python's json.dumps of the same object (checked with CPython 3 + Jinja2 3.1.6 in
    // transformers' environment), ensure_ascii=False by default as transformers sets it. Keys are written
    // already sorted so the test holds with or without serde_json's `preserve_order`.
    assert_eq!(parts[0], r#"{"e": {}, "n": [1, 2.5, true, null], "name": "café ☕ 日本"}"#);
    assert_eq!(
        parts[1],
        "{\n  \"e\": {},\n  \"n\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"name\": \"café ☕ 日本\"\n}"
    );
    assert_eq!(parts[2], r#"{"e": {}, "n": [1, 2.5, true, null], "name": "caf\u00e9 \u2615 \u65e5\u672c"}"#);
    assert_eq!(parts[3], r#""quote \" backslash \\ tab \t nl \n ctl \u0001 <html>""#);
}

#[test]
fn tools_and_extra_variables_reach_the_template() {
    let src = "{% if tools %}{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}\
               {% if enable_thinking is defined and not enable_thinking %}no-think{% endif %}\
               {{ messages[0].tool_calls[0].function.name if messages[0].tool_calls is defined else 'none' }}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let mut opts = no_gen();
    opts.tools = Some(serde_json::json!([{"type": "function", "function": {"name": "get_weather"}}]));
    opts.extra.insert("enable_thinking".into(), false.into());
    let mut m = Message::assistant("");
    m.tool_calls = Some(serde_json::json!([{"type": "function", "function": {"name": "lookup", "arguments": {}}}]));
    assert_eq!(t.render(&[m], &opts).unwrap(), "get_weather;no-thinklookup");
    assert_eq!(t.render(&[Message::user("u")], &no_gen()).unwrap(), "none");
}

#[test]
fn python_methods_loop_controls_and_generation_tag() {
    // Constructs HF templates use: str methods, dict .items()/.get(), {% break %}, namespace,
    // {% generation %}, and Jinja's dropping of one trailing newline (keep_trailing_newline=False).
    let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}\
               {% set ns.n = ns.n + 1 %}{{ m.content.strip().upper() }}{{ '+' if m.content.startswith(' h') }}\
               {% for k, v in {'a': 1}.items() %}{{ k }}{{ v }}{% endfor %}{{ {'b': 2}.get('c', 'd') }}\
               {{ m.content.split('l') | length }}|{% endfor %}{% generation %}{{ ns.n }}{% endgeneration %}\n";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let msgs = [Message::user(" hello "), Message::assistant("xyz"), Message::user("never")];
    assert_eq!(t.render(&msgs, &no_gen()).unwrap(), "HELLO+a1d3|XYZa1d1|2");
}

#[test]
fn trim_and_lstrip_blocks_as_transformers() {
    // With trim_blocks the newline after a block tag goes; with lstrip_blocks the indentation before one.
    let src = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(t.render(&[Message::user("a"), Message::user("b")], &no_gen()).unwrap(), "a\nb\n");
}

#[test]
fn strftime_now_gives_a_date() {
    let t = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}", "", "").unwrap();
    let out = t.render(&[], &no_gen()).unwrap();
    // "DD Mon YYYY": 2 digits, space, 3-letter month, space, 4-digit year.
    let b = out.as_bytes();
    assert_eq!(out.len(), 11, "{out}");
    assert!(b[..2].iter().all(u8::is_ascii_digit) && b[2] == b' ' && b[6] == b' ', "{out}");
    assert!(b[7..].iter().all(u8::is_ascii_digit), "{out}");
}
