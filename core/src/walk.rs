//! Reading a source directory into tree entries (metadata only; file contents are read by
//! the backup pipeline).
//!
//! Symlinks are recorded, never followed. The walk is depth first with names sorted
//! bytewise, so the same tree always serializes to the same bytes. The second and later
//! paths of an inode with several links become [`Kind::Hardlink`] entries pointing at the
//! first. Entries that vanish or cannot be read during the walk are reported as warnings
//! and left out; the walk goes on. A directory that is one of its own ancestors (a bind
//! mount of a parent below it) is kept empty with a warning, so a cycle ends the descent.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::Result;
use crate::error::IoContext;
use crate::tree::{Entry, Kind};

/// The result of walking a source.
pub struct Walk {
    pub root: Entry,
    pub entries: Vec<Entry>,
    /// Paths that could not be read, with the reason.
    pub warnings: Vec<String>,
}

/// Walks `root` (which must be a directory) into a list. A backup streams the
/// [`Walker`] instead, so that its memory does not grow with the source.
pub fn scan(root: &Path) -> Result<Walk> {
    let (root_entry, mut w) = Walker::new(root)?;
    let entries = w.by_ref().collect();
    Ok(Walk {
        root: root_entry,
        entries,
        warnings: w.warnings,
    })
}

/// The walk as an iterator: entries come out in tree order, one directory listing per
/// level of depth held at a time.
pub struct Walker {
    /// The directories being listed, outermost first.
    stack: Vec<Listing>,
    /// The first path of every inode with several links seen so far.
    links: HashMap<(u64, u64), Vec<u8>>,
    xattrs: bool,
    /// Paths that could not be read, with the reason.
    pub warnings: Vec<String>,
}

struct Listing {
    dir: PathBuf,
    /// The directory's device and inode: a directory below it with the same is a cycle.
    id: (u64, u64),
    rel: Vec<u8>,
    /// Its names, sorted, and how many of them the walk has taken.
    names: crate::names::Names,
    next: usize,
}

impl Walker {
    /// Starts a walk of `root` (which must be a directory): its own entry, and the walker
    /// of everything below it.
    pub fn new(root: &Path) -> Result<(Entry, Walker)> {
        let meta =
            fs::symlink_metadata(root).ctx(|| format!("reading source {}", root.display()))?;
        if !meta.is_dir() {
            return Err(crate::Error::io(
                format!("source {}", root.display()),
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "is not a directory"),
            ));
        }
        let mut root_entry = entry_from_meta(Vec::new(), &meta);
        root_entry.xattrs = read_xattrs(root).unwrap_or_default();
        let (names, broke) = list(root).ctx(|| format!("listing {}", root.display()))?;
        let warnings = broke
            .map(|err| broke_off(root, names.len(), &err))
            .into_iter()
            .collect();
        let w = Walker {
            stack: vec![Listing {
                dir: root.to_path_buf(),
                id: (meta.dev(), meta.ino()),
                rel: Vec::new(),
                names,
                next: 0,
            }],
            links: HashMap::new(),
            xattrs: true,
            warnings,
        };
        Ok((root_entry, w))
    }

    /// Leaves extended attributes unread (a walk that only counts).
    pub fn without_xattrs(mut self) -> Self {
        self.xattrs = false;
        self
    }

    fn entry(&mut self, path: &Path, rel: Vec<u8>, meta: &Metadata) -> Result<Entry> {
        let mut e = entry_from_meta(rel, meta);
        if e.kind != Kind::Dir && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                e.kind = Kind::Hardlink;
                e.target = first.clone();
                e.size = 0;
                return Ok(e);
            }
            self.links.insert(key, e.path.clone());
        }
        if e.kind == Kind::Symlink {
            e.target = fs::read_link(path)
                .ctx(|| format!("reading link {}", path.display()))?
                .into_os_string()
                .into_vec();
        }
        if self.xattrs {
            e.xattrs = read_xattrs(path)?;
        }
        Ok(e)
    }
}

impl Iterator for Walker {
    type Item = Entry;

