//! The CUDA backend's place. Without the `cuda` feature every entry answers
//! `Error::BackendNotCompiled("cuda")`; with it (until the kernels land) `BackendNotImplemented`.
//! Never a panic, so `--device cuda` on any build gives a clear message.

use crate::error::{Error, Result};

pub fn unavailable<T>() -> Result<T> {
    if cfg!(feature = "cuda") {
        Err(Error::BackendNotImplemented("cuda"))
    } else {
        Err(Error::BackendNotCompiled("cuda"))
    }
}
