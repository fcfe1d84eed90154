//! Garbage collection: drop chunks no snapshot references from the index, and compact packs
//! whose live fraction is low. It runs beside backups, safely:
//!
//! * **Mark** reads every committed snapshot's tree (no lock held).
//! * **Sweep** holds the commit lock: it adds what was committed meanwhile, then removes from
//!   the index the unreferenced chunks whose pack is older than the upload lease, by the wall
//!   clock and by this process's monotonic clock both (a clock stepped forward ages nothing
//!   a running backup uploaded since the controller started). A commit
//!   checks, under the same lock, that every chunk it references is indexed, so it can never
//!   become visible referencing a swept chunk; chunks a running backup uploaded within the
//!   lease are not swept at all. A backup paused past the lease finds its chunks gone at
//!   commit, is refused, and is retried.
//! * **Compact** copies each low pack's live blobs (each verified against its id) into a new
//!   pack, made durable first; then one transaction points the index at the copies; only then
//!   is the old pack deleted. A crash at any point leaves either the old or the new location
//!   indexed, both complete. A pack with nothing dead is never rewritten, whatever the
//!   threshold: a pack is named by its trailer, so the copy of a pack whose blobs are all
//!   live is the same pack, and deleting the old one deleted the only one.
//!
//! `LIFEBOAT_CRASH_AT=gc-after-sweep|compact-after-new-pack|compact-after-relocate` aborts the
//! process at that point (the crash tests use it); unset, it does nothing.

use std::collections::HashSet;

use lifeboat_core::{ChunkId, codec, crash_point, pack};

use crate::Controller;
use crate::error::ApiError;

/// What a GC did (or, dry, would do).
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub referenced: u64,
    pub swept: u64,
    /// Chunks left alone because their pack is younger than the lease.
    pub leased: u64,
    pub packs_compacted: u64,
    pub packs_deleted: u64,
    pub bytes_reclaimed: u64,
    /// Packs to compact or delete that the store still retains (Object Lock): left alone
    /// until their date.
    pub packs_retained: u64,
    /// Packs deleted from copy stores (no copy kept there needs them any more).
    pub copy_packs_deleted: u64,
}

/// Every chunk the committed snapshots `ids` reference (their tree chunks and file chunks).
fn references(
    ctl: &Controller,
    ids: &[String],
    into: &mut HashSet<ChunkId>,
) -> Result<(), ApiError> {
    for id in ids {
        let env = ctl.store.read_snapshot(id)?;
        let record = lifeboat_core::snapshot::Record::parse(&env.record)?;
        into.extend(record.tree_chunks()?);
        let tree = crate::snapshots::load_tree(ctl, &record).map_err(|e| {
            ApiError::FailedPrecondition(format!(
                "snapshot {id}: {e}; GC stops rather than guess what it references (run `lifeboat verify`)"
            ))
        })?;
        into.extend(tree.chunk_ids().copied());
    }
    Ok(())
}

