//! The wgpu backend's place. Without the `wgpu` feature every entry answers
//! `Error::BackendNotCompiled("wgpu")`; with it (until the WGSL kernels land) `BackendNotImplemented`.

use crate::error::{Error, Result};

pub fn unavailable<T>() -> Result<T> {
    if cfg!(feature = "wgpu") {
        Err(Error::BackendNotImplemented("wgpu"))
    } else {
        Err(Error::BackendNotCompiled("wgpu"))
    }
}
