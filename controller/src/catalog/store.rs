//! The store's index: packs and the chunks in them, their health (scrub) and reclaim (GC).

use lifeboat_core::ChunkId;
use lifeboat_core::pack::SealedPack;
use rusqlite::{OptionalExtension, params};

use super::Catalog;
use super::{Cached, CatalogError};
use crate::store::objects::Stored;

/// Chunks looked up by one statement in [`Catalog::chunk_places`].
const PLACES_BATCH: usize = 128;

/// Where a chunk is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlace {
    pub pack: String,
    /// The pack's object version (a store with Object Lock), empty otherwise.
    pub version: String,
    pub offset: u64,
    pub length: u32,
}

/// A pack as GC sees it.
pub struct PackLiveness {
    pub name: String,
    /// The pack's bytes (blobs, their frames, the trailer).
    pub size: u64,
    /// Bytes of its blobs still indexed there.
    pub live: u64,
    /// Blobs it was sealed with, and how many of them the index still points at.
    pub chunks: u64,
    pub indexed: u64,
}

impl PackLiveness {
    /// Every blob it was sealed with is still the indexed copy: rewriting it would give
    /// the same pack (a pack's name is its trailer's hash) and reclaim nothing.
    pub fn all_live(&self) -> bool {
        self.indexed > 0 && self.indexed >= self.chunks
    }
}

/// A pack as Object Lock sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedPack {
    pub name: String,
    pub version: String,
    pub retained_until_ms: i64,
}

impl RetainedPack {
    /// From `name, version, retained_until_ms`.
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RetainedPack> {
        Ok(RetainedPack {
            name: r.get(0)?,
            version: r.get(1)?,
            retained_until_ms: r.get(2)?,
        })
    }
}

/// The ids of `ids` for which `exists` says no, in order.
pub(super) fn absent(
    ids: &[ChunkId],
    mut exists: impl FnMut(&ChunkId) -> rusqlite::Result<bool>,
) -> Result<Vec<ChunkId>, CatalogError> {
    let mut out = Vec::new();
    for id in ids {
        if !exists(id)? {
            out.push(*id);
        }
    }
    Ok(out)
}

/// `(chunk, offset, length)` rows as the catalog stores them, typed.
pub(super) fn chunk_entries(
    rows: Vec<(Vec<u8>, i64, i64)>,
) -> Result<Vec<(ChunkId, u64, u32)>, CatalogError> {
    rows.into_iter()
        .map(|(id, o, l)| Ok((ChunkId::from_slice(&id)?, o as u64, l as u32)))
        .collect()
}

impl Catalog {
    // ---- chunks and packs ----

    /// Records a sealed pack, as the store confirmed it, and its chunks in one transaction.
    pub fn insert_pack(
        &self,
        pack: &SealedPack,
        stored: &Stored,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.cached_exec(
            "INSERT OR IGNORE INTO packs(name, size, chunks, created_ms, version, retained_until_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                pack.name,
                pack.size as i64,
                pack.entries.len() as i64,
                now_ms,
                stored.version,
                stored.retained_until_ms
            ],
        )?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO chunks(id, pack, offset, length) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in &pack.entries {
                st.execute(params![
                    &e.id.as_bytes()[..],
                    pack.name,
                    e.offset as i64,
                    e.length as i64
                ])?;
            }
            // A chunk scrub found bad is healed once a good copy is stored again.
            let mut heal = tx.prepare_cached(
                "UPDATE bad_chunks SET healed_ms = ?2 WHERE id = ?1 AND healed_ms = 0",
            )?;
            for e in &pack.entries {
                heal.execute(params![&e.id.as_bytes()[..], now_ms])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Ids of every snapshot in the catalog.
    pub fn snapshot_ids(&self) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached("SELECT id FROM snapshots")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// `(chunk, pack, pack created_ms)` of every indexed chunk.
    pub fn indexed_chunks(&self) -> Result<Vec<(ChunkId, String, i64)>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT c.id, c.pack, COALESCE(p.created_ms, 0) FROM chunks c LEFT JOIN packs p ON p.name = c.pack",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, p, c)| Ok((ChunkId::from_slice(&id)?, p, c)))
            .collect()
    }

