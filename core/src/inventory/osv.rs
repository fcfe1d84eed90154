//! Vulnerability advisories in the OSV format (<https://ossf.github.io/osv-schema/>), as
//! osv.dev exports them per ecosystem, and whether one affects an installed package.
//!
//! Only what matching needs is kept: the affected packages of the ecosystems an inventory
//! reads, with their version ranges (`ECOSYSTEM` and `SEMVER`; `GIT` ranges name commits,
//! which an installed package does not have) and explicit version lists; the severity, from
//! a CVSS v3 vector's base score or the database's own word.

use std::cmp::Ordering;

use serde::Deserialize;

use super::version;
use super::{Ecosystem, Os, Package, pep503};

/// How bad, in CVSS's qualitative bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// `low`, `medium` (or `moderate`), `high`, `critical`, `unknown`; any case.
    pub fn parse(s: &str) -> Option<Severity> {
        match s.trim().to_ascii_lowercase().as_str() {
            "unknown" => Some(Severity::Unknown),
            "low" => Some(Severity::Low),
            "medium" | "moderate" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    fn of_score(score: f64) -> Severity {
        match score {
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            s if s > 0.0 => Severity::Low,
            _ => Severity::Unknown,
        }
    }
}

/// One advisory, reduced to what matching and listing need.
#[derive(Debug, Clone, PartialEq)]
pub struct Advisory {
    pub id: String,
    pub modified: String,
    pub summary: String,
    /// CVE ids and the like.
    pub aliases: Vec<String>,
    pub severity: Severity,
    /// The CVSS v3 base score, when the advisory carries a vector.
    pub score: Option<f64>,
    pub affected: Vec<Affected>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Affected {
    pub ecosystem: Ecosystem,
    /// The release an OS advisory is for (`12` of `Debian:12`, `v3.19` of `Alpine:v3.19`);
    /// "" for all.
    pub release: String,
    pub name: String,
    pub ranges: Vec<Range>,
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    /// SEMVER ranges order by SemVer whatever the ecosystem.
    pub semver: bool,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
}

#[derive(Deserialize)]
struct RawAdvisory {
    id: String,
    #[serde(default)]
    modified: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    details: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    severity: Vec<RawSeverity>,
    #[serde(default)]
    affected: Vec<RawAffected>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct RawAffected {
    package: Option<RawPackage>,
    #[serde(default)]
    ranges: Vec<RawRange>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    severity: Vec<RawSeverity>,
    #[serde(default)]
    ecosystem_specific: Option<serde_json::Value>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Limits on what one record may hold: a feed is input from outside.
const MAX_ID: usize = 128;
const MAX_AFFECTED: usize = 10_000;

/// Parses one OSV record. The error names what is wrong with it.
pub fn parse(json: &[u8]) -> Result<Advisory, String> {
    let raw: RawAdvisory =
        serde_json::from_slice(json).map_err(|e| format!("not an OSV record: {e}"))?;
    if raw.id.is_empty()
        || raw.id.len() > MAX_ID
        || raw.id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!("{:?} is not an advisory id", raw.id));
    }
    if raw.affected.len() > MAX_AFFECTED {
        return Err(format!(
            "{}: {} affected packages is more than a record may hold",
            raw.id,
            raw.affected.len()
        ));
    }
    let mut score = None;
    let mut words = Vec::new();
    let mut consider = |sev: &[RawSeverity], specific: [&Option<serde_json::Value>; 2]| {
        for s in sev {
            if s.kind == "CVSS_V3"
                && let Some(v) = cvss3_base_score(&s.score)
            {
                score = Some(score.map_or(v, |old: f64| old.max(v)));
            }
        }
        for spec in specific.into_iter().flatten() {
            if let Some(w) = spec
                .get("severity")
                .and_then(|s| s.as_str())
                .and_then(Severity::parse)
            {
                words.push(w);
            }
        }
    };
    consider(&raw.severity, [&raw.database_specific, &None]);
    let mut affected = Vec::new();
    for a in &raw.affected {
        consider(&a.severity, [&a.ecosystem_specific, &a.database_specific]);
        let Some(pkg) = &a.package else { continue };
        let Some(ecosystem) = Ecosystem::from_osv(&pkg.ecosystem) else {
            continue;
        };
        let release = pkg
            .ecosystem
            .split_once(':')
            .map(|(_, r)| r.to_owned())
            .unwrap_or_default();
        let name = match ecosystem {
            Ecosystem::PyPI => pep503(&pkg.name),
            _ => pkg.name.trim().to_owned(),
        };
        let ranges = a
            .ranges
            .iter()
            .filter(|r| r.kind == "ECOSYSTEM" || r.kind == "SEMVER")
            .map(|r| Range {
                semver: r.kind == "SEMVER",
                events: r
                    .events
                    .iter()
                    .filter_map(|e| {
                        let (k, v) = e.iter().next()?;
                        let v = v.as_str()?.to_owned();
                        match k.as_str() {
                            "introduced" => Some(Event::Introduced(v)),
                            "fixed" => Some(Event::Fixed(v)),
                            "last_affected" => Some(Event::LastAffected(v)),
                            _ => None,
                        }
                    })
                    .collect(),
            })
            .collect();
        affected.push(Affected {
            ecosystem,
            release,
            name,
            ranges,
            versions: a.versions.clone(),
        });
    }
    let severity = match (score, words.iter().max()) {
        (Some(s), _) => Severity::of_score(s),
        (None, Some(w)) => *w,
        (None, None) => Severity::Unknown,
    };
    let summary = if raw.summary.is_empty() {
        raw.details
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect()
    } else {
        raw.summary
    };
    Ok(Advisory {
        id: raw.id,
        modified: raw.modified,
        summary,
        aliases: raw.aliases,
        severity,
        score,
        affected,
    })
}

/// What an advisory says of one installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The first fixed version above the installed one ("" when no fix is known).
    pub fixed: String,
}

impl Advisory {
    /// Whether this advisory affects `pkg` (in a snapshot of `os`), and its fix.
    pub fn affects(&self, pkg: &Package, os: Option<&Os>) -> Option<Hit> {
        let name = match pkg.ecosystem {
            Ecosystem::Debian | Ecosystem::Alpine if !pkg.source.is_empty() => pkg.source.as_str(),
            _ => pkg.name.as_str(),
        };
        for a in &self.affected {
            if a.ecosystem != pkg.ecosystem || a.name != name || !release_matches(a, os) {
                continue;
            }
            if a.versions.iter().any(|v| v == &pkg.version) {
                return Some(Hit {
                    fixed: fix_after(a, pkg),
                });
            }
            for r in &a.ranges {
                if in_range(r, pkg.ecosystem, &pkg.version) {
                    return Some(Hit {
                        fixed: fix_after(a, pkg),
                    });
                }
            }
        }
        None
    }

    /// The (ecosystem, name) pairs this advisory names, for an index.
    pub fn packages(&self) -> impl Iterator<Item = (Ecosystem, &str)> {
        self.affected.iter().map(|a| (a.ecosystem, a.name.as_str()))
    }
}

/// An OS advisory for one release applies to snapshots of that release (or of an unknown
/// one); Debian's advisories say nothing of Ubuntu's packages.
fn release_matches(a: &Affected, os: Option<&Os>) -> bool {
    let Some(os) = os.filter(|o| !o.id.is_empty()) else {
        return true;
    };
    match a.ecosystem {
        Ecosystem::Debian => {
            os.id == "debian"
                && (a.release.is_empty()
                    || os.version_id.is_empty()
                    || os.version_id.split('.').next() == Some(a.release.as_str()))
        }
        Ecosystem::Alpine => {
            let minor: Vec<&str> = os.version_id.split('.').take(2).collect();
            os.id == "alpine"
                && (a.release.is_empty()
                    || os.version_id.is_empty()
                    || a.release.trim_start_matches('v') == minor.join("."))
        }
        _ => true,
    }
}

fn order(semver: bool, ecosystem: Ecosystem, a: &str, b: &str) -> Ordering {
    if semver {
        version::semver(a, b)
    } else {
        version::compare(ecosystem, a, b)
    }
}

/// OSV's evaluation: events in version order (`introduced: "0"` first), the state after
/// the last event at or below the version is the answer.
fn in_range(r: &Range, ecosystem: Ecosystem, v: &str) -> bool {
    let at = |e: &Event| match e {
        Event::Introduced(x) | Event::Fixed(x) | Event::LastAffected(x) => x.clone(),
    };
    let mut events = r.events.clone();
    events.sort_by(|x, y| {
        let (a, b) = (at(x), at(y));
        match (a == "0", b == "0") {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => order(r.semver, ecosystem, &a, &b),
        }
    });
    let mut affected = false;
    for e in &events {
        match e {
            Event::Introduced(x) => {
                if x == "0" || order(r.semver, ecosystem, v, x) != Ordering::Less {
                    affected = true;
                }
            }
            Event::Fixed(x) => {
                if order(r.semver, ecosystem, v, x) != Ordering::Less {
                    affected = false;
                }
            }
            Event::LastAffected(x) => {
                if order(r.semver, ecosystem, v, x) == Ordering::Greater {
                    affected = false;
                }
            }
        }
    }
    affected
}

fn fix_after(a: &Affected, pkg: &Package) -> String {
    a.ranges
        .iter()
        .flat_map(|r| r.events.iter().map(move |e| (r.semver, e)))
        .filter_map(|(semver, e)| match e {
            Event::Fixed(x)
                if order(semver, pkg.ecosystem, x, &pkg.version) == Ordering::Greater =>
            {
                Some((semver, x.clone()))
            }
            _ => None,
        })
        .min_by(|(s, x), (_, y)| order(*s, pkg.ecosystem, x, y))
        .map(|(_, x)| x)
        .unwrap_or_default()
}

/// A CVSS v3.0/v3.1 vector's base score (`CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H`
/// is 9.8); `None` for a vector that is not one.
pub fn cvss3_base_score(vector: &str) -> Option<f64> {
    let mut parts = vector.split('/');
    if !parts.next()?.starts_with("CVSS:3") {
        return None;
    }
    let mut m = std::collections::HashMap::new();
    for p in parts {
        let (k, v) = p.split_once(':')?;
        m.insert(k, v);
    }
    let changed = match *m.get("S")? {
        "U" => false,
        "C" => true,
        _ => return None,
    };
    let av = match *m.get("AV")? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match *m.get("AC")? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (*m.get("PR")?, changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match *m.get("UI")? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |k: &str| -> Option<f64> {
        match *m.get(k)? {
            "H" => Some(0.56),
            "L" => Some(0.22),
            "N" => Some(0.0),
            _ => None,
        }
    };
    let iss = 1.0 - (1.0 - cia("C")?) * (1.0 - cia("I")?) * (1.0 - cia("A")?);
    let impact = if changed {
        7.52 * (iss - 0.029) - 3.25 * (iss - 0.02).powi(15)
    } else {
        6.42 * iss
    };
    let exploitability = 8.22 * av * ac * pr * ui;
    if impact <= 0.0 {
        return Some(0.0);
    }
    let raw = if changed {
        1.08 * (impact + exploitability)
    } else {
        impact + exploitability
    };
    Some(roundup(raw.min(10.0)))
}

/// CVSS 3.1's Roundup: the smallest one-decimal number at or above `x`, robust to
/// floating-point error.
fn roundup(x: f64) -> f64 {
    let i = (x * 100_000.0).round() as i64;
    if i % 10_000 == 0 {
        i as f64 / 100_000.0
    } else {
        ((i / 10_000) + 1) as f64 / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(ecosystem: Ecosystem, name: &str, version: &str) -> Package {
        Package {
            ecosystem,
            name: name.into(),
            version: version.into(),
            source: name.into(),
            arch: String::new(),
            location: String::new(),
            layer: String::new(),
        }
    }

    const CURL: &str = r#"{"id":"DSA-5587-1","modified":"2023-12-20T00:00:00Z","aliases":["CVE-2023-46218"],
        "summary":"curl security update",
        "affected":[{"package":{"ecosystem":"Debian:12","name":"curl"},
          "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"7.88.1-10+deb12u5"}]}]}]}"#;

    #[test]
    fn a_debian_advisory_affects_the_source_package_below_its_fix_on_its_release() {
        let a = parse(CURL.as_bytes()).expect("parses");
        let debian12 = Os {
            id: "debian".into(),
            version_id: "12".into(),
            pretty_name: String::new(),
        };
        let debian11 = Os {
            version_id: "11".into(),
            ..debian12.clone()
        };
        let ubuntu = Os {
            id: "ubuntu".into(),
            version_id: "22.04".into(),
            pretty_name: String::new(),
        };
        let mut lib = pkg(Ecosystem::Debian, "libcurl4", "7.88.1-10+deb12u4");
        lib.source = "curl".into();
        assert_eq!(
            a.affects(&lib, Some(&debian12)),
            Some(Hit {
                fixed: "7.88.1-10+deb12u5".into()
            })
        );
        assert_eq!(
            a.affects(&lib, None),
            Some(Hit {
                fixed: "7.88.1-10+deb12u5".into()
            })
        );
        assert_eq!(a.affects(&lib, Some(&debian11)), None, "another release");
        assert_eq!(a.affects(&lib, Some(&ubuntu)), None, "another distribution");
        lib.version = "7.88.1-10+deb12u5".into();
        assert_eq!(a.affects(&lib, Some(&debian12)), None, "the fixed version");
        assert_eq!(a.severity, Severity::Unknown);
    }

    #[test]
    fn ranges_with_last_affected_several_introductions_and_version_lists() {
        let json = r#"{"id":"GHSA-x","affected":[{"package":{"ecosystem":"PyPI","name":"Jinja2"},
            "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"2.0"},{"fixed":"2.11.3"},
                {"introduced":"3.0.0"},{"last_affected":"3.1.2"}]}],
            "versions":["1.2"]}],
            "severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}"#;
        let a = parse(json.as_bytes()).expect("parses");
        assert_eq!(a.score, Some(9.8));
        assert_eq!(a.severity, Severity::Critical);
        for (v, hit) in [
            ("1.2", true),
            ("1.9", false),
            ("2.0", true),
            ("2.11.2", true),
            ("2.11.3", false),
            ("2.99", false),
            ("3.0.0", true),
            ("3.1.2", true),
            ("3.1.3", false),
        ] {
            assert_eq!(
                a.affects(&pkg(Ecosystem::PyPI, "jinja2", v), None)
                    .is_some(),
                hit,
                "{v}"
            );
        }
        assert_eq!(
            a.affects(&pkg(Ecosystem::PyPI, "jinja2", "2.5"), None),
            Some(Hit {
                fixed: "2.11.3".into()
            })
        );
    }

    #[test]
    fn semver_ranges_and_database_severity_words() {
        let json = r#"{"id":"GHSA-lodash","database_specific":{"severity":"MODERATE"},
            "affected":[{"package":{"ecosystem":"npm","name":"lodash"},
            "ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"4.17.21"}]},
                      {"type":"GIT","repo":"x","events":[{"introduced":"abc"}]}]}]}"#;
        let a = parse(json.as_bytes()).expect("parses");
        assert_eq!(a.severity, Severity::Medium);
        assert!(
            a.affects(&pkg(Ecosystem::Npm, "lodash", "4.17.20"), None)
                .is_some()
        );
        assert!(
            a.affects(&pkg(Ecosystem::Npm, "lodash", "4.17.21"), None)
                .is_none()
        );
        assert!(
            a.affects(&pkg(Ecosystem::Npm, "lodash-es", "4.17.20"), None)
                .is_none()
        );
    }

    #[test]
    fn cvss3_base_scores_match_the_specification_examples() {
        for (v, want) in [
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
            ("CVSS:3.0/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8),
            ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
        ] {
            assert_eq!(cvss3_base_score(v), Some(want), "{v}");
        }
        assert_eq!(cvss3_base_score("CVSS:2.0/AV:N"), None);
        assert_eq!(
            cvss3_base_score("CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
            None
        );
    }

    #[test]
    fn bad_records_are_refused_with_what_is_wrong() {
        assert!(
            parse(b"{")
                .expect_err("not json")
                .contains("not an OSV record")
        );
        assert!(
            parse(br#"{"id":""}"#)
                .expect_err("empty id")
                .contains("not an advisory id")
        );
        assert!(
            parse(br#"{"id":"a b"}"#)
                .expect_err("space")
                .contains("not an advisory id")
        );
        let unknown =
            parse(br#"{"id":"GO-1","affected":[{"package":{"ecosystem":"Go","name":"x"}}]}"#)
                .expect("a record of another ecosystem parses");
        assert!(unknown.affected.is_empty(), "and names nothing we read");
    }
}
