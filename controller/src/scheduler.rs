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
use crate::backups;
use crate::catalog::AgentRow;
use crate::error::ApiError;
use crate::policy::{self, Consistency, Policy};

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

/// Starts the jobs that are due at `now_ms`. Idempotent: calling it again at the same time
/// starts nothing new.
pub fn tick(ctl: &Controller, now_ms: i64) -> Result<TickReport, ApiError> {
    let mut report = TickReport::default();
    let policies = policy::policies(ctl)?;
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
            let sources = policy::sources_for(p, a);
            if sources.is_empty() {
                tracing::warn!(policy = %p.name, agent = %a.name, "nothing to back up on this agent for the policy");
                ctl.catalog.set_last_slot(&p.name, &a.id, slot)?;
                continue;
            }
            let options = backups::Options {
                full_reread: false,
                // Validated when the policy was applied; empty: the agent's choice.
                consistency: Consistency::parse(&p.consistency),
                hook: p.hook.as_ref().map(|h| pb::Hook {
                    container: h.container.clone(),
                    before: h.before.clone(),
                    after: h.after.clone(),
                    timeout_seconds: h.timeout_s,
                }),
                bandwidth: p.bandwidth,
            };
            let row = backups::submit(ctl, a, sources, options, &p.name)?;
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
