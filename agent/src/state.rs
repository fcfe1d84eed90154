//! The agent's state directory, written at enrollment.
//!
//! ```text
//! STATE/agent.json     who we are: id, name, controller URL, CA fingerprint
//! STATE/ca.crt         the fleet CA (pinned by fingerprint at enrollment)
//! STATE/tls.pem        our client certificate (CN agent:<id>) and its key, generated
//!                      here (0600); one file, so a renewal replaces both atomically
//! STATE/signing.key    our ed25519 snapshot-signing key, generated here (0600)
//! STATE/chunk.key      the fleet's chunk-id key (0600)
//! STATE/cache/         per-source tree of the last committed snapshot (change detection)
//! ```

use std::path::{Path, PathBuf};
use std::sync::RwLock;

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
    /// The controller's countersigning key (64 hex), pinned at enrollment.
    #[serde(default)]
    pub controller_key: String,
}

/// Our TLS certificate and key (PEM), replaced by renewal.
#[derive(Clone)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Credentials {
    /// When to renew: with a third of the certificate's lifetime left.
    pub fn renew_at_ms(&self) -> Result<i64, AgentError> {
        let v = lifeboat_core::pki::validity_of(&self.cert_pem)?;
        // Certificates are backdated for clock skew; the lifetime starts at issue.
        let skew = lifeboat_core::pki::CLOCK_SKEW.as_millis() as i64;
        let until = v.not_after.unix_timestamp() * 1000;
        // (A certificate backdated by less, from an older controller, still renews before
        // it expires.)
        let from = (v.not_before.unix_timestamp() * 1000 + skew).min(until);
        Ok(until - (until - from) / 3)
    }

    pub fn not_after_ms(&self) -> Result<i64, AgentError> {
        Ok(lifeboat_core::pki::validity_of(&self.cert_pem)?
            .not_after
            .unix_timestamp()
            * 1000)
    }
}

/// A loaded, enrolled agent identity.
pub struct AgentState {
    pub dir: PathBuf,
    pub info: AgentInfo,
    /// The CAs the controller's certificate may come from (PEM; two during a CA rotation).
    ca_pem: RwLock<String>,
    tls: RwLock<Credentials>,
    pub signing: SigningKey,
    pub chunk_key: ChunkKey,
}

fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path)
        .map_err(|e| AgentError::Enrollment(format!("reading {}: {e}", path.display())))
}

fn read_string(path: &Path) -> Result<String, AgentError> {
    String::from_utf8(read(path)?)
        .map_err(|_| AgentError::Enrollment(format!("{} is not text", path.display())))
}

impl AgentState {
    pub fn is_enrolled(dir: &Path) -> bool {
        dir.join("agent.json").exists()
    }

    pub fn load(dir: &Path) -> Result<AgentState, AgentError> {
        if !Self::is_enrolled(dir) {
            return Err(AgentError::Enrollment(format!(
                "{} holds no enrollment; run `lifeboat-agent enroll --state-dir {}` first",
                dir.display(),
                dir.display()
            )));
        }
        let info: AgentInfo =
            serde_json::from_slice(&read(&dir.join("agent.json"))?).map_err(|e| {
                AgentError::Enrollment(format!("{}: {e}", dir.join("agent.json").display()))
            })?;
        let pem = dir.join("tls.pem");
        let tls = if pem.exists() {
            let both = read_string(&pem)?;
            let key_at = both.find("-----BEGIN PRIVATE KEY-----").ok_or_else(|| {
                AgentError::Enrollment(format!("{} holds no private key", pem.display()))
            })?;
            Credentials {
                cert_pem: both[..key_at].to_string(),
                key_pem: both[key_at..].to_string(),
            }
        } else {
            // Enrolled by an earlier version: certificate and key in two files.
            Credentials {
                cert_pem: read_string(&dir.join("tls.crt"))?,
                key_pem: read_string(&dir.join("tls.key"))?,
            }
        };
        Ok(AgentState {
            dir: dir.to_owned(),
            ca_pem: RwLock::new(read_string(&dir.join("ca.crt"))?),
            tls: RwLock::new(tls),
            signing: SigningKey::from_pkcs8(&read(&dir.join("signing.key"))?)?,
            chunk_key: ChunkKey::from_slice(&read(&dir.join("chunk.key"))?)?,
            info,
        })
    }

    pub fn new(
        dir: PathBuf,
        info: AgentInfo,
        ca_pem: String,
        tls: Credentials,
        signing: SigningKey,
        chunk_key: ChunkKey,
    ) -> AgentState {
        AgentState {
            dir,
            info,
            ca_pem: RwLock::new(ca_pem),
            tls: RwLock::new(tls),
            signing,
            chunk_key,
        }
    }

    /// The current certificate and key.
    pub fn credentials(&self) -> Credentials {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The CAs the controller's certificate may come from.
    pub fn ca_pem(&self) -> String {
        self.ca_pem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Trusts the CAs of `ca_pem` from now on, as the controller said over a session its
    /// certificate opened (a CA rotation); refused unless they make a working TLS setting.
    pub fn replace_trust(&self, ca_pem: &str) -> Result<(), AgentError> {
        let tls = self.credentials();
        ClientTls::with_identity(ca_pem, &tls.cert_pem, &tls.key_pem)?;
        write_atomic(&self.dir.join("ca.crt"), ca_pem.as_bytes(), 0o644)?;
        *self.ca_pem.write().unwrap_or_else(|p| p.into_inner()) = ca_pem.to_string();
        Ok(())
    }

    /// Stores a renewed certificate and key (one atomic write), then uses them for every
    /// new connection.
    pub fn replace_credentials(&self, tls: Credentials) -> Result<(), AgentError> {
        write_atomic(
            &self.dir.join("tls.pem"),
            format!("{}{}", tls.cert_pem, tls.key_pem).as_bytes(),
            0o600,
        )?;
        for legacy in ["tls.crt", "tls.key"] {
            let _ = std::fs::remove_file(self.dir.join(legacy));
        }
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        Ok(())
    }

    /// Writes every file; `agent.json` last, so a half-written state is never "enrolled".
    pub fn save(&self) -> Result<(), AgentError> {
        std::fs::create_dir_all(self.dir.join("cache"))
            .map_err(|e| AgentError::Enrollment(format!("creating {}: {e}", self.dir.display())))?;
        write_atomic(&self.dir.join("ca.crt"), self.ca_pem().as_bytes(), 0o644)?;
        self.replace_credentials(self.credentials())?;
        write_atomic(&self.dir.join("signing.key"), self.signing.pkcs8(), 0o600)?;
        write_atomic(
            &self.dir.join("chunk.key"),
            self.chunk_key.as_bytes(),
            0o600,
        )?;
        let json = serde_json::to_vec_pretty(&self.info)
            .map_err(|e| AgentError::Enrollment(e.to_string()))?;
        write_atomic(&self.dir.join("agent.json"), &json, 0o600)?;
        Ok(())
    }

    pub fn client_tls(&self) -> Result<ClientTls, AgentError> {
        let tls = self.credentials();
        Ok(ClientTls::with_identity(
            &self.ca_pem(),
            &tls.cert_pem,
            &tls.key_pem,
        )?)
    }

    /// Where the tree of the last committed snapshot of `source` is cached.
    pub fn cache_path(&self, source: &str) -> PathBuf {
        self.dir.join("cache").join(format!("{source}.tree"))
    }
}
