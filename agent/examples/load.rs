//! Controller scale: many simulated agents on one controller, over the real gRPC API with
//! real certificates (each agent enrolls with its own key and CSR, like `lifeboat-agent
//! enroll`).
//!
//!     cargo run --release -p lifeboat-agent --example load -- \
//!         --controller URL --tokens T1,T2 --ca-fingerprint FP --identity ADMIN.identity \
//!         --agents 10000 --dir DIR [--heartbeat-ms 15000] [--measure-s 60] [--commits 1000] \
//!         [--sources 3] [--backup-mib 4] [--plan [--run-plan]] [--restores 1000 --restore-mb 16]
//!         [--restart] [--rotate]
//!
//! Every agent keeps one session (a TLS connection and an HTTP/2 stream) and heartbeats;
//! the controller acknowledges each heartbeat, and the round trip is the heartbeat latency.
//! With `--commits M`, the first M agents are then asked (StartBackup, as an operator) to
//! back up a tiny directory of their own, all at once; each runs the real backup pipeline
//! (`lifeboat_agent::backup::backup_source`: scan, MissingChunks, PutChunks, signed
//! CommitSnapshot); with `--sources K`, each agent has K sources and backs up all of them.
//! With `--backup-mib M`, each committing agent's first source also holds M MiB of
//! incompressible data, half of it the same for every agent and half its own (checklist
//! row D3: concurrent backups, 50% deduplicated); the bytes read and new are reported.
//! With `--plan`, a recovery of every committed device is then planned three times
//! (`PlanRecovery`, as an operator) and each planning call is timed; with `--run-plan`,
//! the last plan is then run (`RunPlan`: every device's sources restored onto it, each
//! restore fetched and verified as below) while `GetPlan` is called every 500 ms, as
//! `lifeboat recover watch` does, and each call is timed. With `--restores N`,
//! the first agent's backup also holds `--restore-mb` MiB of incompressible data, and that
//! snapshot is then restored onto the first N agents at once (StartRestore, as an
//! operator): each fetches the tree and every chunk through GetChunks, as a real agent's
//! restore does, verifies each chunk against its id and discards it; the controller's
//! RSS is sampled before and during the restores. With `--restart`, the agents reconnect
//! as `lifeboat-agent` does (`lifeboat_agent::reconnect_backoff`) when their session
//! breaks, and after the heartbeats the generator asks for the controller to be restarted
//! (it writes `DIR/restart-request` and waits for `DIR/restarted`, holding the new
//! controller's pid, which bench/controller_scale.py writes once the new one listens): how
//! long until every session is back, each agent's time from break to return, and the new
//! controller's CPU per second of the storm against the steady state's. With `--rotate`,
//! after the heartbeats the fleet's CA is rotated (`RotateCa`, as the admin): every agent,
//! told over its session, trusts both CAs, renews with a new key and reconnects with it, as
//! `lifeboat-agent` does; `CaStatus` is polled until every agent has moved, the rotation is
//! then finished, and both steps are timed with the controller's CPU. Prints one JSON
//! object (bench/controller_scale.py runs it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_agent::backup::{self, BackupContext, Counters};
use lifeboat_agent::enroll::{EnrollOptions, enroll};
use lifeboat_agent::state::AgentState;
use lifeboat_core::identity::IdentityFile;
use lifeboat_proto::pb::{
    self, agent_api_client::AgentApiClient, agent_message::Msg, controller_message,
    operator_api_client::OperatorApiClient,
};
use lifeboat_proto::states::StepState;
use lifeboat_proto::transport::{self, ClientTls};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    controller: String,
    tokens: Vec<String>,
    fingerprint: String,
    identity: PathBuf,
    agents: usize,
    dir: PathBuf,
    heartbeat: Duration,
    measure: Duration,
    commits: usize,
    sources: usize,
    plan: bool,
    run_plan: bool,
    restores: usize,
    restore_mb: usize,
    backup_mib: usize,
    restart: bool,
    rotate: bool,
}

fn args() -> Result<Args, Error> {
    let all: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        all.iter()
            .position(|a| a == name)
            .and_then(|i| all.get(i + 1).cloned())
    };
    let need = |name: &str| get(name).ok_or_else(|| format!("{name} is required"));
    Ok(Args {
        controller: need("--controller")?,
        tokens: need("--tokens")?.split(',').map(String::from).collect(),
        fingerprint: need("--ca-fingerprint")?,
        identity: need("--identity")?.into(),
        agents: need("--agents")?.parse()?,
        dir: need("--dir")?.into(),
        heartbeat: Duration::from_millis(get("--heartbeat-ms").map_or(Ok(15_000), |s| s.parse())?),
        measure: Duration::from_secs(get("--measure-s").map_or(Ok(60), |s| s.parse())?),
        // The restores read the first agent's backup: it commits one at least.
        commits: get("--commits")
            .map_or(Ok(0), |s| s.parse())?
            .max(usize::from(all.iter().any(|a| a == "--restores"))),
        sources: get("--sources").map_or(Ok(1), |s| s.parse())?.max(1),
        plan: all.iter().any(|a| a == "--plan"),
        run_plan: all.iter().any(|a| a == "--run-plan"),
        restores: get("--restores").map_or(Ok(0), |s| s.parse())?,
        restore_mb: get("--restore-mb").map_or(Ok(16), |s| s.parse())?,
        backup_mib: get("--backup-mib").map_or(Ok(0), |s| s.parse())?,
        restart: all.iter().any(|a| a == "--restart"),
        rotate: all.iter().any(|a| a == "--rotate"),
    })
}

