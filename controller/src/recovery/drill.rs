//! Restore drills: restore the latest good snapshots of a device into a sandbox the agent
//! chooses (a scratch directory under its state directory, a scratch volume, a temporary
//! image tag), verify every byte and signature, run an optional probe, time every phase,
//! and remove the sandbox. Each drill records the estimate the downtime model made before
//! it ran, so the model's accuracy is tracked, and its own timings feed the model.
//!
//! Drills run one at a time (a drill measures a device alone); a failed drill is logged
//! as an error, counted in `/metrics` (`lifeboat_drills_failed_total`) and makes
//! `lifeboat drill run` exit non-zero. Each drill is checked against the device's recovery
//! time objective (the policies' `rto`, recorded as the drill starts): one that passed
//! but took longer is logged as a warning, counted (`lifeboat_drills_over_rto_total`) and
//! makes `lifeboat drill run` exit 3.
//!
//! Drills of one device at a time say nothing of what the fleet moves together, which a
//! recovery plan restoring many devices at once needs to know before any plan has run. So
//! a drill run of several devices first restores them all at once into sandboxes (at most
//! [`CALIBRATION_DEVICES`], and no more than the controller serves at once; the smallest
//! snapshots first, none over [`CALIBRATION_MAX_BYTES`]): a *calibration burst*, whose
//! aggregate rate becomes the fleet's capacity in the downtime model (an `egress` sample).
//! A burst of as many devices is run again a week later.

use std::sync::Arc;
use std::time::Duration;

use lifeboat_core::snapshot::SourceKind;
use lifeboat_proto::pb::{self, JobState};
use lifeboat_proto::states::{Basis, DrillState};
use prost::Message;

use super::estimate::Model;
use super::last_known_good;
use crate::Controller;
use crate::catalog::{AgentRow, DrillRow};
use crate::error::ApiError;
use crate::restores::{self, Destination};

/// Jobs of drills carry this policy tag.
pub const JOB_TAG: &str = "drill";
/// How long a drill waits for an offline agent before it fails.
const AGENT_WAIT: Duration = Duration::from_secs(60);
/// Jobs of a calibration burst carry this policy tag: their samples are shared (they ran
/// beside each other), and they are nobody's drill.
pub const CALIBRATION_TAG: &str = "calibration";
/// Devices restored at once by a calibration burst, at most.
const CALIBRATION_DEVICES: usize = 32;
/// A burst of as many devices is run again after this long.
const CALIBRATION_AGE_MS: i64 = 7 * 86_400_000;
/// Snapshots larger than this are left out of a burst, which restores each whole: it
/// needs a few seconds of data moving at once, not the fleet's every byte each week.
const CALIBRATION_MAX_BYTES: u64 = 1 << 30;
/// How long a burst may take before it is given up (its restores run on; no sample).
const CALIBRATION_WAIT: Duration = Duration::from_secs(600);

