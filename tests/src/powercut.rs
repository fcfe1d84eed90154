//! A power cut, simulated for one process's files (checklist row A2).
//!
//! The model is lazyfs's `lose-unfsynced-writes`: after the cut, every file holds what it
//! held when it was last synced (`fsync` or `fdatasync` returned 0), a file never synced
//! since it was created is empty, and names (creations, renames, deletions) stay as the
//! process left them. [`SHIM`], preloaded into the process, records each successful sync
//! of a regular file: a copy of its content taken as the sync was asked for, and the
//! inode it belongs to. [`Journal::cut`] then rewrites every file under a root to what
//! the model says survived.
//!
//! Inodes identify files across renames; the shim pins each synced inode with a hard
//! link (and [`Journal::begin`] each inode already on disk) so that the filesystem cannot
//! give the number to another file while the journal is read.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The `LD_PRELOAD` shim (C). `LIFEBOAT_POWERCUT_DIR=DIR`: before the real sync of a
/// regular file, its content is copied to `DIR/synced/PID-N`; once the sync returned 0,
/// the inode is pinned as `DIR/pin/INODE` and the line `INODE PID-N PATH` is appended to
/// `DIR/journal` (one write, `O_APPEND`). A failed sync leaves no line. When the file
/// `DIR/cut-at` says `N before` or `N after`, the process kills itself (SIGKILL) at its
/// N-th sync, before the real sync or once it is recorded, and says which file on stderr
/// (`powercut: cut before|after the sync of PATH`).
pub const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static unsigned long counter;

/* The sync at which to cut the power (0: none), from DIR/cut-at. */
static unsigned long cut_at(const char *dir, int *after) {
    char p[4096], b[64];
    snprintf(p, sizeof p, "%s/cut-at", dir);
    int f = open(p, O_RDONLY | O_CLOEXEC);
    if (f < 0) return 0;
    ssize_t n = read(f, b, sizeof b - 1);
    close(f);
    b[n < 0 ? 0 : n] = 0;
    *after = strstr(b, "after") != NULL;
    return strtoul(b, NULL, 10);
}

static void cut(int fd, const char *when) {
    char proc[64], path[4096];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, path, sizeof path - 1);
    path[n < 0 ? 0 : n] = 0;
    fprintf(stderr, "powercut: cut %s the sync of %s\n", when, path);
    kill(getpid(), SIGKILL);
}

/* Copies the file behind fd to `copy`; 0 when done. */
static int copy_content(int fd, const char *copy) {
    char proc[64], buf[65536];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int src = open(proc, O_RDONLY | O_CLOEXEC);
    if (src < 0) return -1;
    int dst = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (dst < 0) { close(src); return -1; }
    off_t at = 0;
    for (;;) {
        ssize_t n = pread(src, buf, sizeof buf, at);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { close(src); close(dst); return n == 0 ? 0 : -1; }
        for (ssize_t w = 0; w < n;) {
            ssize_t k = write(dst, buf + w, n - w);
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) { close(src); close(dst); return -1; }
            w += k;
        }
        at += n;
    }
}

