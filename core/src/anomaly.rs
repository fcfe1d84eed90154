//! Ransomware signals: what a snapshot's tree says against the snapshot of the same source
//! before it. Ransomware that encrypts a machine in place leaves marks no ordinary day
//! leaves together: most files rewritten, content that compressed before and no longer does
//! (ciphertext), files renamed with a new extension, and a ransom note in every directory.
//! Each signal adds to a score out of 100 with a reason a person can check; a policy's
//! threshold decides what is suspect.
//!
//! Whether content still compresses is read from the store's own bookkeeping, not the
//! bytes: a chunk that did not compress is stored raw, so a file's stored size over its
//! size tells (`analyze` is given each chunk's stored length).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::id::ChunkId;
use crate::tree::{Entry, Kind};

/// Files smaller than this say little about compression (headers dominate).
const MIN_COMPRESS_CHECK: u64 = 1024;
/// At most this many rewritten files have their compression compared.
const MAX_COMPRESS_CHECKS: usize = 4096;

/// What the analysis found, with the figures behind each reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// 0 (nothing unusual) to 100.
    pub score: u32,
    pub reasons: Vec<String>,
    pub files_before: u64,
    pub files_after: u64,
    pub changed: u64,
    pub removed: u64,
    pub added: u64,
    /// Removed files whose exact content reappears under another name.
    pub renamed: u64,
    /// Removed files that reappear with an extension appended or replaced.
    pub extension_changes: u64,
    /// The new extension most of those got, and how many.
    pub top_new_extension: String,
    pub top_new_extension_files: u64,
    /// Rewritten files whose compression was compared, those that compressed before, and
    /// of those the ones that no longer do.
    pub compression_checked: u64,
    pub compressed_before: u64,
    pub stopped_compressing: u64,
    pub ransom_notes: u64,
    pub ransom_note_dirs: u64,
    pub new_bytes_share: f64,
}

/// Names ransom notes go by (lower case; a file name containing one counts).
const NOTE_MARKS: &[&str] = &[
    "decrypt",
    "ransom",
    "restore_files",
    "restore-files",
    "recover_files",
    "recover-files",
    "recovery_files",
    "how_to_back",
    "how-to-back",
    "your_files",
    "your-files",
    "files_encrypted",
    "files-encrypted",
    "help_restore",
    "help_recover",
    "readme_for_",
    "_readme.txt",
    "!readme!",
    "read_me_now",
    "unlock_files",
    "unlock-files",
];

/// Whether a file name looks like a ransom note.
pub fn is_ransom_note(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    NOTE_MARKS.iter().any(|m| n.contains(m))
}

fn split_name(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The extension of a file name (`locked` of `a.docx.locked`), "" for none.
fn extension(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() && ext.len() <= 16 => ext,
        _ => "",
    }
}

