//! The fleet CA, and its rotation.
//!
//! Every certificate of the fleet (agents, operators, the controller's own) comes from one
//! CA whose key sits in the data directory. When that key may have been copied (a
//! controller or one of its backups compromised), a rotation replaces it without
//! re-enrolling a machine:
//!
//! 1. `lifeboat ca rotate` makes a new CA (`ca-next.crt`, `ca-next.key`). From then on it
//!    signs every new certificate; the controller accepts the certificates of both CAs and
//!    still presents one of the old, which every agent trusts. Each connected agent is told
//!    over its session to trust both ([`pb::Trust`]), renews with a new key under the new
//!    CA and reconnects with it; an agent offline then is told when it comes back.
//! 2. `lifeboat ca status` counts who has moved: agents using a certificate of the new CA
//!    (their previous one retired), operators holding one (`lifeboat identity renew`).
//! 3. `lifeboat ca finish` makes the new CA the only one: the old CA's key is deleted, the
//!    controller presents a certificate of the new CA and accepts no other, and agents are
//!    told to trust the new one alone. Whoever has not moved loses its certificate (agents
//!    enroll again with `lifeboat token create --device NAME`); `--force` is needed then.
//!
//! The files move so that a crash at any point leaves either the rotation under way or
//! finished: `ca.key`, then `ca.crt`, are overwritten with the new CA, and `ca-next.*`
//! removed last; [`open`] completes a finish that was cut short.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use lifeboat_core::durable::write_atomic;
use lifeboat_core::pki::{self, Ca};
use lifeboat_proto::pb;
use lifeboat_proto::transport::ServerTls;

use crate::error::ApiError;

const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
pub const NEXT_CRT: &str = "ca-next.crt";
pub const NEXT_KEY: &str = "ca-next.key";
const SERVER_CRT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";

/// The CAs found in the data directory.
pub struct Cas {
    /// The CA in force: the controller's certificate comes from it.
    pub current: Ca,
    /// During a rotation: the new CA, and when the rotation started.
    pub next: Option<(Ca, i64)>,
    /// No CA existed: this start created the fleet's first.
    pub created: bool,
}

impl Cas {
    /// The CA that signs new certificates.
    pub fn issuer(&self) -> &Ca {
        self.next.as_ref().map_or(&self.current, |(ca, _)| ca)
    }

