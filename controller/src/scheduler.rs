//! The scheduler: turns policies into backup jobs.
//!
//! For every policy and every agent it selects, the catalog keeps the last schedule slot
//! handled (`schedule.last_slot_ms`). On each [`tick`] (every few seconds, with the
//! controller's clock), a pair is due when a slot passed since then; it runs at that slot
//! plus a splay offset fixed per (policy, agent, slot), so a fleet does not start in the
//! same second. Slots missed while the agent was offline collapse into one run when it is
//! connected again. A due pair waits, and is not skipped, while the agent is offline, while
//! a job of that policy is still active on it, or while the global or the policy's
//! concurrency limit is reached. Scheduled jobs interrupted by a disconnect, or refused at
//! commit because GC reclaimed what they uploaded while paused past the lease, are retried
//! with exponential backoff (chunks already stored are reused).

use std::collections::{HashMap, HashSet};

use lifeboat_proto::pb::{self, JobState};

use crate::Controller;
use crate::catalog::AgentRow;
use crate::error::ApiError;
use crate::policy::Policy;

/// Retries of an interrupted scheduled job, each after [`retry_backoff_ms`].
pub const MAX_ATTEMPTS: u32 = 5;

/// 1, 2, 4, 8 … minutes, at most an hour.
pub fn retry_backoff_ms(attempts: u32) -> i64 {
    (60_000i64 << attempts.min(6)).min(3_600_000)
}

/// What one tick did.
#[derive(Debug, Default, Clone)]
pub struct TickReport {
    /// `(policy, agent name, job id)` of the jobs it started.
    pub started: Vec<(String, String, String)>,
    /// Interrupted jobs it queued again.
    pub retried: Vec<String>,
}

/// The deterministic splay offset of `(policy, agent, slot)`, in `0..=splay`.
pub fn splay_ms(policy: &Policy, agent_id: &str, slot_ms: i64) -> i64 {
    if policy.splay_s == 0 {
        return 0;
    }
    let mut h = blake3::Hasher::new();
    h.update(policy.name.as_bytes());
    h.update(&[0]);
    h.update(agent_id.as_bytes());
    h.update(&slot_ms.to_le_bytes());
    let v = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]));
    (v % (policy.splay_s * 1000 + 1)) as i64
}

/// The latest schedule slot at or before `now_ms`.
pub fn latest_slot(policy: &Policy, now_ms: i64) -> Result<i64, ApiError> {
    let cron = policy.cron()?;
    let t = jiff::Timestamp::from_millisecond(now_ms)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .to_zoned(policy.tz()?);
    Ok(cron
        .find_previous_occurrence(&t, true)
        .map_err(|e| ApiError::internal(format!("policy {}: {e}", policy.name)))?
        .timestamp()
        .as_millisecond())
}

/// The policies in the catalog, in scheduling order (tier, then name).
pub fn policies(ctl: &Controller) -> Result<Vec<Policy>, ApiError> {
    let mut out = ctl
        .catalog
        .policies()?
        .into_iter()
        .map(|(_, spec, _)| spec.parse::<Policy>())
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.tier.cmp(&b.tier).then(a.name.cmp(&b.name)));
    Ok(out)
}

fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// How an image is named as a source: `image:` and its first tag, or its id when it has
/// none.
pub fn image_source(i: &pb::DockerImage) -> String {
    let name = i
        .repo_tags
        .iter()
        .find(|t| t.as_str() != "<none>:<none>")
        .cloned()
        .unwrap_or_else(|| i.id.clone());
    format!("image:{name}")
}

