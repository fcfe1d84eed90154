//! Where the store's objects live: one interface, a local directory or an S3 bucket.
//!
//! The store holds two kinds of object, both immutable once written and both named by
//! their content: packs (`packs/<2 hex>/<name>.pack`, tens of MiB) and snapshot envelopes
//! (`snapshots/<id>.snap`). Packs that a scrub or rebuild found damaged are set aside under
//! `damaged/`. A backend promises:
//! - `put` and `store_sealed` return only once the object is durable and was confirmed
//!   whole (the local directory: fsync and rename; S3: a checksummed PUT whose length and
//!   checksum the server then reports back). Only after that does the catalog index it.
//! - `delete` of an object that is not there is not an error (deletes are retried).
//! - On a store with Object Lock (an S3 bucket created with it), `put` and `store_sealed`
//!   write with COMPLIANCE retention, and return the version written; reads and deletes
//!   name that version. Nobody, with any credential, deletes or overwrites a retained
//!   version before its date, and its retention can only be extended ([`Objects::retain`]).
//! - A listing is a hint for `rebuild-catalog` and GC's reports, never a reason to delete:
//!   what to delete comes from the catalog.

use std::path::{Path, PathBuf};

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{key} is not in the store")]
    NotFound { key: String },
    /// The local disk (or the bucket's quota) is full.
    #[error("{0}")]
    Full(String),
    /// The object store did not answer, or kept failing, after every retry.
    #[error("{0}")]
    Unavailable(String),
    /// The object store refused the request (credentials, a missing bucket, a checksum).
    #[error("{0}")]
    Refused(String),
    /// What came back is not what was written.
    #[error("{0}")]
    Corrupt(String),
    /// The object is under Object Lock retention: nobody may delete it yet.
    #[error("{0}")]
    Locked(String),
    /// The local disk failed the operation (EIO).
    #[error("{0}")]
    Disk(String),
    #[error("{0}")]
    Io(String),
}

/// What a store confirmed it holds after a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The version written (a bucket with Object Lock), empty otherwise. Reads and deletes
    /// name it, so that a later write or delete marker under the key changes nothing.
    pub version: String,
    /// Until when the store itself refuses to delete or overwrite it (0: it does not).
    pub retained_until_ms: i64,
}

impl crate::error::DomainError for StoreError {
    fn kind(&self) -> crate::error::Kind {
        use crate::error::Kind;
        match self {
            StoreError::NotFound { .. } => Kind::NotFound,
            StoreError::Full(_) => Kind::ResourceExhausted,
            StoreError::Unavailable(_) | StoreError::Disk(_) => Kind::Unavailable,
            StoreError::Refused(_) | StoreError::Locked(_) => Kind::FailedPrecondition,
            StoreError::Corrupt(_) | StoreError::Io(_) => Kind::Internal,
        }
    }
}

impl StoreError {
    fn io(what: String, e: std::io::Error) -> StoreError {
        match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound { key: what },
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StoreError::Full(format!(
                    "the store is full ({what}: {e}): free space where the controller keeps its store (prune and GC reclaim what no snapshot needs), then try again"
                ))
            }
            _ if lifeboat_core::is_eio(&e) => {
                StoreError::Disk(crate::error::disk_failed(format!("{what}: {e}")))
            }
            _ => StoreError::Io(format!("{what}: {e}")),
        }
    }
}

impl From<lifeboat_core::Error> for StoreError {
    fn from(e: lifeboat_core::Error) -> Self {
        if e.is_disk_full() {
            return StoreError::Full(format!(
                "the store's staging disk is full ({e}): free space in the controller's data directory"
            ));
        }
        if e.is_disk_failure() {
            return StoreError::Disk(crate::error::disk_failed(&e));
        }
        StoreError::Io(e.to_string())
    }
}

/// One object, as a listing names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// The version a versioned store (Object Lock) holds as written, empty otherwise.
    pub version: String,
}

/// An object to store: its key, its bytes and, where the store has Object Lock, until when
/// it is retained (0: not retained).
pub struct Object {
    pub key: String,
    pub bytes: Vec<u8>,
    pub retain_until_ms: i64,
}

/// Objects [`Objects::put_many`] stores at once.
pub const PUTS_AT_ONCE: usize = 16;

