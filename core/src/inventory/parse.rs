//! The package databases an inventory reads, each parsed from its bytes alone. Parsers are
//! lenient: a snapshot is a machine's disk as it was, and a half-written or hand-edited
//! database must not hide the rest of it; what cannot be read is skipped.

use super::{Database, Ecosystem, Os, Package};

/// Every package `bytes` (a database of kind `db`) lists.
pub fn packages(db: Database, bytes: &[u8]) -> Vec<Package> {
    let text = String::from_utf8_lossy(bytes);
    match db {
        Database::Dpkg => dpkg(&text),
        Database::Apk => apk(&text),
        Database::PythonMetadata => python(&text).into_iter().collect(),
        Database::NpmLock => npm_lock(bytes),
        Database::NpmPackage => npm_package(bytes).into_iter().collect(),
        Database::CargoLock => cargo_lock(&text),
        Database::OsRelease => Vec::new(),
    }
}

fn package(ecosystem: Ecosystem, name: &str, version: &str) -> Option<Package> {
    let (name, version) = (name.trim(), version.trim());
    if name.is_empty() || version.is_empty() || name.len() > 256 || version.len() > 256 {
        return None;
    }
    Some(Package {
        ecosystem,
        name: name.to_owned(),
        version: version.to_owned(),
        source: String::new(),
        arch: String::new(),
        location: String::new(),
        layer: String::new(),
    })
}

/// RFC 822-style fields of one paragraph, continuation lines dropped.
fn fields(paragraph: &str) -> impl Iterator<Item = (&str, &str)> {
    paragraph
        .lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// dpkg's `status` (and a distroless `status.d/*` file): one paragraph per package; only
/// those whose status says installed count.
fn dpkg(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut source, mut arch) = ("", "", "", "");
        let mut installed = true;
        for (k, v) in fields(para) {
            match k {
                "Package" => name = v,
                "Version" => version = v,
                "Source" => source = v,
                "Architecture" => arch = v,
                "Status" => installed = v.ends_with(" installed"),
                _ => {}
            }
        }
        if !installed {
            continue;
        }
        if let Some(mut p) = package(Ecosystem::Debian, name, version) {
            // `Source: openssl (3.0.11-1)`: the source package, and its version when it
            // differs from the binary's. Advisories name source packages.
            let source = source.split_whitespace().next().unwrap_or("");
            p.source = if source.is_empty() {
                name.to_owned()
            } else {
                source.to_owned()
            };
            p.arch = arch.to_owned();
            out.push(p);
        }
    }
    out
}

/// apk's `installed`: `P:` name, `V:` version, `A:` architecture, `o:` origin, one
/// package per paragraph.
fn apk(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut origin, mut arch) = ("", "", "", "");
        for line in para.lines() {
            match line.split_at_checked(2) {
                Some(("P:", v)) => name = v,
                Some(("V:", v)) => version = v,
                Some(("o:", v)) => origin = v,
                Some(("A:", v)) => arch = v,
                _ => {}
            }
        }
        if let Some(mut p) = package(Ecosystem::Alpine, name, version) {
            p.source = if origin.is_empty() {
                name.to_owned()
            } else {
                origin.to_owned()
            };
            p.arch = arch.to_owned();
            out.push(p);
        }
    }
    out
}

/// A wheel's `METADATA` (or an egg's `PKG-INFO`): `Name` and `Version` in the header.
fn python(text: &str) -> Option<Package> {
    let header = text.split("\n\n").next().unwrap_or("");
    let (mut name, mut version) = ("", "");
    for (k, v) in fields(header) {
        match k {
            "Name" if name.is_empty() => name = v,
            "Version" if version.is_empty() => version = v,
            _ => {}
        }
    }
    let mut p = package(Ecosystem::PyPI, &pep503(name), version)?;
    p.source = p.name.clone();
    Some(p)
}

/// PEP 503's normal form of a project name: lower case, runs of `-_.` as one `-`.
pub fn pep503(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// `package-lock.json`: v2/v3 list every installed package under `packages` by its
/// `node_modules/...` path; v1 nests them under `dependencies`.
fn npm_lock(bytes: &[u8]) -> Vec<Package> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(packages) = doc.get("packages").and_then(|p| p.as_object()) {
        for (path, meta) in packages {
            // "" is the project itself; linked workspaces carry no version of their own.
            let Some(at) = path.rfind("node_modules/") else {
                continue;
            };
            let name = meta
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or(&path[at + "node_modules/".len()..]);
            if let Some(version) = meta.get("version").and_then(|v| v.as_str()) {
                out.extend(npm(name, version));
            }
        }
    } else if let Some(deps) = doc.get("dependencies") {
        let mut stack = vec![deps];
        while let Some(deps) = stack.pop() {
            let Some(deps) = deps.as_object() else {
                continue;
            };
            for (name, meta) in deps {
                if let Some(version) = meta.get("version").and_then(|v| v.as_str()) {
                    out.extend(npm(name, version));
                }
                if let Some(nested) = meta.get("dependencies") {
                    stack.push(nested);
                }
            }
        }
    }
    out
}

/// An installed package's own `node_modules/NAME/package.json`.
fn npm_package(bytes: &[u8]) -> Option<Package> {
    let doc = serde_json::from_slice::<serde_json::Value>(bytes).ok()?;
    npm(doc.get("name")?.as_str()?, doc.get("version")?.as_str()?)
}

