//! Snapshot records and their on-store envelope.
//!
//! The record is JSON (`serde_json` of [`Record`]; the exact bytes are what the agent
//! signs, and the snapshot id is the BLAKE3 hash of those bytes). The envelope stored at
//! `snapshots/<id>.snap` adds what the controller knows:
//!
//! ```text
//! "LBSNAP" 0x00 0x02         magic, version 2
//! u32 len | record           the signed JSON record, byte for byte
//! u32 len | signature        ed25519 by the agent
//! u32 len | public key       the agent's key as recorded at enrollment
//! u32 len | countersignature ed25519 by the controller over `countersigned_message`
//! i64 received_unix_ms       the controller's clock when it accepted the commit
//! ```
//!
//! The countersignature binds the record's hash, the agent's signature and key, and the
//! receive time: nobody without the controller's key can change which agent key vouches for
//! a record, or move a snapshot in time (retention and quarantine go by receive time).

use serde::{Deserialize, Serialize};

use crate::tree::Tree;
use crate::{ChunkId, ChunkKey, Error, Result};

const MAGIC: &[u8; 8] = b"LBSNAP\x00\x02";
/// Domain separation for the controller's countersignature.
const COUNTERSIGN_CONTEXT: &[u8] = b"lifeboat snapshot countersignature v1\0";
pub const RECORD_VERSION: u32 = 1;

/// Where a snapshot's tree lives: the chunks of its serialized stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeRef {
    pub chunks: Vec<String>,
    pub size: u64,
    /// Keyed BLAKE3 of the whole serialized tree.
    pub hash: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Bytes read from disk (unchanged files are not re-read).
    pub bytes_read: u64,
    /// Plaintext bytes of chunks the store did not have.
    pub bytes_new: u64,
    /// Bytes actually uploaded (after compression).
    pub bytes_uploaded: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
}

/// What a snapshot of a container image records about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// `sha256:<hex>`: the digest of the image's config, what a restore must reproduce.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The layers' content digests (`rootfs.diff_ids`), bottom first.
    pub layers: Vec<String>,
    pub created: String,
    pub size: u64,
}

/// What an agent signs when it commits a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u32,
    pub agent_id: String,
    pub agent_name: String,
    pub hostname: String,
    pub source: String,
    pub source_kind: String,
    pub source_path: String,
    pub job_id: String,
    pub parent: Option<String>,
    /// The agent's clock. Informational: retention uses the controller's receive time.
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    pub tree: TreeRef,
    pub stats: Stats,
    /// Image snapshots (`source_kind` "image"): the image's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    /// Volume snapshots: how the read was made consistent ("pause", "hook", or "none",
    /// which means the snapshot may be inconsistent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
}

impl Record {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and validates a record received from an agent or read from the store.
    pub fn parse(bytes: &[u8]) -> Result<Record> {
        let r: Record =
            serde_json::from_slice(bytes).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        if r.version != RECORD_VERSION {
            return Err(Error::InvalidRecord(format!(
                "unsupported record version {}",
                r.version
            )));
        }
        validate_source(&r.source)?;
        if !SourceKind::ALL.iter().any(|k| k.as_str() == r.source_kind) {
            return Err(Error::InvalidRecord(format!(
                "unknown source kind {:?}",
                r.source_kind
            )));
        }
        if SourceKind::of(&r.source).as_str() != r.source_kind {
            return Err(Error::InvalidRecord(format!(
                "source {:?} does not name a {} source",
                r.source, r.source_kind
            )));
        }
        if (SourceKind::of(&r.source) == SourceKind::Image) != r.image.is_some() {
            return Err(Error::InvalidRecord(
                "image snapshots, and only they, carry image details".into(),
            ));
        }
        if r.tree.chunks.is_empty() {
            return Err(Error::InvalidRecord("tree has no chunks".into()));
        }
        r.tree_chunks()?;
        if r.tree.hash.len() != 64 || !r.tree.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidRecord(
                "tree hash is not 64 hex characters".into(),
            ));
        }
        Ok(r)
    }

    /// The one tree reader, shared by the controller (chunks from its store) and the agent
    /// (chunks from the controller): joins the contents of the record's tree chunks, in
    /// the record's order and each already verified against its id, checks the whole
    /// against the record's size and keyed hash, and parses it.
    pub fn read_tree<B: AsRef<[u8]>>(
        &self,
        key: &ChunkKey,
        chunks: impl IntoIterator<Item = B>,
    ) -> Result<Tree> {
        let mut bytes = Vec::with_capacity(self.tree.size as usize);
        for c in chunks {
            bytes.extend_from_slice(c.as_ref());
            if bytes.len() as u64 > self.tree.size {
                return Err(Error::TreeMismatch);
            }
        }
        self.check_tree(
            bytes.len() as u64,
            &blake3::keyed_hash(key.as_bytes(), &bytes),
        )?;
        Tree::parse(&bytes)
    }

    /// Checks a serialized tree's length and keyed hash (`blake3::keyed_hash` under the
    /// chunk-id key) against the record's, for a reader that streamed it elsewhere.
    pub fn check_tree(&self, len: u64, hash: &blake3::Hash) -> Result<()> {
        if len != self.tree.size || hash.to_hex().as_str() != self.tree.hash {
            return Err(Error::TreeMismatch);
        }
        Ok(())
    }

    pub fn tree_chunks(&self) -> Result<Vec<ChunkId>> {
        self.tree
            .chunks
            .iter()
            .map(|c| ChunkId::parse_hex(c))
            .collect()
    }
}

