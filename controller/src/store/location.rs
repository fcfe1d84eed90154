//! Where a store lives, as `--store` names it: a directory, or `s3://BUCKET/PREFIX` with
//! the endpoint, region and addressing style beside it. Fixed at the controller's first
//! start (`controller.json`); the endpoint, region, addressing and CA may change later
//! (a server moved), the bucket and prefix may not.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Local(PathBuf),
    S3(S3Location),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Location {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
    pub endpoint: String,
    pub region: String,
    /// `https://ENDPOINT/BUCKET/KEY` rather than `https://BUCKET.ENDPOINT/KEY` (most
    /// servers other than AWS want it).
    pub path_style: bool,
    /// Roots that verify an https endpoint, when not the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `--s3-*` options, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub ca_file: Option<PathBuf>,
}

pub const DEFAULT_REGION: &str = "us-east-1";

impl StoreLocation {
    /// Parses `--store`: `s3://BUCKET[/PREFIX]` or a directory.
    pub fn parse(store: &str, s3: &S3Options) -> Result<StoreLocation, String> {
        let Some(rest) = store.strip_prefix("s3://") else {
            if s3.endpoint.is_some() {
                return Err(format!(
                    "--s3-endpoint is for an s3:// store; --store {store} is a directory"
                ));
            }
            return Ok(StoreLocation::Local(PathBuf::from(store)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'));
        if !valid_bucket {
            return Err(format!(
                "--store {store}: {bucket:?} is not an S3 bucket name (3 to 63 lowercase letters, digits, '-' or '.')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..")
            || prefix.chars().any(|c| c.is_control())
        {
            return Err(format!(
                "--store {store}: the prefix {prefix:?} may not hold '.', '..' or control characters"
            ));
        }
        let Some(endpoint) = s3.endpoint.clone() else {
            return Err(format!(
                "--store {store} needs --s3-endpoint (for example https://s3.eu-west-1.amazonaws.com or http://127.0.0.1:8333)"
            ));
        };
        Ok(StoreLocation::S3(S3Location {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: s3.region.clone().unwrap_or_else(|| DEFAULT_REGION.into()),
            path_style: s3.path_style,
            ca_file: s3.ca_file.clone(),
        }))
    }

    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            StoreLocation::Local(p) => Some(p),
            StoreLocation::S3(_) => None,
        }
    }
}

impl S3Location {
    /// The same bucket and prefix (what fixes a store's identity).
    pub fn same_store(&self, other: &S3Location) -> bool {
        self.bucket == other.bucket && self.prefix == other.prefix
    }

    /// The connection settings of `opts` where given, this location's otherwise.
    pub fn with_options(mut self, opts: &S3Options) -> S3Location {
        if let Some(e) = &opts.endpoint {
            self.endpoint = e.trim_end_matches('/').to_string();
        }
        if let Some(r) = &opts.region {
            self.region = r.clone();
        }
        if opts.path_style {
            self.path_style = true;
        }
        if let Some(c) = &opts.ca_file {
            self.ca_file = Some(c.clone());
        }
        self
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s3://{}/{} at {}",
            self.bucket,
            self.prefix.trim_end_matches('/'),
            self.endpoint
        )
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Local(p) => write!(f, "{}", p.display()),
            StoreLocation::S3(s) => s.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: &str) -> S3Options {
        S3Options {
            endpoint: Some(endpoint.into()),
            ..Default::default()
        }
    }

    #[test]
    fn parses_directories_and_buckets() {
        assert_eq!(
            StoreLocation::parse("/srv/store", &S3Options::default()),
            Ok(StoreLocation::Local("/srv/store".into()))
        );
        let StoreLocation::S3(loc) =
            StoreLocation::parse("s3://backups/fleet/a/", &s3("http://127.0.0.1:8333/"))
                .expect("s3")
        else {
            panic!("not s3");
        };
        assert_eq!(loc.bucket, "backups");
        assert_eq!(loc.prefix, "fleet/a/");
        assert_eq!(loc.endpoint, "http://127.0.0.1:8333");
        assert_eq!(loc.region, DEFAULT_REGION);
        let StoreLocation::S3(bare) =
            StoreLocation::parse("s3://backups", &s3("http://h")).expect("s3")
        else {
            panic!("not s3");
        };
        assert_eq!(bare.prefix, "");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let no_endpoint = StoreLocation::parse("s3://backups", &S3Options::default());
        assert!(no_endpoint.is_err_and(|e| e.contains("--s3-endpoint")));
        for bad in ["s3://Bad_Bucket/x", "s3://ab", "s3://b-ok/../x"] {
            assert!(
                StoreLocation::parse(bad, &s3("http://h")).is_err(),
                "{bad} accepted"
            );
        }
        let stray = StoreLocation::parse("/srv/store", &s3("http://h"));
        assert!(stray.is_err_and(|e| e.contains("directory")));
    }
}
