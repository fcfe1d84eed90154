//! Immutability (issue 18): on an S3 bucket created with Object Lock, a locked snapshot's
//! packs and envelope are retained in COMPLIANCE mode at least until its lock ends, and
//! whoever holds the controller's own S3 credentials (a stolen controller, an insider)
//! can neither delete, overwrite nor shorten the retention of any of them; the snapshot
//! restores byte-identical after every attempt. Runs against SeaweedFS, which enforces
//! Object Lock at its S3 API.

use std::fs;

use base64::Engine as _;
use lifeboat_tests::Fleet;
use lifeboat_tests::s3::S3Server;
use lifeboat_tests::tree::Rng;
use md5::Digest as _;
use rusty_s3::Method;

const VAULT: &str = "vault";
const DAY: i64 = 86_400_000;

/// The retention the server holds for one object version (0: none).
fn retained_until(s3: &S3Server, key: &str, version: &str) -> i64 {
    let (status, body) = s3.raw(
        Method::Get,
        VAULT,
        key,
        &[("retention", ""), ("versionId", version)],
        &[],
        b"",
    );
    if status == 404 {
        return 0;
    }
    assert_eq!(status, 200, "retention of {key}: {body}");
    let date = body
        .split("<RetainUntilDate>")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_default();
    assert!(body.contains("<Mode>COMPLIANCE</Mode>"), "{key}: {body}");
    date.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .unwrap_or_else(|e| panic!("{key}: retention date {date:?}: {e}"))
}

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

    let policy = fleet.path("lock.toml");
    fs::write(
        &policy,
        "[[policy]]\nname = \"vaulted\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\nkeep = { last = 1 }\nlock = \"30d\"\n",
    )
    .expect("write");
    assert!(
        fleet
            .cli(&["policy", "apply", "-f", policy.to_str().expect("path")])
            .status
            .success()
    );
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
    assert!(retained_until(&s3, &key.0, &key.1) > lock1 + 300 * DAY);
    for (key, version) in &objects {
        let until = retained_until(&s3, key, version);
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
        let until = retained_until(&s3, &key, &version);
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

    // The attack, with the controller's own credentials, on every version of every pack
    // and envelope: delete it, delete it claiming a governance bypass, shorten its
    // retention, then overwrite it and hide it behind a delete marker.
    let originals = store_objects(&s3);
    let tomorrow = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(86_400),
    )
    .to_string();
    let shorter = format!(
        "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode><RetainUntilDate>{tomorrow}</RetainUntilDate></Retention>"
    );
    let md5 =
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(shorter.as_bytes()));
    for (key, version) in &originals {
        let before = retained_until(&s3, key, version);
        let on = [("versionId", version.as_str())];
        let (status, body) = s3.raw(Method::Delete, VAULT, key, &on, &[], b"");
        assert!(
            !(200..300).contains(&status),
            "deleted {key} {version}: {status} {body}"
        );
        let (status, body) = s3.raw(
            Method::Delete,
            VAULT,
            key,
            &on,
            &[("x-amz-bypass-governance-retention", "true")],
            b"",
        );
        assert!(
            !(200..300).contains(&status),
            "deleted {key} with a bypass: {status} {body}"
        );
        let (status, body) = s3.raw(
            Method::Put,
            VAULT,
            key,
            &[("retention", ""), ("versionId", version.as_str())],
            &[("content-md5", md5.as_str())],
            shorter.as_bytes(),
        );
        assert!(
            !(200..300).contains(&status),
            "shortened {key}: {status} {body}"
        );
        assert_eq!(
            retained_until(&s3, key, version),
            before,
            "{key}'s retention moved"
        );
        // What the server allows: a new version on top, and a delete marker on top of that.
        let (status, body) = s3.raw(Method::Put, VAULT, key, &[], &[], b"ransomware was here");
        assert!((200..300).contains(&status), "overwrite: {status} {body}");
        let (status, body) = s3.raw(Method::Delete, VAULT, key, &[], &[], b"");
        assert!(
            (200..300).contains(&status),
            "delete marker: {status} {body}"
        );
    }
    let after = s3.versions(VAULT, "fleet/");
    for original in &originals {
        assert!(after.contains(original), "{original:?} is gone");
    }

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
