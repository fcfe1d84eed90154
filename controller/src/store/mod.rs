//! The chunk store: packs, snapshot envelopes, and the open pack that uploads are appended
//! to, over an object store ([`objects::Objects`]: a local directory or an S3 bucket).
//!
//! Invariant: a chunk id is in the open pack (`pending`), in a pack being sealed
//! (`sealing`) or in the catalog's index (its pack sealed and synced), never in none once
//! accepted: a sealing pack's ids leave `sealing` only after the catalog indexed them (or,
//! if the seal failed, so that they are asked for again). "Which ids are missing" is
//! answered under the lock that guards the first two, so it is never wrong while a pack
//! seals. A seal (fsync, store the object, index) runs outside that lock: uploads go on
//! into the next pack meanwhile. A snapshot is committed only after the packs holding its chunks are
//! sealed, so every chunk a visible snapshot references is durable.
//!
//! Encryption at rest: a store created with a data key (every store since 2026-12) seals
//! each blob before it enters a pack and each envelope before it is written
//! ([`lifeboat_core::seal`]), and opens them on the way out. Everything above the store
//! (commits, restores, scrub's verdicts) sees plaintext blobs. A store made before has no
//! data key and stays plaintext.
//!
//! Object Lock (an S3 bucket created with it): every pack is written retained for a day
//! (time for the backup that wrote it to commit), every envelope retained until its
//! snapshot's lock. A commit, and every extension of a lock, first extends the retention
//! of each pack the snapshot needs to at least its lock ([`Store::retain`]), confirmed by
//! the store. So a pack lives as long as the last locked snapshot that needs it, and
//! neither GC nor anyone else can delete it earlier: the catalog records each object's
//! version and retention, and reads name the version.
//!
//! Copy stores (`copy.rs` fills them): a chunk or envelope the primary cannot produce is
//! read from a copy that the catalog records as holding it.
//!
//! One file past 600 lines because it is one lock's worth of state: the open pack, the seals
//! under way and the reads that must agree with both. Object backends live beside it.

pub mod location;
pub mod objects;
pub mod s3;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use lifeboat_core::pack::{self, PackWriter};
use lifeboat_core::seal::DataKey;
use lifeboat_core::snapshot::Envelope;
use lifeboat_core::{ChunkId, ChunkKey, codec};

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::now_ms;
use location::StoreLocation;
use objects::{LocalDir, Objects, StoreError, Stored, pack_key, snapshot_key};

/// How long a new pack is retained on a store with Object Lock before a commit extends it:
/// long enough for the backup that wrote it to commit.
const NEW_PACK_RETENTION_MS: i64 = 86_400_000;
/// A pack a snapshot needs retained longer is extended this far past the snapshot's lock,
/// so a pack that daily backups keep referencing is extended about weekly, not at every
/// commit.
const RETENTION_SLACK_MS: i64 = 7 * 86_400_000;

/// A second store that copies of snapshots are kept in (`copy.rs` fills it): read when the
/// primary cannot produce what it should.
pub struct CopyStore {
    pub name: String,
    pub objects: Arc<dyn Objects>,
}

/// After a read the primary failed and a copy served, restores stay away from the primary
/// (no presigned URLs to it) this long.
const PRIMARY_FAILED_FOR_MS: i64 = 10 * 60_000;

pub struct Store {
    objects: Arc<dyn Objects>,
    copies: Vec<CopyStore>,
    /// When a copy last served what the primary could not (0: never).
    primary_failed_ms: std::sync::atomic::AtomicI64,
    key: ChunkKey,
    /// `None` for a store created before encryption at rest.
    data_key: Option<Arc<DataKey>>,
    catalog: Arc<Catalog>,
    packs: Arc<Packs>,
    /// Full packs for the sealer thread; dropping the store closes the queue and waits for
    /// the thread (so the catalog it shares closes cleanly at shutdown).
    to_seal: Option<std::sync::mpsc::Sender<(u64, PackWriter)>>,
    sealer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        drop(self.to_seal.take());
        if let Some(t) = self.sealer.take() {
            let _ = t.join();
        }
    }
}

