//! Scrub: every injected corruption is found with the exact count, reported with the
//! snapshots it affects, and a later backup of a source that still has the data heals it.

use std::collections::HashSet;
use std::fs;

use lifeboat_core::ChunkKey;
use lifeboat_tests::Fleet;
use lifeboat_tests::tree::Rng;

/// `lifeboat verify --json`: its exit code and report.
fn verify_json(fleet: &Fleet) -> (Option<i32>, serde_json::Value) {
    let out = fleet.cli(&["verify", "--json"]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

/// The ids of the snapshots a verify report names.
fn affected_ids(v: &serde_json::Value) -> Vec<String> {
    v["affected_snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn scrub_finds_every_corruption_and_a_backup_heals_it() {
    let mut fleet = Fleet::start();
    let src = tempfile::tempdir().expect("src");
    let mut rng = Rng::new(11);
    // Files below the minimum chunk size are one chunk each: their ids are computable.
    let first: Vec<Vec<u8>> = (0..6).map(|_| rng.bytes(200_000)).collect();
    for (i, data) in first.iter().enumerate() {
        fs::write(src.path().join(format!("f{i}")), data).expect("write");
    }
    let root = tempfile::tempdir().expect("root");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[root.path()]);
    let s1 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let after_first: HashSet<String> = fleet
        .chunk_index()
        .into_iter()
        .map(|(_, p, _, _)| p)
        .collect();
    for i in 0..4 {
        fs::write(src.path().join(format!("g{i}")), rng.bytes(200_000)).expect("write");
    }
    let s2 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();

    let key =
        ChunkKey::from_slice(&fs::read(a.state_dir.join("chunk.key")).expect("key")).expect("key");
    let idx = fleet.chunk_index();
    // Flip a byte in the blobs of f0, f1, f2 (in the first backup's pack).
    let mut flipped = 0;
    for data in &first[..3] {
        let id = key.id_of(data).to_hex();
        let (_, pack, offset, length) = idx
            .iter()
            .find(|(c, ..)| *c == id)
            .expect("indexed")
            .clone();
        assert!(after_first.contains(&pack));
        let path = fleet.pack_path(&pack);
        let mut bytes = fs::read(&path).expect("pack");
        bytes[(offset + length / 2) as usize] ^= 0x40;
        fs::write(&path, bytes).expect("write pack");
        flipped += 1;
    }
    // Truncate the second backup's pack inside its first blob: all its chunks are gone.
    let second: Vec<_> = idx
        .iter()
        .filter(|(_, p, _, _)| !after_first.contains(p))
        .collect();
    let second_pack = second[0].1.clone();
    assert!(
        second.iter().all(|(_, p, _, _)| *p == second_pack),
        "one pack per backup here"
    );
    let cut = second.iter().map(|(_, _, o, _)| *o).min().expect("blobs") + 10;
    fs::OpenOptions::new()
        .write(true)
        .open(fleet.pack_path(&second_pack))
        .expect("open")
        .set_len(cut)
        .expect("truncate");
    let expected = flipped + second.len();

    let out = fleet.cli(&["verify", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["bad"].as_array().map(Vec::len), Some(expected), "{v}");
    let corrupt = v["bad"]
        .as_array()
        .expect("bad")
        .iter()
        .filter(|b| {
            b["reason"]
                .as_str()
                .unwrap_or_default()
                .starts_with("corrupt")
        })
        .count();
    assert_eq!(corrupt, flipped);
    let affected: HashSet<&str> = v["affected_snapshots"]
        .as_array()
        .expect("affected")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        affected.contains(s1.as_str()) && affected.contains(s2.as_str()),
        "{v}"
    );
    assert_eq!(v["unhealed"], expected as u64);
    // Found once: a second scrub finds no new bad chunk (they left the index), yet the
    // store is not clean while snapshots need them: it names them and exits 2.
    let (code, again) = verify_json(&fleet);
    assert_eq!(again["bad"].as_array().map(Vec::len), Some(0));
    assert_eq!(code, Some(2), "{again}");
    let named = affected_ids(&again);
    assert!(named.contains(&s1) && named.contains(&s2), "{again}");

    // The source still has everything: the next backup uploads the lost chunks again.
    let s3 = fleet.backup("a", "data");
    assert!(s3["bytes_new"].as_u64().unwrap_or(0) >= 7 * 200_000, "{s3}");
    let (code, after) = verify_json(&fleet);
    assert_eq!(after["bad"].as_array().map(Vec::len), Some(0), "{after}");
    // s1's chunks are all back; s2 lost its tree with the truncated pack, which no later
    // backup uploads again, so it stays named, and verify says so.
    let named = affected_ids(&after);
    assert!(!named.contains(&s1), "{after}");
    assert!(!named.iter().any(|n| s3["id"] == n.as_str()), "{after}");
    assert_eq!(code, Some(if named.is_empty() { 0 } else { 2 }), "{after}");
    let file_chunks = 3 + 4;
    assert!(
        after["healed"].as_u64().unwrap_or(0) >= file_chunks,
        "{after}"
    );
    // And the new snapshot restores whole.
    let target = root.path().join("back");
    let (ok, job) = fleet.job(&[
        "restore",
        s3["id"].as_str().expect("id"),
        "--agent",
        "a",
        "--to",
        target.to_str().expect("path"),
    ]);
    assert!(ok, "{job}");
    for (i, data) in first.iter().enumerate() {
        assert_eq!(
            &fs::read(target.join(format!("f{i}"))).expect("restored"),
            data
        );
    }
}

/// A store is clean only when every snapshot restores whole: a verify after the one that
/// dropped a bad chunk still names the snapshot that needs it (until a backup heals it),
/// and a damaged pack trailer (what `rebuild-catalog` reads) fails verify too.
#[test]
fn verify_keeps_naming_incomplete_snapshots_and_reads_pack_trailers() {
    let mut fleet = Fleet::start();
    let src = tempfile::tempdir().expect("src");
    let mut rng = Rng::new(12);
    let files: Vec<Vec<u8>> = (0..3).map(|_| rng.bytes(200_000)).collect();
    for (i, data) in files.iter().enumerate() {
        fs::write(src.path().join(format!("f{i}")), data).expect("write");
    }
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    let s1 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let verify = verify_json;
    assert_eq!(verify(&fleet).0, Some(0), "a fresh store verifies");

    // One bit of the pack's trailer index: the chunks still read, the trailer does not.
    let (_, pack, ..) = fleet.chunk_index()[0].clone();
    let path = fleet.pack_path(&pack);
    let original = fs::read(&path).expect("pack");
    let mut bytes = original.clone();
    let n = bytes.len();
    bytes[n - 70] ^= 0x01;
    fs::write(&path, &bytes).expect("write pack");
    let (code, v) = verify(&fleet);
    assert_eq!(code, Some(2), "a damaged trailer passed verify: {v}");
    assert_eq!(v["bad"], serde_json::json!([]), "{v}");
    assert_eq!(v["damaged_packs"][0]["pack"], pack.as_str(), "{v}");
    fs::write(&path, &original).expect("restore pack");
    assert_eq!(verify(&fleet).0, Some(0), "the mended pack verifies");

    // A flipped byte in f0's blob: found once, and the snapshot stays named after.
    let key =
        ChunkKey::from_slice(&fs::read(a.state_dir.join("chunk.key")).expect("key")).expect("key");
    let id = key.id_of(&files[0]).to_hex();
    let (_, pack, offset, length) = fleet
        .chunk_index()
        .into_iter()
        .find(|(c, ..)| *c == id)
        .expect("indexed");
    let mut bytes = fs::read(fleet.pack_path(&pack)).expect("pack");
    bytes[(offset + length / 2) as usize] ^= 0x40;
    fs::write(fleet.pack_path(&pack), &bytes).expect("write pack");
    let (code, v) = verify(&fleet);
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(v["bad"].as_array().map(Vec::len), Some(1), "{v}");
    for round in 0..2 {
        let (code, v) = verify(&fleet);
        assert_eq!(
            code,
            Some(2),
            "verify #{} after the drop says clean: {v}",
            round + 2
        );
        assert_eq!(v["bad"], serde_json::json!([]), "{v}");
        let affected = &v["affected_snapshots"][0];
        assert_eq!(affected["id"], s1.as_str(), "{v}");
        assert!(
            affected["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("1 chunks the store does not have"),
            "{v}"
        );
    }
    // A backup of the source that still has the data heals it: clean again.
    fleet.backup("a", "data");
    let (code, v) = verify(&fleet);
    assert_eq!(code, Some(0), "after healing: {v}");
    eprintln!(
        "verify: trailer damage found, 1 bad chunk found, snapshot named in 2 later verifies, healed"
    );
}
