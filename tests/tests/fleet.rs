//! The first hour of an ops team with Lifeboat, end to end: a controller and two agents as
//! real processes over mTLS on loopback; back up a tree with every entry type, change
//! about 5% of it, back up again, restore both snapshots (one onto the other machine),
//! and rebuild a lost catalog from the store.

use std::fs;
use std::path::Path;
use std::time::Duration;

use lifeboat_core::chunker::AVG_SIZE;
use lifeboat_tests::Fleet;
use lifeboat_tests::tree::{self, Rng};

#[test]
fn backup_change_backup_restore_both_snapshots() {
    day_one_day_two(Fleet::start());
}

/// The same first hour with the store in an S3 bucket (a real SeaweedFS server).
#[test]
fn backup_change_backup_restore_both_snapshots_on_s3() {
    let Some(s3) = lifeboat_tests::s3::S3Server::start() else {
        return;
    };
    day_one_day_two(Fleet::start_on_s3(&s3, "fleet/one", &[]));
}

fn day_one_day_two(mut fleet: Fleet) {
    let src = fleet.path("src");
    let mut rng = Rng::new(2026);
    tree::make_tree(&src, &mut rng);
    let day1 = tree::manifest(&src);

    let web = fleet.enroll("web-1");
    let spare = fleet.enroll("spare-1");
    let (r_web, r_spare) = (fleet.path("restore-web"), fleet.path("restore-spare"));
    fleet.run_agent(&web, &[("data", src.as_path())], &[r_web.as_path()]);
    fleet.run_agent(&spare, &[], &[r_spare.as_path()]);

    let s1 = fleet.backup("web-1", "data");
    assert_eq!(s1["parent"], "", "first snapshot has no parent");
    assert!(
        s1["bytes_new"].as_u64().unwrap_or(0) > 20 << 20,
        "first backup stores the data: {s1}"
    );

    let changes = tree::modify(&src, &mut rng);
    let day2 = tree::manifest(&src);
    let s2 = fleet.backup("web-1", "data");
    assert_eq!(
        s2["parent"], s1["id"],
        "second snapshot names the first as parent"
    );
    // Unchanged files were not read again: only the changed and new ones (whole).
    let read1 = s1["bytes_read"].as_u64().expect("bytes_read");
    let read2 = s2["bytes_read"].as_u64().expect("bytes_read");
    assert_eq!(
        read1,
        s1["bytes"].as_u64().expect("bytes"),
        "a first backup reads everything"
    );
    assert!(
        read2 >= changes.bytes && read2 < read1 / 2,
        "day-2 backup read {read2} bytes of {read1}"
    );
    let new = s2["bytes_new"].as_u64().expect("bytes_new");
    let allowed = changes.bytes + 2 * AVG_SIZE as u64 * changes.files;
    assert!(
        new > 0 && new <= allowed,
        "second backup stored {new} new bytes; allowed {allowed} ({} changed bytes in {} files)",
        changes.bytes,
        changes.files
    );

    // Snapshot 1 onto the other machine (all of it: its device nodes and setuid files
    // too), snapshot 2 onto the same one.
    let t1 = r_spare.join("day1");
    let (ok, job) = fleet.job(&[
        "restore",
        s1["id"].as_str().expect("id"),
        "--agent",
        "spare-1",
        "--to",
        t1.to_str().expect("utf8"),
        "--keep-privileges",
    ]);
    assert!(
        ok,
        "restore of day 1 failed: {job}\n{}",
        fleet.agent_log("spare-1")
    );
    tree::assert_same(&day1, &t1);

    let t2 = r_web.join("day2");
    let short = &s2["id"].as_str().expect("id")[..8];
    let (ok, job) = fleet.job(&[
        "restore",
        short,
        "--agent",
        "web-1",
        "--to",
        t2.to_str().expect("utf8"),
    ]);
    assert!(
        ok,
        "restore of day 2 failed: {job}\n{}",
        fleet.agent_log("web-1")
    );
    tree::assert_same(&day2, &t2);
    assert_eq!(
        job["progress"]["files_done"],
        job["progress"]["files_total"]
    );

    // `--full` re-reads every file, and finds nothing new to store.
    let (ok, job) = fleet.job(&["backup", "web-1", "--full"]);
    assert!(ok, "full backup failed: {job}");
    let s3 = fleet
        .cli_json(&["snapshots", "--agent", "web-1"])
        .as_array()
        .expect("array")[0]
        .clone();
    assert_eq!(s3["id"].as_str(), job["snapshot_ids"][0].as_str());
    assert_eq!(
        s3["bytes_read"], s3["bytes"],
        "--full must re-read everything: {s3}"
    );
    assert!(
        s3["bytes_new"].as_u64().expect("bytes_new") < 1 << 20,
        "an unchanged tree stores (almost) nothing new: {s3}"
    );

    // Lose the catalog; rebuild it from the store alone; the snapshots come back.
    let before = fleet.cli_json(&["snapshots"]);
    let out = fleet.lose_catalog_and_rebuild();
    assert!(
        out.status.success(),
        "rebuild-catalog failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 snapshots"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    fleet.start_controller();
    let after = fleet.cli_json(&["snapshots"]);
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
}

#[test]
fn restore_target_outside_the_roots_is_refused_with_a_reason() {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("f"), b"x").expect("write");
    let a = fleet.enroll("a");
    let root = fleet.path("roots");
    fleet.run_agent(&a, &[("data", src.as_path())], &[root.as_path()]);
    let s = fleet.backup("a", "data");
    let elsewhere = fleet.path("elsewhere");
    let out = fleet.cli(&[
        "restore",
        s["id"].as_str().expect("id"),
        "--agent",
        "a",
        "--to",
        elsewhere.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside agent a's restore roots"), "{err}");
    assert!(!Path::new(&elsewhere).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_tls_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    lifeboat_proto::transport::install_crypto_provider();
    let fleet = tokio::task::spawn_blocking(Fleet::start)
        .await
        .expect("start");
    let addr = fleet
        .metrics_url
        .strip_prefix("https://")
        .expect("https metrics URL")
        .to_string();

    // Plain HTTP gets no answer: the port speaks TLS only.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut plain = Vec::new();
    let _ = tcp.read_to_end(&mut plain).await;
    assert!(
        !String::from_utf8_lossy(&plain).contains("lifeboat_agents"),
        "metrics served in plaintext"
    );

    // Over TLS, verified against the fleet CA under the controller's name.
    let body = tokio::task::spawn_blocking(move || lifeboat_tests::metrics(&fleet))
        .await
        .expect("metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("lifeboat_agents 0") && body.contains("lifeboat_snapshots 0"),
        "{body}"
    );
}

#[test]
fn a_backup_killed_midway_leaves_no_snapshot_and_the_next_one_reuses_its_chunks() {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let mut rng = Rng::new(99);
    for i in 0..8 {
        let path = src.join(format!("big-{i}.bin"));
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(path, rng.bytes(48 << 20)).expect("write");
    }
    let a = fleet.enroll("crashy");
    fleet.run_agent(&a, &[("data", src.as_path())], &[]);

    let job = fleet.cli_json(&["backup", "crashy"]);
    let id = job["id"].as_str().expect("job id").to_string();
    // Pull the plug as soon as some chunks have reached the controller.
    lifeboat_tests::wait_for("the first uploads", Duration::from_secs(60), || {
        let j = fleet.job_info(&id);
        assert_ne!(
            j["state"], "succeeded",
            "the backup finished before it could be interrupted"
        );
        (j["progress"]["bytes_uploaded"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    fleet.kill_agent("crashy");

    let j = lifeboat_tests::wait_for(
        "the job to be marked interrupted",
        Duration::from_secs(30),
        || {
            let j = fleet.job_info(&id);
            (j["state"] == "interrupted").then_some(j)
        },
    );
    assert_eq!(j["error"], "agent disconnected while the job ran");
    assert_eq!(
        fleet
            .cli_json(&["snapshots"])
            .as_array()
            .expect("array")
            .len(),
        0,
        "a partial snapshot is visible"
    );

    // The agent comes back; the next backup completes and reuses what was uploaded.
    fleet.run_agent(&a, &[("data", src.as_path())], &[]);
    let s = fleet.backup("crashy", "data");
    let total = s["bytes"].as_u64().expect("bytes");
    let new = s["bytes_new"].as_u64().expect("bytes_new");
    assert_eq!(total, 8 * (48 << 20));
    assert!(
        new < total,
        "the chunks uploaded before the crash were uploaded again ({new} of {total} bytes new)"
    );
    let j = fleet.job_info(&id);
    assert_eq!(
        j["state"], "interrupted",
        "the restarted agent does not resurrect the killed job"
    );
}

/// `lifeboat token create --json | head -c 10`, `lifeboat agents | head -1`: when the
/// reader goes away, the CLI stops quietly with success; it does not panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let fleet = Fleet::start();
    for args in [&["agents"][..], &["token", "create", "--json"][..]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = fleet
            .cli_command(args)
            .stdout(writer)
            .output()
            .expect("run lifeboat");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "lifeboat {args:?} into a closed pipe: {:?}, {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "lifeboat {args:?}: {stderr}");
    }
}

/// A backup streams its tree: more entries than its window (4096) of files waiting for the
/// tree, a large file at the front holding that window while the small ones behind it are
/// read, and names whose tree order ("d", "d/…", "d-x", "d.txt") is not their bytewise
/// order as full paths. The snapshot holds every entry in place; a second backup after
/// one small change and one removal finds every other file in the previous tree and
/// reads only the changed one.
#[test]
fn a_source_larger_than_the_backup_window_streams_in_tree_order() {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let mut rng = Rng::new(4096);
    std::fs::create_dir_all(src.join("0-big")).expect("mkdir");
    std::fs::write(src.join("0-big/first.bin"), rng.bytes(24 << 20)).expect("write");
    for d in 0..6 {
        for name in [format!("d{d}"), format!("d{d}/sub")] {
            std::fs::create_dir_all(src.join(name)).expect("mkdir");
        }
        for i in 0..900 {
            std::fs::write(src.join(format!("d{d}/f{i:04}")), rng.bytes(64 + i)).expect("write");
            std::fs::write(src.join(format!("d{d}/sub/g{i:04}")), rng.bytes(32 + i))
                .expect("write");
        }
        std::fs::write(src.join(format!("d{d}-x")), rng.bytes(100)).expect("write");
        std::fs::write(src.join(format!("d{d}.txt")), rng.bytes(100)).expect("write");
    }
    let files = 1 + 6 * (2 * 900 + 2);
    let day1 = tree::manifest(&src);

    let a = fleet.enroll("many");
    let target = fleet.path("restore");
    fleet.run_agent(&a, &[("data", src.as_path())], &[target.as_path()]);
    let (ok, job) = fleet.job(&["backup", "many", "--source", "data"]);
    assert!(ok, "backup failed: {job}\n{}", fleet.agent_log("many"));
    assert_eq!(job["progress"]["files_total"], files, "{job}");
    assert_eq!(job["progress"]["files_done"], files, "{job}");
    let s1 = fleet
        .cli_json(&["snapshots", "--agent", "many"])
        .as_array()
        .expect("array")[0]
        .clone();
    assert_eq!(s1["files"], files, "{s1}");

    // One small file changes and one goes, where tree order is not bytewise order: the
    // previous tree's "d3/sub/g0899" must be passed over to find "d3-x" after it.
    std::fs::write(src.join("d3.txt"), rng.bytes(333)).expect("write");
    std::fs::remove_file(src.join("d3/sub/g0899")).expect("remove");
    let day2 = tree::manifest(&src);
    let s2 = fleet.backup("many", "data");
    assert_eq!(s2["parent"], s1["id"]);
    assert_eq!(s2["files"], files - 1, "{s2}");
    assert_eq!(
        s2["bytes_read"], 333,
        "only the changed file is read again: {s2}"
    );

    for (snap, want) in [(&s1, &day1), (&s2, &day2)] {
        let to = target.join(snap["id"].as_str().expect("id"));
        let (ok, job) = fleet.job(&[
            "restore",
            snap["id"].as_str().expect("id"),
            "--agent",
            "many",
            "--to",
            to.to_str().expect("utf8"),
        ]);
        assert!(ok, "restore failed: {job}\n{}", fleet.agent_log("many"));
        tree::assert_same(want, &to);
    }
}

/// Every background worker is visible with its runs and its last failure, in `lifeboat
/// status` (and `--json`) and in `/metrics`: here the audit anchor fails (its file in the
/// store is replaced by a directory) and says so, while the others keep running.
#[test]
fn background_workers_show_their_runs_and_last_failure() {
    let fleet = Fleet::start();
    let worker = |status: &serde_json::Value, name: &str| {
        status["workers"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no worker {name}: {status}"))
    };
    let status = lifeboat_tests::wait_for("every worker to run", Duration::from_secs(30), || {
        let s = fleet.cli_json(&["status"]);
        ["audit-anchor", "heartbeats", "scheduler", "drills"]
            .iter()
            .all(|n| worker(&s, n)["runs"].as_u64().unwrap_or(0) > 0)
            .then_some(s)
    });
    for name in ["audit-anchor", "heartbeats", "scheduler", "drills"] {
        assert_eq!(worker(&status, name)["failures"], 0, "{status}");
    }
    let anchor = fleet.path("ctl/store/audit-head");
    let _ = std::fs::remove_file(&anchor);
    std::fs::create_dir_all(anchor.join("in-the-way")).expect("block the anchor");
    fleet.token("1h"); // an audited action: the anchor has something to write
    let failed = lifeboat_tests::wait_for("the anchor to fail", Duration::from_secs(30), || {
        let s = fleet.cli_json(&["status"]);
        let w = worker(&s, "audit-anchor");
        (w["failures"].as_u64().unwrap_or(0) > 0).then_some(w)
    });
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("audit-head"),
        "{failed}"
    );
    assert!(
        failed["last_error_unix_ms"].as_i64().unwrap_or(0) > 0,
        "{failed}"
    );
    let table = fleet.cli(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("audit-anchor") && text.contains("audit-head"),
        "{text}"
    );
    let metrics = lifeboat_tests::metrics(&fleet);
    assert!(
        metrics.contains("lifeboat_worker_runs_total{worker=\"scheduler\"}"),
        "{metrics}"
    );
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("lifeboat_worker_failures_total{worker=\"audit-anchor\"}"))
        .expect("anchor failures metric");
    assert_ne!(failures.rsplit(' ').next(), Some("0"), "{failures}");
}

/// D6 (mass recovery) in small, with the controller's restore memory cut to one restore at a time
/// (`--restore-memory 8MiB`): three restores started at once each read several GetChunks
/// requests over two streams, as agents do; they take turns and all end byte-identical,
/// none stuck behind another's stream, and /metrics says how many are served.
#[test]
fn restores_beyond_the_served_limit_take_turns_and_all_complete() {
    let mut fleet = Fleet::start_with(&["--restore-memory", "8MiB"]);
    let mut sources = Vec::new();
    for (i, name) in ["r1", "r2", "r3"].iter().enumerate() {
        let root = fleet.path(&format!("machines/{name}"));
        let data = root.join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        // Over a thousand small files (more chunk ids than one request asks for) and a
        // large one: each restore opens several requests.
        let mut rng = Rng::new(40 + i as u64);
        for f in 0..1200 {
            std::fs::write(data.join(format!("s{f:04}")), rng.bytes(512 + f % 700)).expect("write");
        }
        std::fs::write(data.join("big"), rng.bytes(6 << 20)).expect("write");
        let agent = fleet.enroll(name);
        fleet.run_agent_with(&agent, &[("data", &data)], &[&root], &["--no-docker"]);
        sources.push((name.to_string(), root, data));
    }
    fleet.wait_connected(3);
    let snapshots: Vec<String> = sources
        .iter()
        .map(|(name, _, _)| {
            fleet.backup(name, "data")["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    let jobs: Vec<String> = sources
        .iter()
        .zip(&snapshots)
        .map(|((name, root, _), snap)| {
            let to = root.join("restored");
            fleet.start_job(&[
                "restore",
                snap,
                "--agent",
                name,
                "--to",
                to.to_str().expect("utf-8"),
            ])
        })
        .collect();
    for id in &jobs {
        let state =
            lifeboat_tests::wait_for("the restore to end", Duration::from_secs(180), || {
                let j = fleet.job_info(id);
                let s = j["state"].as_str().unwrap_or_default().to_string();
                (s != "queued" && s != "running").then_some(s)
            });
        assert_eq!(state, "succeeded", "{}", fleet.job_info(id));
    }
    for (_, root, data) in &sources {
        tree::assert_same(&tree::manifest(data), &root.join("restored"));
    }
    let metrics = lifeboat_tests::metrics(&fleet);
    assert!(
        metrics.contains("lifeboat_restores_served_limit 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_restores_waiting 0\n"),
        "{metrics}"
    );
}

/// A restore by an agent that is not root (user nobody), of a snapshot a root agent took:
/// nested directories whose mode shuts their owner out (0600: no search) get that mode only
/// once everything is written, deepest first, and a file in them linked from a later
/// directory is still linked. Every mode and byte comes back; the owner is the agent's (a
/// restore that is not root cannot give files away).
#[test]
fn a_non_root_agent_restores_directories_that_shut_their_owner_out() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let inner = src.join("outer/inner");
    fs::create_dir_all(&inner).expect("mkdir");
    fs::write(inner.join("secret.txt"), b"deep inside\n").expect("write");
    fs::write(src.join("outer/note.txt"), b"outside the inner one\n").expect("write");
    fs::create_dir_all(src.join("zz")).expect("mkdir");
    fs::hard_link(inner.join("secret.txt"), src.join("zz/link")).expect("link");
    for d in [&inner, &src.join("outer")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let a = fleet.enroll("a");
    fleet.run_agent_with(&a, &[("data", src.as_path())], &[], &["--no-docker"]);
    let snap = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();

    // b runs as nobody, with its state and restore root its own.
    let b = fleet.enroll("b");
    let root = fleet.path("nobody-root");
    fs::create_dir_all(&root).expect("mkdir");
    fs::set_permissions(fleet.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    for p in [&b.state_dir, &root] {
        let out = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p)
            .output()
            .expect("chown");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fleet.agent_user = Some((65534, 65534));
    fleet.run_agent_with(&b, &[], &[root.as_path()], &["--no-docker"]);
    let target = root.join("restored");
    let (ok, job) = fleet.restore_to(&snap, "b", &target, &[]);
    assert!(ok, "a non-root restore: {job}\n{}", fleet.agent_log("b"));

    let mode = |p: &str| fs::metadata(target.join(p)).expect(p).mode() & 0o7777;
    assert_eq!(mode("outer"), 0o600);
    assert_eq!(mode("outer/inner"), 0o600);
    assert_eq!(
        fs::read(target.join("outer/inner/secret.txt")).expect("read"),
        b"deep inside\n"
    );
    assert_eq!(
        fs::read(target.join("outer/note.txt")).expect("read"),
        b"outside the inner one\n"
    );
    let (link, secret) = (
        fs::metadata(target.join("zz/link")).expect("link"),
        fs::metadata(target.join("outer/inner/secret.txt")).expect("secret"),
    );
    assert_eq!((link.dev(), link.ino()), (secret.dev(), secret.ino()));
    assert_eq!(secret.uid(), 65534, "owned by the agent's user");
    // The mtimes of the shut directories are the snapshot's.
    for d in ["outer", "outer/inner"] {
        assert_eq!(
            fs::metadata(target.join(d)).expect(d).mtime(),
            fs::metadata(src.join(d)).expect(d).mtime(),
            "{d}'s mtime"
        );
    }
}
