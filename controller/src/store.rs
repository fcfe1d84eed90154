//! The chunk store on a local directory: packs, snapshot envelopes, and the open pack that
//! uploads are appended to.
//!
//! Invariant: a chunk id is either in the open pack (`pending`) or in the catalog's index
//! (its pack sealed and synced), never in neither once accepted. Both are checked under
//! the same lock, so "which ids are missing" never gives a wrong answer while a pack seals.
//! A snapshot is committed only after the open pack is sealed, so every chunk a visible
//! snapshot references is durable.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lifeboat_core::pack::{self, PackWriter};
use lifeboat_core::snapshot::Envelope;
use lifeboat_core::{ChunkId, ChunkKey, codec};

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::now_ms;

pub struct Store {
    root: PathBuf,
    key: ChunkKey,
    catalog: Arc<Catalog>,
    open: Mutex<OpenPack>,
    files: Mutex<HashMap<String, Arc<File>>>,
}

#[derive(Default)]
struct OpenPack {
    writer: Option<PackWriter>,
    pending: HashSet<ChunkId>,
}

/// What storing a batch of uploaded chunks did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PutSummary {
    pub stored: u64,
    pub duplicate: u64,
    pub bytes_stored: u64,
}

const MAX_OPEN_FILES: usize = 256;

impl Store {
    pub fn open(root: &Path, key: ChunkKey, catalog: Arc<Catalog>) -> Result<Store, ApiError> {
        for sub in ["packs", "snapshots", "tmp"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| ApiError::internal(format!("creating {}: {e}", d.display())))?;
        }
        // Temp files are only ever partial writes from a previous run.
        if let Ok(rd) = std::fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Store {
            root: root.to_owned(),
            key,
            catalog,
            open: Mutex::new(OpenPack::default()),
            files: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.snap"))
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, OpenPack> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids in `ids` that the store does not hold.
    pub fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ApiError> {
        let open = self.lock_open();
        let candidates: Vec<ChunkId> = ids
            .iter()
            .filter(|id| !open.pending.contains(id))
            .copied()
            .collect();
        self.catalog.unknown_chunks(&candidates)
    }

    /// Verifies uploaded blobs against their ids (decoding with the bomb-safe codec) and
    /// appends the ones the store lacks to the open pack. Every blob is verified before any
    /// is stored, so one bad chunk refuses the whole message. Blocking.
    pub fn put_batch(&self, chunks: &[(ChunkId, &[u8])]) -> Result<PutSummary, ApiError> {
        for (id, blob) in chunks {
            codec::verify(&self.key, id, blob).map_err(|e| match e {
                lifeboat_core::Error::ChunkMismatch { id } => ApiError::InvalidArgument(format!(
                    "chunk {id} does not match its content; upload refused"
                )),
                other => ApiError::from(other),
            })?;
        }
        let mut open = self.lock_open();
        let candidates: Vec<ChunkId> = chunks
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !open.pending.contains(id))
            .collect();
        let unknown: HashSet<ChunkId> = self
            .catalog
            .unknown_chunks(&candidates)?
            .into_iter()
            .collect();
        let mut stored_now = HashSet::new();
        let mut sum = PutSummary::default();
        for (id, blob) in chunks {
            if !unknown.contains(id) || !stored_now.insert(*id) {
                sum.duplicate += 1;
                continue;
            }
            if open.writer.is_none() {
                open.writer = Some(PackWriter::create(&self.root.join("tmp"))?);
            }
            let writer = open
                .writer
                .as_mut()
                .ok_or_else(|| ApiError::internal("open pack vanished"))?;
            writer.add(*id, blob)?;
            let full = writer.size() >= pack::TARGET_SIZE;
            open.pending.insert(*id);
            sum.stored += 1;
            sum.bytes_stored += blob.len() as u64;
            if full {
                self.seal_locked(&mut open)?;
            }
        }
        Ok(sum)
    }

    /// Seals the open pack (if any) so every accepted chunk is durable and indexed.
    pub fn flush(&self) -> Result<(), ApiError> {
        let mut open = self.lock_open();
        self.seal_locked(&mut open)
    }

    /// Seals the open pack only if it holds one of `ids` (a commit's tree chunks: the
    /// agent uploads them last, and a seal takes the whole pack, so once they are sealed
    /// so is every chunk accepted before them). Commits that arrive while another seals
    /// wait on the pack's lock and then find their chunks sealed: one fsync serves them
    /// all (group commit).
    pub fn flush_for(&self, ids: &[ChunkId]) -> Result<(), ApiError> {
        let mut open = self.lock_open();
        if ids.iter().any(|id| open.pending.contains(id)) {
            self.seal_locked(&mut open)?;
        }
        Ok(())
    }

