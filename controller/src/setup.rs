//! The controller's data directory: created on first start, reused after.
//!
//! ```text
//! DIR/ca.crt, ca.key          the fleet CA (key 0600)
//! DIR/chunk.key               the fleet's chunk-id key (0600)
//! DIR/controller.sign         the controller's ed25519 countersigning key (PKCS#8, 0600)
//! DIR/admin.identity          the first admin operator's identity file (0600)
//! DIR/server.crt, server.key  the controller's TLS certificate, re-issued at every start
//! DIR/controller.json         settings fixed at first start (the store location)
//! DIR/catalog.db              the SQLite catalog
//! DIR/store/                  the default store
//! ```

use std::path::{Path, PathBuf};

use lifeboat_core::ChunkKey;
use lifeboat_core::durable::write_atomic;
use lifeboat_core::identity::IdentityFile;
use lifeboat_core::pki::{self, Ca, Validity};
use lifeboat_core::sign::SigningKey;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::error::ApiError;

/// The first admin's identity lasts a year (`lifeboat identity create` chooses for the
/// others); agent certificates are short-lived and renewed over the session.
pub const ADMIN_CERT_DAYS: u64 = 365;
pub const DEFAULT_AGENT_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(7 * 86_400);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    version: u32,
    store: PathBuf,
}

/// Everything loaded from (or created in) the data directory.
pub struct Prepared {
    pub ca: Ca,
    pub chunk_key: ChunkKey,
    /// Countersigns every committed snapshot.
    pub signer: SigningKey,
    pub store_dir: PathBuf,
    pub server_chain_pem: String,
    pub server_key_pem: String,
    pub catalog: Catalog,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ApiError {
    let msg = format!("{what} {}", path.display());
    move |e| ApiError::internal(format!("{msg}: {e}"))
}

/// Loads the data directory, creating the CA, keys and admin identity on first start.
/// `store` may only be given on first start or repeated unchanged.
pub fn prepare(data_dir: &Path, store: Option<&Path>) -> Result<Prepared, ApiError> {
    std::fs::create_dir_all(data_dir).map_err(io("creating", data_dir))?;
    restrict_dir(data_dir)?;
    let settings_path = data_dir.join("controller.json");
    let store_dir = if settings_path.exists() {
        let s: Settings = serde_json::from_slice(
            &std::fs::read(&settings_path).map_err(io("reading", &settings_path))?,
        )
        .map_err(|e| ApiError::internal(format!("{}: {e}", settings_path.display())))?;
        if let Some(given) = store
            && given != s.store
        {
            return Err(ApiError::InvalidArgument(format!(
                "this controller's store is {}; --store {} differs (the store cannot be moved by a flag)",
                s.store.display(),
                given.display()
            )));
        }
        s.store
    } else {
        let store = match store {
            Some(p) => std::path::absolute(p).map_err(io("resolving", p))?,
            None => data_dir.join("store"),
        };
        let s = Settings {
            version: 1,
            store: store.clone(),
        };
        write_atomic(
            &settings_path,
            &serde_json::to_vec_pretty(&s).unwrap_or_default(),
            0o600,
        )?;
        store
    };

    let ca_crt = data_dir.join("ca.crt");
    let ca_key = data_dir.join("ca.key");
    let first_start = !ca_crt.exists();
    let ca = if first_start {
        let ca = Ca::generate()?;
        write_atomic(&ca_key, ca.key_pem().as_bytes(), 0o600)?;
        write_atomic(&ca_crt, ca.cert_pem.as_bytes(), 0o644)?;
        tracing::info!(fingerprint = %pki::fingerprint(&ca.cert_pem)?, "created the fleet CA");
        ca
    } else {
        let cert = std::fs::read_to_string(&ca_crt).map_err(io("reading", &ca_crt))?;
        let key = std::fs::read_to_string(&ca_key).map_err(io("reading", &ca_key))?;
        Ca::load(&cert, &key)?
    };

    let key_path = data_dir.join("chunk.key");
    let chunk_key = if key_path.exists() {
        ChunkKey::from_slice(&std::fs::read(&key_path).map_err(io("reading", &key_path))?)?
    } else {
        let k = ChunkKey::generate()?;
        write_atomic(&key_path, k.as_bytes(), 0o600)?;
        k
    };

    let sign_path = data_dir.join("controller.sign");
    let signer = if sign_path.exists() {
        SigningKey::from_pkcs8(&std::fs::read(&sign_path).map_err(io("reading", &sign_path))?)?
    } else {
        let k = SigningKey::generate()?;
        write_atomic(&sign_path, k.pkcs8(), 0o600)?;
        k
    };

    let server = ca.issue_server()?;
    let server_chain_pem = format!("{}{}", server.cert_pem, ca.cert_pem);
    write_atomic(
        &data_dir.join("server.crt"),
        server_chain_pem.as_bytes(),
        0o644,
    )?;
    write_atomic(
        &data_dir.join("server.key"),
        server.key_pem.as_bytes(),
        0o600,
    )?;

    let catalog = Catalog::open(&data_dir.join("catalog.db"))?;
    Ok(Prepared {
        ca,
        chunk_key,
        signer,
        store_dir,
        server_chain_pem,
        server_key_pem: server.key_pem,
        catalog,
    })
}

fn restrict_dir(dir: &Path) -> Result<(), ApiError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("restricting", dir))
}

/// Writes `DIR/admin.identity` if it does not exist, or refreshes its controller URL.
pub fn ensure_admin_identity(
    data_dir: &Path,
    prepared: &Prepared,
    url: &str,
) -> Result<PathBuf, ApiError> {
    let path = data_dir.join("admin.identity");
    if path.exists() {
        let mut id = IdentityFile::load(&path)?;
        if id.controller != url {
            id.controller = url.to_string();
            id.save(&path)?;
        }
        return Ok(path);
    }
    let validity = Validity::from_now(pki::days(ADMIN_CERT_DAYS));
    let (cert, serial) = prepared.ca.issue_client("operator:admin", validity)?;
    prepared.catalog.add_operator(
        "admin",
        "admin",
        &serial,
        crate::now_ms(),
        validity.not_after_ms(),
        "setup",
    )?;
    IdentityFile {
        version: 1,
        name: "admin".into(),
        role: "admin".into(),
        controller: url.to_string(),
        ca_pem: prepared.ca.cert_pem.clone(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    }
    .save(&path)?;
    Ok(path)
}
