//! TLS for clients (a tonic connector) and for the controller (an accept loop).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use lifeboat_core::pki::{self, CONTROLLER_NAME, ENROLL_NAME};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Transport failures, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid controller URL {0:?}: expected https://HOST:PORT")]
    InvalidUrl(String),
    #[error("tls configuration: {0}")]
    Tls(String),
    #[error("cannot connect to the controller at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// Installs aws-lc-rs as the process-wide rustls provider. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let v = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)?;
    if v.is_empty() {
        return Err(TransportError::Tls("no certificate in PEM".into()));
    }
    Ok(v)
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c).map_err(tls_err)?;
    }
    Ok(Arc::new(roots))
}

/// A client's TLS settings: what it verifies and which name it asks for.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: &'static str,
}

impl ClientTls {
    /// An enrolled agent or an operator: verifies the controller against the fleet CA and
    /// presents its own certificate.
    pub fn with_identity(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, TransportError> {
        let config = identity_config(ca_pem, cert_pem, key_pem)?;
        Ok(Self::from_config(config, CONTROLLER_NAME))
    }

    /// An operator's client: as [`ClientTls::with_identity`], and it offers
    /// [`OPERATOR_ALPN`] beside `h2`, so a controller pacing handshakes serves it in the
    /// operators' lane while the fleet reconnects.
    pub fn operator(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TransportError> {
        let config = identity_config(ca_pem, cert_pem, key_pem)?;
        let mut tls = Self::from_config(config, CONTROLLER_NAME);
        Arc::make_mut(&mut tls.config)
            .alpn_protocols
            .push(OPERATOR_ALPN.to_vec());
        Ok(tls)
    }

    /// A machine enrolling: it has no CA certificate yet, only the fingerprint the operator
    /// gave it. The handshake fails unless the controller's chain contains a CA with that
    /// fingerprint and the controller's certificate verifies against it, so the join token
    /// is never sent to an impostor.
    pub fn enrollment(ca_fingerprint: &str) -> Result<Self, TransportError> {
        let fingerprint = pki::normalize_fingerprint(ca_fingerprint).map_err(tls_err)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                fingerprint,
                provider: provider(),
            }))
            .with_no_client_auth();
        Ok(Self::from_config(config, ENROLL_NAME))
    }

    /// The rustls configuration and the server name it asks for (tests speak raw HTTP/2
    /// over it).
    pub fn parts(&self) -> (Arc<ClientConfig>, &'static str) {
        (self.config.clone(), self.server_name)
    }

    /// Any rustls configuration (tests use this to try handshakes the product refuses).
    pub fn from_config(mut config: ClientConfig, server_name: &'static str) -> Self {
        config.alpn_protocols = vec![b"h2".to_vec()];
        ClientTls {
            config: Arc::new(config),
            server_name,
        }
    }
}

fn identity_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TransportError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls_err)?;
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem)?, key)
        .map_err(tls_err)
}

/// Verifies the controller against a CA known only by its SHA-256 fingerprint.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| pki::fingerprint_der(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller's CA does not match the pinned fingerprint {}",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Splits `https://host:port` into `host:port`.
pub fn parse_url(url: &str) -> Result<String, TransportError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| TransportError::InvalidUrl(url.into()))?;
    let hostport = rest.trim_end_matches('/');
    let valid = !hostport.is_empty()
        && !hostport.contains('/')
        && hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !valid {
        return Err(TransportError::InvalidUrl(url.into()));
    }
    Ok(hostport.to_string())
}

/// Opens a gRPC channel to the controller at `url` (`https://HOST:PORT`) over TLS.
pub async fn connect(url: &str, tls: ClientTls) -> Result<Channel, TransportError> {
    let hostport = parse_url(url)?;
    // tonic only sees plain HTTP/2 URIs; TLS happens in the connector below.
    let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|_| TransportError::InvalidUrl(url.into()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW)
        .max_frame_size(crate::MAX_FRAME);
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let tls = tls.clone();
        let hostport = hostport.clone();
        async move {
            let tcp = TcpStream::connect(&hostport).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(tls.server_name).map_err(std::io::Error::other)?;
            let stream = TlsConnector::from(tls.config)
                .connect(name, tcp)
                .await
                .map_err(|e| explained(e, Side::Client))?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| TransportError::Connect {
            url: url.into(),
            source,
        })
}

