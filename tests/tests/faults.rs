//! Faults from the reliability checklist (`../shared/RELIABILITY.md`, section A), made
//! real on this machine: each test names its row and prints its figure.
//!
//! The filesystems that fill up are small tmpfs mounts (root only), and skewed clocks come
//! from libfaketime (Debian's `faketime`). CI runs as root, installs faketime and sets
//! `LIFEBOAT_REQUIRE_MOUNT` and `LIFEBOAT_REQUIRE_FAKETIME`, so there these cannot skip.

use std::fs;
use std::time::Duration;

use lifeboat_tests::powercut;
use lifeboat_tests::tree::{self, Rng};
use lifeboat_tests::{Fleet, Tmpfs};

/// A8: the store's filesystem fills during a backup. The backup fails with an error that
/// says so, no snapshot appears, and once space is freed the next backup commits a
/// snapshot that verifies and restores byte for byte (committed means restorable).
#[test]
fn a8_store_full_during_backup_then_freed_commits_a_restorable_snapshot() {
    // About 16 MiB must be stored: the store fills early in the first pack, near its
    // end, and after the 32 MiB pack would have been sealed but before the tree.
    for leave_mib in [2, 7, 13] {
        if !store_full_then_freed(leave_mib) {
            return;
        }
    }
}

/// One A8 round with `leave_mib` MiB free in the store when the backup starts; false
/// where no tmpfs can be mounted.
fn store_full_then_freed(leave_mib: u64) -> bool {
    let mnt = tempfile::tempdir().expect("mount point");
    let Some(disk) = Tmpfs::mount(mnt.path(), 48) else {
        return false;
    };
    let store = disk.path.join("store");
    let mut fleet = Fleet::start_with(&["--store", store.to_str().expect("utf8")]);
    let src = fleet.path("src");
    let mut rng = Rng::new(8);
    tree::make_tree(&src, &mut rng);
    let expected = tree::manifest(&src);
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);

    disk.fill(leave_mib << 20);
    let (ok, job) = fleet.job(&["backup", "a", "--source", "data"]);
    assert!(!ok, "a backup into a full store succeeded: {job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("store is full"),
        "the failed backup does not say the store is full: {job}\ncontroller log:\n{}",
        fleet.controller_log()
    );
    assert_eq!(job["refusal"], "store_full", "{job}");
    let listed = fleet.cli_json(&["snapshots", "--agent", "a"]);
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(0),
        "a failed backup left a snapshot: {listed}"
    );

    disk.free();
    let snap = fleet.backup("a", "data");
    let id = snap["id"].as_str().expect("id");
    let verify = fleet.cli(&["verify", "--json"]);
    assert!(
        verify.status.success(),
        "verify after the store filled and was freed: {}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let target = restores.join("after-full");
    let (ok, job) = fleet.restore_to(id, "a", &target, &[]);
    assert!(ok, "restore failed: {job}\n{}", fleet.agent_log("a"));
    tree::assert_same(&expected, &target);
    eprintln!(
        "A8 store full during backup ({leave_mib} MiB free): {} entries compared after the refill, {} bytes stored",
        expected.len(),
        snap["bytes_new"]
    );
    true
}

/// A8 for GC: the store's filesystem is full when a GC runs whose compaction must write a
/// new pack (the live tenth of a pack whose rest a prune made dead). The GC fails saying the
/// store is full, or reclaims what needs no writing; either way nothing is lost: `verify`
/// is clean and the kept snapshot restores identical. Once space is freed the next GC
/// finishes the compaction and a third finds nothing left.
#[test]
fn a8_store_full_during_gc_loses_nothing_and_the_next_gc_finishes() {
    let mnt = tempfile::tempdir().expect("mount point");
    let Some(disk) = Tmpfs::mount(mnt.path(), 32) else {
        return;
    };
    let store = disk.path.join("store");
    let mut fleet = Fleet::start_with(&[
        "--store",
        store.to_str().expect("utf8"),
        "--gc-lease",
        "0s",
        "--prune-every",
        "0s",
    ]);
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    let mut rng = Rng::new(81);
    fs::write(src.join("stays.txt"), rng.text(400_000)).expect("write");
    fs::write(src.join("big.bin"), rng.bytes(4 << 20)).expect("write");
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    fleet.backup("a", "data");
    fs::write(src.join("big.bin"), rng.bytes(4 << 20)).expect("write");
    let kept = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let expected = tree::manifest(&src);
    fleet.apply_policy(
        "[[policy]]\nname = \"keep\"\nsources = [\"data\"]\nschedule = \"0 3 1 1 *\"\nkeep = { last = 1 }\n",
    );
    let pruned = fleet.cli_json(&["prune"]);
    assert_eq!(pruned["removed"], 1, "{pruned}");

    disk.fill(0);
    let full = fleet.cli(&["gc", "--json"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&full.stdout),
        String::from_utf8_lossy(&full.stderr)
    );
    if !full.status.success() {
        assert!(
            said.contains("store is full"),
            "a GC on a full store failed without saying so: {said}\ncontroller log:\n{}",
            fleet.controller_log()
        );
    }
    let whole = |when: &str| {
        let verify = fleet.cli(&["verify", "--json"]);
        assert!(
            verify.status.success(),
            "verify {when}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let target = restores.join(when.replace(' ', "-"));
        let (ok, job) = fleet.restore_to(&kept, "a", &target, &[]);
        assert!(ok, "restore {when}: {job}\n{}", fleet.agent_log("a"));
        tree::assert_same(&expected, &target);
    };
    whole("after the full GC");

    disk.free();
    let done = fleet.cli_json(&["gc"]);
    assert!(
        done["packs_compacted"].as_u64().unwrap_or(0) + done["packs_deleted"].as_u64().unwrap_or(0)
            > 0
            || full.status.success(),
        "the GC after freeing space left the dead pack: {done}"
    );
    whole("after the freed GC");
    let again = fleet.cli_json(&["gc"]);
    assert_eq!(again["swept"], 0, "{again}");
    assert_eq!(again["packs_compacted"], 0, "{again}");
    eprintln!(
        "A8 store full during GC: the GC {} ({}), nothing lost; after freeing: {done}",
        if full.status.success() {
            "succeeded"
        } else {
            "failed"
        },
        said.trim()
    );
}

/// A8 for the catalog: the controller's data directory (its SQLite catalog and WAL, the
/// audit log) fills while the store, elsewhere, has room. Backups of a growing source run
/// until the catalog cannot take one: each failure says the controller's disk is full and
/// lists nothing; reads (listings, a restore of an earlier snapshot) keep working; once
/// space is freed a backup commits, the catalog passes SQLite's integrity check, `verify`
/// is clean, and every listed snapshot restores identical. What was audited meanwhile (a
/// call denied while the disk was full, every backup's start) reaches the audit log once it
/// is freed, the chain intact: filling the disk hides nothing from it.
#[test]
fn a8_catalog_disk_full_fails_backups_clearly_and_loses_nothing() {
    // Nothing left (the job cannot be recorded), and room for a job but not its chunks'
    // index rows or its snapshot's (the backup runs and cannot commit).
    let mut waited = 0;
    for leave_kib in [0, 256, 1024] {
        match catalog_full_then_freed(leave_kib) {
            Some(n) => waited += n,
            None => return,
        }
    }
    assert!(
        waited > 0,
        "no audit entry ever waited for the catalog: the test did not exercise it"
    );
}

/// One catalog A8 round with `leave_kib` KiB free: how many audit entries waited for the
/// catalog; None where no tmpfs can be mounted.
fn catalog_full_then_freed(leave_kib: u64) -> Option<u64> {
    let dir = tempfile::Builder::new()
        .prefix("lifeboat-e2e-")
        .tempdir()
        .expect("tempdir");
    let disk = Tmpfs::mount(&dir.path().join("ctl"), 24)?;
    let store = dir.path().join("store");
    let mut fleet =
        Fleet::start_in_with(dir, &["--store", store.to_str().expect("utf8")], Vec::new());
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    let mut rng = Rng::new(82);
    // Each round adds 1,500 small files: as many chunks for the catalog to index.
    let mut grow = |round: usize| {
        let d = src.join(format!("r{round:02}"));
        fs::create_dir_all(&d).expect("dir");
        for f in 0..1500 {
            fs::write(d.join(format!("f{f:04}.txt")), rng.text(600)).expect("write");
        }
        tree::manifest(&src)
    };
    // An identity whose calls beyond its role are denied, and audited.
    let viewer = fleet.path("viewer.identity");
    let out = fleet.cli(&[
        "identity",
        "create",
        "viewer",
        "--role",
        "viewer",
        "--out",
        viewer.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut listed: Vec<(String, Vec<tree::Item>)> = Vec::new();
    let first = grow(0);
    listed.push((
        fleet.backup("a", "data")["id"].as_str().expect("id").into(),
        first,
    ));

    disk.fill(leave_kib << 10);
    let mut failures = Vec::new();
    for round in 1..=12 {
        let manifest = grow(round);
        // Refused when the job cannot even be recorded, or failed when its commit cannot.
        let out = fleet.cli(&["backup", "a", "--source", "data", "--wait", "--json"]);
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() {
            listed.push((
                job["snapshot_ids"][0].as_str().expect("id").into(),
                manifest,
            ));
            continue;
        }
        let error = match job["error"].as_str() {
            Some(e) => e.to_string(),
            None => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        };
        assert!(
            error.contains("disk is full"),
            "a backup failed without saying the controller's disk is full: {job}\ncontroller log:\n{}",
            fleet.controller_log()
        );
        failures.push((job.get("error").is_some(), error));
        if failures.len() == 2 {
            break;
        }
    }
    assert!(
        !failures.is_empty(),
        "12 backups fitted in a full catalog disk: the test did not fill it"
    );
    // Someone uses the full disk as cover: a call beyond its role, denied, whose audit
    // entry the catalog cannot take now.
    let out = fleet
        .cli_command(&["agents", "revoke", "a"])
        .env("LIFEBOAT_IDENTITY", &viewer)
        .output()
        .expect("lifeboat");
    assert!(!out.status.success(), "a viewer revoked an agent");
    let waiting =
        lifeboat_tests::counter(&lifeboat_tests::metrics(&fleet), "lifeboat_audit_unsaved");
    let ids: Vec<String> = fleet.snapshot_ids();
    assert_eq!(
        ids.len(),
        listed.len(),
        "listed {ids:?}, acknowledged {:?}",
        listed.iter().map(|(id, _)| id).collect::<Vec<_>>()
    );

    disk.free();
    let manifest = tree::manifest(&src);
    listed.push((
        fleet.backup("a", "data")["id"].as_str().expect("id").into(),
        manifest,
    ));
    let db = rusqlite::Connection::open(fleet.path("ctl/catalog.db")).expect("catalog");
    // The ends the catalog could not take while full were kept and reach it now.
    lifeboat_tests::wait_for(
        "every job's end to reach the catalog",
        Duration::from_secs(30),
        || {
            let open: i64 = db
                .query_row("SELECT count(*) FROM jobs WHERE finished_ms = 0", [], |r| {
                    r.get(0)
                })
                .ok()?;
            (open == 0).then_some(())
        },
    );
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    // What was audited while the disk was full reached the log once it was freed: the
    // denial, and the start of every backup job the catalog holds, the chain intact.
    let audited = lifeboat_tests::wait_for(
        "the audit entries kept in memory to reach the log",
        Duration::from_secs(30),
        || {
            let log = fleet.cli_json(&["audit"]);
            let log = log.as_array()?.clone();
            log.iter()
                .any(|e| e["action"] == "authz.denied" && e["actor"].to_string().contains("viewer"))
                .then_some(log)
        },
    );
    let jobs: Vec<String> = db
        .prepare("SELECT id FROM jobs WHERE kind = 'backup'")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .expect("jobs");
    for job in &jobs {
        assert!(
            audited
                .iter()
                .any(|e| e["action"] == "backup.start" && e["detail"]["job"] == job.as_str()),
            "backup job {job} has no backup.start entry in the audit log"
        );
    }
    let chain = fleet.cli(&["audit", "verify"]);
    assert!(
        chain.status.success(),
        "the audit chain after the disk was freed: {}{}",
        String::from_utf8_lossy(&chain.stdout),
        String::from_utf8_lossy(&chain.stderr)
    );
    let verify = fleet.cli(&["verify", "--json"]);
    assert!(
        verify.status.success(),
        "verify after the catalog's disk was freed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    for (i, (id, manifest)) in listed.iter().enumerate() {
        let target = restores.join(format!("listed-{i}"));
        let (ok, job) = fleet.restore_to(id, "a", &target, &[]);
        assert!(ok, "restore of {id}: {job}\n{}", fleet.agent_log("a"));
        tree::assert_same(manifest, &target);
    }
    let ran = failures.iter().filter(|(ran, _)| *ran).count();
    eprintln!(
        "A8 catalog disk full ({leave_kib} KiB free): {} backups committed first, then {} refused before they ran \
         and {ran} failed as they ran, each saying so ({}); nothing half-listed; {waiting} audit entries waited \
         in memory; after freeing: integrity ok, the denial and {} backup starts in the audit log, its chain \
         intact, verify clean, {} snapshots restored identical",
        listed.len() - 2,
        failures.len() - ran,
        failures.last().map(|(_, e)| e.as_str()).unwrap_or_default(),
        jobs.len(),
        listed.len()
    );
    Some(waiting)
}

/// A9: the restore target's filesystem fills during a restore. The restore fails saying
/// so, no byte that was there before changes, and the same restore run again once space is
/// freed ends identical to the snapshot.
#[test]
fn a9_restore_target_full_then_freed_restores_identically() {
    // The tree holds about 21 MiB of data (its sparse file takes no space): the target
    // fills at once, in the big files, among the small ones, and near the end.
    for leave_mib in [0, 1, 10, 19, 20] {
        if !target_full_then_freed(leave_mib) {
            return;
        }
    }
}

fn target_full_then_freed(leave_mib: u64) -> bool {
    let mnt = tempfile::tempdir().expect("mount point");
    let Some(disk) = Tmpfs::mount(mnt.path(), 64) else {
        return false;
    };
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let mut rng = Rng::new(9);
    tree::make_tree(&src, &mut rng);
    let expected = tree::manifest(&src);
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[disk.path.as_path()]);
    let snap = fleet.backup("a", "data");
    let id = snap["id"].as_str().expect("id");

    let bystander = disk.path.join("bystander.txt");
    let before = rng.text(100_000);
    fs::write(&bystander, &before).expect("bystander");
    disk.fill(leave_mib << 20);
    let target = disk.path.join("restore");
    let (ok, job) = fleet.restore_to(id, "a", &target, &[]);
    assert!(!ok, "a restore into a full filesystem succeeded: {job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("No space left on device"),
        "the failed restore does not say the target is full: {job}"
    );
    assert_eq!(
        fs::read(&bystander).expect("bystander"),
        before,
        "a file beside the target changed"
    );

    disk.free();
    let (ok, job) = fleet.restore_to(id, "a", &target, &[]);
    assert!(
        ok,
        "restore after freeing space failed: {job}\n{}",
        fleet.agent_log("a")
    );
    tree::assert_same(&expected, &target);
    assert_eq!(fs::read(&bystander).expect("bystander"), before);
    eprintln!(
        "A9 restore target full ({leave_mib} MiB free): {} entries compared after the second restore",
        expected.len()
    );
    true
}

/// How a pack is damaged for A6/A7.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlippedBit,
    Truncated,
    ZeroLength,
    Deleted,
}

/// A6/A7: a damaged pack fails only the files whose chunks it held. Every other file of
/// the snapshot restores byte for byte, the damaged ones are named with their chunk, the
/// job fails (nothing silent), and nothing wrong reaches a final path.
#[test]
fn a6_a7_a_damaged_pack_fails_only_the_files_that_need_it() {
    let mut compared = 0;
    for damage in [
        Damage::FlippedBit,
        Damage::Truncated,
        Damage::ZeroLength,
        Damage::Deleted,
    ] {
        compared += damaged_pack_restore(damage);
    }
    eprintln!("A6/A7 damaged packs: 4 kinds of damage, {compared} intact files compared");
}

fn damaged_pack_restore(damage: Damage) -> usize {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    let mut rng = Rng::new(67);
    // Below the minimum chunk size, each file is one chunk: its id is computable.
    let first: Vec<Vec<u8>> = (0..3).map(|_| rng.bytes(150_000)).collect();
    for (i, data) in first.iter().enumerate() {
        fs::write(src.join(format!("f{i}")), data).expect("write");
    }
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    fleet.backup("a", "data");
    let first_pack = fleet.chunk_index()[0].1.clone();
    // The second backup's new files (and its tree) go into a pack of their own.
    let second: Vec<Vec<u8>> = (0..3).map(|_| rng.bytes(150_000)).collect();
    for (i, data) in second.iter().enumerate() {
        fs::write(src.join(format!("g{i}")), data).expect("write");
    }
    let snap = fleet.backup("a", "data");

    let key =
        lifeboat_core::ChunkKey::from_slice(&fs::read(a.state_dir.join("chunk.key")).expect("key"))
            .expect("key");
    let path = fleet.pack_path(&first_pack);
    let lost: Vec<usize> = match damage {
        Damage::FlippedBit => {
            let id = key.id_of(&first[0]).to_hex();
            let (.., offset, length) = fleet
                .chunk_index()
                .into_iter()
                .find(|(c, ..)| *c == id)
                .expect("indexed");
            let mut bytes = fs::read(&path).expect("pack");
            bytes[(offset + length / 2) as usize] ^= 0x10;
            fs::write(&path, bytes).expect("write");
            vec![0]
        }
        Damage::Truncated => {
            let len = fs::metadata(&path).expect("pack").len();
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open")
                .set_len(len / 2)
                .expect("truncate");
            // Which files lie past the cut depends on the order they were packed in.
            let index = fleet.chunk_index();
            (0..3)
                .filter(|i| {
                    let id = key.id_of(&first[*i]).to_hex();
                    index.iter().any(|(c, _, o, l)| *c == id && o + l > len / 2)
                })
                .collect()
        }
        Damage::ZeroLength => {
            fs::File::create(&path).expect("truncate");
            vec![0, 1, 2]
        }
        Damage::Deleted => {
            fs::remove_file(&path).expect("delete");
            vec![0, 1, 2]
        }
    };
    assert!(!lost.is_empty(), "{damage:?} damaged nothing");
    // A controller that still holds the pack open would read a deleted one: restart it, as
    // the damage would be found after a crash or a reboot.
    fleet.stop_controller();
    fleet.start_controller();
    fleet.wait_connected(1);

    // Once as found, once more after a verify dropped the bad chunks from the index.
    let mut compared = 0;
    for round in 0..2 {
        if round == 1 {
            let verify = fleet.cli(&["verify"]);
            assert_eq!(
                verify.status.code(),
                Some(2),
                "{damage:?}: verify found nothing"
            );
        }
        let target = restores.join(format!("t{round}"));
        let (ok, job) = fleet.restore_to(snap["id"].as_str().expect("id"), "a", &target, &[]);
        assert!(
            !ok,
            "{damage:?}: a restore with damaged files succeeded: {job}"
        );
        let error = job["error"].as_str().unwrap_or_default();
        for (i, data) in first.iter().enumerate() {
            let name = format!("f{i}");
            if lost.contains(&i) {
                assert!(
                    error.contains(&name) && error.contains(&key.id_of(data).to_hex()),
                    "{damage:?}: {name} is not named with its chunk: {error}"
                );
                assert!(
                    !target.join(&name).exists(),
                    "{damage:?}: damaged {name} reached its final path"
                );
            } else {
                assert_eq!(&fs::read(target.join(&name)).expect("restored"), data);
                compared += 1;
            }
        }
        for (i, data) in second.iter().enumerate() {
            let restored = fs::read(target.join(format!("g{i}"))).unwrap_or_else(|e| {
                panic!("{damage:?}: intact g{i} was not restored ({e}): {job}")
            });
            assert_eq!(&restored, data, "{damage:?}: g{i} differs");
            compared += 1;
        }
        for e in fs::read_dir(&target).expect("ls") {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".lifeboat-"),
                "{damage:?}: temp file {name} left"
            );
        }
    }
    compared
}

