//! `lf_trainer`: a training run (src/train/trainer.rs `Trainer<B>` on the backend the config's
//! `device` picks: cpu, wgpu, or auto) behind a handle:
//! created from a YAML / JSON config string (the keys of `loraforge train`, LLaMA-Factory names)
//! or from `lf_train_params`; stepped, run with a progress callback, cancelled from any thread,
//! checkpointed, resumed, evaluated, and saved as a PEFT adapter.
//! Header: ffi/include/loraforge.h ("Training"). Test: ffi/src/tests.rs, ffi/tests/c_example.rs.
//!
//! Contracts easy to miss:
//! - `lf_train_params` is turned into the same JSON object a config string would be (so both
//!   paths share one parser, `TrainArgs::from_json_str`); its `extra_json` keys are applied last
//!   and override the fields.
//! - Cancellation (callback returning nonzero, or `lf_trainer_cancel`) takes effect at the end of
//!   the step in progress: a checkpoint is written and `lf_trainer_run` returns LF_ERR_CANCELLED.
//!   The flag is consumed by that return, so the next `lf_trainer_run` trains again. To resume in
//!   a new process, create a trainer with `resume_from_checkpoint` set.

use crate::handle::{self, Handle, Kind};
use crate::status::*;
use loraforge::backend::{Backend, CpuBackend, DeviceKind};
use loraforge::train::args::TrainArgs;
use loraforge::train::trainer::{StepReport, StopReason, TrainSummary, Trainer};
use serde_json::{json, Map, Value};
use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `lf_train_params`: the common knobs as a C struct. Strings are borrowed for the duration of
/// `lf_trainer_new` only. 0 / NULL in a field marked "0: ..." means the library default.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LfTrainParams {
    pub model_name_or_path: *const c_char,
    pub dataset: *const c_char,
    pub dataset_dir: *const c_char,
    pub output_dir: *const c_char,
    pub template_name: *const c_char,
    pub lora_target: *const c_char,
    pub extra_json: *const c_char,
    pub lora_rank: i32,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    pub max_steps: i64,
    pub per_device_train_batch_size: i32,
    pub gradient_accumulation_steps: i32,
    pub cutoff_len: i32,
    pub max_samples: i64,
    pub val_size: f64,
    pub logging_steps: i32,
    pub save_steps: i32,
    pub seed: u64,
    pub quantization_bit: i32,
    pub overwrite_output_dir: i32,
    pub resume_from_checkpoint: i32,
}

/// `lf_progress`: what one step did (a copy of `StepReport`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LfProgress {
    pub step: i64,
    pub total: i64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    pub epoch: f64,
    pub eval_loss: f64,
}

impl From<&StepReport> for LfProgress {
    fn from(r: &StepReport) -> Self {
        LfProgress {
            step: r.step as i64,
            total: r.total as i64,
            loss: r.loss,
            lr: r.lr,
            grad_norm: r.grad_norm,
            tokens_per_s: r.tokens_per_s,
            eta_s: r.eta_s,
            epoch: r.epoch,
            eval_loss: r.eval_loss.unwrap_or(f64::NAN),
        }
    }
}

/// `int (*lf_progress_cb)(const lf_progress *p, void *user)`: nonzero cancels.
pub type LfProgressCb = Option<unsafe extern "C" fn(p: *const LfProgress, user: *mut c_void) -> c_int>;

/// The `Trainer` methods the ABI uses, object-safe, so one handle type holds a run on any backend.
trait Run: Send {
    fn is_done(&self) -> bool;
    fn global_step(&self) -> usize;
    fn total_steps(&self) -> usize;
    fn total_tokens(&self) -> u64;
    fn args(&self) -> &TrainArgs;
    fn notes(&self) -> &[String];
    fn step(&mut self) -> loraforge::Result<StepReport>;
    fn run(&mut self, on_step: &mut dyn FnMut(&StepReport) -> bool) -> loraforge::Result<TrainSummary>;
    fn save_checkpoint(&mut self) -> loraforge::Result<PathBuf>;
    fn evaluate(&mut self) -> loraforge::Result<f64>;
    fn finish(&mut self) -> loraforge::Result<TrainSummary>;
    fn save_trained(&mut self, dir: &Path) -> loraforge::Result<()>;
    fn describe(&mut self) -> loraforge::Result<String>;
}

