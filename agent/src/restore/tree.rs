//! A restore's tree, fetched a few chunks at a time into an unnamed file of the agent's
//! state directory (owner-only, gone with the job even if the agent dies), checked against
//! the signed record's length and keyed hash, and read back from there entry by entry: a
//! restore's memory does not grow with the number of paths in the snapshot.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use lifeboat_core::snapshot::Record;
use lifeboat_core::tree::{Entry, Kind, Tree, TreeFile};
use lifeboat_core::{ChunkId, codec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::AgentError;
use crate::client::{self, Client};
use crate::state::AgentState;

/// Tree chunks (about 1 MiB each once decoded) fetched per request.
const TREE_BATCH: usize = 4;

/// Fetches the tree `record` names (through the controller, or with `direct` from the
/// object store), verifying every chunk against its id and the whole against the record.
/// A read the way to the controller broke is asked again once it answers (`link`), as the
/// restore's chunk reads are. Returns the file, positioned anywhere: read it by offset.
pub(super) async fn fetch(
    client: &Client,
    direct: Option<&ureq::Agent>,
    link: tokio::sync::watch::Receiver<super::resume::Link>,
    job_id: &str,
    state: &AgentState,
    record: &Record,
) -> Result<File, AgentError> {
    let ids = record.tree_chunks()?;
    let mut file = unnamed_file(&state.dir)
        .map_err(|e| AgentError::Restore(format!("a file for the snapshot's tree: {e}")))?;
    let mut hasher = blake3::Hasher::new_keyed(state.chunk_key.as_bytes());
    let mut len = 0u64;
    let mut c = client.clone();
    let mut resume = super::resume::Resume::new(link);
    let failed = |why: String| AgentError::Restore(format!("reading the snapshot's tree: {why}"));
    for batch in ids.chunks(TREE_BATCH) {
        let blobs = loop {
            use super::direct::ReadError;
            let got = match direct {
                Some(http) => super::direct::get(&mut c, http, job_id, batch).await,
                None => client::get(&mut c, job_id, batch)
                    .await
                    .map_err(ReadError::Controller),
            };
            match got {
                Ok(blobs) => break blobs,
                Err(ReadError::Controller(status)) if super::resume::transient(&status) => {
                    resume.wait(&status).await.map_err(failed)?
                }
                Err(ReadError::Controller(status)) => return Err(status.into()),
                Err(ReadError::Store(why)) => return Err(failed(why)),
            }
        };
        resume.progressed();
        for (id, blob) in batch.iter().zip(blobs) {
            let content = codec::decode_verified(&state.chunk_key, id, &blob)?;
            len += content.len() as u64;
            if len > record.tree.size {
                return Err(lifeboat_core::Error::TreeMismatch.into());
            }
            hasher.update(&content);
            file.write_all(&content)
                .map_err(|e| AgentError::Restore(format!("writing the snapshot's tree: {e}")))?;
        }
    }
    record.check_tree(len, &hasher.finalize())?;
    Ok(file)
}

/// A file with no name in `dir`, readable and writable by the agent alone.
fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    let flags = OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags | OFlags::TMPFILE, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(File::from(fd)),
        // A file system without O_TMPFILE: a name, removed at once.
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
            let path = lifeboat_core::durable::temp_path(dir, "tree");
            let fd = rustix::fs::open(
                &path,
                flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )?;
            std::fs::remove_file(&path)?;
            Ok(File::from(fd))
        }
        Err(e) => Err(e.into()),
    }
}

/// A snapshot's tree as a restore holds it.
pub(super) enum Restored {
    /// A host path's or a volume's tree, in walk order, read from its file as needed.
    Walked(Arc<TreeFile>),
    /// An image's tree (its archive's order), parsed whole to write the archive back.
    Parsed(Box<Tree>),
}

/// Every chunk of the files a restore writes, in tree order, each with its estimated size
/// (its file's size over its chunks) so that requests can be cut by bytes.
pub(crate) type ChunkOrder = Box<dyn Iterator<Item = lifeboat_core::Result<(ChunkId, u64)>> + Send>;

impl Restored {
    /// Regular files, and their bytes.
    pub fn files(&self) -> (u64, u64) {
        match self {
            Restored::Walked(t) => t.files(),
            Restored::Parsed(t) => t
                .entries
                .iter()
                .filter(|e| e.kind == Kind::File)
                .fold((0, 0), |(n, b), e| (n + 1, b + e.size)),
        }
    }

    /// The chunks of every file but those in `skip` (repair mode's files already in
    /// place), in the order the restore asks for them; a walked tree's are read from its
    /// file as the fetcher goes, without the chunks of zeros its sparse files leave as
    /// holes (`Entry::leaves_hole`: the restore writes nothing there).
    pub fn chunk_order(
        &self,
        skip: Arc<HashSet<Vec<u8>>>,
        key: &lifeboat_core::ChunkKey,
    ) -> lifeboat_core::Result<ChunkOrder> {
        fn of(e: &Entry, zero: Option<&ChunkId>) -> Vec<lifeboat_core::Result<(ChunkId, u64)>> {
            let each = e.size / e.chunks.len().max(1) as u64;
            e.chunks
                .iter()
                .filter(|id| !zero.is_some_and(|z| e.leaves_hole(id, z)))
                .map(|id| Ok((*id, each)))
                .collect()
        }
        let wanted = move |e: &Entry| e.kind == Kind::File && !skip.contains(&e.path);
        Ok(match self {
            Restored::Walked(t) => {
                let key = key.clone();
                Box::new(t.entries()?.flat_map(move |e| match e {
                    Ok(e) if wanted(&e) => of(&e, e.sparse.then(|| key.zero_chunk_id()).as_ref()),
                    Ok(_) => Vec::new(),
                    Err(err) => vec![Err(err)],
                }))
            }
            // An image's archive is written back whole, zeros and all.
            Restored::Parsed(t) => {
                let order: Vec<_> = t
                    .entries
                    .iter()
                    .filter(|e| wanted(e))
                    .flat_map(|e| of(e, None))
                    .collect();
                Box::new(order.into_iter())
            }
        })
    }
}
