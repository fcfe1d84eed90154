//! The agent's one long-lived session with the controller, and the jobs it runs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_core::backoff::Backoff;
use lifeboat_proto::pb::{self, JobState, agent_message::Msg, controller_message};
use lifeboat_proto::transport;
use tokio::sync::mpsc;

use crate::backup::{self, BackupContext, Counters};
use crate::client::{self, Client};
use crate::docker::Engine;
use crate::state::AgentState;
use crate::{AgentError, RunConfig, chain, restore};

const HEARTBEAT: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The Docker inventory is looked at this often, and after every job; sent when it changed.
const INVENTORY_EVERY: Duration = Duration::from_secs(30);

struct Shared {
    state: Arc<AgentState>,
    config: RunConfig,
    /// The controller's URL and the TLS settings of the current session, for a job's bulk
    /// connections: they present the session's certificate (a renewed one is used from the
    /// next session on, and using it retires the previous one).
    url: String,
    session_tls: Mutex<Option<transport::ClientTls>>,
    running: Mutex<HashSet<String>>,
    updates: mpsc::Sender<pb::JobUpdate>,
    /// The Docker Engine, once it answers; retried at every session.
    docker: tokio::sync::Mutex<Option<Arc<Engine>>>,
    /// A job ended: the Docker inventory may have changed.
    inventory_changed: tokio::sync::Notify,
    /// Whether a session is up, and how many were established: a restore whose chunk
    /// stream broke waits for a new one before it asks again.
    link: tokio::sync::watch::Sender<crate::restore::Link>,
    /// The final updates of the jobs that ended last, sent again on every new session: one
    /// sent into a session that had died unnoticed (a partition) is lost, and the
    /// controller, told at the hello that the job no longer runs here, would take it for
    /// interrupted. The controller ignores a second report of a job that ended.
    finished: Mutex<std::collections::VecDeque<pb::JobUpdate>>,
    /// Where the running restores write: one writer per place.
    targets: crate::restore::targets::Targets,
}

/// Final updates kept to send again ([`Shared::finished`]).
const FINISHED_KEPT: usize = 32;

impl Shared {
    /// `n` connections of their own for a job's bulk transfers. A stream's TLS and HTTP/2
    /// framing run on its connection's task, so streams that share the session's
    /// connection share one core on each side; one connection per worker spreads them.
    /// A connection that fails is replaced by the session's channel (slower, still right).
    async fn bulk_clients(&self, session: &Client, n: usize) -> Vec<Client> {
        let tls = self.session_tls.lock().ok().and_then(|t| t.clone());
        let connect = || async {
            let tls = tls
                .clone()
                .ok_or_else(|| AgentError::Rpc("no session is open".into()))?;
            Ok::<_, AgentError>(client::client(transport::connect(&self.url, tls).await?))
        };
        futures::future::join_all((0..n).map(|_| connect()))
            .await
            .into_iter()
            .map(|c| {
                c.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "a bulk connection to the controller failed; using the session's");
                    session.clone()
                })
            })
            .collect()
    }

    /// The Engine, connecting (and unpausing what a killed predecessor left paused) on
    /// first success; `Err` says plainly why there is none.
    async fn engine(&self) -> Result<Arc<Engine>, String> {
        let mut slot = self.docker.lock().await;
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let e = Arc::new(Engine::connect(&self.config.docker, &self.state.dir).await?);
        e.recover().await;
        tracing::info!(version = %e.version, restore_allowed = e.restore_allowed, "Docker Engine available");
        *slot = Some(e.clone());
        Ok(e)
    }

    /// The inventory to report; never fails (an Engine that fails says so in `status`).
    async fn inventory(&self) -> pb::DockerInventory {
        match self.engine().await {
            Ok(e) => match e.inventory().await {
                Ok(inv) => inv,
                Err(err) => pb::DockerInventory {
                    status: err.to_string(),
                    ..Default::default()
                },
            },
            Err(why) => pb::DockerInventory {
                status: why,
                ..Default::default()
            },
        }
    }
}