impl<B: Backend + Send> Run for Trainer<B>
where
    Trainer<B>: Send,
{
    fn is_done(&self) -> bool {
        Trainer::is_done(self)
    }
    fn global_step(&self) -> usize {
        self.global_step
    }
    fn total_steps(&self) -> usize {
        self.total_steps
    }
    fn total_tokens(&self) -> u64 {
        Trainer::total_tokens(self)
    }
    fn args(&self) -> &TrainArgs {
        &self.args
    }
    fn notes(&self) -> &[String] {
        &self.notes
    }
    fn step(&mut self) -> loraforge::Result<StepReport> {
        Trainer::step(self)
    }
    fn run(&mut self, on_step: &mut dyn FnMut(&StepReport) -> bool) -> loraforge::Result<TrainSummary> {
        Trainer::run(self, on_step)
    }
    fn save_checkpoint(&mut self) -> loraforge::Result<PathBuf> {
        Trainer::save_checkpoint(self)
    }
    fn evaluate(&mut self) -> loraforge::Result<f64> {
        Trainer::evaluate(self)
    }
    fn finish(&mut self) -> loraforge::Result<TrainSummary> {
        Trainer::finish(self)
    }
    fn save_trained(&mut self, dir: &Path) -> loraforge::Result<()> {
        Trainer::save_trained(self, dir)
    }
    fn describe(&mut self) -> loraforge::Result<String> {
        Trainer::describe(self)
    }
}

/// The opaque `lf_trainer`.
pub struct LfTrainer {
    magic: u64,
    busy: AtomicBool,
    /// The trainer's own cancel flag (`Trainer::cancel_flag`), set by `lf_trainer_cancel`.
    cancel: Arc<AtomicBool>,
    trainer: Box<dyn Run>,
    checkpoint: Option<PathBuf>,
    finished: bool,
}

impl Handle for LfTrainer {
    const KIND: Kind = Kind::Trainer;
    const MAGIC: u64 = 0x4c46_5452_4149_4e21; // "LFTRAIN!"
    fn magic(&self) -> u64 {
        self.magic
    }
    fn busy(&self) -> &AtomicBool {
        &self.busy
    }
}

/// The defaults of `TrainArgs::default()`, as the struct spells them.
#[no_mangle]
pub extern "C" fn lf_train_default_params() -> LfTrainParams {
    let a = TrainArgs::default();
    LfTrainParams {
        model_name_or_path: std::ptr::null(),
        dataset: std::ptr::null(),
        dataset_dir: std::ptr::null(),
        output_dir: std::ptr::null(),
        template_name: std::ptr::null(),
        lora_target: std::ptr::null(),
        extra_json: std::ptr::null(),
        lora_rank: a.lora_rank as i32,
        lora_alpha: a.lora_alpha.unwrap_or(0.0),
        lora_dropout: a.lora_dropout,
        learning_rate: a.learning_rate,
        num_train_epochs: a.num_train_epochs,
        max_steps: a.max_steps.unwrap_or(0) as i64,
        per_device_train_batch_size: a.per_device_train_batch_size as i32,
        gradient_accumulation_steps: a.gradient_accumulation_steps as i32,
        cutoff_len: a.cutoff_len as i32,
        max_samples: a.max_samples.unwrap_or(0) as i64,
        val_size: a.val_size,
        logging_steps: a.logging_steps as i32,
        save_steps: a.save_steps as i32,
        seed: a.seed,
        quantization_bit: a.quantization_bit.unwrap_or(0) as i32,
        overwrite_output_dir: a.overwrite_output_dir as i32,
        resume_from_checkpoint: 0,
    }
}