    /// Every CA whose certificates are accepted (PEM).
    pub fn trusted_pem(&self) -> String {
        let next = self
            .next
            .as_ref()
            .map_or("", |(ca, _)| ca.cert_pem.as_str());
        format!("{}{next}", self.current.cert_pem)
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ApiError {
    let msg = format!("{what} {}", path.display());
    move |e| ApiError::internal(format!("{msg}: {e}"))
}

/// Unix milliseconds as a UTC time.
fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

fn read(path: &Path) -> Result<String, ApiError> {
    std::fs::read_to_string(path).map_err(io("reading", path))
}

/// Loads the CAs of data directory `dir` (creating the first on first start), and
/// completes a rotation's finish that a crash cut short.
pub fn open(dir: &Path) -> Result<Cas, ApiError> {
    let (crt, key) = (dir.join(CA_CRT), dir.join(CA_KEY));
    if !crt.exists() {
        let ca = Ca::generate()?;
        write_atomic(&key, ca.key_pem().as_bytes(), 0o600)?;
        write_atomic(&crt, ca.cert_pem.as_bytes(), 0o644)?;
        tracing::info!(fingerprint = %pki::fingerprint(&ca.cert_pem)?, "created the fleet CA");
        return Ok(Cas {
            current: ca,
            next: None,
            created: true,
        });
    }
    let (next_crt, next_key) = (dir.join(NEXT_CRT), dir.join(NEXT_KEY));
    let next = if next_crt.exists() {
        let (cert, key_pem) = (read(&next_crt)?, read(&next_key)?);
        if read(&crt)? == cert || read(&key)? == key_pem {
            tracing::warn!("completing a CA rotation's finish that was cut short");
            move_next_in(dir, &cert, &key_pem)?;
            None
        } else {
            let started = std::fs::metadata(&next_crt)
                .and_then(|m| m.modified())
                .map_err(io("reading the time of", &next_crt))?;
            let started_ms = started
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            Some((Ca::load(&cert, &key_pem)?, started_ms))
        }
    } else {
        None
    };
    Ok(Cas {
        current: Ca::load(&read(&crt)?, &read(&key)?)?,
        next,
        created: false,
    })
}

/// The new CA replaces the old in `dir`: key first, certificate second, the `ca-next`
/// files last (see the module's note on crashes).
fn move_next_in(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), ApiError> {
    write_atomic(&dir.join(CA_KEY), key_pem.as_bytes(), 0o600)?;
    write_atomic(&dir.join(CA_CRT), cert_pem.as_bytes(), 0o644)?;
    for name in [NEXT_KEY, NEXT_CRT] {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(io("removing", &path))?;
    }
    lifeboat_core::durable::sync_dir(dir)?;
    Ok(())
}

/// What the controller trusts and presents now; a rotation step replaces it whole.
pub struct Trust {
    /// The CA of the controller's certificate: what enrolling machines pin.
    pub presented_fingerprint: String,
    /// Signs every new certificate: the new CA during a rotation.
    pub issuer: Arc<Ca>,
    pub issuer_fingerprint: String,
    /// Every CA whose certificates are accepted, which clients are told to trust (PEM).
    pub trusted_pem: String,
    /// When the rotation under way started (`None`: none is).
    pub rotation_started_ms: Option<i64>,
    /// The gRPC port's and the HTTPS port's TLS settings.
    pub tls: Arc<ServerTls>,
    pub https: Arc<rustls::ServerConfig>,
    current: Arc<Ca>,
}

impl Trust {
    fn new(
        current: Arc<Ca>,
        next: Option<(Arc<Ca>, i64)>,
        server_chain_pem: &str,
        server_key_pem: &str,
    ) -> Result<Trust, ApiError> {
        let mut trusted_pem = current.cert_pem.clone();
        if let Some((next, _)) = &next {
            trusted_pem.push_str(&next.cert_pem);
        }
        let issuer = next.as_ref().map_or(&current, |(n, _)| n).clone();
        let tls = ServerTls::new(&trusted_pem, server_chain_pem, server_key_pem)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Trust {
            presented_fingerprint: pki::fingerprint(&current.cert_pem)?,
            issuer_fingerprint: pki::fingerprint(&issuer.cert_pem)?,
            issuer,
            https: https_config(&trusted_pem, server_chain_pem, server_key_pem)?,
            trusted_pem,
            rotation_started_ms: next.map(|(_, ms)| ms),
            tls: Arc::new(tls),
            current,
        })
    }

    /// What an agent whose certificate came from CA `cert_ca` is told at its session's
    /// start: the CAs to trust, and whether to renew now (during a rotation, unless it has).
    pub fn for_agent(&self, cert_ca: &str) -> pb::Trust {
        pb::Trust {
            ca_pem: self.trusted_pem.clone(),
            renew: self.rotation_started_ms.is_some() && cert_ca != self.issuer_fingerprint,
        }
    }
}

/// The fleet CA of a running controller.
pub struct Authority {
    dir: PathBuf,
    trust: RwLock<Arc<Trust>>,
    /// One rotation step at a time.
    step: Mutex<()>,
}

impl Authority {
    /// `server_chain_pem` (the controller's certificate and its CA) comes from `cas.current`.
    pub fn new(
        dir: &Path,
        cas: Cas,
        server_chain_pem: &str,
        server_key_pem: &str,
    ) -> Result<Authority, ApiError> {
        let next = cas.next.map(|(ca, ms)| (Arc::new(ca), ms));
        let trust = Trust::new(
            Arc::new(cas.current),
            next,
            server_chain_pem,
            server_key_pem,
        )?;
        Ok(Authority {
            dir: dir.to_owned(),
            trust: RwLock::new(Arc::new(trust)),
            step: Mutex::new(()),
        })
    }

    pub fn trust(&self) -> Arc<Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, trust: Trust) {
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(trust);
    }

    /// Starts a rotation: a new CA signs every certificate from now on. Returns the new
    /// trust, which agents are to be told.
    pub fn start_rotation(&self, now_ms: i64) -> Result<Arc<Trust>, ApiError> {
        let _step = self.step.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.trust();
        if let Some(started) = old.rotation_started_ms {
            return Err(ApiError::FailedPrecondition(format!(
                "a CA rotation is already under way (since {}): see who has moved with `lifeboat ca status`, then `lifeboat ca finish`",
                when(started)
            )));
        }
        let next = Ca::generate()?;
        // The key first: a certificate without its key must never be found.
        write_atomic(&self.dir.join(NEXT_KEY), next.key_pem().as_bytes(), 0o600)?;
        write_atomic(&self.dir.join(NEXT_CRT), next.cert_pem.as_bytes(), 0o644)?;
        let (chain, key) = self.server_files()?;
        let trust = Trust::new(
            old.current.clone(),
            Some((Arc::new(next), now_ms)),
            &chain,
            &key,
        )?;
        tracing::warn!(next = %trust.issuer_fingerprint, "CA rotation started: the new CA signs every certificate from now on");
        self.set(trust);
        Ok(self.trust())
    }