/// An object store: the local directory or an S3 bucket. Blocking: callers are the
/// sealer thread and `spawn_blocking` tasks.
pub trait Objects: Send + Sync {
    /// Stores `bytes` as `key`, durably and confirmed; where the store has Object Lock,
    /// retained until `retain_until_ms` (0: not retained).
    fn put(&self, key: &str, bytes: &[u8], retain_until_ms: i64) -> Result<Stored, StoreError>;
    /// [`Objects::put`] of several objects, each with its own outcome, in order: what a
    /// group of commits writes together. By default they are stored side by side, up to
    /// [`PUTS_AT_ONCE`] at a time (an object store's cost is its round trips).
    fn put_many(&self, objects: &[Object]) -> Vec<Result<Stored, StoreError>> {
        if objects.len() <= 1 {
            return objects
                .iter()
                .map(|o| self.put(&o.key, &o.bytes, o.retain_until_ms))
                .collect();
        }
        let out = crate::parallel::striped(objects, PUTS_AT_ONCE, |o| {
            self.put(&o.key, &o.bytes, o.retain_until_ms)
        });
        out.into_iter()
            .zip(objects)
            .map(|(stored, o)| {
                stored.unwrap_or_else(|| {
                    Err(StoreError::Io(format!(
                        "{}: the thread writing it failed",
                        o.key
                    )))
                })
            })
            .collect()
    }
    /// Makes the complete, synced file at `path` (from [`Objects::staging`]) the object
    /// `key`, durably and confirmed (and retained, as [`Objects::put`]); the file is gone
    /// afterwards.
    fn store_sealed(
        &self,
        key: &str,
        path: &Path,
        retain_until_ms: i64,
    ) -> Result<Stored, StoreError>;
    /// Reads object `key` (`version` as [`Stored::version`] said; empty: the current one).
    fn get(&self, key: &str, version: &str) -> Result<Vec<u8>, StoreError>;
    fn get_range(
        &self,
        key: &str,
        version: &str,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, StoreError>;
    /// Deletes `version` of `key` (the store refuses a retained one: [`StoreError::Locked`]).
    fn delete(&self, key: &str, version: &str) -> Result<(), StoreError>;
    /// The current version of `key` (its length and version), if there is one.
    fn stat(&self, key: &str) -> Result<Option<(u64, String)>, StoreError>;
    /// Whether the store has Object Lock: objects can be retained against everyone.
    fn object_lock(&self) -> bool {
        false
    }
    /// Extends `version` of `key`'s retention to `until_ms` and returns the retention the
    /// store reports afterwards (read back, never taken from the request).
    fn retain(&self, key: &str, _version: &str, _until_ms: i64) -> Result<i64, StoreError> {
        Err(StoreError::Refused(format!(
            "{key}: {} has no Object Lock, so nothing can be retained in it",
            self.describe()
        )))
    }
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError>;
    /// The file that holds `key`, when objects are local files (reads then need no copy).
    fn local_path(&self, key: &str) -> Option<PathBuf>;
    /// Where packs are written and sealed before they become objects: on the same file
    /// system as the objects for the local directory (a rename then stores a pack).
    fn staging(&self) -> &Path;
    /// Where packs are sealed: the local directory's `packs/` (the seal's rename is the
    /// store), the staging directory otherwise.
    fn seal_dir(&self) -> PathBuf;
    /// Requests sent so far, by kind (`get`, `put`, `head`, `list`, `delete`), retries
    /// included: what an object store's provider bills. Empty for a local directory.
    fn requests(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// A URL that lets its holder GET object `key` until `ttl` passes, without
    /// credentials; `None` where objects are local files (restores then go through the
    /// controller).
    fn presign_get(&self, _key: &str, _version: &str, _ttl: std::time::Duration) -> Option<String> {
        None
    }
    /// For logs and `lifeboat status`: never a credential.
    fn describe(&self) -> String;
    /// Whether its objects are on the controller's own disk.
    fn is_local(&self) -> bool {
        self.local_path("").is_some()
    }
}

/// The object key of pack `name` (64 hex).
pub fn pack_key(name: &str) -> String {
    format!("packs/{}/{name}.pack", &name[..2.min(name.len())])
}

/// The object key of snapshot envelope `id` (64 hex).
pub fn snapshot_key(id: &str) -> String {
    format!("snapshots/{id}.snap")
}

/// The pack name in a pack key, if it is one.
pub fn pack_name_of(key: &str) -> Option<&str> {
    let name = key
        .strip_prefix("packs/")?
        .get(3..)?
        .strip_suffix(".pack")?;
    is_hex64(name).then_some(name)
}

/// The snapshot id in an envelope key, if it is one.
pub fn snapshot_id_of(key: &str) -> Option<&str> {
    let id = key.strip_prefix("snapshots/")?.strip_suffix(".snap")?;
    is_hex64(id).then_some(id)
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The store on a local directory: objects are files under its root, written with
/// fsync-and-rename.
pub struct LocalDir {
    root: PathBuf,
    staging: PathBuf,
    files: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<std::fs::File>>>,
}

const MAX_OPEN_FILES: usize = 256;

impl LocalDir {
    pub fn open(root: &Path) -> Result<LocalDir, StoreError> {
        for sub in ["packs", "snapshots", "tmp"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| StoreError::io(format!("creating {}", d.display()), e))?;
        }
        // A write cut short by a crash or a power cut leaves its temp file beside the object
        // it was to become (`packs/ab/`, `snapshots/`, `controller/`): never an object, and
        // no other process writes here while this controller runs.
        let swept = lifeboat_core::durable::sweep_temp_files(root, 2)?;
        if swept > 0 {
            tracing::info!(swept, store = %root.display(), "removed the temp files of writes a crash cut short");
        }
        Ok(LocalDir {
            root: root.to_owned(),
            staging: root.join("tmp"),
            files: Default::default(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn file(&self, key: &str) -> Result<std::sync::Arc<std::fs::File>, StoreError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = files.get(key) {
            return Ok(f.clone());
        }
        let path = self.path(key);
        let f = std::sync::Arc::new(
            std::fs::File::open(&path)
                .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?,
        );
        if files.len() >= MAX_OPEN_FILES {
            files.clear();
        }
        files.insert(key.to_string(), f.clone());
        Ok(f)
    }

    fn forget(&self, key: &str) {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

impl Objects for LocalDir {
    fn put(&self, key: &str, bytes: &[u8], _retain: i64) -> Result<Stored, StoreError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            lifeboat_core::durable::create_dir_durable(dir)?;
        }
        lifeboat_core::durable::write_atomic(&path, bytes, 0o644)?;
        Ok(Stored::default())
    }

    fn put_many(&self, objects: &[Object]) -> Vec<Result<Stored, StoreError>> {
        let paths: Vec<PathBuf> = objects.iter().map(|o| self.path(&o.key)).collect();
        let mut dirs: Vec<&Path> = paths.iter().filter_map(|p| p.parent()).collect();
        dirs.dedup();
        for dir in dirs {
            if let Err(e) = lifeboat_core::durable::create_dir_durable(dir) {
                let e = StoreError::from(e);
                return objects.iter().map(|_| Err(e.clone())).collect();
            }
        }
        let files: Vec<(&Path, &[u8])> = paths
            .iter()
            .zip(objects)
            .map(|(p, o)| (p.as_path(), o.bytes.as_slice()))
            .collect();
        lifeboat_core::durable::write_many_atomic(&files, 0o644)
            .into_iter()
            .map(|r| r.map(|()| Stored::default()).map_err(StoreError::from))
            .collect()
    }

    fn store_sealed(&self, key: &str, path: &Path, _retain: i64) -> Result<Stored, StoreError> {
        let to = self.path(key);
        if to == path {
            return Ok(Stored::default()); // sealed in place (see `seal_dir`)
        }
        if let Some(dir) = to.parent() {
            lifeboat_core::durable::create_dir_durable(dir)?;
        }
        lifeboat_core::durable::rename_durable(path, &to)?;
        Ok(Stored::default())
    }

    fn get(&self, key: &str, _version: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key);
        std::fs::read(&path).map_err(|e| StoreError::io(format!("reading {}", path.display()), e))
    }

    fn get_range(
        &self,
        key: &str,
        _version: &str,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, StoreError> {
        let file = self.file(key)?;
        lifeboat_core::pack::read_blob(&file, offset, length)
            .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
    }

    fn stat(&self, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        let path = self.path(key);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some((m.len(), String::new()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("looking up {}", path.display()), e)),
        }
    }

    fn delete(&self, key: &str, _version: &str) -> Result<(), StoreError> {
        self.forget(key);
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    lifeboat_core::durable::sync_dir(dir)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("deleting {}", path.display()), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        // Keys are at most two levels deep (`packs/ab/NAME.pack`, `snapshots/ID.snap`).
        let mut out = Vec::new();
        let (top, _) = prefix.split_once('/').unwrap_or((prefix, ""));
        let dir = self.root.join(top);
        let io = |e: std::io::Error| StoreError::io(format!("listing {}", dir.display()), e);
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io)?;
                let meta = entry.metadata().map_err(io)?;
                let path = entry.path();
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().into_owned();
                if key.starts_with(prefix) {
                    out.push(Listed {
                        key,
                        size: meta.len(),
                        version: String::new(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }

    fn staging(&self) -> &Path {
        &self.staging
    }

    fn seal_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}
