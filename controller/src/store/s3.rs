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
//! - On a bucket created with Object Lock (checked at open), every object is written with
//!   COMPLIANCE retention until the date the store asks, and its version is returned: the
//!   store reads and deletes that version only, so a later overwrite or delete marker
//!   under the same key changes nothing it reads. The retention the server holds is read
//!   back (HEAD) before a write counts, and again after every extension.
//! - Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and
//!   `AWS_SESSION_TOKEN`), else from the shared credentials file
//!   (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile `AWS_PROFILE` or
//!   `default`). They are never logged nor put in `describe`.
//!
//! One file past 600 lines because it is one backend: signing, the retry loop, the checked
//! PUT and the Object Lock calls share the request plumbing above them.

use lifeboat_proto::http::{ErrorAnswer, xml_tag};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use md5::Digest as _;
use rusty_s3::{Bucket, Credentials, Method, S3Action, UrlStyle};

use super::location::S3Location;
use super::objects::{Listed, Objects, StoreError, Stored};

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
    /// The bucket has Object Lock (and so versioning).
    object_lock: bool,
    /// Requests sent, by [`Op`], retries included.
    requests: [AtomicU64; Op::ALL.len()],
}

/// The kinds of request an object store's provider bills apart.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Put,
    Head,
    List,
    Delete,
}

impl Op {
    const ALL: [Op; 5] = [Op::Get, Op::Put, Op::Head, Op::List, Op::Delete];

    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }
}