/// Rotates the fleet's CA as the admin (`RotateCa`), waits until `CaStatus` says every
/// one of `n` agents moved (renewed under the new CA and reconnected with it), finishes the
/// rotation, and times both with the controller's CPU.
async fn rotate(
    a: &Args,
    n: usize,
    shared: &Arc<Shared>,
    pid: Option<u32>,
) -> Result<serde_json::Value, Error> {
    let id = IdentityFile::load(&a.identity)?;
    let tls = ClientTls::with_identity(&id.ca_pem, &id.cert_pem, &id.key_pem)?;
    let mut op = OperatorApiClient::new(transport::connect(&a.controller, tls).await?);
    let cpu0 = pid.map(proc_stat);
    let t = Instant::now();
    op.rotate_ca(pb::RotateCaRequest::default()).await?;
    let started_ms = t.elapsed().as_millis() as u64;
    let mut progress = Vec::new();
    let mut last_report = Instant::now();
    let moved_s = loop {
        let s = op.ca_status(pb::Empty {}).await?.into_inner();
        if last_report.elapsed() >= Duration::from_secs(5) || s.agents_moved as usize >= n {
            progress.push(serde_json::json!([
                t.elapsed().as_secs_f64(),
                s.agents_moved
            ]));
            last_report = Instant::now();
        }
        if s.agents_moved as usize >= n {
            break t.elapsed().as_secs_f64();
        }
        if t.elapsed() > Duration::from_secs(3600) {
            return Err(format!("{} of {n} agents moved after an hour", s.agents_moved).into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cpu1 = pid.map(proc_stat);
    // The admin's identity moves too (as `lifeboat ca rotate` does), else finishing is
    // refused: renewed over this connection, which then reconnects with it.
    let (csr_pem, key_pem) = lifeboat_core::pki::make_csr("lifeboat operator")?;
    let r = op
        .renew_identity(pb::RenewRequest { csr_pem })
        .await?
        .into_inner();
    let tls = ClientTls::with_identity(&r.ca_pem, &r.cert_pem, &key_pem)?;
    let mut op = OperatorApiClient::new(transport::connect(&a.controller, tls).await?);
    let t2 = Instant::now();
    let finished = op
        .rotate_ca(pb::RotateCaRequest {
            finish: true,
            force: false,
        })
        .await?
        .into_inner();
    let finish_ms = t2.elapsed().as_millis() as u64;
    let cpu = |from: Option<(f64, u64, u64)>, to: Option<(f64, u64, u64)>| match (from, to) {
        (Some(b), Some(a)) => a.0 - b.0,
        _ => 0.0,
    };
    Ok(serde_json::json!({
        "agents": n,
        "start_ms": started_ms,
        "all_moved_s": moved_s,
        "renewed": shared.renewed.load(Ordering::Relaxed),
        "moved_over_time": progress,
        "controller_cpu_s": cpu(cpu0, cpu1),
        "finish_ms": finish_ms,
        "agents_moved_at_finish": finished.agents_moved,
        "ca_fingerprint_after": finished.ca_fingerprint,
    }))
}

/// Runs plan `id` and follows it as `lifeboat recover watch` does (`GetPlan` every
/// 500 ms), timing every call, until it ends.
async fn run_plan(
    op: &mut OperatorApiClient<tonic::transport::Channel>,
    id: &str,
    pid: Option<u32>,
) -> Result<serde_json::Value, Error> {
    let name = || pb::NameRef {
        name: id.to_string(),
    };
    let cpu0 = pid.map(proc_stat);
    let t = Instant::now();
    op.run_plan(name()).await?;
    let mut calls = Vec::new();
    let ended = loop {
        let c = Instant::now();
        let p = op.get_plan(name()).await?.into_inner();
        calls.push(c.elapsed().as_millis() as u64);
        if p.state != "running" && p.state != "planned" {
            break p;
        }
        if t.elapsed() > Duration::from_secs(1200) {
            return Err(format!("plan {id} still {} after 20 minutes", p.state).into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let wall = t.elapsed().as_secs_f64();
    let max = calls.iter().copied().max().unwrap_or(0);
    calls.sort_unstable();
    let state = |s: StepState| ended.devices.iter().filter(|d| d.state == s).count();
    Ok(serde_json::json!({
        "state": ended.state,
        "wall_s": wall,
        "devices_done": state(StepState::Done),
        "devices_failed": state(StepState::Failed),
        "get_plan_calls": calls.len(),
        "get_plan_ms_p50": percentile(&calls, 0.5),
        "get_plan_ms_p99": percentile(&calls, 0.99),
        "get_plan_ms_max": max,
        "controller_cpu_s": match (cpu0, pid.map(proc_stat)) { (Some(b), Some(a)) => a.0 - b.0, _ => 0.0 },
    }))
}

/// `--restart`: asks for the controller to be restarted and follows the fleet back. The
/// steady state's CPU (`steady_percent`, of one core) is what the storm is held against.
async fn restart_storm(
    a: &Args,
    n: usize,
    shared: &Shared,
    steady_percent: f64,
) -> Result<serde_json::Value, Error> {
    let request = a.dir.join("restart-request");
    let restarted = a.dir.join("restarted");
    let _ = std::fs::remove_file(&restarted);
    shared.reconnects.lock().map_err(|_| "poisoned")?.clear();
    let t = Instant::now();
    std::fs::write(&request, now_ms().to_string())?;
    let pid: u32 = loop {
        if let Ok(s) = std::fs::read_to_string(&restarted)
            && let Ok(pid) = s.trim().parse()
        {
            break pid;
        }
        if t.elapsed() > Duration::from_secs(300) {
            return Err("the controller was not restarted within 5 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let back = t.elapsed();
    let lowest = shared.connected.load(Ordering::Relaxed);
    // Per second of the storm: the new controller's CPU, and the sessions back.
    let mut per_second = Vec::new();
    let mut last = proc_stat(pid).0;
    let listening = Instant::now();
    let all_back = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu = proc_stat(pid).0;
        per_second.push((
            (cpu - last) * 100.0,
            shared.connected.load(Ordering::Relaxed),
        ));
        last = cpu;
        let returned = shared.reconnects.lock().map_err(|_| "poisoned")?.len();
        if returned >= n && shared.connected.load(Ordering::Relaxed) >= n {
            break listening.elapsed();
        }
        if listening.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "{} of {n} sessions back 5 minutes after the restart",
                shared.connected.load(Ordering::Relaxed)
            )
            .into());
        }
    };
    // The same fleet, settled, on the new controller.
    let settle = Duration::from_secs(20);
    let c0 = proc_stat(pid).0;
    tokio::time::sleep(settle).await;
    let settled_percent = (proc_stat(pid).0 - c0) * 100.0 / settle.as_secs_f64();
    let mut lat = shared.reconnects.lock().map_err(|_| "poisoned")?.clone();
    lat.sort_unstable();
    let peak = per_second.iter().map(|(c, _)| *c).fold(0.0, f64::max);
    Ok(serde_json::json!({
        "agents": n,
        "controller_back_s": back.as_secs_f64(),
        "sessions_at_restart": lowest,
        "all_back_s": all_back.as_secs_f64(),
        "reconnect_ms_p50": percentile(&lat, 0.5),
        "reconnect_ms_p99": percentile(&lat, 0.99),
        "reconnect_ms_max": lat.last().copied().unwrap_or(0),
        "storm_cpu_s": per_second.iter().map(|(c, _)| c / 100.0).sum::<f64>(),
        "storm_cpu_peak_percent": peak,
        "steady_cpu_percent": steady_percent,
        "settled_cpu_percent": settled_percent,
        "per_second": per_second.iter().map(|(c, s)| serde_json::json!([(c * 10.0).round() / 10.0, s])).collect::<Vec<_>>(),
    }))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What the simulated agents share with the measuring code.
#[derive(Default)]
struct Shared {
    connected: AtomicUsize,
    /// Heartbeat round trips in milliseconds, while measuring.
    rtts: Mutex<Vec<u64>>,
    measuring: std::sync::atomic::AtomicBool,
    /// Backup job receipt → committed, milliseconds.
    commits: Mutex<Vec<u64>>,
    /// What the committed backups read, and what of it was new to the store.
    bytes_read: std::sync::atomic::AtomicU64,
    bytes_new: std::sync::atomic::AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Restores that finished: (job receipt → verified, milliseconds; bytes fetched).
    restores: Mutex<Vec<(u64, u64)>>,
    /// With `--restart`: each return of a session, milliseconds from its break.
    reconnects: Mutex<Vec<u64>>,
    /// With `--rotate`: certificates renewed for a CA rotation.
    renewed: AtomicUsize,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn enroll_all(a: &Args) -> Result<Vec<Arc<AgentState>>, Error> {
    let per_token = 1000;
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..a.agents {
        let dir = a.dir.join(format!("agents/a{i:05}"));
        let opts = EnrollOptions {
            controller: a.controller.clone(),
            token: a.tokens[(i / per_token).min(a.tokens.len() - 1)].clone(),
            ca_fingerprint: a.fingerprint.clone(),
            state_dir: dir.clone(),
            name: Some(format!("sim{i:05}")),
            labels: [("bench".to_string(), "scale".to_string())].into(),
        };
        let permit = sem.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            if AgentState::is_enrolled(&dir) {
                AgentState::load(&dir).map_err(|e| e.to_string())
            } else {
                enroll(opts).await.map_err(|e| e.to_string())
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(Arc::new(t.await??));
    }
    Ok(out)
}

/// The name of an agent's `k`th source ("data", then "data1", "data2", ...).
fn source_name(k: usize) -> String {
    match k {
        0 => "data".into(),
        k => format!("data{k}"),
    }
}

/// One simulated agent: its session, and with `reconnect` the next one after a break, as
/// `lifeboat-agent` reconnects. Until its first session is up it retries as the agent
/// does either way (a controller pacing handshakes closes what cannot wait).
async fn agent(
    url: String,
    state: Arc<AgentState>,
    sources: Vec<PathBuf>,
    heartbeat: Duration,
    shared: Arc<Shared>,
    reconnect: bool,
) {
    let mut backoff = lifeboat_agent::reconnect_backoff();
    let mut broke: Option<Instant> = None;
    let mut ever_up = false;
    loop {
        let started = Instant::now();
        let mut up = false;
        let res = session(
            &url, &state, &sources, heartbeat, &shared, &mut up, &mut broke,
        )
        .await;
        if up {
            shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
        ever_up |= up;
        if !reconnect && ever_up {
            if let Err(e) = res
                && let Ok(mut f) = shared.failures.lock()
            {
                f.push(e.to_string());
            }
            return;
        }
        if up {
            broke = Some(Instant::now());
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.pause()).await;
    }
}

/// One session: hello, heartbeats; backs up its sources and restores when asked. `up` is
/// set once the controller took the session (and `connected` counts it); a return after
/// a break (`broke`) is timed.
async fn session(
    url: &str,
    state: &Arc<AgentState>,
    sources: &[PathBuf],
    heartbeat: Duration,
    shared: &Arc<Shared>,
    up: &mut bool,
    broke: &mut Option<Instant>,
) -> Result<(), Error> {
    transport::install_crypto_provider();
    let channel = transport::connect(url, state.client_tls()?).await?;
    let max = lifeboat_proto::MAX_MESSAGE_BYTES;
    let api = AgentApiClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (out_tx, out_rx) = mpsc::channel(16);
    out_tx
        .send(pb::AgentMessage {
            msg: Some(Msg::Hello(pb::Hello {
                version: "load".into(),
                hostname: state.info.name.clone(),
                sources: sources
                    .iter()
                    .enumerate()
                    .map(|(k, path)| pb::Source {
                        name: source_name(k),
                        kind: "path".into(),
                        path: path.display().to_string(),
                    })
                    .collect(),
                // Its sources may be restored in place (a plan of them is planned, not run).
                restore_roots: sources
                    .iter()
                    .filter_map(|p| p.parent())
                    .map(|p| p.display().to_string())
                    .take(1)
                    .collect(),
                ..Default::default()
            })),
        })
        .await?;
    let mut inbound = api
        .clone()
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    shared.connected.fetch_add(1, Ordering::Relaxed);
    *up = true;
    if let Some(b) = broke.take()
        && let Ok(mut r) = shared.reconnects.lock()
    {
        r.push(b.elapsed().as_millis() as u64);
    }
    // Heartbeats spread over the interval, as a fleet's would be.
    let offset =
        Duration::from_millis(rand_u64(&state.info.agent_id) % heartbeat.as_millis().max(1) as u64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let hb = pb::Heartbeat { unix_ms: now_ms() };
                if out_tx.send(pb::AgentMessage { msg: Some(Msg::Heartbeat(hb)) }).await.is_err() {
                    return Err("session closed".into());
                }
            }
            msg = inbound.message() => match msg? {
                Some(pb::ControllerMessage { msg: Some(controller_message::Msg::HeartbeatAck(ack)) }) => {
                    if shared.measuring.load(Ordering::Relaxed) {
                        let rtt = now_ms().saturating_sub(ack.unix_ms);
                        shared.rtts.lock().map_err(|_| "poisoned")?.push(rtt);
                    }
                }
                Some(pb::ControllerMessage { msg: Some(controller_message::Msg::Trust(trust)) }) => {
                    // As lifeboat-agent: trust what the controller says, renew when told,
                    // then reconnect with the new certificate. (The state files are written
                    // off the async threads: ten thousand agents' fsyncs share this process.)
                    if trust.ca_pem != state.ca_pem() {
                        let state = state.clone();
                        tokio::task::spawn_blocking(move || state.replace_trust(&trust.ca_pem)).await??;
                    }
                    if trust.renew {
                        let (csr_pem, key_pem) = lifeboat_core::pki::make_csr("lifeboat agent")?;
                        let reply = api.clone().renew_certificate(pb::RenewRequest { csr_pem }).await?.into_inner();
                        let state = state.clone();
                        tokio::task::spawn_blocking(move || {
                            state.replace_credentials(lifeboat_agent::state::Credentials { cert_pem: reply.cert_pem, key_pem })
                        })
                        .await??;
                        shared.renewed.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                }
                Some(pb::ControllerMessage { msg: Some(controller_message::Msg::Job(pb::Job {
                    job_id,
                    kind: Some(pb::job::Kind::Restore(restore)),
                })) }) => {
                    let (state, api, shared, out_tx) = (state.clone(), api.clone(), shared.clone(), out_tx.clone());
                    tokio::spawn(async move {
                        let got = Instant::now();
                        let mut update = pb::JobUpdate {
                            job_id: job_id.clone(),
                            state: pb::JobState::Succeeded as i32,
                            ..Default::default()
                        };
                        match fetch_and_verify(&state, api, &job_id, &restore).await {
                            Ok((files, bytes)) => {
                                if let Ok(mut r) = shared.restores.lock() {
                                    r.push((got.elapsed().as_millis() as u64, bytes));
                                }
                                update.restore = Some(pb::RestoreResult { files, bytes, ..Default::default() });
                            }
                            Err(e) => {
                                if let Ok(mut f) = shared.failures.lock() {
                                    f.push(format!("restore: {e}"));
                                }
                                update.state = pb::JobState::Failed as i32;
                                update.error = e.to_string();
                            }
                        }
                        let _ = out_tx.send(pb::AgentMessage { msg: Some(Msg::JobUpdate(update)) }).await;
                    });
                }
                Some(pb::ControllerMessage { msg: Some(controller_message::Msg::Job(job)) }) => {
                    let (state, api, sources, shared, out_tx) =
                        (state.clone(), api.clone(), sources.to_vec(), shared.clone(), out_tx.clone());
                    tokio::spawn(async move {
                        let got = Instant::now();
                        let ctx = BackupContext {
                            state,
                            client: api,
                            // Tiny uploads: the session's connection carries them.
                            bulk: Vec::new(),
                            job_id: job.job_id.clone(),
                            level: lifeboat_core::codec::DEFAULT_LEVEL,
                            full_reread: false,
                            counters: Arc::new(Counters::default()),
                            repair: Default::default(),
                            limit: None,
                        };
                        let mut update = pb::JobUpdate {
                            job_id: job.job_id.clone(),
                            state: pb::JobState::Succeeded as i32,
                            ..Default::default()
                        };
                        for (k, path) in sources.into_iter().enumerate() {
                            let src = lifeboat_agent::Source { name: source_name(k), path };
                            match backup::backup_source(&ctx, &src).await {
                                Ok(r) => {
                                    if let Ok(mut c) = shared.commits.lock() {
                                        c.push(got.elapsed().as_millis() as u64);
                                    }
                                    for (total, of) in [
                                        (&shared.bytes_read, &ctx.counters.bytes_read),
                                        (&shared.bytes_new, &ctx.counters.bytes_new),
                                    ] {
                                        total.fetch_add(of.swap(0, Ordering::Relaxed), Ordering::Relaxed);
                                    }
                                    update.snapshot_ids.push(r.snapshot_id);
                                }
                                Err(e) => {
                                    if let Ok(mut f) = shared.failures.lock() {
                                        f.push(e.to_string());
                                    }
                                    update.state = pb::JobState::Failed as i32;
                                    update.error = e.to_string();
                                    break;
                                }
                            }
                        }
                        let _ = out_tx.send(pb::AgentMessage { msg: Some(Msg::JobUpdate(update)) }).await;
                    });
                }
                Some(_) => {}
                None => return Err("the controller ended the session".into()),
            },
        }
    }
}

/// Chunk ids per GetChunks request, and requests in flight per restore (a real agent's
/// restore also reads through two streams).
const IDS_PER_REQUEST: usize = 512;
const FETCH_STREAMS: usize = 2;

/// What a restore does on the wire, without writing files: the tree, then every file's
/// chunks through GetChunks, each decoded and checked against its keyed id, then dropped.
/// Returns the files and the chunk bytes received.
async fn fetch_and_verify(
    state: &AgentState,
    api: AgentApiClient<tonic::transport::Channel>,
    job_id: &str,
    job: &pb::RestoreJob,
) -> Result<(u64, u64), Error> {
    let record = lifeboat_core::snapshot::Record::parse(&job.record)?;
    let tree_ids = record.tree_chunks()?;
    let mut contents = Vec::new();
    for want in tree_ids.chunks(IDS_PER_REQUEST) {
        let key = &state.chunk_key;
        get_verified(&mut api.clone(), job_id, want, key, |data| {
            contents.push(data)
        })
        .await?;
    }
    let tree = record.read_tree(&state.chunk_key, contents)?;
    let files = tree
        .entries
        .iter()
        .filter(|e| e.kind == lifeboat_core::tree::Kind::File);
    let files_n = files.clone().count() as u64;
    let ids: Vec<lifeboat_core::ChunkId> = files.flat_map(|e| e.chunks.iter().copied()).collect();
    let requests: Vec<Vec<lifeboat_core::ChunkId>> =
        ids.chunks(IDS_PER_REQUEST).map(<[_]>::to_vec).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(requests);
    let mut lanes = Vec::new();
    for _ in 0..FETCH_STREAMS {
        let (mut api, next, requests, key, job_id) = (
            api.clone(),
            next.clone(),
            requests.clone(),
            state.chunk_key.clone(),
            job_id.to_string(),
        );
        lanes.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            while let Some(want) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                bytes += get_verified(&mut api, &job_id, want, &key, drop).await?;
            }
            Ok::<u64, Error>(bytes)
        }));
    }
    let mut bytes = 0;
    for lane in lanes {
        bytes += lane.await??;
    }
    Ok((files_n, bytes))
}

/// One GetChunks request: every chunk decoded and checked against its id, in order, then
/// handed to `each`. Returns the encoded bytes received.
async fn get_verified(
    api: &mut AgentApiClient<tonic::transport::Channel>,
    job_id: &str,
    want: &[lifeboat_core::ChunkId],
    key: &lifeboat_core::ChunkKey,
    mut each: impl FnMut(Vec<u8>),
) -> Result<u64, Error> {
    let mut stream = api
        .get_chunks(pb::GetChunksRequest {
            job_id: job_id.to_string(),
            ids: want.iter().map(|i| i.as_bytes().to_vec()).collect(),
        })
        .await?
        .into_inner();
    let (mut got, mut bytes) = (0, 0u64);
    while let Some(batch) = stream.message().await? {
        for c in batch.chunks {
            let id = want.get(got).ok_or("more chunks than asked")?;
            if c.id != id.as_bytes() || !c.unavailable.is_empty() {
                return Err(format!("chunk {id}: {}", c.unavailable).into());
            }
            each(lifeboat_core::codec::decode_verified(key, id, &c.blob)?);
            bytes += c.blob.len() as u64;
            got += 1;
        }
    }
    if got != want.len() {
        return Err(format!("{got} of {} chunks", want.len()).into());
    }
    Ok(bytes)
}

fn rand_u64(seed: &str) -> u64 {
    let h = blake3::hash(seed.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default())
}

fn proc_stat(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = 100.0;
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let written = io
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0);
    (cpu / tick, rss, written)
}

fn controller_pid(url: &str) -> Option<u32> {
    // The bench script passes it; without it, CPU and memory are not reported.
    let _ = url;
    std::env::var("LIFEBOAT_CONTROLLER_PID").ok()?.parse().ok()
}

/// `len` incompressible bytes drawn from `seed`.
fn noise(seed: &[u8], len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut data);
    data
}

/// Agent `i`'s `n` tiny source directories, one new file each; the first agent's first
/// source also holds `extra_mib` MiB of incompressible data (what the restores read), and
/// every agent's first source `backup_mib` MiB, half shared by all agents, half its own.
fn make_sources(
    dir: &Path,
    i: usize,
    n: usize,
    extra_mib: usize,
    backup_mib: usize,
) -> Result<Vec<PathBuf>, Error> {
    if backup_mib > 0 {
        let src = dir.join(format!("sources/a{i:05}"));
        std::fs::create_dir_all(&src)?;
        let shared = (backup_mib << 20) / 2;
        std::fs::write(src.join("shared.bin"), noise(b"load shared data", shared))?;
        let own = noise(
            format!("load data of agent {i}").as_bytes(),
            (backup_mib << 20) - shared,
        );
        std::fs::write(src.join("own.bin"), own)?;
    }
    if i == 0 && extra_mib > 0 {
        let src = dir.join("sources/a00000");
        std::fs::create_dir_all(&src)?;
        let data = noise(b"load restore data", extra_mib << 20);
        // Files of 4 MiB, as a restore of a real tree has several.
        for (k, part) in data.chunks(4 << 20).enumerate() {
            std::fs::write(src.join(format!("data-{k:03}.bin")), part)?;
        }
    }
    (0..n)
        .map(|k| {
            let src = match k {
                0 => dir.join(format!("sources/a{i:05}")),
                k => dir.join(format!("sources/a{i:05}-{k}")),
            };
            std::fs::create_dir_all(&src)?;
            std::fs::write(
                src.join("hello.txt"),
                format!("agent {i} source {k} at {}\n", now_ms()),
            )?;
            Ok(src)
        })
        .collect()
}

/// The first agent's snapshot restored onto the first `--restores` agents at once; the
/// controller's RSS before (idle) and at its peak during, its CPU, the aggregate rate.
async fn restore_burst(
    a: &Args,
    states: &[Arc<AgentState>],
    shared: &Shared,
    pid: Option<u32>,
) -> Result<serde_json::Value, Error> {
    let id = IdentityFile::load(&a.identity)?;
    let tls = ClientTls::with_identity(&id.ca_pem, &id.cert_pem, &id.key_pem)?;
    let mut op = OperatorApiClient::new(transport::connect(&a.controller, tls).await?);
    let snapshot = op
        .list_snapshots(pb::ListSnapshotsRequest {
            agent: states[0].info.name.clone(),
            source: source_name(0),
        })
        .await?
        .into_inner()
        .snapshots
        .into_iter()
        .max_by_key(|s| s.received_unix_ms)
        .ok_or("the first agent committed no snapshot to restore")?;
    let n = a.restores.min(states.len());
    // Idle: after the commits have settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = pid.map(proc_stat);
    let failed_before = shared.failures.lock().map_err(|_| "poisoned")?.len();
    let t = Instant::now();
    let mut starts = Vec::new();
    for (i, state) in states.iter().take(n).enumerate() {
        let mut op = op.clone();
        let req = pb::StartRestoreRequest {
            snapshot: snapshot.id.clone(),
            agent: state.info.name.clone(),
            target: a
                .dir
                .join(format!("sources/restore-{i:05}"))
                .display()
                .to_string(),
            ..Default::default()
        };
        starts.push(tokio::spawn(async move { op.start_restore(req).await }));
    }
    for s in starts {
        s.await??;
    }
    let mut peak_rss = 0;
    loop {
        let done = shared.restores.lock().map_err(|_| "poisoned")?.len();
        let failed = shared.failures.lock().map_err(|_| "poisoned")?.len() - failed_before;
        if let Some(p) = pid {
            peak_rss = peak_rss.max(proc_stat(p).1);
        }
        if done + failed >= n {
            break;
        }
        if t.elapsed() > Duration::from_secs(1200) {
            return Err(format!("{done} of {n} restores after 20 minutes").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t.elapsed().as_secs_f64();
    let done = shared.restores.lock().map_err(|_| "poisoned")?.clone();
    let bytes: u64 = done.iter().map(|r| r.1).sum();
    let mut lat: Vec<u64> = done.iter().map(|r| r.0).collect();
    lat.sort_unstable();
    let idle_rss = idle.map_or(0, |s| s.1);
    Ok(serde_json::json!({
        "restores": n,
        "verified": done.len(),
        "snapshot_bytes": snapshot.bytes,
        "wall_s": wall,
        "aggregate_mb_per_s": bytes as f64 / 1e6 / wall,
        "latency_ms_p50": percentile(&lat, 0.5),
        "latency_ms_p99": percentile(&lat, 0.99),
        "controller_cpu_s": match (idle, pid.map(proc_stat)) { (Some(b), Some(a)) => a.0 - b.0, _ => 0.0 },
        "controller_rss_idle": idle_rss,
        "controller_rss_peak": peak_rss,
        "controller_rss_growth_per_restore": peak_rss.saturating_sub(idle_rss) / n.max(1) as u64,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    transport::install_crypto_provider();
    let a = args()?;
    let t = Instant::now();
    let states = enroll_all(&a).await?;
    let enroll_s = t.elapsed().as_secs_f64();
    eprintln!("{} agents enrolled in {enroll_s:.1} s", states.len());

    let shared = Arc::new(Shared::default());
    let t = Instant::now();
    let mut names = HashMap::new();
    for (i, state) in states.iter().enumerate() {
        let extra = if a.restores > 0 { a.restore_mb } else { 0 };
        let backup_mib = if i < a.commits { a.backup_mib } else { 0 };
        let sources = make_sources(&a.dir, i, a.sources, extra, backup_mib)?;
        names.insert(state.info.name.clone(), i);
        let (url, state, shared, hb) = (
            a.controller.clone(),
            state.clone(),
            shared.clone(),
            a.heartbeat,
        );
        tokio::spawn(agent(
            url,
            state,
            sources,
            hb,
            shared,
            a.restart || a.rotate,
        ));
    }
    while shared.connected.load(Ordering::Relaxed) < states.len() {
        if t.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "only {} sessions after 10 minutes",
                shared.connected.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = t.elapsed().as_secs_f64();
    eprintln!(
        "{} sessions in {connect_s:.1} s; measuring heartbeats for {:?}",
        states.len(),
        a.measure
    );

    // Heartbeats, steady state.
    let pid = controller_pid(&a.controller);
    let before = pid.map(proc_stat);
    shared.measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let mut peak_rss = 0;
    while t.elapsed() < a.measure {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(p) = pid {
            peak_rss = peak_rss.max(proc_stat(p).1);
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    let after = pid.map(proc_stat);
    let mut rtts = std::mem::take(&mut *shared.rtts.lock().map_err(|_| "poisoned")?);
    rtts.sort_unstable();
    let (cpu, written) = match (before, after) {
        (Some(b), Some(a)) => (a.0 - b.0, a.2.saturating_sub(b.2)),
        _ => (0.0, 0),
    };

    let restart = if a.restart {
        restart_storm(&a, states.len(), &shared, 100.0 * cpu / secs).await?
    } else {
        serde_json::Value::Null
    };

    let rotation = if a.rotate {
        rotate(&a, states.len(), &shared, pid).await?
    } else {
        serde_json::Value::Null
    };

    // Commits: M agents back up a tiny directory each, all at once.
    let mut commit = serde_json::Value::Null;
    if a.commits > 0 {
        let id = IdentityFile::load(&a.identity)?;
        let tls = ClientTls::with_identity(&id.ca_pem, &id.cert_pem, &id.key_pem)?;
        let mut op = OperatorApiClient::new(transport::connect(&a.controller, tls).await?);
        let n = a.commits.min(states.len());
        let n_sources = a.sources;
        let expected = n * n_sources;
        let cpu0 = pid.map(proc_stat);
        let t = Instant::now();
        let mut starts = Vec::new();
        for state in states.iter().take(n) {
            let mut op = op.clone();
            let name = state.info.name.clone();
            starts.push(tokio::spawn(async move {
                op.start_backup(pb::StartBackupRequest {
                    agent: name,
                    sources: (0..n_sources).map(source_name).collect(),
                    ..Default::default()
                })
                .await
            }));
        }
        for s in starts {
            s.await??;
        }
        loop {
            let done = shared.commits.lock().map_err(|_| "poisoned")?.len();
            let failed = shared.failures.lock().map_err(|_| "poisoned")?.len();
            if done + failed >= expected {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                return Err(format!("{done} of {expected} commits after 10 minutes").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wall = t.elapsed().as_secs_f64();
        let mut lat = shared.commits.lock().map_err(|_| "poisoned")?.clone();
        lat.sort_unstable();
        let snapshots = op.status(pb::Empty {}).await?.into_inner().snapshots;
        // A recovery of every device that committed, planned three times.
        let mut plan = serde_json::Value::Null;
        if a.plan {
            let agents: Vec<String> = states.iter().take(n).map(|s| s.info.name.clone()).collect();
            let mut took = Vec::new();
            let mut planned = (0, 0);
            let mut last = String::new();
            for _ in 0..3 {
                let t = Instant::now();
                let p = op
                    .plan_recovery(pb::PlanRequest {
                        agents: agents.clone(),
                        before_unix_ms: now_ms() as i64 + 60_000,
                        concurrency: 50,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                took.push(t.elapsed().as_millis() as u64);
                planned = (
                    p.devices.len(),
                    p.devices.iter().map(|d| d.sources.len()).sum(),
                );
                last = p.id;
            }
            let run = if a.run_plan {
                run_plan(&mut op, &last, pid).await?
            } else {
                serde_json::Value::Null
            };
            plan = serde_json::json!({
                "devices": planned.0,
                "sources": planned.1,
                "ms": took,
                "run": run,
            });
        }
        commit = serde_json::json!({
            "agents": n,
            "sources_each": n_sources,
            "plan": plan,
            "committed": lat.len(),
            "wall_s": wall,
            "commits_per_sec": lat.len() as f64 / wall,
            "bytes_read": shared.bytes_read.load(Ordering::Relaxed),
            "bytes_new": shared.bytes_new.load(Ordering::Relaxed),
            "latency_ms_p50": percentile(&lat, 0.5),
            "latency_ms_p99": percentile(&lat, 0.99),
            "controller_cpu_s": match (cpu0, pid.map(proc_stat)) { (Some(b), Some(a)) => a.0 - b.0, _ => 0.0 },
            "snapshots_in_catalog": snapshots,
        });
    }
    let restores = if a.restores > 0 {
        restore_burst(&a, &states, &shared, pid).await?
    } else {
        serde_json::Value::Null
    };
    let failures = shared.failures.lock().map_err(|_| "poisoned")?.clone();
    let out = serde_json::json!({
        "agents": states.len(),
        "enroll_s": enroll_s,
        "connect_s": connect_s,
        "heartbeat_interval_ms": a.heartbeat.as_millis() as u64,
        "measure_s": secs,
        "heartbeats": rtts.len(),
        "heartbeats_per_sec": rtts.len() as f64 / secs,
        "heartbeat_ms_p50": percentile(&rtts, 0.5),
        "heartbeat_ms_p99": percentile(&rtts, 0.99),
        "heartbeat_ms_max": rtts.last().copied().unwrap_or(0),
        "controller_cpu_s": cpu,
        "controller_cpu_percent": 100.0 * cpu / secs,
        "controller_rss_peak": peak_rss,
        "controller_disk_write_bytes_per_sec": written as f64 / secs,
        "commits": commit,
        "restores": restores,
        "restart": restart,
        "rotation": rotation,
        "failures": failures.len(),
        "first_failures": failures.iter().take(5).collect::<Vec<_>>(),
    });
    println!("{out}");
    std::process::exit(0);
}
