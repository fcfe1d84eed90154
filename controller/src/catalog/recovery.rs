//! Restore samples (the downtime model's data), drills and recovery plans.

use std::collections::BTreeMap;

use lifeboat_core::ChunkId;
use rusqlite::{OptionalExtension, Row, params};

use super::Catalog;
use super::{Cached, CatalogError};

/// One measured restore, as the downtime model reads it.
#[derive(Debug, Clone)]
pub struct SampleRow {
    pub agent_id: String,
    pub kind: String,
    pub bytes: u64,
    pub data_ms: u64,
    pub total_ms: u64,
    /// Ran beside other restores of a plan (its data rate says little about the device).
    pub shared: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DrillRow {
    pub id: String,
    pub agent_id: String,
    pub source: String,
    pub snapshot_id: String,
    pub job_id: String,
    pub state: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub estimate_ms: u64,
    pub estimate_basis: String,
    pub actual_ms: u64,
    pub bytes: u64,
    pub result: Option<Vec<u8>>,
    pub error: String,
    pub probe: String,
    pub policy: String,
    /// The device's recovery time objective when the drill started (0: none).
    pub rto_ms: u64,
}

impl DrillRow {
    /// Whether the drill passed but took longer than the device's RTO.
    pub fn over_rto(&self) -> bool {
        self.rto_ms > 0
            && self.actual_ms > self.rto_ms
            && self.state == lifeboat_proto::states::DrillState::Passed.as_str()
    }
}

/// An agent's drills in brief (`Catalog::drill_history`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrillHistory {
    pub last_ms: i64,
    pub last_state: String,
    pub last_passed_ms: i64,
}

const DRILL_COLS: &str = "id, agent_id, source, snapshot_id, job_id, state, started_ms, finished_ms, estimate_ms, estimate_basis, actual_ms, bytes, result, error, probe, policy, rto_ms";

impl DrillRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(DrillRow {
            id: r.get(0)?,
            agent_id: r.get(1)?,
            source: r.get(2)?,
            snapshot_id: r.get(3)?,
            job_id: r.get(4)?,
            state: r.get(5)?,
            started_ms: r.get(6)?,
            finished_ms: r.get(7)?,
            estimate_ms: r.get::<_, i64>(8)? as u64,
            estimate_basis: r.get(9)?,
            actual_ms: r.get::<_, i64>(10)? as u64,
            bytes: r.get::<_, i64>(11)? as u64,
            result: r.get(12)?,
            error: r.get(13)?,
            probe: r.get(14)?,
            policy: r.get(15)?,
            rto_ms: r.get::<_, i64>(16)? as u64,
        })
    }
}

impl Catalog {
    // ---- restore samples ----

