//! The Lifeboat controller: catalog, store, enrollment, jobs, and the gRPC APIs.
//!
//! [`Controller`] is the shared state every service holds: the [`catalog::Catalog`]
//! (SQLite), the [`store::Store`] (packs and snapshot envelopes), the [`jobs::Jobs`]
//! dispatcher with its agent sessions, and the fleet CA. [`start`] prepares the data
//! directory and binds everything; [`Running::serve`] runs until the shutdown future
//! completes, then closes agent sessions and waits for connections to drain.
//!
//! Services: [`enroll`] (no client certificate), [`agent_api`] (agents) and
//! [`operator_api`] (operators), all on one TLS port behind the [`auth`] layer (an explicit
//! allow list per method); [`audit`] keeps the hash-chained log; [`http`] serves `/metrics`.
//!
//! The crate's API, for the binaries, the examples and the tests: [`start`] with
//! [`ServeConfig`], [`Running`], [`url_for`], [`lock_data_dir`], [`rebuild::rebuild_catalog`],
//! [`setup`]'s defaults, the [`catalog::Catalog`], and for the scheduler's simulated-week
//! test (`tests/schedule.rs`, with [`start_with_clock`]) [`scheduler::tick`],
//! [`policy::parse_file`]. Every other module is `pub(crate)`: `ARCHITECTURE.md` maps them.
//!
//! This file is the controller's assembly and nothing else: the shared state, its
//! configuration, and `start`, which builds each part in the order the others need it
//! (data directory, CA, catalog, store, copies, jobs, workers, services). It stays one file
//! so that order reads top to bottom; a rule of any domain does not belong here.

pub(crate) mod access;
pub(crate) mod admission;
pub(crate) mod agent_api;
pub(crate) mod anomalies;
pub(crate) mod approvals;
pub(crate) mod audit;
pub(crate) mod auth;
pub mod authority;
pub(crate) mod backups;
pub mod catalog;
pub(crate) mod checked;
pub(crate) mod copy;
pub(crate) mod devices;
pub(crate) mod diff;
pub(crate) mod enroll;
mod error;
pub(crate) mod gc;
pub(crate) mod group;
pub(crate) mod http;
pub(crate) mod inventory;
pub(crate) mod jobs;
pub(crate) mod operator_api;
pub(crate) mod parallel;
pub mod policy;
pub mod rebuild;
pub(crate) mod recovery;
pub(crate) mod restores;
pub(crate) mod retention;
pub mod scheduler;
pub(crate) mod scrub;
pub mod setup;
pub(crate) mod snapshots;
pub mod state;
mod status;
pub mod store;
pub(crate) mod vendors;
pub(crate) mod vulns;
pub(crate) mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_core::ChunkKey;
use lifeboat_core::sign::SigningKey;
use lifeboat_proto::pb;
use lifeboat_proto::transport;
use tokio::net::TcpListener;

pub use error::ApiError;

