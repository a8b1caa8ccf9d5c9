//! The data pipeline: formats, registry, template masks, truncation, packing isolation, loader
//! resume, streaming, errors, and the committed demo datasets.
//! Tests that tokenize use the SmolLM2-135M-Instruct fixture (ChatML template) and skip with a
//! message when it is missing.

use loraforge::data::demo;
use loraforge::data::formats::load_samples;
use loraforge::data::registry::{resolve, Formatting};
use loraforge::data::{
    collate, prepare, prepare_predict, DataOptions, DataStage, Example, Loader, Sample, IGNORE_INDEX,
};
use loraforge::io::gguf::GgufFile;
use loraforge::model::Batch;
use loraforge::tokenizer::chat::ChatTokenizer;
use loraforge::tokenizer::template::ChatTemplate;
use loraforge::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn smollm2() -> Option<ChatTokenizer> {
    let dir = std::env::var("LORAFORGE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/loraforge/models"));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.exists() {
        eprintln!("skipping: {} is missing (run models/fetch.sh)", p.display());
        return None;
    }
    let f = GgufFile::open(&p).unwrap();
    Some(ChatTokenizer::new(Tokenizer::from_gguf(&f).unwrap(), ChatTemplate::from_gguf(&f).unwrap().unwrap()))
}

/// A fresh scratch directory holding `files` (name, content).
fn scratch(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loraforge_data_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for (f, text) in files {
        std::fs::write(d.join(f), text).unwrap();
    }
    d
}

fn opts(dir: &Path, names: &[&str]) -> DataOptions {
    DataOptions {
        dataset: names.iter().map(|s| s.to_string()).collect(),
        dataset_dir: dir.to_path_buf(),
        cutoff_len: 512,
        ..Default::default()
    }
}

