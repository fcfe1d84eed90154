//! Version order against each ecosystem's reference implementation, on every pair of a
//! list of versions as they appear in the wild and at the edges of each grammar: dpkg's own
//! `dpkg --compare-versions`, Python's `packaging` (what pip uses), npm's own `semver`
//! module (what npm uses; Cargo's order for crates.io is the same SemVer precedence), and
//! for apk, which has no tool on a Debian machine, the Alpine order of `univers` (PyPI; the
//! version library of AboutCode's VulnerableCode, a port of apk-tools' comparison).
//!
//! Where a reference is missing the test says so loudly and skips it, unless
//! `LIFEBOAT_REQUIRE_VERSION_REFERENCES=1` (as `.ci/run` sets), where it fails.

use std::cmp::Ordering;
use std::io::Write;
use std::process::{Command, Stdio};

use lifeboat_core::inventory::version;

const DPKG: &[&str] = &[
    "0",
    "1.0",
    "1.0-1",
    "1.0-1+deb12u1",
    "1:0.9",
    "1.0~rc1",
    "1.0~rc1-1",
    "1.0+dfsg-2",
    "1.0+dfsg-2~bpo11+1",
    "2.36-9+deb12u4",
    "2.36-9+deb12u10",
    "1.0a",
    "1.0.0",
    "1.00",
    "1.0-0ubuntu1",
    "3.0.11-1~deb12u2",
    "3.0.13-1~deb12u1",
    "7.88.1-10+deb12u5",
    "1.2.3.4",
    "1.2.3-4.1",
    "1:1.0",
    "2:9.0.1378-2",
    "9.0.1378-2",
    "1.0~~",
    "1.0~",
    "1.0+",
    "1.0-a",
    "5.2.15-2+b2",
    "5.2.15-2",
    "10:1",
    "1.0-1~",
    "1.0-10",
    "1.0-9",
];

const PEP440: &[&str] = &[
    "1.0",
    "1.0.0",
    "1.0a1",
    "1.0b2",
    "1.0rc1",
    "1.0.dev0",
    "1.0a1.dev1",
    "1.0.post1",
    "1.0.post1.dev2",
    "1.0+local.1",
    "1.0+local.2",
    "1.0+abc",
    "1!0.5",
    "2.0",
    "2.0.1",
    "0.9.9",
    "1.0-1",
    "1.0.post0",
    "1.1rc10",
    "1.1rc2",
    "v1.1",
    "1.0c1",
    "1.0pre1",
    "1.0alpha2",
    "3.1.2",
    "3.1.10",
    "1.0.0.0.1",
    "1.0.dev10",
    "1.0b2.post3",
    "1.0rc1.post1",
    "1.0+1",
    "1.0+a.1",
    "1.0+1.a",
];

// univers follows Gentoo's rules where they differ from apk-tools' on two points: an
// explicit `-r0` (Gentoo: the same as none; apk-tools: after none) and a component with
// leading zeros (`1.001`; apk-tools compares it as a fraction, below `1.0`). Those are left
// out here and pinned by the unit tests of `version::apk`.
const APK: &[&str] = &[
    "1.0",
    "1.0-r1",
    "1.0-r10",
    "1.0_alpha",
    "1.0_alpha1",
    "1.0_beta2",
    "1.0_pre1",
    // (univers refuses the _cvs, _svn, _git and _hg suffixes apk also knows.)
    "1.0_rc1",
    "1.0_rc1-r1",
    "1.0_p1",
    "1.0_p2",
    "1.0a",
    "1.0b",
    "1.0.1",
    "1.01",
    "1.1",
    "1.10",
    "2.0",
    "0.9.9",
    "1.2.4-r2",
    "1.36.1-r5",
    "1.36.1-r15",
    "3.0.11-r0",
    "3.0.13-r1",
    "1.0.0",
    "1.2.3b_p1-r2",
];

const SEMVER: &[&str] = &[
    "1.0.0",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.1",
    "1.10.0",
    "1.2.0",
    "4.17.20",
    "4.17.21",
    "0.0.1",
    "0.1.0",
    "10.0.0",
    "1.0.0-0",
    "1.0.0-x.7.z.92",
    "1.0.0+build",
    "2.0.0-rc.1+build.5",
    "1.0.0-alpha.10",
    "1.0.0-alpha.9",
    "7.23.0",
    "7.3.0",
    "0.1.43",
    "1.0.0-alpha-1",
];

fn pairs(versions: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for (i, a) in versions.iter().enumerate() {
        for b in &versions[i..] {
            out.push((*a, *b));
        }
    }
    out
}

fn required() -> bool {
    std::env::var("LIFEBOAT_REQUIRE_VERSION_REFERENCES").as_deref() == Ok("1")
}

