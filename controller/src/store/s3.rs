//! The store in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph's radosgw, ...).
//!
//! Requests are signed with SigV4 by `rusty-s3` (sans-IO) and sent by `ureq` over rustls
//! on the process's aws-lc-rs provider. Every call is blocking: the store calls it from its
//! sealer thread and from `spawn_blocking`.
//!
//! - A pack is one PUT (packs are tens of MiB: no multipart, no object per chunk) with a
//!   `Content-MD5` the server checks; afterwards a HEAD must report the same length (and,
//!   when the server's ETag is a plain MD5, the same digest) before the pack counts as
//!   stored. Nothing is indexed on the strength of the PUT's answer alone.
//! - Connection failures, timeouts, 5xx, 429 and 503 SlowDown are retried with exponential
//!   backoff and jitter; every request is idempotent (objects are named by content). Other
//!   4xx answers fail at once with the server's own code and message.
//! - Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and
//!   `AWS_SESSION_TOKEN`), else from the shared credentials file
//!   (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile `AWS_PROFILE` or
//!   `default`). They are never logged nor put in `describe`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use md5::Digest as _;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::location::S3Location;
use super::objects::{Listed, Objects, StoreError};

/// How long a signed request URL is valid: long enough for a pack's PUT on a slow link.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// Attempts per request before the store is called unavailable.
const ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The largest object body read into memory (a pack is sealed near 32 MiB; a blob is
/// at most a chunk plus framing).
const MAX_BODY: u64 = 1 << 30;

pub struct S3Objects {
    bucket: Bucket,
    credentials: Credentials,
    /// Key prefix inside the bucket, empty or ending in `/`.
    prefix: String,
    http: ureq::Agent,
    staging: PathBuf,
    described: String,
    /// Pause between retries (shortened by tests through `LIFEBOAT_S3_BACKOFF_MS`).
    first_backoff: Duration,
}

/// One request's outcome: retry it, or give up with this error.
enum Failure {
    Transient(String),
    Final(StoreError),
}

impl S3Objects {
    /// Connects to the bucket and checks that it answers: a missing bucket or refused
    /// credentials fail here, at start, with what to do.
    pub fn open(loc: &S3Location, staging: &Path) -> Result<S3Objects, StoreError> {
        Self::connect(loc, staging, load_credentials()?)
    }

    /// [`S3Objects::open`] with these keys rather than the environment's (tests, and
    /// tools that hold several stores' keys at once).
    pub fn open_with_keys(
        loc: &S3Location,
        staging: &Path,
        access_key: &str,
        secret_key: &str,
    ) -> Result<S3Objects, StoreError> {
        Self::connect(loc, staging, Credentials::new(access_key, secret_key))
    }

    fn connect(
        loc: &S3Location,
        staging: &Path,
        credentials: Credentials,
    ) -> Result<S3Objects, StoreError> {
        let endpoint: url::Url = loc.endpoint.parse().map_err(|e| {
            StoreError::Refused(format!(
                "S3 endpoint {:?} is not a URL ({e}): give --s3-endpoint as https://HOST[:PORT]",
                loc.endpoint
            ))
        })?;
        let style = if loc.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, loc.bucket.clone(), loc.region.clone())
            .map_err(|e| StoreError::Refused(format!("S3 bucket {}: {e}", loc.bucket)))?;
        let http = lifeboat_proto::http::client(loc.ca_file.as_deref())
            .map_err(|e| StoreError::Refused(format!("S3 endpoint TLS: {e}")))?;
        std::fs::create_dir_all(staging)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", staging.display())))?;
        let first_backoff = std::env::var("LIFEBOAT_S3_BACKOFF_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(FIRST_BACKOFF, Duration::from_millis);
        let objects = S3Objects {
            described: loc.to_string(),
            bucket,
            credentials,
            prefix: loc.prefix.clone(),
            http,
            staging: staging.to_owned(),
            first_backoff,
        };
        objects.check_bucket()?;
        Ok(objects)
    }

    fn check_bucket(&self) -> Result<(), StoreError> {
        let url = self
            .bucket
            .head_bucket(Some(&self.credentials))
            .sign(SIGNED_FOR);
        self.retrying("checking the bucket", || {
            let resp = self.send(self.http.head(url.as_str()).call())?;
            match resp.status().as_u16() {
                200..=299 => Ok(()),
                404 => Err(Failure::Final(StoreError::Refused(format!(
                    "bucket {} does not exist at {}: create it (for example `aws s3 mb s3://{}` or `weed mini -bucket={}`) and start again",
                    self.bucket.name(),
                    self.bucket.base_url(),
                    self.bucket.name(),
                    self.bucket.name()
                )))),
                _ => Err(classify(resp, "checking the bucket")),
            }
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A transport failure is transient (the server may be restarting).
    fn send(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        r.map_err(|e| {
            Failure::Transient(format!(
                "the object store at {} did not answer: {e}",
                self.bucket.base_url()
            ))
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or [`ATTEMPTS`] transient
    /// failures in a row; the pause doubles each time (with jitter), up to [`MAX_BACKOFF`].
    fn retrying<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut pause = self.first_backoff;
        let mut last = String::new();
        for n in 1..=ATTEMPTS {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(why)) => {
                    tracing::warn!(attempt = n, of = ATTEMPTS, error = %why, "{what}: retrying");
                    last = why;
                }
            }
            if n < ATTEMPTS {
                std::thread::sleep(jitter(pause));
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
        Err(StoreError::Unavailable(format!(
            "{what}: {last} ({ATTEMPTS} attempts); check that the object store is up and reachable"
        )))
    }

    /// One PUT of `len` bytes with MD5 `digest` (the server checks it), the body made
    /// afresh for every attempt; then a HEAD must report the same length and digest.
    fn put_with<B: ureq::AsSendBody>(
        &self,
        key: &str,
        digest: [u8; 16],
        len: u64,
        mut body: impl FnMut() -> Result<B, StoreError>,
    ) -> Result<(), StoreError> {
        let md5_b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let full = self.key(key);
        let mut action = self.bucket.put_object(Some(&self.credentials), &full);
        action.headers_mut().insert("content-md5", md5_b64.clone());
        let url = action.sign(SIGNED_FOR);
        self.retrying(&format!("storing {key}"), || {
            let body = body().map_err(Failure::Final)?;
            let resp = self.send(
                self.http
                    .put(url.as_str())
                    .header("content-md5", &md5_b64)
                    .send(body),
            )?;
            match resp.status().as_u16() {
                200..=299 => Ok(()),
                _ => Err(classify(resp, &format!("storing {key}"))),
            }
        })?;
        // Confirmed only by what the server says it holds now.
        match self.head(key)? {
            Some((held, etag)) if held == len => {
                let md5_hex = hex::encode(digest);
                let plain_md5 = etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit());
                if plain_md5 && !etag.eq_ignore_ascii_case(&md5_hex) {
                    return Err(StoreError::Corrupt(format!(
                        "{key}: the object store holds content with MD5 {etag}, not the {md5_hex} written"
                    )));
                }
                Ok(())
            }
            Some((held, _)) => Err(StoreError::Corrupt(format!(
                "{key}: the object store holds {held} bytes, not the {len} written"
            ))),
            None => Err(StoreError::Corrupt(format!(
                "{key}: the object store acknowledged it but does not list it"
            ))),
        }
    }

    /// A GET of object `key`, signed for `ttl`.
    fn get_url(&self, key: &str, ttl: Duration) -> url::Url {
        let full = self.key(key);
        self.bucket
            .get_object(Some(&self.credentials), &full)
            .sign(ttl)
    }

    fn head(&self, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        let full = self.key(key);
        let url = self
            .bucket
            .head_object(Some(&self.credentials), &full)
            .sign(SIGNED_FOR);
        self.retrying(&format!("looking up {key}"), || {
            let resp = self.send(self.http.head(url.as_str()).call())?;
            match resp.status().as_u16() {
                200..=299 => {
                    let header = |h: &str| {
                        resp.headers()
                            .get(h)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let len = header("content-length").parse().unwrap_or(u64::MAX);
                    Ok(Some((len, header("etag").trim_matches('"').to_string())))
                }
                404 => Ok(None),
                _ => Err(classify(resp, &format!("looking up {key}"))),
            }
        })
    }
}

impl Objects for S3Objects {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let digest: [u8; 16] = md5::Md5::digest(bytes).into();
        self.put_with(key, digest, bytes.len() as u64, || Ok(bytes))
    }

    fn store_sealed(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        // Streamed from the staged file (read twice: for its digest, then for the PUT):
        // a pack is never held in memory, however long the store keeps it waiting.
        let io = |e: std::io::Error| StoreError::Io(format!("reading {}: {e}", path.display()));
        let stored = (|| {
            let mut file = std::fs::File::open(path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            let mut hasher = md5::Md5::new();
            std::io::copy(&mut file, &mut hasher).map_err(io)?;
            let digest: [u8; 16] = hasher.finalize().into();
            self.put_with(key, digest, len, || std::fs::File::open(path).map_err(io))
        })();
        // The staged copy goes either way: a failed seal forgets its chunks (they are
        // uploaded again), so nothing will ask for this file.
        let _ = std::fs::remove_file(path);
        stored
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let url = self.get_url(key, SIGNED_FOR);
        self.retrying(&format!("reading {key}"), || {
            let resp = self.send(self.http.get(url.as_str()).call())?;
            read_body(resp, key, None)
        })
    }

    fn get_range(&self, key: &str, offset: u64, length: u32) -> Result<Vec<u8>, StoreError> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let url = self.get_url(key, SIGNED_FOR);
        let range = format!("bytes={offset}-{}", offset + length as u64 - 1);
        self.retrying(&format!("reading {key}"), || {
            let resp = self.send(self.http.get(url.as_str()).header("range", &range).call())?;
            read_body(resp, key, Some(length as usize))
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.key(key);
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), &full)
            .sign(SIGNED_FOR);
        self.retrying(&format!("deleting {key}"), || {
            let resp = self.send(self.http.delete(url.as_str()).call())?;
            match resp.status().as_u16() {
                200..=299 | 404 => Ok(()),
                _ => Err(classify(resp, &format!("deleting {key}"))),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let full = self.key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(full.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let page = self.retrying(&format!("listing {prefix}"), || {
                let resp = self.send(self.http.get(url.as_str()).call())?;
                let body = read_body(resp, prefix, None)?;
                rusty_s3::actions::ListObjectsV2::parse_response(&body).map_err(|e| {
                    Failure::Final(StoreError::Corrupt(format!(
                        "listing {prefix}: the object store's answer is not a listing: {e}"
                    )))
                })
            })?;
            for c in page.contents {
                if let Some(key) = c.key.strip_prefix(&self.prefix) {
                    out.push(Listed {
                        key: key.to_string(),
                        size: c.size,
                    });
                }
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    fn staging(&self) -> &Path {
        &self.staging
    }

    fn seal_dir(&self) -> PathBuf {
        self.staging.join("sealed")
    }

    fn describe(&self) -> String {
        self.described.clone()
    }

    fn presign_get(&self, key: &str, ttl: Duration) -> Option<String> {
        Some(self.get_url(key, ttl).to_string())
    }
}

/// A response body, whole (bounded), or why not.
fn read_body(
    resp: ureq::http::Response<ureq::Body>,
    key: &str,
    expect: Option<usize>,
) -> Result<Vec<u8>, Failure> {
    match resp.status().as_u16() {
        200..=299 => {}
        404 => {
            return Err(Failure::Final(StoreError::NotFound {
                key: key.to_string(),
            }));
        }
        _ => return Err(classify(resp, &format!("reading {key}"))),
    }
    let body = resp
        .into_body()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| Failure::Transient(format!("reading {key}: the answer broke off: {e}")))?;
    if let Some(n) = expect
        && body.len() != n
    {
        return Err(Failure::Transient(format!(
            "reading {key}: {} bytes came back, {n} were asked for",
            body.len()
        )));
    }
    Ok(body)
}

/// An unsuccessful answer: transient (5xx, 429, SlowDown) or final, with the server's
/// error code and message.
fn classify(resp: ureq::http::Response<ureq::Body>, what: &str) -> Failure {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .with_config()
        .limit(64 << 10)
        .read_to_string()
        .unwrap_or_default();
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find('<')? + start;
        Some(body[start..end].to_string())
    };
    let code = tag("Code").unwrap_or_default();
    let message = tag("Message").unwrap_or_default();
    let said = format!("{what}: the object store answered {status} {code} {message}")
        .trim_end()
        .to_string();
    match status {
        507 => Failure::Final(StoreError::Full(said)),
        500..=599 | 429 => Failure::Transient(said),
        403 => Failure::Final(StoreError::Refused(format!(
            "{said}: check the S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and their permissions on the bucket"
        ))),
        _ if code == "SlowDown" => Failure::Transient(said),
        _ => Failure::Final(StoreError::Refused(said)),
    }
}

/// `pause` ± 25%.
fn jitter(pause: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let spread = pause.as_millis() as u64 / 2 + 1;
    pause - pause / 4 + Duration::from_millis(u64::from(nanos) % spread)
}

/// The credentials: the standard AWS environment variables, else the shared credentials
/// file. Their absence is an error that says where they are looked for.
fn load_credentials() -> Result<Credentials, StoreError> {
    if let Some(c) = Credentials::from_env() {
        return Ok(c);
    }
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let missing = || {
        StoreError::Refused(format!(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put profile [{profile}] in {}",
            file.as_deref()
                .map_or("~/.aws/credentials".into(), |f| f.display().to_string())
        ))
    };
    let Some(text) = file
        .as_deref()
        .and_then(|f| std::fs::read_to_string(f).ok())
    else {
        return Err(missing());
    };
    let (mut key, mut secret, mut token) = (None, None, None);
    let mut in_profile = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !in_profile {
            continue;
        }
        let v = Some(v.trim().to_string());
        match k.trim() {
            "aws_access_key_id" => key = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    match (key, secret) {
        (Some(k), Some(s)) => Ok(match token {
            Some(t) => Credentials::new_with_token(k, s, t),
            None => Credentials::new(k, s),
        }),
        _ => Err(missing()),
    }
}
