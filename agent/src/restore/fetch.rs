//! Fetching a snapshot's chunks from the controller for a restore: requests kept open one
//! ahead, blobs decoded and verified on blocking threads, and handed to the writer in the
//! tree's order ([`Prefetched`]); and the restore of a tree into a directory with them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use lifeboat_core::codec::Verified;
use lifeboat_core::restore::{self, ChunkSource, Options, Report};
use lifeboat_core::tree::TreeFile;
use lifeboat_core::{ChunkId, ChunkKey};
use lifeboat_proto::pb;
use tokio::sync::mpsc;

use super::resume::{Link, Resume};
use super::tree::ChunkOrder;
use crate::AgentError;
use crate::backup::Counters;
use crate::client::Client;

/// A `GetChunks` request asks for chunks until their estimated size reaches
/// [`FETCH_BYTES`] or it names [`FETCH_IDS`] of them (a run of small files goes in a few
/// requests, not one per 128 chunks); the next request is open while one is read.
const FETCH_BYTES: u64 = 64 << 20;
const FETCH_IDS: usize = 1024;
/// `GetChunks` requests open at once, each on its own connection (see the session's bulk
/// connections): the controller's reads and both sides' TLS run on two cores.
pub(crate) const FETCH_STREAMS: usize = 2;
/// Messages (of up to 256 KiB) being decoded and verified at once, on blocking threads.
const DECODE_DEPTH: usize = 4;
/// Decoded messages waiting for the writer, in the order it will ask for them. A message
/// travels as one item, so the writer drains a batch of small files without waking up
/// once per chunk.
const PREFETCH_QUEUE: usize = 4;
/// Reads one request's chunk stream to its end, passing each batch on and moving `next`
/// past the requested chunks it delivered. Returns the status it broke with (None: it
/// ended whole), or `Err` when the restore itself ended (nobody reads any more).
async fn drain(
    mut stream: tonic::Streaming<pb::ChunkBatch>,
    ids: &[ChunkId],
    next: &mut usize,
    count: &std::sync::atomic::AtomicU64,
    msg_tx: &mpsc::Sender<Result<Vec<pb::ChunkBlob>, String>>,
    resume: &mut Resume,
) -> Result<Option<tonic::Status>, ()> {
    loop {
        let batch = match stream.message().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Ok(None),
            Err(status) => return Ok(Some(status)),
        };
        let n: usize = batch.chunks.iter().map(|c| c.blob.len()).sum();
        count.fetch_add(n as u64, Ordering::Relaxed);
        for c in &batch.chunks {
            while *next < ids.len() && ids[*next].as_bytes()[..] != c.id[..] {
                *next += 1;
            }
            *next = (*next + 1).min(ids.len());
        }
        resume.progressed();
        msg_tx.send(Ok(batch.chunks)).await.map_err(drop)?;
    }
}

/// What the writer receives, in order.
enum Fetched {
    Chunk(Verified),
    /// A chunk that does not decode, does not match its id, or that the store could not
    /// read: fails only the files that use it (the restore goes on with the others).
    Bad(ChunkId, lifeboat_core::Error),
    /// The stream itself broke: the restore stops.
    Failed(String),
}

/// Streams every file chunk of the tree, in tree order, ahead of the restore (which runs
/// on a blocking thread and only writes). Three stages run at once: the requests to the
/// controller (one open ahead), decoding and verifying against the chunk ids (several
/// messages at once, on blocking threads, order kept), and the writer. The restore asks
/// for a subsequence of that order: when it gives up on a file, the chunks it skips are
/// simply passed over.
pub(crate) struct Prefetched {
    rx: mpsc::Receiver<Vec<Fetched>>,
    /// The rest of the batch the writer is working through.
    ready: std::collections::VecDeque<Fetched>,
    /// Encoded bytes received so far.
    pub fetched: Arc<std::sync::atomic::AtomicU64>,
}

