//! libloraforge: the C ABI. Every symbol is prefixed `lf_`; see ffi/include/loraforge.h.
//! (Only `lf_version` exists so far: the training lifecycle lands with issue 6.)

use std::ffi::c_char;

/// Returns the library version as a static NUL-terminated string. Never NULL; do not free.
#[no_mangle]
pub extern "C" fn lf_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}
