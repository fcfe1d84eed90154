//! Restoring an image snapshot: the tree is written back as a `docker save` archive,
//! streamed into the Engine's load endpoint, and the result checked against the recorded
//! image id before the recorded tags are put back. Nothing is pulled from any registry.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use lifeboat_core::ChunkKey;
use lifeboat_core::restore::{ChunkSource, Report};
use lifeboat_core::snapshot::Record;
use lifeboat_core::tree::{Entry, Kind, Tree};
use tokio::sync::mpsc;

use crate::AgentError;
use crate::backup::Counters;
use crate::docker::Engine;

/// Archive bytes per message to the Engine.
const PIECE: usize = 1 << 20;

pub async fn restore(
    engine: &Engine,
    record: &Record,
    tree: Tree,
    key: ChunkKey,
    mut source: super::fetch::Prefetched,
    counters: Arc<Counters>,
) -> Result<Report, AgentError> {
    let info = record
        .image
        .clone()
        .ok_or_else(|| AgentError::Docker("the snapshot records no image".into()))?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let writer = tokio::task::spawn_blocking(move || -> Result<Report, AgentError> {
        let mut out = PieceWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        };
        match write_archive(&tree, &key, &mut source, &mut out, &counters) {
            Ok(report) => {
                out.flush()
                    .map_err(|e| AgentError::Docker(format!("sending the archive: {e}")))?;
                Ok(report)
            }
            Err(e) => {
                // Abort the load: the Engine must never see a truncated archive as whole.
                let _ = out
                    .tx
                    .blocking_send(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    });
    let load = engine.load(tokio_stream::wrappers::ReceiverStream::new(rx));
    let (written, loaded) = tokio::join!(writer, load);
    let report = written.map_err(|e| AgentError::Docker(format!("archive writer: {e}")))??;
    let messages = loaded?;
    let got = engine.image(&info.id).await.map_err(|e| {
        AgentError::Docker(format!(
            "the Engine did not get image {} from the archive ({e}); it said: {}",
            info.id,
            messages.join("; ")
        ))
    })?;
    if got.id != info.id {
        return Err(AgentError::Docker(format!(
            "the Engine loaded image {} where the snapshot records {}",
            got.id, info.id
        )));
    }
    for tag in &info.repo_tags {
        engine.tag(&info.id, tag).await?;
    }
    tracing::info!(image = %info.id, tags = ?info.repo_tags, "image loaded and verified");
    Ok(report)
}

/// Writes the tree as a tar archive, every file's chunks verified on the way.
fn write_archive(
    tree: &Tree,
    key: &ChunkKey,
    source: &mut dyn ChunkSource,
    out: &mut impl Write,
    counters: &Counters,
) -> Result<Report, AgentError> {
    let tar_err =
        |path: &str, e: std::io::Error| AgentError::Docker(format!("archiving {path}: {e}"));
    let mut b = tar::Builder::new(out);
    let mut report = Report::default();
    for e in &tree.entries {
        let path = e.display_path();
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mtime(e.mtime.max(0) as u64);
        match e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())
                    .map_err(|x| tar_err(&path, x))?;
                report.dirs += 1;
            }
            Kind::File => {
                if key.content_hash(e.size, &e.chunks) != e.content_hash {
                    return Err(AgentError::Docker(format!(
                        "{path}: its chunk list does not match its content hash"
                    )));
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                let reader = ChunkReader {
                    source: &mut *source,
                    entry: e,
                    next: 0,
                    cur: Bytes::new(),
                    pos: 0,
                    produced: 0,
                };
                b.append_data(&mut h, &path, reader)
                    .map_err(|x| tar_err(&path, x))?;
                report.files += 1;
                report.bytes += e.size;
                counters.files_done.store(report.files, Ordering::Relaxed);
                counters.bytes_done.store(report.bytes, Ordering::Relaxed);
            }
            Kind::Symlink | Kind::Hardlink => {
                h.set_entry_type(if e.kind == Kind::Symlink {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_size(0);
                let target = String::from_utf8_lossy(&e.target).into_owned();
                b.append_link(&mut h, &path, &target)
                    .map_err(|x| tar_err(&path, x))?;
                report.links += 1;
            }
            _ => {
                return Err(AgentError::Docker(format!(
                    "{path}: an image archive holds no device nodes, FIFOs or sockets"
                )));
            }
        }
    }
    b.finish()
        .map_err(|e| tar_err("the end of the archive", e))?;
    Ok(report)
}

/// A file's content, chunk by chunk, each verified against its id.
struct ChunkReader<'a> {
    source: &'a mut dyn ChunkSource,
    entry: &'a Entry,
    next: usize,
    cur: Bytes,
    pos: usize,
    produced: u64,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            let Some(id) = self.entry.chunks.get(self.next) else {
                if self.produced != self.entry.size {
                    return Err(std::io::Error::other(format!(
                        "content is {} bytes, the tree says {}",
                        self.produced, self.entry.size
                    )));
                }
                return Ok(0);
            };
            let chunk = self
                .source
                .fetch(std::slice::from_ref(id))
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .pop()
                .ok_or_else(|| std::io::Error::other("the chunk source returned nothing"))?;
            if chunk.id() != id {
                return Err(std::io::Error::other(format!(
                    "the chunk source returned another chunk than {id}"
                )));
            }
            self.cur = chunk.into_data();
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        self.produced += n as u64;
        Ok(n)
    }
}

/// Sends what is written in pieces of [`PIECE`] bytes (blocking: on a blocking thread).
struct PieceWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl PieceWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::other("the Docker Engine stopped reading the archive"))
    }
}

impl Write for PieceWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