/// The params as the JSON config object they stand for.
///
/// # Safety
/// String fields are NULL or NUL-terminated.
pub unsafe fn params_to_json(p: &LfTrainParams) -> FfiResult<Map<String, Value>> {
    let mut m = Map::new();
    let req = |ptr, what: &str| -> FfiResult<String> { Ok(arg_str(ptr, what)?.to_string()) };
    m.insert("model_name_or_path".into(), json!(req(p.model_name_or_path, "params.model_name_or_path")?));
    m.insert("dataset".into(), json!(req(p.dataset, "params.dataset")?));
    m.insert("output_dir".into(), json!(req(p.output_dir, "params.output_dir")?));
    for (k, ptr) in [("dataset_dir", p.dataset_dir), ("template", p.template_name), ("lora_target", p.lora_target)] {
        if let Some(s) = opt_str(ptr, &format!("params.{k}"))? {
            m.insert(k.into(), json!(s));
        }
    }
    let nonneg = |v: i64, what: &str| -> FfiResult<i64> {
        if v < 0 {
            Err(FfiError::new(LF_ERR_CONFIG, format!("params.{what} = {v}: must be >= 0")))
        } else {
            Ok(v)
        }
    };
    m.insert("lora_rank".into(), json!(nonneg(p.lora_rank as i64, "lora_rank")?));
    if p.lora_alpha > 0.0 {
        m.insert("lora_alpha".into(), json!(p.lora_alpha));
    }
    m.insert("lora_dropout".into(), json!(p.lora_dropout));
    m.insert("learning_rate".into(), json!(p.learning_rate));
    m.insert("num_train_epochs".into(), json!(p.num_train_epochs));
    if nonneg(p.max_steps, "max_steps")? > 0 {
        m.insert("max_steps".into(), json!(p.max_steps));
    }
    m.insert("per_device_train_batch_size".into(), json!(nonneg(p.per_device_train_batch_size as i64, "batch")?));
    m.insert("gradient_accumulation_steps".into(), json!(nonneg(p.gradient_accumulation_steps as i64, "accum")?));
    m.insert("cutoff_len".into(), json!(nonneg(p.cutoff_len as i64, "cutoff_len")?));
    if nonneg(p.max_samples, "max_samples")? > 0 {
        m.insert("max_samples".into(), json!(p.max_samples));
    }
    m.insert("val_size".into(), json!(p.val_size));
    m.insert("logging_steps".into(), json!(nonneg(p.logging_steps as i64, "logging_steps")?));
    if nonneg(p.save_steps as i64, "save_steps")? > 0 {
        m.insert("save_steps".into(), json!(p.save_steps));
    } else {
        m.insert("save_strategy".into(), json!("no"));
    }
    m.insert("seed".into(), json!(p.seed));
    if p.quantization_bit != 0 {
        m.insert("quantization_bit".into(), json!(p.quantization_bit));
    }
    m.insert("overwrite_output_dir".into(), json!(p.overwrite_output_dir != 0));
    if p.resume_from_checkpoint != 0 {
        m.insert("resume_from_checkpoint".into(), json!(true));
    }
    if let Some(extra) = opt_str(p.extra_json, "params.extra_json")? {
        let v: Value =
            serde_json::from_str(extra).map_err(|e| FfiError::new(LF_ERR_FORMAT, format!("params.extra_json: {e}")))?;
        let Value::Object(extra) = v else {
            return Err(FfiError::new(LF_ERR_CONFIG, "params.extra_json: expected a JSON object of config keys"));
        };
        m.extend(extra);
    }
    Ok(m)
}

fn create(parsed: loraforge::Result<(TrainArgs, Vec<String>)>, out: *mut *mut LfTrainer) -> FfiResult<()> {
    let (args, notes) = parsed.map_err(lib_err(LF_ERR_CONFIG))?;
    args.validate().map_err(lib_err(LF_ERR_CONFIG))?;
    // The same device choice as `loraforge train` (device: auto picks a hardware GPU when there is one).
    let kind = args.device_kind().map_err(lib_err(LF_ERR_UNSUPPORTED))?;
    let (trainer, cancel): (Box<dyn Run>, _) = match kind {
        DeviceKind::Cpu => {
            let t = Trainer::new(CpuBackend::new(), args, notes).map_err(lib_err(LF_ERR_CONFIG))?;
            let c = t.cancel_flag();
            (Box::new(t), c)
        }
        DeviceKind::Wgpu => {
            let be = loraforge::backend::wgpu::WgpuBackend::new().map_err(lib_err(LF_ERR_UNSUPPORTED))?;
            let t = Trainer::new(be, args, notes).map_err(lib_err(LF_ERR_CONFIG))?;
            let c = t.cancel_flag();
            (Box::new(t), c)
        }
        other => {
            return Err(FfiError::new(
                LF_ERR_UNSUPPORTED,
                format!("device {other:?}: training on this backend is not available in this build; use cpu or wgpu"),
            ))
        }
    };
    let h = LfTrainer {
        magic: LfTrainer::MAGIC,
        busy: AtomicBool::new(false),
        cancel,
        trainer,
        checkpoint: None,
        finished: false,
    };
    // SAFETY: the callers checked `out` is not NULL.
    unsafe { *out = handle::register(h) };
    Ok(())
}

