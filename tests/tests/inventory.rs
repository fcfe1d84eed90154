//! `lifeboat sbom`: the packages a snapshot holds, read from the store, as a CycloneDX SBOM
//! valid against its schema, and what changed between two snapshots.
//!
//! The schema check runs the CycloneDX project's own validator (the PyPI package
//! `cyclonedx-python-lib[json-validation]`, which ships the schemas: no network). Where it
//! is not installed the check says so loudly and is skipped, unless
//! `LIFEBOAT_REQUIRE_CYCLONEDX=1` (as `.ci/run` sets), where the test fails.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use lifeboat_tests::tree::Rng;
use lifeboat_tests::{Fleet, wait_for};
use serde_json::Value;

const STATUS_1: &str = "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n\
Description: GNU Bourne Again SHell\n more text\n\n\
Package: libcurl4\nStatus: install ok installed\nArchitecture: amd64\nSource: curl\nVersion: 7.88.1-10+deb12u4\n\n\
Package: removed-long-ago\nStatus: deinstall ok config-files\nVersion: 1.0\n";

const STATUS_2: &str = "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n\n\
Package: libcurl4\nStatus: install ok installed\nArchitecture: amd64\nSource: curl\nVersion: 7.88.1-10+deb12u5\n\n\
Package: vim\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2:9.0.1378-2\n";

fn lock(lodash: &str) -> String {
    format!(
        r#"{{"name":"web","lockfileVersion":3,"packages":{{"":{{"name":"web","version":"1.0.0"}},
        "node_modules/lodash":{{"version":"{lodash}"}},
        "node_modules/@babel/core":{{"version":"7.23.0"}}}}}}"#
    )
}

fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
    fs::write(p, body).expect("write");
}

