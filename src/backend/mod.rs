//! Backends: `cpu` (the reference), `wgpu`, `cuda`. See `Backend`.

pub mod cpu;
