//! Scrub: read stored chunks back and recompute their ids.
//!
//! A chunk that is missing (its pack gone or cut short) or corrupt (its bytes no longer
//! hash to its id) is recorded in `bad_chunks` and dropped from the chunk index. From then
//! on the store says it lacks that chunk, so the next backup of a source that still has the
//! data uploads it again (every backup job carries the unhealed ids, so the agent re-reads
//! the files that used them); the stored copy is then marked healed. Commits check that
//! every referenced chunk is indexed, so no new snapshot can lean on a bad chunk.
//!
//! A full verify also reads every pack's trailer (the index `rebuild-catalog` depends on)
//! against the catalog, and checks that every listed snapshot's chunks are all indexed:
//! the store is clean only when every snapshot can be restored whole, so a snapshot that
//! leans on a chunk an earlier verify dropped is reported until a backup heals it.
//!
//! `lifeboat verify` scrubs everything, a sample of packs, or one snapshot's chunks; the
//! controller also scrubs on its own, oldest-verified packs first, so that every pack is
//! read at least once per period (default 30 days).

use std::collections::HashSet;

use lifeboat_core::{ChunkId, codec, pack};
use lifeboat_proto::pb;

use crate::Controller;
use crate::error::ApiError;

/// What to read.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    /// About this percentage of the packs, chosen at random.
    Sample(u32),
    /// The chunks one snapshot references.
    Snapshot(String),
    /// Oldest-verified packs first, up to this many bytes (the scheduled scrub).
    Budget(u64),
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub packs: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// `(chunk, pack, why)` of every bad chunk found by this run.
    pub bad: Vec<(ChunkId, String, String)>,
    /// Snapshots that cannot be restored whole.
    pub affected: Vec<Affected>,
    /// Packs whose trailer is damaged or disagrees with the catalog: `(pack, why)`.
    pub damaged_packs: Vec<(String, String)>,
    /// Bad chunks (ever) stored again by a later backup, and those still missing.
    pub healed: u64,
    pub unhealed: u64,
    /// Percentage of stored bytes verified within the scrub period.
    pub coverage: f64,
}

/// Verifies every chunk the index places in `pack_name`; returns the bad ones.
fn check_pack(
    ctl: &Controller,
    pack_name: &str,
    report: &mut Report,
) -> Result<Vec<(ChunkId, String)>, ApiError> {
    let entries = ctl.catalog.chunks_in_pack(pack_name)?;
    // Read whole: a local pack in place, a bucket's pack as one GET. A store that does
    // not answer fails the scrub: nothing is judged missing on the strength of an outage.
    let copy = match entries.is_empty() {
        true => None,
        false => match ctl.store.pack_file(pack_name) {
            Ok(f) => Some(Ok(f)),
            Err(ApiError::NotFound(why)) => Some(Err(why)),
            Err(e) => return Err(e),
        },
    };
    let path = match &copy {
        Some(Ok(f)) => Some(f.path.clone()),
        _ => None,
    };
    // The trailer must still describe every chunk the catalog places here (GC may have
    // dropped some from the catalog before compaction, so it may describe more). A pack
    // the catalog places nothing in serves no snapshot: GC removes it.
    let trailer = match path.as_deref().map(pack::read_index) {
        _ if entries.is_empty() => Ok(()),
        None => Err("it cannot be read".to_string()),
        Some(Ok(index)) => {
            let listed: HashSet<(ChunkId, u64, u32)> =
                index.iter().map(|e| (e.id, e.offset, e.length)).collect();
            match entries.iter().find(|e| !listed.contains(e)) {
                Some((id, ..)) => Err(format!(
                    "its trailer does not list chunk {id} where the catalog has it"
                )),
                None => Ok(()),
            }
        }
        Some(Err(e)) => Err(format!("its trailer cannot be read: {e}")),
    };
    if let Err(why) = trailer {
        report.damaged_packs.push((pack_name.to_string(), why));
    }
    let file = match (&copy, &path) {
        (Some(Err(why)), _) => Err(why.clone()),
        (_, Some(p)) => std::fs::File::open(p).map_err(|e| e.to_string()),
        _ => Err("nothing to read".to_string()),
    };
    let mut bad = Vec::new();
    for (id, offset, length) in entries {
        report.chunks += 1;
        let verdict = match &file {
            Err(e) => Err(format!("pack {pack_name} cannot be opened: {e}")),
            Ok(f) => match pack::read_blob(f, offset, length) {
                Err(e) => Err(format!("missing: {e}")),
                Ok(stored) => {
                    report.bytes += stored.len() as u64;
                    ctl.store
                        .open_blob(&id, stored)
                        .and_then(|blob| codec::decode_verified(&ctl.chunk_key, &id, &blob))
                        .map(drop)
                        .map_err(|e| format!("corrupt: {e}"))
                }
            },
        };
        if let Err(why) = verdict {
            bad.push((id, why));
        }
    }
    report.packs += 1;
    Ok(bad)
}

