//! A harness for end-to-end tests: a real `lifeboat-controller` and real `lifeboat-agent`
//! processes on loopback (ephemeral ports, temp dirs), driven through the real `lifeboat`
//! CLI, with waits on predicates (never fixed sleeps for readiness).
//!
//! The binaries come from the same target directory as the test executable (built by
//! `cargo build --workspace --bins`, which the test command in README.md runs first), or
//! from `LIFEBOAT_BIN_DIR`.

pub mod browser;
pub mod powercut;
pub mod s3;
pub mod tree;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository's root (deploy files, the proto, the sources).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// `n` distinct ports free right now (bound together, then released), for a server the
/// test starts on them. They are taken below Linux's ephemeral range (32768 and up), where
/// the kernel also picks the local ports of outgoing connections: one of those could take
/// a port between its release here and the server's bind.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut rng = tree::Rng::new(u64::from(std::process::id()) << 32 | now_ms() as u64);
    let mut held: Vec<std::net::TcpListener> = Vec::new();
    for _ in 0..100 * n {
        if held.len() == n {
            break;
        }
        let port = 20_000 + (rng.next_u64() % 12_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "{n} free ports between 20000 and 32000");
    held.iter()
        .map(|l| l.local_addr().expect("port").port())
        .collect()
}

/// Where the three binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LIFEBOAT_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    assert!(
        dir.join("lifeboat-controller").exists()
            && dir.join("lifeboat-agent").exists()
            && dir.join("lifeboat").exists(),
        "binaries not found in {}: run `cargo build --workspace --bins` before the tests",
        dir.display()
    );
    dir
}

pub fn bin(name: &str) -> Command {
    Command::new(bin_dir().join(name))
}

/// Polls `cond` every 50 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running controller and the agents started through it. Everything is killed on drop.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub url: String,
    /// `https://127.0.0.1:PORT` of the controller's metrics port.
    pub metrics_url: String,
    pub fingerprint: String,
    pub identity: PathBuf,
    /// The recovery key's secret (`AGE-SECRET-KEY-1...`), as the first start showed it.
    pub recovery_key: Option<String>,
    /// The controller key the same banner named (hex), for the recovery kit.
    pub controller_key: Option<String>,
    controller: Option<Child>,
    /// Extra `lifeboat-controller serve` arguments, kept across restarts.
    pub serve_args: Vec<String>,
    /// Extra environment for the next controller start (e.g. `LIFEBOAT_CRASH_AT`).
    pub controller_env: Vec<(String, String)>,
    /// Extra environment for the agents started from now on (e.g. libfaketime's).
    pub agent_env: Vec<(String, String)>,
    /// The user and group the agents started from now on run as (through `setpriv`, with
    /// no supplementary groups); root when `None`. Their state directories, sources and
    /// restore roots must be theirs.
    pub agent_user: Option<(u32, u32)>,
    agents: Vec<(String, Child)>,
}

