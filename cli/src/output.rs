//! Human tables and `--json` for listings.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use lifeboat_proto::pb::{self, JobState};

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
        println!(
            "{}",
            serde_json::Value::Array(items.iter().map(to_json).collect())
        );
    } else {
        println!("{}", table(header, items.iter().map(to_row).collect()));
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
        s.id[..s.id.len().min(12)].to_string(),
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
        "error": j.error,
        "snapshot_ids": j.snapshot_ids,
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
        println!(
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
    println!("{}", table(&["SOURCE", "KIND", "WHERE", "DETAIL"], rows));
    let restore = if d.restore_allowed {
        "allowed"
    } else {
        "not allowed (--docker-restore)"
    };
    if d.available {
        println!(
            "{}; restores into Docker {restore}; as of {}",
            d.status,
            time(d.reported_unix_ms)
        );
    } else {
        println!("Docker: {}", d.status);
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
                    "sources": d.sources.iter().map(|s| serde_json::json!({
                        "source": s.source, "policies": s.policies,
                        "last_snapshot": (!s.last_snapshot.is_empty()).then_some(&s.last_snapshot),
                        "last_backup": (s.last_unix_ms > 0).then(|| time(s.last_unix_ms)),
                        "age_seconds": s.age_seconds, "rpo_seconds": s.rpo_seconds, "overdue": s.overdue,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
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
                if s.overdue {
                    "OVERDUE".into()
                } else {
                    String::new()
                },
            ]);
        }
    }
    println!(
        "{}",
        table(
            &[
                "DEVICE",
                "SOURCE",
                "POLICY",
                "LAST BACKUP",
                "AGE",
                "RPO",
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
