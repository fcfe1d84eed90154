//! What an operator installs besides the binaries: shell completions and man pages generated
//! from the command line's definition, and logs that suit where they go (plain text in a
//! file, JSON lines with `--log-format json`).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lifeboat_tests::bin;

/// The top-level commands `lifeboat --help` lists.
fn commands() -> Vec<String> {
    let out = bin("lifeboat")
        .arg("--help")
        .output()
        .expect("lifeboat --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    let commands = commands();
    assert!(commands.len() > 20, "{commands:?}");
    for shell in ["bash", "zsh", "fish"] {
        let out = bin("lifeboat")
            .args(["completions", shell])
            .output()
            .expect("lifeboat completions");
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8_lossy(&out.stdout);
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
        if shell == "bash" {
            // The script parses.
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("lifeboat.bash");
            std::fs::write(&file, script.as_bytes()).expect("write");
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(&file)
                .output()
                .expect("bash -n");
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let refused = bin("lifeboat")
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("tcsh"));

    let dir = tempfile::tempdir().expect("tempdir");
    let man = dir.path().join("man1");
    let out = bin("lifeboat")
        .arg("man")
        .arg("--out")
        .arg(&man)
        .output()
        .expect("lifeboat man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = |name: &str| {
        std::fs::read_to_string(man.join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("no man page {name}.1: {e}"))
    };
    assert!(page("lifeboat").starts_with(".ie"), "a roff page");
    for c in &commands {
        let text = page(&format!("lifeboat-{c}"));
        assert!(text.contains(".TH"), "lifeboat-{c}.1 has no title");
    }
    // Nested commands get pages too, with their options.
    assert!(page("lifeboat-recover-plan").contains("before"));
}

/// Reads `child`'s stderr lines for up to `within`, then kills it; returns the lines.
fn stderr_lines(mut child: std::process::Child, want: usize, within: Duration) -> Vec<String> {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    while lines.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn logs_are_plain_in_a_file_and_json_lines_when_asked() {
    for json in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = bin("lifeboat-controller");
        if json {
            cmd.args(["--log-format", "json"]);
        }
        let child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("ctl"))
            .env("LIFEBOAT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lifeboat-controller");
        let lines = stderr_lines(child, 5, Duration::from_secs(20));
        assert!(lines.len() >= 3, "the controller logged {lines:?}");
        for line in &lines {
            assert!(
                !line.contains('\u{1b}'),
                "an escape code in a log going to a pipe: {line:?}"
            );
            if json {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(
                    v["timestamp"].is_string() && v["level"].is_string(),
                    "{line}"
                );
                assert!(v["fields"]["message"].is_string(), "{line}");
            } else {
                assert!(line.contains("INFO") || line.contains("WARN"), "{line}");
            }
        }
    }
    let refused = bin("lifeboat-controller")
        .args(["--log-format", "xml", "serve", "--data-dir", "/nonexistent"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("text or json"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// The Kubernetes manifests in `deploy/kubernetes/` validate against the API's schemas
/// (`kubernetes-validate --strict`, from PyPI: unknown fields are errors too). CI installs
/// it and sets `LIFEBOAT_REQUIRE_KUBERNETES_VALIDATE`; elsewhere the test skips loudly.
#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let dir = lifeboat_tests::repo_dir().join("deploy/kubernetes");
    let manifests: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(manifests.len() >= 2, "{manifests:?}");
    let run = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.31.0"])
        .args(&manifests)
        .output();
    let out = match run {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("LIFEBOAT_REQUIRE_KUBERNETES_VALIDATE").is_none(),
                "kubernetes-validate is required and cannot run ({e}): pip install kubernetes-validate==1.31.0"
            );
            eprintln!("SKIPPED: no kubernetes-validate (pip install kubernetes-validate==1.31.0)");
            return;
        }
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    for kind in ["service", "statefulset", "daemonset"] {
        assert!(
            said.contains(&format!("passed for resource {kind}/")),
            "{said}"
        );
    }
}

/// `deploy/release.sh` packs the three binaries (here the test build's), a man page per
/// command, bash, zsh and fish completions and the deployment files into one tarball with
/// its checksum; unpacked, each of its programs runs.
#[test]
fn a_release_tarball_holds_the_binaries_pages_and_completions() {
    let repo = lifeboat_tests::repo_dir();
    let out = tempfile::tempdir().expect("tempdir");
    let run = std::process::Command::new(repo.join("deploy/release.sh"))
        .arg("--bin")
        .arg(lifeboat_tests::bin_dir())
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("deploy/release.sh");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed = String::from_utf8_lossy(&run.stdout);
    let tarball = std::path::PathBuf::from(printed.lines().last().expect("the tarball's path"));
    assert!(tarball.is_file(), "{printed}");
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .expect("NAME.tar.gz")
        .to_string();
    assert!(
        name.starts_with("lifeboat-") && name.contains("-linux-"),
        "{name}"
    );
    let check = std::process::Command::new("sha256sum")
        .args(["-c", &format!("{name}.tar.gz.sha256")])
        .current_dir(out.path())
        .output()
        .expect("sha256sum");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let unpacked = tempfile::tempdir().expect("tempdir");
    let untar = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("tar");
    assert!(untar.success());
    let root = unpacked.path().join(&name);
    for f in [
        "bin/lifeboat",
        "bin/lifeboat-controller",
        "bin/lifeboat-agent",
        "share/man/man1/lifeboat.1",
        "share/man/man1/lifeboat-recover-plan.1",
        "share/bash-completion/completions/lifeboat",
        "share/zsh/site-functions/_lifeboat",
        "share/fish/vendor_completions.d/lifeboat.fish",
        "share/man/man1/lifeboat-controller-serve.1",
        "share/man/man1/lifeboat-agent-run.1",
        "share/bash-completion/completions/lifeboat-controller",
        "share/zsh/site-functions/_lifeboat-agent",
        "deploy/systemd/lifeboat-controller.service",
        "deploy/prometheus/lifeboat-rules.yml",
        "deploy/grafana/lifeboat.json",
        "deploy/kubernetes/agent.yaml",
        "README.md",
    ] {
        assert!(root.join(f).is_file(), "the tarball lacks {f}");
    }
    for b in ["lifeboat", "lifeboat-controller", "lifeboat-agent"] {
        let version = std::process::Command::new(root.join("bin").join(b))
            .arg("--version")
            .output()
            .expect("run the packed binary");
        assert!(
            version.status.success() && String::from_utf8_lossy(&version.stdout).starts_with(b),
            "{b} --version: {}",
            String::from_utf8_lossy(&version.stdout)
        );
    }
    let bad = std::process::Command::new(repo.join("deploy/release.sh"))
        .args(["--bin", "/nonexistent"])
        .output()
        .expect("release.sh");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/lifeboat is missing"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// The controller and the agent have completions and man pages too, one page per command.
#[test]
fn the_controller_and_the_agent_have_completions_and_man_pages() {
    for (program, commands) in [
        (
            "lifeboat-controller",
            &["serve", "rebuild-catalog", "recover"][..],
        ),
        ("lifeboat-agent", &["enroll", "run"][..]),
    ] {
        let out = bin(program)
            .args(["completions", "bash"])
            .output()
            .expect("completions");
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8_lossy(&out.stdout);
        let dir = tempfile::tempdir().expect("tempdir");
        let out = bin(program)
            .arg("man")
            .arg("--out")
            .arg(dir.path())
            .output()
            .expect("man");
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dir.path().join(format!("{program}.1")).is_file());
        for c in commands {
            assert!(script.contains(c), "{program}'s bash completion lacks {c}");
            let page = dir.path().join(format!("{program}-{c}.1"));
            let text = std::fs::read_to_string(&page)
                .unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            assert!(text.contains(".TH"), "{}", page.display());
        }
    }
}
