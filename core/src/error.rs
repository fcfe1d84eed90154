//! The one error type of `lifeboat-core`.
//!
//! Rules: messages are lowercase and name the thing that was wrong (a path, a chunk id, a
//! field); `retryable()` says whether trying again can help (it can for I/O, never for
//! corrupt or hostile data).

use std::path::PathBuf;

/// Every failure `lifeboat-core` reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid chunk id {0:?}: expected 64 lowercase hex characters")]
    InvalidChunkId(String),
    #[error("chunk {id} does not match its content (corrupt or tampered data)")]
    ChunkMismatch { id: String },
    #[error("corrupt chunk blob: {0}")]
    CorruptBlob(String),
    #[error("corrupt pack {path}: {reason}")]
    CorruptPack { path: PathBuf, reason: String },
    #[error("corrupt tree: {0}")]
    CorruptTree(String),
    #[error("the snapshot's tree does not match its signed record (size or keyed hash)")]
    TreeMismatch,
    #[error("unsafe path {path:?} in snapshot: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("refusing to restore through symlink or outside the root at {path:?}")]
    SymlinkInTarget { path: String },
    #[error("invalid snapshot record: {0}")]
    InvalidRecord(String),
    #[error("snapshot signature does not verify: {0}")]
    BadSignature(String),
    #[error("chunk {id} cannot be read from the store: {reason}")]
    ChunkUnavailable { id: String, reason: String },
    #[error("file {path:?} does not match its recorded content hash")]
    ContentMismatch { path: String },
    #[error("certificate error: {0}")]
    Pki(String),
    #[error(
        "the compressor produced a frame that does not give back its chunk of {0} bytes (a compressor fault, caught before upload: nothing of it was stored); report it, and meanwhile back up with `lifeboat-agent run --compression-level 0`"
    )]
    CompressorFault(usize),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done and to what.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether this is a write that found its filesystem full (or over quota).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.kind() == std::io::ErrorKind::QuotaExceeded
            }
            _ => false,
        }
    }

    /// Whether the disk itself failed the operation (EIO: a failed sync, a bad sector).
    pub fn is_disk_failure(&self) -> bool {
        match self {
            Error::Io { source, .. } => is_eio(source),
            _ => false,
        }
    }

    /// Whether trying the same operation again could succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::Io { .. })
    }
}

/// Whether an I/O error is EIO: the disk failed the operation (a failed sync, a bad
/// sector), as opposed to a full disk or a missing file.
pub fn is_eio(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error())
}

/// Adds context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e.into()))
    }
}
