//! Safe restore: writing a tree back under a directory handle.
//!
//! Guarantees, in the order they are enforced:
//! 1. Every path in the tree was validated when the tree was parsed (no `..`, no absolute
//!    path, no empty component, no NUL) — before any I/O.
//! 2. Every directory is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//!    relative to the target's handle: a symlink already present in the target (planted or
//!    not) is never followed, and nothing can be written outside the target. A pre-flight
//!    pass refuses the whole restore, before writing anything, if the target holds a
//!    symlink where the tree has a directory.
//! 3. A file is written to a temp name in its final directory, every chunk is checked
//!    against its id, the length and chunk list against the recorded content hash, metadata is applied,
//!    and only then is it renamed into place. A file that fails verification is removed
//!    and reported; the other files still restore.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::IoContext;
use crate::tree::{Entry, Kind, Tree};
use crate::{ChunkId, ChunkKey, Error, Result, codec};

/// Where restore gets chunk blobs from (the agent implements it over gRPC).
pub trait ChunkSource {
    /// Returns the encoded blobs of `ids`, in the same order. The restore verifies them.
    fn fetch(&mut self, ids: &[ChunkId]) -> Result<Vec<Vec<u8>>>;
}

/// What the restore may do beyond writing content.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Restore uid/gid (needs root).
    pub owners: bool,
    /// Recreate device nodes (needs root). FIFOs are always recreated.
    pub devices: bool,
}

impl Options {
    /// Owners and device nodes when running as root, neither otherwise.
    pub fn for_current_user() -> Self {
        let root = rustix::process::geteuid().is_root();
        Options {
            owners: root,
            devices: root,
        }
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub special: u64,
    pub bytes: u64,
    /// Entries that could not be restored, with the reason. Nothing of them is left in place.
    pub failed: Vec<(String, String)>,
    /// Entries deliberately not restored (device nodes without root), with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Chunks fetched per request while writing a file.
const FETCH_BATCH: usize = 8;
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens (creating as needed) `target` for restoring, where `target` must lie inside
/// `root`. `root` is the agent's configured restore root and is trusted; every component
/// below it is created or opened without following symlinks.
pub fn open_target(root: &Path, target: &Path) -> Result<OwnedFd> {
    let rel = target.strip_prefix(root).map_err(|_| Error::UnsafePath {
        path: target.display().to_string(),
        reason: "not inside the restore root",
    })?;
    let mut dir: OwnedFd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening restore root {}", root.display()))?;
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return Err(Error::UnsafePath {
                path: target.display().to_string(),
                reason: "`..` or `.` in restore target",
            });
        };
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(Error::io(
                    format!("creating {}", target.display()),
                    e.into(),
                ));
            }
        }
        dir = rustix::fs::openat2(
            &dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| resolve_error(e, &target.display().to_string()))?;
    }
    Ok(dir)
}

fn resolve_error(e: Errno, path: &str) -> Error {
    if e == Errno::LOOP || e == Errno::XDEV || e == Errno::NOTDIR {
        Error::SymlinkInTarget {
            path: path.to_owned(),
        }
    } else {
        Error::io(format!("opening {path} in the restore target"), e.into())
    }
}

