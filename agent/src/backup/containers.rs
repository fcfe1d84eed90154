//! Container sources: an image from the Engine's export stream, and a volume read through
//! its mountpoint with the consistency asked for (pause, hook, none).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use lifeboat_core::tree::{Entry, Kind};
use lifeboat_proto::pb;
use tokio::sync::mpsc;

use super::commit::{Commit, commit};
use super::dir::backup_dir;
use super::pipeline::Pipeline;
use lifeboat_core::snapshot::SourceKind;
use lifeboat_proto::states::Consistency;

use super::*;
use crate::docker::Engine;
use crate::{AgentError, Source, now_ms};

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
    let entries = entries.map_err(|e| AgentError::Docker(format!("image reader: {e}")))??;
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
    .map_err(|e| AgentError::Docker(e.to_string()))??;
    let id = info.id.clone();
    commit(
        ctx,
        pipeline,
        Commit {
            source,
            kind: SourceKind::Image,
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
pub(super) fn read_archive(
    p: &Pipeline,
    reader: impl std::io::Read,
) -> Result<Vec<Entry>, AgentError> {
    let bad = |what: String| AgentError::Docker(format!("image archive: {what}"));
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
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Result<bytes::Bytes, AgentError>>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    pub(super) fn new(rx: mpsc::Receiver<Result<bytes::Bytes, AgentError>>) -> Self {
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
        "" if running.is_empty() => Consistency::None,
        "" => Consistency::Pause,
        word => Consistency::parse(word).ok_or_else(|| {
            AgentError::Config(format!(
                "consistency {word:?} is not one of pause, hook, none"
            ))
        })?,
    };
    let source = Source {
        name: format!("volume:{name}"),
        path: vol.mountpoint.clone(),
    };
    match mode {
        Consistency::Pause => {
            let paused = engine.pause(&running).await?;
            tracing::info!(volume = %name, containers = ?paused.containers(), "containers paused for the read");
            let res = backup_dir(ctx, &source, SourceKind::Volume, Some(mode)).await;
            paused.release().await;
            res
        }
        Consistency::Hook => {
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
            let res = backup_dir(ctx, &source, SourceKind::Volume, Some(mode)).await;
            if !h.after.is_empty()
                && let Err(e) = engine.exec(&h.container, &h.after, timeout).await
            {
                return Err(match res {
                    Ok(r) => AgentError::Docker(format!(
                        "snapshot {} was committed, but the after-hook failed: {e}",
                        r.snapshot_id
                    )),
                    Err(first) => first,
                });
            }
            res
        }
        Consistency::None => backup_dir(ctx, &source, SourceKind::Volume, Some(mode)).await,
    }
}
