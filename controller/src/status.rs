//! The gRPC edge's `?`: a handler may return any domain's error, which reaches the caller
//! as the status `crate::error` maps its kind to. (A blanket impl over `DomainError` is not
//! allowed for a foreign type such as `Status`, hence the list.)

use tonic::Status;

use crate::access::AccessError;
use crate::approvals::ApprovalError;
use crate::backups::BackupError;
use crate::catalog::CatalogError;
use crate::error::ApiError;
use crate::restores::RestoreError;
use crate::snapshots::SnapshotError;
use crate::store::objects::StoreError;

macro_rules! status_through_api_error {
    ($($domain:ty),*) => {$(
        impl From<$domain> for Status {
            fn from(e: $domain) -> Status {
                ApiError::from(e).into()
            }
        }
    )*};
}

status_through_api_error!(
    AccessError,
    ApprovalError,
    BackupError,
    CatalogError,
    RestoreError,
    SnapshotError,
    StoreError
);
