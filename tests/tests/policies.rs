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

    // A lock: nobody may delete a snapshot inside it, not even an admin.
    fs::write(
        &file,
        "[[policy]]\nname = \"keep-two\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\nkeep = { last = 2 }\nlock = \"1h\"\n",
    )
    .expect("write");
    assert!(apply(&fleet, &file, &[]).status.success());
    let out = fleet.cli(&["snapshots", "delete", &ids[3]]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by policy keep-two"), "{err}");

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
