//! Restore jobs: the one builder of the restore jobs that operator restores, recovery plans
//! and drills send to agents, and the one check of where a restore may go.
//!
//! A restore job carries the snapshot's record with both signatures, checked here first
//! (the agent checks them again), and its destination. Device nodes, setuid/setgid and
//! capabilities come along only onto the machine the snapshot came from, or when an
//! operator asks; never into a drill's sandbox.

use std::path::{Component, Path};

use lifeboat_core::restore::Mode;
use lifeboat_core::snapshot::SourceKind;
use lifeboat_proto::pb;

use crate::auth::Role;
use crate::catalog::{AgentRow, JobRow, SnapshotRow};
use crate::error::{ApiError, DomainError, Kind};
use crate::{Controller, when};

/// Where a restore puts a snapshot on the agent that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A host path snapshot into a directory below one of the agent's restore roots.
    Dir {
        target: String,
        mode: Mode,
        delete_extra: bool,
    },
    /// An image snapshot back into the agent's Docker Engine.
    Image,
    /// A volume snapshot into a Docker volume.
    Volume { name: String, stop_containers: bool },
    /// A scratch place the agent chooses and removes afterwards (drills).
    Sandbox { probe: String, probe_timeout_s: u32 },
}

/// Why a restore cannot go where it was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{target:?} must be an absolute path without `.` or `..`")]
    NotNormalized { target: String },
    #[error("agent {agent} accepts no restores: start it with --restore-root PATH")]
    NoRestoreRoots { agent: String },
    #[error("{target} is outside agent {agent}'s restore roots ({})", roots.join(", "))]
    OutsideRoots {
        target: String,
        agent: String,
        roots: Vec<String>,
    },
    #[error("agent {agent} has no Docker Engine ({status})")]
    NoDocker { agent: String, status: String },
    #[error("agent {agent} does not restore into Docker; start it with --docker-restore")]
    DockerRestoreOff { agent: String },
    #[error("volume name {name:?}: {why}")]
    BadVolumeName { name: String, why: String },
    #[error("a {kind} snapshot cannot be restored {to}")]
    WrongKind { kind: SourceKind, to: &'static str },
}

/// Why a restore job was not built.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A signature does not verify: the snapshot is not restored, anywhere.
    #[error("snapshot {id} fails verification: {why}; it will not be restored")]
    Unverified { id: String, why: String },
    #[error(
        "snapshot {id} is quarantined (received {received}, after the compromise time); restore an earlier one (`lifeboat snapshots --agent {agent}`), or as an admin add --force"
    )]
    Quarantined {
        id: String,
        received: String,
        agent: String,
    },
    #[error("denied: only an admin may restore a quarantined snapshot (--force)")]
    ForceNeedsAdmin,
    #[error(
        "{0}; import the vendor's signed list (`lifeboat trust import`), restore a covered snapshot, or as an admin add --force"
    )]
    UntrustedImage(String),
    #[error("denied: only an admin may restore an image no vendor vouches for (--force)")]
    UntrustedForceNeedsAdmin,
    #[error("agent {0} is revoked: restore onto another agent")]
    AgentRevoked(String),
    #[error(
        "--to is for host path snapshots; a {kind} snapshot goes back into the agent's Docker Engine{}",
        volume_hint(*.kind)
    )]
    ToForDocker { kind: SourceKind },
    #[error("--mode repair is for host path snapshots; a {0} snapshot is restored whole")]
    RepairForDocker(SourceKind),
    /// An operator's destination refused, worded for `lifeboat restore`.
    #[error("{}", operator_words(.0))]
    OperatorTarget(TargetError),
    #[error(transparent)]
    Approval(#[from] crate::approvals::ApprovalError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl DomainError for TargetError {
    fn kind(&self) -> Kind {
        match self {
            TargetError::NotNormalized { .. }
            | TargetError::BadVolumeName { .. }
            | TargetError::WrongKind { .. } => Kind::InvalidArgument,
            TargetError::NoRestoreRoots { .. }
            | TargetError::OutsideRoots { .. }
            | TargetError::NoDocker { .. }
            | TargetError::DockerRestoreOff { .. } => Kind::FailedPrecondition,
        }
    }
}