    /// Drops chunks from the index (GC's sweep), in one transaction.
    pub fn unindex_chunks(&self, ids: &[ChunkId]) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
            for id in ids {
                st.execute([&id.as_bytes()[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every pack: its size, and what of it is still indexed there.
    pub fn pack_liveness(&self) -> Result<Vec<PackLiveness>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT p.name, p.size, COALESCE(SUM(c.length), 0), p.chunks, COUNT(c.id) FROM packs p LEFT JOIN chunks c ON c.pack = p.name GROUP BY p.name ORDER BY p.name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(PackLiveness {
                    name: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    live: r.get::<_, i64>(2)? as u64,
                    chunks: r.get::<_, i64>(3)? as u64,
                    indexed: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Records a compacted pack and points the index at its copies, in one transaction.
    pub fn relocate(
        &self,
        pack: &SealedPack,
        stored: &Stored,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.cached_exec(
            "INSERT OR IGNORE INTO packs(name, size, chunks, created_ms, verified_ms, version, retained_until_ms) VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
            params![
                pack.name,
                pack.size as i64,
                pack.entries.len() as i64,
                now_ms,
                stored.version,
                stored.retained_until_ms
            ],
        )?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE chunks SET pack = ?2, offset = ?3, length = ?4 WHERE id = ?1",
            )?;
            for e in &pack.entries {
                st.execute(params![
                    &e.id.as_bytes()[..],
                    pack.name,
                    e.offset as i64,
                    e.length as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn pack_names(&self) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached("SELECT name FROM packs")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Drops a pack and every chunk indexed in it, in one transaction.
    pub fn forget_pack(&self, name: &str) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.cached_exec("DELETE FROM chunks WHERE pack = ?1", [name])?;
        tx.cached_exec("DELETE FROM packs WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete_pack_row(&self, name: &str) -> Result<(), CatalogError> {
        self.lock()
            .cached_exec("DELETE FROM packs WHERE name = ?1", [name])?;
        Ok(())
    }

    /// `(chunk, offset, length)` of every indexed chunk in `pack`.
    pub fn chunks_in_pack(&self, pack: &str) -> Result<Vec<(ChunkId, u64, u32)>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT id, offset, length FROM chunks WHERE pack = ?1 ORDER BY offset",
        )?;
        let rows = st
            .query_map([pack], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        chunk_entries(rows)
    }

    /// `(pack, size, verified_ms)`, least recently verified first.
    pub fn packs_by_verified(&self) -> Result<Vec<(String, u64, i64)>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT name, size, verified_ms FROM packs ORDER BY verified_ms, name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn set_pack_verified(&self, pack: &str, now_ms: i64) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE packs SET verified_ms = ?2 WHERE name = ?1",
            params![pack, now_ms],
        )?;
        Ok(())
    }

    /// Records a bad chunk and drops it from the index, so the store reports it missing.
    pub fn mark_bad_chunk(
        &self,
        id: &ChunkId,
        pack: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.cached_exec(
            "INSERT INTO bad_chunks(id, pack, reason, found_ms, healed_ms) VALUES (?1, ?2, ?3, ?4, 0) ON CONFLICT(id) DO UPDATE SET pack = ?2, reason = ?3, found_ms = ?4, healed_ms = 0",
            params![&id.as_bytes()[..], pack, reason, now_ms],
        )?;
        tx.cached_exec("DELETE FROM chunks WHERE id = ?1", [&id.as_bytes()[..]])?;
        tx.commit()?;
        Ok(())
    }

    /// `(healed, unhealed)` bad chunks.
    pub fn bad_chunk_counts(&self) -> Result<(u64, u64), CatalogError> {
        let conn = self.lock();
        let healed: i64 = conn.cached_row(
            "SELECT COUNT(*) FROM bad_chunks WHERE healed_ms > 0",
            [],
            |r| r.get(0),
        )?;
        let unhealed: i64 = conn.cached_row(
            "SELECT COUNT(*) FROM bad_chunks WHERE healed_ms = 0",
            [],
            |r| r.get(0),
        )?;
        Ok((healed as u64, unhealed as u64))
    }

    /// Chunks found bad and not stored again yet (at most `limit`).
    pub fn unhealed_chunks(&self, limit: u32) -> Result<Vec<ChunkId>, CatalogError> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached("SELECT id FROM bad_chunks WHERE healed_ms = 0 LIMIT ?1")?;
        let rows = st
            .query_map([limit], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.iter().map(|b| Ok(ChunkId::from_slice(b)?)).collect()
    }

    /// Percentage of stored pack bytes verified since `since_ms`.
    pub fn verified_coverage(&self, since_ms: i64) -> Result<f64, CatalogError> {
        let conn = self.lock();
        let (total, fresh): (i64, i64) = conn.cached_row(
            "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(CASE WHEN verified_ms >= ?1 THEN size ELSE 0 END), 0) FROM packs",
            [since_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(if total == 0 {
            100.0
        } else {
            100.0 * fresh as f64 / total as f64
        })
    }

    /// Where a chunk is stored.
    pub fn chunk_location(&self, id: &ChunkId) -> Result<Option<ChunkPlace>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT c.pack, COALESCE(p.version, ''), c.offset, c.length FROM chunks c LEFT JOIN packs p ON p.name = c.pack WHERE c.id = ?1",
        )?;
        Ok(st
            .query_row([&id.as_bytes()[..]], |r| {
                Ok(ChunkPlace {
                    pack: r.get(0)?,
                    version: r.get(1)?,
                    offset: r.get::<_, i64>(2)? as u64,
                    length: r.get::<_, i64>(3)? as u32,
                })
            })
            .optional()?)
    }

    /// Where each of `ids` is stored (None: not indexed), in their order, under one lock:
    /// chunks are looked up [`PLACES_BATCH`] to a statement, each pack's version once. For
    /// a restore's `LocateChunks`, the one catalog read per restored byte.
    pub fn chunk_places(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkPlace>>, CatalogError> {
        use std::collections::HashMap;
        let conn = self.lock();
        // One statement of a fixed size (a short last batch repeats its first id), so that
        // it is prepared once.
        let sql = format!(
            "SELECT id, pack, offset, length FROM chunks WHERE id IN ({})",
            vec!["?"; PLACES_BATCH].join(",")
        );
        let mut chunks = conn.prepare_cached(&sql)?;
        let mut packs = conn.prepare_cached("SELECT version FROM packs WHERE name = ?1")?;
        // Pack name and version, by the order first met.
        let mut pack_list: Vec<(String, String)> = Vec::new();
        let mut pack_index: HashMap<String, usize> = HashMap::new();
        let mut found: HashMap<ChunkId, (usize, u64, u32)> = HashMap::with_capacity(ids.len());
        for batch in ids.chunks(PLACES_BATCH) {
            let params = (0..PLACES_BATCH).map(|i| &batch.get(i).unwrap_or(&batch[0]).0[..]);
            let mut rows = chunks.query(rusqlite::params_from_iter(params))?;
            while let Some(r) = rows.next()? {
                let id =
                    ChunkId::from_slice(r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?)
                        .map_err(|e| CatalogError::broken(format!("a chunk row's id: {e}")))?;
                let pack = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
                let n = match pack_index.get(pack) {
                    Some(n) => *n,
                    None => {
                        let version: String = packs
                            .query_row([pack], |r| r.get(0))
                            .optional()?
                            .unwrap_or_default();
                        pack_list.push((pack.to_string(), version));
                        pack_index.insert(pack.to_string(), pack_list.len() - 1);
                        pack_list.len() - 1
                    }
                };
                found.insert(
                    id,
                    (n, r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u32),
                );
            }
        }
        Ok(ids
            .iter()
            .map(|id| {
                found.get(id).map(|&(n, offset, length)| ChunkPlace {
                    pack: pack_list[n].0.clone(),
                    version: pack_list[n].1.clone(),
                    offset,
                    length,
                })
            })
            .collect())
    }

    /// A pack's retention as the catalog recorded it, if the pack is indexed.
    pub fn retained_pack(&self, name: &str) -> Result<Option<RetainedPack>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT name, version, retained_until_ms FROM packs WHERE name = ?1",
                [name],
                RetainedPack::from_row,
            )
            .optional()?)
    }

    pub fn set_pack_retained(&self, name: &str, until_ms: i64) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE packs SET retained_until_ms = MAX(retained_until_ms, ?2) WHERE name = ?1",
            params![name, until_ms],
        )?;
        Ok(())
    }

    /// Records that agent `agent_id` holds `ids` (it uploaded them, or its snapshots
    /// reference them), in one transaction.
    pub fn own_chunks(&self, agent_id: &str, ids: &[ChunkId]) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO agent_chunks(agent_id, id) VALUES (?1, ?2)",
            )?;
            for id in ids {
                st.execute(params![agent_id, &id.as_bytes()[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// For each of `ids`: whether the index knows it, and whether `agent_id` holds it. Both
    /// are asked of every id, so the work is the same whatever the answers.
    pub fn known_and_owned(
        &self,
        agent_id: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<(bool, bool)>, CatalogError> {
        let conn = self.lock();
        let mut known = conn.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
        let mut owned =
            conn.prepare_cached("SELECT 1 FROM agent_chunks WHERE agent_id = ?1 AND id = ?2")?;
        ids.iter()
            .map(|id| {
                let id = &id.as_bytes()[..];
                Ok((known.exists([id])?, owned.exists(params![agent_id, id])?))
            })
            .collect()
    }

    /// Whether any agent's chunks are recorded yet.
    pub fn any_owned_chunks(&self) -> Result<bool, CatalogError> {
        Ok(self
            .lock()
            .cached_row("SELECT EXISTS (SELECT 1 FROM agent_chunks)", [], |r| {
                r.get(0)
            })?)
    }

    /// The subset of `ids` that the index does not know.
    pub fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
        absent(ids, |id| st.exists([&id.as_bytes()[..]]))
    }
}

#[cfg(test)]
mod tests {
    use lifeboat_core::ChunkId;
    use lifeboat_core::pack::{IndexEntry, SealedPack};

    use super::*;

    fn pack(name: char, ids: &[u8]) -> SealedPack {
        SealedPack {
            name: name.to_string().repeat(64),
            path: Default::default(),
            size: 1000,
            entries: ids
                .iter()
                .enumerate()
                .map(|(i, b)| IndexEntry {
                    id: ChunkId::from_slice(&[*b; 32]).expect("id"),
                    offset: i as u64 * 100,
                    length: 100,
                })
                .collect(),
        }
    }

    #[test]
    fn chunk_places_answer_as_chunk_location_does_in_the_order_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::open(&dir.path().join("catalog.db")).expect("catalog");
        let stored = |v: &str| Stored {
            version: v.into(),
            retained_until_ms: 0,
        };
        catalog
            .insert_pack(&pack('a', &[1, 2, 3]), &stored("va"), 1)
            .expect("pack a");
        catalog
            .insert_pack(&pack('b', &[4, 5]), &stored(""), 1)
            .expect("pack b");
        let ids: Vec<ChunkId> = [5, 1, 9, 3, 4, 2]
            .iter()
            .map(|b| ChunkId::from_slice(&[*b; 32]).expect("id"))
            .collect();
        let places = catalog.chunk_places(&ids).expect("places");
        assert_eq!(places.len(), ids.len());
        for (id, place) in ids.iter().zip(&places) {
            assert_eq!(
                place,
                &catalog.chunk_location(id).expect("location"),
                "{id}"
            );
        }
        assert!(places[2].is_none(), "an unindexed chunk has no place");
        let first = places[1].as_ref().expect("chunk 1");
        assert_eq!((first.version.as_str(), first.offset), ("va", 0));
        let last = places[5].as_ref().expect("chunk 2");
        assert_eq!(
            (last.pack.as_str(), last.offset),
            ("a".repeat(64).as_str(), 100)
        );
    }

    #[test]
    fn chunk_places_answer_across_batches_with_repeats_and_gaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::open(&dir.path().join("catalog.db")).expect("catalog");
        let stored = Stored {
            version: "v".into(),
            retained_until_ms: 0,
        };
        let indexed: Vec<u8> = (10..=250).collect();
        catalog
            .insert_pack(&pack('c', &indexed), &stored, 1)
            .expect("pack c");
        // A full batch and a short one, in reverse, with unindexed ids (6..10) and
        // an id asked for twice.
        let mut asked: Vec<u8> = (6..=250).rev().collect();
        asked.push(200);
        let ids: Vec<ChunkId> = asked
            .iter()
            .map(|b| ChunkId::from_slice(&[*b; 32]).expect("id"))
            .collect();
        assert!(ids.len() > PLACES_BATCH && ids.len() < 2 * PLACES_BATCH);
        let places = catalog.chunk_places(&ids).expect("places");
        assert_eq!(places.len(), ids.len());
        for (id, place) in ids.iter().zip(&places) {
            assert_eq!(
                place,
                &catalog.chunk_location(id).expect("location"),
                "{id}"
            );
        }
        assert_eq!(places.iter().filter(|p| p.is_none()).count(), 4);
    }
}
