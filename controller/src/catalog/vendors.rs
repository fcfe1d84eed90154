//! Vendor keys and the image digests their signed lists vouch for.

use rusqlite::params;

use super::{Cached, Catalog, CatalogError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorKeyRow {
    pub name: String,
    /// The key as an `authorized_keys` line.
    pub key: String,
    pub fingerprint: String,
    pub added_ms: i64,
    /// Digests its lists vouch for.
    pub digests: u64,
}

impl Catalog {
    pub fn add_vendor_key(
        &self,
        name: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<bool, CatalogError> {
        let n = self.lock().cached_exec(
            "INSERT OR IGNORE INTO vendor_keys(name, key, fingerprint, added_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, key, fingerprint, now_ms],
        )?;
        Ok(n == 1)
    }

    pub fn vendor_keys(&self) -> Result<Vec<VendorKeyRow>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT k.name, k.key, k.fingerprint, k.added_ms, \
             (SELECT COUNT(*) FROM trusted_digests d WHERE d.vendor = k.name) FROM vendor_keys k ORDER BY k.name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(VendorKeyRow {
                    name: r.get(0)?,
                    key: r.get(1)?,
                    fingerprint: r.get(2)?,
                    added_ms: r.get(3)?,
                    digests: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Records that `vendor`'s signed list vouches for `digests`; returns how many were new.
    pub fn add_trusted_digests(
        &self,
        vendor: &str,
        digests: &[String],
        now_ms: i64,
    ) -> Result<u64, CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut new = 0;
        for d in digests {
            new += tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO trusted_digests(digest, vendor, imported_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![d, vendor, now_ms])? as u64;
        }
        tx.commit()?;
        Ok(new)
    }

    /// The vendors vouching for any of `digests`.
    pub fn vouched_by(&self, digests: &[String]) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut out = Vec::new();
        for d in digests {
            let mut st =
                conn.prepare_cached("SELECT vendor FROM trusted_digests WHERE digest = ?1")?;
            for v in st.query_map([d], |r| r.get::<_, String>(0))? {
                out.push(v?);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
