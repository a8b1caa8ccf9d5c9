//! A size-bucketed pool of storage buffers with current/peak byte accounting.
//!
//! Creating (and first binding) a wgpu buffer is expensive, and a training step allocates the same
//! activation sizes every step, so a dropped `WgpuStorage` returns its buffer here and the next
//! request of the same bucket reuses it (ratchet's buffer pool). Buckets are powers of two (at
//! least 256 bytes), so a pooled buffer is usually larger than the tensor it holds: kernels always
//! take their lengths from their params, never from `arrayLength`.
//!
//! Frozen weights, which live for the whole run, take exact-size buffers instead (`get_exact`).
//! Those have free lists of their own: a long-lived buffer taken in the middle of a step (an
//! attention ranges cache entry) then leaves the activation buckets as they were, so the next
//! step gets the same activation buffers as this one, and with them its cached bind groups.
//!
//! Accounting: `current` counts the bucket bytes held by live storages (what the model uses);
//! `peak` is its maximum. Idle pooled buffers are counted apart (`cached`).
//!
//! Reuse is safe without fences: every command that touches a buffer is recorded, in order, into
//! the one command stream of the device (see device.rs), so work recorded after a buffer is reused
//! runs after all work recorded before it was dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Smallest bucket in bytes (wgpu's minimum storage alignment is 256 on many adapters).
const MIN_BUCKET: u64 = 256;

#[derive(Default)]
struct Inner {
    /// Idle buffers by (size, exact).
    free: HashMap<(u64, bool), Vec<wgpu::Buffer>>,
    current: u64,
    peak: u64,
    cached: u64,
}

pub struct Pool {
    inner: Mutex<Inner>,
    /// The adapter's max buffer size: a bucket never exceeds it (the exact size is used instead).
    max_buffer: u64,
}

/// A pooled buffer: returns itself to the pool on drop.
pub struct PooledBuffer {
    pub buffer: Option<wgpu::Buffer>,
    pub bytes: u64,
    /// Taken by `get_exact` (returns to the exact free lists).
    exact: bool,
    pool: Arc<Pool>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            let mut g = self.pool.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.current -= self.bytes;
            g.cached += self.bytes;
            g.free.entry((self.bytes, self.exact)).or_default().push(b);
        }
    }
}

impl PooledBuffer {
    pub fn buf(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Pool {
    pub fn new(max_buffer: u64) -> Arc<Self> {
        Arc::new(Pool { inner: Mutex::new(Inner::default()), max_buffer })
    }

    /// The bucket a request of `bytes` falls in.
    pub fn bucket(&self, bytes: u64) -> u64 {
        let b = bytes.max(MIN_BUCKET).next_power_of_two();
        if b > self.max_buffer {
            bytes.max(MIN_BUCKET).div_ceil(16) * 16
        } else {
            b
        }
    }

    /// A buffer of at least `bytes` (STORAGE | COPY_SRC | COPY_DST). Contents are undefined.
    pub fn get(self: &Arc<Self>, device: &wgpu::Device, bytes: u64) -> PooledBuffer {
        self.get_sized(device, self.bucket(bytes), false)
    }

    /// A buffer of `bytes` rounded up to 256 only, for long-lived data (frozen weights): a
    /// power-of-two bucket would cost up to twice the weight's size for the whole run (an NF4
    /// matrix of 8 MiB codes + its absmax codes would take a 16 MiB bucket).
    pub fn get_exact(self: &Arc<Self>, device: &wgpu::Device, bytes: u64) -> PooledBuffer {
        self.get_sized(device, bytes.max(MIN_BUCKET).div_ceil(MIN_BUCKET) * MIN_BUCKET, true)
    }

    fn get_sized(self: &Arc<Self>, device: &wgpu::Device, size: u64, exact: bool) -> PooledBuffer {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let reused = g.free.get_mut(&(size, exact)).and_then(|v| v.pop());
        if reused.is_some() {
            g.cached -= size;
        }
        g.current += size;
        g.peak = g.peak.max(g.current);
        drop(g);
        let buffer = reused.unwrap_or_else(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("loraforge.pool"),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        PooledBuffer { buffer: Some(buffer), bytes: size, exact, pool: self.clone() }
    }

    /// (current, peak, cached) bytes.
    pub fn stats(&self) -> (u64, u64, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.current, g.peak, g.cached)
    }
}
