//! The catalog: one SQLite file in WAL mode, owned by the controller.
//!
//! It indexes the store (packs, chunks, snapshots) and holds the control plane's state
//! (agents, operators, tokens, jobs). Losing it never loses backups: `rebuild-catalog`
//! restores the store index from the store alone. One connection behind a mutex is the
//! only writer; statements are short, and bulk work (pack indexing) runs in one
//! transaction off the async runtime.
//!
//! The rows and queries live beside their tables: `agents` (and enrollment tokens),
//! `store` (packs and chunks), `snapshots` (and quarantine), `jobs`, `schedule` (policies
//! and slots), `recovery` (restore samples, drills, plans); `migrations` is the schema.

mod agents;
mod anomalies;
mod approvals;
mod ca;
mod copies;
mod error;
mod inventory;
mod jobs;
mod migrations;
mod recovery;
mod schedule;
mod snapshots;
mod store;
mod vendors;
mod vulns;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Params, Row, params};

pub use agents::{AgentRow, TokenCheck};
pub use anomalies::AnomalyRow;
pub use approvals::ApprovalRow;
pub use ca::Holder;
pub use inventory::InventoryLink;
pub use jobs::JobRow;
pub use recovery::{DrillHistory, DrillRow, SampleRow};
pub use snapshots::SnapshotRow;
pub use store::{ChunkPlace, RetainedPack};
pub use vendors::VendorKeyRow;
pub use vulns::{AdvisoryRow, FindingRow, ImportCounts};

pub use error::CatalogError;

/// A value stored as JSON text in a column.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub struct Catalog {
    conn: Mutex<Connection>,
}

/// Statements kept prepared on the connection. The catalog runs a few dozen distinct
/// statements, some thousands of times a minute under load (a job read per agent update,
/// an agent read per call); parsing and planning each one every time was the
/// controller's largest single cost during a mass restore (17% of its CPU, BENCHMARKS.md).
const STATEMENT_CACHE: usize = 128;

/// `query_row` and `execute` through the connection's statement cache.
pub(crate) trait Cached {
    fn cached_row<T, P: Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
    fn cached_exec<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl Cached for Connection {
    fn cached_row<T, P: Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn cached_exec<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

/// Bytes of the listed snapshots ([`Catalog::snapshot_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotBytes {
    pub source: u64,
    pub read: u64,
    pub new: u64,
}

impl Catalog {
    /// Opens (creating if needed) the catalog and applies pending migrations.
    /// Writes a consistent copy of the whole catalog to `to` (which must not exist),
    /// without stopping writers for longer than SQLite's own copy.
    pub fn copy_to(&self, to: &Path) -> Result<(), CatalogError> {
        let to = to
            .to_str()
            .ok_or_else(|| CatalogError::broken(format!("{} is not UTF-8", to.display())))?;
        self.lock().execute("VACUUM INTO ?1", [to])?;
        Ok(())
    }

    /// Makes every committed transaction durable now. The catalog commits with
    /// `synchronous = NORMAL` (a commit survives the process, not a power cut); this
    /// fsyncs the write-ahead log, which holds every commit not yet checkpointed (a
    /// checkpoint syncs what it moves). For what is promised outside the catalog about
    /// rows in it: the audit anchor in the store.
    pub fn sync(&self) -> Result<(), CatalogError> {
        let conn = self.lock();
        let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
            return Ok(()); // in memory
        };
        let wal = format!("{db}-wal");
        match std::fs::File::open(&wal) {
            Ok(f) => f.sync_all().map_err(|e| match lifeboat_core::is_eio(&e) {
                true => CatalogError::DiskFailed(format!("syncing {wal}: {e}")),
                false => CatalogError::broken(format!("syncing {wal}: {e}")),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CatalogError::broken(format!("opening {wal}: {e}"))),
        }
    }

    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let conn = Connection::open(path).map_err(|e| {
            CatalogError::broken(format!("opening catalog {}: {e}", path.display()))
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // One plan per statement, whatever its parameters: without this SQLite marks some
        // cached statements to be prepared again whenever a parameter changes (perf found
        // the chunk and job lookups re-prepared on every call).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        let catalog = Catalog {
            conn: Mutex::new(conn),
        };
        catalog.migrate()?;
        Ok(catalog)
    }

