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
//!
//! Two choices change what happens to what the target already holds:
//! - [`Mode::Repair`] hashes a file already in place (same chunker, same keyed ids) and
//!   leaves it alone when its content matches the snapshot, fixing only metadata that
//!   differs; files that differ are rewritten as above. The report names every modified
//!   and missing file.
//! - `delete_extra` removes whatever the target holds that the snapshot does not
//!   (through directory handles, never following a symlink), so the target ends exactly
//!   as the snapshot. Without it, extra entries are only reported as planted.
//!
//! One file because the guarantees above hold only together: each write path (file,
//! directory, symlink, device, the repair scan, the deletion of extras) goes through the
//! same directory handles and the same verify-then-rename, and reading them side by side
//! is how a reviewer checks that none of them opens a path another way.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode as Perm, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::codec::Verified;
use crate::error::IoContext;
use crate::names::Names;
use crate::tree::{Entry, Kind, TreeFile};
use crate::{ChunkId, ChunkKey, Error, Result};

/// Where restore gets chunks from (the agent implements it over gRPC, decoding and
/// verifying on other threads than the one that writes).
pub trait ChunkSource {
    /// Returns the chunks `ids`, in the same order, each verified against its id. The
    /// restore checks that each is the one it asked for.
    fn fetch(&mut self, ids: &[ChunkId]) -> Result<Vec<Verified>>;
}

/// How files already in the target are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Write every file of the snapshot.
    #[default]
    Replace,
    /// Hash files in place and rewrite only those that differ.
    Repair,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "" | "replace" => Ok(Mode::Replace),
            "repair" => Ok(Mode::Repair),
            other => Err(Error::Invalid(format!(
                "restore mode {other:?}: expected \"replace\" or \"repair\""
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Replace => "replace",
            Mode::Repair => "repair",
        }
    }
}

/// What the restore may do beyond writing content.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Restore uid/gid (needs root).
    pub owners: bool,
    /// Recreate device nodes (needs root). FIFOs are always recreated.
    pub devices: bool,
    /// Keep setuid/setgid bits and file capabilities (`security.capability`). Off for a
    /// snapshot of another machine unless the operator asks: those bits are privileges
    /// the snapshot's author would hand itself on the machine restored to.
    pub privileges: bool,
    pub mode: Mode,
    /// Remove entries the snapshot does not have.
    pub delete_extra: bool,
}

