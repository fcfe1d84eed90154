//! Backup policies: declarative TOML files, validated here (unknown keys, cron, selectors,
//! durations, each refused with its line and the reason), stored in the catalog.
//!
//! ```toml
//! [[policy]]
//! name = "web-hourly"
//! selector = "role=web,site=fra"
//! sources = ["data", "all-volumes"]
//! schedule = "0 * * * *"
//! timezone = "Europe/Berlin"
//! splay = "10m"
//! keep = { last = 3, hourly = 24, daily = 7, weekly = 4, monthly = 12 }
//! lock = "7d"
//! tier = 1
//! ```
//!
//! Further keys: `consistency` (pause, hook, none) and `hook = { container, before, after,
//! timeout }` for volumes, `max_concurrent` (jobs of this policy at once), `bandwidth` (per
//! agent, e.g. "50MiB/s"), and `keep.yearly`, `keep.within` ("30d").
//!
//! Drills: `drill = { every = "7d", sample = 2, probe = "test -s etc/hostname" }` drills
//! the selected devices in a rotating sample so that every one is drilled within `every`
//! (`sample` devices per round, rounds spread evenly; the least recently drilled first).

use std::collections::BTreeMap;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::ApiError;

/// A validated policy, as stored (JSON) in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    /// `key=value` pairs, all of which an agent's labels must have. Empty: every agent.
    pub selector: BTreeMap<String, String>,
    pub sources: Vec<String>,
    pub schedule: String,
    pub timezone: String,
    pub splay_s: u64,
    pub keep: Keep,
    pub lock_s: u64,
    pub tier: u32,
    pub consistency: String,
    pub hook: Option<Hook>,
    pub max_concurrent: u32,
    /// Upload bytes per second per agent (0: unlimited).
    pub bandwidth: u64,
    #[serde(default)]
    pub drill: Option<Drill>,
}

/// Scheduled restore drills over the policy's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// Every device is drilled within this period.
    pub every_s: u64,
    /// Devices per round.
    pub sample: u32,
    pub probe: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillSpec {
    every: String,
    #[serde(default)]
    sample: Option<u32>,
    #[serde(default)]
    probe: Option<String>,
}

/// Retention: how many snapshots of each kind to keep (by the controller's receive time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep everything received within this many seconds of now.
    pub within_s: u64,
}

impl Keep {
    pub fn is_empty(&self) -> bool {
        *self == Keep::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub container: String,
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub timeout_s: u32,
}

impl Policy {
    /// Whether an agent with `labels` falls under this policy.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// The cron schedule (validated at apply time).
    pub fn cron(&self) -> Result<croner::Cron, ApiError> {
        parse_cron(&self.schedule).map_err(ApiError::internal)
    }

