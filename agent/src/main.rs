//! `lifeboat-agent`: enroll this machine, then run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use lifeboat_agent::RunConfig;
use lifeboat_agent::enroll::{EnrollOptions, enroll};

#[derive(Parser)]
#[command(
    name = "lifeboat-agent",
    version,
    about = "Lifeboat agent: backs up and restores this machine for a controller"
)]
struct Cli {
    #[command(flatten)]
    log: lifeboat_proto::logs::LogArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll this machine with a controller (keys are generated here).
    Enroll {
        /// Controller URL, https://HOST:PORT.
        #[arg(long)]
        controller: String,
        /// Single-use join token from `lifeboat token create`.
        #[arg(long, env = "LIFEBOAT_JOIN_TOKEN")]
        token: String,
        /// SHA-256 fingerprint of the controller's CA, checked before the token is sent.
        #[arg(long)]
        ca_fingerprint: String,
        #[arg(long, env = "LIFEBOAT_AGENT_STATE_DIR")]
        state_dir: PathBuf,
        /// Agent name (default: this host's name).
        #[arg(long)]
        name: Option<String>,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Connect to the controller and run backup and restore jobs.
    Run {
        #[arg(long, env = "LIFEBOAT_AGENT_STATE_DIR")]
        state_dir: PathBuf,
        /// A directory to back up, NAME=PATH (repeatable).
        #[arg(long = "source", value_name = "NAME=PATH")]
        sources: Vec<String>,
        /// A directory restores may write below (repeatable). Without one, restores are refused.
        #[arg(long = "restore-root", value_name = "PATH")]
        restore_roots: Vec<PathBuf>,
        /// zstd level for chunk data (0 stores raw).
        #[arg(long, default_value_t = lifeboat_core::codec::DEFAULT_LEVEL)]
        compression_level: i32,
        /// The Docker Engine socket (images and volumes become sources when it answers).
        #[arg(long, default_value = lifeboat_agent::docker::DEFAULT_SOCKET)]
        docker_socket: PathBuf,
        /// Do not talk to Docker, even if it runs here.
        #[arg(long, conflicts_with = "docker_restore")]
        no_docker: bool,
        /// Allow restores into this machine's Docker: loading images, writing volumes.
        #[arg(long)]
        docker_restore: bool,
        /// Allow drills to run their probe command (`sh -c`, as this agent's user) against
        /// what they restored into the sandbox.
        #[arg(long)]
        allow_probes: bool,
        /// The controller to dial (default: the one recorded at enrollment). With --token
        /// and --ca-fingerprint, enroll first when the state directory holds no enrollment
        /// (containers).
        #[arg(long, env = "LIFEBOAT_CONTROLLER")]
        controller: Option<String>,
        /// A join token, to enroll on first start.
        #[arg(long, env = "LIFEBOAT_JOIN_TOKEN")]
        token: Option<String>,
        /// The controller's CA fingerprint, to enroll on first start.
        #[arg(long, env = "LIFEBOAT_CA_FINGERPRINT")]
        ca_fingerprint: Option<String>,
        /// Agent name when enrolling here (default: this host's name).
        #[arg(long, env = "LIFEBOAT_AGENT_NAME")]
        name: Option<String>,
        /// Label KEY=VALUE when enrolling here (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    #[command(flatten)]
    Docs(lifeboat_proto::docs::DocsCmd),
}

fn parse_labels(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--label {l:?}: expected KEY=VALUE"))
        })
        .collect()
}

fn main() {
    lifeboat_agent::memory::limit_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeboat-agent: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async_main());
}

async fn async_main() {
    let cli = Cli::parse();
    lifeboat_proto::logs::init(cli.log.format, "info");
    if let Err(e) = real_main(cli).await {
        eprintln!("lifeboat-agent: {e:#}");
        std::process::exit(1);
    }
}

/// Enrolls from the flags `enroll` and `run` share.
async fn enroll_with(
    controller: String,
    token: String,
    ca_fingerprint: String,
    state_dir: &std::path::Path,
    name: Option<String>,
    labels: &[String],
) -> anyhow::Result<lifeboat_agent::state::AgentState> {
    Ok(enroll(EnrollOptions {
        controller,
        token,
        ca_fingerprint,
        state_dir: state_dir.to_owned(),
        name,
        labels: parse_labels(labels)?,
    })
    .await?)
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Docs(d) => Ok(d.run(Cli::command(), "lifeboat-agent")?),
        Cmd::Enroll {
            controller,
            token,
            ca_fingerprint,
            state_dir,
            name,
            labels,
        } => {
            let state =
                enroll_with(controller, token, ca_fingerprint, &state_dir, name, &labels).await?;
            println!(
                "enrolled as {} (id {})",
                state.info.name, state.info.agent_id
            );
            println!(
                "next: lifeboat-agent run --state-dir {} --source NAME=PATH --restore-root PATH",
                state_dir.display()
            );
            Ok(())
        }
        Cmd::Run {
            state_dir,
            sources,
            restore_roots,
            compression_level,
            docker_socket,
            no_docker,
            docker_restore,
            allow_probes,
            controller,
            token,
            ca_fingerprint,
            name,
            labels,
        } => {
            let url_override = controller.clone();
            if !lifeboat_agent::state::AgentState::is_enrolled(&state_dir)
                && let (Some(controller), Some(token), Some(ca_fingerprint)) =
                    (controller, token, ca_fingerprint)
            {
                let state =
                    enroll_with(controller, token, ca_fingerprint, &state_dir, name, &labels)
                        .await?;
                eprintln!(
                    "enrolled as {} (id {})",
                    state.info.name, state.info.agent_id
                );
            }
            let mut config = RunConfig::new(state_dir, &sources, &restore_roots)?;
            config.compression_level = compression_level;
            config.allow_probes = allow_probes;
            config.controller = url_override;
            config.docker = lifeboat_agent::docker::DockerConfig {
                socket: (!no_docker).then_some(docker_socket),
                restore_allowed: docker_restore,
            };
            lifeboat_agent::run(config, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(())
        }
    }
}