/// libfaketime's preload library (Debian's `faketime` package).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Whether libfaketime is installed; without it `row`'s test is skipped, saying so, unless
/// the run requires it (`LIFEBOAT_REQUIRE_FAKETIME`).
fn have_faketime(row: &str) -> bool {
    if std::path::Path::new(FAKETIME).exists() {
        return true;
    }
    assert!(
        std::env::var_os("LIFEBOAT_REQUIRE_FAKETIME").is_none(),
        "{FAKETIME} is missing: apt-get install faketime"
    );
    eprintln!("\n!!! SKIPPED: {row} needs libfaketime (apt-get install faketime)\n");
    false
}

/// The environment that runs a process on a wall clock offset by what the file `offset`
/// says (`+25h`, `-30m`; libfaketime reads it again every second), its monotonic clock
/// left alone.
fn stepped_clock(offset: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), FAKETIME.into()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset.to_str().expect("path").into(),
        ),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// What an agent whose clock is off should meet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Skewed {
    /// Within the hour certificates allow: it connects and backs up.
    BacksUp,
    /// Ahead by more: it connects, and its commits are refused saying its clock is ahead.
    Refused,
    /// Behind by more: it cannot connect, and says its clock is behind.
    CannotConnect,
}

/// A12: an agent's clock off by ±10 min, ±2 h and ±24 h (libfaketime). Backups survive an
/// hour either way (the skew certificates allow); beyond it, each side says exactly which
/// clock is wrong. Retention never depends on an agent's clock (covered by the policy
/// tests), so nothing else changes.
#[test]
fn a12_agent_clock_skew_backs_up_within_an_hour_and_names_the_clock_beyond() {
    if !have_faketime("A12") {
        return;
    }
    let cases = [
        ("-10m", Skewed::BacksUp),
        ("+10m", Skewed::BacksUp),
        ("+2h", Skewed::Refused),
        ("-2h", Skewed::CannotConnect),
        ("+24h", Skewed::Refused),
        ("-24h", Skewed::CannotConnect),
    ];
    for (offset, expected) in cases {
        clock_off_by(offset, expected);
    }
    eprintln!(
        "A12 agent clock skew: {} offsets, each as decided",
        cases.len()
    );
}