/// Milliseconds since the Unix epoch, by the controller's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time for messages (RFC 3339, seconds).
pub(crate) fn when(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "unknown time".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The controller's clock: every schedule, lease and retention decision reads it, so
/// tests can drive a simulated week without waiting for it.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// State shared by every service.
pub struct Controller {
    pub catalog: Arc<catalog::Catalog>,
    pub store: store::Store,
    pub jobs: jobs::Jobs,
    /// The fleet CA (and its rotation): signs certificates, says what TLS trusts.
    pub authority: authority::Authority,
    pub chunk_key: ChunkKey,
    /// Countersigns snapshots; its public half is pinned by agents at enrollment.
    pub signer: SigningKey,
    pub signer_public_key: Vec<u8>,
    pub audit: audit::Audit,
    /// Lifetime of the agent certificates this controller issues.
    pub agent_cert_lifetime: Duration,
    pub clock: Arc<dyn Clock>,
    /// Jobs queued or running at once, fleet-wide, that the scheduler starts up to.
    pub max_concurrent_jobs: u32,
    /// Every stored pack is read back at least once per this period.
    pub scrub_period_ms: i64,
    /// Chunks uploaded within this window are never swept by GC (a running backup's lease).
    pub gc_lease_ms: i64,
    /// Bytes one backup job may upload unless its policy sets `upload_quota`.
    pub upload_quota: u64,
    /// How long the presigned GETs of a restore straight from the object store last.
    pub store_url_ttl: Duration,
    /// The public half of the offline recovery key the data key is wrapped to.
    pub recovery_recipient: Option<String>,
    /// Chunk bytes restores read: sent by the controller (`GetChunks`), or granted for a
    /// read straight from the object store (`LocateChunks`).
    pub restore_bytes_sent: std::sync::atomic::AtomicU64,
    pub restore_bytes_direct: std::sync::atomic::AtomicU64,
    /// Which restores GetChunks serves now; the others wait their turn.
    pub restore_admission: Arc<admission::Admission>,
    /// Held by commit groups (check again, write the envelopes, list the snapshots) and
    /// by GC's sweep, so neither sees the other half done.
    pub commit_lock: std::sync::Mutex<()>,
    /// Commits waiting to be listed together (group commit: `snapshots::commit_group`).
    pub(crate) commits:
        group::Group<snapshots::Prepared, Result<catalog::SnapshotRow, snapshots::SnapshotError>>,
    /// GC sweeps that dropped chunks from the index, counted under `commit_lock`: a commit
    /// that found its chunks indexed before the count moved checks again.
    pub chunk_sweeps: std::sync::atomic::AtomicU64,
    /// Recovery plans with a runner in this process.
    pub plan_runners: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The background workers and what each has done.
    pub workers: workers::Workers,
    /// The data directory (the state saved in the store is read from it).
    pub data_dir: PathBuf,
    /// `--require-approval`: how long an approval request lasts (None: off).
    pub require_approval: Option<Duration>,
    /// `--dedup-scope fleet`: `MissingChunks` answers for the whole store (each agent
    /// learns what others hold), instead of for what the agent holds itself.
    pub fleet_dedup: bool,
    /// How fast TLS handshakes start (`--max-handshakes-per-second`), and what the
    /// pacing did (for `/metrics`).
    pub handshakes: Arc<transport::HandshakePace>,
    /// Envelopes verified and trees read lately (a plan's run does not pay again for
    /// what its planning checked).
    pub checked: checked::Checked,
}

/// The default of `--upload-quota`: bytes one backup job may upload.
pub const DEFAULT_UPLOAD_QUOTA: u64 = 1 << 40;

/// The default of `--max-handshakes-per-second`: 10,000 agents reconnect in under a
/// minute, at about a third of a core (BENCHMARKS.md "Controller restart under load").
pub const DEFAULT_MAX_HANDSHAKES_PER_SECOND: u32 = 300;

/// The default of `--restore-memory` (32 restores served at once).
pub const DEFAULT_RESTORE_MEMORY: u64 = 256 << 20;

/// Commits listed together at most (one pass under the commit lock, one round of syncs).
const COMMIT_GROUP_MAX: usize = 256;

/// `lifeboat-controller serve` settings, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// `--store`: a directory or `s3://BUCKET/PREFIX`.
    pub store: Option<String>,
    /// `--s3-*`: how to reach an S3 store.
    pub s3: store::location::S3Options,
    /// `--recovery-recipient`: the public half (`age1...`) of the offline recovery key a
    /// new store's data key is wrapped to. None: one is made and shown once.
    pub recovery_recipient: Option<String>,
    /// Lifetime of agent certificates (renewed over the session with a third left).
    pub agent_cert_lifetime: Duration,
    /// The scheduler's fleet-wide limit on queued and running jobs.
    pub max_concurrent_jobs: u32,
    /// How often retention runs on its own (None: only `lifeboat prune`).
    pub prune_every: Option<Duration>,
    /// Every stored pack is read back at least once per this period (None: only
    /// `lifeboat verify`).
    pub scrub_period: Option<Duration>,
    /// GC never sweeps chunks uploaded within this window.
    pub gc_lease: Duration,
    /// Bytes one backup job may upload unless its policy says otherwise.
    pub upload_quota: u64,
    /// Memory for restores read through the controller (`admission::Admission`).
    pub restore_memory: u64,
    /// How long a presigned GET handed to a restoring agent lasts (S3 stores).
    pub store_url_ttl: Duration,
    /// How often the controller saves its own state in the store, for `recover` (None:
    /// never).
    pub state_every: Option<Duration>,
    /// The off-site copy store, if any.
    pub copy: Option<CopyConfig>,
    /// Four eyes for destruction: how long a request for a second admin's approval
    /// lasts (None: one admin suffices).
    pub require_approval: Option<Duration>,
    /// Deduplicate answers across the fleet (`--dedup-scope fleet`).
    pub fleet_dedup: bool,
    /// TLS handshakes started per second at most (0: unpaced): bounds what a reconnect
    /// storm costs.
    pub max_handshakes_per_second: u32,
    /// Read every new snapshot's packages, match them against the vulnerability feed and
    /// judge its ransomware signals, in the background (`--no-scan`: only on request).
    pub scan: bool,
    /// Shows a new store's recovery key to the operator, the moment it is made and before
    /// the store counts as created: whatever fails later in that first start (an S3
    /// endpoint that refuses, a kill), the key was shown once and is written nowhere.
    pub show_recovery_key: fn(&str, &str),
}