/// TLS settings to speak as the agent whose state directory is `state_dir`, with its own
/// certificate (as an attacker holding that machine would).
pub fn agent_tls(state_dir: &Path) -> lifeboat_proto::transport::ClientTls {
    let read = |f: &str| std::fs::read_to_string(state_dir.join(f)).expect("agent state file");
    let both = read("tls.pem");
    let at = both
        .find("-----BEGIN PRIVATE KEY-----")
        .expect("key in tls.pem");
    lifeboat_proto::transport::ClientTls::with_identity(&read("ca.crt"), &both[..at], &both[at..])
        .expect("agent tls")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An enrolled agent's state directory.
pub struct Agent {
    pub name: String,
    pub state_dir: PathBuf,
}

impl Fleet {
    /// Starts a controller with a fresh data directory.
    pub fn start() -> Fleet {
        Self::start_with(&[])
    }

    /// Starts a controller with extra `serve` arguments (e.g. a short certificate lifetime).
    pub fn start_with(serve_args: &[&str]) -> Fleet {
        Self::start_with_env(serve_args, Vec::new())
    }

    /// Starts a controller whose store is under `prefix` in the bucket of `s3`, with
    /// extra `serve` arguments.
    pub fn start_on_s3(s3: &s3::S3Server, prefix: &str, serve_args: &[&str]) -> Fleet {
        let mut args = s3.serve_args(prefix);
        args.extend(serve_args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with_env(&args, s3.env())
    }

    /// [`Fleet::start_with`] with extra environment for the controller (kept for restarts
    /// and `rebuild-catalog`).
    pub fn start_with_env(serve_args: &[&str], controller_env: Vec<(String, String)>) -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-e2e-")
            .tempdir()
            .expect("tempdir");
        Self::start_in_with(dir, serve_args, controller_env)
    }

    /// Starts a controller on `dir/ctl`, which the test may have prepared (an old data
    /// directory's settings, say).
    pub fn start_in(dir: tempfile::TempDir) -> Fleet {
        Self::start_in_with(dir, &[], Vec::new())
    }

    /// [`Fleet::start_in`] with extra `serve` arguments and controller environment.
    pub fn start_in_with(
        dir: tempfile::TempDir,
        serve_args: &[&str],
        controller_env: Vec<(String, String)>,
    ) -> Fleet {
        let mut fleet = Fleet {
            url: String::new(),
            metrics_url: String::new(),
            fingerprint: String::new(),
            identity: dir.path().join("ctl/admin.identity"),
            recovery_key: None,
            controller_key: None,
            dir,
            controller: None,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            controller_env,
            agent_env: Vec::new(),
            agent_user: None,
            agents: Vec::new(),
        };
        fleet.start_controller();
        fleet
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// (Re)starts the controller on the same data directory.
    pub fn start_controller(&mut self) {
        let log = std::fs::File::create(self.path("controller.log")).expect("log file");
        // A restart keeps the port, so running agents find their controller again.
        let listen = self
            .url
            .rsplit_once(':')
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let mut child = bin("lifeboat-controller")
            .args([
                "serve",
                "--listen",
                &listen,
                "--http",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(self.path("ctl"))
            .args(&self.serve_args)
            .envs(
                self.controller_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("LIFEBOAT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn lifeboat-controller");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut url = None;
        let mut fp = None;
        let mut identity_line = false;
        while !identity_line {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!("controller did not start; log:\n{}", self.controller_log())
                });
            if let Some(u) = line.strip_prefix("lifeboat-controller listening on ") {
                url = Some(u.to_string());
            }
            if let Some(f) = line.strip_prefix("CA fingerprint: ") {
                fp = Some(f.to_string());
            }
            if let Some(k) = line.strip_prefix("recovery key: ") {
                self.recovery_key = Some(k.to_string());
            }
            if let Some(k) = line.strip_prefix("controller key: ") {
                self.controller_key = Some(k.to_string());
            }
            identity_line = line.starts_with("admin identity: ");
            if let Some(m) = line.strip_prefix("metrics: ") {
                self.metrics_url = m.trim_end_matches("/metrics").to_string();
            }
        }
        self.url = url.unwrap_or_default();
        self.fingerprint = fp.unwrap_or_default();
        self.controller = Some(child);
    }

    /// The running controller's resident memory (VmRSS), in bytes.
    pub fn controller_rss(&self) -> u64 {
        let pid = self.controller.as_ref().expect("a controller runs").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// Stops the controller, deletes its catalog (as a lost disk would), and runs
    /// `lifeboat-controller rebuild-catalog`; returns how that ended.
    pub fn lose_catalog_and_rebuild(&mut self) -> Output {
        self.stop_controller();
        for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
            let _ = std::fs::remove_file(self.path("ctl").join(f));
        }
        bin("lifeboat-controller")
            .arg("rebuild-catalog")
            .arg("--data-dir")
            .arg(self.path("ctl"))
            .envs(
                self.controller_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .output()
            .expect("run rebuild-catalog")
    }

    /// Kills the controller, deletes its whole data directory (as a lost machine would),
    /// and runs `lifeboat-controller recover` into a new one with `store_args` (`--store`
    /// and `--s3-*`) and the recovery key printed at the first start; returns how that
    /// ended. [`Fleet::start_controller`] then serves on the same address.
    pub fn lose_controller_and_recover(&mut self, store_args: &[String]) -> Output {
        self.kill_controller();
        std::fs::remove_dir_all(self.path("ctl")).expect("remove the data directory");
        self.recover(store_args, &self.recovery_kit(), &[])
    }

    /// The recovery kit as the first start's banner showed it: the controller key's line,
    /// then the recovery key.
    pub fn recovery_kit(&self) -> String {
        format!(
            "# lifeboat controller key: {}\n{}\n",
            self.controller_key
                .as_deref()
                .expect("the first start printed the controller key"),
            self.recovery_key
                .as_deref()
                .expect("the first start printed a recovery key")
        )
    }

    /// Runs `lifeboat-controller recover` into the data directory `ctl` (which must be
    /// gone), with `key_file` as the recovery key file's text and `extra` arguments.
    pub fn recover(&self, store_args: &[String], key_file: &str, extra: &[&str]) -> Output {
        let key = self.path("recovery.key");
        std::fs::write(&key, key_file).expect("write the recovery key");
        bin("lifeboat-controller")
            .arg("recover")
            .arg("--data-dir")
            .arg(self.path("ctl"))
            .args(store_args)
            .args(extra)
            .arg("--recovery-key")
            .arg(&key)
            .envs(
                self.controller_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .output()
            .expect("run lifeboat-controller recover")
    }

    /// Stops the controller (SIGTERM) and waits for it to exit.
    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&c),
                rustix::process::Signal::TERM,
            );
            let status = c.wait().expect("wait controller");
            assert!(
                status.success(),
                "controller exited with {status}; log:\n{}",
                self.controller_log()
            );
        }
    }

    /// Kills the controller outright (SIGKILL), as a crash or a pulled plug would.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill().expect("kill controller");
            c.wait().expect("wait controller");
        }
    }

    /// The running controller's process id.
    pub fn controller_pid(&self) -> u32 {
        self.controller.as_ref().expect("a controller runs").id()
    }

    /// Waits for a controller that is ending on its own (a crash test) and returns how it
    /// ended.
    pub fn wait_controller_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.controller.take().expect("a controller runs");
        c.wait().expect("wait controller")
    }

    /// Agent `name`'s process id.
    pub fn agent_pid(&self, name: &str) -> u32 {
        let (_, child) = self
            .agents
            .iter()
            .find(|(n, _)| n == name)
            .expect("agent is running");
        child.id()
    }

    /// Sends `signal` to agent `name`'s process (SIGSTOP pauses it mid-backup).
    pub fn signal_agent(&self, name: &str, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.agent_pid(name) as i32).expect("a pid");
        rustix::process::kill_process(pid, signal).expect("signal agent");
    }

    pub fn controller_log(&self) -> String {
        std::fs::read_to_string(self.path("controller.log")).unwrap_or_default()
    }

    /// Runs `lifeboat ARGS` as the admin operator.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run lifeboat")
    }

    /// `lifeboat ARGS` as the admin of this fleet, to spawn with other stdio.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = bin("lifeboat");
        cmd.args(args)
            .env("LIFEBOAT_IDENTITY", &self.identity)
            .env("LIFEBOAT_CONTROLLER", &self.url);
        cmd
    }

    /// Runs `lifeboat ARGS --json` and parses its output; panics with stderr on failure.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "lifeboat {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "lifeboat {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// A fresh join token.
    pub fn token(&self, ttl: &str) -> String {
        self.cli_json(&["token", "create", "--ttl", ttl])["token"]
            .as_str()
            .expect("token")
            .to_string()
    }

    /// Runs `lifeboat-agent enroll` with `token`.
    pub fn enroll_with(&self, name: &str, token: &str) -> Output {
        bin("lifeboat-agent")
            .args([
                "enroll",
                "--controller",
                &self.url,
                "--token",
                token,
                "--ca-fingerprint",
                &self.fingerprint,
                "--name",
                name,
                "--state-dir",
            ])
            .arg(self.path(&format!("agents/{name}")))
            .output()
            .expect("run lifeboat-agent enroll")
    }

    pub fn enroll(&self, name: &str) -> Agent {
        self.enroll_token(name, &self.token("10m"))
    }

    /// Enrolls `name` with `token` (a multi-use one for many machines) or panics.
    pub fn enroll_token(&self, name: &str, token: &str) -> Agent {
        let out = self.enroll_with(name, token);
        assert!(
            out.status.success(),
            "enroll {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Agent {
            name: name.to_string(),
            state_dir: self.path(&format!("agents/{name}")),
        }
    }

    /// Starts `lifeboat-agent run` and waits until the controller sees it connected.
    pub fn run_agent(&mut self, agent: &Agent, sources: &[(&str, &Path)], restore_roots: &[&Path]) {
        self.run_agent_with(agent, sources, restore_roots, &[]);
    }

    /// [`Fleet::run_agent`] with extra `run` arguments (e.g. `--docker-restore`).
    pub fn run_agent_with(
        &mut self,
        agent: &Agent,
        sources: &[(&str, &Path)],
        restore_roots: &[&Path],
        extra: &[&str],
    ) {
        self.spawn_agent(agent, sources, restore_roots, extra);
        let name = agent.name.clone();
        wait_for(
            &format!("agent {name} to connect"),
            Duration::from_secs(30),
            || {
                let agents = self.cli_json(&["agents"]);
                agents
                    .as_array()?
                    .iter()
                    .any(|a| a["name"] == name.as_str() && a["connected"] == true)
                    .then_some(())
            },
        );
    }

    /// Starts `lifeboat-agent run` without waiting for it to connect (many agents at once;
    /// then [`Fleet::wait_connected`]).
    pub fn spawn_agent(
        &mut self,
        agent: &Agent,
        sources: &[(&str, &Path)],
        restore_roots: &[&Path],
        extra: &[&str],
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("agent-{}.log", agent.name)))
            .expect("log");
        let mut cmd = match self.agent_user {
            None => bin("lifeboat-agent"),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--clear-groups", "--"])
                    .arg(bin_dir().join("lifeboat-agent"));
                c
            }
        };
        cmd.arg("run")
            .arg("--state-dir")
            .arg(&agent.state_dir)
            .env("LIFEBOAT_LOG", "info")
            .envs(self.agent_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        for (name, path) in sources {
            cmd.arg("--source")
                .arg(format!("{name}={}", path.display()));
        }
        for r in restore_roots {
            cmd.arg("--restore-root").arg(r);
        }
        cmd.args(extra);
        let child = cmd.spawn().expect("spawn lifeboat-agent");
        self.agents.push((agent.name.clone(), child));
    }

    /// Waits until `n` agents are connected.
    pub fn wait_connected(&self, n: usize) {
        wait_for(
            &format!("{n} agents to connect"),
            Duration::from_secs(120),
            || {
                let agents = self.cli_json(&["agents"]);
                let up = agents
                    .as_array()?
                    .iter()
                    .filter(|a| a["connected"] == true)
                    .count();
                (up >= n).then_some(())
            },
        );
    }

    /// `lifeboat jobs show ID --json` (which exits 2 for a failed or interrupted job).
    pub fn job_info(&self, id: &str) -> Value {
        let out = self.cli(&["jobs", "show", id, "--json"]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("jobs show {id}: {}", String::from_utf8_lossy(&out.stderr)))
    }

    /// Kills an agent process outright (SIGKILL), as a crash or a pulled plug would.
    pub fn kill_agent(&mut self, name: &str) {
        let i = self
            .agents
            .iter()
            .position(|(n, _)| n == name)
            .expect("agent is running");
        let (_, mut child) = self.agents.remove(i);
        child.kill().expect("kill agent");
        child.wait().expect("wait agent");
    }

    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("agent-{name}.log"))).unwrap_or_default()
    }

    /// Runs a job command with `--wait --json`; returns (success, job JSON).
    pub fn job(&self, args: &[&str]) -> (bool, Value) {
        let mut all = args.to_vec();
        all.extend(["--wait", "--json"]);
        let out = self.cli(&all);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "lifeboat {args:?}: no job JSON; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v)
    }

    /// Starts a job command without waiting for it (`ARGS --json`); returns the job's id,
    /// or panics with why the command failed.
    pub fn start_job(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let job: Value = serde_json::from_slice(&out.stdout).expect("job");
        job["id"].as_str().expect("id").to_string()
    }

    /// `lifeboat restore SNAPSHOT --agent AGENT --to TARGET [EXTRA…] --wait --json`; returns
    /// (success, job JSON).
    pub fn restore_to(
        &self,
        snapshot: &str,
        agent: &str,
        target: &Path,
        extra: &[&str],
    ) -> (bool, Value) {
        let to = target.to_str().expect("a UTF-8 target");
        let mut args = vec!["restore", snapshot, "--agent", agent, "--to", to];
        args.extend(extra);
        self.job(&args)
    }

    /// Applies the policy file `text` (`lifeboat policy apply`), or panics with why not.
    pub fn apply_policy(&self, text: &str) {
        let path = self.path("policy.toml");
        std::fs::write(&path, text).expect("policy");
        let out = self.cli(&["policy", "apply", "-f", path.to_str().expect("path")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The id of every listed snapshot (`lifeboat snapshots`).
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.cli_json(&["snapshots"])
            .as_array()
            .expect("a list of snapshots")
            .iter()
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect()
    }

    /// The bytes the store holds for every indexed chunk (as stored: sealed, compressed).
    pub fn stored_bytes(&self) -> u64 {
        self.chunk_index().iter().map(|c| c.3).sum()
    }

    /// Waits out the GC lease (`--gc-lease`, as `lease`), runs `lifeboat gc`, and asserts it
    /// left no orphan: a second GC (dry run) finds nothing to sweep nor still leased, and the
    /// chunk index holds exactly the chunks the snapshots reference. Returns the first GC's
    /// JSON and how long it took.
    pub fn gc_past_the_lease(&self, lease: Duration, when: &str) -> (Value, Duration) {
        std::thread::sleep(lease + Duration::from_millis(100));
        let started = Instant::now();
        let first = self.cli_json(&["gc"]);
        let took = started.elapsed();
        let second = self.cli_json(&["gc", "--dry-run"]);
        assert_eq!(
            (second["swept"].as_u64(), second["leased"].as_u64()),
            (Some(0), Some(0)),
            "{when}: orphans outlived a GC past the lease: first {first}, then {second}"
        );
        assert_eq!(
            Some(self.chunk_index().len() as u64),
            second["referenced"].as_u64(),
            "{when}: the index holds other chunks than the snapshots reference: {second}"
        );
        (first, took)
    }

    /// Backs up and returns the snapshot info of the new snapshot.
    pub fn backup(&self, agent: &str, source: &str) -> Value {
        let (ok, job) = self.job(&["backup", agent, "--source", source]);
        assert!(
            ok,
            "backup failed: {job}\nagent log:\n{}",
            self.agent_log(agent)
        );
        let id = job["snapshot_ids"][0]
            .as_str()
            .expect("snapshot id")
            .to_string();
        let snaps = self.cli_json(&["snapshots", "--agent", agent, "--source", source]);
        snaps
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id.as_str()).cloned())
            .expect("snapshot listed")
    }
}