/// The open pack and the seals under way, shared with the sealer thread.
struct Packs {
    open: Mutex<OpenPack>,
    /// Signalled whenever a seal ends.
    sealed: Condvar,
    /// The packs this process sealed, by name, with the monotonic time of the seal: GC's
    /// lease must not trust the wall clock alone (`Store::packs_sealed_within`).
    recent: Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// Seals handed to the sealer thread and not finished: an upload that fills a pack while
/// this many are queued waits (the disk sets the pace, and dirty pages stay bounded).
const MAX_SEALING: usize = 4;

#[derive(Default)]
struct OpenPack {
    writer: Option<PackWriter>,
    /// The ids in `writer`.
    pending: HashSet<ChunkId>,
    /// Packs being sealed, by sequence number, with their ids.
    sealing: Vec<(u64, HashSet<ChunkId>)>,
    next_seal: u64,
    /// The last seal that failed: when, and why (its chunks were forgotten, so a commit
    /// that needed them can say what happened to them).
    last_failure: Option<SealFailure>,
}

#[derive(Clone)]
struct SealFailure {
    at_ms: i64,
    message: String,
    disk_full: bool,
}

impl Packs {
    fn lock(&self) -> MutexGuard<'_, OpenPack> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, open: MutexGuard<'a, OpenPack>) -> MutexGuard<'a, OpenPack> {
        self.sealed.wait(open).unwrap_or_else(|p| p.into_inner())
    }
}

impl OpenPack {
    /// In the open pack or in one being sealed.
    fn holds(&self, id: &ChunkId) -> bool {
        self.pending.contains(id) || self.sealing.iter().any(|(_, ids)| ids.contains(id))
    }
}

/// What storing a batch of uploaded chunks did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PutSummary {
    pub stored: u64,
    pub duplicate: u64,
    pub bytes_stored: u64,
}

/// Where a restore job reads its chunks from the object store itself (see
/// [`Store::locate`]).
#[derive(Debug, Default)]
pub struct Located {
    /// Presigned GETs, one per pack.
    pub urls: Vec<String>,
    pub chunks: Vec<LocatedChunk>,
}

#[derive(Debug)]
pub struct LocatedChunk {
    pub id: ChunkId,
    /// Index into [`Located::urls`].
    pub url: u32,
    pub offset: u64,
    pub length: u32,
    /// The chunk's own key (an encrypted store).
    pub key: Option<lifeboat_core::seal::BlobKey>,
    /// Why the store cannot produce it (then the rest is empty).
    pub unavailable: String,
}

/// A pack's bytes as a local file: the object itself for a local store, a copy in the
/// staging directory (removed when dropped) otherwise.
pub struct PackFile {
    pub path: PathBuf,
    copy: Option<lifeboat_core::durable::TempGuard>,
}

impl PackFile {
    /// Whether this is a copy (so the original is elsewhere).
    pub fn is_copy(&self) -> bool {
        self.copy.is_some()
    }
}

/// Opens the object store at `location`; `staging` is where an S3 store's packs are
/// written before upload (in the controller's data directory).
pub fn open_objects(
    location: &StoreLocation,
    staging: &std::path::Path,
) -> Result<Arc<dyn Objects>, ApiError> {
    Ok(match location {
        StoreLocation::Local(root) => Arc::new(LocalDir::open(root)?),
        StoreLocation::S3(loc) => Arc::new(s3::S3Objects::open(loc, staging)?),
    })
}

