//! Test trees with every kind of entry Lifeboat must keep, a realistic day-to-day change,
//! and a manifest to compare a restored tree against.

use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use lifeboat_core::tree::Kind;
use lifeboat_core::walk;

/// Deterministic pseudo-random bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// Compressible text-like bytes.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 8] = [
            "lifeboat ",
            "backup ",
            "restore ",
            "chunk ",
            "fleet ",
            "agent ",
            "2026-11-29T06:00:00Z ",
            "ok\n",
        ];
        let mut v = Vec::with_capacity(n + 32);
        while v.len() < n {
            v.extend_from_slice(WORDS[(self.next_u64() % 8) as usize].as_bytes());
        }
        v.truncate(n);
        v
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).expect("mkdir");
    }
    fs::write(p, data).expect("write");
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// Builds a tree of about 45 MiB (logical) with every entry type the store keeps.
pub fn make_tree(root: &Path, rng: &mut Rng) {
    fs::create_dir_all(root).expect("root");
    write(&root.join("images/disk.img"), &rng.bytes(9 << 20));
    write(&root.join("logs/app.log"), &rng.text(6 << 20));
    write(&root.join("data/archive.bin"), &rng.bytes(5 << 20));
    for i in 0..60 {
        let len = 1000 + (rng.next_u64() % 20_000) as usize;
        let data = if i % 2 == 0 {
            rng.bytes(len)
        } else {
            rng.text(len)
        };
        write(&root.join(format!("small/f{i:02}.dat")), &data);
    }
    write(&root.join("empty.txt"), b"");
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    fs::create_dir_all(root.join("docs/deep/er/est")).expect("mkdir");
    write(&root.join("docs/deep/er/est/leaf.txt"), b"deep leaf\n");
    write(&root.join("docs/readme.txt"), &rng.text(3000));
    // Sparse: 24 MiB apparent, two 64 KiB islands of data.
    {
        let mut f = fs::File::create(root.join("sparse.img")).expect("sparse");
        f.set_len(24 << 20).expect("set_len");
        for off in [1u64 << 20, 17 << 20] {
            f.seek(SeekFrom::Start(off)).expect("seek");
            f.write_all(&rng.bytes(64 << 10)).expect("write");
        }
    }
    std::os::unix::fs::symlink("docs/readme.txt", root.join("link-rel")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-abs")).expect("symlink");
    std::os::unix::fs::symlink("nowhere/at/all", root.join("link-dangling")).expect("symlink");
    fs::create_dir_all(root.join("hard")).expect("mkdir");
    fs::hard_link(root.join("docs/readme.txt"), root.join("hard/readme-link")).expect("hardlink");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .expect("mkfifo");
    if is_root() {
        let dev = |p: &str, ft, maj, min| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join(p),
                ft,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(maj, min),
            )
            .expect("mknod");
        };
        dev("dev-null-copy", rustix::fs::FileType::CharacterDevice, 1, 3);
        dev("loop-copy", rustix::fs::FileType::BlockDevice, 7, 200);
        write(&root.join("owned.txt"), b"owned by someone else\n");
        std::os::unix::fs::chown(root.join("owned.txt"), Some(1234), Some(5678)).expect("chown");
        std::os::unix::fs::lchown(root.join("link-rel"), Some(4321), Some(8765)).expect("lchown");
    }
    write(&root.join("bin/suid"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("bin/suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    write(&root.join("bin/sgid"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("bin/sgid"), fs::Permissions::from_mode(0o2750)).expect("chmod");
    fs::create_dir_all(root.join("tmp-sticky")).expect("mkdir");
    fs::set_permissions(root.join("tmp-sticky"), fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    // A directory its owner cannot write, holding a file linked from a later directory:
    // its mode is set once the walk has left it, and the link is still made.
    fs::create_dir_all(root.join("sealed")).expect("mkdir");
    write(&root.join("sealed/key.pem"), b"sealed key\n");
    fs::create_dir_all(root.join("zz-keys")).expect("mkdir");
    fs::hard_link(root.join("sealed/key.pem"), root.join("zz-keys/key-link")).expect("hardlink");
    fs::set_permissions(root.join("sealed"), fs::Permissions::from_mode(0o500)).expect("chmod");
    write(&root.join("readonly.txt"), b"read only\n");
    fs::set_permissions(root.join("readonly.txt"), fs::Permissions::from_mode(0o400))
        .expect("chmod");
    rustix::fs::setxattr(
        root.join("docs/readme.txt"),
        "user.lifeboat.note",
        b"keep me",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("xattr");
    rustix::fs::setxattr(
        root.join("docs"),
        "user.lifeboat.dir",
        b"\x00\x01binary",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("xattr");
    write(
        &root.join(OsStr::from_bytes(b"caf\xe9 latin1.txt")),
        b"not utf-8 name\n",
    );
    fs::create_dir_all(root.join(OsStr::from_bytes(b"\xff\xfe-dir"))).expect("mkdir");
    write(
        &root.join(OsStr::from_bytes(b"\xff\xfe-dir/inner \n newline")),
        b"odd names\n",
    );
    set_mtime(
        &root.join("docs/deep/er/est/leaf.txt"),
        1_600_000_000,
        123_456_789,
    );
    set_mtime(&root.join("link-abs"), 1_500_000_000, 987_654_321);
}

/// What `modify` changed: the files it touched or created and their changed bytes.
pub struct Changes {
    pub files: u64,
    pub bytes: u64,
}

/// A day's change of about 5%: an edit in place, an insertion that shifts a file, an
/// append, rewritten and new files, deletions.
pub fn modify(root: &Path, rng: &mut Rng) -> Changes {
    let mut c = Changes { files: 0, bytes: 0 };
    // Edit in place: 100 KiB in the middle of the disk image.
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(root.join("images/disk.img"))
            .expect("open");
        f.seek(SeekFrom::Start(4 << 20)).expect("seek");
        f.write_all(&rng.bytes(100 << 10)).expect("write");
        c.files += 1;
        c.bytes += 100 << 10;
    }
    // Insert 10 KiB near the start of the archive: everything after it shifts.
    {
        let p = root.join("data/archive.bin");
        let mut data = fs::read(&p).expect("read");
        let ins = rng.bytes(10 << 10);
        data.splice(1000..1000, ins);
        fs::write(&p, &data).expect("write");
        c.files += 1;
        c.bytes += 10 << 10;
    }
    // Append 200 KiB of log.
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(root.join("logs/app.log"))
            .expect("open");
        f.write_all(&rng.text(200 << 10)).expect("append");
        c.files += 1;
        c.bytes += 200 << 10;
    }
    // New files.
    write(&root.join("new/fresh.bin"), &rng.bytes(1 << 20));
    c.files += 1;
    c.bytes += 1 << 20;
    for i in 0..4 {
        let data = rng.text(5000);
        c.bytes += data.len() as u64;
        c.files += 1;
        write(&root.join(format!("small/new{i}.txt")), &data);
    }
    // Rewrite three small files, delete five and a symlink.
    for i in [1, 2, 3] {
        let p = root.join(format!("small/f{i:02}.dat"));
        let data = rng.bytes(8000);
        c.bytes += data.len() as u64;
        c.files += 1;
        fs::write(p, data).expect("rewrite");
    }
    for i in [10, 11, 12, 13, 14] {
        fs::remove_file(root.join(format!("small/f{i:02}.dat"))).expect("delete");
    }
    fs::remove_file(root.join("link-dangling")).expect("delete");
    c
}

/// One path's recorded state, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    pub size: u64,
    pub target: Vec<u8>,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Option<String>,
}

/// Everything Lifeboat promises to restore about the tree at `root` (root included).
pub fn manifest(root: &Path) -> Vec<Item> {
    let w = walk::scan(root).expect("scan");
    assert!(w.warnings.is_empty(), "scan warnings: {:?}", w.warnings);
    let mut out = Vec::new();
    for e in std::iter::once(&w.root).chain(w.entries.iter()) {
        let content = (e.kind == Kind::File).then(|| {
            blake3::hash(&fs::read(walk::join(root, &e.path)).expect("read"))
                .to_hex()
                .to_string()
        });
        out.push(Item {
            path: String::from_utf8_lossy(&e.path).into_owned() + &format!(" {:?}", e.path),
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            // Directories' and the root's times are checked too: restore sets them last.
            mtime: (e.mtime, e.mtime_nsec),
            size: e.size,
            target: e.target.clone(),
            rdev: e.rdev,
            xattrs: e.xattrs.clone(),
            content,
        });
    }
    out
}

/// Asserts that `restored` holds exactly what `expected` recorded.
pub fn assert_same(expected: &[Item], restored: &Path) {
    let got = manifest(restored);
    let paths = |m: &[Item]| m.iter().map(|i| i.path.clone()).collect::<Vec<_>>();
    assert_eq!(
        paths(&got),
        paths(expected),
        "restored tree has different paths"
    );
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g, e, "restored entry differs");
    }
    // Sparse files come back sparse (`make_tree`'s trees have one).
    if !expected.iter().any(|i| i.path.starts_with("sparse.img ")) {
        return;
    }
    let m = fs::metadata(restored.join("sparse.img")).expect("sparse.img");
    assert!(
        m.blocks() * 512 < m.len() / 4,
        "sparse.img was restored dense: {} blocks for {} bytes",
        m.blocks(),
        m.len()
    );
}

/// Every regular file under `dir`.
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What ransomware does: every file overwritten with ciphertext (random bytes, a little
/// longer), renamed `NAME.locked`, and a note in every directory.
pub fn encrypt_in_place(src: &Path) {
    let mut rng = Rng::new(666);
    let mut dirs = std::collections::BTreeSet::new();
    for f in files(src) {
        let len = fs::metadata(&f).expect("stat").len() as usize;
        fs::write(&f, rng.bytes(len + 16)).expect("encrypt");
        let mut locked = f.clone().into_os_string();
        locked.push(".locked");
        fs::rename(&f, &locked).expect("rename");
        dirs.insert(f.parent().expect("parent").to_path_buf());
    }
    for d in dirs {
        fs::write(
            d.join("HOW_TO_DECRYPT.txt"),
            "Your files are encrypted. Pay to get them back.\n",
        )
        .expect("note");
    }
}