/// What a snapshot's source is, from its name: `image:REF`, `volume:NAME`, or a host path
/// source's bare name. A record's `source_kind` is this kind's `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    Path,
    Image,
    Volume,
}

impl SourceKind {
    pub const ALL: [SourceKind; 3] = [SourceKind::Path, SourceKind::Image, SourceKind::Volume];

    /// The kind of the source named `source`.
    pub fn of(source: &str) -> SourceKind {
        if source.starts_with("image:") {
            SourceKind::Image
        } else if source.starts_with("volume:") {
            SourceKind::Volume
        } else {
            SourceKind::Path
        }
    }

    /// The stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Path => "path",
            SourceKind::Image => "image",
            SourceKind::Volume => "volume",
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Snapshot id: BLAKE3 of the record bytes, 64 hex.
pub fn snapshot_id(record: &[u8]) -> String {
    blake3::hash(record).to_hex().to_string()
}

/// Validates a user-chosen name (source, agent): 1..=64 of `[A-Za-z0-9._-]`, not starting
/// with `.` or `-`. Such names are safe in paths, URLs and shell lines.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRecord(format!(
            "{what} name {name:?} is invalid: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        )))
    }
}

/// Validates a source name: a host path's name (see [`validate_name`]), `image:REF` (a
/// tag such as `registry.example/app:1.4`, or an image id) or `volume:NAME` (a Docker
/// volume name).
pub fn validate_source(source: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidRecord(format!(
            "source {source:?} is invalid: {why}"
        )))
    };
    if let Some(r) = source.strip_prefix("image:") {
        let ok = !r.is_empty()
            && r.len() <= 255
            && !r.starts_with(['.', '-', '/', ':'])
            && r.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
            });
        if !ok {
            return bad("an image reference is a tag (repo/name:tag) or an image id");
        }
        Ok(())
    } else if let Some(v) = source.strip_prefix("volume:") {
        let ok = !v.is_empty()
            && v.len() <= 255
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return bad("Docker volume names use letters, digits, '.', '_' and '-'");
        }
        Ok(())
    } else {
        validate_name("source", source)
    }
}

/// A committed snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub record: Vec<u8>,
    pub signature: Vec<u8>,
    pub public_key: Vec<u8>,
    /// The controller's signature over [`Envelope::countersigned_message`].
    pub countersignature: Vec<u8>,
    pub received_unix_ms: i64,
}

impl Envelope {
    /// Builds the envelope the controller stores: `key` countersigns the agent's record.
    pub fn countersign(
        record: Vec<u8>,
        signature: Vec<u8>,
        public_key: Vec<u8>,
        received_unix_ms: i64,
        key: &crate::sign::SigningKey,
    ) -> Envelope {
        let mut env = Envelope {
            record,
            signature,
            public_key,
            countersignature: Vec::new(),
            received_unix_ms,
        };
        env.countersignature = key.sign(&env.countersigned_message());
        env
    }

