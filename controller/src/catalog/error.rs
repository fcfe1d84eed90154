//! What the catalog refuses or fails with, in its own words and kinds; the catalog knows
//! nothing of gRPC.

use crate::error::{DomainError, Kind};

/// A catalog refusal or failure.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No row by that name or id (an agent, a snapshot, a plan, ...).
    #[error("{0}")]
    NotFound(String),
    /// The name or id given cannot name one row: malformed, or an ambiguous prefix.
    #[error("{0}")]
    BadName(String),
    /// A row by that name exists already.
    #[error("{0}")]
    Exists(String),
    /// The row exists but no longer admits this: a revoked agent, a spent join token.
    #[error("{0}")]
    Revoked(String),
    /// The disk under the catalog is full.
    #[error(
        "the catalog's disk is full ({0}): free space on the controller's data directory, then try again"
    )]
    DiskFull(rusqlite::Error),
    /// The disk under the catalog failed an operation (EIO).
    #[error("{}", crate::error::disk_failed(.0))]
    DiskFailed(String),
    /// SQLite failed (anything but a full disk).
    #[error("catalog: {0}")]
    Sql(rusqlite::Error),
    /// The file cannot be opened as this version's catalog, or holds a value it cannot read.
    #[error("catalog: {0}")]
    Broken(String),
}

impl DomainError for CatalogError {
    fn kind(&self) -> Kind {
        match self {
            CatalogError::NotFound(_) => Kind::NotFound,
            CatalogError::BadName(_) => Kind::InvalidArgument,
            CatalogError::Exists(_) => Kind::AlreadyExists,
            CatalogError::Revoked(_) => Kind::PermissionDenied,
            CatalogError::DiskFull(_) => Kind::ResourceExhausted,
            CatalogError::DiskFailed(_) => Kind::Unavailable,
            CatalogError::Sql(_) | CatalogError::Broken(_) => Kind::Internal,
        }
    }
}

impl CatalogError {
    pub(crate) fn broken(msg: impl Into<String>) -> Self {
        CatalogError::Broken(msg.into())
    }
}

impl From<rusqlite::Error> for CatalogError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => CatalogError::DiskFull(e),
            // SQLITE_IOERR: the disk failed a read, a write or a sync under SQLite.
            Some(rusqlite::ErrorCode::SystemIoFailure) => {
                CatalogError::DiskFailed(format!("the catalog: {e}"))
            }
            _ => CatalogError::Sql(e),
        }
    }
}

/// A stored value (a chunk id, a record) that does not parse: the catalog is damaged.
impl From<lifeboat_core::Error> for CatalogError {
    fn from(e: lifeboat_core::Error) -> Self {
        CatalogError::Broken(e.to_string())
    }
}