impl DomainError for RestoreError {
    fn kind(&self) -> Kind {
        use RestoreError as E;
        match self {
            E::Target(t) => t.kind(),
            E::OperatorTarget(TargetError::NotNormalized { .. }) => Kind::InvalidArgument,
            E::OperatorTarget(t) => t.kind(),
            E::ToForDocker { .. } | E::RepairForDocker(_) => Kind::InvalidArgument,
            E::ForceNeedsAdmin | E::UntrustedForceNeedsAdmin => Kind::PermissionDenied,
            E::Unverified { .. }
            | E::Quarantined { .. }
            | E::AgentRevoked(_)
            | E::UntrustedImage(_) => Kind::FailedPrecondition,
            E::Approval(e) => e.kind(),
            E::Catalog(e) => e.kind(),
            E::Api(e) => e.kind(),
        }
    }
}

fn volume_hint(kind: SourceKind) -> &'static str {
    if kind == SourceKind::Volume {
        " (--volume NAME picks another volume)"
    } else {
        ""
    }
}

/// A refused destination as `lifeboat restore` words it: which flag, and what to do.
fn operator_words(e: &TargetError) -> String {
    match e {
        TargetError::NotNormalized { .. } => format!("--to {e}"),
        TargetError::OutsideRoots { .. } => format!("--to {e}; restore below one of them"),
        TargetError::NoDocker { .. } => format!("{e}; restore it onto an agent that has one"),
        _ => e.to_string(),
    }
}

/// The one check of a directory target: an absolute, normalized path strictly below one
/// of the agent's restore roots. (The agent checks again, on its own configuration.)
pub fn check_dir(agent: &AgentRow, target: &str) -> Result<(), TargetError> {
    let p = Path::new(target);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(TargetError::NotNormalized {
            target: target.into(),
        });
    }
    if agent.restore_roots.is_empty() {
        return Err(TargetError::NoRestoreRoots {
            agent: agent.name.clone(),
        });
    }
    if !agent
        .restore_roots
        .iter()
        .any(|r| p.starts_with(r) && p != Path::new(r))
    {
        return Err(TargetError::OutsideRoots {
            target: target.into(),
            agent: agent.name.clone(),
            roots: agent.restore_roots.clone(),
        });
    }
    Ok(())
}

/// The agent's Docker inventory as last reported (empty when it never reported one).
pub fn inventory(agent: &AgentRow) -> pb::DockerInventory {
    agent
        .docker
        .as_deref()
        .and_then(|b| prost::Message::decode(b).ok())
        .unwrap_or_else(|| pb::DockerInventory {
            status: "the agent has not reported a Docker inventory".into(),
            ..Default::default()
        })
}

/// The one check of a Docker target: an Engine, and restores into it allowed.
pub fn check_docker(agent: &AgentRow) -> Result<(), TargetError> {
    let inv = inventory(agent);
    if !inv.available {
        return Err(TargetError::NoDocker {
            agent: agent.name.clone(),
            status: inv.status,
        });
    }
    if !inv.restore_allowed {
        return Err(TargetError::DockerRestoreOff {
            agent: agent.name.clone(),
        });
    }
    Ok(())
}

/// Checks that a snapshot of `kind` can go to `destination` on `agent`.
pub fn check(
    agent: &AgentRow,
    kind: SourceKind,
    destination: &Destination,
) -> Result<(), TargetError> {
    match (kind, destination) {
        (_, Destination::Sandbox { .. }) => Ok(()),
        (SourceKind::Path, Destination::Dir { target, .. }) => check_dir(agent, target),
        (SourceKind::Image, Destination::Image) => check_docker(agent),
        (SourceKind::Volume, Destination::Volume { name, .. }) => {
            lifeboat_core::snapshot::validate_source(&format!("volume:{name}")).map_err(|e| {
                TargetError::BadVolumeName {
                    name: name.clone(),
                    why: e.to_string(),
                }
            })?;
            check_docker(agent)
        }
        (_, Destination::Dir { .. }) => Err(TargetError::WrongKind {
            kind,
            to: "into a directory",
        }),
        (_, Destination::Image) => Err(TargetError::WrongKind {
            kind,
            to: "as an image",
        }),
        (_, Destination::Volume { .. }) => Err(TargetError::WrongKind {
            kind,
            to: "into a volume",
        }),
    }
}

