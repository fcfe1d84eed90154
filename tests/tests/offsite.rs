//! Off-site copies (issue 18, item 3): a second store on another S3 server, reached with
//! credentials of its own, gets a verified copy of each snapshot a policy wants copied,
//! locked there under its own Object Lock; a copy killed midway is finished by the next run
//! with nothing written twice and nothing listed early; and when the primary bucket is
//! gone, a recovery plan restores the device byte-identical from the copy.

use std::fs;
use std::time::Duration;

use lifeboat_tests::s3::S3Server;
use lifeboat_tests::tree::Rng;
use lifeboat_tests::{Fleet, now_ms, wait_for};
use rusty_s3::Method;
use serde_json::Value;

const VAULT: &str = "vault";

fn copies_of(fleet: &Fleet, id: &str) -> Vec<String> {
    fleet
        .cli_json(&["snapshots"])
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == id).cloned())
        .map(|s: Value| {
            s["copies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn policy(fleet: &Fleet, copy: &str) {
    fleet.apply_policy(&format!(
        "[[policy]]\nname = \"offsite\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\nkeep = {{ last = 10 }}\n{copy}"
    ));
}

#[test]
fn snapshots_are_copied_off_site_verified_and_restore_from_there_when_the_primary_is_gone() {
    let Some(primary) = S3Server::start() else {
        return;
    };
    let Some(offsite) = S3Server::start_with_keys("offsite-site", "offsite-secret-9876543210")
    else {
        return;
    };
    offsite.create_locked_bucket(VAULT);
    let dir = tempfile::tempdir().expect("dir");
    let (args, env) = primary.with_offsite_copy(
        lifeboat_tests::s3::BUCKET,
        &offsite,
        VAULT,
        "fleet",
        dir.path(),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut fleet = Fleet::start_with_env(&args, env);

    let machine = tempfile::tempdir().expect("machine");
    let src = machine.path().join("data");
    fs::create_dir(&src).expect("mkdir");
    let mut rng = Rng::new(33);
    for i in 0..10 {
        fs::write(src.join(format!("f{i}")), rng.bytes(900_000)).expect("write");
    }
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", &src)], &[machine.path()]);
    // Backed up while no policy wants copies: nothing is copied.
    policy(&fleet, "");
    let first = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    std::thread::sleep(Duration::from_secs(2));
    assert!(copies_of(&fleet, &first).is_empty());
    assert!(offsite.versions(VAULT, "fleet/").is_empty());

    // The copy is killed after its first pack is stored off-site, before it is recorded.
    fleet.stop_controller();
    fleet
        .controller_env
        .push(("LIFEBOAT_CRASH_AT".into(), "copy-after-pack".into()));
    fleet.start_controller();
    policy(&fleet, "copy = \"30d\"\n");
    let status = fleet.wait_controller_exit();
    assert!(!status.success(), "the crash point was not reached");
    let half = offsite.versions(VAULT, "fleet/");
    assert!(
        half.iter().any(|(k, _)| k.starts_with("fleet/packs/")),
        "a pack went off-site before the crash: {half:?}"
    );
    assert!(
        !half.iter().any(|(k, _)| k.starts_with("fleet/snapshots/")),
        "the envelope went before every pack: {half:?}"
    );
    fleet
        .controller_env
        .retain(|(k, _)| k != "LIFEBOAT_CRASH_AT");
    fleet.start_controller();
    fleet.wait_connected(1);
    wait_for("the copy to finish", Duration::from_secs(60), || {
        (copies_of(&fleet, &first) == ["offsite"]).then_some(())
    });
    // Nothing written twice: one version per key off-site.
    let copied = offsite.versions(VAULT, "fleet/");
    let mut keys: Vec<&String> = copied.iter().map(|(k, _)| k).collect();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "an object was written twice: {copied:?}");
    // Locked there under the policy's copy lock, as the off-site server reports it.
    let want = fleet
        .cli_json(&["snapshots"])
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == first.as_str()).cloned())
        .and_then(|s| s["received_unix_ms"].as_i64())
        .expect("received")
        + 29 * 86_400_000;
    for (key, version) in &copied {
        if key.starts_with("fleet/controller/") {
            continue;
        }
        let (status, body) = offsite.raw(
            Method::Get,
            VAULT,
            key,
            &[("retention", ""), ("versionId", version.as_str())],
            &[],
            b"",
        );
        assert_eq!(status, 200, "{key}: {body}");
        let until = body
            .split("<RetainUntilDate>")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|d| d.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .unwrap_or(0);
        assert!(
            until >= want,
            "{key} is retained off-site until {until} < {want}"
        );
    }
    let table = String::from_utf8_lossy(&fleet.cli(&["snapshots"]).stdout).into_owned();
    assert!(
        table.contains("COPIES") && table.contains("offsite"),
        "{table}"
    );

    // A second snapshot shares most chunks: only what is new goes off-site.
    fs::write(src.join("f0"), rng.bytes(900_000)).expect("write");
    let second = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_for("the second copy", Duration::from_secs(60), || {
        (copies_of(&fleet, &second) == ["offsite"]).then_some(())
    });

    // Verify reads the copies back too; GC keeps what the copy lock keeps.
    let out = fleet.cli(&["verify"]);
    assert!(
        out.status.success(),
        "verify with copies: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fleet.cli(&["gc"]).status.success());
    assert_eq!(copies_of(&fleet, &first), ["offsite"]);
    assert_eq!(copies_of(&fleet, &second), ["offsite"]);

    // Retention in the primary shorter than the copy lock: the first snapshot goes from the
    // primary while its copy stays locked off-site. GC keeps everything that copy holds
    // (reading what it needs from the copy itself) and does not take the copy's answers for
    // a failing primary: a restore afterwards still reads the primary directly. (It did
    // not: each GC read the deleted snapshot through the primary, fell back to the copy,
    // and turned direct reads off for ten minutes.)
    let out = fleet.cli(&["snapshots", "delete", &first]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let off_site = offsite.versions(VAULT, "fleet/");
    assert!(fleet.cli(&["gc"]).status.success());
    assert_eq!(
        offsite.versions(VAULT, "fleet/"),
        off_site,
        "GC changed the off-site copy of a snapshot deleted from the primary"
    );
    let direct = |fleet: &Fleet| {
        lifeboat_tests::counter(
            &lifeboat_tests::metrics(fleet),
            "lifeboat_restore_bytes_direct_total",
        )
    };
    let before = direct(&fleet);
    let (ok, job) = fleet.restore_to(&second, "a", &machine.path().join("after-gc"), &[]);
    assert!(ok, "{job}");
    assert!(
        direct(&fleet) > before,
        "after GC the restore did not read the primary directly: GC took the copy's answers \
         for a failing primary"
    );

    // The primary bucket is emptied (every object deleted, as a ransomware run with the
    // controller's credentials would on a bucket without Object Lock).
    for (key, _) in primary.versions(lifeboat_tests::s3::BUCKET, "fleet/") {
        let (status, body) = primary.raw(
            Method::Delete,
            lifeboat_tests::s3::BUCKET,
            &key,
            &[],
            &[],
            b"",
        );
        assert!((200..300).contains(&status), "{key}: {status} {body}");
    }
    assert!(
        primary
            .versions(lifeboat_tests::s3::BUCKET, "fleet/")
            .is_empty()
    );

    let cutoff = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(now_ms() as u64),
    )
    .to_string();
    let out = fleet.cli(&[
        "recover",
        "plan",
        "--agent",
        "a",
        "--before",
        &cutoff,
        "--from",
        "elsewhere",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("offsite"));
    let plan = fleet.cli_json(&[
        "recover", "plan", "--agent", "a", "--before", &cutoff, "--from", "offsite",
    ]);
    assert_eq!(
        plan["devices"][0]["sources"][0]["snapshot"],
        second.as_str(),
        "{plan}"
    );
    fs::remove_dir_all(&src).expect("the device is lost");
    let id = plan["id"].as_str().expect("plan id").to_string();
    let out = fleet.cli(&["recover", "run", &id, "--wait", "--json"]);
    let done: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("recover run: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success() && done["state"] == "finished",
        "the plan from the copy failed: {done}\n{}",
        fleet.agent_log("a")
    );
    let mut check = Rng::new(33);
    let mut expected: Vec<Vec<u8>> = (0..10).map(|_| check.bytes(900_000)).collect();
    expected[0] = check.bytes(900_000);
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(
            &fs::read(src.join(format!("f{i}"))).expect("restored"),
            want,
            "f{i}"
        );
    }
}

/// Scrub covers the copy store: a flipped byte in a copied pack (a copy store on a plain
/// directory, say a NAS) fails `lifeboat verify`, naming the copy and the pack, and the
/// next copy run sends the pack again, after which verify passes.
#[test]
fn verify_reads_the_copies_back_and_a_damaged_copy_is_sent_again() {
    let copy_dir = tempfile::tempdir().expect("copy dir");
    let copy_store = copy_dir.path().join("offsite");
    let mut fleet = Fleet::start_with(&[
        "--copy-store",
        copy_store.to_str().expect("utf8"),
        "--copy-every",
        "1s",
    ]);
    policy(&fleet, "copy = \"1d\"\n");
    let machine = tempfile::tempdir().expect("machine");
    let src = machine.path().join("data");
    fs::create_dir(&src).expect("mkdir");
    let mut rng = Rng::new(34);
    for i in 0..6 {
        fs::write(src.join(format!("f{i}")), rng.bytes(400_000)).expect("write");
    }
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", &src)], &[machine.path()]);
    let id = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_for("the copy", Duration::from_secs(60), || {
        (copies_of(&fleet, &id) == ["offsite"]).then_some(())
    });
    assert!(fleet.cli(&["verify"]).status.success());

    // Rot in the copy store.
    let pack = walk(&copy_store.join("packs"))
        .into_iter()
        .next()
        .expect("a copied pack");
    let mut bytes = fs::read(&pack).expect("read");
    bytes[100] ^= 0x40;
    fs::write(&pack, &bytes).expect("write");
    let out = fleet.cli(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(2), "a damaged copy passed verify");
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let name = pack
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("name")
        .to_string();
    assert!(
        report["damaged_packs"]
            .as_array()
            .expect("damaged")
            .iter()
            .any(|d| d["pack"] == format!("offsite:{name}")),
        "{report}"
    );
    // Sent again by the next copy run.
    wait_for("the copy again", Duration::from_secs(60), || {
        (copies_of(&fleet, &id) == ["offsite"]).then_some(())
    });
    let out = fleet.cli(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(
        fs::read(&pack).expect("read"),
        bytes,
        "the pack was not sent again"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
