//! A machine joins: it trades a single-use join token and a CSR for its certificate. A
//! machine rebuilt after a loss re-enrolls under its existing device name, keeping its id
//! and history, only with a token an admin issued for that device
//! (`lifeboat token create --device NAME`).
//!
//! Guessing a token's secret is bounded: a source address that failed
//! [`FAILED_JOINS_PER_MINUTE`] times within a minute is refused at once, its token not even
//! looked at, until its failures age out (every refusal counts, so an address that keeps
//! guessing stays refused).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use lifeboat_core::snapshot::validate_name;

use super::{AccessError, token_hash, validate_labels};
use crate::catalog::{AgentRow, TokenCheck};
use crate::{Controller, now_ms};

/// Failed join attempts one source address may make within a minute; past them, it is
/// refused without its token being checked.
pub const FAILED_JOINS_PER_MINUTE: usize = 10;
const WINDOW_MS: i64 = 60_000;
/// Source addresses whose failures are remembered at once (each keeps at most
/// [`FAILED_JOINS_PER_MINUTE`] times): a bound on memory under a spread-out attack.
const TRACKED_SOURCES: usize = 100_000;

/// Recent failed join attempts, by source address.
#[derive(Default)]
pub struct JoinLimiter {
    by_source: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl JoinLimiter {
    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<i64>>> {
        self.by_source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `source` used up its failures for the last minute.
    fn limited(&self, source: &str, now_ms: i64) -> bool {
        match self.sources().get_mut(source) {
            Some(times) => {
                while times.front().is_some_and(|t| *t <= now_ms - WINDOW_MS) {
                    times.pop_front();
                }
                times.len() >= FAILED_JOINS_PER_MINUTE
            }
            None => false,
        }
    }

    fn record(&self, source: &str, now_ms: i64) {
        let mut by_source = self.sources();
        if by_source.len() >= TRACKED_SOURCES && !by_source.contains_key(source) {
            by_source.retain(|_, times| times.back().is_some_and(|t| *t > now_ms - WINDOW_MS));
            if by_source.len() >= TRACKED_SOURCES {
                // Every tracked address failed within the minute: forget one, not all.
                if let Some(k) = by_source.keys().next().cloned() {
                    by_source.remove(&k);
                }
            }
        }
        let times = by_source.entry(source.to_string()).or_default();
        times.push_back(now_ms);
        while times.len() > FAILED_JOINS_PER_MINUTE {
            times.pop_front();
        }
    }
}

/// What a machine sends to join.
pub struct JoinRequest {
    pub token: String,
    pub name: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub signing_public_key: Vec<u8>,
    pub csr_pem: String,
    /// The caller's address (`ip:port`) and its IP, for the limit and the audit log.
    pub remote: String,
    pub remote_ip: String,
}

/// A machine that joined: its row and its certificate.
pub struct Joined {
    pub agent: AgentRow,
    pub cert_pem: String,
}

/// Admits a machine: checks its token (first, so a caller without one learns nothing, not
/// even which names exist), signs its certificate and records it, spending the token last
/// with the agent's row, so a request refused for any reason leaves the token as it was.
pub fn join(
    ctl: &Controller,
    limiter: &JoinLimiter,
    req: JoinRequest,
) -> Result<Joined, AccessError> {
    validate_name("agent", &req.name)?;
    validate_labels(&req.labels)?;
    if req.signing_public_key.len() != 32 {
        return Err(AccessError::BadSigningKey);
    }
    let hash = token_hash(&req.token);
    let now = now_ms();
    let checked = if limiter.limited(&req.remote_ip, now) {
        Err(AccessError::RateLimited {
            ip: req.remote_ip.clone(),
        })
    } else {
        match ctl.catalog.check_token(&hash, now)? {
            TokenCheck::Valid(labels, device) => Ok((labels, device)),
            TokenCheck::Unknown => Err(AccessError::UnknownToken),
            TokenCheck::AlreadyUsed => Err(AccessError::TokenUsed),
            TokenCheck::Expired => Err(AccessError::TokenExpired),
        }
    };
    let (token_labels, device) = match checked {
        Ok(l) => l,
        Err(e) => {
            limiter.record(&req.remote_ip, now);
            ctl.audit.denied_anonymous(
                req.remote_ip.as_str(),
                &format!("enrolling:{}", req.name),
                "/lifeboat.v1.Enrollment/Enroll",
                &req.remote,
                &e.to_string(),
            );
            return Err(e);
        }
    };
    let existing = ctl.catalog.find_agent(&req.name).ok();
    let agent_id = match (&existing, device.as_str()) {
        (None, "") => hex::encode(lifeboat_core::sign::random_bytes::<16>()?),
        (Some(a), d) if d == a.name => a.id.clone(),
        (Some(_), "") => return Err(AccessError::NameTaken(req.name)),
        (_, d) => return Err(AccessError::WrongDevice(d.to_string())),
    };
    let validity = lifeboat_core::pki::Validity::from_now(ctl.agent_cert_lifetime);
    let trust = ctl.authority.trust();
    let (cert_pem, serial) = trust
        .issuer
        .sign_csr(&req.csr_pem, &format!("agent:{agent_id}"), validity)
        .map_err(|e| AccessError::BadCsr(e.to_string()))?;
    // Labels from the token (chosen by an operator) win over labels the machine asks for.
    let mut labels = req.labels;
    labels.extend(token_labels);
    if let Some(a) = &existing {
        // The device's own labels stay; the token's (an admin's) win.
        let mut kept = a.labels.clone();
        kept.extend(labels);
        labels = kept;
    }
    let agent = AgentRow {
        id: agent_id.clone(),
        name: req.name,
        labels,
        hostname: req.hostname,
        signing_key: req.signing_public_key,
        cert_serial: serial,
        enrolled_ms: now_ms(),
        last_seen_ms: 0,
        sources: Vec::new(),
        restore_roots: Vec::new(),
        version: String::new(),
        revoked_ms: 0,
        prev_serial: String::new(),
        cert_expires_ms: validity.not_after_ms(),
        docker: None,
    };
    let action = if existing.is_some() {
        // A session of the old machine (if it still runs) ends now: its certificate is no
        // longer the device's.
        ctl.catalog.reenroll_agent(&hash, now_ms(), &agent)?;
        ctl.jobs.kick(&agent_id);
        "agent.reenroll"
    } else {
        ctl.catalog.enroll_agent(&hash, now_ms(), &agent)?;
        "agent.enroll"
    };
    ctl.catalog
        .set_agent_cert_ca(&agent_id, &trust.issuer_fingerprint)?;
    tracing::info!(agent = %agent.name, id = %agent_id, action, "agent enrolled");
    ctl.audit.ok(
        &format!("agent:{}", agent.name),
        action,
        &agent.name,
        serde_json::json!({ "agent_id": agent_id, "serial": agent.cert_serial, "not_after_ms": agent.cert_expires_ms, "labels": agent.labels, "remote": req.remote }),
    );
    Ok(Joined { agent, cert_pem })
}