/// The restore job that brings `snap` back onto `onto` at `destination`: the destination
/// checked first, then both signatures. `keep_privileges` is the operator's explicit ask
/// (audited by the caller); onto the machine the snapshot came from they are kept anyway,
/// in a sandbox never.
pub fn job(
    ctl: &Controller,
    snap: &SnapshotRow,
    onto: &AgentRow,
    destination: Destination,
    keep_privileges: bool,
) -> Result<pb::RestoreJob, RestoreError> {
    check(onto, SourceKind::of(&snap.source), &destination)?;
    let mut job = verified(ctl, snap)?;
    job.keep_privileges = keep_privileges || onto.id == snap.agent_id;
    match destination {
        Destination::Dir {
            target,
            mode,
            delete_extra,
        } => {
            job.target = target;
            job.mode = mode.name().into();
            job.delete_extra = delete_extra;
        }
        Destination::Image => {}
        Destination::Volume {
            name,
            stop_containers,
        } => {
            job.volume = name;
            job.stop_containers = stop_containers;
        }
        Destination::Sandbox {
            probe,
            probe_timeout_s,
        } => {
            job.sandbox = true;
            job.probe = probe;
            job.probe_timeout_seconds = probe_timeout_s;
            job.keep_privileges = false;
        }
    }
    Ok(job)
}

/// A restore job for `snap` without a destination, with both signatures checked: the
/// record, as a restore point (`recovery::last_known_good`) is judged by it. An envelope
/// verified lately at the same object version under the same agent key is not read again
/// (`crate::checked`).
pub fn verified(ctl: &Controller, snap: &SnapshotRow) -> Result<pb::RestoreJob, RestoreError> {
    let recorded_key = ctl.catalog.agent(&snap.agent_id)?.map(|a| a.signing_key);
    if let Some(key) = &recorded_key
        && let Some(job) = ctl.checked.envelope(&snap.id, &snap.envelope_version, key)
    {
        return Ok(job);
    }
    let env = ctl.store.read_snapshot(&snap.id)?;
    // The agent key recorded at enrollment, or (if the catalog was rebuilt without the
    // agent's row) the key the controller's countersignature vouches for.
    let origin_key = recorded_key
        .clone()
        .unwrap_or_else(|| env.public_key.clone());
    env.verify(&origin_key, &ctl.signer_public_key)
        .map_err(|e| RestoreError::Unverified {
            id: snap.id[..12].to_string(),
            why: e.to_string(),
        })?;
    let job = pb::RestoreJob {
        snapshot_id: snap.id.clone(),
        record: env.record,
        signature: env.signature,
        origin_public_key: origin_key,
        countersignature: env.countersignature,
        received_unix_ms: env.received_unix_ms,
        direct_from_store: ctl.store.direct_reads(),
        ..Default::default()
    };
    if recorded_key.is_some() {
        ctl.checked
            .put_envelope(&snap.id, &snap.envelope_version, &job);
    }
    Ok(job)
}

/// What an operator asks of `lifeboat restore`: one snapshot onto one agent.
pub struct OperatorAsk {
    /// A host path snapshot's directory (`--to`); empty for images and volumes.
    pub target: String,
    pub mode: Mode,
    pub delete_extra: bool,
    /// Another volume to restore a volume snapshot into; empty for its own.
    pub volume: String,
    pub stop_containers: bool,
    pub keep_privileges: bool,
    /// Restore a quarantined snapshot anyway: admins only, approved when approvals are on.
    pub force: bool,
}

