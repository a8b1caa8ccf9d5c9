//! `loraforge logits`: the `reflogits/1` JSON of ../shared/fixtures/README.md for a prompts file, so
//! loraforge can be compared with any other implementation.
//!
//! Prompts file: `{"prompts": [{"name", "text", "add_special_tokens"?: bool = true}],
//!                 "conversation"?: [{"role", "content"}]}`.
//! The conversation's rendering with the generation prompt is added as the prompt `chat_gen`
//! (tokenized without added special tokens, as the template writes them).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Batch;
use crate::tokenizer::template::{Message, RenderOptions};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptsFile {
    prompts: Vec<PromptIn>,
    #[serde(default)]
    conversation: Vec<Message>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptIn {
    name: String,
    text: String,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

/// Top-k (ids, values) by value, descending; ties by lower id.
fn top_k(v: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let k = k.min(v.len());
    idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    let vals = idx.iter().map(|&i| v[i]).collect();
    (idx, vals)
}

fn case<B: Backend>(
    model: &crate::model::Transformer<B>,
    v: usize,
    name: &str,
    text: &str,
    add: bool,
    ids: Vec<u32>,
) -> Result<Value> {
    if ids.is_empty() {
        return Err(Error::msg(format!("prompt `{name}` tokenizes to no tokens")));
    }
    let z = model.logits(&Batch::single(&ids))?;
    let t = ids.len();
    let (mut mean, mut std, mut t5i, mut t5l) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in 0..t {
        let row = &z[p * v..(p + 1) * v];
        let m = row.iter().map(|&x| x as f64).sum::<f64>() / v as f64;
        // torch.std is the unbiased (n - 1) estimate.
        let s = (row.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (v as f64 - 1.0).max(1.0)).sqrt();
        mean.push(m);
        std.push(s);
        let (i, l) = top_k(row, 5);
        t5i.push(i);
        t5l.push(l);
    }
    let last = &z[(t - 1) * v..];
    let (li, ll) = top_k(last, 5);
    Ok(json!({
        "name": name, "text": text, "add_special_tokens": add, "token_ids": ids,
        "last_logits": last, "last_top5": {"ids": li, "logits": ll},
        "positions": {"mean": mean, "std": std, "top5_ids": t5i, "top5_logits": t5l},
    }))
}

pub fn run<B: Backend>(
    be: &B,
    model_path: &Path,
    adapter: Option<&Path>,
    prompts: &Path,
    out: &Path,
    template: Option<&str>,
) -> Result<()> {
    let text = std::fs::read_to_string(prompts).map_err(|e| Error::io(prompts, e))?;
    let pf: PromptsFile = serde_json::from_str(&text)
        .map_err(|e| Error::Format { path: prompts.display().to_string(), msg: e.to_string() })?;
    let super::session::Loaded { model, cfg, tok, template: tmpl } =
        super::session::load(be, model_path, adapter, template)?;
    let mut cases = Vec::new();
    for p in &pf.prompts {
        let ids = tok.encode(&p.text, p.add_special_tokens)?;
        cases.push(case(&model, cfg.vocab_size, &p.name, &p.text, p.add_special_tokens, ids)?);
    }
    let mut doc = json!({
        "format": "reflogits/1",
        "meta": {"tool": "loraforge logits", "version": env!("CARGO_PKG_VERSION"), "dtype": "float32",
                 "model": model_path.display().to_string(), "config": {
                    "model_type": cfg.arch, "num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
                    "intermediate_size": cfg.intermediate_size, "num_attention_heads": cfg.num_attention_heads,
                    "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
                    "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
                    "tie_word_embeddings": cfg.tie_word_embeddings}},
    });
    if !pf.conversation.is_empty() {
        let tmpl = tmpl.ok_or_else(|| {
            Error::msg(
                "the prompts file has a conversation but the model carries no chat template: pass --template NAME",
            )
        })?;
        let rendered = tmpl.render(&pf.conversation, &RenderOptions::default())?;
        let rendered_gen = tmpl.render(&pf.conversation, &RenderOptions::generation())?;
        let ids = tok.encode(&rendered, false)?;
        let ids_gen = tok.encode(&rendered_gen, false)?;
        cases.push(case(&model, cfg.vocab_size, "chat_gen", &rendered_gen, false, ids_gen.clone())?);
        doc["chat"] = json!({"conversation": pf.conversation, "rendered": rendered, "rendered_gen": rendered_gen,
                             "token_ids": ids, "token_ids_gen": ids_gen});
    }
    doc["prompts"] = Value::Array(cases);
    let tmp = out.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&doc)?).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    eprintln!("wrote {} ({} prompts)", out.display(), doc["prompts"].as_array().map_or(0, |a| a.len()));
    Ok(())
}
