//! The `loraforge` binary as a user runs it: output on real models, clear errors and non-zero exit
//! codes on bad input, never a panic.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loraforge"))
}

fn model(file: &str) -> PathBuf {
    let dir = std::env::var("LORAFORGE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/loraforge/models"));
    let p = dir.join(file);
    assert!(p.exists(), "{} is missing: run models/fetch.sh first", p.display());
    p
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = bin().args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn info_describes_real_models() {
    let p = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (ok, out, err) = run(&["info", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("llama: 30 layers, hidden 576, 9 heads / 3 KV heads, head dim 64, FFN 1536, vocab 49152"),
        "{out}"
    );
    assert!(out.contains("Q4_1 ×210") && out.contains("Q8_0 ×1"), "{out}");
    assert!(out.contains("the model's own"), "{out}");
    assert!(out.contains("LoRA train"), "{out}");
    let p = model("gemma-3-270m-q4_k_m.gguf");
    let (ok, out, err) = run(&["info", p.to_str().unwrap(), "--seq", "1024"]);
    assert!(ok, "{err}");
    assert!(out.contains("gemma3: 18 layers") && out.contains("sliding window 512 on 5 of every 6 layers"), "{out}");
    assert!(out.contains("none in the file"), "{out}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let (ok, _, err) = run(&["info", "/definitely/not/here.gguf"]);
    assert!(!ok && err.starts_with("error: ") && err.contains("No such file"), "{err}");
    let dir = std::env::temp_dir().join(format!("lf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let (ok, _, err) = run(&["info", junk.to_str().unwrap()]);
    assert!(!ok && err.starts_with("error: ") && !err.contains("panicked"), "{err}");
    let (ok, _, err) = run(&["info", "x.gguf", "--device", "tpu"]);
    assert!(!ok && err.contains("unknown device `tpu`"), "{err}");
    let (ok, _, err) = run(&["info", "x.gguf", "--device", "cuda"]);
    assert!(!ok && err.contains("cuda"), "{err}");
    let (ok, _, err) = run(&["info"]);
    assert!(!ok && err.contains("give a model path"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn devices_lists_the_cpu() {
    let (ok, out, err) = run(&["info", "--devices"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("cpu    available:"), "{out}");
    assert!(out.contains("wgpu") && out.contains("cuda"), "{out}");
}

/// `loraforge logits` on the fixture's own prompts and conversation reproduces the fixture:
/// token ids and chat renderings exactly, last-position logits within 3e-4 (tests/end_to_end.rs),
/// the same top-1 token at every position, and the `reflogits/1` layout.
#[test]
fn logits_reproduces_the_smollm2_fixture() {
    check_logits_fixture("cpu");
}

/// The same through `--device wgpu` (the model's Q4_1 weights packed on the GPU, decoded in the
/// kernels): the same bounds as on the CPU. Skips with a message when no wgpu adapter may be used
/// (CI sets LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1 and runs it on lavapipe).
#[test]
fn logits_on_wgpu_reproduce_the_smollm2_fixture() {
    let (_, out, _) = run(&["info", "--devices"]);
    if !out.lines().any(|l| l.starts_with("wgpu   selected:")) {
        println!("SKIP: no usable wgpu adapter (set LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1):\n{out}");
        return;
    }
    check_logits_fixture("wgpu");
}

fn check_logits_fixture(device: &str) {
    let fixture: serde_json::Value = serde_json::from_reader(std::io::BufReader::new(
        std::fs::File::open(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/smollm2-135m-instruct/reference.json"),
        )
        .unwrap(),
    ))
    .unwrap();
    let prompts: Vec<serde_json::Value> = fixture["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] != "chat_gen")
        .map(|p| serde_json::json!({"name": p["name"], "text": p["text"], "add_special_tokens": p["add_special_tokens"]}))
        .collect();
    let dir = std::env::temp_dir().join(format!("lf-logits-{device}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pf = dir.join("prompts.json");
    let out = dir.join("out.json");
    std::fs::write(
        &pf,
        serde_json::to_vec(&serde_json::json!({"prompts": prompts, "conversation": fixture["chat"]["conversation"]}))
            .unwrap(),
    )
    .unwrap();
    let m = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (ok, _, err) = run(&[
        "logits",
        "--model",
        m.to_str().unwrap(),
        "--prompts",
        pf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        device,
    ]);
    assert!(ok, "{err}");
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(got["format"], "reflogits/1");
    for key in ["rendered", "rendered_gen", "token_ids", "token_ids_gen"] {
        assert_eq!(got["chat"][key], fixture["chat"][key], "chat.{key}");
    }
    let (gp, fp) = (got["prompts"].as_array().unwrap(), fixture["prompts"].as_array().unwrap());
    assert_eq!(gp.len(), fp.len());
    for f in fp {
        let g = gp.iter().find(|g| g["name"] == f["name"]).unwrap_or_else(|| panic!("missing {}", f["name"]));
        assert_eq!(g["token_ids"], f["token_ids"], "{}: token ids", f["name"]);
        let (a, b) = (g["last_logits"].as_array().unwrap(), f["last_logits"].as_array().unwrap());
        let err = a.iter().zip(b).map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs()).fold(0.0, f64::max);
        assert!(err <= 3e-4, "{}: last logits differ by {err}", f["name"]);
        assert_eq!(g["last_top5"]["ids"], f["last_top5"]["ids"], "{}: last top-5", f["name"]);
        let (gt, ft) = (g["positions"]["top5_ids"].as_array().unwrap(), f["positions"]["top5_ids"].as_array().unwrap());
        for (pos, (x, y)) in gt.iter().zip(ft).enumerate() {
            assert_eq!(x[0], y[0], "{}: top-1 at position {pos}", f["name"]);
        }
        // Per-position mean and std over the vocabulary (torch.std, unbiased).
        for stat in ["mean", "std"] {
            let (x, y) = (g["positions"][stat].as_array().unwrap(), f["positions"][stat].as_array().unwrap());
            for (a, b) in x.iter().zip(y) {
                assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-4, "{}: {stat}", f["name"]);
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn logits_bad_prompts_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("lf-logits-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pf = dir.join("p.json");
    std::fs::write(&pf, br#"{"prompts": [{"name": "a", "txt": "typo"}]}"#).unwrap();
    let m = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = dir.join("o.json");
    let (ok, _, err) = run(&[
        "logits",
        "--model",
        m.to_str().unwrap(),
        "--prompts",
        pf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("p.json") && err.contains("txt"), "{err}");
    assert!(!out.exists());
    // Gemma 3 has no template: a conversation needs --template.
    std::fs::write(&pf, br#"{"prompts": [], "conversation": [{"role": "user", "content": "hi"}]}"#).unwrap();
    let g = model("gemma-3-270m-q4_k_m.gguf");
    let (ok, _, err) = run(&[
        "logits",
        "--model",
        g.to_str().unwrap(),
        "--prompts",
        pf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--template"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn chat_answers_one_shot_and_multi_turn() {
    let m = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (ok, out, err) = run(&[
        "chat",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "20",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("Paris"), "{out}");
    // Interactive: two turns from stdin, then an empty line ends the session.
    use std::io::Write;
    let mut child = bin()
        .args([
            "chat",
            "--model",
            m.to_str().unwrap(),
            "--system",
            "You are a concise assistant.",
            "--max-new-tokens",
            "24",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"What is 2+2?\nAnd the capital of France?\n\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 2, "one reply per turn: {out}");
    // The history reaches the model: the second reply answers the second question.
    assert!(out.lines().filter(|l| !l.is_empty()).nth(1).unwrap().contains("Paris"), "{out}");
}

#[test]
fn chat_without_a_template_says_how_to_fix_it() {
    let g = model("gemma-3-270m-q4_k_m.gguf");
    let (ok, _, err) = run(&["chat", "--model", g.to_str().unwrap(), "--prompt", "hi"]);
    assert!(!ok && err.contains("--template"), "{err}");
    let (ok, _, err) = run(&["chat", "--model", g.to_str().unwrap(), "--template", "lama3", "--prompt", "hi"]);
    assert!(!ok && err.contains("llama3"), "{err}");
    let (ok, _, err) =
        run(&["chat", "--model", g.to_str().unwrap(), "--template", "gemma", "--prompt", "hi", "--top-p", "1.5"]);
    assert!(!ok && err.contains("top_p"), "{err}");
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loraforge-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The user's path through the product: `train` a LLaMA-Factory-style YAML (with overrides),
/// `plan` it, `export` the result as a merged GGUF and as a GGUF adapter, `info` and `chat` with
/// the exported model and with the adapter.
#[test]
fn train_plan_export_chat() {
    let m = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let dir = tmpdir("flow");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let out = dir.join("run");
    let yaml = dir.join("sft.yaml");
    std::fs::write(
        &yaml,
        format!(
            "model_name_or_path: {}\nstage: sft\nfinetuning_type: lora\nlora_target: q_proj,v_proj\n\
             dataset: demo_identity\ndataset_dir: {data}\ncutoff_len: 64\nmax_samples: 8\n\
             output_dir: {}\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-3\nnum_train_epochs: 1.0\n\
             logging_steps: 1\nflash_attn: auto\nreport_to: none\n",
            m.display(),
            out.display()
        ),
    )
    .unwrap();
    let y = yaml.to_str().unwrap();
    let (ok, stdout, err) = run(&["plan", y]);
    assert!(ok, "{err}");
    assert!(stdout.contains("activations") && stdout.contains("total"), "{stdout}");
    let (ok, _, err) = run(&["train", y, "max_steps=2", "--seed", "3"]);
    assert!(ok, "{err}");
    assert!(err.contains("note: `flash_attn` is ignored"), "ignored keys get a note: {err}");
    assert!(err.contains("done: 2 steps"), "{err}");
    assert!(out.join("adapter_model.safetensors").is_file());
    // A second run into the same output_dir is refused.
    let (ok, _, err) = run(&["train", y, "max_steps=1"]);
    assert!(!ok && err.contains("overwrite_output_dir"), "{err}");

    let export = |format: &str, extra: &str, name: &str| -> PathBuf {
        let e = dir.join(name);
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "model_name_or_path: {}\nadapter_name_or_path: {}\nfinetuning_type: lora\nexport_dir: {}\n\
                 export_format: {format}\n{extra}",
                m.display(),
                out.display(),
                e.display()
            ),
        )
        .unwrap();
        let (ok, stdout, err) = run(&["export", cfg.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(stdout.contains("wrote"), "{stdout}");
        e
    };
    let gguf_dir = export("gguf", "export_quant: q8_0\n", "gguf");
    let gguf = std::fs::read_dir(&gguf_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "gguf"))
        .expect("a .gguf file");
    assert!(gguf_dir.join("Modelfile").is_file());
    let adapter_dir = export("gguf_adapter", "", "adapter");
    assert!(std::fs::read_dir(&adapter_dir).unwrap().count() > 0);
    let (ok, stdout, err) = run(&["info", gguf.to_str().unwrap()]);
    assert!(ok && stdout.contains("Q8_0"), "{stdout}{err}");
    for args in [
        vec!["chat", "--model", gguf.to_str().unwrap(), "--prompt", "Who are you?", "--max-new-tokens", "4"],
        vec![
            "chat",
            "--model",
            m.to_str().unwrap(),
            "--adapter",
            out.to_str().unwrap(),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "4",
        ],
    ] {
        let (ok, stdout, err) = run(&args);
        assert!(ok, "{err}");
        assert!(!stdout.trim().is_empty(), "no reply: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_config_errors_are_clear() {
    let dir = tmpdir("errors");
    let yaml = dir.join("bad.yaml");
    std::fs::write(&yaml, "model_name_or_path: smollm2-135m\nlora_rnak: 8\noutput_dir: x\n").unwrap();
    let (ok, _, err) = run(&["train", yaml.to_str().unwrap()]);
    assert!(!ok && err.contains("lora_rank"), "unknown key suggests the nearest: {err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::write(&yaml, "model_name_or_path: smollm2-135m\nlearning_rate: fast\n").unwrap();
    let (ok, _, err) = run(&["train", yaml.to_str().unwrap()]);
    assert!(!ok && err.contains("learning_rate"), "{err}");
    let (ok, _, err) = run(&["train", dir.join("missing.yaml").to_str().unwrap()]);
    assert!(!ok && err.contains("missing.yaml"), "{err}");
    std::fs::write(
        &yaml,
        format!(
            "model_name_or_path: smollm2-135m\ndataset: nope\ndataset_dir: {}\noutput_dir: {}\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/data"),
            dir.join("o").display()
        ),
    )
    .unwrap();
    let (ok, _, err) = run(&["train", yaml.to_str().unwrap()]);
    assert!(!ok && err.contains("nope"), "{err}");
    // A run that does not fit the memory budget is refused before training, with advice.
    let (ok, _, err) =
        run(&["train", yaml.to_str().unwrap(), "dataset=demo_identity", "max_memory_gb=0.05", "max_steps=1"]);
    assert!(!ok && err.contains("available") && err.contains("try:"), "{err}");
    assert!(!dir.join("o").join("adapter_model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