/// The sources a policy means on one agent, from what the agent reported.
pub fn sources_for(policy: &Policy, agent: &AgentRow) -> Vec<String> {
    let inv: pb::DockerInventory = agent
        .docker
        .as_deref()
        .and_then(|b| prost::Message::decode(b).ok())
        .unwrap_or_default();
    let paths: Vec<&str> = agent.sources.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut out = Vec::new();
    for s in &policy.sources {
        match s.as_str() {
            "all-images" => out.extend(inv.images.iter().map(image_source)),
            "all-volumes" => out.extend(inv.volumes.iter().map(|v| format!("volume:{}", v.name))),
            s if s.starts_with("image:") || s.starts_with("volume:") => out.push(s.to_string()),
            s if s.contains(['*', '?']) => {
                out.extend(paths.iter().filter(|p| glob(s, p)).map(|p| p.to_string()))
            }
            s if paths.contains(&s) => out.push(s.to_string()),
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

/// Whether `source` of `agent` falls under `policy`.
pub fn covers(policy: &Policy, agent: &AgentRow, source: &str) -> bool {
    policy.selects(&agent.labels)
        && policy.sources.iter().any(|s| match s.as_str() {
            "all-images" => source.starts_with("image:"),
            "all-volumes" => source.starts_with("volume:"),
            p if p.contains(['*', '?']) && !p.contains(':') => glob(p, source),
            p => p == source,
        })
}

/// Starts the jobs that are due at `now_ms`. Idempotent: calling it again at the same time
/// starts nothing new.
pub fn tick(ctl: &Controller, now_ms: i64) -> Result<TickReport, ApiError> {
    let mut report = TickReport::default();
    let policies = policies(ctl)?;
    let by_name: HashMap<&str, &Policy> = policies.iter().map(|p| (p.name.as_str(), p)).collect();
    let agents: Vec<AgentRow> = ctl
        .catalog
        .agents()?
        .into_iter()
        .filter(|a| a.revoked_ms == 0)
        .collect();
    let active = ctl
        .catalog
        .jobs_in_states(&[JobState::Queued as i32, JobState::Running as i32])?;
    // Retried: scheduled jobs interrupted by a disconnect, and those refused at commit
    // because GC reclaimed chunks while they were paused past the lease.
    let interrupted: Vec<_> = ctl
        .catalog
        .jobs_in_states(&[JobState::Interrupted as i32, JobState::Failed as i32])?
        .into_iter()
        .filter(|j| {
            j.state == JobState::Interrupted as i32
                || j.refusal == lifeboat_proto::pb::Refusal::MissingChunks as i32
        })
        .collect();
    let mut total = active.len() as u32;
    let mut per_policy: HashMap<String, u32> = HashMap::new();
    let mut busy: HashSet<(String, String)> = HashSet::new();
    for j in active.iter().filter(|j| !j.policy.is_empty()) {
        *per_policy.entry(j.policy.clone()).or_default() += 1;
        busy.insert((j.policy.clone(), j.agent_id.clone()));
    }
    let limit = ctl.max_concurrent_jobs;
    let room = |total: u32, per: &HashMap<String, u32>, p: &Policy| {
        total < limit
            && (p.max_concurrent == 0 || per.get(&p.name).copied().unwrap_or(0) < p.max_concurrent)
    };

    // Interrupted scheduled jobs: queued again after their backoff, up to MAX_ATTEMPTS.
    for mut job in interrupted {
        let Some(p) = by_name.get(job.policy.as_str()) else {
            continue;
        };
        if job.attempts >= MAX_ATTEMPTS {
            continue;
        }
        busy.insert((job.policy.clone(), job.agent_id.clone()));
        if now_ms < job.finished_ms + retry_backoff_ms(job.attempts)
            || !ctl.jobs.connected(&job.agent_id)
            || !room(total, &per_policy, p)
        {
            continue;
        }
        job.attempts += 1;
        job.error = format!(
            "retry {} of {MAX_ATTEMPTS} after: {}",
            job.attempts, job.error
        );
        ctl.jobs.requeue(&mut job)?;
        total += 1;
        *per_policy.entry(job.policy.clone()).or_default() += 1;
        report.retried.push(job.id.clone());
    }

    for p in &policies {
        for a in agents.iter().filter(|a| p.selects(&a.labels)) {
            let Some(last) = ctl.catalog.last_slot(&p.name, &a.id)? else {
                // First sight of this pair: slots count from now.
                ctl.catalog.set_last_slot(&p.name, &a.id, now_ms)?;
                continue;
            };
            if p.next_slot(last)? > now_ms {
                continue;
            }
            let slot = latest_slot(p, now_ms)?;
            if now_ms < slot + splay_ms(p, &a.id, slot)
                || !ctl.jobs.connected(&a.id)
                || busy.contains(&(p.name.clone(), a.id.clone()))
                || !room(total, &per_policy, p)
            {
                continue; // stays due
            }
            let sources = sources_for(p, a);
            if sources.is_empty() {
                tracing::warn!(policy = %p.name, agent = %a.name, "nothing to back up on this agent for the policy");
                ctl.catalog.set_last_slot(&p.name, &a.id, slot)?;
                continue;
            }
            let detail = format!("policy {}: sources {}", p.name, sources.join(","));
            let hook = p.hook.as_ref().map(|h| pb::Hook {
                container: h.container.clone(),
                before: h.before.clone(),
                after: h.after.clone(),
                timeout_seconds: h.timeout_s,
            });
            let consistency = p.consistency.clone();
            let repair = crate::operator_api::repair_chunks(ctl)?;
            let bandwidth = p.bandwidth;
            let row = ctl
                .jobs
                .submit(a, "backup", detail, &p.name, |id| pb::Job {
                    job_id: id.to_string(),
                    kind: Some(pb::job::Kind::Backup(pb::BackupJob {
                        sources,
                        full_reread: false,
                        consistency,
                        hook,
                        repair_chunks: repair,
                        bandwidth_bytes_per_sec: bandwidth,
                    })),
                })?;
            ctl.catalog.set_last_slot(&p.name, &a.id, slot)?;
            total += 1;
            *per_policy.entry(p.name.clone()).or_default() += 1;
            busy.insert((p.name.clone(), a.id.clone()));
            report
                .started
                .push((p.name.clone(), a.name.clone(), row.id.clone()));
        }
    }
    Ok(report)
}

/// Grace after a slot (plus splay) before a source without a newer snapshot is overdue.
const OVERDUE_GRACE_MS: i64 = 15 * 60 * 1000;

/// Per device, per source: the last snapshot, its age against the policy's schedule (RPO),
/// and whether it is overdue. Sources are those the policies cover and those with
/// snapshots.
pub fn devices(ctl: &Controller, now_ms: i64) -> Result<Vec<pb::DeviceInfo>, ApiError> {
    let stored = ctl.catalog.policies()?;
    let updated: HashMap<String, i64> = stored.iter().map(|(n, _, u)| (n.clone(), *u)).collect();
    let policies = policies(ctl)?;
    let model = crate::recovery::estimate::Model::load(&ctl.catalog)?;
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
            .flat_map(|p| sources_for(p, &a))
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
                    let r = model.rates(&a.id, crate::recovery::source_kind(&name));
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
            let covering: Vec<&Policy> = policies.iter().filter(|p| covers(p, &a, &name)).collect();
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
            });
        }
        out.push(pb::DeviceInfo {
            connected: ctl.jobs.connected(&a.id),
            tier: crate::recovery::plan::tier_of(&policies, &a),
            agent: a.name,
            sources,
            restore_estimate_ms: device_ms.round() as u64,
            estimate_basis: if any && measured {
                "measured"
            } else {
                "assumed"
            }
            .into(),
            rate_bytes_per_sec: rate,
            fixed_ms: fixed.round() as u64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("data*", "data"));
        assert!(glob("data*", "data-2"));
        assert!(glob("d?ta", "data"));
        assert!(!glob("data*", "xdata"));
        assert!(glob("*", "anything"));
    }
}
