//! Four eyes for destruction (`--require-approval`): deleting a snapshot, deleting a
//! policy, lifting a quarantine, forcing a quarantined restore point and revoking an admin
//! identity need a second admin's approval.
//!
//! The first attempt is refused and becomes a request (`lifeboat approvals`); another
//! admin approves or rejects it (`lifeboat approve ID`, `lifeboat reject ID`; the requester
//! cannot approve their own); the approved requester then runs the same command again,
//! which goes through once. A request expires (`--approval-ttl`) whether approved or not.
//! Every step is in the audit log. The gate is one call at the top of each destructive
//! handler ([`gate`]): what runs after an approval is exactly the code that runs without
//! one.

use crate::Controller;
use crate::catalog::{ApprovalRow, CatalogError};
use crate::error::{DomainError, Kind, core_kind};

/// Why an action waits for, or a decision on, an approval was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The action waits for a second admin: the one refusal every gated handler returns.
    #[error(
        "approval required: {action} {target} needs a second admin; request {id} waits (`lifeboat approve {id}` by another admin, then run this again) until {until}"
    )]
    Required {
        action: String,
        target: String,
        id: String,
        until: String,
    },
    #[error("no approval request {0:?}; `lifeboat approvals` lists them")]
    NoRequest(String),
    #[error("denied: {decider} asked for request {id}; another admin must {verb} it")]
    OwnRequest {
        decider: String,
        id: String,
        verb: &'static str,
    },
    #[error("request {id} is {state} already")]
    Decided { id: String, state: String },
    #[error("request {id} expired at {at}; the requester asks again by running the command again")]
    Expired { id: String, at: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Core(#[from] lifeboat_core::Error),
}

impl DomainError for ApprovalError {
    fn kind(&self) -> Kind {
        use ApprovalError as E;
        match self {
            E::Required { .. } | E::Decided { .. } | E::Expired { .. } => Kind::FailedPrecondition,
            E::NoRequest(_) => Kind::NotFound,
            E::OwnRequest { .. } => Kind::PermissionDenied,
            E::Catalog(e) => e.kind(),
            E::Core(e) => core_kind(e),
        }
    }
}

/// Lets `requester` do `action` on `target` when approvals are off, or when another admin
/// approved exactly that (the approval is used up); otherwise records (or finds) the
/// pending request and refuses, saying who must do what.
pub fn gate(
    ctl: &Controller,
    requester: &str,
    action: &str,
    target: &str,
) -> Result<(), ApprovalError> {
    let Some(ttl) = ctl.require_approval else {
        return Ok(());
    };
    let now = ctl.clock.now_ms();
    if let Some(id) = ctl.catalog.use_approval(requester, action, target, now)? {
        ctl.audit.ok(
            &format!("operator:{requester}"),
            "approval.used",
            &id,
            serde_json::json!({ "action": action, "target": target }),
        );
        return Ok(());
    }
    let request = match ctl
        .catalog
        .pending_approval(requester, action, target, now)?
    {
        Some(r) => r,
        None => {
            let id = hex::encode(lifeboat_core::sign::random_bytes::<4>()?);
            let row = ApprovalRow {
                id,
                action: action.to_string(),
                target: target.to_string(),
                requester: requester.to_string(),
                created_ms: now,
                expires_ms: now + ttl.as_millis() as i64,
                state: "pending".into(),
                decided_by: String::new(),
                decided_ms: 0,
            };
            ctl.catalog.insert_approval(&row)?;
            ctl.audit.ok(
                &format!("operator:{requester}"),
                "approval.request",
                &row.id,
                serde_json::json!({ "action": action, "target": target, "expires_ms": row.expires_ms }),
            );
            row
        }
    };
    Err(ApprovalError::Required {
        action: action.to_string(),
        target: target.to_string(),
        until: crate::when(request.expires_ms),
        id: request.id,
    })
}

/// Approves (`approve`) or rejects pending request `id` as admin `decider`, who must not
/// be its requester.
pub fn decide(
    ctl: &Controller,
    decider: &str,
    id: &str,
    approve: bool,
) -> Result<ApprovalRow, ApprovalError> {
    let now = ctl.clock.now_ms();
    let row = ctl
        .catalog
        .approval(id)?
        .ok_or_else(|| ApprovalError::NoRequest(id.to_string()))?;
    let verb = if approve { "approve" } else { "reject" };
    let refuse = |e: ApprovalError| {
        ctl.audit.refused(
            &format!("operator:{decider}"),
            &format!("approval.{verb}"),
            id,
            &e.to_string(),
        );
        e
    };
    if row.requester == decider {
        return Err(refuse(ApprovalError::OwnRequest {
            decider: decider.to_string(),
            id: id.to_string(),
            verb,
        }));
    }
    if row.state != "pending" {
        return Err(refuse(ApprovalError::Decided {
            id: id.to_string(),
            state: row.state,
        }));
    }
    if row.expires_ms <= now {
        return Err(refuse(ApprovalError::Expired {
            id: id.to_string(),
            at: crate::when(row.expires_ms),
        }));
    }
    let state = if approve { "approved" } else { "rejected" };
    ctl.catalog.decide_approval(id, state, decider, now)?;
    ctl.audit.ok(
        &format!("operator:{decider}"),
        &format!("approval.{verb}"),
        id,
        serde_json::json!({ "action": row.action, "target": row.target, "requester": row.requester }),
    );
    ctl.catalog
        .approval(id)?
        .ok_or_else(|| CatalogError::broken("approval vanished").into())
}
