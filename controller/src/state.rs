//! The controller's own state, kept in the store so that a controller whose machine is gone
//! can be rebuilt elsewhere from the store and the offline recovery key alone.
//!
//! Periodically (`--state-every`), the controller writes `controller/state-<ms>.age`: its
//! keys (CA, chunk-id key, signing key, the wrapped data key and the controller's age
//! identity), its settings, the admin identity, the audit anchor, and a consistent copy of
//! the catalog (`VACUUM INTO`: policies, agents with their keys and certificate serials,
//! labels, quarantine marks, locks, drills, downtime samples, plans, the audit log),
//! zstd-compressed and encrypted (age) to the recovery key only. Where the store has Object
//! Lock each state is retained [`STATE_RETENTION_MS`]; the newest [`STATES_KEPT`] are kept.
//!
//! `lifeboat-controller recover` ([`recover`]) takes the newest state it can open, writes it
//! into a new data directory, and indexes what the store gained since (packs and
//! envelopes the state's catalog does not list). The agents then reconnect with the
//! certificates they hold: same CA, same catalog rows.

use std::path::Path;

use lifeboat_core::age;

use crate::Controller;
use crate::error::ApiError;
use crate::store::objects::{Objects, StoreError};

/// Where states live in the store.
pub const STATE_PREFIX: &str = "controller/state-";
/// How long a store with Object Lock retains each state.
const STATE_RETENTION_MS: i64 = 7 * 86_400_000;
/// States kept; older ones are deleted once the store lets them go.
const STATES_KEPT: usize = 48;
/// The catalog's name inside a state.
const CATALOG: &str = "catalog.db";
/// The data directory's files a state carries (those present), besides the catalog.
const FILES: &[&str] = &[
    "controller.json",
    "ca.crt",
    "ca.key",
    "chunk.key",
    "controller.sign",
    "store-key.age",
    "controller-age.key",
    "admin.identity",
    "audit-head",
];
const MAGIC: &[u8; 8] = b"LBSTATE1";

