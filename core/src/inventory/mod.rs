//! What software a snapshot holds, read from the snapshot itself (never from the live
//! machine): the package databases in its tree ([`database`] says which paths are one), and
//! for an image, layer by layer ([`Scan`] applies each layer's files and whiteouts in
//! order, as the image's filesystem would). The controller feeds a [`Scan`] with the bytes
//! it reads from the store; nothing here does I/O.
//!
//! Databases read: dpkg's `status` (and distroless `status.d/`), apk's `installed`, Python's
//! `*.dist-info/METADATA` and `*.egg-info/PKG-INFO`, npm's `package-lock.json` and each
//! `node_modules/NAME/package.json`, `Cargo.lock`; and `os-release` for the distribution.

pub mod osv;
mod parse;
pub mod version;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use parse::{os_release, pep503};

/// A package database file larger than this is not read (a real dpkg `status` of a big
/// server is a few MiB).
pub const MAX_DATABASE_BYTES: u64 = 64 << 20;

/// Where a package comes from, named as OSV names its ecosystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Ecosystem {
    Debian,
    Alpine,
    PyPI,
    #[serde(rename = "npm")]
    Npm,
    #[serde(rename = "crates.io")]
    CratesIo,
}

impl Ecosystem {
    pub const ALL: [Ecosystem; 5] = [
        Ecosystem::Debian,
        Ecosystem::Alpine,
        Ecosystem::PyPI,
        Ecosystem::Npm,
        Ecosystem::CratesIo,
    ];

    /// OSV's name (`affected[].package.ecosystem`, without a release suffix).
    pub fn osv(self) -> &'static str {
        match self {
            Ecosystem::Debian => "Debian",
            Ecosystem::Alpine => "Alpine",
            Ecosystem::PyPI => "PyPI",
            Ecosystem::Npm => "npm",
            Ecosystem::CratesIo => "crates.io",
        }
    }

    /// An OSV ecosystem name (`Debian:12` counts as `Debian`); `None` for one we do not read.
    pub fn from_osv(name: &str) -> Option<Ecosystem> {
        let base = name.split(':').next().unwrap_or(name);
        Ecosystem::ALL.into_iter().find(|e| e.osv() == base)
    }

    /// The package-URL type.
    pub fn purl_type(self) -> &'static str {
        match self {
            Ecosystem::Debian => "deb",
            Ecosystem::Alpine => "apk",
            Ecosystem::PyPI => "pypi",
            Ecosystem::Npm => "npm",
            Ecosystem::CratesIo => "cargo",
        }
    }
}

/// The distribution a snapshot's `os-release` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// `debian`, `ubuntu`, `alpine`, ...
    pub id: String,
    pub version_id: String,
    pub pretty_name: String,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub ecosystem: Ecosystem,
    pub name: String,
    pub version: String,
    /// The name advisories use: the source package for dpkg and apk (`openssl` for
    /// `libssl3`), the name itself elsewhere.
    pub source: String,
    /// The architecture, where the database says it.
    pub arch: String,
    /// The database file it was found in, within the snapshot.
    pub location: String,
    /// For an image, the layer (its diff id) that installed this version; "" otherwise.
    pub layer: String,
}

impl Package {
    /// Its package URL (`pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12`).
    pub fn purl(&self, os: Option<&Os>) -> String {
        let name = match (self.ecosystem, self.name.split_once('/')) {
            (Ecosystem::Npm, Some((scope, name))) if scope.starts_with('@') => {
                format!("{}/{}", encode(scope), encode(name))
            }
            _ => encode(&self.name),
        };
        let namespace = match self.ecosystem {
            Ecosystem::Debian => os
                .map(|o| o.id.as_str())
                .filter(|i| !i.is_empty())
                .unwrap_or("debian"),
            Ecosystem::Alpine => "alpine",
            _ => "",
        };
        let mut purl = format!("pkg:{}/", self.ecosystem.purl_type());
        if !namespace.is_empty() {
            purl.push_str(&encode(namespace));
            purl.push('/');
        }
        purl.push_str(&name);
        purl.push('@');
        purl.push_str(&encode(&self.version));
        let mut qualifiers = Vec::new();
        if !self.arch.is_empty() {
            qualifiers.push(format!("arch={}", encode(&self.arch)));
        }
        if let (Ecosystem::Debian | Ecosystem::Alpine, Some(os)) = (self.ecosystem, os)
            && !os.version_id.is_empty()
        {
            qualifiers.push(format!(
                "distro={}-{}",
                encode(&os.id),
                encode(&os.version_id)
            ));
        }
        if !qualifiers.is_empty() {
            purl.push('?');
            purl.push_str(&qualifiers.join("&"));
        }
        purl
    }
}

