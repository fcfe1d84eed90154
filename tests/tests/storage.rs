//! The store's object backends: one conformance suite run against the local directory and
//! a real S3 server (SeaweedFS), and what a fleet relies on when the store is a bucket:
//! a flipped byte in a pack is found by scrub, and an object store that dies mid-backup
//! never leaves a listed snapshot short of a chunk.

use std::time::Duration;

use lifeboat_controller::store::objects::{
    LocalDir, Objects, StoreError, pack_key, pack_name_of, snapshot_id_of, snapshot_key,
};
use lifeboat_tests::s3::S3Server;
use lifeboat_tests::tree::Rng;
use lifeboat_tests::{Fleet, wait_for};

/// Restores `snapshot` onto `agent` at `target`; every file of `names` must hold the
/// source's bytes.
fn restores_whole(
    fleet: &Fleet,
    snapshot: &str,
    agent: &str,
    target: &std::path::Path,
    src: &std::path::Path,
    names: impl Iterator<Item = String>,
) {
    let (ok, job) = fleet.job(&[
        "restore",
        snapshot,
        "--agent",
        agent,
        "--to",
        target.to_str().expect("path"),
    ]);
    assert!(
        ok,
        "snapshot {snapshot} does not restore onto {agent}: {job}\n{}",
        fleet.agent_log(agent)
    );
    for name in names {
        assert_eq!(
            std::fs::read(src.join(&name)).expect("source"),
            std::fs::read(target.join(&name)).expect("restored"),
            "{name}"
        );
    }
}

/// Agent `a` backs up `n` random files `f0..` of `size` bytes (source `data`, seed
/// `seed`); agent `b` runs with the returned root as its restore root. Returns the
/// source, that root and the snapshot's id.
fn backed_up_on_a(
    fleet: &mut Fleet,
    seed: u64,
    n: usize,
    size: usize,
) -> (tempfile::TempDir, tempfile::TempDir, String) {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let mut rng = Rng::new(seed);
    for i in 0..n {
        std::fs::write(src.path().join(format!("f{i}")), rng.bytes(size)).expect("write");
    }
    let (a, b) = (fleet.enroll("a"), fleet.enroll("b"));
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    fleet.run_agent(&b, &[], &[root.path()]);
    let snap = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    (src, root, snap)
}

/// `lifeboat verify --json`, having checked that it found no bad chunk and no snapshot
/// that cannot be restored whole.
fn verify_clean(fleet: &Fleet) -> serde_json::Value {
    let verify = fleet.cli_json(&["verify"]);
    assert_eq!(verify["bad"].as_array().map(Vec::len), Some(0), "{verify}");
    assert_eq!(
        verify["affected_snapshots"].as_array().map(Vec::len),
        Some(0),
        "{verify}"
    );
    verify
}

