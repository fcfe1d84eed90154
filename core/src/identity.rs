//! Operator identity files: what `lifeboat` needs to reach a controller as someone.
//!
//! A JSON document (mode 0600) holding the operator's certificate and private key, the
//! fleet CA to verify the controller with, and the controller's URL.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub version: u32,
    pub name: String,
    pub role: String,
    /// `https://HOST:PORT` of the controller that issued this identity.
    pub controller: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl IdentityFile {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).ctx(|| format!("reading identity file {}", path.display()))?;
        let id: IdentityFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidRecord(format!("identity file {}: {e}", path.display())))?;
        if id.version != 1 {
            return Err(Error::InvalidRecord(format!(
                "identity file {}: unsupported version {}",
                path.display(),
                id.version
            )));
        }
        Ok(id)
    }

    /// Writes the file durably with mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        crate::durable::write_atomic(path, &bytes, 0o600)
    }
}
