//! A snapshot's file tree and its byte serialization.
//!
//! The tree is a header, the root directory's metadata, then one length-prefixed entry per
//! path, in the walk's order (depth first, names sorted bytewise; a directory comes before
//! its children; a hardlink after the first path of its inode). Paths are raw bytes (names
//! need not be UTF-8) relative to the source root, components joined by `/`.
//!
//! ```text
//! "LBTREE" 0x00 0x01                                    header, version 1
//! u32 len | entry                                       the root (empty path, kind Dir)
//! u32 len | entry ...                                   every other path
//! entry = kind u8 | path | mode u32 | uid u32 | gid u32 | mtime i64 | mtime_nsec u32
//!       | size u64 | rdev u64 | ctime i64 | ctime_nsec u32 | ino u64 | dev u64 | flags u8
//!       | target | content_hash (32, zero unless file) | n_chunks u32 | chunk ids (32 each)
//!       | n_xattrs u32 | (name, value)...
//! bytes-valued fields are u32 length + bytes; all integers little endian
//! ```
//!
//! `ctime`, `ino` and `dev` are kept only so the next backup can tell that a file is
//! unchanged without reading it; restore ignores them.

use crate::{ChunkId, Error, Result};

const HEADER: &[u8; 8] = b"LBTREE\x00\x01";
const FLAG_SPARSE: u8 = 1;
/// Refuse absurd sizes in hostile input before allocating.
const MAX_ENTRY_LEN: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    /// Another path of an inode that appears earlier in the tree; `target` is that path.
    Hardlink = 4,
    Fifo = 5,
    CharDevice = 6,
    BlockDevice = 7,
    Socket = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Hardlink,
            5 => Kind::Fifo,
            6 => Kind::CharDevice,
            7 => Kind::BlockDevice,
            8 => Kind::Socket,
            other => return Err(Error::CorruptTree(format!("unknown entry kind {other}"))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
            Kind::Fifo => "fifo",
            Kind::CharDevice => "chardev",
            Kind::BlockDevice => "blockdev",
            Kind::Socket => "socket",
        }
    }
}

/// One path of a snapshot with all the metadata Lifeboat restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (mask 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub size: u64,
    pub rdev: u64,
    pub ctime: i64,
    pub ctime_nsec: u32,
    pub ino: u64,
    pub dev: u64,
    /// The file had holes when it was read; restore it sparse.
    pub sparse: bool,
    /// Symlink target, or the first path of a hardlinked inode.
    pub target: Vec<u8>,
    /// `ChunkKey::content_hash` of the size and chunk list (files only; zero otherwise).
    pub content_hash: [u8; 32],
    pub chunks: Vec<ChunkId>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// Whether a restore leaves chunk `id` of this entry as a hole instead of fetching
    /// and writing it: a chunk of zeros (`zero`, from `ChunkKey::zero_chunk_id`) of a file
    /// that was sparse. The restored file is created empty, so the hole reads as the zeros.
    pub fn leaves_hole(&self, id: &ChunkId, zero: &ChunkId) -> bool {
        self.sparse && id == zero
    }

    pub fn new(path: Vec<u8>, kind: Kind) -> Self {
        Entry {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            rdev: 0,
            ctime: 0,
            ctime_nsec: 0,
            ino: 0,
            dev: 0,
            sparse: false,
            target: Vec::new(),
            content_hash: [0; 32],
            chunks: Vec::new(),
            xattrs: Vec::new(),
        }
    }

    /// The path for messages (lossy for non-UTF-8 names).
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Checks that `path` is a safe relative path: no leading `/`, no empty, `.` or `..`
/// component, no NUL. Called on every entry (and hardlink target) before any I/O.
pub fn validate_path(path: &[u8]) -> Result<()> {
    let bad = |reason| {
        Err(Error::UnsafePath {
            path: String::from_utf8_lossy(path).into_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty name");
    }
    if path.contains(&0) {
        return bad("contains a NUL byte");
    }
    if path[0] == b'/' {
        return bad("absolute path");
    }
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" => return bad("empty path component"),
            b"." => return bad("`.` component"),
            b".." => return bad("`..` component"),
            _ => {}
        }
    }
    Ok(())
}

/// Serializes a tree incrementally.
pub struct TreeWriter {
    buf: Vec<u8>,
}

