//! `lifeboat dashboard` in a real browser (headless Chromium through chromedriver): every
//! page of a running fleet shows what the CLI's `--json` says about the same data, a drill
//! and a plan run are started from the pages after a confirmation, the plan's page follows
//! the run by itself, a viewer gets no buttons and the controller refuses them anyway, and
//! only the browser that opened the printed link is let in.
//!
//! With `LIFEBOAT_SCREENSHOTS=DIR`, the pages are saved there as PNG (README's pictures).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use lifeboat_tests::browser::Browser;
use lifeboat_tests::tree::Rng;
use lifeboat_tests::{Fleet, wait_for};
use serde_json::Value;

/// A running `lifeboat dashboard` and the URL it printed.
struct Dashboard {
    child: Child,
    url: String,
    /// Kept open: a program whose standard output was closed ends at its next line.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Dashboard {
    fn start(fleet: &Fleet, identity: Option<&Path>) -> Dashboard {
        let mut cmd = fleet.cli_command(&["dashboard", "--listen", "127.0.0.1:0", "--no-open"]);
        if let Some(id) = identity {
            cmd.env("LIFEBOAT_IDENTITY", id);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lifeboat dashboard");
        let mut first = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout
            .read_line(&mut first)
            .expect("read the dashboard's URL");
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .to_string();
        Dashboard {
            child,
            url,
            _stdout: stdout,
        }
    }

    /// http://127.0.0.1:PORT
    fn origin(&self) -> &str {
        let rest = &self.url["http://".len()..];
        &self.url[..("http://".len() + rest.find('/').expect("path"))]
    }

    fn token(&self) -> &str {
        self.url.split("token=").nth(1).expect("token")
    }

    fn page(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request written by hand (headers exactly as given); returns the status.
fn raw_status(origin: &str, request: &str) -> u16 {
    let addr = origin.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the dashboard");
    s.write_all(request.as_bytes()).expect("send");
    // The status line is all we need; a reset after it (the server closing first) is fine.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if answer.is_empty() => panic!("no answer to {request:?}: {e}"),
            Err(_) => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

fn fill(dir: &Path, seed: u64, files: usize, size: usize) {
    fs::create_dir_all(dir).expect("mkdir");
    let mut rng = Rng::new(seed);
    for i in 0..files {
        fs::write(dir.join(format!("f{i:03}")), rng.bytes(size)).expect("write");
    }
}

fn machine(fleet: &mut Fleet, name: &str, seed: u64) -> PathBuf {
    let root = fleet.path(&format!("machines/{name}"));
    let data = root.join("data");
    fill(&data, seed, 24, 96 * 1024);
    let agent = fleet.enroll(name);
    fleet.run_agent_with(&agent, &[("data", &data)], &[&root], &["--no-docker"]);
    data
}

fn shots() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("LIFEBOAT_SCREENSHOTS")?);
    fs::create_dir_all(&dir).expect("screenshot dir");
    Some(dir)
}

fn screenshot(browser: &Browser, name: &str) {
    if let Some(dir) = shots() {
        browser.screenshot(&dir.join(format!("{name}.png")));
    }
}

fn rfc_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Every page against the CLI's `--json`; a drill and a plan run started from the pages;
/// the plan page follows the run without being reloaded by anyone.
#[test]
fn the_dashboard_shows_what_the_cli_shows_and_starts_drills_and_plans() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let mut fleet = Fleet::start();
    fleet.apply_policy(
        "[[policy]]\nname = \"db\"\nselector = \"role=db\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\ntier = 0\n\n\
         [[policy]]\nname = \"web\"\nselector = \"role=web\"\nsources = [\"data\"]\nschedule = \"0 0 1 1 *\"\ntier = 1\n",
    );
    for (name, role, seed) in [("db", "role=db", 1), ("web", "role=web", 2)] {
        let token = fleet.cli_json(&["token", "create", "--label", role])["token"]
            .as_str()
            .expect("token")
            .to_string();
        let root = fleet.path(&format!("machines/{name}"));
        fill(&root.join("data"), seed, 24, 96 * 1024);
        let agent = fleet.enroll_token(name, &token);
        fleet.run_agent_with(
            &agent,
            &[("data", &root.join("data"))],
            &[&root],
            &["--no-docker"],
        );
    }
    machine(&mut fleet, "spare", 3); // enrolled, never backed up
    fleet.wait_connected(3);
    fleet.backup("db", "data");
    fleet.backup("web", "data");
    let between = rfc_now();
    std::thread::sleep(Duration::from_millis(20));
    fleet.backup("db", "data");
    let q = fleet.cli(&[
        "snapshots",
        "quarantine",
        "--agent",
        "db",
        "--after",
        &between,
    ]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));

