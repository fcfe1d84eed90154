//! Known vulnerabilities in every restore point: an offline OSV feed an operator imports
//! (`import`), matched against each inventory with the ecosystem's own version order
//! (`lifeboat_core::inventory::osv`). Matching runs on the controller after each new
//! inventory and after each import that changed the feed (the `inventory` worker, within
//! its time budget), and on the spot for a snapshot asked about before the worker reached it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_core::inventory::osv::{self, Advisory, Severity};
use lifeboat_core::inventory::{Ecosystem, Inventory};
use lifeboat_proto::pb;

use crate::Controller;
use crate::catalog::{AdvisoryRow, FindingRow, ImportCounts, SnapshotRow};
use crate::error::ApiError;

/// Parses and stores OSV records. A record that does not parse is refused with its reason
/// (and the rest imported); records of ecosystems no inventory reads are kept out.
pub fn import(
    ctl: &Controller,
    records: &[Vec<u8>],
) -> Result<(ImportCounts, Vec<String>), ApiError> {
    let mut rows = Vec::new();
    let mut refused = Vec::new();
    for (i, body) in records.iter().enumerate() {
        let a = match osv::parse(body) {
            Ok(a) => a,
            Err(e) => {
                refused.push(format!("record {}: {e}", i + 1));
                continue;
            }
        };
        if a.affected.is_empty() {
            refused.push(format!(
                "{}: names no package of Debian, Alpine, PyPI, npm or crates.io",
                a.id
            ));
            continue;
        }
        let mut packages: Vec<(String, String)> = a
            .packages()
            .map(|(e, n)| (e.osv().to_owned(), n.to_owned()))
            .collect();
        packages.sort();
        packages.dedup();
        rows.push(AdvisoryRow {
            id: a.id.clone(),
            modified: a.modified.clone(),
            summary: a.summary.clone(),
            aliases: a.aliases.join(","),
            severity: a.severity.as_str().to_owned(),
            score: a.score.unwrap_or(0.0),
            body: body.clone(),
            packages,
        });
    }
    let counts = ctl.catalog.put_advisories(&rows, ctl.clock.now_ms())?;
    Ok((counts, refused))
}

/// Advisories parsed once per run.
#[derive(Default)]
struct Cache {
    advisories: HashMap<String, Option<Arc<Advisory>>>,
}

impl Cache {
    fn get(&mut self, ctl: &Controller, id: &str) -> Result<Option<Arc<Advisory>>, ApiError> {
        if let Some(a) = self.advisories.get(id) {
            return Ok(a.clone());
        }
        let a = ctl
            .catalog
            .advisory_body(id)?
            .and_then(|body| osv::parse(&body).ok())
            .map(Arc::new);
        self.advisories.insert(id.to_owned(), a.clone());
        Ok(a)
    }
}

/// Matches one stored inventory against the feed and stores its findings.
fn match_key(
    ctl: &Controller,
    key: &str,
    generation: i64,
    cache: &mut Cache,
) -> Result<(), ApiError> {
    let Some(body) = ctl.catalog.inventory(key)? else {
        return Ok(());
    };
    let inventory: Inventory = serde_json::from_slice(&body)
        .map_err(|e| ApiError::internal(format!("a stored inventory does not parse: {e}")))?;
    let mut findings = Vec::new();
    for p in &inventory.packages {
        let name = match p.ecosystem {
            Ecosystem::Debian | Ecosystem::Alpine if !p.source.is_empty() => p.source.as_str(),
            _ => p.name.as_str(),
        };
        for id in ctl.catalog.advisories_for(p.ecosystem.osv(), name)? {
            let Some(a) = cache.get(ctl, &id)? else {
                continue;
            };
            if let Some(hit) = a.affects(p, inventory.os.as_ref()) {
                findings.push(FindingRow {
                    advisory: a.id.clone(),
                    ecosystem: p.ecosystem.osv().to_owned(),
                    name: p.name.clone(),
                    version: p.version.clone(),
                    fixed: hit.fixed,
                    severity: a.severity.as_str().to_owned(),
                    score: a.score.unwrap_or(0.0),
                    summary: a.summary.clone(),
                    aliases: a.aliases.join(","),
                });
            }
        }
    }
    ctl.catalog.replace_findings(key, generation, &findings)?;
    Ok(())
}

