//! The controller's HTTPS port: `/metrics` (Prometheus text) and `/healthz`.
//!
//! Served over TLS with the controller's certificate (there is no plaintext listener);
//! scrapers verify it with the fleet CA (`DIR/ca.crt`) and server name
//! `controller.lifeboat`. The figures are counts, not data, so no client certificate is
//! required.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::Controller;

async fn metrics(State(ctl): State<Arc<Controller>>) -> String {
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
    out
}

pub async fn serve(ctl: Arc<Controller>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(ctl);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
        });
    }
}
