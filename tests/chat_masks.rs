//! Template-derived train masks on a real model: in a multi-turn conversation, exactly every
//! assistant turn's content and its end-of-turn token are trained, nothing else.

use loraforge::io::gguf::GgufFile;
use loraforge::tokenizer::chat::ChatTokenizer;
use loraforge::tokenizer::template::{ChatTemplate, Message};
use loraforge::tokenizer::Tokenizer;
use std::path::PathBuf;

fn gguf(file: &str) -> GgufFile {
    let dir = std::env::var("LORAFORGE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/loraforge/models"));
    let p = dir.join(file);
    assert!(p.exists(), "{} is missing: run models/fetch.sh first", p.display());
    GgufFile::open(p).unwrap()
}

fn conversation() -> Vec<Message> {
    vec![
        Message::system("You are terse."),
        Message::user("2 + 2?"),
        Message::assistant("4"),
        Message::user("And in words, with ümlauts and emoji 🎉?"),
        Message::assistant("Vier. 🎉"),
        Message::user("Thanks"),
        Message::assistant("You're welcome!\nBye."),
    ]
}

/// The trained runs of tokens, decoded.
fn trained_runs(ct: &ChatTokenizer, ids: &[u32], mask: &[bool]) -> Vec<String> {
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for (&id, &m) in ids.iter().zip(mask) {
        if m {
            cur.push(id);
        } else if !cur.is_empty() {
            runs.push(ct.tok.decode(&cur, false));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        runs.push(ct.tok.decode(&cur, false));
    }
    runs
}

#[test]
fn smollm2_masks_cover_each_assistant_turn_and_im_end() {
    let f = gguf("SmolLM2-135M-Instruct.Q4_1.gguf");
    let ct = ChatTokenizer::new(Tokenizer::from_gguf(&f).unwrap(), ChatTemplate::from_gguf(&f).unwrap().unwrap());
    let (ids, mask) = ct.encode_chat(&conversation(), None).unwrap();
    assert_eq!(ids.len(), mask.len());
    assert_eq!(
        trained_runs(&ct, &ids, &mask),
        vec!["4<|im_end|>", "Vier. 🎉<|im_end|>", "You're welcome!\nBye.<|im_end|>"]
    );
    // The whole sequence decodes to the template's rendering.
    let rendered = ct.template.render(&conversation(), &Default::default()).unwrap();
    assert_eq!(ct.tok.decode(&ids, false), rendered);
}

#[test]
fn builtin_gemma_template_on_gemma3_adds_one_bos() {
    let f = gguf("gemma-3-270m-q4_k_m.gguf");
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let bos = tok.bos_id().unwrap();
    let ct = ChatTokenizer::new(tok, ChatTemplate::builtin("gemma").unwrap());
    let conv: Vec<Message> = conversation().into_iter().skip(1).collect(); // gemma merges system; keep it plain
    let (ids, mask) = ct.encode_chat(&conv, None).unwrap();
    assert_eq!(ids[0], bos);
    assert_eq!(ids.iter().filter(|&&i| i == bos).count(), 1, "exactly one BOS");
    let runs = trained_runs(&ct, &ids, &mask);
    assert_eq!(runs.len(), 3);
    for (run, want) in runs.iter().zip(["4", "Vier. 🎉", "You're welcome!\nBye."]) {
        assert!(run.starts_with(want) && run.ends_with("<end_of_turn>"), "{run:?}");
    }
}
