//! Human tables and `--json` for listings.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use lifeboat_proto::pb::{self, JobState};
use lifeboat_proto::states::{DrillState, PlanState, StepState};

/// Writes one line of output. When the reader has gone away (a pipe into `head` that has
/// read enough), the program ends quietly with status 0: the reader took what it wanted.
/// Any other write error (a full disk behind a redirection) ends it with a message and
/// status 1.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("lifeboat: cannot write the output: {e}");
        std::process::exit(1);
    }
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

/// Prints a listing: a JSON array with `--json`, a table for humans otherwise.
pub fn listing<T>(
    json: bool,
    items: &[T],
    to_json: fn(&T) -> serde_json::Value,
    header: &[&str],
    to_row: fn(&T) -> Vec<String>,
) {
    if json {
        out!(
            "{}",
            serde_json::Value::Array(items.iter().map(to_json).collect())
        );
    } else {
        out!("{}", table(header, items.iter().map(to_row).collect()));
    }
}

pub const AGENT_HEADER: &[&str] = &["NAME", "STATE", "HOST", "LABELS", "SOURCES", "LAST SEEN"];

pub fn agent_row(a: &pb::AgentInfo) -> Vec<String> {
    let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let sources: Vec<String> = a.sources.iter().map(|s| s.name.clone()).collect();
    let state = if a.revoked_unix_ms != 0 {
        "revoked"
    } else if a.connected {
        "connected"
    } else {
        "offline"
    };
    vec![
        a.name.clone(),
        state.into(),
        a.hostname.clone(),
        labels.join(","),
        sources.join(","),
        time(a.last_seen_unix_ms),
    ]
}

pub const SNAPSHOT_HEADER: &[&str] = &["ID", "TIME", "AGENT", "SOURCE", "FILES", "SIZE", "NEW"];

pub fn snapshot_row(s: &pb::SnapshotInfo) -> Vec<String> {
    vec![
        if s.quarantined_unix_ms != 0 {
            format!("{} (quarantined)", &s.id[..s.id.len().min(12)])
        } else {
            s.id[..s.id.len().min(12)].to_string()
        },
        time(s.received_unix_ms),
        s.agent_name.clone(),
        s.source.clone(),
        s.files.to_string(),
        bytes(s.bytes),
        bytes(s.bytes_new),
    ]
}

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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
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

/// A failed job's refusal as scripts see it: `missing_chunks`, `store_full`, or null.
fn refusal_name(r: i32) -> Option<&'static str> {
    match pb::Refusal::try_from(r).ok()? {
        pb::Refusal::Unspecified => None,
        pb::Refusal::MissingChunks => Some("missing_chunks"),
        pb::Refusal::StoreFull => Some("store_full"),
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

pub fn snapshot_json(s: &pb::SnapshotInfo) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "short_id": &s.id[..s.id.len().min(12)],
        "agent": s.agent_name,
        "agent_id": s.agent_id,
        "source": s.source,
        "source_path": s.source_path,
        "hostname": s.hostname,
        "time": time(s.received_unix_ms),
        "received_unix_ms": s.received_unix_ms,
        "agent_time_unix_ms": s.agent_time_unix_ms,
        "files": s.files,
        "dirs": s.dirs,
        "bytes": s.bytes,
        "bytes_new": s.bytes_new,
        "bytes_read": s.bytes_read,
        "parent": s.parent,
        "quarantined": s.quarantined_unix_ms != 0,
        "quarantined_time": (s.quarantined_unix_ms != 0).then(|| time(s.quarantined_unix_ms)),
    })
}

pub fn agent_json(a: &pb::AgentInfo) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "name": a.name,
        "labels": a.labels,
        "hostname": a.hostname,
        "connected": a.connected,
        "last_seen": time(a.last_seen_unix_ms),
        "enrolled": time(a.enrolled_unix_ms),
        "sources": a.sources.iter().map(|s| serde_json::json!({"name": s.name, "kind": s.kind, "path": s.path})).collect::<Vec<_>>(),
        "restore_roots": a.restore_roots,
        "version": a.version,
        "revoked": (a.revoked_unix_ms != 0).then(|| time(a.revoked_unix_ms)),
        "cert_expires": (a.cert_expires_unix_ms != 0).then(|| time(a.cert_expires_unix_ms)),
    })
}

/// How to name an image as a source: its first tag, or its id when it has none.
fn image_ref(i: &pb::DockerImage) -> String {
    i.repo_tags
        .iter()
        .find(|t| t.as_str() != "<none>:<none>")
        .cloned()
        .unwrap_or_else(|| i.id.clone())
}

