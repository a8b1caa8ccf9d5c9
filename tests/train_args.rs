//! `loraforge train CONFIG.yaml` configuration: LLaMA-Factory YAML, JSON, overrides, validation, round trip.
//! Spec: src/train/args.rs (keys and defaults from LLaMA-Factory hparams/*.py and HF TrainingArguments).

use loraforge::train::args::{
    DeviceChoice, EvalStrategy, ExportFormat, FinetuningType, ResumeFrom, SaveStrategy, SchedulerType, Stage,
    TrainArgs, FIELD_KEYS,
};
use std::path::{Path, PathBuf};

/// Close to LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml, with its ignored keys and inline comments.
const LLAMA3_LORA_SFT: &str = r#"### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
# eval_dataset: alpaca_en_demo
# val_size: 0.1
# per_device_eval_batch_size: 1
# eval_strategy: steps
# eval_steps: 500
"#;

fn parse(text: &str) -> (TrainArgs, Vec<String>) {
    TrainArgs::from_yaml_str(text).unwrap_or_else(|e| panic!("parse failed: {e}\n{text}"))
}

fn parse_err(text: &str) -> String {
    match TrainArgs::from_yaml_str(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A minimal valid training config, plus `extra` lines.
fn minimal(extra: &str) -> String {
    format!("model_name_or_path: smollm2-135m\ndataset: demo_identity\noutput_dir: out\n{extra}")
}

fn validate_err(extra: &str) -> String {
    let (a, _) = parse(&minimal(extra));
    match a.validate() {
        Ok(()) => panic!("expected validate() to fail for:\n{extra}"),
        Err(e) => e.to_string(),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn llama_factory_example_parses_with_the_right_values() {
    let (a, notes) = parse(LLAMA3_LORA_SFT);
    assert_eq!(a.model_name_or_path, "meta-llama/Meta-Llama-3-8B-Instruct");
    assert_eq!(a.stage, Stage::Sft);
    assert!(a.do_train);
    assert_eq!(a.finetuning_type, FinetuningType::Lora);
    assert_eq!(a.lora_rank, 8);
    assert_eq!(a.lora_target, s(&["all"]));
    assert_eq!(a.dataset, s(&["identity", "alpaca_en_demo"]));
    assert_eq!(a.template.as_deref(), Some("llama3"));
    assert_eq!(a.cutoff_len, 2048);
    assert_eq!(a.max_samples, Some(1000));
    assert_eq!(a.output_dir, "saves/llama3-8b/lora/sft");
    assert_eq!(a.logging_steps, 10);
    assert_eq!(a.save_steps, 500);
    assert!(a.plot_loss && a.overwrite_output_dir && !a.save_only_model);
    assert_eq!(a.per_device_train_batch_size, 1);
    assert_eq!(a.gradient_accumulation_steps, 8);
    assert_eq!(a.learning_rate, 1.0e-4);
    assert_eq!(a.num_train_epochs, 3.0);
    assert_eq!(a.lr_scheduler_type, SchedulerType::Cosine);
    assert_eq!(a.warmup_ratio, 0.1);
    assert!(a.bf16);
    assert_eq!(a.resume_from_checkpoint, None);
    assert_eq!(a.lora_alpha_value(), 16.0); // unset -> 2 * rank
                                            // One note per ignored key, each naming it.
    for key in [
        "trust_remote_code",
        "overwrite_cache",
        "preprocessing_num_workers",
        "dataloader_num_workers",
        "report_to",
        "ddp_timeout",
    ] {
        assert!(notes.iter().any(|n| n.contains(&format!("`{key}`"))), "no note for {key}: {notes:?}");
    }
    assert_eq!(notes.len(), 6, "{notes:?}");
    a.validate().unwrap();
}

#[test]
fn defaults_are_llama_factory_and_hf_defaults() {
    let d = TrainArgs::default();
    assert_eq!(d.stage, Stage::Sft);
    assert_eq!(d.finetuning_type, FinetuningType::Lora);
    assert_eq!((d.lora_rank, d.lora_alpha, d.lora_dropout), (8, None, 0.0));
    assert_eq!(d.lora_target, s(&["all"]));
    assert_eq!(d.pissa_iter, 16);
    assert_eq!(d.loraplus_lr_embedding, 1e-6);
    assert_eq!((d.freeze_trainable_layers, d.freeze_trainable_modules.clone()), (2, s(&["all"])));
    assert_eq!((d.dataset_dir.as_str(), d.cutoff_len, d.buffer_size), ("data", 2048, 16384));
    assert_eq!((d.packing, d.neat_packing, d.val_size), (None, false, 0.0));
    assert_eq!((d.quantization_type.as_str(), d.double_quantization), ("nf4", true));
    assert_eq!((d.logging_steps, d.save_steps, d.save_strategy), (500, 500, SaveStrategy::Steps));
    assert_eq!((d.per_device_train_batch_size, d.per_device_eval_batch_size, d.gradient_accumulation_steps), (8, 8, 1));
    assert_eq!((d.learning_rate, d.num_train_epochs, d.max_steps), (5e-5, 3.0, None));
    assert_eq!((d.lr_scheduler_type, d.warmup_ratio, d.warmup_steps), (SchedulerType::Linear, 0.0, 0));
    assert_eq!((d.adam_beta1, d.adam_beta2, d.adam_epsilon, d.max_grad_norm), (0.9, 0.999, 1e-8, 1.0));
    assert_eq!((d.weight_decay, d.optim.as_str(), d.seed), (0.0, "adamw_torch", 42));
    assert_eq!((d.eval_strategy, d.eval_steps), (EvalStrategy::No, None));
    assert_eq!((d.max_new_tokens, d.temperature, d.top_p, d.top_k, d.do_sample), (1024, 0.95, 0.7, 50, true));
    assert_eq!((d.export_size, d.export_format, d.export_dtype.as_str()), (5, ExportFormat::Safetensors, "bfloat16"));
    assert_eq!(d.device, DeviceChoice::Auto);
    // An empty file is all defaults, with no notes.
    let (e, notes) = parse("");
    assert_eq!(e, d);
    assert!(notes.is_empty());
    // ...and then validate() asks for the model.
    assert!(e.validate().unwrap_err().to_string().contains("model_name_or_path"));
    // Derived values.
    assert!(!d.packing_enabled());
    let (pt, _) = parse("stage: pt");
    assert!(pt.packing_enabled(), "packing defaults on for stage pt");
    assert_eq!(d.eval_steps_value(), 500, "eval_steps defaults to logging_steps");
}

#[test]
fn warmup_steps_and_lora_alpha_helpers() {
    let (a, _) = parse(&minimal("warmup_ratio: 0.1"));
    assert_eq!(a.warmup_steps_for(95), 10); // ceil(9.5)
    assert_eq!(a.warmup_steps_for(100), 10); // ceil(10.0): no off-by-one up
    assert_eq!(a.warmup_steps_for(0), 0);
    let (b, _) = parse(&minimal("warmup_ratio: 0.1\nwarmup_steps: 7"));
    assert_eq!(b.warmup_steps_for(95), 7, "warmup_steps wins when > 0");
    let (c, _) = parse(&minimal("lora_rank: 4\nlora_alpha: 32"));
    assert_eq!(c.lora_alpha_value(), 32.0);
    let (z, _) = parse(&minimal("lora_rank: 4\nlora_alpha: 0"));
    assert_eq!(z.lora_alpha_value(), 8.0, "LLaMA-Factory: `lora_alpha or 2 * rank`");
}

#[test]
fn unknown_key_suggests_the_nearest() {
    let e = parse_err("lora_rnak: 8");
    assert!(e.contains("unknown key `lora_rnak`") && e.contains("did you mean `lora_rank`?"), "{e}");
    let e = parse_err("learnig_rate: 1e-4");
    assert!(e.contains("did you mean `learning_rate`?"), "{e}");
    let e = parse_err("per_device_batch_size: 4");
    assert!(
        e.contains("did you mean `per_device_train_batch_size`?") || e.contains("per_device_eval_batch_size"),
        "{e}"
    );
    // Nothing close: no wild guess.
    let e = parse_err("banana: 1");
    assert!(e.contains("unknown key `banana`") && !e.contains("did you mean"), "{e}");
}

#[test]
fn wrong_types_name_the_key_expected_type_and_value() {
    let e = parse_err("learning_rate: fast");
    assert!(e.contains(r#"learning_rate: expected a number, got "fast""#), "{e}");
    let e = parse_err("lora_rank: eight");
    assert!(e.contains(r#"lora_rank: expected a non-negative integer, got "eight""#), "{e}");
    let e = parse_err("lora_rank: -4");
    assert!(e.contains("lora_rank: expected a non-negative integer, got -4"), "{e}");
    let e = parse_err("do_train: maybe");
    assert!(e.contains(r#"do_train: expected true or false, got "maybe""#), "{e}");
    let e = parse_err("stage: finetune");
    assert!(e.contains("stage: expected one of pt, sft, rm, ppo, dpo, kto") && e.contains("finetune"), "{e}");
    let e = parse_err("lr_scheduler_type: cosinus");
    assert!(e.contains("lr_scheduler_type: expected one of") && e.contains("warmup_stable_decay"), "{e}");
    let e = parse_err("lora_target: {q: 1}");
    assert!(e.contains("lora_target: expected a list"), "{e}");
    let e = parse_err("quantization_bit: 7");
    assert!(e.contains("quantization_bit: expected 4 or 8, got 7"), "{e}");
    let e = parse_err("export_quant: q3_k");
    assert!(e.contains("export_quant: expected one of q8_0") && e.contains("q3_k"), "{e}");
}

#[test]
fn accepts_what_hf_accepts() {
    let (a, notes) = parse(
        "learning_rate: \"5e-5\"\nlora_rank: \"16\"\nnum_train_epochs: 2\ndo_train: \"yes\"\nbf16: True\n\
         lora_dropout: 5.0e-2\nwarmup_steps: 10.0\nmax_steps: -1\nlora_target:\n  - q_proj\n  - v_proj\n\
         eval_strategy: no\nsave_strategy: \"epoch\"\nadam_epsilon: 1e-6\nlr_scheduler_kwargs: '{\"num_cycles\": 2}'\n\
         resume_from_checkpoint: true\nmax_grad_norm: .5",
    );
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(a.learning_rate, 5e-5);
    assert_eq!(a.lora_rank, 16);
    assert_eq!(a.num_train_epochs, 2.0);
    assert!(a.do_train && a.bf16);
    assert_eq!(a.lora_dropout, 0.05);
    assert_eq!(a.warmup_steps, 10);
    assert_eq!(a.max_steps, None, "HF -1 = no limit");
    assert_eq!(a.lora_target, s(&["q_proj", "v_proj"]));
    assert_eq!(a.eval_strategy, EvalStrategy::No);
    assert_eq!(a.save_strategy, SaveStrategy::Epoch);
    assert_eq!(a.adam_epsilon, 1e-6);
    assert_eq!(a.lr_scheduler_kwargs.get("num_cycles").and_then(|v| v.as_f64()), Some(2.0));
    assert_eq!(a.resume_from_checkpoint, Some(ResumeFrom::Latest));
    assert_eq!(a.max_grad_norm, 0.5);
    // Comma strings with spaces, as LLaMA-Factory's split_arg.
    let (b, _) = parse("lora_target: q_proj, v_proj ,o_proj\nresume_from_checkpoint: saves/x/checkpoint-100");
    assert_eq!(b.lora_target, s(&["q_proj", "v_proj", "o_proj"]));
    assert_eq!(b.resume_from_checkpoint, Some(ResumeFrom::Path(PathBuf::from("saves/x/checkpoint-100"))));
    // YAML 1.1 `false` for a strategy, and the old key name with a note.
    let (c, notes) = parse("evaluation_strategy: steps\nsave_strategy: false");
    assert_eq!(c.eval_strategy, EvalStrategy::Steps);
    assert_eq!(c.save_strategy, SaveStrategy::No);
    assert!(notes.iter().any(|n| n.contains("`evaluation_strategy`")), "{notes:?}");
}

#[test]
fn ignored_keys_give_one_note_each() {
    let (_, notes) = parse(&minimal(
        "flash_attn: fa2\ndeepspeed: examples/deepspeed/ds_z3_config.json\nfsdp_config: {}\nuse_unsloth: true\n\
         enable_liger_kernel: true\ntorch_compile: true\nrun_name: x\nlogging_dir: logs\n\
         gradient_checkpointing_kwargs: {use_reentrant: false}\nupcast_layernorm: true\npush_to_hub: false\n\
         hub_model_id: me/x\nuse_fast_tokenizer: true\nlow_cpu_mem_usage: true\ninfer_backend: vllm\n\
         cache_dir: /tmp/hf\ntool_format: qwen\noptim: adamw_8bit\nquantization_method: gptq\nuse_galore: false",
    ));
    assert_eq!(notes.len(), 20, "{notes:#?}");
    assert!(notes.iter().all(|n| !n.contains('\n')), "notes are one line each");
    assert!(notes.iter().any(|n| n.contains("`flash_attn` is ignored")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("adamw_8bit")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("`use_galore: false`")), "{notes:?}");
}

#[test]
fn unsupported_features_say_so() {
    for (yaml, what) in [
        ("pref_beta: 0.1", "`pref_beta`"),
        ("use_galore: true", "`use_galore`"),
        ("galore_rank: 16", "`galore_rank`"),
        ("use_badam: true", "`use_badam`"),
        ("use_apollo: true", "`use_apollo`"),
        ("use_llama_pro: true", "`use_llama_pro`"),
        ("mixture_of_depths: convert", "`mixture_of_depths`"),
        ("quantization_bit: 2", "`quantization_bit: 2`"),
        ("quantization_bit: 3", "`quantization_bit: 3`"),
        ("quantization_type: fp4", "`quantization_type: fp4`"),
        ("optim: sgd", "`optim: sgd`"),
        ("finetuning_type: oft", "`finetuning_type: oft`"),
        ("export_quantization_bit: 4", "`export_quantization_bit`"),
        ("lr_scheduler_type: reduce_lr_on_plateau", "`lr_scheduler_type: reduce_lr_on_plateau`"),
        ("logging_steps: 0.1", "logging_steps"),
        ("num_beams: 4", "num_beams"),
    ] {
        let e = parse_err(yaml);
        assert!(e.contains(what) && e.contains("is not supported yet by loraforge"), "{yaml}: {e}");
    }
    // Stages other than pt/sft parse (a LLaMA-Factory DPO YAML reads) but do not validate.
    for stage in ["dpo", "kto", "rm", "ppo"] {
        let e = validate_err(&format!("stage: {stage}"));
        assert!(e.contains(&format!("`stage: {stage}` is not supported yet by loraforge")), "{e}");
    }
}

#[test]
fn overrides_in_every_form() {
    let (mut a, mut notes) = parse(&minimal(""));
    let ov = s(&[
        "learning_rate=2e-4",
        "--lora_rank",
        "16",
        "--lora-dropout=0.1",
        "lora_target=q_proj,v_proj",
        "--bf16",
        "--max_steps",
        "30",
        "lr_scheduler_kwargs.num_cycles=2",
        "template=chatml",
        "--flash_attn=fa2",
    ]);
    a.apply_overrides(&ov, &mut notes).unwrap();
    assert_eq!(a.learning_rate, 2e-4);
    assert_eq!(a.lora_rank, 16);
    assert_eq!(a.lora_dropout, 0.1);
    assert_eq!(a.lora_target, s(&["q_proj", "v_proj"]));
    assert!(a.bf16, "a bare --flag means true");
    assert_eq!(a.max_steps, Some(30));
    assert_eq!(a.lr_scheduler_kwargs.get("num_cycles").and_then(|v| v.as_i64()), Some(2));
    assert_eq!(a.template.as_deref(), Some("chatml"));
    assert!(notes.iter().any(|n| n.contains("`flash_attn`")), "{notes:?}");
    // Errors name the override and keep the suggestion.
    let e = a.apply_overrides(&s(&["lora_rnak=4"]), &mut notes).unwrap_err().to_string();
    assert!(e.contains("override `lora_rnak=4`") && e.contains("did you mean `lora_rank`?"), "{e}");
    let e = a.apply_overrides(&s(&["lora_rank"]), &mut notes).unwrap_err().to_string();
    assert!(e.contains("expected key=value"), "{e}");
    let e = a.apply_overrides(&s(&["learning_rate=fast"]), &mut notes).unwrap_err().to_string();
    assert!(e.contains(r#"expected a number, got "fast""#), "{e}");
}

#[test]
fn load_reads_file_applies_overrides_then_validates() {
    let dir = std::env::temp_dir().join(format!("loraforge_train_args_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("cfg.yaml");
    std::fs::write(&yaml, minimal("learning_rate: 1e-4")).unwrap();
    let (a, _) = TrainArgs::load(Some(&yaml), &s(&["learning_rate=3e-4"])).unwrap();
    assert_eq!(a.learning_rate, 3e-4, "override wins over the file");
    // Validation runs after overrides: an override can break (or fix) a config.
    let e = TrainArgs::load(Some(&yaml), &s(&["lora_rank=0"])).unwrap_err().to_string();
    assert!(e.contains("lora_rank must be > 0"), "{e}");
    let (b, _) =
        TrainArgs::load(None, &s(&["model_name_or_path=smollm2-135m", "dataset=demo_dates", "output_dir=o"])).unwrap();
    assert_eq!(b.dataset, s(&["demo_dates"]));
    // File errors carry the path; unknown extensions are refused.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "lora_rnak: 8\n").unwrap();
    let e = TrainArgs::from_file(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.yaml") && e.contains("lora_rank"), "{e}");
    let txt = dir.join("cfg.txt");
    std::fs::write(&txt, "x").unwrap();
    assert!(TrainArgs::from_file(&txt).unwrap_err().to_string().contains(".yaml, .yml or .json"));
    assert!(TrainArgs::from_file(&dir.join("missing.yaml")).is_err());
    let json = dir.join("cfg.json");
    std::fs::write(&json, r#"{"model_name_or_path": "gemma3-270m", "dataset": "demo_chat", "output_dir": "o"}"#)
        .unwrap();
    let (j, _) = TrainArgs::load(Some(&json), &[]).unwrap();
    assert_eq!(j.model_name_or_path, "gemma3-270m");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn malformed_yaml_reports_line_and_never_panics() {
    let e = parse_err("model_name_or_path: x\nlora_target: [q_proj, v_proj\nlora_rank: 8\n");
    assert!(e.contains("invalid YAML") && e.contains("line"), "{e}");
    let e = parse_err("a: b\n  c: d\n");
    assert!(e.contains("invalid YAML"), "{e}");
    let e = parse_err("lora_rank: 8\nlora_rank: 16\n");
    assert!(e.contains("duplicated key"), "{e}");
    let e = parse_err("- just\n- a list\n");
    assert!(e.contains("expected a mapping"), "{e}");
    let e = parse_err("a: 1\n---\nb: 2\n");
    assert!(e.contains("one document"), "{e}");
    // Every prefix of a real config (cut anywhere) returns Ok or Err: no panic on truncated files.
    for (i, _) in LLAMA3_LORA_SFT.char_indices() {
        let _ = TrainArgs::from_yaml_str(&LLAMA3_LORA_SFT[..i]);
    }
    let json = r#"{"model_name_or_path": "x", "lora_target": ["q_proj", "v_proj"], "learning_rate": 1e-4}"#;
    for (i, _) in json.char_indices() {
        let _ = TrainArgs::from_json_str(&json[..i]);
    }
    assert!(TrainArgs::from_json_str("[1, 2]").unwrap_err().to_string().contains("expected a mapping"));
    assert!(TrainArgs::from_json_str("{").unwrap_err().to_string().contains("invalid JSON"));
}

#[test]
fn validate_catches_cross_field_mistakes() {
    for (extra, want) in [
        ("quantization_bit: 4\nfinetuning_type: freeze", "quantization_bit needs finetuning_type: lora"),
        ("eval_strategy: steps", "eval_strategy: steps needs evaluation data"),
        ("do_eval: true", "need evaluation data"),
        ("neat_packing: true\npacking: false", "neat_packing implies packing"),
        ("lora_rank: 0", "lora_rank must be > 0"),
        ("cutoff_len: 0", "cutoff_len must be > 0"),
        ("val_size: 1.0", "val_size"),
        ("val_size: 2.5", "val_size"),
        ("val_size: -0.1", "val_size"),
        ("val_size: 0.1\neval_dataset: x", "either val_size or eval_dataset"),
        ("per_device_train_batch_size: 0", "per_device_train_batch_size must be > 0"),
        ("gradient_accumulation_steps: 0", "gradient_accumulation_steps must be > 0"),
        ("bf16: true\nfp16: true", "at most one of bf16 and fp16"),
        ("lr_scheduler_type: cosine_with_min_lr", "min_lr_rate"),
        ("lr_scheduler_kwargs: {power: 2}", "`power` is not used by lr_scheduler_type `linear`"),
        ("export_quant: q4_k_m", "needs export_format: gguf"),
        ("use_dora: true\nfinetuning_type: full", "use_dora is only valid with finetuning_type: lora"),
        ("adapter_name_or_path: a\nfinetuning_type: freeze", "adapter_name_or_path needs finetuning_type: lora"),
        ("mask_history: true\ntrain_on_prompt: true", "mask_history and train_on_prompt"),
        ("stage: pt\ntrain_on_prompt: true", "only valid with stage: sft"),
        ("streaming: true", "streaming needs max_steps"),
        ("early_stopping_steps: 3", "early_stopping_steps needs evaluation"),
        ("warmup_ratio: 1.5", "warmup_ratio"),
        ("lora_dropout: 1.0", "lora_dropout"),
        ("save_steps: 0", "save_steps must be > 0"),
        ("max_memory_gb: 0", "max_memory_gb must be > 0"),
    ] {
        let e = validate_err(extra);
        assert!(e.contains(want), "{extra:?}: got {e:?}, want {want:?}");
    }
    // Missing output_dir / dataset when training, but not for an export-only config.
    let (a, _) = parse("model_name_or_path: smollm2-135m\ndataset: d");
    assert!(a.validate().unwrap_err().to_string().contains("output_dir is required"));
    let (b, _) = parse("model_name_or_path: smollm2-135m\noutput_dir: o");
    assert!(b.validate().unwrap_err().to_string().contains("dataset is required"));
    let (c, _) = parse("model_name_or_path: smollm2-135m\nadapter_name_or_path: saves/x\nexport_dir: out");
    assert!(c.is_export_config());
    c.validate().unwrap();
    // Things that must pass: eval with val_size, neat_packing alone, QLoRA on LoRA.
    for extra in [
        "eval_strategy: steps\nval_size: 0.1\neval_steps: 50",
        "neat_packing: true",
        "quantization_bit: 4",
        "val_size: 200",
        "lr_scheduler_type: warmup_stable_decay\nlr_scheduler_kwargs: {num_decay_steps: 10}",
    ] {
        let (a, _) = parse(&minimal(extra));
        a.validate().unwrap_or_else(|e| panic!("{extra:?} should validate: {e}"));
    }
}

#[test]
fn to_yaml_round_trips_every_key() {
    let (mut a, _) = parse(LLAMA3_LORA_SFT);
    // Fill every Option and some awkward strings so each writer path runs.
    a.adapter_name_or_path = s(&["saves/a", "saves/b: with colon"]);
    a.quantization_bit = Some(4);
    a.lora_alpha = Some(12.5);
    a.loraplus_lr_ratio = Some(16.0);
    a.additional_target = s(&["embed_tokens"]);
    a.freeze_extra_modules = s(&["lm_head"]);
    a.eval_dataset = s(&["demo_chat"]);
    a.packing = Some(false);
    a.default_system = Some("You are \"helpful\".\nTwo lines, # not a comment".into());
    a.save_total_limit = Some(3);
    a.max_steps = Some(1234);
    a.lr_scheduler_kwargs.insert("num_cycles".into(), serde_json::json!(0.75));
    a.neftune_noise_alpha = Some(5.0);
    a.data_seed = Some(7);
    a.resume_from_checkpoint = Some(ResumeFrom::Path(PathBuf::from("saves/x/checkpoint-10")));
    a.eval_strategy = EvalStrategy::No;
    a.save_strategy = SaveStrategy::No;
    a.eval_steps = Some(25);
    a.early_stopping_steps = Some(4);
    a.export_dir = Some("exported".into());
    a.export_format = ExportFormat::Gguf;
    a.export_quant = Some("q4_k_m".into());
    a.device = DeviceChoice::Wgpu;
    a.max_memory_gb = Some(7.5);
    a.chunk_tokens = Some(512);
    a.learning_rate = 1.0 / 3.0 * 1e-4; // not a short decimal: must come back bit-exact
    let text = a.to_yaml();
    let (b, notes) = parse(&text);
    assert_eq!(b, a, "round trip changed something:\n{text}");
    assert!(notes.is_empty(), "{notes:?}");
    // Exactly the documented keys, each once.
    let keys: Vec<&str> =
        text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(keys, FIELD_KEYS);
    // Defaults round-trip too (Nones written as null).
    let d = TrainArgs::default();
    assert_eq!(parse(&d.to_yaml()).0, d);
}

#[test]
fn json_uses_the_same_keys() {
    let j = r#"{
        "model_name_or_path": "smollm2-135m",
        "dataset": ["demo_identity", "demo_dates"],
        "output_dir": "saves/smollm2/lora",
        "lora_rank": 16, "lora_alpha": 32, "lora_target": "q_proj,v_proj",
        "learning_rate": 0.0002, "num_train_epochs": 1, "lr_scheduler_type": "cosine",
        "lr_scheduler_kwargs": {"num_cycles": 0.5},
        "bf16": false, "quantization_bit": null, "resume_from_checkpoint": false,
        "report_to": "none"
    }"#;
    let (a, notes) = TrainArgs::from_json_str(j).unwrap();
    assert_eq!(a.dataset, s(&["demo_identity", "demo_dates"]));
    assert_eq!((a.lora_rank, a.lora_alpha_value()), (16, 32.0));
    assert_eq!(a.lora_target, s(&["q_proj", "v_proj"]));
    assert_eq!(a.learning_rate, 2e-4);
    assert_eq!(a.lr_scheduler_type, SchedulerType::Cosine);
    assert_eq!(notes.len(), 1);
    a.validate().unwrap();
    // Same content as YAML gives the same struct.
    let (y, _) = parse(
        "model_name_or_path: smollm2-135m\ndataset: demo_identity,demo_dates\noutput_dir: saves/smollm2/lora\n\
         lora_rank: 16\nlora_alpha: 32\nlora_target: [q_proj, v_proj]\nlearning_rate: 2.0e-4\nnum_train_epochs: 1\n\
         lr_scheduler_type: cosine\nlr_scheduler_kwargs: {num_cycles: 0.5}\n",
    );
    assert_eq!(y, a);
    let e = TrainArgs::from_json_str(r#"{"lora_rank": "x"}"#).unwrap_err().to_string();
    assert!(e.contains(r#"lora_rank: expected a non-negative integer, got "x""#), "{e}");
}

fn example_yamls() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_yaml_parses_and_validates() {
    let files = example_yamls();
    assert!(files.len() >= 7, "expected the 7 smollm2_*.yaml examples, found {files:?}");
    for f in &files {
        let (a, notes) = TrainArgs::load(Some(f), &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // Examples teach only keys loraforge uses: no ignored-key notes.
        assert!(notes.is_empty(), "{}: {notes:?}", f.display());
        assert!(matches!(a.model_name_or_path.as_str(), "smollm2-135m" | "gemma3-270m"), "{}", f.display());
    }
    let get = |name: &str| {
        let p = files.iter().find(|p| p.file_name().unwrap() == name).unwrap_or_else(|| panic!("{name} missing"));
        TrainArgs::from_file(p).unwrap().0
    };
    assert_eq!(get("smollm2_lora_pretrain.yaml").stage, Stage::Pt);
    assert_eq!(get("smollm2_qlora_sft.yaml").quantization_bit, Some(4));
    assert_eq!(get("smollm2_freeze_sft.yaml").finetuning_type, FinetuningType::Freeze);
    assert_eq!(get("smollm2_full_sft.yaml").finetuning_type, FinetuningType::Full);
    assert!(get("smollm2_lora_dora.yaml").use_dora);
    assert!(get("smollm2_export_gguf.yaml").is_export_config());
    assert_eq!(get("smollm2_lora_sft.yaml").dataset, s(&["demo_dates", "demo_identity"]));
}