impl Store {
    pub fn open(
        objects: Arc<dyn Objects>,
        key: ChunkKey,
        data_key: Option<DataKey>,
        catalog: Arc<Catalog>,
    ) -> Result<Store, ApiError> {
        // Staged files are only ever partial writes or unconfirmed uploads of a previous
        // run (never indexed): their chunks are uploaded again. An S3 store's sealed packs
        // wait in `SEAL_DIR/<2 hex>/`, all of them stale now.
        let seal_dir = objects.seal_dir();
        for e in std::fs::read_dir(objects.staging())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if !objects.is_local() {
            let _ = std::fs::remove_dir_all(&seal_dir);
        }
        for d in [objects.staging(), seal_dir.as_path()] {
            std::fs::create_dir_all(d)
                .map_err(|e| ApiError::internal(format!("creating {}: {e}", d.display())))?;
        }
        let packs = Arc::new(Packs {
            open: Mutex::new(OpenPack::default()),
            sealed: Condvar::new(),
            recent: Mutex::new(Default::default()),
        });
        let (to_seal, queue) = std::sync::mpsc::channel::<(u64, PackWriter)>();
        let (shared, index, store) = (packs.clone(), catalog.clone(), objects.clone());
        let sealer = std::thread::Builder::new()
            .name("pack-sealer".into())
            .spawn(move || {
                for (seq, writer) in queue {
                    let res = seal_and_store(store.as_ref(), writer).and_then(|(sealed, stored)| {
                        index.insert_pack(&sealed, &stored, now_ms())?;
                        shared
                            .recent
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(sealed.name.clone(), std::time::Instant::now());
                        Ok(sealed)
                    });
                    let mut failure = None;
                    match res {
                        Ok(sealed) => tracing::debug!(pack = %sealed.name, chunks = sealed.entries.len(), bytes = sealed.size, "pack sealed"),
                        // Its chunks are missing again: backups that uploaded them fail
                        // their commit's completeness check and send them again next time.
                        Err(e) => {
                            tracing::error!(error = %e, "sealing a pack failed; its chunks will be uploaded again");
                            failure = Some(SealFailure {
                                at_ms: now_ms(),
                                disk_full: matches!(e, ApiError::ResourceExhausted(_)),
                                message: e.to_string(),
                            });
                        }
                    }
                    let mut open = shared.lock();
                    if failure.is_some() {
                        open.last_failure = failure;
                    }
                    open.sealing.retain(|(s, _)| *s != seq);
                    shared.sealed.notify_all();
                }
            })
            .map_err(|e| ApiError::internal(format!("starting the pack sealer: {e}")))?;
        Ok(Store {
            objects,
            copies: Vec::new(),
            primary_failed_ms: Default::default(),
            key,
            data_key: data_key.map(Arc::new),
            catalog,
            packs,
            to_seal: Some(to_seal),
            sealer: Some(sealer),
        })
    }

    /// Where the store is, for logs and `lifeboat status` (never a credential).
    pub fn describe(&self) -> String {
        self.objects.describe()
    }

    pub fn is_local(&self) -> bool {
        self.objects.is_local()
    }

    pub fn is_encrypted(&self) -> bool {
        self.data_key.is_some()
    }

    /// Adds a copy store (before the controller serves).
    pub fn add_copy(&mut self, name: &str, objects: Arc<dyn Objects>) {
        self.copies.push(CopyStore {
            name: name.to_string(),
            objects,
        });
    }

    pub fn copies(&self) -> &[CopyStore] {
        &self.copies
    }