/// What a HEAD of one object version reports.
struct Head {
    len: u64,
    etag: String,
    version: String,
    /// COMPLIANCE retention's end (0: none).
    retained_until_ms: i64,
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
        Self::connect(loc, staging, load_credentials(None)?)
    }

    /// [`S3Objects::open`] with the keys of `profile` in the shared credentials file only
    /// (a second store with credentials of its own: never the environment's).
    pub fn open_profile(
        loc: &S3Location,
        staging: &Path,
        profile: &str,
    ) -> Result<S3Objects, StoreError> {
        Self::connect(loc, staging, load_credentials(Some(profile))?)
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
        let mut objects = S3Objects {
            described: loc.to_string(),
            bucket,
            credentials,
            prefix: loc.prefix.clone(),
            http,
            staging: staging.to_owned(),
            first_backoff,
            object_lock: false,
            requests: Default::default(),
        };
        objects.check_bucket()?;
        objects.object_lock = objects.check_object_lock()?;
        Ok(objects)
    }

    /// A request URL signed for `ttl`: on object `key` (with the prefix), or on the bucket
    /// itself. `query` and `headers` are signed with it (any order; header names lowercase).
    fn signed(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        ttl: Duration,
    ) -> Result<url::Url, StoreError> {
        let url = match key {
            Some(k) => self
                .bucket
                .object_url(&self.key(k))
                .map_err(|e| StoreError::Refused(format!("object key {k:?}: {e}")))?,
            None => self.bucket.base_url().clone(),
        };
        let (mut query, mut headers) = (query.to_vec(), headers.to_vec());
        query.sort();
        headers.sort();
        Ok(rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            url,
            self.credentials.key(),
            self.credentials.secret(),
            self.credentials.token(),
            self.bucket.region(),
            ttl.as_secs(),
            query.into_iter(),
            headers.into_iter(),
        ))
    }

    /// A GET of `version` of object `key` (empty: the current one), signed for `ttl`.
    fn get_url(&self, key: &str, version: &str, ttl: Duration) -> Result<url::Url, StoreError> {
        self.signed(Method::Get, Some(key), &version_query(version), &[], ttl)
    }

    /// Whether the bucket was created with Object Lock.
    fn check_object_lock(&self) -> Result<bool, StoreError> {
        let url = self.signed(Method::Get, None, &[("object-lock", "")], &[], SIGNED_FOR)?;
        self.retrying("checking the bucket's Object Lock", || {
            let resp = self.send(Op::Get, self.http.get(url.as_str()).call())?;
            match resp.status().as_u16() {
                200..=299 => {
                    let body = read_body(resp, "the Object Lock configuration", None)?;
                    let text = String::from_utf8_lossy(&body);
                    Ok(xml_tag(&text, "ObjectLockEnabled").as_deref() == Some("Enabled"))
                }
                // No configuration, or a server without Object Lock at all.
                404 | 501 => Ok(false),
                _ => Err(classify(resp, "checking the bucket's Object Lock")),
            }
        })
    }

    fn check_bucket(&self) -> Result<(), StoreError> {
        let url = self
            .bucket
            .head_bucket(Some(&self.credentials))
            .sign(SIGNED_FOR);
        self.retrying("checking the bucket", || {
            let resp = self.send(Op::Head, self.http.head(url.as_str()).call())?;
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

    /// Counts a request of kind `op` that was sent, and judges how it went: a transport
    /// failure is transient (the server may be restarting).
    fn send(
        &self,
        op: Op,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
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
        let mut backoff = lifeboat_core::backoff::Backoff::new(self.first_backoff, MAX_BACKOFF);
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
                std::thread::sleep(backoff.pause());
            }
        }
        Err(StoreError::Unavailable(format!(
            "{what}: {last} ({ATTEMPTS} attempts); check that the object store is up and reachable"
        )))
    }

    /// One PUT of `len` bytes with MD5 `digest` (the server checks it), the body made
    /// afresh for every attempt, with COMPLIANCE retention until `retain_until_ms` on an
    /// Object Lock bucket; then a HEAD of the version written must report the same length,
    /// digest and (at least) that retention.
    fn put_with<B: ureq::AsSendBody>(
        &self,
        key: &str,
        digest: [u8; 16],
        len: u64,
        retain_until_ms: i64,
        mut body: impl FnMut() -> Result<B, StoreError>,
    ) -> Result<Stored, StoreError> {
        let md5_b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let until = rfc3339_ceil(retain_until_ms);
        let mut headers = vec![("content-md5", md5_b64.as_str())];
        let locking = self.object_lock && retain_until_ms > 0;
        if locking {
            headers.push(("x-amz-object-lock-mode", "COMPLIANCE"));
            headers.push(("x-amz-object-lock-retain-until-date", until.as_str()));
        }
        let url = self.signed(Method::Put, Some(key), &[], &headers, SIGNED_FOR)?;
        let version = self.retrying(&format!("storing {key}"), || {
            let body = body().map_err(Failure::Final)?;
            let mut req = self.http.put(url.as_str());
            for (h, v) in &headers {
                req = req.header(*h, *v);
            }
            let resp = self.send(Op::Put, req.send(body))?;
            match resp.status().as_u16() {
                200..=299 => Ok(header(&resp, "x-amz-version-id")),
                _ => Err(classify(resp, &format!("storing {key}"))),
            }
        })?;
        // Versions matter only where the store keeps old ones for us (Object Lock).
        let version = if self.object_lock && version != "null" {
            version
        } else {
            String::new()
        };
        // Confirmed only by what the server says it holds now.
        let Some(head) = self.head(key, &version)? else {
            return Err(StoreError::Corrupt(format!(
                "{key}: the object store acknowledged it but does not list it"
            )));
        };
        if head.len != len {
            return Err(StoreError::Corrupt(format!(
                "{key}: the object store holds {} bytes, not the {len} written",
                head.len
            )));
        }
        let md5_hex = hex::encode(digest);
        let plain_md5 = head.etag.len() == 32 && head.etag.bytes().all(|b| b.is_ascii_hexdigit());
        if plain_md5 && !head.etag.eq_ignore_ascii_case(&md5_hex) {
            return Err(StoreError::Corrupt(format!(
                "{key}: the object store holds content with MD5 {}, not the {md5_hex} written",
                head.etag
            )));
        }
        if locking && head.retained_until_ms < retain_until_ms {
            return Err(StoreError::Refused(format!(
                "{key}: the object store did not keep the retention asked for (until {until}; it reports {}): check that the bucket enforces Object Lock",
                crate::when(head.retained_until_ms)
            )));
        }
        Ok(Stored {
            version: head.version,
            retained_until_ms: head.retained_until_ms,
        })
    }

    /// A listing of a versioned bucket (Object Lock): every key that has a version under
    /// `prefix`, with its **oldest** version, whatever was written or deleted on top of it
    /// since (objects are named by their content, so the first version is the one
    /// Lifeboat wrote; a delete marker hides a key from a plain listing, not from this).
    fn list_versions(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let full = self.key(prefix);
        let mut oldest: std::collections::BTreeMap<String, Listed> = Default::default();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut query = vec![("versions", ""), ("prefix", full.as_str())];
            if let Some((k, v)) = &marker {
                query.push(("key-marker", k.as_str()));
                query.push(("version-id-marker", v.as_str()));
            }
            let url = self.signed(Method::Get, None, &query, &[], SIGNED_FOR)?;
            let body = self.retrying(&format!("listing versions of {prefix}"), || {
                let resp = self.send(Op::List, self.http.get(url.as_str()).call())?;
                read_body(resp, prefix, None)
            })?;
            let text = String::from_utf8_lossy(&body).into_owned();
            // Versions of a key come newest first: the last one seen is the oldest.
            for block in text.split("<Version>").skip(1) {
                let block = block.split("</Version>").next().unwrap_or_default();
                let (Some(key), Some(version)) =
                    (xml_tag(block, "Key"), xml_tag(block, "VersionId"))
                else {
                    continue;
                };
                let Some(key) = key.strip_prefix(&self.prefix) else {
                    continue;
                };
                let size = xml_tag(block, "Size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                oldest.insert(
                    key.to_string(),
                    Listed {
                        key: key.to_string(),
                        size,
                        version,
                    },
                );
            }
            let truncated = xml_tag(&text, "IsTruncated").as_deref() == Some("true");
            match (
                truncated,
                xml_tag(&text, "NextKeyMarker"),
                xml_tag(&text, "NextVersionIdMarker"),
            ) {
                (true, Some(k), Some(v)) => marker = Some((k, v)),
                _ => break,
            }
        }
        Ok(oldest.into_values().collect())
    }

    fn head(&self, key: &str, version: &str) -> Result<Option<Head>, StoreError> {
        let query = version_query(version);
        let url = self.signed(Method::Head, Some(key), &query, &[], SIGNED_FOR)?;
        self.retrying(&format!("looking up {key}"), || {
            let resp = self.send(Op::Head, self.http.head(url.as_str()).call())?;
            match resp.status().as_u16() {
                200..=299 => {
                    let until = header(&resp, "x-amz-object-lock-retain-until-date");
                    let compliance = header(&resp, "x-amz-object-lock-mode") == "COMPLIANCE";
                    Ok(Some(Head {
                        len: header(&resp, "content-length").parse().unwrap_or(u64::MAX),
                        etag: header(&resp, "etag").trim_matches('"').to_string(),
                        version: match header(&resp, "x-amz-version-id") {
                            v if v == "null" || !self.object_lock => String::new(),
                            v => v,
                        },
                        retained_until_ms: if compliance { parse_time_ms(&until) } else { 0 },
                    }))
                }
                404 => Ok(None),
                _ => Err(classify(resp, &format!("looking up {key}"))),
            }
        })
    }
}