impl TreeWriter {
    /// Starts a tree with the root directory's metadata (its path is ignored).
    pub fn new(root: &Entry) -> Self {
        let mut w = TreeWriter {
            buf: HEADER.to_vec(),
        };
        w.push_unchecked(root);
        w
    }

    pub fn push(&mut self, e: &Entry) -> Result<()> {
        validate_path(&e.path)?;
        if e.kind == Kind::Hardlink {
            validate_path(&e.target)?;
        }
        self.push_unchecked(e);
        Ok(())
    }

    fn push_unchecked(&mut self, e: &Entry) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let b = &mut self.buf;
        b.push(e.kind as u8);
        put_bytes(b, &e.path);
        for v in [e.mode, e.uid, e.gid] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&e.mtime.to_le_bytes());
        b.extend_from_slice(&e.mtime_nsec.to_le_bytes());
        b.extend_from_slice(&e.size.to_le_bytes());
        b.extend_from_slice(&e.rdev.to_le_bytes());
        b.extend_from_slice(&e.ctime.to_le_bytes());
        b.extend_from_slice(&e.ctime_nsec.to_le_bytes());
        b.extend_from_slice(&e.ino.to_le_bytes());
        b.extend_from_slice(&e.dev.to_le_bytes());
        b.push(if e.sparse { FLAG_SPARSE } else { 0 });
        put_bytes(b, &e.target);
        b.extend_from_slice(&e.content_hash);
        b.extend_from_slice(&(e.chunks.len() as u32).to_le_bytes());
        for c in &e.chunks {
            b.extend_from_slice(c.as_bytes());
        }
        b.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
        for (k, v) in &e.xattrs {
            put_bytes(b, k);
            put_bytes(b, v);
        }
        let len = (self.buf.len() - start - 4) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// The bytes serialized since the last call (the header first), for a caller that
    /// streams the tree out instead of holding all of it.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Bytes buffered since the last [`TreeWriter::take`].
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads a serialized tree entry by entry from `R`, so that a reader of a large tree holds
/// one entry at a time. Each entry is checked as [`Tree::parse`] checks it alone (its
/// fields, its path); the checks across entries (order, parents, duplicates) are the
/// caller's.
pub struct EntryReader<R> {
    src: R,
    buf: Vec<u8>,
}

impl<R: std::io::Read> EntryReader<R> {
    /// Reads the header and the root entry.
    pub fn new(mut src: R) -> Result<(Entry, Self)> {
        let mut header = [0u8; 8];
        src.read_exact(&mut header)
            .map_err(|_| Error::CorruptTree("bad header".into()))?;
        if &header != HEADER {
            return Err(Error::CorruptTree("bad header".into()));
        }
        let mut r = EntryReader {
            src,
            buf: Vec::new(),
        };
        // The root's path is empty (and ignored), like `Tree::parse`'s.
        let root = r
            .read_entry()?
            .ok_or_else(|| Error::CorruptTree("no root entry".into()))?;
        Ok((root, r))
    }

    /// The next entry, or `None` at the end of the tree.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        let Some(e) = self.read_entry()? else {
            return Ok(None);
        };
        validate_path(&e.path)?;
        if e.kind == Kind::Hardlink {
            validate_path(&e.target)?;
        }
        Ok(Some(e))
    }

    fn read_entry(&mut self) -> Result<Option<Entry>> {
        let mut len = [0u8; 4];
        match self.src.read(&mut len[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(Error::io("reading a tree", e)),
        }
        self.src
            .read_exact(&mut len[1..])
            .map_err(|_| Error::CorruptTree("truncated entry".into()))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_ENTRY_LEN {
            return Err(Error::CorruptTree(format!("entry of {len} bytes")));
        }
        self.buf.resize(len, 0);
        self.src
            .read_exact(&mut self.buf)
            .map_err(|_| Error::CorruptTree("truncated entry".into()))?;
        Reader { b: &self.buf }.body(len).map(Some)
    }
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

/// A parsed tree: the root's metadata and every other entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub root: Entry,
    pub entries: Vec<Entry>,
}