    /// Finishes the rotation: the new CA becomes the only one, the old one's key is
    /// deleted, and the controller presents a certificate of the new CA from its next
    /// handshake on. The caller has checked who has moved.
    pub fn finish_rotation(&self) -> Result<Arc<Trust>, ApiError> {
        let _step = self.step.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.trust();
        if old.rotation_started_ms.is_none() {
            return Err(ApiError::FailedPrecondition(
                "no CA rotation is under way: start one with `lifeboat ca rotate`".into(),
            ));
        }
        let next = old.issuer.clone();
        let server = next.issue_server()?;
        let chain = format!("{}{}", server.cert_pem, next.cert_pem);
        let trust = Trust::new(next.clone(), None, &chain, &server.key_pem)?;
        move_next_in(&self.dir, &next.cert_pem, &next.key_pem())?;
        write_atomic(&self.dir.join(SERVER_CRT), chain.as_bytes(), 0o644)?;
        write_atomic(&self.dir.join(SERVER_KEY), server.key_pem.as_bytes(), 0o600)?;
        tracing::warn!(ca = %trust.presented_fingerprint, "CA rotation finished: the previous CA's key is deleted and its certificates are refused");
        self.set(trust);
        Ok(self.trust())
    }

    fn server_files(&self) -> Result<(String, String), ApiError> {
        Ok((
            read(&self.dir.join(SERVER_CRT))?,
            read(&self.dir.join(SERVER_KEY))?,
        ))
    }
}

/// The HTTPS port (`/metrics`, `/healthz`): asks for a client certificate and verifies one
/// against the trusted CAs when it is presented; `/metrics` then requires one the catalog
/// honours (`http.rs`), while `/healthz` answers without.
fn https_config(
    trusted_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, ApiError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: rustls::Error| ApiError::internal(format!("https config: {e}"));
    let pem = |e: rustls::pki_types::pem::Error| ApiError::internal(format!("https config: {e}"));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(trusted_pem.as_bytes()) {
        roots.add(ca.map_err(pem)?).map_err(tls)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| ApiError::internal(format!("https client verifier: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(tls)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).expect(name)
    }

    /// A crash at any point of a finish leaves the rotation either under way or finished,
    /// never a CA certificate with another CA's key.
    #[test]
    fn a_finish_cut_short_is_completed_at_the_next_start() {
        lifeboat_proto::transport::install_crypto_provider();
        let dir = tempfile::tempdir().expect("dir");
        let first = open(dir.path()).expect("first start");
        assert!(first.created && first.next.is_none());
        let next = Ca::generate().expect("next CA");
        write_atomic(&dir.path().join(NEXT_KEY), next.key_pem().as_bytes(), 0o600).expect("key");
        write_atomic(&dir.path().join(NEXT_CRT), next.cert_pem.as_bytes(), 0o644).expect("crt");

        // Under way: both CAs, the new one signing.
        let cas = open(dir.path()).expect("open");
        assert_eq!(cas.current.cert_pem, first.current.cert_pem);
        assert_eq!(cas.issuer().cert_pem, next.cert_pem);
        assert_eq!(
            cas.trusted_pem(),
            format!("{}{}", first.current.cert_pem, next.cert_pem)
        );

        // Cut short after the key was moved in: the next start completes the move.
        write_atomic(&dir.path().join(CA_KEY), next.key_pem().as_bytes(), 0o600).expect("key");
        let cas = open(dir.path()).expect("open");
        assert!(cas.next.is_none());
        assert_eq!(cas.current.cert_pem, next.cert_pem);
        assert_eq!(pem(dir.path(), CA_CRT), next.cert_pem);
        assert_eq!(pem(dir.path(), CA_KEY), next.key_pem());
        assert!(!dir.path().join(NEXT_KEY).exists() && !dir.path().join(NEXT_CRT).exists());
    }
}