fn err_of<T>(r: loraforge::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

const INFO: &str = r#"{
  "alp": {"file_name": "alp.json", "columns": {"prompt": "instruction", "query": "input", "response": "output",
          "system": "system", "history": "history"}},
  "sg": {"file_name": "sg.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}},
  "oai": {"file_name": "oai.jsonl", "formatting": "sharegpt",
          "columns": {"messages": "messages"},
          "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                   "system_tag": "system"}},
  "pt": {"file_name": "pt.jsonl", "columns": {"prompt": "text"}},
  "hub": {"hf_hub_url": "someone/some_set"},
  "empty": {"file_name": "empty.jsonl"}
}"#;

const ALP: &str = r#"[
  {"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be exact.",
   "history": [["Hi", "Hello!"]]},
  {"instruction": "Say hi", "input": "", "output": "hi"}
]"#;

const SG: &str = concat!(
    r#"{"conversations": [{"from": "system", "value": "You are terse."}, {"from": "human", "value": "2 + 2?"}, {"from": "gpt", "value": "4"}, {"from": "human", "value": "In words?"}, {"from": "gpt", "value": "Four."}]}"#,
    "\n",
    r#"{"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{\"name\": \"w\", \"arguments\": {}}"}, {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "It is sunny."}], "tools": "[{\"name\": \"w\", \"description\": \"weather\"}]"}"#,
    "\n"
);

const OAI: &str = concat!(
    r#"{"messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]}"#,
    "\n"
);

const PT: &str =
    "{\"text\": \"The quick brown fox jumps over the lazy dog.\"}\n\n{\"text\": \"Packing joins texts.\"}\n";

fn fixture_dir(name: &str) -> PathBuf {
    scratch(
        name,
        &[
            ("dataset_info.json", INFO),
            ("alp.json", ALP),
            ("sg.jsonl", SG),
            ("oai.jsonl", OAI),
            ("pt.jsonl", PT),
            ("empty.jsonl", "\n"),
        ],
    )
}

fn roles(s: &Sample) -> Vec<String> {
    match s {
        Sample::Chat { messages, .. } => messages.iter().map(|m| m.role.clone()).collect(),
        Sample::Text(_) => vec!["text".into()],
    }
}

#[test]
fn each_format_parses() {
    let d = fixture_dir("formats");
    let alp = load_samples(&resolve(&d, "alp").unwrap(), DataStage::Sft, None).unwrap();
    assert_eq!(alp.len(), 2);
    let Sample::Chat { system, messages, .. } = &alp[0] else { panic!() };
    assert_eq!(system, "Be exact.");
    assert_eq!(roles(&alp[0]), ["user", "assistant", "user", "assistant"]);
    assert_eq!(messages[2].content, "Add\n2 and 3", "prompt\\nquery");
    assert_eq!(messages[3].content, "5");
    let Sample::Chat { messages, .. } = &alp[1] else { panic!() };
    assert_eq!(messages[0].content, "Say hi", "an empty input adds no newline");

    let sg = load_samples(&resolve(&d, "sg").unwrap(), DataStage::Sft, None).unwrap();
    let Sample::Chat { system, .. } = &sg[0] else { panic!() };
    assert_eq!(system, "You are terse.");
    assert_eq!(roles(&sg[0]), ["user", "assistant", "user", "assistant"]);
    // function_call is trained assistant output; observation becomes a tool turn; tools parsed.
    assert_eq!(roles(&sg[1]), ["user", "assistant", "tool", "assistant"]);
    let Sample::Chat { tools, .. } = &sg[1] else { panic!() };
    assert_eq!(tools.as_ref().unwrap()[0]["name"], "w");

    let oai = load_samples(&resolve(&d, "oai").unwrap(), DataStage::Sft, None).unwrap();
    let Sample::Chat { system, messages, .. } = &oai[0] else { panic!() };
    assert_eq!((system.as_str(), messages[1].content.as_str()), ("Sys", "A1"));

    let pt = load_samples(&resolve(&d, "pt").unwrap(), DataStage::Pt, None).unwrap();
    assert_eq!(
        pt,
        vec![
            Sample::Text("The quick brown fox jumps over the lazy dog.".into()),
            Sample::Text("Packing joins texts.".into())
        ]
    );
    // max_samples takes the first rows.
    assert_eq!(load_samples(&resolve(&d, "pt").unwrap(), DataStage::Pt, Some(1)).unwrap().len(), 1);

    // A bare path (not registered) works, its format guessed from the first row.
    let a = resolve(&d, d.join("oai.jsonl").to_str().unwrap()).unwrap();
    assert_eq!(a.formatting, Formatting::Sharegpt);
    assert_eq!(load_samples(&a, DataStage::Sft, None).unwrap(), oai);
}

#[test]
fn registry_errors_name_the_problem() {
    let d = fixture_dir("registry");
    let e = err_of(resolve(&d, "hub"));
    assert!(e.contains("`hub` is only on the Hugging Face hub") && e.contains("someone/some_set"), "{e}");
    assert!(e.contains("not available offline") && e.contains("file_name"), "{e}");
    let e = err_of(resolve(&d, "alpp"));
    assert!(e.contains("unknown dataset 'alpp'") && e.contains("Did you mean 'alp'?"), "{e}");
    let e = err_of(load_samples(&resolve(&d, "empty").unwrap(), DataStage::Sft, None));
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn bad_rows_report_file_and_row() {
    let cases: [(&str, &str, &str); 6] = [
        (
            "a.jsonl",
            "{\"instruction\": \"q\", \"output\": \"a\"}\n\n{\"instruction\": \"q\"}\n",
            "row 3: missing response",
        ),
        (
            "b.json",
            "[{\"instruction\": \"q\", \"output\": \"a\"}, {\"instruction\": 5, \"output\": \"a\"}]",
            "row 2: column \"instruction\" must be a string",
        ),
        ("c.jsonl", "{\"conversations\": []}\n", "row 1: empty conversation"),
        (
            "d.jsonl",
            "{\"conversations\": [{\"from\": \"gpt\", \"value\": \"a\"}, {\"from\": \"human\", \"value\": \"q\"}]}\n",
            "row 1: message 1: role \"gpt\" out of order",
        ),
        ("e.jsonl", "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}]}\n", "odd number of turns"),
        ("f.jsonl", "{\"instruction\": \"q\", \"output\": \"a\"}\nnot json\n", "row 2: not valid JSON"),
    ];
    let d = scratch("badrows", &cases.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>());
    for (file, _, want) in cases {
        let attr = resolve(&d, d.join(file).to_str().unwrap()).unwrap();
        let e = err_of(load_samples(&attr, DataStage::Sft, None));
        assert!(e.contains(file) && e.contains(want), "{file}: {e}");
    }
}

/// Decoded runs of trained labels.
fn trained_runs(ct: &ChatTokenizer, e: &Example) -> Vec<String> {
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for &l in e.labels.iter().chain([IGNORE_INDEX].iter()) {
        if l != IGNORE_INDEX {
            cur.push(l as u32);
        } else if !cur.is_empty() {
            runs.push(ct.tok.decode(&cur, false));
            cur.clear();
        }
    }
    runs
}

#[test]
fn multi_turn_mask_trains_each_assistant_turn() {
    let Some(ct) = smollm2() else { return };
    let d = fixture_dir("mask");
    let p = prepare(&opts(&d, &["sg"]), &ct).unwrap();
    assert_eq!(trained_runs(&ct, &p.train[0]), ["4<|im_end|>", "Four.<|im_end|>"]);
    // Tool call and final answer trained; observation not.
    let runs = trained_runs(&ct, &p.train[1]);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[0].contains("\"name\": \"w\"") && runs[1] == "It is sunny.<|im_end|>", "{runs:?}");
    assert_eq!(p.stats.rows, 2);
    assert_eq!(p.stats.examples, 2);
    assert_eq!(p.stats.trained_tokens, p.train.iter().map(|e| e.trained_tokens()).sum::<usize>());
    for e in &p.train {
        assert_eq!(e.positions, (0..e.len() as u32).collect::<Vec<_>>());
        // labels equal ids where trained
        assert!(e.labels.iter().zip(&e.input_ids).all(|(&l, &i)| l == IGNORE_INDEX || l == i as i32));
    }
}

#[test]
fn mask_history_and_train_on_prompt() {
    let Some(ct) = smollm2() else { return };
    let d = fixture_dir("history");
    let plain = prepare(&opts(&d, &["sg"]), &ct).unwrap();
    let hist = prepare(&DataOptions { mask_history: true, ..opts(&d, &["sg"]) }, &ct).unwrap();
    assert_eq!(trained_runs(&ct, &hist.train[0]), ["Four.<|im_end|>"]);
    assert_eq!(hist.train[0].input_ids, plain.train[0].input_ids, "same tokens, fewer trained");
    let top = prepare(&DataOptions { train_on_prompt: true, ..opts(&d, &["sg"]) }, &ct).unwrap();
    let e = &top.train[0];
    assert_eq!(e.input_ids, plain.train[0].input_ids);
    // Everything is trained: system, user turns, template markup (LLaMA-Factory labels the source with itself).
    assert!(e.labels.iter().zip(&e.input_ids).all(|(&l, &i)| l == i as i32), "{:?}", e.labels);
}

#[test]
fn truncation_keeps_the_response() {
    let Some(ct) = smollm2() else { return };
    let long = "word ".repeat(300);
    let rows = format!(
        "{{\"instruction\": \"{long}\", \"output\": \"The answer is 42.\"}}\n{{\"instruction\": \"short\", \"output\": \"ok\"}}\n"
    );
    let d = scratch("trunc", &[("t.jsonl", &rows)]);
    let path = d.join("t.jsonl");
    let o = DataOptions { cutoff_len: 64, ..opts(&d, &[path.to_str().unwrap()]) };
    let p = prepare(&o, &ct).unwrap();
    assert_eq!(p.stats.truncated, 1);
    assert_eq!(p.train[0].len(), 64);
    // The response (target shorter than half the budget) is kept whole; the prompt is cut.
    assert_eq!(trained_runs(&ct, &p.train[0]), ["The answer is 42.<|im_end|>"]);
    assert_eq!(trained_runs(&ct, &p.train[1]), ["ok<|im_end|>"]);

    // A cutoff so small that no response token survives: every example skipped → error.
    let e = err_of(prepare(&DataOptions { cutoff_len: 4, ..o.clone() }, &ct));
    assert!(e.contains("cutoff_len = 4 is too small"), "{e}");
}

/// Segment k of a neat-packed row, as (ids, targets, positions) after collate.
fn segment(b: &Batch, seg: u32) -> (Vec<u32>, Vec<i32>, Vec<u32>) {
    let s = b.segment_ids.as_ref().unwrap();
    let idx: Vec<usize> = (0..b.t).filter(|&i| s[i] == seg).collect();
    (
        idx.iter().map(|&i| b.ids[i]).collect(),
        idx.iter().map(|&i| b.targets[i]).collect(),
        idx.iter().map(|&i| b.positions[i]).collect(),
    )
}

#[test]
fn neat_packing_keeps_sequences_isolated() {
    let Some(ct) = smollm2() else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let base = DataOptions { cutoff_len: 256, ..opts(&dir, &["demo_identity"]) };
    let unpacked = prepare(&base, &ct).unwrap();
    let packed = prepare(&DataOptions { neat_packing: true, ..base.clone() }, &ct).unwrap();
    assert!(packed.train.len() < unpacked.train.len() / 2, "{} rows", packed.train.len());
    assert_eq!(packed.stats.trained_tokens, unpacked.stats.trained_tokens);
    let mut seen = 0;
    for row in &packed.train {
        assert!(row.len() <= 256);
        let b = collate(&[row], 0).unwrap();
        let nseg = *row.segment_ids.as_ref().unwrap().iter().max().unwrap();
        for k in 1..=nseg {
            let (ids, targets, pos) = segment(&b, k);
            // The unpacked example with these ids: same targets (shifted within the segment, -100
            // at its end) and positions from 0.
            let e = unpacked.train.iter().find(|e| e.input_ids == ids).expect("segment is an unpacked example");
            let u = collate(&[e], 0).unwrap();
            assert_eq!(targets, u.targets, "segment {k}");
            assert_eq!(pos, u.positions.to_vec(), "segment {k}");
            seen += 1;
        }
    }
    assert_eq!(seen, unpacked.train.len());
    // Plain packing: one sequence, positions 0..len, no segments.
    let plain = prepare(&DataOptions { packing: true, ..base }, &ct).unwrap();
    assert!(plain.train.iter().all(|r| r.segment_ids.is_none() && r.positions[r.len() - 1] as usize == r.len() - 1));
}

#[test]
fn collate_pads_and_shifts() {
    let a = Example::new(vec![1, 2, 3], vec![-100, 2, 3]);
    let mut b = Example::new(vec![4, 5, 6, 7, 8], vec![-100, 5, -100, 7, 8]);
    b.segment_ids = Some(vec![1, 1, 2, 2, 2]);
    b.positions = vec![0, 1, 0, 1, 2];
    let batch = collate(&[&a, &b], 9).unwrap();
    assert_eq!((batch.b, batch.t), (2, 5));
    assert_eq!(&batch.ids[..], &[1, 2, 3, 9, 9, 4, 5, 6, 7, 8]);
    assert_eq!(batch.targets, [2, 3, -100, -100, -100, 5, -100, 7, 8, -100]);
    assert_eq!(&batch.positions[..], &[0, 1, 2, 0, 0, 0, 1, 0, 1, 2]);
    assert_eq!(&batch.segment_ids.unwrap()[..], &[1, 1, 1, 0, 0, 1, 1, 2, 2, 2]);
    assert!(collate(&[], 0).is_err());
}

fn synthetic(n: usize) -> Vec<Example> {
    (0..n).map(|i| Example::trained((0..=(i % 5) as u32).map(|t| 100 * i as u32 + t).collect())).collect()
}

fn same(a: &Batch, b: &Batch) -> bool {
    a.ids == b.ids && a.targets == b.targets && a.positions == b.positions && a.segment_ids == b.segment_ids
}

#[test]
fn loader_epochs_and_exact_resume() {
    let n = 11; // prime: the last batch of each epoch is short
    let mut l = Loader::new(synthetic(n), 3, 7, 0);
    assert_eq!(l.batches_per_epoch(), Some(4));
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let b = l.next_batch().unwrap();
        firsts.extend((0..b.b).map(|r| b.ids[r * b.t] / 100));
    }
    firsts.sort();
    assert_eq!(firsts, (0..n as u32).collect::<Vec<_>>(), "epoch 0 visits each example once");
    assert_eq!(l.epoch_progress(), 1.0);
    for _ in 0..2 {
        l.next_batch().unwrap();
    }
    assert_eq!(l.position().epoch, 1);
    let saved = l.position();
    let json = serde_json::to_string(&saved).unwrap();
    let want: Vec<Batch> = (0..7).map(|_| l.next_batch().unwrap()).collect();
    let mut r = Loader::new(synthetic(n), 3, 7, 0);
    r.seek(&serde_json::from_str(&json).unwrap()).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert!(same(&r.next_batch().unwrap(), w), "batch {i} after resume differs");
    }
    // Another epoch has another order.
    let mut l2 = Loader::new(synthetic(n), n, 7, 0);
    let (e0, e1) = (l2.next_batch().unwrap(), l2.next_batch().unwrap());
    assert!(!same(&e0, &e1));
    assert!(Loader::new(Vec::new(), 2, 0, 0).next_batch().is_err());
}

