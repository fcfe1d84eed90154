//! What the controller checked lately about snapshots, kept in memory so that the same
//! check is not paid for twice in a row: a snapshot's envelope read from the store with
//! both signatures verified, and the set of chunks a tree references.
//!
//! Planning a recovery judges every device's restore point (its envelope verified, its
//! tree read, every chunk indexed); running the plan then submits each restore (the
//! envelope again) and grants each job the chunks of its snapshot (the tree again). From
//! an object store each of those is a request and a decryption per snapshot, on the
//! controller, at the moment a fleet is waiting for its restores to start.
//!
//! Both memos hold only what cannot change under them: an envelope is kept by snapshot id
//! *and* the object version it was read at, and counts only while the agent's recorded
//! signing key is the one it was verified with; a tree's chunks are kept by the tree's own
//! chunk ids (content-addressed: the same ids are the same tree). Whether those chunks are
//! still in the store is never taken from here: callers check the catalog as before.
//!
//! Bounded: at most [`MAX_ENVELOPES`] envelopes and [`MAX_TREE_IDS`] chunk ids of trees;
//! when full, entries older than [`KEEP`] make room, and otherwise nothing new is kept (a
//! plan's first devices, which start first, keep theirs).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_core::ChunkId;
use lifeboat_proto::pb;

/// Verified envelopes kept (each is a record and two signatures: a few KiB).
pub const MAX_ENVELOPES: usize = 16_384;
/// Chunk ids kept across all trees (about 40–70 bytes each in a hash set: 256 Ki ids is
/// 10–18 MiB, the trees of 1,000 devices of 250 chunks each).
pub const MAX_TREE_IDS: usize = 1 << 18;
/// An entry older than this gives way to a new one when the memo is full.
pub const KEEP: Duration = Duration::from_secs(3600);

/// The chunks a tree references (its own chunks excluded).
pub type TreeChunks = Arc<HashSet<ChunkId>>;

#[derive(Default)]
pub struct Checked {
    envelopes: Mutex<HashMap<String, Envelope>>,
    trees: Mutex<Trees>,
}

struct Envelope {
    version: String,
    /// The restore job the envelope makes (no destination), `origin_public_key` the key
    /// it was verified with.
    job: pb::RestoreJob,
    at: Instant,
}

#[derive(Default)]
struct Trees {
    by_tree: HashMap<Vec<ChunkId>, (TreeChunks, Instant)>,
    ids: usize,
}

impl Checked {
    /// The restore job of snapshot `id` as verified at object version `version`, if it was
    /// verified with `origin_key` (the agent's key as the catalog records it now).
    pub fn envelope(&self, id: &str, version: &str, origin_key: &[u8]) -> Option<pb::RestoreJob> {
        let envelopes = self.envelopes.lock().unwrap_or_else(|p| p.into_inner());
        let e = envelopes.get(id)?;
        (e.version == version && e.job.origin_public_key == origin_key).then(|| e.job.clone())
    }

    /// Keeps the restore job of snapshot `id`, verified at object version `version`.
    pub fn put_envelope(&self, id: &str, version: &str, job: &pb::RestoreJob) {
        let mut envelopes = self.envelopes.lock().unwrap_or_else(|p| p.into_inner());
        if envelopes.len() >= MAX_ENVELOPES && !envelopes.contains_key(id) {
            envelopes.retain(|_, e| e.at.elapsed() < KEEP);
            if envelopes.len() >= MAX_ENVELOPES {
                return;
            }
        }
        envelopes.insert(
            id.to_string(),
            Envelope {
                version: version.to_string(),
                job: job.clone(),
                at: Instant::now(),
            },
        );
    }

    /// The chunks the tree made of `tree_chunks` references, if kept.
    pub fn tree(&self, tree_chunks: &[ChunkId]) -> Option<TreeChunks> {
        let trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        trees.by_tree.get(tree_chunks).map(|(c, _)| c.clone())
    }

    /// Keeps the chunks the tree made of `tree_chunks` references.
    pub fn put_tree(&self, tree_chunks: Vec<ChunkId>, chunks: TreeChunks) {
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if trees.by_tree.contains_key(&tree_chunks) {
            return;
        }
        if trees.ids + chunks.len() > MAX_TREE_IDS {
            let Trees { by_tree, ids } = &mut *trees;
            by_tree.retain(|_, (c, at)| {
                let keep = at.elapsed() < KEEP;
                if !keep {
                    *ids -= c.len();
                }
                keep
            });
            if trees.ids + chunks.len() > MAX_TREE_IDS {
                return;
            }
        }
        trees.ids += chunks.len();
        trees.by_tree.insert(tree_chunks, (chunks, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        ChunkId(b)
    }

    fn job(key: &[u8]) -> pb::RestoreJob {
        pb::RestoreJob {
            snapshot_id: "s".into(),
            record: b"record".to_vec(),
            origin_public_key: key.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn an_envelope_counts_only_at_its_version_and_under_the_key_it_was_verified_with() {
        let c = Checked::default();
        c.put_envelope("s", "v1", &job(b"agent-key"));
        assert_eq!(c.envelope("s", "v1", b"agent-key"), Some(job(b"agent-key")));
        // Another object version (rewritten, or a copy store's), another key (re-enrolled),
        // another snapshot: not known.
        assert_eq!(c.envelope("s", "v2", b"agent-key"), None);
        assert_eq!(c.envelope("s", "v1", b"another-key"), None);
        assert_eq!(c.envelope("t", "v1", b"agent-key"), None);
    }

    #[test]
    fn trees_stay_within_their_bound_and_the_first_kept_stay() {
        let c = Checked::default();
        let big: TreeChunks = Arc::new((0..(MAX_TREE_IDS as u32 - 10)).map(id).collect());
        c.put_tree(vec![id(1)], big.clone());
        let small: TreeChunks = Arc::new((0..20).map(id).collect());
        // Does not fit beside the first, which is younger than KEEP: not kept.
        c.put_tree(vec![id(2)], small.clone());
        assert_eq!(c.tree(&[id(1)]).map(|t| t.len()), Some(big.len()));
        assert!(c.tree(&[id(2)]).is_none());
        let fits: TreeChunks = Arc::new((0..10).map(id).collect());
        c.put_tree(vec![id(3)], fits.clone());
        assert_eq!(c.tree(&[id(3)]), Some(fits));
        assert_eq!(c.trees.lock().expect("memo").ids, MAX_TREE_IDS);
    }
}
