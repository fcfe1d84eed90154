//! The read-and-upload pipeline: workers that chunk whole files, ask the controller which
//! chunks it lacks one batch ahead ([`Lane`]), compress what is missing and send it on
//! their own upload stream ([`Upload`]), paced by the job's [`Pacer`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex, mpsc as sync_mpsc};

use lifeboat_core::ChunkId;
use lifeboat_core::chunker::{Chunk, Chunker};
use lifeboat_core::codec::Encoder;
use lifeboat_core::pace::Pacer;
use lifeboat_core::tree::{Entry, Kind};
use lifeboat_proto::pb;
use tokio::sync::mpsc;

use super::*;
use crate::AgentError;
use crate::client::{self, Client};

/// Plaintext bytes a worker gathers before asking which chunks are missing. A worker
/// holds two batches (one filling, one waiting for its answer): with the chunker's buffer
/// and the upload queue, most of a worker's memory.
pub(super) const BATCH_BYTES: usize = 4 << 20;

pub(super) const BATCH_CHUNKS: usize = 1024;

/// Encoded chunks in flight to the controller.
pub(super) const UPLOAD_QUEUE: usize = 8;

/// Chunk ids this backup remembers having sent or found stored (48 bytes each, about
/// 12 MiB at most); past that it starts over, and the controller's answer to
/// `MissingChunks` does the same job one round trip later.
pub(super) const SEEN_MAX: usize = 256 * 1024;

