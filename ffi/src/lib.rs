//! libloraforge: the C ABI. Every symbol is prefixed `lf_`; ffi/include/loraforge.h is the one
//! header and documents the whole contract (status codes, last error, ownership, threads).
//!
//! ```text
//! status.rs   status codes, thread-local last error, the catch_unwind guard, C strings in/out
//! handle.rs   live-handle table + magic + busy flag: use-after-free / wrong kind / concurrent
//!             use become status codes
//! model.rs    lf_model_new/free/info, lf_chat (template applied, tokens streamed to a callback)
//! trainer.rs  lf_train_params, lf_trainer_* (step, run with progress, cancel, checkpoint, resume,
//!             evaluate, finish, save adapter, info)
//! export.rs   lf_export (merged safetensors, merged GGUF, GGUF LoRA adapter)
//! ```
//! Tests: ffi/src/tests.rs (every entry point with bad input), ffi/tests/header.rs (header ==
//! these definitions), ffi/tests/c_example.rs (ffi/examples/finetune.c end to end + valgrind).

use std::ffi::{c_char, c_int};
use std::sync::OnceLock;

pub mod export;
mod handle;
pub mod model;
pub mod status;
pub mod trainer;

#[cfg(test)]
mod tests;

pub use export::*;
pub use model::*;
pub use status::*;
pub use trainer::*;

/// Returns the library version as a static NUL-terminated string. Never NULL; do not free.
#[no_mangle]
pub extern "C" fn lf_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Is the wgpu backend compiled into the core library? (Its stub answers NotImplemented when the
/// feature is on, NotCompiled when off; the core exports no feature constant yet.)
fn wgpu_compiled() -> bool {
    matches!(loraforge::backend::wgpu_stub::unavailable::<()>(), Err(loraforge::Error::BackendNotImplemented(_)))
}

fn cuda_compiled() -> bool {
    matches!(loraforge::backend::cuda_stub::unavailable::<()>(), Err(loraforge::Error::BackendNotImplemented(_)))
}

/// Static JSON: version, compiled backends, target. Never NULL; do not free.
#[no_mangle]
pub extern "C" fn lf_build_features() -> *const c_char {
    static FEATURES: OnceLock<std::ffi::CString> = OnceLock::new();
    FEATURES
        .get_or_init(|| {
            let v = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "backends": {"cpu": true, "wgpu": wgpu_compiled(), "cuda": cuda_compiled()},
                "target": {"arch": std::env::consts::ARCH, "os": std::env::consts::OS},
                "debug_assertions": cfg!(debug_assertions),
            });
            std::ffi::CString::new(v.to_string()).unwrap_or_default()
        })
        .as_ptr()
}

/// This thread's last error message ("" after a successful call). Never NULL; do not free; valid
/// until the next `lf_` call on this thread.
#[no_mangle]
pub extern "C" fn lf_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// Frees a string the library returned through a `char **` out-parameter. NULL is a no-op.
///
/// # Safety
/// `s` is NULL or a string returned by this library, not freed before.
#[no_mangle]
pub unsafe extern "C" fn lf_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(std::ffi::CString::from_raw(s));
    }
}

fn memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = s.lines().find(|l| l.starts_with("MemTotal"))?.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(kb * 1024)
}

/// JSON array of devices: `[{"name": "cpu", "available": true, ...}, {"name": "wgpu", ...}]`.
///
/// # Safety
/// `out_json` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn lf_devices(out_json: *mut *mut c_char) -> c_int {
    guard("lf_devices", || {
        if out_json.is_null() {
            return Err(FfiError::invalid("out_json is NULL"));
        }
        clear_out(out_json);
        use loraforge::backend::{resolve_device, DeviceKind};
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut list = vec![serde_json::json!({
            "name": "cpu", "available": true, "threads": threads, "memory_bytes": memory_bytes(),
            "detail": "f32 compute (the reference backend)",
        })];
        for (name, kind) in [("wgpu", DeviceKind::Wgpu), ("cuda", DeviceKind::Cuda)] {
            list.push(match resolve_device(kind) {
                Ok(_) => serde_json::json!({"name": name, "available": true}),
                Err(e) => serde_json::json!({"name": name, "available": false, "detail": e.to_string()}),
            });
        }
        write_out_string(out_json, &serde_json::Value::Array(list).to_string());
        Ok(())
    })
}