#[test]
fn streaming_equals_prepare_and_resumes() {
    let Some(ct) = smollm2() else { return };
    let ct = Arc::new(ct);
    let d = fixture_dir("stream");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    for (o, bs) in [
        (DataOptions { cutoff_len: 128, ..opts(&d, &["sg", "oai"]) }, 2),
        (DataOptions { stage: DataStage::Pt, packing: true, cutoff_len: 16, ..opts(&data, &["demo_pretrain"]) }, 3),
        (
            DataOptions {
                stage: DataStage::Pt,
                cutoff_len: 32,
                max_samples: Some(5),
                ..opts(&data, &["demo_pretrain"])
            },
            2,
        ),
    ] {
        let p = prepare(&o, &ct).unwrap();
        let want: Vec<Batch> = p.train.chunks(bs).map(|c| collate(&c.iter().collect::<Vec<_>>(), 0).unwrap()).collect();
        let mut s = Loader::streaming(&o, ct.clone(), bs, 0).unwrap();
        assert_eq!(s.batches_per_epoch(), None);
        let mut positions = Vec::new();
        for epoch in 0..2 {
            for (i, w) in want.iter().enumerate() {
                positions.push(s.position());
                assert!(same(&s.next_batch().unwrap(), w), "{:?}: epoch {epoch} batch {i}", o.dataset);
            }
        }
        assert!(s.epoch_progress() > 1.0);
        // Resume from a mid-epoch position.
        let k = want.len() / 2 + want.len();
        let mut r = Loader::streaming(&o, ct.clone(), bs, 0).unwrap();
        r.seek(&positions[k]).unwrap();
        assert!(same(&r.next_batch().unwrap(), &want[k - want.len()]), "{:?}: resume", o.dataset);
    }
}

