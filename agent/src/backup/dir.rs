//! A directory backup from walk to commit: a host path source, or a volume's mountpoint.

use std::sync::{Arc, Mutex, mpsc as sync_mpsc};

use lifeboat_core::snapshot::SourceKind;
use lifeboat_core::tree::Kind;
use lifeboat_core::walk;
use lifeboat_proto::states::Consistency;

use crate::{AgentError, Source, now_ms};

use super::commit::{Commit, commit};
use super::pipeline::Pipeline;
use super::tree::build_tree;
use super::{BackupContext, BackupResult, Counters, cache, workers};

/// Backs up one host path source and commits its snapshot.
pub async fn backup_source(
    ctx: &BackupContext,
    source: &Source,
) -> Result<BackupResult, AgentError> {
    backup_dir(ctx, source, SourceKind::Path, None).await
}

/// Backs up a directory tree (a host path, or a volume's mountpoint) and commits it.
///
/// Three things run at once: the workers reading files (see [`Pipeline::read_files`]), a
/// metadata walk that only counts (progress totals), and, on one blocking thread, the
/// walk itself feeding the workers and the tree (see [`build_tree`]).
pub(super) async fn backup_dir(
    ctx: &BackupContext,
    source: &Source,
    kind: SourceKind,
    consistency: Option<Consistency>,
) -> Result<BackupResult, AgentError> {
    let started = now_ms();
    let base = ctx.counters.baseline();
    let clock = std::time::Instant::now();
    let counters = ctx.counters.clone();
    counters.set_phase(&format!("reading {}", source.name));
    let root_path = source.path.clone();
    let (root, mut walker) = tokio::task::spawn_blocking(move || walk::Walker::new(&root_path))
        .await
        .map_err(|e| AgentError::Backup(e.to_string()))??;
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
            .map_err(|e| AgentError::Backup(e.to_string()))?
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
        .map_err(|e| AgentError::Backup(format!("tree builder: {e}")));
    // The queue is closed either way (the builder ended): the workers finish their
    // uploads and stop.
    let mut failed = None;
    for w in workers {
        let ended = w
            .await
            .map_err(|e| AgentError::Backup(format!("backup worker: {e}")))?;
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
        .map_err(|e| AgentError::Backup(e.to_string()))??;

    tracing::info!(source = %source.name, files = tree.counts.files, elapsed_ms = clock.elapsed().as_millis() as u64, "files read and uploaded");
    commit(
        ctx,
        pipeline,
        Commit {
            source: source.name.clone(),
            kind,
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
