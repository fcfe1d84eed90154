//! Ransomware signals at backup time (`lifeboat anomalies`): a simulated week of the
//! benchmark data raises nothing; the same tree encrypted in place, renamed `*.locked`
//! with a note in every directory, is flagged with those reasons, audited, counted in
//! `/metrics`, and (the policy says so) quarantined so that no recovery plan picks it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat_tests::tree::{self, Rng, encrypt_in_place};
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

/// A small file server's worth: 45 documents of compressible text in three directories.
fn office_files(root: &Path, rng: &mut Rng) {
    const WORDS: [&str; 8] = [
        "invoice",
        "quarterly",
        "report",
        "meeting",
        "budget",
        "customer",
        "draft",
        "final",
    ];
    for dir in ["docs", "mail", "sheets"] {
        fs::create_dir_all(root.join(dir)).expect("dir");
        for i in 0..15 {
            let len = 8_000 + (rng.bytes(2)[0] as usize) * 128;
            let mut text = String::with_capacity(len + 16);
            while text.len() < len {
                text.push_str(WORDS[rng.bytes(1)[0] as usize % WORDS.len()]);
                text.push(' ');
            }
            fs::write(root.join(dir).join(format!("{dir}-{i}.txt")), text).expect("document");
        }
    }
}

fn id(snapshot: &Value) -> String {
    snapshot["id"].as_str().expect("id").to_owned()
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

/// Checklist row C4: a compromised device floods its source's history after the breach to
/// push the snapshots from before it out of `keep.last`. Two devices under `keep = { last
/// = 2 }`: `web`'s policy quarantines suspect snapshots, `db`'s only flags them. Each backs
/// up three good days, is encrypted in place, then commits six more snapshots through its
/// jobs (`web`: its source emptied and filled with junk in turn; `db`: the ciphertext
/// left as it is, a small file added each time, which looks ordinary next to its parent).
/// A prune keeps `web`'s two good snapshots before the breach (its flood arrives
/// quarantined, held and counted by no rule) and `db`'s last good one before its suspect
/// snapshot; both restore identical to the tree they were taken of.
#[test]
fn c4_a_flood_of_snapshots_after_a_breach_pushes_out_no_snapshot_from_before_it() {
    let mut fleet = Fleet::start();
    let work = tempfile::tempdir().expect("work");
    let devices = [("web", "data"), ("db", "db")];
    let mut rng = Rng::new(404);
    for (device, source) in devices {
        let src = work.path().join(device);
        office_files(&src, &mut rng);
        let agent = fleet.enroll(device);
        fleet.run_agent(&agent, &[(source, &src)], &[work.path()]);
    }
    fleet.apply_policy(
        "[[policy]]\nname = \"web\"\nsources = [\"data\"]\nschedule = \"0 3 1 1 *\"\n\
         keep = { last = 2 }\nanomalies = { threshold = 60, quarantine = true }\n\n\
         [[policy]]\nname = \"db\"\nsources = [\"db\"]\nschedule = \"0 3 1 1 *\"\n\
         keep = { last = 2 }\n",
    );

    // (device, good snapshot ids, the last good one's tree, the suspect one, the flood)
    let mut history = Vec::new();
    for (device, source) in devices {
        let src = work.path().join(device);
        let mut good = Vec::new();
        for day in 0..3 {
            if day > 0 {
                fs::write(src.join(format!("notes-{day}.txt")), rng.bytes(20_000))
                    .expect("a day's change");
            }
            good.push(id(&fleet.backup(device, source)));
        }
        let last_good = tree::manifest(&src);
        encrypt_in_place(&src);
        let suspect = id(&fleet.backup(device, source));
        let list = wait_for(
            "the anomalies worker to judge the device's four snapshots",
            Duration::from_secs(60),
            || {
                let all = fleet.cli_json(&["anomalies", "--all"]);
                let list = all.as_array()?.clone();
                good.iter()
                    .chain([&suspect])
                    .all(|s| list.iter().any(|a| a["snapshot"] == s.as_str()))
                    .then_some(list)
            },
        );
        for s in &good {
            let a = list
                .iter()
                .find(|a| a["snapshot"] == s.as_str())
                .expect("analyzed");
            assert_eq!(a["suspect"], false, "{device}: a good day flagged: {a}");
        }
        let a = list
            .iter()
            .find(|a| a["snapshot"] == suspect.as_str())
            .expect("analyzed");
        assert_eq!(
            a["suspect"], true,
            "{device}: the encrypted day not flagged: {a}"
        );

        let mut flood = Vec::new();
        for i in 0..6 {
            if device == "web" {
                for entry in fs::read_dir(&src).expect("src") {
                    let p = entry.expect("entry").path();
                    if p.is_dir() {
                        fs::remove_dir_all(&p).expect("empty");
                    } else {
                        fs::remove_file(&p).expect("empty");
                    }
                }
                if i % 2 == 1 {
                    fs::write(src.join("junk.bin"), rng.bytes(64 << 10)).expect("junk");
                }
            } else {
                fs::write(src.join(format!("more-{i}.txt")), format!("entry {i}\n")).expect("more");
            }
            let s = fleet.backup(device, source);
            if device == "web" {
                // The device is under quarantine: what it commits now arrives quarantined.
                assert_eq!(s["quarantined"], true, "web's flood snapshot {i}: {s}");
            }
            flood.push(id(&s));
        }
        history.push((device, good, last_good, suspect, flood));
    }

    let pruned = fleet.cli_json(&["prune"]);
    let outcome = |id: &str| -> (String, String) {
        let s = pruned["snapshots"]
            .as_array()
            .expect("snapshots")
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in the prune's answer: {pruned}"));
        (
            s["action"].as_str().expect("action").to_owned(),
            s["reasons"].to_string(),
        )
    };
    let (web_good, web_suspect, web_flood) = (&history[0].1, &history[0].3, &history[0].4);
    for g in &web_good[1..] {
        let (action, why) = outcome(g);
        assert_eq!(action, "keep", "web's good snapshot {g} pushed out: {why}");
    }
    assert!(
        outcome(&web_good[2])
            .1
            .contains("last good before quarantined"),
        "{pruned}"
    );
    assert_eq!(
        outcome(&web_good[0]).0,
        "remove",
        "keep.last = 2 of the good ones"
    );
    for f in std::iter::once(web_suspect).chain(web_flood) {
        let (action, why) = outcome(f);
        assert_eq!(action, "keep", "web's {f}: {why}");
        assert!(why.contains("quarantined: held"), "web's {f}: {why}");
    }
    let (db_good, db_suspect, db_flood) = (&history[1].1, &history[1].3, &history[1].4);
    let (action, why) = outcome(&db_good[2]);
    assert_eq!(action, "keep", "db's last good snapshot pushed out: {why}");
    assert!(why.contains("last good before suspect"), "{why}");
    let (action, why) = outcome(db_suspect);
    assert_eq!(
        (action.as_str(), why.contains("suspect: held")),
        ("keep", true),
        "{why}"
    );
    let kept_flood: Vec<&String> = db_flood.iter().filter(|f| outcome(f).0 == "keep").collect();
    assert_eq!(kept_flood, vec![&db_flood[4], &db_flood[5]], "{pruned}");
    for g in &db_good[..2] {
        assert_eq!(outcome(g).0, "remove", "{pruned}");
    }
    assert_eq!(pruned["removed"], 1 + 2 + 4, "{pruned}");

    let audit = fleet.cli_json(&["audit", "--since", "1h", "--action", "snapshot.quarantine"]);
    let on_arrival = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| e["actor"] == "controller:quarantine")
        .count();
    assert_eq!(on_arrival, web_flood.len(), "{audit}");

    // Reviewed, db's suspect snapshot is taken for a false alarm: dismissed with a note
    // (an admin's, audited), it is an ordinary snapshot again, and retention counts it.
    let no_note = fleet.cli(&["anomalies", "dismiss", db_suspect]);
    assert!(!no_note.status.success(), "a dismissal without a note");
    let why = "the db's export job rewrites its files each night";
    let dismissed = fleet.cli_json(&["anomalies", "dismiss", db_suspect, "--note", why]);
    assert_eq!(dismissed["suspect"], false, "{dismissed}");
    let twice = fleet.cli(&["anomalies", "dismiss", db_suspect, "--note", why]);
    assert!(
        !twice.status.success()
            && String::from_utf8_lossy(&twice.stderr).contains("is not suspect"),
        "a second dismissal: {}",
        String::from_utf8_lossy(&twice.stderr)
    );
    let audit = fleet.cli_json(&["audit", "--since", "1h", "--action", "snapshot.unsuspect"]);
    assert!(audit.to_string().contains(why), "{audit}");
    let dry = fleet.cli_json(&["prune", "--dry-run"]);
    let action = |id: &str| {
        dry["snapshots"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id))
            .map(|s| s["action"].clone())
    };
    assert_eq!(action(db_suspect), Some("remove".into()), "{dry}");
    assert_eq!(action(&db_good[2]), Some("remove".into()), "{dry}");

    // The day of the breach: web's plan goes back to its last good day; both restore it.
    let plan = fleet.cli_json(&["recover", "plan", "--agent", "web", "--before", "0s"]);
    assert_eq!(
        plan["devices"][0]["sources"][0]["snapshot"],
        web_good[2].as_str(),
        "{plan}"
    );
    for (device, good, last_good, _, _) in &history {
        let target = work.path().join(format!("restored-{device}"));
        let (ok, job) = fleet.restore_to(&good[2], device, &target, &[]);
        assert!(ok, "{device}: {job}");
        tree::assert_same(last_good, &target);
    }
    println!(
        "C4: 6 snapshots flooded after a breach on each of 2 devices under keep.last = 2: \
         web's 2 good snapshots before it kept (its 7 quarantined ones held), db's last good \
         one kept beside its suspect one; 7 removed, 0 good ones among the last; both restored identical"
    );
}
