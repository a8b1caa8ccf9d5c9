//! Tests for what a training run writes besides the adapter: trainer_log.jsonl, trainer_state.json,
//! {split}_results.json / all_results.json, PNG loss plots, the progress bar, BLEU/ROUGE, checkpoint dirs.
//! Reference values from Python are hard-coded with the snippet that produced them (nltk 3.10.4,
//! rouge-chinese 1.0.3, CPython 3.11 json/timedelta).

use loraforge::train::checkpoint::*;
use loraforge::train::log::*;
use loraforge::train::metrics::*;
use loraforge::train::plot::*;
use loraforge::train::progress::*;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// A fresh empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("loraforge-runout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn assert_near(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} (tol {tol})");
}

// ---------------------------------------------------------------- log.rs

/// The exact line LLaMA-Factory's LogCallback writes for the same values:
/// ```python
/// logs = dict(current_steps=10, total_steps=100, loss=1.2345, eval_loss=None, predict_loss=None, reward=None,
///             accuracy=None, lr=9.8e-05, epoch=0.33, percentage=round(10/100*100, 2),
///             elapsed_time=str(timedelta(seconds=int(65.7))), remaining_time=str(timedelta(seconds=int(591.3))))
/// logs["throughput"] = round(12345 / 65.7, 2); logs["total_tokens"] = 12345
/// print(json.dumps({k: v for k, v in logs.items() if v is not None}))
/// ```
const LLAMA_FACTORY_LINE: &str = r#"{"current_steps": 10, "total_steps": 100, "loss": 1.2345, "lr": 9.8e-05, "epoch": 0.33, "percentage": 10.0, "elapsed_time": "0:01:05", "remaining_time": "0:09:51", "throughput": 187.9, "total_tokens": 12345}"#;

#[test]
fn trainer_log_line_matches_llama_factory() {
    // with_timing: remaining = (100 - 10) * 65.7 / 10 = 591.3 s -> "0:09:51"
    let mut r = LogRecord::with_timing(10, 100, 65.7);
    r.loss = Some(1.2345);
    r.lr = Some(9.8e-05);
    r.epoch = Some(0.33);
    r.throughput = Some(round_to(12345.0 / 65.7, 2));
    r.total_tokens = Some(12345);
    assert_eq!(r.to_json_line(), LLAMA_FACTORY_LINE);

    let dir = TempDir::new("log-line");
    let mut log = TrainerLog::open(dir.path(), false).unwrap();
    log.append(&r).unwrap();
    let text = std::fs::read_to_string(dir.path().join("trainer_log.jsonl")).unwrap();
    assert_eq!(text, format!("{LLAMA_FACTORY_LINE}\n"));
    // It reads back into the same record.
    assert_eq!(TrainerLog::read(dir.path()).unwrap(), vec![r]);
}

#[test]
fn trainer_log_non_finite_and_grad_norm() {
    let mut r = LogRecord::with_timing(0, 0, 0.0);
    r.loss = Some(f64::NAN);
    r.grad_norm = Some(0.5);
    // Python's json.dumps would write the invalid token NaN; we write null. total 0 -> percentage 100.
    assert_eq!(
        r.to_json_line(),
        r#"{"current_steps": 0, "total_steps": 0, "loss": null, "percentage": 100.0, "elapsed_time": "0:00:00", "remaining_time": "0:00:00", "grad_norm": 0.5}"#
    );
}

#[test]
fn format_hms_like_timedelta() {
    // str(timedelta(seconds=int(s))) for s = 65.9, 0, 3599.99, 43200, 90061.9, 2*86400+5
    assert_eq!(format_hms(65.9), "0:01:05");
    assert_eq!(format_hms(0.0), "0:00:00");
    assert_eq!(format_hms(3599.99), "0:59:59");
    assert_eq!(format_hms(43200.0), "12:00:00");
    assert_eq!(format_hms(90061.9), "1 day, 1:01:01");
    assert_eq!(format_hms(2.0 * 86400.0 + 5.0), "2 days, 0:00:05");
    assert_eq!(format_hms(-3.0), "0:00:00");
    assert_eq!(format_hms(f64::NAN), "0:00:00");
}

