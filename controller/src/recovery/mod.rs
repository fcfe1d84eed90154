//! Mass recovery: restore points (quarantine, last known good), the downtime model
//! (`estimate`), drills (`drill`), recovery plans and their runner (`plan`), and the
//! egress pacing plans use (`pacer`).

pub mod drill;
pub mod estimate;
pub mod pacer;
pub mod plan;

use std::collections::HashSet;

use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::Record;
use lifeboat_proto::pb::{self, JobState};
use prost::Message;

use crate::Controller;
use crate::catalog::{Catalog, JobRow, SampleRow, SnapshotRow};
use crate::error::ApiError;

/// The kind of a snapshot's source, from its name.
pub fn source_kind(source: &str) -> &'static str {
    if source.starts_with("image:") {
        "image"
    } else if source.starts_with("volume:") {
        "volume"
    } else {
        "path"
    }
}

/// A restore job for `snap`, with both signatures checked here first (the agent checks
/// them again). Where it goes (`target`, `volume`, mode) is left for the caller.
pub fn restore_job(ctl: &Controller, snap: &SnapshotRow) -> Result<pb::RestoreJob, ApiError> {
    let env = ctl.store.read_snapshot(&snap.id)?;
    // The agent key recorded at enrollment, or (if the catalog was rebuilt without the
    // agent's row) the key the controller's countersignature vouches for.
    let origin_key = ctl
        .catalog
        .agent(&snap.agent_id)?
        .map(|a| a.signing_key)
        .unwrap_or_else(|| env.public_key.clone());
    env.verify(&origin_key, &ctl.signer_public_key)
        .map_err(|e| {
            ApiError::FailedPrecondition(format!(
                "snapshot {} fails verification: {e}; it will not be restored",
                &snap.id[..12]
            ))
        })?;
    Ok(pb::RestoreJob {
        snapshot_id: snap.id.clone(),
        record: env.record,
        signature: env.signature,
        origin_public_key: origin_key,
        countersignature: env.countersignature,
        received_unix_ms: env.received_unix_ms,
        ..Default::default()
    })
}

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
    let tree = crate::agent_api::load_tree(ctl, record)?;
    let chunks: HashSet<ChunkId> = tree.chunk_ids().copied().collect();
    let all: Vec<ChunkId> = chunks.iter().copied().collect();
    for batch in all.chunks(4096) {
        let missing = ctl.catalog.unknown_chunks(batch)?;
        if let Some(first) = missing.first() {
            return Err(ApiError::FailedPrecondition(format!(
                "{} of its chunks are missing or known corrupt (first: {first})",
                missing.len()
            )));
        }
    }
    Ok(chunks)
}

/// A snapshot passed over as a restore point: its id and why.
pub type Skipped = (String, String);

/// The last known good restore point of one source: its newest snapshot received before
/// `before_ms` that is not quarantined (unless `allow_quarantined`), whose signatures
/// verify, and whose chunks are all present and not known corrupt. Snapshots passed over
/// are returned with the reason, newest first.
pub fn last_known_good(
    ctl: &Controller,
    agent_id: &str,
    source: &str,
    before_ms: i64,
    allow_quarantined: bool,
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
        let checked = restore_job(ctl, &snap).and_then(|job| {
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

/// Called when a restore job ends: its result becomes a sample for the downtime model,
/// and a drill that ran it gets its outcome.
pub fn restore_finished(catalog: &Catalog, row: &JobRow, now_ms: i64) {
    if let Err(e) = record_outcome(catalog, row, now_ms) {
        tracing::error!(job = %row.id, error = %e, "cannot record a restore's outcome");
    }
}

fn record_outcome(catalog: &Catalog, row: &JobRow, now_ms: i64) -> Result<(), ApiError> {
    let result = row
        .result
        .as_deref()
        .and_then(|r| pb::RestoreResult::decode(r).ok());
    let succeeded = row.state == JobState::Succeeded as i32;
    let total_ms = (row.finished_ms - row.started_ms).max(0) as u64;
    if succeeded && let Some(r) = &result {
        let job = pb::Job::decode(row.job.as_slice())
            .map_err(|e| ApiError::internal(format!("stored job {}: {e}", row.id)))?;
        if let Some(pb::job::Kind::Restore(rj)) = job.kind {
            let kind = Record::parse(&rj.record)
                .map(|r| r.source_kind)
                .unwrap_or_else(|_| "path".into());
            // Repair restores write what differs: their rate is not the device's.
            if r.mode != "repair" {
                catalog.insert_sample(
                    &row.id,
                    &SampleRow {
                        agent_id: row.agent_id.clone(),
                        kind,
                        bytes: r.bytes,
                        data_ms: r.data_ms,
                        total_ms,
                        shared: row.policy.starts_with(plan::JOB_TAG),
                    },
                    r.files,
                    now_ms,
                )?;
            }
        }
    }
    if let Some(mut d) = catalog.drill_by_job(&row.id)? {
        d.finished_ms = row.finished_ms;
        d.actual_ms = total_ms;
        d.result = row.result.clone();
        d.error = row.error.clone();
        d.state = if succeeded { "passed" } else { "failed" }.into();
        if !succeeded {
            tracing::error!(drill = %d.id, agent = %d.agent_id, source = %d.source, error = %d.error, "DRILL FAILED");
        } else {
            tracing::info!(drill = %d.id, agent = %d.agent_id, source = %d.source, estimate_ms = d.estimate_ms, actual_ms = d.actual_ms, "drill passed");
        }
        catalog.put_drill(&d)?;
    }
    Ok(())
}