/// Restores `tree` into the directory `target` (from [`open_target`]).
pub fn restore(
    tree: &Tree,
    key: &ChunkKey,
    target: &OwnedFd,
    source: &mut dyn ChunkSource,
    opts: Options,
    progress: &mut dyn FnMut(&Report),
) -> Result<Report> {
    let mut r = Restorer {
        key,
        target,
        opts,
        source,
        cached: None,
        report: Report::default(),
        failed: HashSet::new(),
        tmp_seq: 0,
        tmp_tag: hex::encode(crate::sign::random_bytes::<4>()?),
    };
    r.preflight(tree)?;
    for e in &tree.entries {
        match r.entry(e) {
            Ok(()) => {}
            Err(err) if is_per_file(&err) => {
                r.failed.insert(e.path.clone());
                r.report.failed.push((e.display_path(), err.to_string()));
            }
            Err(err) => return Err(err),
        }
        progress(&r.report);
    }
    // Directory metadata last, deepest first, so that writing children does not change a
    // directory's mtime after it was set and read-only modes do not block the restore.
    for e in tree.entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        if r.failed.contains(&e.path) {
            continue;
        }
        let dir = r.open_dir(&e.path)?;
        r.apply_fd_meta(&dir, e).map_err(|err| {
            Error::io(
                format!("setting metadata of {}", e.display_path()),
                err.into(),
            )
        })?;
    }
    r.apply_fd_meta(target, &tree.root)
        .map_err(|e| Error::io("setting metadata of the restore target", e.into()))?;
    rustix::fs::syncfs(target).ctx(|| "syncing the restored file system".into())?;
    Ok(r.report)
}

/// Failures confined to one entry; anything else (network, disk full, hostile target)
/// aborts the restore.
fn is_per_file(e: &Error) -> bool {
    matches!(
        e,
        Error::ChunkMismatch { .. } | Error::CorruptBlob(_) | Error::ContentMismatch { .. }
    )
}

struct Restorer<'a> {
    key: &'a ChunkKey,
    target: &'a OwnedFd,
    opts: Options,
    source: &'a mut dyn ChunkSource,
    cached: Option<(Vec<u8>, OwnedFd)>,
    report: Report,
    failed: HashSet<Vec<u8>>,
    tmp_seq: u64,
    tmp_tag: String,
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn os(b: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(b)
}

