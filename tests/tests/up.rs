//! `lifeboat up`: the single-machine default starts, backs up at once, stops cleanly on
//! Ctrl-C, and reuses its data when started again.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use lifeboat_tests::{bin, wait_for};

fn start_up(data: &std::path::Path, src: &std::path::Path) -> (Child, String) {
    let mut child = bin("lifeboat")
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--source")
        .arg(format!("docs={}", src.display()))
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data.with_extension("stderr"))
                .expect("stderr file"),
        )
        .spawn()
        .expect("spawn lifeboat up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut fingerprint = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(fp) = line.trim().strip_prefix("CA fingerprint: ") {
            fingerprint = fp.to_string();
        }
        if line.starts_with("Ctrl-C stops both") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    assert!(
        !fingerprint.is_empty(),
        "lifeboat up did not print its CA fingerprint"
    );
    (child, fingerprint)
}

fn snapshots(data: &std::path::Path) -> Vec<serde_json::Value> {
    let out = bin("lifeboat")
        .args(["snapshots", "--json"])
        .env("LIFEBOAT_IDENTITY", data.join("admin.identity"))
        .output()
        .expect("snapshots");
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn interrupt(mut child: Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "lifeboat up exited with {status} after Ctrl-C"
    );
}

#[test]
fn up_backs_up_stops_cleanly_and_reuses_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, src) = (dir.path().join("data"), dir.path().join("src"));
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("notes.txt"), b"first hour with lifeboat\n").expect("write");

    let (child, fp1) = start_up(&data, &src);
    let first = wait_for("the first backup", Duration::from_secs(60), || {
        let s = snapshots(&data);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(first[0]["source"], "docs");
    assert_eq!(first[0]["files"], 1);
    interrupt(child);

    let (child, fp2) = start_up(&data, &src);
    assert_eq!(fp1, fp2, "a second start must reuse the same CA");
    wait_for("the second backup", Duration::from_secs(60), || {
        (snapshots(&data).len() == 2).then_some(())
    });
    interrupt(child);
    // Its summary, not the controller's and agent's INFO lines (catalog migrations...).
    let stderr = std::fs::read_to_string(data.with_extension("stderr")).expect("stderr");
    assert!(
        !stderr.contains("INFO"),
        "lifeboat up logged INFO lines by default:\n{stderr}"
    );
}
