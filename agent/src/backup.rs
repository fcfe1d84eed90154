//! A backup of one source: walk → chunk → hash → ask what is missing → compress → upload
//! → sign → commit.
//!
//! The CPU work runs on blocking threads, one worker per core. Each worker takes whole
//! files, cuts them with FastCDC and names each chunk (keyed BLAKE3; the file's content
//! hash is derived from its chunk ids, not from a second pass over the bytes). Chunks the
//! backup has not seen yet are batched (at most [`BATCH_BYTES`]) and the controller is
//! asked which of them it lacks; while it answers, the worker chunks the next batch
//! ([`Lane`]). Only the missing chunks are compressed and sent into the worker's own
//! bounded upload stream. Files whose size, mtime, ctime and inode match the previous
//! snapshot of the source are not read at all.
//!
//! The walk feeds the workers and the tree as it goes ([`build_tree`]): entries wait in
//! a window of [`WINDOW`] until their files are read, then go to a tree file on disk
//! ([`cache`]), which is chunked at commit and becomes the next backup's change-detection
//! cache. Memory is bounded by the workers' buffers, the window and the upload streams,
//! never by the size of the source.

mod cache;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as sync_mpsc};

use lifeboat_core::chunker::{Chunk, Chunker};
use lifeboat_core::codec::Encoder;
use lifeboat_core::snapshot::{RECORD_VERSION, Record, Stats, TreeRef};
use lifeboat_core::tree::{Entry, Kind};
use lifeboat_core::{ChunkId, walk};
use lifeboat_proto::pb;
use tokio::sync::mpsc;

use futures::StreamExt;

use crate::client::{self, Client};
use crate::docker::Engine;
use crate::state::AgentState;
use crate::{AgentError, Source, now_ms};

/// Plaintext bytes a worker gathers before asking which chunks are missing. A worker
/// holds two batches (one filling, one waiting for its answer): with the chunker's buffer
/// and the upload queue, most of a worker's memory.
const BATCH_BYTES: usize = 4 << 20;
const BATCH_CHUNKS: usize = 1024;
/// Encoded chunks in flight to the controller.
const UPLOAD_QUEUE: usize = 8;
/// Walked entries that may wait for the tree at once: the files being read and the
/// entries walked after the oldest of them. Bounds a backup's memory whatever the
/// number of files in the source.
const WINDOW: usize = 4096;
/// Chunk ids this backup remembers having sent or found stored (48 bytes each, about
/// 12 MiB at most); past that it starts over, and the controller's answer to
/// `MissingChunks` does the same job one round trip later.
const SEEN_MAX: usize = 256 * 1024;

/// Live progress, read by the session's reporter.
#[derive(Default)]
pub struct Counters {
    pub files_done: AtomicU64,
    pub files_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub chunks_new: AtomicU64,
    pub chunks_reused: AtomicU64,
    pub phase: Mutex<String>,
}

impl Counters {
    pub fn snapshot(&self) -> pb::Progress {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        pb::Progress {
            files_done: g(&self.files_done),
            files_total: g(&self.files_total),
            bytes_done: g(&self.bytes_done),
            bytes_total: g(&self.bytes_total),
            bytes_uploaded: g(&self.bytes_uploaded),
            chunks_new: g(&self.chunks_new),
            chunks_reused: g(&self.chunks_reused),
            current: String::new(),
            phase: self.phase.lock().map(|p| p.clone()).unwrap_or_default(),
        }
    }

    pub fn set_phase(&self, phase: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_string();
        }
    }

    /// The cumulative byte and chunk counts now (a source's baseline).
    fn baseline(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            bytes_read: g(&self.bytes_read),
            bytes_new: g(&self.bytes_new),
            bytes_uploaded: g(&self.bytes_uploaded),
            chunks_new: g(&self.chunks_new),
            chunks_reused: g(&self.chunks_reused),
            ..Stats::default()
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

pub struct BackupContext {
    pub state: Arc<AgentState>,
    pub client: Client,
    /// Connections for the workers' uploads, one each (see [`workers`]).
    pub bulk: Vec<Client>,
    pub job_id: String,
    pub level: i32,
    pub full_reread: bool,
    pub counters: Arc<Counters>,
    /// Chunks the store lost (scrub): files that used them are read again.
    pub repair: HashSet<ChunkId>,
    /// Upload pacing (a policy's bandwidth per agent).
    pub limit: Option<Arc<RateLimit>>,
}

/// The outcome of one source's backup.
pub struct BackupResult {
    pub snapshot_id: String,
    pub stats: Stats,
    pub warnings: Vec<String>,
}

/// Backup workers: one per core the agent may use (its CPU affinity), at most 8.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8)
}