#[test]
fn python_float_repr_matches_cpython() {
    // [repr(x) for x in [1e16, 1.5e-7, 123.456, 1e22, 5e-324, 0.1+0.2, 100.0, 2.5e15, 1e-05, 0.0001, 9.8e-05]]
    let cases: [(f64, &str); 13] = [
        (1e16, "1e+16"),
        (1.5e-7, "1.5e-07"),
        (123.456, "123.456"),
        (1e22, "1e+22"),
        (5e-324, "5e-324"),
        (0.1 + 0.2, "0.30000000000000004"),
        (100.0, "100.0"),
        (2.5e15, "2500000000000000.0"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        (9.8e-05, "9.8e-05"),
        (-2.0, "-2.0"),
        (0.0, "0.0"),
    ];
    for (x, want) in cases {
        assert_eq!(python_float_repr(x), want, "repr({x:e})");
    }
}

fn record(step: usize) -> LogRecord {
    let mut r = LogRecord::with_timing(step, 10, step as f64);
    r.loss = Some(2.0 / step as f64);
    r
}

#[test]
fn trainer_log_truncate_after_and_resume() {
    let dir = TempDir::new("log-trunc");
    let mut log = TrainerLog::open(dir.path(), false).unwrap();
    for s in 1..=6 {
        log.append(&record(s)).unwrap();
    }
    drop(log);
    // A crash mid-write leaves a torn last line.
    let p = dir.path().join("trainer_log.jsonl");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(r#"{"current_steps": 7, "total_st"#);
    std::fs::write(&p, &text).unwrap();

    TrainerLog::truncate_after(dir.path(), 4).unwrap();
    let steps: Vec<usize> = TrainerLog::read(dir.path()).unwrap().iter().map(|r| r.current_steps).collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    assert!(std::fs::read_to_string(&p).unwrap().ends_with("}\n"));

    // Resume appends after step 4.
    let mut log = TrainerLog::open(dir.path(), true).unwrap();
    log.append(&record(5)).unwrap();
    let steps: Vec<usize> = TrainerLog::read(dir.path()).unwrap().iter().map(|r| r.current_steps).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    // resume = false starts over.
    drop(log);
    let mut log = TrainerLog::open(dir.path(), false).unwrap();
    log.append(&record(1)).unwrap();
    assert_eq!(TrainerLog::read(dir.path()).unwrap().len(), 1);
    // No temp files left behind by the atomic rewrite.
    assert_eq!(names_in(dir.path()), vec!["trainer_log.jsonl"]);
    // A missing file is fine.
    let empty = TempDir::new("log-trunc-empty");
    TrainerLog::truncate_after(empty.path(), 3).unwrap();
}

#[test]
fn trainer_log_open_resume_cuts_torn_tail() {
    let dir = TempDir::new("log-torn");
    let p = dir.path().join("trainer_log.jsonl");
    std::fs::write(&p, format!("{LLAMA_FACTORY_LINE}\n{{\"current_st")).unwrap();
    let mut log = TrainerLog::open(dir.path(), true).unwrap();
    log.append(&record(11)).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert_eq!(TrainerLog::read(dir.path()).unwrap().len(), 2, "{text}");
}

#[test]
fn trainer_state_round_trip_and_hf_format() {
    let dir = TempDir::new("state");
    let st = TrainerState {
        global_step: 20,
        max_steps: 100,
        num_train_epochs: 3.0,
        epoch: 0.6,
        logging_steps: 10,
        eval_steps: 50,
        save_steps: 20,
        train_batch_size: 2,
        num_input_tokens_seen: 4096,
        log_history: vec![
            json!({"loss": 2.5, "grad_norm": 1.25, "learning_rate": 9.8e-05, "epoch": 0.3, "step": 10}),
            json!({"loss": 2.0, "grad_norm": 0.75, "learning_rate": 9.5e-05, "epoch": 0.6, "step": 20}),
        ],
        best_metric: Some(1.5),
        best_model_checkpoint: Some("out/checkpoint-20".into()),
        total_flos: 1.5e12,
        ..Default::default()
    };
    let p = dir.path().join("trainer_state.json");
    st.save(&p).unwrap();
    assert_eq!(TrainerState::load(&p).unwrap(), st);
    let text = std::fs::read_to_string(&p).unwrap();
    // HF: json.dumps(asdict(state), indent=2, sort_keys=True) + "\n" -- keys sorted at every level.
    assert!(text.starts_with("{\n  \"best_global_step\": null,\n  \"best_metric\": 1.5,\n"), "{text}");
    assert!(text.contains("\"epoch\": 0.3,\n      \"grad_norm\": 1.25,\n      \"learning_rate\": 9.8e-05,"), "{text}");
    assert!(text.contains("\"is_world_process_zero\": true"));
    assert!(text.ends_with("}\n"));
    assert_eq!(names_in(dir.path()), vec!["trainer_state.json"]);

    // A file written by an older HF (fewer keys, nulls) still loads.
    let hf = r#"{"best_metric": null, "best_model_checkpoint": null, "epoch": null, "global_step": 0,
      "is_hyper_param_search": false, "is_local_process_zero": true, "is_world_process_zero": true,
      "log_history": [], "max_steps": 10, "num_train_epochs": 1, "total_flos": 0, "trial_name": null,
      "trial_params": null, "train_batch_size": null}"#;
    std::fs::write(&p, hf).unwrap();
    let st = TrainerState::load(&p).unwrap();
    assert_eq!((st.max_steps, st.epoch, st.num_train_epochs, st.train_batch_size), (10, 0.0, 1.0, 0));
    // Not JSON: an error, not a panic.
    std::fs::write(&p, "{ nope").unwrap();
    assert!(TrainerState::load(&p).is_err());
}

#[test]
fn save_metrics_merges_into_all_results() {
    let dir = TempDir::new("metrics");
    let mut train = Map::new();
    train.insert("train_loss".into(), json!(1.5));
    train.insert("epoch".into(), json!(3.0));
    save_metrics(dir.path(), "train", &train).unwrap();
    let mut eval = Map::new();
    eval.insert("eval_loss".into(), json!(1.75));
    eval.insert("epoch".into(), json!(3.0));
    save_metrics(dir.path(), "eval", &eval).unwrap();

    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(name)).unwrap()).unwrap()
    };
    assert_eq!(read("train_results.json"), json!({"train_loss": 1.5, "epoch": 3.0}));
    assert_eq!(read("eval_results.json"), json!({"eval_loss": 1.75, "epoch": 3.0}));
    assert_eq!(read("all_results.json"), json!({"train_loss": 1.5, "eval_loss": 1.75, "epoch": 3.0}));
    // HF: json.dump(metrics, f, indent=4, sort_keys=True)
    assert_eq!(
        std::fs::read_to_string(dir.path().join("train_results.json")).unwrap(),
        "{\n    \"epoch\": 3.0,\n    \"train_loss\": 1.5\n}"
    );
    // Updating a key replaces it, others stay.
    let mut eval2 = Map::new();
    eval2.insert("eval_loss".into(), json!(1.25));
    save_metrics(dir.path(), "eval", &eval2).unwrap();
    assert_eq!(read("all_results.json"), json!({"train_loss": 1.5, "eval_loss": 1.25, "epoch": 3.0}));
    assert_eq!(names_in(dir.path()), vec!["all_results.json", "eval_results.json", "train_results.json"]);
    // A corrupt all_results.json is reported, not overwritten.
    std::fs::write(dir.path().join("all_results.json"), "[1").unwrap();
    assert!(save_metrics(dir.path(), "eval", &eval2).is_err());
    assert_eq!(std::fs::read_to_string(dir.path().join("all_results.json")).unwrap(), "[1");
    assert!(save_metrics(dir.path(), "../x", &eval2).is_err());
}