/// `--copy-store` and its options: a second store, with credentials of its own, that
/// policies with `copy = "..."` copy their snapshots to.
#[derive(Debug, Clone)]
pub struct CopyConfig {
    /// Its name in listings and `recover plan --from`.
    pub name: String,
    /// A directory or `s3://BUCKET/PREFIX`.
    pub store: String,
    pub s3: store::location::S3Options,
    /// The shared credentials file's profile whose keys reach it (an S3 copy store
    /// never uses the primary's credentials from the environment).
    pub s3_profile: Option<String>,
    /// How often new snapshots are copied.
    pub every: Duration,
}

/// The default of `--state-every`.
pub const DEFAULT_STATE_EVERY: Duration = Duration::from_secs(3600);

/// The default of `--store-url-ttl`.
pub const DEFAULT_STORE_URL_TTL: Duration = Duration::from_secs(600);

/// A controller bound to its ports, ready to serve.
pub struct Running {
    pub ctl: Arc<Controller>,
    pub url: String,
    pub identity_path: PathBuf,
    pub http_addr: Option<SocketAddr>,
    listener: TcpListener,
    http: Option<TcpListener>,
    prune_every: Option<Duration>,
    scrub: bool,
    scan: bool,
    state_every: Option<Duration>,
    copy_every: Option<Duration>,
    _lock: OwnedFd,
}

/// Opens the copy store of `copy` (staging in `DATA_DIR/copy-staging`).
fn open_copy_store(
    copy: &CopyConfig,
    data_dir: &Path,
) -> Result<Arc<dyn store::objects::Objects>, ApiError> {
    use store::location::StoreLocation;
    let staging = data_dir.join("copy-staging");
    let location = StoreLocation::parse(&copy.store, &copy.s3)
        .map_err(|e| ApiError::InvalidArgument(format!("--copy-store {}: {e}", copy.store)))?;
    let objects: Arc<dyn store::objects::Objects> = match (&location, &copy.s3_profile) {
        (StoreLocation::S3(loc), Some(profile)) => {
            Arc::new(store::s3::S3Objects::open_profile(loc, &staging, profile)?)
        }
        (StoreLocation::S3(_), None) => {
            return Err(ApiError::InvalidArgument(
                "--copy-store on S3 needs --copy-s3-profile: the off-site copy must not share the primary store's credentials".into(),
            ));
        }
        (StoreLocation::Local(_), _) => store::open_objects(&location, &staging)?,
    };
    tracing::info!(copy = %copy.name, store = %objects.describe(), object_lock = objects.object_lock(), "copy store opened");
    Ok(objects)
}

/// How long a store with Object Lock retains the copy of the wrapped data key written at
/// each start.
const WRAPPED_KEY_RETENTION_MS: i64 = 365 * 86_400_000;

/// Takes the data directory's lock so two controllers (or a rebuild) never share it.
pub fn lock_data_dir(data_dir: &Path) -> Result<OwnedFd, ApiError> {
    let path = data_dir.join("controller.lock");
    let fd = rustix::fs::open(
        &path,
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(|e| ApiError::internal(format!("opening {}: {e}", path.display())))?;
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        ApiError::FailedPrecondition(format!(
            "{} is in use by another lifeboat-controller; stop it first",
            data_dir.display()
        ))
    })?;
    Ok(fd)
}

/// The URL clients use for a listener: an unspecified address becomes loopback.
pub fn url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    format!("https://{ip}:{}", addr.port())
}

