//! `lifeboat diff`: exactly what changed between two snapshots.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use lifeboat_tests::Fleet;

#[test]
fn diff_lists_exactly_what_was_added_removed_and_changed() {
    let mut fleet = Fleet::start();
    let src = tempfile::tempdir().expect("src");
    let p = |n: &str| src.path().join(n);
    fs::write(p("a"), b"original contents").expect("a");
    fs::write(p("b"), b"permissions change").expect("b");
    fs::write(p("c"), b"deleted later").expect("c");
    fs::create_dir(p("d")).expect("d");
    fs::write(p("d/kept"), b"same").expect("kept");
    let agent = fleet.enroll("a");
    fleet.run_agent(&agent, &[("data", src.path())], &[]);
    let s1 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();

    fs::write(p("a"), b"planted contents!").expect("a");
    fs::set_permissions(p("b"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::remove_file(p("c")).expect("rm");
    fs::write(p("d/new"), b"new file").expect("new");
    fs::write(p("e"), b"dropped by an attacker").expect("e");
    let s2 = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();

    let d = fleet.cli_json(&["diff", &s1, &s2]);
    let entries = d["entries"].as_array().expect("entries");
    let got: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap_or_default().to_string(),
                e["change"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("a", "changed"),
        ("b", "changed"),
        ("c", "removed"),
        ("d", "changed"),
        ("d/new", "added"),
        ("e", "added"),
    ]
    .iter()
    .map(|(p, c)| (p.to_string(), c.to_string()))
    .collect();
    assert_eq!(got, want, "{d}");
    let what = |path: &str| -> Vec<String> {
        entries
            .iter()
            .find(|e| e["path"] == path)
            .and_then(|e| e["what"].as_array())
            .map(|w| {
                w.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        what("a").contains(&"content".to_string()),
        "{:?}",
        what("a")
    );
    assert_eq!(what("b"), vec!["mode".to_string()]);
    let b = entries.iter().find(|e| e["path"] == "b").expect("b");
    assert_eq!(b["mode_b"], "600");
    // The same snapshot against itself: nothing.
    let same = fleet.cli_json(&["diff", &s2, &s2]);
    assert_eq!(same["entries"].as_array().map(Vec::len), Some(0));
}