/// Change-detection key: a file with the same size, mtime, ctime and inode is unchanged.
fn unchanged(prev: &Entry, cur: &Entry) -> bool {
    prev.kind == Kind::File
        && prev.size == cur.size
        && prev.mtime == cur.mtime
        && prev.mtime_nsec == cur.mtime_nsec
        && prev.ctime == cur.ctime
        && prev.ctime_nsec == cur.ctime_nsec
        && prev.ino == cur.ino
        && prev.dev == cur.dev
}

/// What a worker learned about one file.
enum FileOutcome {
    Read {
        chunks: Vec<ChunkId>,
        hash: [u8; 32],
        size: u64,
    },
    Skipped {
        why: String,
    },
}

/// Shared by the workers of one backup.
struct Pipeline {
    key: lifeboat_core::ChunkKey,
    level: i32,
    seen: Mutex<HashSet<ChunkId>>,
    counters: Arc<Counters>,
    client: Client,
    bulk: Vec<Client>,
    rt: tokio::runtime::Handle,
    limit: Option<Arc<RateLimit>>,
}

/// Paces uploads to a rate shared by all of a job's workers (a policy's `bandwidth`).
pub struct RateLimit {
    bytes_per_sec: u64,
    /// When pacing began, and the bytes sent since.
    state: Mutex<(std::time::Instant, u64)>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Option<Arc<RateLimit>> {
        (bytes_per_sec > 0).then(|| {
            Arc::new(RateLimit {
                bytes_per_sec,
                state: Mutex::new((std::time::Instant::now(), 0)),
            })
        })
    }

    /// Accounts for `n` bytes and sleeps (a blocking thread) until they fit the rate.
    pub fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.1 += n;
            let due = std::time::Duration::from_secs_f64(s.1 as f64 / self.bytes_per_sec as f64);
            due.saturating_sub(s.0.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// One upload stream to the controller. Each worker has its own, so the controller
/// verifies the workers' chunks in parallel.
struct Upload {
    /// The connection this upload runs on; the worker asks it which chunks are missing.
    client: Client,
    tx: mpsc::Sender<pb::ChunkBatch>,
    limit: Option<Arc<RateLimit>>,
    rt: tokio::runtime::Handle,
    /// The stream's call; taken once its verdict was read.
    task:
        Option<tokio::task::JoinHandle<Result<tonic::Response<pb::PutChunksReply>, tonic::Status>>>,
    /// Chunks gathered into the next message.
    pending: Vec<pb::ChunkBlob>,
    pending_bytes: usize,
}

/// A message carries chunks until it reaches this size (one large chunk, or many small).
const MESSAGE_BYTES: usize = 1 << 20;

impl Upload {
    fn send(&mut self, blob: pb::ChunkBlob) -> Result<(), AgentError> {
        self.pending_bytes += blob.blob.len();
        self.pending.push(blob);
        if self.pending_bytes >= MESSAGE_BYTES {
            self.send_pending()?;
        }
        Ok(())
    }

    fn send_pending(&mut self) -> Result<(), AgentError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(l) = &self.limit {
            l.take(self.pending_bytes as u64);
        }
        self.pending_bytes = 0;
        let chunks = std::mem::take(&mut self.pending);
        if self.tx.blocking_send(pb::ChunkBatch { chunks }).is_err() {
            // The controller ended the stream: its status says why (a full store, a
            // refused chunk, a revocation).
            return Err(match self.verdict() {
                Err(e) => e,
                Ok(()) => AgentError::Rpc(
                    "the controller ended the upload stream before it was finished".into(),
                ),
            });
        }
        Ok(())
    }

    /// Waits for the stream's call to end and returns how it ended. Blocking.
    fn verdict(&mut self) -> Result<(), AgentError> {
        let task = self.task.take().ok_or_else(|| {
            AgentError::Rpc("the upload stream to the controller had already failed".into())
        })?;
        self.rt
            .block_on(task)
            .map_err(|e| AgentError::State(format!("upload task: {e}")))??;
        Ok(())
    }

    /// Ends the stream and waits for the controller's verdict. Blocking.
    fn finish(mut self) -> Result<(), AgentError> {
        self.send_pending()?;
        // Dropping the sender ends the stream.
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
        self.verdict()
    }
}

/// What one worker needs to chunk and upload: its encoder, its read buffer, the batch it
/// is filling, the batch whose missing-chunk question is in flight, and its upload stream.
/// Asking about one batch while chunking the next keeps the worker busy through the
/// round trip, for one more batch of memory.
struct Lane {
    enc: Encoder,
    buf: Vec<u8>,
    filling: Vec<(ChunkId, Chunk)>,
    filling_bytes: usize,
    asked: Option<Asked>,
    up: Upload,
}

/// A batch of chunks and the controller's pending answer: which of them it lacks.
struct Asked {
    batch: Vec<(ChunkId, Chunk)>,
    answer: tokio::task::JoinHandle<Result<Vec<ChunkId>, AgentError>>,
}

impl Pipeline {
    /// A pipeline for one source.
    fn new(ctx: &BackupContext) -> Pipeline {
        Pipeline {
            key: ctx.state.chunk_key.clone(),
            level: ctx.level,
            seen: Mutex::new(HashSet::new()),
            counters: ctx.counters.clone(),
            client: ctx.client.clone(),
            bulk: ctx.bulk.clone(),
            rt: tokio::runtime::Handle::current(),
            limit: ctx.limit.clone(),
        }
    }