/// What every backend must do, as the store uses it.
fn conformance(objects: &dyn Objects) {
    let mut rng = Rng::new(17);
    let pack_a = hex::encode(rng.bytes(32));
    let pack_b = hex::encode(rng.bytes(32));
    let snap = hex::encode(rng.bytes(32));
    let body = rng.bytes(3 << 20);

    // Missing objects: NotFound for reads, nothing for deletes.
    assert!(matches!(
        objects.get(&snapshot_key(&snap), ""),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        objects.get_range(&pack_key(&pack_a), "", 8, 100),
        Err(StoreError::NotFound { .. }) | Err(StoreError::Corrupt(_))
    ));
    objects
        .delete(&pack_key(&pack_a), "")
        .expect("deleting a missing object is not an error");

    // put, get, ranges.
    objects
        .put(&snapshot_key(&snap), b"envelope", 0)
        .expect("put");
    assert_eq!(
        objects.get(&snapshot_key(&snap), "").expect("get"),
        b"envelope"
    );
    objects.put(&pack_key(&pack_b), &body, 0).expect("put pack");
    assert_eq!(objects.get(&pack_key(&pack_b), "").expect("get pack"), body);
    for (offset, len) in [
        (0u64, 1u32),
        (8, 4096),
        (1 << 20, 65_536),
        ((3 << 20) - 7, 7),
    ] {
        assert_eq!(
            objects
                .get_range(&pack_key(&pack_b), "", offset, len)
                .expect("range"),
            body[offset as usize..offset as usize + len as usize],
            "range {offset}+{len}"
        );
    }
    // Putting the same content again is harmless (every write is retried).
    objects
        .put(&snapshot_key(&snap), b"envelope", 0)
        .expect("put again");

    // A sealed file from staging becomes the object; the staged file is gone.
    std::fs::create_dir_all(objects.seal_dir()).expect("seal dir");
    let sealed = objects.seal_dir().join("sealed.pack");
    std::fs::write(&sealed, &body[..1 << 20]).expect("stage");
    objects
        .store_sealed(&pack_key(&pack_a), &sealed, 0)
        .expect("store sealed");
    assert!(
        !sealed.exists() || objects.is_local(),
        "staged copy left behind"
    );
    assert_eq!(
        objects.get(&pack_key(&pack_a), "").expect("get sealed"),
        &body[..1 << 20]
    );

    // Listings name every object under a prefix, sorted, with its size.
    let packs = objects.list("packs/").expect("list packs");
    let mut expect = vec![
        (pack_key(&pack_a), 1u64 << 20),
        (pack_key(&pack_b), 3 << 20),
    ];
    expect.sort();
    assert_eq!(
        packs
            .iter()
            .map(|o| (o.key.clone(), o.size))
            .collect::<Vec<_>>(),
        expect
    );
    assert!(
        packs
            .iter()
            .all(|o| pack_name_of(&o.key).is_some_and(|n| n == pack_a || n == pack_b))
    );
    let snaps = objects.list("snapshots/").expect("list snapshots");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snapshot_id_of(&snaps[0].key), Some(snap.as_str()));

    // Deletes are durable and listed as gone.
    objects.delete(&pack_key(&pack_b), "").expect("delete");
    assert!(matches!(
        objects.get(&pack_key(&pack_b), ""),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(objects.list("packs/").expect("list").len(), 1);
    assert!(!objects.describe().contains(lifeboat_tests::s3::SECRET_KEY));
}

#[test]
fn the_local_directory_backend_conforms() {
    let dir = tempfile::tempdir().expect("dir");
    let objects = LocalDir::open(dir.path()).expect("open");
    conformance(&objects);
}

#[test]
fn the_s3_backend_conforms_against_seaweedfs() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let staging = tempfile::tempdir().expect("staging");
    let objects = s3.objects("conformance", staging.path());
    assert!(!objects.is_local());
    conformance(objects.as_ref());
    // Another prefix in the same bucket is another store.
    let other = s3.objects("elsewhere", staging.path());
    assert!(other.list("packs/").expect("list").is_empty());
}

/// Scrub reads a bucket's packs back: one flipped byte in one pack is one bad chunk,
/// named with the snapshot it affects, and the next backup of the source heals it.
#[test]
fn scrub_finds_a_flipped_byte_in_an_s3_pack_and_a_backup_heals_it() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let mut fleet = Fleet::start_on_s3(&s3, "scrub", &[]);
    let staging = tempfile::tempdir().expect("staging");
    let bucket = s3.objects("scrub", staging.path());
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let mut rng = Rng::new(5);
    for i in 0..5 {
        std::fs::write(src.path().join(format!("f{i}")), rng.bytes(200_000)).expect("write");
    }
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[root.path()]);
    let snap = fleet.backup("a", "data");
    let id = snap["id"].as_str().expect("id").to_string();
    let clean = fleet.cli_json(&["verify"]);
    assert_eq!(clean["bad"].as_array().map(Vec::len), Some(0), "{clean}");

    // Flip one byte inside the first chunk of the largest file's pack, in the bucket.
    let index = fleet.chunk_index();
    let (_, pack, offset, _) = index
        .iter()
        .max_by_key(|(_, _, _, len)| *len)
        .expect("a chunk")
        .clone();
    let key = pack_key(&pack);
    let mut bytes = bucket.get(&key, "").expect("pack");
    bytes[offset as usize + 20] ^= 0x01;
    bucket.put(&key, &bytes, 0).expect("tampered");

    let out = fleet.cli(&["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify: {}", String::from_utf8_lossy(&out.stderr)));
    assert_ne!(out.status.code(), Some(0), "a bad chunk fails verify");
    assert_eq!(
        report["bad"].as_array().map(Vec::len),
        Some(1),
        "exactly the flipped chunk: {report}"
    );
    assert!(
        report["affected_snapshots"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["id"] == id.as_str())),
        "{report}"
    );

    // The source still has the data: the next backup stores the chunk again.
    fleet.backup("a", "data");
    let healed = fleet.cli_json(&["verify"]);
    assert_eq!(healed["bad"].as_array().map(Vec::len), Some(0), "{healed}");
    let target = root.path().join("back");
    restores_whole(
        &fleet,
        &id,
        "a",
        &target,
        src.path(),
        (0..5).map(|i| format!("f{i}")),
    );
}

