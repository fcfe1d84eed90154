//! The controller's HTTPS port: `/metrics` (Prometheus text) and `/healthz`.
//!
//! Served over TLS with the controller's certificate (there is no plaintext listener);
//! scrapers verify it with the fleet CA (`DIR/ca.crt`) and server name
//! `controller.lifeboat`. `/metrics` names agents, their tiers and estimated downtimes, so
//! it answers only a client certificate of the fleet CA that the catalog honours (an
//! operator identity of any role, or an agent; not revoked, not replaced): 401 without
//! one, 403 with one it does not honour. `/healthz` answers anyone and says nothing about
//! the fleet.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Router, response::IntoResponse, response::Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use lifeboat_proto::transport::peer_from_cert;
use tokio::net::TcpListener;

use crate::Controller;

/// Who is on the other end of one HTTPS connection, from its client certificate.
#[derive(Clone)]
enum Caller {
    /// No client certificate.
    Anonymous,
    /// A certificate of the fleet CA the catalog honours: `agent:NAME` or `operator:NAME`.
    Known(String),
    /// A certificate of the fleet CA the catalog does not honour: why, and the address.
    Refused { why: String, remote: String },
}

fn caller_of(ctl: &Controller, cert: Option<&[u8]>, remote: String) -> Caller {
    let Some(der) = cert else {
        return Caller::Anonymous;
    };
    let why = match peer_from_cert(der) {
        None => "the certificate names no agent or operator".to_string(),
        Some(peer) => match crate::auth::resolve(ctl, &peer) {
            Ok(p) => return Caller::Known(p.actor()),
            Err(e) => e.to_string(),
        },
    };
    Caller::Refused { why, remote }
}

async fn metrics(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    match caller {
        Caller::Known(who) => {
            tracing::debug!(caller = %who, "metrics scraped");
            render(ctl).await.into_response()
        }
        Caller::Anonymous => (
            StatusCode::UNAUTHORIZED,
            "/metrics needs a client certificate of the fleet CA: give the scraper an operator identity (`lifeboat identity create prometheus --role viewer --out FILE`, then `lifeboat identity pem --identity FILE --out DIR` for its ca.crt, client.crt and client.key)\n",
        )
            .into_response(),
        Caller::Refused { why, remote } => {
            let source = remote.rsplit_once(':').map_or(remote.as_str(), |(ip, _)| ip);
            ctl.audit
                .denied_anonymous(source, "https", "/metrics", &remote, &why);
            (StatusCode::FORBIDDEN, format!("denied: {why}\n")).into_response()
        }
    }
}