impl Options {
    /// Owners and device nodes when running as root, neither otherwise.
    pub fn for_current_user() -> Self {
        let root = rustix::process::geteuid().is_root();
        Options {
            owners: root,
            devices: root,
            privileges: true,
            mode: Mode::Replace,
            delete_extra: false,
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
    /// Repair mode: files that were in place but differed (rewritten; a file whose content
    /// matched but whose metadata differed is listed too, and only its metadata is fixed).
    pub modified: Vec<String>,
    /// Files of the snapshot that were not in place (repair mode).
    pub missing: Vec<String>,
    /// Entries in the target that the snapshot does not have (removed when
    /// `delete_extra`).
    pub planted: Vec<String>,
    /// Files left untouched because they matched (repair mode).
    pub unchanged: u64,
    /// Bytes of file content written.
    pub bytes_written: u64,
}

/// The extended attribute that holds a file's capabilities.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

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
        Perm::empty(),
    )
    .ctx(|| format!("opening restore root {}", root.display()))?;
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return Err(Error::UnsafePath {
                path: target.display().to_string(),
                reason: "`..` or `.` in restore target",
            });
        };
        match rustix::fs::mkdirat(&dir, name, Perm::from_raw_mode(0o700)) {
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
            Perm::empty(),
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

/// Repair mode, first pass: the paths of the tree's regular files whose content in the
/// target is already the snapshot's (same size, same chunk ids: the backup's chunker and
/// keyed hash). Read-only. A caller that fetches chunks ahead fetches only the others.
pub fn repair_scan(tree: &TreeFile, key: &ChunkKey, target: &OwnedFd) -> Result<HashSet<Vec<u8>>> {
    let mut same = HashSet::new();
    for e in tree.entries()? {
        let e = e?;
        if e.kind != Kind::File {
            continue;
        }
        let fd = match rustix::fs::openat2(
            target,
            os(&e.path),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Perm::empty(),
            RESOLVE,
        ) {
            Ok(fd) => fd,
            // Missing, a symlink, under a symlink, not a file: not the snapshot's.
            Err(_) => continue,
        };
        let st = rustix::fs::fstat(&fd).ctx(|| format!("stat {}", e.display_path()))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_size as u64 == e.size
            && content_matches(key, fd, &e)?
        {
            same.insert(e.path);
        }
    }
    Ok(same)
}

/// Whether an open file holds exactly `e`'s content.
fn content_matches(key: &ChunkKey, fd: OwnedFd, e: &Entry) -> Result<bool> {
    let file = File::from(fd);
    let holes = crate::chunker::holes(&file)
        .ctx(|| format!("finding the holes of {}", e.display_path()))?;
    let zero = (!holes.is_empty()).then(|| key.zero_chunk_id());
    let mut n = 0usize;
    for chunk in crate::chunker::Chunker::new(file).with_holes(holes) {
        let chunk = chunk?;
        let id = match (chunk.is_zeros(), zero) {
            (true, Some(zero)) => zero,
            _ => key.id_of(&chunk),
        };
        if e.chunks.get(n) != Some(&id) {
            return Ok(false);
        }
        n += 1;
    }
    Ok(n == e.chunks.len())
}

/// Restores `tree` into the directory `target` (from [`open_target`]). In repair mode,
/// `same` is the result of [`repair_scan`]: those files are left in place (their metadata
/// fixed if it differs) and their chunks never fetched.
///
/// The tree is read entry by entry, in walk order, in three passes (the symlink check,
/// `delete_extra`'s type conflicts, the writes); what the restore holds is the chain of
/// directories it is inside, each with the names restored in it so far. A directory is
/// closed when the walk leaves it: what it holds beyond the snapshot is reported (and
/// removed with `delete_extra`), then its metadata is set, so that writing its children
/// does not change its mtime afterwards and a read-only mode does not block them.
pub fn restore_scanned(
    tree: &TreeFile,
    key: &ChunkKey,
    target: &OwnedFd,
    source: &mut dyn ChunkSource,
    opts: Options,
    same: &HashSet<Vec<u8>>,
    progress: &mut dyn FnMut(&Report),
) -> Result<Report> {
    let mut r = Restorer {
        same,
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
    if opts.delete_extra {
        r.clear_type_conflicts(tree)?;
    }
    // The directories the walk is inside, the target's root first. The tree file checked
    // that each entry's parent is one of them.
    let mut root = tree.root().clone();
    root.path.clear();
    let mut open = vec![OpenDir {
        entry: root,
        names: Names::default(),
    }];
    let mut shut = Vec::new();
    for e in tree.entries()? {
        let e = e?;
        let (parent, name) = split(&e.path);
        while open.len() > 1 && open.last().is_some_and(|d| d.entry.path != parent) {
            let d = open.pop().expect("more than the root is open");
            r.close_dir(d, &mut shut)?;
        }
        if let Some(d) = open.last_mut() {
            d.names.push(name);
        }
        match r.entry(&e) {
            Ok(()) => {}
            Err(err) if is_per_file(&err) => {
                r.failed.insert(e.path.clone());
                r.report.failed.push((e.display_path(), err.to_string()));
            }
            Err(err) => return Err(err),
        }
        if e.kind == Kind::Dir {
            open.push(OpenDir {
                entry: e,
                names: Names::default(),
            });
        }
        progress(&r.report);
    }
    while let Some(d) = open.pop() {
        r.close_dir(d, &mut shut)?;
    }
    // The directories that would have shut their owner out, deepest first (the order the
    // walk closed them in), so that each can still be opened through its parent.
    for e in &shut {
        r.set_dir_meta(e)?;
    }
    rustix::fs::syncfs(target).ctx(|| "syncing the restored file system".into())?;
    Ok(r.report)
}

/// A directory of the tree that the restore is inside: its entry, and the names of the
/// tree's entries in it so far (in the tree's order, which is sorted).
struct OpenDir {
    entry: Entry,
    names: Names,
}

/// Failures confined to one entry; anything else (network, disk full, hostile target)
/// aborts the restore.
fn is_per_file(e: &Error) -> bool {
    matches!(
        e,
        Error::ChunkMismatch { .. }
            | Error::CorruptBlob(_)
            | Error::ChunkUnavailable { .. }
            | Error::ContentMismatch { .. }
    )
}

struct Restorer<'a> {
    key: &'a ChunkKey,
    target: &'a OwnedFd,
    opts: Options,
    source: &'a mut dyn ChunkSource,
    cached: Option<(Vec<u8>, OwnedFd)>,
    /// Files already in place with the snapshot's content (repair mode).
    same: &'a HashSet<Vec<u8>>,
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
    fn preflight(&mut self, tree: &TreeFile) -> Result<()> {
        for e in tree.entries()? {
            let e = e?;
            if e.kind != Kind::Dir {
                continue;
            }
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
                Perm::empty(),
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
        self.note_privileges(e);
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
                if matches!(e.kind, Kind::CharDevice | Kind::BlockDevice) {
                    let refused = if !self.opts.privileges {
                        "device node not created: the snapshot comes from another machine (--keep-privileges creates it)"
                    } else if !self.opts.devices {
                        "device nodes are recreated only when restoring as root"
                    } else {
                        ""
                    };
                    if !refused.is_empty() {
                        self.report.skipped.push((e.display_path(), refused.into()));
                        return Ok(());
                    }
                }
                let tmp = self.tmp_name();
                rustix::fs::mknodat(
                    &dir,
                    tmp.as_str(),
                    ft,
                    Perm::from_raw_mode(e.mode & 0o777),
                    e.rdev,
                )
                .ctx(|| format!("creating {} {}", e.kind.name(), e.display_path()))?;
                self.finish_at(&dir, &tmp, name, e, true)
            }
        }
    }

    fn dir(&mut self, parent: &OwnedFd, e: &Entry, name: &[u8]) -> Result<()> {
        match rustix::fs::mkdirat(parent, os(name), Perm::from_raw_mode(0o700)) {
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
                        rustix::fs::mkdirat(parent, os(name), Perm::from_raw_mode(0o700))
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
        let repair = self.opts.mode == Mode::Repair;
        match rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {
                if repair {
                    self.report.missing.push(e.display_path());
                }
            }
            Err(err) => return Err(Error::io(format!("stat {}", e.display_path()), err.into())),
            Ok(st) => {
                if repair
                    && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && self.same.contains(&e.path)
                {
                    if !self.meta_matches(&st, e) {
                        self.report.modified.push(e.display_path());
                        let fd = open_file(dir, name, e)?;
                        self.apply_fd_meta(&fd, e).map_err(|err| {
                            Error::io(
                                format!("setting metadata of {}", e.display_path()),
                                err.into(),
                            )
                        })?;
                    }
                    self.report.unchanged += 1;
                    self.report.files += 1;
                    self.report.bytes += e.size;
                    return Ok(());
                }
                if repair {
                    self.report.modified.push(e.display_path());
                }
            }
        }
        let tmp = self.tmp_name();
        let fd = rustix::fs::openat2(
            dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Perm::from_raw_mode(0o600),
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
        self.report.bytes_written += e.size;
        Ok(())
    }

    /// Whether mode, owner and mtime in place are the snapshot's.
    fn meta_matches(&self, st: &rustix::fs::Stat, e: &Entry) -> bool {
        (st.st_mode & 0o7777) == (e.mode & 0o7777)
            && (!self.opts.owners || (st.st_uid, st.st_gid) == (e.uid, e.gid))
            && st.st_mtime == e.mtime
            && st.st_mtime_nsec as u32 == e.mtime_nsec
    }

    /// Before writing: where the tree has a file or other non-directory and the target a
    /// real directory (or the other way round), remove what is in the target, so that the
    /// restore can put the snapshot's entry there. Only with `delete_extra`.
    fn clear_type_conflicts(&mut self, tree: &TreeFile) -> Result<()> {
        for e in tree.entries()? {
            let e = e?;
            let (parent, name) = split(&e.path);
            let dir = match self.open_dir(parent) {
                Ok(d) => d,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(Error::SymlinkInTarget { .. }) => continue,
                Err(err) => return Err(err),
            };
            let Ok(st) = rustix::fs::statat(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if is_dir != (e.kind == Kind::Dir) {
                self.report.planted.push(e.display_path());
                remove_all(&dir, name, &e.display_path())?;
            }
        }
        self.cached = None;
        Ok(())
    }

    /// A directory the walk has left: what it holds that the tree does not is reported as
    /// planted (and removed when `delete_extra`), then its metadata is set. A directory
    /// whose mode would deny its owner gets it last (`shut`), so that a hardlink into it
    /// from a later directory can still be made.
    fn close_dir(&mut self, mut d: OpenDir, shut: &mut Vec<Entry>) -> Result<()> {
        let rel = d.entry.path.as_slice();
        if self.failed.contains(rel) {
            return Ok(());
        }
        let dir = match self.open_dir(rel) {
            Ok(dir) => dir,
            // A directory of the tree that is not there (not restored): nothing extra.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        d.names.sort();
        let extras = list_dir_where(&dir, &String::from_utf8_lossy(rel), |n| {
            !d.names.contains(n)
        })?;
        drop(d.names);
        for name in extras {
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let shown = String::from_utf8_lossy(&path).into_owned();
            if self.opts.delete_extra {
                remove_all(&dir, &name, &shown)?;
            }
            self.report.planted.push(shown);
        }
        if d.entry.mode & 0o700 != 0o700 {
            shut.push(d.entry);
            return Ok(());
        }
        self.dir_meta(&dir, &d.entry)
    }

    /// A restored directory's metadata (the root's: the target's).
    fn set_dir_meta(&mut self, e: &Entry) -> Result<()> {
        let dir = self.open_dir(&e.path)?;
        self.dir_meta(&dir, e)
    }

    /// `e`'s metadata on the open directory `dir`.
    fn dir_meta(&self, dir: &OwnedFd, e: &Entry) -> Result<()> {
        self.apply_fd_meta(dir, e).map_err(|err| {
            let what = match e.path.is_empty() {
                true => "the restore target".to_string(),
                false => e.display_path(),
            };
            Error::io(format!("setting metadata of {what}"), err.into())
        })
    }

    fn write_content(&mut self, file: &File, e: &Entry) -> Result<()> {
        // A sparse file's chunks of zeros stay holes: not fetched, not written.
        let zero = e.sparse.then(|| self.key.zero_chunk_id());
        let hole = |id: &ChunkId| zero.is_some_and(|z| e.leaves_hole(id, &z));
        let mut offset = 0u64;
        for batch in e.chunks.chunks(FETCH_BATCH) {
            let wanted: std::borrow::Cow<'_, [ChunkId]> = match zero {
                None => batch.into(),
                Some(_) => batch.iter().filter(|id| !hole(id)).copied().collect(),
            };
            let chunks = self.source.fetch(&wanted)?;
            if chunks.len() != wanted.len() {
                return Err(Error::io(
                    e.display_path(),
                    std::io::Error::other("chunk source returned the wrong number of chunks"),
                ));
            }
            let mut chunks = chunks.into_iter();
            for id in batch {
                if hole(id) {
                    offset += crate::chunker::zero_chunk_len() as u64;
                    continue;
                }
                let chunk = chunks.next().expect("as many chunks as wanted");
                if chunk.id() != id {
                    return Err(Error::ChunkMismatch { id: id.to_hex() });
                }
                write_at(file, chunk.data(), offset, e.sparse)
                    .ctx(|| format!("writing {}", e.display_path()))?;
                offset += chunk.data().len() as u64;
            }
        }
        if offset != e.size || self.key.content_hash(offset, &e.chunks) != e.content_hash {
            return Err(Error::ContentMismatch {
                path: e.display_path(),
            });
        }
        if e.sparse {
            // A trailing hole was skipped, not written. (A file that is not sparse was
            // created empty and written to its end: its length is right already.)
            file.set_len(offset)
                .ctx(|| format!("sizing {}", e.display_path()))?;
        }
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
        rustix::fs::fchmod(&fd, Perm::from_raw_mode(self.mode_of(e)))?;
        for (k, v) in &e.xattrs {
            if !self.opts.privileges && k.as_slice() == CAPABILITY_XATTR {
                continue;
            }
            match rustix::fs::fsetxattr(&fd, os(k), v, rustix::fs::XattrFlags::empty()) {
                // trusted.* and security.* need privileges; user.* may be unsupported.
                Ok(()) | Err(Errno::PERM) | Err(Errno::NOTSUP) => {}
                Err(err) => return Err(err),
            }
        }
        rustix::fs::futimens(&fd, &times(e))
    }

    /// The mode to give `e`: without privileges, setuid and setgid are cleared (noted
    /// once per entry in the report's skipped list). A directory's setgid only passes
    /// its group on to new files, and is kept.
    fn mode_of(&self, e: &Entry) -> u32 {
        if self.opts.privileges || e.kind == Kind::Dir {
            e.mode
        } else {
            e.mode & !0o6000
        }
    }

    /// Notes, before `e` is restored, what of its privileges will not be kept.
    fn note_privileges(&mut self, e: &Entry) {
        if self.opts.privileges || matches!(e.kind, Kind::Symlink | Kind::Dir) {
            return;
        }
        let setid = e.mode & 0o6000 != 0;
        let caps = e
            .xattrs
            .iter()
            .any(|(k, _)| k.as_slice() == CAPABILITY_XATTR);
        if setid || caps {
            self.report.skipped.push((
                e.display_path(),
                "restored without its setuid/setgid bits and file capabilities: the snapshot comes from another machine (--keep-privileges keeps them)".into(),
            ));
        }
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
                rustix::fs::chmodat(
                    dir,
                    tmp,
                    Perm::from_raw_mode(self.mode_of(e)),
                    AtFlags::empty(),
                )?;
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

/// Opens the file `name` in `dir` for reading, never following a symlink.
fn open_file(dir: &OwnedFd, name: &[u8], e: &Entry) -> Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        os(name),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Perm::empty(),
        RESOLVE,
    )
    .ctx(|| format!("opening {}", e.display_path()))
}

/// The names in a directory (without `.` and `..`).
fn list_dir(dir: &OwnedFd, shown: &str) -> Result<Vec<Vec<u8>>> {
    list_dir_where(dir, shown, |_| true)
}

/// The names in a directory (without `.` and `..`) that `keep` keeps: only those are
/// held, so a directory of millions of names costs what `keep` lets through.
fn list_dir_where(
    dir: &OwnedFd,
    shown: &str,
    mut keep: impl FnMut(&[u8]) -> bool,
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let iter = rustix::fs::Dir::read_from(dir).ctx(|| format!("listing {shown}/"))?;
    for ent in iter {
        let ent = ent.ctx(|| format!("listing {shown}/"))?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." && keep(name) {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` and, for a directory, everything beneath it, through handles
/// (a symlink is removed, never followed).
fn remove_all(dir: &OwnedFd, name: &[u8], shown: &str) -> Result<()> {
    let st = match rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::io(format!("stat {shown}"), e.into())),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rustix::fs::openat2(
            dir,
            os(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Perm::empty(),
            RESOLVE,
        )
        .map_err(|e| resolve_error(e, shown))?;
        for child in list_dir(&sub, shown)? {
            let child_shown = format!("{shown}/{}", String::from_utf8_lossy(&child));
            remove_all(&sub, &child, &child_shown)?;
        }
        rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR)
            .ctx(|| format!("removing {shown}"))?;
    } else {
        rustix::fs::unlinkat(dir, os(name), AtFlags::empty())
            .ctx(|| format!("removing {shown}"))?;
    }
    Ok(())
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
