//! GC beside backups: random interleavings of backups, agents paused past the lease,
//! prune and GC never lose a chunk a committed snapshot needs; and a controller killed in
//! the middle of GC or compaction restarts onto a store that verifies and restores.

use std::fs;
use std::time::Duration;

use lifeboat_tests::tree::Rng;
use lifeboat_tests::{Fleet, wait_for};
use rustix::process::Signal;

fn apply_keep_last(fleet: &Fleet, n: u32) {
    let file = fleet.path("keep.toml");
    fs::write(
        &file,
        format!("[[policy]]\nname = \"keep\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\nkeep = {{ last = {n} }}\n"),
    )
    .expect("write");
    let out = fleet.cli(&["policy", "apply", "-f", file.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every committed snapshot restores (every chunk read and verified), and scrub is clean.
fn everything_restores(fleet: &Fleet, root: &std::path::Path, tag: &str) -> usize {
    let v = fleet.cli_json(&["verify"]);
    assert_eq!(v["bad"].as_array().map(Vec::len), Some(0), "{tag}: {v}");
    let snaps = fleet.cli_json(&["snapshots"]);
    let snaps = snaps.as_array().expect("snapshots");
    for s in snaps {
        let id = s["id"].as_str().expect("id");
        let target = root.join(format!("{tag}-{}", &id[..12]));
        let (ok, job) = fleet.job(&[
            "restore",
            id,
            "--agent",
            "a",
            "--to",
            target.to_str().expect("path"),
        ]);
        assert!(ok, "{tag}: snapshot {id} does not restore: {job}");
    }
    snaps.len()
}

#[test]
fn gc_races_backups_and_never_loses_a_referenced_chunk() {
    gc_race(Fleet::start_with(GC_RACE_ARGS));
}

/// The same race with the store in an S3 bucket: GC deletes objects there, and only the
/// packs the catalog no longer needs.
#[test]
fn gc_races_backups_and_never_loses_a_referenced_chunk_on_s3() {
    let Some(s3) = lifeboat_tests::s3::S3Server::start() else {
        return;
    };
    let fleet = Fleet::start_on_s3(&s3, "gc", GC_RACE_ARGS);
    let staging = tempfile::tempdir().expect("staging");
    let bucket = s3.objects("gc", staging.path());
    let fleet = gc_race(fleet);
    // The bucket holds exactly the packs the catalog indexes: GC left no garbage it
    // knew of and deleted nothing still indexed.
    let mut in_bucket: Vec<String> = bucket
        .list("packs/")
        .expect("list")
        .iter()
        .filter_map(|o| lifeboat_controller::store::objects::pack_name_of(&o.key).map(String::from))
        .collect();
    let mut indexed: Vec<String> = fleet
        .chunk_index()
        .into_iter()
        .map(|(_, p, _, _)| p)
        .collect();
    indexed.sort();
    indexed.dedup();
    in_bucket.sort();
    assert_eq!(
        in_bucket, indexed,
        "the bucket's packs against the catalog's"
    );
}

const GC_RACE_ARGS: &[&str] = &["--gc-lease", "2s", "--prune-every", "0s"];

/// Checklist row D4 as written: GC runs without pause (prune, GC, prune, GC...) while ten
/// agents back up round after round, in each round one of them (10%) SIGSTOPped past the
/// 2 s lease mid-backup. 0 missing chunks: a backup whose chunks were swept while it was
/// paused is refused at commit (typed `missing_chunks`), never committed with holes, and
/// every committed snapshot restores whole; once the fleet stops, one GC past the lease
/// reclaims every orphan. GC's throughput over the run is printed. Quick: 30 s; soaking
/// (`LIFEBOAT_SOAK=1`): the checklist's hour and at least 100 backups;
/// `LIFEBOAT_D4_SECONDS` sets the time.
#[test]
fn d4_gc_runs_without_pause_beside_a_fleet_backing_up() {
    const AGENTS: usize = 10;
    let seconds: u64 = match std::env::var("LIFEBOAT_D4_SECONDS") {
        Ok(v) => v.parse().expect("LIFEBOAT_D4_SECONDS: seconds"),
        Err(_) if lifeboat_tests::soaking() => 3600,
        Err(_) => 30,
    };
    let min_backups = if lifeboat_tests::soaking() { 100 } else { 20 };
    let mut fleet = Fleet::start_with(GC_RACE_ARGS);
    let root = tempfile::tempdir().expect("root");
    let mut rng = Rng::new(404);
    let sources: Vec<tempfile::TempDir> = (0..AGENTS)
        .map(|_| tempfile::tempdir().expect("src"))
        .collect();
    let churn = |rng: &mut Rng, dir: &std::path::Path| {
        for _ in 0..3 {
            let name = format!("f{}", rng.next_u64() % 10);
            let size = 1000 + (rng.next_u64() % 200_000) as usize;
            fs::write(dir.join(&name), rng.bytes(size)).expect("write");
        }
        let _ = fs::remove_file(dir.join(format!("f{}", rng.next_u64() % 10)));
    };
    // `a` first: `everything_restores` restores onto it.
    let names: Vec<String> = (b'a'..)
        .take(AGENTS)
        .map(|c| char::from(c).to_string())
        .collect();
    for (name, src) in names.iter().zip(&sources) {
        churn(&mut rng, src.path());
        let agent = fleet.enroll(name);
        fleet.run_agent(&agent, &[("data", src.path())], &[root.path()]);
    }
    apply_keep_last(&fleet, 2);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = std::time::Instant::now();
    let (mut committed, mut refused, mut rounds) = (0, 0, 0);
    let gc = std::thread::scope(|s| {
        let gc = s.spawn(|| {
            // (cycles, chunks marked and swept, seconds inside `gc`)
            let (mut cycles, mut chunks, mut busy) = (0u64, 0u64, 0f64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = fleet.cli(&["prune"]);
                assert!(
                    out.status.success(),
                    "prune: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let t = std::time::Instant::now();
                let out = fleet.cli(&["gc", "--json"]);
                assert!(
                    out.status.success(),
                    "gc: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                busy += t.elapsed().as_secs_f64();
                let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gc json");
                chunks += r["referenced"].as_u64().expect("referenced")
                    + r["swept"].as_u64().expect("swept");
                cycles += 1;
            }
            (cycles, chunks, busy)
        });
        while started.elapsed() < Duration::from_secs(seconds) || committed + refused < min_backups
        {
            for src in &sources {
                churn(&mut rng, src.path());
            }
            let jobs: Vec<String> = names
                .iter()
                .map(|n| fleet.start_job(&["backup", n]))
                .collect();
            let paused = &names[rounds % AGENTS];
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 400));
            fleet.signal_agent(paused, Signal::STOP);
            std::thread::sleep(Duration::from_millis(2500));
            fleet.signal_agent(paused, Signal::CONT);
            for (name, id) in names.iter().zip(&jobs) {
                let done = wait_for(
                    &format!("round {rounds}: {name}'s backup to end"),
                    Duration::from_secs(120),
                    || {
                        let j = fleet.job_info(id);
                        matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
                    },
                );
                if done["state"] == "succeeded" {
                    committed += 1;
                    continue;
                }
                // Only a backup paused past the lease may lose its chunks to GC, and it
                // is refused for it at commit.
                assert_eq!(
                    name, paused,
                    "round {rounds}: {name} was not paused: {done}"
                );
                assert_eq!(done["refusal"], "missing_chunks", "round {rounds}: {done}");
                refused += 1;
            }
            rounds += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        gc.join().expect("the GC thread")
    });
    let (cycles, chunks, busy) = gc;
    let ran = started.elapsed().as_secs_f64();
    assert!(cycles >= 2, "GC ran {cycles} times beside the backups");

    // 0 missing chunks: every snapshot kept restores whole, and scrub is clean.
    let kept = everything_restores(&fleet, root.path(), "d4");
    assert!(kept >= AGENTS, "{kept} snapshots kept for {AGENTS} agents");
    // Orphans: GC without pause left few; new ones (the chunks of snapshots pruned now)
    // are all reclaimed by one GC past the lease.
    for _ in 0..2 {
        for (name, src) in names.iter().zip(&sources) {
            churn(&mut rng, src.path());
            fleet.backup(name, "data");
        }
    }
    assert!(fleet.cli(&["prune"]).status.success());
    let (last, _) = fleet.gc_past_the_lease(Duration::from_secs(2), "after the fleet stopped");
    assert!(
        last["swept"].as_u64() > Some(0),
        "no orphan to reclaim after a prune: {last}"
    );
    eprintln!(
        "D4 continuous: {ran:.0} s, {rounds} rounds of {AGENTS} backups ({committed} committed, {refused} refused at \
         commit after a pause past the lease, every refusal typed missing_chunks); GC ran {cycles} times without pause, \
         {chunks} chunks marked or swept in {busy:.1} s inside GC ({:.0} chunks/s); {kept} kept snapshots restored whole, \
         verify clean; then 20 more backups and a prune: one GC past the lease swept {} orphans and left none",
        chunks as f64 / busy.max(0.001),
        last["swept"]
    );
}

fn gc_race(mut fleet: Fleet) -> Fleet {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let mut rng = Rng::new(2026);
    // A pool of files: each round rewrites, adds and deletes some.
    let churn = |rng: &mut Rng| {
        for _ in 0..4 {
            let name = format!("f{}", rng.next_u64() % 12);
            let size = 1000 + (rng.next_u64() % 600_000) as usize;
            fs::write(src.path().join(&name), rng.bytes(size)).expect("write");
        }
        let gone = src.path().join(format!("f{}", rng.next_u64() % 12));
        let _ = fs::remove_file(gone);
    };
    churn(&mut rng);
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[root.path()]);
    apply_keep_last(&fleet, 2);
    let mut failed_for_lease = 0;
    // D4 soaking: the checklist's 100 backups, each beside prune and GC.
    let rounds = lifeboat_tests::iterations("D4", 10, 100);
    for round in 0..rounds {
        churn(&mut rng);
        let id = fleet.start_job(&["backup", "a"]);
        match rng.next_u64() % 3 {
            // Pause the agent mid-backup past the lease while prune and GC run.
            0 => {
                fleet.signal_agent("a", Signal::STOP);
                std::thread::sleep(Duration::from_millis(2500));
                assert!(fleet.cli(&["prune"]).status.success());
                assert!(fleet.cli(&["gc"]).status.success());
                fleet.signal_agent("a", Signal::CONT);
            }
            // Prune and GC while the backup runs.
            1 => {
                std::thread::sleep(Duration::from_millis(rng.next_u64() % 300));
                assert!(fleet.cli(&["prune"]).status.success());
                assert!(fleet.cli(&["gc"]).status.success());
            }
            // GC right after the backup.
            _ => {}
        }
        let done = wait_for(
            &format!("round {round}'s backup to end"),
            Duration::from_secs(60),
            || {
                let j = fleet.job_info(&id);
                matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
            },
        );
        if done["state"] == "failed" {
            // Only ever because its chunks were reclaimed while it was paused: refused at
            // commit, never committed with holes.
            let err = done["error"].as_str().unwrap_or_default();
            assert!(
                err.contains("chunks the store does not have"),
                "round {round}: {err}"
            );
            // The reason the scheduler and scripts act on is typed, not read from text.
            assert_eq!(done["refusal"], "missing_chunks", "round {round}: {done}");
            failed_for_lease += 1;
        }
        assert!(fleet.cli(&["gc"]).status.success());
    }
    eprintln!(
        "D4: {rounds} backups beside prune and GC; {failed_for_lease} refused at commit after a pause past the lease"
    );
    // A final backup succeeds (the agent dropped its cache after a refusal), and every
    // committed snapshot restores whole.
    let last = fleet.backup("a", "data");
    assert!(last["id"].is_string());
    let n = everything_restores(&fleet, root.path(), "race");
    assert!(n >= 2);
    let target = root.path().join("latest");
    let (ok, _) = fleet.job(&[
        "restore",
        last["id"].as_str().expect("id"),
        "--agent",
        "a",
        "--to",
        target.to_str().expect("path"),
    ]);
    assert!(ok);
    let mut names = 0;
    for e in fs::read_dir(src.path()).expect("src") {
        let e = e.expect("entry");
        assert_eq!(
            fs::read(e.path()).expect("source"),
            fs::read(target.join(e.file_name())).expect("restored"),
            "{:?}",
            e.file_name()
        );
        names += 1;
    }
    assert_eq!(fs::read_dir(&target).expect("target").count(), names);

    // D4: orphans (here the chunks only pruned snapshots held): once the lease has passed,
    // one GC reclaims them all; a second finds nothing left, and the index holds exactly
    // the chunks the snapshots reference.
    for _ in 0..3 {
        churn(&mut rng);
        fleet.backup("a", "data");
    }
    assert!(fleet.cli(&["prune"]).status.success());
    let (first, took) = fleet.gc_past_the_lease(Duration::from_secs(2), "after a prune");
    assert!(
        first["swept"].as_u64() > Some(0),
        "no orphan to reclaim after a prune: {first}"
    );
    eprintln!(
        "D4: one GC after the lease swept {} orphans ({} chunks referenced, {took:?} with the CLI's start), a second found none left",
        first["swept"], first["referenced"]
    );
    // What the default threshold (half a pack dead) left in place, `--compact-below 1`
    // rewrites: a second such run finds no pack with a dead byte; everything restores.
    let bad = fleet.cli(&["gc", "--compact-below", "0"]);
    assert_eq!(bad.status.code(), Some(1), "--compact-below 0 was accepted");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a fraction above 0 and at most 1"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let all = fleet.cli_json(&["gc", "--compact-below", "1"]);
    let again = fleet.cli_json(&["gc", "--compact-below", "1"]);
    assert_eq!(
        (
            again["packs_compacted"].as_u64(),
            again["packs_deleted"].as_u64()
        ),
        (Some(0), Some(0)),
        "a pack kept dead bytes through --compact-below 1: first {all}, then {again}"
    );
    everything_restores(&fleet, root.path(), "compacted");
    fleet
}

#[test]
fn a_controller_killed_during_gc_or_compaction_restarts_onto_a_sound_store() {
    for point in [
        "gc-after-sweep",
        "compact-after-new-pack",
        "compact-after-relocate",
    ] {
        let mut fleet = Fleet::start_with(&["--gc-lease", "0s", "--prune-every", "0s"]);
        let src = tempfile::tempdir().expect("src");
        let root = tempfile::tempdir().expect("root");
        let mut rng = Rng::new(7);
        // A small file that stays, and a big one that is replaced: the first pack ends up
        // mostly dead, so it is compacted (not just deleted).
        fs::write(src.path().join("stays"), rng.bytes(150_000)).expect("write");
        fs::write(src.path().join("big"), rng.bytes(3_000_000)).expect("write");
        let a = fleet.enroll("a");
        fleet.run_agent(&a, &[("data", src.path())], &[root.path()]);
        fleet.backup("a", "data");
        fs::write(src.path().join("big"), rng.bytes(3_000_000)).expect("write");
        fleet.backup("a", "data");
        apply_keep_last(&fleet, 1);
        let pruned = fleet.cli_json(&["prune"]);
        assert_eq!(pruned["removed"], 1, "{point}: {pruned}");

        fleet.stop_controller();
        fleet.controller_env = vec![("LIFEBOAT_CRASH_AT".into(), point.into())];
        fleet.start_controller();
        let out = fleet.cli(&["gc"]);
        assert!(
            !out.status.success(),
            "{point}: the controller should have died in GC"
        );
        let status = fleet.wait_controller_exit();
        assert!(!status.success(), "{point}: {status}");
        assert!(
            fleet
                .controller_log()
                .contains(&format!("LIFEBOAT_CRASH_AT={point}")),
            "{point}: did not reach the crash point:\n{}",
            fleet.controller_log()
        );

        fleet.controller_env.clear();
        fleet.start_controller();
        wait_for("the agent to reconnect", Duration::from_secs(30), || {
            fleet
                .cli_json(&["agents"])
                .as_array()?
                .iter()
                .any(|x| x["connected"] == true)
                .then_some(())
        });
        everything_restores(&fleet, root.path(), &format!("{point}-after-crash"));
        // GC finishes its work on the next run, and the store is still sound.
        let g = fleet.cli_json(&["gc"]);
        assert!(g["swept"].is_u64(), "{g}");
        everything_restores(&fleet, root.path(), &format!("{point}-after-gc"));
        let v = fleet.cli_json(&["verify"]);
        assert!(v["chunks"].as_u64().unwrap_or(0) > 0);
    }
}
