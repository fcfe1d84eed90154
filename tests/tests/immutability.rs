//! Immutability (issue 18): on an S3 bucket created with Object Lock, a locked snapshot's
//! packs and envelope are retained in COMPLIANCE mode at least until its lock ends, and
//! whoever holds the controller's own S3 credentials (a stolen controller, an insider)
//! can neither delete, overwrite nor shorten the retention of any of them; the snapshot
//! restores byte-identical after every attempt. Runs against SeaweedFS, which enforces
//! Object Lock at its S3 API.

use std::fs;

use lifeboat_tests::Fleet;
use lifeboat_tests::s3::S3Server;
use lifeboat_tests::tree::Rng;

const VAULT: &str = "vault";
const DAY: i64 = 86_400_000;
/// Keeps one snapshot, each locked 30 days.
const VAULTED: &str = "[[policy]]\nname = \"vaulted\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\nkeep = { last = 1 }\nlock = \"30d\"\n";

/// The packs, envelopes and wrapped data key of the store under `fleet/` (`(key,
/// version)`), every version.
fn store_objects(s3: &S3Server) -> Vec<(String, String)> {
    s3.versions(VAULT, "fleet/")
        .into_iter()
        .filter(|(k, _)| {
            ["fleet/packs/", "fleet/snapshots/", "fleet/keys/"]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect()
}

#[test]
fn object_lock_keeps_locked_snapshots_from_the_controllers_own_credentials() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    s3.create_locked_bucket(VAULT);
    let args = s3.serve_args_in(VAULT, "fleet");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut fleet = Fleet::start_with_env(&args, s3.env());
    let status = fleet.cli_json(&["status"]);
    assert_eq!(status["store_object_lock"], true, "{status}");
    let text = String::from_utf8_lossy(&fleet.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("immutability: Object Lock (COMPLIANCE)"),
        "{text}"
    );

    fleet.apply_policy(VAULTED);
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let mut rng = Rng::new(18);
    for i in 0..12 {
        fs::write(src.path().join(format!("f{i}")), rng.bytes(700_000)).expect("write");
    }
    let (a, b) = (fleet.enroll("a"), fleet.enroll("b"));
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    fleet.run_agent(&b, &[], &[root.path()]);
    let s1 = fleet.backup("a", "data");
    let id1 = s1["id"].as_str().expect("id").to_string();
    let lock1 = s1["locked_until_unix_ms"].as_i64().expect("lock");
    assert!(lock1 > s1["received_unix_ms"].as_i64().expect("received") + 29 * DAY);

    // Every pack and envelope is retained at least as long as the snapshot's lock, as the
    // server reports it.
    let objects = store_objects(&s3);
    assert!(
        objects.iter().any(|(k, _)| k.contains("/packs/")),
        "{objects:?}"
    );
    assert!(
        objects.iter().any(|(k, _)| k.contains("/snapshots/")),
        "{objects:?}"
    );
    // The wrapped data key, all the recovery key needs to open the store, for a year.
    let key = objects
        .iter()
        .find(|(k, _)| k.starts_with("fleet/keys/"))
        .expect("the wrapped data key is in the store");
    assert!(s3.retained_until(VAULT, &key.0, &key.1) > lock1 + 300 * DAY);
    for (key, version) in &objects {
        let until = s3.retained_until(VAULT, key, version);
        assert!(
            until >= lock1,
            "{key} is retained until {until}, the lock ends {lock1}"
        );
    }

    // A later snapshot shares most packs; extending the first's lock extends every pack it
    // needs and its envelope, read back from the server.
    fs::write(src.path().join("f0"), rng.bytes(700_000)).expect("write");
    let s2 = fleet.backup("a", "data");
    let out = fleet.cli(&["snapshots", "lock", &id1, "--until", "90d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extended = fleet.cli_json(&["snapshots"]);
    let lock1 = extended
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == id1.as_str()))
        .and_then(|s| s["locked_until_unix_ms"].as_i64())
        .expect("s1 listed");
    assert!(lock1 > s2["received_unix_ms"].as_i64().expect("received") + 89 * DAY);
    let envelope = format!("fleet/snapshots/{id1}.snap");
    let db = rusqlite::Connection::open(fleet.path("ctl/catalog.db")).expect("catalog");
    let s1_packs: Vec<String> = db
        .prepare("SELECT name FROM packs WHERE created_ms <= ?1")
        .expect("query")
        .query_map([s1["received_unix_ms"].as_i64().expect("received")], |r| {
            r.get(0)
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(!s1_packs.is_empty());
    for (key, version) in store_objects(&s3) {
        let until = s3.retained_until(VAULT, &key, &version);
        let needed_by_s1 = key == envelope
            || s1_packs
                .iter()
                .any(|p| key.ends_with(&format!("/{p}.pack")));
        if needed_by_s1 {
            assert!(
                until >= lock1,
                "{key} is retained until {until}, s1's lock is {lock1}"
            );
        }
    }

    // The attack, with the controller's own credentials, on every version of every pack,
    // envelope and key copy.
    let originals = store_objects(&s3);
    s3.attack(VAULT, &originals);

    // Through Lifeboat: the delete is refused, GC deletes nothing retained, and the
    // snapshot restores byte-identical from the versions it wrote.
    let out = fleet.cli(&["snapshots", "delete", &id1]);
    assert!(!out.status.success(), "a locked snapshot was deleted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked until"));
    let gc = fleet.cli(&["gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let verify = fleet.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "verify after the attack: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let target = root.path().join("restored");
    let (ok, job) = fleet.restore_to(&id1, "b", &target, &[]);
    assert!(ok, "{job}\n{}", fleet.agent_log("b"));
    let mut check = Rng::new(18);
    for i in 0..12 {
        assert_eq!(
            fs::read(target.join(format!("f{i}"))).expect("restored"),
            check.bytes(700_000),
            "f{i}"
        );
    }
    let after = s3.versions(VAULT, "fleet/");
    for original in &originals {
        assert!(after.contains(original), "{original:?} is gone after gc");
    }

    // The catalog lost too: rebuilt from a bucket whose keys now hide behind delete markers
    // and overwrites, it finds the versions Lifeboat wrote, and the snapshot restores
    // byte-identical onto a machine enrolled afresh.
    let out = fleet.lose_catalog_and_rebuild();
    assert!(
        out.status.success(),
        "rebuild-catalog: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.start_controller();
    let listed = fleet.cli_json(&["snapshots"]);
    assert!(
        listed
            .as_array()
            .expect("snapshots")
            .iter()
            .any(|s| s["id"] == id1.as_str()),
        "{listed}"
    );
    assert!(
        fleet.cli(&["verify"]).status.success(),
        "verify after the rebuild"
    );
    let c = fleet.enroll("c");
    fleet.run_agent(&c, &[], &[root.path()]);
    let target = root.path().join("after-rebuild");
    let (ok, job) = fleet.restore_to(&id1, "c", &target, &[]);
    assert!(ok, "{job}\n{}", fleet.agent_log("c"));
    let mut check = Rng::new(18);
    for i in 0..12 {
        assert_eq!(
            fs::read(target.join(format!("f{i}"))).expect("restored"),
            check.bytes(700_000),
            "f{i} after the rebuild"
        );
    }
}

#[test]
fn a_store_without_object_lock_says_so() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let fleet = Fleet::start_on_s3(&s3, "plain", &[]);
    let status = fleet.cli_json(&["status"]);
    assert_eq!(status["store_object_lock"], false, "{status}");
    let text = String::from_utf8_lossy(&fleet.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("immutability: none"), "{text}");
    assert!(
        fleet
            .controller_log()
            .contains("the store has no Object Lock"),
        "the controller warns at start"
    );
}

/// The stolen-controller drill (issue 18, item 5): an attacker holds a copy of the
/// controller's data directory (its catalog, keys and admin identity) and its S3
/// credentials for both stores, and nothing else. With the admin identity, Lifeboat
/// refuses to delete the locked snapshot, and dropping the policy, pruning and GC remove
/// nothing. With the credentials, every version the stolen catalog names, and every
/// version either bucket lists, resists deletion, a governance bypass and a shortened
/// retention, in the primary and in the off-site copy. Afterwards the snapshot verifies
/// and restores byte-identical.
#[test]
fn the_stolen_controller_drill() {
    let Some(primary) = S3Server::start() else {
        return;
    };
    let Some(offsite) = S3Server::start_with_keys("offsite-site", "offsite-secret-9876543210")
    else {
        return;
    };
    primary.create_locked_bucket(VAULT);
    offsite.create_locked_bucket("copies");
    let dir = tempfile::tempdir().expect("dir");
    let (args, env) = primary.with_offsite_copy(VAULT, &offsite, "copies", "fleet", dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut fleet = Fleet::start_with_env(&args, env);
    fleet.apply_policy(&format!("{VAULTED}copy = \"30d\"\n"));
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let mut rng = Rng::new(55);
    for i in 0..8 {
        fs::write(src.path().join(format!("f{i}")), rng.bytes(600_000)).expect("write");
    }
    let (a, b) = (fleet.enroll("a"), fleet.enroll("b"));
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    fleet.run_agent(&b, &[], &[root.path()]);
    let id = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    lifeboat_tests::wait_for(
        "the off-site copy",
        std::time::Duration::from_secs(60),
        || {
            let snaps = fleet.cli_json(&["snapshots"]);
            let s = snaps.as_array()?.iter().find(|s| s["id"] == id.as_str())?;
            (s["copies"][0] == "offsite").then_some(())
        },
    );

    // The theft: a copy of the data directory, as it is now.
    let stolen = tempfile::tempdir().expect("stolen");
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(fleet.path("ctl"))
        .arg(stolen.path())
        .status()
        .expect("cp");
    assert!(status.success());
    let db = rusqlite::Connection::open(stolen.path().join("ctl/catalog.db")).expect("catalog");
    let named = |sql: &str| -> Vec<(String, String)> {
        db.prepare(sql)
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let key = |prefix: &str, (name, version): (String, String), dir: &str, ext: &str| {
        let sub = if dir == "packs" {
            format!("{}/", &name[..2])
        } else {
            String::new()
        };
        (format!("{prefix}/{dir}/{sub}{name}.{ext}"), version)
    };
    let mut primary_targets: Vec<(String, String)> = named("SELECT name, version FROM packs")
        .into_iter()
        .map(|p| key("fleet", p, "packs", "pack"))
        .chain(
            named("SELECT id, envelope_version FROM snapshots")
                .into_iter()
                .map(|s| key("fleet", s, "snapshots", "snap")),
        )
        .collect();
    let mut offsite_targets: Vec<(String, String)> = named("SELECT pack, version FROM copy_packs")
        .into_iter()
        .map(|p| key("fleet", p, "packs", "pack"))
        .chain(
            named("SELECT snapshot, version FROM copies")
                .into_iter()
                .map(|s| key("fleet", s, "snapshots", "snap")),
        )
        .collect();
    assert!(
        primary_targets.iter().all(|(_, v)| !v.is_empty()),
        "{primary_targets:?}"
    );
    assert!(
        offsite_targets.iter().all(|(_, v)| !v.is_empty()),
        "{offsite_targets:?}"
    );
    // And whatever else the buckets list under the stores, state objects included.
    for listed in primary.versions(VAULT, "fleet/") {
        if !primary_targets.contains(&listed) {
            primary_targets.push(listed);
        }
    }
    for listed in offsite.versions("copies", "fleet/") {
        if !offsite_targets.contains(&listed) {
            offsite_targets.push(listed);
        }
    }
    primary.attack(VAULT, &primary_targets);
    offsite.attack("copies", &offsite_targets);

    // Through Lifeboat, with the stolen admin identity.
    let out = fleet.cli(&["snapshots", "delete", &id]);
    assert!(!out.status.success(), "a locked snapshot was deleted");
    assert!(fleet.cli(&["policy", "delete", "vaulted"]).status.success());
    assert!(fleet.cli(&["prune"]).status.success());
    assert!(fleet.cli(&["gc"]).status.success());
    let snaps = fleet.cli_json(&["snapshots"]);
    assert!(
        snaps
            .as_array()
            .expect("snapshots")
            .iter()
            .any(|s| s["id"] == id.as_str() && s["copies"][0] == "offsite"),
        "{snaps}"
    );
    let verify = fleet.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let target = root.path().join("restored");
    let (ok, job) = fleet.restore_to(&id, "b", &target, &[]);
    assert!(ok, "{job}\n{}", fleet.agent_log("b"));
    let mut check = Rng::new(55);
    for i in 0..8 {
        assert_eq!(
            fs::read(target.join(format!("f{i}"))).expect("restored"),
            check.bytes(600_000),
            "f{i}"
        );
    }
}
