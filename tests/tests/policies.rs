//! Policies through the CLI: apply (idempotent, dry run, refusals with line and reason),
//! retention by `lifeboat prune`, pins, locks, and `lifeboat devices`.

use std::fs;

use lifeboat_tests::Fleet;
use serde_json::Value;

const MINIMAL: &str = r#"[[policy]]
name = "web-hourly"
selector = "role=web,site=fra"
sources = ["data", "all-volumes"]
schedule = "0 * * * *"
timezone = "Europe/Berlin"
splay = "10m"
keep = { last = 3, hourly = 24, daily = 7, weekly = 4, monthly = 12 }
lock = "7d"
tier = 1
"#;

fn apply(fleet: &Fleet, file: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["policy", "apply", "-f", file.to_str().expect("path")];
    args.extend(extra);
    fleet.cli(&args)
}

#[test]
fn policy_files_apply_idempotently_and_mistakes_name_their_line() {
    let fleet = Fleet::start();
    let file = fleet.path("web.toml");
    fs::write(&file, MINIMAL).expect("write");
    let out = apply(&fleet, &file, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "policy web-hourly created"
    );
    let out = apply(&fleet, &file, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "policy web-hourly unchanged"
    );

    // A dry run shows the change and makes none.
    fs::write(&file, MINIMAL.replace("tier = 1", "tier = 0")).expect("write");
    let out = apply(&fleet, &file, &["--dry-run"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "policy web-hourly would change"
    );
    let shown = fleet.cli_json(&["policy", "show", "web-hourly"]);
    assert_eq!(shown["tier"], 1);
    assert_eq!(shown["lock_s"], 7 * 86400);
    assert_eq!(shown["keep"]["monthly"], 12);

    // Mistakes: nothing applied, each with its line and reason.
    for (bad, want) in [
        (
            MINIMAL.replace("tier = 1", "tier = 1\ncolour = \"red\""),
            ":11: unknown field `colour`",
        ),
        (
            MINIMAL.replace("0 * * * *", "0 * * *"),
            ":5: schedule \"0 * * *\" must have 5 fields",
        ),
        (
            MINIMAL.replace("role=web,site=fra", "role"),
            ":3: selector term \"role\" must be KEY=VALUE",
        ),
    ] {
        fs::write(&file, &bad).expect("write");
        let out = apply(&fleet, &file, &[]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("web.toml{want}")),
            "want {want}: {err}"
        );
        assert!(err.contains("nothing was applied"), "{err}");
    }
    let list = fleet.cli_json(&["policy", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let out = fleet.cli(&["policy", "delete", "web-hourly"]);
    assert!(out.status.success());
    assert_eq!(
        fleet.cli_json(&["policy", "list"]).as_array().map(Vec::len),
        Some(0)
    );
}

#[test]
fn prune_keeps_what_the_policy_says_and_never_pinned_or_locked_snapshots() {
    let mut fleet = Fleet::start();
    let src = tempfile::tempdir().expect("src");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    let mut ids = Vec::new();
    for i in 0..4 {
        fs::write(src.path().join("f"), format!("version {i}")).expect("write");
        ids.push(
            fleet.backup("a", "data")["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    let file = fleet.path("keep.toml");
    fs::write(
        &file,
        "[[policy]]\nname = \"keep-two\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\nkeep = { last = 2 }\n",
    )
    .expect("write");
    assert!(apply(&fleet, &file, &[]).status.success());
    // The oldest is pinned.
    assert!(
        fleet
            .cli(&["snapshots", "protect", &ids[0]])
            .status
            .success()
    );

    let dry = fleet.cli_json(&["prune", "--dry-run"]);
    assert_eq!(dry["removed"], 1, "{dry}");
    let action = |v: &Value, id: &str| {
        v["snapshots"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id))
            .map(|s| s["action"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(action(&dry, &ids[1]), "remove");
    assert_eq!(action(&dry, &ids[0]), "keep");
    assert_eq!(
        fleet.cli_json(&["snapshots"]).as_array().map(Vec::len),
        Some(4),
        "a dry run removes nothing"
    );

    let done = fleet.cli_json(&["prune"]);
    assert_eq!(done["removed"], 1);
    let left: Vec<String> = fleet
        .cli_json(&["snapshots"])
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut want = vec![ids[0].clone(), ids[2].clone(), ids[3].clone()];
    want.sort();
    let mut got = left.clone();
    got.sort();
    assert_eq!(got, want);
    let audit = fleet.cli_json(&["audit"]);
    assert!(
        audit
            .as_array()
            .expect("audit")
            .iter()
            .any(|e| e["action"] == "snapshot.prune" && e["target"] == ids[1].as_str())
    );

    // Devices: the source, its policy, its last backup.
    let devices = fleet.cli_json(&["devices"]);
    let d = &devices.as_array().expect("devices")[0];
    assert_eq!(d["agent"], "a");
    let s = &d["sources"].as_array().expect("sources")[0];
    assert_eq!(s["source"], "data");
    assert_eq!(s["policies"][0], "keep-two");
    assert_eq!(s["last_snapshot"], ids[3].as_str());
    assert_eq!(s["rpo_seconds"], 86400);
    assert_eq!(s["overdue"], false);
}

/// A snapshot's lock is its own: fixed from its policy when it is committed, untouched by
/// later changes to the policy or its deletion, extended by an operator, never shortened;
/// every refused delete says when it becomes possible and is audited (issue 18, item 1).
#[test]
fn locks_are_fixed_at_commit_and_only_ever_extended() {
    let mut fleet = Fleet::start();
    let src = tempfile::tempdir().expect("src");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    let file = fleet.path("lock.toml");
    let policy = |lock: &str| {
        format!(
            "[[policy]]\nname = \"keep-one\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\nkeep = {{ last = 1 }}\n{lock}"
        )
    };
    fs::write(&file, policy("lock = \"1h\"\n")).expect("write");
    assert!(apply(&fleet, &file, &[]).status.success());
    let mut ids = Vec::new();
    for i in 0..2 {
        fs::write(src.path().join("f"), format!("version {i}")).expect("write");
        ids.push(
            fleet.backup("a", "data")["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    let snapshot = |id: &str| -> Value {
        fleet
            .cli_json(&["snapshots"])
            .as_array()
            .expect("snapshots")
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("snapshot {id} is not listed"))
    };
    let first = snapshot(&ids[0]);
    let received = first["received_unix_ms"].as_i64().expect("received");
    let locked = first["locked_until_unix_ms"].as_i64().expect("locked");
    assert_eq!(
        locked - received,
        3_600_000,
        "locked for the policy's hour: {first}"
    );
    let table = String::from_utf8_lossy(&fleet.cli(&["snapshots"]).stdout).into_owned();
    assert!(table.contains("LOCKED UNTIL"), "{table}");

    let refused_delete = |fleet: &Fleet, id: &str| {
        let out = fleet.cli(&["snapshots", "delete", id]);
        assert!(!out.status.success(), "a locked snapshot was deleted");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let until = first["locked_until"]
            .as_str()
            .expect("locked_until")
            .to_string();
        assert!(err.contains("locked until"), "{err}");
        assert!(
            err.contains(&until[..16]),
            "the refusal names {until}: {err}"
        );
    };
    refused_delete(&fleet, &ids[0]);
    // Retention keeps it too, although `last = 1` alone would remove it.
    let dry = fleet.cli_json(&["prune", "--dry-run"]);
    assert_eq!(dry["removed"], 0, "{dry}");

    // The policy loses its lock, then goes: the snapshot's own lock stays.
    fs::write(&file, policy("")).expect("write");
    assert!(apply(&fleet, &file, &[]).status.success());
    refused_delete(&fleet, &ids[0]);
    assert!(
        fleet
            .cli(&["policy", "delete", "keep-one"])
            .status
            .success()
    );
    refused_delete(&fleet, &ids[0]);
    assert_eq!(snapshot(&ids[0])["locked_until_unix_ms"], locked);

    // Extended by an operator; never shortened.
    let out = fleet.cli(&["snapshots", "lock", &ids[0], "--until", "2d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extended = snapshot(&ids[0])["locked_until_unix_ms"]
        .as_i64()
        .expect("locked");
    assert!(
        extended > locked + 40 * 3_600_000,
        "extended to two days: {extended}"
    );
    let out = fleet.cli(&["snapshots", "lock", &ids[0], "--until", "1h"]);
    assert!(!out.status.success(), "a lock was shortened");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("never shortened"), "{err}");
    assert_eq!(snapshot(&ids[0])["locked_until_unix_ms"], extended);
    let out = fleet.cli(&["snapshots", "lock", &ids[0], "--until", "soon"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--until \"soon\""),
        "a bad date names the flag"
    );

    // Every refusal and the extension are in the audit log.
    let audit = fleet.cli_json(&["audit"]);
    let entries = audit.as_array().expect("audit");
    let count = |action: &str, outcome: &str| {
        entries
            .iter()
            .filter(|e| {
                e["action"] == action && e["outcome"] == outcome && e["target"] == ids[0].as_str()
            })
            .count()
    };
    assert_eq!(count("snapshot.delete", "denied"), 3, "{audit}");
    assert_eq!(count("snapshot.lock", "ok"), 1, "{audit}");
    assert_eq!(count("snapshot.lock", "denied"), 1, "{audit}");
    // A snapshot committed while no policy locked it can be deleted by an admin.
    fs::write(src.path().join("f"), "version 2").expect("write");
    let unlocked = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(snapshot(&unlocked)["locked_until_unix_ms"], 0);
    let out = fleet.cli(&["snapshots", "delete", &unlocked]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