/// Percent-encodes everything but the unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The kinds of file an inventory reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Dpkg,
    Apk,
    PythonMetadata,
    NpmLock,
    NpmPackage,
    CargoLock,
    OsRelease,
}

/// Which database `path` (relative, `/`-separated, as in a tree or a layer) is, if any.
pub fn database(path: &str) -> Option<Database> {
    let parts: Vec<&str> = normalize(path).split('/').collect();
    let ends = |tail: &[&str]| parts.ends_with(tail);
    let file = *parts.last()?;
    let parent = parts.len().checked_sub(2).map(|i| parts[i]).unwrap_or("");
    let grandparent = parts.len().checked_sub(3).map(|i| parts[i]).unwrap_or("");
    let in_node_modules = parts.contains(&"node_modules");
    // dpkg's `status`, or one package's file in a distroless image's `status.d/`.
    let distroless = parts.len() >= 5
        && parts[..parts.len() - 1].ends_with(&["var", "lib", "dpkg", "status.d"])
        && !file.contains('.');
    if ends(&["var", "lib", "dpkg", "status"]) || distroless {
        Some(Database::Dpkg)
    } else if ends(&["lib", "apk", "db", "installed"]) {
        Some(Database::Apk)
    } else if (file == "METADATA" && parent.ends_with(".dist-info"))
        || (file == "PKG-INFO" && parent.ends_with(".egg-info"))
    {
        Some(Database::PythonMetadata)
    } else if (file == "package-lock.json" && !in_node_modules)
        || (file == ".package-lock.json" && parent == "node_modules")
    {
        Some(Database::NpmLock)
    } else if file == "package.json"
        && (grandparent == "node_modules"
            || (grandparent.starts_with('@')
                && parts.len() >= 4
                && parts[parts.len() - 4] == "node_modules"))
    {
        Some(Database::NpmPackage)
    } else if file == "Cargo.lock" && !in_node_modules {
        Some(Database::CargoLock)
    } else if ends(&["etc", "os-release"]) || ends(&["usr", "lib", "os-release"]) {
        Some(Database::OsRelease)
    } else {
        None
    }
}

fn normalize(path: &str) -> &str {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            return p.trim_end_matches('/');
        }
    }
}

/// A snapshot's packages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub os: Option<Os>,
    /// Sorted by ecosystem, name and version; one entry per (ecosystem, name, version,
    /// architecture).
    pub packages: Vec<Package>,
    /// What could not be read, each naming the file or layer.
    pub notes: Vec<String>,
}

type Introduced = (String, Ecosystem, String, String, String);

/// Builds an inventory from database files, bottom layer first for an image (a plain
/// tree is one layer named "").
#[derive(Debug, Default)]
pub struct Scan {
    /// The database files present now (a higher layer replaced a lower one), with their packages.
    files: BTreeMap<String, Vec<Package>>,
    os: BTreeMap<String, Os>,
    /// The first layer in which each (path, package, version, arch) appeared.
    introduced: HashMap<Introduced, String>,
    notes: Vec<String>,
}

impl Scan {
    pub fn new() -> Scan {
        Scan::default()
    }

    /// `path` in `layer` holds `bytes`, a database of kind `db`; it replaces whatever a
    /// lower layer had at that path.
    pub fn file(&mut self, path: &str, layer: &str, db: Database, bytes: &[u8]) {
        let path = normalize(path).to_owned();
        if db == Database::OsRelease {
            match os_release(bytes) {
                Some(os) => {
                    self.os.insert(path, os);
                }
                None => {
                    self.os.remove(&path);
                }
            }
            return;
        }
        let mut found = parse::packages(db, bytes);
        for p in &mut found {
            p.location = path.clone();
            let key = (
                path.clone(),
                p.ecosystem,
                p.name.clone(),
                p.version.clone(),
                p.arch.clone(),
            );
            p.layer = self
                .introduced
                .entry(key)
                .or_insert_with(|| layer.to_owned())
                .clone();
        }
        self.files.insert(path, found);
    }