impl Fleet {
    /// `(chunk id hex, pack, offset, length)` of every indexed chunk, from the catalog.
    pub fn chunk_index(&self) -> Vec<(String, String, u64, u64)> {
        let db = rusqlite::Connection::open(self.path("ctl/catalog.db")).expect("catalog");
        let mut st = db
            .prepare("SELECT lower(hex(id)), pack, offset, length FROM chunks")
            .expect("query");
        st.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    /// The store's data key, unwrapped with the controller's own age identity (as root on
    /// the controller's machine could); `None` for a plaintext store.
    pub fn data_key(&self) -> Option<lifeboat_core::seal::DataKey> {
        let wrapped = std::fs::read(self.path("ctl/store-key.age")).ok()?;
        let identity = std::fs::read_to_string(self.path("ctl/controller-age.key"))
            .expect("the controller's age identity");
        let identity = lifeboat_core::age::Identity::parse(&identity).expect("identity");
        let key = lifeboat_core::age::decrypt(&wrapped, &identity).expect("unwrap");
        Some(lifeboat_core::seal::DataKey::from_slice(&key).expect("data key"))
    }

    /// Where snapshot `id`'s envelope lives in the default store directory.
    pub fn envelope_path(&self, id: &str) -> PathBuf {
        self.path(&format!("ctl/store/snapshots/{id}.snap"))
    }

    /// Snapshot `id`'s envelope, read from the store directory (and opened).
    pub fn read_envelope(&self, id: &str) -> lifeboat_core::snapshot::Envelope {
        let stored = std::fs::read(self.envelope_path(id)).expect("envelope file");
        let bytes = match self.data_key() {
            Some(k) => k.open_envelope(id, &stored).expect("envelope opens"),
            None => stored,
        };
        lifeboat_core::snapshot::Envelope::parse(&bytes).expect("envelope parses")
    }

    /// `env` as the store would hold it under snapshot `id` (sealed with the data key, as
    /// an attacker holding it would seal a forgery).
    pub fn sealed_envelope(&self, id: &str, env: &lifeboat_core::snapshot::Envelope) -> Vec<u8> {
        match self.data_key() {
            Some(k) => k.seal_envelope(id, &env.to_bytes()).expect("seal"),
            None => env.to_bytes(),
        }
    }

    /// Where pack `pack` lives in the default store directory.
    pub fn pack_path(&self, pack: &str) -> PathBuf {
        self.path(&format!("ctl/store/packs/{}/{pack}.pack", &pack[..2]))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(c) = &mut self.controller {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Agent `name` as a bare gRPC session (no agent process) that reported one host path
/// source, with a backup job of it running: for tests that upload or commit by hand inside
/// a job, as a compromised agent would. The job runs while this lives.
pub struct RawJob {
    pub api: lifeboat_proto::pb::agent_api_client::AgentApiClient<tonic::transport::Channel>,
    pub job_id: String,
    /// Further messages of the session (job updates), as the agent would send them.
    pub tx: tokio::sync::mpsc::Sender<lifeboat_proto::pb::AgentMessage>,
    _session: tonic::Streaming<lifeboat_proto::pb::ControllerMessage>,
}

impl RawJob {
    /// Opens the session, starts the backup of `source` as the admin and waits for the
    /// job to be delivered. Needs a multi-threaded runtime.
    pub async fn start(fleet: &Fleet, name: &str, source: &str) -> RawJob {
        let hello = lifeboat_proto::pb::Hello {
            sources: vec![lifeboat_proto::pb::Source {
                name: source.into(),
                kind: "path".into(),
                path: format!("/{source}"),
            }],
            ..Default::default()
        };
        let job = ["backup", name, "--source", source, "--json"];
        Self::open(fleet, name, hello, &job).await
    }

    /// Opens the session of agent `name` (restore root `root`) and has the admin start
    /// a restore of `snapshot` onto it, below `root`; waits for the job to be delivered.
    pub async fn restore(fleet: &Fleet, name: &str, snapshot: &str, root: &Path) -> RawJob {
        let hello = lifeboat_proto::pb::Hello {
            restore_roots: vec![root.display().to_string()],
            ..Default::default()
        };
        let target = root.join("raw-restore").display().to_string();
        let job = [
            "restore", snapshot, "--agent", name, "--to", &target, "--json",
        ];
        Self::open(fleet, name, hello, &job).await
    }

    async fn open(
        fleet: &Fleet,
        name: &str,
        hello: lifeboat_proto::pb::Hello,
        job_command: &[&str],
    ) -> RawJob {
        use lifeboat_proto::pb;
        let channel = lifeboat_proto::transport::connect(
            &fleet.url,
            agent_tls(&fleet.path(&format!("agents/{name}"))),
        )
        .await
        .expect("connect as the agent");
        let mut api = pb::agent_api_client::AgentApiClient::new(channel)
            .max_decoding_message_size(lifeboat_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(usize::MAX);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(hello)),
        })
        .await
        .expect("hello");
        let mut session = api
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        let job_id = tokio::task::block_in_place(|| {
            wait_for(
                "the raw agent's session to be known",
                Duration::from_secs(10),
                || {
                    let out = fleet.cli(job_command);
                    out.status.success().then(|| {
                        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
                        v["id"].as_str().expect("job id").to_string()
                    })
                },
            )
        });
        next_job(&mut session).await;
        RawJob {
            api,
            job_id,
            tx,
            _session: session,
        }
    }

    /// `message` as a request of this job (`lifeboat-job` metadata, as `PutChunks` needs).
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(
            lifeboat_proto::JOB_METADATA,
            self.job_id.parse().expect("job id metadata"),
        );
        req
    }
}

/// The next job a session hand-driven by a test is sent, past what else a session says
/// (which CAs to trust, heartbeat acknowledgements); panics after 20 s.
pub async fn next_job(
    session: &mut tonic::Streaming<lifeboat_proto::pb::ControllerMessage>,
) -> lifeboat_proto::pb::Job {
    use lifeboat_proto::pb::controller_message::Msg;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let msg = session.message().await.expect("stream").expect("message");
            if let Some(Msg::Job(job)) = msg.msg {
                return job;
            }
        }
    })
    .await
    .expect("a job delivered within 20 s")
}

