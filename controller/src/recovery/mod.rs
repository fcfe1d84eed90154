//! Mass recovery: restore points (quarantine, last known good), the downtime model
//! (`estimate`), drills (`drill`), recovery plans (`plan`) and their runner (`runner`), and what a
//! finished restore teaches them (`outcome`).

pub mod drill;
pub mod estimate;
pub mod model;
pub mod outcome;
pub mod plan;
pub mod runner;

use lifeboat_core::snapshot::Record;
use lifeboat_proto::pb;

use lifeboat_core::inventory::osv::Severity;

use crate::auth::Role;
use crate::catalog::SnapshotRow;
use crate::checked::TreeChunks;
use crate::error::ApiError;
use crate::{Controller, restores, snapshots};

/// A restore point that passed every check.
pub struct Good {
    pub snap: SnapshotRow,
    pub job: pb::RestoreJob,
    /// Every chunk its tree references.
    pub chunks: TreeChunks,
}

/// The chunks a snapshot's tree references (the tree's own chunks excluded), after
/// checking the tree against the record and that every chunk is indexed (not missing,
/// not found bad by scrub).
pub fn complete_chunks(ctl: &Controller, record: &Record) -> Result<TreeChunks, ApiError> {
    match snapshots::referenced_chunks(ctl, record)? {
        (chunks, None) => Ok(chunks),
        (_, Some(i)) => Err(ApiError::FailedPrecondition(format!(
            "{} of its chunks are missing or known corrupt (first: {})",
            i.missing, i.first
        ))),
    }
}

/// A snapshot passed over as a restore point: its id and why.
pub type Skipped = (String, String);

/// What a restore point must be besides good: what an operator asked a plan to avoid.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    /// Consider quarantined and suspect snapshots, and uncovered images, too (admins, forced).
    pub force: bool,
    /// Only snapshots with a complete copy in this copy store.
    pub from_copy: Option<String>,
    /// Advisories (ids or aliases) a restore point must not carry.
    pub without: Vec<String>,
    /// No finding above this severity.
    pub max_severity: Option<Severity>,
}

impl Criteria {
    /// What a restore point was chosen by, in words.
    pub fn describe(&self, before_ms: i64) -> String {
        let mut s = format!(
            "the newest snapshot before {} that is {}signed by its agent and the controller and has every chunk",
            crate::when(before_ms),
            if self.force {
                ""
            } else {
                "not quarantined, not suspect, an image a vendor vouches for where required, "
            }
        );
        if let Some(store) = &self.from_copy {
            s.push_str(&format!(", copied whole to {store}"));
        }
        if !self.without.is_empty() {
            s.push_str(&format!(", without {}", self.without.join(", ")));
        }
        if let Some(max) = self.max_severity {
            s.push_str(&format!(", with no finding above {}", max.as_str()));
        }
        s
    }

    /// Why `snap` fails what was asked of it besides being good, if it does.
    fn refuses(&self, ctl: &Controller, snap: &SnapshotRow) -> Result<Option<String>, ApiError> {
        if !self.force {
            if snap.quarantined_ms != 0 {
                return Ok(Some("quarantined".into()));
            }
            if let Some(a) = ctl.catalog.anomaly(&snap.id)?.filter(|a| a.suspect) {
                return Ok(Some(format!(
                    "suspect: ransomware signals scored {}/{}",
                    a.score, a.threshold
                )));
            }
            if let Some(why) = crate::vendors::untrusted(ctl, snap)? {
                return Ok(Some(why));
            }
        }
        if let Some(store) = &self.from_copy
            && ctl.catalog.copy_of(store, &snap.id)?.is_none()
        {
            return Ok(Some(format!("not copied to {store}")));
        }
        if self.without.is_empty() && self.max_severity.is_none() {
            return Ok(None);
        }
        let findings = crate::vulns::findings_of_snapshot(ctl, snap)?;
        for f in &findings {
            let names: Vec<&str> = std::iter::once(f.advisory.as_str())
                .chain(f.aliases.split(',').filter(|a| !a.is_empty()))
                .collect();
            if let Some(hit) = self
                .without
                .iter()
                .find(|w| names.iter().any(|n| n.eq_ignore_ascii_case(w)))
            {
                return Ok(Some(format!("carries {hit} ({} {})", f.name, f.version)));
            }
            let severity = Severity::parse(&f.severity).unwrap_or(Severity::Unknown);
            if let Some(max) = self.max_severity
                && severity > max
            {
                return Ok(Some(format!(
                    "carries a {} finding: {} ({} {})",
                    severity.as_str(),
                    f.advisory,
                    f.name,
                    f.version
                )));
            }
        }
        Ok(None)
    }
}

