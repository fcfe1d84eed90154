//! The rules of a CA rotation (`authority.rs` moves the keys and the TLS settings): who
//! has moved, who may finish it and when, and the operators' own renewals.

use std::time::Duration;

use lifeboat_core::pki::Validity;
use lifeboat_proto::pb;

use super::AccessError;
use crate::catalog::Holder;
use crate::error::ApiError;
use crate::{Controller, now_ms};

/// Names listed in a status (the counts are whole).
const PENDING_LISTED: usize = 1000;
/// Names a refusal to finish spells out.
const PENDING_NAMED: usize = 20;

/// Who holds a certificate of the CA that signs now, and who does not yet.
struct Census {
    agents: Vec<Holder>,
    agents_pending: Vec<Holder>,
    operators: Vec<Holder>,
    operators_pending: Vec<Holder>,
}

fn census(ctl: &Controller) -> Result<Census, AccessError> {
    let issuer = ctl.authority.trust().issuer_fingerprint.clone();
    let agents = ctl.catalog.agent_holders()?;
    // An agent has moved once it *uses* its new certificate (the previous one retired).
    let agents_pending = agents
        .iter()
        .filter(|a| a.cert_ca != issuer || a.prev_in_use)
        .cloned()
        .collect();
    let operators = ctl.catalog.operator_holders(now_ms())?;
    let operators_pending = operators
        .iter()
        .filter(|o| o.cert_ca != issuer)
        .cloned()
        .collect();
    Ok(Census {
        agents,
        agents_pending,
        operators,
        operators_pending,
    })
}

/// The fleet CA, and how far a rotation under way has come.
pub fn ca_status(ctl: &Controller) -> Result<pb::CaStatusReply, AccessError> {
    let trust = ctl.authority.trust();
    let mut reply = pb::CaStatusReply {
        ca_fingerprint: trust.presented_fingerprint.clone(),
        ..Default::default()
    };
    let Some(started) = trust.rotation_started_ms else {
        return Ok(reply);
    };
    let c = census(ctl)?;
    reply.next_fingerprint = trust.issuer_fingerprint.clone();
    reply.rotation_started_unix_ms = started;
    reply.agents = c.agents.len() as u32;
    reply.agents_moved = (c.agents.len() - c.agents_pending.len()) as u32;
    reply.agents_pending = listed(ctl, &c.agents_pending, true);
    reply.operators = c.operators.len() as u32;
    reply.operators_moved = (c.operators.len() - c.operators_pending.len()) as u32;
    reply.operators_pending = listed(ctl, &c.operators_pending, false);
    Ok(reply)
}

/// The first [`PENDING_LISTED`] of `holders` as a status lists them (`agents`: with when
/// each was last heard from and whether it is connected now).
fn listed(ctl: &Controller, holders: &[Holder], agents: bool) -> Vec<pb::PendingHolder> {
    holders
        .iter()
        .take(PENDING_LISTED)
        .map(|h| pb::PendingHolder {
            name: h.name.clone(),
            last_seen_unix_ms: ctl.jobs.last_seen(&h.id).unwrap_or(h.last_seen_ms),
            connected: agents && ctl.jobs.connected(&h.id),
        })
        .collect()
}

/// Starts a rotation (admin `admin`): a new CA signs every certificate from now on, and
/// every connected agent is told to trust it and renew.
pub fn start(ctl: &Controller, admin: &str) -> Result<pb::CaStatusReply, AccessError> {
    let trust = ctl.authority.start_rotation(now_ms())?;
    ctl.audit.ok(
        &format!("operator:{admin}"),
        "ca.rotate",
        &trust.issuer_fingerprint,
        serde_json::json!({ "ca": trust.presented_fingerprint, "next": trust.issuer_fingerprint }),
    );
    // The answer first: the agents' renewals that follow would queue it behind them.
    let reply = ca_status(ctl)?;
    // Nobody holds a certificate of the new CA yet: every agent renews.
    ctl.jobs.tell_sessions(told(trust.for_agent("")));
    Ok(reply)
}