async fn render(ctl: Arc<Controller>) -> String {
    let mut out = String::new();
    let (agents, snapshots, chunks, bytes) = ctl.catalog.totals().unwrap_or_default();
    let connected = ctl
        .catalog
        .agents()
        .unwrap_or_default()
        .iter()
        .filter(|a| ctl.jobs.connected(&a.id))
        .count();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge("lifeboat_agents", "Enrolled agents.", agents);
    gauge(
        "lifeboat_agents_connected",
        "Agents with a live session.",
        connected as u64,
    );
    gauge("lifeboat_snapshots", "Committed snapshots.", snapshots);
    gauge("lifeboat_store_chunks", "Chunks in the store.", chunks);
    gauge("lifeboat_store_bytes", "Bytes in sealed packs.", bytes);
    gauge(
        "lifeboat_store_encrypted",
        "1 when the store seals every blob and envelope (encryption at rest).",
        u64::from(ctl.store.is_encrypted()),
    );
    gauge(
        "lifeboat_store_local",
        "1 when the store is a directory on the controller, 0 for object storage.",
        u64::from(ctl.store.is_local()),
    );
    gauge(
        "lifeboat_store_object_lock",
        "1 when the object store retains every pack and envelope against everyone until its lock ends (S3 Object Lock, COMPLIANCE).",
        u64::from(ctl.store.object_lock()),
    );
    gauge(
        "lifeboat_restores_served_limit",
        "Restores the controller serves chunks to at once (--restore-memory / 8 MiB).",
        ctl.restore_admission.limit() as u64,
    );
    gauge(
        "lifeboat_restores_served",
        "Restores the controller is serving chunks to now.",
        ctl.restore_admission.serving() as u64,
    );
    gauge(
        "lifeboat_restores_waiting",
        "Restores waiting for their turn to be served chunks.",
        ctl.restore_admission.waiting() as u64,
    );
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    gauge(
        "lifeboat_tls_handshakes_per_second_limit",
        "TLS handshakes the controller starts per second at most (--max-handshakes-per-second; 0: no limit).",
        u64::from(ctl.handshakes.per_second()),
    );
    gauge(
        "lifeboat_tls_handshakes_waiting",
        "Accepted connections waiting for their TLS handshake to start.",
        ctl.handshakes.waiting(),
    );
    for (name, help, v) in [
        (
            "lifeboat_tls_handshakes_started_total",
            "TLS handshakes the controller started (completed or refused).",
            load(&ctl.handshakes.started),
        ),
        (
            "lifeboat_tls_handshakes_shed_total",
            "Connections closed before their TLS handshake: too many waiting, waited past 25 s, or their client hung up (their agents back off and return).",
            load(&ctl.handshakes.shed),
        ),
        (
            "lifeboat_restore_bytes_sent_total",
            "Chunk bytes the controller sent to restoring agents.",
            load(&ctl.restore_bytes_sent),
        ),
        (
            "lifeboat_restore_bytes_direct_total",
            "Chunk bytes restoring agents were granted to read straight from the object store.",
            load(&ctl.restore_bytes_direct),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}
# TYPE {name} counter
{name} {v}"
        );
    }
    let requests = ctl.store.objects().requests();
    if !requests.is_empty() {
        let _ = writeln!(
            out,
            "# HELP lifeboat_store_requests_total Requests the controller sent to the object store since it started, by kind, retries included (what the provider bills; agents' reads of restores are not counted here).\n# TYPE lifeboat_store_requests_total counter"
        );
        for (op, n) in requests {
            let _ = writeln!(out, "lifeboat_store_requests_total{{op=\"{op}\"}} {n}");
        }
    }
    let denials = ctl.audit.denial_counts();
    let _ = writeln!(
        out,
        "# HELP lifeboat_denials_total Calls refused by authorization since the controller started: caller=\"identity\" by an enrolled agent or operator (always audited), caller=\"anonymous\" without an identity the controller honours (audited within a budget).\n# TYPE lifeboat_denials_total counter\nlifeboat_denials_total{{caller=\"identity\"}} {}\nlifeboat_denials_total{{caller=\"anonymous\"}} {}",
        denials.identity, denials.anonymous
    );
    let _ = writeln!(
        out,
        "# HELP lifeboat_audit_unsaved Audit entries the catalog could not take yet (its disk full), kept in memory and written once it does.\n# TYPE lifeboat_audit_unsaved gauge\nlifeboat_audit_unsaved {}",
        ctl.audit.unsaved()
    );
    let _ = writeln!(
        out,
        "# HELP lifeboat_refusals_total Requests of an authenticated identity refused by the rule they broke (the audit entry's action) since the controller started.\n# TYPE lifeboat_refusals_total counter"
    );
    for (action, n) in &denials.refusals {
        let _ = writeln!(out, "lifeboat_refusals_total{{action=\"{action}\"}} {n}");
    }
    let workers = ctl.workers.states();
    for (metric, help, value) in [
        (
            "lifeboat_worker_runs_total",
            "Runs of each background worker.",
            (|s: &crate::workers::WorkerState| s.runs as f64) as fn(&_) -> f64,
        ),
        (
            "lifeboat_worker_failures_total",
            "Failed runs of each background worker.",
            |s| s.failures as f64,
        ),
        (
            "lifeboat_worker_last_run_timestamp_seconds",
            "When each background worker last ended a run (0: never).",
            |s| s.last_run_ms as f64 / 1000.0,
        ),
        (
            "lifeboat_worker_last_error_timestamp_seconds",
            "When each background worker last failed (0: never).",
            |s| s.last_error_ms as f64 / 1000.0,
        ),
    ] {
        let kind = if metric.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (name, s) in &workers {
            let _ = writeln!(out, "{metric}{{worker=\"{name}\"}} {}", value(s));
        }
    }
    let failed = ctl.catalog.failed_drills().unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP lifeboat_drills_failed_total Restore drills that failed.\n# TYPE lifeboat_drills_failed_total counter\nlifeboat_drills_failed_total {failed}"
    );
    let over = ctl.catalog.drills_over_rto().unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP lifeboat_drills_over_rto_total Restore drills that passed but took longer than their device's RTO.\n# TYPE lifeboat_drills_over_rto_total counter\nlifeboat_drills_over_rto_total {over}"
    );
    let c = ctl.clone();
    let fleet = tokio::task::spawn_blocking(move || Fleet::read(&c, bytes))
        .await
        .ok()
        .and_then(|r| {
            r.inspect_err(
                |e| tracing::warn!(error = %e, "metrics: reading the fleet's state failed"),
            )
            .ok()
        })
        .unwrap_or_default();
    fleet.render(&mut out);
    out
}