#[test]
fn write_json_atomic_leaves_no_temp_file() {
    let dir = TempDir::new("json-atomic");
    let p = dir.path().join("sub").join("x.json");
    write_json_atomic(&p, &json!({"b": 1, "a": [1.5, "é"]})).unwrap();
    write_json_atomic(&p, &json!({"b": 2, "a": []})).unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\n  \"b\": 2,\n  \"a\": []\n}\n");
    assert_eq!(names_in(&dir.path().join("sub")), vec!["x.json"]);
    // Python's ensure_ascii escaping.
    assert_eq!(python_json(&json!({"u": "é\n"}), None, false), r#"{"u": "\u00e9\n"}"#);
}

// ---------------------------------------------------------------- plot.rs

#[test]
fn smooth_matches_hand_computation() {
    // len 3: w = 1.8 * (1 / (1 + exp(-0.15)) - 0.5) = 1.8 * (0.5374298453437496 - 0.5) = 0.06737372161874929
    // s0 = 1; s1 = 1 w + 2 (1 - w) = 2 - w; s2 = s1 w + 3 (1 - w)
    let w = 1.8 * (1.0 / (1.0 + (-0.15f64).exp()) - 0.5);
    assert_near(w, 0.06737372161874929, 1e-15, "weight");
    let s = smooth(&[1.0, 2.0, 3.0]);
    assert_eq!(s.len(), 3);
    assert_near(s[0], 1.0, 0.0, "s0");
    assert_near(s[1], 2.0 - w, 1e-15, "s1");
    assert_near(s[2], (2.0 - w) * w + 3.0 * (1.0 - w), 1e-15, "s2");
    // Python, LLaMA-Factory's smooth([1.0, 2.0, 3.0]) -> [1.0, 1.9326262783812507, 2.92808706001649]
    assert_near(s[1], 1.9326262783812507, 1e-15, "s1 python");
    assert_near(s[2], 2.92808706001649, 1e-14, "s2 python");
    assert!(smooth(&[]).is_empty());
    assert_eq!(smooth(&[4.0]), vec![4.0]);
    // A constant stays constant; a long series is smoothed hard (w -> 0.9 as len grows).
    assert!(smooth(&[2.5; 50]).iter().all(|&v| (v - 2.5).abs() < 1e-12));
}

fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn count_color(rgb: &[u8], c: [u8; 3], tol: i32) -> usize {
    rgb.chunks_exact(3).filter(|p| (0..3).all(|i| (p[i] as i32 - c[i] as i32).abs() <= tol)).count()
}

#[test]
fn font_is_complete() {
    assert!(font_is_well_formed());
    // Every printable character but space has ink; unknown characters fall back to '?'.
    for c in '!'..='~' {
        assert!(glyph(c).iter().any(|&r| r != 0), "glyph {c:?} is empty");
    }
    assert_eq!(glyph('é'), glyph('?'));
    assert_eq!(text_width("abc", 2), (3 * 6 - 1) * 2);
}

#[test]
fn plot_curve_writes_decodable_png() {
    let dir = TempDir::new("plot");
    let p = dir.path().join("curve.png");
    // A noisy decreasing loss, with a NaN that must be skipped.
    let pts: Vec<(f64, f64)> = (1..=200)
        .map(|i| {
            let x = i as f64;
            let y = if i == 57 { f64::NAN } else { 3.0 * (-x / 60.0).exp() + 0.3 + 0.2 * ((x * 1.7).sin()) };
            (x, y)
        })
        .collect();
    let eval: Vec<(f64, f64)> = vec![(50.0, 1.4), (100.0, 0.9), (150.0, 0.7), (200.0, 0.65)];
    plot_curve(&p, "training loss of out", "step", "loss", &[("loss", &pts), ("eval", &eval)], true).unwrap();
    if let Ok(keep) = std::env::var("LORAFORGE_KEEP_PLOT") {
        std::fs::copy(&p, keep).unwrap(); // to look at it: LORAFORGE_KEEP_PLOT=/tmp/x.png cargo test --test runout plot
    }
    let (w, h, rgb) = decode_png(&p);
    assert_eq!((w, h), (900, 600));
    assert_eq!(rgb.len(), 900 * 600 * 3);
    // Mostly white background.
    let white = count_color(&rgb, [255, 255, 255], 0);
    assert!(white > 900 * 600 / 2, "white pixels {white}");
    // The bold smoothed curve is drawn in #1f77b4 at full opacity (exact colour in the line cores).
    let blue = count_color(&rgb, [0x1f, 0x77, 0xb4], 2);
    assert!(blue > 500, "curve pixels {blue}");
    // The light raw curve: #1f77b4 at alpha 0.4 over white = (165, 201, 225).
    let light = count_color(&rgb, [165, 201, 225], 3);
    assert!(light > 100, "raw curve pixels {light}");
    // The second series in tab10 orange.
    let orange = count_color(&rgb, [0xff, 0x7f, 0x0e], 2);
    assert!(orange > 100, "eval curve pixels {orange}");
    // Black text and frame exist.
    let black = count_color(&rgb, [0, 0, 0], 0);
    assert!(black > 2000, "black pixels {black}");
    assert_eq!(names_in(dir.path()), vec!["curve.png"]);

    // Edge cases still give a valid image: one point, a flat line, nothing at all.
    for (name, series) in [("one", vec![(3.0, 1.0)]), ("flat", vec![(1.0, 2.0), (2.0, 2.0)]), ("none", vec![])] {
        let p = dir.path().join(format!("{name}.png"));
        plot_curve(&p, name, "x", "y", &[(name, &series)], true).unwrap();
        let (w, h, rgb) = decode_png(&p);
        assert_eq!((w, h), (900, 600));
        if name != "none" {
            assert!(count_color(&rgb, [0x1f, 0x77, 0xb4], 2) > 10, "{name}: no curve pixels");
        }
    }
}

