//! Access: who may enter. Machines join with a single-use token an operator created
//! (`join`); people hold operator identities an admin issued (`identities`). The rules of
//! both live here (lifetimes, uses, labels, the last admin, failed-join limits); the gRPC
//! adapters (`enroll`, `operator_api`) only map messages and call these functions.
//!
//! Tokens are stored and audited only as their SHA-256; the secret is never logged.

mod identities;
mod join;
pub mod rotation;

use std::collections::BTreeMap;

pub use identities::{TokenRequest, create_identity, create_token, renew, revoke_identity};
pub use join::{FAILED_JOINS_PER_MINUTE, JoinLimiter, JoinRequest, join};

use crate::catalog::CatalogError;
use crate::error::{ApiError, DomainError, Kind, core_kind};

/// Why a join, a token or an identity was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "too many failed join attempts from {ip} in the last minute (at most {FAILED_JOINS_PER_MINUTE}); wait a minute, then enroll with a token from `lifeboat token create`"
    )]
    RateLimited { ip: String },
    #[error("join token is not valid; create one with `lifeboat token create`")]
    UnknownToken,
    #[error(
        "join token was already used; tokens are single-use, create a new one with `lifeboat token create`"
    )]
    TokenUsed,
    #[error("join token has expired; create a new one with `lifeboat token create`")]
    TokenExpired,
    #[error(
        "an agent named {0:?} is already enrolled; choose another --name, or, to re-enroll that device (a rebuilt machine), enroll with a token an admin issues for it: `lifeboat token create --device {0}`"
    )]
    NameTaken(String),
    #[error("this join token re-enrolls device {0:?} only; enroll with --name {0}")]
    WrongDevice(String),
    #[error("signing public key must be 32 bytes (ed25519)")]
    BadSigningKey,
    #[error(
        "the certificate signing request is not valid ({0}); the join token was not used: run `lifeboat-agent enroll` again"
    )]
    BadCsr(String),
    #[error(
        "label {key:?}={value:?} is invalid: keys and values use letters, digits, '.', '_', '-', '/' (values also ':')"
    )]
    BadLabel { key: String, value: String },
    #[error("--ttl may be at most 7 days")]
    TokenTtlTooLong,
    #[error("--uses may be at most 1000")]
    TooManyUses,
    #[error("a --device token re-enrolls one machine: --uses must be 1")]
    DeviceTokenUses,
    #[error("--valid-for may be at most 400 days")]
    IdentityTtlTooLong,
    #[error("identity {0:?} exists and is valid; revoke it first to replace it")]
    IdentityExists(String),
    #[error("no identity {0:?}; `lifeboat identity list` shows them")]
    NoIdentity(String),
    #[error("{0:?} is the last valid admin identity; create another admin before revoking it")]
    LastAdmin(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A name that fails validation, a certificate that cannot be signed.
    #[error(transparent)]
    Core(#[from] lifeboat_core::Error),
    #[error(transparent)]
    Approval(#[from] crate::approvals::ApprovalError),
    /// A role that does not parse.
    #[error(transparent)]
    Other(#[from] ApiError),
}

impl DomainError for AccessError {
    fn kind(&self) -> Kind {
        use AccessError as E;
        match self {
            E::RateLimited { .. } => Kind::RateLimited,
            E::UnknownToken => Kind::Unauthenticated,
            E::TokenUsed | E::TokenExpired | E::WrongDevice(_) => Kind::PermissionDenied,
            E::NameTaken(_) | E::IdentityExists(_) => Kind::AlreadyExists,
            E::NoIdentity(_) => Kind::NotFound,
            E::LastAdmin(_) => Kind::FailedPrecondition,
            E::BadSigningKey
            | E::BadCsr(_)
            | E::BadLabel { .. }
            | E::TokenTtlTooLong
            | E::TooManyUses
            | E::DeviceTokenUses
            | E::IdentityTtlTooLong => Kind::InvalidArgument,
            E::Catalog(e) => e.kind(),
            E::Core(e) => core_kind(e),
            E::Approval(e) => e.kind(),
            E::Other(e) => e.kind(),
        }
    }
}

/// Join tokens are stored only as their SHA-256.
pub fn token_hash(token: &str) -> String {
    lifeboat_core::sign::sha256_hex(token.as_bytes())
}

/// Label keys and values as Kubernetes users know them: short, printable, no separators.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), AccessError> {
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        let val_ok = v.len() <= 253
            && v.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')
            });
        if !key_ok || !val_ok {
            return Err(AccessError::BadLabel {
                key: k.clone(),
                value: v.clone(),
            });
        }
    }
    Ok(())
}