/// One pack's verdict: its bad chunks, and what reading it counted.
struct PackCheck {
    name: String,
    bad: Vec<(ChunkId, String)>,
    report: Report,
}

/// Checks `packs` on `workers` threads, each taking the next pack in turn; the verdicts in
/// the order of `packs`, or the first error (the other threads stop at their next pack).
fn check_packs(
    ctl: &Controller,
    packs: Vec<String>,
    workers: usize,
) -> Result<Vec<PackCheck>, ApiError> {
    let queue = std::sync::Mutex::new(packs.into_iter().enumerate());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let worker = || -> Result<Vec<(usize, PackCheck)>, ApiError> {
        let mut done = Vec::new();
        while !failed.load(std::sync::atomic::Ordering::Relaxed) {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
            let Some((i, name)) = next else { break };
            let mut report = Report::default();
            match check_pack(ctl, &name, &mut report) {
                Ok(bad) => done.push((i, PackCheck { name, bad, report })),
                Err(e) => {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(done)
    };
    let mut all = Vec::new();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..workers.max(1)).map(|_| s.spawn(worker)).collect();
        for t in threads {
            match t.join() {
                Ok(done) => all.extend(done?),
                Err(_) => return Err(ApiError::internal("a scrub thread panicked")),
            }
        }
        Ok(())
    })?;
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, check)| check).collect())
}

/// Runs a scrub. Bad chunks leave the index (so they get uploaded again) and are recorded.
pub fn scrub(ctl: &Controller, scope: Scope, period_ms: i64) -> Result<Report, ApiError> {
    let now = ctl.clock.now_ms();
    let mut report = Report::default();
    let mut bad: Vec<(ChunkId, String, String)> = Vec::new();
    match &scope {
        Scope::Snapshot(prefix) => {
            let snap = ctl.catalog.find_snapshot(prefix)?;
            let env = ctl.store.read_snapshot(&snap.id)?;
            let record = lifeboat_core::snapshot::Record::parse(&env.record)?;
            let mut ids: Vec<ChunkId> = record.tree_chunks()?;
            match crate::snapshots::load_tree(ctl, &record) {
                Ok(tree) => ids.extend(tree.chunk_ids().copied()),
                Err(e) => bad.push((ids[0], String::new(), format!("tree unreadable: {e}"))),
            }
            let mut seen = HashSet::new();
            for id in ids.into_iter().filter(|i| seen.insert(*i)) {
                report.chunks += 1;
                match ctl.catalog.chunk_location(&id)? {
                    None => bad.push((id, String::new(), "missing: not in the store".into())),
                    Some(crate::catalog::ChunkPlace {
                        pack: pack_name, ..
                    }) => match ctl.store.read_blob(&id) {
                        Ok(blob) => {
                            report.bytes += blob.len() as u64;
                            if let Err(e) = codec::decode_verified(&ctl.chunk_key, &id, &blob) {
                                bad.push((id, pack_name, format!("corrupt: {e}")));
                            }
                        }
                        Err(ApiError::NotFound(e)) => {
                            bad.push((id, pack_name, format!("missing: {e}")))
                        }
                        Err(e) => return Err(e),
                    },
                }
            }
        }
        _ => {
            let mut packs = ctl.catalog.packs_by_verified()?;
            match scope {
                Scope::Sample(p) => {
                    let keep = |name: &str| {
                        let h = blake3::hash(format!("{name}{now}").as_bytes());
                        (u32::from(h.as_bytes()[0]) * 100 / 256) < p.min(100)
                    };
                    packs.retain(|(name, _, _)| keep(name));
                }
                Scope::Budget(budget) => {
                    let mut used = 0u64;
                    packs.retain(|(_, size, _)| {
                        let take = used < budget;
                        used += *size;
                        take
                    });
                }
                _ => {}
            }
            // An operator's verify takes every core; the scheduled scrub one, beside backups.
            let workers = match scope {
                Scope::Budget(_) => 1,
                _ => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            };
            let names = packs.into_iter().map(|(name, _, _)| name).collect();
            for PackCheck {
                name,
                bad: found,
                report: r,
            } in check_packs(ctl, names, workers)?
            {
                report.packs += r.packs;
                report.chunks += r.chunks;
                report.bytes += r.bytes;
                if found.is_empty() && r.damaged_packs.is_empty() {
                    ctl.catalog.set_pack_verified(&name, now)?;
                }
                report.damaged_packs.extend(r.damaged_packs);
                bad.extend(found.into_iter().map(|(id, why)| (id, name.clone(), why)));
            }
        }
    }
    for (id, pack_name, why) in &bad {
        ctl.catalog.mark_bad_chunk(id, pack_name, why, now)?;
    }
    // A full verify reads the off-site copies back too.
    if matches!(scope, Scope::All) {
        report.damaged_packs.extend(crate::copy::verify(ctl)?);
    }
    // One pass over the snapshots' trees: those that use a chunk found bad now, and (a
    // full verify) those that use one an earlier run dropped from the index.
    let ids: HashSet<ChunkId> = bad.iter().map(|(id, _, _)| *id).collect();
    let full = matches!(scope, Scope::All);
    if !ids.is_empty() || full {
        let problems = snapshot_problems(ctl, &ids, full)?;
        if !ids.is_empty() {
            ctl.audit.ok(
                "controller:scrub",
                "scrub.bad_chunks",
                "",
                serde_json::json!({
                    "bad": bad.len(),
                    "chunks": bad.iter().take(100).map(|(id, p, why)| serde_json::json!({"chunk": id.to_hex(), "pack": p, "reason": why})).collect::<Vec<_>>(),
                    "snapshots": problems.iter().filter(|p| p.1).map(|p| p.0.0.clone()).collect::<Vec<_>>(),
                }),
            );
        }
        report.affected = problems.into_iter().map(|(a, _)| a).collect();
    }
    report.bad = bad;
    (report.healed, report.unhealed) = ctl.catalog.bad_chunk_counts()?;
    report.coverage = ctl.catalog.verified_coverage(now - period_ms)?;
    Ok(report)
}