/// What `/metrics` says per device, source, job kind and about the store, read from the
/// catalog on a blocking thread.
#[derive(Default)]
struct Fleet {
    devices: Vec<lifeboat_proto::pb::DeviceInfo>,
    /// Per agent (not revoked): name, enrolled and certificate expiry, milliseconds.
    agents: Vec<(String, i64, i64)>,
    jobs: Vec<(String, i32, u64, i64)>,
    snapshot_bytes: crate::catalog::SnapshotBytes,
    store_bytes: u64,
    bad_chunks: (u64, u64),
    /// Percent of pack bytes verified within the scrub period.
    scrubbed: f64,
    /// Suspect snapshots by device and source.
    suspects: Vec<(String, String, u64)>,
    /// A CA rotation under way: since when, and the agents and operators not moved yet.
    rotation: Option<(i64, u64, u64)>,
}

impl Fleet {
    /// `store_bytes`: the store's size, already read for `lifeboat_store_bytes`.
    fn read(ctl: &Controller, store_bytes: u64) -> Result<Fleet, crate::error::ApiError> {
        let now = ctl.clock.now_ms();
        Ok(Fleet {
            devices: crate::devices::devices(ctl, now)?,
            agents: ctl
                .catalog
                .agents()?
                .into_iter()
                .filter(|a| a.revoked_ms == 0)
                .map(|a| (a.name, a.enrolled_ms, a.cert_expires_ms))
                .collect(),
            jobs: ctl.catalog.job_stats()?,
            snapshot_bytes: ctl.catalog.snapshot_bytes()?,
            store_bytes,
            bad_chunks: ctl.catalog.bad_chunk_counts()?,
            scrubbed: ctl.catalog.verified_coverage(now - ctl.scrub_period_ms)?,
            suspects: ctl.catalog.suspect_counts()?,
            rotation: {
                let s = crate::access::rotation::ca_status(ctl)?;
                (s.rotation_started_unix_ms > 0).then(|| {
                    (
                        s.rotation_started_unix_ms,
                        u64::from(s.agents - s.agents_moved),
                        u64::from(s.operators - s.operators_moved),
                    )
                })
            },
        })
    }