/// The object store killed in the middle of a backup, then of a restore, and started
/// again: the backup retries through the outage and completes, or fails saying what
/// happened; no listed snapshot leans on a chunk the bucket does not hold, and every one
/// restores; the restore retries or fails, and leaves no wrong byte at a final path.
#[test]
fn the_s3_server_killed_mid_backup_and_mid_restore_leaves_no_short_snapshot_nor_wrong_byte() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    let mut fleet = Fleet::start_on_s3(&s3, "outage", &[]);
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let mut rng = Rng::new(9);
    // Several packs' worth, so seals (uploads) happen while the server is down.
    for i in 0..12 {
        std::fs::write(src.path().join(format!("f{i:02}")), rng.bytes(8 << 20)).expect("write");
    }
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[root.path()]);
    let job_id = fleet.start_job(&["backup", "a"]);
    // Kill the server once the first pack is in the catalog (a seal is under way).
    wait_for("a first pack to be stored", Duration::from_secs(60), || {
        (!fleet.chunk_index().is_empty()).then_some(())
    });
    s3.kill();
    std::thread::sleep(Duration::from_millis(1500));
    s3.restart();
    let done = wait_for("the backup to end", Duration::from_secs(120), || {
        let j = fleet.job_info(&job_id);
        matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
    });
    // The outage was met: a request to the bucket was retried, or the backup failed.
    let log = fleet.controller_log();
    eprintln!(
        "backup {}; {} retried requests",
        done["state"],
        log.matches("retrying").count()
    );
    assert!(
        log.contains("retrying") || done["state"] == "failed",
        "the server was killed after the backup's uploads: the test proved nothing"
    );
    if done["state"] == "failed" {
        let err = done["error"].as_str().unwrap_or_default();
        assert!(
            err.contains("object store") || err.contains("store does not have"),
            "a failed backup says the store was the trouble: {done}"
        );
        // The next run, with the store back, completes.
        fleet.backup("a", "data");
    }
    let snaps = fleet.cli_json(&["snapshots"]);
    let snaps = snaps.as_array().expect("snapshots");
    assert!(!snaps.is_empty());
    verify_clean(&fleet);
    for s in snaps {
        let id = s["id"].as_str().expect("id");
        let target = root.path().join(&id[..12]);
        restores_whole(
            &fleet,
            id,
            "a",
            &target,
            src.path(),
            (0..12).map(|i| format!("f{i:02}")),
        );
    }

    // Killed mid-restore (the agent reads the bucket itself): the restore retries through
    // the outage or fails; either way no file at its final path holds a wrong byte.
    let id = snaps[0]["id"].as_str().expect("id");
    let target = root.path().join("during-outage");
    let out = fleet.cli(&[
        "restore",
        id,
        "--agent",
        "a",
        "--to",
        target.to_str().expect("path"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job");
    let job_id = job["id"].as_str().expect("id").to_string();
    wait_for(
        "the restore to read its first bytes",
        Duration::from_secs(60),
        || {
            let j = fleet.job_info(&job_id);
            (j["state"] != "queued").then_some(())
        },
    );
    s3.kill();
    std::thread::sleep(Duration::from_millis(1500));
    s3.restart();
    let done = wait_for("the restore to end", Duration::from_secs(180), || {
        let j = fleet.job_info(&job_id);
        matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
    });
    let mut whole = 0;
    for i in 0..12 {
        let name = format!("f{i:02}");
        if let Ok(restored) = std::fs::read(target.join(&name)) {
            assert_eq!(
                std::fs::read(src.path().join(&name)).expect("src"),
                restored,
                "{name} is at its final path with wrong bytes"
            );
            whole += 1;
        }
    }
    eprintln!(
        "restore during the outage: {}, {whole} of 12 files whole",
        done["state"]
    );
    if done["state"] == "succeeded" {
        assert_eq!(whole, 12, "{done}");
    }
}

/// With the store in a bucket, a restore reads the data from the bucket itself: the
/// controller grants and paces, and sends only the tree; restoring the same snapshot again
/// costs the controller no request to the bucket.
#[test]
fn restores_from_s3_read_the_bucket_not_the_controller() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let mut fleet = Fleet::start_on_s3(&s3, "direct", &[]);
    let (src, root, snap) = backed_up_on_a(&mut fleet, 23, 8, 3 << 20);
    let total = 8 * (3 << 20) as u64;
    restores_whole(
        &fleet,
        &snap,
        "b",
        &root.path().join("onto-b"),
        src.path(),
        (0..8).map(|i| format!("f{i}")),
    );
    let metrics = lifeboat_tests::metrics(&fleet);
    let counter = |name: &str| lifeboat_tests::counter(&metrics, name);
    let (direct, sent) = (
        counter("lifeboat_restore_bytes_direct_total"),
        counter("lifeboat_restore_bytes_sent_total"),
    );
    assert!(
        direct >= total,
        "{direct} bytes granted straight from the store, of {total}"
    );
    assert!(
        sent < 1 << 20,
        "the controller sent {sent} bytes (only the tree should go through it)"
    );
    assert_eq!(counter("lifeboat_store_encrypted"), 1);
    assert_eq!(counter("lifeboat_store_local"), 0);
    // The controller read the envelope (to verify it) and the tree (to grant its chunks)
    // once: a second restore of the same snapshot, as a recovery plan's run after its
    // planning, or a drill and then the real thing, sends the store no request for them.
    let gets = |metrics: &str| {
        lifeboat_tests::counter(metrics, "lifeboat_store_requests_total{op=\"get\"}")
    };
    let first = gets(&metrics);
    assert!(
        first >= 2,
        "{first} GETs: the envelope and the tree were read"
    );
    restores_whole(
        &fleet,
        &snap,
        "b",
        &root.path().join("again"),
        src.path(),
        (0..8).map(|i| format!("f{i}")),
    );
    assert_eq!(
        gets(&lifeboat_tests::metrics(&fleet)),
        first,
        "GETs the controller sent for the second restore of one snapshot"
    );
}

/// What a restore job's grant yields to an agent that reads the store itself: URLs of
/// whole packs, but keys for exactly its snapshot's chunks. A chunk of another snapshot in
/// the same pack stays sealed; a chunk outside the grant is refused and audited; the URLs
/// expire; a revoked agent gets no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_grant_opens_only_its_own_snapshot_and_expires() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let (mut fleet, src, secret_id, s2) = tokio::task::block_in_place(|| {
        let mut fleet = Fleet::start_on_s3(&s3, "grant", &["--store-url-ttl", "3s"]);
        let src = tempfile::tempdir().expect("src");
        let mut rng = Rng::new(41);
        for name in ["f1", "f2", "secret"] {
            std::fs::write(src.path().join(name), rng.bytes(120_000)).expect("write");
        }
        let a = fleet.enroll("a");
        fleet.run_agent(&a, &[("data", src.path())], &[]);
        fleet.backup("a", "data");
        // The secret leaves the source; the next snapshot shares the first one's pack for
        // f1 and f2, where the secret's chunk still sits.
        let key = lifeboat_core::ChunkKey::from_slice(
            &std::fs::read(fleet.path("ctl/chunk.key")).expect("chunk key"),
        )
        .expect("key");
        let secret_id = key.id_of(&std::fs::read(src.path().join("secret")).expect("secret"));
        std::fs::remove_file(src.path().join("secret")).expect("rm");
        std::fs::write(src.path().join("g"), rng.bytes(90_000)).expect("write");
        let s2 = fleet.backup("a", "data")["id"]
            .as_str()
            .expect("id")
            .to_string();
        fleet.enroll("thief");
        (fleet, src, secret_id, s2)
    });
    let key = lifeboat_core::ChunkKey::from_slice(
        &std::fs::read(fleet.path("ctl/chunk.key")).expect("chunk key"),
    )
    .expect("key");
    let granted: Vec<lifeboat_core::ChunkId> = ["f1", "f2", "g"]
        .iter()
        .map(|f| key.id_of(&std::fs::read(src.path().join(f)).expect("file")))
        .collect();
    let root = tempfile::tempdir().expect("root");
    let mut raw = lifeboat_tests::RawJob::restore(&fleet, "thief", &s2, root.path()).await;
    let located = raw
        .api
        .locate_chunks(lifeboat_proto::pb::GetChunksRequest {
            job_id: raw.job_id.clone(),
            ids: granted.iter().map(|i| i.as_bytes().to_vec()).collect(),
        })
        .await
        .expect("locate the job's own chunks")
        .into_inner();
    assert_eq!(located.chunks.len(), 3);
    // The secret's chunk is outside the grant: refused.
    let refused = raw
        .api
        .locate_chunks(lifeboat_proto::pb::GetChunksRequest {
            job_id: raw.job_id.clone(),
            ids: vec![secret_id.as_bytes().to_vec()],
        })
        .await
        .expect_err("a chunk of another snapshot");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // f1's pack holds the secret too: the URL reads all of it, no key opens the secret.
    let f1 = &located.chunks[0];
    let url = located.urls[f1.url as usize].clone();
    let (status, pack) = http_get(&url);
    assert_eq!(status, 200, "the URL reads the pack");
    let index = tokio::task::block_in_place(|| fleet.chunk_index());
    let (_, secret_pack, offset, length) = index
        .iter()
        .find(|(id, ..)| *id == secret_id.to_string())
        .expect("the secret's chunk is still stored")
        .clone();
    assert!(url.contains(&secret_pack), "the secret shares f1's pack");
    let frame = &pack[offset as usize..(offset + length) as usize];
    for c in &located.chunks {
        let k = lifeboat_core::seal::BlobKey::from_slice(&c.key).expect("a chunk key");
        assert!(
            k.open_frame(&secret_id, frame).is_err(),
            "a granted key opened the secret"
        );
    }
    let own = lifeboat_core::seal::BlobKey::from_slice(&f1.key)
        .expect("key")
        .open_frame(
            &granted[0],
            &pack[f1.offset as usize..(f1.offset + u64::from(f1.length)) as usize],
        );
    assert!(own.is_ok(), "the job's own chunk opens: {own:?}");

    // The URLs expire.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let (status, _) = http_get(&url);
    assert_eq!(status, 403, "an expired URL still reads the pack");

    // A revoked agent gets no new URLs.
    tokio::task::block_in_place(|| {
        let out = fleet.cli(&["agents", "revoke", "thief"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let after = raw
        .api
        .locate_chunks(lifeboat_proto::pb::GetChunksRequest {
            job_id: raw.job_id.clone(),
            ids: vec![granted[0].as_bytes().to_vec()],
        })
        .await;
    assert!(
        after.is_err(),
        "a revoked agent was granted URLs: {after:?}"
    );
    let audit = tokio::task::block_in_place(|| fleet.cli(&["audit", "--json"]));
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains("LocateChunks"),
        "the refused read is audited"
    );
    tokio::task::block_in_place(|| fleet.stop_controller());
}

/// A plain GET of `url`: its status and body.
fn http_get(url: &str) -> (u16, Vec<u8>) {
    let http = lifeboat_proto::http::client(None).expect("client");
    let resp = http.get(url).call().expect("GET");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .expect("body");
    (status, body)
}

/// The way to the object store misbehaves: throttling (503 SlowDown), server errors,
/// slow answers and connections cut mid-transfer. Backups and restores retry through
/// them; while the store is unreachable, a backup fails saying so and lists nothing, the
/// controller's memory stays bounded (uploads are pushed back and staged packs dropped,
/// not buffered), and the next backup after the store is back completes.
#[test]
fn a_flaky_way_to_the_store_is_retried_and_an_unreachable_one_fails_cleanly() {
    use lifeboat_tests::s3::{Faults, FaultyProxy};
    let Some(s3) = S3Server::start() else {
        return;
    };
    let flaky = Faults {
        slow_down_every: 3,
        error_every: 5,
        delay_every: 4,
        delay: Duration::from_millis(1500),
        cut_every: 7,
        cut_after: 6 << 20,
        lose_answer_every: 0,
        lose_answer_to: "",
        down: false,
    };
    let proxy = FaultyProxy::start(&s3.endpoint, flaky.clone());
    let args = proxy.serve_args("flaky");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Short pauses between retries: the dead-store half waits out every one of them.
    let mut env = s3.env();
    env.push(("LIFEBOAT_S3_BACKOFF_MS".into(), "10".into()));
    let mut fleet = Fleet::start_with_env(&args, env);
    let (src, root, snap) = backed_up_on_a(&mut fleet, 77, 6, 7 << 20);
    restores_whole(
        &fleet,
        &snap,
        "b",
        &root.path().join("through-faults"),
        src.path(),
        (0..6).map(|i| format!("f{i}")),
    );
    let mut rng = Rng::new(78);
    let injected = proxy.injected.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{injected} faults injected over {} forwarded connections",
        proxy.forwarded.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(injected >= 3, "the proxy injected only {injected} faults");
    let logs = fleet.controller_log() + &fleet.agent_log("b");
    assert!(
        logs.contains("503") || logs.contains("SlowDown"),
        "a throttled request was retried (the controller's or the restoring agent's)"
    );

    // Unreachable: every request throttled, for good.
    proxy.set(Faults {
        down: true,
        ..Faults::default()
    });
    for i in 0..24 {
        std::fs::write(src.path().join(format!("g{i:02}")), rng.bytes(8 << 20)).expect("write");
    }
    let before = fleet
        .cli_json(&["snapshots"])
        .as_array()
        .map_or(0, Vec::len);
    let rss_before = fleet.controller_rss();
    let id = fleet.start_job(&["backup", "a"]);
    let mut rss_peak = rss_before;
    let done = wait_for("the backup to fail", Duration::from_secs(300), || {
        rss_peak = rss_peak.max(fleet.controller_rss());
        let j = fleet.job_info(&id);
        matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
    });
    assert_eq!(done["state"], "failed", "{done}");
    let err = done["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("object store") && err.contains("check that the object store is up"),
        "the failure says the store is unreachable and what to do: {err}"
    );
    let after = fleet
        .cli_json(&["snapshots"])
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(after, before, "no snapshot listed while the store was down");
    let grew = rss_peak.saturating_sub(rss_before);
    eprintln!("controller RSS {rss_before} -> peak {rss_peak} while 192 MiB met a dead store");
    assert!(
        grew < 128 << 20,
        "the controller grew {grew} bytes while the store was down: uploads are buffered"
    );
    // Packs still in their retries when the job failed give up too; none stays staged.
    let staged = || -> u64 {
        let mut bytes = 0;
        let mut dirs = vec![fleet.path("ctl/staging/sealed")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => dirs.push(e.path()),
                    Ok(m) => bytes += m.len(),
                    Err(_) => {}
                }
            }
        }
        bytes
    };
    wait_for(
        "packs that could not be stored to leave staging",
        Duration::from_secs(120),
        || (staged() == 0).then_some(()),
    );

    // Back up again once the store answers: everything is there and verifies.
    proxy.set(flaky);
    fleet.backup("a", "data");
    verify_clean(&fleet);
}