impl Restorer<'_> {
    /// Refuses the restore before any write if a directory of the tree is a symlink (or
    /// lies under one) in the target.
    fn preflight(&mut self, tree: &Tree) -> Result<()> {
        for e in tree.entries.iter().filter(|e| e.kind == Kind::Dir) {
            let (parent, name) = split(&e.path);
            let dir = match self.open_dir(parent) {
                Ok(d) => d,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(err) => return Err(err),
            };
            match rustix::fs::statat(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    return Err(Error::SymlinkInTarget {
                        path: e.display_path(),
                    });
                }
                _ => {}
            }
        }
        self.cached = None;
        Ok(())
    }

    /// Opens a directory of the target by its relative path, never following symlinks.
    fn open_dir(&mut self, rel: &[u8]) -> Result<OwnedFd> {
        if let Some((p, fd)) = &self.cached
            && p == rel
        {
            return fd
                .try_clone()
                .ctx(|| "duplicating a directory handle".into());
        }
        let fd = if rel.is_empty() {
            self.target
                .try_clone()
                .ctx(|| "duplicating the target handle".into())?
        } else {
            rustix::fs::openat2(
                self.target,
                os(rel),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(|e| resolve_error(e, &String::from_utf8_lossy(rel)))?
        };
        self.cached = Some((
            rel.to_vec(),
            fd.try_clone()
                .ctx(|| "duplicating a directory handle".into())?,
        ));
        Ok(fd)
    }

    fn tmp_name(&mut self) -> String {
        self.tmp_seq += 1;
        format!(".lifeboat-{}-{}.tmp", self.tmp_tag, self.tmp_seq)
    }

    fn entry(&mut self, e: &Entry) -> Result<()> {
        let (parent, name) = split(&e.path);
        if self.failed.contains(parent) {
            return Err(Error::io(
                e.display_path(),
                std::io::Error::other("parent directory was not restored"),
            ));
        }
        let dir = self.open_dir(parent)?;
        match e.kind {
            Kind::Dir => self.dir(&dir, e, name),
            Kind::File => self.file(&dir, e, name),
            Kind::Symlink => {
                let tmp = self.tmp_name();
                rustix::fs::symlinkat(os(&e.target), &dir, tmp.as_str())
                    .ctx(|| format!("creating symlink {}", e.display_path()))?;
                self.finish_at(&dir, &tmp, name, e, false)
            }
            Kind::Hardlink => {
                if self.failed.contains(&e.target) {
                    return Err(Error::ContentMismatch {
                        path: e.display_path(),
                    });
                }
                let (tparent, tname) = split(&e.target);
                let tdir = self.open_dir(tparent)?;
                let tmp = self.tmp_name();
                rustix::fs::linkat(&tdir, os(tname), &dir, tmp.as_str(), AtFlags::empty())
                    .ctx(|| format!("linking {}", e.display_path()))?;
                rename(&dir, &tmp, name, e)?;
                self.report.links += 1;
                Ok(())
            }
            Kind::Fifo | Kind::CharDevice | Kind::BlockDevice | Kind::Socket => {
                let ft = match e.kind {
                    Kind::Fifo => FileType::Fifo,
                    Kind::CharDevice => FileType::CharacterDevice,
                    Kind::BlockDevice => FileType::BlockDevice,
                    _ => FileType::Socket,
                };
                if matches!(e.kind, Kind::CharDevice | Kind::BlockDevice) && !self.opts.devices {
                    self.report.skipped.push((
                        e.display_path(),
                        "device nodes are recreated only when restoring as root".into(),
                    ));
                    return Ok(());
                }
                let tmp = self.tmp_name();
                rustix::fs::mknodat(
                    &dir,
                    tmp.as_str(),
                    ft,
                    Mode::from_raw_mode(e.mode & 0o777),
                    e.rdev,
                )
                .ctx(|| format!("creating {} {}", e.kind.name(), e.display_path()))?;
                self.finish_at(&dir, &tmp, name, e, true)
            }
        }
    }

    fn dir(&mut self, parent: &OwnedFd, e: &Entry, name: &[u8]) -> Result<()> {
        match rustix::fs::mkdirat(parent, os(name), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW)
                    .ctx(|| format!("stat {}", e.display_path()))?;
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {}
                    FileType::Symlink => {
                        return Err(Error::SymlinkInTarget {
                            path: e.display_path(),
                        });
                    }
                    _ => {
                        rustix::fs::unlinkat(parent, os(name), AtFlags::empty())
                            .ctx(|| format!("replacing {}", e.display_path()))?;
                        rustix::fs::mkdirat(parent, os(name), Mode::from_raw_mode(0o700))
                            .ctx(|| format!("creating {}", e.display_path()))?;
                    }
                }
            }
            Err(err) => {
                return Err(Error::io(
                    format!("creating directory {}", e.display_path()),
                    err.into(),
                ));
            }
        }
        self.report.dirs += 1;
        Ok(())
    }

    fn file(&mut self, dir: &OwnedFd, e: &Entry, name: &[u8]) -> Result<()> {
        let tmp = self.tmp_name();
        let fd = rustix::fs::openat2(
            dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
            RESOLVE,
        )
        .ctx(|| format!("creating {}", e.display_path()))?;
        let file = File::from(fd);
        let written = self.write_content(&file, e).and_then(|()| {
            self.apply_fd_meta(&file, e).map_err(|err| {
                Error::io(
                    format!("setting metadata of {}", e.display_path()),
                    err.into(),
                )
            })
        });
        if let Err(err) = written {
            let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
            return Err(err);
        }
        drop(file);
        rename(dir, &tmp, name, e)?;
        self.report.files += 1;
        self.report.bytes += e.size;
        Ok(())
    }

    fn write_content(&mut self, file: &File, e: &Entry) -> Result<()> {
        let mut offset = 0u64;
        for batch in e.chunks.chunks(FETCH_BATCH) {
            let blobs = self.source.fetch(batch)?;
            if blobs.len() != batch.len() {
                return Err(Error::io(
                    e.display_path(),
                    std::io::Error::other("chunk source returned the wrong number of chunks"),
                ));
            }
            for (id, blob) in batch.iter().zip(blobs) {
                let data = codec::decode_verified(self.key, id, &blob)?;
                write_at(file, &data, offset, e.sparse)
                    .ctx(|| format!("writing {}", e.display_path()))?;
                offset += data.len() as u64;
            }
        }
        if offset != e.size || self.key.content_hash(offset, &e.chunks) != e.content_hash {
            return Err(Error::ContentMismatch {
                path: e.display_path(),
            });
        }
        file.set_len(offset)
            .ctx(|| format!("sizing {}", e.display_path()))?;
        Ok(())
    }

    /// Owner, mode, xattrs and times through an open handle (files and directories).
    fn apply_fd_meta<Fd: AsFd>(&self, fd: Fd, e: &Entry) -> rustix::io::Result<()> {
        if self.opts.owners {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
            )?;
        }
        // After chown: chown clears setuid/setgid.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode))?;
        for (k, v) in &e.xattrs {
            match rustix::fs::fsetxattr(&fd, os(k), v, rustix::fs::XattrFlags::empty()) {
                // trusted.* and security.* need privileges; user.* may be unsupported.
                Ok(()) | Err(Errno::PERM) | Err(Errno::NOTSUP) => {}
                Err(err) => return Err(err),
            }
        }
        rustix::fs::futimens(&fd, &times(e))
    }

    /// Metadata by name (symlinks, special files), then rename into place.
    fn finish_at(
        &mut self,
        dir: &OwnedFd,
        tmp: &str,
        name: &[u8],
        e: &Entry,
        chmod: bool,
    ) -> Result<()> {
        let res = (|| -> rustix::io::Result<()> {
            if self.opts.owners {
                rustix::fs::chownat(
                    dir,
                    tmp,
                    Some(rustix::fs::Uid::from_raw(e.uid)),
                    Some(rustix::fs::Gid::from_raw(e.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            if chmod {
                rustix::fs::chmodat(dir, tmp, Mode::from_raw_mode(e.mode), AtFlags::empty())?;
            }
            rustix::fs::utimensat(dir, tmp, &times(e), AtFlags::SYMLINK_NOFOLLOW)
        })();
        if let Err(err) = res {
            let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
            return Err(Error::io(
                format!("setting metadata of {}", e.display_path()),
                err.into(),
            ));
        }
        rename(dir, tmp, name, e)?;
        if e.kind == Kind::Symlink {
            self.report.links += 1;
        } else {
            self.report.special += 1;
        }
        Ok(())
    }
}

fn rename(dir: &OwnedFd, tmp: &str, name: &[u8], e: &Entry) -> Result<()> {
    rustix::fs::renameat(dir, tmp, dir, os(name)).map_err(|err| {
        let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
        Error::io(
            format!("moving {} into place", e.display_path()),
            err.into(),
        )
    })
}

fn times(e: &Entry) -> Timestamps {
    let t = Timespec {
        tv_sec: e.mtime,
        tv_nsec: e.mtime_nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Writes `data` at `offset`; when `sparse`, runs of zero 4 KiB blocks are skipped so the
/// file keeps its holes (the final `set_len` covers a trailing hole).
fn write_at(file: &File, data: &[u8], offset: u64, sparse: bool) -> std::io::Result<()> {
    if !sparse {
        return file.write_all_at(data, offset);
    }
    const BLOCK: usize = 4096;
    let mut start = 0;
    while start < data.len() {
        let end = (start + BLOCK).min(data.len());
        if data[start..end].iter().any(|&b| b != 0) {
            // Extend the run over following non-zero blocks.
            let mut run_end = end;
            while run_end < data.len() {
                let next = (run_end + BLOCK).min(data.len());
                if data[run_end..next].iter().all(|&b| b == 0) {
                    break;
                }
                run_end = next;
            }
            file.write_all_at(&data[start..run_end], offset + start as u64)?;
            start = run_end;
        } else {
            start = end;
        }
    }
    Ok(())
}