    fn render(&self, out: &mut String) {
        let mut m = Families(out);
        m.family(
            "lifeboat_device_restore_estimate_seconds",
            "gauge",
            "Estimated downtime if the device had to be restored now, alone.",
        );
        for d in &self.devices {
            m.sample(
                "lifeboat_device_restore_estimate_seconds",
                &[
                    ("agent", &d.agent),
                    ("basis", &d.estimate_basis.to_string()),
                    ("tier", &d.tier.to_string()),
                ],
                d.restore_estimate_ms as f64 / 1000.0,
            );
        }
        m.family(
            "lifeboat_device_rto_seconds",
            "gauge",
            "The device's recovery time objective: the shortest `rto` of its policies (0: none).",
        );
        for d in &self.devices {
            m.sample(
                "lifeboat_device_rto_seconds",
                &[("agent", &d.agent)],
                d.rto_seconds as f64,
            );
        }
        m.family(
            "lifeboat_device_last_passed_drill_timestamp_seconds",
            "gauge",
            "When the device's newest drill that passed started (0: never).",
        );
        for d in &self.devices {
            m.sample(
                "lifeboat_device_last_passed_drill_timestamp_seconds",
                &[("agent", &d.agent)],
                d.last_passed_drill_unix_ms as f64 / 1000.0,
            );
        }
        m.family(
            "lifeboat_device_last_backup_timestamp_seconds",
            "gauge",
            "When the device's newest snapshot of any source was received (0: it has none).",
        );
        for d in &self.devices {
            let last = d.sources.iter().map(|s| s.last_unix_ms).max().unwrap_or(0);
            m.sample(
                "lifeboat_device_last_backup_timestamp_seconds",
                &[("agent", &d.agent)],
                last as f64 / 1000.0,
            );
        }
        m.family(
            "lifeboat_device_enrolled_timestamp_seconds",
            "gauge",
            "When the device's agent enrolled.",
        );
        for (name, enrolled, _) in &self.agents {
            m.sample(
                "lifeboat_device_enrolled_timestamp_seconds",
                &[("agent", name)],
                *enrolled as f64 / 1000.0,
            );
        }
        m.family(
            "lifeboat_agent_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the agent's certificate expires; agents renew it over their session well before.",
        );
        for (name, _, expires) in &self.agents {
            m.sample(
                "lifeboat_agent_certificate_expiry_timestamp_seconds",
                &[("agent", name)],
                *expires as f64 / 1000.0,
            );
        }
        let (started, agents, operators) = self.rotation.unwrap_or_default();
        for (name, help, v) in [
            (
                "lifeboat_ca_rotation_started_timestamp_seconds",
                "When the CA rotation under way started (0: none is): until it finishes, two CAs are trusted.",
                (started / 1000) as f64,
            ),
            (
                "lifeboat_ca_rotation_agents_pending",
                "Agents not yet moved to the new CA of the rotation under way (`lifeboat ca status` names them).",
                agents as f64,
            ),
            (
                "lifeboat_ca_rotation_operators_pending",
                "Operator identities not yet renewed under the new CA of the rotation under way.",
                operators as f64,
            ),
        ] {
            m.family(name, "gauge", help);
            m.sample(name, &[], v);
        }
        type Of = fn(&lifeboat_proto::pb::DeviceSource) -> f64;
        for (name, help, value) in [
            (
                "lifeboat_source_last_backup_timestamp_seconds",
                "When the source's newest snapshot was received (0: never).",
                (|s| s.last_unix_ms as f64 / 1000.0) as Of,
            ),
            (
                "lifeboat_source_rpo_seconds",
                "The recovery point objective the policies covering the source give it: their shortest interval (0: no policy).",
                |s| s.rpo_seconds as f64,
            ),
            (
                "lifeboat_source_overdue",
                "1 when the source missed its policy's last scheduled backup (past its splay and a 15-minute grace).",
                |s| f64::from(u8::from(s.overdue)),
            ),
            (
                "lifeboat_source_restore_estimate_seconds",
                "Estimated time to restore the source's restore point now, alone.",
                |s| s.restore_estimate_ms as f64 / 1000.0,
            ),
        ] {
            m.family(name, "gauge", help);
            for d in &self.devices {
                for s in &d.sources {
                    m.sample(
                        name,
                        &[("agent", &d.agent), ("source", &s.source)],
                        value(s),
                    );
                }
            }
        }
        m.family(
            "lifeboat_source_vulnerabilities",
            "gauge",
            "Known vulnerabilities of the source's newest snapshot against the imported feed (sources not matched yet are left out).",
        );
        for d in &self.devices {
            for s in d.sources.iter().filter(|s| s.vulns_known) {
                m.sample(
                    "lifeboat_source_vulnerabilities",
                    &[("agent", &d.agent), ("source", &s.source)],
                    s.vulns as f64,
                );
            }
        }
        m.family(
            "lifeboat_suspect_snapshots",
            "gauge",
            "Snapshots whose ransomware signals reached their policy's threshold, by device and source.",
        );
        for (agent, source, n) in &self.suspects {
            m.sample(
                "lifeboat_suspect_snapshots",
                &[("agent", agent), ("source", source)],
                *n as f64,
            );
        }
        m.family(
            "lifeboat_jobs",
            "gauge",
            "Jobs in the catalog by kind and state.",
        );
        for (kind, state, count, _) in &self.jobs {
            m.sample(
                "lifeboat_jobs",
                &[("kind", kind), ("state", job_state(*state))],
                *count as f64,
            );
        }
        m.family(
            "lifeboat_job_duration_seconds",
            "summary",
            "Run time of the jobs that ended, by kind and outcome.",
        );
        for (kind, state, count, ms) in &self.jobs {
            let outcome = job_state(*state);
            if !matches!(outcome, "succeeded" | "failed") {
                continue;
            }
            let labels = [("kind", kind.as_str()), ("outcome", outcome)];
            m.sample(
                "lifeboat_job_duration_seconds_sum",
                &labels,
                *ms as f64 / 1000.0,
            );
            m.sample(
                "lifeboat_job_duration_seconds_count",
                &labels,
                *count as f64,
            );
        }
        let bytes = self.snapshot_bytes;
        m.family(
            "lifeboat_snapshot_bytes",
            "gauge",
            "Bytes of the listed snapshots: at their sources (kind=\"source\"), read from disk when each was taken (kind=\"read\": unchanged files are not read again), and new to the store (kind=\"new\").",
        );
        for (kind, n) in [
            ("source", bytes.source),
            ("read", bytes.read),
            ("new", bytes.new),
        ] {
            m.sample("lifeboat_snapshot_bytes", &[("kind", kind)], n as f64);
        }
        let logical = bytes.source;
        m.family(
            "lifeboat_store_dedup_ratio",
            "gauge",
            "Bytes of the listed snapshots per byte stored (deduplication and compression together; 0 with an empty store).",
        );
        let ratio = if self.store_bytes == 0 {
            0.0
        } else {
            logical as f64 / self.store_bytes as f64
        };
        m.sample("lifeboat_store_dedup_ratio", &[], ratio);
        m.family(
            "lifeboat_scrub_bad_chunks",
            "gauge",
            "Chunks scrub found damaged: not stored again yet (state=\"unhealed\"), or stored again by a later backup (state=\"healed\").",
        );
        m.sample(
            "lifeboat_scrub_bad_chunks",
            &[("state", "unhealed")],
            self.bad_chunks.1 as f64,
        );
        m.sample(
            "lifeboat_scrub_bad_chunks",
            &[("state", "healed")],
            self.bad_chunks.0 as f64,
        );
        m.family(
            "lifeboat_scrub_verified_ratio",
            "gauge",
            "Share of the store's pack bytes scrub has read back and verified within its period (1 with an empty store).",
        );
        m.sample("lifeboat_scrub_verified_ratio", &[], self.scrubbed / 100.0);
    }
}

