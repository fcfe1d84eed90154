//! Forensic diff: what changed between two snapshots (of one source, typically before and
//! after a compromise): files added, removed and changed, with sizes, modes and owners, and
//! for images the layers.

use std::collections::BTreeMap;

use lifeboat_core::snapshot::Record;
use lifeboat_core::tree::{Entry, Kind};
use lifeboat_proto::pb;

use crate::Controller;
use crate::error::ApiError;

fn kind(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Hardlink => "hardlink",
        Kind::Fifo => "fifo",
        Kind::CharDevice => "char-device",
        Kind::BlockDevice => "block-device",
        Kind::Socket => "socket",
    }
}

/// What differs between two entries of the same path.
fn changes(a: &Entry, b: &Entry) -> Vec<String> {
    let mut what = Vec::new();
    if a.kind != b.kind {
        what.push("type".into());
    }
    if a.kind == Kind::File && b.kind == Kind::File && a.content_hash != b.content_hash {
        what.push("content".into());
    }
    if a.size != b.size {
        what.push("size".into());
    }
    if a.mode != b.mode {
        what.push("mode".into());
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        what.push("owner".into());
    }
    if (a.mtime, a.mtime_nsec) != (b.mtime, b.mtime_nsec) {
        what.push("mtime".into());
    }
    if a.target != b.target {
        what.push("target".into());
    }
    if a.xattrs != b.xattrs {
        what.push("xattrs".into());
    }
    what
}

fn load(ctl: &Controller, prefix: &str) -> Result<(Record, BTreeMap<Vec<u8>, Entry>), ApiError> {
    let snap = ctl.catalog.find_snapshot(prefix)?;
    let env = ctl.store.read_snapshot(&snap.id)?;
    let record = Record::parse(&env.record)?;
    let tree = crate::snapshots::load_tree(ctl, &record)?;
    let entries = tree
        .entries
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect();
    Ok((record, entries))
}

pub fn diff(ctl: &Controller, a: &str, b: &str) -> Result<pb::DiffReply, ApiError> {
    let (ra, ta) = load(ctl, a)?;
    let (rb, tb) = load(ctl, b)?;
    let owner = |e: &Entry| format!("{}:{}", e.uid, e.gid);
    let mut out = pb::DiffReply::default();
    for (path, ea) in &ta {
        match tb.get(path) {
            None => out.entries.push(pb::DiffEntry {
                path: ea.display_path(),
                change: "removed".into(),
                kind_a: kind(ea.kind).into(),
                size_a: ea.size,
                mode_a: ea.mode,
                owner_a: owner(ea),
                ..Default::default()
            }),
            Some(eb) => {
                let what = changes(ea, eb);
                if !what.is_empty() {
                    out.entries.push(pb::DiffEntry {
                        path: ea.display_path(),
                        change: "changed".into(),
                        what,
                        kind_a: kind(ea.kind).into(),
                        kind_b: kind(eb.kind).into(),
                        size_a: ea.size,
                        size_b: eb.size,
                        mode_a: ea.mode,
                        mode_b: eb.mode,
                        owner_a: owner(ea),
                        owner_b: owner(eb),
                    });
                }
            }
        }
    }
    for (path, eb) in &tb {
        if !ta.contains_key(path) {
            out.entries.push(pb::DiffEntry {
                path: eb.display_path(),
                change: "added".into(),
                kind_b: kind(eb.kind).into(),
                size_b: eb.size,
                mode_b: eb.mode,
                owner_b: owner(eb),
                ..Default::default()
            });
        }
    }
    out.entries.sort_by(|x, y| x.path.cmp(&y.path));
    if let (Some(ia), Some(ib)) = (&ra.image, &rb.image) {
        out.layers_removed = ia
            .layers
            .iter()
            .filter(|l| !ib.layers.contains(l))
            .cloned()
            .collect();
        out.layers_added = ib
            .layers
            .iter()
            .filter(|l| !ia.layers.contains(l))
            .cloned()
            .collect();
    }
    Ok(out)
}
