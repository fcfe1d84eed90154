//! Agents, their Docker inventory, and the devices view.

use lifeboat_proto::pb;

use super::*;

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
                    "rto_seconds": (d.rto_seconds > 0).then_some(d.rto_seconds),
                    "estimate_over_rto": d.estimate_over_rto,
                    "last_drill": (d.last_drill_unix_ms > 0).then(|| time(d.last_drill_unix_ms)),
                    "last_drill_state": (!d.last_drill_state.is_empty()).then_some(&d.last_drill_state),
                    "last_passed_drill": (d.last_passed_drill_unix_ms > 0).then(|| time(d.last_passed_drill_unix_ms)),
                    "rate_bytes_per_sec": d.rate_bytes_per_sec,
                    "fixed_ms": d.fixed_ms,
                    "sources": d.sources.iter().map(|s| serde_json::json!({
                        "source": s.source, "policies": s.policies,
                        "last_snapshot": (!s.last_snapshot.is_empty()).then_some(&s.last_snapshot),
                        "last_backup": (s.last_unix_ms > 0).then(|| time(s.last_unix_ms)),
                        "age_seconds": s.age_seconds, "rpo_seconds": s.rpo_seconds, "overdue": s.overdue,
                        "restore_estimate_seconds": s.restore_estimate_ms as f64 / 1000.0,
                        "restore_bytes": s.restore_bytes,
                        "vulns": s.vulns_known.then_some(s.vulns),
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
                String::new(),
                String::new(),
                if s.vulns_known {
                    s.vulns.to_string()
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
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        if let Some(last) = rows.last_mut() {
            last[7] = format!("{} {}", millis(d.restore_estimate_ms), d.estimate_basis);
            last[8] = match (d.rto_seconds, d.estimate_over_rto) {
                (0, _) => "-".into(),
                (s, true) => format!("{} EXCEEDED", age(s)),
                (s, false) => age(s),
            };
            last[9] = match d.last_drill_unix_ms {
                0 => "never".into(),
                ms => format!("{} {}", time(ms), d.last_drill_state),
            };
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
                "RTO",
                "LAST DRILL",
                "VULNS",
                ""
            ],
            rows
        )
    );
}
