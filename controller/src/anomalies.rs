//! Ransomware signals at backup time: every new snapshot is compared with the snapshot of
//! the same source before it (`lifeboat_core::anomaly`), after its commit, by the
//! `anomalies` worker. A score at or above the threshold of a policy covering the source
//! (the lowest, when several do; 60 by default) makes the snapshot suspect: audited, logged
//! and counted in `/metrics`; a policy with `quarantine = true` quarantines it and every
//! later snapshot of the device at once, so no recovery plan picks them.

use std::time::{Duration, Instant};

use lifeboat_core::anomaly::{self, Report};
use lifeboat_core::snapshot::{Record, SourceKind};
use lifeboat_proto::pb;

use crate::Controller;
use crate::catalog::{AnomalyRow, SnapshotRow};
use crate::error::ApiError;
use crate::policy::{self, DEFAULT_ANOMALY_THRESHOLD};

/// Who the audit log names for what this module does on its own.
const ACTOR: &str = "controller:anomalies";

/// The worker: analyzes snapshots not analyzed yet, oldest first, until the budget is spent.
pub fn catch_up(ctl: &Controller, budget: Duration) -> Result<(), ApiError> {
    let began = Instant::now();
    while began.elapsed() < budget {
        let pending = ctl.catalog.snapshots_without_anomaly_report(16)?;
        if pending.is_empty() {
            return Ok(());
        }
        for id in pending {
            let snap = ctl.catalog.find_snapshot(&id)?;
            let (row, quarantine) = match analyze(ctl, &snap) {
                Ok(judged) => judged,
                Err(e) => {
                    // Recorded as unanalyzable (score 0, the error as its reason) so the
                    // worker moves on; `lifeboat anomalies --all` shows it.
                    tracing::warn!(snapshot = %id, error = %e, "could not analyze the snapshot for ransomware signals");
                    let report = Report {
                        reasons: vec![format!("not analyzed: {e}")],
                        ..Report::default()
                    };
                    let row = AnomalyRow {
                        snapshot_id: id.clone(),
                        parent: String::new(),
                        score: 0,
                        threshold: DEFAULT_ANOMALY_THRESHOLD,
                        suspect: false,
                        analyzed_ms: ctl.clock.now_ms(),
                        report: serde_json::to_string(&report).unwrap_or_default(),
                    };
                    (row, false)
                }
            };
            ctl.catalog.insert_anomaly(&row)?;
            if row.suspect {
                flag(ctl, &snap, &row, quarantine)?;
            }
            if began.elapsed() >= budget {
                break;
            }
        }
    }
    Ok(())
}

/// The snapshot's report, and whether a covering policy quarantines it if suspect.
fn analyze(ctl: &Controller, snap: &SnapshotRow) -> Result<(AnomalyRow, bool), ApiError> {
    let (threshold, quarantine) = judged_by(ctl, snap)?;
    let record = Record::parse(&ctl.store.read_snapshot(&snap.id)?.record)?;
    let mut row = AnomalyRow {
        snapshot_id: snap.id.clone(),
        parent: String::new(),
        score: 0,
        threshold,
        suspect: false,
        analyzed_ms: ctl.clock.now_ms(),
        report: String::new(),
    };
    // An image is a vendor's build, not a machine's files being encrypted.
    if SourceKind::of(&snap.source) == SourceKind::Image {
        row.report = serde_json::to_string(&Report::default()).unwrap_or_default();
        return Ok((row, quarantine));
    }
    let after = crate::snapshots::load_tree(ctl, &record)?;
    let parent = ctl
        .catalog
        .snapshots(Some(&snap.agent_id), Some(&snap.source))?
        .into_iter()
        .find(|s| (s.received_ms, &s.id) < (snap.received_ms, &snap.id));
    let before = match &parent {
        Some(p) => {
            let r = Record::parse(&ctl.store.read_snapshot(&p.id)?.record)?;
            Some(crate::snapshots::load_tree(ctl, &r)?)
        }
        None => None,
    };
    let mut stored = |ids: &[lifeboat_core::ChunkId]| -> Vec<Option<u64>> {
        match ctl.catalog.chunk_places(ids) {
            Ok(places) => places
                .into_iter()
                .map(|p| p.map(|p| p.length as u64))
                .collect(),
            Err(_) => vec![None; ids.len()],
        }
    };
    let report = anomaly::analyze(
        before.as_ref().map(|t| t.entries.as_slice()),
        &after.entries,
        &mut stored,
        snap.bytes,
        snap.bytes_new,
    );
    row.parent = parent.map(|p| p.id).unwrap_or_default();
    row.score = report.score;
    row.suspect = report.score >= threshold;
    row.report = serde_json::to_string(&report)
        .map_err(|e| ApiError::internal(format!("encoding an anomaly report: {e}")))?;
    Ok((row, quarantine))
}