/// Runs the agent until `shutdown` completes: connect, keep the session, reconnect with
/// jittered exponential backoff when it drops.
pub async fn run(
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    transport::install_crypto_provider();
    let state = Arc::new(AgentState::load(&config.state_dir)?);
    let url = config
        .controller
        .clone()
        .unwrap_or_else(|| state.info.controller.clone());
    let (updates, mut updates_rx) = mpsc::channel(256);
    let shared = Arc::new(Shared {
        state,
        config,
        url: url.clone(),
        session_tls: Mutex::new(None),
        running: Mutex::new(HashSet::new()),
        updates,
        docker: tokio::sync::Mutex::new(None),
        inventory_changed: tokio::sync::Notify::new(),
        link: tokio::sync::watch::Sender::new(crate::restore::Link::default()),
        finished: Mutex::new(std::collections::VecDeque::new()),
        targets: Default::default(),
    });
    tokio::pin!(shutdown);
    let mut backoff = reconnect_backoff();
    loop {
        let started = tokio::time::Instant::now();
        check_not_expired(&shared.state)?;
        let tls = shared.state.client_tls()?;
        if let Ok(mut t) = shared.session_tls.lock() {
            *t = Some(tls.clone());
        }
        let session = async {
            let channel = transport::connect(&url, tls).await?;
            serve_session(&shared, channel, &mut updates_rx).await
        };
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            res = session => match res {
                Ok(()) => tracing::warn!("controller closed the session"),
                Err(e) => tracing::warn!(error = %e, "session with the controller failed"),
            },
        }
        shared.link.send_modify(|l| l.up = false);
        if started.elapsed() > MAX_BACKOFF {
            backoff.reset();
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(backoff.pause()) => {}
        }
    }
}

/// The pauses between reconnects: 200 ms doubling to [`MAX_BACKOFF`], each ±50%, so a
/// fleet whose controller restarted comes back spread over a step, not all at once. Back to
/// the first step after a session that lasted [`MAX_BACKOFF`].
pub fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), MAX_BACKOFF)
}

/// An expired certificate can never reconnect: say so and what to do, rather than retry.
fn check_not_expired(state: &AgentState) -> Result<(), AgentError> {
    let not_after = state.credentials().not_after_ms()?;
    if not_after <= crate::now_ms() {
        return Err(AgentError::Enrollment(format!(
            "this agent's certificate expired at {} (it was offline past its renewal); enroll it again with a new token: `lifeboat token create` on an admin machine, then `lifeboat-agent enroll ... --state-dir NEW_DIR`",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(not_after.max(0) as u64)
            )
        )));
    }
    Ok(())
}

/// Trades a fresh key's CSR for a new certificate over the open session, and stores both.
async fn renew(state: &AgentState, api: &mut Client) -> Result<(), AgentError> {
    let (csr_pem, key_pem) = lifeboat_core::pki::make_csr("lifeboat agent")?;
    let reply = api
        .renew_certificate(pb::RenewRequest { csr_pem })
        .await?
        .into_inner();
    state.replace_credentials(crate::state::Credentials {
        cert_pem: reply.cert_pem,
        key_pem,
    })?;
    tracing::info!("certificate renewed");
    Ok(())
}

