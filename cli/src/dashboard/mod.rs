//! `lifeboat dashboard`: the operator's web console, served on this machine's loopback.
//!
//! Like `kubectl proxy`, it adds no listener and no password to the controller: every page
//! is read from the controller's gRPC API with the operator's own identity file over mTLS,
//! so the console can show and start exactly what that identity's role allows. Pages are
//! rendered on the server (maud), charts are inline SVG, there is no JavaScript; the
//! stylesheet is compiled into the binary.
//!
//! Loopback is not a boundary on a shared machine, nor against the operator's own browser
//! visiting a hostile site, so the [`gate`] admits only a browser that opened the printed
//! URL (a random token, exchanged for a `SameSite=Strict` cookie), answers only to its own
//! `Host` (no DNS rebinding), and takes a form only from its own origin with the page's
//! CSRF field.

mod charts;
mod console;
mod gate;
mod pages;
mod render;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::get;
use lifeboat_proto::pb;

use crate::connect::{Api, rpc};

use console::{Console, Me};

/// Serves the console until interrupted. `listen` is a loopback address (the command
/// line refuses any other).
pub async fn serve(mut api: Api, controller: String, listen: SocketAddr, open: bool) -> Result<()> {
    let status = api
        .status(pb::Empty {})
        .await
        .map_err(rpc)
        .context("cannot reach the controller")?
        .into_inner();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} (choose another with --listen 127.0.0.1:PORT)")
        })?;
    let addr = listener.local_addr()?;
    let gate = Arc::new(gate::Gate::new(addr)?);
    let console = Console {
        api,
        me: Arc::new(Me {
            operator: status.operator,
            role: status.role,
            controller,
        }),
        gate: gate.clone(),
    };
    let app = router(console);
    let url = gate.entry_url();
    out!("Lifeboat dashboard (controller {}): {url}", status.version);
    // The URL alone on standard output (for scripts); the advice beside it on standard error.
    eprintln!("the link signs one browser in: keep it private. Ctrl-C stops the dashboard");
    if open {
        open_browser(&url);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the dashboard's server stopped")?;
    Ok(())
}

fn router(console: Console) -> Router {
    let gate = console.gate.clone();
    Router::new()
        .route("/", get(pages::fleet))
        .route("/devices/{name}", get(pages::device))
        .route("/drills", get(pages::drills).post(pages::start_drill))
        .route("/drills/new", get(pages::confirm_drill))
        .route("/plans", get(pages::plans))
        .route("/plans/{id}", get(pages::plan))
        .route(
            "/plans/{id}/run",
            get(pages::confirm_plan_run).post(pages::run_plan),
        )
        .route("/audit", get(pages::audit))
        .route("/style.css", get(render::stylesheet))
        .fallback(pages::not_found)
        .with_state(console)
        .layer(axum::middleware::from_fn_with_state(gate, gate::admit))
}

/// Opens the URL in the desktop's browser when there is a desktop; says so when it cannot.
fn open_browser(url: &str) {
    let desktop = std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some()
        || cfg!(target_os = "macos");
    if !desktop {
        return;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let started = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = started {
        tracing::warn!(
            "could not start {opener} to open the dashboard ({e}); open the URL above by hand"
        );
    }
}