/// Finishes the rotation (admin `admin`): the new CA becomes the only one. Refused while
/// an agent or operator has not moved, unless `force` (then they lose their certificates,
/// and with `--require-approval` a second admin must approve).
pub fn finish(
    ctl: &Controller,
    admin: &str,
    force: bool,
) -> Result<pb::CaStatusReply, AccessError> {
    if ctl.authority.trust().rotation_started_ms.is_none() {
        return Err(ApiError::FailedPrecondition(
            "no CA rotation is under way: start one with `lifeboat ca rotate`".into(),
        )
        .into());
    }
    let c = census(ctl)?;
    let left = named(&c.agents_pending, &c.operators_pending);
    if !left.is_empty() {
        if !force {
            let more = left.len().saturating_sub(PENDING_NAMED);
            return Err(ApiError::FailedPrecondition(format!(
                "{} of the fleet have not moved to the new CA: {}{}; an agent moves at its next session (bring it online), an operator with `lifeboat identity renew`; `lifeboat ca status` lists them. `lifeboat ca finish --force` cuts them off (agents then enroll again with `lifeboat token create --device NAME`)",
                left.len(),
                left[..left.len().min(PENDING_NAMED)].join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() },
            ))
            .into());
        }
        crate::approvals::gate(ctl, admin, "ca.finish_force", "ca")?;
    }
    let trust = ctl.authority.finish_rotation()?;
    let (agents_cut, operators_cut) = ctl
        .catalog
        .finish_ca_rotation(&trust.presented_fingerprint)?;
    // Sessions on a certificate of the old CA end here. An agent that renewed but had not
    // reconnected yet keeps its new certificate and comes back with it; the others are cut
    // off, as are operators who did not renew.
    for a in &c.agents_pending {
        ctl.jobs.kick(&a.id);
    }
    let cut_agents: Vec<Holder> = c
        .agents_pending
        .iter()
        .filter(|a| a.cert_ca != trust.presented_fingerprint)
        .cloned()
        .collect();
    let cut_off = named(&cut_agents, &c.operators_pending);
    ctl.audit.ok(
        &format!("operator:{admin}"),
        "ca.finish",
        &trust.presented_fingerprint,
        serde_json::json!({ "ca": trust.presented_fingerprint, "forced": force, "agents_cut_off": agents_cut, "operators_cut_off": operators_cut, "cut_off": cut_off }),
    );
    // How the rotation ended: who holds a certificate of the new CA, and whom it cut off.
    let mut reply = ca_status(ctl)?;
    reply.agents = c.agents.len() as u32;
    reply.agents_moved = (c.agents.len() - cut_agents.len()) as u32;
    reply.operators = c.operators.len() as u32;
    reply.operators_moved = (c.operators.len() - c.operators_pending.len()) as u32;
    reply.agents_pending = listed(ctl, &cut_agents, true);
    reply.operators_pending = listed(ctl, &c.operators_pending, false);
    ctl.jobs
        .tell_sessions(told(trust.for_agent(&trust.issuer_fingerprint)));
    Ok(reply)
}

/// "agent NAME" and "operator NAME", as refusals and the audit log name them.
fn named(agents: &[Holder], operators: &[Holder]) -> Vec<String> {
    let agents = agents.iter().map(|a| format!("agent {}", a.name));
    agents
        .chain(operators.iter().map(|o| format!("operator {}", o.name)))
        .collect()
}

fn told(trust: pb::Trust) -> pb::ControllerMessage {
    pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Trust(trust)),
    }
}

/// Re-issues operator `name`'s own identity for the key of `csr_pem`, by the CA that signs
/// now, with the same role and expiry; its previous certificate is refused from then on.
pub fn renew_identity(
    ctl: &Controller,
    name: &str,
    csr_pem: &str,
) -> Result<(String, Validity), AccessError> {
    let row = ctl
        .catalog
        .operator(name)?
        .ok_or_else(|| AccessError::NoIdentity(name.to_string()))?;
    let left_ms = row.expires_ms - now_ms();
    if left_ms <= 0 {
        return Err(ApiError::PermissionDenied(format!(
            "identity {name:?} has expired; ask an admin for a new one"
        ))
        .into());
    }
    let validity = Validity::from_now(Duration::from_millis(left_ms as u64));
    let trust = ctl.authority.trust();
    let (cert_pem, serial) =
        trust
            .issuer
            .sign_csr(csr_pem, &format!("operator:{name}"), validity)?;
    ctl.catalog
        .renew_operator_cert(name, &serial, &trust.issuer_fingerprint)?;
    ctl.audit.ok(
        &format!("operator:{name}"),
        "identity.renew",
        name,
        serde_json::json!({ "serial": serial, "previous": row.cert_serial, "ca": trust.issuer_fingerprint }),
    );
    Ok((cert_pem, validity))
}