    pub fn tz(&self) -> Result<jiff::tz::TimeZone, ApiError> {
        jiff::tz::TimeZone::get(&self.timezone).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The first slot of the schedule strictly after `after_ms` (Unix ms).
    pub fn next_slot(&self, after_ms: i64) -> Result<i64, ApiError> {
        let cron = self.cron()?;
        let tz = self.tz()?;
        let t = jiff::Timestamp::from_millisecond(after_ms)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .to_zoned(tz);
        let next = cron
            .find_next_occurrence(&t, false)
            .map_err(|e| ApiError::internal(format!("policy {}: {e}", self.name)))?;
        Ok(next.timestamp().as_millisecond())
    }
}

// ---- the file format ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policy: Vec<Spanned<Spec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: Spanned<String>,
    #[serde(default)]
    selector: Option<Spanned<String>>,
    sources: Spanned<Vec<Spanned<String>>>,
    schedule: Spanned<String>,
    #[serde(default)]
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    splay: Option<Spanned<String>>,
    #[serde(default)]
    keep: Option<Spanned<KeepSpec>>,
    #[serde(default)]
    lock: Option<Spanned<String>>,
    #[serde(default)]
    tier: Option<u32>,
    #[serde(default)]
    consistency: Option<Spanned<String>>,
    #[serde(default)]
    hook: Option<Spanned<HookSpec>>,
    #[serde(default)]
    max_concurrent: Option<u32>,
    #[serde(default)]
    bandwidth: Option<Spanned<String>>,
    #[serde(default)]
    drill: Option<Spanned<DrillSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepSpec {
    #[serde(default)]
    last: u32,
    #[serde(default)]
    hourly: u32,
    #[serde(default)]
    daily: u32,
    #[serde(default)]
    weekly: u32,
    #[serde(default)]
    monthly: u32,
    #[serde(default)]
    yearly: u32,
    #[serde(default)]
    within: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookSpec {
    container: String,
    #[serde(default)]
    before: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    timeout: Option<String>,
}

/// `FILE:LINE: reason`, the way editors jump to it.
fn at(file: &str, text: &str, span: Range<usize>, why: impl std::fmt::Display) -> String {
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    format!("{file}:{line}: {why}")
}

fn parse_cron(s: &str) -> Result<croner::Cron, String> {
    if s.split_whitespace().count() != 5 {
        return Err(format!(
            "schedule {s:?} must have 5 fields: minute hour day-of-month month day-of-week"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| format!("schedule {s:?} is not a valid cron expression: {e}"))
}

fn duration_s(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{s:?} is not a duration like 10m, 7d: {e}"))
}

/// "50MiB/s", "10MB/s", "1GiB/s" → bytes per second.
fn rate(s: &str) -> Result<u64, String> {
    lifeboat_core::units::parse_rate(s)
        .ok_or_else(|| format!("bandwidth {s:?} must look like 50MiB/s or 10MB/s"))
}

/// Parses a selector `k=v,k2=v2` (empty: every agent).
pub fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("selector term {part:?} must be KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        let mut one = BTreeMap::new();
        one.insert(k.to_string(), v.to_string());
        crate::enroll::validate_labels(&one).map_err(|e| format!("selector: {e}"))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("selector names {k:?} twice"));
        }
    }
    Ok(out)
}

/// A source entry of a policy: a host path name, a `*`/`?` pattern over host path names,
/// `all-images`, `all-volumes`, `image:REF` or `volume:NAME`.
fn check_source(s: &str) -> Result<(), String> {
    if s == "all-images" || s == "all-volumes" {
        return Ok(());
    }
    if s.contains(['*', '?']) && !s.contains(':') {
        let ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*' | b'?'));
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "source pattern {s:?} may use letters, digits, '.', '_', '-', '*', '?'"
            ))
        };
    }
    lifeboat_core::snapshot::validate_source(s).map_err(|e| e.to_string())
}

