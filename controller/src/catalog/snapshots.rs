//! Snapshots: their rows, retention's view of them, and quarantine.

use rusqlite::{OptionalExtension, Row, params};

use super::Catalog;
use super::{Cached, CatalogError};

/// A snapshot as retention sees it.
#[derive(Debug, Clone)]
pub struct RetentionRow {
    pub agent_id: String,
    pub source: String,
    pub id: String,
    pub received_ms: i64,
    pub protected: bool,
    pub locked_until_ms: i64,
    pub quarantined: bool,
    /// Judged suspect by the anomalies worker.
    pub suspect: bool,
    /// Judged at all (an anomaly report exists).
    pub analyzed: bool,
}

#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub id: String,
    pub agent_id: String,
    pub agent_name: String,
    pub source: String,
    pub source_path: String,
    pub hostname: String,
    pub received_ms: i64,
    pub agent_time_ms: i64,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub bytes_new: u64,
    pub bytes_read: u64,
    pub parent: String,
    /// When it was quarantined (0: not).
    pub quarantined_ms: i64,
    /// Until when nobody may delete it (0: not locked), fixed at commit; only ever
    /// extended.
    pub locked_until_ms: i64,
    /// The envelope's object version (a store with Object Lock), empty otherwise.
    pub envelope_version: String,
}

impl SnapshotRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(SnapshotRow {
            id: r.get(0)?,
            agent_id: r.get(1)?,
            agent_name: r.get(2)?,
            source: r.get(3)?,
            source_path: r.get(4)?,
            hostname: r.get(5)?,
            received_ms: r.get(6)?,
            agent_time_ms: r.get(7)?,
            files: r.get::<_, i64>(8)? as u64,
            dirs: r.get::<_, i64>(9)? as u64,
            bytes: r.get::<_, i64>(10)? as u64,
            bytes_new: r.get::<_, i64>(11)? as u64,
            parent: r.get(12)?,
            bytes_read: r.get::<_, i64>(13)? as u64,
            quarantined_ms: r.get(14)?,
            locked_until_ms: r.get(15)?,
            envelope_version: r.get(16)?,
        })
    }
}

const SNAP_COLS: &str = "id, agent_id, agent_name, source, source_path, hostname, received_ms, agent_time_ms, files, dirs, bytes, bytes_new, parent, bytes_read, quarantined_ms, locked_until_ms, envelope_version";

impl Catalog {
    // ---- snapshots ----

    pub fn insert_snapshot(&self, s: &SnapshotRow) -> Result<Vec<String>, CatalogError> {
        self.insert_snapshots(&[s])
    }

    /// Lists snapshots, all in one transaction (a commit group's), on disk when it returns.
    /// The catalog runs with `synchronous = NORMAL`: in WAL mode a commit then survives the
    /// process dying but not a power cut. A listed snapshot is acknowledged to its agent,
    /// so this one commit is FULL: SQLite fsyncs the WAL, and with it every commit before.
    ///
    /// A device's quarantine covers what it commits later: a snapshot whose device's newest
    /// earlier snapshot is quarantined is listed quarantined (since its receive time) until
    /// an admin lifts it. Returns the ids listed so; decided in the same transaction as the
    /// listing, so a quarantine being set meanwhile cannot slip between them.
    pub fn insert_snapshots(&self, rows: &[&SnapshotRow]) -> Result<Vec<String>, CatalogError> {
        let mut conn = self.lock();
        conn.pragma_update(None, "synchronous", "FULL")?;
        let listed = Self::insert_snapshot_rows(&mut conn, rows);
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        listed
    }

