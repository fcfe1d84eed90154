//! Jobs: what agents were asked to do, and how it went.

use rusqlite::{OptionalExtension, Row, params};

use super::{Cached, CatalogError};
use super::{Catalog, json};

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub agent_id: String,
    pub state: i32,
    pub detail: String,
    /// The prost-encoded `pb::Job` sent to the agent.
    pub job: Vec<u8>,
    pub created_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub progress: Option<Vec<u8>>,
    pub error: String,
    pub snapshot_ids: Vec<String>,
    /// The policy that scheduled it ("" for operator jobs).
    pub policy: String,
    /// How often it was retried after an interruption.
    pub attempts: u32,
    /// Restores: the agent's `RestoreResult` (protobuf), once finished.
    pub result: Option<Vec<u8>>,
    /// A failed job: the controller's refusal that failed it (`pb::Refusal`, 0: none).
    pub refusal: i32,
}

impl JobRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(JobRow {
            id: r.get(0)?,
            kind: r.get(1)?,
            agent_id: r.get(2)?,
            state: r.get(3)?,
            detail: r.get(4)?,
            job: r.get(5)?,
            created_ms: r.get(6)?,
            started_ms: r.get(7)?,
            finished_ms: r.get(8)?,
            progress: r.get(9)?,
            error: r.get(10)?,
            snapshot_ids: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
            policy: r.get(12)?,
            attempts: r.get(13)?,
            result: r.get(14)?,
            refusal: r.get(15)?,
        })
    }
}

const JOB_COLS: &str = "id, kind, agent_id, state, detail, job, created_ms, started_ms, finished_ms, progress, error, snapshot_ids, policy, attempts, result, refusal";

impl Catalog {
    // ---- jobs ----

    pub fn insert_job(&self, j: &JobRow) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            &format!("INSERT INTO jobs({JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![j.id, j.kind, j.agent_id, j.state, j.detail, j.job, j.created_ms, j.started_ms, j.finished_ms, j.progress, j.error, json(&j.snapshot_ids), j.policy, j.attempts, j.result, j.refusal],
        )?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                [id],
                JobRow::from_row,
            )
            .optional()?)
    }

    pub fn jobs(&self, limit: u32) -> Result<Vec<JobRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs ORDER BY created_ms DESC, id LIMIT ?1"
        ))?;
        let rows = st
            .query_map([limit], JobRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn jobs_in_state(&self, agent_id: &str, state: i32) -> Result<Vec<JobRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE agent_id = ?1 AND state = ?2 ORDER BY created_ms, id"
        ))?;
        let rows = st
            .query_map(params![agent_id, state], JobRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn update_job(&self, j: &JobRow) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE jobs SET state = ?2, started_ms = ?3, finished_ms = ?4, progress = ?5, error = ?6, snapshot_ids = ?7, attempts = ?8, result = ?9, refusal = ?10 WHERE id = ?1",
            params![j.id, j.state, j.started_ms, j.finished_ms, j.progress, j.error, json(&j.snapshot_ids), j.attempts, j.result, j.refusal],
        )?;
        Ok(())
    }

    /// Jobs in any of `states` (oldest first).
    pub fn jobs_in_states(&self, states: &[i32]) -> Result<Vec<JobRow>, CatalogError> {
        let list = states
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE state IN ({list}) ORDER BY created_ms, id"
        ))?;
        let rows = st
            .query_map([], JobRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}
