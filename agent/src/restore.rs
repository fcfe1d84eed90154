//! A restore job: verify the snapshot's signature, fetch and verify its tree, then write
//! it under a directory handle inside one of this agent's restore roots.

mod image;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use lifeboat_core::restore::{self, ChunkSource, Options, Report};
use lifeboat_core::snapshot::Record;
use lifeboat_core::tree::{Kind, Tree};
use lifeboat_core::{ChunkId, codec};
use lifeboat_proto::pb;
use tokio::sync::mpsc;

use crate::backup::Counters;
use crate::client::{self, Client};
use crate::docker::Engine;
use crate::state::AgentState;
use crate::{AgentError, absolute_clean};

/// Chunks fetched ahead of the writer, in the order the restore will ask for them.
const PREFETCH_QUEUE: usize = 32;
const PREFETCH_BATCH: usize = 64;

/// Streams every file chunk of the tree, in tree order, ahead of the restore (which runs
/// on a blocking thread). The restore asks for a subsequence of that order: when it gives
/// up on a file, the chunks it skips are simply passed over.
pub(crate) struct Prefetched {
    rx: mpsc::Receiver<Result<(ChunkId, Vec<u8>), String>>,
}

impl Prefetched {
    fn start(client: Client, job_id: String, order: Vec<ChunkId>) -> Prefetched {
        let (tx, rx) = mpsc::channel(PREFETCH_QUEUE);
        tokio::spawn(async move {
            let mut client = client;
            for batch in order.chunks(PREFETCH_BATCH) {
                let res = client
                    .get_chunks(pb::GetChunksRequest {
                        job_id: job_id.clone(),
                        ids: batch.iter().map(|i| i.as_bytes().to_vec()).collect(),
                    })
                    .await;
                let mut stream = match res {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        let _ = tx.send(Err(e.message().to_string())).await;
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(batch)) => {
                            for msg in batch.chunks {
                                let item = ChunkId::from_slice(&msg.id)
                                    .map(|id| (id, Vec::from(msg.blob)))
                                    .map_err(|e| e.to_string());
                                if tx.send(item).await.is_err() {
                                    return; // the restore ended
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(e.message().to_string())).await;
                            return;
                        }
                    }
                }
            }
        });
        Prefetched { rx }
    }
}

impl ChunkSource for Prefetched {
    fn fetch(&mut self, ids: &[ChunkId]) -> lifeboat_core::Result<Vec<Vec<u8>>> {
        let fail = |why: String| {
            lifeboat_core::Error::io(
                "fetching chunks from the controller",
                std::io::Error::other(why),
            )
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            loop {
                match self.rx.blocking_recv() {
                    Some(Ok((got, blob))) if got == *id => {
                        out.push(blob);
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(why)) => return Err(fail(why)),
                    None => return Err(fail(format!("the chunk stream ended before chunk {id}"))),
                }
            }
        }
        Ok(out)
    }
}

/// Restores `tree` into `target` (created below the trusted `root`) on a blocking thread.
pub(crate) async fn restore_dir(
    root: PathBuf,
    target: PathBuf,
    tree: Tree,
    key: lifeboat_core::ChunkKey,
    mut source: Prefetched,
    progress: Arc<Counters>,
) -> Result<Report, AgentError> {
    tokio::task::spawn_blocking(move || -> Result<Report, AgentError> {
        let fd = restore::open_target(&root, &target)?;
        let mut on_progress = |r: &Report| {
            progress.files_done.store(r.files, Ordering::Relaxed);
            progress.bytes_done.store(r.bytes, Ordering::Relaxed);
        };
        Ok(restore::restore(
            &tree,
            &key,
            &fd,
            &mut source,
            Options::for_current_user(),
            &mut on_progress,
        )?)
    })
    .await
    .map_err(|e| AgentError::State(format!("restore worker: {e}")))?
}

/// Where a restore writes.
enum Destination {
    /// A host path below one of the agent's restore roots.
    Dir { root: PathBuf, target: PathBuf },
    /// The Engine's image store.
    Image(Arc<Engine>),
    /// A Docker volume (created when missing), swapped in once fully verified.
    Volume {
        engine: Arc<Engine>,
        volume: String,
        stop_containers: bool,
    },
}