/// Runs a GC at `now_ms`; chunks in packs sealed within `lease_ms` are never swept; packs
/// with less than `compact_below` of their bytes live are compacted.
pub fn gc(
    ctl: &Controller,
    now_ms: i64,
    lease_ms: i64,
    compact_below: f64,
    dry_run: bool,
) -> Result<Report, ApiError> {
    let mut report = Report::default();
    // Mark, without holding up commits.
    let marked: Vec<String> = ctl.catalog.snapshot_ids()?;
    let mut referenced = HashSet::new();
    references(ctl, &marked, &mut referenced)?;
    {
        // Sweep, with commits held: add what they made visible meanwhile.
        let _commits = ctl.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let marked: HashSet<String> = marked.into_iter().collect();
        let newer: Vec<String> = ctl
            .catalog
            .snapshot_ids()?
            .into_iter()
            .filter(|id| !marked.contains(id))
            .collect();
        references(ctl, &newer, &mut referenced)?;
        report.referenced = referenced.len() as u64;
        let mut sweep = Vec::new();
        // Young by the wall clock, or by this process's monotonic clock: a wall clock
        // stepped forward (RELIABILITY A13) must not age a running backup's uploads past
        // their lease.
        let young = ctl
            .store
            .packs_sealed_within(std::time::Duration::from_millis(lease_ms.max(0) as u64));
        for (id, pack, created_ms) in ctl.catalog.indexed_chunks()? {
            if referenced.contains(&id) {
                continue;
            }
            if created_ms > now_ms - lease_ms || young.contains(&pack) {
                report.leased += 1;
            } else {
                sweep.push(id);
            }
        }
        report.swept = sweep.len() as u64;
        if !dry_run && !sweep.is_empty() {
            ctl.chunk_sweeps
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ctl.catalog.unindex_chunks(&sweep)?;
        }
    }
    crash_point("gc-after-sweep");
    if dry_run {
        return Ok(report);
    }

    // Compact: packs whose live bytes fell below the threshold (or to nothing). A pack
    // with nothing dead is never rewritten, whatever the threshold (its trailer alone can
    // put its live bytes below it): the copy would be the same pack under the same name,
    // and deleting "the old one" would delete the only one.
    for p in ctl.catalog.pack_liveness()? {
        let (name, size, live) = (p.name.as_str(), p.size, p.live);
        if p.all_live() || (size > 0 && (live as f64) >= compact_below * size as f64) {
            continue;
        }
        // Retained: nobody may delete it before its date, and a locked snapshot's chunks
        // never move out of their locked pack. With Object Lock, commits (which extend
        // retention) wait while a pack is compacted, so none extends it midway.
        let _commits = ctl
            .store
            .object_lock()
            .then(|| ctl.commit_lock.lock().unwrap_or_else(|p| p.into_inner()));
        if ctl.store.pack_retained_until(name)? > now_ms {
            report.packs_retained += 1;
            continue;
        }
        let entries = ctl.catalog.chunks_in_pack(name)?;
        let mut kept = 0;
        if !entries.is_empty() {
            let old = ctl.store.pack_file(name)?;
            let file = std::fs::File::open(&old.path)
                .map_err(|e| ApiError::internal(format!("opening {}: {e}", old.path.display())))?;
            let mut w = ctl.store.new_pack()?;
            for (id, offset, length) in &entries {
                let stored = pack::read_blob(&file, *offset, *length)?;
                // Never copy a bad blob over: scrub's business, and it must be loud. The
                // stored bytes move as they are (sealed, in an encrypted store).
                let blob = ctl.store.open_blob(id, stored.clone());
                blob.and_then(|b| codec::decode_verified(&ctl.chunk_key, id, &b))
                    .map_err(|e| {
                        ApiError::FailedPrecondition(format!(
                            "compacting pack {name}: chunk {id}: {e}; run `lifeboat verify`"
                        ))
                    })?;
                w.add(*id, &stored)?;
            }
            let (sealed, stored) = ctl.store.store_pack(w)?;
            if sealed.name == name {
                // The same blobs at the same offsets: the same pack. Keep it.
                tracing::warn!(pack = %name, "compaction rewrote a pack unchanged; kept");
                continue;
            }
            crash_point("compact-after-new-pack");
            ctl.catalog.relocate(&sealed, &stored, now_ms)?;
            crash_point("compact-after-relocate");
            kept = sealed.size;
        }
        ctl.store.delete_pack(name)?;
        report.bytes_reclaimed += size.saturating_sub(kept);
        if entries.is_empty() {
            report.packs_deleted += 1;
        } else {
            report.packs_compacted += 1;
        }
    }
    report.copy_packs_deleted = crate::copy::gc(ctl, now_ms)?;
    ctl.audit.ok(
        "controller:gc",
        "gc",
        "",
        serde_json::json!({
            "swept": report.swept, "leased": report.leased, "compacted": report.packs_compacted,
            "deleted": report.packs_deleted, "bytes_reclaimed": report.bytes_reclaimed,
            "retained": report.packs_retained, "copy_packs_deleted": report.copy_packs_deleted,
        }),
    );
    Ok(report)
}
