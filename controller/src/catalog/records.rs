//! Typed rows and the queries over them.

use std::collections::BTreeMap;

use lifeboat_core::ChunkId;
use lifeboat_core::pack::SealedPack;
use rusqlite::{OptionalExtension, Row, params};

use super::Catalog;
use crate::error::ApiError;

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
    Valid(BTreeMap<String, String>),
    Unknown,
    AlreadyUsed,
    Expired,
}

/// A snapshot as retention sees it.
#[derive(Debug, Clone)]
pub struct RetentionRow {
    pub agent_id: String,
    pub source: String,
    pub id: String,
    pub received_ms: i64,
    pub protected: bool,
}

#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub id: String,
    pub agent_id: String,
    pub agent_name: String,
    pub source: String,
    pub source_path: String,
    pub hostname: String,
    pub received_ms: i64,
    pub agent_time_ms: i64,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub bytes_new: u64,
    pub bytes_read: u64,
    pub parent: String,
    /// When it was quarantined (0: not).
    pub quarantined_ms: i64,
}

impl SnapshotRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(SnapshotRow {
            id: r.get(0)?,
            agent_id: r.get(1)?,
            agent_name: r.get(2)?,
            source: r.get(3)?,
            source_path: r.get(4)?,
            hostname: r.get(5)?,
            received_ms: r.get(6)?,
            agent_time_ms: r.get(7)?,
            files: r.get::<_, i64>(8)? as u64,
            dirs: r.get::<_, i64>(9)? as u64,
            bytes: r.get::<_, i64>(10)? as u64,
            bytes_new: r.get::<_, i64>(11)? as u64,
            parent: r.get(12)?,
            bytes_read: r.get::<_, i64>(13)? as u64,
            quarantined_ms: r.get(14)?,
        })
    }
}

