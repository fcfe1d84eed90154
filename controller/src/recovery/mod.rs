//! Mass recovery: restore points (quarantine, last known good), the downtime model
//! (`estimate`), drills (`drill`), recovery plans (`plan`) and their runner (`runner`), and what a
//! finished restore teaches them (`outcome`).

pub mod drill;
pub mod estimate;
pub mod model;
pub mod outcome;
pub mod plan;
pub mod runner;

use std::collections::HashSet;

use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::Record;
use lifeboat_proto::pb;

use crate::auth::Role;
use crate::catalog::SnapshotRow;
use crate::error::ApiError;
use crate::{Controller, restores, snapshots};

/// A restore point that passed every check.
pub struct Good {
    pub snap: SnapshotRow,
    pub job: pb::RestoreJob,
    /// Every chunk its tree references.
    pub chunks: HashSet<ChunkId>,
}

/// The chunks a snapshot's tree references (the tree's own chunks excluded), after
/// checking the tree against the record and that every chunk is indexed (not missing,
/// not found bad by scrub).
pub fn complete_chunks(ctl: &Controller, record: &Record) -> Result<HashSet<ChunkId>, ApiError> {
    match snapshots::referenced_chunks(ctl, record)? {
        (chunks, None) => Ok(chunks),
        (_, Some(i)) => Err(ApiError::FailedPrecondition(format!(
            "{} of its chunks are missing or known corrupt (first: {})",
            i.missing, i.first
        ))),
    }
}

/// A snapshot passed over as a restore point: its id and why.
pub type Skipped = (String, String);

/// The last known good restore point of one source: its newest snapshot received before
/// `before_ms` that is not quarantined (unless `allow_quarantined`), whose signatures
/// verify, and whose chunks are all present and not known corrupt. Snapshots passed over
/// are returned with the reason, newest first. With `from_copy`, only snapshots whose
/// copy in that copy store is complete count.
pub fn last_known_good(
    ctl: &Controller,
    agent_id: &str,
    source: &str,
    before_ms: i64,
    allow_quarantined: bool,
    from_copy: Option<&str>,
) -> Result<(Option<Good>, Vec<Skipped>), ApiError> {
    let mut skipped = Vec::new();
    for snap in ctl.catalog.snapshots(Some(agent_id), Some(source))? {
        if snap.received_ms >= before_ms {
            continue;
        }
        if snap.quarantined_ms != 0 && !allow_quarantined {
            skipped.push((snap.id.clone(), "quarantined".into()));
            continue;
        }
        if let Some(store) = from_copy
            && ctl.catalog.copy_of(store, &snap.id)?.is_none()
        {
            skipped.push((snap.id.clone(), format!("not copied to {store}")));
            continue;
        }
        let checked = restores::verified(ctl, &snap)
            .map_err(ApiError::from)
            .and_then(|job| {
                let record = Record::parse(&job.record)?;
                Ok((job, complete_chunks(ctl, &record)?))
            });
        match checked {
            Ok((job, chunks)) => return Ok((Some(Good { snap, job, chunks }), skipped)),
            Err(e) => skipped.push((snap.id.clone(), e.to_string())),
        }
    }
    Ok((None, skipped))
}

/// Marks as quarantined (or, with `clear`, releases) every snapshot received after
/// `after_ms` from the agent named `agent` or those `selector` picks: a restore point
/// after the compromise time is suspect. Only an admin lifts a quarantine, with a second
/// admin's approval when approvals are required. Returns the snapshots that changed.
pub fn quarantine(
    ctl: &Controller,
    operator: &str,
    role: Role,
    agent: &str,
    selector: &str,
    after_ms: i64,
    clear: bool,
) -> Result<Vec<SnapshotRow>, ApiError> {
    if clear {
        if role != Role::Admin {
            return Err(ApiError::PermissionDenied(
                "denied: only an admin may lift a quarantine".into(),
            ));
        }
        let target = format!(
            "{} after {}",
            if agent.is_empty() {
                format!("selector {selector:?}")
            } else {
                format!("agent {agent}")
            },
            crate::when(after_ms)
        );
        crate::approvals::gate(ctl, operator, "quarantine.lift", &target)?;
    }
    if after_ms <= 0 {
        return Err(ApiError::InvalidArgument(
            "--after is required: snapshots received after it become suspect".into(),
        ));
    }
    let named: Vec<String> = if agent.is_empty() {
        Vec::new()
    } else {
        vec![agent.to_string()]
    };
    let agents = crate::devices::select(ctl, &named, selector)?;
    let now = ctl.clock.now_ms();
    let mut changed = Vec::new();
    for a in &agents {
        changed.extend(ctl.catalog.quarantine(&a.id, after_ms, now, clear)?);
    }
    tracing::warn!(%operator, snapshots = changed.len(), clear, "quarantine changed");
    ctl.audit.ok(
        &format!("operator:{operator}"),
        if clear {
            "snapshot.unquarantine"
        } else {
            "snapshot.quarantine"
        },
        &agents
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        serde_json::json!({
            "after_unix_ms": after_ms,
            "snapshots": changed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        }),
    );
    Ok(changed)
}
