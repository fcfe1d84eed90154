//! The audit log: an append-only, hash-chained record of everything that changes trust or
//! data (operator actions, enrollments, certificates, revocations, denials, restores,
//! deletions), kept in the catalog's `audit` table.
//!
//! Entry `n` stores `hash_n = BLAKE3("lifeboat audit v1" | hash_{n-1} | n | time | actor |
//! action | target | outcome | detail)` (fields length-prefixed; `hash_0` is 32 zero
//! bytes), so changing, deleting or reordering an entry breaks the chain at that entry.
//! Truncating the tail, or rewriting the whole chain consistently, is caught by the
//! anchor: every few seconds the controller writes the chain head (sequence number and
//! hash, signed with its countersigning key) into the store as `audit-head`, beside the
//! data and outside the catalog. An anchor never moves backwards, and once verification
//! has failed the controller stops anchoring, so a tampered catalog cannot be blessed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lifeboat_core::durable::write_atomic;
use lifeboat_core::sign::SigningKey;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::catalog::CatalogError;
use crate::error::ApiError;
use crate::now_ms;

const CONTEXT: &[u8] = b"lifeboat audit v1\0";
const ANCHOR_CONTEXT: &[u8] = b"lifeboat audit head v1\0";
/// Denials of callers without an identity the catalog honours (refused handshakes,
/// enrollments with a bad token, revoked or unknown certificates) recorded per minute: at
/// most this many from one source (an address, or a certificate), so a scanner hides
/// nobody else's denials, and at most [`ANONYMOUS_DENIALS_PER_MINUTE`] from all sources,
/// so scanners cannot fill the disk. The rest are counted and summarized in one entry per
/// minute. Denials of an authenticated identity are always recorded (an admin can revoke
/// that identity).
const DENIALS_PER_SOURCE_PER_MINUTE: u32 = 120;
const ANONYMOUS_DENIALS_PER_MINUTE: u32 = 1200;
/// Entries kept in memory while the catalog cannot take them (its disk full): about 15 MiB
/// at most. Past that the oldest are kept (how it began) and the rest counted, and the
/// count is recorded with them.
const UNSAVED_MAX: usize = 50_000;

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub ts_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// JSON object with the particulars.
    pub detail: String,
}

impl Entry {
    /// An entry from the first seven columns `seq, ts_ms, actor, action, target, outcome,
    /// detail` of a row.
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
        Ok(Entry {
            seq: r.get::<_, i64>(0)? as u64,
            ts_ms: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            outcome: r.get(5)?,
            detail: r.get(6)?,
        })
    }

    fn hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(CONTEXT);
        h.update(prev);
        h.update(&self.seq.to_le_bytes());
        h.update(&self.ts_ms.to_le_bytes());
        for f in [
            &self.actor,
            &self.action,
            &self.target,
            &self.outcome,
            &self.detail,
        ] {
            h.update(&(f.len() as u64).to_le_bytes());
            h.update(f.as_bytes());
        }
        *h.finalize().as_bytes()
    }
}

/// The chain head as written into the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Anchor {
    seq: u64,
    hash: String,
    written_ms: i64,
    /// ed25519 by the controller over `ANCHOR_CONTEXT | seq | hash`.
    signature: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub entries: u64,
    /// The first entry that is wrong or missing, if any.
    pub broken_seq: Option<u64>,
    pub reason: String,
    /// The sequence number the store's anchor vouches for (0: none written yet).
    pub anchor_seq: u64,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.broken_seq.is_none()
    }
}

/// An entry not yet in the catalog: what happened, and when.
struct Pending {
    ts_ms: i64,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    detail: String,
}

/// Entries the catalog could not take yet, oldest first, and how many more there were.
#[derive(Default)]
struct Unsaved {
    entries: std::collections::VecDeque<Pending>,
    lost: u64,
    lost_from_ms: i64,
    lost_to_ms: i64,
}

#[derive(Default)]
struct DenialWindow {
    minute: i64,
    recorded: u32,
    /// Recorded this minute, by source address.
    by_source: std::collections::HashMap<String, u32>,
    suppressed: u64,
}

pub struct Audit {
    catalog: std::sync::Arc<Catalog>,
    anchor_path: PathBuf,
    signer: SigningKey,
    /// Entries were appended since the last anchor.
    dirty: AtomicBool,
    /// Verification failed: never anchor again in this process.
    frozen: AtomicBool,
    denials: Mutex<DenialWindow>,
    /// Denials since the controller started, for `/metrics`: of authenticated identities,
    /// and of callers without one (recorded or over the budget).
    denied_identity: AtomicU64,
    denied_anonymous: AtomicU64,
    /// Refusals since the controller started, by the rule broken (the entry's action).
    refusals: Mutex<BTreeMap<String, u64>>,
    /// Entries waiting for the catalog to take them. Held while entries are written, so
    /// that they reach the chain in the order they happened.
    unsaved: Mutex<Unsaved>,
}