impl Prefetched {
    /// `direct`: read from the object store itself (the job says the store is there)
    /// with this HTTP client, rather than through the controller.
    pub(super) fn start(
        clients: Vec<Client>,
        job_id: String,
        key: ChunkKey,
        order: ChunkOrder,
        direct: Option<ureq::Agent>,
        link: tokio::sync::watch::Receiver<Link>,
    ) -> Prefetched {
        let (tx, rx) = mpsc::channel(PREFETCH_QUEUE);
        let (msg_tx, msg_rx) = mpsc::channel::<Result<Vec<pb::ChunkBlob>, String>>(DECODE_DEPTH);
        let fetched = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = fetched.clone();
        // The requests, cut from the order as it is read (from the tree's file, on a
        // blocking thread) and only a couple ahead of the ones open.
        let (req_tx, mut req_rx) = mpsc::channel::<Result<Vec<ChunkId>, String>>(2);
        tokio::task::spawn_blocking(move || {
            let mut request = Vec::new();
            let mut bytes = 0;
            for item in order {
                let (id, size) = match item {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = req_tx.blocking_send(Err(format!("reading the tree: {e}")));
                        return;
                    }
                };
                request.push(id);
                bytes += size;
                if bytes >= FETCH_BYTES || request.len() >= FETCH_IDS {
                    if req_tx
                        .blocking_send(Ok(std::mem::take(&mut request)))
                        .is_err()
                    {
                        return; // the restore ended
                    }
                    bytes = 0;
                }
            }
            if !request.is_empty() {
                let _ = req_tx.blocking_send(Ok(request));
            }
        });
        tokio::spawn(async move {
            if let Some(http) = direct {
                let mut client = clients[0].clone();
                let mut resume = Resume::new(link);
                while let Some(ids) = req_rx.recv().await {
                    let ids = match ids {
                        Ok(ids) => ids,
                        Err(why) => {
                            let _ = msg_tx.send(Err(why)).await;
                            return;
                        }
                    };
                    // A locate that the way to the controller broke is asked again once
                    // it answers, as a chunk stream is; the store's reads retry on their own.
                    let located = loop {
                        match super::direct::locate(&mut client, &job_id, &ids).await {
                            Ok(located) => break located,
                            Err(status) => {
                                if let Err(why) = resume.wait(&status).await {
                                    let _ = msg_tx.send(Err(why)).await;
                                    return;
                                }
                            }
                        }
                    };
                    resume.progressed();
                    match super::direct::read(&http, located, &msg_tx).await {
                        Ok(n) => {
                            count.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(why) => {
                            let _ = msg_tx.send(Err(why)).await;
                            return;
                        }
                    }
                }
                return;
            }
            let open = |mut client: Client, job_id: String, ids: Vec<ChunkId>| async move {
                client
                    .get_chunks(pb::GetChunksRequest {
                        job_id,
                        ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
                    })
                    .await
            };
            let requests = tokio_stream::wrappers::ReceiverStream::new(req_rx);
            let mut streams = requests
                .enumerate()
                .map(|(i, ids)| {
                    let client = clients[i % clients.len()].clone();
                    let job_id = job_id.clone();
                    async move {
                        let ids = ids?;
                        let opened = open(client.clone(), job_id, ids.clone()).await;
                        Ok::<_, String>((client, ids, opened))
                    }
                })
                .buffered(FETCH_STREAMS);
            // Each request's stream is read to its end; one that breaks on the way is
            // asked again, for the chunks not received yet, once the controller answers.
            let mut resume = Resume::new(link);
            while let Some(res) = streams.next().await {
                let (client, ids, mut opened) = match res {
                    Ok(r) => r,
                    Err(why) => {
                        let _ = msg_tx.send(Err(why)).await;
                        return;
                    }
                };
                let mut next = 0; // the first of `ids` not received yet
                loop {
                    let status = match opened {
                        Err(status) => status,
                        Ok(stream) => {
                            let read = drain(
                                stream.into_inner(),
                                &ids,
                                &mut next,
                                &count,
                                &msg_tx,
                                &mut resume,
                            );
                            match read.await {
                                Ok(None) => break, // this request is whole
                                Ok(Some(status)) => status,
                                Err(()) => return, // the restore ended
                            }
                        }
                    };
                    if let Err(why) = resume.wait(&status).await {
                        let _ = msg_tx.send(Err(why)).await;
                        return;
                    }
                    opened = open(client.clone(), job_id.clone(), ids[next..].to_vec()).await;
                }
            }
        });
        tokio::spawn(async move {
            let mut decoded = tokio_stream::wrappers::ReceiverStream::new(msg_rx)
                .map(|msg| {
                    let key = key.clone();
                    tokio::task::spawn_blocking(move || -> Vec<Fetched> {
                        let chunks = match msg {
                            Ok(chunks) => chunks,
                            Err(why) => return vec![Fetched::Failed(why)],
                        };
                        chunks
                            .into_iter()
                            .map(|c| match ChunkId::from_slice(&c.id) {
                                Ok(id) if !c.unavailable.is_empty() => Fetched::Bad(
                                    id,
                                    lifeboat_core::Error::ChunkUnavailable {
                                        id: id.to_hex(),
                                        reason: c.unavailable,
                                    },
                                ),
                                Ok(id) => match Verified::decode(&key, &id, c.blob) {
                                    Ok(chunk) => Fetched::Chunk(chunk),
                                    Err(e) => Fetched::Bad(id, e),
                                },
                                Err(e) => Fetched::Failed(format!("the controller sent {e}")),
                            })
                            .collect()
                    })
                })
                .buffered(DECODE_DEPTH);
            while let Some(joined) = decoded.next().await {
                let items =
                    joined.unwrap_or_else(|e| vec![Fetched::Failed(format!("chunk decoder: {e}"))]);
                let failed = items.iter().any(|i| matches!(i, Fetched::Failed(_)));
                if tx.send(items).await.is_err() || failed {
                    return; // the restore ended, or the stream broke
                }
            }
        });
        Prefetched {
            rx,
            ready: Default::default(),
            fetched,
        }
    }
}