/// The value of an unlabelled counter or gauge `name` in a `/metrics` text; panics,
/// quoting the text, when it is not there.
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
}

/// `GET /metrics` from the controller's HTTPS port as the fleet's admin (its identity's
/// client certificate), verified against the fleet CA.
pub fn metrics(fleet: &Fleet) -> String {
    let admin = lifeboat_core::identity::IdentityFile::load(&fleet.identity).expect("identity");
    https_get(
        fleet,
        "/metrics",
        &admin.ca_pem,
        Some((&admin.cert_pem, &admin.key_pem)),
    )
}

/// `GET path` from the controller's HTTPS port, verified against `ca_pem`, presenting the
/// client certificate and key given (PEM), if any. The whole response: status line,
/// headers and body.
pub fn https_get(fleet: &Fleet, path: &str, ca_pem: &str, client: Option<(&str, &str)>) -> String {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    lifeboat_proto::transport::install_crypto_provider();
    let addr = fleet
        .metrics_url
        .strip_prefix("https://")
        .expect("https metrics URL")
        .to_string();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(lifeboat_core::pki::cert_der(ca_pem).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client certificate"),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .expect("client key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: controller.lifeboat\r\nConnection: close\r\n\r\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let name = rustls::pki_types::ServerName::try_from(lifeboat_core::pki::CONTROLLER_NAME)
            .expect("name");
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("tls");
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut body = Vec::new();
        let _ = tls.read_to_end(&mut body).await;
        String::from_utf8_lossy(&body).into_owned()
    })
}