fn clock_off_by(offset: &str, expected: Skewed) {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    fs::write(src.join("f"), Rng::new(12).bytes(50_000)).expect("write");
    let a = fleet.enroll("a");
    fleet.agent_env = vec![
        ("LD_PRELOAD".into(), FAKETIME.into()),
        ("FAKETIME".into(), offset.into()),
        // Timers and timeouts keep real time; only the wall clock is off.
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    match expected {
        Skewed::BacksUp => {
            fleet.run_agent(&a, &[("data", src.as_path())], &[]);
            fleet.backup("a", "data");
        }
        Skewed::Refused => {
            fleet.run_agent(&a, &[("data", src.as_path())], &[]);
            let (ok, job) = fleet.job(&["backup", "a", "--source", "data"]);
            assert!(
                !ok,
                "{offset}: a backup dated {offset} was committed: {job}"
            );
            let error = job["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("in the future") && error.contains("fix the agent's clock"),
                "{offset}: the refusal does not name the agent's clock: {job}"
            );
        }
        Skewed::CannotConnect => {
            fleet.spawn_agent(&a, &[("data", src.as_path())], &[], &[]);
            lifeboat_tests::wait_for(
                &format!("agent a ({offset}) to say its clock is behind"),
                Duration::from_secs(30),
                || {
                    fleet
                        .agent_log("a")
                        .contains("certificate is not valid yet by this machine's clock")
                        .then_some(())
                },
            );
            lifeboat_tests::wait_for(
                "the controller to say a client refused its certificate",
                Duration::from_secs(30),
                || {
                    fleet
                        .controller_log()
                        .contains("one of the two clocks is off")
                        .then_some(())
                },
            );
            let agents = fleet.cli_json(&["agents"]);
            assert_eq!(agents[0]["connected"], false, "{offset}: {agents}");
        }
    }
}

/// A1 (one point of it): an agent that dies right after its snapshot was committed, before
/// it could report, leaves a job that succeeded with that snapshot, not an interrupted one
/// that a scheduled retry would back up a second time.
#[test]
fn a1_an_agent_killed_after_its_commit_leaves_a_succeeded_job() {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    fs::write(src.join("f"), Rng::new(13).bytes(80_000)).expect("write");
    let a = fleet.enroll("a");
    fleet.agent_env = vec![("LIFEBOAT_CRASH_AT".into(), "backup-after-commit".into())];
    fleet.run_agent(&a, &[("data", src.as_path())], &[]);
    let (_, job) = fleet.job(&["backup", "a", "--source", "data"]);
    let snaps = fleet.cli_json(&["snapshots", "--agent", "a"]);
    let listed: Vec<&str> = snaps
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(listed.len(), 1, "{snaps}");
    assert!(
        fleet
            .agent_log("a")
            .contains("backup-after-commit: aborting here"),
        "the agent did not die where the test wanted"
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["snapshot_ids"], serde_json::json!([listed[0]]), "{job}");
    eprintln!("A1 agent killed after commit: job succeeded with its one snapshot");
}

/// A6/A7 for `rebuild-catalog`: with the catalog lost, a pack with a flipped bit in its
/// trailer and a pack cut in half give back every chunk still readable (all of the first,
/// those before the cut of the second), moved into new packs; the damaged files are kept
/// aside in `store/damaged/`; the rebuild says so (non-zero exit) and the snapshot whose
/// chunks all survived restores byte for byte.
#[test]
fn a7_rebuild_catalog_salvages_what_damaged_packs_still_hold() {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    let mut rng = Rng::new(71);
    let first: Vec<Vec<u8>> = (0..4).map(|_| rng.bytes(150_000)).collect();
    for (i, data) in first.iter().enumerate() {
        fs::write(src.join(format!("f{i}")), data).expect("write");
    }
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    let s1 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let p1 = fleet.chunk_index()[0].1.clone();
    let second: Vec<Vec<u8>> = (0..6).map(|_| rng.bytes(150_000)).collect();
    for (i, data) in second.iter().enumerate() {
        fs::write(src.join(format!("g{i}")), data).expect("write");
    }
    fleet.backup("a", "data");
    let index = fleet.chunk_index();
    let in_p2: Vec<_> = index
        .iter()
        .filter(|(_, p, ..)| *p != p1)
        .cloned()
        .collect();
    let p2 = in_p2[0].1.clone();
    assert!(
        in_p2.iter().all(|(_, p, ..)| *p == p2),
        "one pack per backup here"
    );
    let in_p1 = index.len() - in_p2.len();

    // One bit of p1's trailer; p2 cut in half.
    let path1 = fleet.pack_path(&p1);
    let mut bytes = fs::read(&path1).expect("p1");
    let n = bytes.len();
    bytes[n - 70] ^= 1;
    fs::write(&path1, bytes).expect("write p1");
    let path2 = fleet.pack_path(&p2);
    let half = fs::metadata(&path2).expect("p2").len() / 2;
    fs::OpenOptions::new()
        .write(true)
        .open(&path2)
        .expect("open p2")
        .set_len(half)
        .expect("truncate p2");
    let before_cut = in_p2.iter().filter(|(_, _, o, l)| o + l <= half).count();

    let out = fleet.lose_catalog_and_rebuild();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a rebuild over damaged packs said nothing: {stdout}"
    );
    assert!(
        stdout.contains(&format!("{in_p1} chunks salvaged")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{before_cut} chunks salvaged")),
        "{stdout}"
    );
    for pack in [&p1, &p2] {
        assert!(
            fleet
                .path(&format!("ctl/store/damaged/{pack}.pack"))
                .exists(),
            "damaged pack {pack} was not kept aside"
        );
    }
    fleet.start_controller();
    assert_eq!(fleet.chunk_index().len(), in_p1 + before_cut);
    // A rebuilt catalog does not know the agents' certificates: restore onto a new one.
    let b = fleet.enroll("b");
    let restores = fleet.path("restores-b");
    fleet.run_agent(&b, &[], &[restores.as_path()]);
    let target = restores.join("s1");
    let (ok, job) = fleet.restore_to(&s1, "b", &target, &[]);
    assert!(
        ok,
        "the snapshot whose chunks all survived does not restore: {job}"
    );
    for (i, data) in first.iter().enumerate() {
        assert_eq!(
            &fs::read(target.join(format!("f{i}"))).expect("restored"),
            data
        );
    }
    eprintln!(
        "A7 rebuild salvage: {in_p1} of {in_p1} chunks behind a bad trailer, {before_cut} of {} before a cut",
        in_p2.len()
    );
}

/// An `LD_PRELOAD` shim that fails `fsync` and `fdatasync` with EIO for every file whose
/// path contains `$LIFEBOAT_FAIL_FSYNC` (looked up through /proc/self/fd).
fn fsync_shim() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    lifeboat_tests::preload_shim("failfsync", FSYNC_SHIM)
}

/// Restarts the controller with [`FSYNC_SHIM`] preloaded and its `faults` variables set;
/// waits for the fleet's one agent.
fn restart_through_shim(fleet: &mut Fleet, shim: &std::path::Path, faults: &[(&str, &str)]) {
    fleet.stop_controller();
    fleet.controller_env = vec![("LD_PRELOAD".into(), shim.display().to_string())];
    fleet
        .controller_env
        .extend(faults.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    fleet.start_controller();
    fleet.wait_connected(1);
}

const FSYNC_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* LIFEBOAT_FAIL_FSYNC=SUBSTRING: every sync of a file whose path holds it fails.
   LIFEBOAT_FAIL_FSYNC_PERMILLE=N: a pseudo-random N in 1,000 syncs of any file fail
   (LIFEBOAT_FAIL_FSYNC_SEED seeds the sequence). Each failure is logged on stderr. */
static int doomed(int fd) {
    static unsigned long long state;
    static int seeded;
    const char *match = getenv("LIFEBOAT_FAIL_FSYNC");
    const char *permille = getenv("LIFEBOAT_FAIL_FSYNC_PERMILLE");
    char link[64], path[4096];
    int fail = 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    if (match && *match) fail = strstr(path, match) != NULL;
    if (permille && *permille) {
        if (!seeded) {
            const char *seed = getenv("LIFEBOAT_FAIL_FSYNC_SEED");
            state = seed ? strtoull(seed, NULL, 10) : 1;
            seeded = 1;
        }
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        fail = (int)((state >> 33) % 1000) < atoi(permille);
    }
    if (fail) fprintf(stderr, "failfsync: EIO on %s\n", path);
    return fail;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (doomed(fd)) { errno = EIO; return -1; }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (doomed(fd)) { errno = EIO; return -1; }
    return real(fd);
}
"#;

/// A3: fsync fails with EIO on the store's pack files (an `LD_PRELOAD` shim). The backup
/// fails, nothing that was not synced is trusted (no snapshot, no pack indexed, no temp
/// file left), and with the disk healthy again the next backup verifies and restores.
#[test]
fn a3_fsync_failing_on_packs_commits_nothing_it_did_not_sync() {
    let Some((_shim_dir, shim)) = fsync_shim() else {
        return;
    };
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let mut rng = Rng::new(3);
    tree::make_tree(&src, &mut rng);
    let expected = tree::manifest(&src);
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);

    restart_through_shim(&mut fleet, &shim, &[("LIFEBOAT_FAIL_FSYNC", ".pack")]);
    let (ok, job) = fleet.job(&["backup", "a", "--source", "data"]);
    assert!(
        !ok,
        "a backup whose packs could not be synced succeeded: {job}"
    );
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("Input/output error") || error.contains("could not be stored"),
        "the failure does not say the store could not sync: {job}"
    );
    assert!(!error.contains("internal error"), "{job}");
    assert_eq!(
        fleet.cli_json(&["snapshots"]).as_array().map(Vec::len),
        Some(0),
        "a snapshot was listed on unsynced packs"
    );
    assert!(
        fleet.chunk_index().is_empty(),
        "chunks of an unsynced pack were indexed"
    );
    let tmp_left = fs::read_dir(fleet.path("ctl/store/tmp"))
        .expect("store tmp")
        .count();
    assert_eq!(tmp_left, 0, "temp files of failed seals were left behind");

    fleet.stop_controller();
    fleet.controller_env.clear();
    fleet.start_controller();
    fleet.wait_connected(1);
    let snap = fleet.backup("a", "data");
    let verify = fleet.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let target = restores.join("after-eio");
    let (ok, job) = fleet.restore_to(snap["id"].as_str().expect("id"), "a", &target, &[]);
    assert!(ok, "{job}");
    tree::assert_same(&expected, &target);
    eprintln!(
        "A3 fsync EIO on every pack: backup refused, 0 snapshots, 0 chunks indexed, 0 temp files; then {} entries restored identical",
        expected.len()
    );
}

/// A3 at the checklist's rate: fsync and fdatasync fail with EIO on a pseudo-random one
/// call in a hundred, on every file the controller syncs (packs, envelopes, directories,
/// the catalog's WAL, the audit log). Backups of a changing source run one after another
/// until at least three failures were injected and backups succeeded after them, and
/// (for up to 150 backups) one failure hit outside the store (the catalog's WAL, synced
/// as each snapshot is listed). A backup
/// may fail (naming the error) or succeed; then, on a healthy disk, every acknowledged
/// snapshot is listed and restores identical to the source as it was backed up, and
/// `lifeboat verify` finds the store whole: no sync failure was retried and trusted.
#[test]
fn a3_fsync_failing_on_one_call_in_a_hundred_loses_no_acknowledged_snapshot() {
    let Some((_shim_dir, shim)) = fsync_shim() else {
        return;
    };
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let mut rng = Rng::new(31);
    tree::make_tree(&src, &mut rng);
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);

    restart_through_shim(
        &mut fleet,
        &shim,
        &[
            ("LIFEBOAT_FAIL_FSYNC_PERMILLE", "10"),
            ("LIFEBOAT_FAIL_FSYNC_SEED", "7"),
        ],
    );
    let failed_paths = |fleet: &Fleet| -> Vec<String> {
        fleet
            .controller_log()
            .lines()
            .filter_map(|l| {
                l.split_once("failfsync: EIO on ")
                    .map(|(_, p)| p.to_string())
            })
            .collect()
    };
    let injected = |fleet: &Fleet| failed_paths(fleet).len();
    let outside_store = |fleet: &Fleet| {
        failed_paths(fleet)
            .iter()
            .filter(|p| !p.contains("/store/"))
            .count()
    };
    // Each acknowledged snapshot, its source's manifest, and whether a fault was injected
    // since the one before (those, the first and the last are restored; verify reads the
    // rest).
    let mut acknowledged: Vec<(String, Vec<tree::Item>, bool)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut succeeded_after_a_fault = 0;
    let mut faults_seen = 0;
    for round in 0..400 {
        fs::write(
            src.join(format!("changing-{}.bin", round % 4)),
            rng.bytes(200_000),
        )
        .expect("change the source");
        let expected = tree::manifest(&src);
        let before = injected(&fleet);
        let (ok, job) = fleet.job(&["backup", "a", "--source", "data"]);
        if ok {
            let id = job["snapshot_ids"][0].as_str().expect("snapshot id");
            let now = injected(&fleet);
            acknowledged.push((id.to_string(), expected, now > faults_seen));
            faults_seen = now;
            if before > 0 {
                succeeded_after_a_fault += 1;
            }
        } else {
            let error = job["error"].as_str().unwrap_or_default().to_string();
            assert!(!error.is_empty(), "a failed backup says why: {job}");
            failures.push(error);
        }
        // Enough once faults hit the store and backups went on after them; a fault outside
        // the store (the catalog's WAL, synced once per commit) is waited for a while more.
        if injected(&fleet) >= 3
            && succeeded_after_a_fault >= 3
            && (outside_store(&fleet) >= 1 || round >= 150)
        {
            break;
        }
    }
    let paths = failed_paths(&fleet);
    let faults = paths.len();
    // Each failure says the disk failed and what it was doing, not that Lifeboat broke.
    for error in &failures {
        assert!(
            error.contains("the controller's disk failed") && !error.contains("internal error"),
            "{error}"
        );
    }
    eprintln!("A3 1%: a failed backup says: {:?}", failures.first());
    assert!(
        faults >= 3 && succeeded_after_a_fault >= 3,
        "{faults} sync failures injected, {succeeded_after_a_fault} backups succeeded after one; failures: {failures:?}\n{}",
        fleet.controller_log()
    );

    // Killed: a graceful stop syncs the store once more and may itself meet an injected
    // fault (it then exits 1, naming it), which is not what this test is about.
    fleet.kill_controller();
    fleet.controller_env.clear();
    fleet.start_controller();
    fleet.wait_connected(1);
    let verify = fleet.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "the store is not whole after {faults} sync failures:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let listed = fleet.snapshot_ids();
    let last = acknowledged.len() - 1;
    let mut restored = 0;
    for (i, (id, expected, after_fault)) in acknowledged.iter().enumerate() {
        assert!(
            listed.contains(id),
            "acknowledged snapshot {id} is not listed"
        );
        if !(*after_fault || i == 0 || i == last) {
            continue;
        }
        restored += 1;
        let target = restores.join(format!("r{i}"));
        let (ok, job) = fleet.restore_to(id, "a", &target, &[]);
        assert!(ok, "acknowledged snapshot {id} does not restore: {job}");
        tree::assert_same(expected, &target);
    }
    eprintln!(
        "A3 1% of syncs failing: {faults} injected ({paths:?}) over {} backups; {} failed ({failures:?}), {} acknowledged, all listed, {restored} restored identical (each first after a fault, the first, the last); verify clean",
        acknowledged.len() + failures.len(),
        failures.len(),
        acknowledged.len()
    );
}

