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

/// Writes `bytes` to `path` atomically and durably. `mode` sets the permission bits of
/// the new file (e.g. 0o600 for secrets) before any byte is written.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = temp_path(dir, &name);
    let mut guard = TempGuard {
        path: Some(tmp.clone()),
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("writing {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).ctx(|| format!("renaming into {}", path.display()))?;
    guard.path = None;
    sync_dir(dir)
}

/// Moves a finished, already-synced file into place and syncs both directories.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).ctx(|| format!("renaming {} to {}", from.display(), to.display()))?;
    if let Some(d) = to.parent() {
        sync_dir(d)?;
    }
    Ok(())
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
}
