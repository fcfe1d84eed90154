//! The agent's state directory, written at enrollment.
//!
//! ```text
//! STATE/agent.json     who we are: id, name, controller URL, CA fingerprint
//! STATE/ca.crt         the fleet CA (pinned by fingerprint at enrollment)
//! STATE/tls.crt        our client certificate (CN agent:<id>)
//! STATE/tls.key        its key, generated here (0600)
//! STATE/signing.key    our ed25519 snapshot-signing key, generated here (0600)
//! STATE/chunk.key      the fleet's chunk-id key (0600)
//! STATE/cache/         per-source tree of the last committed snapshot (change detection)
//! ```

use std::path::{Path, PathBuf};

use lifeboat_core::ChunkKey;
use lifeboat_core::durable::write_atomic;
use lifeboat_core::sign::SigningKey;
use lifeboat_proto::transport::ClientTls;
use serde::{Deserialize, Serialize};

use crate::AgentError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    pub version: u32,
    pub agent_id: String,
    pub name: String,
    pub controller: String,
    pub ca_fingerprint: String,
}

/// A loaded, enrolled agent identity.
pub struct AgentState {
    pub dir: PathBuf,
    pub info: AgentInfo,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub signing: SigningKey,
    pub chunk_key: ChunkKey,
}

fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|e| AgentError::State(format!("reading {}: {e}", path.display())))
}

fn read_string(path: &Path) -> Result<String, AgentError> {
    String::from_utf8(read(path)?)
        .map_err(|_| AgentError::State(format!("{} is not text", path.display())))
}

impl AgentState {
    pub fn is_enrolled(dir: &Path) -> bool {
        dir.join("agent.json").exists()
    }

    pub fn load(dir: &Path) -> Result<AgentState, AgentError> {
        if !Self::is_enrolled(dir) {
            return Err(AgentError::State(format!(
                "{} holds no enrollment; run `lifeboat-agent enroll --state-dir {}` first",
                dir.display(),
                dir.display()
            )));
        }
        let info: AgentInfo = serde_json::from_slice(&read(&dir.join("agent.json"))?)
            .map_err(|e| AgentError::State(format!("{}: {e}", dir.join("agent.json").display())))?;
        Ok(AgentState {
            dir: dir.to_owned(),
            ca_pem: read_string(&dir.join("ca.crt"))?,
            cert_pem: read_string(&dir.join("tls.crt"))?,
            key_pem: read_string(&dir.join("tls.key"))?,
            signing: SigningKey::from_pkcs8(&read(&dir.join("signing.key"))?)?,
            chunk_key: ChunkKey::from_slice(&read(&dir.join("chunk.key"))?)?,
            info,
        })
    }

    /// Writes every file; `agent.json` last, so a half-written state is never "enrolled".
    pub fn save(&self) -> Result<(), AgentError> {
        std::fs::create_dir_all(self.dir.join("cache"))
            .map_err(|e| AgentError::State(format!("creating {}: {e}", self.dir.display())))?;
        write_atomic(&self.dir.join("ca.crt"), self.ca_pem.as_bytes(), 0o644)?;
        write_atomic(&self.dir.join("tls.crt"), self.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&self.dir.join("tls.key"), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.dir.join("signing.key"), self.signing.pkcs8(), 0o600)?;
        write_atomic(
            &self.dir.join("chunk.key"),
            self.chunk_key.as_bytes(),
            0o600,
        )?;
        let json =
            serde_json::to_vec_pretty(&self.info).map_err(|e| AgentError::State(e.to_string()))?;
        write_atomic(&self.dir.join("agent.json"), &json, 0o600)?;
        Ok(())
    }

    pub fn client_tls(&self) -> Result<ClientTls, AgentError> {
        Ok(ClientTls::with_identity(
            &self.ca_pem,
            &self.cert_pem,
            &self.key_pem,
        )?)
    }

    /// Where the tree of the last committed snapshot of `source` is cached.
    pub fn cache_path(&self, source: &str) -> PathBuf {
        self.dir.join("cache").join(format!("{source}.tree"))
    }
}