/// A2: power cuts on the controller and its store, ≥200 in the checklist (lazyfs's model,
/// [`powercut`]). The controller runs with every sync recorded while backups of a changing
/// source run one after another, and the power goes: in even rounds at a random moment
/// within 3 s, in odd rounds at a random one of the next 40 syncs (just before it, or just
/// after it returned), so cuts land on pack, envelope, catalog and state syncs alike.
/// Every file under the controller's data directory (catalog, store, keys, states) then
/// holds what its last successful sync made durable, and a file never synced is empty.
/// After each cut: the catalog passes `PRAGMA integrity_check`; no file of the store under
/// a final name is empty; the controller starts; every snapshot acknowledged before any
/// cut is listed; `verify` is clean (every listed snapshot complete, no indexed chunk
/// missing or damaged); the newest acknowledged snapshot restores identical to its source.
/// 20 cuts, 200 soaking (`LIFEBOAT_A2_CUTS` or `LIFEBOAT_A2_ITERATIONS` sets it). (The agent is restarted with the controller,
/// or its reconnect pauses would grow to 30 s over a series of short sessions.)
#[test]
fn a2_power_cuts_lose_no_acknowledged_snapshot() {
    power_cuts(Fleet::start(), 20);
}

/// A2 with the store in S3: the power cuts take the controller's disk (catalog, WAL,
/// keys, packs staged for upload) back to its syncs; the object store keeps what it
/// confirmed. The same checks; 10 cuts, 200 soaking.
#[test]
fn a2_power_cuts_beside_an_s3_store_lose_no_acknowledged_snapshot() {
    let Some(s3) = lifeboat_tests::s3::S3Server::start() else {
        return;
    };
    power_cuts(Fleet::start_on_s3(&s3, "a2", &[]), 10);
}

