//! Faults from `../shared/RELIABILITY.md` (section A) that a filesystem can be made to
//! produce on this machine: each test names its row and prints its figure.
//!
//! The filesystems that fill up are small tmpfs mounts (root only; CI runs as root and sets
//! `LIFEBOAT_REQUIRE_MOUNT`, so there they cannot skip).

use std::fs;

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
    let (ok, job) = fleet.job(&[
        "restore",
        id,
        "--agent",
        "a",
        "--to",
        target.to_str().expect("utf8"),
    ]);
    assert!(ok, "restore failed: {job}\n{}", fleet.agent_log("a"));
    tree::assert_same(&expected, &target);
    eprintln!(
        "A8 store full during backup ({leave_mib} MiB free): {} entries compared after the refill, {} bytes stored",
        expected.len(),
        snap["bytes_new"]
    );
    true
}

/// A9: the restore target's filesystem fills during a restore. The restore fails saying
/// so, no byte that was there before changes, and the same restore run again once space is
/// freed ends identical to the snapshot.
#[test]
fn a9_restore_target_full_then_freed_restores_identically() {
    // The tree holds about 21 MiB of data (its sparse file takes no space): the target
    // fills in the big files, among the small ones, and near the end.
    for leave_mib in [1, 10, 19] {
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
    let to = target.to_str().expect("utf8");
    let (ok, job) = fleet.job(&["restore", id, "--agent", "a", "--to", to]);
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
    let (ok, job) = fleet.job(&["restore", id, "--agent", "a", "--to", to]);
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