/// A14, a write that succeeded but whose answer never came: a proxy carries every second
/// PUT to the server whole and drops the answer (closing the connection), on a bucket
/// with Object Lock (versioned, so each retried PUT leaves a version of its own). The
/// controller starts, backs up (until a snapshot envelope's answer, besides packs', was
/// lost) and collects garbage through it; each write it retried is taken once: the first
/// and the last snapshot restore identical onto another agent (the first while every
/// third answer to the agent's own reads is lost), and `lifeboat verify` (every chunk
/// read back, every pack's trailer) is clean.
#[test]
fn a14_a_write_that_succeeded_unheard_is_retried_and_the_store_stays_whole() {
    use lifeboat_tests::s3::{Faults, FaultyProxy};
    let Some(s3) = S3Server::start() else {
        return;
    };
    s3.create_locked_bucket("unheard");
    let proxy = FaultyProxy::start(
        &s3.endpoint,
        Faults {
            lose_answer_every: 2,
            lose_answer_to: "PUT",
            ..Faults::default()
        },
    );
    let args = proxy.serve_args_in("unheard", "fleet");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = s3.env();
    env.push(("LIFEBOAT_S3_BACKOFF_MS".into(), "10".into()));
    let mut fleet = Fleet::start_with_env(&args, env);
    let (src, root, first) = backed_up_on_a(&mut fleet, 91, 8, 3 << 20);
    let names = || (0..8).map(|i| format!("f{i}"));
    let mut rng = Rng::new(92);
    let before: Vec<Vec<u8>> = names()
        .map(|n| std::fs::read(src.path().join(n)).expect("read"))
        .collect();
    for i in [1, 5] {
        std::fs::write(src.path().join(format!("f{i}")), rng.bytes(3 << 20)).expect("write");
    }
    let unheard = || {
        proxy
            .unheard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    };
    let mut last = String::new();
    let mut backups = 1;
    for round in 0..12 {
        if round > 0 {
            if unheard().iter().any(|l| l.contains("/snapshots/")) {
                break;
            }
            std::fs::write(src.path().join("f2"), rng.bytes(1 << 20)).expect("write");
        }
        last = fleet.backup("a", "data")["id"]
            .as_str()
            .expect("id")
            .to_string();
        backups += 1;
    }
    assert_eq!(
        fleet.cli_json(&["snapshots"]).as_array().map(Vec::len),
        Some(backups),
        "one snapshot per backup, whatever was retried"
    );
    restores_whole(
        &fleet,
        &last,
        "b",
        &root.path().join("last"),
        src.path(),
        names(),
    );
    // The restoring agent's own reads (presigned range GETs) lose every third answer.
    proxy.set(Faults {
        lose_answer_every: 3,
        lose_answer_to: "GET",
        ..Faults::default()
    });
    let (ok, job) = fleet.job(&[
        "restore",
        &first,
        "--agent",
        "b",
        "--to",
        root.path().join("first").to_str().expect("path"),
    ]);
    assert!(ok, "{job}");
    for (name, bytes) in names().zip(&before) {
        assert_eq!(
            &std::fs::read(root.path().join("first").join(&name)).expect("restored"),
            bytes,
            "{name} of the first snapshot"
        );
    }
    let gc = fleet.cli(&["gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let unheard = unheard();
    for kind in ["/packs/", "/snapshots/"] {
        assert!(
            unheard
                .iter()
                .any(|l| l.starts_with("PUT ") && l.contains(kind)),
            "no answer to a PUT of {kind} was lost: {unheard:?}"
        );
    }
    assert!(
        unheard
            .iter()
            .any(|l| l.starts_with("GET ") && l.contains("/packs/")),
        "no answer to the restore's reads was lost: {unheard:?}"
    );
    let verify = verify_clean(&fleet);
    assert_eq!(
        verify["damaged_packs"].as_array().map(Vec::len),
        Some(0),
        "{verify}"
    );
    eprintln!(
        "A14: the answers to {unheard:?} lost over {} connections; the first and last snapshots restore identical, verify clean",
        proxy.forwarded.load(std::sync::atomic::Ordering::Relaxed)
    );
}
