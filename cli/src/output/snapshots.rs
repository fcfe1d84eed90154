//! Snapshots.

use lifeboat_proto::pb;

use super::*;

pub const SNAPSHOT_HEADER: &[&str] = &[
    "ID",
    "TIME",
    "AGENT",
    "SOURCE",
    "FILES",
    "SIZE",
    "NEW",
    "LOCKED UNTIL",
    "COPIES",
];

pub fn snapshot_row(s: &pb::SnapshotInfo) -> Vec<String> {
    vec![
        if s.quarantined_unix_ms != 0 {
            format!("{} (quarantined)", &s.id[..s.id.len().min(12)])
        } else if s.suspect {
            format!("{} (suspect)", &s.id[..s.id.len().min(12)])
        } else {
            s.id[..s.id.len().min(12)].to_string()
        },
        time(s.received_unix_ms),
        s.agent_name.clone(),
        s.source.clone(),
        s.files.to_string(),
        bytes(s.bytes),
        bytes(s.bytes_new),
        locked_until(s),
        if s.copies.is_empty() {
            "-".into()
        } else {
            s.copies.join(",")
        },
    ]
}

/// The lock's end, or `-` when it is not locked (any more).
fn locked_until(s: &pb::SnapshotInfo) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    if s.locked_until_unix_ms > now {
        time(s.locked_until_unix_ms)
    } else {
        "-".into()
    }
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
        "suspect": s.suspect,
        "image_trusted": s.image_trusted,
        "trusted_by": s.trusted_by,
        "quarantined_time": (s.quarantined_unix_ms != 0).then(|| time(s.quarantined_unix_ms)),
        "locked_until": (s.locked_until_unix_ms != 0).then(|| time(s.locked_until_unix_ms)),
        "locked_until_unix_ms": s.locked_until_unix_ms,
        "copies": s.copies,
    })
}