/// Compares `after` with `before` (the same source's previous snapshot; `None` for a
/// first snapshot, where only ransom notes can be judged). `stored` gives each chunk's
/// stored length (`None` when unknown); `bytes` and `bytes_new` are the snapshot's size and
/// what it added to the store.
pub fn analyze(
    before: Option<&[Entry]>,
    after: &[Entry],
    stored: &mut dyn FnMut(&[ChunkId]) -> Vec<Option<u64>>,
    bytes: u64,
    bytes_new: u64,
) -> Report {
    fn files(entries: &[Entry]) -> BTreeMap<String, &Entry> {
        entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| (e.display_path(), e))
            .collect()
    }
    let new = files(after);
    let old = before.map(files).unwrap_or_default();
    let mut r = Report {
        files_before: old.len() as u64,
        files_after: new.len() as u64,
        new_bytes_share: if bytes > 0 {
            bytes_new as f64 / bytes as f64
        } else {
            0.0
        },
        ..Report::default()
    };

    // Rewritten in place, removed, added.
    let mut pairs: Vec<(&Entry, &Entry)> = Vec::new();
    let mut removed: Vec<&str> = Vec::new();
    for (path, e) in &old {
        match new.get(path) {
            Some(n) if n.content_hash != e.content_hash => {
                r.changed += 1;
                pairs.push((e, n));
            }
            Some(_) => {}
            None => removed.push(path),
        }
    }
    let added: Vec<&str> = new
        .keys()
        .filter(|p| !old.contains_key(*p))
        .map(String::as_str)
        .collect();
    r.removed = removed.len() as u64;
    r.added = added.len() as u64;

    // Renames: the same content under a new name; or the same name with an extension
    // appended or replaced (the content may have changed too).
    let added_hashes: HashSet<[u8; 32]> = added.iter().map(|p| new[*p].content_hash).collect();
    let mut by_stem: HashMap<(&str, &str), &str> = HashMap::new();
    for p in &removed {
        let (dir, name) = split_name(p);
        let stem = name
            .rsplit_once('.')
            .map(|(s, _)| s)
            .filter(|s| !s.is_empty())
            .unwrap_or(name);
        by_stem.insert((dir, stem), p);
    }
    let removed_set: HashSet<&str> = removed.iter().copied().collect();
    let mut new_exts: HashMap<&str, u64> = HashMap::new();
    let old_exts: HashSet<&str> = old.keys().map(|p| extension(split_name(p).1)).collect();
    for q in &added {
        let (dir, name) = split_name(q);
        let ext = extension(name);
        let stem = if ext.is_empty() {
            name
        } else {
            &name[..name.len() - ext.len() - 1]
        };
        let appended = if dir.is_empty() {
            stem.to_owned()
        } else {
            format!("{dir}/{stem}")
        };
        let origin = if removed_set.contains(appended.as_str()) {
            Some(appended.as_str())
        } else {
            let stem_of_stem = stem.rsplit_once('.').map(|(s, _)| s).unwrap_or(stem);
            by_stem
                .get(&(dir, stem))
                .or_else(|| by_stem.get(&(dir, stem_of_stem)))
                .copied()
        };
        if let Some(p) = origin.filter(|p| extension(split_name(p).1) != ext) {
            r.extension_changes += 1;
            if !old_exts.contains(ext) {
                *new_exts.entry(ext).or_default() += 1;
            }
            if let (Some(b), Some(a)) = (old.get(p), new.get(*q)) {
                pairs.push((b, a));
            }
        }
    }
    r.renamed = removed
        .iter()
        .filter(|p| added_hashes.contains(&old[**p].content_hash))
        .count() as u64;
    if let Some((ext, n)) = new_exts
        .into_iter()
        .max_by_key(|(e, n)| (*n, std::cmp::Reverse(*e)))
    {
        r.top_new_extension = ext.to_owned();
        r.top_new_extension_files = n;
    }

    // Content that compressed before and no longer does.
    let ratio =
        |e: &Entry, stored: &mut dyn FnMut(&[ChunkId]) -> Vec<Option<u64>>| -> Option<f64> {
            let lens = stored(&e.chunks);
            let total: Option<u64> = lens.into_iter().sum();
            total.map(|t| t as f64 / e.size.max(1) as f64)
        };
    for (b, a) in pairs
        .iter()
        .filter(|(b, a)| b.size >= MIN_COMPRESS_CHECK && a.size >= MIN_COMPRESS_CHECK)
        .take(MAX_COMPRESS_CHECKS)
    {
        let (Some(rb), Some(ra)) = (ratio(b, stored), ratio(a, stored)) else {
            continue;
        };
        r.compression_checked += 1;
        if rb <= 0.9 {
            r.compressed_before += 1;
            if ra >= 0.98 {
                r.stopped_compressing += 1;
            }
        }
    }

    // Ransom notes among the new files.
    let mut note_dirs = HashSet::new();
    for q in &added {
        let (dir, name) = split_name(q);
        if is_ransom_note(name) {
            r.ransom_notes += 1;
            note_dirs.insert(dir);
        }
    }
    r.ransom_note_dirs = note_dirs.len() as u64;

    score(&mut r);
    r
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn score(r: &mut Report) {
    let mut score = 0.0f64;
    let before = r.files_before as f64;
    let churn = if before > 0.0 {
        (r.changed + r.removed) as f64 / before
    } else {
        0.0
    };
    if r.files_before >= 10 && churn >= 0.3 {
        score += 20.0 + 20.0 * ((churn - 0.3) / 0.4).min(1.0);
        r.reasons.push(format!(
            "{} of the files changed or vanished ({} rewritten, {} removed of {})",
            pct(churn),
            r.changed,
            r.removed,
            r.files_before
        ));
    }
    if r.stopped_compressing >= 5
        && r.stopped_compressing as f64 >= 0.3 * r.compressed_before.max(1) as f64
    {
        score += 40.0;
        r.reasons.push(format!(
            "{} of {} changed files that compressed before no longer do (encrypted content)",
            r.stopped_compressing, r.compressed_before
        ));
    }
    if r.extension_changes >= 10 && r.extension_changes as f64 >= 0.1 * before {
        score += 25.0;
        let top = if r.top_new_extension.is_empty() {
            String::new()
        } else {
            format!(
                ", {} of them to the new .{}",
                r.top_new_extension_files, r.top_new_extension
            )
        };
        r.reasons.push(format!(
            "{} files renamed with another extension{top}",
            r.extension_changes
        ));
    } else if r.renamed >= 50 && r.renamed as f64 >= 0.3 * before {
        score += 10.0;
        r.reasons.push(format!("{} files renamed", r.renamed));
    }
    if r.ransom_notes > 0 {
        score += if r.ransom_note_dirs >= 3 { 40.0 } else { 20.0 };
        r.reasons.push(format!(
            "{} new files named like ransom notes, in {} directories",
            r.ransom_notes, r.ransom_note_dirs
        ));
    }
    if r.files_before >= 10 && r.new_bytes_share >= 0.5 {
        score += 10.0;
        r.reasons.push(format!(
            "{} of the bytes are new to the store",
            pct(r.new_bytes_share)
        ));
    }
    r.score = score.round().min(100.0) as u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, content: u8, stored: u64) -> (Entry, u64) {
        let mut e = Entry::new(path.as_bytes().to_vec(), Kind::File);
        e.size = size;
        e.content_hash = [content; 32];
        let mut id = [0u8; 32];
        id[..path.len().min(32)].copy_from_slice(&path.as_bytes()[..path.len().min(32)]);
        id[31] = content;
        e.chunks = vec![ChunkId(id)];
        (e, stored)
    }

    fn run(before: &[(Entry, u64)], after: &[(Entry, u64)], bytes_new: u64) -> Report {
        let lens: HashMap<ChunkId, u64> = before
            .iter()
            .chain(after)
            .map(|(e, s)| (e.chunks[0], *s))
            .collect();
        let b: Vec<Entry> = before.iter().map(|(e, _)| e.clone()).collect();
        let a: Vec<Entry> = after.iter().map(|(e, _)| e.clone()).collect();
        let bytes = a.iter().map(|e| e.size).sum();
        analyze(
            Some(&b),
            &a,
            &mut |ids| ids.iter().map(|i| lens.get(i).copied()).collect(),
            bytes,
            bytes_new,
        )
    }

    fn office(n: usize) -> Vec<(Entry, u64)> {
        (0..n)
            .map(|i| file(&format!("d{}/doc{i}.txt", i % 5), 10_000, 1, 3_000))
            .collect()
    }

    #[test]
    fn a_tree_encrypted_in_place_scores_high_with_every_reason() {
        let before = office(40);
        let mut after: Vec<_> = (0..40)
            .map(|i| file(&format!("d{}/doc{i}.txt.locked", i % 5), 10_016, 2, 10_040))
            .collect();
        for d in 0..5 {
            after.push(file(&format!("d{d}/HOW_TO_DECRYPT.txt"), 600, 3, 600));
        }
        let r = run(&before, &after, 400_000);
        assert_eq!(r.score, 100, "{r:?}");
        assert_eq!(
            (r.removed, r.extension_changes, r.stopped_compressing),
            (40, 40, 40)
        );
        assert_eq!(
            (r.top_new_extension.as_str(), r.top_new_extension_files),
            ("locked", 40)
        );
        assert_eq!((r.ransom_notes, r.ransom_note_dirs), (5, 5));
        assert_eq!(r.reasons.len(), 5, "{:?}", r.reasons);
        assert!(r.reasons.iter().any(|x| x.contains("no longer")));
        assert!(r.reasons.iter().any(|x| x.contains(".locked")));
    }

    #[test]
    fn encrypted_without_renames_still_stands_out() {
        let before = office(40);
        let after: Vec<_> = (0..40)
            .map(|i| file(&format!("d{}/doc{i}.txt", i % 5), 10_000, 2, 10_020))
            .collect();
        let r = run(&before, &after, 400_000);
        assert!(r.score >= 60, "{r:?}");
        assert_eq!(r.stopped_compressing, 40);
    }

    #[test]
    fn an_ordinary_day_scores_nothing() {
        let before = office(40);
        let mut after = before.clone();
        // A few documents edited (still text), one removed, two added, one renamed.
        after[0] = file("d0/doc0.txt", 11_000, 9, 3_300);
        after[1] = file("d1/doc1.txt", 12_000, 8, 3_500);
        after.remove(2);
        after.push(file("d0/new.txt", 5_000, 7, 1_500));
        after.push(file("d1/report.pdf", 50_000, 6, 50_010));
        let moved = after.remove(3);
        after.push(file("d3/doc3-final.txt", moved.0.size, 1, moved.1));
        let r = run(&before, &after, 20_000);
        assert_eq!(r.score, 0, "{r:?}");
        assert!(r.reasons.is_empty());
    }

    #[test]
    fn ransom_note_names() {
        for n in [
            "HOW_TO_DECRYPT.txt",
            "_readme.txt",
            "RESTORE_FILES_INFO.html",
            "!!!READ_ME_NOW!!!.txt",
        ] {
            assert!(is_ransom_note(n), "{n}");
        }
        for n in ["README.md", "readme.txt", "notes.txt", "crypt.c"] {
            assert!(!is_ransom_note(n), "{n}");
        }
    }
}
