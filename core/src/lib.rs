//! Lifeboat's store format and the algorithms both the agent and the controller share.
//!
//! Nothing in this crate touches the network. The pieces, in data-path order:
//!
//! * [`chunker`] cuts a byte stream into content-defined chunks (FastCDC 2020,
//!   [`chunker::MIN_SIZE`] 256 KiB / [`chunker::AVG_SIZE`] 1 MiB / [`chunker::MAX_SIZE`] 4 MiB).
//!   The boundaries are part of the store format: a change of parameters would break dedup
//!   against every existing snapshot, so they are pinned and tested with golden values.
//! * [`id`] names each chunk by a keyed BLAKE3-256 hash of its plaintext ([`ChunkId`]). The key
//!   ([`ChunkKey`]) is the fleet's secret, so an observer of the store cannot confirm whether a
//!   known file is present. Ids are 64 lowercase hex characters in text and are validated
//!   before they are ever used to build a path or a key.
//! * [`codec`] encodes a chunk as a blob: an 12-byte header (magic `LBCK`, version, flags, raw
//!   length) followed by zstd data, or by the raw bytes when compression does not pay. The
//!   decoder refuses output beyond the declared length and zstd windows beyond
//!   [`chunker::MAX_SIZE`], so a hostile blob cannot be a decompression bomb.
//! * [`pack`] appends blobs into pack files of tens of MiB, each ending in a trailer index
//!   (chunk id, offset, length), so the chunk index can be rebuilt from the packs alone. Packs
//!   are written temp → fsync → rename → fsync dir ([`durable`]).
//! * [`tree`] is a snapshot's file tree: one [`tree::Entry`] per path, serialized as a
//!   byte stream that is itself chunked and stored like file data, so unchanged parts of
//!   large trees dedup between snapshots.
//! * [`snapshot`] is the small record that names the tree, signed by the agent's own
//!   ed25519 key ([`sign`]), stored in an envelope that also carries the controller's
//!   receive time and the agent's public key.
//! * [`walk`] reads a source directory into entries (never following symlinks), and
//!   [`restore`] writes entries back under a directory handle: every path component is
//!   resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so nothing is ever
//!   written outside the restore root, and each file is verified (every chunk id, the
//!   length and the content hash over the chunk list) before it is renamed into its final place.
//! * [`pki`] makes the fleet's CA and certificates (rcgen) and fingerprints.
//!
//! # Store layout (local directory backend)
//!
//! ```text
//! STORE/
//!   packs/<2 hex>/<64 hex>.pack     pack files, named by the BLAKE3 hash of their bytes
//!   snapshots/<64 hex>.snap         snapshot envelopes (record + agent signature + receive time)
//!   tmp/                            files being written; never read
//! ```
//!
//! # Why garbage is safe
//!
//! A backup that dies half-way leaves chunks in packs that no snapshot references. They are
//! harmless: the next backup finds them already stored and reuses them, and a future GC
//! reclaims what stays unreferenced. A snapshot becomes visible only after every chunk it
//! references is durable, so no visible snapshot ever points at a missing chunk.

pub mod age;
pub mod anomaly;
pub mod backoff;
pub mod chunker;
pub mod codec;
pub mod durable;
mod error;
pub mod id;
pub mod identity;
pub mod inventory;
pub mod names;
pub mod pace;
pub mod pack;
pub mod pki;
pub mod restore;
pub mod seal;
pub mod sign;
pub mod snapshot;
pub mod sshsig;
pub mod tree;
pub mod units;
pub mod walk;

pub use error::{Error, Result, is_eio};
pub use id::{ChunkId, ChunkKey};

/// Aborts the process if `LIFEBOAT_CRASH_AT` names `point`: the crash tests' kill switch
/// (a crash exactly there, as a pulled plug would leave it). Points: the controller's
/// `gc-after-sweep`, `compact-after-new-pack`, `compact-after-relocate`, `copy-after-pack`,
/// `migration-N` (before catalog migration N commits); the agent's
/// `backup-after-commit`.
pub fn crash_point(point: &str) {
    if std::env::var("LIFEBOAT_CRASH_AT").is_ok_and(|v| v == point) {
        eprintln!("LIFEBOAT_CRASH_AT={point}: aborting here");
        std::process::abort();
    }
}