/// The last known good restore point of one source: its newest snapshot received before
/// `before_ms` that meets `criteria` (not quarantined or suspect, an image a vendor vouches
/// for where a policy requires it, unless forced; copied whole to a copy store; free of the
/// advisories or severities asked), whose signatures verify, and whose chunks are all
/// present and not known corrupt. Snapshots passed over are returned with the reason,
/// newest first.
pub fn last_known_good(
    ctl: &Controller,
    agent_id: &str,
    source: &str,
    before_ms: i64,
    criteria: &Criteria,
) -> Result<(Option<Good>, Vec<Skipped>), ApiError> {
    let mut skipped = Vec::new();
    for snap in ctl.catalog.snapshots(Some(agent_id), Some(source))? {
        if snap.received_ms >= before_ms {
            continue;
        }
        if let Some(why) = criteria.refuses(ctl, &snap)? {
            skipped.push((snap.id.clone(), why));
            continue;
        }
        let checked = restores::verified(ctl, &snap)
            .map_err(ApiError::from)
            .and_then(|job| {
                let record = Record::parse(&job.record)?;
                Ok((job, complete_chunks(ctl, &record)?))
            });
        match checked {
            Ok((job, chunks)) => return Ok((Some(Good { snap, job, chunks }), skipped)),
            Err(e) => skipped.push((snap.id.clone(), e.to_string())),
        }
    }
    Ok((None, skipped))
}

/// Marks as quarantined (or, with `clear`, releases) every snapshot received after
/// `after_ms` from the agent named `agent` or those `selector` picks: a restore point
/// after the compromise time is suspect. Only an admin lifts a quarantine, with a second
/// admin's approval when approvals are required. Returns the snapshots that changed.
pub fn quarantine(
    ctl: &Controller,
    operator: &str,
    role: Role,
    agent: &str,
    selector: &str,
    after_ms: i64,
    clear: bool,
) -> Result<Vec<SnapshotRow>, ApiError> {
    if clear {
        if role != Role::Admin {
            return Err(ApiError::PermissionDenied(
                "denied: only an admin may lift a quarantine".into(),
            ));
        }
        let target = format!(
            "{} after {}",
            if agent.is_empty() {
                format!("selector {selector:?}")
            } else {
                format!("agent {agent}")
            },
            crate::when(after_ms)
        );
        crate::approvals::gate(ctl, operator, "quarantine.lift", &target)?;
    }
    if after_ms <= 0 {
        return Err(ApiError::InvalidArgument(
            "--after is required: snapshots received after it become suspect".into(),
        ));
    }
    let named: Vec<String> = if agent.is_empty() {
        Vec::new()
    } else {
        vec![agent.to_string()]
    };
    let agents = crate::devices::select(ctl, &named, selector)?;
    let now = ctl.clock.now_ms();
    let mut changed = Vec::new();
    for a in &agents {
        changed.extend(ctl.catalog.quarantine(&a.id, after_ms, now, clear)?);
    }
    tracing::warn!(%operator, snapshots = changed.len(), clear, "quarantine changed");
    ctl.audit.ok(
        &format!("operator:{operator}"),
        if clear {
            "snapshot.unquarantine"
        } else {
            "snapshot.quarantine"
        },
        &agents
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        serde_json::json!({
            "after_unix_ms": after_ms,
            "snapshots": changed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        }),
    );
    Ok(changed)
}