/// `versionId` for a request on one version (none for the current one).
fn version_query(version: &str) -> Vec<(&'static str, &str)> {
    if version.is_empty() {
        Vec::new()
    } else {
        vec![("versionId", version)]
    }
}

/// A response header as text ("" when absent).
fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `unix_ms` as RFC 3339 in whole seconds, rounded up (a retention is never shorter than
/// asked for).
fn rfc3339_ceil(unix_ms: i64) -> String {
    let secs = (unix_ms.max(0) as u64).div_ceil(1000);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// An RFC 3339 time in Unix milliseconds (0 when it is not one).
fn parse_time_ms(s: &str) -> i64 {
    s.trim()
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .unwrap_or(0)
}

impl Objects for S3Objects {
    fn put(&self, key: &str, bytes: &[u8], retain_until_ms: i64) -> Result<Stored, StoreError> {
        let digest: [u8; 16] = md5::Md5::digest(bytes).into();
        self.put_with(key, digest, bytes.len() as u64, retain_until_ms, || {
            Ok(bytes)
        })
    }

    fn store_sealed(
        &self,
        key: &str,
        path: &Path,
        retain_until_ms: i64,
    ) -> Result<Stored, StoreError> {
        // Streamed from the staged file (read twice: for its digest, then for the PUT):
        // a pack is never held in memory, however long the store keeps it waiting.
        let io = |e: std::io::Error| StoreError::Io(format!("reading {}: {e}", path.display()));
        let stored = (|| {
            let mut file = std::fs::File::open(path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            let mut hasher = md5::Md5::new();
            std::io::copy(&mut file, &mut hasher).map_err(io)?;
            let digest: [u8; 16] = hasher.finalize().into();
            self.put_with(key, digest, len, retain_until_ms, || {
                std::fs::File::open(path).map_err(io)
            })
        })();
        // The staged copy goes either way: a failed seal forgets its chunks (they are
        // uploaded again), so nothing will ask for this file.
        let _ = std::fs::remove_file(path);
        stored
    }

    fn get(&self, key: &str, version: &str) -> Result<Vec<u8>, StoreError> {
        let url = self.get_url(key, version, SIGNED_FOR)?;
        self.retrying(&format!("reading {key}"), || {
            let resp = self.send(Op::Get, self.http.get(url.as_str()).call())?;
            read_body(resp, key, None)
        })
    }

    fn get_range(
        &self,
        key: &str,
        version: &str,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, StoreError> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let url = self.get_url(key, version, SIGNED_FOR)?;
        let range = format!("bytes={offset}-{}", offset + length as u64 - 1);
        self.retrying(&format!("reading {key}"), || {
            let resp = self.send(
                Op::Get,
                self.http.get(url.as_str()).header("range", &range).call(),
            )?;
            read_body(resp, key, Some(length as usize))
        })
    }

    fn delete(&self, key: &str, version: &str) -> Result<(), StoreError> {
        // With versioning, a DELETE without a version only hides the object behind a
        // delete marker: name the current version (one a rebuilt catalog did not record).
        let current;
        let version = match (self.object_lock, version) {
            (true, "") => match self.head(key, "")? {
                Some(h) => {
                    current = h.version;
                    current.as_str()
                }
                None => return Ok(()),
            },
            _ => version,
        };
        let url = self.signed(
            Method::Delete,
            Some(key),
            &version_query(version),
            &[],
            SIGNED_FOR,
        )?;
        self.retrying(&format!("deleting {key}"), || {
            let resp = self.send(Op::Delete, self.http.delete(url.as_str()).call())?;
            match resp.status().as_u16() {
                200..=299 | 404 => Ok(()),
                403 if self.object_lock => Err(Failure::Final(StoreError::Locked(format!(
                    "the object store refused to delete {key}: it is under Object Lock retention (or these credentials may not delete)"
                )))),
                _ => Err(classify(resp, &format!("deleting {key}"))),
            }
        })
    }

    fn object_lock(&self) -> bool {
        self.object_lock
    }

    fn stat(&self, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self.head(key, "")?.map(|h| (h.len, h.version)))
    }

    fn retain(&self, key: &str, version: &str, until_ms: i64) -> Result<i64, StoreError> {
        let until = rfc3339_ceil(until_ms);
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>"
        );
        let md5_b64 =
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body.as_bytes()));
        let mut query = version_query(version);
        query.push(("retention", ""));
        let headers = [("content-md5", md5_b64.as_str())];
        let url = self.signed(Method::Put, Some(key), &query, &headers, SIGNED_FOR)?;
        let what = format!("extending the retention of {key}");
        self.retrying(&what, || {
            let resp = self.send(
                Op::Put,
                self.http
                    .put(url.as_str())
                    .header("content-md5", &md5_b64)
                    .send(body.as_bytes()),
            )?;
            match resp.status().as_u16() {
                200..=299 => Ok(()),
                _ => Err(classify(resp, &what)),
            }
        })?;
        // Never trusted from the request alone: read back what the server holds.
        let held = self.head(key, version)?.map_or(0, |h| h.retained_until_ms);
        if held < until_ms {
            return Err(StoreError::Refused(format!(
                "{key}: the object store reports retention until {}, not the {until} asked for",
                crate::when(held)
            )));
        }
        Ok(held)
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        if self.object_lock {
            return self.list_versions(prefix);
        }
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
                let resp = self.send(Op::List, self.http.get(url.as_str()).call())?;
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
                        version: String::new(),
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

    fn requests(&self) -> Vec<(&'static str, u64)> {
        Op::ALL
            .iter()
            .map(|op| {
                (
                    op.name(),
                    self.requests[*op as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    fn presign_get(&self, key: &str, version: &str, ttl: Duration) -> Option<String> {
        self.get_url(key, version, ttl).ok().map(|u| u.to_string())
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
    let ErrorAnswer {
        status,
        date: server_date,
        code,
        message,
    } = ErrorAnswer::read(resp);
    let said = format!("{what}: the object store answered {status} {code} {message}")
        .trim_end()
        .to_string();
    let now = jiff::Timestamp::now();
    match status {
        // Refused by the store's clock: S3's own word for it, or any refusal by a store
        // whose clock reads further from ours than a signed request lasts.
        _ if code == "RequestTimeTooSkewed"
            || (status == 403
                && seconds_apart(server_date.as_deref(), now)
                    .is_some_and(|s| s.unsigned_abs() >= SIGNED_FOR.as_secs())) =>
        {
            Failure::Final(StoreError::Refused(format!(
                "{said}: {}",
                clocks_apart(server_date.as_deref(), now)
            )))
        }
        507 => Failure::Final(StoreError::Full(said)),
        500..=599 | 429 => Failure::Transient(said),
        403 => Failure::Final(StoreError::Refused(format!(
            "{said}: check the S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and their permissions on the bucket"
        ))),
        _ if code == "SlowDown" => Failure::Transient(said),
        _ => Failure::Final(StoreError::Refused(said)),
    }
}

/// What to tell an operator whose requests the object store refused as signed too far
/// from its own time: both clocks, as the store's `Date` header and ours say, and what to
/// do (S3 allows 15 minutes either way).
fn clocks_apart(server_date: Option<&str>, ours: jiff::Timestamp) -> String {
    let utc = |t: jiff::Timestamp| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    let limit = "S3 takes a request only within 15 minutes of its signature by its own clock";
    let fix = "set both clocks right (NTP) and the store works again; nothing in it was changed";
    match seconds_apart(server_date, ours) {
        Some(apart) => format!(
            "this controller's clock ({}) is {:#} {} the object store's ({}); {limit}: {fix}",
            utc(ours),
            jiff::SignedDuration::from_secs(apart.abs()),
            if apart >= 0 { "ahead of" } else { "behind" },
            utc(ours - jiff::SignedDuration::from_secs(apart)),
        ),
        None => format!(
            "this controller's clock ({}) and the object store's are too far apart; {limit}: {fix}",
            utc(ours)
        ),
    }
}

/// How many seconds our clock is ahead of the store's (negative: behind), by the `Date`
/// header of its answer.
fn seconds_apart(server_date: Option<&str>, ours: jiff::Timestamp) -> Option<i64> {
    let theirs = jiff::fmt::rfc2822::parse(server_date?).ok()?;
    Some(ours.as_second() - theirs.timestamp().as_second())
}

/// The credentials: the standard AWS environment variables, else the shared credentials
/// file; with `only_profile`, that profile of the file and nothing else. Their absence is
/// an error that says where they are looked for.
fn load_credentials(only_profile: Option<&str>) -> Result<Credentials, StoreError> {
    if only_profile.is_none()
        && let Some(c) = Credentials::from_env()
    {
        return Ok(c);
    }
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
    let profile = match only_profile {
        Some(p) => p.to_string(),
        None => std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into()),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_for_clock_skew_names_both_clocks_and_which_is_ahead() {
        let ours: jiff::Timestamp = "2026-12-08T04:16:00Z".parse().expect("time");
        let said = clocks_apart(Some("Mon, 07 Dec 2026 03:16:00 GMT"), ours);
        assert!(
            said.contains("(2026-12-08 04:16:00 UTC) is 25h ahead of the object store's (2026-12-07 03:16:00 UTC)"),
            "{said}"
        );
        let behind = clocks_apart(Some("Tue, 08 Dec 2026 04:46:00 GMT"), ours);
        assert!(behind.contains("30m behind the object store's"), "{behind}");
        let unknown = clocks_apart(None, ours);
        assert!(unknown.contains("too far apart"), "{unknown}");
    }
}