/// Builds the `LD_PRELOAD` library `lib{name}.so` from C `source` with gcc; returns its
/// directory (removed when dropped) and the library, or None when there is no gcc (after
/// a loud message; CI, which sets `LIFEBOAT_REQUIRE_MOUNT` and installs gcc for the Docker
/// tests, panics instead).
pub fn preload_shim(name: &str, source: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir().expect("shim dir");
    let src_c = dir.path().join(format!("{name}.c"));
    let lib = dir.path().join(format!("lib{name}.so"));
    std::fs::write(&src_c, source).expect("write shim");
    let built = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src_c)
        .arg("-ldl")
        .output();
    match built {
        Ok(out) if out.status.success() => Some((dir, lib)),
        other => {
            assert!(
                std::env::var_os("LIFEBOAT_REQUIRE_MOUNT").is_none(),
                "gcc could not build the {name} shim: {other:?}"
            );
            eprintln!("\n!!! SKIPPED: this test needs gcc to build its LD_PRELOAD shim\n");
            None
        }
    }
}

/// A small tmpfs mounted for one test (a filesystem that fills up on purpose), unmounted
/// on drop. Needs root: `None` (after a loud message) where mounting is not allowed, unless
/// `LIFEBOAT_REQUIRE_MOUNT` is set (CI sets it), where it panics instead.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size_mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(path)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Tmpfs {
                path: path.to_owned(),
            });
        }
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var_os("LIFEBOAT_REQUIRE_MOUNT").is_none(),
            "mounting a tmpfs at {} failed: {why}",
            path.display()
        );
        eprintln!(
            "\n!!! SKIPPED: this test needs to mount a small tmpfs (root): {why}\n!!! set LIFEBOAT_REQUIRE_MOUNT=1 to make this a failure\n"
        );
        None
    }

    /// Fills the filesystem, leaving about `leave` bytes free, with a file that
    /// [`Tmpfs::free`] removes.
    pub fn fill(&self, leave: u64) {
        let st = rustix::fs::statvfs(&self.path).expect("statvfs");
        let avail = st.f_bavail * st.f_frsize;
        let n = avail.saturating_sub(leave);
        let f = std::fs::File::create(self.path.join("filler")).expect("filler");
        // Written, not ftruncate'd: a hole would take no space.
        let block = vec![0x5a_u8; 1 << 20];
        let mut w = std::io::BufWriter::new(f);
        let mut left = n;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            std::io::Write::write_all(&mut w, &block[..k]).expect("write filler");
            left -= k as u64;
        }
        std::io::Write::flush(&mut w).expect("flush filler");
    }

    /// Removes the filler file.
    pub fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of the test may still hold a file open there.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// How many times a fault test repeats its fault: `quick` by default (what `.ci/run` runs),
/// the checklist's `soak` count with `LIFEBOAT_SOAK=1`, or exactly
/// `LIFEBOAT_<ROW>_ITERATIONS` (e.g. `LIFEBOAT_A1_ITERATIONS=50`) for one row.
pub fn iterations(row: &str, quick: usize, soak: usize) -> usize {
    let var = format!("LIFEBOAT_{row}_ITERATIONS");
    if let Ok(v) = std::env::var(&var) {
        return v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?}: a number of iterations"));
    }
    match soaking() {
        true => soak,
        false => quick,
    }
}

/// Whether the fault suite runs in soak mode (`LIFEBOAT_SOAK=1`).
pub fn soaking() -> bool {
    std::env::var("LIFEBOAT_SOAK").is_ok_and(|v| v == "1")
}