static int recorded_sync(int fd, int (*real)(int)) {
    const char *dir = getenv("LIFEBOAT_POWERCUT_DIR");
    struct stat st;
    if (!dir || !*dir || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return real(fd);
    char name[64], copy[4096], pin[4096], proc[64], path[4096], line[4608];
    unsigned long seq = __atomic_add_fetch(&counter, 1, __ATOMIC_SEQ_CST);
    int after = 0;
    unsigned long at = cut_at(dir, &after);
    snprintf(name, sizeof name, "%d-%lu", (int)getpid(), seq);
    snprintf(copy, sizeof copy, "%s/synced/%s", dir, name);
    if (copy_content(fd, copy) != 0) {
        fprintf(stderr, "powercut: cannot copy fd %d: %s\n", fd, strerror(errno));
        abort();
    }
    if (seq == at && !after) cut(fd, "before");
    int r = real(fd);
    if (r != 0) { int e = errno; unlink(copy); errno = e; return r; }
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    snprintf(pin, sizeof pin, "%s/pin/%lu", dir, (unsigned long)st.st_ino);
    linkat(AT_FDCWD, proc, AT_FDCWD, pin, AT_SYMLINK_FOLLOW); /* EEXIST: pinned before */
    ssize_t n = readlink(proc, path, sizeof path - 1);
    path[n < 0 ? 0 : n] = 0;
    int len = snprintf(line, sizeof line, "%lu %s %s\n", (unsigned long)st.st_ino, name, path);
    int j = open(dir, O_RDONLY);
    int jf = j < 0 ? -1 : openat(j, "journal", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (jf < 0 || write(jf, line, len) != len) {
        fprintf(stderr, "powercut: cannot write the journal: %s\n", strerror(errno));
        abort();
    }
    close(jf);
    close(j);
    if (seq == at && after) cut(fd, "after");
    return 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return recorded_sync(fd, real);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return recorded_sync(fd, real);
}
"#;

/// One run of a process under [`SHIM`]: what was durable when it began, and where the
/// shim writes.
pub struct Journal {
    dir: PathBuf,
    /// Inode → a copy of the file's content when the run began.
    base: HashMap<u64, PathBuf>,
}

/// What [`Journal::cut`] did.
#[derive(Debug, Default)]
pub struct Cut {
    /// Files whose content went back to an earlier sync (or to the run's start).
    pub rolled_back: Vec<PathBuf>,
    /// Files never synced, now empty.
    pub emptied: Vec<PathBuf>,
    /// The paths of the last syncs before the cut, newest last.
    pub last_syncs: Vec<String>,
    /// Syncs recorded in the run.
    pub syncs: usize,
}

impl Journal {
    /// Starts a run in `dir` (created; must not exist): everything under `root` now
    /// counts as durable. Give the process `LIFEBOAT_POWERCUT_DIR` = [`Journal::dir`].
    pub fn begin(root: &Path, dir: &Path) -> Journal {
        for sub in ["synced", "pin", "base"] {
            fs::create_dir_all(dir.join(sub)).expect("powercut dirs");
        }
        let mut base = HashMap::new();
        for file in regular_files(root) {
            let ino = fs::metadata(&file).expect("stat").ino();
            let copy = dir.join("base").join(ino.to_string());
            fs::copy(&file, &copy).expect("copy a durable file");
            fs::hard_link(&file, dir.join("pin").join(ino.to_string())).expect("pin");
            base.insert(ino, copy);
        }
        Journal {
            dir: dir.to_path_buf(),
            base,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs recorded so far.
    pub fn syncs(&self) -> usize {
        fs::read_to_string(self.dir.join("journal"))
            .map(|j| j.lines().count())
            .unwrap_or(0)
    }

    /// Cuts the power at the process's `n`-th sync (counted from its start): before the
    /// real sync, or `after` it returned.
    pub fn cut_at_sync(&self, n: usize, after: bool) {
        let when = if after { "after" } else { "before" };
        fs::write(self.dir.join("cut-at"), format!("{n} {when}")).expect("cut-at");
    }

    /// Cuts the power under `root`, whose process must be dead: each file gets the
    /// content of its last recorded sync, else what it held when the run began, else
    /// nothing.
    pub fn cut(&self, root: &Path) -> Cut {
        let journal = fs::read_to_string(self.dir.join("journal")).unwrap_or_default();
        let mut synced: HashMap<u64, PathBuf> = HashMap::new();
        let mut cut = Cut::default();
        for line in journal.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(ino), Some(name), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("a torn journal line: {line:?}");
            };
            let ino: u64 = ino.parse().expect("inode");
            synced.insert(ino, self.dir.join("synced").join(name));
            cut.syncs += 1;
            cut.last_syncs.push(path.to_string());
            if cut.last_syncs.len() > 3 {
                cut.last_syncs.remove(0);
            }
        }
        for file in regular_files(root) {
            let ino = fs::metadata(&file).expect("stat").ino();
            let durable = match synced.get(&ino).or_else(|| self.base.get(&ino)) {
                Some(copy) => fs::read(copy).expect("read a synced copy"),
                None => Vec::new(),
            };
            let now = fs::read(&file).expect("read a file");
            if now != durable {
                fs::write(&file, &durable).expect("roll a file back");
                if durable.is_empty() {
                    cut.emptied.push(file);
                } else {
                    cut.rolled_back.push(file);
                }
            }
        }
        cut
    }
}

/// Every regular file under `root`, recursively (symlinks are not followed).
pub fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read a directory") {
            let entry = entry.expect("entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}
