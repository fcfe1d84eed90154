//! Drills and recovery plans.

use lifeboat_proto::pb;
use lifeboat_proto::states::{DrillState, PlanState, StepState};

use super::*;

pub const DRILL_HEADER: &[&str] = &[
    "ID", "STARTED", "DEVICE", "SOURCE", "SNAPSHOT", "STATE", "SIZE", "ESTIMATE", "ACTUAL", "RTO",
    "ERROR",
];

pub fn drill_row(d: &pb::DrillInfo) -> Vec<String> {
    vec![
        d.id.clone(),
        time(d.started_unix_ms),
        d.agent.clone(),
        d.source.clone(),
        d.snapshot[..d.snapshot.len().min(12)].to_string(),
        if d.state == DrillState::Failed {
            "FAILED".into()
        } else {
            d.state.clone()
        },
        bytes(d.bytes),
        format!("{} ({})", millis(d.estimate_ms), d.estimate_basis),
        if d.actual_ms > 0 {
            millis(d.actual_ms)
        } else {
            "-".into()
        },
        match (d.rto_ms, d.over_rto) {
            (0, _) => "-".into(),
            (rto, true) => format!("{} EXCEEDED", millis(rto)),
            (rto, false) => millis(rto),
        },
        d.error.clone(),
    ]
}

pub fn drill_json(d: &pb::DrillInfo) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "agent": d.agent,
        "source": d.source,
        "snapshot": d.snapshot,
        "job": d.job_id,
        "state": d.state,
        "started": time(d.started_unix_ms),
        "finished": time(d.finished_unix_ms),
        "bytes": d.bytes,
        "estimate_ms": d.estimate_ms,
        "estimate_basis": d.estimate_basis,
        "actual_ms": d.actual_ms,
        "estimate_error": (d.actual_ms > 0 && d.estimate_ms > 0)
            .then(|| (d.estimate_ms as f64 - d.actual_ms as f64) / d.actual_ms as f64),
        "rto_ms": (d.rto_ms > 0).then_some(d.rto_ms),
        "over_rto": d.over_rto,
        "probe": d.probe,
        "policy": d.policy,
        "error": d.error,
        "result": d.result.as_ref().map(restore_json),
    })
}

pub fn plan_json(p: &pb::PlanInfo) -> serde_json::Value {
    serde_json::json!({
        "id": p.id,
        "state": p.state,
        "created": time(p.created_unix_ms),
        "created_by": p.created_by,
        "before": time(p.before_unix_ms),
        "before_unix_ms": p.before_unix_ms,
        "concurrency": p.concurrency,
        "bandwidth_bytes_per_sec": p.bandwidth_bytes_per_sec,
        "mode": p.mode,
        "forced": p.forced,
        "started": time(p.started_unix_ms),
        "finished": time(p.finished_unix_ms),
        "estimate": {
            "total_downtime_ms": p.total_downtime_ms,
            "longest_downtime_ms": p.longest_downtime_ms,
            "makespan_ms": p.makespan_ms,
        },
        "eta_ms": p.eta_ms,
        "bytes_moved": p.bytes_moved,
        "actual": (p.finished_unix_ms > 0).then(|| serde_json::json!({
            "total_downtime_ms": p.actual_total_downtime_ms,
            "longest_downtime_ms": p.actual_longest_downtime_ms,
        })),
        "warnings": p.warnings,
        "devices": p.devices.iter().map(plan_device_json).collect::<Vec<_>>(),
    })
}

fn plan_source_json(s: &pb::PlanSource) -> serde_json::Value {
    serde_json::json!({
        "source": s.source,
        "snapshot": s.snapshot,
        "snapshot_time": time(s.snapshot_unix_ms),
        "quarantined": s.quarantined,
        "chosen_because": s.chosen_because,
        "passed_over": s.passed_over,
        "target": s.target,
        "bytes": s.bytes,
        "wire_bytes": s.wire_bytes,
        "files": s.files,
        "state": s.state,
        "job": s.job_id,
        "attempts": s.attempts,
        "error": s.error,
        "verified": s.state == StepState::Done,
        "result": s.result.as_ref().map(restore_json),
    })
}

