//! Status codes, the thread-local last error, the panic guard every entry point runs in, and the
//! C string helpers (in and out). Header: ffi/include/loraforge.h ("Status codes", "Strings").
//!
//! Contract easy to miss: `guard` clears the thread's last error when a call starts, so the
//! message `lf_last_error` returns always belongs to the last failed call on that thread, and a
//! successful call leaves "" behind. A panic anywhere below is caught here and becomes
//! LF_ERR_INTERNAL with the panic's message; nothing unwinds into C.

use loraforge::Error;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

// The status codes. Values are ABI: never renumber, only append (the header test checks that
// ffi/include/loraforge.h spells the same names and values).
pub const LF_OK: c_int = 0;
pub const LF_ERR_INVALID_ARGUMENT: c_int = 1;
pub const LF_ERR_IO: c_int = 2;
pub const LF_ERR_FORMAT: c_int = 3;
pub const LF_ERR_CONFIG: c_int = 4;
pub const LF_ERR_CANCELLED: c_int = 5;
pub const LF_ERR_STATE: c_int = 6;
pub const LF_ERR_INTERNAL: c_int = 7;
pub const LF_ERR_UNSUPPORTED: c_int = 8;
pub const LF_ERR_OUT_OF_MEMORY: c_int = 9;

/// Every status name and value, in order (the header test compares this table with the header).
pub const STATUS_CODES: [(&str, c_int); 10] = [
    ("LF_OK", LF_OK),
    ("LF_ERR_INVALID_ARGUMENT", LF_ERR_INVALID_ARGUMENT),
    ("LF_ERR_IO", LF_ERR_IO),
    ("LF_ERR_FORMAT", LF_ERR_FORMAT),
    ("LF_ERR_CONFIG", LF_ERR_CONFIG),
    ("LF_ERR_CANCELLED", LF_ERR_CANCELLED),
    ("LF_ERR_STATE", LF_ERR_STATE),
    ("LF_ERR_INTERNAL", LF_ERR_INTERNAL),
    ("LF_ERR_UNSUPPORTED", LF_ERR_UNSUPPORTED),
    ("LF_ERR_OUT_OF_MEMORY", LF_ERR_OUT_OF_MEMORY),
];

/// An error on its way to C: a status code and the message `lf_last_error` will return.
#[derive(Debug)]
pub struct FfiError {
    pub code: c_int,
    pub msg: String,
}

pub type FfiResult<T> = Result<T, FfiError>;

impl FfiError {
    pub fn new(code: c_int, msg: impl Into<String>) -> Self {
        FfiError { code, msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        FfiError::new(LF_ERR_INVALID_ARGUMENT, msg)
    }
    pub fn state(msg: impl Into<String>) -> Self {
        FfiError::new(LF_ERR_STATE, msg)
    }
}

/// The status a library error maps to. `fallback` is used for kinds that say nothing about the
/// cause (plain messages: in a config call these are config errors, in a chat call bad input...).
pub fn code_of(e: &Error, fallback: c_int) -> c_int {
    match e {
        Error::Io { .. } => LF_ERR_IO,
        Error::Format { .. } | Error::Truncated { .. } | Error::MissingKey(_) | Error::Json(_) => LF_ERR_FORMAT,
        Error::InvalidArgument { .. } => LF_ERR_INVALID_ARGUMENT,
        Error::BackendNotCompiled(_) | Error::BackendNotImplemented(_) => LF_ERR_UNSUPPORTED,
        Error::OutOfMemory { .. } => LF_ERR_OUT_OF_MEMORY,
        Error::Context { source, .. } => code_of(source, fallback),
        _ => fallback,
    }
}

/// Converts a library error with the fallback status for plain messages.
pub fn lib_err(fallback: c_int) -> impl Fn(Error) -> FfiError {
    move |e| FfiError::new(code_of(&e, fallback), e.to_string())
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub fn set_last_error(msg: &str) {
    // An interior NUL would truncate the C string; show it instead.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Pointer to this thread's last error ("" when the last call succeeded). Valid until the next
/// `lf_` call on this thread.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".into()
    }
}

/// Runs one entry point's body: clears the last error, catches panics, records the failure.
/// `name` prefixes the message so C users see which call failed.
pub fn guard(name: &str, body: impl FnOnce() -> FfiResult<()>) -> c_int {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => LF_OK,
        Ok(Err(e)) => {
            set_last_error(&format!("{name}: {}", e.msg));
            e.code
        }
        Err(p) => {
            set_last_error(&format!("{name}: internal error (panic): {}", panic_message(p.as_ref())));
            LF_ERR_INTERNAL
        }
    }
}

/// A required C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid during the call.
pub unsafe fn arg_str<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::invalid(format!("{what} is NULL")));
    }
    CStr::from_ptr(p).to_str().map_err(|e| FfiError::invalid(format!("{what} is not valid UTF-8: {e}")))
}

/// An optional C string argument: NULL (and "") mean absent.
///
/// # Safety
/// As `arg_str`.
pub unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    let s = arg_str(p, what)?;
    Ok((!s.is_empty()).then_some(s))
}

/// A string handed to C: malloc'd by Rust's allocator as a CString, freed with `lf_string_free`.
pub fn to_c_string(s: &str) -> *mut c_char {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default().into_raw()
}

/// Writes a new string to an out-pointer when the caller gave one.
///
/// # Safety
/// `out` is NULL or valid for one pointer write.
pub unsafe fn write_out_string(out: *mut *mut c_char, s: &str) {
    if !out.is_null() {
        *out = to_c_string(s);
    }
}

/// Sets `*out = NULL` first thing, so a failed call never leaves a stale pointer behind.
///
/// # Safety
/// `out` is NULL or valid for one pointer write.
pub unsafe fn clear_out<T>(out: *mut *mut T) {
    if !out.is_null() {
        *out = std::ptr::null_mut();
    }
}