    // It serves plain HTTP, so on loopback only.
    let out = fleet.cli(&["dashboard", "--listen", "0.0.0.0:8743", "--no-open"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));

    let dash = Dashboard::start(&fleet, None);

    // Only the browser that opened the printed link gets in; only under its own name;
    // forms only from its own pages.
    let host = dash.origin().trim_start_matches("http://").to_string();
    let cookie = format!("lifeboat_dashboard={}", dash.token());
    assert_eq!(
        raw_status(
            dash.origin(),
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        ),
        401
    );
    assert_eq!(
        raw_status(
            dash.origin(),
            &format!(
                "GET / HTTP/1.1\r\nHost: rebound.example\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            )
        ),
        421,
        "a DNS-rebound name must not be answered"
    );
    assert_eq!(
        raw_status(
            dash.origin(),
            &format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            )
        ),
        200
    );
    let body = "agent=db&csrf=x";
    assert_eq!(
        raw_status(
            dash.origin(),
            &format!(
                "POST /drills HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: http://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        ),
        403,
        "a form posted from another site must be refused"
    );
    assert_eq!(
        raw_status(
            dash.origin(),
            &format!(
                "POST /drills HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                dash.origin(),
                body.len()
            )
        ),
        403,
        "a form without the page's CSRF field must be refused"
    );
    assert_eq!(
        fleet.cli_json(&["drills"]).as_array().map(Vec::len),
        Some(0),
        "no refused form started a drill"
    );

    // The printed link signs the browser in and leaves no token in the address bar.
    browser.goto(&dash.url);
    assert_eq!(browser.url(), dash.page("/"));

    // The fleet page against `lifeboat devices --json`.
    let devices = fleet.cli_json(&["devices"]);
    let devices = devices.as_array().expect("devices");
    assert_eq!(devices.len(), 3);
    let rows = browser.all("#fleet tr[data-device]", "data-device");
    for d in devices {
        let name = str_of(&d["agent"]);
        assert!(
            rows.iter().any(|(n, _)| n == name),
            "{name} missing from the fleet page"
        );
        let est = browser
            .eval(&format!(
                "return document.querySelector('#fleet tr[data-device=\"{name}\"] td[data-estimate-ms]').dataset.estimateMs;"
            ))
            .as_str()
            .expect("estimate")
            .parse::<f64>()
            .expect("ms");
        let cli_s = d["restore_estimate_seconds"].as_f64().expect("seconds");
        assert!(
            (est / 1000.0 - cli_s).abs() < 0.002,
            "{name}: page {est} ms, CLI {cli_s} s"
        );
        for s in d["sources"].as_array().expect("sources") {
            let last = browser.eval(&format!(
                "const r = document.querySelector('#fleet tr[data-device=\"{name}\"][data-source=\"{}\"]'); return r ? [r.dataset.lastSnapshot || null, r.innerText] : null;",
                str_of(&s["source"])
            ));
            assert_eq!(last[0], s["last_snapshot"], "{name}: last snapshot");
            if s["last_snapshot"].is_null() {
                assert!(str_of(&last[1]).contains("never"), "{name}: {last}");
            }
        }
    }
    assert_eq!(
        browser.text("#uncovered-count").as_deref(),
        Some("1"),
        "spare has no snapshot"
    );
    let suspect = browser.eval("return document.querySelector('#fleet tr[data-device=\"db\"] td[data-suspect]').dataset.suspect;");
    assert_eq!(suspect, "1", "db's second snapshot is quarantined");
    screenshot(&browser, "fleet");

    // The device page against `lifeboat snapshots --agent db --json`.
    browser.follow("#fleet a[href=\"/devices/db\"]");
    assert_eq!(browser.url(), dash.page("/devices/db"));
    let snaps = fleet.cli_json(&["snapshots", "--agent", "db"]);
    let snaps = snaps.as_array().expect("snapshots");
    assert_eq!(snaps.len(), 2);
    let marks = browser.all("svg.timeline [data-snapshot]", "data-snapshot");
    let rows = browser.all("#snapshots tr[data-snapshot]", "data-snapshot");
    for s in snaps {
        let id = str_of(&s["id"]);
        assert!(
            marks.iter().any(|(m, _)| m == id),
            "{id} not on the timeline"
        );
        assert!(rows.iter().any(|(r, _)| r == id), "{id} not in the table");
    }
    let quarantined: Vec<&str> = snaps
        .iter()
        .filter(|s| s["quarantined"] == true)
        .map(|s| str_of(&s["id"]))
        .collect();
    let crossed = browser.all("svg.timeline g.quarantined", "data-snapshot");
    assert_eq!(
        crossed
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        quarantined
    );

    // A drill from the device page, after a confirmation; the drills page follows it.
    browser.follow("a.button[href=\"/drills/new?agent=db\"]");
    assert!(
        browser
            .text("main")
            .expect("page")
            .contains("A drill restores each source of db")
    );
    assert_eq!(
        fleet.cli_json(&["drills"]).as_array().map(Vec::len),
        Some(0),
        "nothing runs before the confirmation"
    );
    browser.follow("#confirm");
    assert_eq!(browser.url(), dash.page("/drills?started=1"));
    let (id, state) = wait_for(
        "the drill to finish on the page",
        Duration::from_secs(120),
        || {
            let rows = browser.all("#drills-table tr[data-drill]", "data-state");
            let (state, _) = rows.first()?.clone();
            (state == "passed" || state == "failed").then(|| {
                let id = browser.eval(
                    "return document.querySelector('#drills-table tr[data-drill]').dataset.drill;",
                );
                (str_of(&id).to_string(), state)
            })
        },
    );
    let drills = fleet.cli_json(&["drills"]);
    let d = &drills.as_array().expect("drills")[0];
    assert_eq!(str_of(&d["id"]), id);
    assert_eq!(str_of(&d["state"]), state);
    assert_eq!(state, "passed");
    let attrs = browser.eval(
        "const r = document.querySelector('#drills-table tr[data-drill]'); return [r.dataset.estimateMs, r.dataset.actualMs];",
    );
    assert_eq!(str_of(&attrs[0]), d["estimate_ms"].to_string());
    assert_eq!(str_of(&attrs[1]), d["actual_ms"].to_string());
    assert_eq!(
        browser.all("svg.drills g[data-drill]", "data-drill").len(),
        1
    );
    screenshot(&browser, "drills");
    browser.goto(&dash.page("/devices/db"));
    screenshot(&browser, "device");

    // A plan made by the CLI, run from its page; the page follows the run by itself.
    let plan = fleet.cli_json(&[
        "recover",
        "plan",
        "--agent",
        "db",
        "--agent",
        "web",
        "--before",
        &rfc_now(),
        "--concurrency",
        "1",
        "--bandwidth",
        "1MiB/s",
    ]);
    let plan_id = str_of(&plan["id"]).to_string();
    browser.goto(&dash.page("/plans"));
    assert_eq!(
        browser
            .all("#plans tr[data-plan]", "data-plan")
            .first()
            .map(|r| r.0.clone()),
        Some(plan_id.clone())
    );
    browser.follow(&format!("#plans a[href=\"/plans/{plan_id}\"]"));
    let planned = browser.all("#plan-devices tr[data-device]", "data-est-finish-ms");
    for d in plan["devices"].as_array().expect("devices") {
        let est_finish = d["est_finish_ms"].to_string();
        assert!(
            planned
                .iter()
                .any(|(est, text)| *est == est_finish && text.contains(str_of(&d["agent"]))),
            "{d} not on the plan page: {planned:?}"
        );
    }
    assert_eq!(
        browser.all("svg.gantt g[data-device]", "data-device").len(),
        2
    );
    screenshot(&browser, "plan");
    browser.follow(&format!("a.button[href=\"/plans/{plan_id}/run\"]"));
    assert_eq!(
        fleet.cli_json(&["recover", "show", &plan_id])["state"],
        "planned",
        "nothing runs before the confirmation"
    );
    browser.follow("#confirm");
    assert_eq!(browser.url(), dash.page(&format!("/plans/{plan_id}")));
    // Watch the page, never navigating: it must reload itself while the plan runs.
    let mut seen_running = Vec::new();
    let finished = wait_for(
        "the plan page to show the run's end",
        Duration::from_secs(180),
        || {
            let state = browser.eval(
                "const p = document.querySelector('#plan'); return p ? p.dataset.state : null;",
            );
            let footer = browser.text("footer").unwrap_or_default();
            if state == "running" {
                if !seen_running.contains(&footer) {
                    seen_running.push(footer);
                }
                if seen_running.len() == 2 {
                    screenshot(&browser, "plan-running");
                }
                None
            } else {
                (state == "finished" || state == "failed").then(|| str_of(&state).to_string())
            }
        },
    );
    assert!(
        seen_running.len() >= 2,
        "the running plan's page should have refreshed itself at least once: {seen_running:?}"
    );
    let shown = fleet.cli_json(&["recover", "show", &plan_id]);
    assert_eq!(str_of(&shown["state"]), finished);
    assert_eq!(finished, "finished");
    let states = browser.all("#plan-devices tr[data-device]", "data-state");
    for d in shown["devices"].as_array().expect("devices") {
        assert!(
            states
                .iter()
                .any(|(s, text)| s == str_of(&d["state"]) && text.contains(str_of(&d["agent"]))),
            "{d} not shown as {}: {states:?}",
            d["state"]
        );
    }
    assert_eq!(
        browser
            .all("svg.gantt g[data-device] rect.actual.done", "class")
            .len(),
        2,
        "both devices' actual bars"
    );

    // The audit log against `lifeboat audit --json`, then filtered.
    browser.goto(&dash.page("/audit"));
    let page_seqs: Vec<u64> = browser
        .all("#audit tr[data-seq]", "data-seq")
        .iter()
        .map(|(s, _)| s.parse().expect("seq"))
        .collect();
    let audit = fleet.cli_json(&["audit", "--since", "7d"]);
    let cli_seqs: Vec<u64> = audit
        .as_array()
        .expect("audit")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .filter(|s| page_seqs.first().is_some_and(|newest| s <= newest))
        .collect();
    let mut sorted = page_seqs.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, cli_seqs,
        "the page lists the same entries as the CLI"
    );
    assert!(browser.text("#chain").expect("chain").contains("verified"));
    let action = "plan.run";
    let runs: Vec<&Value> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| e["action"] == action)
        .collect();
    assert!(
        !runs.is_empty(),
        "the plan run is audited as {action}: {audit}"
    );
    browser.goto(&dash.page(&format!("/audit?action={action}")));
    let filtered = browser.all("#audit tr[data-seq]", "data-seq");
    assert_eq!(filtered.len(), runs.len());
    assert!(
        browser.text("#audit").expect("table").contains("admin"),
        "the run's actor is shown"
    );
    screenshot(&browser, "audit");
    browser.goto(&dash.page("/"));
    screenshot(&browser, "fleet");

    // A viewer's console: no buttons, and the controller refuses the action anyway.
    let viewer = fleet.path("viewer.identity");
    let out = fleet.cli(&[
        "identity",
        "create",
        "vera",
        "--role",
        "viewer",
        "--out",
        viewer.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vdash = Dashboard::start(&fleet, Some(&viewer));
    browser.goto(&vdash.url);
    assert!(browser.text("header").expect("header").contains("vera"));
    browser.goto(&vdash.page("/devices/web"));
    assert!(
        browser.all("a.button", "href").is_empty(),
        "a viewer gets no action buttons"
    );
    browser.goto(&vdash.page("/drills/new?agent=web"));
    assert!(
        browser
            .text("main")
            .expect("page")
            .contains("may not start drills")
    );
    let before = fleet.cli_json(&["drills"]).as_array().map_or(0, Vec::len);
    browser.follow("#confirm");
    let refused = browser.text("main").expect("error page");
    assert!(refused.contains("the controller answered"), "{refused}");
    assert_eq!(
        fleet.cli_json(&["drills"]).as_array().map_or(0, Vec::len),
        before,
        "the viewer started nothing"
    );
}