    /// What the controller signs: context, BLAKE3 of the record, the agent's signature and
    /// public key, and the receive time.
    pub fn countersigned_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(COUNTERSIGN_CONTEXT.len() + 32 + 8 + 96 + 8);
        m.extend_from_slice(COUNTERSIGN_CONTEXT);
        m.extend_from_slice(blake3::hash(&self.record).as_bytes());
        for part in [&self.signature, &self.public_key] {
            m.extend_from_slice(&(part.len() as u32).to_le_bytes());
            m.extend_from_slice(part);
        }
        m.extend_from_slice(&self.received_unix_ms.to_le_bytes());
        m
    }

    pub fn id(&self) -> String {
        snapshot_id(&self.record)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for part in [
            &self.record,
            &self.signature,
            &self.public_key,
            &self.countersignature,
        ] {
            b.extend_from_slice(&(part.len() as u32).to_le_bytes());
            b.extend_from_slice(part);
        }
        b.extend_from_slice(&self.received_unix_ms.to_le_bytes());
        b
    }

    pub fn parse(bytes: &[u8]) -> Result<Envelope> {
        let bad = |why: &str| Error::InvalidRecord(format!("snapshot envelope: {why}"));
        if bytes.len() < MAGIC.len() || bytes[..6] != MAGIC[..6] {
            return Err(bad("bad magic"));
        }
        if bytes[..MAGIC.len()] != MAGIC[..] {
            return Err(bad(&format!(
                "format version {} is not supported (this build reads version {})",
                bytes[7], MAGIC[7]
            )));
        }
        let mut rest = &bytes[MAGIC.len()..];
        let mut part = || -> Result<Vec<u8>> {
            if rest.len() < 4 {
                return Err(bad("truncated"));
            }
            let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + n {
                return Err(bad("truncated"));
            }
            let v = rest[4..4 + n].to_vec();
            rest = &rest[4 + n..];
            Ok(v)
        };
        let (record, signature, public_key, countersignature) =
            (part()?, part()?, part()?, part()?);
        let tail: [u8; 8] = rest.try_into().map_err(|_| bad("bad trailer length"))?;
        Ok(Envelope {
            record,
            signature,
            public_key,
            countersignature,
            received_unix_ms: i64::from_le_bytes(tail),
        })
    }

    /// Verifies both signatures and parses the record: the agent's with `agent_key` (the
    /// key recorded at enrollment; it must be the one in the envelope) and the controller's
    /// countersignature with `controller_key`. The error names which check failed.
    pub fn verify(&self, agent_key: &[u8], controller_key: &[u8]) -> Result<Record> {
        if agent_key != self.public_key.as_slice() {
            return Err(Error::BadSignature(
                "the snapshot names a different agent key than the one recorded at enrollment"
                    .into(),
            ));
        }
        crate::sign::verify_record(agent_key, &self.record, &self.signature)?;
        crate::sign::verify(
            controller_key,
            &self.countersigned_message(),
            &self.countersignature,
            "the controller's countersignature (over the record, the agent signature and the receive time)",
        )?;
        Record::parse(&self.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            version: 1,
            agent_id: "a1".into(),
            agent_name: "web-1".into(),
            hostname: "web-1.example".into(),
            source: "data".into(),
            source_kind: "path".into(),
            source_path: "/srv/data".into(),
            job_id: "j1".into(),
            parent: None,
            started_unix_ms: 1,
            finished_unix_ms: 2,
            tree: TreeRef {
                chunks: vec!["ab".repeat(32)],
                size: 10,
                hash: "cd".repeat(32),
            },
            stats: Stats::default(),
            image: None,
            consistency: None,
        }
    }

    #[test]
    fn envelope_round_trip_and_signature() {
        let key = crate::sign::SigningKey::generate().expect("key");
        let ctl = crate::sign::SigningKey::generate().expect("controller key");
        let bytes = record().to_bytes();
        let env = Envelope::countersign(
            bytes.clone(),
            key.sign_record(&bytes),
            key.public_key(),
            1234,
            &ctl,
        );
        let (agent_pk, ctl_pk) = (key.public_key(), ctl.public_key());
        let parsed = Envelope::parse(&env.to_bytes()).expect("parse");
        assert_eq!(parsed, env);
        assert_eq!(parsed.verify(&agent_pk, &ctl_pk).expect("verify"), record());
        let mut forged = parsed.clone();
        forged.record = serde_json::to_vec(&Record {
            source: "other".into(),
            ..record()
        })
        .expect("json");
        assert!(matches!(
            forged.verify(&agent_pk, &ctl_pk),
            Err(Error::BadSignature(_))
        ));
        // Moving the snapshot in time breaks the countersignature, and only it.
        let mut moved = parsed.clone();
        moved.received_unix_ms += 1;
        let err = moved.verify(&agent_pk, &ctl_pk).expect_err("moved in time");
        assert!(err.to_string().contains("countersignature"), "{err}");
        // Another key cannot vouch for the record.
        let other = crate::sign::SigningKey::generate().expect("other");
        assert!(parsed.verify(&other.public_key(), &ctl_pk).is_err());
        assert!(parsed.verify(&agent_pk, &other.public_key()).is_err());
    }

    #[test]
    fn refuses_invalid_records() {
        let mut r = record();
        r.tree.chunks = vec!["../../etc".into()];
        assert!(Record::parse(&r.to_bytes()).is_err());
        let mut r = record();
        r.source = "../x".into();
        assert!(Record::parse(&r.to_bytes()).is_err());
        assert!(Record::parse(br#"{"version":1,"extra":true}"#).is_err());
        for ok in [
            "data",
            "image:app:1.4",
            "image:reg.example:5000/team/app@sha256:ab",
            "volume:pgdata",
        ] {
            validate_source(ok).expect(ok);
        }
        for bad in [
            "image:",
            "image:../x",
            "volume:-x",
            "volume:a/b",
            "volume:",
            "../x",
            "image:a b",
        ] {
            assert!(validate_source(bad).is_err(), "{bad}");
        }
        let mut r = record();
        r.source_kind = "image".into();
        assert!(
            Record::parse(&r.to_bytes()).is_err(),
            "an image record needs image details"
        );
    }
}
