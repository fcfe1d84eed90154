//! The policy file format: TOML, every key checked, each error with its line.

use std::collections::BTreeMap;
use std::ops::Range;
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use super::*;
use crate::error::ApiError;

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
    upload_quota: Option<Spanned<String>>,
    #[serde(default)]
    drill: Option<Spanned<DrillSpec>>,
    /// Copy each snapshot off-site and lock it there this long (`30d`).
    #[serde(default)]
    copy: Option<Spanned<String>>,
    /// Ransomware signals: `anomalies = { threshold = 60, quarantine = true }`.
    #[serde(default)]
    anomalies: Option<Spanned<AnomaliesSpec>>,
    /// Restore only images a vendor's signed list vouches for (an admin may force).
    #[serde(default)]
    require_trusted_images: bool,
    /// The selected devices' recovery time objective (`4h`).
    #[serde(default)]
    rto: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnomaliesSpec {
    #[serde(default)]
    threshold: Option<u32>,
    #[serde(default)]
    quarantine: bool,
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

fn duration_s(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{s:?} is not a duration like 10m, 7d: {e}"))
}

/// "50MiB/s", "10MB/s", "1GiB/s" → bytes per second.
pub(super) fn rate(s: &str) -> Result<u64, String> {
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
        crate::access::validate_labels(&one).map_err(|e| format!("selector: {e}"))?;
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
        let copy_s = dur(&s.copy);
        let rto_s = dur(&s.rto);
        if let Some(r) = &s.rto
            && rto_s == 0
            && errors.is_empty()
        {
            errors.push(at(file, text, r.span(), "rto must be at least 1s"));
        }
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
                if Consistency::parse(c.get_ref()).is_none() {
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
        let upload_quota = match &s.upload_quota {
            Some(q) => lifeboat_core::units::parse_size(q.get_ref()).unwrap_or_else(|| {
                errors.push(at(
                    file,
                    text,
                    q.span(),
                    format!(
                        "upload_quota {:?} must look like 500GiB or 1TB",
                        q.get_ref()
                    ),
                ));
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
        let anomalies = match &s.anomalies {
            Some(a) => {
                let threshold = a
                    .get_ref()
                    .threshold
                    .unwrap_or(super::DEFAULT_ANOMALY_THRESHOLD);
                if !(1..=100).contains(&threshold) {
                    errors.push(at(
                        file,
                        text,
                        a.span(),
                        "anomalies.threshold must be between 1 and 100",
                    ));
                }
                super::Anomalies {
                    threshold,
                    quarantine: a.get_ref().quarantine,
                }
            }
            None => super::Anomalies::default(),
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
            upload_quota,
            drill,
            copy_s,
            anomalies,
            require_trusted_images: s.require_trusted_images,
            rto_s,
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