/// Submits an operator's restore of `snap` onto `onto`, after the quarantine, the agent's
/// standing and the destination are checked, each refusal naming what to do instead.
/// Audited: a forced quarantined restore, a refusal after the destination was accepted
/// (an unverifiable snapshot), and the start.
pub fn for_operator(
    ctl: &Controller,
    operator: &str,
    role: Role,
    snap: &SnapshotRow,
    onto: &AgentRow,
    ask: OperatorAsk,
) -> Result<JobRow, RestoreError> {
    let actor = format!("operator:{operator}");
    if snap.quarantined_ms != 0 {
        if !ask.force {
            return Err(RestoreError::Quarantined {
                id: snap.id[..12].to_string(),
                received: when(snap.received_ms),
                agent: snap.agent_name.clone(),
            });
        }
        if role != Role::Admin {
            return Err(RestoreError::ForceNeedsAdmin);
        }
        crate::approvals::gate(ctl, operator, "restore.force", &snap.id)?;
        ctl.audit.ok(
            &actor,
            "restore.quarantined_forced",
            &snap.id,
            serde_json::json!({ "agent": onto.name }),
        );
    }
    if let Some(why) = crate::vendors::untrusted(ctl, snap)? {
        if !ask.force {
            ctl.audit.ok(
                &actor,
                "restore.refused",
                &snap.id,
                serde_json::json!({ "reason": why }),
            );
            return Err(RestoreError::UntrustedImage(why));
        }
        if role != Role::Admin {
            return Err(RestoreError::UntrustedForceNeedsAdmin);
        }
        ctl.audit.ok(
            &actor,
            "restore.untrusted_forced",
            &snap.id,
            serde_json::json!({ "agent": onto.name, "image": snap.source_path }),
        );
    }
    if onto.revoked_ms != 0 {
        return Err(RestoreError::AgentRevoked(onto.name.clone()));
    }
    let kind = SourceKind::of(&snap.source);
    let destination = match kind {
        SourceKind::Path => Destination::Dir {
            target: ask.target.clone(),
            mode: ask.mode,
            delete_extra: ask.delete_extra,
        },
        _ if !ask.target.is_empty() => return Err(RestoreError::ToForDocker { kind }),
        _ if ask.mode == Mode::Repair => return Err(RestoreError::RepairForDocker(kind)),
        SourceKind::Image => Destination::Image,
        SourceKind::Volume => Destination::Volume {
            name: if ask.volume.is_empty() {
                snap.source.trim_start_matches("volume:").to_string()
            } else {
                ask.volume.clone()
            },
            stop_containers: ask.stop_containers,
        },
    };
    let detail = match &destination {
        Destination::Image => format!("snapshot {} ({}) into Docker", &snap.id[..12], snap.source),
        Destination::Volume { name, .. } => format!("snapshot {} to volume {name}", &snap.id[..12]),
        _ => format!("snapshot {} to {}", &snap.id[..12], ask.target),
    };
    let restore = match job(ctl, snap, onto, destination, ask.keep_privileges) {
        Ok(r) => r,
        Err(RestoreError::Target(t)) => return Err(RestoreError::OperatorTarget(t)),
        Err(e) => {
            // Refused at once, naming why, rather than sent to an agent that would refuse it.
            ctl.audit.ok(
                &actor,
                "restore.refused",
                &snap.id,
                serde_json::json!({ "reason": e.to_string() }),
            );
            return Err(e);
        }
    };
    let row = ctl.jobs.submit_restore(onto, detail, "", restore)?;
    tracing::info!(%operator, agent = %onto.name, snapshot = %snap.id, job = %row.id, "restore requested");
    ctl.audit.ok(
        &actor,
        "restore.start",
        &snap.id,
        serde_json::json!({ "job": row.id, "agent": onto.name, "target": ask.target, "mode": ask.mode.name(), "delete_extra": ask.delete_extra, "keep_privileges": ask.keep_privileges }),
    );
    Ok(row)
}
