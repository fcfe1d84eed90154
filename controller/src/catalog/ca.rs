//! Which CA issued each certificate: what a CA rotation counts and finishes by.

use rusqlite::params;

use super::{Cached, Catalog, CatalogError};

/// An agent or operator that holds a certificate, and whose CA issued it.
#[derive(Debug, Clone)]
pub struct Holder {
    pub id: String,
    pub name: String,
    /// Fingerprint of the CA of its current certificate ('' if issued before this was
    /// recorded).
    pub cert_ca: String,
    /// An agent's previous certificate is still accepted: it has not used the new one yet.
    pub prev_in_use: bool,
    pub last_seen_ms: i64,
}

impl Catalog {
    /// Records which CA issued agent `id`'s current certificate (at enrollment).
    pub fn set_agent_cert_ca(&self, id: &str, ca: &str) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE agents SET cert_ca = ?2 WHERE id = ?1",
            params![id, ca],
        )?;
        Ok(())
    }

    /// The fingerprint of the CA of agent `id`'s current certificate.
    pub fn agent_cert_ca(&self, id: &str) -> Result<String, CatalogError> {
        Ok(self
            .lock()
            .cached_row("SELECT cert_ca FROM agents WHERE id = ?1", [id], |r| {
                r.get(0)
            })?)
    }

    /// Records which CA issued operator `name`'s current certificate.
    pub fn set_operator_cert_ca(&self, name: &str, ca: &str) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE operators SET cert_ca = ?2 WHERE name = ?1",
            params![name, ca],
        )?;
        Ok(())
    }

    /// Replaces operator `name`'s certificate (its own renewal): the previous one is
    /// refused from then on. Revoked identities are not renewed.
    pub fn renew_operator_cert(
        &self,
        name: &str,
        serial: &str,
        ca: &str,
    ) -> Result<(), CatalogError> {
        let n = self.lock().cached_exec(
            "UPDATE operators SET cert_serial = ?2, cert_ca = ?3 WHERE name = ?1 AND revoked_ms = 0",
            params![name, serial, ca],
        )?;
        if n != 1 {
            return Err(CatalogError::Revoked(format!(
                "operator identity {name:?} is revoked"
            )));
        }
        Ok(())
    }

    /// Agents that are not revoked, with the CA of their certificate.
    pub fn agent_holders(&self) -> Result<Vec<Holder>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT id, name, cert_ca, prev_serial != '', last_seen_ms FROM agents WHERE revoked_ms = 0 ORDER BY name",
        )?;
        let rows = st
            .query_map([], holder)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Operator identities neither revoked nor expired, with the CA of their certificate.
    pub fn operator_holders(&self, now_ms: i64) -> Result<Vec<Holder>, CatalogError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT name, name, cert_ca, 0, 0 FROM operators WHERE revoked_ms = 0 AND (expires_ms = 0 OR expires_ms > ?1) ORDER BY name",
        )?;
        let rows = st
            .query_map([now_ms], holder)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// A CA rotation ends: only certificates of CA `ca` are current. Every previous
    /// certificate is retired, and agents and operators still on another CA lose theirs
    /// (they can no longer connect: agents enroll again, operators get a new identity).
    /// Returns how many agents and operators lost their certificate.
    pub fn finish_ca_rotation(&self, ca: &str) -> Result<(usize, usize), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("UPDATE agents SET prev_serial = ''", [])?;
        let agents = tx.execute(
            "UPDATE agents SET cert_serial = '' WHERE revoked_ms = 0 AND cert_ca != ?1",
            [ca],
        )?;
        let operators = tx.execute(
            "UPDATE operators SET cert_serial = '' WHERE revoked_ms = 0 AND cert_ca != ?1",
            [ca],
        )?;
        tx.commit()?;
        Ok((agents, operators))
    }
}

fn holder(r: &rusqlite::Row<'_>) -> rusqlite::Result<Holder> {
    Ok(Holder {
        id: r.get(0)?,
        name: r.get(1)?,
        cert_ca: r.get(2)?,
        prev_in_use: r.get(3)?,
        last_seen_ms: r.get(4)?,
    })
}
