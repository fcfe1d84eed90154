//! Scrub: every injected corruption is found with the exact count, reported with the
//! snapshots it affects, and a later backup of a source that still has the data heals it.

use std::collections::HashSet;
use std::fs;

use lifeboat_core::ChunkKey;
use lifeboat_tests::Fleet;
use lifeboat_tests::tree::Rng;

/// `(chunk id hex, pack, offset, length)` of every indexed chunk.
fn index(fleet: &Fleet) -> Vec<(String, String, u64, u64)> {
    let db = rusqlite::Connection::open(fleet.path("ctl/catalog.db")).expect("catalog");
    let mut st = db
        .prepare("SELECT lower(hex(id)), pack, offset, length FROM chunks")
        .expect("query");
    st.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
        ))
    })
    .expect("rows")
    .collect::<Result<_, _>>()
    .expect("rows")
}

fn pack_path(fleet: &Fleet, pack: &str) -> std::path::PathBuf {
    fleet.path(&format!("ctl/store/packs/{}/{pack}.pack", &pack[..2]))
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
    let after_first: HashSet<String> = index(&fleet).into_iter().map(|(_, p, _, _)| p).collect();
    for i in 0..4 {
        fs::write(src.path().join(format!("g{i}")), rng.bytes(200_000)).expect("write");
    }
    let s2 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();

    let key =
        ChunkKey::from_slice(&fs::read(a.state_dir.join("chunk.key")).expect("key")).expect("key");
    let idx = index(&fleet);
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
        let path = pack_path(&fleet, &pack);
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
        .open(pack_path(&fleet, &second_pack))
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
    // Found once: a second scrub sees nothing new (the bad chunks left the index).
    let again = fleet.cli_json(&["verify"]);
    assert_eq!(again["bad"].as_array().map(Vec::len), Some(0));

    // The source still has everything: the next backup uploads the lost chunks again.
    let s3 = fleet.backup("a", "data");
    assert!(s3["bytes_new"].as_u64().unwrap_or(0) >= 7 * 200_000, "{s3}");
    let after = fleet.cli_json(&["verify"]);
    assert_eq!(after["bad"].as_array().map(Vec::len), Some(0), "{after}");
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