/// The restore root that contains `target`, which must lie strictly below it.
pub fn root_for<'a>(roots: &'a [PathBuf], target: &Path) -> Result<&'a Path, AgentError> {
    let clean = absolute_clean(target)
        .map_err(|why| AgentError::Config(format!("restore target {}: {why}", target.display())))?;
    if clean.as_path() != target || !target.is_absolute() {
        return Err(AgentError::Config(format!(
            "restore target {} must be an absolute, normalized path",
            target.display()
        )));
    }
    roots
        .iter()
        .map(|r| r.as_path())
        .find(|r| target.starts_with(r) && target != *r)
        .ok_or_else(|| {
            AgentError::Config(format!(
                "restore target {} is outside this agent's restore roots ({})",
                target.display(),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

pub async fn run_restore(
    state: Arc<AgentState>,
    client: Client,
    job_id: &str,
    job: pb::RestoreJob,
    roots: &[PathBuf],
    engine: Option<Arc<Engine>>,
    counters: Arc<Counters>,
) -> Result<Report, AgentError> {
    // Both signatures, before a byte is written: the origin agent's over the record, and
    // the controller's countersignature (with the key pinned at our enrollment) over the
    // record, that signature and key, and the receive time.
    let controller_key = hex::decode(&state.info.controller_key).unwrap_or_default();
    if controller_key.len() != 32 {
        return Err(AgentError::State(
            "this agent was enrolled without the controller's countersigning key and cannot verify snapshots; enroll it again".into(),
        ));
    }
    let envelope = lifeboat_core::snapshot::Envelope {
        record: job.record.clone(),
        signature: job.signature.clone(),
        public_key: job.origin_public_key.clone(),
        countersignature: job.countersignature.clone(),
        received_unix_ms: job.received_unix_ms,
    };
    envelope
        .verify(&job.origin_public_key, &controller_key)
        .map_err(|e| {
            AgentError::State(format!(
                "snapshot {}: {e}; refusing to restore it",
                job.snapshot_id
            ))
        })?;
    if lifeboat_core::snapshot::snapshot_id(&job.record) != job.snapshot_id {
        return Err(AgentError::State(format!(
            "snapshot {}: the record does not have that id",
            job.snapshot_id
        )));
    }
    let record = Record::parse(&job.record)?;
    // Where it goes, checked before anything is fetched.
    let destination = match record.source_kind.as_str() {
        "path" => {
            let target = PathBuf::from(&job.target);
            let root = root_for(roots, &target)?.to_owned();
            Destination::Dir { root, target }
        }
        kind => {
            let engine = engine.ok_or_else(|| {
                AgentError::Config(format!(
                    "a {kind} snapshot is restored through Docker, and this agent has no Docker Engine"
                ))
            })?;
            if !engine.restore_allowed {
                return Err(AgentError::Config(format!(
                    "this agent does not restore into Docker; start it with --docker-restore to allow {kind} restores"
                )));
            }
            if kind == "image" {
                Destination::Image(engine)
            } else {
                let volume = if job.volume.is_empty() {
                    record.source.trim_start_matches("volume:").to_string()
                } else {
                    job.volume.clone()
                };
                lifeboat_core::snapshot::validate_source(&format!("volume:{volume}"))?;
                Destination::Volume {
                    engine,
                    volume,
                    stop_containers: job.stop_containers,
                }
            }
        }
    };

    counters.set_phase("fetching tree");
    let tree_ids = record.tree_chunks()?;
    let mut c = client.clone();
    let blobs = client::get(&mut c, job_id, &tree_ids).await?;
    let mut bytes = Vec::with_capacity(record.tree.size as usize);
    for (id, blob) in tree_ids.iter().zip(&blobs) {
        bytes.extend_from_slice(&codec::decode_verified(&state.chunk_key, id, blob)?);
    }
    let hash = blake3::keyed_hash(state.chunk_key.as_bytes(), &bytes).to_hex();
    if bytes.len() as u64 != record.tree.size || hash.as_str() != record.tree.hash {
        return Err(AgentError::State(format!(
            "snapshot {}: its tree does not match the signed record",
            job.snapshot_id
        )));
    }
    let tree = Tree::parse(&bytes)?;
    let files = tree.entries.iter().filter(|e| e.kind == Kind::File);
    counters
        .files_total
        .store(files.clone().count() as u64, Ordering::Relaxed);
    counters
        .bytes_total
        .store(files.map(|e| e.size).sum(), Ordering::Relaxed);
    counters.set_phase("restoring");

    let order: Vec<ChunkId> = tree
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .flat_map(|e| e.chunks.iter().copied())
        .collect();
    let source = Prefetched::start(client, job_id.to_string(), order);
    let key = state.chunk_key.clone();
    let progress = counters.clone();
    let (root, target) = match destination {
        Destination::Dir { root, target } => (root, target),
        Destination::Image(engine) => {
            return image::restore(&engine, &record, tree, key, source, counters).await;
        }
        Destination::Volume {
            engine,
            volume,
            stop_containers,
        } => {
            return volume::restore(
                &engine,
                &volume,
                stop_containers,
                job_id,
                tree,
                key,
                source,
                counters,
            )
            .await;
        }
    };
    let report = restore_dir(root, target, tree, key, source, progress).await?;
    if !report.failed.is_empty() {
        let list: Vec<String> = report
            .failed
            .iter()
            .take(20)
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        return Err(AgentError::State(format!(
            "restored {} files, but {} entries failed verification and were not written: {}",
            report.files,
            report.failed.len(),
            list.join("; ")
        )));
    }
    Ok(report)
}
