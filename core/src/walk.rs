//! Reading a source directory into tree entries (metadata only; file contents are read by
//! the backup pipeline).
//!
//! Symlinks are recorded, never followed. The walk is depth first with names sorted
//! bytewise, so the same tree always serializes to the same bytes. The second and later
//! paths of an inode with several links become [`Kind::Hardlink`] entries pointing at the
//! first. Entries that vanish or cannot be read during the walk are reported as warnings
//! and left out; the walk goes on.

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

/// Walks `root` (which must be a directory).
pub fn scan(root: &Path) -> Result<Walk> {
    let meta = fs::symlink_metadata(root).ctx(|| format!("reading source {}", root.display()))?;
    if !meta.is_dir() {
        return Err(crate::Error::io(
            format!("source {}", root.display()),
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "is not a directory"),
        ));
    }
    let mut root_entry = entry_from_meta(Vec::new(), &meta);
    root_entry.xattrs = read_xattrs(root).unwrap_or_default();
    let mut w = Walker {
        entries: Vec::new(),
        warnings: Vec::new(),
        links: HashMap::new(),
    };
    w.walk_dir(root, &[])?;
    Ok(Walk {
        root: root_entry,
        entries: w.entries,
        warnings: w.warnings,
    })
}

struct Walker {
    entries: Vec<Entry>,
    warnings: Vec<String>,
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl Walker {
    fn walk_dir(&mut self, dir: &Path, rel: &[u8]) -> Result<()> {
        let mut names: Vec<std::ffi::OsString> = match fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) if rel.is_empty() => {
                return Err(crate::Error::io(format!("listing {}", dir.display()), e));
            }
            Err(e) => {
                self.warnings.push(format!("{}: {e}", dir.display()));
                return Ok(());
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let mut rel_path = rel.to_vec();
            if !rel_path.is_empty() {
                rel_path.push(b'/');
            }
            rel_path.extend_from_slice(name.as_bytes());
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.warnings.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            match self.entry(&path, rel_path.clone(), &meta) {
                Ok(e) => {
                    let is_dir = e.kind == Kind::Dir;
                    self.entries.push(e);
                    if is_dir {
                        self.walk_dir(&path, &rel_path)?;
                    }
                }
                Err(e) => self.warnings.push(format!("{}: {e}", path.display())),
            }
        }
        Ok(())
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
        e.xattrs = read_xattrs(path)?;
        Ok(e)
    }
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