fn plan_device_json(d: &pb::PlanDevice) -> serde_json::Value {
    let ended = StepState::parse(&d.state).is_some_and(StepState::ended);
    serde_json::json!({
        "agent": d.agent,
        "target_agent": d.target_agent,
        "tier": d.tier,
        "bytes": d.bytes,
        "state": d.state,
        "estimate_basis": d.estimate_basis,
        "est_start_ms": d.est_start_ms,
        "est_finish_ms": d.est_finish_ms,
        "est_downtime_ms": d.est_finish_ms,
        "actual_start_ms": (ended || d.state == StepState::Running).then_some(d.actual_start_ms),
        "actual_finish_ms": ended.then_some(d.actual_finish_ms),
        "actual_downtime_ms": ended.then_some(d.actual_finish_ms),
        "attempts": d.sources.iter().map(|s| s.attempts).max().unwrap_or(0),
        "error": d.error,
        "sources": d.sources.iter().map(plan_source_json).collect::<Vec<_>>(),
    })
}

/// The plan as a table: before it runs, the estimate; once it ran, estimate and actual.
pub fn plan_table(p: &pb::PlanInfo) -> String {
    let ran = p.state != PlanState::Planned;
    let mut rows = Vec::new();
    for d in &p.devices {
        let first = d.sources.first();
        let points: Vec<String> = d
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{} {}{}",
                    s.source,
                    &s.snapshot[..s.snapshot.len().min(12)],
                    if s.quarantined { " (QUARANTINED)" } else { "" }
                )
            })
            .collect();
        let mut row = vec![
            if d.target_agent != d.agent {
                format!("{} -> {}", d.agent, d.target_agent)
            } else {
                d.agent.clone()
            },
            d.tier.to_string(),
            points.join("\n"),
            first.map(|s| time(s.snapshot_unix_ms)).unwrap_or_default(),
            bytes(d.bytes),
            format!("+{}", millis(d.est_start_ms)),
            format!("+{}", millis(d.est_finish_ms)),
            format!("{} ({})", millis(d.est_finish_ms), d.estimate_basis),
        ];
        if ran {
            row.push(
                if StepState::parse(&d.state).is_some_and(StepState::ended) {
                    millis(d.actual_finish_ms)
                } else {
                    "-".into()
                },
            );
            row.push(if d.state == StepState::Failed {
                format!("FAILED: {}", d.error)
            } else {
                d.state.clone()
            });
        }
        rows.push(row);
    }
    let mut header = vec![
        "DEVICE",
        "TIER",
        "RESTORE POINT",
        "TAKEN",
        "BYTES",
        "START",
        "FINISH",
        "EST. DOWNTIME",
    ];
    if ran {
        header.push("ACTUAL");
        header.push("STATE");
    }
    let mut out = format!(
        "plan {}  ({}; before {}; concurrency {}; bandwidth {}; mode {}{})\n",
        p.id,
        p.state,
        time(p.before_unix_ms),
        p.concurrency,
        if p.bandwidth_bytes_per_sec > 0 {
            format!("{}/s", bytes(p.bandwidth_bytes_per_sec))
        } else {
            "unlimited".into()
        },
        p.mode,
        if p.forced {
            "; FORCED: quarantined snapshots allowed"
        } else {
            ""
        },
    );
    out.push_str(&table(&header, rows));
    out.push_str(&format!(
        "\nestimated: total downtime {}, longest {}, all back after {}",
        millis(p.total_downtime_ms),
        millis(p.longest_downtime_ms),
        millis(p.makespan_ms)
    ));
    if p.finished_unix_ms > 0 {
        out.push_str(&format!(
            "\nactual:    total downtime {}, longest {}",
            millis(p.actual_total_downtime_ms),
            millis(p.actual_longest_downtime_ms)
        ));
    } else if p.state == PlanState::Running {
        out.push_str(&format!(
            "\nrunning: all back in about {}",
            millis(p.eta_ms)
        ));
    }
    for w in &p.warnings {
        out.push_str(&format!("\nwarning: {w}"));
    }
    // Why each restore point: the newer snapshots each source passed over.
    for d in &p.devices {
        for s in d.sources.iter().filter(|s| !s.passed_over.is_empty()) {
            out.push_str(&format!(
                "\n{} {}: {} chosen; passed over {}",
                d.agent,
                s.source,
                &s.snapshot[..s.snapshot.len().min(12)],
                s.passed_over.join("; ")
            ));
        }
    }
    out
}
