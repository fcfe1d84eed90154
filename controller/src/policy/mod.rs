//! Backup policies: declarative TOML files, validated here (unknown keys, cron, selectors,
//! durations, each refused with its line and the reason), stored in the catalog; and their
//! evaluation (which agents a policy selects, which of their sources it covers, a device's
//! tier), which the scheduler, retention, drills, plans and the devices view share.
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
//! timeout }` for volumes, `max_concurrent` (jobs of this policy at once), `upload_quota`
//! (bytes one backup job may upload, e.g. "500GiB"; default the controller's), `bandwidth` (per
//! agent, e.g. "50MiB/s"), and `keep.yearly`, `keep.within` ("30d").
//!
//! Drills: `drill = { every = "7d", sample = 2, probe = "test -s etc/hostname" }` drills
//! the selected devices in a rotating sample so that every one is drilled within `every`
//! (`sample` devices per round, rounds spread evenly; the least recently drilled first).
//!
//! `rto = "4h"`: the selected devices' recovery time objective (a device under several
//! policies takes the shortest). Each drill is checked against it, and the devices view
//! shows a device whose estimated downtime exceeds it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod apply;
mod eval;
mod file;

pub use apply::{Applied, Change, apply};
pub use eval::{covers, image_source, policies, rto_of, sources_for, tier_of};
pub use file::{parse_file, parse_selector};
pub use lifeboat_proto::states::Consistency;

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
    /// Bytes one backup job of this policy may upload (0: the controller's
    /// `--upload-quota`).
    #[serde(default)]
    pub upload_quota: u64,
    /// Snapshots of the policy's sources are copied to the off-site store (when the
    /// controller has one) and locked there this long from their receive time (0: not
    /// copied).
    #[serde(default)]
    pub copy_s: u64,
    /// How ransomware signals are judged for the policy's snapshots.
    #[serde(default)]
    pub anomalies: Anomalies,
    /// Restoring an image of the policy's sources needs a vendor's signed list to vouch
    /// for its digest (`vendors`), or an admin to force it.
    #[serde(default)]
    pub require_trusted_images: bool,
    /// The selected devices' recovery time objective, seconds (0: none).
    #[serde(default)]
    pub rto_s: u64,
}

/// A snapshot whose ransomware score (`lifeboat_core::anomaly`) reaches `threshold` is
/// suspect: audited, logged, counted in `/metrics`; with `quarantine`, it and every later
/// snapshot of its device are quarantined at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomalies {
    pub threshold: u32,
    pub quarantine: bool,
}

/// Rewritten content that stopped compressing plus a fifth of the files changed, or ransom
/// notes in several directories plus churn: never an ordinary day's changes alone.
pub const DEFAULT_ANOMALY_THRESHOLD: u32 = 60;

impl Default for Anomalies {
    fn default() -> Self {
        Anomalies {
            threshold: DEFAULT_ANOMALY_THRESHOLD,
            quarantine: false,
        }
    }
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

pub(crate) fn parse_cron(s: &str) -> Result<croner::Cron, String> {
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::file::rate;

    #[test]
    fn globs() {
        use super::eval::glob;
        assert!(glob("data*", "data"));
        assert!(glob("data*", "data-2"));
        assert!(glob("d?ta", "data"));
        assert!(!glob("data*", "xdata"));
        assert!(glob("*", "anything"));
    }

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
        assert_eq!(
            p.upload_quota, 0,
            "no upload_quota: the controller's applies"
        );
        let with_quota = MINIMAL.replace("tier = 1", "tier = 1\nupload_quota = \"500GiB\"");
        let q = parse_file("p.toml", &with_quota).expect("valid");
        assert_eq!(q[0].upload_quota, 500 << 30);
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
                "[[policy]]\nname = \"a\"\nsources = [\"data\"]\nschedule = \"0 * * * *\"\nupload_quota = \"lots\"\n",
                "p.toml:5: upload_quota \"lots\" must look like",
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
