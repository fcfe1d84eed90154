//! Off-site copies (3-2-1): each snapshot of a source whose policy says `copy = "30d"` is
//! copied to the copy store (`--copy-store`, its own credentials), and locked there that
//! long from its receive time where the copy store has Object Lock.
//!
//! A copy takes, from the primary, every pack holding a chunk the snapshot needs that the
//! copy store does not hold yet, whole and under the same name (chunk offsets stay valid,
//! and nothing is re-encrypted: the copy is as sealed as the primary), then the envelope.
//! Each object is read back from the copy store and compared before it is recorded, and
//! the envelope goes last: a snapshot counts as copied only once everything it needs is
//! there. A copy killed anywhere leaves objects that are not recorded yet; the next run
//! finds them in place (same length, read back whole) and records them without writing
//! them again, so nothing is duplicated and no half copy is ever listed.
//!
//! `LIFEBOAT_CRASH_AT=copy-after-pack` aborts the process after the first pack is stored
//! in the copy store and before it is recorded (the tests' crash point).

use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::Record;

use crate::Controller;
use crate::error::ApiError;
use crate::store::CopyStore;
use crate::store::objects::{Objects, StoreError, Stored, pack_key, snapshot_key};

/// What one run copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub snapshots: u64,
    pub packs: u64,
    pub bytes: u64,
    /// Objects found already in place (a run killed before it recorded them).
    pub adopted: u64,
}

/// Copies every snapshot that a policy wants copied and the copy stores lack. Blocking.
pub fn run(ctl: &Controller) -> Result<Report, ApiError> {
    let mut report = Report::default();
    for copy in ctl.store.copies() {
        for id in ctl.catalog.not_copied(&copy.name)? {
            let snap = match ctl.catalog.find_snapshot(&id) {
                Ok(s) => s,
                Err(crate::catalog::CatalogError::NotFound(_)) => continue, // deleted meanwhile
                Err(e) => return Err(e.into()),
            };
            let keep_s = copy_for(ctl, &snap.agent_id, &snap.source)?;
            if keep_s == 0 {
                continue;
            }
            let until = snap.received_ms + (keep_s as i64) * 1000;
            copy_snapshot(
                ctl,
                copy,
                &snap.id,
                &snap.envelope_version,
                until,
                &mut report,
            )?;
            report.snapshots += 1;
            tracing::info!(copy = %copy.name, snapshot = %snap.id, "snapshot copied off-site");
        }
    }
    Ok(report)
}

/// How long the policies covering a source keep its copies (0: not copied).
fn copy_for(ctl: &Controller, agent_id: &str, source: &str) -> Result<u64, ApiError> {
    let Some(agent) = ctl.catalog.agent(agent_id)? else {
        return Ok(0);
    };
    Ok(crate::policy::policies(ctl)?
        .iter()
        .filter(|p| crate::policy::covers(p, &agent, source))
        .map(|p| p.copy_s)
        .max()
        .unwrap_or(0))
}

fn copy_snapshot(
    ctl: &Controller,
    copy: &CopyStore,
    id: &str,
    envelope_version: &str,
    until_ms: i64,
    report: &mut Report,
) -> Result<(), ApiError> {
    let primary = ctl.store.objects();
    let env = ctl.store.read_snapshot(id)?;
    let record = Record::parse(&env.record)?;
    let (chunks, incomplete) = crate::snapshots::referenced_chunks(ctl, &record)?;
    if let Some(i) = incomplete {
        return Err(ApiError::FailedPrecondition(format!(
            "snapshot {id} misses {} chunks in the primary store (first {}): it cannot be copied whole; run `lifeboat verify`",
            i.missing, i.first
        )));
    }
    let mut needed: Vec<ChunkId> = chunks.iter().copied().collect();
    needed.extend(record.tree_chunks()?);
    let retain = if copy.objects.object_lock() {
        until_ms
    } else {
        0
    };
    // Packs the copy already holds are retained as long as this copy needs them.
    if retain > 0 {
        for pack in ctl.catalog.packs_holding(&needed)? {
            let pack = pack.name;
            if let Some((version, held)) = ctl.catalog.copy_pack(&copy.name, &pack)?
                && held < retain
            {
                let held = copy.objects.retain(&pack_key(&pack), &version, retain)?;
                ctl.catalog
                    .set_copy_pack_retained(&copy.name, &pack, held)?;
            }
        }
    }
    let missing = ctl.catalog.not_in_copy(&copy.name, &needed)?;
    for held in ctl.catalog.packs_holding(&missing)? {
        let pack = held.name;
        let key = pack_key(&pack);
        let bytes = primary.get(&key, &held.version)?;
        let stored = put_verified(copy.objects.as_ref(), &key, &bytes, retain, report)?;
        lifeboat_core::crash_point("copy-after-pack");
        let entries = ctl.catalog.chunks_in_pack(&pack)?;
        ctl.catalog.record_copy_pack(
            &copy.name,
            &pack,
            &stored.version,
            stored.retained_until_ms,
            &entries,
            crate::now_ms(),
        )?;
        report.packs += 1;
        report.bytes += bytes.len() as u64;
    }
    let key = snapshot_key(id);
    let bytes = primary.get(&key, envelope_version)?;
    let stored = put_verified(copy.objects.as_ref(), &key, &bytes, retain, report)?;
    ctl.catalog
        .record_copy(&copy.name, id, &stored.version, until_ms, crate::now_ms())?;
    Ok(())
}