#[test]
fn predict_items_from_val_split() {
    let Some(ct) = smollm2() else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let o = DataOptions { val_size: 0.1, ..opts(&dir, &["demo_dates"]) };
    let items = prepare_predict(&o, &ct).unwrap();
    assert_eq!(items.len(), 40, "ceil(0.1 * 400)");
    let p = prepare(&o, &ct).unwrap();
    assert_eq!((p.train.len(), p.eval.len()), (360, 40));
    for it in &items {
        assert_eq!(it.reference.len(), 10);
        assert!(ct.tok.decode(&it.prompt_ids, false).ends_with("<|im_start|>assistant\n"));
    }
    // eval_dataset wins over val_size.
    let o = DataOptions { eval_dataset: vec!["demo_dates_eval".into()], ..o };
    assert_eq!(prepare_predict(&o, &ct).unwrap().len(), demo::DEMO_DATES_EVAL);
}

#[test]
fn demo_datasets_load() {
    let Some(ct) = smollm2() else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    for (name, rows) in [("demo_identity", 40), ("demo_chat", 30), ("demo_dates", 400), ("demo_dates_eval", 50)] {
        let p = prepare(&opts(&dir, &[name]), &ct).unwrap();
        assert_eq!((p.stats.rows, p.stats.skipped, p.stats.truncated), (rows, 0, 0), "{name}");
    }
    let o = DataOptions { stage: DataStage::Pt, packing: true, cutoff_len: 64, ..opts(&dir, &["demo_pretrain"]) };
    let p = prepare(&o, &ct).unwrap();
    assert!(p.train.len() > 5 && p.train.iter().all(|e| e.len() == 64));
}