/// The threshold the snapshot is judged by, and whether a suspect one is quarantined: the
/// strictest of the policies covering its source.
fn judged_by(ctl: &Controller, snap: &SnapshotRow) -> Result<(u32, bool), ApiError> {
    let Some(agent) = ctl.catalog.agent(&snap.agent_id)? else {
        return Ok((DEFAULT_ANOMALY_THRESHOLD, false));
    };
    let covering: Vec<_> = policy::policies(ctl)?
        .into_iter()
        .filter(|p| policy::covers(p, &agent, &snap.source))
        .collect();
    let threshold = covering
        .iter()
        .map(|p| p.anomalies.threshold)
        .min()
        .unwrap_or(DEFAULT_ANOMALY_THRESHOLD);
    Ok((threshold, covering.iter().any(|p| p.anomalies.quarantine)))
}

/// A suspect snapshot: logged, audited, and quarantined with everything after it when a
/// covering policy says so.
fn flag(
    ctl: &Controller,
    snap: &SnapshotRow,
    row: &AnomalyRow,
    quarantine: bool,
) -> Result<(), ApiError> {
    let report: Report = serde_json::from_str(&row.report).unwrap_or_default();
    tracing::warn!(
        snapshot = %snap.id,
        device = %snap.agent_name,
        source = %snap.source,
        score = row.score,
        reasons = %report.reasons.join("; "),
        "SUSPECT SNAPSHOT: ransomware signals"
    );
    ctl.audit.ok(
        ACTOR,
        "snapshot.suspect",
        &snap.id,
        serde_json::json!({"device": snap.agent_name, "source": snap.source, "score": row.score,
            "threshold": row.threshold, "reasons": report.reasons}),
    );
    if quarantine {
        let changed = ctl.catalog.quarantine(
            &snap.agent_id,
            snap.received_ms - 1,
            ctl.clock.now_ms(),
            false,
        )?;
        ctl.audit.ok(
            ACTOR,
            "snapshot.quarantine",
            &snap.agent_name,
            serde_json::json!({"after": crate::when(snap.received_ms - 1), "because": snap.id,
                "snapshots": changed.iter().map(|s| s.id.clone()).collect::<Vec<_>>()}),
        );
        tracing::warn!(device = %snap.agent_name, snapshots = changed.len(), "quarantined the suspect snapshot and what came after it");
    }
    Ok(())
}

/// Suspect snapshots (every analyzed one with `all`), newest first, optionally of one device.
pub fn list(ctl: &Controller, all: bool, device: &str) -> Result<pb::AnomalyList, ApiError> {
    let agent_id = if device.is_empty() {
        None
    } else {
        Some(ctl.catalog.find_agent(device)?.id)
    };
    let mut out = pb::AnomalyList::default();
    for row in ctl.catalog.anomalies(all)? {
        let snap = ctl.catalog.find_snapshot(&row.snapshot_id)?;
        if agent_id.as_ref().is_some_and(|a| *a != snap.agent_id) {
            continue;
        }
        out.anomalies.push(info(snap, row));
    }
    Ok(out)
}

/// A snapshot's judgement as the operator API shows it.
fn info(snap: SnapshotRow, row: AnomalyRow) -> pb::Anomaly {
    let report: Report = serde_json::from_str(&row.report).unwrap_or_default();
    pb::Anomaly {
        snapshot_id: snap.id,
        agent_name: snap.agent_name,
        source: snap.source,
        received_ms: snap.received_ms,
        parent: row.parent,
        score: row.score,
        threshold: row.threshold,
        suspect: row.suspect,
        quarantined: snap.quarantined_ms != 0,
        reasons: report.reasons,
        report_json: row.report,
    }
}

/// Clears a suspect snapshot's suspicion after an admin reviewed it (a false positive: a
/// cache emptied, an archive recompressed): recovery plans may pick it, and retention counts
/// it again instead of holding it. Gated by a second admin's approval where approvals are
/// required; the note is kept in its report and the audit log. Its quarantine, if any,
/// stays until lifted on its own.
pub fn dismiss(
    ctl: &Controller,
    operator: &str,
    snapshot: &str,
    note: &str,
) -> Result<pb::Anomaly, ApiError> {
    let note = note.trim();
    if note.is_empty() {
        return Err(ApiError::InvalidArgument(
            "--note is required: say why the snapshot is not suspect (it is kept in the audit log)"
                .into(),
        ));
    }
    let snap = ctl.catalog.find_snapshot(snapshot)?;
    let mut row = ctl
        .catalog
        .anomaly(&snap.id)?
        .filter(|r| r.suspect)
        .ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "snapshot {} is not suspect; `lifeboat anomalies` lists those that are",
                &snap.id[..12]
            ))
        })?;
    crate::approvals::gate(ctl, operator, "anomaly.dismiss", &snap.id)?;
    let mut report: Report = serde_json::from_str(&row.report).unwrap_or_default();
    report.reasons.push(format!(
        "dismissed by {operator} at {}: {note}",
        crate::when(ctl.clock.now_ms())
    ));
    row.suspect = false;
    row.report = serde_json::to_string(&report)
        .map_err(|e| ApiError::internal(format!("encoding an anomaly report: {e}")))?;
    ctl.catalog.insert_anomaly(&row)?;
    ctl.audit.ok(
        &format!("operator:{operator}"),
        "snapshot.unsuspect",
        &snap.id,
        serde_json::json!({"device": snap.agent_name, "source": snap.source, "score": row.score, "note": note}),
    );
    tracing::warn!(snapshot = %snap.id, device = %snap.agent_name, %operator, %note, "suspicion dismissed");
    Ok(info(snap, row))
}
