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
//! Anyone can encrypt to the recovery key (its public half is no secret), and whoever may
//! write to the bucket may put objects beside the states, so a state is signed with the
//! controller's countersigning key, outside the encryption where `recover` reads it
//! without opening the state:
//!
//! ```text
//! "LBSTSIG1"
//! u32 len | manifest   JSON: the object key it was written under, when, how often states
//!                      are saved, the signer's public key (hex)
//! u32 len | signature  ed25519 over CONTEXT | manifest | BLAKE3(payload)
//! payload              the age file (an unsigned state, written before 2026-12-06, is
//!                      this alone)
//! ```
//!
//! `lifeboat-controller recover` ([`recover`]) takes the newest state signed by this store's
//! controller key, writes it into a new data directory, and indexes what the store gained
//! since (packs and envelopes the state's catalog does not list). The agents then reconnect
//! with the certificates they hold: same CA, same catalog rows. Which key is this store's:
//! the one the recovery key file names (`# lifeboat controller key: HEX`, as the banner
//! shows it when the store is made) or `--controller-key`; without either, the one key
//! every signed state in the store names, and a store whose states name two is refused
//! (one was planted). A state copied under a newer name (a replay, to roll the controller
//! back) names its own object in its signed manifest and is refused.

use std::collections::BTreeMap;
use std::path::Path;

use lifeboat_core::age;
use lifeboat_core::sign::{self, SigningKey};
use serde::{Deserialize, Serialize};

use crate::Controller;
use crate::error::ApiError;
use crate::setup::KIT_PREFIX;
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
    "ca-next.crt",
    "ca-next.key",
    "chunk.key",
    "controller.sign",
    "store-key.age",
    "controller-age.key",
    "admin.identity",
    "audit-head",
];
const MAGIC: &[u8; 8] = b"LBSTATE1";
/// A signed state object's first bytes.
const SIGNED_MAGIC: &[u8; 8] = b"LBSTSIG1";
/// Domain separation for the state's signature.
const SIGN_CONTEXT: &[u8] = b"lifeboat controller state v1\0";
/// The most a signed state's header (magic, manifest, signature) may take.
const HEADER_MAX: u64 = 4096;

/// What a signed state says about itself, in the clear and under the signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// The object key the state was written under: a copy under another is a replay.
    object: String,
    saved_unix_ms: i64,
    /// How often the controller saved a state (0: unknown).
    every_ms: i64,
    /// The controller's countersigning public key, hex.
    signer: String,
}

/// Writes the controller's state into the store, encrypted to the recovery key and signed
/// with the controller's key, and drops states beyond the newest [`STATES_KEPT`]. `every`
/// is how often it is called. Returns the object's key. Blocking.
pub fn save(ctl: &Controller, every: std::time::Duration) -> Result<String, ApiError> {
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
    let manifest = Manifest {
        object: key.clone(),
        saved_unix_ms: now,
        every_ms: every.as_millis() as i64,
        signer: hex::encode(ctl.signer.public_key()),
    };
    let sealed = sign_state(&ctl.signer, &manifest, &sealed);
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

/// A state's files: name, bytes.
type Files = Vec<(String, Vec<u8>)>;

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

fn signed_message(manifest: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut msg = SIGN_CONTEXT.to_vec();
    msg.extend_from_slice(manifest);
    msg.extend_from_slice(blake3::hash(payload).as_bytes());
    msg
}

/// `SIGNED_MAGIC | u32 len | manifest | u32 len | signature | payload`
fn sign_state(signer: &SigningKey, manifest: &Manifest, payload: &[u8]) -> Vec<u8> {
    let manifest = serde_json::to_vec(manifest).expect("a manifest serializes");
    let sig = signer.sign(&signed_message(&manifest, payload));
    let mut out = SIGNED_MAGIC.to_vec();
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(&manifest);
    out.extend_from_slice(&(sig.len() as u32).to_le_bytes());
    out.extend_from_slice(&sig);
    out.extend_from_slice(payload);
    out
}

/// A state object's header as read: signed (its manifest, the signature and where the
/// payload starts), or an unsigned age file.
enum Header {
    Signed {
        manifest: Manifest,
        raw: Vec<u8>,
        sig: Vec<u8>,
        payload_at: usize,
    },
    Unsigned,
}

fn parse_header(b: &[u8]) -> Result<Header, String> {
    let Some(mut rest) = b.strip_prefix(SIGNED_MAGIC.as_slice()) else {
        return if b.starts_with(b"age-encryption.org/") {
            Ok(Header::Unsigned)
        } else {
            Err("neither a signed state nor an age file".into())
        };
    };
    let mut field = |what: &str| -> Result<Vec<u8>, String> {
        let n = rest
            .get(..4)
            .map(|n| u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize)
            .ok_or(format!("the header is cut short before its {what}"))?;
        let v = rest
            .get(4..4 + n)
            .ok_or(format!("the header is cut short in its {what}"))?
            .to_vec();
        rest = &rest[4 + n..];
        Ok(v)
    };
    let raw = field("manifest")?;
    let sig = field("signature")?;
    let manifest = serde_json::from_slice(&raw).map_err(|e| format!("its manifest: {e}"))?;
    Ok(Header::Signed {
        manifest,
        raw,
        sig,
        payload_at: b.len() - rest.len(),
    })
}

/// What `recover` brought back.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The state's object key and when it was written.
    pub state: String,
    pub saved_ms: i64,
    /// How often the lost controller saved a state (0: unknown).
    pub every_ms: i64,
    /// The controller key that signed the state (hex), and whether the operator named it
    /// (`--controller-key` or the recovery key file) rather than the store's states alone.
    /// Empty for an unsigned state.
    pub signer: String,
    pub pinned: bool,
    /// Newer states not taken, each with why.
    pub refused: Vec<String>,
    /// What the store gained since, indexed now.
    pub since: crate::rebuild::RebuildReport,
}