    /// The upload stream of worker `worker`, on that worker's bulk connection.
    fn open_upload(&self, worker: usize) -> Upload {
        let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
        let client = match self.bulk.len() {
            0 => self.client.clone(),
            n => self.bulk[worker % n].clone(),
        };
        let mut stream_client = client.clone();
        let task = self.rt.spawn(async move {
            stream_client
                .put_chunks(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        Upload {
            client,
            tx,
            limit: self.limit.clone(),
            rt: self.rt.clone(),
            task: Some(task),
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// One worker's lane to the controller (see [`Lane`]).
    fn lane(&self, worker: usize) -> Result<Lane, AgentError> {
        Ok(Lane {
            enc: Encoder::new(self.level)?,
            buf: vec![0u8; lifeboat_core::chunker::BUFFER_LEN],
            filling: Vec::new(),
            filling_bytes: 0,
            asked: None,
            up: self.open_upload(worker),
        })
    }

    /// Asks the controller which chunks of the lane's filling batch it lacks, without
    /// waiting for the answer; then uploads what the previous batch's answer named.
    fn ask(&self, lane: &mut Lane) -> Result<(), AgentError> {
        if lane.filling.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut lane.filling);
        lane.filling_bytes = 0;
        let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
        let mut client = lane.up.client.clone();
        let answer = self
            .rt
            .spawn(async move { client::missing(&mut client, &ids).await });
        match lane.asked.replace(Asked { batch, answer }) {
            Some(previous) => self.upload_missing(previous, lane),
            None => Ok(()),
        }
    }

    /// Waits for the answer about `asked`, then compresses and queues only the chunks the
    /// controller lacks.
    fn upload_missing(&self, asked: Asked, lane: &mut Lane) -> Result<(), AgentError> {
        let missing: HashSet<ChunkId> = self
            .rt
            .block_on(asked.answer)
            .map_err(|e| AgentError::State(format!("missing-chunks query: {e}")))??
            .into_iter()
            .collect();
        for (id, data) in asked.batch {
            if !missing.contains(&id) {
                Counters::add(&self.counters.chunks_reused, 1);
                continue;
            }
            Counters::add(&self.counters.chunks_new, 1);
            Counters::add(&self.counters.bytes_new, data.len() as u64);
            let blob = lane.enc.encode_chunk(data)?;
            Counters::add(&self.counters.bytes_uploaded, blob.len() as u64);
            lane.up.send(pb::ChunkBlob {
                id: id.as_bytes().to_vec(),
                blob: blob.into(),
                unavailable: String::new(),
            })?;
        }
        Ok(())
    }

    /// Uploads everything left in the lane, ends its stream and waits for the
    /// controller's verdict. Blocking.
    fn finish(&self, mut lane: Lane) -> Result<(), AgentError> {
        self.ask(&mut lane)?;
        if let Some(last) = lane.asked.take() {
            self.upload_missing(last, &mut lane)?;
        }
        lane.up.finish()
    }

    /// Chunks the bytes `src` produces, queueing new chunks on `lane`; returns the
    /// chunk ids, the content hash and the size.
    fn chunk_stream(
        &self,
        src: impl std::io::Read,
        lane: &mut Lane,
    ) -> Result<(Vec<ChunkId>, [u8; 32], u64), AgentError> {
        // The chunker borrows the lane's buffer while chunks go to the rest of the lane.
        let mut buf = std::mem::take(&mut lane.buf);
        let chunked = self.chunk_with(src, &mut buf, lane);
        lane.buf = buf;
        chunked
    }

    /// [`Pipeline::chunk_stream`] with the buffer taken out of the lane.
    fn chunk_with(
        &self,
        src: impl std::io::Read,
        buf: &mut Vec<u8>,
        lane: &mut Lane,
    ) -> Result<(Vec<ChunkId>, [u8; 32], u64), AgentError> {
        let mut ids = Vec::new();
        let mut size = 0u64;
        for chunk in Chunker::with_buffer(src, buf) {
            let data = chunk?;
            let id = self.key.id_of(&data);
            size += data.len() as u64;
            ids.push(id);
            Counters::add(&self.counters.bytes_done, data.len() as u64);
            let fresh = self
                .seen
                .lock()
                .map(|mut s| {
                    if s.len() >= SEEN_MAX {
                        s.clear();
                    }
                    s.insert(id)
                })
                .unwrap_or(true);
            if fresh {
                lane.filling_bytes += data.len();
                lane.filling.push((id, data));
                if lane.filling_bytes >= BATCH_BYTES || lane.filling.len() >= BATCH_CHUNKS {
                    self.ask(lane)?;
                }
            } else {
                Counters::add(&self.counters.chunks_reused, 1);
            }
        }
        let hash = self.key.content_hash(size, &ids);
        Ok((ids, hash, size))
    }

    /// A worker: reads the files `queue` names until it closes, and reports each one's
    /// outcome, in the order it finishes, on `done`. A failure that ends the backup is
    /// reported there too, so that whoever waits for this worker's files stops waiting;
    /// one that comes when nobody waits any more (the verdict on the last upload) is
    /// returned.
    fn work(
        &self,
        queue: &Mutex<sync_mpsc::Receiver<ReadJob>>,
        done: &sync_mpsc::Sender<Done>,
        worker: usize,
    ) -> Result<(), AgentError> {
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.read_files(queue, done, worker)
        }));
        let failure = match read {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => AgentError::State("a backup worker panicked".into()),
        };
        match done.send(Err(failure)) {
            Err(sync_mpsc::SendError(Err(unheard))) => Err(unheard),
            _ => Ok(()),
        }
    }

    fn read_files(
        &self,
        queue: &Mutex<sync_mpsc::Receiver<ReadJob>>,
        done: &sync_mpsc::Sender<Done>,
        worker: usize,
    ) -> Result<(), AgentError> {
        let mut lane = self.lane(worker)?;
        loop {
            let next = queue.lock().ok().and_then(|q| q.recv().ok());
            let Some(ReadJob { seq, path }) = next else {
                break;
            };
            let outcome = match std::fs::File::open(&path) {
                Ok(f) => match self.chunk_stream(f, &mut lane) {
                    Ok((chunks, hash, size)) => {
                        Counters::add(&self.counters.bytes_read, size);
                        FileOutcome::Read { chunks, hash, size }
                    }
                    Err(AgentError::Core(e)) if e.retryable() => FileOutcome::Skipped {
                        why: format!("{}: {e}", path.display()),
                    },
                    Err(e) => return Err(e),
                },
                Err(e) => FileOutcome::Skipped {
                    why: format!("{}: {e}", path.display()),
                },
            };
            Counters::add(&self.counters.files_done, 1);
            if done.send(Ok((seq, outcome))).is_err() {
                break; // the backup stopped
            }
        }
        self.finish(lane)
    }
}

/// A file for a worker to read: its place in the walk and its path.
struct ReadJob {
    seq: usize,
    path: std::path::PathBuf,
}

/// A worker's report: a file's outcome, or the failure that stopped it.
type Done = Result<(usize, FileOutcome), AgentError>;

/// A walked entry waiting for its place in the tree.
enum Slot {
    /// A file a worker is reading.
    Reading(Entry),
    Ready(Entry),
    /// A file that could not be read: left out of the tree.
    Dropped,
}

/// Builds the tree in walk order while the workers read: takes walked entries while the
/// window has room, passes files that changed to the workers (an unchanged file takes
/// its chunks from the previous tree and is not read), and writes each entry to `sink`
/// once it and every entry before it are complete. Returns the warnings.
#[allow(clippy::too_many_arguments)]
fn build_tree(
    walker: &mut walk::Walker,
    root: &std::path::Path,
    mut prev: Option<cache::PrevTree>,
    repair: &HashSet<ChunkId>,
    counters: &Counters,
    queue: sync_mpsc::Sender<ReadJob>,
    done: sync_mpsc::Receiver<Done>,
    sink: &mut cache::TreeSink,
) -> Result<Vec<String>, AgentError> {
    let mut queue = Some(queue);
    let mut window: VecDeque<Slot> = VecDeque::with_capacity(WINDOW);
    // The walk position of the window's front, and of the next entry walked.
    let (mut front, mut next) = (0usize, 0usize);
    let mut warnings = Vec::new();
    // Files left out, so that hardlinks to them are left out too.
    let mut dropped: HashSet<Vec<u8>> = HashSet::new();
    loop {
        while queue.is_some() && window.len() < WINDOW {
            let Some(mut e) = walker.next() else {
                queue = None; // the walk is over: workers stop once the queue is empty
                break;
            };
            let slot = if e.kind != Kind::File {
                Slot::Ready(e)
            } else {
                match prev.as_mut().and_then(|p| p.find(&e.path)) {
                    Some(p)
                        if unchanged(&p, &e) && !p.chunks.iter().any(|c| repair.contains(c)) =>
                    {
                        Counters::add(&counters.files_done, 1);
                        Counters::add(&counters.bytes_done, e.size);
                        Counters::add(&counters.chunks_reused, p.chunks.len() as u64);
                        e.chunks = p.chunks;
                        e.content_hash = p.content_hash;
                        e.sparse = p.sparse || e.sparse;
                        Slot::Ready(e)
                    }
                    _ => {
                        let path = walk::join(root, &e.path);
                        if let Some(q) = &queue {
                            q.send(ReadJob { seq: next, path }).map_err(|_| {
                                AgentError::State("the backup workers stopped".into())
                            })?;
                        }
                        Slot::Reading(e)
                    }
                }
            };
            window.push_back(slot);
            next += 1;
        }
        while matches!(window.front(), Some(Slot::Ready(_) | Slot::Dropped)) {
            if let Some(Slot::Ready(e)) = window.pop_front() {
                let lost_link = e.kind == Kind::Hardlink && dropped.contains(&e.target);
                if !lost_link {
                    sink.push(&e)?;
                }
            }
            front += 1;
        }
        if window.is_empty() && queue.is_none() {
            return Ok(warnings);
        }
        if matches!(window.front(), Some(Slot::Reading(_))) {
            let (seq, outcome) = done
                .recv()
                .map_err(|_| AgentError::State("the backup workers stopped".into()))??;
            let slot = &mut window[seq - front];
            let Slot::Reading(e) = std::mem::replace(slot, Slot::Dropped) else {
                return Err(AgentError::State(format!(
                    "walk position {seq} was reported twice"
                )));
            };
            match outcome {
                FileOutcome::Read { chunks, hash, size } => {
                    let mut e = e;
                    e.chunks = chunks;
                    e.content_hash = hash;
                    e.size = size;
                    *slot = Slot::Ready(e);
                }
                FileOutcome::Skipped { why } => {
                    dropped.insert(e.path);
                    warnings.push(why);
                }
            }
        }
    }
}

/// Adds the source's files and bytes to the job's totals (progress only): a walk of
/// metadata beside the backup's own, which runs only a window ahead of the readers.
fn count_totals(root: &std::path::Path, counters: &Counters) {
    match walk::Walker::new(root) {
        Ok((_, w)) => {
            for e in w.without_xattrs() {
                if e.kind == Kind::File {
                    Counters::add(&counters.files_total, 1);
                    Counters::add(&counters.bytes_total, e.size);
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "counting the source for progress"),
    }
}

/// Backs up one host path source and commits its snapshot.
pub async fn backup_source(
    ctx: &BackupContext,
    source: &Source,
) -> Result<BackupResult, AgentError> {
    backup_dir(ctx, source, "path", None).await
}

/// Backs up a directory tree (a host path, or a volume's mountpoint) and commits it.
///
/// Three things run at once: the workers reading files (see [`Pipeline::read_files`]), a
/// metadata walk that only counts (progress totals), and, on one blocking thread, the
/// walk itself feeding the workers and the tree (see [`build_tree`]).
async fn backup_dir(
    ctx: &BackupContext,
    source: &Source,
    kind: &str,
    consistency: Option<String>,
) -> Result<BackupResult, AgentError> {
    let started = now_ms();
    let base = ctx.counters.baseline();
    let clock = std::time::Instant::now();
    let counters = ctx.counters.clone();
    counters.set_phase(&format!("reading {}", source.name));
    let root_path = source.path.clone();
    let (root, mut walker) = tokio::task::spawn_blocking(move || walk::Walker::new(&root_path))
        .await
        .map_err(|e| AgentError::State(e.to_string()))??;
    let totals = {
        let (root, counters) = (source.path.clone(), counters.clone());
        tokio::task::spawn_blocking(move || count_totals(&root, &counters))
    };
    let prev = if ctx.full_reread {
        None
    } else {
        let (state, name) = (ctx.state.clone(), source.name.clone());
        tokio::task::spawn_blocking(move || cache::PrevTree::open(&state, &name))
            .await
            .map_err(|e| AgentError::State(e.to_string()))?
    };
    let parent = prev.as_ref().map(|p| p.snapshot_id.clone());
    let mut sink = cache::TreeSink::create(&ctx.state, &root)?;

    let pipeline = Arc::new(Pipeline::new(ctx));
    let (queue_tx, queue_rx) = sync_mpsc::channel();
    let (done_tx, done_rx) = sync_mpsc::channel();
    let queue_rx = Arc::new(Mutex::new(queue_rx));
    let workers: Vec<_> = (0..workers())
        .map(|i| {
            let (p, q, d) = (pipeline.clone(), queue_rx.clone(), done_tx.clone());
            tokio::task::spawn_blocking(move || p.work(&q, &d, i))
        })
        .collect();
    drop(done_tx);
    let (repair, src_root) = (ctx.repair.clone(), source.path.clone());
    let built = {
        let counters = counters.clone();
        tokio::task::spawn_blocking(move || {
            build_tree(
                &mut walker,
                &src_root,
                prev,
                &repair,
                &counters,
                queue_tx,
                done_rx,
                &mut sink,
            )
            .map(|warnings| (sink, warnings, walker.warnings))
        })
    };
    let built = built
        .await
        .map_err(|e| AgentError::State(format!("tree builder: {e}")));
    // The queue is closed either way (the builder ended): the workers finish their
    // uploads and stop.
    let mut failed = None;
    for w in workers {
        let ended = w
            .await
            .map_err(|e| AgentError::State(format!("backup worker: {e}")))?;
        if let Err(e) = ended {
            failed.get_or_insert(e);
        }
    }
    let _ = totals.await;
    let (sink, mut warnings, walk_warnings) = built??;
    if let Some(e) = failed {
        return Err(e);
    }
    warnings.extend(walk_warnings);
    let tree = tokio::task::spawn_blocking(move || sink.finish())
        .await
        .map_err(|e| AgentError::State(e.to_string()))??;

    tracing::info!(source = %source.name, files = tree.counts.files, elapsed_ms = clock.elapsed().as_millis() as u64, "files read and uploaded");
    commit(
        ctx,
        pipeline,
        Commit {
            source: source.name.clone(),
            kind: kind.into(),
            source_path: source.path.display().to_string(),
            tree,
            parent,
            started,
            warnings,
            image: None,
            consistency,
            cache: true,
            base,
        },
    )
    .await
}

/// Backs up a container image from the Engine's export stream (`docker save`, by id).
/// Every member of that archive becomes an entry of the snapshot's tree and is chunked on
/// its own, so layers that two images (or two versions) share are stored once.
pub async fn backup_image(
    ctx: &BackupContext,
    engine: &Engine,
    reference: &str,
) -> Result<BackupResult, AgentError> {
    let started = now_ms();
    let base = ctx.counters.baseline();
    let source = format!("image:{reference}");
    lifeboat_core::snapshot::validate_source(&source)?;
    let info = engine.image(reference).await?;
    ctx.counters.set_phase(&format!("exporting {source}"));
    Counters::add(&ctx.counters.bytes_total, info.size);
    let pipeline = Arc::new(Pipeline::new(ctx));
    let (tx, rx) = mpsc::channel(8);
    let mut export = engine.export(&info.id);
    let pump = async move {
        while let Some(piece) = export.next().await {
            if tx.send(piece).await.is_err() {
                break;
            }
        }
    };
    let p = pipeline.clone();
    let read = tokio::task::spawn_blocking(move || read_archive(&p, ChannelReader::new(rx)));
    let ((), entries) = tokio::join!(pump, read);
    let entries = entries.map_err(|e| AgentError::State(format!("image reader: {e}")))??;
    let mut root = Entry::new(Vec::new(), Kind::Dir);
    root.mode = 0o755;
    let state = ctx.state.clone();
    let tree = tokio::task::spawn_blocking(move || {
        let mut sink = cache::TreeSink::create(&state, &root)?;
        for e in &entries {
            sink.push(e)?;
        }
        sink.finish()
    })
    .await
    .map_err(|e| AgentError::State(e.to_string()))??;
    let id = info.id.clone();
    commit(
        ctx,
        pipeline,
        Commit {
            source,
            kind: "image".into(),
            source_path: id,
            tree,
            parent: None,
            started,
            warnings: Vec::new(),
            image: Some(info),
            consistency: None,
            cache: false,
            base,
        },
    )
    .await
}

/// Turns a `docker save` archive into tree entries, chunking and uploading every file.
/// Parents missing from the archive are added as directories so the tree stays valid.
fn read_archive(p: &Pipeline, reader: impl std::io::Read) -> Result<Vec<Entry>, AgentError> {
    let bad = |what: String| AgentError::State(format!("image archive: {what}"));
    let mut archive = tar::Archive::new(reader);
    let mut lane = p.lane(0)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut dirs: HashMap<Vec<u8>, usize> = HashMap::new();
    for member in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut m = member.map_err(|e| bad(e.to_string()))?;
        let mut path = m.path_bytes().into_owned();
        while path.last() == Some(&b'/') {
            path.pop();
        }
        if path.starts_with(b"./") {
            path.drain(..2);
        }
        if path.is_empty() || path == b"." {
            continue;
        }
        lifeboat_core::tree::validate_path(&path)?;
        let h = m.header();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::Hardlink,
            other => {
                return Err(bad(format!(
                    "member {} has unsupported type {other:?}",
                    String::from_utf8_lossy(&path)
                )));
            }
        };
        let mut e = Entry::new(path.clone(), kind);
        e.mode = h.mode().map_err(|x| bad(x.to_string()))? & 0o7777;
        e.uid = h.uid().unwrap_or(0) as u32;
        e.gid = h.gid().unwrap_or(0) as u32;
        e.mtime = h.mtime().unwrap_or(0) as i64;
        // Parents first (an archive may omit them).
        for (i, _) in path.iter().enumerate().filter(|(_, c)| **c == b'/') {
            let parent = path[..i].to_vec();
            if let std::collections::hash_map::Entry::Vacant(slot) = dirs.entry(parent) {
                let mut d = Entry::new(slot.key().clone(), Kind::Dir);
                d.mode = 0o755;
                d.mtime = e.mtime;
                slot.insert(entries.len());
                entries.push(d);
            }
        }
        match kind {
            Kind::Dir => {
                if let Some(&i) = dirs.get(&path) {
                    entries[i] = e; // an explicit entry after a synthesized one
                    continue;
                }
                dirs.insert(path, entries.len());
            }
            Kind::File => {
                let (chunks, hash, size) = p.chunk_stream(&mut m, &mut lane)?;
                e.chunks = chunks;
                e.content_hash = hash;
                e.size = size;
                Counters::add(&p.counters.files_total, 1);
                Counters::add(&p.counters.files_done, 1);
                Counters::add(&p.counters.bytes_read, size);
            }
            _ => {
                let mut target = m
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if kind == Kind::Hardlink {
                    while target.last() == Some(&b'/') {
                        target.pop();
                    }
                }
                e.target = target;
            }
        }
        entries.push(e);
    }
    p.finish(lane)?;
    Ok(entries)
}

/// Reads a channel of byte pieces as a blocking `Read` (on a blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Result<bytes::Bytes, AgentError>>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Result<bytes::Bytes, AgentError>>) -> Self {
        ChannelReader {
            rx,
            cur: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

/// Backs up a Docker volume's files, made consistent as asked: `pause` pauses the running
/// containers that mount it for the read (and always unpauses them), `hook` runs commands
/// in a container before and after, `none` reads as is and records that. The default is
/// `pause` when a running container mounts the volume, else `none`.
pub async fn backup_volume(
    ctx: &BackupContext,
    engine: &Engine,
    name: &str,
    consistency: &str,
    hook: Option<&pb::Hook>,
) -> Result<BackupResult, AgentError> {
    let vol = engine.volume(name).await?.ok_or_else(|| {
        AgentError::Config(format!(
            "there is no Docker volume {name:?} on this machine"
        ))
    })?;
    let running: Vec<String> = vol
        .users
        .iter()
        .filter(|u| u.running)
        .map(|u| u.id.clone())
        .collect();
    let mode = match consistency {
        "" if running.is_empty() => "none",
        "" => "pause",
        m => m,
    };
    let source = Source {
        name: format!("volume:{name}"),
        path: vol.mountpoint.clone(),
    };
    match mode {
        "pause" => {
            let paused = engine.pause(&running).await?;
            tracing::info!(volume = %name, containers = ?paused.containers(), "containers paused for the read");
            let res = backup_dir(ctx, &source, "volume", Some("pause".into())).await;
            paused.release().await;
            res
        }
        "hook" => {
            let h = hook.filter(|h| !h.container.is_empty()).ok_or_else(|| {
                AgentError::Config(
                    "--consistency hook needs --hook-container and --hook-before or --hook-after"
                        .into(),
                )
            })?;
            let timeout = std::time::Duration::from_secs(match h.timeout_seconds {
                0 => 60,
                n => u64::from(n),
            });
            if !h.before.is_empty() {
                engine.exec(&h.container, &h.before, timeout).await?;
            }
            let res = backup_dir(ctx, &source, "volume", Some("hook".into())).await;
            if !h.after.is_empty()
                && let Err(e) = engine.exec(&h.container, &h.after, timeout).await
            {
                return Err(match res {
                    Ok(r) => AgentError::State(format!(
                        "snapshot {} was committed, but the after-hook failed: {e}",
                        r.snapshot_id
                    )),
                    Err(first) => first,
                });
            }
            res
        }
        "none" => backup_dir(ctx, &source, "volume", Some("none".into())).await,
        other => Err(AgentError::Config(format!(
            "consistency {other:?} is not one of pause, hook, none"
        ))),
    }
}

/// A read source, ready to be committed.
struct Commit {
    source: String,
    kind: String,
    source_path: String,
    tree: cache::SerializedTree,
    parent: Option<String>,
    started: i64,
    warnings: Vec<String>,
    image: Option<lifeboat_core::snapshot::ImageInfo>,
    consistency: Option<String>,
    /// Keep the tree for the next backup's change detection.
    cache: bool,
    /// The job's counters when this source started.
    base: Stats,
}

/// Stores the tree as chunks, signs the record and commits it.
async fn commit(
    ctx: &BackupContext,
    pipeline: Arc<Pipeline>,
    c: Commit,
) -> Result<BackupResult, AgentError> {
    let clock = std::time::Instant::now();
    let counters = ctx.counters.clone();
    let Commit {
        source,
        kind,
        source_path,
        tree,
        parent,
        started,
        warnings,
        image,
        consistency,
        cache,
        base,
    } = c;
    counters.set_phase(&format!("committing {source}"));
    let p = pipeline.clone();
    // The tree is chunked from its file like any other; it comes back to become the cache.
    let (tree_chunks, tree) = tokio::task::spawn_blocking(
        move || -> Result<(Vec<ChunkId>, cache::SerializedTree), AgentError> {
            let mut lane = p.lane(0)?;
            let (ids, _, size) = p.chunk_stream(tree.reader()?, &mut lane)?;
            if size != tree.len {
                return Err(AgentError::State(format!(
                    "the tree file holds {size} bytes, {} were written",
                    tree.len
                )));
            }
            p.finish(lane)?;
            Ok((ids, tree))
        },
    )
    .await
    .map_err(|e| AgentError::State(e.to_string()))??;
    drop(pipeline);

    // A job's counters run across all its sources: this snapshot's share is the difference.
    let g = |a: &AtomicU64, base: u64| a.load(Ordering::Relaxed) - base;
    let stats = Stats {
        bytes_read: g(&counters.bytes_read, base.bytes_read),
        bytes_new: g(&counters.bytes_new, base.bytes_new),
        bytes_uploaded: g(&counters.bytes_uploaded, base.bytes_uploaded),
        chunks_new: g(&counters.chunks_new, base.chunks_new),
        chunks_reused: g(&counters.chunks_reused, base.chunks_reused),
        ..tree.counts.clone()
    };
    let record = Record {
        version: RECORD_VERSION,
        agent_id: ctx.state.info.agent_id.clone(),
        agent_name: ctx.state.info.name.clone(),
        hostname: crate::hostname(),
        source: source.clone(),
        source_kind: kind,
        source_path,
        job_id: ctx.job_id.clone(),
        parent,
        started_unix_ms: started,
        finished_unix_ms: now_ms(),
        tree: TreeRef {
            chunks: tree_chunks.iter().map(|c| c.to_hex()).collect(),
            size: tree.len,
            hash: tree.hash.to_hex().to_string(),
        },
        stats: stats.clone(),
        image,
        consistency,
    };
    let record_bytes = record.to_bytes();
    let signature = ctx.state.signing.sign_record(&record_bytes);
    let reply = ctx
        .client
        .clone()
        .commit_snapshot(pb::CommitRequest {
            job_id: ctx.job_id.clone(),
            record: record_bytes,
            signature,
        })
        .await
        .inspect_err(|status| {
            // The store lacks chunks our change-detection cache said it had (reclaimed after
            // a long pause, or found bad): forget the cache, so the next run reads anew.
            if crate::refusal_of(status) == pb::Refusal::MissingChunks {
                let _ = std::fs::remove_file(ctx.state.cache_path(&source));
            }
        })?
        .into_inner();
    lifeboat_core::crash_point("backup-after-commit");
    tracing::info!(%source, elapsed_ms = clock.elapsed().as_millis() as u64, "snapshot committed");
    if cache {
        let state = ctx.state.clone();
        let (name, id) = (source.clone(), reply.snapshot_id.clone());
        tokio::task::spawn_blocking(move || tree.keep_as_cache(&state, &name, &id))
            .await
            .map_err(|e| AgentError::State(e.to_string()))??;
    }
    for w in &warnings {
        tracing::warn!(%source, "not backed up: {w}");
    }
    Ok(BackupResult {
        snapshot_id: reply.snapshot_id,
        stats,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    /// 3 MB at 4 MB/s cannot take less than 0.75 s (a lower bound: slow machines only
    /// make it longer).
    #[test]
    fn a_rate_limit_paces_what_is_sent() {
        let limit = RateLimit::new(4_000_000).expect("limit");
        let t = std::time::Instant::now();
        for _ in 0..3 {
            limit.take(1_000_000);
        }
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(740),
            "{:?}",
            t.elapsed()
        );
        assert!(RateLimit::new(0).is_none());
    }
}
