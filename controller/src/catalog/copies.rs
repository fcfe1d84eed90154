//! Off-site copies: which packs and snapshots each copy store holds.

use lifeboat_core::ChunkId;
use rusqlite::{OptionalExtension, params};

use super::Catalog;
use super::store::{ChunkPlace, RetainedPack};
use super::{Cached, CatalogError};

impl Catalog {
    /// Records pack `pack` as copied whole to `store` (its version there), with the
    /// chunks the primary index places in it, in one transaction.
    pub fn record_copy_pack(
        &self,
        store: &str,
        pack: &str,
        version: &str,
        retained_until_ms: i64,
        chunks: &[(ChunkId, u64, u32)],
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.cached_exec(
            "INSERT OR REPLACE INTO copy_packs(store, pack, version, retained_until_ms, copied_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![store, pack, version, retained_until_ms, now_ms],
        )?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO copy_chunks(store, id, pack, offset, length) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (id, offset, length) in chunks {
                st.execute(params![
                    store,
                    &id.as_bytes()[..],
                    pack,
                    *offset as i64,
                    *length as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Where `store` holds chunk `id`, if it does.
    pub fn copy_chunk_location(
        &self,
        store: &str,
        id: &ChunkId,
    ) -> Result<Option<ChunkPlace>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT c.pack, COALESCE(p.version, ''), c.offset, c.length FROM copy_chunks c LEFT JOIN copy_packs p ON p.store = c.store AND p.pack = c.pack WHERE c.store = ?1 AND c.id = ?2",
        )?;
        Ok(st
            .query_row(params![store, &id.as_bytes()[..]], |r| {
                Ok(ChunkPlace {
                    pack: r.get(0)?,
                    version: r.get(1)?,
                    offset: r.get::<_, i64>(2)? as u64,
                    length: r.get::<_, i64>(3)? as u32,
                })
            })
            .optional()?)
    }

    /// `(version, retained until)` of pack `pack` in `store`, if it was copied there.
    pub fn copy_pack(
        &self,
        store: &str,
        pack: &str,
    ) -> Result<Option<(String, i64)>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT version, retained_until_ms FROM copy_packs WHERE store = ?1 AND pack = ?2",
                params![store, pack],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn set_copy_pack_retained(
        &self,
        store: &str,
        pack: &str,
        until_ms: i64,
    ) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE copy_packs SET retained_until_ms = MAX(retained_until_ms, ?3) WHERE store = ?1 AND pack = ?2",
            params![store, pack, until_ms],
        )?;
        Ok(())
    }

    /// Records snapshot `snapshot`'s copy in `store` as complete.
    pub fn record_copy(
        &self,
        store: &str,
        snapshot: &str,
        version: &str,
        locked_until_ms: i64,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "INSERT OR REPLACE INTO copies(store, snapshot, version, locked_until_ms, copied_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![store, snapshot, version, locked_until_ms, now_ms],
        )?;
        Ok(())
    }

    /// The envelope version of `snapshot`'s copy in `store`, if its copy is complete.
    pub fn copy_of(&self, store: &str, snapshot: &str) -> Result<Option<String>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT version FROM copies WHERE store = ?1 AND snapshot = ?2",
                params![store, snapshot],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The stores holding a complete copy of `snapshot`.
    pub fn copies_of(&self, snapshot: &str) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached("SELECT store FROM copies WHERE snapshot = ?1 ORDER BY store")?;
        let rows = st
            .query_map([snapshot], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Snapshots (ids, oldest first) without a complete copy in `store`.
    pub fn not_copied(&self, store: &str) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT id FROM snapshots WHERE id NOT IN (SELECT snapshot FROM copies WHERE store = ?1) ORDER BY received_ms",
        )?;
        let rows = st
            .query_map([store], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The subset of `ids` that `store` does not hold.
    pub fn not_in_copy(&self, store: &str, ids: &[ChunkId]) -> Result<Vec<ChunkId>, CatalogError> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached("SELECT 1 FROM copy_chunks WHERE store = ?1 AND id = ?2")?;
        super::store::absent(ids, |id| st.exists(params![store, &id.as_bytes()[..]]))
    }

    /// `(pack, version)` of every pack copied to `store`.
    pub fn copy_packs(&self, store: &str) -> Result<Vec<(String, String)>, CatalogError> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached("SELECT pack, version FROM copy_packs WHERE store = ?1")?;
        let rows = st
            .query_map([store], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// `(chunk, offset, length)` of every chunk `store` holds in `pack`.
    pub fn copy_chunks_in(
        &self,
        store: &str,
        pack: &str,
    ) -> Result<Vec<(ChunkId, u64, u32)>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT id, offset, length FROM copy_chunks WHERE store = ?1 AND pack = ?2",
        )?;
        let rows = st
            .query_map(params![store, pack], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        super::store::chunk_entries(rows)
    }

    /// Forgets pack `pack` of `store` and its chunks, in one transaction.
    pub fn forget_copy_pack(&self, store: &str, pack: &str) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.cached_exec(
            "DELETE FROM copy_chunks WHERE store = ?1 AND pack = ?2",
            params![store, pack],
        )?;
        tx.cached_exec(
            "DELETE FROM copy_packs WHERE store = ?1 AND pack = ?2",
            params![store, pack],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// `(snapshot, envelope version)` of copies in `store` whose copy lock ended.
    pub fn expired_copies(
        &self,
        store: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, String)>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT snapshot, version FROM copies WHERE store = ?1 AND locked_until_ms < ?2",
        )?;
        let rows = st
            .query_map(params![store, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Snapshots with a complete copy in `store`.
    pub fn copied(&self, store: &str) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached("SELECT snapshot FROM copies WHERE store = ?1")?;
        let rows = st
            .query_map([store], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Marks every copy in `store` incomplete, so the next copy run checks each again.
    pub fn reopen_copies(&self, store: &str) -> Result<(), CatalogError> {
        self.lock()
            .cached_exec("DELETE FROM copies WHERE store = ?1", [store])?;
        Ok(())
    }

    pub fn delete_copy(&self, store: &str, snapshot: &str) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "DELETE FROM copies WHERE store = ?1 AND snapshot = ?2",
            params![store, snapshot],
        )?;
        Ok(())
    }

    /// The primary packs that hold `ids`, each once, with their version and retention.
    pub fn packs_holding(&self, ids: &[ChunkId]) -> Result<Vec<RetainedPack>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT p.name, p.version, p.retained_until_ms FROM chunks c JOIN packs p ON p.name = c.pack WHERE c.id = ?1",
        )?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for id in ids {
            if let Some(p) = st
                .query_row([&id.as_bytes()[..]], RetainedPack::from_row)
                .optional()?
                && seen.insert(p.name.clone())
            {
                out.push(p);
            }
        }
        Ok(out)
    }
}