/// Picks the devices (the least recently drilled first when sampling), records one drill
/// per source with the model's estimate, and starts running them in the background.
pub fn start(
    ctl: &Arc<Controller>,
    actor: &str,
    agents: Vec<AgentRow>,
    sample: u32,
    probe: &str,
    probe_timeout_s: u32,
    policy: &str,
) -> Result<Vec<DrillRow>, ApiError> {
    let last = ctl.catalog.drill_history()?;
    let mut agents = agents;
    agents.sort_by_key(|a| (last.get(&a.id).map_or(0, |h| h.last_ms), a.name.clone()));
    if sample > 0 {
        agents.truncate(sample as usize);
    }
    let model = Model::load(&ctl.catalog)?;
    let policies = crate::policy::policies(ctl)?;
    let now = ctl.clock.now_ms();
    let mut drills = Vec::new();
    for agent in &agents {
        let rto_ms = crate::policy::rto_of(&policies, agent) * 1000;
        let mut sources: Vec<String> = ctl
            .catalog
            .snapshots(Some(&agent.id), None)?
            .into_iter()
            .map(|s| s.source)
            .collect();
        sources.sort();
        sources.dedup();
        if sources.is_empty() {
            drills.push(DrillRow {
                id: crate::jobs::random_id::<6>()?,
                agent_id: agent.id.clone(),
                state: DrillState::Failed.into(),
                started_ms: now,
                finished_ms: now,
                error: "the device has no snapshot to drill".into(),
                probe: probe.into(),
                policy: policy.into(),
                estimate_basis: Basis::Assumed.into(),
                rto_ms,
                ..Default::default()
            });
            continue;
        }
        for source in sources {
            let (good, skipped) = last_known_good(
                ctl,
                &agent.id,
                &source,
                i64::MAX,
                &super::Criteria::default(),
            )?;
            let rates = model.rates(&agent.id, SourceKind::of(&source).as_str());
            let mut d = DrillRow {
                id: crate::jobs::random_id::<6>()?,
                agent_id: agent.id.clone(),
                source: source.clone(),
                state: DrillState::Queued.into(),
                started_ms: now,
                probe: probe.into(),
                policy: policy.into(),
                estimate_basis: rates.basis().into(),
                rto_ms,
                ..Default::default()
            };
            match good {
                Some(g) => {
                    d.snapshot_id = g.snap.id.clone();
                    d.bytes = g.snap.bytes;
                    d.estimate_ms = rates.estimate_ms(g.snap.bytes).round() as u64;
                }
                None => {
                    d.state = DrillState::Failed.into();
                    d.finished_ms = now;
                    d.error = match skipped.first() {
                        Some((id, why)) => {
                            format!("no good snapshot to restore (newest, {}: {why})", &id[..12])
                        }
                        None => "no good snapshot to restore".into(),
                    };
                    tracing::error!(agent = %agent.name, %source, error = %d.error, "DRILL FAILED");
                }
            }
            drills.push(d);
        }
    }
    for d in &drills {
        ctl.catalog.put_drill(d)?;
    }
    ctl.audit.ok(
        actor,
        "drill.start",
        &drills
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>()
            .join(","),
        serde_json::json!({
            "agents": agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            "probe": probe,
            "policy": policy,
        }),
    );
    let queue: Vec<DrillRow> = drills
        .iter()
        .filter(|d| d.state == DrillState::Queued)
        .cloned()
        .collect();
    let burst = burst_devices(&queue, |agent| ctl.jobs.connected(agent));
    let c = ctl.clone();
    let timeout = probe_timeout_s;
    tokio::spawn(async move {
        if let Err(e) = calibrate(&c, burst).await {
            tracing::warn!(error = %e, "the calibration burst did not complete; the downtime model keeps what it knew");
        }
        for d in queue {
            if let Err(e) = run_one(&c, d.clone(), timeout).await {
                tracing::error!(drill = %d.id, error = %e, "DRILL FAILED");
                let mut d = d;
                d.state = DrillState::Failed.into();
                d.finished_ms = c.clock.now_ms();
                d.error = e.to_string();
                let _ = c.catalog.put_drill(&d);
            }
        }
    });
    Ok(drills)
}

/// What a calibration burst may restore: one snapshot per device (its smallest among the
/// drills), of devices whose agent is `here`, none over [`CALIBRATION_MAX_BYTES`],
/// smallest first.
fn burst_devices(drills: &[DrillRow], here: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let mut fit: Vec<&DrillRow> = drills
        .iter()
        .filter(|d| d.bytes <= CALIBRATION_MAX_BYTES && here(&d.agent_id))
        .collect();
    fit.sort_by_key(|d| (d.bytes, d.agent_id.clone()));
    let mut burst: Vec<(String, String)> = Vec::new();
    for d in fit {
        if !burst.iter().any(|(a, _)| *a == d.agent_id) {
            burst.push((d.agent_id.clone(), d.snapshot_id.clone()));
        }
    }
    burst
}