fn npm(name: &str, version: &str) -> Option<Package> {
    // A lock's `version` may be a URL or a `file:` link for what is not from the registry.
    if version.contains(':') || version.contains('/') {
        return None;
    }
    let mut p = package(Ecosystem::Npm, name, version)?;
    p.source = p.name.clone();
    Some(p)
}

/// `Cargo.lock`: every `[[package]]` from a registry (path and git dependencies are the
/// project's own code, not something an advisory names).
fn cargo_lock(text: &str) -> Vec<Package> {
    #[derive(serde::Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<Locked>,
    }
    #[derive(serde::Deserialize)]
    struct Locked {
        name: String,
        version: String,
        #[serde(default)]
        source: String,
    }
    let Ok(lock) = toml::from_str::<Lock>(text) else {
        return Vec::new();
    };
    lock.package
        .into_iter()
        .filter(|p| p.source.starts_with("registry+") || p.source.starts_with("sparse+"))
        .filter_map(|p| {
            let mut out = package(Ecosystem::CratesIo, &p.name, &p.version)?;
            out.source = out.name.clone();
            Some(out)
        })
        .collect()
}

/// `etc/os-release`: the distribution and its release.
pub fn os_release(bytes: &[u8]) -> Option<Os> {
    let text = String::from_utf8_lossy(bytes);
    let mut os = Os::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
        match k.trim() {
            "ID" => os.id = v,
            "VERSION_ID" => os.version_id = v,
            "PRETTY_NAME" => os.pretty_name = v,
            _ => {}
        }
    }
    (!os.id.is_empty()).then_some(os)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ps: &[Package]) -> Vec<(String, String)> {
        ps.iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect()
    }

    #[test]
    fn dpkg_lists_installed_packages_with_their_source() {
        let status = "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\n\
            Source: openssl (3.0.11-1~deb12u2)\nVersion: 3.0.11-1~deb12u2\nDescription: x\n more\n\n\
            Package: old\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
            Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\n";
        let ps = packages(Database::Dpkg, status.as_bytes());
        assert_eq!(
            names(&ps),
            [
                ("libssl3".into(), "3.0.11-1~deb12u2".into()),
                ("bash".into(), "5.2.15-2+b2".into())
            ]
        );
        assert_eq!(ps[0].source, "openssl");
        assert_eq!(ps[0].arch, "amd64");
        assert_eq!(ps[1].source, "bash");
    }

    #[test]
    fn apk_python_npm_and_cargo_databases_are_read() {
        let apk = "C:Q1x\nP:musl\nV:1.2.4-r2\nA:x86_64\no:musl\n\nP:busybox\nV:1.36.1-r5\n";
        assert_eq!(
            names(&packages(Database::Apk, apk.as_bytes())),
            [
                ("musl".into(), "1.2.4-r2".into()),
                ("busybox".into(), "1.36.1-r5".into())
            ]
        );
        let meta = "Metadata-Version: 2.1\nName: Jinja2\nVersion: 3.1.2\n\nName: not-this\n";
        assert_eq!(
            names(&packages(Database::PythonMetadata, meta.as_bytes())),
            [("jinja2".into(), "3.1.2".into())]
        );
        let lock = r#"{"lockfileVersion":3,"packages":{"":{"name":"app","version":"1.0.0"},
            "node_modules/lodash":{"version":"4.17.20"},
            "node_modules/a/node_modules/@babel/core":{"version":"7.0.0"},
            "node_modules/local":{"version":"file:../local"}}}"#;
        let mut got = names(&packages(Database::NpmLock, lock.as_bytes()));
        got.sort();
        assert_eq!(
            got,
            [
                ("@babel/core".into(), "7.0.0".into()),
                ("lodash".into(), "4.17.20".into())
            ]
        );
        let v1 = r#"{"lockfileVersion":1,"dependencies":{"minimist":{"version":"0.0.8",
            "dependencies":{"inner":{"version":"2.0.0"}}}}}"#;
        let mut got = names(&packages(Database::NpmLock, v1.as_bytes()));
        got.sort();
        assert_eq!(
            got,
            [
                ("inner".into(), "2.0.0".into()),
                ("minimist".into(), "0.0.8".into())
            ]
        );
        let cargo = "version = 3\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\n\n\
            [[package]]\nname = \"time\"\nversion = \"0.1.43\"\n\
            source = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
        assert_eq!(
            names(&packages(Database::CargoLock, cargo.as_bytes())),
            [("time".into(), "0.1.43".into())]
        );
    }

    #[test]
    fn damaged_databases_yield_what_can_be_read_and_never_fail() {
        assert!(packages(Database::NpmLock, b"{not json").is_empty());
        assert!(packages(Database::CargoLock, b"[[package]\nname=").is_empty());
        assert!(packages(Database::Dpkg, &[0xff, 0xfe, b'\n']).is_empty());
        let half = "Package: a\nVersion: 1\n\nPackage: b\nVers";
        assert_eq!(
            names(&packages(Database::Dpkg, half.as_bytes())),
            [("a".into(), "1".into())]
        );
    }

    #[test]
    fn os_release_names_the_distribution() {
        let os = os_release(
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        )
        .expect("test value");
        assert_eq!((os.id.as_str(), os.version_id.as_str()), ("debian", "12"));
        assert_eq!(os_release(b"NAME=x\n"), None);
    }
}