    /// The next entry in tree order. Paths that vanish or cannot be read are left out
    /// (and noted in `warnings`); a directory that cannot be listed is kept, empty.
    fn next(&mut self) -> Option<Entry> {
        loop {
            let top = self.stack.last_mut()?;
            if top.next == top.names.len() {
                self.stack.pop();
                continue;
            }
            let name = OsStr::from_bytes(top.names.get(top.next)).to_os_string();
            top.next += 1;
            let path = top.dir.join(&name);
            let mut rel = top.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.warnings.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let e = match self.entry(&path, rel, &meta) {
                Ok(e) => e,
                Err(e) => {
                    self.warnings.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if e.kind == Kind::Dir {
                let id = (meta.dev(), meta.ino());
                if let Some(same) = self.stack.iter().find(|l| l.id == id) {
                    self.warnings.push(format!(
                        "{}: the same directory as {} above it (a bind mount of a parent, or a file system loop): kept empty, not descended",
                        path.display(),
                        same.dir.display()
                    ));
                    return Some(e);
                }
                match list(&path) {
                    Ok((names, broke)) => {
                        if let Some(err) = broke {
                            self.warnings.push(broke_off(&path, names.len(), &err));
                        }
                        self.stack.push(Listing {
                            dir: path,
                            id,
                            rel: e.path.clone(),
                            names,
                            next: 0,
                        })
                    }
                    Err(err) => self.warnings.push(format!("{}: {err}", path.display())),
                }
            }
            return Some(e);
        }
    }
}

/// The warning for a directory whose listing broke off after `n` names.
fn broke_off(dir: &Path, n: usize, err: &std::io::Error) -> String {
    format!(
        "{}: listing the directory broke off after {n} names ({err}): the rest of it is not in this snapshot",
        dir.display()
    )
}

/// A directory's names, sorted bytewise, and the error a listing broke off with (a
/// failing disk, a stale NFS handle): the names read before it are kept, the error is the
/// caller's to report (it was dropped silently before).
fn list(dir: &Path) -> std::io::Result<(crate::names::Names, Option<std::io::Error>)> {
    let mut names = crate::names::Names::new();
    let mut broke = None;
    for e in fs::read_dir(dir)? {
        match e {
            Ok(e) => names.push(e.file_name().as_bytes()),
            Err(err) => {
                broke = Some(err);
                break;
            }
        }
    }
    names.sort();
    Ok((names, broke))
}

/// The order of paths in a walk and in a tree: component by component, names compared
/// bytewise, a directory before everything beneath it ("a", "a/b", "a.txt").
pub fn tree_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

use std::os::unix::ffi::OsStringExt;

/// Builds an entry from `lstat` metadata.
pub fn entry_from_meta(path: Vec<u8>, m: &Metadata) -> Entry {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else {
        Kind::Socket
    };
    let mut e = Entry::new(path, kind);
    e.mode = m.mode() & 0o7777;
    e.uid = m.uid();
    e.gid = m.gid();
    e.mtime = m.mtime();
    e.mtime_nsec = m.mtime_nsec() as u32;
    e.ctime = m.ctime();
    e.ctime_nsec = m.ctime_nsec() as u32;
    e.ino = m.ino();
    e.dev = m.dev();
    e.rdev = if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
        m.rdev()
    } else {
        0
    };
    if kind == Kind::File {
        e.size = m.len();
        // Fewer allocated blocks than the length means holes.
        e.sparse = m.len() > 0 && m.blocks().saturating_mul(512) < m.len();
    }
    e
}

/// Reads all extended attributes of `path` (not following a symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let unsupported =
        |e: rustix::io::Errno| e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::OPNOTSUPP;
    let mut list = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(e) if e == rustix::io::Errno::RANGE => {
                let want = rustix::fs::llistxattr_query(path)
                    .ctx(|| format!("listing xattrs of {}", path.display()))?;
                list.resize(want.max(list.len() * 2), 0);
            }
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => {
                return Err(crate::Error::io(
                    format!("listing xattrs of {}", path.display()),
                    e.into(),
                ));
            }
        }
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; 65536];
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value[..]) {
            Ok(len) => out.push((name.to_vec(), value[..len].to_vec())),
            // Removed between list and get: skip it.
            Err(e) if e == rustix::io::Errno::NODATA => {}
            Err(e) => {
                return Err(crate::Error::io(
                    format!("reading xattr of {}", path.display()),
                    e.into(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The absolute path of a walk entry.
pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_order_is_the_walk_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["a", "a/b", "a-b", "ab"] {
            fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        for f in ["a.txt", "a/b/c", "a/z", "a-b/x", "a0", "b"] {
            fs::write(dir.path().join(f), b"x").expect("write");
        }
        let walked: Vec<Vec<u8>> = scan(dir.path())
            .expect("scan")
            .entries
            .into_iter()
            .map(|e| e.path)
            .collect();
        let expected: Vec<&[u8]> = vec![
            b"a", b"a/b", b"a/b/c", b"a/z", b"a-b", b"a-b/x", b"a.txt", b"a0", b"ab", b"b",
        ];
        assert_eq!(walked, expected);
        let mut sorted = walked.clone();
        sorted.sort_by(|x, y| tree_order(x, y));
        assert_eq!(
            sorted, walked,
            "tree_order sorts paths as the walk emits them"
        );
        // Bytewise order of full paths differs: "a-b" < "a.txt" < "a/b".
        let mut bytewise = walked.clone();
        bytewise.sort();
        assert_ne!(bytewise, walked);
    }
}