    /// A copy served what the primary could not: the primary is failing.
    fn primary_failed(&self) {
        self.primary_failed_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether restoring agents may read the primary store directly now: it is object
    /// storage, and no read from it failed lately where a copy had to step in.
    pub fn direct_reads(&self) -> bool {
        let failed = self
            .primary_failed_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        !self.objects.is_local() && (failed == 0 || now_ms() - failed > PRIMARY_FAILED_FOR_MS)
    }

    /// Chunk `id`'s stored blob from the first copy store that has it, opened.
    fn read_blob_from_copies(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, ApiError> {
        for copy in &self.copies {
            let Some(place) = self.catalog.copy_chunk_location(&copy.name, id)? else {
                continue;
            };
            match self.fetch_copy_blob(copy, &place, id) {
                Ok(blob) => return Ok(Some(blob)),
                Err(e) => {
                    tracing::warn!(copy = %copy.name, chunk = %id, error = %e, "the copy could not produce a chunk either")
                }
            }
        }
        Ok(None)
    }

    /// Chunk `id`'s blob at `place` in copy store `copy`, opened.
    fn fetch_copy_blob(
        &self,
        copy: &CopyStore,
        place: &crate::catalog::ChunkPlace,
        id: &ChunkId,
    ) -> Result<Vec<u8>, ApiError> {
        let stored = copy.objects.get_range(
            &pack_key(&place.pack),
            &place.version,
            place.offset,
            place.length,
        )?;
        Ok(self.open_blob(id, stored)?)
    }

    /// Chunk `id` from copy store `copy` alone, checked against its id: what the copy
    /// holds, whatever the primary does. Blocking.
    pub fn read_copy_chunk(&self, copy: &CopyStore, id: &ChunkId) -> Result<Vec<u8>, ApiError> {
        let place = self
            .catalog
            .copy_chunk_location(&copy.name, id)?
            .ok_or_else(|| {
                ApiError::NotFound(format!("chunk {id} is not in copy store {}", copy.name))
            })?;
        let blob = self.fetch_copy_blob(copy, &place, id)?;
        Ok(codec::decode_verified(&self.key, id, &blob)?)
    }

    /// Snapshot `id`'s envelope from copy store `copy` alone. Blocking.
    pub fn read_copy_envelope(&self, copy: &CopyStore, id: &str) -> Result<Envelope, ApiError> {
        let version = self.catalog.copy_of(&copy.name, id)?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "snapshot {id} has no copy in copy store {}",
                copy.name
            ))
        })?;
        let stored = copy.objects.get(&snapshot_key(id), &version)?;
        self.open_envelope(id, stored)
    }

    /// The object store itself (the controller's state lives beside the packs).
    pub(crate) fn objects(&self) -> &dyn Objects {
        self.objects.as_ref()
    }

    /// Whether the object store retains what it holds against everyone (Object Lock).
    pub fn object_lock(&self) -> bool {
        self.objects.object_lock()
    }

    /// Makes the store retain, until at least `until_ms`, every pack holding one of
    /// `chunks` (extended [`RETENTION_SLACK_MS`] further when it must be extended at all),
    /// and snapshot `envelope`'s envelope (`(id, version)`). Each extension is confirmed by
    /// the store and recorded. Nothing to do without Object Lock. Blocking.
    pub fn retain(
        &self,
        envelope: Option<(&str, &str)>,
        chunks: &[ChunkId],
        until_ms: i64,
    ) -> Result<(), ApiError> {
        if !self.objects.object_lock() || until_ms <= 0 {
            return Ok(());
        }
        let mut packs = self.catalog.packs_holding(chunks)?;
        packs.retain(|p| p.retained_until_ms < until_ms);
        for p in &packs {
            let held = self.objects.retain(
                &pack_key(&p.name),
                &p.version,
                until_ms + RETENTION_SLACK_MS,
            )?;
            self.catalog.set_pack_retained(&p.name, held)?;
        }
        if !packs.is_empty() {
            tracing::debug!(packs = packs.len(), until = %crate::when(until_ms), "pack retention extended");
        }
        if let Some((id, version)) = envelope {
            self.objects.retain(&snapshot_key(id), version, until_ms)?;
        }
        Ok(())
    }

    /// For `rebuild-catalog`'s salvage of a damaged encrypted pack.
    pub(crate) fn data_key(&self) -> Option<&DataKey> {
        self.data_key.as_deref()
    }

    /// The blob as stored: sealed under the chunk's key in an encrypted store, as it is
    /// in a plaintext one.
    fn seal_blob<'a>(
        &self,
        id: &ChunkId,
        blob: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, ApiError> {
        match &self.data_key {
            Some(k) => Ok(k.seal_chunk(id, blob)?.into()),
            None => Ok(blob.into()),
        }
    }

    /// A stored blob, opened (the codec blob the agents and the verifier read); a blob
    /// that does not open is corrupt.
    pub fn open_blob(&self, id: &ChunkId, stored: Vec<u8>) -> lifeboat_core::Result<Vec<u8>> {
        match &self.data_key {
            Some(k) => k.open_chunk_vec(id, stored),
            None => Ok(stored),
        }
    }

    /// The ids in `ids` that `agent_id` must upload: those the store does not hold, and
    /// those only other agents do. Every id costs the same lookups and the answer is built
    /// the same way whatever it is, so neither the answer nor its time tells the agent what
    /// others hold (B14).
    pub fn missing_for_agent(
        &self,
        agent_id: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, ApiError> {
        let open = self.packs.lock();
        let flags = self.catalog.known_and_owned(agent_id, ids)?;
        Ok(ids
            .iter()
            .zip(flags)
            .filter(|(id, (known, owned))| !(*owned && (*known || open.holds(id))))
            .map(|(id, _)| *id)
            .collect())
    }

    /// The ids in `ids` that the store does not hold.
    pub fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ApiError> {
        let open = self.packs.lock();
        let candidates: Vec<ChunkId> = ids.iter().filter(|id| !open.holds(id)).copied().collect();
        Ok(self.catalog.unknown_chunks(&candidates)?)
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
        // Sealed before the pack's lock is taken, so concurrent uploads encrypt in parallel
        // (a rare duplicate is sealed for nothing).
        let stored = chunks
            .iter()
            .map(|(id, blob)| self.seal_blob(id, blob))
            .collect::<Result<Vec<_>, _>>()?;
        let mut open = self.packs.lock();
        let candidates: Vec<ChunkId> = chunks
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !open.holds(id))
            .collect();
        let unknown: HashSet<ChunkId> = self
            .catalog
            .unknown_chunks(&candidates)?
            .into_iter()
            .collect();
        let mut stored_now = HashSet::new();
        let mut sum = PutSummary::default();
        for ((id, blob), stored) in chunks.iter().zip(&stored) {
            if !unknown.contains(id) || !stored_now.insert(*id) {
                sum.duplicate += 1;
                continue;
            }
            if open.writer.is_none() {
                open.writer = Some(PackWriter::create(self.objects.staging())?);
            }
            let writer = open
                .writer
                .as_mut()
                .ok_or_else(|| ApiError::internal("open pack vanished"))?;
            if let Err(e) = writer.add(*id, stored) {
                // The pack's offsets can no longer be trusted (see PackWriter): drop it
                // and forget its chunks. They were never indexed, so no snapshot counts
                // on them; backups that uploaded them find them missing at commit.
                if let Some(broken) = open.writer.take() {
                    broken.discard();
                }
                let lost = std::mem::take(&mut open.pending);
                tracing::error!(error = %e, chunks = lost.len(), "writing the open pack failed; it was discarded");
                // Other uploads' chunks went with it: a commit that misses them says why.
                let e = ApiError::from(e);
                open.last_failure = Some(SealFailure {
                    at_ms: now_ms(),
                    disk_full: matches!(e, ApiError::ResourceExhausted(_)),
                    message: e.to_string(),
                });
                return Err(e);
            }
            let full = writer.size() >= pack::TARGET_SIZE;
            open.pending.insert(*id);
            sum.stored += 1;
            sum.bytes_stored += blob.len() as u64;
            if full {
                open = self.seal(open)?;
            }
        }
        Ok(sum)
    }

    /// Seals the open pack (if any) and waits for every seal under way, so every accepted
    /// chunk is durable and indexed.
    pub fn flush(&self) -> Result<(), ApiError> {
        let mut open = self.seal(self.packs.lock())?;
        while !open.sealing.is_empty() {
            open = self.packs.wait(open);
        }
        Ok(())
    }

    /// Makes `ids` durable: seals the open pack if it holds one of them (a commit's tree
    /// chunks: the agent uploads them last, and a seal takes the whole pack, so once they
    /// are sealed so is every chunk accepted before them), and waits for the seals under
    /// way that hold one. Commits that arrive while a pack seals find their chunks in it
    /// and wait for the same seal: one fsync serves them all (group commit).
    pub fn flush_for(&self, ids: &[ChunkId]) -> Result<(), ApiError> {
        let mut open = self.packs.lock();
        if ids.iter().any(|id| open.pending.contains(id)) {
            open = self.seal(open)?;
        }
        while open
            .sealing
            .iter()
            .any(|(_, held)| ids.iter().any(|id| held.contains(id)))
        {
            open = self.packs.wait(open);
        }
        Ok(())
    }

    /// Why chunks accepted since `since_ms` may be missing: the last failed seal (or
    /// discarded open pack), if it ended after then.
    pub fn seal_failure_since(&self, since_ms: i64) -> Option<ApiError> {
        let f = self.packs.lock().last_failure.clone()?;
        (f.at_ms >= since_ms).then(|| {
            let msg = format!(
                "the snapshot references chunks the store does not have, and a pack could not be stored during this backup: {}",
                f.message
            );
            if f.disk_full {
                ApiError::ResourceExhausted(msg)
            } else {
                ApiError::Unavailable(msg)
            }
        })
    }

    /// Hands the open pack, if it holds anything, to the sealer thread (fsync, store the
    /// object, index), first waiting while [`MAX_SEALING`] seals are queued. Its ids stay
    /// "held" until the catalog has them.
    fn seal<'a>(
        &'a self,
        mut open: MutexGuard<'a, OpenPack>,
    ) -> Result<MutexGuard<'a, OpenPack>, ApiError> {
        if open.writer.as_ref().is_none_or(PackWriter::is_empty) {
            if let Some(empty) = open.writer.take() {
                empty.discard();
            }
            return Ok(open);
        }
        while open.sealing.len() >= MAX_SEALING {
            open = self.packs.wait(open);
        }
        let Some(writer) = open.writer.take() else {
            return Ok(open); // another thread sealed it while this one waited
        };
        let seq = open.next_seal;
        open.next_seal += 1;
        let ids = std::mem::take(&mut open.pending);
        open.sealing.push((seq, ids));
        let sent = self
            .to_seal
            .as_ref()
            .is_some_and(|q| q.send((seq, writer)).is_ok());
        if !sent {
            open.sealing.retain(|(s, _)| *s != seq);
            return Err(ApiError::internal("the pack sealer thread ended"));
        }
        Ok(open)
    }

    /// Reads a chunk's blob (not decoded: the reader verifies). Blocking.
    pub fn read_blob(&self, id: &ChunkId) -> Result<Vec<u8>, ApiError> {
        self.try_read_blob(id)?.map_err(ApiError::NotFound)
    }

    /// [`Store::read_blob`] that tells apart a chunk the store cannot produce (`Ok(Err)`:
    /// not indexed, its pack gone or cut short, which fails only what needs that chunk)
    /// from a failure of the store itself (`Err`: the catalog, or an object store that does
    /// not answer). Blocking.
    pub fn try_read_blob(&self, id: &ChunkId) -> Result<Result<Vec<u8>, String>, ApiError> {
        let primary = self.try_read_primary_blob(id);
        if matches!(primary, Ok(Ok(_))) || self.copies.is_empty() {
            return primary;
        }
        match self.read_blob_from_copies(id)? {
            Some(blob) => {
                self.primary_failed();
                Ok(Ok(blob))
            }
            None => primary,
        }
    }

    fn try_read_primary_blob(&self, id: &ChunkId) -> Result<Result<Vec<u8>, String>, ApiError> {
        let Some(place) = self.catalog.chunk_location(id)? else {
            return Ok(Err(format!("chunk {id} is not in the store")));
        };
        let pack_name = &place.pack;
        if !objects::is_hex64(pack_name) {
            return Err(ApiError::internal(format!(
                "catalog names an invalid pack {pack_name:?}"
            )));
        }
        match self.objects.get_range(
            &pack_key(pack_name),
            &place.version,
            place.offset,
            place.length,
        ) {
            Ok(stored) => Ok(self
                .open_blob(id, stored)
                .map_err(|e| format!("chunk {id} in pack {pack_name}: {e}"))),
            Err(e @ (StoreError::Unavailable(_) | StoreError::Refused(_))) => Err(e.into()),
            Err(e) => Ok(Err(format!("chunk {id} in pack {pack_name}: {e}"))),
        }
    }

    /// Where `ids` are, for a reader with no credentials of its own: presigned GETs of
    /// their packs, valid for `ttl`, and each chunk's own key (nothing that opens any other
    /// chunk, even in the same pack). `None` for a local store. Blocking (the catalog).
    pub fn locate(
        &self,
        ids: &[ChunkId],
        ttl: std::time::Duration,
    ) -> Result<Option<Located>, ApiError> {
        if !self.direct_reads() {
            return Ok(None);
        }
        let mut located = Located::default();
        let mut url_of: std::collections::HashMap<String, u32> = Default::default();
        for (id, place) in ids.iter().zip(self.catalog.chunk_places(ids)?) {
            let mut chunk = LocatedChunk {
                id: *id,
                url: 0,
                offset: 0,
                length: 0,
                key: None,
                unavailable: String::new(),
            };
            match place {
                None => chunk.unavailable = format!("chunk {id} is not in the store"),
                Some(place) => {
                    let n = match url_of.get(&place.pack) {
                        Some(n) => *n,
                        None => {
                            let url = self
                                .objects
                                .presign_get(&pack_key(&place.pack), &place.version, ttl)
                                .ok_or_else(|| {
                                    ApiError::internal("the object store cannot presign a GET")
                                })?;
                            located.urls.push(url);
                            let n = located.urls.len() as u32 - 1;
                            url_of.insert(place.pack, n);
                            n
                        }
                    };
                    chunk.url = n;
                    chunk.offset = place.offset;
                    chunk.length = place.length;
                    chunk.key = self.data_key.as_ref().map(|k| k.chunk_key(id));
                }
            }
            located.chunks.push(chunk);
        }
        Ok(Some(located))
    }

    /// The packs this process sealed within `lease`, by its monotonic clock (a wall clock
    /// stepped forward cannot age them); older ones are forgotten.
    pub fn packs_sealed_within(&self, lease: std::time::Duration) -> HashSet<String> {
        let mut recent = self.packs.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|_, at| at.elapsed() < lease);
        recent.keys().cloned().collect()
    }

    /// Reads and verifies a chunk's plaintext. Blocking.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, ApiError> {
        let blob = self.read_blob(id)?;
        Ok(codec::decode_verified(&self.key, id, &blob)?)
    }

    /// Stores committed snapshots' envelopes durably, each retained until its date where
    /// the store has Object Lock, each with its own outcome (what the store confirmed), in
    /// order: one commit group's writes share their syncs (a local directory) or go out
    /// side by side (an object store).
    pub fn write_snapshots(&self, envelopes: &[(&Envelope, i64)]) -> Vec<Result<Stored, ApiError>> {
        let mut out: Vec<Option<Result<Stored, ApiError>>> = Vec::with_capacity(envelopes.len());
        let mut objects = Vec::with_capacity(envelopes.len());
        for (env, locked_until_ms) in envelopes {
            let id = env.id();
            let bytes = match &self.data_key {
                Some(k) => k.seal_envelope(&id, &env.to_bytes()),
                None => Ok(env.to_bytes()),
            };
            match bytes {
                Ok(bytes) => {
                    objects.push(objects::Object {
                        key: snapshot_key(&id),
                        bytes,
                        retain_until_ms: (*locked_until_ms).max(0),
                    });
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e.into()))),
            }
        }
        let mut stored = self.objects.put_many(&objects).into_iter();
        out.into_iter()
            .map(|sealed| match sealed {
                Some(failed) => failed,
                None => match stored.next() {
                    Some(r) => r.map_err(ApiError::from),
                    None => Err(ApiError::internal(
                        "the store answered for fewer envelopes than it was given",
                    )),
                },
            })
            .collect()
    }

    /// Deletes a snapshot: its envelope first (durably), then its catalog row, so a crash
    /// in between leaves a row that a second delete removes. Its chunks stay until GC.
    pub fn delete_snapshot(&self, id: &str) -> Result<(), ApiError> {
        let version = self.catalog.envelope_version(id)?;
        self.objects.delete(&snapshot_key(id), &version)?;
        Ok(self.catalog.delete_snapshot(id)?)
    }

    /// A snapshot's envelope: from the primary, or, when the primary cannot produce it,
    /// from a copy store that holds a complete copy of the snapshot.
    pub fn read_snapshot(&self, id: &str) -> Result<Envelope, ApiError> {
        let version = self.catalog.envelope_version(id)?;
        let primary = self
            .objects
            .get(&snapshot_key(id), &version)
            .map_err(ApiError::from)
            .and_then(|stored| self.open_envelope(id, stored));
        if primary.is_ok() || self.copies.is_empty() {
            return primary;
        }
        for copy in &self.copies {
            let Some(version) = self.catalog.copy_of(&copy.name, id)? else {
                continue;
            };
            match copy
                .objects
                .get(&snapshot_key(id), &version)
                .map_err(ApiError::from)
                .and_then(|stored| self.open_envelope(id, stored))
            {
                Ok(env) => {
                    self.primary_failed();
                    return Ok(env);
                }
                Err(e) => {
                    tracing::warn!(copy = %copy.name, snapshot = id, error = %e, "the copy could not produce the envelope either")
                }
            }
        }
        primary
    }

    fn open_envelope(&self, id: &str, stored: Vec<u8>) -> Result<Envelope, ApiError> {
        let bytes = match &self.data_key {
            Some(k) => k.open_envelope(id, &stored)?,
            None => stored,
        };
        Ok(Envelope::parse(&bytes)?)
    }

    /// A new pack to copy chunks into (GC's compaction, a salvage); [`Store::store_pack`]
    /// makes it part of the store.
    pub fn new_pack(&self) -> Result<PackWriter, ApiError> {
        Ok(PackWriter::create(self.objects.staging())?)
    }

    /// Seals `writer` and stores the pack (confirmed); the caller indexes it.
    pub fn store_pack(&self, writer: PackWriter) -> Result<(pack::SealedPack, Stored), ApiError> {
        seal_and_store(self.objects.as_ref(), writer)
    }

    /// Until when the store retains pack `name` against everyone (0: it does not).
    pub fn pack_retained_until(&self, name: &str) -> Result<i64, ApiError> {
        Ok(self
            .catalog
            .retained_pack(name)?
            .map_or(0, |p| p.retained_until_ms))
    }

    fn pack_version(&self, name: &str) -> Result<String, ApiError> {
        Ok(self
            .catalog
            .retained_pack(name)?
            .map(|p| p.version)
            .unwrap_or_default())
    }

    /// Pack `name` as a local file, for reading it whole (scrub, compaction, rebuild).
    pub fn pack_file(&self, name: &str) -> Result<PackFile, ApiError> {
        self.pack_file_at(name, &self.pack_version(name)?)
    }

    /// [`Store::pack_file`] of the pack's `version` (a rebuild, before the catalog knows).
    pub fn pack_file_at(&self, name: &str, version: &str) -> Result<PackFile, ApiError> {
        let key = pack_key(name);
        if let Some(path) = self.objects.local_path(&key) {
            return Ok(PackFile { path, copy: None });
        }
        let bytes = self.objects.get(&key, version)?;
        let path = lifeboat_core::durable::temp_path(self.objects.staging(), "read");
        std::fs::write(&path, &bytes)
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
        Ok(PackFile {
            copy: Some(lifeboat_core::durable::TempGuard::new(path.clone())),
            path,
        })
    }

    /// Moves damaged pack `name` to `damaged/NAME.pack`, where it stays for whoever
    /// investigates; returns where. `copy` is its bytes, already read.
    pub fn set_aside(&self, name: &str, copy: &PackFile) -> Result<String, ApiError> {
        let to = format!("damaged/{name}.pack");
        if copy.is_copy() {
            let bytes = std::fs::read(&copy.path)
                .map_err(|e| ApiError::internal(format!("reading {}: {e}", copy.path.display())))?;
            self.objects.put(&to, &bytes, 0)?;
            match self
                .objects
                .delete(&pack_key(name), &self.pack_version(name)?)
            {
                // Retained: it stays where it is until its date as well.
                Err(StoreError::Locked(why)) => {
                    tracing::warn!(pack = name, %why, "damaged pack copied aside; the original is retained until its date");
                }
                other => other?,
            }
        } else if let Some(dest) = self.objects.local_path(&to) {
            if let Some(dir) = dest.parent() {
                lifeboat_core::durable::create_dir_durable(dir)?;
            }
            lifeboat_core::durable::rename_durable(&copy.path, &dest)?;
            return Ok(dest.display().to_string());
        }
        Ok(format!("{} {to}", self.objects.describe()))
    }

    /// Deletes a pack (durably) and its catalog row; its chunks must no longer be
    /// indexed there.
    pub fn delete_pack(&self, name: &str) -> Result<(), ApiError> {
        self.objects
            .delete(&pack_key(name), &self.pack_version(name)?)?;
        Ok(self.catalog.delete_pack_row(name)?)
    }

    /// The name of every pack in the store, with the version written (a listing: never a
    /// reason to delete).
    pub fn pack_names(&self) -> Result<Vec<(String, String)>, ApiError> {
        Ok(self
            .objects
            .list("packs/")?
            .into_iter()
            .filter_map(|o| Some((objects::pack_name_of(&o.key)?.to_string(), o.version)))
            .collect())
    }

    /// Every snapshot envelope id in the store, with the version written.
    pub fn snapshot_ids(&self) -> Result<Vec<(String, String)>, ApiError> {
        Ok(self
            .objects
            .list("snapshots/")?
            .into_iter()
            .filter_map(|o| Some((objects::snapshot_id_of(&o.key)?.to_string(), o.version)))
            .collect())
    }

    /// A snapshot's envelope as stored in `version` (a rebuild, which knows it from the
    /// listing before the catalog does).
    pub fn read_snapshot_at(&self, id: &str, version: &str) -> Result<Envelope, ApiError> {
        let stored = self.objects.get(&snapshot_key(id), version)?;
        self.open_envelope(id, stored)
    }
}

/// Seals a pack where the object store wants it and stores it, confirmed (retained for
/// [`NEW_PACK_RETENTION_MS`] where the store has Object Lock). On failure nothing of it
/// stays (its chunks are forgotten and uploaded again).
fn seal_and_store(
    objects: &dyn Objects,
    writer: PackWriter,
) -> Result<(pack::SealedPack, Stored), ApiError> {
    let sealed = writer.seal(&objects.seal_dir())?;
    let retain = if objects.object_lock() {
        now_ms() + NEW_PACK_RETENTION_MS
    } else {
        0
    };
    let stored = objects.store_sealed(&pack_key(&sealed.name), &sealed.path, retain)?;
    Ok((sealed, stored))
}