/// Creates a trainer from `lf_train_params` (start from `lf_train_default_params()`).
///
/// # Safety
/// `params` is NULL or valid; `out` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_new(params: *const LfTrainParams, out: *mut *mut LfTrainer) -> c_int {
    guard("lf_trainer_new", || {
        if out.is_null() || params.is_null() {
            return Err(FfiError::invalid(if out.is_null() { "out is NULL" } else { "params is NULL" }));
        }
        clear_out(out);
        let m = params_to_json(&*params)?;
        create(TrainArgs::from_json_str(&Value::Object(m).to_string()), out)
    })
}

/// Creates a trainer from a YAML config (the text of a `loraforge train` config file).
///
/// # Safety
/// `yaml` is NULL or NUL-terminated; `out` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_new_from_yaml(yaml: *const c_char, out: *mut *mut LfTrainer) -> c_int {
    guard("lf_trainer_new_from_yaml", || {
        if out.is_null() {
            return Err(FfiError::invalid("out is NULL"));
        }
        clear_out(out);
        create(TrainArgs::from_yaml_str(arg_str(yaml, "yaml")?), out)
    })
}

/// Creates a trainer from a JSON object with the same keys.
///
/// # Safety
/// `json` is NULL or NUL-terminated; `out` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_new_from_json(json: *const c_char, out: *mut *mut LfTrainer) -> c_int {
    guard("lf_trainer_new_from_json", || {
        if out.is_null() {
            return Err(FfiError::invalid("out is NULL"));
        }
        clear_out(out);
        create(TrainArgs::from_json_str(arg_str(json, "json")?), out)
    })
}

/// Frees a trainer (nothing is saved); NULL is a no-op.
///
/// # Safety
/// `t` is NULL or a pointer returned by an `lf_trainer_new*` call.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_free(t: *mut LfTrainer) {
    guard("lf_trainer_free", || handle::free(t));
}

/// One optimizer step; `out` (nullable) receives its report.
///
/// # Safety
/// `t` is a trainer handle; `out` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_step(t: *mut LfTrainer, out: *mut LfProgress) -> c_int {
    guard("lf_trainer_step", || {
        let mut lease = handle::acquire(t)?;
        let h = lease.get();
        if h.trainer.is_done() {
            return Err(FfiError::state(format!(
                "training is finished ({}/{} steps)",
                h.trainer.global_step(),
                h.trainer.total_steps()
            )));
        }
        let r = h.trainer.step().map_err(lib_err(LF_ERR_INTERNAL))?;
        if !out.is_null() {
            *out = LfProgress::from(&r);
        }
        Ok(())
    })
}

/// Trains to the end, calling `cb` (nullable) after every step; then writes the final outputs.
///
/// # Safety
/// `t` is a trainer handle; `cb` is called on this thread only, during this call.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_run(t: *mut LfTrainer, cb: LfProgressCb, user: *mut c_void) -> c_int {
    guard("lf_trainer_run", || {
        let mut lease = handle::acquire(t)?;
        let h = lease.get();
        if h.trainer.is_done() && h.finished {
            return Err(FfiError::state("training is finished; create a new trainer to train again"));
        }
        let mut on_step = |r: &StepReport| -> bool {
            match cb {
                None => true,
                Some(cb) => {
                    let p = LfProgress::from(r);
                    cb(&p, user) == 0
                }
            }
        };
        let res = h.trainer.run(&mut on_step);
        // The request is answered by this return (whatever it is): the next run trains again.
        h.cancel.store(false, Ordering::SeqCst);
        let summary = res.map_err(lib_err(LF_ERR_INTERNAL))?;
        if summary.stop == StopReason::Cancelled {
            h.checkpoint = summary.checkpoint.clone();
            return Err(FfiError::new(
                LF_ERR_CANCELLED,
                format!(
                    "cancelled at step {}/{}; checkpoint {} (resume with resume_from_checkpoint)",
                    summary.global_step,
                    h.trainer.total_steps(),
                    summary.checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            ));
        }
        h.finished = true;
        Ok(())
    })
}