/// The controller key a recovery key file names (`# lifeboat controller key: HEX`).
pub fn kit_controller_key(recovery_key: &str) -> Option<String> {
    recovery_key
        .lines()
        .find_map(|l| l.trim().strip_prefix(KIT_PREFIX.trim_end()))
        .map(|k| k.trim().to_ascii_lowercase())
}

fn check_key_hex(key: &str) -> Result<String, ApiError> {
    let k = key.trim().to_ascii_lowercase();
    if k.len() == 64 && hex::decode(&k).is_ok() {
        Ok(k)
    } else {
        Err(ApiError::InvalidArgument(format!(
            "controller key {key:?}: expected 64 hex digits (an ed25519 public key, as `lifeboat status` and an agent's state.json name it)"
        )))
    }
}

/// Rebuilds a controller's data directory `data_dir` (which must not hold one) from the
/// newest state in `objects` signed by this store's controller key that `recovery_key` (an
/// age identity file's text) opens, then indexes the packs and envelopes written after it.
/// `controller_key` (hex) names the store's controller key; without it, the recovery key
/// file's, and without that, the one key all signed states name. Nothing is written before
/// a state passed every check. Blocking.
pub fn recover(
    data_dir: &Path,
    objects: &dyn Objects,
    store: &str,
    s3: &crate::store::location::S3Options,
    recovery_key: &str,
    controller_key: Option<&str>,
) -> Result<Recovered, ApiError> {
    if data_dir.join("controller.json").exists() {
        return Err(ApiError::FailedPrecondition(format!(
            "{} already holds a controller: recover into an empty data directory",
            data_dir.display()
        )));
    }
    let identity = age::Identity::parse(recovery_key)
        .map_err(|e| ApiError::InvalidArgument(format!("--recovery-key: {e}")))?;
    let pinned = match controller_key {
        Some(k) => Some(check_key_hex(k)?),
        None => kit_controller_key(recovery_key)
            .map(|k| check_key_hex(&k))
            .transpose()?,
    };
    let mut states = objects.list(STATE_PREFIX)?;
    states.sort_by(|a, b| b.key.cmp(&a.key));
    if states.is_empty() {
        return Err(ApiError::NotFound(format!(
            "{store} holds no controller state ({STATE_PREFIX}*): it was never saved there (a store made before this release, or a controller that ran less than --state-every); use rebuild-catalog on a new controller instead"
        )));
    }
    // What each state claims, from its header alone.
    let headers: Vec<Result<Header, String>> = states
        .iter()
        .map(|s| {
            objects
                .get_range(&s.key, "", 0, s.size.min(HEADER_MAX) as u32)
                .map_err(|e| e.to_string())
                .and_then(|b| parse_header(&b))
        })
        .collect();
    let mut signers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (s, h) in states.iter().zip(&headers) {
        if let Ok(Header::Signed { manifest, .. }) = h {
            signers.entry(&manifest.signer).or_default().push(&s.key);
        }
    }
    let trusted = match &pinned {
        Some(k) => Some(k.clone()),
        None if signers.len() > 1 => {
            return Err(ApiError::FailedPrecondition(format!(
                "the states in {store} are signed by {} different controller keys ({}): all but one were put there by someone else. Give --controller-key with this store's: the `{}` line of the recovery kit, `lifeboat status` of the lost controller, or `controller_key` in any agent's state.json",
                signers.len(),
                signers
                    .iter()
                    .map(|(k, objs)| format!("{k}: {} states, the newest {}", objs.len(), objs[0]))
                    .collect::<Vec<_>>()
                    .join("; "),
                KIT_PREFIX.trim_end()
            )));
        }
        None => signers.keys().next().map(|k| k.to_string()),
    };
    let mut refused = Vec::new();
    for (s, header) in states.iter().zip(headers) {
        let opened = header.and_then(|h| match (h, &trusted) {
            (Header::Signed { manifest, .. }, Some(t)) if manifest.signer != *t => Err(format!(
                "signed by controller key {}, not this store's {t}",
                manifest.signer
            )),
            (Header::Unsigned, Some(_)) => Err(
                "not signed (written before states were signed, or by someone else), while this store's states are".into(),
            ),
            (h, _) => open(objects, &s.key, h, &identity),
        });
        match opened {
            Ok((files, manifest)) => {
                write_files(data_dir, &files)?;
                let saved_ms = manifest.as_ref().map_or_else(
                    || {
                        s.key
                            .strip_prefix(STATE_PREFIX)
                            .and_then(|k| k.strip_suffix(".age"))
                            .and_then(|k| k.parse().ok())
                            .unwrap_or(0)
                    },
                    |m| m.saved_unix_ms,
                );
                let since = crate::rebuild::catch_up(data_dir, s3)?;
                return Ok(Recovered {
                    state: s.key.clone(),
                    saved_ms,
                    every_ms: manifest.as_ref().map_or(0, |m| m.every_ms),
                    signer: manifest.map(|m| m.signer).unwrap_or_default(),
                    pinned: pinned.is_some(),
                    refused,
                    since,
                });
            }
            Err(e) => {
                tracing::warn!(state = %s.key, error = %e, "this state is not taken; trying an older one");
                refused.push(format!("{}: {e}", s.key));
            }
        }
    }
    Err(ApiError::FailedPrecondition(format!(
        "no controller state in {store} {} ({}); is it the recovery key of this store?",
        match &trusted {
            Some(k) => format!("signed by controller key {k} opens with this recovery key"),
            None => "opens with this recovery key".into(),
        },
        refused.join("; ")
    )))
}

