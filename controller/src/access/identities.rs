//! Join tokens, operator identities and agent certificate renewals: how long each lives,
//! how often a token admits, and that a fleet never loses its last admin.

use std::collections::BTreeMap;
use std::time::Duration;

use lifeboat_core::pki::Validity;

use super::{AccessError, token_hash, validate_labels};
use crate::auth::Role;
use crate::catalog::{AgentRow, OperatorRow};
use crate::{Controller, now_ms};

const DEFAULT_TOKEN_TTL_S: u64 = 3600;
const MAX_TOKEN_TTL_S: u64 = 7 * 24 * 3600;
const MAX_TOKEN_USES: u32 = 1000;
const DEFAULT_IDENTITY_TTL_S: u64 = 90 * 24 * 3600;
const MAX_IDENTITY_TTL_S: u64 = 400 * 24 * 3600;

/// A join token as an operator asks for it; zeros mean the defaults (an hour, one use).
pub struct TokenRequest {
    pub labels: BTreeMap<String, String>,
    pub ttl_s: u64,
    pub uses: u32,
    /// An existing device this token re-enrolls (a rebuilt machine), or empty.
    pub device: String,
}

/// A join token, shown once: only its hash is kept.
pub struct NewToken {
    pub token: String,
    pub expires_ms: i64,
}

/// Creates a join token for `operator`.
pub fn create_token(
    ctl: &Controller,
    operator: &str,
    req: TokenRequest,
) -> Result<NewToken, AccessError> {
    validate_labels(&req.labels)?;
    let ttl = match req.ttl_s {
        0 => DEFAULT_TOKEN_TTL_S,
        n if n > MAX_TOKEN_TTL_S => return Err(AccessError::TokenTtlTooLong),
        n => n,
    };
    let uses = match req.uses {
        0 => 1,
        n if n > MAX_TOKEN_USES => return Err(AccessError::TooManyUses),
        n => n,
    };
    if !req.device.is_empty() {
        // Re-enrolls that one existing device, once.
        ctl.catalog.find_agent(&req.device)?;
        if uses != 1 {
            return Err(AccessError::DeviceTokenUses);
        }
    }
    let token = format!(
        "lbt_{}",
        hex::encode(lifeboat_core::sign::random_bytes::<24>()?)
    );
    let hash = token_hash(&token);
    let now = now_ms();
    let expires_ms = now + (ttl as i64) * 1000;
    ctl.catalog
        .insert_token(&hash, &req.labels, now, expires_ms, uses, &req.device)?;
    tracing::info!(%operator, ttl_s = ttl, device = %req.device, "join token created");
    ctl.audit.ok(
        &format!("operator:{operator}"),
        "token.create",
        &hash[..16],
        serde_json::json!({ "ttl_s": ttl, "labels": req.labels, "uses": uses, "device": req.device }),
    );
    Ok(NewToken { token, expires_ms })
}

/// Signs `csr_pem` as operator identity `name` with `role`, valid `ttl_s` seconds (0: 90
/// days). A valid identity of that name must be revoked first.
pub fn create_identity(
    ctl: &Controller,
    admin: &str,
    name: &str,
    role: &str,
    ttl_s: u64,
    csr_pem: &str,
) -> Result<(String, Validity), AccessError> {
    lifeboat_core::snapshot::validate_name("identity", name)?;
    let role = Role::parse(role)?;
    let ttl = match ttl_s {
        0 => DEFAULT_IDENTITY_TTL_S,
        n if n > MAX_IDENTITY_TTL_S => return Err(AccessError::IdentityTtlTooLong),
        n => n,
    };
    if let Some(existing) = ctl.catalog.operator(name)?
        && existing.revoked_ms == 0
        && existing.expires_ms > now_ms()
    {
        return Err(AccessError::IdentityExists(name.to_string()));
    }
    let validity = Validity::from_now(Duration::from_secs(ttl));
    let trust = ctl.authority.trust();
    let (cert_pem, serial) =
        trust
            .issuer
            .sign_csr(csr_pem, &format!("operator:{name}"), validity)?;
    ctl.catalog.add_operator(
        name,
        role.as_str(),
        &serial,
        now_ms(),
        validity.not_after_ms(),
        admin,
    )?;
    ctl.catalog
        .set_operator_cert_ca(name, &trust.issuer_fingerprint)?;
    ctl.audit.ok(
        &format!("operator:{admin}"),
        "identity.create",
        name,
        serde_json::json!({ "role": role.as_str(), "serial": serial, "not_after_ms": validity.not_after_ms() }),
    );
    Ok((cert_pem, validity))
}

/// Revokes operator identity `name`; never the last valid admin, and an admin only with a
/// second admin's approval when approvals are required.
pub fn revoke_identity(
    ctl: &Controller,
    admin: &str,
    name: &str,
) -> Result<OperatorRow, AccessError> {
    let row = ctl
        .catalog
        .operator(name)?
        .ok_or_else(|| AccessError::NoIdentity(name.to_string()))?;
    let valid_admin = row.role == Role::Admin.as_str() && row.revoked_ms == 0;
    if valid_admin && ctl.catalog.active_admins(now_ms())? <= 1 {
        return Err(AccessError::LastAdmin(name.to_string()));
    }
    if valid_admin {
        crate::approvals::gate(ctl, admin, "identity.revoke_admin", name)?;
    }
    ctl.catalog.revoke_operator(name, now_ms())?;
    ctl.audit.ok(
        &format!("operator:{admin}"),
        "identity.revoke",
        name,
        serde_json::json!({ "role": row.role, "serial": row.cert_serial }),
    );
    Ok(ctl.catalog.operator(name)?.unwrap_or(row))
}

/// Signs a renewed certificate for `agent`, which presented the certificate `presented`
/// (a serial): that one stays valid until the new one is used. Audited.
pub fn renew(
    ctl: &Controller,
    agent: &AgentRow,
    presented: &str,
    csr_pem: &str,
) -> Result<String, AccessError> {
    let validity = Validity::from_now(ctl.agent_cert_lifetime);
    let trust = ctl.authority.trust();
    let (cert_pem, serial) =
        trust
            .issuer
            .sign_csr(csr_pem, &format!("agent:{}", agent.id), validity)?;
    ctl.catalog.renew_agent_cert(
        &agent.id,
        presented,
        &serial,
        validity.not_after_ms(),
        &trust.issuer_fingerprint,
    )?;
    ctl.audit.ok(
        &format!("agent:{}", agent.name),
        "cert.renew",
        &agent.name,
        serde_json::json!({ "serial": serial, "previous": presented, "not_after_ms": validity.not_after_ms(), "ca": trust.issuer_fingerprint }),
    );
    tracing::info!(agent = %agent.name, "certificate renewed");
    Ok(cert_pem)
}