/// Writes the controller's state into the store, encrypted to the recovery key, and drops
/// states beyond the newest [`STATES_KEPT`]. Returns the object's key. Blocking.
pub fn save(ctl: &Controller) -> Result<String, ApiError> {
    let recipient = ctl.recovery_recipient.as_deref().ok_or_else(|| {
        ApiError::FailedPrecondition(
            "this store has no recovery key (it predates encryption at rest): the controller's state is not kept in it".into(),
        )
    })?;
    let recipient: age::Recipient = recipient
        .parse()
        .map_err(|e| ApiError::internal(format!("the recovery recipient: {e}")))?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    // The anchor before the catalog: the copied chain then reaches at least the anchor.
    for name in FILES {
        match std::fs::read(ctl.data_dir.join(name)) {
            Ok(bytes) => files.push((name.to_string(), bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ApiError::internal(format!("reading {name}: {e}"))),
        }
    }
    let copy = lifeboat_core::durable::temp_path(&ctl.data_dir, "catalog");
    let _guard = lifeboat_core::durable::TempGuard::new(copy.clone());
    ctl.catalog.copy_to(&copy)?;
    let catalog = std::fs::read(&copy)
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", copy.display())))?;
    files.push((CATALOG.to_string(), catalog));
    let packed = zstd::encode_all(bundle(&files).as_slice(), 3)
        .map_err(|e| ApiError::internal(format!("compressing the state: {e}")))?;
    let sealed = age::encrypt(&packed, &[recipient])
        .map_err(|e| ApiError::internal(format!("encrypting the state: {e}")))?;
    let now = crate::now_ms();
    let key = format!("{STATE_PREFIX}{now:013}.age");
    let objects = ctl.store.objects();
    let retain = if objects.object_lock() {
        now + STATE_RETENTION_MS
    } else {
        0
    };
    objects.put(&key, &sealed, retain)?;
    let mut states = objects.list(STATE_PREFIX)?;
    states.sort_by(|a, b| b.key.cmp(&a.key));
    for old in states.iter().skip(STATES_KEPT) {
        match objects.delete(&old.key, "") {
            Ok(()) | Err(StoreError::Locked(_)) => {}
            Err(e) => tracing::warn!(state = %old.key, error = %e, "could not delete an old state"),
        }
    }
    tracing::debug!(state = %key, bytes = sealed.len(), "controller state saved in the store");
    Ok(key)
}

/// `MAGIC | (name len u16 | name | len u64 | bytes)*`
fn bundle(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (name, bytes) in files {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn unbundle(mut b: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    b = b
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a Lifeboat controller state")?;
    let mut files = Vec::new();
    let take = |n: usize, b: &mut &[u8]| -> Result<Vec<u8>, String> {
        if b.len() < n {
            return Err("the state is cut short".to_string());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    while !b.is_empty() {
        let n = u16::from_le_bytes(take(2, &mut b)?.try_into().map_err(|_| "length")?);
        let name = String::from_utf8(take(n as usize, &mut b)?).map_err(|_| "a file name")?;
        if !(FILES.contains(&name.as_str()) || name == CATALOG) {
            return Err(format!("unexpected file {name:?} in the state"));
        }
        let len = u64::from_le_bytes(take(8, &mut b)?.try_into().map_err(|_| "length")?);
        files.push((name, take(len as usize, &mut b)?));
    }
    Ok(files)
}

/// What `recover` brought back.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The state's object key and when it was written.
    pub state: String,
    pub saved_ms: i64,
    /// What the store gained since, indexed now.
    pub since: crate::rebuild::RebuildReport,
}

/// Rebuilds a controller's data directory `data_dir` (which must not hold one) from the
/// newest state in `objects` that `recovery_key` (an age identity file's text) opens, then
/// indexes the packs and envelopes written after it. Blocking.
pub fn recover(
    data_dir: &Path,
    objects: &dyn Objects,
    store: &str,
    s3: &crate::store::location::S3Options,
    recovery_key: &str,
) -> Result<Recovered, ApiError> {
    if data_dir.join("controller.json").exists() {
        return Err(ApiError::FailedPrecondition(format!(
            "{} already holds a controller: recover into an empty data directory",
            data_dir.display()
        )));
    }
    let identity = age::Identity::parse(recovery_key)
        .map_err(|e| ApiError::InvalidArgument(format!("--recovery-key: {e}")))?;
    let mut states = objects.list(STATE_PREFIX)?;
    states.sort_by(|a, b| b.key.cmp(&a.key));
    if states.is_empty() {
        return Err(ApiError::NotFound(format!(
            "{store} holds no controller state ({STATE_PREFIX}*): it was never saved there (a store made before this release, or a controller that ran less than --state-every); use rebuild-catalog on a new controller instead"
        )));
    }
    let mut why = Vec::new();
    for s in &states {
        let opened = objects
            .get(&s.key, "")
            .map_err(|e| e.to_string())
            .and_then(|sealed| age::decrypt(&sealed, &identity).map_err(|e| e.to_string()))
            .and_then(|packed| zstd::decode_all(packed.as_slice()).map_err(|e| e.to_string()))
            .and_then(|b| unbundle(&b));
        match opened {
            Ok(files) => {
                write_files(data_dir, &files)?;
                let saved_ms = s
                    .key
                    .strip_prefix(STATE_PREFIX)
                    .and_then(|k| k.strip_suffix(".age"))
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(0);
                let since = crate::rebuild::catch_up(data_dir, s3)?;
                return Ok(Recovered {
                    state: s.key.clone(),
                    saved_ms,
                    since,
                });
            }
            Err(e) => {
                tracing::warn!(state = %s.key, error = %e, "this state does not open; trying an older one");
                why.push(format!("{}: {e}", s.key));
            }
        }
    }
    Err(ApiError::FailedPrecondition(format!(
        "no controller state in {store} opens with this recovery key ({}); is it the recovery key of this store?",
        why.join("; ")
    )))
}

fn write_files(data_dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), ApiError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", data_dir.display())))?;
    crate::setup::restrict_dir(data_dir)?;
    // Settings last: a data directory with settings is a controller.
    let mut ordered: Vec<&(String, Vec<u8>)> = files.iter().collect();
    ordered.sort_by_key(|(name, _)| name == "controller.json");
    for (name, bytes) in ordered {
        let mode = if name.ends_with(".crt") || name == "controller.json" {
            0o644
        } else {
            0o600
        };
        lifeboat_core::durable::write_atomic(&data_dir.join(name), bytes, mode)?;
    }
    Ok(())
}