/// A2's rounds on `fleet` (started, no agent yet): `LIFEBOAT_A2_CUTS` power cuts, or
/// `default_cuts` (the checklist's 200 soaking).
fn power_cuts(mut fleet: Fleet, default_cuts: usize) {
    let Some((_shim_dir, shim)) = lifeboat_tests::preload_shim("powercut", powercut::SHIM) else {
        return;
    };
    let cuts: usize = std::env::var("LIFEBOAT_A2_CUTS")
        .map(|v| v.parse().expect("LIFEBOAT_A2_CUTS: a number of power cuts"))
        .unwrap_or_else(|_| lifeboat_tests::iterations("A2", default_cuts, 200));
    let store_env = fleet.controller_env.clone();
    let src = fleet.path("src");
    let mut rng = Rng::new(2);
    tree::make_tree(&src, &mut rng);
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    let ctl = fleet.path("ctl");
    fleet.stop_controller();

    let mut acknowledged: Vec<(String, Vec<tree::Item>)> = Vec::new();
    let mut in_flight = 0;
    // Where each cut fell: "before|after SYNCED FILE" for the cuts at a sync, "timed,
    // last synced FILE" for the others (the file as `dir/kind`, its name's digits dropped).
    let mut cut_points: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut syncs, mut rolled_back, mut emptied) = (0, 0, 0);
    let kind = |path: &str| -> String {
        let rel = path
            .strip_prefix(ctl.to_str().expect("utf8"))
            .unwrap_or(path);
        let parts: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
        // Runs of 8 or more hex digits (ids, random suffixes) as `*`.
        let name: String = parts
            .last()
            .copied()
            .unwrap_or_default()
            .split_inclusive(['.', '-'])
            .map(|seg| {
                let word = seg.trim_end_matches(['.', '-']);
                match word.len() >= 8 && word.chars().all(|c| c.is_ascii_hexdigit()) {
                    true => seg.replacen(word, "*", 1),
                    false => seg.to_string(),
                }
            })
            .collect();
        let dir = parts[..parts.len().saturating_sub(1)].join("/");
        format!("{dir}/{name}")
    };
    let mut temps_left: Vec<std::path::PathBuf> = Vec::new();
    for round in 0..=cuts {
        let journal = powercut::Journal::begin(&ctl, &fleet.path(&format!("powercut-{round}")));
        fleet.controller_env = store_env.clone();
        fleet.controller_env.extend([
            ("LD_PRELOAD".into(), shim.display().to_string()),
            (
                "LIFEBOAT_POWERCUT_DIR".into(),
                journal.dir().display().to_string(),
            ),
        ]);
        fleet.start_controller();
        fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
        check_after_power_cut(&fleet, &acknowledged, &restores.join(format!("r{round}")));
        let kept: Vec<_> = temps_left.iter().filter(|t| t.exists()).collect();
        assert!(
            kept.is_empty(),
            "temp files of cut writes outlive a restart: {kept:?}"
        );
        if round == cuts {
            break;
        }

        // Backups one after another until the power goes.
        let timed = round % 2 == 0;
        let pid = rustix::process::Pid::from_raw(fleet.controller_pid() as i32).expect("pid");
        let cutter = if timed {
            let after = Duration::from_millis(rng.next_u64() % 3_000);
            Some(std::thread::spawn(move || {
                std::thread::sleep(after);
                let at = std::time::Instant::now();
                rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
                at
            }))
        } else {
            let n = journal.syncs() + 1 + (rng.next_u64() % 40) as usize;
            journal.cut_at_sync(n, rng.next_u64().is_multiple_of(2));
            None
        };
        loop {
            let changing = src.join(format!("changing-{}.bin", acknowledged.len() % 4));
            fs::write(changing, rng.bytes(100_000)).expect("change the source");
            let expected = tree::manifest(&src);
            let started = std::time::Instant::now();
            let out = fleet.cli(&["backup", "a", "--source", "data", "--wait", "--json"]);
            let returned = std::time::Instant::now();
            if out.status.success() {
                let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job");
                let id = job["snapshot_ids"][0].as_str().expect("snapshot id");
                acknowledged.push((id.to_string(), expected));
                continue;
            }
            let failed = || {
                format!(
                    "a backup failed with the power on: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            };
            let cut_at = match cutter {
                Some(cutter) => cutter.join().expect("the power cut"),
                // Cut at a sync: the controller must be dead (a zombie until reaped).
                None => {
                    let stat = format!("/proc/{}/stat", pid.as_raw_nonzero());
                    let dead = || {
                        let stat = fs::read_to_string(&stat).unwrap_or_default();
                        stat.rsplit_once(") ").map(|(_, s)| s.as_bytes()[0]) == Some(b'Z')
                    };
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while !dead() {
                        assert!(std::time::Instant::now() < deadline, "{}", failed());
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    returned
                }
            };
            assert!(cut_at <= returned || !timed, "{}", failed());
            if started < cut_at {
                in_flight += 1;
            }
            break;
        }
        fleet.kill_controller(); // reaps it
        fleet.kill_agent("a");
        let cut = journal.cut(&ctl);
        syncs += cut.syncs;
        rolled_back += cut.rolled_back.len();
        emptied += cut.emptied.len();
        let point = match timed {
            true => format!(
                "timed, last synced {}",
                kind(
                    cut.last_syncs
                        .last()
                        .map(String::as_str)
                        .unwrap_or("nothing")
                )
            ),
            false => {
                let log = fleet.controller_log();
                let line = log
                    .lines()
                    .find_map(|l| l.strip_prefix("powercut: cut "))
                    .unwrap_or_else(|| panic!("the controller died, but not at its cut:\n{log}"));
                let (when, path) = line.split_once(" the sync of ").expect("cut line");
                format!("{when} {}", kind(path))
            }
        };
        *cut_points.entry(point).or_default() += 1;

        // What the cut left, before anything opens it.
        let db = rusqlite::Connection::open(ctl.join("catalog.db")).expect("open the catalog");
        let integrity: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok", "after cut {round}: {cut:?}");
        drop(db);
        let local_store = ctl.join("store");
        let stored = match local_store.exists() {
            true => powercut::regular_files(&local_store),
            false => Vec::new(), // in S3: what it confirmed, it keeps
        };
        let is_temp = |f: &std::path::PathBuf| {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            lifeboat_core::durable::is_temp_name(name)
        };
        let (temps, objects): (Vec<_>, Vec<_>) = stored.into_iter().partition(is_temp);
        // The data directory's own (keys, settings, the audit head) go too.
        let top_temps = fs::read_dir(&ctl)
            .expect("data directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file() && is_temp(p));
        temps_left = temps.into_iter().chain(top_temps).collect();
        let empty: Vec<_> = objects
            .iter()
            .filter(|f| fs::metadata(f).map(|m| m.len() == 0).unwrap_or(false))
            .collect();
        assert!(
            empty.is_empty(),
            "after cut {round}, empty objects under final names: {empty:?}\n{cut:?}"
        );
    }
    eprintln!(
        "A2 {cuts} power cuts ({in_flight} during a backup): {syncs} syncs recorded, {rolled_back} files rolled back to their last sync, {emptied} never synced emptied; where the cuts fell: {cut_points:#?}\n{} snapshots acknowledged, all listed after every cut, verify clean, the newest restored identical after each",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() > cuts,
        "too few backups between the cuts to test anything: {}",
        acknowledged.len()
    );
}

/// A2's checks on a controller started after a power cut: every acknowledged snapshot
/// listed, `verify` clean, the newest acknowledged one restored to `target` identical.
fn check_after_power_cut(
    fleet: &Fleet,
    acknowledged: &[(String, Vec<tree::Item>)],
    target: &std::path::Path,
) {
    let listed = fleet.snapshot_ids();
    for (id, _) in acknowledged {
        assert!(
            listed.contains(id),
            "acknowledged snapshot {id} is gone after a power cut\n{}",
            fleet.controller_log()
        );
    }
    let verify = fleet.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "the store is not whole after a power cut:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    if let Some((id, expected)) = acknowledged.last() {
        let (ok, job) = fleet.restore_to(id, "a", target, &[]);
        assert!(
            ok,
            "acknowledged snapshot {id} does not restore after a power cut: {job}"
        );
        tree::assert_same(expected, target);
    }
}

/// A15: a compressor that produces wrong frames. The agent runs with every compressed frame
/// corrupted (`LIFEBOAT_FAULT_CORRUPT_FRAME=1`): the encoder's check (each frame decompressed
/// and compared before it leaves) fails the backup with the compressor fault named, no
/// snapshot is listed, and what the store holds verifies. Restarted without the fault, the
/// agent backs up and the snapshot restores byte for byte.
#[test]
fn a15_a_compressor_fault_fails_the_backup_before_a_bad_chunk_is_stored() {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    let log = b"a line of a log file, which compresses well\n".repeat(5_000);
    let random = Rng::new(15).bytes(100_000);
    fs::write(src.join("log"), &log).expect("write");
    fs::write(src.join("random"), &random).expect("write");
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.agent_env = vec![("LIFEBOAT_FAULT_CORRUPT_FRAME".into(), "1".into())];
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    let (ok, job) = fleet.job(&["backup", "a", "--source", "data"]);
    assert!(!ok, "the backup succeeded with corrupt frames: {job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("compressor fault"), "{job}");
    let snaps = fleet.cli_json(&["snapshots", "--agent", "a"]);
    assert_eq!(snaps.as_array().expect("list").len(), 0, "{snaps}");
    let verify = fleet.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "the store holds something bad: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    fleet.kill_agent("a");
    fleet.agent_env.clear();
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    let snap = fleet.backup("a", "data");
    let target = restores.join("back");
    let (ok, job) = fleet.restore_to(snap["id"].as_str().expect("id"), "a", &target, &[]);
    assert!(ok, "{job}");
    assert_eq!(fs::read(target.join("log")).expect("log"), log);
    assert_eq!(fs::read(target.join("random")).expect("random"), random);
    eprintln!("A15: every frame corrupted -> backup failed: {error}");
}

/// A13: the controller's wall clock stepped forward by 25 h (libfaketime, re-read from a file)
/// while a backup's uploads sit in sealed packs and its commit is held back (the agent's
/// pause point). GC then runs: by the wall clock those chunks are a day past the 1 h lease,
/// but the lease also counts by the controller's monotonic clock, so none is swept; the
/// backup commits once released and restores byte for byte.
#[test]
fn a13_a_controller_clock_stepped_forward_loses_no_chunk_of_a_backup_in_flight() {
    if !have_faketime("A13") {
        return;
    }
    let clock = tempfile::tempdir().expect("clock dir");
    let offset = clock.path().join("offset");
    fs::write(&offset, "+0\n").expect("offset");
    let mut fleet = Fleet::start_with_env(&["--gc-lease", "1h"], stepped_clock(&offset));
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    let mut rng = Rng::new(13);
    // Three packs' worth (32 MiB each), so that sealed packs hold the uploads.
    let files: Vec<Vec<u8>> = (0..3).map(|_| rng.bytes(40 << 20)).collect();
    for (i, data) in files.iter().enumerate() {
        fs::write(src.join(format!("f{i}")), data).expect("write");
    }
    let restores = fleet.path("restores");
    let pause = fleet.path("paused");
    let a = fleet.enroll("a");
    fleet.agent_env = vec![
        ("LIFEBOAT_PAUSE_AT".into(), "backup-before-commit".into()),
        (
            "LIFEBOAT_PAUSE_FILE".into(),
            pause.to_str().expect("path").into(),
        ),
    ];
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    let job_id = fleet.start_job(&["backup", "a"]);
    lifeboat_tests::wait_for(
        "the backup to reach its commit",
        Duration::from_secs(120),
        || pause.exists().then_some(()),
    );
    let packs: std::collections::HashSet<String> = fleet
        .chunk_index()
        .into_iter()
        .map(|(_, p, ..)| p)
        .collect();
    assert!(packs.len() >= 2, "sealed packs hold the uploads: {packs:?}");

    fs::write(&offset, "+25h\n").expect("offset");
    std::thread::sleep(Duration::from_millis(2500)); // libfaketime re-reads it every second
    let gc = fleet.cli_json(&["gc"]);
    assert_eq!(gc["swept"], 0, "GC swept a running backup's chunks: {gc}");
    assert!(gc["leased"].as_u64().unwrap_or(0) > 0, "{gc}");

    fs::remove_file(&pause).expect("release the agent");
    let done = lifeboat_tests::wait_for("the backup to end", Duration::from_secs(120), || {
        let j = fleet.job_info(&job_id);
        matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    let snap = done["snapshot_ids"][0]
        .as_str()
        .expect("snapshot")
        .to_string();
    let target = restores.join("back");
    let (ok, job) = fleet.restore_to(&snap, "a", &target, &[]);
    assert!(ok, "{job}");
    for (i, data) in files.iter().enumerate() {
        assert!(
            fs::read(target.join(format!("f{i}"))).expect("restored") == *data,
            "f{i} differs"
        );
    }
    eprintln!("A13: clock +25 h mid-backup, GC {gc}; the backup committed and restored");
}

/// A13 for the store's clock: the controller's clock half an hour behind the object
/// store's. S3 takes a signed request only within its validity (15 minutes) by its own
/// clock, so every request the controller signs is refused as expired on arrival: the
/// failure must name both clocks (it said "check the S3 credentials"), nothing
/// half-written may be listed, and once the clocks agree again the same fleet backs up,
/// verifies and restores with nothing lost. The controller's clock is the one stepped
/// (libfaketime; the store is a Go binary, out of its reach): what S3 judges is how far
/// apart the two are. (A controller whose clock is ahead goes on working here: SeaweedFS
/// takes requests signed in its future.) Half an hour keeps the agent within the hour of
/// skew its backups are allowed (A12).
#[test]
fn a13_the_controller_half_an_hour_behind_the_store_is_named_and_loses_nothing() {
    if !have_faketime("A13") {
        return;
    }
    let Some(s3) = lifeboat_tests::s3::S3Server::start() else {
        return;
    };
    let clock = tempfile::tempdir().expect("clock dir");
    let offset = clock.path().join("offset");
    fs::write(&offset, "+0\n").expect("offset");
    let mut env = s3.env();
    env.extend(stepped_clock(&offset));
    let args = s3.serve_args("fleet");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut fleet = Fleet::start_with_env(&args, env);
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    let mut rng = Rng::new(1313);
    fs::write(src.join("first.bin"), rng.bytes(3 << 20)).expect("write");
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    let before = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let expected_before = tree::manifest(&src);
    let step = |to: &str| {
        fs::write(&offset, format!("{to}\n")).expect("offset");
        std::thread::sleep(Duration::from_millis(2500)); // re-read every second
    };

    step("-30m");
    fs::write(src.join("second.bin"), rng.bytes(3 << 20)).expect("write");
    let (ok, job) = fleet.job(&["backup", "a", "--source", "data"]);
    assert!(
        !ok,
        "a backup with the store's clock 30 min off succeeded: {job}"
    );
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("30m behind the object store's") && error.contains("NTP"),
        "the failure does not name the clocks: {job}"
    );
    assert_eq!(
        fleet.snapshot_ids(),
        vec![before.clone()],
        "only the first is listed"
    );
    // A restore is refused before it starts: its envelope cannot be read.
    let skewed = restores.join("skewed");
    let to = skewed.to_str().expect("path");
    let out = fleet.cli(&["restore", &before, "--agent", "a", "--to", to, "--wait"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("30m behind the object store's"),
        "{said}"
    );
    assert!(!skewed.exists(), "a refused restore wrote to its target");

    step("+0");
    let after = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let expected_after = tree::manifest(&src);
    let verify = fleet.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "verify after the clocks agree again: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    for (snap, expected) in [(&before, &expected_before), (&after, &expected_after)] {
        let target = restores.join(snap.as_str());
        let (ok, job) = fleet.restore_to(snap, "a", &target, &[]);
        assert!(ok, "{job}");
        tree::assert_same(expected, &target);
    }
    eprintln!("A13 (the store's clock): 30 min apart, the backup failed saying: {error}");
}

/// A1 for group commit (issue 22): the controller killed (SIGKILL) in the middle of a
/// burst of commits from several agents loses no commit it acknowledged. Every snapshot an
/// agent logged as committed (its CommitSnapshot returned) is listed after the restart,
/// and `lifeboat verify` finds every listed snapshot complete.
#[test]
fn a1_a_controller_killed_during_a_commit_burst_loses_no_acknowledged_commit() {
    const AGENTS: usize = 8;
    const SOURCES: usize = 3;
    let mut fleet = Fleet::start();
    let mut rng = Rng::new(22);
    let mut names = Vec::new();
    for i in 0..AGENTS {
        let name = format!("burst{i}");
        let dirs: Vec<(String, std::path::PathBuf)> = (0..SOURCES)
            .map(|k| {
                let dir = fleet.path(&format!("src/{name}/s{k}"));
                fs::create_dir_all(&dir).expect("src");
                for f in 0..100 {
                    fs::write(dir.join(format!("f{f}")), rng.bytes(20_000 + f * 100))
                        .expect("write");
                }
                (format!("s{k}"), dir)
            })
            .collect();
        let agent = fleet.enroll(&name);
        let sources: Vec<(&str, &std::path::Path)> = dirs
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_path()))
            .collect();
        fleet.spawn_agent(&agent, &sources, &[], &[]);
        names.push(name);
    }
    fleet.wait_connected(AGENTS);
    let acknowledged = |fleet: &Fleet| -> Vec<String> {
        names
            .iter()
            .flat_map(|n| committed_ids(&fleet.agent_log(n)))
            .collect()
    };
    // All jobs at once, then the kill as soon as a few commits are acknowledged, while the
    // rest are on their way.
    std::thread::scope(|s| {
        for name in &names {
            let fleet = &fleet;
            s.spawn(move || fleet.start_job(&["backup", name]));
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let acked = acknowledged(&fleet).len();
        if acked >= AGENTS / 2 {
            break acked;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no commit within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    fleet.kill_controller();
    // What an agent logged before the kill is all the controller ever acknowledged.
    std::thread::sleep(Duration::from_millis(500));
    let acked = acknowledged(&fleet);
    assert!(
        acked.len() < AGENTS * SOURCES,
        "all {} commits were acknowledged before the kill landed: the burst was not interrupted",
        acked.len()
    );
    fleet.start_controller();
    let listed = fleet.snapshot_ids();
    for id in &acked {
        assert!(
            listed.contains(id),
            "snapshot {id} was acknowledged to its agent before the kill and is not listed after the restart (listed: {listed:?})"
        );
    }
    let verify = fleet.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "verify after the kill: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    eprintln!(
        "A1 commit burst: controller killed with {at_kill} of {} commits acknowledged ({} by the time the agents noticed); all {} listed after the restart, {} listed in all, verify clean",
        AGENTS * SOURCES,
        acked.len(),
        acked.len(),
        listed.len()
    );
}

/// The snapshot ids an agent's log says were committed (`backup committed`, logged once
/// CommitSnapshot returned).
fn committed_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("backup committed"))
        .filter_map(|l| {
            let at = l.find("snapshot=")? + "snapshot=".len();
            let id: String = l[at..]
                .chars()
                .skip_while(|c| !c.is_ascii_hexdigit())
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            (id.len() == 64).then_some(id)
        })
        .collect()
}

/// A16 (a catalog migration killed midway), and a first start that never finishes: on a
/// new data directory the controller is killed inside each catalog migration in turn
/// (`LIFEBOAT_CRASH_AT=migration-N`, after the migration's statements, before its commit).
/// After each kill the catalog passes `PRAGMA integrity_check` and stands at the previous
/// version. The recovery key was shown by the first start before it died (a store whose
/// key nobody saw would be unrecoverable once this machine is lost), it unwraps the data
/// key, and it is never shown again. The start after the last kill finishes every
/// migration, and the fleet backs up and restores byte for byte.
#[test]
fn a16_a_controller_killed_in_each_catalog_migration_starts_again_whole() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::Builder::new()
        .prefix("lifeboat-e2e-")
        .tempdir()
        .expect("tempdir");
    let ctl = dir.path().join("ctl");
    let catalog_state = || {
        let db = rusqlite::Connection::open(ctl.join("catalog.db")).expect("catalog");
        let version: i64 = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        (version, check)
    };
    let mut recovery_keys = Vec::new();
    let mut migration = 1;
    loop {
        let mut child = lifeboat_tests::bin("lifeboat-controller")
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&ctl)
            .env("LIFEBOAT_CRASH_AT", format!("migration-{migration}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lifeboat-controller");
        // Past the last migration the controller starts serving: that ends the loop.
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut serving = false;
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(k) = line.strip_prefix("recovery key: ") {
                recovery_keys.push((migration, k.to_string()));
            }
            if line.starts_with("lifeboat-controller listening on ") {
                serving = true;
                break;
            }
        }
        if serving {
            child.kill().expect("kill");
            child.wait().expect("wait");
            break;
        }
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&format!("migration-{migration}: aborting")),
            "migration {migration}: the controller did not die where the test wanted ({}):\n{stderr}",
            out.status
        );
        let (version, check) = catalog_state();
        assert_eq!(check, "ok", "after a kill in migration {migration}");
        assert_eq!(
            version,
            migration - 1,
            "a kill in migration {migration} left the catalog at version {version}"
        );
        migration += 1;
        assert!(migration < 1000, "the controller never started serving");
    }
    let migrations = migration - 1;
    assert!(migrations >= 18, "only {migrations} migrations were killed");
    assert_eq!(
        recovery_keys.len(),
        1,
        "the recovery key must be shown exactly once, by the start that made it: {recovery_keys:?}"
    );
    assert_eq!(recovery_keys[0].0, 1, "{recovery_keys:?}");
    let age = std::process::Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if age {
        let key_file = dir.path().join("recovery.txt");
        fs::write(&key_file, format!("{}\n", recovery_keys[0].1)).expect("key file");
        let out = std::process::Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&key_file)
            .arg(ctl.join("store-key.age"))
            .output()
            .expect("age -d");
        assert!(
            out.status.success() && out.stdout.len() >= 32,
            "the recovery key shown before the kill does not unwrap the data key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(
            std::env::var_os("LIFEBOAT_REQUIRE_AGE").is_none(),
            "the age tool is not installed (Debian: apt-get install age)"
        );
        eprintln!("(the age tool is missing: the recovery key's unwrap is not checked)");
    }

    let mut fleet = Fleet::start_in(dir);
    assert!(
        fleet.recovery_key.is_none(),
        "the recovery key was shown twice"
    );
    assert_eq!(catalog_state(), (migrations, "ok".to_string()));
    let src = fleet.path("src");
    tree::make_tree(&src, &mut Rng::new(16));
    let expected = tree::manifest(&src);
    let restores = fleet.path("restores");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    let snap = fleet.backup("a", "data");
    let target = restores.join("after-migrations");
    let (ok, job) = fleet.restore_to(snap["id"].as_str().expect("id"), "a", &target, &[]);
    assert!(ok, "restore failed: {job}");
    tree::assert_same(&expected, &target);
    eprintln!(
        "A16: killed in each of {migrations} migrations, catalog sound at the previous version each time; recovery key shown once, by the first start; {} entries restored",
        expected.len()
    );
}

