//! Approval requests (four eyes for destruction).

use rusqlite::{OptionalExtension, Row, params};

use super::Catalog;
use super::{Cached, CatalogError};

#[derive(Debug, Clone)]
pub struct ApprovalRow {
    pub id: String,
    pub action: String,
    pub target: String,
    pub requester: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// `pending`, `approved`, `rejected` or `used`.
    pub state: String,
    pub decided_by: String,
    pub decided_ms: i64,
}

const COLS: &str =
    "id, action, target, requester, created_ms, expires_ms, state, decided_by, decided_ms";

impl ApprovalRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<ApprovalRow> {
        Ok(ApprovalRow {
            id: r.get(0)?,
            action: r.get(1)?,
            target: r.get(2)?,
            requester: r.get(3)?,
            created_ms: r.get(4)?,
            expires_ms: r.get(5)?,
            state: r.get(6)?,
            decided_by: r.get(7)?,
            decided_ms: r.get(8)?,
        })
    }
}

impl Catalog {
    pub fn insert_approval(&self, a: &ApprovalRow) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            &format!("INSERT INTO approvals({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                a.id,
                a.action,
                a.target,
                a.requester,
                a.created_ms,
                a.expires_ms,
                a.state,
                a.decided_by,
                a.decided_ms
            ],
        )?;
        Ok(())
    }

    pub fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                &format!("SELECT {COLS} FROM approvals WHERE id = ?1"),
                [id],
                ApprovalRow::from_row,
            )
            .optional()?)
    }

    /// Requests, newest first.
    pub fn approvals(&self) -> Result<Vec<ApprovalRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {COLS} FROM approvals ORDER BY created_ms DESC LIMIT 1000"
        ))?;
        let rows = st
            .query_map([], ApprovalRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The unexpired pending request of `requester` for `action` on `target`, if any.
    pub fn pending_approval(
        &self,
        requester: &str,
        action: &str,
        target: &str,
        now_ms: i64,
    ) -> Result<Option<ApprovalRow>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                &format!("SELECT {COLS} FROM approvals WHERE requester = ?1 AND action = ?2 AND target = ?3 AND state = 'pending' AND expires_ms > ?4"),
                params![requester, action, target, now_ms],
                ApprovalRow::from_row,
            )
            .optional()?)
    }

    /// Uses an approved, unexpired request of `requester` for `action` on `target`: it
    /// becomes `used`, once. Returns its id.
    pub fn use_approval(
        &self,
        requester: &str,
        action: &str,
        target: &str,
        now_ms: i64,
    ) -> Result<Option<String>, CatalogError> {
        let conn = self.lock();
        let id: Option<String> = conn
            .cached_row(
                "SELECT id FROM approvals WHERE requester = ?1 AND action = ?2 AND target = ?3 AND state = 'approved' AND expires_ms > ?4 LIMIT 1",
                params![requester, action, target, now_ms],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = &id {
            conn.cached_exec(
                "UPDATE approvals SET state = 'used' WHERE id = ?1 AND state = 'approved'",
                [id],
            )?;
        }
        Ok(id)
    }

    pub fn decide_approval(
        &self,
        id: &str,
        state: &str,
        decided_by: &str,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE approvals SET state = ?2, decided_by = ?3, decided_ms = ?4 WHERE id = ?1 AND state = 'pending'",
            params![id, state, decided_by, now_ms],
        )?;
        Ok(())
    }
}
