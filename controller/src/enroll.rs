//! Enrollment: a new machine trades a single-use join token and a CSR for its certificate.
//! A machine rebuilt after a loss re-enrolls under its existing device name, keeping its
//! id and history, only with a token an admin issued for that device
//! (`lifeboat token create --device NAME`).
//!
//! Guessing a token's secret is bounded: a source address that failed
//! [`FAILED_JOINS_PER_MINUTE`] times within a minute is refused at once, its token not even
//! looked at, until its failures age out (every refusal counts, so an address that keeps
//! guessing stays refused). Tokens are stored and audited only as their SHA-256; the secret
//! is never logged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use lifeboat_core::snapshot::validate_name;
use lifeboat_proto::pb::{self, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use crate::catalog::{AgentRow, TokenCheck};
use crate::error::ApiError;
use crate::{Controller, now_ms};

pub struct EnrollService {
    ctl: Arc<Controller>,
    failures: Mutex<Failures>,
}

impl EnrollService {
    pub fn new(ctl: Arc<Controller>) -> EnrollService {
        EnrollService {
            ctl,
            failures: Mutex::new(Failures::default()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Failed join attempts one source address may make within a minute; past them, it is
/// refused without its token being checked.
pub const FAILED_JOINS_PER_MINUTE: usize = 10;
const WINDOW_MS: i64 = 60_000;
/// Source addresses whose failures are remembered at once (each keeps at most
/// [`FAILED_JOINS_PER_MINUTE`] times): a bound on memory under a spread-out attack.
const TRACKED_SOURCES: usize = 100_000;

/// Recent failed join attempts, by source address.
#[derive(Default)]
struct Failures {
    by_source: HashMap<String, VecDeque<i64>>,
}

impl Failures {
    /// Whether `source` used up its failures for the last minute.
    fn limited(&mut self, source: &str, now_ms: i64) -> bool {
        match self.by_source.get_mut(source) {
            Some(times) => {
                while times.front().is_some_and(|t| *t <= now_ms - WINDOW_MS) {
                    times.pop_front();
                }
                times.len() >= FAILED_JOINS_PER_MINUTE
            }
            None => false,
        }
    }

    fn record(&mut self, source: &str, now_ms: i64) {
        if self.by_source.len() >= TRACKED_SOURCES && !self.by_source.contains_key(source) {
            self.by_source
                .retain(|_, times| times.back().is_some_and(|t| *t > now_ms - WINDOW_MS));
            if self.by_source.len() >= TRACKED_SOURCES {
                // Every tracked address failed within the minute: forget one, not all.
                if let Some(k) = self.by_source.keys().next().cloned() {
                    self.by_source.remove(&k);
                }
            }
        }
        let times = self.by_source.entry(source.to_string()).or_default();
        times.push_back(now_ms);
        while times.len() > FAILED_JOINS_PER_MINUTE {
            times.pop_front();
        }
    }
}

/// Join tokens are stored only as their SHA-256.
pub fn token_hash(token: &str) -> String {
    lifeboat_core::sign::sha256_hex(token.as_bytes())
}

/// Label keys and values as Kubernetes users know them: short, printable, no separators.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
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
            return Err(ApiError::InvalidArgument(format!(
                "label {k:?}={v:?} is invalid: keys and values use letters, digits, '.', '_', '-', '/' (values also ':')"
            )));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let ctl = &self.ctl;
        let peer = req
            .extensions()
            .get::<lifeboat_proto::transport::PeerInfo>();
        let remote = peer.map(|p| p.remote.to_string()).unwrap_or_default();
        let remote_ip = peer.map(|p| p.remote.ip().to_string()).unwrap_or_default();
        let req = req.into_inner();
        validate_name("agent", &req.name).map_err(ApiError::from)?;
        let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
        validate_labels(&labels)?;
        if req.signing_public_key.len() != 32 {
            return Err(ApiError::InvalidArgument(
                "signing public key must be 32 bytes (ed25519)".into(),
            )
            .into());
        }
        // The token is checked first, so a caller without one learns nothing (not even
        // which names exist), and spent last, with the agent's row: a request refused for
        // any reason leaves it as it was. An address that keeps failing is not even
        // answered about its token.
        let hash = token_hash(&req.token);
        let now = now_ms();
        let refusal = if self.failures().limited(&remote_ip, now) {
            Err(ApiError::RateLimited(format!(
                "too many failed join attempts from {remote_ip} in the last minute (at most {FAILED_JOINS_PER_MINUTE}); wait a minute, then enroll with a token from `lifeboat token create`"
            )))
        } else {
            match ctl.catalog.check_token(&hash, now)? {
                TokenCheck::Valid(l, device) => Ok((l, device)),
                TokenCheck::Unknown => Err(ApiError::Unauthenticated(
                    "join token is not valid; create one with `lifeboat token create`".into(),
                )),
                TokenCheck::AlreadyUsed => Err(ApiError::PermissionDenied(
                    "join token was already used; tokens are single-use, create a new one with `lifeboat token create`".into(),
                )),
                TokenCheck::Expired => Err(ApiError::PermissionDenied(
                    "join token has expired; create a new one with `lifeboat token create`"
                        .into(),
                )),
            }
        };
        let (token_labels, device) = match refusal {
            Ok(l) => l,
            Err(e) => {
                self.failures().record(&remote_ip, now);
                ctl.audit.denied_anonymous(
                    remote_ip.as_str(),
                    &format!("enrolling:{}", req.name),
                    "/lifeboat.v1.Enrollment/Enroll",
                    &remote,
                    &e.to_string(),
                );
                return Err(e.into());
            }
        };
        let existing = ctl.catalog.find_agent(&req.name).ok();
        let agent_id = match (&existing, device.as_str()) {
            (None, "") => {
                hex::encode(lifeboat_core::sign::random_bytes::<16>().map_err(ApiError::from)?)
            }
            (Some(a), d) if d == a.name => a.id.clone(),
            (Some(_), "") => {
                return Err(ApiError::AlreadyExists(format!(
                    "an agent named {:?} is already enrolled; choose another --name, or, to re-enroll that device (a rebuilt machine), enroll with a token an admin issues for it: `lifeboat token create --device {}`",
                    req.name, req.name
                ))
                .into());
            }
            (_, d) => {
                return Err(ApiError::PermissionDenied(format!(
                    "this join token re-enrolls device {d:?} only; enroll with --name {d}"
                ))
                .into());
            }
        };
        let validity = lifeboat_core::pki::Validity::from_now(ctl.agent_cert_lifetime);
        let (cert_pem, serial) = ctl
            .ca
            .sign_csr(&req.csr_pem, &format!("agent:{agent_id}"), validity)
            .map_err(|e| {
                ApiError::InvalidArgument(format!(
                    "the certificate signing request is not valid ({e}); the join token was not used: run `lifeboat-agent enroll` again"
                ))
            })?;
        // Labels from the token (chosen by an operator) win over labels the machine asks for.
        let mut all_labels = labels;
        all_labels.extend(token_labels);
        if let Some(a) = &existing {
            // The device's own labels stay; the token's (an admin's) win.
            let mut kept = a.labels.clone();
            kept.extend(all_labels);
            all_labels = kept;
        }
        let row = AgentRow {
            id: agent_id.clone(),
            name: req.name.clone(),
            labels: all_labels,
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
            // A session of the old machine (if it still runs) ends now: its certificate
            // is no longer the device's.
            ctl.catalog.reenroll_agent(&hash, now_ms(), &row)?;
            ctl.jobs.kick(&agent_id);
            "agent.reenroll"
        } else {
            ctl.catalog.enroll_agent(&hash, now_ms(), &row)?;
            "agent.enroll"
        };
        tracing::info!(agent = %row.name, id = %agent_id, action, "agent enrolled");
        ctl.audit.ok(
            &format!("agent:{}", row.name),
            action,
            &row.name,
            serde_json::json!({ "agent_id": agent_id, "serial": row.cert_serial, "not_after_ms": row.cert_expires_ms, "labels": row.labels, "remote": remote }),
        );
        Ok(Response::new(pb::EnrollResponse {
            agent_id,
            name: row.name,
            cert_pem,
            ca_pem: ctl.ca.cert_pem.clone(),
            chunk_key: ctl.chunk_key.as_bytes().to_vec(),
            controller_signing_key: ctl.signer_public_key.clone(),
        }))
    }
}
