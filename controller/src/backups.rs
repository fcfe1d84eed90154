//! Backups: which sources a request means on an agent, and the one builder of the backup
//! jobs that operators and the scheduler start (with the chunks scrub found bad, which the
//! next backup that holds them stores again).

use lifeboat_proto::pb;

use crate::Controller;
use crate::catalog::{AgentRow, CatalogError, JobRow};
use crate::error::{ApiError, DomainError, Kind, core_kind};
use crate::policy::{self, Consistency};

/// Why a backup was not started or an upload not taken.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "agent {0} has reported no host path sources; name an image:REF or volume:NAME, or start it with --source NAME=PATH"
    )]
    NoHostPaths(String),
    #[error("agent {agent} cannot back up {what}: {status}")]
    NoDocker {
        agent: String,
        what: &'static str,
        status: String,
    },
    #[error(
        "agent {agent} has no {what} {name:?} (as of its inventory of {as_of}; agents report changes within 30 s); `lifeboat agents --inventory {agent}` lists them"
    )]
    NotInInventory {
        agent: String,
        what: &'static str,
        name: String,
        as_of: String,
    },
    #[error("agent {agent} has no source {name:?}; it has: {has}")]
    NoSource {
        agent: String,
        name: String,
        has: String,
    },
    #[error("agent {0} has nothing to back up for this request")]
    NothingToBackUp(String),
    #[error("agent {0} is revoked: it cannot back up")]
    AgentRevoked(String),
    #[error("--consistency hook needs --hook-container and --hook-before and/or --hook-after")]
    HookWithoutCommands,
    #[error(
        "an upload names the backup job it belongs to (request metadata {:?}); upgrade the agent",
        lifeboat_proto::JOB_METADATA
    )]
    UploadWithoutJob,
    #[error("job {job:?} is not a backup job of agent {agent}")]
    NotItsBackup { job: String, agent: String },
    #[error("backup job {0} is not running: uploads are taken only while their job runs")]
    NotRunning(String),
    #[error("agent {0} was revoked")]
    Revoked(String),
    #[error(
        "backup job {job} reached its upload quota of {} ({} uploaded, {} more in this message): raise the policy's upload_quota or the controller's --upload-quota if the source really grew",
        lifeboat_core::units::bytes(*.quota),
        lifeboat_core::units::bytes(*.used),
        lifeboat_core::units::bytes(*.more)
    )]
    QuotaExceeded {
        job: String,
        quota: u64,
        used: u64,
        more: u64,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A source name that does not validate.
    #[error(transparent)]
    Core(#[from] lifeboat_core::Error),
    /// The store's and the policies' errors (not typed by their own domains yet).
    #[error(transparent)]
    Other(#[from] ApiError),
}

impl DomainError for BackupError {
    fn kind(&self) -> Kind {
        use BackupError as E;
        match self {
            E::NoHostPaths(_)
            | E::NoDocker { .. }
            | E::NothingToBackUp(_)
            | E::AgentRevoked(_)
            | E::UploadWithoutJob
            | E::NotRunning(_) => Kind::FailedPrecondition,
            E::NotInInventory { .. } | E::NoSource { .. } => Kind::NotFound,
            E::HookWithoutCommands => Kind::InvalidArgument,
            E::NotItsBackup { .. } | E::Revoked(_) => Kind::PermissionDenied,
            E::QuotaExceeded { .. } => Kind::QuotaExceeded,
            E::Catalog(e) => e.kind(),
            E::Core(e) => core_kind(e),
            E::Other(e) => e.kind(),
        }
    }
}

/// What an operator asked to back up: source names and the `--all-*` flags.
#[derive(Debug, Clone, Default)]
pub struct SourceRequest {
    pub sources: Vec<String>,
    pub all_images: bool,
    pub all_volumes: bool,
}

/// How one backup job runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub full_reread: bool,
    /// None: the agent's choice (pause when a running container uses the volume).
    pub consistency: Option<Consistency>,
    pub hook: Option<pb::Hook>,
    /// Bytes per second the agent may send (0: unlimited).
    pub bandwidth: u64,
}

/// The sources a backup request names, checked against what the agent reported: host
/// path names, `image:REF` (a tag or an id of an image in its Engine), `volume:NAME`, and
/// `--all-images` / `--all-volumes`. No names and no flags: all its host paths.
pub fn resolve_sources(agent: &AgentRow, req: &SourceRequest) -> Result<Vec<String>, BackupError> {
    let paths: Vec<&str> = agent.sources.iter().map(|(n, _, _)| n.as_str()).collect();
    let inv = crate::restores::inventory(agent);
    let mut out: Vec<String> = Vec::new();
    if req.sources.is_empty() && !req.all_images && !req.all_volumes {
        if paths.is_empty() {
            return Err(BackupError::NoHostPaths(agent.name.clone()));
        }
        out.extend(paths.iter().map(|s| s.to_string()));
    }
    let docker = |what: &'static str| -> Result<(), BackupError> {
        if inv.available {
            Ok(())
        } else {
            Err(BackupError::NoDocker {
                agent: agent.name.clone(),
                what,
                status: inv.status.clone(),
            })
        }
    };
    let not_in_inventory = |what: &'static str, name: &str| BackupError::NotInInventory {
        agent: agent.name.clone(),
        what,
        name: name.to_string(),
        as_of: crate::when(inv.reported_unix_ms),
    };
    if req.all_images {
        docker("images")?;
        out.extend(inv.images.iter().map(policy::image_source));
    }
    if req.all_volumes {
        docker("volumes")?;
        out.extend(inv.volumes.iter().map(|v| format!("volume:{}", v.name)));
    }
    for s in &req.sources {
        lifeboat_core::snapshot::validate_source(s)?;
        if let Some(r) = s.strip_prefix("image:") {
            docker("images")?;
            let bare = r.trim_start_matches("sha256:");
            let found = inv.images.iter().any(|i| {
                i.repo_tags.iter().any(|t| t == r)
                    || i.id == r
                    || (bare.len() >= 12 && i.id.trim_start_matches("sha256:").starts_with(bare))
            });
            if !found {
                return Err(not_in_inventory("image", r));
            }
        } else if let Some(v) = s.strip_prefix("volume:") {
            docker("volumes")?;
            if !inv.volumes.iter().any(|x| x.name == v) {
                return Err(not_in_inventory("volume", v));
            }
        } else if !paths.contains(&s.as_str()) {
            return Err(BackupError::NoSource {
                agent: agent.name.clone(),
                name: s.clone(),
                has: paths.join(", "),
            });
        }
        out.push(s.clone());
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|s| seen.insert(s.clone()));
    if out.is_empty() {
        return Err(BackupError::NothingToBackUp(agent.name.clone()));
    }
    Ok(out)
}