/// Every chunk a snapshot references (its tree's and the tree's own), or why they cannot
/// be listed.
fn snapshot_chunks(ctl: &Controller, id: &str) -> Result<HashSet<ChunkId>, String> {
    let env = ctl
        .store
        .read_snapshot(id)
        .map_err(|e| format!("its envelope cannot be read: {e}"))?;
    let record = lifeboat_core::snapshot::Record::parse(&env.record)
        .map_err(|e| format!("its record is invalid: {e}"))?;
    let mut ids: HashSet<ChunkId> = record
        .tree_chunks()
        .map_err(|e| format!("its record is invalid: {e}"))?
        .into_iter()
        .collect();
    let tree = crate::snapshots::load_tree(ctl, &record)
        .map_err(|e| format!("its tree cannot be read: {e}"))?;
    ids.extend(tree.chunk_ids().copied());
    Ok(ids)
}

/// A snapshot that cannot be restored whole: `(id, agent, source, why)`.
type Affected = (String, String, String, String);

/// Snapshots whose tree (or the tree itself) uses any of `bad`, and with `missing_too`,
/// those that reference chunks the index does not hold (dropped by an earlier verify and
/// not healed yet), or whose tree cannot be read; each tree is read once. The flag says
/// whether the snapshot uses a chunk of `bad`.
fn snapshot_problems(
    ctl: &Controller,
    bad: &HashSet<ChunkId>,
    missing_too: bool,
) -> Result<Vec<(Affected, bool)>, ApiError> {
    let mut out = Vec::new();
    for s in ctl.catalog.snapshots(None, None)? {
        let (why, uses_bad) = match snapshot_chunks(ctl, &s.id) {
            Ok(uses) => match uses.iter().filter(|c| bad.contains(c)).count() {
                0 if !missing_too => continue,
                0 => {
                    let uses: Vec<ChunkId> = uses.into_iter().collect();
                    let mut missing = 0;
                    for batch in uses.chunks(512) {
                        missing += ctl.catalog.unknown_chunks(batch)?.len();
                    }
                    if missing == 0 {
                        continue;
                    }
                    let why = format!(
                        "references {missing} chunks the store does not have (found bad earlier): back up {} {} again to heal them",
                        s.agent_name, s.source
                    );
                    (why, false)
                }
                n => (format!("references {n} chunks found bad"), true),
            },
            Err(why) => (why, true),
        };
        out.push(((s.id, s.agent_name, s.source, why), uses_bad));
    }
    Ok(out)
}

/// The report as the API sends it.
pub fn to_pb(r: &Report) -> pb::VerifyReply {
    pb::VerifyReply {
        packs: r.packs,
        chunks: r.chunks,
        bytes: r.bytes,
        bad: r
            .bad
            .iter()
            .map(|(id, pack, why)| pb::BadChunk {
                id: id.to_hex(),
                pack: pack.clone(),
                reason: why.clone(),
            })
            .collect(),
        affected: r
            .affected
            .iter()
            .map(|(id, agent, source, why)| pb::AffectedSnapshot {
                id: id.clone(),
                agent: agent.clone(),
                source: source.clone(),
                reason: why.clone(),
            })
            .collect(),
        damaged_packs: r
            .damaged_packs
            .iter()
            .map(|(pack, why)| pb::DamagedPack {
                pack: pack.clone(),
                reason: why.clone(),
            })
            .collect(),
        healed: r.healed,
        unhealed: r.unhealed,
        coverage_percent: r.coverage,
    }
}
