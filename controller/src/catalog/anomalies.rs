//! Ransomware signals per snapshot (`anomalies`): its score, whether it passed its
//! policy's threshold, and the report behind it.

use rusqlite::params;

use super::{Cached, Catalog, CatalogError};

#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyRow {
    pub snapshot_id: String,
    /// The snapshot it was compared with ("" for a source's first).
    pub parent: String,
    pub score: u32,
    pub threshold: u32,
    pub suspect: bool,
    pub analyzed_ms: i64,
    /// `lifeboat_core::anomaly::Report` as JSON.
    pub report: String,
}

const COLS: &str = "snapshot_id, parent, score, threshold, suspect, analyzed_ms, report";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AnomalyRow> {
    Ok(AnomalyRow {
        snapshot_id: r.get(0)?,
        parent: r.get(1)?,
        score: r.get(2)?,
        threshold: r.get(3)?,
        suspect: r.get::<_, i64>(4)? != 0,
        analyzed_ms: r.get(5)?,
        report: r.get(6)?,
    })
}

impl Catalog {
    pub fn insert_anomaly(&self, a: &AnomalyRow) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            &format!("INSERT OR REPLACE INTO anomalies({COLS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 FROM snapshots WHERE id = ?1"),
            params![a.snapshot_id, a.parent, a.score, a.threshold, a.suspect as i64, a.analyzed_ms, a.report],
        )?;
        Ok(())
    }

    /// Up to `limit` listed snapshots not analyzed yet, oldest first.
    pub fn snapshots_without_anomaly_report(
        &self,
        limit: usize,
    ) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT id FROM snapshots WHERE id NOT IN (SELECT snapshot_id FROM anomalies) \
             ORDER BY received_ms LIMIT ?1",
        )?;
        let ids = st
            .query_map([limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// Reports, newest snapshot first: only suspect ones unless `all`.
    pub fn anomalies(&self, all: bool) -> Result<Vec<AnomalyRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT a.snapshot_id, a.parent, a.score, a.threshold, a.suspect, a.analyzed_ms, a.report \
             FROM anomalies a JOIN snapshots s ON s.id = a.snapshot_id \
             WHERE a.suspect = 1 OR ?1 ORDER BY s.received_ms DESC",
        )?;
        let rows = st
            .query_map([all], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Suspect snapshots by (device, source).
    pub fn suspect_counts(&self) -> Result<Vec<(String, String, u64)>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT s.agent_name, s.source, COUNT(*) FROM anomalies a JOIN snapshots s ON s.id = a.snapshot_id \
             WHERE a.suspect = 1 GROUP BY s.agent_name, s.source ORDER BY s.agent_name, s.source",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn anomaly(&self, snapshot: &str) -> Result<Option<AnomalyRow>, CatalogError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .lock()
            .cached_row(
                &format!("SELECT {COLS} FROM anomalies WHERE snapshot_id = ?1"),
                [snapshot],
                row,
            )
            .optional()?)
    }
}
