//! Enrollment: a new machine trades a single-use join token and a CSR for its certificate.

use std::collections::BTreeMap;
use std::sync::Arc;

use lifeboat_core::snapshot::validate_name;
use lifeboat_proto::pb::{self, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use crate::catalog::{AgentRow, TokenCheck};
use crate::error::ApiError;
use crate::{Controller, now_ms};

pub struct EnrollService(pub Arc<Controller>);

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
        let ctl = &self.0;
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
        // any reason leaves it as it was.
        let hash = token_hash(&req.token);
        let refusal = match ctl.catalog.check_token(&hash, now_ms())? {
            TokenCheck::Valid(l) => Ok(l),
            TokenCheck::Unknown => Err(ApiError::Unauthenticated(
                "join token is not valid; create one with `lifeboat token create`".into(),
            )),
            TokenCheck::AlreadyUsed => Err(ApiError::PermissionDenied("join token was already used; tokens are single-use, create a new one with `lifeboat token create`".into())),
            TokenCheck::Expired => Err(ApiError::PermissionDenied(
                "join token has expired; create a new one with `lifeboat token create`".into(),
            )),
        };
        let token_labels = match refusal {
            Ok(l) => l,
            Err(e) => {
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
        if ctl.catalog.find_agent(&req.name).is_ok() {
            return Err(ApiError::AlreadyExists(format!(
                "an agent named {:?} is already enrolled; choose another --name",
                req.name
            ))
            .into());
        }
        let agent_id =
            hex::encode(lifeboat_core::sign::random_bytes::<16>().map_err(ApiError::from)?);
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
        ctl.catalog.enroll_agent(&hash, now_ms(), &row)?;
        tracing::info!(agent = %row.name, id = %agent_id, "agent enrolled");
        ctl.audit.ok(
            &format!("agent:{}", row.name),
            "agent.enroll",
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
