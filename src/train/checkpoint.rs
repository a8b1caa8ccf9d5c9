//! Crash-safe checkpoint directories: `output_dir/checkpoint-{step}`, built in a temp dir and renamed in.
//! Spec: this file   Test: tests/runout.rs (write_dir_atomic_*, checkpoints_*, f32_tensors_*)
//!
//! Contract easy to miss: a checkpoint counts as complete only when it holds the marker file
//! `loraforge_checkpoint.json` (`CHECKPOINT_MARKER`); `fill` should write it LAST (`write_checkpoint_marker`).
//! `list_checkpoints` / `latest_checkpoint` ignore everything else, so a directory copied in by hand or a
//! half-deleted one never becomes the resume point.
//!
//! Crash story (POSIX rename is atomic; fsync makes it durable):
//!   1. `fill` writes into `.tmp-<name>-<pid>` beside the final dir; every file and dir in it is fsynced.
//!   2. No old dir: rename tmp -> final, fsync the parent. Done.
//!   3. An old dir: rename final -> `.old-<name>-<pid>`, rename tmp -> final, fsync parent, delete the old one.
//!      A crash between the two renames leaves no `final` but a complete `.old-*`: `clean_stale_temp` renames
//!      it back, so the previous checkpoint survives.
//!
//! Deleting a checkpoint (rotation) first renames it to `.tmp-del-<name>-<pid>`, so a half-deleted directory
//! is never mistaken for a checkpoint; `clean_stale_temp` finishes the job.

use crate::error::{Error, Result};
use crate::io::safetensors::{write_safetensors, SafetensorsFile};
use safetensors::Dtype;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Marker file that makes a checkpoint directory complete.
pub const CHECKPOINT_MARKER: &str = "loraforge_checkpoint.json";
/// HF's `PREFIX_CHECKPOINT_DIR`.
pub const CHECKPOINT_PREFIX: &str = "checkpoint";

/// Unique suffix for temp names within this process (two writers of the same path in one process).
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn ioe(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// fsync a directory so that a rename inside it is durable. Best effort: some filesystems refuse
/// to open or sync directories; the rename itself is still atomic there.
pub fn fsync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: `.{name}.tmp.{pid}.{n}` beside it, fsync, rename, fsync of the dir.
/// A crash leaves either the old file or the new one, never a torn one.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| Error::msg(format!("{}: not a file path", path.display())))?;
    let parent = path.parent().unwrap_or(Path::new(""));
    if !parent.as_os_str().is_empty() {
        std::fs::create_dir_all(parent).map_err(ioe(parent))?;
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(".{}.tmp.{}.{n}", name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    fsync_dir(parent);
    Ok(())
}

/// fsyncs every file and directory under `dir` (depth first), then `dir` itself.
fn fsync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(ioe(dir))? {
        let entry = entry.map_err(ioe(dir))?;
        let p = entry.path();
        let ft = entry.file_type().map_err(ioe(&p))?;
        if ft.is_dir() {
            fsync_tree(&p)?;
        } else if ft.is_file() {
            std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(ioe(&p))?;
        }
    }
    fsync_dir(dir);
    Ok(())
}

/// Builds `final_dir` atomically: `fill` writes files into a fresh sibling temp dir (".tmp-<name>-<pid>"); then
/// every file and the dir are fsynced, the temp dir is renamed to final_dir (an existing final_dir is replaced
/// safely: rename old away, rename new in, delete old), and the parent is fsynced. If `fill` fails, the temp dir
/// is removed and final_dir is untouched.
pub fn write_dir_atomic(final_dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = final_dir
        .file_name()
        .ok_or_else(|| Error::msg(format!("{}: not a directory path", final_dir.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = final_dir.parent().unwrap_or(Path::new(""));
    let parent_or_dot = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    std::fs::create_dir_all(parent_or_dot).map_err(ioe(parent_or_dot))?;
    let pid = std::process::id();
    let tmp = parent_or_dot.join(format!(".tmp-{name}-{pid}"));
    if tmp.exists() {
        // A leftover of an earlier crashed process that had our pid: never complete, safe to drop.
        std::fs::remove_dir_all(&tmp).map_err(ioe(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(ioe(&tmp))?;
    let filled = fill(&tmp).and_then(|()| fsync_tree(&tmp));
    if let Err(e) = filled {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if final_dir.exists() {
        let old = parent_or_dot.join(format!(".old-{name}-{pid}"));
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(ioe(&old))?;
        }
        if let Err(e) = std::fs::rename(final_dir, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(final_dir, e));
        }
        if let Err(e) = std::fs::rename(&tmp, final_dir) {
            // Put the old one back; the new one is lost but nothing that existed before is.
            let _ = std::fs::rename(&old, final_dir);
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(final_dir, e));
        }
        fsync_dir(parent_or_dot);
        std::fs::remove_dir_all(&old).map_err(ioe(&old))?;
    } else {
        if let Err(e) = std::fs::rename(&tmp, final_dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(final_dir, e));
        }
        fsync_dir(parent_or_dot);
    }
    Ok(())
}

/// `output_dir/checkpoint-{step}` (HF's naming, so HF/LLaMA-Factory tools find them).
pub fn checkpoint_dir(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join(format!("{CHECKPOINT_PREFIX}-{step}"))
}

/// Writes the completion marker `{"step": step, "format": 1}` into a checkpoint dir. Call it last in `fill`.
pub fn write_checkpoint_marker(dir: &Path, step: usize) -> Result<()> {
    let v = serde_json::json!({ "step": step, "format": 1 });
    let p = dir.join(CHECKPOINT_MARKER);
    std::fs::write(&p, serde_json::to_string_pretty(&v)? + "\n").map_err(ioe(&p))
}

/// Complete checkpoints (`checkpoint-{step}` dirs holding the marker), sorted by step. Temp dirs (names starting
/// with '.') and anything without the marker are ignored. A missing `output_dir` gives an empty list.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let rd = match std::fs::read_dir(output_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(output_dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(ioe(output_dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name.strip_prefix(CHECKPOINT_PREFIX).and_then(|s| s.strip_prefix('-')) else { continue };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(step) = num.parse::<usize>() else { continue };
        let p = entry.path();
        if p.is_dir() && p.join(CHECKPOINT_MARKER).is_file() {
            out.push((step, p));
        }
    }
    out.sort_by_key(|(s, _)| *s);
    Ok(out)
}

/// The complete checkpoint with the highest step, if any.
pub fn latest_checkpoint(output_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(output_dir)?.pop().map(|(_, p)| p))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Removes a directory crash-safely: rename to a temp name first (so it stops being a checkpoint at once), then delete.
fn remove_dir_safely(dir: &Path) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = dir.parent().unwrap_or(Path::new("."));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(".tmp-del-{name}-{}.{n}", std::process::id()));
    std::fs::rename(dir, &tmp).map_err(ioe(dir))?;
    fsync_dir(parent);
    std::fs::remove_dir_all(&tmp).map_err(ioe(&tmp))
}