/// The chunks scrub found bad that no backup has stored again yet, for backup jobs.
fn repair_chunks(ctl: &Controller) -> Result<Vec<Vec<u8>>, CatalogError> {
    Ok(ctl
        .catalog
        .unhealed_chunks(100_000)?
        .iter()
        .map(|id| id.as_bytes().to_vec())
        .collect())
}

/// An operator's backup of `agent` (`lifeboat backup`): the agent's standing first, then
/// the sources it names and the consistency it asks for; audited.
pub fn for_operator(
    ctl: &Controller,
    operator: &str,
    agent: &AgentRow,
    sources: &SourceRequest,
    options: Options,
) -> Result<JobRow, BackupError> {
    if agent.revoked_ms != 0 {
        return Err(BackupError::AgentRevoked(agent.name.clone()));
    }
    let sources = resolve_sources(agent, sources)?;
    if options.consistency == Some(Consistency::Hook)
        && options
            .hook
            .as_ref()
            .is_none_or(|h| h.before.is_empty() && h.after.is_empty())
    {
        return Err(BackupError::HookWithoutCommands);
    }
    let row = submit(ctl, agent, sources, options, "")?;
    tracing::info!(%operator, agent = %agent.name, job = %row.id, "backup requested");
    ctl.audit.ok(
        &format!("operator:{operator}"),
        "backup.start",
        &agent.name,
        serde_json::json!({ "job": row.id, "sources": row.detail }),
    );
    Ok(row)
}

/// Queues a backup of `sources` on `agent`; `policy` is the scheduling policy's name, or
/// empty for an operator's backup.
pub fn submit(
    ctl: &Controller,
    agent: &AgentRow,
    sources: Vec<String>,
    options: Options,
    policy: &str,
) -> Result<JobRow, BackupError> {
    if agent.revoked_ms != 0 {
        return Err(BackupError::AgentRevoked(agent.name.clone()));
    }
    let detail = if policy.is_empty() {
        format!("sources {}", sources.join(","))
    } else {
        format!("policy {policy}: sources {}", sources.join(","))
    };
    let repair = repair_chunks(ctl)?;
    let row = ctl
        .jobs
        .submit(agent, "backup", detail, policy, |id| pb::Job {
            job_id: id.to_string(),
            kind: Some(pb::job::Kind::Backup(pb::BackupJob {
                sources,
                full_reread: options.full_reread,
                consistency: options
                    .consistency
                    .map_or(String::new(), |c| c.as_str().to_string()),
                hook: options.hook,
                repair_chunks: repair,
                bandwidth_bytes_per_sec: options.bandwidth,
            })),
        })?;
    Ok(row)
}

