//! The fleet's devices as an operator sees them: per device and source, the last
//! snapshot, its age against the policies' schedules (RPO), whether it is overdue, and the
//! estimated time to restore it now against the device's RTO, and its drills. `lifeboat devices` and `/metrics` show it. And the
//! devices an operator names, by name or label selector.

use std::collections::{HashMap, HashSet};

use lifeboat_core::snapshot::SourceKind;
use lifeboat_proto::pb;
use lifeboat_proto::states::Basis;

use crate::Controller;
use crate::catalog::AgentRow;
use crate::error::ApiError;
use crate::policy::{self, Policy};
use crate::recovery::estimate::Model;
use crate::scheduler::latest_slot;

/// Grace after a slot (plus splay) before a source without a newer snapshot is overdue.
const OVERDUE_GRACE_MS: i64 = 15 * 60 * 1000;

/// Per device, per source: the last snapshot, its age against the policy's schedule (RPO),
/// and whether it is overdue. Sources are those the policies cover and those with
/// snapshots.
pub fn devices(ctl: &Controller, now_ms: i64) -> Result<Vec<pb::DeviceInfo>, ApiError> {
    let stored = ctl.catalog.policies()?;
    let updated: HashMap<String, i64> = stored.iter().map(|(n, _, u)| (n.clone(), *u)).collect();
    let policies = policy::policies(ctl)?;
    let model = Model::load(&ctl.catalog)?;
    let drills = ctl.catalog.drill_history()?;
    let mut out = Vec::new();
    for a in ctl
        .catalog
        .agents()?
        .into_iter()
        .filter(|a| a.revoked_ms == 0)
    {
        let mut names: Vec<String> = policies
            .iter()
            .filter(|p| p.selects(&a.labels))
            .flat_map(|p| policy::sources_for(p, &a))
            .collect();
        for s in ctl.catalog.snapshots(Some(&a.id), None)? {
            names.push(s.source);
        }
        let mut seen = HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names.sort();
        let mut sources = Vec::new();
        let (mut device_ms, mut measured, mut any) = (0.0f64, true, false);
        let (mut rate, mut fixed) = (0.0f64, 0.0f64);
        for name in names {
            // The restore point if it had to be restored now: the newest snapshot not
            // quarantined (plans check signatures and chunks too).
            let point = ctl
                .catalog
                .snapshots(Some(&a.id), Some(&name))?
                .into_iter()
                .find(|s| s.quarantined_ms == 0);
            let (restore_ms, restore_bytes) = match &point {
                Some(p) => {
                    let r = model.rates(&a.id, SourceKind::of(&name).as_str());
                    measured &= r.measured;
                    any = true;
                    rate = r.rate;
                    fixed = r.fixed_ms;
                    let ms = r.estimate_ms(p.bytes);
                    device_ms += ms;
                    (ms.round() as u64, p.bytes)
                }
                None => (0, 0),
            };
            let last = ctl.catalog.latest_snapshot(&a.id, &name)?;
            let (last_id, last_ms) = last.map(|s| (s.id, s.received_ms)).unwrap_or_default();
            let vulns = if last_id.is_empty() {
                None
            } else {
                ctl.catalog.finding_count(&last_id)?
            };
            let covering: Vec<&Policy> = policies
                .iter()
                .filter(|p| policy::covers(p, &a, &name))
                .collect();
            let mut rpo_ms = 0i64;
            let mut overdue = false;
            for p in &covering {
                let slot = latest_slot(p, now_ms)?;
                let interval = p.next_slot(slot)? - slot;
                if rpo_ms == 0 || interval < rpo_ms {
                    rpo_ms = interval;
                }
                let existed = updated.get(&p.name).is_some_and(|u| *u <= slot);
                if existed
                    && last_ms < slot
                    && now_ms > slot + (p.splay_s as i64) * 1000 + OVERDUE_GRACE_MS
                {
                    overdue = true;
                }
            }
            sources.push(pb::DeviceSource {
                source: name,
                policies: covering.iter().map(|p| p.name.clone()).collect(),
                last_snapshot: last_id,
                last_unix_ms: last_ms,
                rpo_seconds: (rpo_ms / 1000).max(0) as u64,
                age_seconds: if last_ms > 0 {
                    ((now_ms - last_ms) / 1000).max(0) as u64
                } else {
                    0
                },
                overdue,
                restore_estimate_ms: restore_ms,
                restore_bytes,
                vulns: vulns.unwrap_or(0),
                vulns_known: vulns.is_some(),
            });
        }
        let drilled = drills.get(&a.id).cloned().unwrap_or_default();
        let rto_s = policy::rto_of(&policies, &a);
        out.push(pb::DeviceInfo {
            connected: ctl.jobs.connected(&a.id),
            tier: policy::tier_of(&policies, &a),
            rto_seconds: rto_s,
            estimate_over_rto: rto_s > 0 && device_ms.round() as u64 > rto_s * 1000,
            last_passed_drill_unix_ms: drilled.last_passed_ms,
            last_drill_unix_ms: drilled.last_ms,
            last_drill_state: drilled.last_state,
            agent: a.name,
            sources,
            restore_estimate_ms: device_ms.round() as u64,
            estimate_basis: Basis::of(any && measured).into(),
            rate_bytes_per_sec: rate,
            fixed_ms: fixed.round() as u64,
        });
    }
    Ok(out)
}

/// Agents chosen by name or by a label selector (not both, not neither).
pub fn select(
    ctl: &Controller,
    names: &[String],
    selector: &str,
) -> Result<Vec<AgentRow>, ApiError> {
    if names.is_empty() == selector.is_empty() {
        return Err(ApiError::InvalidArgument(
            "name the devices with --agent A (repeatable) or --selector KEY=VALUE, one of the two"
                .into(),
        ));
    }
    let agents = if names.is_empty() {
        let sel = crate::policy::parse_selector(selector)
            .map_err(|e| ApiError::InvalidArgument(format!("--selector: {e}")))?;
        ctl.catalog
            .agents()?
            .into_iter()
            .filter(|a| a.revoked_ms == 0 && sel.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .collect::<Vec<_>>()
    } else {
        let mut out = Vec::new();
        for n in names {
            let a = ctl.catalog.find_agent(n)?;
            if !out.iter().any(|o: &AgentRow| o.id == a.id) {
                out.push(a);
            }
        }
        out
    };
    if agents.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no enrolled agent matches the selector {selector:?}; see `lifeboat agents`"
        )));
    }
    Ok(agents)
}
