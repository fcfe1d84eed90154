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
use crate::catalog::ApprovalRow;
use crate::error::ApiError;

/// Lets `requester` do `action` on `target` when approvals are off, or when another admin
/// approved exactly that (the approval is used up); otherwise records (or finds) the
/// pending request and refuses, saying who must do what.
pub fn gate(ctl: &Controller, requester: &str, action: &str, target: &str) -> Result<(), ApiError> {
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
    Err(ApiError::FailedPrecondition(format!(
        "approval required: {action} {target} needs a second admin; request {id} waits (`lifeboat approve {id}` by another admin, then run this again) until {}",
        crate::when(request.expires_ms),
        id = request.id,
    )))
}

/// Approves (`approve`) or rejects pending request `id` as admin `decider`, who must not
/// be its requester.
pub fn decide(
    ctl: &Controller,
    decider: &str,
    id: &str,
    approve: bool,
) -> Result<ApprovalRow, ApiError> {
    let now = ctl.clock.now_ms();
    let row = ctl.catalog.approval(id)?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no approval request {id:?}; `lifeboat approvals` lists them"
        ))
    })?;
    let verb = if approve { "approve" } else { "reject" };
    let refuse = |e: ApiError| {
        ctl.audit.refused(
            &format!("operator:{decider}"),
            &format!("approval.{verb}"),
            id,
            &e.to_string(),
        );
        e
    };
    if row.requester == decider {
        return Err(refuse(ApiError::PermissionDenied(format!(
            "denied: {decider} asked for request {id}; another admin must {verb} it"
        ))));
    }
    if row.state != "pending" {
        return Err(refuse(ApiError::FailedPrecondition(format!(
            "request {id} is {} already",
            row.state
        ))));
    }
    if row.expires_ms <= now {
        return Err(refuse(ApiError::FailedPrecondition(format!(
            "request {id} expired at {}; the requester asks again by running the command again",
            crate::when(row.expires_ms)
        ))));
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
        .ok_or_else(|| ApiError::internal("approval vanished"))
}