    fn insert_snapshot_rows(
        conn: &mut rusqlite::Connection,
        rows: &[&SnapshotRow],
    ) -> Result<Vec<String>, CatalogError> {
        let tx = conn.transaction()?;
        let mut inherited = Vec::new();
        {
            let mut st = tx.prepare_cached(&format!("INSERT OR IGNORE INTO snapshots({SNAP_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"))?;
            let mut before = tx.prepare_cached(
                "SELECT quarantined_ms FROM snapshots WHERE agent_id = ?1 AND received_ms <= ?2 AND id != ?3 \
                 ORDER BY received_ms DESC, id DESC LIMIT 1",
            )?;
            for s in rows {
                let mut quarantined_ms = s.quarantined_ms;
                if quarantined_ms == 0 {
                    let previous: Option<i64> = before
                        .query_row(params![s.agent_id, s.received_ms, s.id], |r| r.get(0))
                        .optional()?;
                    if previous.is_some_and(|q| q != 0) {
                        quarantined_ms = s.received_ms;
                    }
                }
                let listed = st.execute(params![
                    s.id,
                    s.agent_id,
                    s.agent_name,
                    s.source,
                    s.source_path,
                    s.hostname,
                    s.received_ms,
                    s.agent_time_ms,
                    s.files as i64,
                    s.dirs as i64,
                    s.bytes as i64,
                    s.bytes_new as i64,
                    s.parent,
                    s.bytes_read as i64,
                    quarantined_ms,
                    s.locked_until_ms,
                    s.envelope_version
                ])?;
                if listed == 1 && quarantined_ms != s.quarantined_ms {
                    inherited.push(s.id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(inherited)
    }

    /// Snapshots, newest first, optionally of one agent (id) and one source.
    pub fn snapshots(
        &self,
        agent_id: Option<&str>,
        source: Option<&str>,
    ) -> Result<Vec<SnapshotRow>, CatalogError> {
        // One statement per filter, so that SQLite searches the index: `?1 IS NULL OR
        // agent_id = ?1` made every call scan the whole table (a plan of 1,000 devices
        // spent most of its second there).
        let filter = match (agent_id, source) {
            (Some(_), Some(_)) => "WHERE agent_id = ?1 AND source = ?2",
            (Some(_), None) => "WHERE agent_id = ?1 AND ?2 IS NULL",
            (None, Some(_)) => "WHERE ?1 IS NULL AND source = ?2",
            (None, None) => "WHERE ?1 IS NULL AND ?2 IS NULL",
        };
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {SNAP_COLS} FROM snapshots {filter} ORDER BY received_ms DESC, id"
        ))?;
        let rows = st
            .query_map(params![agent_id, source], SnapshotRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Resolves a full id or a unique prefix (at least 4 hex characters).
    pub fn find_snapshot(&self, prefix: &str) -> Result<SnapshotRow, CatalogError> {
        if prefix.len() < 4
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(CatalogError::BadName(format!(
                "{prefix:?} is not a snapshot id: give at least 4 lowercase hex characters"
            )));
        }
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {SNAP_COLS} FROM snapshots WHERE id >= ?1 AND id < ?1 || 'g' LIMIT 2"
        ))?;
        let rows = st
            .query_map([prefix], SnapshotRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        match rows.len() {
            0 => Err(CatalogError::NotFound(format!(
                "no snapshot {prefix}; `lifeboat snapshots` lists them"
            ))),
            1 => Ok(rows
                .into_iter()
                .next()
                .ok_or_else(|| CatalogError::broken("row vanished"))?),
            _ => Err(CatalogError::BadName(format!(
                "snapshot prefix {prefix} is ambiguous; give more characters"
            ))),
        }
    }

    /// The newest snapshot of an agent's source, if any.
    pub fn latest_snapshot(
        &self,
        agent_id: &str,
        source: &str,
    ) -> Result<Option<SnapshotRow>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                &format!("SELECT {SNAP_COLS} FROM snapshots WHERE agent_id = ?1 AND source = ?2 ORDER BY received_ms DESC LIMIT 1"),
                params![agent_id, source],
                SnapshotRow::from_row,
            )
            .optional()?)
    }

    /// Extends a snapshot's lock to `until_ms`; a lock is never shortened (a later date
    /// already set stays). Returns the lock in force afterwards.
    pub fn extend_lock(&self, id: &str, until_ms: i64) -> Result<i64, CatalogError> {
        let conn = self.lock();
        conn.cached_exec(
            "UPDATE snapshots SET locked_until_ms = ?2 WHERE id = ?1 AND locked_until_ms < ?2",
            params![id, until_ms],
        )?;
        Ok(conn
            .cached_row(
                "SELECT locked_until_ms FROM snapshots WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// The object version of snapshot `id`'s envelope (empty: the current one).
    pub fn envelope_version(&self, id: &str) -> Result<String, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT envelope_version FROM snapshots WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Snapshots committed before locks were stored (their lock is -1).
    pub fn snapshots_without_lock(&self) -> Result<Vec<SnapshotRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {SNAP_COLS} FROM snapshots WHERE locked_until_ms < 0"
        ))?;
        let rows = st
            .query_map([], SnapshotRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<(), CatalogError> {
        let conn = self.lock();
        conn.cached_exec("DELETE FROM snapshots WHERE id = ?1", [id])?;
        conn.cached_exec(
            "DELETE FROM snapshot_inventories WHERE snapshot_id = ?1",
            [id],
        )?;
        conn.cached_exec("DELETE FROM anomalies WHERE snapshot_id = ?1", [id])?;
        Ok(())
    }

    /// Empties the store index (packs, chunks, snapshots) for `rebuild-catalog`.
    pub fn clear_store_index(&self) -> Result<(), CatalogError> {
        self.lock()
            .execute_batch("DELETE FROM chunks; DELETE FROM packs; DELETE FROM snapshots;")?;
        Ok(())
    }

    // ---- quarantine ----

    /// Marks the snapshots of `agent_id` received after `after_ms` as quarantined at
    /// `now_ms` (or lifts it with `clear`); returns the snapshots it changed.
    pub fn quarantine(
        &self,
        agent_id: &str,
        after_ms: i64,
        now_ms: i64,
        clear: bool,
    ) -> Result<Vec<SnapshotRow>, CatalogError> {
        let conn = self.lock();
        let (set, cond) = if clear {
            (0, "quarantined_ms != 0")
        } else {
            (now_ms, "quarantined_ms = 0")
        };
        let mut st = conn.prepare_cached(&format!(
            "UPDATE snapshots SET quarantined_ms = ?3 WHERE agent_id = ?1 AND received_ms > ?2 AND {cond} RETURNING {SNAP_COLS}"
        ))?;
        let rows = st
            .query_map(params![agent_id, after_ms, set], SnapshotRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}