impl Tree {
    /// Parses and validates a serialized tree. Every path is checked with [`validate_path`]
    /// and every entry's parent must be a directory that came before it.
    pub fn parse(bytes: &[u8]) -> Result<Tree> {
        let (root, mut r) = EntryReader::new(bytes)?;
        let mut entries = Vec::new();
        let mut dirs = std::collections::HashSet::new();
        let mut paths = std::collections::HashSet::new();
        // Each entry's own checks (fields, paths) are the reader's; these are across entries.
        while let Some(e) = r.next_entry()? {
            if let Some(pos) = e.path.iter().rposition(|&c| c == b'/')
                && !dirs.contains(&e.path[..pos])
            {
                return Err(Error::CorruptTree(format!(
                    "{:?} comes before its parent directory",
                    e.display_path()
                )));
            }
            if e.kind == Kind::Hardlink && !paths.contains(e.target.as_slice()) {
                return Err(Error::CorruptTree(format!(
                    "hardlink {:?} points at a path not seen before it",
                    e.display_path()
                )));
            }
            if !paths.insert(e.path.clone()) {
                return Err(Error::CorruptTree(format!(
                    "duplicate path {:?}",
                    e.display_path()
                )));
            }
            if e.kind == Kind::Dir {
                dirs.insert(e.path.clone());
            }
            entries.push(e);
        }
        Ok(Tree { root, entries })
    }

    pub fn serialize(&self) -> Result<Vec<u8>> {
        let mut w = TreeWriter::new(&self.root);
        for e in &self.entries {
            w.push(e)?;
        }
        Ok(w.finish())
    }

    /// Every chunk id the tree references (with repeats).
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.entries.iter().flat_map(|e| e.chunks.iter())
    }

    /// Checks that the entries are in walk order ([`WalkOrder`]), as every tree a walk
    /// writes is (host paths and volumes; an image's tree is in its archive's order).
    pub fn check_walk_order(&self) -> Result<()> {
        let mut order = WalkOrder::default();
        self.entries.iter().try_for_each(|e| order.check(e))
    }
}

/// Checks, one entry at a time, that a tree is in walk order: paths strictly increasing
/// by [`crate::walk::tree_order`] (so none comes twice), each entry's parent a directory
/// that came before it, each hardlink after its target. Its memory is the chain of
/// directories from the root to the latest one, not a set of every path; that a
/// hardlink's target exists is [`TreeFile::open`]'s second pass.
#[derive(Default)]
pub struct WalkOrder {
    prev: Option<Vec<u8>>,
    /// The directories the walk may still be inside, outermost first (the root, whose
    /// path is empty, is below them all).
    open: Vec<Vec<u8>>,
}

impl WalkOrder {
    pub fn check(&mut self, e: &Entry) -> Result<()> {
        use std::cmp::Ordering::Less;
        let after = |what: &str, other: &[u8]| {
            Error::CorruptTree(format!(
                "{:?} is out of walk order: it comes after {what} {:?}",
                e.display_path(),
                String::from_utf8_lossy(other)
            ))
        };
        if let Some(prev) = &self.prev
            && crate::walk::tree_order(prev, &e.path) != Less
        {
            return Err(after("the entry", prev));
        }
        if e.kind == Kind::Hardlink && crate::walk::tree_order(&e.target, &e.path) != Less {
            return Err(after("its hardlink target", &e.target));
        }
        let parent = match e.path.iter().rposition(|&c| c == b'/') {
            Some(slash) => &e.path[..slash],
            None => &[][..],
        };
        while self.open.last().is_some_and(|d| d.as_slice() != parent) {
            self.open.pop();
        }
        if !parent.is_empty() && self.open.is_empty() {
            return Err(Error::CorruptTree(format!(
                "{:?} comes before its parent directory",
                e.display_path()
            )));
        }
        if e.kind == Kind::Dir {
            self.open.push(e.path.clone());
        }
        self.prev = Some(e.path.clone());
        Ok(())
    }
}

/// A serialized tree kept in a file and read back entry by entry, as many times as
/// needed: what a restore holds instead of a parsed [`Tree`], so that its memory does not
/// grow with the number of paths. Only a tree in walk order is taken ([`WalkOrder`]).
pub struct TreeFile {
    file: std::fs::File,
    root: Entry,
    files: u64,
    bytes: u64,
}

