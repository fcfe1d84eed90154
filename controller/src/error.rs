//! The controller's error type and its one mapping to gRPC status codes.

use lifeboat_proto::pb;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A disk the controller writes to is full.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A backup job uploaded as much as its quota allows.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A caller asked too often (failed join attempts from one address).
    #[error("{0}")]
    RateLimited(String),
    /// A commit references chunks the store does not hold.
    #[error("{0}")]
    MissingChunks(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(msg: impl Into<String>) -> Self {
        ApiError::Internal(msg.into())
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return ApiError::ResourceExhausted(format!(
                "the catalog's disk is full ({e}): free space on the controller's data directory, then try again"
            ));
        }
        ApiError::Internal(format!("catalog: {e}"))
    }
}

impl From<lifeboat_core::Error> for ApiError {
    fn from(e: lifeboat_core::Error) -> Self {
        use lifeboat_core::Error as E;
        if e.is_disk_full() {
            return ApiError::ResourceExhausted(format!(
                "the store is full ({e}): free space where the controller keeps its store (or let GC reclaim unreferenced packs), then back up again"
            ));
        }
        match e {
            E::InvalidChunkId(_)
            | E::ChunkMismatch { .. }
            | E::CorruptBlob(_)
            | E::CorruptTree(_)
            | E::TreeMismatch
            | E::UnsafePath { .. }
            | E::InvalidRecord(_) => ApiError::InvalidArgument(e.to_string()),
            E::BadSignature(_) => ApiError::PermissionDenied(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::store::objects::StoreError> for ApiError {
    fn from(e: crate::store::objects::StoreError) -> Self {
        use crate::store::objects::StoreError as E;
        match e {
            E::NotFound { .. } => ApiError::NotFound(e.to_string()),
            E::Full(m) => ApiError::ResourceExhausted(m),
            E::Unavailable(m) => ApiError::Unavailable(m),
            E::Refused(m) | E::Locked(m) => ApiError::FailedPrecondition(m),
            E::Corrupt(m) | E::Io(m) => ApiError::Internal(m),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("background task failed: {e}"))
    }
}

impl ApiError {
    /// The refusal another process acts on, if this is one.
    pub fn refusal(&self) -> pb::Refusal {
        match self {
            ApiError::MissingChunks(_) => pb::Refusal::MissingChunks,
            ApiError::ResourceExhausted(_) => pb::Refusal::StoreFull,
            ApiError::QuotaExceeded(_) => pb::Refusal::QuotaExceeded,
            _ => pb::Refusal::Unspecified,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        if let ApiError::Internal(msg) = &e {
            tracing::error!(error = %msg, "internal error");
        }
        let msg = e.to_string();
        let refusal = e.refusal();
        if refusal != pb::Refusal::Unspecified {
            use prost::Message;
            let code = match e {
                ApiError::ResourceExhausted(_) | ApiError::QuotaExceeded(_) => {
                    tonic::Code::ResourceExhausted
                }
                _ => tonic::Code::FailedPrecondition,
            };
            let detail = pb::RefusalDetail {
                reason: refusal as i32,
            };
            return Status::with_details(code, msg, detail.encode_to_vec().into());
        }
        match e {
            ApiError::InvalidArgument(_) => Status::invalid_argument(msg),
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::AlreadyExists(_) => Status::already_exists(msg),
            ApiError::PermissionDenied(_) => Status::permission_denied(msg),
            ApiError::Unauthenticated(_) => Status::unauthenticated(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::Unavailable(_) => Status::unavailable(msg),
            ApiError::ResourceExhausted(_)
            | ApiError::RateLimited(_)
            | ApiError::QuotaExceeded(_) => Status::resource_exhausted(msg),
            ApiError::MissingChunks(_) => Status::failed_precondition(msg),
            ApiError::Internal(_) => Status::internal(msg),
        }
    }
}
