//! Jobs and restore results.

use lifeboat_proto::pb::{self, JobState};

use super::*;

pub const JOB_HEADER: &[&str] = &["ID", "KIND", "AGENT", "STATE", "CREATED", "DETAIL", "ERROR"];

pub fn job_row(j: &pb::JobInfo) -> Vec<String> {
    vec![
        j.id.clone(),
        j.kind.clone(),
        j.agent_name.clone(),
        state_name(j.state).into(),
        time(j.created_unix_ms),
        j.detail.clone(),
        j.error.clone(),
    ]
}

pub fn state_name(s: i32) -> &'static str {
    match JobState::try_from(s).unwrap_or(JobState::Unspecified) {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Interrupted => "interrupted",
        JobState::Unspecified => "unknown",
    }
}

/// A failed job's refusal as scripts see it: `missing_chunks`, `store_full`,
/// `quota_exceeded`, or null.
fn refusal_name(r: i32) -> Option<&'static str> {
    match pb::Refusal::try_from(r).ok()? {
        pb::Refusal::Unspecified => None,
        pb::Refusal::MissingChunks => Some("missing_chunks"),
        pb::Refusal::StoreFull => Some("store_full"),
        pb::Refusal::QuotaExceeded => Some("quota_exceeded"),
    }
}

pub fn job_json(j: &pb::JobInfo) -> serde_json::Value {
    let p = j.progress.clone().unwrap_or_default();
    serde_json::json!({
        "id": j.id,
        "kind": j.kind,
        "agent": j.agent_name,
        "agent_id": j.agent_id,
        "state": state_name(j.state),
        "detail": j.detail,
        "created": time(j.created_unix_ms),
        "started": time(j.started_unix_ms),
        "finished": time(j.finished_unix_ms),
        "created_unix_ms": j.created_unix_ms,
        "started_unix_ms": j.started_unix_ms,
        "finished_unix_ms": j.finished_unix_ms,
        "error": j.error,
        "snapshot_ids": j.snapshot_ids,
        "refusal": refusal_name(j.refusal),
        "restore": j.restore.as_ref().map(restore_json),
        "warnings": j.backup.as_ref().map(|b| b.warnings.clone()).unwrap_or_default(),
        "more_warnings": j.backup.as_ref().map_or(0, |b| b.more_warnings),
        "progress": {
            "phase": p.phase,
            "files_done": p.files_done,
            "files_total": p.files_total,
            "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total,
            "bytes_uploaded": p.bytes_uploaded,
            "chunks_new": p.chunks_new,
            "chunks_reused": p.chunks_reused,
        },
    })
}

pub fn restore_json(r: &pb::RestoreResult) -> serde_json::Value {
    serde_json::json!({
        "mode": r.mode,
        "files": r.files,
        "bytes": r.bytes,
        "bytes_written": r.bytes_written,
        "bytes_fetched": r.bytes_fetched,
        "unchanged": r.unchanged,
        "modified": r.modified,
        "missing": r.missing,
        "planted": r.planted,
        "skipped": r.skipped,
        "extras_removed": r.extras_removed,
        "phases_ms": { "setup": r.setup_ms, "data": r.data_ms, "finish": r.finish_ms, "probe": r.probe_ms },
        "probe": r.probed.then(|| serde_json::json!({ "exit": r.probe_exit, "output": r.probe_output })),
        "sandbox": (!r.sandbox.is_empty()).then_some(&r.sandbox),
    })
}