/// A4: the controller killed (SIGKILL) at points through a restore, and started again.
/// Each time the job ends within a minute: the agent asks the restarted controller for the
/// rest of its chunks and the restore succeeds identical to the snapshot, or it fails
/// saying to run it again (never left running, never succeeded without writing
/// everything); every file at its final name in the target is the snapshot's (no wrong
/// byte and no temp file left), and the same restore run again into that target ends
/// identical to the snapshot. Kill points are spread over
/// the restore by what it has written (a sixth of the entries, two sixths, ...); the test
/// fails if too few of them land while it runs.
#[test]
fn a4_a_controller_killed_mid_restore_leaves_no_wrong_byte_and_the_rerun_is_whole() {
    let mut fleet = Fleet::start();
    kill_controller_mid_restore(&mut fleet, "through the controller");
}

/// A4 for a restore read straight from an S3 store: the controller, which grants each of
/// the agent's requests (`LocateChunks`), killed at points through it and started again;
/// the same guarantees as through the controller.
#[test]
fn a4_a_controller_killed_mid_direct_restore_leaves_no_wrong_byte_and_the_rerun_is_whole() {
    let Some(s3) = lifeboat_tests::s3::S3Server::start() else {
        return;
    };
    let mut fleet = Fleet::start_on_s3(&s3, "fleet", &[]);
    kill_controller_mid_restore(&mut fleet, "straight from the store");
    let metrics = lifeboat_tests::metrics(&fleet);
    let sent = lifeboat_tests::counter(&metrics, "lifeboat_restore_bytes_sent_total");
    assert!(
        sent < 1 << 20,
        "{sent} bytes sent by the controller since its last start"
    );
}

/// A4 at the start of a restore: the controller is down when the agent reads the
/// snapshot's tree (held there by `LIFEBOAT_PAUSE_AT`, released once the controller is
/// killed) and comes back 2 s later. The tree's read waits for it as the chunks' reads
/// do, and the restore ends identical, through the controller and straight from S3.
#[test]
fn a4_a_controller_down_while_a_restore_reads_its_tree_is_waited_for() {
    let Some(s3) = lifeboat_tests::s3::S3Server::start() else {
        return;
    };
    for (how, mut fleet) in [
        ("through the controller", Fleet::start()),
        (
            "straight from the store",
            Fleet::start_on_s3(&s3, "fleet", &[]),
        ),
    ] {
        let pause = hold_restores_at_their_tree(&mut fleet);
        let (expected, root, snap) = restore_under_way_fixture(&mut fleet, 46);
        let target = root.join("tree-read-waited");
        let job = start_held_restore(&fleet, &snap, &target, &pause);
        fleet.kill_controller();
        fs::remove_file(&pause).expect("release the agent");
        std::thread::sleep(Duration::from_secs(2));
        fleet.start_controller();
        let end = lifeboat_tests::wait_for("the job to end", Duration::from_secs(120), || {
            let j = fleet.job_info(&job);
            matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
        });
        assert_eq!(
            end["state"],
            "succeeded",
            "{how}: {end}\n{}",
            fleet.agent_log("a")
        );
        tree::assert_same(&expected, &target);
        let waited = fleet
            .agent_log("a")
            .matches("a restore's read from the controller broke")
            .count();
        assert!(waited > 0, "{how}: the tree was read without a break");
        eprintln!(
            "A4 ({how}): the controller down as the tree was read; {waited} reads waited, the restore ended identical"
        );
    }
}

/// The body of A4: six kills of the controller through a restore of 1,241 entries.
fn kill_controller_mid_restore(fleet: &mut Fleet, how: &str) {
    let tries = lifeboat_tests::iterations("A4", 6, 100);
    let (expected, root, snap) = restore_under_way_fixture(fleet, 44);
    // Kills that landed while the restore ran, and restores that went on after one.
    let mut interrupted = 0;
    let mut resumed = 0;
    let mut ends = Vec::new();
    for i in 0..tries {
        let target = root.join(format!("killed-{i}"));
        let to = target.to_str().expect("utf-8").to_string();
        let job = fleet.start_job(&["restore", &snap, "--agent", "a", "--to", &to]);
        let at = expected.len() * (i + 1) / (tries + 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while written(&target) < at && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The kill lands while the restore runs if the job ran and had not written every
        // entry yet (temp files count) just before it.
        let running = fleet.job_info(&job)["state"] == "running";
        let landed = running && written(&target) < expected.len();
        fleet.kill_controller();
        fleet.start_controller();
        fleet.wait_connected(1);
        let end = lifeboat_tests::wait_for("the job to end", Duration::from_secs(60), || {
            let j = fleet.job_info(&job);
            (j["state"] != "running" && j["state"] != "queued").then_some(j)
        });
        let state = end["state"].as_str().unwrap_or_default().to_string();
        ends.push(format!(
            "{state} ({})",
            end["error"].as_str().unwrap_or_default()
        ));
        match state.as_str() {
            "succeeded" => {
                tree::assert_same(&expected, &target);
                resumed += usize::from(landed);
            }
            "failed" => {
                let error = end["error"].as_str().unwrap_or_default();
                assert!(
                    error.contains("run the restore again"),
                    "the failure says what to do: {error}"
                );
            }
            "interrupted" => {}
            other => panic!("the restore ended {other}: {end}"),
        }
        interrupted += usize::from(landed);
        // Whatever was written is the snapshot's, under its final name, and nothing else.
        let by_path: std::collections::HashMap<_, _> =
            expected.iter().map(|e| (e.path.clone(), e)).collect();
        if target.exists() {
            for got in tree::manifest(&target) {
                assert!(
                    !got.path.contains(".lifeboat-"),
                    "a temp file was left after the kill ({state}): {}",
                    got.path
                );
                let want = by_path
                    .get(&got.path)
                    .unwrap_or_else(|| panic!("{} is not in the snapshot ({state})", got.path));
                if got.kind == lifeboat_core::tree::Kind::File {
                    assert_eq!(
                        (got.size, &got.content),
                        (want.size, &want.content),
                        "{} holds other bytes than the snapshot's after the kill ({state})",
                        got.path
                    );
                }
            }
        }
        // The same restore again, into what the killed one left: whole.
        let (ok, again) = fleet.restore_to(&snap, "a", &target, &[]);
        assert!(ok, "the rerun after the kill: {again}");
        tree::assert_same(&expected, &target);
    }
    eprintln!(
        "A4 ({how}): a restore of {} entries; the controller killed {tries} times through it, {interrupted} while it ran, {resumed} of those resumed to the end: {ends:?}",
        expected.len()
    );
    assert!(
        interrupted >= tries / 2,
        "only {interrupted} of {tries} kills landed while the restore ran: the test no longer tests A4"
    );
}

/// Agent `a` backs up 20 directories of a 6 MiB file and 60 small texts (120 MB, 1,241
/// entries: a restore long enough to be interrupted), with `roots` as its restore root.
/// Returns the source's manifest, the restore root and the snapshot.
fn restore_under_way_fixture(
    fleet: &mut Fleet,
    seed: u64,
) -> (Vec<tree::Item>, std::path::PathBuf, String) {
    let src = fleet.path("src");
    let mut rng = Rng::new(seed);
    for d in 0..20 {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("big.bin"), rng.bytes(6 << 20)).expect("write");
        for f in 0..60 {
            fs::write(dir.join(format!("s{f:02}.txt")), rng.text(4000)).expect("write");
        }
    }
    let expected = tree::manifest(&src);
    let a = fleet.enroll("a");
    let root = fleet.path("roots");
    fleet.run_agent(&a, &[("data", src.as_path())], &[root.as_path()]);
    let snap = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    (expected, root, snap)
}

/// Has the agents the fleet starts from now on hold every restore just before it reads
/// its snapshot's tree, while the returned pause file exists (`LIFEBOAT_PAUSE_AT`).
fn hold_restores_at_their_tree(fleet: &mut Fleet) -> std::path::PathBuf {
    let pause = fleet.path("paused");
    fleet.agent_env = vec![
        ("LIFEBOAT_PAUSE_AT".into(), "restore-before-tree".into()),
        (
            "LIFEBOAT_PAUSE_FILE".into(),
            pause.to_str().expect("path").into(),
        ),
    ];
    pause
}

/// Starts a restore of `snap` by agent `a` into `target` and waits until the agent holds
/// it at its tree; returns the job's id.
fn start_held_restore(
    fleet: &Fleet,
    snap: &str,
    target: &std::path::Path,
    pause: &std::path::Path,
) -> String {
    let to = target.to_str().expect("utf-8");
    let job = fleet.start_job(&["restore", snap, "--agent", "a", "--to", to]);
    lifeboat_tests::wait_for(
        "the restore to reach its tree",
        Duration::from_secs(60),
        || pause.exists().then_some(()),
    );
    job
}

/// Entries in a restore's target so far (two levels, temp files included), counted as
/// the restore writes.
fn written(target: &std::path::Path) -> usize {
    let Ok(top) = fs::read_dir(target) else {
        return 0;
    };
    top.filter_map(Result::ok)
        .map(|d| 1 + fs::read_dir(d.path()).map_or(0, |inner| inner.count()))
        .sum()
}

/// Drops every packet to and from a TCP port on loopback (iptables) until dropped.
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// None when iptables is missing or refuses (not root): the caller skips, unless the
    /// run requires it.
    fn port(port: u16) -> Option<Partition> {
        let rules: Vec<Vec<String>> = ["--dport", "--sport"]
            .iter()
            .map(|side| {
                [
                    "INPUT",
                    "-i",
                    "lo",
                    "-p",
                    "tcp",
                    side,
                    &port.to_string(),
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            })
            .collect();
        let mut made = Partition { rules: Vec::new() };
        for rule in rules {
            let out = std::process::Command::new("iptables")
                .arg("-I")
                .args(&rule)
                .output();
            match out {
                Ok(o) if o.status.success() => made.rules.push(rule),
                other => {
                    assert!(
                        std::env::var_os("LIFEBOAT_REQUIRE_MOUNT").is_none(),
                        "iptables could not drop packets: {other:?}"
                    );
                    eprintln!("\n!!! SKIPPED: this test needs iptables as root: {other:?}\n");
                    return None;
                }
            }
        }
        Some(made)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(rule)
                .status();
        }
    }
}

