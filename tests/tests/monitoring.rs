//! Monitoring: `/metrics` as Prometheus reads it (`promtool check metrics`, and compared
//! with the CLI's `--json` for the same fleet), and the alert rules shipped in
//! `deploy/prometheus/` (`promtool check rules`, and their unit tests under
//! `promtool test rules`), and the Grafana dashboard's queries (valid PromQL, asking only
//! for metrics that exist). promtool is Debian's `prometheus` package; CI installs it and
//! sets `LIFEBOAT_REQUIRE_PROMTOOL`, so there these cannot skip.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use lifeboat_tests::Fleet;
use lifeboat_tests::tree::Rng;

/// promtool, or None (the test skips) where it is missing and not required.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("LIFEBOAT_REQUIRE_PROMTOOL").is_none(),
            "promtool is required (LIFEBOAT_REQUIRE_PROMTOOL) and not on PATH: apt-get install prometheus"
        );
        eprintln!("skipped: no promtool (Debian's prometheus package)");
    }
    found
}

fn repo() -> PathBuf {
    lifeboat_tests::repo_dir()
}

/// The samples of a metrics page: `name{labels}` as written → value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("/metrics has no {series}"))
}

/// `/metrics` of a fleet with a backed-up device under an hourly policy and a device that
/// never backed up: promtool finds nothing to complain about (names, units, `_total`,
/// types, help), and the per-source figures are the ones `lifeboat devices --json` and
/// `lifeboat snapshots --json` show.
#[test]
fn metrics_pass_promtool_and_match_the_cli() {
    let Some(promtool) = promtool() else {
        return;
    };
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("f"), Rng::new(5).bytes(300_000)).expect("write");
    let web = fleet.enroll("web");
    fleet.run_agent(&web, &[("data", src.as_path())], &[]);
    fleet.enroll("idle");
    fleet.apply_policy(
        "[[policy]]\nname = \"hourly\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\n",
    );
    let snap = fleet.backup("web", "data");
    let response = lifeboat_tests::metrics(&fleet);
    let page = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .expect("an HTTP response");

    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write the page");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\npage:\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let s = samples(page);
    let devices = fleet.cli_json(&["devices"]);
    let source = devices
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["agent"] == "web")
        .and_then(|d| {
            d["sources"]
                .as_array()?
                .iter()
                .find(|s| s["source"] == "data")
        })
        .expect("web's source in lifeboat devices")
        .clone();
    let received_s = snap["received_unix_ms"].as_i64().expect("received") as f64 / 1000.0;
    let web_data = r#"{agent="web",source="data"}"#;
    assert_eq!(
        value(
            &s,
            &format!("lifeboat_source_last_backup_timestamp_seconds{web_data}")
        ),
        received_s
    );
    assert_eq!(
        value(&s, &format!("lifeboat_source_rpo_seconds{web_data}")),
        source["rpo_seconds"].as_f64().expect("rpo")
    );
    assert_eq!(source["rpo_seconds"], 3600, "{source}");
    assert_eq!(
        value(&s, &format!("lifeboat_source_overdue{web_data}")),
        0.0
    );
    assert_eq!(
        value(
            &s,
            &format!("lifeboat_source_restore_estimate_seconds{web_data}")
        ),
        source["restore_estimate_seconds"]
            .as_f64()
            .expect("estimate")
    );
    assert_eq!(
        value(
            &s,
            r#"lifeboat_device_last_backup_timestamp_seconds{agent="web"}"#
        ),
        received_s
    );
    assert_eq!(
        value(
            &s,
            r#"lifeboat_device_last_backup_timestamp_seconds{agent="idle"}"#
        ),
        0.0,
        "a device without any snapshot says so"
    );
    assert!(
        value(
            &s,
            r#"lifeboat_agent_certificate_expiry_timestamp_seconds{agent="web"}"#
        ) > received_s
    );
    assert_eq!(
        value(&s, r#"lifeboat_jobs{kind="backup",state="succeeded"}"#),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"lifeboat_job_duration_seconds_count{kind="backup",outcome="succeeded"}"#
        ),
        1.0
    );
    assert!(
        value(
            &s,
            r#"lifeboat_job_duration_seconds_sum{kind="backup",outcome="succeeded"}"#
        ) > 0.0
    );
    assert_eq!(
        value(&s, r#"lifeboat_snapshot_bytes{kind="source"}"#),
        300_000.0,
        "the one snapshot's bytes"
    );
    assert_eq!(
        value(&s, r#"lifeboat_snapshot_bytes{kind="read"}"#),
        300_000.0,
        "a first backup reads every byte"
    );
    assert!(value(&s, "lifeboat_store_dedup_ratio") > 0.0);
    assert_eq!(
        value(&s, r#"lifeboat_scrub_bad_chunks{state="unhealed"}"#),
        0.0
    );

    // Every metric the alert rules and the Grafana dashboard ask for is on the page.
    let families: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
        .collect();
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/lifeboat-rules.yml"))
        .expect("rules");
    let asked: Vec<String> = dashboard_queries()
        .iter()
        .map(String::as_str)
        .chain([rules.as_str()])
        .flat_map(metric_names)
        .collect();
    for name in &asked {
        let family = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        assert!(
            families.contains(&name.as_str()) || families.contains(&family),
            "the rules or the dashboard ask for {name}, which /metrics does not have"
        );
    }
    eprintln!(
        "promtool check metrics: clean, {} samples; the {} metric names the rules and the dashboard ask for are all there",
        s.len(),
        asked.len()
    );
}

/// The PromQL of every panel of `deploy/grafana/lifeboat.json`.
fn dashboard_queries() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo().join("deploy/grafana/lifeboat.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "a dashboard without panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_string()
        })
        .collect()
}

/// The `lifeboat_…` metric names in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("lifeboat_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // The rule file's own name is not a metric.
        if !name.starts_with("lifeboat_rules") {
            names.push(name);
        }
    }
    names
}

/// The alert rules shipped in `deploy/prometheus/`: valid (`promtool check rules`), and
/// each alert fires when it should and only then (`promtool test rules` on the unit tests
/// beside them); and every query of the Grafana dashboard in `deploy/grafana/` is valid
/// PromQL.
#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    // The dashboard's queries, checked as PromQL by loading them as recording rules.
    let scratch = tempfile::tempdir().expect("tempdir");
    let queries = dashboard_queries();
    let as_rules = serde_json::json!({ "groups": [{
        "name": "dashboard",
        "rules": queries.iter().enumerate().map(|(i, q)| serde_json::json!({
            "record": format!("dashboard:query_{i}"),
            "expr": q,
        })).collect::<Vec<_>>(),
    }]});
    let file = scratch.path().join("dashboard-queries.yml");
    std::fs::write(&file, as_rules.to_string()).expect("write");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "the Grafana dashboard's queries are not valid PromQL:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "lifeboat-rules.yml"],
        vec!["test", "rules", "lifeboat-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