#[test]
fn plot_loss_from_log_history() {
    let dir = TempDir::new("plot-loss");
    let mut hist: Vec<Value> = (1..=30)
        .map(|s| json!({"loss": 2.0 / (s as f64).sqrt(), "learning_rate": 1e-4, "epoch": s as f64 / 10.0, "step": s}))
        .collect();
    let written = plot_loss(dir.path(), &hist).unwrap();
    assert_eq!(written, vec![dir.path().join("training_loss.png")]);
    hist.push(json!({"eval_loss": 1.0, "step": 30}));
    hist.push(json!({"train_loss": 1.1, "train_runtime": 12.5, "step": 30}));
    let written = plot_loss(dir.path(), &hist).unwrap();
    assert_eq!(written, vec![dir.path().join("training_loss.png"), dir.path().join("training_eval_loss.png")]);
    for p in &written {
        let (w, h, rgb) = decode_png(p);
        assert_eq!((w, h), (900, 600));
        assert!(count_color(&rgb, [0x1f, 0x77, 0xb4], 2) > 10);
    }
    assert!(plot_loss(dir.path(), &[]).unwrap().is_empty());
}

// ---------------------------------------------------------------- progress.rs

#[test]
fn progress_render_line_format() {
    let p = Progress::new(200, 0);
    let line = p.render(42, 1.23449, 9.8e-05, 0.7149, 312.4, Some(192.9));
    assert_eq!(
        line,
        " 42/200 [=====>                        ] 21% loss 1.234 lr 9.8e-05 gnorm 0.71 312 tok/s ETA 0:03:12"
    );
    let done = p.render(200, 0.5, 0.0, 1.0, 10.0, Some(0.0));
    assert!(done.starts_with("200/200 [==============================] 100% loss 0.500 lr 0.0e+00"), "{done}");
    let start = p.render(0, f64::NAN, 1e-3, f64::INFINITY, 0.0, None);
    assert!(start.starts_with("  0/200 [>                             ] 0% loss NaN lr 1.0e-03 gnorm inf"), "{start}");
    assert!(start.ends_with("ETA --:--:--"), "{start}");
    assert_eq!(format_sci(9.8e-05, 1), "9.8e-05");
    assert_eq!(format_sci(2e-4, 2), "2.00e-04");
    assert_eq!(format_sci(12345.0, 1), "1.2e+04");
}

#[test]
fn progress_eta_moving_average() {
    use std::time::{Duration, Instant};
    let mut p = Progress::new(100, 10);
    assert_eq!(p.eta_secs(), None);
    let t0 = Instant::now();
    p.reset_clock(t0);
    // The first update after resume covers steps 10 -> 11 in 10 s (a slow warm-up step) ...
    p.observe(11, t0 + Duration::from_secs(10));
    assert_near(p.eta_secs().unwrap(), 89.0 * 10.0, 1e-6, "eta after warm-up");
    // ... then 20 updates of 2 steps in 1 s push it out of the 20-update window: 0.5 s/step.
    for k in 1..=20u64 {
        p.observe(11 + 2 * k as usize, t0 + Duration::from_secs(10 + k));
    }
    assert_near(p.eta_secs().unwrap(), (100.0 - 51.0) * 0.5, 1e-6, "eta steady");
    // A step that does not advance is ignored.
    p.observe(51, t0 + Duration::from_secs(1000));
    assert_near(p.eta_secs().unwrap(), 49.0 * 0.5, 1e-6, "eta unchanged");
}

// ---------------------------------------------------------------- metrics.rs

