//! Vulnerability advisories (an offline OSV feed) and the findings of each inventory
//! against it. The feed has a generation, bumped by every import that changed something;
//! an inventory matched at an older generation is matched again.

use rusqlite::{OptionalExtension, params};

use super::{Cached, Catalog, CatalogError};

/// One advisory as stored: the fields listings show, the record itself, and the packages
/// it names (the index matching looks up).
#[derive(Debug, Clone)]
pub struct AdvisoryRow {
    pub id: String,
    pub modified: String,
    pub summary: String,
    pub aliases: String,
    pub severity: String,
    pub score: f64,
    pub body: Vec<u8>,
    pub packages: Vec<(String, String)>,
}

/// One finding of an inventory: an advisory and the installed package it affects.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRow {
    pub advisory: String,
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    pub fixed: String,
    pub severity: String,
    pub score: f64,
    /// From the advisory (filled by `findings`).
    pub summary: String,
    pub aliases: String,
}

/// What an import changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub new: u64,
    pub updated: u64,
    pub unchanged: u64,
}

impl Catalog {
    /// The feed's generation (0: nothing imported yet).
    pub fn feed_generation(&self) -> Result<i64, CatalogError> {
        Ok(self
            .lock()
            .cached_row("SELECT generation FROM feed WHERE id = 1", [], |r| r.get(0))?)
    }

    /// Stores advisories (a newer `modified` replaces the stored one; the same one is
    /// left alone) and bumps the feed's generation when anything changed, in one
    /// transaction.
    pub fn put_advisories(
        &self,
        rows: &[AdvisoryRow],
        now_ms: i64,
    ) -> Result<ImportCounts, CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut out = ImportCounts::default();
        for a in rows {
            let old: Option<String> = tx
                .prepare_cached("SELECT modified FROM advisories WHERE id = ?1")?
                .query_row([&a.id], |r| r.get(0))
                .optional()?;
            match old {
                Some(m) if m == a.modified => {
                    out.unchanged += 1;
                    continue;
                }
                Some(_) => out.updated += 1,
                None => out.new += 1,
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO advisories(id, modified, summary, aliases, severity, score, imported_ms, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![a.id, a.modified, a.summary, a.aliases, a.severity, a.score, now_ms, a.body])?;
            tx.prepare_cached("DELETE FROM advisory_packages WHERE id = ?1")?
                .execute([&a.id])?;
            for (ecosystem, name) in &a.packages {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO advisory_packages(ecosystem, name, id) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![ecosystem, name, a.id])?;
            }
        }
        if out.new + out.updated > 0 {
            tx.prepare_cached("UPDATE feed SET generation = generation + 1 WHERE id = 1")?
                .execute([])?;
        }
        tx.commit()?;
        Ok(out)
    }

    pub fn advisory_count(&self) -> Result<u64, CatalogError> {
        Ok(self
            .lock()
            .cached_row("SELECT COUNT(*) FROM advisories", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// The advisories naming a package.
    pub fn advisories_for(&self, ecosystem: &str, name: &str) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT id FROM advisory_packages WHERE ecosystem = ?1 AND name = ?2",
        )?;
        let ids = st
            .query_map([ecosystem, name], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    pub fn advisory_body(&self, id: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self
            .lock()
            .cached_row("SELECT body FROM advisories WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Up to `limit` stored inventories not matched against generation `generation`.
    pub fn inventories_to_match(
        &self,
        generation: i64,
        limit: usize,
    ) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached("SELECT key FROM inventories WHERE feed_generation < ?1 LIMIT ?2")?;
        let keys = st
            .query_map(params![generation, limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(keys)
    }

    /// Replaces an inventory's findings with those matched at `generation`.
    pub fn replace_findings(
        &self,
        key: &str,
        generation: i64,
        findings: &[FindingRow],
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.prepare_cached("DELETE FROM findings WHERE key = ?1")?
            .execute([key])?;
        for f in findings {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO findings(key, advisory, ecosystem, name, version, fixed) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                key,
                f.advisory,
                f.ecosystem,
                f.name,
                f.version,
                f.fixed
            ])?;
        }
        tx.prepare_cached("UPDATE inventories SET feed_generation = ?2 WHERE key = ?1")?
            .execute(params![key, generation])?;
        tx.commit()?;
        Ok(())
    }

    /// The generation an inventory was last matched at.
    pub fn inventory_generation(&self, key: &str) -> Result<Option<i64>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT feed_generation FROM inventories WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// An inventory's findings with their advisories' summary, aliases and severity.
    pub fn findings(&self, key: &str) -> Result<Vec<FindingRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT f.advisory, f.ecosystem, f.name, f.version, f.fixed, a.severity, a.score, a.summary, a.aliases \
             FROM findings f JOIN advisories a ON a.id = f.advisory WHERE f.key = ?1 \
             ORDER BY a.score DESC, f.advisory, f.name",
        )?;
        let rows = st
            .query_map([key], |r| {
                Ok(FindingRow {
                    advisory: r.get(0)?,
                    ecosystem: r.get(1)?,
                    name: r.get(2)?,
                    version: r.get(3)?,
                    fixed: r.get(4)?,
                    severity: r.get(5)?,
                    score: r.get(6)?,
                    summary: r.get(7)?,
                    aliases: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// How many findings a snapshot has, if its inventory was matched against the feed in
    /// force (`None`: not read or not matched yet, or no feed imported).
    pub fn finding_count(&self, snapshot: &str) -> Result<Option<u64>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT (SELECT COUNT(*) FROM findings f WHERE f.key = i.key) \
                 FROM snapshot_inventories s JOIN inventories i ON i.key = s.key \
                 WHERE s.snapshot_id = ?1 AND i.feed_generation = (SELECT generation FROM feed WHERE id = 1) \
                 AND i.feed_generation > 0",
                [snapshot],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|n| n as u64))
    }
}
