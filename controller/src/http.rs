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
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    for (name, help, v) in [
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
    let c = ctl.clone();
    let devices =
        tokio::task::spawn_blocking(move || crate::devices::devices(&c, c.clock.now_ms()))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP lifeboat_device_restore_estimate_seconds Estimated downtime if the device had to be restored now, alone.\n# TYPE lifeboat_device_restore_estimate_seconds gauge"
    );
    for d in &devices {
        let _ = writeln!(
            out,
            "lifeboat_device_restore_estimate_seconds{{agent=\"{}\",basis=\"{}\",tier=\"{}\"}} {:.3}",
            d.agent.replace(['"', '\\', '\n'], "_"),
            d.estimate_basis,
            d.tier,
            d.restore_estimate_ms as f64 / 1000.0
        );
    }
    out
}

pub async fn serve(ctl: Arc<Controller>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(ctl.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, remote)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
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
