//! The HTTP client of object storage, shared by the controller (its S3 store) and the
//! agents (restores straight from the store through presigned GETs): `ureq`, blocking,
//! over rustls on the process's aws-lc-rs provider, verifying https endpoints against
//! the given roots, `SSL_CERT_FILE`, or the system bundle.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Idle connections kept per endpoint.
const IDLE_CONNECTIONS: usize = 64;

/// A client that reports every HTTP status as a response (callers classify them), never
/// follows redirects, and cuts a request that stalls.
pub fn client(ca_file: Option<&Path>) -> Result<ureq::Agent, String> {
    crate::transport::install_crypto_provider();
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(roots) = root_certs(ca_file)? {
        tls = tls.root_certs(roots);
    }
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        // A pack's PUT or GET moves tens of MiB; a stalled one is cut and retried.
        .timeout_global(Some(Duration::from_secs(300)))
        .max_redirects(0)
        // Connections are kept for the next request rather than closed: the controller
        // reads envelopes and trees from one endpoint on many threads at once (ureq keeps
        // 3 per host by default, so most requests paid a new connection, and a TLS
        // handshake on https).
        .max_idle_connections(IDLE_CONNECTIONS)
        .max_idle_connections_per_host(IDLE_CONNECTIONS)
        .tls_config(tls.build())
        .build()
        .into())
}

/// An unsuccessful answer of an object store, read: its status, its `Date` header (the
/// store's clock) and the error's `Code` and `Message` (empty where it gave none).
pub struct ErrorAnswer {
    pub status: u16,
    pub date: Option<String>,
    pub code: String,
    pub message: String,
}

impl ErrorAnswer {
    /// Reads `resp` (its body up to 64 KiB).
    pub fn read(resp: ureq::http::Response<ureq::Body>) -> ErrorAnswer {
        let status = resp.status().as_u16();
        let date = resp
            .headers()
            .get("date")
            .and_then(|d| d.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        ErrorAnswer {
            status,
            date,
            code: xml_tag(&body, "Code").unwrap_or_default(),
            message: xml_tag(&body, "Message").unwrap_or_default(),
        }
    }
}

/// The text of the first `<tag>` in an S3 XML answer (an error's `Code` and `Message`).
pub fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find('<')? + start;
    Some(body[start..end].to_string())
}

/// The roots that verify an `https` endpoint: `ca_file`, else `SSL_CERT_FILE`, else the
/// system bundle. `None` for none found (a plain `http` endpoint needs none).
fn root_certs(ca_file: Option<&Path>) -> Result<Option<ureq::tls::RootCerts>, String> {
    let candidates: Vec<PathBuf> = match ca_file {
        Some(f) => vec![f.to_owned()],
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain([
                PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
                PathBuf::from("/etc/pki/tls/certs/ca-bundle.crt"),
            ])
            .collect(),
    };
    for path in candidates {
        let pem = match std::fs::read(&path) {
            Ok(p) => p,
            Err(e) if ca_file.is_some() => {
                return Err(format!("reading the CA file {}: {e}", path.display()));
            }
            Err(_) => continue,
        };
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(Result::ok)
            .filter_map(|item| match item {
                ureq::tls::PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            if ca_file.is_some() {
                return Err(format!(
                    "the CA file {} holds no PEM certificate",
                    path.display()
                ));
            }
            continue;
        }
        return Ok(Some(ureq::tls::RootCerts::new_with_certs(&certs)));
    }
    Ok(None)
}