const SNAP_COLS: &str = "id, agent_id, agent_name, source, source_path, hostname, received_ms, agent_time_ms, files, dirs, bytes, bytes_new, parent, bytes_read, quarantined_ms";

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

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
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
    ) -> Result<(), ApiError> {
        self.lock().execute(
            "INSERT INTO tokens(hash, labels, created_ms, expires_ms, uses) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash, json(labels), now_ms, expires_ms, uses],
        )?;
        Ok(())
    }

    /// Uses a token once, if it exists, has not expired and has uses left.
    /// What a join token is worth now, without using it.
    pub fn check_token(&self, hash: &str, now_ms: i64) -> Result<TokenCheck, ApiError> {
        let conn = self.lock();
        let row: Option<(String, i64, i64, i64)> = conn
            .query_row(
                "SELECT labels, expires_ms, uses, used FROM tokens WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((labels, expires_ms, uses, used)) = row else {
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
        ))
    }

    /// Uses one redemption of the join token `hash` and records agent `a`, in one
    /// transaction: a token is spent only by an enrollment that happened. Fails with
    /// AlreadyExists for a name that is taken; a token spent or expired meanwhile (a race)
    /// is PermissionDenied.
    pub fn enroll_agent(&self, hash: &str, now_ms: i64, a: &AgentRow) -> Result<(), ApiError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE tokens SET used = used + 1, used_ms = ?1, used_by = ?2 WHERE hash = ?3 AND used < uses AND expires_ms > ?1",
            params![now_ms, a.id, hash],
        )?;
        if n != 1 {
            return Err(ApiError::PermissionDenied(
                "join token was used or expired while enrolling; create a new one with `lifeboat token create`".into(),
            ));
        }
        insert_agent(&tx, a)?;
        tx.commit()?;
        Ok(())
    }

    // ---- agents ----

    pub fn insert_agent(&self, a: &AgentRow) -> Result<(), ApiError> {
        insert_agent(&self.lock(), a)
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRow>, ApiError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE id = ?1"),
                [id],
                AgentRow::from_row,
            )
            .optional()?)
    }

    /// Finds an agent by exact name or id.
    pub fn find_agent(&self, name_or_id: &str) -> Result<AgentRow, ApiError> {
        self.lock()
            .query_row(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE name = ?1 OR id = ?1"),
                [name_or_id],
                AgentRow::from_row,
            )
            .optional()?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no agent named {name_or_id:?}; `lifeboat agents` lists them"
                ))
            })
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY name"))?;
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
        now_ms: i64,
    ) -> Result<(), ApiError> {
        self.lock().execute(
            "UPDATE agents SET hostname = ?2, version = ?3, sources = ?4, restore_roots = ?5, last_seen_ms = ?6 WHERE id = ?1",
            params![id, hostname, version, json(&sources), json(&roots), now_ms],
        )?;
        Ok(())
    }

    /// Stores the agent's Docker inventory as it reported it.
    pub fn update_agent_docker(&self, id: &str, inventory: &[u8]) -> Result<(), ApiError> {
        self.lock().execute(
            "UPDATE agents SET docker = ?2 WHERE id = ?1",
            params![id, inventory],
        )?;
        Ok(())
    }

    /// Marks an agent revoked; returns false if it already was.
    pub fn revoke_agent(&self, id: &str, now_ms: i64) -> Result<bool, ApiError> {
        Ok(self.lock().execute(
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
    ) -> Result<(), ApiError> {
        let n = self.lock().execute(
            "UPDATE agents SET prev_serial = ?2, cert_serial = ?3, cert_expires_ms = ?4 WHERE id = ?1 AND revoked_ms = 0",
            params![id, old_serial, new_serial, expires_ms],
        )?;
        if n != 1 {
            return Err(ApiError::PermissionDenied(format!("agent {id} is revoked")));
        }
        Ok(())
    }

    /// The agent presented its current certificate: the previous one is retired.
    pub fn retire_prev_serial(&self, id: &str) -> Result<(), ApiError> {
        self.lock()
            .execute("UPDATE agents SET prev_serial = '' WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn touch_agent(&self, id: &str, now_ms: i64) -> Result<(), ApiError> {
        self.touch_agents(&[(id.to_string(), now_ms)])
    }

    /// Records when each agent was last heard from, all in one transaction (heartbeats are
    /// gathered in memory and written every few seconds: see `Jobs::seen`).
    pub fn touch_agents(&self, seen: &[(String, i64)]) -> Result<(), ApiError> {
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

    // ---- chunks and packs ----

    /// Records a sealed pack and its chunks in one transaction.
    pub fn insert_pack(&self, pack: &SealedPack, now_ms: i64) -> Result<(), ApiError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO packs(name, size, chunks, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                pack.name,
                pack.size as i64,
                pack.entries.len() as i64,
                now_ms
            ],
        )?;
        {
            let mut st = tx.prepare(
                "INSERT OR IGNORE INTO chunks(id, pack, offset, length) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in &pack.entries {
                st.execute(params![
                    &e.id.as_bytes()[..],
                    pack.name,
                    e.offset as i64,
                    e.length as i64
                ])?;
            }
            // A chunk scrub found bad is healed once a good copy is stored again.
            let mut heal =
                tx.prepare("UPDATE bad_chunks SET healed_ms = ?2 WHERE id = ?1 AND healed_ms = 0")?;
            for e in &pack.entries {
                heal.execute(params![&e.id.as_bytes()[..], now_ms])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Ids of every snapshot in the catalog.
    pub fn snapshot_ids(&self) -> Result<Vec<String>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare("SELECT id FROM snapshots")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// `(chunk, pack, pack created_ms)` of every indexed chunk.
    pub fn indexed_chunks(&self) -> Result<Vec<(ChunkId, String, i64)>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT c.id, c.pack, COALESCE(p.created_ms, 0) FROM chunks c LEFT JOIN packs p ON p.name = c.pack",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, p, c)| Ok((ChunkId::from_slice(&id)?, p, c)))
            .collect()
    }

    /// Drops chunks from the index (GC's sweep), in one transaction.
    pub fn unindex_chunks(&self, ids: &[ChunkId]) -> Result<(), ApiError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare("DELETE FROM chunks WHERE id = ?1")?;
            for id in ids {
                st.execute([&id.as_bytes()[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// `(pack, size, bytes of its blobs still indexed there)`.
    pub fn pack_liveness(&self) -> Result<Vec<(String, u64, u64)>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT p.name, p.size, COALESCE(SUM(c.length), 0) FROM packs p LEFT JOIN chunks c ON c.pack = p.name GROUP BY p.name ORDER BY p.name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Records a compacted pack and points the index at its copies, in one transaction.
    pub fn relocate(&self, pack: &SealedPack, now_ms: i64) -> Result<(), ApiError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO packs(name, size, chunks, created_ms, verified_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![pack.name, pack.size as i64, pack.entries.len() as i64, now_ms],
        )?;
        {
            let mut st =
                tx.prepare("UPDATE chunks SET pack = ?2, offset = ?3, length = ?4 WHERE id = ?1")?;
            for e in &pack.entries {
                st.execute(params![
                    &e.id.as_bytes()[..],
                    pack.name,
                    e.offset as i64,
                    e.length as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn delete_pack_row(&self, name: &str) -> Result<(), ApiError> {
        self.lock()
            .execute("DELETE FROM packs WHERE name = ?1", [name])?;
        Ok(())
    }

    /// `(chunk, offset, length)` of every indexed chunk in `pack`.
    pub fn chunks_in_pack(&self, pack: &str) -> Result<Vec<(ChunkId, u64, u32)>, ApiError> {
        let conn = self.lock();
        let mut st =
            conn.prepare("SELECT id, offset, length FROM chunks WHERE pack = ?1 ORDER BY offset")?;
        let rows = st
            .query_map([pack], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, o, l)| Ok((ChunkId::from_slice(&id)?, o as u64, l as u32)))
            .collect()
    }

    /// `(pack, size, verified_ms)`, least recently verified first.
    pub fn packs_by_verified(&self) -> Result<Vec<(String, u64, i64)>, ApiError> {
        let conn = self.lock();
        let mut st =
            conn.prepare("SELECT name, size, verified_ms FROM packs ORDER BY verified_ms, name")?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn set_pack_verified(&self, pack: &str, now_ms: i64) -> Result<(), ApiError> {
        self.lock().execute(
            "UPDATE packs SET verified_ms = ?2 WHERE name = ?1",
            params![pack, now_ms],
        )?;
        Ok(())
    }

    /// Records a bad chunk and drops it from the index, so the store reports it missing.
    pub fn mark_bad_chunk(
        &self,
        id: &ChunkId,
        pack: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO bad_chunks(id, pack, reason, found_ms, healed_ms) VALUES (?1, ?2, ?3, ?4, 0) ON CONFLICT(id) DO UPDATE SET pack = ?2, reason = ?3, found_ms = ?4, healed_ms = 0",
            params![&id.as_bytes()[..], pack, reason, now_ms],
        )?;
        tx.execute("DELETE FROM chunks WHERE id = ?1", [&id.as_bytes()[..]])?;
        tx.commit()?;
        Ok(())
    }

    /// `(healed, unhealed)` bad chunks.
    pub fn bad_chunk_counts(&self) -> Result<(u64, u64), ApiError> {
        let conn = self.lock();
        let healed: i64 = conn.query_row(
            "SELECT COUNT(*) FROM bad_chunks WHERE healed_ms > 0",
            [],
            |r| r.get(0),
        )?;
        let unhealed: i64 = conn.query_row(
            "SELECT COUNT(*) FROM bad_chunks WHERE healed_ms = 0",
            [],
            |r| r.get(0),
        )?;
        Ok((healed as u64, unhealed as u64))
    }

    /// Chunks found bad and not stored again yet (at most `limit`).
    pub fn unhealed_chunks(&self, limit: u32) -> Result<Vec<ChunkId>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare("SELECT id FROM bad_chunks WHERE healed_ms = 0 LIMIT ?1")?;
        let rows = st
            .query_map([limit], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.iter()
            .map(|b| ChunkId::from_slice(b).map_err(ApiError::from))
            .collect()
    }

    /// Percentage of stored pack bytes verified since `since_ms`.
    pub fn verified_coverage(&self, since_ms: i64) -> Result<f64, ApiError> {
        let conn = self.lock();
        let (total, fresh): (i64, i64) = conn.query_row(
            "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(CASE WHEN verified_ms >= ?1 THEN size ELSE 0 END), 0) FROM packs",
            [since_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(if total == 0 {
            100.0
        } else {
            100.0 * fresh as f64 / total as f64
        })
    }

    /// Where a chunk is stored: `(pack, offset, length)`.
    pub fn chunk_location(&self, id: &ChunkId) -> Result<Option<(String, u64, u32)>, ApiError> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached("SELECT pack, offset, length FROM chunks WHERE id = ?1")?;
        Ok(st
            .query_row([&id.as_bytes()[..]], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u32,
                ))
            })
            .optional()?)
    }

    /// The subset of `ids` that the index does not know.
    pub fn unknown_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
        let mut out = Vec::new();
        for id in ids {
            if !st.exists([&id.as_bytes()[..]])? {
                out.push(*id);
            }
        }
        Ok(out)
    }

    // ---- snapshots ----

    pub fn insert_snapshot(&self, s: &SnapshotRow) -> Result<(), ApiError> {
        self.lock().execute(
            &format!("INSERT OR IGNORE INTO snapshots({SNAP_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
            params![
                s.id, s.agent_id, s.agent_name, s.source, s.source_path, s.hostname, s.received_ms, s.agent_time_ms,
                s.files as i64, s.dirs as i64, s.bytes as i64, s.bytes_new as i64, s.parent, s.bytes_read as i64,
                s.quarantined_ms
            ],
        )?;
        Ok(())
    }

    /// Snapshots, newest first, optionally of one agent (id) and one source.
    pub fn snapshots(
        &self,
        agent_id: Option<&str>,
        source: Option<&str>,
    ) -> Result<Vec<SnapshotRow>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {SNAP_COLS} FROM snapshots WHERE (?1 IS NULL OR agent_id = ?1) AND (?2 IS NULL OR source = ?2) ORDER BY received_ms DESC, id"
        ))?;
        let rows = st
            .query_map(params![agent_id, source], SnapshotRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Resolves a full id or a unique prefix (at least 4 hex characters).
    pub fn find_snapshot(&self, prefix: &str) -> Result<SnapshotRow, ApiError> {
        if prefix.len() < 4
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ApiError::InvalidArgument(format!(
                "{prefix:?} is not a snapshot id: give at least 4 lowercase hex characters"
            )));
        }
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {SNAP_COLS} FROM snapshots WHERE id >= ?1 AND id < ?1 || 'g' LIMIT 2"
        ))?;
        let rows = st
            .query_map([prefix], SnapshotRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        match rows.len() {
            0 => Err(ApiError::NotFound(format!(
                "no snapshot {prefix}; `lifeboat snapshots` lists them"
            ))),
            1 => Ok(rows
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::internal("row vanished"))?),
            _ => Err(ApiError::InvalidArgument(format!(
                "snapshot prefix {prefix} is ambiguous; give more characters"
            ))),
        }
    }

    /// The newest snapshot of an agent's source, if any.
    pub fn latest_snapshot(
        &self,
        agent_id: &str,
        source: &str,
    ) -> Result<Option<SnapshotRow>, ApiError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {SNAP_COLS} FROM snapshots WHERE agent_id = ?1 AND source = ?2 ORDER BY received_ms DESC LIMIT 1"),
                params![agent_id, source],
                SnapshotRow::from_row,
            )
            .optional()?)
    }

    /// Replaces the store index (packs, chunks, snapshots) during `rebuild-catalog`.
    pub fn delete_snapshot(&self, id: &str) -> Result<(), ApiError> {
        self.lock()
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn clear_store_index(&self) -> Result<(), ApiError> {
        self.lock()
            .execute_batch("DELETE FROM chunks; DELETE FROM packs; DELETE FROM snapshots;")?;
        Ok(())
    }

    // ---- jobs ----

    pub fn insert_job(&self, j: &JobRow) -> Result<(), ApiError> {
        self.lock().execute(
            &format!("INSERT INTO jobs({JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![j.id, j.kind, j.agent_id, j.state, j.detail, j.job, j.created_ms, j.started_ms, j.finished_ms, j.progress, j.error, json(&j.snapshot_ids), j.policy, j.attempts, j.result, j.refusal],
        )?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, ApiError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                [id],
                JobRow::from_row,
            )
            .optional()?)
    }

    pub fn jobs(&self, limit: u32) -> Result<Vec<JobRow>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs ORDER BY created_ms DESC, id LIMIT ?1"
        ))?;
        let rows = st
            .query_map([limit], JobRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn jobs_in_state(&self, agent_id: &str, state: i32) -> Result<Vec<JobRow>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE agent_id = ?1 AND state = ?2 ORDER BY created_ms, id"
        ))?;
        let rows = st
            .query_map(params![agent_id, state], JobRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn update_job(&self, j: &JobRow) -> Result<(), ApiError> {
        self.lock().execute(
            "UPDATE jobs SET state = ?2, started_ms = ?3, finished_ms = ?4, progress = ?5, error = ?6, snapshot_ids = ?7, attempts = ?8, result = ?9, refusal = ?10 WHERE id = ?1",
            params![j.id, j.state, j.started_ms, j.finished_ms, j.progress, j.error, json(&j.snapshot_ids), j.attempts, j.result, j.refusal],
        )?;
        Ok(())
    }

    /// Jobs in any of `states` (oldest first).
    pub fn jobs_in_states(&self, states: &[i32]) -> Result<Vec<JobRow>, ApiError> {
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

    // ---- policies and the scheduler ----

    /// Stores a policy; returns whether it was new or changed.
    pub fn put_policy(&self, name: &str, spec: &str, now_ms: i64) -> Result<bool, ApiError> {
        let conn = self.lock();
        let old: Option<String> = conn
            .query_row("SELECT spec FROM policies WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if old.as_deref() == Some(spec) {
            return Ok(false);
        }
        conn.execute(
            "INSERT INTO policies(name, spec, updated_ms) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET spec = ?2, updated_ms = ?3",
            params![name, spec, now_ms],
        )?;
        Ok(true)
    }

    /// `(name, spec JSON, updated_ms)`, by name.
    pub fn policies(&self) -> Result<Vec<(String, String, i64)>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare("SELECT name, spec, updated_ms FROM policies ORDER BY name")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn delete_policy(&self, name: &str) -> Result<bool, ApiError> {
        let conn = self.lock();
        conn.execute("DELETE FROM schedule WHERE policy = ?1", [name])?;
        Ok(conn.execute("DELETE FROM policies WHERE name = ?1", [name])? == 1)
    }

    /// The last slot the scheduler handled for `(policy, agent)`.
    pub fn last_slot(&self, policy: &str, agent_id: &str) -> Result<Option<i64>, ApiError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT last_slot_ms FROM schedule WHERE policy = ?1 AND agent_id = ?2",
                params![policy, agent_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_last_slot(
        &self,
        policy: &str,
        agent_id: &str,
        slot_ms: i64,
    ) -> Result<(), ApiError> {
        self.lock().execute(
            "INSERT INTO schedule(policy, agent_id, last_slot_ms) VALUES (?1, ?2, ?3) ON CONFLICT(policy, agent_id) DO UPDATE SET last_slot_ms = ?3",
            params![policy, agent_id, slot_ms],
        )?;
        Ok(())
    }

    /// Pins or unpins a snapshot against retention.
    pub fn set_protected(&self, id: &str, protected: bool) -> Result<(), ApiError> {
        self.lock().execute(
            "UPDATE snapshots SET protected = ?2 WHERE id = ?1",
            params![id, protected],
        )?;
        Ok(())
    }

    /// Every snapshot as retention sees it, grouped by agent and source, newest first.
    pub fn retention_view(&self) -> Result<Vec<RetentionRow>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT agent_id, source, id, received_ms, protected FROM snapshots ORDER BY agent_id, source, received_ms DESC",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(RetentionRow {
                    agent_id: r.get(0)?,
                    source: r.get(1)?,
                    id: r.get(2)?,
                    received_ms: r.get(3)?,
                    protected: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Marks every job in `from` state as `to` with `reason` (start-up recovery).
    pub fn move_jobs(
        &self,
        from: i32,
        to: i32,
        reason: &str,
        now_ms: i64,
    ) -> Result<usize, ApiError> {
        Ok(self.lock().execute(
            "UPDATE jobs SET state = ?2, error = ?3, finished_ms = ?4 WHERE state = ?1",
            params![from, to, reason, now_ms],
        )?)
    }
}

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
}

const DRILL_COLS: &str = "id, agent_id, source, snapshot_id, job_id, state, started_ms, finished_ms, estimate_ms, estimate_basis, actual_ms, bytes, result, error, probe, policy";

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
        })
    }
}

