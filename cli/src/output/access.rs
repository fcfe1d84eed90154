//! Policies, identities and the audit log.

use lifeboat_proto::pb;

use super::*;

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

pub const APPROVAL_HEADER: &[&str] = &[
    "ID",
    "ACTION",
    "TARGET",
    "REQUESTER",
    "STATE",
    "EXPIRES",
    "DECIDED BY",
];

pub fn approval_row(a: &pb::ApprovalInfo) -> Vec<String> {
    vec![
        a.id.clone(),
        a.action.clone(),
        a.target.clone(),
        a.requester.clone(),
        a.state.clone(),
        time(a.expires_unix_ms),
        if a.decided_by.is_empty() {
            "-".into()
        } else {
            a.decided_by.clone()
        },
    ]
}

pub fn approval_json(a: &pb::ApprovalInfo) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "action": a.action,
        "target": a.target,
        "requester": a.requester,
        "state": a.state,
        "created": time(a.created_unix_ms),
        "expires": time(a.expires_unix_ms),
        "expires_unix_ms": a.expires_unix_ms,
        "decided_by": a.decided_by,
        "decided": (a.decided_unix_ms != 0).then(|| time(a.decided_unix_ms)),
    })
}