async fn serve_session(
    shared: &Arc<Shared>,
    channel: tonic::transport::Channel,
    updates: &mut mpsc::Receiver<pb::JobUpdate>,
) -> Result<(), AgentError> {
    let mut api = client::client(channel);
    let (out_tx, out_rx) = mpsc::channel(64);
    // What the controller holds of this machine's Docker inventory: sent again only when
    // it changed (after each job, and every INVENTORY_EVERY), not on every tick.
    let mut inventory_sent = shared.inventory().await;
    let hello = pb::Hello {
        version: env!("CARGO_PKG_VERSION").into(),
        hostname: crate::hostname(),
        sources: shared
            .config
            .sources
            .iter()
            .map(|s| pb::Source {
                name: s.name.clone(),
                kind: lifeboat_core::snapshot::SourceKind::Path.as_str().into(),
                path: s.path.display().to_string(),
            })
            .collect(),
        restore_roots: shared
            .config
            .restore_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect(),
        running_jobs: shared
            .running
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default(),
        docker: Some(inventory_sent.clone()),
    };
    out_tx
        .send(pb::AgentMessage {
            msg: Some(Msg::Hello(hello)),
        })
        .await
        .map_err(|_| AgentError::Rpc("session closed".into()))?;
    let mut inbound = api
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    tracing::info!(agent = %shared.state.info.name, "connected to the controller");
    // The controller took the hello (and with it which jobs still run here) before it
    // answered: a restore may ask for its chunks again.
    shared.link.send_modify(|l| {
        l.sessions += 1;
        l.up = true;
    });
    let again: Vec<pb::JobUpdate> = shared
        .finished
        .lock()
        .map(|f| f.iter().cloned().collect())
        .unwrap_or_default();
    for u in again {
        if out_tx
            .send(pb::AgentMessage {
                msg: Some(Msg::JobUpdate(u)),
            })
            .await
            .is_err()
        {
            return Err(AgentError::Rpc("session closed".into()));
        }
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut inventory_tick = tokio::time::interval(INVENTORY_EVERY);
    inventory_tick.tick().await; // the hello carried it
    let mut renew_at = shared.state.credentials().renew_at_ms()?;
    // Renewed for a CA rotation: open the next session with the new certificate as soon
    // as no job runs here (a job's connections carry the previous one).
    let mut reconnect_when_idle = false;
    loop {
        let renew_in = Duration::from_millis((renew_at - crate::now_ms()).max(0) as u64);
        tokio::select! {
            () = tokio::time::sleep(renew_in) => {
                let mut c = api.clone();
                match renew(&shared.state, &mut c).await {
                    Ok(()) => renew_at = shared.state.credentials().renew_at_ms()?,
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate renewal failed; retrying in a minute");
                        renew_at = crate::now_ms() + 60_000;
                    }
                }
            }
            msg = inbound.message() => match msg? {
                Some(pb::ControllerMessage { msg: Some(controller_message::Msg::Job(job)) }) => start_job(shared, api.clone(), job),
                Some(pb::ControllerMessage { msg: Some(controller_message::Msg::HeartbeatAck(_)) }) => {
                    shared.link.send_modify(|l| l.acks += 1);
                }
                Some(pb::ControllerMessage { msg: Some(controller_message::Msg::Trust(trust)) }) => {
                    if trust.ca_pem != shared.state.ca_pem() {
                        shared.state.replace_trust(&trust.ca_pem)?;
                        tracing::warn!(cas = trust.ca_pem.matches("BEGIN CERTIFICATE").count(), "the controller's CAs changed (a CA rotation); trusting them from now on");
                    }
                    if trust.renew {
                        match renew(&shared.state, &mut api.clone()).await {
                            Ok(()) => {
                                renew_at = shared.state.credentials().renew_at_ms()?;
                                reconnect_when_idle = true;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "renewal for a CA rotation failed; retrying in a minute");
                                renew_at = crate::now_ms() + 60_000;
                            }
                        }
                    }
                }
                Some(_) => {}
                None => return Ok(()),
            },
            Some(u) = updates.recv() => {
                if out_tx.send(pb::AgentMessage { msg: Some(Msg::JobUpdate(u)) }).await.is_err() {
                    return Err(AgentError::Rpc("session closed".into()));
                }
            }
            () = shared.inventory_changed.notified() => {
                let inv = shared.inventory().await;
                if inv != inventory_sent {
                    inventory_sent = inv.clone();
                    if out_tx.send(pb::AgentMessage { msg: Some(Msg::Inventory(inv)) }).await.is_err() {
                        return Err(AgentError::Rpc("session closed".into()));
                    }
                }
            }
            _ = inventory_tick.tick() => shared.inventory_changed.notify_one(),
            () = tokio::time::sleep(Duration::from_millis(250)), if reconnect_when_idle => {
                if shared.running.lock().map(|r| r.is_empty()).unwrap_or(false) {
                    tracing::info!("reconnecting with the certificate of the new CA");
                    return Ok(());
                }
            }
            _ = heartbeat.tick() => {
                let hb = pb::Heartbeat { unix_ms: crate::now_ms() as u64 };
                if out_tx.send(pb::AgentMessage { msg: Some(Msg::Heartbeat(hb)) }).await.is_err() {
                    return Err(AgentError::Rpc("session closed".into()));
                }
            }
        }
    }
}

fn start_job(shared: &Arc<Shared>, api: Client, job: pb::Job) {
    let id = job.job_id.clone();
    if !shared
        .running
        .lock()
        .map(|mut r| r.insert(id.clone()))
        .unwrap_or(false)
    {
        return; // already running (redelivered after a reconnect)
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let counters = Arc::new(Counters::default());
        let reporter = {
            let (updates, counters, id) = (shared.updates.clone(), counters.clone(), id.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                loop {
                    tick.tick().await;
                    let u = pb::JobUpdate {
                        job_id: id.clone(),
                        state: JobState::Running as i32,
                        progress: Some(counters.snapshot()),
                        ..Default::default()
                    };
                    if updates.send(u).await.is_err() {
                        break;
                    }
                }
            })
        };
        let result = run_job(&shared, api, &job, counters.clone()).await;
        reporter.abort();
        let mut update = pb::JobUpdate {
            job_id: id.clone(),
            progress: Some(counters.snapshot()),
            ..Default::default()
        };
        match result {
            Ok(Outcome {
                snapshot_ids,
                restore,
                backup,
            }) => {
                update.state = JobState::Succeeded as i32;
                update.snapshot_ids = snapshot_ids;
                update.restore = restore;
                update.backup = backup;
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "job failed");
                update.state = JobState::Failed as i32;
                update.refusal = e.refusal() as i32;
                update.error = e.to_string();
            }
        }
        if let Ok(mut f) = shared.finished.lock() {
            if f.len() == FINISHED_KEPT {
                f.pop_front();
            }
            f.push_back(update.clone());
        }
        let _ = shared.updates.send(update).await;
        if let Ok(mut r) = shared.running.lock() {
            r.remove(&id);
        }
        shared.inventory_changed.notify_one();
        if shared.running.lock().is_ok_and(|r| r.is_empty()) {
            crate::memory::release_free_memory();
        }
    });
}

