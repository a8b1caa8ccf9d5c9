//! Bad input through every entry point, called as C would call them: NULL pointers, invalid
//! UTF-8, malformed JSON / YAML, unknown keys, freed and wrong-kind handles, re-entrant and
//! cross-thread use; each checked for its status code, its message, and out-pointers set to NULL.
//! A caught panic becomes LF_ERR_INTERNAL. The real-model tests use the fixture SmolLM2 (missing
//! it is a failure, as in tests/trainer.rs).

use crate::*;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

fn last() -> String {
    unsafe { CStr::from_ptr(lf_last_error()) }.to_string_lossy().into_owned()
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Asserts the status and that the last error mentions `needle`.
#[track_caller]
fn expect(st: c_int, code: c_int, needle: &str) {
    let msg = last();
    assert_eq!(st, code, "status (message: {msg})");
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

/// A pointer value C callers might leave in an out-parameter; a failing call must clear it.
fn dangling<T>() -> *mut T {
    std::ptr::NonNull::dangling().as_ptr()
}

fn fixture_model() -> PathBuf {
    let p = loraforge::train::trainer::model_cache_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run models/fetch.sh first", p.display());
    p
}

fn data_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data").display().to_string()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loraforge-ffi-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn library_calls_and_strings() {
    let v = unsafe { CStr::from_ptr(lf_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let f: serde_json::Value =
        serde_json::from_str(unsafe { CStr::from_ptr(lf_build_features()) }.to_str().unwrap()).unwrap();
    assert_eq!(f["backends"]["cpu"], true);
    assert_eq!(lf_build_features(), lf_build_features(), "static: the same pointer every time");
    unsafe {
        expect(lf_devices(null_mut()), LF_ERR_INVALID_ARGUMENT, "out_json is NULL");
        let mut s: *mut c_char = dangling();
        assert_eq!(lf_devices(&mut s), LF_OK);
        assert_eq!(last(), "", "a success clears the last error");
        let d: serde_json::Value = serde_json::from_str(CStr::from_ptr(s).to_str().unwrap()).unwrap();
        assert_eq!(d[0]["name"], "cpu");
        assert_eq!(d[0]["available"], true);
        assert_eq!(d.as_array().unwrap().len(), 3);
        lf_string_free(s);
        lf_string_free(null_mut());
    }
}

#[test]
fn panics_become_internal_errors() {
    let st = guard("lf_test", || panic!("boom {}", 42));
    expect(st, LF_ERR_INTERNAL, "lf_test: internal error (panic): boom 42");
    let st = guard("lf_test", || Err(FfiError::new(LF_ERR_IO, "disk")));
    expect(st, LF_ERR_IO, "lf_test: disk");
}

#[test]
fn last_error_is_per_thread() {
    unsafe { expect(lf_devices(null_mut()), LF_ERR_INVALID_ARGUMENT, "NULL") };
    let other = std::thread::spawn(last).join().unwrap();
    assert_eq!(other, "", "another thread's last error is its own");
    assert!(last().contains("out_json is NULL"), "ours survives the other thread");
}

#[test]
fn library_errors_map_to_status_codes() {
    use loraforge::Error;
    let io = Error::io("/x", std::io::Error::other("gone"));
    assert_eq!(code_of(&io, LF_ERR_CONFIG), LF_ERR_IO);
    assert_eq!(code_of(&Error::MissingKey("k".into()), LF_ERR_CONFIG), LF_ERR_FORMAT);
    assert_eq!(code_of(&Error::BackendNotCompiled("cuda"), LF_ERR_CONFIG), LF_ERR_UNSUPPORTED);
    let ctx = Error::Context { context: "loading".into(), source: Box::new(io) };
    assert_eq!(code_of(&ctx, LF_ERR_CONFIG), LF_ERR_IO, "the cause under a context decides");
    assert_eq!(code_of(&Error::msg("plain"), LF_ERR_CONFIG), LF_ERR_CONFIG, "plain messages take the fallback");
}

#[test]
fn model_new_rejects_bad_arguments() {
    unsafe {
        let mut m: *mut LfModel = dangling();
        let p = c("/nonexistent/model.gguf");
        expect(lf_model_new(p.as_ptr(), null(), null(), null_mut()), LF_ERR_INVALID_ARGUMENT, "out is NULL");
        expect(lf_model_new(null(), null(), null(), &mut m), LF_ERR_INVALID_ARGUMENT, "path is NULL");
        assert!(m.is_null(), "a failed call clears *out");
        let bad_utf8 = [b'a', 0xff, 0xfe, 0];
        m = dangling();
        expect(
            lf_model_new(bad_utf8.as_ptr() as *const c_char, null(), null(), &mut m),
            LF_ERR_INVALID_ARGUMENT,
            "path is not valid UTF-8",
        );
        assert!(m.is_null());
        expect(lf_model_new(p.as_ptr(), null(), null(), &mut m), LF_ERR_IO, "no such file");
        // A file that is not GGUF.
        let dir = tmp("notgguf");
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("junk.gguf");
        std::fs::write(&f, b"this is not a gguf file at all").unwrap();
        let fp = c(f.to_str().unwrap());
        expect(lf_model_new(fp.as_ptr(), null(), null(), &mut m), LF_ERR_FORMAT, "junk.gguf");
        assert!(m.is_null());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn handles_detect_null_freed_and_wrong_kind() {
    unsafe {
        let mut s: *mut c_char = dangling();
        expect(lf_model_info(null_mut(), &mut s), LF_ERR_INVALID_ARGUMENT, "lf_model is NULL");
        assert!(s.is_null());
        // A pointer that never came from the library: not in the live table, never dereferenced.
        let mut fake = 0u64;
        let fake_model = &mut fake as *mut u64 as *mut LfModel;
        expect(lf_model_info(fake_model, &mut s), LF_ERR_INVALID_ARGUMENT, "not a live handle");
        lf_model_free(fake_model);
        assert!(last().contains("not a live handle"), "free of a foreign pointer is refused: {}", last());
        lf_model_free(null_mut());
        lf_trainer_free(null_mut());
        assert_eq!(last(), "", "free(NULL) is a successful no-op");
        let fake_trainer = fake_model as *mut LfTrainer;
        for (name, st) in [
            ("step", lf_trainer_step(fake_trainer, null_mut())),
            ("run", lf_trainer_run(fake_trainer, None, null_mut())),
            ("cancel", lf_trainer_cancel(fake_trainer)),
            ("save_checkpoint", lf_trainer_save_checkpoint(fake_trainer, &mut s)),
            ("finish", lf_trainer_finish(fake_trainer)),
            ("info", lf_trainer_info(fake_trainer, &mut s)),
        ] {
            assert_eq!(st, LF_ERR_INVALID_ARGUMENT, "lf_trainer_{name}");
            assert!(last().contains("not a live handle"), "lf_trainer_{name}: {}", last());
        }
        let mut loss = 0.0;
        expect(lf_trainer_evaluate(null_mut(), &mut loss), LF_ERR_INVALID_ARGUMENT, "lf_trainer is NULL");
        expect(lf_trainer_evaluate(fake_trainer, null_mut()), LF_ERR_INVALID_ARGUMENT, "out_loss is NULL");
        let d = c("/tmp/x");
        expect(lf_trainer_save_adapter(null_mut(), d.as_ptr()), LF_ERR_INVALID_ARGUMENT, "lf_trainer is NULL");
        expect(lf_trainer_save_adapter(fake_trainer, null()), LF_ERR_INVALID_ARGUMENT, "dir is NULL");
        expect(lf_trainer_info(fake_trainer, null_mut()), LF_ERR_INVALID_ARGUMENT, "out_json is NULL");
        let msgs = c("[]");
        expect(
            lf_chat(null_mut(), msgs.as_ptr(), null(), None, null_mut(), &mut s),
            LF_ERR_INVALID_ARGUMENT,
            "lf_model is NULL",
        );
    }
}

#[test]
fn chat_arguments_are_parsed_strictly() {
    let m =
        parse_messages(r#"[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]"#).unwrap();
    assert_eq!((m.len(), m[1].role.as_str(), m[1].content.as_str()), (2, "user", "hi"));
    for (text, code, needle) in [
        ("[{\"role\": \"user\"", LF_ERR_FORMAT, "messages_json"),
        ("{\"role\": \"user\"}", LF_ERR_FORMAT, "expected an array"),
        ("[]", LF_ERR_INVALID_ARGUMENT, "no messages"),
        ("[1]", LF_ERR_FORMAT, "messages_json[0]: expected an object"),
        ("[{\"role\": \"user\"}]", LF_ERR_FORMAT, "missing string field \"content\""),
    ] {
        let e = parse_messages(text).unwrap_err();
        assert_eq!(e.code, code, "{text}: {}", e.msg);
        assert!(e.msg.contains(needle), "{text}: {}", e.msg);
    }
    let g = parse_gen_params(Some(r#"{"max_new_tokens": 5, "temperature": 0.7, "top_k": 40, "seed": 3}"#)).unwrap();
    assert_eq!((g.max_new_tokens, g.temperature, g.top_k, g.seed), (5, 0.7, 40, 3));
    assert_eq!(parse_gen_params(None).unwrap().temperature, 0.0, "default: greedy");
    for (text, code, needle) in [
        ("{", LF_ERR_FORMAT, "gen_params_json"),
        ("[1]", LF_ERR_CONFIG, "expected a JSON object"),
        ("{\"max_tokens\": 5}", LF_ERR_CONFIG, "unknown key \"max_tokens\""),
        ("{\"max_new_tokens\": -1}", LF_ERR_CONFIG, "non-negative integer"),
        ("{\"top_p\": 0}", LF_ERR_CONFIG, "top_p"),
        ("{\"temperature\": \"hot\"}", LF_ERR_CONFIG, "expected a number"),
    ] {
        let e = parse_gen_params(Some(text)).unwrap_err();
        assert_eq!(e.code, code, "{text}: {}", e.msg);
        assert!(e.msg.contains(needle), "{text}: {}", e.msg);
    }
}

#[test]
fn trainer_construction_rejects_bad_config() {
    unsafe {
        let mut t: *mut LfTrainer = dangling();
        expect(lf_trainer_new(null(), &mut t), LF_ERR_INVALID_ARGUMENT, "params is NULL");
        let p = lf_train_default_params();
        expect(lf_trainer_new(&p, null_mut()), LF_ERR_INVALID_ARGUMENT, "out is NULL");
        t = dangling();
        expect(lf_trainer_new(&p, &mut t), LF_ERR_INVALID_ARGUMENT, "params.model_name_or_path is NULL");
        assert!(t.is_null());
        let (model, ds, out) = (c("/nonexistent/m.gguf"), c("demo_identity"), c("/tmp/lf-never-created"));
        let mut p = lf_train_default_params();
        p.model_name_or_path = model.as_ptr();
        p.dataset = ds.as_ptr();
        p.output_dir = out.as_ptr();
        p.max_steps = -3;
        expect(lf_trainer_new(&p, &mut t), LF_ERR_CONFIG, "params.max_steps = -3");
        p.max_steps = 3;
        let extra = c("{not json");
        p.extra_json = extra.as_ptr();
        expect(lf_trainer_new(&p, &mut t), LF_ERR_FORMAT, "params.extra_json");
        let extra = c("[1, 2]");
        p.extra_json = extra.as_ptr();
        expect(lf_trainer_new(&p, &mut t), LF_ERR_CONFIG, "expected a JSON object");
        let extra = c("{\"lora_rnak\": 4}");
        p.extra_json = extra.as_ptr();
        expect(lf_trainer_new(&p, &mut t), LF_ERR_CONFIG, "lora_rnak");
        p.extra_json = null();
        expect(lf_trainer_new(&p, &mut t), LF_ERR_CONFIG, "/nonexistent/m.gguf");
        assert!(t.is_null());

        expect(lf_trainer_new_from_yaml(null(), &mut t), LF_ERR_INVALID_ARGUMENT, "yaml is NULL");
        let y = c("learning_rate: 1e-4\n");
        expect(lf_trainer_new_from_yaml(y.as_ptr(), null_mut()), LF_ERR_INVALID_ARGUMENT, "out is NULL");
        let y = c("model_name_or_path: [unclosed\n");
        expect(lf_trainer_new_from_yaml(y.as_ptr(), &mut t), LF_ERR_CONFIG, "YAML");
        let y = c("learning_rate: fast\n");
        expect(lf_trainer_new_from_yaml(y.as_ptr(), &mut t), LF_ERR_CONFIG, "learning_rate");
        let bad_utf8 = [b'a', b':', b' ', 0xc3, 0x28, 0];
        expect(
            lf_trainer_new_from_yaml(bad_utf8.as_ptr() as *const c_char, &mut t),
            LF_ERR_INVALID_ARGUMENT,
            "not valid UTF-8",
        );
        let j = c("{\"model_name_or_path\": ");
        expect(lf_trainer_new_from_json(j.as_ptr(), &mut t), LF_ERR_CONFIG, "JSON");
        let j = c("{\"no_such_key\": 1}");
        expect(lf_trainer_new_from_json(j.as_ptr(), &mut t), LF_ERR_CONFIG, "no_such_key");
        assert!(t.is_null());
    }
}

#[test]
fn default_params_are_the_config_defaults() {
    let p = lf_train_default_params();
    let a = loraforge::train::args::TrainArgs::default();
    assert_eq!(p.lora_rank as usize, a.lora_rank);
    assert_eq!(p.learning_rate, a.learning_rate);
    assert_eq!(p.cutoff_len as usize, a.cutoff_len);
    assert_eq!(p.per_device_train_batch_size as usize, a.per_device_train_batch_size);
    assert_eq!(p.seed, a.seed);
    assert!(p.model_name_or_path.is_null() && p.extra_json.is_null());
    // The struct round-trips to the same args a config would give.
    let (m, d, o) = (c("m.gguf"), c("a,b"), c("out"));
    let mut p = p;
    p.model_name_or_path = m.as_ptr();
    p.dataset = d.as_ptr();
    p.output_dir = o.as_ptr();
    p.max_steps = 7;
    p.save_steps = 0;
    let extra = c("{\"lora_dropout\": 0.1, \"max_steps\": 9}");
    p.extra_json = extra.as_ptr();
    let json = unsafe { params_to_json(&p) }.unwrap();
    let (args, _) =
        loraforge::train::args::TrainArgs::from_json_str(&serde_json::Value::Object(json).to_string()).unwrap();
    assert_eq!(args.dataset, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(args.max_steps, Some(9), "extra_json overrides the fields");
    assert_eq!(args.lora_dropout, 0.1);
    assert_eq!(args.save_strategy, loraforge::train::args::SaveStrategy::No, "save_steps 0: no periodic saves");
    assert_eq!(args.lora_alpha_value(), 16.0, "lora_alpha 0: 2 * rank");
}

#[test]
fn export_rejects_bad_arguments() {
    unsafe {
        let (base, adapter, dir) = (c("/nonexistent/base.gguf"), c("/nonexistent/adapter"), c("/tmp/lf-export-x"));
        let mut s: *mut c_char = dangling();
        expect(
            lf_export(null(), null(), LF_EXPORT_GGUF, dir.as_ptr(), null(), &mut s),
            LF_ERR_INVALID_ARGUMENT,
            "base_model is NULL",
        );
        assert!(s.is_null());
        expect(lf_export(base.as_ptr(), null(), 7, dir.as_ptr(), null(), &mut s), LF_ERR_INVALID_ARGUMENT, "kind 7");
        expect(
            lf_export(base.as_ptr(), null(), LF_EXPORT_GGUF, null(), null(), &mut s),
            LF_ERR_INVALID_ARGUMENT,
            "export_dir is NULL",
        );
        let o = c("{\"dtype\": ");
        expect(lf_export(base.as_ptr(), null(), 0, dir.as_ptr(), o.as_ptr(), &mut s), LF_ERR_FORMAT, "options_json");
        let o = c("{\"qaunt\": \"q8_0\"}");
        expect(lf_export(base.as_ptr(), null(), 0, dir.as_ptr(), o.as_ptr(), &mut s), LF_ERR_CONFIG, "qaunt");
        expect(lf_export(base.as_ptr(), adapter.as_ptr(), 1, dir.as_ptr(), null(), &mut s), LF_ERR_IO, "base.gguf");
        let model = c(fixture_model().to_str().unwrap());
        expect(
            lf_export(model.as_ptr(), null(), LF_EXPORT_GGUF_ADAPTER, dir.as_ptr(), null(), &mut s),
            LF_ERR_INVALID_ARGUMENT,
            "needs at least one adapter",
        );
        let o = c("{\"quant\": \"q4_k_m\"}");
        expect(
            lf_export(model.as_ptr(), adapter.as_ptr(), LF_EXPORT_SAFETENSORS, dir.as_ptr(), o.as_ptr(), &mut s),
            LF_ERR_INVALID_ARGUMENT,
            "GGUF model exports only",
        );
        assert!(s.is_null());
        assert!(!Path::new("/tmp/lf-export-x").exists(), "a failed export leaves nothing");
    }
}

/// Counts pieces; optionally calls back into the library from inside the callback.
struct ChatProbe {
    model: *mut LfModel,
    pieces: usize,
    stop_after: usize,
    reentrant_status: c_int,
}

unsafe extern "C" fn chat_probe(piece: *const c_char, user: *mut c_void) -> c_int {
    let p = &mut *(user as *mut ChatProbe);
    assert!(!CStr::from_ptr(piece).to_bytes().is_empty());
    p.pieces += 1;
    let mut s = null_mut();
    p.reentrant_status = lf_model_info(p.model, &mut s);
    (p.pieces >= p.stop_after) as c_int
}

#[test]
fn chat_streams_stops_and_refuses_reentrant_calls() {
    unsafe {
        let path = c(fixture_model().to_str().unwrap());
        let mut m = null_mut();
        assert_eq!(lf_model_new(path.as_ptr(), null(), null(), &mut m), LF_OK, "{}", last());
        let mut info = null_mut();
        assert_eq!(lf_model_info(m, &mut info), LF_OK);
        let v: serde_json::Value = serde_json::from_str(CStr::from_ptr(info).to_str().unwrap()).unwrap();
        assert_eq!(v["arch"], "llama");
        lf_string_free(info);

        let msgs = c(r#"[{"role": "user", "content": "What is the capital of France?"}]"#);
        let gen = c(r#"{"max_new_tokens": 12}"#);
        let mut probe = ChatProbe { model: m, pieces: 0, stop_after: 2, reentrant_status: -1 };
        let mut text: *mut c_char = dangling();
        let st =
            lf_chat(m, msgs.as_ptr(), gen.as_ptr(), Some(chat_probe), &mut probe as *mut _ as *mut c_void, &mut text);
        assert_eq!(st, LF_OK, "stopping from the callback is a normal end: {}", last());
        assert_eq!(probe.pieces, 2, "generation stops right after the callback asks");
        assert_eq!(probe.reentrant_status, LF_ERR_STATE, "a re-entrant call on the busy handle is refused");
        let reply = CStr::from_ptr(text).to_str().unwrap().to_string();
        assert!(!reply.is_empty());
        lf_string_free(text);

        // The same prompt without a callback gives the same start (greedy), so streaming == whole.
        let mut full = null_mut();
        assert_eq!(lf_chat(m, msgs.as_ptr(), gen.as_ptr(), None, null_mut(), &mut full), LF_OK);
        let full_text = CStr::from_ptr(full).to_str().unwrap().to_string();
        assert!(full_text.starts_with(&reply), "{full_text:?} vs streamed {reply:?}");
        lf_string_free(full);

        // Bad messages on a live model: an error, and *out_text stays NULL.
        let bad = c(r#"[{"role": "user"}]"#);
        let mut t2: *mut c_char = dangling();
        expect(lf_chat(m, bad.as_ptr(), null(), None, null_mut(), &mut t2), LF_ERR_FORMAT, "content");
        assert!(t2.is_null());
        let g = c(r#"{"temprature": 1}"#);
        expect(lf_chat(m, msgs.as_ptr(), g.as_ptr(), None, null_mut(), &mut t2), LF_ERR_CONFIG, "temprature");

        lf_model_free(m);
        assert_eq!(last(), "");
        expect(lf_model_info(m, &mut t2), LF_ERR_INVALID_ARGUMENT, "not a live handle");
        lf_model_free(m);
        assert!(last().contains("not a live handle"), "double free detected: {}", last());
    }
}

/// What the progress callback of the trainer test records.
struct RunProbe {
    trainer: *mut LfTrainer,
    steps: Vec<i64>,
    reentrant_status: c_int,
}

unsafe extern "C" fn run_probe(p: *const LfProgress, user: *mut c_void) -> c_int {
    let probe = &mut *(user as *mut RunProbe);
    probe.steps.push((*p).step);
    probe.reentrant_status = lf_trainer_step(probe.trainer, null_mut());
    // Cancel through the flag (not the return value): allowed while the handle is busy.
    assert_eq!(lf_trainer_cancel(probe.trainer), LF_OK);
    0
}

#[test]
fn trainer_cancel_from_callback_and_other_threads() {
    let out = tmp("cancel");
    let (model, ds, dd, od) =
        (c(fixture_model().to_str().unwrap()), c("demo_identity"), c(&data_dir()), c(out.to_str().unwrap()));
    let mut p = lf_train_default_params();
    p.model_name_or_path = model.as_ptr();
    p.dataset = ds.as_ptr();
    p.dataset_dir = dd.as_ptr();
    p.output_dir = od.as_ptr();
    p.lora_target = c("q_proj").into_raw();
    p.lora_rank = 2;
    p.max_steps = 3;
    p.per_device_train_batch_size = 1;
    p.cutoff_len = 32;
    p.max_samples = 8;
    p.logging_steps = 1;
    p.save_steps = 0;
    unsafe {
        let mut t = null_mut();
        let st = lf_trainer_new(&p, &mut t);
        drop(CString::from_raw(p.lora_target as *mut c_char));
        assert_eq!(st, LF_OK, "{}", last());
        let mut loss = 0.0;
        expect(lf_trainer_evaluate(t, &mut loss), LF_ERR_STATE, "no evaluation data");

        // 1. Cancel from inside the callback through lf_trainer_cancel; a re-entrant step is refused.
        let mut probe = RunProbe { trainer: t, steps: Vec::new(), reentrant_status: -1 };
        let st = lf_trainer_run(t, Some(run_probe), &mut probe as *mut _ as *mut c_void);
        expect(st, LF_ERR_CANCELLED, "checkpoint-1");
        assert_eq!(probe.steps, vec![1]);
        assert_eq!(probe.reentrant_status, LF_ERR_STATE);
        assert!(out.join("checkpoint-1").is_dir());

        // 2. Cancel from another thread before the run: it stops after its first step.
        let addr = t as usize;
        let st = std::thread::spawn(move || lf_trainer_cancel(addr as *mut LfTrainer)).join().unwrap();
        assert_eq!(st, LF_OK);
        expect(lf_trainer_run(t, None, null_mut()), LF_ERR_CANCELLED, "checkpoint-2");

        // 3. The request was consumed: stepping continues to the end, then refuses.
        let mut pr = LfProgress::default();
        assert_eq!(lf_trainer_step(t, &mut pr), LF_OK, "{}", last());
        assert_eq!((pr.step, pr.total), (3, 3));
        assert!(pr.loss.is_finite() && pr.eval_loss.is_nan());
        expect(lf_trainer_step(t, &mut pr), LF_ERR_STATE, "finished");
        assert_eq!(lf_trainer_finish(t), LF_OK, "{}", last());
        assert!(out.join("adapter_model.safetensors").is_file());
        let mut path = null_mut();
        assert_eq!(lf_trainer_save_checkpoint(t, &mut path), LF_OK, "{}", last());
        assert!(CStr::from_ptr(path).to_str().unwrap().ends_with("checkpoint-3"));
        lf_string_free(path);
        let e = c("");
        expect(lf_trainer_save_adapter(t, e.as_ptr()), LF_ERR_INVALID_ARGUMENT, "dir is empty");
        lf_trainer_free(t);
        assert_eq!(last(), "");
        expect(lf_trainer_cancel(t), LF_ERR_INVALID_ARGUMENT, "not a live handle");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `device` in the config picks the backend: the same two LoRA steps on SmolLM2 (Q4_1 base, kept
/// packed on the GPU) through `device: wgpu` and `device: cpu` give the same losses. Both compute
/// in f32; the GPU sums in another order, so the losses agree to ~1e-6 relative; 1e-4 still fails
/// on any wrong kernel (a wrong decode or gradient moves the second step's loss by far more).
/// Skips with a message when no wgpu adapter may be used (set LORAFORGE_ALLOW_SOFTWARE_ADAPTER=1).
/// `lf_model_new_on`: a model opened on wgpu chats greedily with the CPU's exact reply (8 tokens of
/// SmolLM2: the logits agree to ~1e-4, far from any near-tie on this prompt), says where it runs,
/// and bad device names are refused with the right status.
#[test]
fn model_on_wgpu_chats_like_the_cpu() {
    unsafe {
        let path = c(fixture_model().to_str().unwrap());
        let mut m = dangling();
        expect(
            lf_model_new_on(path.as_ptr(), null(), null(), c("gpu").as_ptr(), &mut m),
            LF_ERR_INVALID_ARGUMENT,
            "gpu",
        );
        assert!(m.is_null());
        expect(lf_model_new_on(path.as_ptr(), null(), null(), c("cuda").as_ptr(), &mut m), LF_ERR_UNSUPPORTED, "cuda");
        if let Err(e) = loraforge::backend::resolve_device(loraforge::backend::DeviceKind::Wgpu) {
            println!("SKIP model_on_wgpu_chats_like_the_cpu (wgpu part): {e}");
            return;
        }
        let msgs = c(r#"[{"role": "user", "content": "What is the capital of France?"}]"#);
        let gen = c(r#"{"max_new_tokens": 8}"#);
        let mut replies = Vec::new();
        for device in [null(), c("wgpu").into_raw() as *const c_char] {
            let mut m = null_mut();
            assert_eq!(lf_model_new_on(path.as_ptr(), null(), null(), device, &mut m), LF_OK, "{}", last());
            let mut info = null_mut();
            assert_eq!(lf_model_info(m, &mut info), LF_OK);
            let v: serde_json::Value = serde_json::from_str(CStr::from_ptr(info).to_str().unwrap()).unwrap();
            lf_string_free(info);
            let want = if device.is_null() { "cpu" } else { "wgpu (" };
            assert!(v["device"].as_str().unwrap().starts_with(want), "{v}");
            let mut text = null_mut();
            assert_eq!(lf_chat(m, msgs.as_ptr(), gen.as_ptr(), None, null_mut(), &mut text), LF_OK, "{}", last());
            replies.push(CStr::from_ptr(text).to_str().unwrap().to_string());
            lf_string_free(text);
            lf_model_free(m);
            if !device.is_null() {
                drop(CString::from_raw(device as *mut c_char));
            }
        }
        println!("cpu: {:?}\nwgpu: {:?}", replies[0], replies[1]);
        assert!(!replies[0].is_empty());
        assert_eq!(replies[0], replies[1]);
    }
}

#[test]
fn trainer_device_wgpu_matches_cpu() {
    if let Err(e) = loraforge::backend::resolve_device(loraforge::backend::DeviceKind::Wgpu) {
        println!("SKIP trainer_device_wgpu_matches_cpu: {e}");
        return;
    }
    let mut losses = Vec::new();
    for device in ["cpu", "wgpu"] {
        let out = tmp(&format!("device-{device}"));
        let (model, ds, dd, od) =
            (c(fixture_model().to_str().unwrap()), c("demo_identity"), c(&data_dir()), c(out.to_str().unwrap()));
        let target = c("q_proj,v_proj");
        let extra = c(&format!(r#"{{"device": "{device}", "seed": 3}}"#));
        let mut p = lf_train_default_params();
        p.model_name_or_path = model.as_ptr();
        p.dataset = ds.as_ptr();
        p.dataset_dir = dd.as_ptr();
        p.output_dir = od.as_ptr();
        p.lora_target = target.as_ptr();
        p.lora_rank = 4;
        p.max_steps = 2;
        p.per_device_train_batch_size = 1;
        p.cutoff_len = 24;
        p.max_samples = 4;
        p.save_steps = 0;
        p.learning_rate = 1e-2;
        p.extra_json = extra.as_ptr();
        unsafe {
            let mut t = null_mut();
            assert_eq!(lf_trainer_new(&p, &mut t), LF_OK, "{}", last());
            let mut run = Vec::new();
            for _ in 0..2 {
                let mut pr = LfProgress::default();
                assert_eq!(lf_trainer_step(t, &mut pr), LF_OK, "{}", last());
                run.push(pr.loss);
            }
            let mut js = null_mut();
            assert_eq!(lf_trainer_info(t, &mut js), LF_OK);
            let info = CStr::from_ptr(js).to_str().unwrap().to_string();
            lf_string_free(js);
            assert!(info.contains(device), "{device}: info does not name the device: {info}");
            lf_trainer_free(t);
            println!("{device}: losses {run:?}");
            losses.push(run);
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!(((a - b) / a).abs() < 1e-4, "cpu {:?} vs wgpu {:?}", losses[0], losses[1]);
    }
    assert!(losses[0][0] != losses[0][1], "the first step changed nothing: {:?}", losses[0]);
}