    /// A whiteout in a layer: `path` and everything beneath it are gone.
    pub fn whiteout(&mut self, path: &str) {
        let path = normalize(path);
        let beneath = format!("{path}/");
        self.files
            .retain(|p, _| p != path && !p.starts_with(&beneath));
        self.os.retain(|p, _| p != path && !p.starts_with(&beneath));
    }

    /// An opaque directory in a layer: everything lower layers had beneath `dir` is gone.
    pub fn opaque(&mut self, dir: &str) {
        let beneath = format!("{}/", normalize(dir));
        self.files.retain(|p, _| !p.starts_with(&beneath));
        self.os.retain(|p, _| !p.starts_with(&beneath));
    }

    /// Something that could not be read, for the inventory's notes.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn finish(self) -> Inventory {
        let os = ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|p| self.os.get(*p).cloned())
            .or_else(|| self.os.into_values().next());
        let mut seen = std::collections::HashSet::new();
        let mut packages: Vec<Package> = self
            .files
            .into_values()
            .flatten()
            .filter(|p| {
                seen.insert((
                    p.ecosystem,
                    p.name.clone(),
                    p.version.clone(),
                    p.arch.clone(),
                ))
            })
            .collect();
        packages.sort_by(|a, b| {
            (a.ecosystem, &a.name, &a.version, &a.arch).cmp(&(
                b.ecosystem,
                &b.name,
                &b.version,
                &b.arch,
            ))
        });
        Inventory {
            os,
            packages,
            notes: self.notes,
        }
    }
}

/// What changed between two inventories, per (ecosystem, name, architecture).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub installed: Vec<Package>,
    pub removed: Vec<Package>,
    /// (before, after): the version differs.
    pub changed: Vec<(Package, Package)>,
}