/// Restores up to [`CALIBRATION_DEVICES`] of `devices` (agent id, snapshot id) at once
/// into sandboxes, unless a burst of as many ran within [`CALIBRATION_AGE_MS`], and records
/// what they moved together over the time their data moved: from the first restore's
/// first data to the last one's last (each restore's setup and finish are the model's
/// fixed part, not the fleet's rate).
async fn calibrate(ctl: &Arc<Controller>, devices: Vec<(String, String)>) -> Result<(), ApiError> {
    let n = devices
        .len()
        .min(CALIBRATION_DEVICES)
        .min(super::plan::served_at_once(
            ctl,
            devices.len() as u32,
            false,
        ));
    if n < 2 {
        return Ok(());
    }
    let key = format!("{CALIBRATION_TAG}:{n}");
    let now = ctl.clock.now_ms();
    if ctl
        .catalog
        .sample_at(&key)?
        .is_some_and(|at| now - at < CALIBRATION_AGE_MS)
    {
        return Ok(());
    }
    tracing::info!(
        devices = n,
        "calibrating the downtime model: restoring {n} devices at once into sandboxes"
    );
    let mut jobs = Vec::new();
    for (agent_id, snapshot_id) in devices.into_iter().take(n) {
        let Some(agent) = ctl.catalog.agent(&agent_id)? else {
            continue;
        };
        let snap = ctl.catalog.find_snapshot(&snapshot_id)?;
        let sandbox = Destination::Sandbox {
            probe: String::new(),
            probe_timeout_s: 0,
        };
        let job = restores::job(ctl, &snap, &agent, sandbox, false)?;
        let detail = format!("calibration burst of {n} devices ({})", &snap.id[..12]);
        let row = ctl
            .jobs
            .submit_restore(&agent, detail, CALIBRATION_TAG, job)?;
        jobs.push(row.id);
    }
    let deadline = std::time::Instant::now() + CALIBRATION_WAIT;
    let rows = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rows = jobs
            .iter()
            .map(|id| ctl.jobs.row(id))
            .collect::<Result<Vec<_>, _>>()?;
        let ended = |state: i32| {
            state == JobState::Succeeded as i32
                || state == JobState::Failed as i32
                || state == JobState::Interrupted as i32
        };
        if rows.iter().flatten().all(|j| ended(j.state)) {
            break rows.into_iter().flatten().collect::<Vec<_>>();
        }
        if std::time::Instant::now() > deadline {
            return Err(ApiError::FailedPrecondition(format!(
                "the calibration burst of {n} devices did not end within {} s",
                CALIBRATION_WAIT.as_secs()
            )));
        }
    };
    let (mut bytes, mut first, mut last) = (0u64, i64::MAX, i64::MIN);
    for job in &rows {
        let result = job
            .result
            .as_deref()
            .and_then(|r| pb::RestoreResult::decode(r).ok());
        let (true, Some(r)) = (job.state == JobState::Succeeded as i32, result) else {
            return Err(ApiError::FailedPrecondition(format!(
                "restore {} of the calibration burst did not succeed: {}",
                job.id, job.error
            )));
        };
        bytes += r.bytes_fetched;
        first = first.min(job.started_ms + r.setup_ms as i64);
        last = last.max(job.finished_ms - (r.finish_ms + r.probe_ms) as i64);
    }
    let window_ms = (last - first).max(1) as u64;
    let sample = crate::catalog::SampleRow {
        agent_id: String::new(),
        kind: super::estimate::EGRESS.into(),
        bytes,
        data_ms: window_ms,
        total_ms: window_ms,
        shared: false,
    };
    ctl.catalog
        .insert_sample(&key, &sample, 0, ctl.clock.now_ms())?;
    tracing::info!(
        devices = n,
        bytes,
        window_ms,
        mb_per_s = bytes as f64 / 1e3 / window_ms as f64,
        "calibration burst done: the fleet's aggregate restore rate"
    );
    Ok(())
}

/// Runs one drill to its end (the job's outcome is recorded by `recovery::outcome::restore_finished`).
async fn run_one(
    ctl: &Arc<Controller>,
    mut d: DrillRow,
    probe_timeout_s: u32,
) -> Result<(), ApiError> {
    let agent = ctl
        .catalog
        .agent(&d.agent_id)?
        .ok_or_else(|| ApiError::NotFound(format!("agent {} is gone", d.agent_id)))?;
    let snap = ctl.catalog.find_snapshot(&d.snapshot_id)?;
    let job = restores::job(
        ctl,
        &snap,
        &agent,
        Destination::Sandbox {
            probe: d.probe.clone(),
            probe_timeout_s,
        },
        false,
    )?;
    let detail = format!("drill {} of {} ({})", d.id, snap.source, &snap.id[..12]);
    let row = ctl.jobs.submit_restore(&agent, detail, JOB_TAG, job)?;
    d.job_id = row.id.clone();
    d.state = DrillState::Running.into();
    d.started_ms = ctl.clock.now_ms();
    ctl.catalog.put_drill(&d)?;
    // Since the job was last queued.
    let mut waited = std::time::Instant::now();
    let mut interrupted: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(mut job) = ctl.jobs.row(&row.id)? else {
            return Err(ApiError::internal(format!("drill job {} vanished", row.id)));
        };
        let state = JobState::try_from(job.state).unwrap_or(JobState::Unspecified);
        if state != JobState::Interrupted {
            interrupted = None;
        }
        match state {
            JobState::Succeeded | JobState::Failed => return Ok(()),
            // The agent's session broke. A restore it still runs comes back running with
            // the next session (`Jobs::reconcile`); one it lost (it restarted) is queued
            // again under the same id once it is back, as a recovery plan does. The drill
            // fails only when the agent does not come back.
            JobState::Interrupted => {
                let since = *interrupted.get_or_insert_with(std::time::Instant::now);
                if ctl.jobs.requeue_interrupted(&mut job, ctl.clock.now_ms())? {
                    tracing::info!(drill = %d.id, job = %job.id, "the drill's restore was interrupted; asking the agent again");
                    waited = std::time::Instant::now();
                } else if since.elapsed() > AGENT_WAIT {
                    return Err(ApiError::FailedPrecondition(format!(
                        "the drill was interrupted and agent {} did not come back within {} s: {}",
                        agent.name,
                        AGENT_WAIT.as_secs(),
                        job.error
                    )));
                }
            }
            JobState::Queued if waited.elapsed() > AGENT_WAIT => {
                return Err(ApiError::FailedPrecondition(format!(
                    "agent {} did not take the drill within {} s (offline?)",
                    agent.name,
                    AGENT_WAIT.as_secs()
                )));
            }
            _ => {}
        }
    }
}

