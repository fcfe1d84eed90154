//! Retention: which snapshots of one source a policy keeps, decided from the controller's
//! receive times only (an agent's own clock, or a future-dated claim, changes nothing).
//!
//! Rules, as restic users know them: `last` keeps the N newest; `hourly`/`daily`/`weekly`/
//! `monthly`/`yearly` keep the newest snapshot of each of the N most recent periods (in the
//! policy's time zone) that have one; `within` keeps everything received in that window.
//! Whatever the rules, a snapshot is never removed while it is locked, pinned (`lifeboat
//! snapshots protect`), or the newest of its source; and a policy without any rule removes
//! nothing.
//!
//! Snapshots taken while a device was being attacked are held, not counted. A quarantined
//! snapshot, or one the anomalies worker judged suspect, is kept as evidence (until an
//! admin lifts the quarantine, `lifeboat snapshots quarantine --clear`, or dismisses the
//! suspicion, `lifeboat anomalies dismiss`; or deletes it) and takes no place under `last` or a period's rule; the newest good snapshot received
//! before it is kept too. A compromised agent flooding its source's history with empty or
//! fake snapshots therefore pushes out no snapshot from before the breach (checklist row
//! C4): under quarantine the flood is held whole (a device's later commits inherit its
//! quarantine, `Catalog::insert_snapshots`); with a suspect snapshot alone, the last good
//! one before it stays. A prune first judges the snapshots the anomalies worker has not
//! reached yet, and holds any it could not judge within its budget.
//!
//! A snapshot's lock is its own: fixed when it is committed (its receive time plus the
//! longest `lock` of the policies covering its source then), stored with it, and only ever
//! extended (`lifeboat snapshots lock`). Deleting or changing a policy later never
//! shortens it.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::tz::TimeZone;

use crate::error::ApiError;
use crate::policy::Keep;

/// A snapshot as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub received_ms: i64,
    pub protected: bool,
    /// Until when nobody may delete it (see the module's doc).
    pub locked_until_ms: i64,
    /// Quarantined (`lifeboat snapshots quarantine`, or a policy's anomaly quarantine).
    pub quarantined: bool,
    /// Judged suspect by the anomalies worker.
    pub suspect: bool,
    /// Not judged yet (a prune analyzes what is pending first; this is what it could not
    /// reach within its budget).
    pub unjudged: bool,
}

impl Candidate {
    /// Why it is held out of the rules' counts, if it is.
    fn held(&self) -> Option<&'static str> {
        if self.quarantined {
            Some("quarantined")
        } else if self.suspect {
            Some("suspect")
        } else if self.unjudged {
            Some("not yet analyzed for ransomware signals")
        } else {
            None
        }
    }
}

/// How long a prune may spend analyzing snapshots not judged yet before it decides.
pub const ANALYSIS_BUDGET: std::time::Duration = std::time::Duration::from_secs(120);

/// The verdict for one source.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Kept snapshot ids, each with why.
    pub keep: BTreeMap<String, Vec<String>>,
    /// Snapshot ids to remove, newest first.
    pub remove: Vec<String>,
}

fn period_key(ms: i64, tz: &TimeZone, rule: &str) -> String {
    let z = jiff::Timestamp::from_millisecond(ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone());
    match rule {
        "hourly" => format!(
            "{}-{:02}-{:02}T{:02}",
            z.year(),
            z.month(),
            z.day(),
            z.hour()
        ),
        "daily" => format!("{}-{:02}-{:02}", z.year(), z.month(), z.day()),
        "weekly" => {
            let w = z.date().iso_week_date();
            format!("{}-W{:02}", w.year(), w.week())
        }
        "monthly" => format!("{}-{:02}", z.year(), z.month()),
        _ => format!("{}", z.year()),
    }
}