/// What one upload stream may store: the running backup job of `agent` it names, and how
/// many bytes that job may upload (its policy's `upload_quota`, else the controller's
/// `--upload-quota`). Uploads outside a running backup job of the agent are refused and
/// audited: a compromised agent cannot fill the store outside the jobs it is given.
pub fn upload_allowance(
    ctl: &Controller,
    agent: &AgentRow,
    job_id: &str,
) -> Result<u64, BackupError> {
    let refuse = |e: BackupError| {
        ctl.audit.refused(
            &format!("agent:{}", agent.name),
            "chunks.upload",
            job_id,
            &e.to_string(),
        );
        e
    };
    if job_id.is_empty() {
        return Err(refuse(BackupError::UploadWithoutJob));
    }
    let job = ctl
        .jobs
        .row(job_id)?
        .filter(|j| j.agent_id == agent.id && j.kind == "backup")
        .ok_or_else(|| {
            refuse(BackupError::NotItsBackup {
                job: job_id.to_string(),
                agent: agent.name.clone(),
            })
        })?;
    if job.state != pb::JobState::Running as i32 {
        return Err(refuse(BackupError::NotRunning(job.id.clone())));
    }
    let from_policy = if job.policy.is_empty() {
        0
    } else {
        policy::policies(ctl)?
            .iter()
            .find(|p| p.name == job.policy)
            .map_or(0, |p| p.upload_quota)
    };
    Ok(if from_policy > 0 {
        from_policy
    } else {
        ctl.upload_quota
    })
}

/// Counts a message of `bytes` uploaded by `agent` for backup job `job_id` against its
/// `quota`: refused (and audited) past it, and refused when the agent was revoked while
/// its upload streams.
pub fn charge_upload(
    ctl: &Controller,
    agent: &AgentRow,
    job_id: &str,
    bytes: u64,
    quota: u64,
) -> Result<(), BackupError> {
    if ctl
        .catalog
        .agent(&agent.id)?
        .is_none_or(|a| a.revoked_ms != 0)
    {
        return Err(BackupError::Revoked(agent.name.clone()));
    }
    ctl.jobs
        .charge_upload(job_id, bytes, quota)
        .map_err(|used| {
            let e = BackupError::QuotaExceeded {
                job: job_id.to_string(),
                quota,
                used,
                more: bytes,
            };
            ctl.audit.refused(
                &format!("agent:{}", agent.name),
                "chunks.upload",
                job_id,
                &e.to_string(),
            );
            e
        })
}

/// Stores chunks `agent_id` uploaded (each verified against its id by the store) and
/// records that the agent holds them. Blocking.
pub fn store_chunks(
    ctl: &Controller,
    agent_id: &str,
    chunks: &[(lifeboat_core::ChunkId, &[u8])],
) -> Result<crate::store::PutSummary, ApiError> {
    let sum = ctl.store.put_batch(chunks)?;
    let ids: Vec<_> = chunks.iter().map(|(id, _)| *id).collect();
    ctl.catalog.own_chunks(agent_id, &ids)?;
    Ok(sum)
}

/// Which of `ids` agent `agent` must upload: those the store lacks, and, unless the fleet
/// trusts itself (`--dedup-scope fleet`), those the agent is not known to hold. So an
/// agent learns nothing about other machines' data from the answer: a chunk held only for
/// others is reported missing, uploaded (proving the agent has it), verified and dropped
/// as a duplicate. Blocking.
pub fn missing_for(
    ctl: &Controller,
    agent: &AgentRow,
    ids: &[lifeboat_core::ChunkId],
) -> Result<Vec<lifeboat_core::ChunkId>, ApiError> {
    if ctl.fleet_dedup {
        return ctl.store.missing(ids);
    }
    ctl.store.missing_for_agent(&agent.id, ids)
}

/// Records, once at start, the chunks each agent's snapshots reference, for a catalog
/// made before [`missing_for`] knew who holds what (otherwise every agent would upload its
/// whole data once more to prove it). Returns the snapshots read. Blocking.
pub fn backfill_ownership(ctl: &Controller) -> Result<usize, ApiError> {
    if ctl.catalog.any_owned_chunks()? {
        return Ok(0);
    }
    let snaps = ctl.catalog.snapshots(None, None)?;
    for s in &snaps {
        let record = match ctl
            .store
            .read_snapshot(&s.id)
            .and_then(|env| Ok(lifeboat_core::snapshot::Record::parse(&env.record)?))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(snapshot = %s.id, error = %e, "cannot read a snapshot to record its chunks' holder");
                continue;
            }
        };
        // A snapshot whose tree is gone (a damaged pack) holds nothing to record; `verify`
        // names it.
        let chunks = match crate::snapshots::referenced_chunks(ctl, &record) {
            Ok((chunks, _)) => chunks,
            Err(e) => {
                tracing::warn!(snapshot = %s.id, error = %e, "cannot read a snapshot's tree to record its chunks' holder");
                continue;
            }
        };
        let mut ids: Vec<_> = chunks.iter().copied().collect();
        ids.extend(record.tree_chunks()?);
        ctl.catalog.own_chunks(&s.agent_id, &ids)?;
    }
    Ok(snaps.len())
}
