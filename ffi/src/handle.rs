//! Opaque handles: a table of live handles, a magic word per handle, and a busy flag, so misuse
//! from C becomes a status code instead of undefined behaviour wherever it can be detected.
//!
//! - Every `_new` registers the heap address with its kind; every call looks the pointer up
//!   first. A freed pointer (use after free, double free) or a model passed where a trainer is
//!   expected is not in the table: LF_ERR_INVALID_ARGUMENT. The only miss: the allocator hands
//!   the same address to a NEW handle of the same kind, then the stale pointer names that one.
//! - The magic word is checked too (a second line of defence, and what a debugger shows).
//! - Handles are not thread-safe objects: one call at a time per handle. The busy flag turns a
//!   second concurrent (or re-entrant, from inside a callback) call into LF_ERR_STATE instead of
//!   two `&mut` to one Rust value. `lf_trainer_cancel` only touches the cancel flag, under the
//!   table's lock, so it may come from any thread at any time.
//! - `_free` refuses (and sets the last error) while another call is running on the handle.

use crate::status::{FfiError, FfiResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Model,
    Trainer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "lf_model",
            Kind::Trainer => "lf_trainer",
        }
    }
}

/// Live handles: address → kind.
static LIVE: Mutex<Option<HashMap<usize, Kind>>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Option<HashMap<usize, Kind>>> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts and
    // removes), so a poisoned lock is still usable.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every handle struct starts with.
pub trait Handle: Sized {
    const KIND: Kind;
    const MAGIC: u64;
    fn magic(&self) -> u64;
    fn busy(&self) -> &AtomicBool;
}

/// Boxes a handle, registers it, and returns the raw pointer C gets.
pub fn register<H: Handle>(h: H) -> *mut H {
    let p = Box::into_raw(Box::new(h));
    live().get_or_insert_with(HashMap::new).insert(p as usize, H::KIND);
    p
}

fn check<H: Handle>(map: &Option<HashMap<usize, Kind>>, p: *const H) -> FfiResult<()> {
    if p.is_null() {
        return Err(FfiError::invalid(format!("{} is NULL", H::KIND.name())));
    }
    match map.as_ref().and_then(|m| m.get(&(p as usize))) {
        Some(k) if *k == H::KIND => {}
        Some(k) => {
            return Err(FfiError::invalid(format!("expected an {}, got an {}", H::KIND.name(), k.name())));
        }
        None => {
            return Err(FfiError::invalid(format!(
                "{} {p:p} is not a live handle (freed already, or never returned by a _new call)",
                H::KIND.name()
            )))
        }
    }
    // SAFETY: the address is registered, so it is a live Box<H> (it leaves the table before it
    // is dropped, under the same lock we hold).
    if unsafe { (*p).magic() } != H::MAGIC {
        return Err(FfiError::invalid(format!("{} {p:p}: bad magic word (memory corrupted?)", H::KIND.name())));
    }
    Ok(())
}

/// Exclusive use of a handle for one call; released when dropped.
pub struct Lease<H: Handle> {
    p: *mut H,
}

impl<H: Handle> Lease<H> {
    pub fn get(&mut self) -> &mut H {
        // SAFETY: the busy flag we hold makes this the only `&mut` to the handle, and free
        // refuses to drop a busy handle.
        unsafe { &mut *self.p }
    }
}

impl<H: Handle> Drop for Lease<H> {
    fn drop(&mut self) {
        // SAFETY: still alive: free cannot drop it while busy.
        unsafe { (*self.p).busy().store(false, Ordering::Release) };
    }
}

/// Checks `p` and takes it for the duration of one call.
pub fn acquire<H: Handle>(p: *mut H) -> FfiResult<Lease<H>> {
    let map = live();
    check(&map, p)?;
    // SAFETY: checked live above, under the lock.
    let busy = unsafe { (*p).busy() };
    if busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return Err(FfiError::state(format!(
            "{} {p:p} is in use by another call (one thread at a time per handle; no re-entrant calls from a \
             callback)",
            H::KIND.name()
        )));
    }
    Ok(Lease { p })
}

/// Runs `f` on a live handle under the table's lock, without taking it (for the cancel flag).
pub fn with_shared<H: Handle, R>(p: *const H, f: impl FnOnce(&H) -> R) -> FfiResult<R> {
    let map = live();
    check(&map, p)?;
    // SAFETY: live while we hold the lock; `f` only reads thread-safe fields.
    Ok(f(unsafe { &*p }))
}

/// Unregisters and drops. NULL is a no-op; an unknown or busy handle is left alone (message in
/// the last error).
pub fn free<H: Handle>(p: *mut H) -> FfiResult<()> {
    if p.is_null() {
        return Ok(());
    }
    {
        let mut map = live();
        check(&map, p)?;
        // SAFETY: live, checked under the lock.
        let busy = unsafe { (*p).busy() };
        if busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(FfiError::state(format!("{} {p:p} is in use by another call; not freed", H::KIND.name())));
        }
        if let Some(m) = map.as_mut() {
            m.remove(&(p as usize));
        }
    }
    // SAFETY: removed from the table while we held its busy flag: nobody else can reach it.
    drop(unsafe { Box::from_raw(p) });
    Ok(())
}