/// Decides what to keep of one source's snapshots under `keep`.
pub fn decide(snaps: &[Candidate], keep: &Keep, tz: &TimeZone, now_ms: i64) -> Verdict {
    let mut sorted: Vec<&Candidate> = snaps.iter().collect();
    sorted.sort_by(|a, b| b.received_ms.cmp(&a.received_ms).then(b.id.cmp(&a.id)));
    // (snapshot id, why it is kept)
    let mut marks: Vec<(String, String)> = Vec::new();
    if let Some(newest) = sorted.first() {
        marks.push((newest.id.clone(), "newest of its source".into()));
    }
    // What the rules count: snapshots neither quarantined, suspect nor unjudged, newest
    // first.
    let counted: Vec<&Candidate> = sorted
        .iter()
        .copied()
        .filter(|s| s.held().is_none())
        .collect();
    if let Some(good) = counted.first() {
        marks.push((
            good.id.clone(),
            "newest neither quarantined nor suspect".into(),
        ));
    }
    for s in &sorted {
        let Some(why) = s.held() else { continue };
        marks.push((
            s.id.clone(),
            match why {
                "quarantined" => format!("{why}: held until an admin lifts the quarantine"),
                "suspect" => format!("{why}: held until an admin dismisses it"),
                _ => format!("{why}: held until it is"),
            },
        ));
        if let Some(before) = counted
            .iter()
            .find(|c| (c.received_ms, &c.id) < (s.received_ms, &s.id))
        {
            marks.push((
                before.id.clone(),
                format!("last good before {why} {}", short(&s.id)),
            ));
        }
    }
    for s in &sorted {
        if s.protected {
            marks.push((s.id.clone(), "protected".into()));
        }
        if s.locked_until_ms > now_ms {
            marks.push((s.id.clone(), "locked".into()));
        }
        if keep.within_s > 0 && s.received_ms >= now_ms - (keep.within_s as i64) * 1000 {
            marks.push((s.id.clone(), "within".into()));
        }
    }
    for s in counted.iter().take(keep.last as usize) {
        marks.push((s.id.clone(), "last".into()));
    }
    for (rule, n) in [
        ("hourly", keep.hourly),
        ("daily", keep.daily),
        ("weekly", keep.weekly),
        ("monthly", keep.monthly),
        ("yearly", keep.yearly),
    ] {
        let mut periods = 0u32;
        let mut last_key = None;
        for s in &counted {
            if periods >= n {
                break;
            }
            let key = period_key(s.received_ms, tz, rule);
            if last_key.as_ref() != Some(&key) {
                marks.push((s.id.clone(), format!("{rule} {key}")));
                last_key = Some(key);
                periods += 1;
            }
        }
    }
    let mut reasons: HashMap<String, Vec<String>> = HashMap::new();
    for (id, r) in marks {
        reasons.entry(id).or_default().push(r);
    }
    let mut verdict = Verdict::default();
    let no_rules = keep.is_empty();
    for s in &sorted {
        match reasons.get(s.id.as_str()) {
            Some(r) => {
                verdict.keep.insert(s.id.clone(), r.clone());
            }
            None if no_rules => {
                verdict
                    .keep
                    .insert(s.id.clone(), vec!["no retention rules".into()]);
            }
            None => verdict.remove.push(s.id.clone()),
        }
    }
    verdict
}

/// The first 12 characters of a snapshot id, as listings show it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// One snapshot's fate in a prune.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub agent: String,
    pub source: String,
    pub id: String,
    pub received_ms: i64,
    pub removed: bool,
    pub reasons: Vec<String>,
}

/// The policies that cover a snapshot's source, with their lock end for it.
fn covering<'a>(
    policies: &'a [crate::policy::Policy],
    agent: Option<&crate::catalog::AgentRow>,
    source: &str,
) -> Vec<&'a crate::policy::Policy> {
    match agent {
        Some(a) => policies
            .iter()
            .filter(|p| crate::policy::covers(p, a, source))
            .collect(),
        None => Vec::new(),
    }
}

/// The lock the policies in force give a snapshot of `source` received at `received_ms`
/// (0: none locks it), and the policy that sets it. Called once per snapshot, when it is
/// committed: the result is stored with the snapshot and never derived again.
pub fn policy_lock(
    ctl: &crate::Controller,
    agent_id: &str,
    source: &str,
    received_ms: i64,
) -> Result<(i64, String), ApiError> {
    let policies = crate::policy::policies(ctl)?;
    let agent = ctl.catalog.agent(agent_id)?;
    Ok(covering(&policies, agent.as_ref(), source)
        .into_iter()
        .filter(|p| p.lock_s > 0)
        .map(|p| (received_ms + (p.lock_s as i64) * 1000, p.name.clone()))
        .max()
        .unwrap_or((0, String::new())))
}

/// Fixes the lock of snapshots committed before locks were stored, from the policies in
/// force now (what deciding at delete time would have said), once. Run at start.
pub fn fix_unset_locks(ctl: &crate::Controller) -> Result<usize, ApiError> {
    let rows = ctl.catalog.snapshots_without_lock()?;
    for s in &rows {
        let (until, _) = policy_lock(ctl, &s.agent_id, &s.source, s.received_ms)?;
        ctl.catalog.extend_lock(&s.id, until)?;
    }
    Ok(rows.len())
}