/// Runs `program args` with `input` on stdin; one answer (`-1`, `0`, `1`) per line out.
fn reference(program: &str, args: &[&str], input: String) -> Option<Vec<Ordering>> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        assert!(
            !required(),
            "{program} is missing and LIFEBOAT_REQUIRE_VERSION_REFERENCES=1"
        );
        eprintln!("SKIPPED: {program} is not installed; this reference is not checked");
        return None;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write pairs");
    let out = child.wait_with_output().expect("reference");
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(!required(), "{program} failed: {why}");
        eprintln!("SKIPPED: {program} cannot run this reference ({why})");
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| match l.trim() {
                "-1" => Ordering::Less,
                "0" => Ordering::Equal,
                "1" => Ordering::Greater,
                other => panic!("{program} answered {other:?}"),
            })
            .collect(),
    )
}

/// A Python library's order of each pair: `import` binds the version class to `V`.
fn python_order(import: &str, pairs: &[(&str, &str)]) -> Option<Vec<Ordering>> {
    let script = format!(
        "import sys\n{import}\n\
         for line in sys.stdin:\n\
         \x20   a, b = line.split()\n\
         \x20   x, y = V(a), V(b)\n\
         \x20   print(-1 if x < y else 0 if x == y else 1)\n"
    );
    let input: String = pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
    reference("python3", &["-c", &script], input)
}

fn check(
    what: &str,
    pairs: &[(&str, &str)],
    ours: fn(&str, &str) -> Ordering,
    theirs: Option<Vec<Ordering>>,
) {
    let Some(theirs) = theirs else { return };
    assert_eq!(theirs.len(), pairs.len(), "{what}: one answer per pair");
    let wrong: Vec<String> = pairs
        .iter()
        .zip(&theirs)
        .filter(|((a, b), t)| ours(a, b) != **t)
        .map(|((a, b), t)| format!("{a} vs {b}: ours {:?}, {what} {t:?}", ours(a, b)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} pairs differ:\n{}",
        wrong.len(),
        pairs.len(),
        wrong.join("\n")
    );
    println!("{what}: {} pairs agree", pairs.len());
}

#[test]
fn dpkg_order_matches_dpkg_compare_versions() {
    let pairs = pairs(DPKG);
    let script = "while read -r a b; do\n\
        if dpkg --compare-versions \"$a\" lt \"$b\"; then echo -1;\n\
        elif dpkg --compare-versions \"$a\" eq \"$b\"; then echo 0; else echo 1; fi\n\
        done";
    let input: String = pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
    let which = Command::new("sh").args(["-c", "command -v dpkg"]).output();
    if !which.is_ok_and(|o| o.status.success()) {
        assert!(
            !required(),
            "dpkg is missing and LIFEBOAT_REQUIRE_VERSION_REFERENCES=1"
        );
        eprintln!("SKIPPED: dpkg is not installed");
        return;
    }
    check(
        "dpkg --compare-versions",
        &pairs,
        version::dpkg,
        reference("bash", &["-c", script], input),
    );
}

#[test]
fn pep440_order_matches_python_packaging() {
    let pairs = pairs(PEP440);
    check(
        "packaging.version",
        &pairs,
        version::pep440,
        python_order("from packaging.version import Version as V", &pairs),
    );
}

#[test]
fn apk_order_matches_univers_alpine_order() {
    let pairs = pairs(APK);
    check(
        "univers AlpineLinuxVersion",
        &pairs,
        version::apk,
        python_order(
            "from univers.versions import AlpineLinuxVersion as V",
            &pairs,
        ),
    );
}

#[test]
fn semver_order_matches_npms_own_semver() {
    let pairs = pairs(SEMVER);
    let root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(root) = root else {
        assert!(
            !required(),
            "npm is missing and LIFEBOAT_REQUIRE_VERSION_REFERENCES=1"
        );
        eprintln!("SKIPPED: npm is not installed; its semver module is the reference");
        return;
    };
    // npm's own copy (npm from nodejs.org), or Debian's (npm from Debian's packages).
    let script = format!(
        "let semver; for (const p of [{:?}, '/usr/share/nodejs/semver']) {{ try {{ semver = require(p); break; }} catch (e) {{}} }}\n\
         const lines = require('fs').readFileSync(0, 'utf8').trim().split('\\n');\n\
         for (const l of lines) {{ const [a, b] = l.split(' '); console.log(semver.compare(a, b)); }}\n",
        format!("{root}/npm/node_modules/semver")
    );
    let input: String = pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
    check(
        "npm semver",
        &pairs,
        version::semver,
        reference("node", &["-e", &script], input),
    );
}