/// Asks a running `lf_trainer_run` to stop at the end of its current step. Any thread.
///
/// # Safety
/// `t` is a trainer handle (it may be in use by `lf_trainer_run` on another thread).
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_cancel(t: *mut LfTrainer) -> c_int {
    guard("lf_trainer_cancel", || handle::with_shared(t, |h| h.cancel.store(true, Ordering::SeqCst)))
}

/// Writes `output_dir/checkpoint-STEP` now; `out_path` (nullable) receives its path.
///
/// # Safety
/// `t` is a trainer handle; `out_path` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_save_checkpoint(t: *mut LfTrainer, out_path: *mut *mut c_char) -> c_int {
    guard("lf_trainer_save_checkpoint", || {
        clear_out(out_path);
        let mut lease = handle::acquire(t)?;
        let h = lease.get();
        let dir = h.trainer.save_checkpoint().map_err(lib_err(LF_ERR_IO))?;
        write_out_string(out_path, &dir.display().to_string());
        h.checkpoint = Some(dir);
        Ok(())
    })
}

/// Mean loss over the evaluation data (set val_size or eval_dataset).
///
/// # Safety
/// `t` is a trainer handle; `out_loss` is valid for one write.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_evaluate(t: *mut LfTrainer, out_loss: *mut f64) -> c_int {
    guard("lf_trainer_evaluate", || {
        if out_loss.is_null() {
            return Err(FfiError::invalid("out_loss is NULL"));
        }
        let mut lease = handle::acquire(t)?;
        let loss = lease.get().trainer.evaluate().map_err(lib_err(LF_ERR_STATE))?;
        *out_loss = loss;
        Ok(())
    })
}

/// Writes the final outputs (adapter, metrics, trainer_state.json) after `lf_trainer_step` loops.
///
/// # Safety
/// `t` is a trainer handle.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_finish(t: *mut LfTrainer) -> c_int {
    guard("lf_trainer_finish", || {
        let mut lease = handle::acquire(t)?;
        let h = lease.get();
        h.trainer.finish().map_err(lib_err(LF_ERR_IO))?;
        h.finished = true;
        Ok(())
    })
}

/// Saves the trained adapter (PEFT: adapter_model.safetensors + adapter_config.json) to `dir`.
///
/// # Safety
/// `t` is a trainer handle; `dir` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_save_adapter(t: *mut LfTrainer, dir: *const c_char) -> c_int {
    guard("lf_trainer_save_adapter", || {
        let dir = arg_str(dir, "dir")?;
        if dir.is_empty() {
            return Err(FfiError::invalid("dir is empty"));
        }
        let mut lease = handle::acquire(t)?;
        lease.get().trainer.save_trained(Path::new(dir)).map_err(lib_err(LF_ERR_IO))
    })
}

/// JSON state of the run: steps, done, output_dir, last checkpoint, notes, description.
///
/// # Safety
/// `t` is a trainer handle; `out_json` is valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_trainer_info(t: *mut LfTrainer, out_json: *mut *mut c_char) -> c_int {
    guard("lf_trainer_info", || {
        if out_json.is_null() {
            return Err(FfiError::invalid("out_json is NULL"));
        }
        clear_out(out_json);
        let mut lease = handle::acquire(t)?;
        let h = lease.get();
        let description = h.trainer.describe().map_err(lib_err(LF_ERR_INTERNAL))?;
        let v = json!({
            "global_step": h.trainer.global_step(),
            "total_steps": h.trainer.total_steps(),
            "done": h.trainer.is_done(),
            "finished": h.finished,
            "output_dir": h.trainer.args().output_dir,
            "checkpoint": h.checkpoint.as_ref().map(|p| p.display().to_string()),
            "total_tokens": h.trainer.total_tokens(),
            "notes": h.trainer.notes(),
            "description": description,
        });
        write_out_string(out_json, &v.to_string());
        Ok(())
    })
}