#[test]
fn demo_dates_files_match_generator() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let (train, eval) = demo::demo_dates_json();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert!(read("demo_dates.json") == train, "data/demo_dates.json differs: run the ignored regenerate_demo_dates");
    assert!(read("demo_dates_eval.json") == eval, "data/demo_dates_eval.json differs");
}

/// `cargo test --test data regenerate_demo_dates -- --ignored` rewrites the demo_dates files.
#[test]
#[ignore]
fn regenerate_demo_dates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let (train, eval) = demo::demo_dates_json();
    std::fs::write(dir.join("demo_dates.json"), train).unwrap();
    std::fs::write(dir.join("demo_dates_eval.json"), eval).unwrap();
}

/// A 2-layer random model (vocab 29) with nonzero LoRA B, as tests/train_step.rs builds it.
fn tiny_model() -> loraforge::model::Transformer<loraforge::CpuBackend> {
    use loraforge::backend::cpu::rope::{RopeConfig, RopeLayout, RopeScaling};
    use loraforge::lora::LoraConfig;
    use loraforge::model::{BlockConfig, FrozenStore, Transformer};
    use loraforge::rng::Rng;
    let cfg = BlockConfig {
        hidden_size: 32,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        intermediate_size: 48,
        rms_norm_eps: 1e-5,
        norm_add_one: false,
        gelu: false,
        rope: RopeConfig {
            head_dim: 8,
            rotary_dim: 8,
            theta: 10000.0,
            layout: RopeLayout::HalfSplit,
            scaling: RopeScaling::None,
        },
        attn_scale: 8f32.powf(-0.5),
        sliding_window: None,
        attn_softcap: None,
        qk_norm: false,
        post_norms: false,
    };
    let lora = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let be = loraforge::CpuBackend::new();
    let mut m = Transformer::random(&be, &cfg, 2, 29, &targets, &lora, &FrozenStore::Dense, &mut Rng::new(0)).unwrap();
    let mut rng = Rng::new(1);
    for p in m.params_mut().unwrap() {
        if p.name.ends_with("lora_B") {
            let s = p.storage_mut().unwrap().as_mut_slice();
            rng.fill_normal(s, 0.05);
        }
    }
    m
}

