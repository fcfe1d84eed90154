//! What a finished restore teaches: its timings become a sample for the downtime model
//! (`estimate`), and the drill that ran it gets its outcome. `Jobs` calls
//! [`restore_finished`] when a restore job ends.

use lifeboat_core::snapshot::Record;
use lifeboat_proto::pb::{self, JobState};
use lifeboat_proto::states::DrillState;
use prost::Message;

use super::plan;
use crate::catalog::{Catalog, JobRow, SampleRow};
use crate::error::ApiError;

/// Called when a restore job ends: its result becomes a sample for the downtime model,
/// and a drill that ran it gets its outcome. `waited_ms`: how long it waited for the
/// controller to serve it (`admission`), which is the queue's, not the restore's.
pub fn restore_finished(catalog: &Catalog, row: &JobRow, now_ms: i64, waited_ms: u64) {
    if let Err(e) = record_outcome(catalog, row, now_ms, waited_ms) {
        tracing::error!(job = %row.id, error = %e, "cannot record a restore's outcome");
    }
}

fn record_outcome(
    catalog: &Catalog,
    row: &JobRow,
    now_ms: i64,
    waited_ms: u64,
) -> Result<(), ApiError> {
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
                        // The wait is mostly in the agent's setup (its first request
                        // reads the tree), which the model's fixed part counts.
                        total_ms: total_ms.saturating_sub(waited_ms),
                        shared: row.policy.starts_with(plan::JOB_TAG)
                            || row.policy == super::drill::CALIBRATION_TAG,
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
        d.state = if succeeded {
            DrillState::Passed
        } else {
            DrillState::Failed
        }
        .into();
        if !succeeded {
            tracing::error!(drill = %d.id, agent = %d.agent_id, source = %d.source, error = %d.error, "DRILL FAILED");
        } else if d.over_rto() {
            tracing::warn!(drill = %d.id, agent = %d.agent_id, source = %d.source, rto_ms = d.rto_ms, actual_ms = d.actual_ms, "DRILL OVER RTO: the restore works but took longer than the device's recovery time objective");
        } else {
            tracing::info!(drill = %d.id, agent = %d.agent_id, source = %d.source, estimate_ms = d.estimate_ms, actual_ms = d.actual_ms, "drill passed");
        }
        catalog.put_drill(&d)?;
    }
    Ok(())
}