/// Validates `bom` with CycloneDX's own validator; false when it is not installed.
fn cyclonedx_valid(bom: &str) -> bool {
    let script = "import sys\n\
        from cyclonedx.validation.json import JsonStrictValidator\n\
        from cyclonedx.schema import SchemaVersion\n\
        err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(sys.stdin.read())\n\
        print(err if err else 'valid')\n\
        sys.exit(1 if err else 0)\n";
    let have = Command::new("python3")
        .args(["-c", "import cyclonedx.validation.json, jsonschema"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            std::env::var("LIFEBOAT_REQUIRE_CYCLONEDX").as_deref() != Ok("1"),
            "LIFEBOAT_REQUIRE_CYCLONEDX=1 but python3 cannot import the CycloneDX validator \
             (pip install 'cyclonedx-python-lib[json-validation]==8.9.0')"
        );
        eprintln!(
            "SKIPPED: the CycloneDX validator is not installed; the SBOM's schema is not checked"
        );
        return false;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bom.as_bytes())
        .expect("write bom");
    let out = child.wait_with_output().expect("validator");
    assert!(
        out.status.success(),
        "the SBOM fails CycloneDX 1.5's schema: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    true
}

fn packages(listing: &Value) -> Vec<(String, String, String)> {
    let mut got: Vec<_> = listing["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["ecosystem"].as_str().unwrap_or_default().to_owned(),
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    got.sort();
    got
}

fn triples(want: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut w: Vec<_> = want
        .iter()
        .map(|(e, n, v)| (e.to_string(), n.to_string(), v.to_string()))
        .collect();
    w.sort();
    w
}

#[test]
fn sbom_lists_every_package_database_of_a_snapshot_and_diff_shows_the_patch_history() {
    let mut fleet = Fleet::start();
    let src = tempfile::tempdir().expect("src");
    let root = src.path();
    write(
        root,
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    );
    write(root, "var/lib/dpkg/status", STATUS_1);
    let jinja = "opt/app/venv/lib/python3.11/site-packages/Jinja2-3.1.2.dist-info";
    write(
        root,
        &format!("{jinja}/METADATA"),
        "Metadata-Version: 2.1\nName: Jinja2\nVersion: 3.1.2\n\nJinja is a template engine.\n",
    );
    write(root, "srv/web/package-lock.json", &lock("4.17.20"));
    write(
        root,
        "srv/web/node_modules/lodash/package.json",
        r#"{"name":"lodash","version":"4.17.20"}"#,
    );
    write(
        root,
        "src/tool/Cargo.lock",
        "version = 3\n\n[[package]]\nname = \"tool\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"time\"\n\
         version = \"0.1.43\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n",
    );
    // Data around them that is not a package database, some of it large.
    write(
        root,
        "var/lib/dpkg/status-old",
        "Package: not-read\nStatus: install ok installed\nVersion: 9\n",
    );
    fs::write(root.join("srv/web/bundle.bin"), Rng::new(7).bytes(3 << 20)).expect("bundle");

    let agent = fleet.enroll("web1");
    fleet.run_agent(&agent, &[("root", root)], &[]);
    let s1 = fleet.backup("web1", "root")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // The worker reads the new snapshot's packages after its commit, unasked.
    wait_for(
        "the inventory worker to read the snapshot",
        std::time::Duration::from_secs(30),
        || {
            fleet
                .controller_log()
                .lines()
                .any(|l| {
                    l.contains("read the snapshot's packages")
                        && l.contains(&s1)
                        && l.contains("packages=6")
                })
                .then_some(())
        },
    );

    let listing = fleet.cli_json(&["sbom", &s1]);
    assert_eq!(
        packages(&listing),
        triples(&[
            ("Debian", "bash", "5.2.15-2+b2"),
            ("Debian", "libcurl4", "7.88.1-10+deb12u4"),
            ("PyPI", "jinja2", "3.1.2"),
            ("npm", "lodash", "4.17.20"),
            ("npm", "@babel/core", "7.23.0"),
            ("crates.io", "time", "0.1.43"),
        ]),
        "{listing}"
    );
    assert_eq!(listing["os"]["id"], "debian");
    assert_eq!(listing["os"]["version_id"], "12");
    let curl = listing["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "libcurl4"))
        .expect("libcurl4");
    assert_eq!(curl["source"], "curl", "advisories name the source package");
    assert_eq!(curl["location"], "var/lib/dpkg/status");
    assert_eq!(
        curl["purl"],
        "pkg:deb/debian/libcurl4@7.88.1-10%2Bdeb12u4?arch=amd64&distro=debian-12"
    );

    // The SBOM: CycloneDX 1.5, valid against its schema, one component per package.
    let out = fleet.cli(&["sbom", &s1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bom_text = String::from_utf8(out.stdout).expect("utf-8");
    let bom: Value = serde_json::from_str(&bom_text).expect("the SBOM is JSON");
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(bom["metadata"]["component"]["version"], s1.as_str());
    let mut purls: Vec<&str> = bom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter(|c| c["type"] == "library")
        .filter_map(|c| c["purl"].as_str())
        .collect();
    purls.sort();
    assert_eq!(
        purls,
        [
            "pkg:cargo/time@0.1.43",
            "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12",
            "pkg:deb/debian/libcurl4@7.88.1-10%2Bdeb12u4?arch=amd64&distro=debian-12",
            "pkg:npm/%40babel/core@7.23.0",
            "pkg:npm/lodash@4.17.20",
            "pkg:pypi/jinja2@3.1.2",
        ]
    );
    assert!(
        bom["components"]
            .as_array()
            .expect("components")
            .iter()
            .any(|c| c["type"] == "operating-system"
                && c["name"] == "debian"
                && c["version"] == "12"),
        "{bom}"
    );
    cyclonedx_valid(&bom_text);
    // --out writes the same SBOM to a file.
    let file = src.path().join("../sbom-out.json");
    let out = fleet.cli(&["sbom", &s1, "--out", file.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(&file).expect("sbom file").trim(),
        bom_text.trim()
    );
    fs::remove_file(&file).expect("rm");
    // The table names each package and where it was found.
    let out = fleet.cli(&["sbom", &s1, "--table"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for want in [
        "libcurl4",
        "7.88.1-10+deb12u4",
        "srv/web/package-lock.json",
        "Debian GNU/Linux 12",
        "6 packages",
    ] {
        assert!(table.contains(want), "{want} missing from:\n{table}");
    }

    // A week later: curl patched, vim installed, Jinja2 removed, lodash upgraded.
    write(root, "var/lib/dpkg/status", STATUS_2);
    fs::remove_dir_all(root.join(jinja)).expect("rm jinja");
    write(root, "srv/web/package-lock.json", &lock("4.17.21"));
    write(
        root,
        "srv/web/node_modules/lodash/package.json",
        r#"{"name":"lodash","version":"4.17.21"}"#,
    );
    let s2 = fleet.backup("web1", "root")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let d = fleet.cli_json(&["sbom", "diff", &s1, &s2]);
    let names = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = d[k]
            .as_array()
            .expect(k)
            .iter()
            .map(|p| match (p["version"].as_str(), p["from"].as_str()) {
                (Some(v), _) => format!("{}@{v}", p["name"].as_str().unwrap_or_default()),
                (None, Some(from)) => format!(
                    "{} {from} -> {}",
                    p["name"].as_str().unwrap_or_default(),
                    p["to"].as_str().unwrap_or_default()
                ),
                _ => String::new(),
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("installed"), ["vim@2:9.0.1378-2"], "{d}");
    assert_eq!(names("removed"), ["jinja2@3.1.2"], "{d}");
    assert_eq!(
        names("changed"),
        [
            "libcurl4 7.88.1-10+deb12u4 -> 7.88.1-10+deb12u5",
            "lodash 4.17.20 -> 4.17.21"
        ],
        "{d}"
    );
    let out = fleet.cli(&["sbom", "diff", &s1, &s2]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 installed, 1 removed, 2 changed"),
        "{text}"
    );

    // Nothing changed: the same packages, no change listed.
    let s3 = fleet.backup("web1", "root")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let same = fleet.cli_json(&["sbom", "diff", &s2, &s3]);
    for k in ["installed", "removed", "changed"] {
        assert_eq!(same[k].as_array().map(Vec::len), Some(0), "{same}");
    }

    // What the user typed wrong is named, with exit 1.
    let out = fleet.cli(&["sbom", "0123456789ab"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0123456789ab"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fleet.cli(&["sbom"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing snapshot is a usage error"
    );
}

/// An OSV record with one affected package and one range.
fn advisory(
    id: &str,
    ecosystem: &str,
    name: &str,
    range: (&str, &str, &str),
    extra: &str,
) -> Value {
    let (kind, introduced, fixed) = range;
    let mut v: Value = serde_json::from_str(&format!(
        r#"{{"id":"{id}","modified":"2026-11-01T00:00:00Z","summary":"{name} flaw",
        "affected":[{{"package":{{"ecosystem":"{ecosystem}","name":"{name}"}},
        "ranges":[{{"type":"{kind}","events":[{{"introduced":"{introduced}"}},{{"fixed":"{fixed}"}}]}}]}}]}}"#
    ))
    .expect("record");
    if !extra.is_empty() {
        let more: Value = serde_json::from_str(extra).expect("extra");
        for (k, x) in more.as_object().expect("object") {
            v[k] = x.clone();
        }
    }
    v
}

type Finding = (String, String, String, String, String);

fn findings(list: &Value) -> Vec<Finding> {
    let mut v: Vec<_> = list["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (
                s("advisory"),
                s("package"),
                s("installed"),
                s("fixed"),
                s("severity"),
            )
        })
        .collect();
    v.sort();
    v
}

fn finding(a: &str, p: &str, i: &str, f: &str, s: &str) -> Finding {
    (a.into(), p.into(), i.into(), f.into(), s.into())
}

#[test]
fn vulns_match_an_imported_osv_feed_with_each_ecosystems_version_order() {
    let mut fleet = Fleet::start();
    let src = tempfile::tempdir().expect("src");
    let root = src.path();
    write(root, "etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n");
    write(root, "var/lib/dpkg/status", STATUS_1);
    write(
        root,
        "venv/lib/python3.11/site-packages/Jinja2-3.1.2.dist-info/METADATA",
        "Name: Jinja2\nVersion: 3.1.2\n",
    );
    write(root, "web/package-lock.json", &lock("4.17.20"));
    write(
        root,
        "tool/Cargo.lock",
        "[[package]]\nname = \"time\"\nversion = \"0.1.43\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n",
    );
    let agent = fleet.enroll("web1");
    fleet.run_agent(&agent, &[("root", root)], &[]);
    let s1 = fleet.backup("web1", "root")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Before any feed: nothing to report, and the user is told how to get one.
    let out = fleet.cli(&["vulns", "--all"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lifeboat vulns import"));

    // The feed, as an air-gapped site gets it: a JSON array, a zip as osv.dev exports, a
    // directory of single records; with a broken record and another ecosystem's.
    let feed = tempfile::tempdir().expect("feed");
    let cvss = |v: &str| format!(r#"{{"severity":[{{"type":"CVSS_V3","score":"{v}"}}]}}"#);
    let debian = serde_json::json!([
        advisory(
            "DSA-5587-1",
            "Debian:12",
            "curl",
            ("ECOSYSTEM", "0", "7.88.1-10+deb12u5"),
            r#"{"aliases":["CVE-2023-46218"]}"#
        ),
        advisory(
            "DSA-5500-1",
            "Debian:11",
            "curl",
            ("ECOSYSTEM", "0", "7.74.0-1.3+deb11u99"),
            ""
        ),
        advisory(
            "DSA-4000-1",
            "Debian:12",
            "bash",
            ("ECOSYSTEM", "0", "5.0-1"),
            ""
        ),
    ]);
    fs::write(feed.path().join("debian.json"), debian.to_string()).expect("debian");
    let mut zip = zip::ZipWriter::new(fs::File::create(feed.path().join("all.zip")).expect("zip"));
    for (name, v) in [
        (
            "GHSA-jinja.json",
            advisory(
                "GHSA-h5c8-rqwp-cp95",
                "PyPI",
                "jinja2",
                ("ECOSYSTEM", "0", "3.1.3"),
                &cvss("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:L/I:L/A:N"),
            ),
        ),
        (
            "GHSA-lodash.json",
            advisory(
                "GHSA-35jh-r3h4-6jhm",
                "npm",
                "lodash",
                ("SEMVER", "0", "4.17.21"),
                &cvss("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
            ),
        ),
        (
            "GO-2024-1.json",
            advisory(
                "GO-2024-1",
                "Go",
                "example.com/x",
                ("SEMVER", "0", "1.0.0"),
                "",
            ),
        ),
    ] {
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .expect("member");
        zip.write_all(v.to_string().as_bytes())
            .expect("write member");
    }
    zip.finish().expect("zip");
    fs::create_dir(feed.path().join("rustsec")).expect("dir");
    let time_v1 = advisory(
        "RUSTSEC-2020-0071",
        "crates.io",
        "time",
        ("SEMVER", "0.0.0-0", "0.2.23"),
        &cvss("CVSS:3.1/AV:L/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"),
    );
    fs::write(
        feed.path().join("rustsec/RUSTSEC-2020-0071.json"),
        time_v1.to_string(),
    )
    .expect("rustsec");
    fs::write(feed.path().join("rustsec/broken.json"), r#"{"id": 7}"#).expect("broken");
    let out = fleet.cli(&[
        "vulns",
        "import",
        feed.path().join("debian.json").to_str().expect("p"),
        feed.path().join("all.zip").to_str().expect("p"),
        feed.path().join("rustsec").to_str().expect("p"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(imported["records"], 8, "{imported}");
    assert_eq!(imported["new"], 6, "{imported}");
    let refused: Vec<&str> = imported["refused"]
        .as_array()
        .expect("refused")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(refused.len(), 2, "{imported}");
    assert!(
        refused
            .iter()
            .any(|r| r.contains("GO-2024-1") && r.contains("names no package")),
        "{imported}"
    );
    assert!(
        refused.iter().any(|r| r.contains("not an OSV record")),
        "{imported}"
    );

    // Each ecosystem's own order decides: the Debian 11 advisory and bash's old fix do
    // not apply; the CVSS vectors give the severities.
    let want_s1 = vec![
        finding(
            "DSA-5587-1",
            "libcurl4",
            "7.88.1-10+deb12u4",
            "7.88.1-10+deb12u5",
            "unknown",
        ),
        finding(
            "GHSA-35jh-r3h4-6jhm",
            "lodash",
            "4.17.20",
            "4.17.21",
            "critical",
        ),
        finding("GHSA-h5c8-rqwp-cp95", "jinja2", "3.1.2", "3.1.3", "medium"),
        finding("RUSTSEC-2020-0071", "time", "0.1.43", "0.2.23", "medium"),
    ];
    let list = fleet.cli_json(&["vulns", "--snapshot", &s1]);
    assert_eq!(findings(&list), want_s1, "{list}");
    let curl = list["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["package"] == "libcurl4"))
        .expect("curl");
    assert_eq!(curl["aliases"][0], "CVE-2023-46218");
    assert_eq!(
        findings(&fleet.cli_json(&["vulns", "--snapshot", &s1, "--severity", "high"])),
        want_s1[1..2]
    );
    assert_eq!(
        findings(&fleet.cli_json(&["vulns", "--device", "web1"])),
        want_s1
    );

    // The worker matched the snapshot on its own; `devices` counts its findings.
    wait_for(
        "devices to count the findings",
        std::time::Duration::from_secs(30),
        || {
            let d = fleet.cli_json(&["devices"]);
            (d[0]["sources"][0]["vulns"] == 4).then_some(())
        },
    );

    // Patched: curl and lodash move past their fixes. The device's newest snapshot has
    // two findings left; the older restore point keeps its four.
    write(root, "var/lib/dpkg/status", STATUS_2);
    write(root, "web/package-lock.json", &lock("4.17.21"));
    let s2 = fleet.backup("web1", "root")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let want_s2 = vec![want_s1[2].clone(), want_s1[3].clone()];
    assert_eq!(
        findings(&fleet.cli_json(&["vulns", "--device", "web1"])),
        want_s2
    );
    assert_eq!(
        findings(&fleet.cli_json(&["vulns", "--snapshot", &s1])),
        want_s1
    );
    let all = fleet.cli_json(&["vulns", "--all"]);
    assert_eq!(findings(&all), want_s2);
    assert!(
        all["findings"]
            .as_array()
            .expect("f")
            .iter()
            .all(|f| f["snapshot"] == s2.as_str()),
        "{all}"
    );

    // The same feed again changes nothing; a corrected advisory is matched again.
    let again = fleet.cli_json(&[
        "vulns",
        "import",
        feed.path().join("rustsec").to_str().expect("p"),
    ]);
    assert_eq!(
        (
            again["new"].as_u64(),
            again["updated"].as_u64(),
            again["unchanged"].as_u64()
        ),
        (Some(0), Some(0), Some(1)),
        "{again}"
    );
    let mut time_v2 = advisory(
        "RUSTSEC-2020-0071",
        "crates.io",
        "time",
        ("SEMVER", "0.1.0", "0.1.40"),
        "",
    );
    time_v2["modified"] = "2026-11-20T00:00:00Z".into();
    fs::write(
        feed.path().join("rustsec/RUSTSEC-2020-0071.json"),
        time_v2.to_string(),
    )
    .expect("v2");
    fs::remove_file(feed.path().join("rustsec/broken.json")).expect("rm");
    let updated = fleet.cli_json(&[
        "vulns",
        "import",
        feed.path().join("rustsec").to_str().expect("p"),
    ]);
    assert_eq!(updated["updated"], 1, "{updated}");
    assert_eq!(
        findings(&fleet.cli_json(&["vulns", "--device", "web1"])),
        want_s2[..1]
    );

    // Usage mistakes exit 1 and say what to do.
    for args in [
        &["vulns"][..],
        &["vulns", "--all", "--severity", "extreme"],
        &["vulns", "--all", "--device", "web1"],
    ] {
        let out = fleet.cli(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = fleet.cli(&["vulns", "--device", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn recovery_plans_pass_over_suspect_and_vulnerable_restore_points_and_say_why() {
    let mut fleet = Fleet::start();
    let work = tempfile::tempdir().expect("work");
    let root = work.path().join("srv");
    write(&root, "etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n");
    write(&root, "web/package-lock.json", &lock("4.17.20"));
    for i in 0..30 {
        write(
            &root,
            &format!("data/d{}/doc{i}.txt", i % 4),
            &"quarterly figures and prose\n".repeat(200),
        );
    }
    let agent = fleet.enroll("web1");
    fleet.run_agent(&agent, &[("root", &root)], &[work.path()]);
    let id = |v: Value| v["id"].as_str().expect("id").to_owned();
    // s1: lodash with a critical advisory. s2: lodash patched, Jinja2 (a medium one)
    // installed. s3: the tree encrypted in place.
    let s1 = id(fleet.backup("web1", "root"));
    write(&root, "web/package-lock.json", &lock("4.17.21"));
    write(
        &root,
        "venv/lib/python3.11/site-packages/Jinja2-3.1.2.dist-info/METADATA",
        "Name: Jinja2\nVersion: 3.1.2\n",
    );
    let s2 = id(fleet.backup("web1", "root"));
    lifeboat_tests::tree::encrypt_in_place(&root);
    let s3 = id(fleet.backup("web1", "root"));

    let feed = tempfile::tempdir().expect("feed");
    let cvss = |v: &str| format!(r#"{{"severity":[{{"type":"CVSS_V3","score":"{v}"}}]}}"#);
    let mut jinja = advisory(
        "GHSA-h75v-3vvj-5mfj",
        "PyPI",
        "jinja2",
        ("ECOSYSTEM", "0", "3.1.3"),
        &cvss("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:L/I:L/A:N"),
    );
    jinja["aliases"] = serde_json::json!(["CVE-2024-22195"]);
    let records = serde_json::json!([
        jinja,
        advisory(
            "GHSA-35jh-r3h4-6jhm",
            "npm",
            "lodash",
            ("SEMVER", "0", "4.17.21"),
            &cvss("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
        ),
    ]);
    fs::write(feed.path().join("feed.json"), records.to_string()).expect("feed");
    fleet.cli_json(&[
        "vulns",
        "import",
        feed.path().join("feed.json").to_str().expect("p"),
    ]);
    wait_for(
        "the encrypted snapshot to be judged",
        std::time::Duration::from_secs(30),
        || {
            let a = fleet.cli_json(&["anomalies"]);
            a.as_array()?
                .iter()
                .any(|x| x["snapshot"] == s3.as_str())
                .then_some(())
        },
    );

    let plan = |extra: &[&str]| -> Value {
        let mut args = vec!["recover", "plan", "--agent", "web1", "--before", "0s"];
        args.extend_from_slice(extra);
        fleet.cli_json(&args)
    };
    let source = |p: &Value| p["devices"][0]["sources"][0].clone();
    let passed = |s: &Value| -> Vec<String> {
        s["passed_over"]
            .as_array()
            .expect("passed_over")
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    };

    // Suspect snapshots are passed over even when nobody quarantined them.
    let s = source(&plan(&[]));
    assert_eq!(s["snapshot"], s2.as_str(), "{s}");
    let over = passed(&s);
    assert_eq!(over.len(), 1, "{over:?}");
    assert!(
        over[0].starts_with(&s3[..12]) && over[0].contains("suspect: ransomware signals scored"),
        "{over:?}"
    );
    assert!(
        s["chosen_because"]
            .as_str()
            .expect("why")
            .contains("not suspect"),
        "{s}"
    );

    // Without a CVE: back past the snapshot that carries it, saying so.
    let s = source(&plan(&["--without", "CVE-2024-22195"]));
    assert_eq!(s["snapshot"], s1.as_str(), "{s}");
    let over = passed(&s);
    assert_eq!(over.len(), 2, "{over:?}");
    assert!(
        over[1].starts_with(&s2[..12]) && over[1].contains("carries CVE-2024-22195 (jinja2 3.1.2)"),
        "{over:?}"
    );
    assert!(
        s["chosen_because"]
            .as_str()
            .expect("why")
            .contains("without CVE-2024-22195"),
        "{s}"
    );

    // By severity: medium allowed keeps s2; nothing above low leaves no restore point.
    assert_eq!(
        source(&plan(&["--max-severity", "medium"]))["snapshot"],
        s2.as_str()
    );
    let none = fleet.cli(&[
        "recover",
        "plan",
        "--agent",
        "web1",
        "--before",
        "0s",
        "--max-severity",
        "low",
        "--json",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&none.stdout),
        String::from_utf8_lossy(&none.stderr)
    );
    assert!(
        text.contains("no good snapshot") && text.contains("critical finding"),
        "{text}"
    );

    // The table says it too.
    let out = fleet.cli(&[
        "recover",
        "plan",
        "--agent",
        "web1",
        "--before",
        "0s",
        "--without",
        "CVE-2024-22195",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("passed over") && table.contains("CVE-2024-22195"),
        "{table}"
    );
}
