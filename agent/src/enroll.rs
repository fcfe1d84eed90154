//! `lifeboat-agent enroll`: keys are made here; the controller only signs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lifeboat_core::ChunkKey;
use lifeboat_core::pki;
use lifeboat_core::sign::SigningKey;
use lifeboat_core::snapshot::validate_name;
use lifeboat_proto::pb::{self, enrollment_client::EnrollmentClient};
use lifeboat_proto::transport::{self, ClientTls};

use crate::AgentError;
use crate::state::{AgentInfo, AgentState, Credentials};

pub struct EnrollOptions {
    pub controller: String,
    pub token: String,
    pub ca_fingerprint: String,
    pub state_dir: PathBuf,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// This machine's host name, made into a valid agent name.
pub fn default_name() -> String {
    let host = crate::hostname();
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean
        .trim_start_matches(['.', '-'])
        .chars()
        .take(64)
        .collect::<String>();
    if clean.is_empty() {
        "agent".into()
    } else {
        clean
    }
}

pub async fn enroll(opts: EnrollOptions) -> Result<AgentState, AgentError> {
    transport::install_crypto_provider();
    if AgentState::is_enrolled(&opts.state_dir) {
        return Err(AgentError::Enrollment(format!(
            "{} is already enrolled; use another --state-dir to enroll again",
            opts.state_dir.display()
        )));
    }
    let name = opts.name.unwrap_or_else(default_name);
    validate_name("agent", &name)?;
    let fingerprint = pki::normalize_fingerprint(&opts.ca_fingerprint)?;
    let signing = SigningKey::generate()?;
    let (csr_pem, key_pem) = pki::make_csr("lifeboat agent")?;
    let channel =
        transport::connect(&opts.controller, ClientTls::enrollment(&fingerprint)?).await?;
    let resp = EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: opts.token,
            name,
            labels: opts.labels.into_iter().collect(),
            csr_pem,
            signing_public_key: signing.public_key(),
            hostname: crate::hostname(),
        })
        .await
        .map_err(|s| AgentError::Rpc(format!("enrollment refused: {}", s.message())))?
        .into_inner();
    // The CA we were handed must be the one we pinned.
    if pki::fingerprint(&resp.ca_pem)? != fingerprint {
        return Err(AgentError::Enrollment(
            "the controller returned a CA that does not match --ca-fingerprint".into(),
        ));
    }
    if resp.controller_signing_key.len() != 32 {
        return Err(AgentError::Enrollment(
            "the controller sent no countersigning key; upgrade the controller".into(),
        ));
    }
    let state = AgentState::new(
        opts.state_dir,
        AgentInfo {
            version: 1,
            agent_id: resp.agent_id,
            name: resp.name,
            controller: opts.controller,
            ca_fingerprint: fingerprint,
            controller_key: hex::encode(&resp.controller_signing_key),
        },
        resp.ca_pem,
        Credentials {
            cert_pem: resp.cert_pem,
            key_pem,
        },
        signing,
        ChunkKey::from_slice(&resp.chunk_key)?,
    );
    std::fs::create_dir_all(&state.dir)
        .map_err(|e| AgentError::Enrollment(format!("creating {}: {e}", state.dir.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&state.dir, std::fs::Permissions::from_mode(0o700));
    }
    state.save()?;
    Ok(state)
}
