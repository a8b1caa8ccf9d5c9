//! `loraforge chat`: multi-turn chat with the model's own template (or a built-in one), streaming
//! tokens as they are generated. One-shot with `--prompt`, else interactive on stdin (an empty
//! line or end of input quits, `/reset` clears the history).

use super::session;
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateConfig};
use crate::tokenizer::chat::ChatTokenizer;
use crate::tokenizer::template::Message;
use std::io::{BufRead, Write};
use std::path::Path;

pub struct ChatArgs<'a> {
    pub model: &'a Path,
    pub adapter: Option<&'a Path>,
    pub template: Option<&'a str>,
    pub system: Option<&'a str>,
    pub prompt: Option<&'a str>,
    pub gen: GenerateConfig,
}

pub fn run<B: crate::backend::Backend>(be: &B, a: ChatArgs) -> Result<()> {
    let session::Loaded { model, tok, template, .. } = session::load(be, a.model, a.adapter, a.template)?;
    let template = template.ok_or_else(|| {
        Error::msg("the model carries no chat template: pass --template NAME (e.g. gemma, chatml, llama3)")
    })?;
    let mut gen = a.gen;
    gen.stop_ids = tok.stop_ids();
    gen.validate()?;
    let ct = ChatTokenizer::new(tok, template);
    let mut history: Vec<Message> = a.system.map(|t| vec![Message::system(t)]).unwrap_or_default();
    let reply = |history: &mut Vec<Message>, user: &str| -> Result<()> {
        history.push(Message::user(user));
        let ids = ct.encode_prompt(history)?;
        let mut stream = ct.tok.decode_stream(true);
        let mut out = std::io::stdout().lock();
        let stops = gen.stop_ids.clone();
        let new = generate(&model, &ids, &gen, &mut |id| {
            if let Some(t) = stream.step(id) {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            true
        })?;
        if let Some(t) = stream.finish() {
            let _ = out.write_all(t.as_bytes());
        }
        let _ = writeln!(out);
        let text_ids: Vec<u32> = new.into_iter().filter(|i| !stops.contains(i)).collect();
        history.push(Message::assistant(ct.tok.decode(&text_ids, true)));
        Ok(())
    };
    if let Some(p) = a.prompt {
        return reply(&mut history, p);
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| Error::io("<stdin>", e))?;
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        if line == "/reset" {
            history.retain(|m| m.role == "system");
            continue;
        }
        reply(&mut history, line)?;
    }
    Ok(())
}