/// What `lifeboat drills` shows.
pub fn info(ctl: &Controller, d: DrillRow) -> pb::DrillInfo {
    let agent = ctl
        .catalog
        .agent(&d.agent_id)
        .ok()
        .flatten()
        .map(|a| a.name)
        .unwrap_or_else(|| d.agent_id.clone());
    let over_rto = d.over_rto();
    pb::DrillInfo {
        rto_ms: d.rto_ms,
        over_rto,
        id: d.id,
        agent,
        source: d.source,
        snapshot: d.snapshot_id,
        job_id: d.job_id,
        state: d.state,
        started_unix_ms: d.started_ms,
        finished_unix_ms: d.finished_ms,
        estimate_ms: d.estimate_ms,
        actual_ms: d.actual_ms,
        bytes: d.bytes,
        result: d
            .result
            .as_deref()
            .and_then(|r| pb::RestoreResult::decode(r).ok()),
        error: d.error,
        probe: d.probe,
        estimate_basis: d.estimate_basis,
        policy: d.policy,
    }
}

/// Scheduled drills (a policy's `drill`): each round drills `sample` devices, rounds spread
/// so that every selected device is drilled within `every`. Called by the scheduler tick.
pub fn tick(ctl: &Arc<Controller>, now_ms: i64) -> Result<(), ApiError> {
    let policies = crate::policy::policies(ctl)?;
    for p in policies {
        let Some(drill) = &p.drill else { continue };
        let agents: Vec<AgentRow> = ctl
            .catalog
            .agents()?
            .into_iter()
            .filter(|a| a.revoked_ms == 0 && p.selects(&a.labels))
            .collect();
        if agents.is_empty() {
            continue;
        }
        let rounds = agents.len().div_ceil(drill.sample.max(1) as usize) as i64;
        let interval_ms = (drill.every_s as i64 * 1000 / rounds).max(1000);
        let key = format!("drill:{}", p.name);
        let last = ctl.catalog.last_slot(&key, "")?.unwrap_or(0);
        if now_ms - last < interval_ms {
            continue;
        }
        ctl.catalog.set_last_slot(&key, "", now_ms)?;
        start(
            ctl,
            &format!("policy:{}", p.name),
            agents,
            drill.sample,
            &drill.probe,
            0,
            &p.name,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_takes_one_small_snapshot_per_device_here_smallest_first() {
        let drill = |agent: &str, snap: &str, bytes: u64| DrillRow {
            agent_id: agent.into(),
            snapshot_id: snap.into(),
            bytes,
            ..Default::default()
        };
        let drills = [
            drill("a", "a-big", 900 << 20),
            drill("a", "a-small", 10 << 20),
            drill("b", "b-huge", 5 << 30),
            drill("c", "c-mid", 100 << 20),
            drill("gone", "g", 1 << 20),
        ];
        let burst = burst_devices(&drills, |agent| agent != "gone");
        let pick = |a: &str, s: &str| (a.to_string(), s.to_string());
        assert_eq!(burst, vec![pick("a", "a-small"), pick("c", "c-mid")]);
    }
}