#[test]
fn neat_packed_row_gives_each_sequence_its_own_loss() {
    use loraforge::data::process::pack;
    use loraforge::rng::Rng;
    let model = tiny_model();
    let mut rng = Rng::new(3);
    // Lengths 1 and primes; prompt tokens (first third) untrained, as sft examples are.
    let examples: Vec<Example> = [7usize, 1, 13, 5, 11]
        .iter()
        .map(|&n| {
            let ids: Vec<u32> = (0..n).map(|_| rng.below(29) as u32).collect();
            let labels =
                ids.iter().enumerate().map(|(i, &x)| if i < n / 3 { IGNORE_INDEX } else { x as i32 }).collect();
            Example::new(ids, labels)
        })
        .collect();
    let packed = pack(examples.clone(), 64, true);
    assert_eq!(packed.len(), 1, "all fit one row");
    let row = &packed[0];
    let logits = model.logits(&collate(&[row], 0).unwrap()).unwrap(); // (T, V)
    let mut tape = loraforge::Tape::no_grad();
    let packed_loss = model.loss(&mut tape, &collate(&[row], 0).unwrap(), false, None).unwrap();
    let (mut sum, mut count) = (0.0f64, 0usize);
    let mut at = 0;
    for k in 1..=examples.len() as u32 {
        let n = row.segment_ids.as_ref().unwrap().iter().filter(|&&s| s == k).count();
        let e = examples.iter().find(|e| e.input_ids[..] == row.input_ids[at..at + n]).unwrap();
        let b = collate(&[e], 0).unwrap();
        let want = model.logits(&b).unwrap();
        let got = &logits[at * 29..(at + n) * 29];
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        // f32 forward of the same tokens; only the row layout differs. Measured <= 6.7e-8; allow 1e-5.
        assert!(err <= 1e-5, "segment {k}: max |logit diff| {err}");
        let l = model.loss(&mut tape, &b, false, None).unwrap();
        sum += l.loss_sum;
        count += l.count;
        at += n;
    }
    assert_eq!(packed_loss.count, count);
    let rel = (packed_loss.loss_sum - sum).abs() / sum;
    // f64 sums of f32 losses: measured rel 1.1e-9; allow 1e-5.
    assert!(rel < 1e-5, "packed loss sum {} vs per-example {sum}", packed_loss.loss_sum);
    // Without segments the sequences see each other: the logits change (this test can fail).
    let mut leaky = row.clone();
    leaky.segment_ids = None;
    let leak = model.logits(&collate(&[&leaky], 0).unwrap()).unwrap();
    assert!(leak.iter().zip(&logits).any(|(a, b)| (a - b).abs() > 1e-3));
}
