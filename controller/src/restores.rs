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

use crate::Controller;
use crate::catalog::{AgentRow, SnapshotRow};
use crate::error::ApiError;

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
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<RestoreError> for ApiError {
    fn from(e: RestoreError) -> ApiError {
        match e {
            RestoreError::Target(t) => t.into(),
            RestoreError::Unverified { .. } => ApiError::FailedPrecondition(e.to_string()),
            RestoreError::Api(a) => a,
        }
    }
}

impl From<TargetError> for ApiError {
    fn from(e: TargetError) -> ApiError {
        match e {
            TargetError::NotNormalized { .. }
            | TargetError::BadVolumeName { .. }
            | TargetError::WrongKind { .. } => ApiError::InvalidArgument(e.to_string()),
            _ => ApiError::FailedPrecondition(e.to_string()),
        }
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
/// record, as a restore point (`recovery::last_known_good`) is judged by it.
pub fn verified(ctl: &Controller, snap: &SnapshotRow) -> Result<pb::RestoreJob, RestoreError> {
    let env = ctl.store.read_snapshot(&snap.id)?;
    // The agent key recorded at enrollment, or (if the catalog was rebuilt without the
    // agent's row) the key the controller's countersignature vouches for.
    let origin_key = ctl
        .catalog
        .agent(&snap.agent_id)?
        .map(|a| a.signing_key)
        .unwrap_or_else(|| env.public_key.clone());
    env.verify(&origin_key, &ctl.signer_public_key)
        .map_err(|e| RestoreError::Unverified {
            id: snap.id[..12].to_string(),
            why: e.to_string(),
        })?;
    Ok(pb::RestoreJob {
        snapshot_id: snap.id.clone(),
        record: env.record,
        signature: env.signature,
        origin_public_key: origin_key,
        countersignature: env.countersignature,
        received_unix_ms: env.received_unix_ms,
        direct_from_store: ctl.store.direct_reads(),
        ..Default::default()
    })
}