/// Who is on the other end of a server connection, established by the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Connected to the enrollment name without a certificate: may only enroll.
    Enrolling,
    Agent {
        id: String,
        serial: String,
    },
    Operator {
        name: String,
        serial: String,
    },
}

/// Connection facts available to every request through its extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub peer: Peer,
}

/// Reads the identity (agent or operator, and the serial) from a client certificate.
pub fn peer_from_cert(der: &[u8]) -> Option<Peer> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let serial = hex::encode(cert.raw_serial());
    if let Some(id) = cn.strip_prefix("agent:") {
        Some(Peer::Agent {
            id: id.to_string(),
            serial,
        })
    } else {
        cn.strip_prefix("operator:").map(|name| Peer::Operator {
            name: name.to_string(),
            serial,
        })
    }
}

/// The controller's TLS settings.
pub struct ServerTls {
    main: Arc<ServerConfig>,
    enroll: Arc<ServerConfig>,
}

impl ServerTls {
    /// `chain_pem` is the controller certificate followed by the CA certificate.
    pub fn new(ca_pem: &str, chain_pem: &str, key_pem: &str) -> Result<Self, TransportError> {
        let key = || PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls_err);
        let chain = certs(chain_pem)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
                .build()
                .map_err(tls_err)?;
        let mut main = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key()?)
            .map_err(tls_err)?;
        main.alpn_protocols = vec![b"h2".to_vec()];
        let mut enroll = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(chain, key()?)
            .map_err(tls_err)?;
        enroll.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            main: Arc::new(main),
            enroll: Arc::new(enroll),
        })
    }
}

/// A TLS connection accepted by the controller.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Told of every refused handshake: the remote address and why.
pub type RefusalHook = Arc<dyn Fn(SocketAddr, String) + Send + Sync>;

/// The TLS settings in force for the next handshake (a CA rotation replaces them while the
/// controller serves).
pub type TlsSource = Arc<dyn Fn() -> Arc<ServerTls> + Send + Sync>;

/// How long [`connect`] waits for the TCP connection and the TLS handshake: long enough
/// to wait its turn at a controller pacing handshakes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest an accepted connection waits for its handshake to start: a little less than a
/// client waits ([`CONNECT_TIMEOUT`]). A client that left sooner (an older one gave up
/// after 10 s) is noticed when its turn comes and closed without a handshake.
const MAX_HANDSHAKE_WAIT: Duration = Duration::from_secs(25);

/// The whole handshake, ClientHello to the last flight, within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The ALPN protocol id an operator's client offers beside `h2`: its handshakes wait in
/// a lane of their own, so `lifeboat status` answers while thousands of agents reconnect.
/// It is only a hint for the queue (the certificate still decides who the caller is); a
/// client that claims it falsely just waits in the smaller lane.
pub const OPERATOR_ALPN: &[u8] = b"lifeboat-operator";

/// How fast the accept loop starts TLS handshakes, and what the pacing did.
///
/// A handshake is most of what a reconnecting agent costs the controller (signatures,
/// key exchange, certificate checks). When a controller restarts under thousands of
/// agents, all of them come back within seconds; paced, the storm costs at most
/// `per_second` handshakes' worth of CPU in any second, and the agents are taken in the
/// order they sent their ClientHello. Operators (who offer [`OPERATOR_ALPN`]) have a
/// lane of their own at a tenth of the rate (at least 10 a second). A connection that
/// finds its lane's queue full, cannot start its handshake within [`MAX_HANDSHAKE_WAIT`]
/// of its arrival, or whose client has hung up by its turn, is closed (shed) without a
/// signature or key exchange spent on it: its client backs off and comes back.
pub struct HandshakePace {
    /// Handshakes started per second on average (0: as fast as they come).
    per_second: u32,
    agents: Lane,
    operators: Lane,
    /// Connections closed before their handshake: a full queue, a wait too long, a
    /// client gone.
    pub shed: AtomicU64,
    /// Handshakes started (completed or not).
    pub started: AtomicU64,
}