/// The worker's part: inventories not matched against the feed in force, until the budget
/// is spent.
pub fn match_pending(ctl: &Controller, budget: Duration) -> Result<(), ApiError> {
    let began = Instant::now();
    let generation = ctl.catalog.feed_generation()?;
    if generation == 0 {
        return Ok(());
    }
    let mut cache = Cache::default();
    let mut matched = 0usize;
    while began.elapsed() < budget {
        let keys = ctl.catalog.inventories_to_match(generation, 32)?;
        if keys.is_empty() {
            break;
        }
        for key in keys {
            match_key(ctl, &key, generation, &mut cache)?;
            matched += 1;
            if began.elapsed() >= budget {
                break;
            }
        }
    }
    if matched > 0 {
        tracing::info!(
            inventories = matched,
            generation,
            "matched inventories against the vulnerability feed"
        );
    }
    Ok(())
}

/// A snapshot's findings against the feed in force, matched now if the worker has not yet.
pub fn findings_of_snapshot(
    ctl: &Controller,
    snapshot: &SnapshotRow,
) -> Result<Vec<FindingRow>, ApiError> {
    let generation = ctl.catalog.feed_generation()?;
    let inv = crate::inventory::of_snapshot(ctl, &snapshot.id)?;
    if generation > 0 && ctl.catalog.inventory_generation(&inv.key)?.unwrap_or(0) < generation {
        match_key(ctl, &inv.key, generation, &mut Cache::default())?;
    }
    Ok(ctl.catalog.findings(&inv.key)?)
}

/// Which snapshots a listing covers.
pub enum Scope {
    Snapshot(String),
    Device(String),
    All,
}

/// Findings at or above `min` severity, of one snapshot, or of each source's newest
/// snapshot of one device or of the whole fleet. Snapshots that could not be read are
/// named in the second list with why.
pub fn list(ctl: &Controller, scope: Scope, min: Severity) -> Result<pb::FindingList, ApiError> {
    let snapshots: Vec<SnapshotRow> = match scope {
        Scope::Snapshot(prefix) => vec![ctl.catalog.find_snapshot(&prefix)?],
        Scope::Device(name) => newest_per_source(ctl, &ctl.catalog.find_agent(&name)?.id)?,
        Scope::All => {
            let mut all = Vec::new();
            for a in ctl
                .catalog
                .agents()?
                .into_iter()
                .filter(|a| a.revoked_ms == 0)
            {
                all.extend(newest_per_source(ctl, &a.id)?);
            }
            all
        }
    };
    let mut out = pb::FindingList {
        advisories: ctl.catalog.advisory_count()?,
        ..Default::default()
    };
    for s in &snapshots {
        let findings = match findings_of_snapshot(ctl, s) {
            Ok(f) => f,
            Err(e) => {
                out.unread.push(format!(
                    "{} ({} {}): {e}",
                    &s.id[..12.min(s.id.len())],
                    s.agent_name,
                    s.source
                ));
                continue;
            }
        };
        for f in findings {
            let severity = Severity::parse(&f.severity).unwrap_or(Severity::Unknown);
            if severity < min {
                continue;
            }
            out.findings.push(pb::Finding {
                agent_name: s.agent_name.clone(),
                source: s.source.clone(),
                snapshot_id: s.id.clone(),
                received_ms: s.received_ms,
                advisory: f.advisory,
                aliases: f
                    .aliases
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
                summary: f.summary,
                severity: f.severity,
                score: f.score,
                ecosystem: f.ecosystem,
                package: f.name,
                version: f.version,
                fixed: f.fixed,
            });
        }
    }
    Ok(out)
}

fn newest_per_source(ctl: &Controller, agent_id: &str) -> Result<Vec<SnapshotRow>, ApiError> {
    let mut seen = std::collections::HashSet::new();
    Ok(ctl
        .catalog
        .snapshots(Some(agent_id), None)?
        .into_iter()
        .filter(|s| seen.insert(s.source.clone()))
        .collect())
}