/// Parses and validates a policy file. Every problem is reported, each with its line.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Policy>, Vec<String>> {
    let parsed: File = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        vec![at(file, text, span, e.message())]
    })?;
    let mut errors = Vec::new();
    let mut out: Vec<Policy> = Vec::new();
    for spec in parsed.policy {
        let spec_span = spec.span();
        let s = spec.into_inner();
        let mut err = |span: Range<usize>, why: String| errors.push(at(file, text, span, why));
        let name = s.name.get_ref().clone();
        if let Err(e) = lifeboat_core::snapshot::validate_name("policy", &name) {
            err(s.name.span(), e.to_string());
        }
        if out.iter().any(|p| p.name == name) {
            err(s.name.span(), format!("policy {name:?} is defined twice"));
        }
        let selector = match &s.selector {
            Some(sel) => parse_selector(sel.get_ref()).unwrap_or_else(|e| {
                err(sel.span(), e);
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        if s.sources.get_ref().is_empty() {
            err(
                s.sources.span(),
                "sources is empty: name at least one".into(),
            );
        }
        for src in s.sources.get_ref() {
            if let Err(e) = check_source(src.get_ref()) {
                err(src.span(), e);
            }
        }
        if let Err(e) = parse_cron(s.schedule.get_ref()) {
            err(s.schedule.span(), e);
        }
        let timezone = match &s.timezone {
            Some(tz) => {
                if jiff::tz::TimeZone::get(tz.get_ref()).is_err() {
                    err(
                        tz.span(),
                        format!(
                            "time zone {:?} is unknown (use an IANA name such as Europe/Berlin, or UTC)",
                            tz.get_ref()
                        ),
                    );
                }
                tz.get_ref().clone()
            }
            None => "UTC".into(),
        };
        let mut dur = |v: &Option<Spanned<String>>| -> u64 {
            v.as_ref()
                .map(|d| {
                    duration_s(d.get_ref()).unwrap_or_else(|e| {
                        errors.push(at(file, text, d.span(), e));
                        0
                    })
                })
                .unwrap_or(0)
        };
        let splay_s = dur(&s.splay);
        let lock_s = dur(&s.lock);
        let keep = match &s.keep {
            Some(k) => {
                let span = k.span();
                let k = k.get_ref();
                let within_s = match &k.within {
                    Some(w) => duration_s(w).unwrap_or_else(|e| {
                        errors.push(at(file, text, span.clone(), e));
                        0
                    }),
                    None => 0,
                };
                Keep {
                    last: k.last,
                    hourly: k.hourly,
                    daily: k.daily,
                    weekly: k.weekly,
                    monthly: k.monthly,
                    yearly: k.yearly,
                    within_s,
                }
            }
            None => Keep::default(),
        };
        let consistency = match &s.consistency {
            Some(c) => {
                if !matches!(c.get_ref().as_str(), "pause" | "hook" | "none") {
                    errors.push(at(
                        file,
                        text,
                        c.span(),
                        format!(
                            "consistency {:?} is not one of pause, hook, none",
                            c.get_ref()
                        ),
                    ));
                }
                c.get_ref().clone()
            }
            None => String::new(),
        };
        let hook = match &s.hook {
            Some(h) => {
                let span = h.span();
                let h = h.get_ref();
                let timeout_s = match &h.timeout {
                    Some(t) => duration_s(t).unwrap_or_else(|e| {
                        errors.push(at(file, text, span.clone(), e));
                        0
                    }),
                    None => 60,
                };
                if h.before.is_empty() && h.after.is_empty() {
                    errors.push(at(file, text, span, "hook needs before or after"));
                }
                Some(Hook {
                    container: h.container.clone(),
                    before: h.before.clone(),
                    after: h.after.clone(),
                    timeout_s: timeout_s.min(u64::from(u32::MAX)) as u32,
                })
            }
            None => None,
        };
        if consistency == "hook" && hook.is_none() {
            errors.push(at(
                file,
                text,
                spec_span.clone(),
                "consistency = \"hook\" needs a hook = { container, before, after }",
            ));
        }
        let bandwidth = match &s.bandwidth {
            Some(b) => rate(b.get_ref()).unwrap_or_else(|e| {
                errors.push(at(file, text, b.span(), e));
                0
            }),
            None => 0,
        };
        let drill = match &s.drill {
            Some(d) => {
                let span = d.span();
                let d = d.get_ref();
                let every_s = duration_s(&d.every).unwrap_or_else(|e| {
                    errors.push(at(file, text, span.clone(), e));
                    0
                });
                if every_s == 0 && errors.is_empty() {
                    errors.push(at(
                        file,
                        text,
                        span.clone(),
                        "drill.every must be longer than 0",
                    ));
                }
                if d.sample == Some(0) {
                    errors.push(at(file, text, span, "drill.sample must be at least 1"));
                }
                Some(Drill {
                    every_s,
                    sample: d.sample.unwrap_or(1),
                    probe: d.probe.clone().unwrap_or_default(),
                })
            }
            None => None,
        };
        out.push(Policy {
            name,
            selector,
            sources: s
                .sources
                .get_ref()
                .iter()
                .map(|x| x.get_ref().clone())
                .collect(),
            schedule: s.schedule.get_ref().clone(),
            timezone,
            splay_s,
            keep,
            lock_s,
            tier: s.tier.unwrap_or(0),
            consistency,
            hook,
            max_concurrent: s.max_concurrent.unwrap_or(0),
            bandwidth,
            drill,
        });
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(format!("{file}: no [[policy]] tables"));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

impl FromStr for Policy {
    type Err = ApiError;
    fn from_str(json: &str) -> Result<Policy, ApiError> {
        serde_json::from_str(json).map_err(|e| ApiError::internal(format!("stored policy: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"[[policy]]
name = "web-hourly"
selector = "role=web,site=fra"
sources = ["data", "all-volumes"]
schedule = "0 * * * *"
timezone = "Europe/Berlin"
splay = "10m"
keep = { last = 3, hourly = 24, daily = 7, weekly = 4, monthly = 12 }
lock = "7d"
tier = 1
"#;

    #[test]
    fn the_minimal_file_parses_as_written() {
        let p = parse_file("p.toml", MINIMAL).expect("valid");
        assert_eq!(p.len(), 1);
        let p = &p[0];
        assert_eq!(p.name, "web-hourly");
        assert_eq!(p.selector.get("role").map(String::as_str), Some("web"));
        assert_eq!(p.splay_s, 600);
        assert_eq!(p.lock_s, 7 * 86400);
        assert_eq!(p.keep.hourly, 24);
        assert_eq!(p.tier, 1);
        // 10:17 UTC on a winter day is 11:17 in Berlin: the next slot is 12:00 Berlin.
        let t = jiff::Timestamp::from_str("2026-01-15T10:17:00Z").expect("ts");
        let next = p.next_slot(t.as_millisecond()).expect("next");
        assert_eq!(
            jiff::Timestamp::from_millisecond(next)
                .expect("ts")
                .to_string(),
            "2026-01-15T11:00:00Z"
        );
    }

    #[test]
    fn every_kind_of_mistake_names_its_line_and_reason() {
        let cases: &[(&str, &str)] = &[
            (
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\ncolour = \"blue\"\n",
                "p.toml:5: unknown field `colour`",
            ),
            (
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"61 * * * *\"\n",
                "p.toml:4: schedule \"61 * * * *\" is not a valid cron expression",
            ),
            (
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"* * * *\"\n",
                "p.toml:4: schedule \"* * * *\" must have 5 fields",
            ),
            (
                "[[policy]]\nname = \"a\"\nselector = \"role\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\n",
                "p.toml:3: selector term \"role\" must be KEY=VALUE",
            ),
            (
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\ntimezone = \"Mars/Olympus\"\n",
                "p.toml:5: time zone \"Mars/Olympus\" is unknown",
            ),
            (
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\nsplay = \"ten minutes\"\n",
                "p.toml:5: \"ten minutes\" is not a duration",
            ),
            (
                "[[policy]]\nname = \"a\"\nsources = [\"../x\"]\nschedule = \"0 * * * *\"\n",
                "p.toml:3: ",
            ),
            (
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\nkeep = { last = 3, forever = 1 }\n",
                "p.toml:5: unknown field `forever`",
            ),
            (
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\nbandwidth = \"fast\"\n",
                "p.toml:5: bandwidth \"fast\" must look like",
            ),
            (
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\n[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\n",
                "p.toml:6: policy \"a\" is defined twice",
            ),
            (
                "[[policy]]\nname = \"a\"\nschedule = \"0 * * * *\"\n",
                "missing field `sources`",
            ),
        ];
        for (text, want) in cases {
            let errs = parse_file("p.toml", text).expect_err(want);
            assert!(
                errs.iter().any(|e| e.starts_with(want) || e.contains(want)),
                "want {want:?}, got {errs:?}"
            );
        }
    }

    #[test]
    fn selectors_match_all_their_labels() {
        let sel = parse_selector("role=db, site=fra").expect("selector");
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let p = Policy {
            selector: sel,
            ..parse_file(
                "p",
                "[[policy]]\nname=\"x\"\nsources=[\"d\"]\nschedule=\"0 * * * *\"\n",
            )
            .expect("p")
            .remove(0)
        };
        assert!(p.selects(&labels(&[("role", "db"), ("site", "fra"), ("x", "y")])));
        assert!(!p.selects(&labels(&[("role", "db")])));
        assert!(!p.selects(&labels(&[("role", "web"), ("site", "fra")])));
        assert_eq!(rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(rate("10MB/s"), Ok(10_000_000));
    }
}