/// As HF `Trainer._rotate_checkpoints`: with `save_total_limit = Some(n)` (n >= 1) keep the `n` newest complete
/// checkpoints and delete the older ones. `keep` (the best checkpoint) is never deleted and counts toward `n`;
/// the newest checkpoint always survives too (it is the resume point), so with n = 1 and `keep` older than the
/// newest, two remain (HF does the same). `None` or `Some(0)`: nothing is deleted.
pub fn rotate_checkpoints(output_dir: &Path, save_total_limit: Option<usize>, keep: Option<&Path>) -> Result<()> {
    let limit = match save_total_limit {
        Some(n) if n > 0 => n,
        _ => return Ok(()),
    };
    let all = list_checkpoints(output_dir)?;
    if all.len() <= limit {
        return Ok(());
    }
    let keep_idx = keep.and_then(|k| all.iter().position(|(_, p)| same_dir(p, k)));
    let others: Vec<&PathBuf> =
        all.iter().enumerate().filter(|(i, _)| Some(*i) != keep_idx).map(|(_, (_, p))| p).collect();
    let allowed = match keep_idx {
        None => limit,
        Some(i) if i + 1 == all.len() => limit - 1,
        Some(_) => (limit - 1).max(1),
    };
    let n_delete = others.len().saturating_sub(allowed);
    for p in &others[..n_delete] {
        remove_dir_safely(p)?;
    }
    Ok(())
}

/// Removes leftovers of a crash in `output_dir`: `.tmp-*` dirs (unfinished or half-deleted checkpoints) and
/// `.{file}.tmp.*` files (unfinished atomic writes). A `.old-<name>-<pid>` dir is renamed back to `<name>` when
/// `<name>` is missing (the crash fell between the two renames of a replacement), else deleted.
/// Call it at startup, before anything else writes to `output_dir`.
pub fn clean_stale_temp(output_dir: &Path) -> Result<()> {
    let rd = match std::fs::read_dir(output_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(output_dir, e)),
    };
    let mut olds = Vec::new();
    for entry in rd {
        let entry = entry.map_err(ioe(output_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let p = entry.path();
        let is_dir = entry.file_type().map_err(ioe(&p))?.is_dir();
        if name.starts_with(".tmp-") {
            if is_dir {
                std::fs::remove_dir_all(&p).map_err(ioe(&p))?;
            } else {
                std::fs::remove_file(&p).map_err(ioe(&p))?;
            }
        } else if name.starts_with('.') && name.contains(".tmp.") && !is_dir {
            std::fs::remove_file(&p).map_err(ioe(&p))?;
        } else if let Some(rest) = name.strip_prefix(".old-") {
            if let Some((orig, _pid)) = rest.rsplit_once('-') {
                olds.push((p, output_dir.join(orig)));
            }
        }
    }
    for (old, orig) in olds {
        if orig.exists() {
            std::fs::remove_dir_all(&old).map_err(ioe(&old))?;
        } else {
            std::fs::rename(&old, &orig).map_err(ioe(&old))?;
        }
    }
    fsync_dir(output_dir);
    Ok(())
}

/// Named f32 tensors (optimizer moments etc.) to one safetensors file, written atomically.
/// Each entry is (name, shape, data) with data.len() == product(shape).
pub fn save_f32_tensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let mut out: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::msg(format!(
                "{}: tensor {name} has {} values for shape {shape:?} ({numel})",
                path.display(),
                data.len()
            )));
        }
        out.push((name.as_str(), Dtype::F32, shape.clone(), data.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    write_safetensors(path, &out, None)
}

/// (name, shape, data) of one tensor read back by `load_f32_tensors`.
pub type NamedF32 = (String, Vec<usize>, Vec<f32>);

/// Reads back every tensor of a file written by `save_f32_tensors`, sorted by name. Non-F32 tensors are an error.
pub fn load_f32_tensors(path: &Path) -> Result<Vec<NamedF32>> {
    let f = SafetensorsFile::open(path)?;
    let mut out = Vec::new();
    for name in f.names() {
        let (dtype, shape, _) = f.raw(name)?;
        if dtype != Dtype::F32 {
            return Err(Error::Format {
                path: path.display().to_string(),
                msg: format!("tensor {name} is {dtype:?}, expected F32"),
            });
        }
        out.push((name.to_string(), shape, f.tensor_f32(name)?));
    }
    Ok(out)
}
