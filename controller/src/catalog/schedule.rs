//! Policies as stored, and the scheduler's memory of the slots it handled.

use rusqlite::{OptionalExtension, params};

use super::Catalog;
use super::snapshots::RetentionRow;
use super::{Cached, CatalogError};

impl Catalog {
    // ---- policies and the scheduler ----

    /// Stores a policy; returns whether it was new or changed.
    pub fn put_policy(&self, name: &str, spec: &str, now_ms: i64) -> Result<bool, CatalogError> {
        let conn = self.lock();
        let old: Option<String> = conn
            .cached_row("SELECT spec FROM policies WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if old.as_deref() == Some(spec) {
            return Ok(false);
        }
        conn.cached_exec(
            "INSERT INTO policies(name, spec, updated_ms) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET spec = ?2, updated_ms = ?3",
            params![name, spec, now_ms],
        )?;
        Ok(true)
    }

    /// `(name, spec JSON, updated_ms)`, by name.
    pub fn policies(&self) -> Result<Vec<(String, String, i64)>, CatalogError> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached("SELECT name, spec, updated_ms FROM policies ORDER BY name")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn delete_policy(&self, name: &str) -> Result<bool, CatalogError> {
        let conn = self.lock();
        conn.cached_exec("DELETE FROM schedule WHERE policy = ?1", [name])?;
        Ok(conn.cached_exec("DELETE FROM policies WHERE name = ?1", [name])? == 1)
    }

    /// The last slot the scheduler handled for `(policy, agent)`.
    pub fn last_slot(&self, policy: &str, agent_id: &str) -> Result<Option<i64>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT last_slot_ms FROM schedule WHERE policy = ?1 AND agent_id = ?2",
                params![policy, agent_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_last_slot(
        &self,
        policy: &str,
        agent_id: &str,
        slot_ms: i64,
    ) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "INSERT INTO schedule(policy, agent_id, last_slot_ms) VALUES (?1, ?2, ?3) ON CONFLICT(policy, agent_id) DO UPDATE SET last_slot_ms = ?3",
            params![policy, agent_id, slot_ms],
        )?;
        Ok(())
    }

    /// Pins or unpins a snapshot against retention.
    pub fn set_protected(&self, id: &str, protected: bool) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE snapshots SET protected = ?2 WHERE id = ?1",
            params![id, protected],
        )?;
        Ok(())
    }

    /// Every snapshot as retention sees it, grouped by agent and source, newest first.
    pub fn retention_view(&self) -> Result<Vec<RetentionRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT s.agent_id, s.source, s.id, s.received_ms, s.protected, s.locked_until_ms, s.quarantined_ms != 0, COALESCE(a.suspect, 0) != 0, a.snapshot_id IS NOT NULL \
             FROM snapshots s LEFT JOIN anomalies a ON a.snapshot_id = s.id ORDER BY s.agent_id, s.source, s.received_ms DESC",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(RetentionRow {
                    agent_id: r.get(0)?,
                    source: r.get(1)?,
                    id: r.get(2)?,
                    received_ms: r.get(3)?,
                    protected: r.get(4)?,
                    locked_until_ms: r.get(5)?,
                    quarantined: r.get(6)?,
                    suspect: r.get(7)?,
                    analyzed: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Marks every job in `from` state as `to` with `reason` (start-up recovery).
    pub fn move_jobs(
        &self,
        from: i32,
        to: i32,
        reason: &str,
        now_ms: i64,
    ) -> Result<usize, CatalogError> {
        Ok(self.lock().cached_exec(
            "UPDATE jobs SET state = ?2, error = ?3, finished_ms = ?4 WHERE state = ?1",
            params![from, to, reason, now_ms],
        )?)
    }
}
