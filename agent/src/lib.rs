//! The Lifeboat agent: one per machine.
//!
//! [`enroll`] makes the machine's keys and trades a join token for a certificate.
//! [`run`] dials the controller (machines need no inbound port), keeps one session, and
//! runs the jobs it is sent: [`backup`] (walk → chunk → hash → ask what is missing →
//! compress → upload → sign → commit) and [`restore`] (verify signature → fetch →
//! verify every chunk and file → write under a directory handle). What the agent may read
//! ([`RunConfig::sources`]) and where it may write ([`RunConfig::restore_roots`]) is its
//! own configuration: the controller can only name them. [`memory`] tunes glibc's
//! allocator for that work (two arenas, free pages returned after each job).

pub mod backup;
mod client;
pub mod docker;
pub mod enroll;
pub mod memory;
pub mod restore;
mod session;
pub use session::reconnect_backoff;
pub mod state;

use std::path::{Component, Path, PathBuf};

use lifeboat_core::snapshot::validate_name;

pub use session::run;

/// Agent failures, phrased for the operator, by where they happened.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's own identity: its state directory, credentials and enrollment.
    #[error("{0}")]
    Enrollment(String),
    /// How the agent was started (flags, sources, restore roots).
    #[error("{0}")]
    Config(String),
    /// Reading sources, the file cache, packing and committing a backup.
    #[error("{0}")]
    Backup(String),
    /// Fetching, verifying and writing a restore, and its probe.
    #[error("{0}")]
    Restore(String),
    /// The Docker Engine: images, volumes, containers paused or stopped.
    #[error("{0}")]
    Docker(String),
    #[error(transparent)]
    Core(#[from] lifeboat_core::Error),
    #[error("{}", chain(.0))]
    Transport(#[from] lifeboat_proto::transport::TransportError),
    #[error("{0}")]
    Rpc(String),
    /// The controller refused a call for a reason this agent (or the scheduler) acts on.
    #[error("controller: {message}")]
    Refused {
        reason: lifeboat_proto::pb::Refusal,
        message: String,
    },
}

impl AgentError {
    /// The controller's refusal behind this error, if it was one.
    pub fn refusal(&self) -> lifeboat_proto::pb::Refusal {
        match self {
            AgentError::Refused { reason, .. } => *reason,
            _ => lifeboat_proto::pb::Refusal::Unspecified,
        }
    }
}

/// The refusal a status carries in its details (`pb::RefusalDetail`), if any.
pub fn refusal_of(status: &tonic::Status) -> lifeboat_proto::pb::Refusal {
    use prost::Message;
    lifeboat_proto::pb::RefusalDetail::decode(status.details())
        .ok()
        .and_then(|d| lifeboat_proto::pb::Refusal::try_from(d.reason).ok())
        .unwrap_or(lifeboat_proto::pb::Refusal::Unspecified)
}

/// An error with its whole `source()` chain, for one-line messages.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

impl From<tonic::Status> for AgentError {
    fn from(s: tonic::Status) -> Self {
        match refusal_of(&s) {
            lifeboat_proto::pb::Refusal::Unspecified => {
                AgentError::Rpc(format!("controller: {}", s.message()))
            }
            reason => AgentError::Refused {
                reason,
                message: s.message().to_string(),
            },
        }
    }
}

/// One directory the agent backs up.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub path: PathBuf,
}

/// `lifeboat-agent run` settings, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub state_dir: PathBuf,
    pub sources: Vec<Source>,
    pub restore_roots: Vec<PathBuf>,
    /// zstd level for chunk data.
    pub compression_level: i32,
    /// Overrides the controller URL recorded at enrollment.
    pub controller: Option<String>,
    pub docker: docker::DockerConfig,
    /// Drills may run their probe command on this machine.
    pub allow_probes: bool,
}

impl RunConfig {
    /// Parses `NAME=PATH` source flags and restore roots into a checked configuration.
    pub fn new(
        state_dir: PathBuf,
        sources: &[String],
        restore_roots: &[PathBuf],
    ) -> Result<RunConfig, AgentError> {
        let mut out = Vec::new();
        for s in sources {
            let (name, path) = s
                .split_once('=')
                .ok_or_else(|| AgentError::Config(format!("--source {s:?}: expected NAME=PATH")))?;
            validate_name("source", name)?;
            if out.iter().any(|o: &Source| o.name == name) {
                return Err(AgentError::Config(format!(
                    "--source {name} is given twice"
                )));
            }
            let path = absolute_clean(Path::new(path))
                .map_err(|why| AgentError::Config(format!("--source {name}={path}: {why}")))?;
            out.push(Source {
                name: name.to_string(),
                path,
            });
        }
        let mut roots = Vec::new();
        for r in restore_roots {
            let p = absolute_clean(r).map_err(|why| {
                AgentError::Config(format!("--restore-root {}: {why}", r.display()))
            })?;
            std::fs::create_dir_all(&p)
                .map_err(|e| AgentError::Config(format!("--restore-root {}: {e}", p.display())))?;
            roots.push(p);
        }
        Ok(RunConfig {
            state_dir,
            sources: out,
            restore_roots: roots,
            compression_level: lifeboat_core::codec::DEFAULT_LEVEL,
            controller: None,
            docker: docker::DockerConfig::default(),
            allow_probes: false,
        })
    }
}

/// An absolute path without `.` or `..` (relative paths are taken from the current directory).
pub fn absolute_clean(p: &Path) -> Result<PathBuf, String> {
    let abs = std::path::absolute(p).map_err(|e| e.to_string())?;
    if abs.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("must not contain `..`".into());
    }
    Ok(abs.components().collect())
}

/// Holds this task at `point` while `LIFEBOAT_PAUSE_AT` names it: writes the file that
/// `LIFEBOAT_PAUSE_FILE` names and waits until it is removed (the fault tests hold a
/// backup between its uploads and its commit, and a restore before it reads its tree,
/// with it). Unset, it does nothing.
pub async fn pause_point(point: &str) {
    if std::env::var("LIFEBOAT_PAUSE_AT").is_ok_and(|v| v == point)
        && let Some(file) = std::env::var_os("LIFEBOAT_PAUSE_FILE")
        && std::fs::write(&file, point).is_ok()
    {
        tracing::warn!(
            point,
            "LIFEBOAT_PAUSE_AT: holding here until the pause file is removed"
        );
        while Path::new(&file).exists() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