/// A10's split brain: a restore held on its agent while the controller restarts (the job
/// is interrupted, then running again once the agent's new session says it still runs it),
/// and an operator who meanwhile starts a restore again into the same place, and into a
/// directory inside it. Two writers would each rename their files into place, both jobs
/// succeeding over a tree that is neither's. The agent refuses both at their start,
/// naming the job that writes there; a restore into a directory beside it runs; the first
/// restore ends identical.
#[test]
fn a10_a_restore_started_again_while_the_first_still_writes_is_refused_not_interleaved() {
    let mut fleet = Fleet::start();
    let pause = hold_restores_at_their_tree(&mut fleet);
    let (expected, root, snap) = restore_under_way_fixture(&mut fleet, 47);
    let target = root.join("web");
    let first = start_held_restore(&fleet, &snap, &target, &pause);
    fleet.kill_controller();
    fleet.start_controller();
    fleet.wait_connected(1);
    lifeboat_tests::wait_for(
        "the restore to run again once the agent says it still runs it",
        Duration::from_secs(30),
        || (fleet.job_info(&first)["state"] == "running").then_some(()),
    );

    let mut refused = 0;
    for (what, place) in [
        ("the same directory", target.clone()),
        ("a directory inside it", target.join("d03")),
    ] {
        let second = fleet.start_job(&[
            "restore",
            &snap,
            "--agent",
            "a",
            "--to",
            place.to_str().expect("utf-8"),
        ]);
        // Refused at its start; or else held at the same pause as the first, running.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let job = loop {
            let job = fleet.job_info(&second);
            if job["state"] == "failed" || std::time::Instant::now() > deadline {
                break job;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(
            job["state"], "failed",
            "a second restore into {what} runs beside the first: {job}"
        );
        let error = job["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("restore job {first} is writing")),
            "{what}: {error}"
        );
        refused += 1;
    }
    let beside = root.join("beside");
    let beside_job = fleet.start_job(&[
        "restore",
        &snap,
        "--agent",
        "a",
        "--to",
        beside.to_str().expect("utf-8"),
    ]);
    fs::remove_file(&pause).expect("release the agent");
    for job in [&first, &beside_job] {
        let end = lifeboat_tests::wait_for("the job to end", Duration::from_secs(120), || {
            // The restore beside it may reach the pause point after the first was released.
            let _ = fs::remove_file(&pause);
            let j = fleet.job_info(job);
            matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
        });
        assert_eq!(end["state"], "succeeded", "{end}\n{}", fleet.agent_log("a"));
    }
    tree::assert_same(&expected, &target);
    tree::assert_same(&expected, &beside);
    eprintln!(
        "A10 (one writer per place): {refused} restores into a place another restore was writing refused \
         after the controller restarted under it, one beside it ran; both ended identical ({} entries)",
        expected.len()
    );
}

/// A10: the network between a restoring agent and the controller partitioned mid-restore
/// (every packet to and from the controller's port dropped), for 5 s and then 30 s. Shorter
/// than what ends a session, neither needs an operator: the restore goes on when the
/// network comes back, the job succeeds, and the target is identical to the snapshot.
#[test]
fn a10_a_partition_mid_restore_heals_without_an_operator() {
    let mut fleet = Fleet::start();
    let port = port_of(&fleet.url);
    partition_mid_restore(&mut fleet, "through the controller", port);
}

/// A10 for a restore read straight from an S3 store: the agent's way to the controller
/// (which locates each request's chunks and grants their presigned URLs) is cut for 5 s and
/// 30 s while its way to the store stays open. The locates the partition broke are asked
/// again once the controller answers; the restore ends identical.
#[test]
fn a10_a_partition_mid_direct_restore_heals_without_an_operator() {
    let Some(s3) = lifeboat_tests::s3::S3Server::start() else {
        return;
    };
    let mut fleet = Fleet::start_on_s3(&s3, "fleet", &[]);
    let port = port_of(&fleet.url);
    partition_mid_restore(&mut fleet, "straight from the store", port);
    let metrics = lifeboat_tests::metrics(&fleet);
    let counter = |name: &str| lifeboat_tests::counter(&metrics, name);
    // Two restores of 120 MB of incompressible files, read straight from the store.
    let (direct, sent) = (
        counter("lifeboat_restore_bytes_direct_total"),
        counter("lifeboat_restore_bytes_sent_total"),
    );
    assert!(
        direct >= 2 * (120 << 20) && sent < 1 << 20,
        "{direct} bytes granted straight from the store, {sent} sent by the controller"
    );
}

/// A10 beyond the controller: the agent's way to the object store (every packet to and
/// from the S3 port dropped) cut for 5 s and then 30 s in the middle of a restore read
/// straight from the store, its way to the controller open. The range GETs the partition
/// stalls or refuses are waited out and asked again; the restore ends identical.
#[test]
fn a10_a_partition_from_the_store_mid_direct_restore_heals_without_an_operator() {
    let Some(s3) = lifeboat_tests::s3::S3Server::start() else {
        return;
    };
    let mut fleet = Fleet::start_on_s3(&s3, "fleet", &[]);
    let port = port_of(&s3.endpoint);
    partition_mid_restore(&mut fleet, "the store cut off", port);
    let metrics = lifeboat_tests::metrics(&fleet);
    let direct = lifeboat_tests::counter(&metrics, "lifeboat_restore_bytes_direct_total");
    assert!(
        direct >= 2 * (120 << 20),
        "{direct} bytes granted straight from the store"
    );
}

/// The port of a URL like `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT/`.
fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Restores a 1,241-entry snapshot twice, cutting the agent's way to `port` (the
/// controller's, or the object store's) for 5 s, then 30 s, a quarter of the way into each;
/// soaking, also for 2 and 10 minutes. A cut of minutes may end the job (failed, saying to
/// run it again); the restore run again then ends identical.
fn partition_mid_restore(fleet: &mut Fleet, how: &str, port: u16) {
    let (expected, root, snap) = restore_under_way_fixture(fleet, 45);
    let cuts: &[u64] = match lifeboat_tests::soaking() {
        true => &[5, 30, 120, 600],
        false => &[5, 30],
    };
    for (i, &secs) in cuts.iter().enumerate() {
        let target = root.join(format!("partitioned-{secs}s"));
        let to = target.to_str().expect("utf-8").to_string();
        let job = fleet.start_job(&["restore", &snap, "--agent", "a", "--to", &to]);
        let at = expected.len() / 4;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while written(&target) < at && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(cut) = Partition::port(port) else {
            return;
        };
        let during = written(&target);
        std::thread::sleep(Duration::from_secs(secs));
        let stalled = written(&target);
        drop(cut);
        assert!(
            during < expected.len(),
            "the restore ended before the partition ({during} entries written)"
        );
        assert!(
            stalled < expected.len(),
            "the restore ended during the partition ({stalled} entries written): it did not cut the restore's way"
        );
        // An interrupted job is not over: the agent sends the report of its end again on
        // its next session.
        let end = lifeboat_tests::wait_for("the job to end", Duration::from_secs(180), || {
            let j = fleet.job_info(&job);
            matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
        });
        let mut outcome = "went on";
        if end["state"] != "succeeded" && secs > 60 {
            let error = end["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("run the restore again"),
                "partition {i} ({secs} s): the failure says what to do: {end}"
            );
            let (ok, rerun) = fleet.restore_to(&snap, "a", &target, &[]);
            assert!(
                ok,
                "the restore run again after a {secs} s partition: {rerun}"
            );
            outcome = "ended the job, and the restore run again";
        } else {
            assert_eq!(
                end["state"],
                "succeeded",
                "partition {i} ({secs} s, after {during} of {} entries): {end}\n{}",
                expected.len(),
                fleet.agent_log("a")
            );
        }
        tree::assert_same(&expected, &target);
        let log = fleet.agent_log("a");
        let resumed = log
            .matches("a restore's read from the controller broke")
            .count();
        let retried = log
            .matches("reading from the object store: retrying")
            .count();
        eprintln!(
            "A10 ({how}): partitioned {secs} s after {during} of {} entries ({stalled} when it healed); the restore {outcome} and ended identical (so far {resumed} broken reads from the controller asked again, {retried} range GETs retried)",
            expected.len()
        );
    }
    // Asking again waited for the new session: no read was refused on the way.
    let denied = fleet.cli_json(&["audit", "--since", "1h", "--outcome", "denied"]);
    assert_eq!(denied.as_array().map(Vec::len), Some(0), "{denied}");
}

/// A1 during a drill: the agent is killed (SIGKILL) while the drill's restore is under way
/// and started again. The drill does not fail on the interruption: the restore is asked
/// again under the same job once the agent is back, and the drill passes.
#[test]
fn a1_an_agent_killed_mid_drill_is_asked_again_and_the_drill_passes() {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let mut rng = Rng::new(48);
    for d in 0..12 {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("big.bin"), rng.bytes(6 << 20)).expect("write");
        for f in 0..250 {
            fs::write(dir.join(format!("s{f:03}.txt")), rng.text(4000)).expect("write");
        }
    }
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.as_path())], &[]);
    fleet.backup("a", "data");
    let drill = fleet
        .cli_command(&["drill", "run", "--agent", "a", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lifeboat drill run");
    // Under way: the drill's restore has written a file or more.
    let job = lifeboat_tests::wait_for(
        "the drill's restore under way",
        Duration::from_secs(60),
        || {
            fleet.cli_json(&["jobs"]).as_array().and_then(|jobs| {
                jobs.iter()
                    .find(|j| {
                        j["kind"] == "restore"
                            && j["state"] == "running"
                            && j["progress"]["files_done"].as_u64().unwrap_or(0) >= 100
                    })
                    .cloned()
            })
        },
    );
    fleet.kill_agent("a");
    let killed_at = job["progress"]["files_done"].as_u64().unwrap_or(0);
    let total = job["progress"]["files_total"].as_u64().unwrap_or(0);
    assert!(
        fleet.job_info(job["id"].as_str().expect("id"))["state"] != "succeeded",
        "the drill's restore ended before the kill: {job}"
    );
    std::thread::sleep(Duration::from_secs(2));
    fleet.run_agent(&a, &[("data", src.as_path())], &[]);
    let out = drill.wait_with_output().expect("drill run");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drill: {said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fleet.controller_log()
    );
    let drills: serde_json::Value = serde_json::from_str(&said).expect("drills JSON");
    assert_eq!(drills[0]["state"], "passed", "{drills}");
    assert_eq!(
        drills[0]["job"], job["id"],
        "the same job, asked again: {drills}"
    );
    assert!(
        fleet
            .controller_log()
            .contains("the drill's restore was interrupted; asking the agent again"),
        "the drill did not ask again"
    );
    eprintln!(
        "A1 (drill): the agent killed after {killed_at} of {total} files of the drill's restore, started again 2 s later: the same job asked again, the drill passed"
    );
}

/// A1 as the checklist runs it: the agent SIGKILLed at a uniformly random moment of a
/// backup, again and again (12 kills; 1,000 with `LIFEBOAT_SOAK=1`; any number with
/// `LIFEBOAT_A1_ITERATIONS`), each backup carrying up to eight fresh files of 0 B to
/// 16 MiB (64 MiB soaking). After every kill: the killed job lists no snapshot and none
/// appears, `lifeboat verify` reads the whole store clean, and the next backup completes,
/// uploading again at most the in-flight window of what the killed one had sent. Every
/// 100th kill (every third of the quick run) every listed snapshot is restored and compared
/// with the source as it was backed up, then the store is pruned to the last three
/// snapshots and collected: the orphans the kills left (one kill in three has its fresh
/// files deleted before the next backup) are all gone after the first GC past the lease,
/// and a second finds none.
#[test]
fn a1_an_agent_killed_at_random_points_of_its_backups_loses_nothing_committed() {
    let kills = lifeboat_tests::iterations("A1", 12, 1_000);
    let soak = lifeboat_tests::soaking();
    let check_every = if soak { 100 } else { kills.div_ceil(3).max(1) };
    // Fresh files are 0 B to 2^max_bits bytes, log-uniform (as many small as large).
    let max_bits = if soak { 26 } else { 24 };
    // What a killed backup may have sent without the controller storing it: per upload
    // stream (one per worker), the controller's open pack, the agent's two batches and
    // its queue of encoded chunks.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(8)) as u64;
    let window = workers * ((32 << 20) + 2 * (4 << 20) + 8 * (4 << 20));

    let mut fleet = Fleet::start_with(&["--gc-lease", "2s", "--prune-every", "0s"]);
    let src = fleet.path("src");
    let restores = fleet.path("restores");
    fs::create_dir_all(&src).expect("src");
    fs::create_dir_all(&restores).expect("restores");
    fleet.apply_policy(
        "[[policy]]\nname = \"keep\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\nkeep = { last = 3 }\n",
    );
    let a = fleet.enroll("a");
    let start_agent = |fleet: &mut Fleet| {
        fleet.run_agent(&a, &[("data", src.as_path())], &[restores.as_path()]);
    };
    start_agent(&mut fleet);

    let mut rng = Rng::new(1_001);
    let mut names = 0u64;
    // Adds one to eight files of fresh random bytes (nothing in the store has them) and
    // deletes the oldest beyond 40; returns the new files and their bytes.
    let mut churn = |rng: &mut Rng| -> (Vec<std::path::PathBuf>, u64) {
        let mut added = Vec::new();
        let mut bytes = 0;
        for _ in 0..1 + rng.next_u64() % 8 {
            let bits = rng.next_u64() % (max_bits + 1);
            let len = (rng.next_u64() % (1 << bits)) as usize;
            let path = src.join(format!("f{names:06}"));
            names += 1;
            fs::write(&path, rng.bytes(len)).expect("write");
            bytes += len as u64;
            added.push(path);
        }
        let mut all: Vec<_> = fs::read_dir(&src)
            .expect("src")
            .map(|e| e.expect("entry").path())
            .collect();
        all.sort();
        for old in all.iter().take(all.len().saturating_sub(40)) {
            fs::remove_file(old).expect("delete");
        }
        (added, bytes)
    };

    // Each kill falls uniformly over 1.25 × the backup's expected length (from the job's
    // creation to its end, as the controller times it), so some land after the commit, as
    // they would in the field. The length is a fixed cost and a rate, timed on uncut
    // backups of 1 KiB and of 32 MiB of fresh data (the slowest of two each).
    let mut committed: Vec<(String, Vec<tree::Item>)> = Vec::new();
    // Seconds: the fixed cost, and per byte of fresh data.
    let (mut overhead, mut per_byte) = (0f64, 0f64);
    for (i, len) in [1usize << 10, 1 << 10, 32 << 20, 32 << 20]
        .into_iter()
        .enumerate()
    {
        fs::write(src.join(format!("calibration-{i}")), rng.bytes(len)).expect("write");
        let expected = tree::manifest(&src);
        let (ok, job) = fleet.job(&["backup", "a", "--source", "data"]);
        assert!(ok, "an uncut backup: {job}");
        let took = (job["finished_unix_ms"].as_i64().expect("finished")
            - job["created_unix_ms"].as_i64().expect("created")) as f64
            / 1e3;
        match len < 1 << 20 {
            true => overhead = overhead.max(took),
            false => per_byte = per_byte.max((took - overhead).max(0.0) / len as f64),
        }
        let id = job["snapshot_ids"][0]
            .as_str()
            .expect("snapshot id")
            .to_string();
        committed.push((id, expected));
    }
    let span = |fresh: u64| Duration::from_secs_f64(1.25 * (overhead + per_byte * fresh as f64));
    let (mut shortest, mut longest) = (Duration::MAX, Duration::ZERO);

    let (mut mid_backup, mut after_commit, mut before_dispatch, mut landed_late) = (0, 0, 0, 0);
    let (mut verified, mut restored, mut compared_bytes, mut swept) = (0u64, 0, 0u64, 0u64);
    let mut again: Vec<u64> = Vec::new();
    for kill in 1..=kills {
        let (fresh_files, fresh) = churn(&mut rng);
        let mut expected = tree::manifest(&src);
        let listed = fleet.snapshot_ids();
        let stored_before = fleet.stored_bytes();
        let job = fleet.start_job(&["backup", "a", "--source", "data"]);
        let span = span(fresh);
        (shortest, longest) = (shortest.min(span), longest.max(span));
        std::thread::sleep(span.mul_f64((rng.next_u64() % 10_000) as f64 / 10_000.0));
        fleet.kill_agent("a");
        let at_kill =
            lifeboat_tests::wait_for("the killed job to settle", Duration::from_secs(30), || {
                let j = fleet.job_info(&job);
                (j["state"] != "running").then_some(j)
            })["state"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        // The job is judged once the agent is back: a commit it sent just before it died
        // can land after its session was seen to end (the job then succeeds), and a job it
        // never took runs now.
        start_agent(&mut fleet);
        let end =
            lifeboat_tests::wait_for("the killed job to end", Duration::from_secs(60), || {
                let j = fleet.job_info(&job);
                (j["state"] != "running" && j["state"] != "queued").then_some(j)
            });
        let snapshot_ids = end["snapshot_ids"].as_array().cloned().unwrap_or_default();
        match end["state"].as_str().unwrap_or_default() {
            "interrupted" => {
                mid_backup += 1;
                assert!(snapshot_ids.is_empty(), "kill {kill}: {end}");
                assert_eq!(
                    fleet.snapshot_ids(),
                    listed,
                    "kill {kill}: a killed backup left a listed snapshot"
                );
                let left = fleet
                    .stored_bytes()
                    .checked_sub(stored_before)
                    .expect("the store lost chunks while a backup was killed");
                // One kill in three: the files it was backing up are gone before the next
                // backup, so whatever it stored is an orphan for GC.
                let orphaning = kill % 3 == 0;
                if orphaning {
                    for f in &fresh_files {
                        fs::remove_file(f).expect("delete");
                    }
                    expected = tree::manifest(&src);
                }
                let s = fleet.backup("a", "data");
                let new = s["bytes_new"].as_u64().expect("bytes_new");
                if !orphaning {
                    // The tree (40-odd entries) is uploaded as chunks too: a few KiB.
                    let tree = 64 << 10;
                    assert!(
                        new <= fresh + tree,
                        "kill {kill}: the next backup uploaded {new} bytes, more than the {fresh} fresh ones and the tree"
                    );
                    // Stored lengths are sealed and compressed: a little above the data.
                    let resent = (new + left).saturating_sub(fresh);
                    assert!(
                        resent <= window,
                        "kill {kill}: {resent} bytes uploaded again after the kill, more than the in-flight window ({window})"
                    );
                    again.push(resent);
                }
                committed.push((s["id"].as_str().expect("id").to_string(), expected));
            }
            "succeeded" => {
                // Killed after the commit, or before it took the job.
                match at_kill.as_str() {
                    "succeeded" => after_commit += 1,
                    "queued" => before_dispatch += 1,
                    _ => landed_late += 1,
                }
                let id = end["snapshot_ids"][0]
                    .as_str()
                    .expect("snapshot id")
                    .to_string();
                let mut want = listed.clone();
                want.push(id.clone());
                let mut now = fleet.snapshot_ids();
                want.sort();
                now.sort();
                assert_eq!(now, want, "kill {kill}: the job's one snapshot is listed");
                committed.push((id, expected));
            }
            other => panic!("kill {kill}: the killed backup ended {other}: {end}"),
        }

        let v = fleet.cli_json(&["verify"]);
        for list in ["bad", "affected_snapshots", "damaged_packs"] {
            assert_eq!(
                v[list].as_array().map(Vec::len),
                Some(0),
                "kill {kill}: verify: {v}"
            );
        }
        verified += v["bytes"].as_u64().expect("bytes");

        if kill % check_every != 0 && kill != kills {
            continue;
        }
        // I1/I2: every listed snapshot restores to what the source held when it was taken.
        let listed = fleet.snapshot_ids();
        for (id, manifest) in committed.iter().filter(|(id, _)| listed.contains(id)) {
            let target = restores.join(&id[..12]);
            let (ok, job) = fleet.restore_to(id, "a", &target, &[]);
            assert!(ok, "kill {kill}: snapshot {id} does not restore: {job}");
            tree::assert_same(manifest, &target);
            fs::remove_dir_all(&target).expect("clean up");
            restored += 1;
            compared_bytes += manifest.iter().map(|i| i.size).sum::<u64>();
        }
        // Orphans: the first GC past the lease reclaims them all, a second finds none.
        assert!(fleet.cli(&["prune"]).status.success());
        let (first, _) = fleet.gc_past_the_lease(Duration::from_secs(2), &format!("kill {kill}"));
        swept += first["swept"].as_u64().expect("swept");
        let listed = fleet.snapshot_ids();
        committed.retain(|(id, _)| listed.contains(id));
        eprintln!(
            "A1: {kill} of {kills} kills: {mid_backup} mid-backup, {restored} restores identical, {swept} orphans swept"
        );
    }
    again.sort_unstable();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "A1: {kills} agent kills, each at a uniform moment of 1.25 x the backup's expected length ({shortest:?} to {longest:?}): {mid_backup} mid-backup, {after_commit} after the commit ({landed_late} more whose commit landed after the agent's session ended), {before_dispatch} before the agent took the job; \
         {kills} verifications read {:.0} MiB, 0 bad; {restored} restores compared {:.0} MiB, 0 differences; \
         uploaded again after a kill: median {:.1} MiB, max {:.1} MiB (window {:.0} MiB); {swept} orphan chunks swept by the first GC past the lease, none left for a second",
        mib(verified),
        mib(compared_bytes),
        mib(again.get(again.len() / 2).copied().unwrap_or(0)),
        mib(again.last().copied().unwrap_or(0)),
        mib(window),
    );
    // About half the quick run's kills land mid-backup (its backups are short, so the fixed
    // cost weighs more), nine in ten of the soak's: a quick run asks for one, lest it fail by
    // chance (12 kills at one in two: 1 in 4,096 finds none).
    let least = if soak { kills / 3 } else { 1 };
    assert!(
        mid_backup >= least,
        "only {mid_backup} of {kills} kills landed mid-backup: the test no longer tests A1"
    );
}

/// A16 across releases: the data directory a controller of the previous release wrote
/// (`tests/fixtures/previous-release.tar.gz`, made by `make-previous-release.sh` with the
/// binaries of the commit in its `made-by`: a catalog some migrations behind, a store from
/// before encryption, two snapshots of a small tree) is opened by this release, in
/// another place than it was written (that release recorded the store's absolute path:
/// the controller refuses to serve from a store that is not there and says what to set;
/// a new data directory records it relative to itself). The catalog is migrated to the latest version, `lifeboat verify` reads it all clean, both
/// snapshots restore onto a new agent identical to the tree each saw, and a new backup of
/// the same tree into the old store stores none of its data again.
#[test]
fn a16_a_data_directory_of_the_previous_release_migrates_and_restores_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = lifeboat_tests::repo_dir().join("tests/fixtures/previous-release.tar.gz");
    let untar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(untar.success(), "tar -xzf {}", fixture.display());
    let made_by = fs::read_to_string(dir.path().join("made-by")).expect("made-by");
    // The fixture's admin identity lasts the year its release gave it: past that, this
    // test cannot speak to the controller, and says how to make the fixture again.
    let identity =
        lifeboat_core::identity::IdentityFile::load(&dir.path().join("ctl/admin.identity"))
            .expect("the fixture's admin identity");
    let validity = lifeboat_core::pki::validity_of(&identity.cert_pem).expect("its validity");
    assert!(
        validity.not_after_ms() > lifeboat_tests::now_ms() + 86_400_000,
        "the admin identity in tests/fixtures/previous-release.tar.gz expired (or expires within a day): make the fixture again with tests/fixtures/make-previous-release.sh and the binaries of the latest release"
    );
    let catalog_version = |path: &std::path::Path| -> i64 {
        rusqlite::Connection::open(path)
            .expect("catalog")
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version")
    };
    let before = catalog_version(&dir.path().join("ctl/catalog.db"));

    // The fixture was made in a directory of its own, which the release before this
    // recorded as the store's absolute path: here it was moved, as a data directory
    // restored onto another machine is. The controller refuses to serve the catalog's
    // snapshots from a store that is not there, and says what to do.
    let settings = dir.path().join("ctl/controller.json");
    let mut saved: serde_json::Value =
        serde_json::from_slice(&fs::read(&settings).expect("controller.json")).expect("json");
    let recorded = saved["store"].as_str().expect("store").to_string();
    assert!(
        recorded.starts_with('/') && !std::path::Path::new(&recorded).exists(),
        "the fixture's store path {recorded} is there: this test means to move it"
    );
    let refused = lifeboat_tests::bin("lifeboat-controller")
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("ctl"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run the controller");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains(&recorded)
            && stderr.contains("which is not there")
            && stderr.contains("set \"store\" in that file"),
        "a controller over a moved data directory: {}\n{stderr}",
        refused.status
    );
    // As the operator does: the store lies inside the data directory.
    saved["store"] = "store".into();
    fs::write(&settings, saved.to_string()).expect("write controller.json");

    let mut fleet = Fleet::start_in(dir);
    let after = catalog_version(&fleet.path("ctl/catalog.db"));
    let fresh = Fleet::start();
    let latest = catalog_version(&fresh.path("ctl/catalog.db"));
    let fresh_settings: serde_json::Value = serde_json::from_slice(
        &fs::read(fresh.path("ctl/controller.json")).expect("controller.json"),
    )
    .expect("json");
    assert_eq!(
        fresh_settings["store"], "store",
        "a new data directory records its store relative to itself, so that it can move"
    );
    assert!(
        before < after && after == latest,
        "the catalog stood at {before} and is at {after}, the latest being {latest}"
    );
    let mut snaps: Vec<serde_json::Value> = fleet
        .cli_json(&["snapshots"])
        .as_array()
        .expect("snapshots")
        .clone();
    snaps.sort_by_key(|s| s["received_unix_ms"].as_i64());
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let v = fleet.cli_json(&["verify"]);
    for list in ["bad", "affected_snapshots", "damaged_packs"] {
        assert_eq!(v[list].as_array().map(Vec::len), Some(0), "verify: {v}");
    }

    let restores = fleet.path("restores");
    fs::create_dir_all(&restores).expect("restores");
    let source = fleet.path("source-2");
    let b = fleet.enroll("new-1");
    fleet.run_agent(&b, &[("data", source.as_path())], &[restores.as_path()]);
    let mut compared = 0;
    for (i, s) in snaps.iter().enumerate() {
        let id = s["id"].as_str().expect("id");
        assert_eq!(s["agent"], "old-1", "{s}");
        let target = restores.join(format!("day-{}", i + 1));
        let (ok, job) = fleet.restore_to(id, "new-1", &target, &[]);
        assert!(ok, "snapshot {id} of the previous release: {job}");
        let expected = tree::manifest(&fleet.path(&format!("source-{}", i + 1)));
        tree::assert_same(&expected, &target);
        compared += expected.len();
    }
    // The new agent is told the old one's chunks are missing and uploads them (an agent
    // learns nothing of what others hold, B14), but the store keeps them once.
    let stored_before = fleet.stored_bytes();
    let s = fleet.backup("new-1", "data");
    let bytes = s["bytes"].as_u64().expect("bytes");
    let new = fleet.stored_bytes() - stored_before;
    assert!(
        new < bytes / 10,
        "a backup of the tree the old store holds stored {new} of its {bytes} bytes again"
    );
    eprintln!(
        "A16 (previous release): the data directory of {} (catalog at {before} of {latest} migrations, {} bytes in the store) opened, migrated, verified clean; 2 snapshots restored identical ({compared} entries); a new backup of the same tree stored {new} bytes more for its {bytes}",
        made_by.trim(),
        v["bytes"]
    );
}
