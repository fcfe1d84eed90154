//! Errors across the controller, and the one mapping to gRPC status codes.
//!
//! Each domain has its own error enum (`AccessError`, `ApprovalError`, `BackupError`,
//! `CatalogError`, `RestoreError`, `SnapshotError`, `StoreError`, `TargetError`) and says,
//! beside it, what [`Kind`] of refusal or failure each variant is ([`DomainError`]). Code
//! not typed yet carries errors as an [`ApiError`] (a kind and a message). The gRPC edge
//! turns one into a `tonic::Status` here, and only here: kinds become status codes, and the
//! refusals another process acts on travel as a `pb::Refusal` in the status details.

use lifeboat_proto::pb;
use tonic::Status;

/// What kind of refusal or failure an error is, whatever its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    FailedPrecondition,
    Unavailable,
    /// A disk the controller writes to is full.
    ResourceExhausted,
    /// A backup job uploaded as much as its quota allows.
    QuotaExceeded,
    /// A caller asked too often (failed join attempts from one address).
    RateLimited,
    /// A commit references chunks the store does not hold.
    MissingChunks,
    Internal,
}

/// A domain's error enum: each variant is one [`Kind`].
pub trait DomainError: std::error::Error {
    fn kind(&self) -> Kind;
}

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
    /// Shown to a caller as "internal error: ..." (and logged).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(msg: impl Into<String>) -> Self {
        ApiError::Internal(msg.into())
    }

    /// An error of `kind` saying `msg`.
    pub fn new(kind: Kind, msg: String) -> ApiError {
        match kind {
            Kind::InvalidArgument => ApiError::InvalidArgument(msg),
            Kind::NotFound => ApiError::NotFound(msg),
            Kind::AlreadyExists => ApiError::AlreadyExists(msg),
            Kind::PermissionDenied => ApiError::PermissionDenied(msg),
            Kind::Unauthenticated => ApiError::Unauthenticated(msg),
            Kind::FailedPrecondition => ApiError::FailedPrecondition(msg),
            Kind::Unavailable => ApiError::Unavailable(msg),
            Kind::ResourceExhausted => ApiError::ResourceExhausted(msg),
            Kind::QuotaExceeded => ApiError::QuotaExceeded(msg),
            Kind::RateLimited => ApiError::RateLimited(msg),
            Kind::MissingChunks => ApiError::MissingChunks(msg),
            Kind::Internal => ApiError::Internal(msg),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            ApiError::InvalidArgument(_) => Kind::InvalidArgument,
            ApiError::NotFound(_) => Kind::NotFound,
            ApiError::AlreadyExists(_) => Kind::AlreadyExists,
            ApiError::PermissionDenied(_) => Kind::PermissionDenied,
            ApiError::Unauthenticated(_) => Kind::Unauthenticated,
            ApiError::FailedPrecondition(_) => Kind::FailedPrecondition,
            ApiError::Unavailable(_) => Kind::Unavailable,
            ApiError::ResourceExhausted(_) => Kind::ResourceExhausted,
            ApiError::QuotaExceeded(_) => Kind::QuotaExceeded,
            ApiError::RateLimited(_) => Kind::RateLimited,
            ApiError::MissingChunks(_) => Kind::MissingChunks,
            ApiError::Internal(_) => Kind::Internal,
        }
    }
}

impl<E: DomainError> From<E> for ApiError {
    fn from(e: E) -> ApiError {
        ApiError::new(e.kind(), e.to_string())
    }
}

/// What kind of error a core error is where the controller meets it: bad input from a
/// caller, a forged signature, or (anything else) our own failure.
pub fn core_kind(e: &lifeboat_core::Error) -> Kind {
    use lifeboat_core::Error as E;
    if e.is_disk_full() {
        return Kind::ResourceExhausted;
    }
    if e.is_disk_failure() {
        return Kind::Unavailable;
    }
    match e {
        E::InvalidChunkId(_)
        | E::ChunkMismatch { .. }
        | E::CorruptBlob(_)
        | E::CorruptTree(_)
        | E::TreeMismatch
        | E::UnsafePath { .. }
        | E::InvalidRecord(_) => Kind::InvalidArgument,
        E::BadSignature(_) => Kind::PermissionDenied,
        _ => Kind::Internal,
    }
}

/// What the user is told when the controller's disk failed an operation (EIO): that it is
/// the disk, what was being done, and what to do. Not an internal error: nothing of
/// Lifeboat's broke, and trying again on a healthy disk succeeds.
pub fn disk_failed(what: impl std::fmt::Display) -> String {
    format!(
        "the controller's disk failed ({what}): what it was writing is not kept; check that disk (dmesg, SMART), then try again"
    )
}

impl From<lifeboat_core::Error> for ApiError {
    fn from(e: lifeboat_core::Error) -> Self {
        match core_kind(&e) {
            Kind::ResourceExhausted => ApiError::ResourceExhausted(format!(
                "the store is full ({e}): free space where the controller keeps its store (prune and GC reclaim what no snapshot needs), then try again"
            )),
            Kind::Unavailable if e.is_disk_failure() => ApiError::Unavailable(disk_failed(&e)),
            kind => ApiError::new(kind, e.to_string()),
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

/// The longest message a status carries. It travels in the HTTP/2 trailers, percent-encoded
/// (up to three bytes per byte), and a client refuses trailers past 16 KiB with a bare
/// protocol error that says nothing: a longer message (a plan refused for each of a
/// thousand devices) is cut, saying how much was left out.
const MAX_STATUS_MESSAGE: usize = 4096;

/// `msg`, cut at [`MAX_STATUS_MESSAGE`] bytes (on a character boundary).
fn bounded(mut msg: String) -> String {
    if msg.len() <= MAX_STATUS_MESSAGE {
        return msg;
    }
    let mut cut = MAX_STATUS_MESSAGE;
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let left = msg.len() - cut;
    msg.truncate(cut);
    msg.push_str(&format!(
        "\n… ({left} more bytes; the controller's log has it all)"
    ));
    msg
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        if let ApiError::Internal(_) = &e {
            tracing::error!(error = %msg, "internal error");
        } else if msg.len() > MAX_STATUS_MESSAGE {
            tracing::warn!(error = %msg, "an error longer than a status carries (the caller sees it cut)");
        }
        let msg = bounded(msg);
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
            ApiError::Internal(_) => Status::internal(format!("internal error: {msg}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_reaches_the_caller_cut_and_says_so() {
        let lines: Vec<String> = (0..3000)
            .map(|i| format!("m{i:04} data{}: no restore root covers /srv/é{i}", i % 3))
            .collect();
        let status = Status::from(ApiError::FailedPrecondition(lines.join("\n")));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let msg = status.message();
        assert!(msg.len() < MAX_STATUS_MESSAGE + 100, "{} bytes", msg.len());
        assert!(msg.starts_with("m0000 data0"), "{msg}");
        assert!(
            msg.ends_with("more bytes; the controller's log has it all)"),
            "{msg}"
        );
        let short = Status::from(ApiError::NotFound("no plan \"x\"".into()));
        assert_eq!(short.message(), "no plan \"x\"");
    }
}
