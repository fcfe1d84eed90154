//! A backup of one source: walk → chunk → hash → ask what is missing → compress → upload
//! → sign → commit.
//!
//! The CPU work runs on blocking threads, one worker per core. Each worker takes whole
//! files, cuts them with FastCDC and names each chunk (keyed BLAKE3; the file's content
//! hash is derived from its chunk ids, not from a second pass over the bytes). Chunks the
//! backup has not seen yet are batched (at most [`pipeline::BATCH_BYTES`]) and the controller is
//! asked which of them it lacks; while it answers, the worker chunks the next batch
//! ([`pipeline`]). Only the missing chunks are compressed and sent into the worker's own
//! bounded upload stream. Files whose size, mtime, ctime and inode match the previous
//! snapshot of the source are not read at all.
//!
//! The walk feeds the workers and the tree as it goes ([`tree`]): entries wait in a
//! window of [`tree::WINDOW`] until their files are read, then go to a tree file on disk
//! ([`cache`]), which is chunked at commit and becomes the next backup's change-detection
//! cache. Memory is bounded by the workers' buffers, the window and the upload streams,
//! never by the size of the source.
//!
//! Here: the job's context and progress counters. `dir` (a directory backup from walk to
//! commit), `pipeline` (the workers and their upload streams), `tree` (the tree in walk order),
//! `containers` (images and volumes), `commit` (tree chunks, signature, commit), `cache`
//! (the previous tree, entry by entry).

mod cache;
mod commit;
mod containers;
mod dir;
mod pipeline;
mod tree;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lifeboat_core::ChunkId;
use lifeboat_core::pace::Pacer;
use lifeboat_core::snapshot::Stats;
use lifeboat_proto::pb;

use crate::client::Client;
use crate::state::AgentState;

pub use containers::{backup_image, backup_volume};
pub use dir::backup_source;

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

    pub(super) fn add(a: &AtomicU64, n: u64) {
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
    pub limit: Option<Arc<Pacer>>,
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