/// Prepares the data directory (first start creates the CA, chunk key and admin identity)
/// and binds the gRPC listener (and the HTTPS one, if given).
pub fn start(
    cfg: &ServeConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
) -> Result<Running, ApiError> {
    start_with_clock(cfg, listener, http, Arc::new(SystemClock))
}

/// [`start`] with another clock (simulations: a week of schedules in a second).
pub fn start_with_clock(
    cfg: &ServeConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
    clock: Arc<dyn Clock>,
) -> Result<Running, ApiError> {
    transport::install_crypto_provider();
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", cfg.data_dir.display())))?;
    let lock = lock_data_dir(&cfg.data_dir)?;
    // The temp files of writes a crash cut short (keys, settings, the audit head): with the
    // lock held, none is being written.
    let swept = lifeboat_core::durable::sweep_temp_files(&cfg.data_dir, 0)?;
    if swept > 0 {
        tracing::info!(swept, "removed the temp files of writes a crash cut short");
    }
    let mut prepared = setup::prepare(
        &cfg.data_dir,
        cfg.store.as_deref(),
        &cfg.s3,
        cfg.recovery_recipient.as_deref(),
        cfg.show_recovery_key,
    )?;
    let addr = listener
        .local_addr()
        .map_err(|e| ApiError::internal(format!("listener address: {e}")))?;
    let url = url_for(addr);
    let identity_path = setup::ensure_admin_identity(&cfg.data_dir, &prepared, &url)?;
    let catalog = Arc::new(prepared.catalog);
    let objects = store::open_objects(&prepared.store, &prepared.staging_dir)?;
    tracing::info!(store = %objects.describe(), encrypted = prepared.data_key.is_some(), object_lock = objects.object_lock(), "store opened");
    if !objects.object_lock() {
        tracing::warn!(
            store = %objects.describe(),
            "the store has no Object Lock: whoever holds its credentials (or root here, for a local store) can delete every backup; use an S3 bucket created with Object Lock to make locked snapshots immutable"
        );
    }
    // The store keeps the wrapped data key beside what it protects: with the recovery key
    // it is all a controller rebuilt from the store needs (and, without one, nothing).
    // With Object Lock it is retained a year from each start, so nobody deletes the one
    // thing the recovery key needs to open the store.
    if let Some(wrapped) = &prepared.wrapped_data_key {
        let retain = if objects.object_lock() {
            now_ms() + WRAPPED_KEY_RETENTION_MS
        } else {
            0
        };
        objects.put(&format!("keys/{}", setup::STORE_KEY_FILE), wrapped, retain)?;
    }
    let mut store = store::Store::open(
        objects,
        prepared.chunk_key.clone(),
        prepared.data_key.take(),
        catalog.clone(),
    )?;
    if let Some(copy) = &cfg.copy {
        store.add_copy(&copy.name, open_copy_store(copy, &cfg.data_dir)?);
    }
    let restore_admission = admission::Admission::new(cfg.restore_memory);
    let jobs = jobs::Jobs::new(catalog.clone(), clock.clone(), {
        let admission = restore_admission.clone();
        Box::new(move |catalog, row, now_ms| {
            let waited_ms = admission.take_waited_ms(&row.id);
            recovery::outcome::restore_finished(catalog, row, now_ms, waited_ms)
        })
    });
    jobs.recover_after_restart()?;
    let audit = audit::Audit::new(
        catalog.clone(),
        &prepared.anchor_dir,
        SigningKey::from_pkcs8(prepared.signer.pkcs8())?,
    );
    audit.check_at_start()?;
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let ctl = Arc::new(Controller {
        catalog,
        store,
        jobs,
        authority: authority::Authority::new(
            &cfg.data_dir,
            prepared.cas,
            &prepared.server_chain_pem,
            &prepared.server_key_pem,
        )?,
        chunk_key: prepared.chunk_key,
        signer_public_key: prepared.signer.public_key(),
        signer: prepared.signer,
        audit,
        agent_cert_lifetime: cfg.agent_cert_lifetime,
        clock,
        max_concurrent_jobs: cfg.max_concurrent_jobs,
        scrub_period_ms: cfg
            .scrub_period
            .map(|d| d.as_millis() as i64)
            .unwrap_or(30 * 86_400_000),
        gc_lease_ms: cfg.gc_lease.as_millis() as i64,
        store_url_ttl: cfg.store_url_ttl,
        recovery_recipient: prepared.recovery_recipient.clone(),
        restore_bytes_sent: Default::default(),
        restore_bytes_direct: Default::default(),
        upload_quota: cfg.upload_quota,
        restore_admission,
        commit_lock: std::sync::Mutex::new(()),
        commits: group::Group::new(COMMIT_GROUP_MAX),
        chunk_sweeps: Default::default(),
        plan_runners: Default::default(),
        workers: Default::default(),
        data_dir: cfg.data_dir.clone(),
        require_approval: cfg.require_approval,
        fleet_dedup: cfg.fleet_dedup,
        handshakes: Arc::new(transport::HandshakePace::new(cfg.max_handshakes_per_second)),
        checked: Default::default(),
    });
    let ctl_has_recovery_key = ctl.recovery_recipient.is_some();
    if !ctl.fleet_dedup {
        let read = backups::backfill_ownership(&ctl)?;
        if read > 0 {
            tracing::info!(snapshots = read, "recorded which agent holds which chunks");
        }
    }
    let fixed = retention::fix_unset_locks(&ctl)?;
    if fixed > 0 {
        tracing::info!(
            snapshots = fixed,
            "fixed the locks of snapshots committed before locks were stored, from the policies in force"
        );
    }
    Ok(Running {
        ctl,
        url,
        identity_path,
        http_addr,
        listener,
        http,
        prune_every: cfg.prune_every,
        scrub: cfg.scrub_period.is_some(),
        scan: cfg.scan,
        state_every: cfg.state_every.filter(|_| ctl_has_recovery_key),
        copy_every: cfg.copy.as_ref().map(|c| c.every),
        _lock: lock,
    })
}

