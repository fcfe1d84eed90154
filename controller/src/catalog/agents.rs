//! Enrollment tokens and agents: who may join the fleet, and who did.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Row, params};

use super::{Cached, CatalogError};
use super::{Catalog, json};

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub hostname: String,
    pub signing_key: Vec<u8>,
    pub cert_serial: String,
    pub enrolled_ms: i64,
    pub last_seen_ms: i64,
    /// `(name, kind, path)` as last reported by the agent.
    pub sources: Vec<(String, String, String)>,
    pub restore_roots: Vec<String>,
    pub version: String,
    /// When it was revoked (0: not revoked). Its snapshots stay restorable.
    pub revoked_ms: i64,
    /// The serial before the last renewal, accepted until the agent uses the new one.
    pub prev_serial: String,
    pub cert_expires_ms: i64,
    /// The Docker inventory it last reported (protobuf `DockerInventory`).
    pub docker: Option<Vec<u8>>,
}

impl AgentRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(AgentRow {
            id: r.get(0)?,
            name: r.get(1)?,
            labels: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
            hostname: r.get(3)?,
            signing_key: r.get(4)?,
            cert_serial: r.get(5)?,
            enrolled_ms: r.get(6)?,
            last_seen_ms: r.get(7)?,
            sources: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
            restore_roots: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
            version: r.get(10)?,
            revoked_ms: r.get(11)?,
            prev_serial: r.get(12)?,
            cert_expires_ms: r.get(13)?,
            docker: r.get(14)?,
        })
    }
}

const AGENT_COLS: &str = "id, name, labels, hostname, signing_key, cert_serial, enrolled_ms, last_seen_ms, sources, restore_roots, version, revoked_ms, prev_serial, cert_expires_ms, docker";

/// The outcome of redeeming a join token.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// Its labels, and the device it re-enrolls ("" for new machines).
    Valid(BTreeMap<String, String>, String),
    Unknown,
    AlreadyUsed,
    Expired,
}

impl Catalog {
    // ---- tokens ----

