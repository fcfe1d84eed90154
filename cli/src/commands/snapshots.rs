//! `lifeboat snapshots` (list, forget, protect, quarantine), `diff`, `verify`, `gc` and `prune`.

use anyhow::Result;
use lifeboat_proto::pb;

use crate::args::*;
use crate::connect::{Api, rpc};
use crate::output::{self, bytes, time};

pub async fn run(api: &mut Api, cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Snapshots {
            cmd: Some(SnapshotsCmd::Protect { snapshot }),
            ..
        } => protect(api, snapshot, true).await?,
        Cmd::Snapshots {
            cmd: Some(SnapshotsCmd::Unprotect { snapshot }),
            ..
        } => protect(api, snapshot, false).await?,
        Cmd::Snapshots {
            cmd: Some(SnapshotsCmd::Delete { snapshot }),
            ..
        } => {
            api.delete_snapshot(pb::SnapshotRef {
                id: snapshot.clone(),
            })
            .await
            .map_err(rpc)?;
            out!("snapshot {snapshot} deleted");
        }
        Cmd::Snapshots {
            cmd: Some(SnapshotsCmd::Lock { snapshot, until }),
            ..
        } => {
            let until_unix_ms = until_arg("--until", &until)?;
            let s = api
                .lock_snapshot(pb::LockSnapshotRequest {
                    id: snapshot,
                    until_unix_ms,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            out!(
                "snapshot {} locked until {}: nobody can delete it before then",
                &s.id[..12.min(s.id.len())],
                time(s.locked_until_unix_ms)
            );
        }
        Cmd::Snapshots {
            cmd: None,
            agent,
            source,
            json,
        } => {
            let request = pb::ListSnapshotsRequest {
                agent: agent.unwrap_or_default(),
                source: source.unwrap_or_default(),
            };
            let snaps = api
                .list_snapshots(request)
                .await
                .map_err(rpc)?
                .into_inner()
                .snapshots;
            output::listing(
                json.json,
                &snaps,
                output::snapshot_json,
                output::SNAPSHOT_HEADER,
                output::snapshot_row,
            );
        }
        Cmd::Prune { dry_run, json } => {
            let r = api
                .prune(pb::PruneRequest { dry_run })
                .await
                .map_err(rpc)?
                .into_inner();
            let removed = r.items.iter().filter(|i| i.removed).count();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({"dry_run": r.dry_run, "removed": removed, "kept": r.items.len() - removed,
                        "snapshots": r.items.iter().map(|i| serde_json::json!({"id": i.snapshot_id, "agent": i.agent, "source": i.source, "received": time(i.received_unix_ms), "action": if i.removed { "remove" } else { "keep" }, "reasons": i.reasons})).collect::<Vec<_>>()})
                );
            } else {
                let rows = r
                    .items
                    .iter()
                    .map(|i| {
                        vec![
                            i.snapshot_id[..12.min(i.snapshot_id.len())].to_string(),
                            i.agent.clone(),
                            i.source.clone(),
                            time(i.received_unix_ms),
                            if i.removed { "remove" } else { "keep" }.into(),
                            i.reasons.join("; "),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    output::table(
                        &["ID", "AGENT", "SOURCE", "RECEIVED", "ACTION", "WHY"],
                        rows
                    )
                );
                let verb = if r.dry_run { "would remove" } else { "removed" };
                out!("{verb} {removed} of {} snapshots", r.items.len());
            }
        }
        Cmd::Verify {
            sample,
            snapshot,
            json,
        } => {
            let r = api
                .verify(pb::VerifyRequest {
                    sample_percent: sample.unwrap_or(0),
                    snapshot: snapshot.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "packs": r.packs, "chunks": r.chunks, "bytes": r.bytes,
                        "bad": r.bad.iter().map(|b| serde_json::json!({"chunk": b.id, "pack": b.pack, "reason": b.reason})).collect::<Vec<_>>(),
                        "affected_snapshots": r.affected.iter().map(|a| serde_json::json!({"id": a.id, "agent": a.agent, "source": a.source, "reason": a.reason})).collect::<Vec<_>>(),
                        "damaged_packs": r.damaged_packs.iter().map(|d| serde_json::json!({"pack": d.pack, "reason": d.reason})).collect::<Vec<_>>(),
                        "healed": r.healed, "unhealed": r.unhealed, "coverage_percent": r.coverage_percent,
                    })
                );
            } else {
                out!(
                    "read {} chunks ({}) in {} packs: {} bad",
                    r.chunks,
                    bytes(r.bytes),
                    r.packs,
                    r.bad.len()
                );
                for b in r.bad.iter().take(50) {
                    out!("  {} in pack {}: {}", b.id, b.pack, b.reason);
                }
                for a in &r.affected {
                    out!(
                        "  snapshot {} ({} {}) cannot be restored whole: {}",
                        &a.id[..12.min(a.id.len())],
                        a.agent,
                        a.source,
                        a.reason
                    );
                }
                for d in &r.damaged_packs {
                    out!("  pack {}: {}", d.pack, d.reason);
                }
                if r.healed + r.unhealed > 0 {
                    out!(
                        "bad chunks healed by later backups: {}; still missing: {} (back up the affected sources to heal them)",
                        r.healed,
                        r.unhealed
                    );
                }
                out!(
                    "coverage: {:.1}% of stored bytes read back within the scrub period",
                    r.coverage_percent
                );
            }
            if !r.bad.is_empty() || !r.affected.is_empty() || !r.damaged_packs.is_empty() {
                return Ok(2);
            }
        }
        Cmd::Gc {
            dry_run,
            compact_below,
            json,
        } => {
            let r = api
                .gc(pb::GcRequest {
                    dry_run,
                    compact_below: compact_below.unwrap_or(0.0),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({"dry_run": r.dry_run, "referenced": r.referenced, "swept": r.swept, "leased": r.leased,
                        "packs_compacted": r.packs_compacted, "packs_deleted": r.packs_deleted, "bytes_reclaimed": r.bytes_reclaimed})
                );
            } else {
                let verb = if r.dry_run {
                    "would reclaim"
                } else {
                    "reclaimed"
                };
                out!(
                    "{verb} {} unreferenced chunks ({} kept: uploaded within the lease); {} chunks referenced",
                    r.swept,
                    r.leased,
                    r.referenced
                );
                if !r.dry_run {
                    out!(
                        "compacted {} packs, deleted {}, {} freed",
                        r.packs_compacted,
                        r.packs_deleted,
                        bytes(r.bytes_reclaimed)
                    );
                }
            }
        }
        Cmd::Diff { a, b, json } => {
            let d = api
                .diff_snapshots(pb::DiffRequest { a, b })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "entries": d.entries.iter().map(|e| serde_json::json!({
                            "path": e.path, "change": e.change, "what": e.what,
                            "kind_a": e.kind_a, "kind_b": e.kind_b, "size_a": e.size_a, "size_b": e.size_b,
                            "mode_a": format!("{:o}", e.mode_a), "mode_b": format!("{:o}", e.mode_b),
                            "owner_a": e.owner_a, "owner_b": e.owner_b,
                        })).collect::<Vec<_>>(),
                        "layers_added": d.layers_added, "layers_removed": d.layers_removed,
                    })
                );
            } else {
                let rows = d
                    .entries
                    .iter()
                    .map(|e| {
                        let mark = match e.change.as_str() {
                            "added" => "+",
                            "removed" => "-",
                            _ => "M",
                        };
                        vec![
                            mark.to_string(),
                            e.path.clone(),
                            e.what.join(","),
                            format!("{} -> {}", bytes(e.size_a), bytes(e.size_b)),
                            format!("{:o} -> {:o}", e.mode_a, e.mode_b),
                            format!("{} -> {}", e.owner_a, e.owner_b),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    output::table(&["", "PATH", "WHAT", "SIZE", "MODE", "OWNER"], rows)
                );
                for l in &d.layers_removed {
                    out!("- layer {l}");
                }
                for l in &d.layers_added {
                    out!("+ layer {l}");
                }
                out!("{} paths differ", d.entries.len());
            }
        }
        Cmd::Snapshots {
            cmd:
                Some(SnapshotsCmd::Quarantine {
                    agent,
                    selector,
                    after,
                    clear,
                    json,
                }),
            ..
        } => {
            let reply = api
                .quarantine(pb::QuarantineRequest {
                    agent: agent.unwrap_or_default(),
                    selector: selector.unwrap_or_default(),
                    after_unix_ms: time_arg("--after", &after)?,
                    clear,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                output::listing(
                    true,
                    &reply.snapshots,
                    output::snapshot_json,
                    output::SNAPSHOT_HEADER,
                    output::snapshot_row,
                );
            } else {
                out!(
                    "{} snapshots {}",
                    reply.snapshots.len(),
                    if clear {
                        "released from quarantine"
                    } else {
                        "quarantined"
                    }
                );
                if !reply.snapshots.is_empty() {
                    out!(
                        "{}",
                        output::table(
                            output::SNAPSHOT_HEADER,
                            reply.snapshots.iter().map(output::snapshot_row).collect()
                        )
                    );
                }
            }
        }
        _ => unreachable!("commands::dispatch sends only snapshots commands here"),
    }
    Ok(0)
}

/// `snapshots protect|unprotect`.
async fn protect(api: &mut Api, snapshot: String, protect: bool) -> Result<()> {
    api.protect_snapshot(pb::ProtectRequest {
        snapshot: snapshot.clone(),
        protect,
    })
    .await
    .map_err(rpc)?;
    if protect {
        out!("snapshot {snapshot} is protected: retention never removes it");
    } else {
        out!("snapshot {snapshot} is no longer protected");
    }
    Ok(())
}