impl HandshakePace {
    /// `per_second` handshakes a second at most; 0 paces nothing.
    pub fn new(per_second: u32) -> Self {
        let operators = if per_second == 0 {
            0
        } else {
            (per_second / 10).max(10)
        };
        Self {
            per_second,
            agents: Lane::new(per_second),
            operators: Lane::new(operators),
            shed: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Connections waiting for their handshake to start (their ClientHello read).
    pub fn waiting(&self) -> u64 {
        self.agents.waiting.load(Relaxed) + self.operators.waiting.load(Relaxed)
    }

    /// Whether a connection waits at all (it needs a way to tell its client left).
    fn paced(&self) -> bool {
        self.per_second > 0
    }

    /// Waits for this connection's turn in its lane (arrived at `arrived`; `present` says
    /// whether its client is still there): true once its handshake may start, false when
    /// it is to be shed.
    async fn admit(
        &self,
        operator: bool,
        arrived: tokio::time::Instant,
        present: impl Fn() -> bool,
    ) -> bool {
        let lane = if operator {
            &self.operators
        } else {
            &self.agents
        };
        let admitted = lane.admit(arrived, present).await;
        if admitted {
            self.started.fetch_add(1, Relaxed);
        }
        admitted
    }
}

/// One queue of connections waiting to start their handshakes, at its own rate. Waiters
/// take turns on the bucket's (first-come, first-served) lock.
struct Lane {
    bucket: Option<tokio::sync::Mutex<Bucket>>,
    /// As many as can start within the longest wait.
    capacity: u64,
    waiting: AtomicU64,
}

impl Lane {
    fn new(per_second: u32) -> Self {
        Self {
            bucket: (per_second > 0).then(|| {
                tokio::sync::Mutex::new(Bucket::new(per_second, tokio::time::Instant::now()))
            }),
            capacity: (u64::from(per_second) * MAX_HANDSHAKE_WAIT.as_secs()).max(64),
            waiting: AtomicU64::new(0),
        }
    }

    async fn admit(&self, arrived: tokio::time::Instant, present: impl Fn() -> bool) -> bool {
        let Some(bucket) = &self.bucket else {
            return true;
        };
        // Counted while waiting, also when the handshake's timeout drops this future.
        let _waiting = Waiting::count(&self.waiting);
        if self.waiting.load(Relaxed) > self.capacity {
            return false;
        }
        let mut bucket = bucket.lock().await;
        let fresh = arrived.elapsed() <= MAX_HANDSHAKE_WAIT && present();
        if fresh {
            bucket.take().await;
        }
        fresh
    }
}

/// One waiting connection on its lane's count, for as long as it lives.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn count(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A token bucket: `rate` tokens a second, holding at most a tenth of a second's worth,
/// so no second ever starts more than 1.1 × `rate` handshakes.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(per_second: u32, now: tokio::time::Instant) -> Self {
        let rate = f64::from(per_second);
        let capacity = (rate / 10.0).max(1.0);
        Self {
            rate,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    /// Takes a token at `now` if one is there; otherwise how long until one will be.
    fn take_at(&mut self, now: tokio::time::Instant) -> Result<(), Duration> {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    async fn take(&mut self) {
        while let Err(wait) = self.take_at(tokio::time::Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Why a connection got no TLS session.
enum Refusal {
    /// Closed before its handshake (see [`HandshakePace`]).
    Shed,
    Failed(std::io::Error),
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal::Failed(e)
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow or hostile
/// client cannot stall the others), started no faster than `pace` allows, yielding
/// authenticated connections for tonic.
pub fn incoming(
    listener: TcpListener,
    tls: TlsSource,
    on_refused: Option<RefusalHook>,
    pace: Arc<HandshakePace>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let conn_tx = tx.clone();
            let tls = tls();
            let on_refused = on_refused.clone();
            let pace = pace.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let outcome =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, remote, &tls, &pace))
                        .await;
                match outcome {
                    Ok(Ok(conn)) => {
                        let _ = conn_tx.send(Ok(conn)).await;
                    }
                    Ok(Err(Refusal::Shed)) => {
                        pace.shed.fetch_add(1, Relaxed);
                        tracing::debug!(%remote, "no turn for a handshake in time; connection closed");
                    }
                    Ok(Err(Refusal::Failed(e))) => {
                        let e = explained(e, Side::Server);
                        tracing::info!(%remote, error = %e, "tls handshake refused");
                        if let Some(hook) = &on_refused {
                            hook(remote, format!("tls handshake refused: {e}"));
                        }
                    }
                    Err(_) => tracing::info!(%remote, "tls handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Reads the ClientHello, waits for its turn in `pace` (or is shed), then completes the
/// handshake and names the peer.
async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: &ServerTls,
    pace: &HandshakePace,
) -> Result<TlsConn, Refusal> {
    let arrived = tokio::time::Instant::now();
    // A second descriptor on the socket, to see whether the client is still there when
    // its turn comes (the first belongs to the TLS stream by then).
    let probe = if pace.paced() {
        Some(std::net::TcpStream::from(
            std::os::fd::AsFd::as_fd(&tcp).try_clone_to_owned()?,
        ))
    } else {
        None
    };
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let hello = start.client_hello();
    let enrolling = hello.server_name() == Some(ENROLL_NAME);
    let operator = hello
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == OPERATOR_ALPN));
    // The socket is non-blocking: nothing to read is WouldBlock, a hang-up reads 0.
    let present = || {
        probe
            .as_ref()
            .is_none_or(|p| !matches!(p.peek(&mut [0u8; 1]), Ok(0)))
    };
    if !pace.admit(operator, arrived, present).await {
        return Err(Refusal::Shed);
    }
    let config = if enrolling {
        tls.enroll.clone()
    } else {
        tls.main.clone()
    };
    let stream = start.into_stream(config).await?;
    let peer = if enrolling {
        Peer::Enrolling
    } else {
        let der = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| std::io::Error::other("no client certificate"))?;
        peer_from_cert(der.as_ref()).ok_or_else(|| {
            std::io::Error::other("client certificate names neither an agent nor an operator")
        })?
    };
    Ok(TlsConn {
        stream,
        info: PeerInfo { remote, peer },
    })
}

/// Which end of a handshake explains its failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// A handshake failure in words that say what is wrong, above all a clock that is off:
/// certificates are valid from an hour before they are issued (`pki::CLOCK_SKEW`), so a
/// machine whose clock is further off than that sees valid certificates as not yet valid or
/// expired, and the other end only hears an alert.
fn explained(e: std::io::Error, side: Side) -> std::io::Error {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<R>()) else {
        return e;
    };
    let (theirs, mine) = match side {
        Side::Client => ("the controller's", "this machine's"),
        Side::Server => ("the client's", "the controller's"),
    };
    let why = match tls {
        R::InvalidCertificate(C::NotValidYetContext { time, not_before }) => format!(
            "{theirs} certificate is not valid yet by {mine} clock: it starts {} s after {mine} now; {mine} clock is behind (or the other's ahead): fix it (NTP)",
            not_before.as_secs().saturating_sub(time.as_secs())
        ),
        R::InvalidCertificate(C::ExpiredContext { time, not_after }) => format!(
            "{theirs} certificate expired {} s ago by {mine} clock; if that clock is right, the certificate lapsed (an agent offline past its renewal enrolls again), else fix the clock (NTP)",
            time.as_secs().saturating_sub(not_after.as_secs())
        ),
        R::InvalidCertificate(C::UnknownIssuer) if side == Side::Client => {
            "the controller's certificate comes from a CA this machine does not trust: if the fleet's CA was rotated while it was offline (`lifeboat ca status`), enroll it again (`lifeboat token create --device NAME`); otherwise this is not your controller".to_string()
        }
        R::InvalidCertificate(C::UnknownIssuer) => {
            "the client's certificate comes from no CA the controller trusts: another fleet's, or one the fleet no longer trusts after a CA rotation (`lifeboat ca status`)".to_string()
        }
        R::AlertReceived(A::UnknownCA) if side == Side::Client => {
            "the controller does not trust the CA of this machine's certificate: if the fleet's CA was rotated while it was offline (`lifeboat ca status`), enroll it again (`lifeboat token create --device NAME`)".to_string()
        }
        R::AlertReceived(
            alert @ (A::CertificateExpired | A::BadCertificate | A::CertificateUnknown),
        ) => format!(
            "the other end refused {mine} certificate ({alert:?}): if it calls it expired or not yet valid, one of the two clocks is off by more than an hour; compare them (NTP)"
        ),
        _ => return e,
    };
    std::io::Error::new(e.kind(), format!("{why} ({tls})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Handshakes the bucket lets start in `window` when asked every `step`, from `start`.
    fn started(bucket: &mut Bucket, start: Instant, window: Duration, step: Duration) -> u32 {
        let mut n = 0;
        let mut at = start;
        while at < start + window {
            if bucket.take_at(at).is_ok() {
                n += 1;
            }
            at += step;
        }
        n
    }

    #[test]
    fn a_storm_of_handshakes_starts_at_the_paced_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(300, t0);
        // Asked a hundred thousand times a second for ten seconds: the tenth of a
        // second's tokens it holds at once, then one every 1/300 s (the 3,000th falls
        // at 10 s, just past the window).
        let n = started(
            &mut bucket,
            t0,
            Duration::from_secs(10),
            Duration::from_micros(10),
        );
        assert_eq!(n, 30 + 2999, "handshakes started in 10 s at 300/s");
        // No one-second window starts more than 1.1 × the rate, even after a rest.
        let rested = t0 + Duration::from_secs(60);
        let n = started(
            &mut bucket,
            rested,
            Duration::from_secs(1),
            Duration::from_micros(10),
        );
        assert!(n <= 330, "{n} handshakes in the first second after a rest");
    }

    #[test]
    fn a_refused_token_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10, t0);
        assert_eq!(
            bucket.take_at(t0),
            Ok(()),
            "a full bucket lends its one token"
        );
        let wait = bucket.take_at(t0).expect_err("an empty bucket");
        assert_eq!(
            wait,
            Duration::from_millis(100),
            "one token takes 1/10 s at 10/s"
        );
        assert_eq!(
            bucket.take_at(t0 + wait),
            Ok(()),
            "and is there after that wait"
        );
    }

    #[test]
    fn a_lane_queues_what_can_start_within_the_longest_wait() {
        assert!(Lane::new(0).bucket.is_none(), "0 paces nothing");
        assert_eq!(Lane::new(300).capacity, 7500);
        assert_eq!(Lane::new(1).capacity, 64);
    }

    /// Connections past a full lane are shed at once, and one that waited past the
    /// longest wait or whose client hung up is shed when its turn comes, without a
    /// token; the counters say so.
    #[tokio::test]
    async fn a_full_or_stale_queue_sheds() {
        let pace = HandshakePace::new(1);
        let lane = &pace.agents;
        lane.waiting.store(lane.capacity, Relaxed);
        let now = tokio::time::Instant::now();
        assert!(
            !pace.admit(false, now, || true).await,
            "a full lane admitted a connection"
        );
        lane.waiting.store(0, Relaxed);
        let long_ago = now - MAX_HANDSHAKE_WAIT - Duration::from_millis(1);
        assert!(
            !pace.admit(false, long_ago, || true).await,
            "a stale connection admitted"
        );
        assert!(
            !pace.admit(false, now, || false).await,
            "a connection whose client left admitted"
        );
        let tokens = lane.bucket.as_ref().expect("paced").lock().await.tokens;
        assert_eq!(tokens, 1.0, "a shed connection took the bucket's one token");
        assert!(
            pace.admit(false, now, || true).await,
            "a fresh connection in an empty lane"
        );
        assert_eq!(pace.started.load(Relaxed), 1);
        assert_eq!(pace.waiting(), 0);
    }

    /// A connection whose handshake timed out while it waited its turn is no longer
    /// counted as waiting (else a lane would fill with the departed and shed everyone).
    #[tokio::test]
    async fn a_connection_given_up_while_waiting_leaves_the_queue() {
        let pace = HandshakePace::new(1);
        let lane = &pace.agents;
        let turn = lane.bucket.as_ref().expect("paced").lock().await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            pace.admit(false, tokio::time::Instant::now(), || true),
        )
        .await;
        assert!(gave_up.is_err(), "admitted while another held the turn");
        drop(turn);
        assert_eq!(lane.waiting.load(Relaxed), 0, "the lane still counts it");
        assert_eq!(pace.waiting(), 0, "/metrics still counts it");
    }
}
