//! The end of a backup: the tree stored as chunks, the record signed, the snapshot
//! committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::{RECORD_VERSION, Record, SourceKind, Stats, TreeRef};
use lifeboat_proto::pb;
use lifeboat_proto::states::Consistency;

use super::pipeline::Pipeline;
use super::*;
use crate::{AgentError, now_ms};

/// A read source, ready to be committed.
pub(super) struct Commit {
    pub(super) source: String,
    pub(super) kind: SourceKind,
    pub(super) source_path: String,
    pub(super) tree: cache::SerializedTree,
    pub(super) parent: Option<String>,
    pub(super) started: i64,
    pub(super) warnings: Vec<String>,
    pub(super) image: Option<lifeboat_core::snapshot::ImageInfo>,
    pub(super) consistency: Option<Consistency>,
    /// Keep the tree for the next backup's change detection.
    pub(super) cache: bool,
    /// The job's counters when this source started.
    pub(super) base: Stats,
}

/// Stores the tree as chunks, signs the record and commits it.
pub(super) async fn commit(
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
                return Err(AgentError::Backup(format!(
                    "the tree file holds {size} bytes, {} were written",
                    tree.len
                )));
            }
            p.finish(lane)?;
            Ok((ids, tree))
        },
    )
    .await
    .map_err(|e| AgentError::Backup(e.to_string()))??;
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
        source_kind: kind.as_str().into(),
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
        consistency: consistency.map(|c| c.as_str().to_string()),
    };
    crate::pause_point("backup-before-commit").await;
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
            .map_err(|e| AgentError::Backup(e.to_string()))??;
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
