//! The snapshot's tree, built in walk order while the workers read: a window of walked
//! entries, each written out once it and every entry before it are complete.

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc as sync_mpsc;

use lifeboat_core::tree::{Entry, Kind};
use lifeboat_core::{ChunkId, walk};

use super::pipeline::{Done, FileOutcome, ReadJob, unchanged};
use super::*;
use crate::AgentError;

/// Walked entries that may wait for the tree at once: the files being read and the
/// entries walked after the oldest of them. Bounds a backup's memory whatever the
/// number of files in the source.
pub(super) const WINDOW: usize = 4096;

/// A walked entry waiting for its place in the tree.
pub(super) enum Slot {
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
pub(super) fn build_tree(
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
                                AgentError::Backup("the backup workers stopped".into())
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
                .map_err(|_| AgentError::Backup("the backup workers stopped".into()))??;
            let slot = &mut window[seq - front];
            let Slot::Reading(e) = std::mem::replace(slot, Slot::Dropped) else {
                return Err(AgentError::Backup(format!(
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