// Python references:
// ```python
// from nltk.translate.bleu_score import sentence_bleu, SmoothingFunction
// b = lambda p, r: sentence_bleu([list(r)], list(p), smoothing_function=SmoothingFunction().method3) * 100
// ```
#[test]
fn bleu4_against_nltk() {
    // Hand check of ("ab", "abc"): hyp chars [a, b]; p1 = 2/2, p2 = 1/1, p3 = 0/max(1, 0) -> 1/(2*1),
    // p4 -> 1/(4*1); BP = exp(1 - 3/2); BLEU = e^-0.5 * (1 * 1 * 1/2 * 1/4)^(1/4) = 0.3606452879987789
    let hand = (-0.5f64).exp() * (0.125f64).powf(0.25) * 100.0;
    assert_near(bleu4("ab", "abc"), hand, 1e-12, "hand ab/abc");
    // Identical strings of >= 4 chars: every p_n = 1 and BP = 1.
    assert_near(bleu4("abcd", "abcd"), 100.0, 1e-12, "identical");
    assert_eq!(bleu4("xyz", "abc"), 0.0, "disjoint");
    assert_eq!(bleu4("", "abc"), 0.0, "empty prediction");
    assert_eq!(bleu4("abc", ""), 0.0, "empty reference");
    let nltk: [(&str, &str, f64); 8] = [
        ("the cat sat on the mat", "the cat is on the mat", 78.39204411491599),
        ("ab", "abc", 36.06452879987789),
        ("你好世界", "你好，世界！", 27.40311596835683),
        ("hello world hello", "hello there world", 59.978201631280236),
        // one char: p1 = 1, p2..p4 smoothed 1/2, 1/4, 1/8 -> (1/64)^(1/4)
        ("a", "a", 35.35533905932738),
        ("aaaa", "aa", 31.94715521231363),
        ("ab", "ba", 35.35533905932738),
        ("abcd", "abcd", 100.0),
    ];
    for (p, r, want) in nltk {
        // f64 sums in a different order than Python's fsum: allow 1e-9 on a 0..100 scale.
        assert_near(bleu4(p, r), want, 1e-9, &format!("bleu4({p:?}, {r:?})"));
    }
}

// ```python
// from rouge_chinese import Rouge
// s = Rouge().get_scores(" ".join(hyp_tokens), " ".join(ref_tokens))[0]  # then s["rouge-1"]["f"] * 100 etc.
// ```
#[test]
fn rouge_against_rouge_chinese() {
    // Worked example: hyp [the cat sat on the mat], ref [the cat is on the mat].
    // ROUGE-1 on distinct unigrams: H = {the cat sat on mat} (5), R = {the cat is on mat} (5), overlap 4:
    //   P = R = 0.8, F = 2 * 0.64 / (1.6 + 1e-8) = 79.99999950 (x100)
    // ROUGE-2: H = {the-cat cat-sat sat-on on-the the-mat}, R = {the-cat cat-is is-on on-the the-mat}, overlap 3: 0.6
    // ROUGE-L: LCS = [the cat on the mat] = 5; P = R = 5/6 -> 83.33333283
    let (r1, r2, rl) = rouge("the cat sat on the mat", "the cat is on the mat");
    assert_near(r1, 79.99999950000002, 1e-9, "rouge-1");
    assert_near(r2, 59.999999500000015, 1e-9, "rouge-2");
    assert_near(rl, 83.33333283333334, 1e-9, "rouge-l");
    // Chinese: our words() gives one token per character and punctuation as tokens, the python side got the
    // same tokens joined by spaces: "你 好 ， 世 界" vs "你 好 世 界 ！".
    assert_eq!(words("你好，世界"), vec!["你", "好", "，", "世", "界"]);
    let (r1, r2, rl) = rouge("你好，世界", "你好世界！");
    assert_near(r1, 79.99999950000002, 1e-9, "zh rouge-1");
    assert_near(r2, 49.99999950000001, 1e-9, "zh rouge-2");
    assert_near(rl, 79.99999950000002, 1e-9, "zh rouge-l");
    // Repeated n-grams count once in ROUGE-N but fully in ROUGE-L: "a b a b a" vs "a b c".
    let (r1, r2, rl) = rouge("a b a b a", "a b c");
    assert_near(r1, 79.99999952, 1e-9, "rep rouge-1");
    assert_near(r2, 49.99999950000001, 1e-9, "rep rouge-2");
    assert_near(rl, 49.999999531250005, 1e-9, "rep rouge-l");
    assert_eq!(rouge("x", "y"), (0.0, 0.0, 0.0));
    // One identical word: ROUGE-2 has no bigrams on either side -> 0.
    let (r1, r2, rl) = rouge("a", "a");
    assert_near(r1, 99.9999995, 1e-9, "one word r1");
    assert_eq!(r2, 0.0);
    assert_near(rl, 99.9999995, 1e-9, "one word rl");
    assert_eq!(rouge("", "abc"), (0.0, 0.0, 0.0));
    assert_eq!(rouge("  ", "abc"), (0.0, 0.0, 0.0));
    assert_eq!(words("Hello, world! x_1 3.14"), vec!["Hello", ",", "world", "!", "x_1", "3", ".", "14"]);
}