impl Running {
    pub fn ca_fingerprint(&self) -> String {
        self.ctl.authority.trust().presented_fingerprint.clone()
    }

    /// Serves until `shutdown` completes. Then: stop accepting, end agent sessions, give
    /// in-flight calls up to 10 s, and flush the open pack.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ApiError> {
        let ctl = self.ctl.clone();
        recovery::runner::resume_all(&ctl)?;
        if let Some(http) = self.http {
            tokio::spawn(http::serve(ctl.clone(), http));
        }
        use workers::{Start, Workers};
        let secs = Duration::from_secs;
        let mut background = vec![
            Workers::spawn(ctl.clone(), "audit-anchor", secs(5), Start::Now, |c| {
                c.audit.anchor()
            }),
            // Heartbeats since the last run, in one transaction.
            Workers::spawn(ctl.clone(), "heartbeats", secs(5), Start::Now, |c| {
                c.jobs.flush_seen().map(drop)
            }),
            Workers::spawn(ctl.clone(), "scheduler", secs(5), Start::Now, |c| {
                let r = scheduler::tick(c, c.clock.now_ms())?;
                for (policy, agent, job) in r.started {
                    tracing::info!(%policy, %agent, %job, "scheduled backup started");
                }
                Ok(())
            }),
            Workers::spawn(ctl.clone(), "drills", secs(5), Start::Now, |c| {
                recovery::drill::tick(c, c.clock.now_ms())
            }),
        ];
        if self.scan {
            // The packages of new snapshots, read after their commit (never in its way),
            // and matched against the vulnerability feed (again after each import).
            background.push(Workers::spawn(
                ctl.clone(),
                "inventory",
                secs(5),
                Start::Now,
                |c| {
                    inventory::catch_up(c, inventory::WORKER_BUDGET)?;
                    vulns::match_pending(c, inventory::WORKER_BUDGET)
                },
            ));
            // Ransomware signals of new snapshots against the ones before them.
            background.push(Workers::spawn(
                ctl.clone(),
                "anomalies",
                secs(5),
                Start::Now,
                |c| anomalies::catch_up(c, inventory::WORKER_BUDGET),
            ));
        }
        if let Some(every) = self.prune_every {
            background.push(Workers::spawn(
                ctl.clone(),
                "retention-gc",
                every,
                Start::AfterOnePeriod,
                |c| {
                    // Judged first, so that no suspect snapshot counts under `last`.
                    anomalies::catch_up(c, retention::ANALYSIS_BUDGET)?;
                    let o = retention::prune(c, c.clock.now_ms(), false, "controller:retention")?;
                    let g = gc::gc(c, c.clock.now_ms(), c.gc_lease_ms, 0.5, false)?;
                    let n = o.iter().filter(|x| x.removed).count();
                    tracing::info!(
                        removed = n,
                        kept = o.len() - n,
                        swept = g.swept,
                        reclaimed = g.bytes_reclaimed,
                        "retention and GC ran"
                    );
                    Ok(())
                },
            ));
        }
        // The controller's own state, for a controller rebuilt from the store.
        if let Some(every) = self.state_every {
            background.push(Workers::spawn(
                ctl.clone(),
                "state",
                every,
                Start::Now,
                move |c| state::save(c, every).map(drop),
            ));
        }
        // Off-site copies of new snapshots.
        if let Some(every) = self.copy_every {
            background.push(Workers::spawn(
                ctl.clone(),
                "copy",
                every,
                Start::Now,
                |c| {
                    let r = copy::run(c)?;
                    if r.snapshots > 0 {
                        tracing::info!(
                            snapshots = r.snapshots,
                            packs = r.packs,
                            bytes = r.bytes,
                            adopted = r.adopted,
                            "copied off-site"
                        );
                    }
                    Ok(())
                },
            ));
        }
        // Scrub a slice every hour, sized so every pack is read within the period.
        if self.scrub {
            background.push(Workers::spawn(
                ctl.clone(),
                "scrub",
                secs(3600),
                Start::AfterOnePeriod,
                |c| {
                    let (_, _, _, stored) = c.catalog.totals()?;
                    let hours = (c.scrub_period_ms / 3_600_000).max(1) as u64;
                    let budget = stored.div_ceil(hours).max(64 << 20);
                    let r = scrub::scrub(c, scrub::Scope::Budget(budget), c.scrub_period_ms)?;
                    if r.bad.is_empty() {
                        tracing::info!(packs = r.packs, coverage = r.coverage, "scrub");
                        return Ok(());
                    }
                    Err(ApiError::internal(format!(
                        "scrub found {} bad chunks affecting {} snapshots; run `lifeboat verify`",
                        r.bad.len(),
                        r.affected.len()
                    )))
                },
            ));
        }
        let max = lifeboat_proto::MAX_MESSAGE_BYTES;
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .initial_stream_window_size(lifeboat_proto::STREAM_WINDOW)
            .initial_connection_window_size(lifeboat_proto::CONNECTION_WINDOW)
            .max_frame_size(lifeboat_proto::MAX_FRAME)
            .max_concurrent_streams(lifeboat_proto::MAX_STREAMS_PER_CONNECTION)
            .layer(auth::AuthorizeLayer(ctl.clone()))
            .add_service(pb::enrollment_server::EnrollmentServer::new(
                enroll::EnrollService::new(ctl.clone()),
            ))
            .add_service(
                pb::agent_api_server::AgentApiServer::new(agent_api::AgentService(ctl.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(pb::operator_api_server::OperatorApiServer::new(
                operator_api::OperatorService(ctl.clone()),
            ));
        let refused: transport::RefusalHook = {
            let ctl = ctl.clone();
            Arc::new(move |remote, why| {
                ctl.audit.denied_anonymous(
                    &remote.ip().to_string(),
                    &format!("tls:{}", remote.ip()),
                    "tls.handshake",
                    &remote.to_string(),
                    &why,
                )
            })
        };
        let tls: transport::TlsSource = {
            let ctl = ctl.clone();
            Arc::new(move || ctl.authority.trust().tls.clone())
        };
        let incoming =
            transport::incoming(self.listener, tls, Some(refused), ctl.handshakes.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ctl_for_stop = ctl.clone();
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_rx.await;
        });
        tokio::pin!(serve);
        tokio::select! {
            res = &mut serve => res.map_err(|e| ApiError::internal(format!("server: {e}")))?,
            () = shutdown => {
                tracing::info!("shutting down");
                let _ = stop_tx.send(());
                ctl_for_stop.jobs.close_all();
                if tokio::time::timeout(Duration::from_secs(10), &mut serve).await.is_err() {
                    tracing::warn!("connections did not drain within 10 s; closing them");
                }
            }
        }
        for task in background {
            task.abort();
        }
        let ctl2 = ctl.clone();
        tokio::task::spawn_blocking(move || {
            ctl2.jobs.flush_seen()?;
            ctl2.audit.anchor()?;
            ctl2.store.flush()
        })
        .await
        .map_err(ApiError::from)??;
        Ok(())
    }
}