/// Change-detection key: a file with the same size, mtime, ctime and inode is unchanged.
pub(super) fn unchanged(prev: &Entry, cur: &Entry) -> bool {
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
pub(super) enum FileOutcome {
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
pub(super) struct Pipeline {
    pub(super) key: lifeboat_core::ChunkKey,
    pub(super) level: i32,
    pub(super) seen: Mutex<HashSet<ChunkId>>,
    pub(super) counters: Arc<Counters>,
    pub(super) client: Client,
    pub(super) bulk: Vec<Client>,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) limit: Option<Arc<Pacer>>,
    /// The backup job every upload names (`lifeboat-job`), which the controller checks
    /// and counts against the job's quota.
    pub(super) job_id: String,
}

/// One upload stream to the controller. Each worker has its own, so the controller
/// verifies the workers' chunks in parallel. The stream opens with its first message: a
/// worker with nothing new to upload (most of a small or unchanged source's) costs the
/// controller no call.
pub(super) struct Upload {
    /// The connection this upload runs on; the worker asks it which chunks are missing.
    pub(super) client: Client,
    /// The backup job the stream names.
    job_id: String,
    /// Whether the stream was opened (it is never opened twice).
    opened: bool,
    /// The stream's sender; dropped to end it.
    tx: Option<mpsc::Sender<pb::ChunkBatch>>,
    pub(super) limit: Option<Arc<Pacer>>,
    pub(super) rt: tokio::runtime::Handle,
    /// The stream's call; taken once its verdict was read.
    task:
        Option<tokio::task::JoinHandle<Result<tonic::Response<pb::PutChunksReply>, tonic::Status>>>,
    /// Chunks gathered into the next message.
    pub(super) pending: Vec<pb::ChunkBlob>,
    pub(super) pending_bytes: usize,
}

/// A message carries chunks until it reaches this size (one large chunk, or many small).
pub(super) const MESSAGE_BYTES: usize = 1 << 20;

impl Upload {
    pub(super) fn send(&mut self, blob: pb::ChunkBlob) -> Result<(), AgentError> {
        self.pending_bytes += blob.blob.len();
        self.pending.push(blob);
        if self.pending_bytes >= MESSAGE_BYTES {
            self.send_pending()?;
        }
        Ok(())
    }

    pub(super) fn send_pending(&mut self) -> Result<(), AgentError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(l) = &self.limit {
            l.take(self.pending_bytes as u64);
        }
        self.pending_bytes = 0;
        let chunks = std::mem::take(&mut self.pending);
        if !self.opened {
            self.open();
        }
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.blocking_send(pb::ChunkBatch { chunks }).is_ok());
        if !sent {
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
    pub(super) fn verdict(&mut self) -> Result<(), AgentError> {
        let task = self.task.take().ok_or_else(|| {
            AgentError::Rpc("the upload stream to the controller had already failed".into())
        })?;
        self.rt
            .block_on(task)
            .map_err(|e| AgentError::Backup(format!("upload task: {e}")))??;
        Ok(())
    }

    /// Ends the stream (if it was opened) and waits for the controller's verdict.
    /// Blocking.
    pub(super) fn finish(mut self) -> Result<(), AgentError> {
        self.send_pending()?;
        if !self.opened {
            return Ok(());
        }
        // Dropping the sender ends the stream.
        self.tx = None;
        self.verdict()
    }

    /// Opens the stream: a `PutChunks` call fed by [`Upload::send_pending`].
    fn open(&mut self) {
        self.opened = true;
        let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
        let mut client = self.client.clone();
        let job = tonic::metadata::MetadataValue::try_from(self.job_id.as_str());
        self.task = Some(self.rt.spawn(async move {
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            // Job ids are hex: always a valid header value.
            if let Ok(job) = job {
                req.metadata_mut().insert(lifeboat_proto::JOB_METADATA, job);
            }
            client.put_chunks(req).await
        }));
        self.tx = Some(tx);
    }
}

/// What one worker needs to chunk and upload: its encoder, its read buffer, the batch it
/// is filling, the batch whose missing-chunk question is in flight, and its upload stream.
/// Asking about one batch while chunking the next keeps the worker busy through the
/// round trip, for one more batch of memory.
pub(super) struct Lane {
    pub(super) enc: Encoder,
    pub(super) buf: Vec<u8>,
    pub(super) filling: Vec<(ChunkId, Chunk)>,
    pub(super) filling_bytes: usize,
    pub(super) asked: Option<Asked>,
    pub(super) up: Upload,
}

/// A batch of chunks and the controller's pending answer: which of them it lacks.
pub(super) struct Asked {
    pub(super) batch: Vec<(ChunkId, Chunk)>,
    pub(super) answer: tokio::task::JoinHandle<Result<Vec<ChunkId>, AgentError>>,
}

impl Pipeline {
    /// A pipeline for one source.
    pub(super) fn new(ctx: &BackupContext) -> Pipeline {
        Pipeline {
            key: ctx.state.chunk_key.clone(),
            level: ctx.level,
            seen: Mutex::new(HashSet::new()),
            counters: ctx.counters.clone(),
            client: ctx.client.clone(),
            bulk: ctx.bulk.clone(),
            rt: tokio::runtime::Handle::current(),
            limit: ctx.limit.clone(),
            job_id: ctx.job_id.clone(),
        }
    }

    /// The upload of worker `worker`, on that worker's bulk connection (its stream opens with
    /// its first message).
    pub(super) fn upload(&self, worker: usize) -> Upload {
        let client = match self.bulk.len() {
            0 => self.client.clone(),
            n => self.bulk[worker % n].clone(),
        };
        Upload {
            client,
            job_id: self.job_id.clone(),
            opened: false,
            tx: None,
            limit: self.limit.clone(),
            rt: self.rt.clone(),
            task: None,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// One worker's lane to the controller (see [`Lane`]).
    pub(super) fn lane(&self, worker: usize) -> Result<Lane, AgentError> {
        Ok(Lane {
            enc: Encoder::new(self.level)?,
            buf: Vec::new(),
            filling: Vec::new(),
            filling_bytes: 0,
            asked: None,
            up: self.upload(worker),
        })
    }

    /// Asks the controller which chunks of the lane's filling batch it lacks, without
    /// waiting for the answer; then uploads what the previous batch's answer named.
    pub(super) fn ask(&self, lane: &mut Lane) -> Result<(), AgentError> {
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
    pub(super) fn upload_missing(&self, asked: Asked, lane: &mut Lane) -> Result<(), AgentError> {
        let missing: HashSet<ChunkId> = self
            .rt
            .block_on(asked.answer)
            .map_err(|e| AgentError::Backup(format!("missing-chunks query: {e}")))??
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
    pub(super) fn finish(&self, mut lane: Lane) -> Result<(), AgentError> {
        self.ask(&mut lane)?;
        if let Some(last) = lane.asked.take() {
            self.upload_missing(last, &mut lane)?;
        }
        lane.up.finish()
    }

    /// Chunks the bytes `src` produces, queueing new chunks on `lane`; returns the
    /// chunk ids, the content hash and the size.
    pub(super) fn chunk_stream(
        &self,
        src: impl std::io::Read,
        lane: &mut Lane,
    ) -> Result<(Vec<ChunkId>, [u8; 32], u64), AgentError> {
        // The chunker borrows the lane's buffer while chunks go to the rest of the lane.
        let mut buf = std::mem::take(&mut lane.buf);
        let chunked = self.chunk_all(Chunker::with_buffer(src, &mut buf), lane);
        lane.buf = buf;
        chunked
    }

    /// [`Pipeline::chunk_stream`] for a file, stepping over its holes if it is sparse: the
    /// same chunks as reading its zeros would give, without reading them.
    pub(super) fn chunk_file(
        &self,
        file: std::fs::File,
        path: &std::path::Path,
        lane: &mut Lane,
    ) -> Result<(Vec<ChunkId>, [u8; 32], u64), AgentError> {
        let holes = lifeboat_core::chunker::holes(&file).map_err(|e| {
            lifeboat_core::Error::io(format!("finding the holes of {}", path.display()), e)
        })?;
        let mut buf = std::mem::take(&mut lane.buf);
        let chunked = self.chunk_all(Chunker::with_buffer(file, &mut buf).with_holes(holes), lane);
        lane.buf = buf;
        chunked
    }

    /// Chunks what `chunker` yields, queueing new chunks on `lane`.
    fn chunk_all<R: std::io::Read>(
        &self,
        chunker: Chunker<R, &mut Vec<u8>>,
        lane: &mut Lane,
    ) -> Result<(Vec<ChunkId>, [u8; 32], u64), AgentError> {
        let mut ids = Vec::new();
        let mut size = 0u64;
        for chunk in chunker {
            let data = chunk?;
            let id = match data.is_zeros() {
                true => self.key.zero_chunk_id(),
                false => self.key.id_of(&data),
            };
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
    pub(super) fn work(
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
            Err(_) => AgentError::Backup("a backup worker panicked".into()),
        };
        match done.send(Err(failure)) {
            Err(sync_mpsc::SendError(Err(unheard))) => Err(unheard),
            _ => Ok(()),
        }
    }

    pub(super) fn read_files(
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
                Ok(f) => match self.chunk_file(f, &path, &mut lane) {
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
pub(super) struct ReadJob {
    pub(super) seq: usize,
    pub(super) path: std::path::PathBuf,
}

/// A worker's report: a file's outcome, or the failure that stopped it.
pub(super) type Done = Result<(usize, FileOutcome), AgentError>;