/// A job state's name as the CLI shows it.
fn job_state(state: i32) -> &'static str {
    use lifeboat_proto::pb::JobState as S;
    match S::try_from(state).unwrap_or(S::Unspecified) {
        S::Unspecified => "unspecified",
        S::Queued => "queued",
        S::Running => "running",
        S::Succeeded => "succeeded",
        S::Failed => "failed",
        S::Interrupted => "interrupted",
    }
}

/// Writes metric families in the Prometheus text format.
struct Families<'a>(&'a mut String);

impl Families<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; label values escaped as the format asks (backslash, quote, newline).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.0, "{name}");
        if !labels.is_empty() {
            let list: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            let _ = write!(self.0, "{{{}}}", list.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

pub async fn serve(ctl: Arc<Controller>, listener: TcpListener) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(ctl.clone());
    loop {
        let Ok((tcp, remote)) = listener.accept().await else {
            continue;
        };
        // The settings in force now (a CA rotation replaces them).
        let acceptor = tokio_rustls::TlsAcceptor::from(ctl.authority.trust().https.clone());
        let (app, ctl) = (app.clone(), ctl.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let remote = remote.to_string();
            let caller = tokio::task::spawn_blocking({
                let remote = remote.clone();
                move || caller_of(&ctl, cert.as_deref(), remote)
            })
            .await
            .unwrap_or_else(|e| Caller::Refused {
                why: format!("checking the certificate: {e}"),
                remote,
            });
            let app = app.layer(Extension(caller));
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
        });
    }
}