/// From `a` to `b`. A package installed at several versions (two virtualenvs) is compared
/// version set by version set: only versions that appear or vanish count.
pub fn changes(a: &Inventory, b: &Inventory) -> Changes {
    type Key = (Ecosystem, String, String);
    let group = |inv: &Inventory| {
        let mut m: BTreeMap<Key, Vec<Package>> = BTreeMap::new();
        for p in &inv.packages {
            m.entry((p.ecosystem, p.name.clone(), p.arch.clone()))
                .or_default()
                .push(p.clone());
        }
        m
    };
    let (ga, gb) = (group(a), group(b));
    let mut out = Changes::default();
    for (key, before) in &ga {
        match gb.get(key) {
            None => out.removed.extend(before.iter().cloned()),
            Some(after) => {
                let gone: Vec<_> = before
                    .iter()
                    .filter(|p| !after.iter().any(|q| q.version == p.version))
                    .collect();
                let new: Vec<_> = after
                    .iter()
                    .filter(|q| !before.iter().any(|p| p.version == q.version))
                    .collect();
                let paired = gone.len().min(new.len());
                for i in 0..paired {
                    out.changed.push((gone[i].clone(), new[i].clone()));
                }
                out.removed
                    .extend(gone[paired..].iter().map(|p| (*p).clone()));
                out.installed
                    .extend(new[paired..].iter().map(|p| (*p).clone()));
            }
        }
    }
    for (key, after) in &gb {
        if !ga.contains_key(key) {
            out.installed.extend(after.iter().cloned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_A: &str = "Package: bash\nStatus: install ok installed\nVersion: 5.2-1\n\n\
        Package: curl\nStatus: install ok installed\nVersion: 7.88-1\n";
    const STATUS_B: &str = "Package: bash\nStatus: install ok installed\nVersion: 5.2-1\n\n\
        Package: curl\nStatus: install ok installed\nVersion: 7.88-2\n\n\
        Package: vim\nStatus: install ok installed\nVersion: 9.0-1\n";

    #[test]
    fn database_paths_are_recognised_wherever_the_source_root_is() {
        for (path, want) in [
            ("var/lib/dpkg/status", Some(Database::Dpkg)),
            ("./var/lib/dpkg/status", Some(Database::Dpkg)),
            ("srv/chroot/var/lib/dpkg/status", Some(Database::Dpkg)),
            ("var/lib/dpkg/status-old", None),
            ("var/lib/dpkg/status.d/libc6", Some(Database::Dpkg)),
            ("var/lib/dpkg/status.d/libc6.md5sums", None),
            ("lib/apk/db/installed", Some(Database::Apk)),
            (
                "usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA",
                Some(Database::PythonMetadata),
            ),
            ("x/METADATA", None),
            ("app/package-lock.json", Some(Database::NpmLock)),
            ("app/node_modules/x/package-lock.json", None),
            (
                "app/node_modules/.package-lock.json",
                Some(Database::NpmLock),
            ),
            (
                "app/node_modules/lodash/package.json",
                Some(Database::NpmPackage),
            ),
            (
                "app/node_modules/@babel/core/package.json",
                Some(Database::NpmPackage),
            ),
            ("app/node_modules/lodash/fp/package.json", None),
            ("app/package.json", None),
            ("src/app/Cargo.lock", Some(Database::CargoLock)),
            ("etc/os-release", Some(Database::OsRelease)),
            ("etc/passwd", None),
        ] {
            assert_eq!(database(path), want, "{path}");
        }
    }

    #[test]
    fn layers_replace_and_white_out_lower_files_and_keep_who_installed_what() {
        let mut scan = Scan::new();
        scan.file(
            "etc/os-release",
            "l1",
            Database::OsRelease,
            b"ID=debian\nVERSION_ID=12\n",
        );
        scan.file(
            "var/lib/dpkg/status",
            "l1",
            Database::Dpkg,
            STATUS_A.as_bytes(),
        );
        scan.file(
            "opt/venv/lib/six-1.0.dist-info/METADATA",
            "l1",
            Database::PythonMetadata,
            b"Name: six\nVersion: 1.0\n",
        );
        scan.file(
            "var/lib/dpkg/status",
            "l2",
            Database::Dpkg,
            STATUS_B.as_bytes(),
        );
        scan.whiteout("opt/venv");
        let inv = scan.finish();
        assert_eq!(inv.os.as_ref().expect("test value").version_id, "12");
        let got: Vec<_> = inv
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.layer.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("bash", "5.2-1", "l1"),
                ("curl", "7.88-2", "l2"),
                ("vim", "9.0-1", "l2")
            ]
        );
        assert_eq!(inv.packages[0].location, "var/lib/dpkg/status");

        let mut scan = Scan::new();
        scan.file(
            "app/node_modules/a/package.json",
            "l1",
            Database::NpmPackage,
            br#"{"name":"a","version":"1.0.0"}"#,
        );
        scan.opaque("app/node_modules");
        assert!(scan.finish().packages.is_empty());
    }

    #[test]
    fn changes_name_what_was_installed_removed_and_upgraded() {
        let inv = |status: &str| {
            let mut s = Scan::new();
            s.file("var/lib/dpkg/status", "", Database::Dpkg, status.as_bytes());
            s.finish()
        };
        let c = changes(&inv(STATUS_A), &inv(STATUS_B));
        assert_eq!(
            c.installed
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["vim"]
        );
        assert!(c.removed.is_empty());
        assert_eq!(c.changed.len(), 1);
        assert_eq!(
            (
                c.changed[0].0.version.as_str(),
                c.changed[0].1.version.as_str()
            ),
            ("7.88-1", "7.88-2")
        );
        let back = changes(&inv(STATUS_B), &inv(STATUS_A));
        assert_eq!(
            back.removed
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["vim"]
        );
    }

    #[test]
    fn package_urls_follow_the_purl_spec() {
        let os = Os {
            id: "debian".into(),
            version_id: "12".into(),
            pretty_name: String::new(),
        };
        let mut p = Package {
            ecosystem: Ecosystem::Debian,
            name: "bash".into(),
            version: "1:5.2.15-2+b2".into(),
            source: "bash".into(),
            arch: "amd64".into(),
            location: String::new(),
            layer: String::new(),
        };
        assert_eq!(
            p.purl(Some(&os)),
            "pkg:deb/debian/bash@1%3A5.2.15-2%2Bb2?arch=amd64&distro=debian-12"
        );
        p.ecosystem = Ecosystem::Npm;
        p.name = "@babel/core".into();
        p.version = "7.0.0".into();
        p.arch.clear();
        assert_eq!(p.purl(None), "pkg:npm/%40babel/core@7.0.0");
        assert_eq!(Ecosystem::from_osv("Debian:12"), Some(Ecosystem::Debian));
        assert_eq!(Ecosystem::from_osv("Go"), None);
    }
}