/// Reads a whole state, checks its signature (if signed) and that it names the object it
/// is, and opens it with the recovery key: its files, and its manifest if signed.
fn open(
    objects: &dyn Objects,
    key: &str,
    header: Header,
    identity: &age::Identity,
) -> Result<(Files, Option<Manifest>), String> {
    let object = objects.get(key, "").map_err(|e| e.to_string())?;
    let (payload, manifest) = match header {
        Header::Unsigned => (object.as_slice(), None),
        Header::Signed {
            manifest,
            raw,
            sig,
            payload_at,
        } => {
            // The whole object must carry the header read first (the object may have
            // changed between the two reads).
            if object.get(..payload_at)
                != Some(
                    &[
                        SIGNED_MAGIC.as_slice(),
                        &(raw.len() as u32).to_le_bytes(),
                        &raw,
                        &(sig.len() as u32).to_le_bytes(),
                        &sig,
                    ]
                    .concat()[..],
                )
            {
                return Err("it changed while it was read".into());
            }
            let payload = &object[payload_at..];
            let signer = hex::decode(&manifest.signer).map_err(|e| format!("its signer: {e}"))?;
            sign::verify(
                &signer,
                &signed_message(&raw, payload),
                &sig,
                "its signature",
            )
            .map_err(|e| e.to_string())?;
            if manifest.object != key {
                return Err(format!(
                    "a copy of {} (saved {}) put under another name: a replayed state",
                    manifest.object, manifest.saved_unix_ms
                ));
            }
            (payload, Some(manifest))
        }
    };
    let files = age::decrypt(payload, identity)
        .map_err(|e| e.to_string())
        .and_then(|packed| zstd::decode_all(packed.as_slice()).map_err(|e| e.to_string()))
        .and_then(|b| unbundle(&b))?;
    if let Some(m) = &manifest {
        // The state's own controller key is the one that signed it.
        let own = files
            .iter()
            .find(|(name, _)| name == "controller.sign")
            .map(|(_, der)| SigningKey::from_pkcs8(der).map(|k| hex::encode(k.public_key())))
            .transpose()
            .map_err(|e| format!("its controller key: {e}"))?;
        if own.as_deref() != Some(m.signer.as_str()) {
            return Err("it was signed by another key than the controller key it holds".into());
        }
    }
    Ok((files, manifest))
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