impl ChunkSource for Prefetched {
    fn fetch(&mut self, ids: &[ChunkId]) -> lifeboat_core::Result<Vec<Verified>> {
        // Every file restored before this is whole (verify, then rename), and no other is
        // at its final name: say so, and what to do.
        let fail = |why: String| {
            lifeboat_core::Error::io(
                "fetching chunks from the controller",
                std::io::Error::other(format!(
                    "{why}; the files restored before this are whole and no other was put in place: run the restore again (--mode repair rewrites only what is missing or differs)"
                )),
            )
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            loop {
                if self.ready.is_empty() {
                    match self.rx.blocking_recv() {
                        Some(batch) => self.ready.extend(batch),
                        None => {
                            return Err(fail(format!("the chunk stream ended before chunk {id}")));
                        }
                    }
                }
                match self.ready.pop_front() {
                    Some(Fetched::Chunk(chunk)) if chunk.id() == id => {
                        out.push(chunk);
                        break;
                    }
                    Some(Fetched::Bad(bad, e)) if bad == *id => return Err(e),
                    Some(Fetched::Chunk(_) | Fetched::Bad(..)) => continue,
                    Some(Fetched::Failed(why)) => return Err(fail(why)),
                    None => continue, // an empty batch
                }
            }
        }
        Ok(out)
    }
}

/// Restores `tree` into `target` (created below the trusted `root`) on a blocking thread.
/// `same` lists the files already in place (repair mode's scan); their chunks are not in
/// `source`'s order.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn restore_dir(
    root: PathBuf,
    target: PathBuf,
    tree: Arc<TreeFile>,
    key: lifeboat_core::ChunkKey,
    mut source: Prefetched,
    progress: Arc<Counters>,
    opts: Options,
    same: Arc<HashSet<Vec<u8>>>,
) -> Result<Report, AgentError> {
    tokio::task::spawn_blocking(move || -> Result<Report, AgentError> {
        let fd = restore::open_target(&root, &target)?;
        let mut on_progress = |r: &Report| {
            progress.files_done.store(r.files, Ordering::Relaxed);
            progress.bytes_done.store(r.bytes, Ordering::Relaxed);
        };
        Ok(restore::restore_scanned(
            &tree,
            &key,
            &fd,
            &mut source,
            opts,
            &same,
            &mut on_progress,
        )?)
    })
    .await
    .map_err(|e| AgentError::Restore(format!("restore worker: {e}")))?
}