impl Catalog {
    // ---- quarantine ----

    /// Marks the snapshots of `agent_id` received after `after_ms` as quarantined at
    /// `now_ms` (or lifts it with `clear`); returns the snapshots it changed.
    pub fn quarantine(
        &self,
        agent_id: &str,
        after_ms: i64,
        now_ms: i64,
        clear: bool,
    ) -> Result<Vec<SnapshotRow>, ApiError> {
        let conn = self.lock();
        let (set, cond) = if clear {
            (0, "quarantined_ms != 0")
        } else {
            (now_ms, "quarantined_ms = 0")
        };
        let mut st = conn.prepare(&format!(
            "UPDATE snapshots SET quarantined_ms = ?3 WHERE agent_id = ?1 AND received_ms > ?2 AND {cond} RETURNING {SNAP_COLS}"
        ))?;
        let rows = st
            .query_map(params![agent_id, after_ms, set], SnapshotRow::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    // ---- restore samples ----

    pub fn insert_sample(
        &self,
        job_id: &str,
        s: &SampleRow,
        files: u64,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO restore_samples(job_id, agent_id, kind, bytes, files, data_ms, total_ms, shared, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![job_id, s.agent_id, s.kind, s.bytes as i64, files as i64, s.data_ms as i64, s.total_ms as i64, s.shared, now_ms],
        )?;
        Ok(())
    }

    /// The newest `per_key` samples of every (agent, kind).
    pub fn recent_samples(&self, per_key: u32) -> Result<Vec<SampleRow>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(
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

    pub fn put_drill(&self, d: &DrillRow) -> Result<(), ApiError> {
        self.lock().execute(
            &format!("INSERT OR REPLACE INTO drills({DRILL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![
                d.id, d.agent_id, d.source, d.snapshot_id, d.job_id, d.state, d.started_ms, d.finished_ms,
                d.estimate_ms as i64, d.estimate_basis, d.actual_ms as i64, d.bytes as i64, d.result, d.error, d.probe, d.policy
            ],
        )?;
        Ok(())
    }

    pub fn drill_by_job(&self, job_id: &str) -> Result<Option<DrillRow>, ApiError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {DRILL_COLS} FROM drills WHERE job_id = ?1"),
                params![job_id],
                DrillRow::from_row,
            )
            .optional()?)
    }