/// Stores `bytes` as `key` in `to` unless an object of that length is already there (a
/// run killed before it recorded it); either way reads it back and compares before it
/// counts.
fn put_verified(
    to: &dyn Objects,
    key: &str,
    bytes: &[u8],
    retain: i64,
    report: &mut Report,
) -> Result<Stored, ApiError> {
    let same = |stored: &Stored| -> Result<bool, ApiError> {
        Ok(blake3::hash(&to.get(key, &stored.version)?) == blake3::hash(bytes))
    };
    if let Some((len, version)) = to.stat(key)?
        && len == bytes.len() as u64
    {
        let found = Stored {
            version,
            retained_until_ms: 0,
        };
        if same(&found)? {
            report.adopted += 1;
            let held = if retain > 0 {
                to.retain(key, &found.version, retain)?
            } else {
                0
            };
            return Ok(Stored {
                retained_until_ms: held,
                ..found
            });
        }
    }
    let stored = to.put(key, bytes, retain)?;
    if !same(&stored)? {
        return Err(StoreError::Corrupt(format!(
            "{key}: the copy store returned other bytes than the {} copied; the copy is not recorded",
            bytes.len()
        ))
        .into());
    }
    Ok(stored)
}

/// Reads every pack of every copy store back and verifies each chunk in it (opened with
/// the data key, decoded, its id recomputed). A pack that cannot be read whole is
/// forgotten with the copies that lean on it, so the next copy run sends it again.
/// Returns `(store:pack, why)` of every damaged pack. Blocking.
pub fn verify(ctl: &Controller) -> Result<Vec<(String, String)>, ApiError> {
    let mut damaged = Vec::new();
    for copy in ctl.store.copies() {
        for (pack, version) in ctl.catalog.copy_packs(&copy.name)? {
            let entries = ctl.catalog.copy_chunks_in(&copy.name, &pack)?;
            let why = match copy.objects.get(&pack_key(&pack), &version) {
                Err(e @ (StoreError::Unavailable(_) | StoreError::Refused(_))) => {
                    return Err(e.into());
                }
                Err(e) => Some(format!("cannot be read: {e}")),
                Ok(bytes) => entries.iter().find_map(|(id, offset, length)| {
                    let start = *offset as usize;
                    let Some(stored) = bytes.get(start..start + *length as usize) else {
                        return Some(format!("cut short: chunk {id} is not all there"));
                    };
                    ctl.store
                        .open_blob(id, stored.to_vec())
                        .and_then(|b| lifeboat_core::codec::decode_verified(&ctl.chunk_key, id, &b))
                        .err()
                        .map(|e| format!("chunk {id} is corrupt: {e}"))
                }),
            };
            if let Some(why) = why {
                tracing::error!(copy = %copy.name, %pack, %why, "a copied pack is damaged; it is copied again");
                // Every copy in the store is checked again by the next run, which sends
                // what is missing now.
                ctl.catalog.forget_copy_pack(&copy.name, &pack)?;
                ctl.catalog.reopen_copies(&copy.name)?;
                damaged.push((format!("{}:{pack}", copy.name), why));
            }
        }
    }
    Ok(damaged)
}

/// Drops copies whose copy lock has passed (their envelope first), then the copied packs
/// no remaining copy needs and the store no longer retains. Returns the packs deleted.
/// Blocking.
pub fn gc(ctl: &Controller, now_ms: i64) -> Result<u64, ApiError> {
    let mut deleted = 0;
    for copy in ctl.store.copies() {
        for (snapshot, version) in ctl.catalog.expired_copies(&copy.name, now_ms)? {
            match copy.objects.delete(&snapshot_key(&snapshot), &version) {
                Ok(()) => ctl.catalog.delete_copy(&copy.name, &snapshot)?,
                Err(StoreError::Locked(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut needed = std::collections::HashSet::new();
        let primary: std::collections::HashSet<String> =
            ctl.catalog.snapshot_ids()?.into_iter().collect();
        for snapshot in ctl.catalog.copied(&copy.name)? {
            // A copy outlives its snapshot in the primary when its lock runs longer than
            // retention there: what it needs is then read from the copy itself (through
            // the primary it would read as a primary failure, and turn off restores'
            // direct reads after every GC).
            let (record, tree) = if primary.contains(&snapshot) {
                let record = Record::parse(&ctl.store.read_snapshot(&snapshot)?.record)?;
                let tree = crate::snapshots::load_tree(ctl, &record)?;
                (record, tree)
            } else {
                let record = Record::parse(&ctl.store.read_copy_envelope(copy, &snapshot)?.record)?;
                let chunks = record
                    .tree_chunks()?
                    .iter()
                    .map(|id| ctl.store.read_copy_chunk(copy, id))
                    .collect::<Result<Vec<_>, _>>()?;
                let tree = record.read_tree(&ctl.chunk_key, chunks)?;
                (record, tree)
            };
            needed.extend(record.tree_chunks()?);
            needed.extend(tree.chunk_ids().copied());
        }
        for (pack, version) in ctl.catalog.copy_packs(&copy.name)? {
            let entries = ctl.catalog.copy_chunks_in(&copy.name, &pack)?;
            if entries.iter().any(|(id, _, _)| needed.contains(id)) {
                continue;
            }
            match copy.objects.delete(&pack_key(&pack), &version) {
                Ok(()) => {
                    ctl.catalog.forget_copy_pack(&copy.name, &pack)?;
                    deleted += 1;
                }
                Err(StoreError::Locked(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(deleted)
}