    pub fn insert_sample(
        &self,
        job_id: &str,
        s: &SampleRow,
        files: u64,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "INSERT OR REPLACE INTO restore_samples(job_id, agent_id, kind, bytes, files, data_ms, total_ms, shared, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![job_id, s.agent_id, s.kind, s.bytes as i64, files as i64, s.data_ms as i64, s.total_ms as i64, s.shared, now_ms],
        )?;
        Ok(())
    }

    /// When the sample recorded under `job_id` was taken, if there is one.
    pub fn sample_at(&self, job_id: &str) -> Result<Option<i64>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached("SELECT at_ms FROM restore_samples WHERE job_id = ?1")?;
        Ok(st.query_row([job_id], |r| r.get(0)).optional()?)
    }

    /// The newest `per_key` samples of every (agent, kind).
    pub fn recent_samples(&self, per_key: u32) -> Result<Vec<SampleRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT agent_id, kind, bytes, data_ms, total_ms, shared FROM (
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY agent_id, kind, shared ORDER BY at_ms DESC) AS n
                 FROM restore_samples) WHERE n <= ?1",
        )?;
        let rows = st
            .query_map(params![per_key], |r| {
                Ok(SampleRow {
                    agent_id: r.get(0)?,
                    kind: r.get(1)?,
                    bytes: r.get::<_, i64>(2)? as u64,
                    data_ms: r.get::<_, i64>(3)? as u64,
                    total_ms: r.get::<_, i64>(4)? as u64,
                    shared: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    // ---- drills ----

    pub fn put_drill(&self, d: &DrillRow) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            &format!("INSERT OR REPLACE INTO drills({DRILL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
            params![
                d.id, d.agent_id, d.source, d.snapshot_id, d.job_id, d.state, d.started_ms, d.finished_ms,
                d.estimate_ms as i64, d.estimate_basis, d.actual_ms as i64, d.bytes as i64, d.result, d.error, d.probe, d.policy,
                d.rto_ms as i64
            ],
        )?;
        Ok(())
    }

    pub fn drill_by_job(&self, job_id: &str) -> Result<Option<DrillRow>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                &format!("SELECT {DRILL_COLS} FROM drills WHERE job_id = ?1"),
                params![job_id],
                DrillRow::from_row,
            )
            .optional()?)
    }

    /// Drills, newest first; only `ids` when given.
    pub fn drills(&self, limit: u32, ids: &[String]) -> Result<Vec<DrillRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {DRILL_COLS} FROM drills ORDER BY started_ms DESC, id LIMIT ?1"
        ))?;
        let limit = if ids.is_empty() {
            limit.max(1) as i64
        } else {
            -1
        };
        let rows = st
            .query_map(params![limit], DrillRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows
            .into_iter()
            .filter(|d| ids.is_empty() || ids.contains(&d.id))
            .collect())
    }

    /// Per agent: when its newest drill that passed started, and its newest drill of any
    /// outcome (start and state). Agents never drilled are absent.
    pub fn drill_history(&self) -> Result<BTreeMap<String, DrillHistory>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT agent_id, started_ms, state, passed FROM (
                 SELECT agent_id, started_ms, state,
                        ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY started_ms DESC, id) AS n,
                        MAX(CASE WHEN state = ?1 THEN started_ms ELSE 0 END) OVER (PARTITION BY agent_id) AS passed
                 FROM drills) WHERE n = 1",
        )?;
        let rows = st
            .query_map([lifeboat_proto::states::DrillState::Passed.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    DrillHistory {
                        last_ms: r.get(1)?,
                        last_state: r.get(2)?,
                        last_passed_ms: r.get(3)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Drills that passed but took longer than their device's RTO (a metric).
    pub fn drills_over_rto(&self) -> Result<u64, CatalogError> {
        Ok(self.lock().cached_row(
            "SELECT COUNT(*) FROM drills WHERE state = ?1 AND rto_ms > 0 AND actual_ms > rto_ms",
            [lifeboat_proto::states::DrillState::Passed.as_str()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Failed drills ever recorded (a metric).
    pub fn failed_drills(&self) -> Result<u64, CatalogError> {
        Ok(self.lock().cached_row(
            "SELECT COUNT(*) FROM drills WHERE state = ?1",
            [lifeboat_proto::states::DrillState::Failed.as_str()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    // ---- plans ----

    pub fn put_plan(
        &self,
        id: &str,
        created_ms: i64,
        state: &str,
        info: &[u8],
    ) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "INSERT INTO plans(id, created_ms, state, info) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, info = excluded.info",
            params![id, created_ms, state, info],
        )?;
        Ok(())
    }

    pub fn plan(&self, id: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self
            .lock()
            .cached_row("SELECT info FROM plans WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Plan ids and states, newest first.
    pub fn plans(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached("SELECT id, state FROM plans ORDER BY created_ms DESC")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Stored bytes of each chunk (what the controller sends for it); unknown chunks are
    /// left out.
    pub fn chunk_lengths(&self, ids: &[ChunkId]) -> Result<u64, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached("SELECT length FROM chunks WHERE id = ?1")?;
        let mut total = 0u64;
        for id in ids {
            if let Some(len) = st
                .query_row(params![id.as_bytes().as_slice()], |r| r.get::<_, i64>(0))
                .optional()?
            {
                total += len as u64;
            }
        }
        Ok(total)
    }
}
