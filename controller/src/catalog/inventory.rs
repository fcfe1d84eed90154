//! Snapshot inventories (the packages each snapshot holds). Snapshots with the same package
//! databases share one inventory, stored once under its key (`inventory::key`), so a fleet
//! backing up unchanged machines every hour adds a row per snapshot, not a package list.

use rusqlite::{OptionalExtension, params};

use super::{Cached, Catalog, CatalogError};

/// What the catalog knows of one snapshot's inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryLink {
    /// The inventory's key; "" when it could not be read (`error` says why).
    pub key: String,
    pub scanned_ms: i64,
    pub error: String,
}

impl Catalog {
    /// The stored inventory (its JSON) under `key`, if any.
    pub fn inventory(&self, key: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self
            .lock()
            .cached_row("SELECT body FROM inventories WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Links `snapshot` to its inventory, storing the inventory first when `body` is given
    /// (a key seen before keeps its body).
    pub fn link_inventory(
        &self,
        snapshot: &str,
        link: &InventoryLink,
        body: Option<&[u8]>,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(body) = body {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO inventories(key, scanned_ms, body) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![link.key, link.scanned_ms, body])?;
        }
        tx.prepare_cached(
            "INSERT OR REPLACE INTO snapshot_inventories(snapshot_id, key, scanned_ms, error) \
             SELECT id, ?2, ?3, ?4 FROM snapshots WHERE id = ?1",
        )?
        .execute(params![snapshot, link.key, link.scanned_ms, link.error])?;
        tx.commit()?;
        Ok(())
    }

    pub fn inventory_link(&self, snapshot: &str) -> Result<Option<InventoryLink>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                "SELECT key, scanned_ms, error FROM snapshot_inventories WHERE snapshot_id = ?1",
                [snapshot],
                |r| {
                    Ok(InventoryLink {
                        key: r.get(0)?,
                        scanned_ms: r.get(1)?,
                        error: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Up to `limit` listed snapshots not inventoried yet, oldest first.
    pub fn snapshots_without_inventory(&self, limit: usize) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT id FROM snapshots WHERE id NOT IN (SELECT snapshot_id FROM snapshot_inventories) \
             ORDER BY received_ms LIMIT ?1",
        )?;
        let ids = st
            .query_map([limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }
}