    /// Drills, newest first; only `ids` when given.
    pub fn drills(&self, limit: u32, ids: &[String]) -> Result<Vec<DrillRow>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
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

    /// When each agent was last drilled (agents never drilled are absent).
    pub fn last_drills(&self) -> Result<BTreeMap<String, i64>, ApiError> {
        let conn = self.lock();
        let mut st =
            conn.prepare("SELECT agent_id, MAX(started_ms) FROM drills GROUP BY agent_id")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
        Ok(rows)
    }

    /// Failed drills ever recorded (a metric).
    pub fn failed_drills(&self) -> Result<u64, ApiError> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*) FROM drills WHERE state = 'failed'",
            [],
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
    ) -> Result<(), ApiError> {
        self.lock().execute(
            "INSERT INTO plans(id, created_ms, state, info) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, info = excluded.info",
            params![id, created_ms, state, info],
        )?;
        Ok(())
    }

    pub fn plan(&self, id: &str) -> Result<Option<Vec<u8>>, ApiError> {
        Ok(self
            .lock()
            .query_row("SELECT info FROM plans WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Plan ids and states, newest first.
    pub fn plans(&self) -> Result<Vec<(String, String)>, ApiError> {
        let conn = self.lock();
        let mut st = conn.prepare("SELECT id, state FROM plans ORDER BY created_ms DESC")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Stored bytes of each chunk (what the controller sends for it); unknown chunks are
    /// left out.
    pub fn chunk_lengths(&self, ids: &[ChunkId]) -> Result<u64, ApiError> {
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

/// Inserts agent `a`; a name that is taken is AlreadyExists.
fn insert_agent(conn: &rusqlite::Connection, a: &AgentRow) -> Result<(), ApiError> {
    let res = conn.execute(
        &format!("INSERT INTO agents({AGENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
        params![a.id, a.name, json(&a.labels), a.hostname, a.signing_key, a.cert_serial, a.enrolled_ms, a.last_seen_ms, json(&a.sources), json(&a.restore_roots), a.version, a.revoked_ms, a.prev_serial, a.cert_expires_ms, a.docker],
    );
    match res {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(ApiError::AlreadyExists(format!(
                "an agent named {:?} is already enrolled; choose another --name",
                a.name
            )))
        }
        other => Ok(other.map(|_| ())?),
    }
}