#[test]
fn similarity_rounds_then_averages() {
    let preds = vec!["the cat sat on the mat".to_string(), "abcd".to_string(), "xyz".to_string()];
    let refs = vec!["the cat is on the mat".to_string(), "abcd".to_string(), "abc".to_string()];
    let m = similarity(&preds, &refs);
    let keys: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, vec!["rouge-1", "rouge-2", "rouge-l", "bleu-4"]);
    // Per sample round(v, 4) then the mean, as LLaMA-Factory's ComputeSimilarity:
    // rouge-1: (80.0 + 100.0 + 0.0) / 3;  bleu-4: (78.392 + 100.0 + 0.0) / 3
    assert_near(m["rouge-1"].as_f64().unwrap(), 180.0 / 3.0, 1e-12, "rouge-1");
    assert_near(m["rouge-2"].as_f64().unwrap(), 60.0 / 3.0, 1e-12, "rouge-2");
    assert_near(m["rouge-l"].as_f64().unwrap(), (83.3333 + 100.0) / 3.0, 1e-12, "rouge-l");
    assert_near(m["bleu-4"].as_f64().unwrap(), (78.392 + 100.0) / 3.0, 1e-12, "bleu-4");
    assert!(similarity(&[], &[]).is_empty());
    let p = prefixed("predict", &m);
    assert!(p.contains_key("predict_bleu-4") && p.contains_key("predict_rouge-l") && p.len() == 4);
}

// ---------------------------------------------------------------- checkpoint.rs

fn fill_ckpt(step: usize) -> impl FnOnce(&Path) -> loraforge::Result<()> {
    move |d: &Path| {
        std::fs::write(d.join("adapter.bin"), format!("weights of {step}")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub").join("x"), "x").unwrap();
        write_checkpoint_marker(d, step)
    }
}

#[test]
fn write_dir_atomic_failure_leaves_final_untouched() {
    let dir = TempDir::new("ckpt-fail");
    let fin = checkpoint_dir(dir.path(), 5);
    assert_eq!(fin, dir.path().join("checkpoint-5"));
    // Failure with no existing dir: nothing appears.
    let r = write_dir_atomic(&fin, |d| {
        std::fs::write(d.join("half"), "x").unwrap();
        Err(loraforge::Error::msg("disk full"))
    });
    assert!(r.is_err());
    assert!(names_in(dir.path()).is_empty(), "{:?}", names_in(dir.path()));
    // Failure over an existing dir: the old content survives, no temp dir.
    write_dir_atomic(&fin, fill_ckpt(5)).unwrap();
    let r = write_dir_atomic(&fin, |d| {
        std::fs::write(d.join("adapter.bin"), "garbage").unwrap();
        Err(loraforge::Error::msg("interrupted"))
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read_to_string(fin.join("adapter.bin")).unwrap(), "weights of 5");
    assert_eq!(names_in(dir.path()), vec!["checkpoint-5"]);
}

#[test]
fn write_dir_atomic_replaces_existing_checkpoint() {
    let dir = TempDir::new("ckpt-replace");
    let fin = checkpoint_dir(dir.path(), 7);
    write_dir_atomic(&fin, fill_ckpt(7)).unwrap();
    std::fs::write(fin.join("stale_file"), "old").unwrap();
    write_dir_atomic(&fin, |d| {
        std::fs::write(d.join("adapter.bin"), "new weights").unwrap();
        write_checkpoint_marker(d, 7)
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(fin.join("adapter.bin")).unwrap(), "new weights");
    assert!(!fin.join("stale_file").exists(), "the new dir replaces the old one entirely");
    assert_eq!(names_in(dir.path()), vec!["checkpoint-7"]);
    assert_eq!(names_in(&fin), vec!["adapter.bin", "loraforge_checkpoint.json"]);
}

#[test]
fn checkpoints_list_latest_rotate_and_clean() {
    let dir = TempDir::new("ckpt-list");
    let out = dir.path();
    assert!(list_checkpoints(&out.join("missing")).unwrap().is_empty());
    for s in [10, 2, 30, 20, 40] {
        write_dir_atomic(&checkpoint_dir(out, s), fill_ckpt(s)).unwrap();
    }
    // Not checkpoints: no marker, a bad name, a temp dir, a file.
    std::fs::create_dir(out.join("checkpoint-50")).unwrap();
    std::fs::create_dir(out.join("checkpoint-x1")).unwrap();
    std::fs::create_dir(out.join(".tmp-checkpoint-60-1")).unwrap();
    std::fs::write(out.join(".tmp-checkpoint-60-1").join(CHECKPOINT_MARKER), "{}").unwrap();
    std::fs::write(out.join("checkpoint-70"), "file").unwrap();
    let steps: Vec<usize> = list_checkpoints(out).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![2, 10, 20, 30, 40]);
    assert_eq!(latest_checkpoint(out).unwrap(), Some(checkpoint_dir(out, 40)));

    // No limit: nothing deleted.
    rotate_checkpoints(out, None, None).unwrap();
    rotate_checkpoints(out, Some(0), None).unwrap();
    assert_eq!(list_checkpoints(out).unwrap().len(), 5);
    // Limit 3, keep the best (step 10): 10 counts toward the 3, so 30 and 40 stay.
    rotate_checkpoints(out, Some(3), Some(&checkpoint_dir(out, 10))).unwrap();
    let steps: Vec<usize> = list_checkpoints(out).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![10, 30, 40]);
    // Limit 1 with an older best: HF keeps best + latest.
    rotate_checkpoints(out, Some(1), Some(&checkpoint_dir(out, 10))).unwrap();
    let steps: Vec<usize> = list_checkpoints(out).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![10, 40]);
    // Limit 1, no best: only the latest.
    rotate_checkpoints(out, Some(1), None).unwrap();
    let steps: Vec<usize> = list_checkpoints(out).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![40]);

    // Crash leftovers: a temp file of an atomic write and an .old dir whose replacement never got renamed in.
    std::fs::write(out.join(".trainer_state.json.tmp.123.0"), "{").unwrap();
    std::fs::create_dir(out.join(".old-checkpoint-45-999")).unwrap();
    std::fs::write(out.join(".old-checkpoint-45-999").join(CHECKPOINT_MARKER), "{}").unwrap();
    std::fs::create_dir(out.join(".old-checkpoint-40-999")).unwrap(); // checkpoint-40 exists: just drop this
    clean_stale_temp(out).unwrap();
    assert_eq!(
        names_in(out),
        vec!["checkpoint-40", "checkpoint-45", "checkpoint-50", "checkpoint-70", "checkpoint-x1"]
    );
    assert_eq!(latest_checkpoint(out).unwrap(), Some(checkpoint_dir(out, 45)));
    clean_stale_temp(&out.join("missing")).unwrap();
}

