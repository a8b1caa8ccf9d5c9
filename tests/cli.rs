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