/// What a finished job reports.
struct Outcome {
    snapshot_ids: Vec<String>,
    restore: Option<pb::RestoreResult>,
    backup: Option<pb::BackupResult>,
}

/// Warnings a backup job reports with its result; the rest are counted (and in the log).
const WARNINGS_REPORTED: usize = 100;

async fn run_job(
    shared: &Shared,
    api: Client,
    job: &pb::Job,
    counters: Arc<Counters>,
) -> Result<Outcome, AgentError> {
    match &job.kind {
        Some(pb::job::Kind::Backup(b)) => {
            let bulk = shared.bulk_clients(&api, backup::workers()).await;
            let ctx = BackupContext {
                state: shared.state.clone(),
                client: api,
                bulk,
                job_id: job.job_id.clone(),
                level: shared.config.compression_level,
                full_reread: b.full_reread,
                counters,
                repair: b
                    .repair_chunks
                    .iter()
                    .filter_map(|id| lifeboat_core::ChunkId::from_slice(id).ok())
                    .collect(),
                limit: lifeboat_core::pace::Pacer::new(b.bandwidth_bytes_per_sec).map(Arc::new),
            };
            let mut ids = Vec::new();
            let mut left_out = pb::BackupResult::default();
            for name in &b.sources {
                let r = if let Some(reference) = name.strip_prefix("image:") {
                    let engine = shared.engine().await.map_err(AgentError::Config)?;
                    backup::backup_image(&ctx, &engine, reference).await?
                } else if let Some(volume) = name.strip_prefix("volume:") {
                    let engine = shared.engine().await.map_err(AgentError::Config)?;
                    backup::backup_volume(&ctx, &engine, volume, &b.consistency, b.hook.as_ref()).await?
                } else {
                    let source = shared
                        .config
                        .sources
                        .iter()
                        .find(|s| &s.name == name)
                        .ok_or_else(|| AgentError::Config(format!("this agent has no source {name:?}")))?;
                    backup::backup_source(&ctx, source).await?
                };
                tracing::info!(source = %name, snapshot = %r.snapshot_id, files = r.stats.files, new_bytes = r.stats.bytes_new, "backup committed");
                ids.push(r.snapshot_id);
                for w in r.warnings {
                    if left_out.warnings.len() < WARNINGS_REPORTED {
                        left_out.warnings.push(format!("{name}: {w}"));
                    } else {
                        left_out.more_warnings += 1;
                    }
                }
            }
            Ok(Outcome { snapshot_ids: ids, restore: None, backup: Some(left_out) })
        }
        Some(pb::job::Kind::Restore(r)) => {
            let engine = shared.engine().await.ok();
            let allowed = restore::Permissions {
                roots: &shared.config.restore_roots,
                probes: shared.config.allow_probes,
            };
            // Chunks read from the object store need no bulk connections to the
            // controller: its few small calls share the session's (no TLS handshakes).
            let bulk = match r.direct_from_store {
                true => Vec::new(),
                false => shared.bulk_clients(&api, restore::FETCH_STREAMS).await,
            };
            let result = restore::run_restore(restore::RestoreRun {
                state: shared.state.clone(),
                client: api,
                bulk,
                link: shared.link.subscribe(),
                job_id: &job.job_id,
                job: r.clone(),
                allowed,
                engine,
                counters,
                targets: &shared.targets,
            })
            .await?;
            tracing::info!(files = result.files, bytes = result.bytes, written = result.bytes_written, target = %r.target, sandbox = r.sandbox, "restore finished");
            Ok(Outcome { snapshot_ids: vec![r.snapshot_id.clone()], restore: Some(result), backup: None })
        }
        None => Err(AgentError::Rpc(format!("job {} has no kind; upgrade this agent", job.job_id))),
    }
    .map_err(|e| match e {
        AgentError::Transport(t) => AgentError::Rpc(chain(&t)),
        other => other,
    })
}