/// What `/metrics` counts of denials and refusals since the controller started.
pub struct DenialCounts {
    pub identity: u64,
    pub anonymous: u64,
    /// By action (`snapshot.commit`, `chunks.upload`, ...); the two rules an agent can
    /// break are always present.
    pub refusals: BTreeMap<String, u64>,
}

impl Audit {
    pub fn new(
        catalog: std::sync::Arc<Catalog>,
        store_dir: &std::path::Path,
        signer: SigningKey,
    ) -> Audit {
        Audit {
            catalog,
            anchor_path: store_dir.join("audit-head"),
            signer,
            dirty: AtomicBool::new(true),
            frozen: AtomicBool::new(false),
            denials: Mutex::new(DenialWindow::default()),
            denied_identity: AtomicU64::new(0),
            denied_anonymous: AtomicU64::new(0),
            refusals: Mutex::new(
                ["snapshot.commit", "chunks.upload"]
                    .into_iter()
                    .map(|a| (a.to_string(), 0))
                    .collect(),
            ),
            unsaved: Mutex::new(Unsaved::default()),
        }
    }

    /// Entries waiting for the catalog to take them, for `/metrics`.
    pub fn unsaved(&self) -> usize {
        self.unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// Denials and refusals counted since the controller started.
    pub fn denial_counts(&self) -> DenialCounts {
        DenialCounts {
            identity: self.denied_identity.load(Ordering::Relaxed),
            anonymous: self.denied_anonymous.load(Ordering::Relaxed),
            refusals: self
                .refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Appends an entry (`detail` is a JSON object) after any the catalog could not take
    /// before. When it cannot take this one either (its disk full), the entry waits in
    /// memory with its time, and the next entry or the anchor worker writes it: filling
    /// the controller's disk hides nobody's actions or denials from the log.
    fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Pending {
            ts_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        };
        if unsaved.entries.len() < UNSAVED_MAX {
            unsaved.entries.push_back(entry);
        } else {
            if unsaved.lost == 0 {
                unsaved.lost_from_ms = entry.ts_ms;
            }
            unsaved.lost += 1;
            unsaved.lost_to_ms = entry.ts_ms;
        }
        let waiting = unsaved.entries.len();
        if let Err(e) = self.write(&mut unsaved) {
            tracing::error!(%actor, %action, %target, waiting, error = %e, "could not write the audit log; the entry waits in memory until the catalog takes it");
        }
    }

    /// Writes the entries waiting, if any (the anchor worker calls this every few seconds).
    fn flush(&self) -> Result<(), CatalogError> {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        if unsaved.entries.is_empty() && unsaved.lost == 0 {
            return Ok(());
        }
        let n = unsaved.entries.len();
        self.write(&mut unsaved)?;
        tracing::info!(
            entries = n,
            "audit entries that waited for the catalog are written"
        );
        Ok(())
    }

    /// Appends every waiting entry to the chain in one transaction (all or none), then a
    /// count of those past [`UNSAVED_MAX`].
    fn write(&self, unsaved: &mut Unsaved) -> Result<(), CatalogError> {
        let mut conn = self.catalog.lock();
        let tx = conn.transaction()?;
        let last: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (mut seq, mut prev) = match last {
            Some((seq, hash)) => (seq as u64 + 1, hash_array(&hash)),
            None => (1, [0u8; 32]),
        };
        let lost = (unsaved.lost > 0).then(|| Pending {
            ts_ms: now_ms(),
            actor: "controller".into(),
            action: "audit.lost".into(),
            target: String::new(),
            outcome: "ok".into(),
            detail: serde_json::json!({
                "entries_not_recorded": unsaved.lost,
                "reason": "the catalog could not take them and more waited than the controller keeps in memory",
                "from_unix_ms": unsaved.lost_from_ms,
                "to_unix_ms": unsaved.lost_to_ms,
            })
            .to_string(),
        });
        for p in unsaved.entries.iter().chain(lost.as_ref()) {
            let entry = Entry {
                seq,
                ts_ms: p.ts_ms,
                actor: p.actor.clone(),
                action: p.action.clone(),
                target: p.target.clone(),
                outcome: p.outcome.clone(),
                detail: p.detail.clone(),
            };
            let hash = entry.hash(&prev);
            tx.execute(
                "INSERT INTO audit(seq, ts_ms, actor, action, target, outcome, detail, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![seq as i64, entry.ts_ms, entry.actor, entry.action, entry.target, entry.outcome, entry.detail, &prev[..], &hash[..]],
            )?;
            seq += 1;
            prev = hash;
        }
        tx.commit()?;
        *unsaved = Unsaved::default();
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Records an action that succeeded; an audit failure is logged, never silent, and the
    /// entry is written once the catalog takes it.
    pub fn ok(&self, actor: &str, action: &str, target: &str, detail: serde_json::Value) {
        self.record(actor, action, target, "ok", detail);
    }

    /// Records a call an authenticated identity (an agent or operator the catalog
    /// honours) was denied. Always recorded.
    pub fn denied(&self, actor: &str, what: &str, remote: &str, why: &str) {
        self.denied_identity.fetch_add(1, Ordering::Relaxed);
        self.record_denial(actor, what, remote, why);
    }

    /// Records a request of an authenticated identity that passed authorization and was
    /// refused by the rule it broke (an agent's commit outside its job, an upload past its
    /// quota): `action` says which rule, `why` how. Always recorded.
    pub fn refused(&self, actor: &str, action: &str, target: &str, why: &str) {
        tracing::warn!(%actor, %action, %target, reason = %why, "refused");
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(action.to_string())
            .or_default() += 1;
        self.record(
            actor,
            action,
            target,
            "denied",
            serde_json::json!({ "reason": why }),
        );
    }

    /// Records a denial of a caller without an identity the catalog honours, within the
    /// budget of `source` (its address, or the certificate it presented) and the overall
    /// one (see [`DENIALS_PER_SOURCE_PER_MINUTE`]).
    pub fn denied_anonymous(&self, source: &str, actor: &str, what: &str, remote: &str, why: &str) {
        self.denied_anonymous.fetch_add(1, Ordering::Relaxed);
        let minute = now_ms() / 60_000;
        let source = source.to_string();
        let (record, summary) = {
            let mut w = self.denials.lock().unwrap_or_else(|p| p.into_inner());
            let mut summary = None;
            if w.minute != minute {
                if w.suppressed > 0 {
                    summary = Some(w.suppressed);
                }
                *w = DenialWindow {
                    minute,
                    ..Default::default()
                };
            }
            let from_source = w.by_source.get(&source).copied().unwrap_or(0);
            let record = w.recorded < ANONYMOUS_DENIALS_PER_MINUTE
                && from_source < DENIALS_PER_SOURCE_PER_MINUTE;
            if record {
                w.recorded += 1;
                *w.by_source.entry(source).or_default() += 1;
            } else {
                w.suppressed += 1;
            }
            (record, summary)
        };
        if let Some(n) = summary {
            self.ok(
                "controller",
                "authz.suppressed",
                "",
                serde_json::json!({ "denials_not_recorded": n }),
            );
        }
        if record {
            self.record_denial(actor, what, remote, why);
        } else {
            tracing::debug!(%actor, %what, %remote, reason = %why, "denied (not recorded: over the budget)");
        }
    }

    fn record_denial(&self, actor: &str, what: &str, remote: &str, why: &str) {
        tracing::warn!(%actor, %what, %remote, reason = %why, "denied");
        self.record(
            actor,
            "authz.denied",
            what,
            "denied",
            serde_json::json!({ "remote": remote, "reason": why }),
        );
    }

    /// Entries with `seq > after_seq` and time `>= since_ms`, oldest first.
    pub fn list(
        &self,
        since_ms: i64,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, CatalogError> {
        let conn = self.catalog.lock();
        let mut st = conn.prepare(
            "SELECT seq, ts_ms, actor, action, target, outcome, detail FROM audit WHERE seq > ?1 AND ts_ms >= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = st
            .query_map(params![after_seq as i64, since_ms, limit], Entry::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Checks the whole chain, then the store's anchor against it.
    pub fn verify(&self) -> Result<Verification, ApiError> {
        let anchor = self.read_anchor()?;
        let anchor_seq = anchor.as_ref().map(|a| a.seq).unwrap_or(0);
        let broken = |seq: u64, entries: u64, reason: String| Verification {
            entries,
            broken_seq: Some(seq),
            reason,
            anchor_seq,
        };
        let conn = self.catalog.lock();
        let mut st = conn.prepare(
            "SELECT seq, ts_ms, actor, action, target, outcome, detail, prev, hash FROM audit ORDER BY seq",
        ).map_err(CatalogError::from)?;
        let mut rows = st.query([]).map_err(CatalogError::from)?;
        let mut expected_seq = 1u64;
        let mut prev = [0u8; 32];
        let mut anchor_checked = false;
        while let Some(r) = rows.next().map_err(CatalogError::from)? {
            let e = Entry::from_row(r).map_err(CatalogError::from)?;
            let stored_prev: Vec<u8> = r.get(7).map_err(CatalogError::from)?;
            let stored_hash: Vec<u8> = r.get(8).map_err(CatalogError::from)?;
            let n = expected_seq - 1;
            if e.seq != expected_seq {
                return Ok(broken(
                    expected_seq,
                    n,
                    format!(
                        "entry {expected_seq} is missing (the next entry is {})",
                        e.seq
                    ),
                ));
            }
            if stored_prev != prev {
                return Ok(broken(
                    e.seq,
                    n,
                    format!(
                        "entry {} does not follow entry {}: the chain was reordered or an entry was replaced",
                        e.seq,
                        e.seq - 1
                    ),
                ));
            }
            let hash = e.hash(&prev);
            if stored_hash != hash {
                return Ok(broken(
                    e.seq,
                    n,
                    format!("entry {} was modified after it was written", e.seq),
                ));
            }
            if let Some(a) = &anchor
                && a.seq == e.seq
            {
                anchor_checked = true;
                if a.hash != hex::encode(hash) {
                    return Ok(broken(
                        e.seq,
                        n,
                        format!(
                            "entry {} differs from the chain head anchored in the store: the chain was rewritten",
                            e.seq
                        ),
                    ));
                }
            }
            prev = hash;
            expected_seq += 1;
        }
        let entries = expected_seq - 1;
        if let Some(a) = &anchor
            && !anchor_checked
        {
            return Ok(broken(
                entries + 1,
                entries,
                format!(
                    "the log ends at entry {entries} but the store's anchor vouches for entry {}: entries {}..={} were removed",
                    a.seq,
                    entries + 1,
                    a.seq
                ),
            ));
        }
        Ok(Verification {
            entries,
            broken_seq: None,
            reason: String::new(),
            anchor_seq,
        })
    }

    fn read_anchor(&self) -> Result<Option<Anchor>, ApiError> {
        let bytes = match std::fs::read(&self.anchor_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "reading {}: {e}",
                    self.anchor_path.display()
                )));
            }
        };
        let a: Anchor = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::internal(format!("{} is corrupt: {e}", self.anchor_path.display()))
        })?;
        let sig = hex::decode(&a.signature).unwrap_or_default();
        lifeboat_core::sign::verify(
            &self.signer.public_key(),
            &anchor_message(a.seq, &a.hash),
            &sig,
            "the audit anchor's signature",
        )?;
        Ok(Some(a))
    }

    /// Verifies the chain and, if it holds and moved on, writes the head into the store.
    /// A failed verification freezes anchoring for the life of the process.
    pub fn anchor(&self) -> Result<(), ApiError> {
        self.flush()?;
        if self.frozen.load(Ordering::Relaxed) || !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let v = self.verify()?;
        if !v.ok() {
            self.frozen.store(true, Ordering::Relaxed);
            tracing::error!(entry = v.broken_seq, reason = %v.reason, "the audit chain is broken; no longer anchoring it. Run `lifeboat audit verify`");
            return Ok(());
        }
        if v.entries <= v.anchor_seq {
            return Ok(());
        }
        let hash: Vec<u8> = self
            .catalog
            .lock()
            .query_row(
                "SELECT hash FROM audit WHERE seq = ?1",
                [v.entries as i64],
                |r| r.get(0),
            )
            .map_err(CatalogError::from)?;
        let hash = hex::encode(hash);
        let anchor = Anchor {
            seq: v.entries,
            signature: hex::encode(self.signer.sign(&anchor_message(v.entries, &hash))),
            hash,
            written_ms: now_ms(),
        };
        let json = serde_json::to_vec_pretty(&anchor)
            .map_err(|e| ApiError::internal(format!("encoding the audit anchor: {e}")))?;
        // The entries it vouches for are on disk before it is: a power cut must not leave
        // an anchor ahead of the log (a false alarm of removed entries).
        self.catalog.sync()?;
        write_atomic(&self.anchor_path, &json, 0o644)?;
        Ok(())
    }

    /// Checks the chain at startup; a broken chain is logged loudly and freezes anchoring.
    pub fn check_at_start(&self) -> Result<(), ApiError> {
        let v = self.verify()?;
        if !v.ok() {
            self.frozen.store(true, Ordering::Relaxed);
            tracing::error!(entry = v.broken_seq, reason = %v.reason, "the audit chain is broken; run `lifeboat audit verify`");
        }
        Ok(())
    }
}

fn anchor_message(seq: u64, hash_hex: &str) -> Vec<u8> {
    let mut m = ANCHOR_CONTEXT.to_vec();
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(hash_hex.as_bytes());
    m
}

fn hash_array(v: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if v.len() == 32 {
        out.copy_from_slice(v);
    }
    out
}