    fn migrate(&self) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = migrations::MIGRATIONS.len() as i64;
        if applied > known {
            return Err(CatalogError::broken(format!(
                "catalog schema version {applied} is newer than this controller understands ({known}); run a newer lifeboat-controller"
            )));
        }
        for (i, sql) in migrations::MIGRATIONS
            .iter()
            .enumerate()
            .skip(applied as usize)
        {
            // One transaction per migration, its version number with it: a controller
            // killed midway finds the catalog at the previous version and runs it again
            // (`LIFEBOAT_CRASH_AT=migration-N` aborts before migration N commits).
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            lifeboat_core::crash_point(&format!("migration-{}", i + 1));
            tx.commit()?;
            tracing::info!(version = i + 1, "catalog migrated");
        }
        Ok(())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic),
        // so a poisoned mutex is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts for status and metrics: agents, snapshots, chunks, stored bytes.
    pub fn totals(&self) -> Result<(u64, u64, u64, u64), CatalogError> {
        let conn = self.lock();
        let one = |sql: &str| -> Result<u64, CatalogError> {
            Ok(conn.cached_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        Ok((
            one("SELECT COUNT(*) FROM agents")?,
            one("SELECT COUNT(*) FROM snapshots")?,
            one("SELECT COUNT(*) FROM chunks")?,
            one("SELECT COALESCE(SUM(size), 0) FROM packs")?,
        ))
    }

    /// Bytes of every listed snapshot: at the source, read from disk when it was taken
    /// (unchanged files are not read again), and new to the store.
    pub fn snapshot_bytes(&self) -> Result<SnapshotBytes, CatalogError> {
        Ok(self.lock().cached_row(
            "SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(bytes_read), 0), COALESCE(SUM(bytes_new), 0) FROM snapshots",
            [],
            |r| {
                Ok(SnapshotBytes {
                    source: r.get::<_, i64>(0)? as u64,
                    read: r.get::<_, i64>(1)? as u64,
                    new: r.get::<_, i64>(2)? as u64,
                })
            },
        )?)
    }

    /// Per job kind and state: how many jobs, and the sum of their run times (those that
    /// started and ended), in milliseconds.
    pub fn job_stats(&self) -> Result<Vec<(String, i32, u64, i64)>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT kind, state, COUNT(*), COALESCE(SUM(CASE WHEN started_ms > 0 AND finished_ms >= started_ms THEN finished_ms - started_ms ELSE 0 END), 0) FROM jobs GROUP BY kind, state ORDER BY kind, state",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Records an operator identity (replacing a revoked or expired one of that name).
    pub fn add_operator(
        &self,
        name: &str,
        role: &str,
        serial: &str,
        now_ms: i64,
        expires_ms: i64,
        created_by: &str,
    ) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "INSERT OR REPLACE INTO operators(name, role, cert_serial, created_ms, expires_ms, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, role, serial, now_ms, expires_ms, created_by],
        )?;
        Ok(())
    }

    pub fn operator(&self, name: &str) -> Result<Option<OperatorRow>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT name, role, cert_serial, created_ms, expires_ms, revoked_ms, created_by FROM operators WHERE name = ?1",
                [name],
                OperatorRow::from_row,
            )
            .optional()?)
    }

    pub fn operators(&self) -> Result<Vec<OperatorRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT name, role, cert_serial, created_ms, expires_ms, revoked_ms, created_by FROM operators ORDER BY name",
        )?;
        let rows = st
            .query_map([], OperatorRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Revokes an operator identity; false if it was already revoked.
    pub fn revoke_operator(&self, name: &str, now_ms: i64) -> Result<bool, CatalogError> {
        Ok(self.lock().cached_exec(
            "UPDATE operators SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms = 0",
            params![name, now_ms],
        )? == 1)
    }

    /// Admins that are neither revoked nor expired.
    pub fn active_admins(&self, now_ms: i64) -> Result<u64, CatalogError> {
        Ok(self.lock().cached_row(
            "SELECT COUNT(*) FROM operators WHERE role = 'admin' AND revoked_ms = 0 AND (expires_ms = 0 OR expires_ms > ?1)",
            [now_ms],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}

/// An operator identity as recorded.
#[derive(Debug, Clone)]
pub struct OperatorRow {
    pub name: String,
    pub role: String,
    pub cert_serial: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: i64,
    pub created_by: String,
}

impl OperatorRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(OperatorRow {
            name: r.get(0)?,
            role: r.get(1)?,
            cert_serial: r.get(2)?,
            created_ms: r.get(3)?,
            expires_ms: r.get(4)?,
            revoked_ms: r.get(5)?,
            created_by: r.get(6)?,
        })
    }
}