    pub fn insert_token(
        &self,
        hash: &str,
        labels: &BTreeMap<String, String>,
        now_ms: i64,
        expires_ms: i64,
        uses: u32,
        device: &str,
    ) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "INSERT INTO tokens(hash, labels, created_ms, expires_ms, uses, device) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![hash, json(labels), now_ms, expires_ms, uses, device],
        )?;
        Ok(())
    }

    /// Uses a token once, if it exists, has not expired and has uses left.
    /// What a join token is worth now, without using it.
    pub fn check_token(&self, hash: &str, now_ms: i64) -> Result<TokenCheck, CatalogError> {
        let conn = self.lock();
        let row: Option<(String, i64, i64, i64, String)> = conn
            .cached_row(
                "SELECT labels, expires_ms, uses, used, device FROM tokens WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((labels, expires_ms, uses, used, device)) = row else {
            return Ok(TokenCheck::Unknown);
        };
        if used >= uses {
            return Ok(TokenCheck::AlreadyUsed);
        }
        if expires_ms <= now_ms {
            return Ok(TokenCheck::Expired);
        }
        Ok(TokenCheck::Valid(
            serde_json::from_str(&labels).unwrap_or_default(),
            device,
        ))
    }

    /// Uses one redemption of the join token `hash` and records agent `a`, in one
    /// transaction: a token is spent only by an enrollment that happened. Fails with
    /// AlreadyExists for a name that is taken; a token spent or expired meanwhile (a race)
    /// is PermissionDenied.
    pub fn enroll_agent(&self, hash: &str, now_ms: i64, a: &AgentRow) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        spend_token(&tx, hash, now_ms, &a.id)?;
        insert_agent(&tx, a)?;
        tx.commit()?;
        Ok(())
    }

    /// Uses the re-enrollment token `hash` and gives existing agent `a.id` its new keys
    /// and certificate (and lifts a revocation: an admin issued the token for this
    /// device), in one transaction. Its id, name and history stay.
    pub fn reenroll_agent(
        &self,
        hash: &str,
        now_ms: i64,
        a: &AgentRow,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        spend_token(&tx, hash, now_ms, &a.id)?;
        tx.cached_exec(
            "UPDATE agents SET signing_key = ?2, cert_serial = ?3, prev_serial = '', cert_expires_ms = ?4, hostname = ?5, labels = ?6, revoked_ms = 0 WHERE id = ?1",
            params![a.id, a.signing_key, a.cert_serial, a.cert_expires_ms, a.hostname, json(&a.labels)],
        )?;
        tx.commit()?;
        Ok(())
    }

    // ---- agents ----

    pub fn insert_agent(&self, a: &AgentRow) -> Result<(), CatalogError> {
        insert_agent(&self.lock(), a)
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRow>, CatalogError> {
        Ok(self
            .lock()
            .cached_row(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE id = ?1"),
                [id],
                AgentRow::from_row,
            )
            .optional()?)
    }

    /// Finds an agent by exact name or id.
    pub fn find_agent(&self, name_or_id: &str) -> Result<AgentRow, CatalogError> {
        self.lock()
            .cached_row(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE name = ?1 OR id = ?1"),
                [name_or_id],
                AgentRow::from_row,
            )
            .optional()?
            .ok_or_else(|| {
                CatalogError::NotFound(format!(
                    "no agent named {name_or_id:?}; `lifeboat agents` lists them"
                ))
            })
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>, CatalogError> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY name"))?;
        let rows = st
            .query_map([], AgentRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn update_agent_hello(
        &self,
        id: &str,
        hostname: &str,
        version: &str,
        sources: &[(String, String, String)],
        roots: &[String],
    ) -> Result<(), CatalogError> {
        // Only what changed is written: a fleet reconnecting to a restarted controller says
        // what it said before, and 10,000 write transactions would hold the catalog for
        // seconds. When it was seen goes with the heartbeats (`Jobs::seen`).
        self.lock().cached_exec(
            "UPDATE agents SET hostname = ?2, version = ?3, sources = ?4, restore_roots = ?5 WHERE id = ?1 AND (hostname IS NOT ?2 OR version IS NOT ?3 OR sources IS NOT ?4 OR restore_roots IS NOT ?5)",
            params![id, hostname, version, json(&sources), json(&roots)],
        )?;
        Ok(())
    }

    /// Stores the agent's Docker inventory as it reported it.
    pub fn update_agent_docker(&self, id: &str, inventory: &[u8]) -> Result<(), CatalogError> {
        self.lock().cached_exec(
            "UPDATE agents SET docker = ?2 WHERE id = ?1 AND docker IS NOT ?2",
            params![id, inventory],
        )?;
        Ok(())
    }

    /// Marks an agent revoked; returns false if it already was.
    pub fn revoke_agent(&self, id: &str, now_ms: i64) -> Result<bool, CatalogError> {
        Ok(self.lock().cached_exec(
            "UPDATE agents SET revoked_ms = ?2, prev_serial = '' WHERE id = ?1 AND revoked_ms = 0",
            params![id, now_ms],
        )? == 1)
    }

    /// Records a renewed certificate: the old serial stays valid until the new one is used.
    pub fn renew_agent_cert(
        &self,
        id: &str,
        old_serial: &str,
        new_serial: &str,
        expires_ms: i64,
        ca: &str,
    ) -> Result<(), CatalogError> {
        let n = self.lock().cached_exec(
            "UPDATE agents SET prev_serial = ?2, cert_serial = ?3, cert_expires_ms = ?4, cert_ca = ?5 WHERE id = ?1 AND revoked_ms = 0",
            params![id, old_serial, new_serial, expires_ms, ca],
        )?;
        if n != 1 {
            return Err(CatalogError::Revoked(format!("agent {id} is revoked")));
        }
        Ok(())
    }

    /// The agent presented its current certificate: the previous one is retired.
    pub fn retire_prev_serial(&self, id: &str) -> Result<(), CatalogError> {
        self.lock()
            .cached_exec("UPDATE agents SET prev_serial = '' WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Records when each agent was last heard from, all in one transaction (heartbeats are
    /// gathered in memory and written every few seconds: see `Jobs::seen`).
    pub fn touch_agents(&self, seen: &[(String, i64)]) -> Result<(), CatalogError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE agents SET last_seen_ms = MAX(last_seen_ms, ?2) WHERE id = ?1",
            )?;
            for (id, ms) in seen {
                st.execute(params![id, ms])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Inserts agent `a`; a name that is taken is AlreadyExists.
fn insert_agent(conn: &rusqlite::Connection, a: &AgentRow) -> Result<(), CatalogError> {
    let res = conn.cached_exec(
        &format!("INSERT INTO agents({AGENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
        params![a.id, a.name, json(&a.labels), a.hostname, a.signing_key, a.cert_serial, a.enrolled_ms, a.last_seen_ms, json(&a.sources), json(&a.restore_roots), a.version, a.revoked_ms, a.prev_serial, a.cert_expires_ms, a.docker],
    );
    match res {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(CatalogError::Exists(format!(
                "an agent named {:?} is already enrolled; choose another --name",
                a.name
            )))
        }
        other => Ok(other.map(|_| ())?),
    }
}

/// Uses one redemption of join token `hash` for agent `agent_id`, inside the enrollment's
/// transaction; a token spent or expired meanwhile (a race) is PermissionDenied.
fn spend_token(
    tx: &rusqlite::Transaction<'_>,
    hash: &str,
    now_ms: i64,
    agent_id: &str,
) -> Result<(), CatalogError> {
    let n = tx.cached_exec(
        "UPDATE tokens SET used = used + 1, used_ms = ?1, used_by = ?2 WHERE hash = ?3 AND used < uses AND expires_ms > ?1",
        params![now_ms, agent_id, hash],
    )?;
    if n != 1 {
        return Err(CatalogError::Revoked(
            "join token was used or expired while enrolling; create a new one with `lifeboat token create`".into(),
        ));
    }
    Ok(())
}