#[test]
fn f32_tensors_round_trip() {
    let dir = TempDir::new("tensors");
    let p = dir.path().join("optimizer.safetensors");
    let m: Vec<f32> = (0..7 * 3).map(|i| i as f32 * 0.5 - 3.0).collect();
    let v: Vec<f32> = vec![1e-30, f32::MAX, -0.0, 1.0 / 3.0, f32::MIN_POSITIVE];
    let scalar = [42.0f32];
    let tensors: Vec<(String, Vec<usize>, &[f32])> =
        vec![("m.layer0".into(), vec![7, 3], &m), ("v.layer0".into(), vec![5], &v), ("step".into(), vec![], &scalar)];
    save_f32_tensors(&p, &tensors).unwrap();
    let back = load_f32_tensors(&p).unwrap();
    let names: Vec<&str> = back.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, vec!["m.layer0", "step", "v.layer0"]);
    for (name, shape, data) in &back {
        let orig = tensors.iter().find(|t| &t.0 == name).unwrap();
        assert_eq!(shape, &orig.1, "{name}");
        // Bit-exact, including -0.0.
        let a: Vec<u32> = data.iter().map(|x| x.to_bits()).collect();
        let b: Vec<u32> = orig.2.iter().map(|x| x.to_bits()).collect();
        assert_eq!(a, b, "{name}");
    }
    // Wrong length: an error, nothing written.
    let bad: Vec<(String, Vec<usize>, &[f32])> = vec![("x".into(), vec![2, 2], &v)];
    assert!(save_f32_tensors(&dir.path().join("bad.safetensors"), &bad).is_err());
    assert!(!dir.path().join("bad.safetensors").exists());
    // Not a safetensors file: an error, not a panic.
    std::fs::write(dir.path().join("junk.safetensors"), b"\x05\0\0\0\0\0\0\0{}").unwrap();
    assert!(load_f32_tensors(&dir.path().join("junk.safetensors")).is_err());
}