/// `lifeboat agents --inventory AGENT`: what the agent can back up.
pub fn inventory(a: &pb::AgentInfo, json: bool) {
    let d = a.docker.clone().unwrap_or_default();
    if json {
        out!(
            "{}",
            serde_json::json!({
                "agent": a.name,
                "paths": a.sources.iter().map(|s| serde_json::json!({"source": s.name, "path": s.path})).collect::<Vec<_>>(),
                "docker": {
                    "available": d.available,
                    "status": d.status,
                    "restore_allowed": d.restore_allowed,
                    "reported": time(d.reported_unix_ms),
                    "images": d.images.iter().map(|i| serde_json::json!({
                        "source": format!("image:{}", image_ref(i)),
                        "id": i.id, "repo_tags": i.repo_tags, "repo_digests": i.repo_digests,
                        "size": i.size, "created": time(i.created_unix * 1000),
                    })).collect::<Vec<_>>(),
                    "volumes": d.volumes.iter().map(|v| serde_json::json!({
                        "source": format!("volume:{}", v.name),
                        "name": v.name, "driver": v.driver, "mountpoint": v.mountpoint,
                        "used_by": v.used_by.iter().map(|u| serde_json::json!({"container": u.container, "running": u.running})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "containers": d.containers.iter().map(|c| serde_json::json!({
                        "id": c.id, "name": c.name, "image_id": c.image_id, "state": c.state,
                    })).collect::<Vec<_>>(),
                },
            })
        );
        return;
    }
    let mut rows: Vec<Vec<String>> = a
        .sources
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                "host path".into(),
                s.path.clone(),
                String::new(),
            ]
        })
        .collect();
    for i in &d.images {
        let name = image_ref(i);
        rows.push(vec![
            format!("image:{name}"),
            "image".into(),
            i.id.chars().take(19).collect(),
            format!("{} {}", bytes(i.size), i.repo_tags.join(",")),
        ]);
    }
    for v in &d.volumes {
        let users: Vec<String> = v
            .used_by
            .iter()
            .map(|u| {
                format!(
                    "{}{}",
                    u.container,
                    if u.running { " (running)" } else { "" }
                )
            })
            .collect();
        rows.push(vec![
            format!("volume:{}", v.name),
            "volume".into(),
            v.mountpoint.clone(),
            users.join(", "),
        ]);
    }
    out!("{}", table(&["SOURCE", "KIND", "WHERE", "DETAIL"], rows));
    let restore = if d.restore_allowed {
        "allowed"
    } else {
        "not allowed (--docker-restore)"
    };
    if d.available {
        out!(
            "{}; restores into Docker {restore}; as of {}",
            d.status,
            time(d.reported_unix_ms)
        );
    } else {
        out!("Docker: {}", d.status);
    }
}

pub const POLICY_HEADER: &[&str] = &[
    "NAME", "SELECTOR", "SOURCES", "SCHEDULE", "KEEP", "LOCK", "TIER",
];

fn spec(p: &pb::PolicyInfo) -> serde_json::Value {
    serde_json::from_str(&p.spec_json).unwrap_or_default()
}

pub fn policy_row(p: &pb::PolicyInfo) -> Vec<String> {
    let s = spec(p);
    let sel = s["selector"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let keep = s["keep"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let strs = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    vec![
        p.name.clone(),
        if sel.is_empty() {
            "(all agents)".into()
        } else {
            sel
        },
        strs(&s["sources"]),
        format!(
            "{} {}",
            s["schedule"].as_str().unwrap_or_default(),
            s["timezone"].as_str().unwrap_or_default()
        ),
        keep,
        humantime::format_duration(std::time::Duration::from_secs(
            s["lock_s"].as_u64().unwrap_or(0),
        ))
        .to_string(),
        s["tier"].to_string(),
    ]
}

pub fn policy_json(p: &pb::PolicyInfo) -> serde_json::Value {
    let mut v = spec(p);
    if let Some(o) = v.as_object_mut() {
        o.insert("updated".into(), time(p.updated_unix_ms).into());
    }
    v
}

/// `lifeboat devices`.
pub fn devices(devices: &[pb::DeviceInfo], json: bool) {
    let age = |s: u64| humantime::format_duration(std::time::Duration::from_secs(s)).to_string();
    if json {
        let list: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "agent": d.agent,
                    "connected": d.connected,
                    "tier": d.tier,
                    "restore_estimate_seconds": d.restore_estimate_ms as f64 / 1000.0,
                    "estimate_basis": d.estimate_basis,
                    "rate_bytes_per_sec": d.rate_bytes_per_sec,
                    "fixed_ms": d.fixed_ms,
                    "sources": d.sources.iter().map(|s| serde_json::json!({
                        "source": s.source, "policies": s.policies,
                        "last_snapshot": (!s.last_snapshot.is_empty()).then_some(&s.last_snapshot),
                        "last_backup": (s.last_unix_ms > 0).then(|| time(s.last_unix_ms)),
                        "age_seconds": s.age_seconds, "rpo_seconds": s.rpo_seconds, "overdue": s.overdue,
                        "restore_estimate_seconds": s.restore_estimate_ms as f64 / 1000.0,
                        "restore_bytes": s.restore_bytes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out!("{}", serde_json::Value::Array(list));
        return;
    }
    let mut rows = Vec::new();
    for d in devices {
        for s in &d.sources {
            rows.push(vec![
                d.agent.clone(),
                s.source.clone(),
                s.policies.join(","),
                if s.last_unix_ms > 0 {
                    time(s.last_unix_ms)
                } else {
                    "never".into()
                },
                if s.last_unix_ms > 0 {
                    age(s.age_seconds)
                } else {
                    "-".into()
                },
                if s.rpo_seconds > 0 {
                    age(s.rpo_seconds)
                } else {
                    "-".into()
                },
                if s.restore_bytes > 0 {
                    format!(
                        "{} ({})",
                        millis(s.restore_estimate_ms),
                        bytes(s.restore_bytes)
                    )
                } else {
                    "-".into()
                },
                String::new(),
                if s.overdue {
                    "OVERDUE".into()
                } else {
                    String::new()
                },
            ]);
        }
        if d.sources.len() > 1 || d.sources.is_empty() {
            rows.push(vec![
                d.agent.clone(),
                "(device)".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        if let Some(last) = rows.last_mut() {
            last[7] = format!("{} {}", millis(d.restore_estimate_ms), d.estimate_basis);
        }
    }
    out!(
        "{}",
        table(
            &[
                "DEVICE",
                "SOURCE",
                "POLICY",
                "LAST BACKUP",
                "AGE",
                "RPO",
                "RESTORE NOW",
                "DEVICE DOWNTIME",
                ""
            ],
            rows
        )
    );
}

pub const IDENTITY_HEADER: &[&str] = &["NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "BY"];

fn identity_state(i: &pb::IdentityInfo) -> &'static str {
    if i.revoked_unix_ms != 0 {
        "revoked"
    } else if i.expires_unix_ms != 0 && i.expires_unix_ms < now_ms() {
        "expired"
    } else {
        "valid"
    }
}

pub fn identity_row(i: &pb::IdentityInfo) -> Vec<String> {
    vec![
        i.name.clone(),
        i.role.clone(),
        identity_state(i).into(),
        time(i.created_unix_ms),
        time(i.expires_unix_ms),
        i.created_by.clone(),
    ]
}

pub fn identity_json(i: &pb::IdentityInfo) -> serde_json::Value {
    serde_json::json!({
        "name": i.name,
        "role": i.role,
        "state": identity_state(i),
        "created": time(i.created_unix_ms),
        "expires": time(i.expires_unix_ms),
        "revoked": (i.revoked_unix_ms != 0).then(|| time(i.revoked_unix_ms)),
        "created_by": i.created_by,
    })
}

pub const AUDIT_HEADER: &[&str] = &[
    "SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL",
];

pub fn audit_row(e: &pb::AuditEntry) -> Vec<String> {
    vec![
        e.seq.to_string(),
        time(e.unix_ms),
        e.actor.clone(),
        e.action.clone(),
        e.target.clone(),
        e.outcome.clone(),
        e.detail.chars().take(80).collect(),
    ]
}

pub fn audit_json(e: &pb::AuditEntry) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "time": time(e.unix_ms),
        "unix_ms": e.unix_ms,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "detail": serde_json::from_str::<serde_json::Value>(&e.detail).unwrap_or(serde_json::Value::String(e.detail.clone())),
    })
}

/// Milliseconds for humans: "850 ms", "12.3 s", "4m 10s".
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    }
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

pub const DRILL_HEADER: &[&str] = &[
    "ID", "STARTED", "DEVICE", "SOURCE", "SNAPSHOT", "STATE", "SIZE", "ESTIMATE", "ACTUAL", "ERROR",
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
    out
}