impl TreeFile {
    /// Checks the serialized tree in `file` as [`Tree::parse`] does, and that it is in walk
    /// order: one pass, and a second over the hardlinks' targets when there are any.
    pub fn open(file: std::fs::File) -> Result<TreeFile> {
        let mut order = WalkOrder::default();
        let mut targets = std::collections::HashSet::new();
        let (mut files, mut bytes) = (0, 0u64);
        let (root, entries) = Self::read(&file)?;
        for e in entries {
            let e = e?;
            order.check(&e)?;
            match e.kind {
                Kind::File => {
                    files += 1;
                    bytes = bytes.saturating_add(e.size);
                }
                Kind::Hardlink => {
                    targets.insert(e.target);
                }
                _ => {}
            }
        }
        if !targets.is_empty() {
            let mut seen = std::collections::HashSet::new();
            for e in Self::read(&file)?.1 {
                let e = e?;
                if e.kind == Kind::Hardlink && !seen.contains(&e.target) {
                    return Err(Error::CorruptTree(format!(
                        "hardlink {:?} points at a path not seen before it",
                        e.display_path()
                    )));
                }
                if targets.contains(&e.path) {
                    seen.insert(e.path);
                }
            }
        }
        Ok(TreeFile {
            file,
            root,
            files,
            bytes,
        })
    }

    /// The root directory's metadata.
    pub fn root(&self) -> &Entry {
        &self.root
    }

    /// Regular files, and their bytes.
    pub fn files(&self) -> (u64, u64) {
        (self.files, self.bytes)
    }

    /// Every entry but the root, in order, read from the file again.
    pub fn entries(&self) -> Result<Entries> {
        Self::read(&self.file).map(|(_, entries)| entries)
    }

    /// The root and a reader of the entries after it, on a handle of its own.
    fn read(file: &std::fs::File) -> Result<(Entry, Entries)> {
        let at = ReadAt {
            file: file
                .try_clone()
                .map_err(|e| Error::io("reading a tree file", e))?,
            pos: 0,
        };
        let (root, reader) = EntryReader::new(std::io::BufReader::with_capacity(64 << 10, at))?;
        Ok((root, Entries { reader }))
    }
}

/// The entries of a [`TreeFile`], in order (each reader has its own handle and position).
pub struct Entries {
    reader: EntryReader<std::io::BufReader<ReadAt>>,
}

impl Iterator for Entries {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        self.reader.next_entry().transpose()
    }
}

/// Reads a file from its start by position, whatever the other handles of it do.
struct ReadAt {
    file: std::fs::File,
    pos: u64,
}