    fn seal_locked(&self, open: &mut OpenPack) -> Result<(), ApiError> {
        let Some(writer) = open.writer.take() else {
            return Ok(());
        };
        if writer.is_empty() {
            writer.discard();
            return Ok(());
        }
        let sealed = writer.seal(&self.packs_dir())?;
        self.catalog.insert_pack(&sealed, now_ms())?;
        open.pending.clear();
        tracing::debug!(pack = %sealed.name, chunks = sealed.entries.len(), bytes = sealed.size, "pack sealed");
        Ok(())
    }

    /// Reads a chunk's blob (not decoded: the reader verifies). Blocking.
    pub fn read_blob(&self, id: &ChunkId) -> Result<Vec<u8>, ApiError> {
        let (pack_name, offset, length) = self
            .catalog
            .chunk_location(id)?
            .ok_or_else(|| ApiError::NotFound(format!("chunk {id} is not in the store")))?;
        let file = self.pack_file(&pack_name)?;
        Ok(pack::read_blob(&file, offset, length)?)
    }

    /// Reads and verifies a chunk's plaintext. Blocking.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, ApiError> {
        let blob = self.read_blob(id)?;
        Ok(codec::decode_verified(&self.key, id, &blob)?)
    }

    fn pack_file(&self, name: &str) -> Result<Arc<File>, ApiError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = files.get(name) {
            return Ok(f.clone());
        }
        if name.len() != 64 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ApiError::internal(format!(
                "catalog names an invalid pack {name:?}"
            )));
        }
        let path = pack::pack_path(&self.packs_dir(), name);
        let f =
            Arc::new(File::open(&path).map_err(|e| {
                ApiError::internal(format!("opening pack {}: {e}", path.display()))
            })?);
        if files.len() >= MAX_OPEN_FILES {
            files.clear();
        }
        files.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Stores a committed snapshot's envelope durably.
    pub fn write_snapshot(&self, env: &Envelope) -> Result<(), ApiError> {
        Ok(lifeboat_core::durable::write_atomic(
            &self.snapshot_path(&env.id()),
            &env.to_bytes(),
            0o644,
        )?)
    }

    /// Deletes a snapshot: its envelope first (durably), then its catalog row, so a crash
    /// in between leaves a row that a second delete removes. Its chunks stay until GC.
    pub fn delete_snapshot(&self, id: &str) -> Result<(), ApiError> {
        let path = self.snapshot_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => lifeboat_core::durable::sync_dir(&self.root.join("snapshots"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "deleting {}: {e}",
                    path.display()
                )));
            }
        }
        self.catalog.delete_snapshot(id)
    }

    pub fn read_snapshot(&self, id: &str) -> Result<Envelope, ApiError> {
        let path = self.snapshot_path(id);
        let bytes = std::fs::read(&path)
            .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?;
        Ok(Envelope::parse(&bytes)?)
    }

    /// Every pack file in the store.
    /// Where packs are written before they are sealed.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Deletes a pack file (durably) and its catalog row; its chunks must no longer be
    /// indexed there.
    pub fn delete_pack(&self, name: &str) -> Result<(), ApiError> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let path = pack::pack_path(&self.packs_dir(), name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    lifeboat_core::durable::sync_dir(dir)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "deleting {}: {e}",
                    path.display()
                )));
            }
        }
        self.catalog.delete_pack_row(name)
    }

    pub fn pack_paths(&self) -> Result<Vec<PathBuf>, ApiError> {
        let mut out = Vec::new();
        let io = |e: std::io::Error| ApiError::internal(format!("listing packs: {e}"));
        for sub in std::fs::read_dir(self.packs_dir()).map_err(io)? {
            let sub = sub.map_err(io)?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub).map_err(io)? {
                let p = f.map_err(io)?.path();
                if p.extension().is_some_and(|e| e == "pack") {
                    out.push(p);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every snapshot envelope id in the store.
    pub fn snapshot_ids(&self) -> Result<Vec<String>, ApiError> {
        let io = |e: std::io::Error| ApiError::internal(format!("listing snapshots: {e}"));
        let mut out = Vec::new();
        for f in std::fs::read_dir(self.root.join("snapshots")).map_err(io)? {
            let name = f.map_err(io)?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".snap")
                && id.len() == 64
                && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                out.push(id.to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}