/// Applies every policy's retention to the snapshots it covers (sources no policy covers
/// keep everything). With `dry_run` nothing is removed. Every removal is audited.
///
/// Callers judge first (`anomalies::catch_up` within [`ANALYSIS_BUDGET`]): a suspect
/// snapshot the anomalies worker has not reached yet would otherwise count under `last`
/// before it is held. (Called from here, the anomalies module would close a circle of
/// imports through `snapshots`.)
pub fn prune(
    ctl: &crate::Controller,
    now_ms: i64,
    dry_run: bool,
    actor: &str,
) -> Result<Vec<Outcome>, ApiError> {
    let policies = crate::policy::policies(ctl)?;
    let agents: HashMap<String, crate::catalog::AgentRow> = ctl
        .catalog
        .agents()?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let mut groups: BTreeMap<(String, String), Vec<Candidate>> = BTreeMap::new();
    for r in ctl.catalog.retention_view()? {
        groups
            .entry((r.agent_id, r.source))
            .or_default()
            .push(Candidate {
                id: r.id,
                received_ms: r.received_ms,
                protected: r.protected,
                locked_until_ms: r.locked_until_ms,
                quarantined: r.quarantined,
                suspect: r.suspect,
                unjudged: !r.analyzed,
            });
    }
    let mut out = Vec::new();
    for ((agent_id, source), snaps) in groups {
        let agent = agents.get(&agent_id);
        let agent_name = agent.map(|a| a.name.clone()).unwrap_or(agent_id.clone());
        let cover = covering(&policies, agent, &source);
        let mut reasons: HashMap<String, Vec<String>> = HashMap::new();
        let mut removable: Option<HashSet<String>> = None;
        for p in &cover {
            let tz = p.tz()?;
            let v = decide(&snaps, &p.keep, &tz, now_ms);
            for (id, why) in v.keep {
                reasons
                    .entry(id)
                    .or_default()
                    .extend(why.into_iter().map(|w| format!("{}: {w}", p.name)));
            }
            let rm: HashSet<String> = v.remove.into_iter().collect();
            removable = Some(match removable {
                None => rm,
                Some(prev) => prev.intersection(&rm).cloned().collect(),
            });
        }
        let removable = removable.unwrap_or_default();
        for s in &snaps {
            let removed = removable.contains(&s.id);
            let why = if cover.is_empty() {
                vec!["no policy covers this source".to_string()]
            } else {
                reasons.remove(&s.id).unwrap_or_default()
            };
            if removed && !dry_run {
                ctl.store.delete_snapshot(&s.id)?;
                ctl.audit.ok(
                    actor,
                    "snapshot.prune",
                    &s.id,
                    serde_json::json!({ "agent": agent_name, "source": source, "received_ms": s.received_ms, "policies": cover.iter().map(|p| p.name.clone()).collect::<Vec<_>>() }),
                );
            }
            out.push(Outcome {
                agent: agent_name.clone(),
                source: source.clone(),
                id: s.id.clone(),
                received_ms: s.received_ms,
                removed,
                reasons: why,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;

    fn t(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().expect("time").as_millisecond()
    }

    fn snaps(times: &[i64]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, &ms)| Candidate {
                id: format!("s{i:02}"),
                received_ms: ms,
                protected: false,
                locked_until_ms: 0,
                quarantined: false,
                suspect: false,
                unjudged: false,
            })
            .collect()
    }

    fn kept(v: &Verdict) -> Vec<String> {
        v.keep.keys().cloned().collect()
    }

    /// A table of histories × policies → exactly the snapshots kept.
    #[test]
    fn retention_table() {
        let utc = TimeZone::UTC;
        let now = t("2026-11-29T12:00:00Z");
        // One snapshot every 6 hours for 10 days, s00 on 11-19 at 13:00 (then 19, 01, 07 h)
        // and s39, the newest, on Sunday 11-29 at 07:00.
        let every_6h: Vec<i64> = (0..40).map(|i| now - 10 * D + i * 6 * H + H).collect();
        let names = |ids: &[usize]| ids.iter().map(|i| format!("s{i:02}")).collect::<Vec<_>>();
        let cases: Vec<(&str, Keep, Vec<String>)> = vec![
            (
                "last 3",
                Keep {
                    last: 3,
                    ..Keep::default()
                },
                names(&[37, 38, 39]),
            ),
            // The newest of each of the 3 most recent days: 11-29 07h, 11-28 19h, 11-27 19h.
            (
                "daily 3",
                Keep {
                    daily: 3,
                    ..Keep::default()
                },
                names(&[33, 37, 39]),
            ),
            (
                "last 1 + daily 2",
                Keep {
                    last: 1,
                    daily: 2,
                    ..Keep::default()
                },
                names(&[37, 39]),
            ),
            (
                "within 1d",
                Keep {
                    within_s: 86_400,
                    ..Keep::default()
                },
                names(&[36, 37, 38, 39]),
            ),
            // ISO weeks end on Sunday: the newest of 11-16..22 is s13 (11-22 19h).
            (
                "weekly 2",
                Keep {
                    weekly: 2,
                    ..Keep::default()
                },
                names(&[13, 39]),
            ),
            (
                "no rules keeps all",
                Keep::default(),
                names(&(0..40).collect::<Vec<_>>()),
            ),
        ];
        for (what, keep, want) in cases {
            let mut want = want;
            want.sort();
            let v = decide(&snaps(&every_6h), &keep, &utc, now);
            assert_eq!(kept(&v), want, "{what}");
            assert_eq!(v.keep.len() + v.remove.len(), 40, "{what}");
        }
    }

    #[test]
    fn locked_protected_and_newest_survive_any_rules() {
        let utc = TimeZone::UTC;
        let now = t("2026-11-29T12:00:00Z");
        let mut s = snaps(&[now - 30 * D, now - 20 * D, now - 2 * D, now - H]);
        s[0].protected = true;
        // Each locked until 3 days after it was received.
        for c in &mut s {
            c.locked_until_ms = c.received_ms + 3 * D;
        }
        let keep = Keep {
            last: 1,
            ..Keep::default()
        };
        // Locked for 3 days: s02 (2 days old) and s03 stay; s00 is protected; s01 goes.
        let v = decide(&s, &keep, &utc, now);
        assert_eq!(kept(&v), vec!["s00", "s02", "s03"]);
        assert_eq!(v.remove, vec!["s01".to_string()]);
        assert!(v.keep["s02"].contains(&"locked".to_string()));
        // The newest is kept even by a rule set that names nothing matching.
        let v = decide(
            &s[1..2],
            &Keep {
                hourly: 0,
                daily: 0,
                last: 0,
                within_s: 1,
                ..Keep::default()
            },
            &utc,
            now,
        );
        assert_eq!(kept(&v), vec!["s01"]);
    }

    /// C4: three good snapshots, then a breach and ten more. Quarantined, the ten take no
    /// place under `last 2`; only suspect (the first of them), the good one before it stays.
    #[test]
    fn a_flood_after_a_breach_pushes_out_no_good_snapshot() {
        let utc = TimeZone::UTC;
        let now = t("2026-11-29T12:00:00Z");
        let times: Vec<i64> = (0..13).map(|i| now - (13 - i) * H).collect();
        let keep = Keep {
            last: 2,
            ..Keep::default()
        };

        let mut quarantined = snaps(&times);
        for c in &mut quarantined[3..] {
            c.quarantined = true;
        }
        let v = decide(&quarantined, &keep, &utc, now);
        assert_eq!(v.remove, vec!["s00".to_string()]);
        assert!(v.keep["s01"].contains(&"last".to_string()), "{v:?}");
        assert!(
            v.keep["s02"].contains(&"last good before quarantined s03".to_string()),
            "{v:?}"
        );
        assert!(v.keep["s07"][0].starts_with("quarantined: held"), "{v:?}");

        let mut suspect = snaps(&times);
        suspect[3].suspect = true;
        let v = decide(&suspect, &keep, &utc, now);
        assert_eq!(kept(&v), vec!["s02", "s03", "s11", "s12"]);
        assert_eq!(
            v.keep["s02"],
            vec!["last good before suspect s03".to_string()]
        );
        assert_eq!(
            v.keep["s03"],
            vec!["suspect: held until an admin dismisses it".to_string()]
        );

        // One not judged yet is held like a suspect one until it is.
        let mut pending = snaps(&times);
        pending[12].unjudged = true;
        let v = decide(&pending, &keep, &utc, now);
        assert_eq!(kept(&v), vec!["s10", "s11", "s12"]);

        // Nothing held: the same history keeps the two newest only.
        let v = decide(&snaps(&times), &keep, &utc, now);
        assert_eq!(kept(&v), vec!["s11", "s12"]);
    }

    #[test]
    fn days_are_the_policy_time_zone_days() {
        // 23:30 and 00:30 UTC are the same day in New York and two days in UTC.
        let ny = TimeZone::get("America/New_York").expect("tz");
        let now = t("2026-06-10T12:00:00Z");
        let s = snaps(&[t("2026-06-09T23:30:00Z"), t("2026-06-10T00:30:00Z")]);
        let keep = Keep {
            daily: 5,
            ..Keep::default()
        };
        assert_eq!(kept(&decide(&s, &keep, &ny, now)), vec!["s01"]);
        assert_eq!(
            kept(&decide(&s, &keep, &TimeZone::UTC, now)),
            vec!["s00", "s01"]
        );
    }
}
