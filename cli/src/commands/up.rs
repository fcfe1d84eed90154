//! `lifeboat up`: a controller and a local agent in one process, for one machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use lifeboat_agent::RunConfig;
use lifeboat_agent::enroll::{EnrollOptions, enroll};
use lifeboat_agent::state::AgentState;
use lifeboat_controller::ServeConfig;
use lifeboat_proto::pb;
use tokio::sync::watch;

use crate::connect::{connect, rpc};

pub async fn up(
    data_dir: PathBuf,
    listen: SocketAddr,
    sources: Vec<String>,
    restore_roots: Vec<PathBuf>,
) -> Result<()> {
    let controller_dir = data_dir.join("controller");
    let agent_dir = data_dir.join("agent");
    let restore_roots = if restore_roots.is_empty() {
        vec![data_dir.join("restores")]
    } else {
        restore_roots
    };
    // Validate the agent's configuration before starting anything.
    let agent_config = RunConfig::new(agent_dir.clone(), &sources, &restore_roots)?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let running = lifeboat_controller::start(
        &ServeConfig {
            data_dir: controller_dir.clone(),
            store: None,
            s3: Default::default(),
            recovery_recipient: None,
            agent_cert_lifetime: lifeboat_controller::setup::DEFAULT_AGENT_CERT_LIFETIME,
            max_concurrent_jobs: 32,
            prune_every: Some(std::time::Duration::from_secs(3600)),
            scrub_period: Some(std::time::Duration::from_secs(30 * 86_400)),
            gc_lease: std::time::Duration::from_secs(6 * 3600),
            upload_quota: lifeboat_controller::DEFAULT_UPLOAD_QUOTA,
            restore_memory: lifeboat_controller::DEFAULT_RESTORE_MEMORY,
            store_url_ttl: lifeboat_controller::DEFAULT_STORE_URL_TTL,
            state_every: Some(lifeboat_controller::DEFAULT_STATE_EVERY),
            copy: None,
            require_approval: None,
            fleet_dedup: false,
            max_handshakes_per_second: lifeboat_controller::DEFAULT_MAX_HANDSHAKES_PER_SECOND,
            scan: true,
            show_recovery_key,
        },
        listener,
        None,
    )?;
    let url = running.url.clone();
    let fingerprint = running.ca_fingerprint().to_string();
    // The CLI's default identity path is DATA_DIR/admin.identity: keep a copy there.
    let identity = data_dir.join("admin.identity");
    lifeboat_core::durable::write_atomic(
        &identity,
        &std::fs::read(&running.identity_path)?,
        0o600,
    )?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let controller = tokio::spawn(running.serve(stopped(stop_rx.clone())));

    let mut api = connect(Some(url.clone()), Some(identity.clone())).await?;
    if !AgentState::is_enrolled(&agent_dir) {
        let token = api
            .create_token(pb::CreateTokenRequest {
                labels: Default::default(),
                ttl_seconds: 600,
                uses: 1,
                device: String::new(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        enroll(EnrollOptions {
            controller: url.clone(),
            token: token.token,
            ca_fingerprint: fingerprint.clone(),
            state_dir: agent_dir.clone(),
            name: None,
            labels: Default::default(),
        })
        .await?;
    }
    let agent_name = AgentState::load(&agent_dir)?.info.name;
    let mut agent_config = agent_config;
    agent_config.controller = Some(url.clone());
    let agent = tokio::spawn(lifeboat_agent::run(agent_config, stopped(stop_rx.clone())));

    // Wait for the agent's session, then back up what it was given.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let agents = api
            .list_agents(pb::Empty {})
            .await
            .map_err(rpc)?
            .into_inner()
            .agents;
        if agents.iter().any(|a| a.name == agent_name && a.connected) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the local agent did not connect within 30 s; see the log above");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out!("Lifeboat is up: controller {url}, agent {agent_name}");
    out!("  CA fingerprint: {fingerprint}");
    out!("  identity file:  {}", identity.display());
    if !sources.is_empty() {
        let job = api
            .start_backup(pb::StartBackupRequest {
                agent: agent_name.clone(),
                ..Default::default()
            })
            .await
            .map_err(rpc)?
            .into_inner();
        out!("  backing up now: job {}", job.id);
    }
    out!("\nTry next (in another terminal):");
    out!("  lifeboat jobs                       # what is running");
    out!("  lifeboat snapshots                  # what is stored");
    out!("  lifeboat backup {agent_name} --wait");
    out!(
        "  lifeboat restore SNAPSHOT --agent {agent_name} --to {}/demo --wait",
        restore_roots[0].display()
    );
    out!("  lifeboat token create               # enroll another machine");
    out!("\nLogs: warnings and errors only (LIFEBOAT_LOG=info for every step).");
    out!("Ctrl-C stops both.");

    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    out!("stopping...");
    let _ = stop_tx.send(true);
    agent.await.context("agent task")??;
    controller.await.context("controller task")??;
    Ok(())
}

/// `ServeConfig::show_recovery_key` for `up`: the key is shown as soon as the store is made,
/// before anything else of the start can fail.
fn show_recovery_key(secret: &str, controller_key: &str) {
    out!(
        "  recovery kit (shown once, keep it offline as one file; it unwraps the store's data key):"
    );
    for line in lifeboat_controller::setup::recovery_kit(secret, controller_key).lines() {
        out!("    {line}");
    }
}
