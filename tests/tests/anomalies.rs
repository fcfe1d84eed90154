//! Ransomware signals at backup time (`lifeboat anomalies`): a simulated week of the
//! benchmark data raises nothing; the same tree encrypted in place, renamed `*.locked`
//! with a note in every directory, is flagged with those reasons, audited, counted in
//! `/metrics`, and (the policy says so) quarantined so that no recovery plan picks it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat_tests::tree::encrypt_in_place;
use lifeboat_tests::{Fleet, repo_dir, wait_for};
use serde_json::Value;

/// `bench/week.py`: day1 and day2 of the benchmark data, then five more days of its edits.
fn week(out: &Path) -> Vec<PathBuf> {
    let status = Command::new("python3")
        .arg(repo_dir().join("bench/week.py"))
        .args([
            "--out",
            out.to_str().expect("path"),
            "--scale",
            "0.01",
            "--days",
            "7",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 bench/week.py");
    assert!(status.success(), "bench/week.py failed");
    (1..=7).map(|d| out.join(format!("day{d}"))).collect()
}

/// Makes `src` look like `day` the way a machine changes (only what changed is rewritten).
fn become_day(day: &Path, src: &Path) {
    let out = Command::new("rsync")
        .args(["-a", "--delete"])
        .arg(format!("{}/", day.display()))
        .arg(format!("{}/", src.display()))
        .output()
        .expect("rsync");
    assert!(
        out.status.success(),
        "rsync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn analyzed(fleet: &Fleet, n: usize) -> Vec<Value> {
    wait_for(
        "the anomalies worker to analyze every snapshot",
        Duration::from_secs(60),
        || {
            let all = fleet.cli_json(&["anomalies", "--all"]);
            let list = all.as_array()?.clone();
            (list.len() >= n).then_some(list)
        },
    )
}

#[test]
fn a_week_of_ordinary_changes_raises_nothing_and_encryption_in_place_is_flagged_and_quarantined() {
    let mut fleet = Fleet::start();
    let work = tempfile::tempdir().expect("work");
    let days = week(&work.path().join("week"));
    let src = work.path().join("src");
    fs::create_dir(&src).expect("src");
    let agent = fleet.enroll("files1");
    fleet.run_agent(&agent, &[("data", &src)], &[work.path()]);
    fleet.apply_policy(
        "[[policy]]\nname = \"files\"\nsources = [\"data\"]\nschedule = \"0 3 1 1 *\"\n\
         anomalies = { threshold = 60, quarantine = true }\n",
    );

    let mut ids = Vec::new();
    for day in &days {
        become_day(day, &src);
        ids.push(
            fleet.backup("files1", "data")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let list = analyzed(&fleet, days.len());
    let mut scores = Vec::new();
    for (d, id) in ids.iter().enumerate() {
        let a = list
            .iter()
            .find(|a| a["snapshot"] == id.as_str())
            .expect("analyzed");
        assert_eq!(a["suspect"], false, "day {} flagged: {a}", d + 1);
        assert_eq!(a["threshold"], 60);
        if d > 0 {
            assert_eq!(
                a["compared_with"],
                ids[d - 1].as_str(),
                "compared with the day before"
            );
        }
        scores.push(a["score"].as_u64().expect("score"));
    }
    println!(
        "ransomware signals: a simulated week (scale 0.01), scores {scores:?}: 0 of 7 flagged"
    );
    let none = fleet.cli(&["anomalies"]);
    assert!(String::from_utf8_lossy(&none.stdout).contains("no suspect snapshot"));

    encrypt_in_place(&src);
    let hit = fleet.backup("files1", "data")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let list = analyzed(&fleet, days.len() + 1);
    let a = list
        .iter()
        .find(|a| a["snapshot"] == hit.as_str())
        .expect("analyzed");
    println!("encrypted in place: {a}");
    assert_eq!(a["suspect"], true, "{a}");
    assert!(a["score"].as_u64().expect("score") >= 90, "{a}");
    let reasons: Vec<&str> = a["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for want in [
        "changed or vanished",
        "no longer do",
        "to the new .locked",
        "ransom notes",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "no reason with {want:?}: {reasons:?}"
        );
    }
    let figures = &a["figures"];
    let files = figures["files_before"].as_u64().expect("files");
    assert_eq!(
        figures["extension_changes"].as_u64(),
        Some(files),
        "{figures}"
    );
    assert!(
        figures["ransom_note_dirs"].as_u64().expect("dirs") >= 3,
        "{figures}"
    );

    // Only the suspect one is listed by default; it is quarantined, audited and counted.
    let suspects = fleet.cli_json(&["anomalies"]);
    assert_eq!(suspects.as_array().map(Vec::len), Some(1), "{suspects}");
    assert_eq!(suspects[0]["quarantined"], true, "{suspects}");
    let snaps = fleet.cli_json(&["snapshots", "--agent", "files1"]);
    for s in snaps.as_array().expect("snapshots") {
        assert_eq!(s["quarantined"], s["id"] == hit.as_str(), "{s}");
    }
    let audit = fleet.cli_json(&["audit", "--since", "1h"]);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"snapshot.suspect") && actions.contains(&"snapshot.quarantine"),
        "{actions:?}"
    );
    let metrics = lifeboat_tests::metrics(&fleet);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lifeboat_suspect_snapshots{")
                && l.contains("files1")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // The day of the breach: the plan goes back to the last good day, not the encrypted one.
    let plan = fleet.cli_json(&["recover", "plan", "--agent", "files1", "--before", "0s"]);
    let chosen = plan["devices"][0]["sources"][0]["snapshot"]
        .as_str()
        .expect("snapshot");
    assert_eq!(chosen, ids[6].as_str(), "{plan}");
}
