//! The tree a backup writes, streamed to disk as it is built, and the change-detection
//! cache it becomes: `STATE/cache/SOURCE.tree` holds the tree of the source's last
//! committed snapshot,
//!
//! ```text
//! "LBCACHE1" | snapshot id (64 hex) | tree (core/src/tree.rs)
//! ```
//!
//! Neither side holds a whole tree in memory: the backup serializes each entry once its
//! file is read ([`TreeSink`]) and reads the previous tree entry by entry, in the same
//! order as the walk ([`PrevTree`]), so a backup's memory does not grow with the number of
//! files in the source.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use lifeboat_core::durable::{self, TempGuard};
use lifeboat_core::snapshot::Stats;
use lifeboat_core::tree::{Entry, EntryReader, Kind, TreeWriter};
use lifeboat_core::walk;

use crate::AgentError;
use crate::state::AgentState;

const MAGIC: &[u8; 8] = b"LBCACHE1";
/// The magic and the snapshot id before the tree.
const HEADER_LEN: u64 = 72;
/// Serialized entries are written out once this many bytes are buffered.
const SPILL_BYTES: usize = 1 << 20;

/// A tree being serialized into a temp file beside the cache.
pub(super) struct TreeSink {
    path: PathBuf,
    guard: TempGuard,
    file: BufWriter<File>,
    writer: TreeWriter,
    hasher: blake3::Hasher,
    len: u64,
    counts: Stats,
}

/// A finished tree on disk: what the record names (length, keyed hash) and its counts.
pub(super) struct SerializedTree {
    path: PathBuf,
    guard: TempGuard,
    pub len: u64,
    pub hash: blake3::Hash,
    /// Files, directories, other entries and file bytes (the rest is the pipeline's).
    pub counts: Stats,
}

impl TreeSink {
    /// Starts a tree whose root directory is `root`.
    pub fn create(state: &AgentState, root: &Entry) -> Result<TreeSink, AgentError> {
        let dir = state.dir.join("cache");
        let path = durable::temp_path(&dir, "tree");
        // Owner-only, as every file of the agent's state (the tree names every path).
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AgentError::Backup(format!("creating {}: {e}", path.display())))?;
        let guard = TempGuard::new(path.clone());
        let mut file = BufWriter::with_capacity(SPILL_BYTES, file);
        // The header is written once the snapshot id is known (see `keep_as_cache`).
        file.write_all(&[0; HEADER_LEN as usize])
            .map_err(|e| AgentError::Backup(format!("writing {}: {e}", path.display())))?;
        Ok(TreeSink {
            path,
            guard,
            file,
            writer: TreeWriter::new(root),
            hasher: blake3::Hasher::new_keyed(state.chunk_key.as_bytes()),
            len: 0,
            counts: Stats::default(),
        })
    }

    pub fn push(&mut self, e: &Entry) -> Result<(), AgentError> {
        self.writer.push(e)?;
        match e.kind {
            Kind::File => {
                self.counts.files += 1;
                self.counts.bytes += e.size;
            }
            Kind::Dir => self.counts.dirs += 1,
            _ => self.counts.other += 1,
        }
        if self.writer.buffered() >= SPILL_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), AgentError> {
        let bytes = self.writer.take();
        self.hasher.update(&bytes);
        self.len += bytes.len() as u64;
        self.file
            .write_all(&bytes)
            .map_err(|e| AgentError::Backup(format!("writing {}: {e}", self.path.display())))
    }

    pub fn finish(mut self) -> Result<SerializedTree, AgentError> {
        self.spill()?;
        self.file
            .flush()
            .map_err(|e| AgentError::Backup(format!("writing {}: {e}", self.path.display())))?;
        Ok(SerializedTree {
            path: self.path,
            guard: self.guard,
            len: self.len,
            hash: self.hasher.finalize(),
            counts: self.counts,
        })
    }
}

impl SerializedTree {
    /// The tree's bytes, from the start.
    pub fn reader(&self) -> Result<impl Read + use<>, AgentError> {
        let what =
            |e: std::io::Error| AgentError::Backup(format!("reading {}: {e}", self.path.display()));
        let mut f = File::open(&self.path).map_err(what)?;
        f.seek(SeekFrom::Start(HEADER_LEN)).map_err(what)?;
        Ok(BufReader::new(f).take(self.len))
    }

    /// Makes this tree the cache of `source`, as the tree of snapshot `snapshot_id`.
    pub fn keep_as_cache(
        self,
        state: &AgentState,
        source: &str,
        snapshot_id: &str,
    ) -> Result<(), AgentError> {
        let what =
            |e: std::io::Error| AgentError::Backup(format!("writing {}: {e}", self.path.display()));
        if snapshot_id.len() != 64 {
            return Err(AgentError::Backup(format!(
                "the controller named the snapshot {snapshot_id:?}, not 64 hex digits"
            )));
        }
        let f = File::options().write(true).open(&self.path).map_err(what)?;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(snapshot_id.as_bytes());
        f.write_all_at(&header, 0).map_err(what)?;
        f.sync_all().map_err(what)?;
        durable::rename_durable(&self.path, &state.cache_path(source))?;
        self.guard.keep();
        Ok(())
    }
}

/// The previous snapshot's tree, read in step with the walk.
pub(super) struct PrevTree {
    pub snapshot_id: String,
    reader: Option<EntryReader<BufReader<File>>>,
    next: Option<Entry>,
}

impl PrevTree {
    /// The cached tree of `source`'s last snapshot, if there is one that reads.
    pub fn open(state: &AgentState, source: &str) -> Option<PrevTree> {
        let mut f = BufReader::new(File::open(state.cache_path(source)).ok()?);
        let mut header = [0u8; HEADER_LEN as usize];
        f.read_exact(&mut header).ok()?;
        if &header[..8] != MAGIC {
            return None;
        }
        let snapshot_id = String::from_utf8(header[8..].to_vec()).ok()?;
        match EntryReader::new(f) {
            Ok((_root, reader)) => Some(PrevTree {
                snapshot_id,
                reader: Some(reader),
                next: None,
            }),
            Err(e) => {
                tracing::warn!(source, error = %e, "ignoring unreadable change-detection cache");
                None
            }
        }
    }

    /// The previous snapshot's entry for `path`, where paths come in tree order; the
    /// entries before it (paths gone since) are passed over. A cache that stops reading
    /// stops matching: its files are simply read again.
    pub fn find(&mut self, path: &[u8]) -> Option<Entry> {
        loop {
            if self.next.is_none() {
                match self.reader.as_mut()?.next_entry() {
                    Ok(Some(e)) => self.next = Some(e),
                    Ok(None) => {
                        self.reader = None;
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the change-detection cache stopped reading; the rest of the source is read anew");
                        self.reader = None;
                        return None;
                    }
                }
            }
            let order = walk::tree_order(&self.next.as_ref()?.path, path);
            match order {
                Ordering::Less => self.next = None,
                Ordering::Equal => return self.next.take(),
                Ordering::Greater => return None,
            }
        }
    }
}