impl std::io::Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::CorruptTree("truncated entry".into()));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    /// One entry's fields (`len` bytes, all of `self`).
    fn body(mut self, len: usize) -> Result<Entry> {
        let r = &mut self;
        let kind = Kind::from_u8(r.u8()?)?;
        let mut e = Entry::new(r.bytes()?, kind);
        e.mode = r.u32()?;
        e.uid = r.u32()?;
        e.gid = r.u32()?;
        e.mtime = r.u64()? as i64;
        e.mtime_nsec = r.u32()?;
        e.size = r.u64()?;
        e.rdev = r.u64()?;
        e.ctime = r.u64()? as i64;
        e.ctime_nsec = r.u32()?;
        e.ino = r.u64()?;
        e.dev = r.u64()?;
        let flags = r.u8()?;
        e.sparse = flags & FLAG_SPARSE != 0;
        e.target = r.bytes()?;
        e.content_hash.copy_from_slice(r.take(32)?);
        let n = r.u32()? as usize;
        if n > len / 32 {
            return Err(Error::CorruptTree("chunk count exceeds entry size".into()));
        }
        e.chunks = (0..n)
            .map(|_| ChunkId::from_slice(r.take(32)?))
            .collect::<Result<_>>()?;
        let n = r.u32()? as usize;
        if n > len / 8 {
            return Err(Error::CorruptTree("xattr count exceeds entry size".into()));
        }
        for _ in 0..n {
            e.xattrs.push((r.bytes()?, r.bytes()?));
        }
        if !r.b.is_empty() {
            return Err(Error::CorruptTree(format!(
                "{} trailing bytes in entry",
                r.b.len()
            )));
        }
        if e.mode & !0o7777 != 0 {
            return Err(Error::CorruptTree(format!(
                "mode {:o} has bits outside 0o7777",
                e.mode
            )));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_unsafe_paths() {
        for p in [
            &b""[..],
            b"/etc/passwd",
            b"a/../../b",
            b"..",
            b"a//b",
            b"a/./b",
            b"a\0b",
            b"a/",
        ] {
            assert!(
                matches!(validate_path(p), Err(Error::UnsafePath { .. })),
                "{p:?} accepted"
            );
        }
        for p in [
            &b"a"[..],
            b"a/b/c",
            b"\xff\xfe/na\xefme",
            b"...",
            b".hidden",
        ] {
            assert!(validate_path(p).is_ok(), "{p:?} refused");
        }
    }

    #[test]
    fn refuses_a_child_before_its_parent_and_hostile_bytes() {
        let root = Entry::new(Vec::new(), Kind::Dir);
        let mut w = TreeWriter::new(&root);
        w.push(&Entry::new(b"dir/file".to_vec(), Kind::File))
            .expect("push");
        assert!(matches!(
            Tree::parse(&w.finish()),
            Err(Error::CorruptTree(_))
        ));
        assert!(Tree::parse(b"LBTREE\x00\x01\xff\xff\xff\xff").is_err());
        assert!(Tree::parse(b"garbage").is_err());
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            proptest::collection::vec(1u8..=255, 1..40)
                .prop_filter("safe", |p| validate_path(p).is_ok()),
            any::<(u32, u32, i64, u32, u64, bool)>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            proptest::collection::vec(
                (
                    proptest::collection::vec(1u8..=255, 1..10),
                    proptest::collection::vec(any::<u8>(), 0..20),
                ),
                0..3,
            ),
        )
            .prop_map(
                |(path, (uid, gid, mtime, nsec, size, sparse), chunks, xattrs)| {
                    let mut e = Entry::new(path, Kind::File);
                    e.mode = uid & 0o7777;
                    e.uid = uid;
                    e.gid = gid;
                    e.mtime = mtime;
                    e.mtime_nsec = nsec % 1_000_000_000;
                    e.size = size;
                    e.sparse = sparse;
                    e.chunks = chunks.into_iter().map(ChunkId).collect();
                    e.xattrs = xattrs;
                    e
                },
            )
    }

    proptest! {
        #[test]
        fn serialize_parse_round_trip(mut entries in proptest::collection::vec(arb_entry(), 0..20)) {
            // Make the paths unique and flat so parents need not exist.
            for (i, e) in entries.iter_mut().enumerate() {
                e.path.retain(|&b| b != b'/');
                e.path.extend_from_slice(format!("-{i}").as_bytes());
            }
            let mut root = Entry::new(Vec::new(), Kind::Dir);
            root.mode = 0o755;
            let tree = Tree { root, entries };
            let bytes = tree.serialize().expect("serialize");
            prop_assert_eq!(Tree::parse(&bytes).expect("parse"), tree.clone());

            // Streamed out in pieces and read back entry by entry: the same tree.
            let mut w = TreeWriter::new(&tree.root);
            let mut streamed = Vec::new();
            for e in &tree.entries {
                w.push(e).expect("push");
                streamed.extend(w.take());
            }
            streamed.extend(w.finish());
            prop_assert_eq!(&streamed, &bytes);
            let (root, mut r) = EntryReader::new(&bytes[..]).expect("header");
            prop_assert_eq!(&root, &tree.root);
            let mut read = Vec::new();
            while let Some(e) = r.next_entry().expect("entry") {
                read.push(e);
            }
            prop_assert_eq!(read, tree.entries);
        }
    }

    /// Paths with a kind and a hardlink target's pick; how to break the tree, and where.
    type TreeSpec = (Vec<(Vec<u8>, u8, usize)>, u8, usize);

    /// Random trees over a few names, in walk order with every parent, then as often as
    /// not broken in one place: two entries swapped, one twice, a directory dropped from
    /// under its children, a hardlink pointing ahead or nowhere.
    fn arb_tree() -> impl Strategy<Value = TreeSpec> {
        let name = proptest::sample::select(vec!["a", "b", "a.b", "c"]);
        let path = proptest::collection::vec(name, 1..4).prop_map(|p| p.join("/").into_bytes());
        (
            proptest::collection::vec((path, 0u8..3, any::<usize>()), 0..16),
            0u8..8,
            any::<usize>(),
        )
    }

    fn build((specs, break_how, at): TreeSpec) -> Vec<u8> {
        // Every proper prefix of a path is a directory; the rest are what they say.
        let mut dirs = std::collections::BTreeSet::new();
        for (path, _, _) in &specs {
            for (i, &c) in path.iter().enumerate() {
                if c == b'/' {
                    dirs.insert(path[..i].to_vec());
                }
            }
        }
        let mut entries: Vec<Entry> = dirs
            .iter()
            .map(|d| Entry::new(d.clone(), Kind::Dir))
            .collect();
        for (path, kind, _) in &specs {
            if !dirs.contains(path) && !entries.iter().any(|e| &e.path == path) {
                let kind = [Kind::Dir, Kind::File, Kind::Hardlink][usize::from(*kind)];
                entries.push(Entry::new(path.clone(), kind));
            }
        }
        entries.sort_by(|a, b| crate::walk::tree_order(&a.path, &b.path));
        for i in 0..entries.len() {
            if entries[i].kind == Kind::Hardlink {
                match specs.get(i).map(|s| s.2 % i.max(1)) {
                    Some(t) if i > 0 => entries[i].target = entries[t].path.clone(),
                    _ => entries[i].kind = Kind::File,
                }
            }
        }
        let n = entries.len();
        if n > 1 {
            let i = at % (n - 1);
            match break_how {
                4 => entries.swap(i, i + 1),
                5 => {
                    let twice = entries[i].clone();
                    entries.insert(i + 1, twice);
                }
                6 => {
                    if let Some(d) = (0..n)
                        .map(|k| (i + k) % n)
                        .find(|&k| entries[k].kind == Kind::Dir)
                    {
                        entries.remove(d);
                    }
                }
                7 => {
                    entries[i].kind = Kind::Hardlink;
                    entries[i].target = match at % 2 {
                        0 => entries[i + 1].path.clone(),
                        _ => b"zz".to_vec(),
                    };
                }
                _ => {}
            }
        }
        let mut w = TreeWriter::new(&Entry::new(Vec::new(), Kind::Dir));
        for e in &entries {
            w.push(e).expect("push");
        }
        w.finish()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn a_tree_file_takes_exactly_the_parsed_trees_in_walk_order(spec in arb_tree()) {
            let bytes = build(spec);
            let parsed = Tree::parse(&bytes).and_then(|t| t.check_walk_order().map(|()| t));
            let mut f = tempfile::tempfile().expect("tempfile");
            std::io::Write::write_all(&mut f, &bytes).expect("write");
            match (TreeFile::open(f), parsed) {
                (Ok(file), Ok(tree)) => {
                    prop_assert_eq!(file.root(), &tree.root);
                    for _ in 0..2 {
                        let read: Vec<Entry> =
                            file.entries().expect("entries").collect::<Result<_>>().expect("read");
                        prop_assert_eq!(&read, &tree.entries);
                    }
                    let files = tree.entries.iter().filter(|e| e.kind == Kind::File).count();
                    prop_assert_eq!(file.files().0, files as u64);
                }
                (Err(a), Err(b)) => {
                    prop_assert!(matches!(a, Error::CorruptTree(_)), "{a}");
                    prop_assert!(matches!(b, Error::CorruptTree(_)), "{b}");
                }
                (a, b) => prop_assert!(false, "tree file {:?}, parse {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }
    }

    /// A stream cut inside an entry is an error, never a shorter tree; cut between
    /// entries it reads as the entries before the cut (a stream cannot know more).
    #[test]
    fn a_stream_cut_inside_an_entry_is_an_error() {
        let mut root = Entry::new(Vec::new(), Kind::Dir);
        root.mode = 0o755;
        let mut a = Entry::new(b"file".to_vec(), Kind::File);
        a.chunks = vec![ChunkId([7; 32]); 3];
        let b = Entry {
            path: b"other".to_vec(),
            ..a.clone()
        };
        let mut w = TreeWriter::new(&root);
        let mut bytes = w.take();
        let mut boundaries = vec![(bytes.len(), 0)];
        for (n, e) in [&a, &b].into_iter().enumerate() {
            w.push(e).expect("push");
            bytes.extend(w.take());
            boundaries.push((bytes.len(), n + 1));
        }
        for cut in 0..=bytes.len() {
            let read = EntryReader::new(&bytes[..cut]).and_then(|(_, mut r)| {
                let mut n = 0;
                while r.next_entry()?.is_some() {
                    n += 1;
                }
                Ok(n)
            });
            match boundaries.iter().find(|(at, _)| *at == cut) {
                Some((_, n)) => assert_eq!(read.ok(), Some(*n), "cut at {cut}"),
                None => assert!(
                    matches!(read, Err(Error::CorruptTree(_))),
                    "cut at {cut} read {read:?}"
                ),
            }
        }
    }
}
