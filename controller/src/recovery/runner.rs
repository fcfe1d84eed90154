//! The runner that carries a recovery plan out. Running a plan (`start`) spawns one worker
//! per plan (`plan-runner:ID` in `lifeboat status` and `/metrics`, through
//! `Workers::spawn_until_done`), the plan's only writer: every [`TICK`] it reads the state of the restore
//! jobs it started, starts devices up to the plan's concurrency and no more than the
//! controller serves at once (`plan::served_at_once`: so they start in the plan's order),
//! tier by tier (a tier starts when every device of the tiers before it finished), retries
//! a failed restore up to [`MAX_ATTEMPTS`] times, re-estimates the time left, and writes
//! the plan back. A
//! controller restart resumes every running plan (`resume_all`): restores that were
//! running are interrupted by the restart and queued again under the same job id once
//! their agent is back (an agent that still runs the job ignores the second delivery), and
//! devices already done are left alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_core::pace::Pacer;
use lifeboat_core::restore::Mode;
use lifeboat_core::snapshot::SourceKind;
use lifeboat_proto::pb::{self, JobState};
use lifeboat_proto::states::{PlanState, StepState};

use super::estimate::{self, Model, Step, Work};
use super::model::{Plan, Source};
use super::plan::{JOB_TAG, MAX_ATTEMPTS, load, plan_target_refused, save};
use crate::Controller;
use crate::catalog::AgentRow;
use crate::error::ApiError;
use crate::restores::{self, Destination, RestoreError};
use crate::workers::Workers;

const TICK: Duration = Duration::from_millis(100);
/// How often a running plan is written back when only its progress moved (bytes done, the
/// ETA); a change of any state is written at once.
const PROGRESS_SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often a running plan's ETA is estimated again (a simulation of every device left,
/// after reloading the downtime model if a restore ended): what `recover watch` shows
/// changes no faster than it is written.
const REESTIMATE_EVERY: Duration = PROGRESS_SAVE_EVERY;

/// Starts running a planned plan.
pub fn start(ctl: &Arc<Controller>, operator: &str, id: &str) -> Result<Plan, ApiError> {
    let mut plan = load(ctl, id)?;
    match plan.state {
        PlanState::Planned => {}
        PlanState::Running => return Ok(plan),
        PlanState::Finished | PlanState::Failed => {
            return Err(ApiError::FailedPrecondition(format!(
                "plan {} is {}; make a new plan with `lifeboat recover plan`",
                plan.id, plan.state
            )));
        }
    }
    plan.state = PlanState::Running;
    plan.started_ms = ctl.clock.now_ms();
    save(ctl, &plan)?;
    ctl.audit.ok(
        &format!("operator:{operator}"),
        "plan.run",
        &plan.id,
        serde_json::json!({ "devices": plan.devices.len() }),
    );
    spawn(ctl.clone(), plan.id.clone());
    Ok(plan)
}

/// Resumes every plan that was running when the controller stopped.
pub fn resume_all(ctl: &Arc<Controller>) -> Result<(), ApiError> {
    for (id, state) in ctl.catalog.plans()? {
        if state == PlanState::Running {
            tracing::warn!(plan = %id, "resuming a recovery plan after a restart");
            spawn(ctl.clone(), id);
        }
    }
    Ok(())
}

fn spawn(ctl: Arc<Controller>, id: String) {
    {
        let mut running = ctl.plan_runners.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(id.clone()) {
            return;
        }
    }
    let tag = format!("{JOB_TAG}{id}");
    let worker_name = format!("plan-runner:{id}");
    let (plan_id, pacer_tag) = (id.clone(), tag.clone());
    let ended = move |ctl: &Controller, error: Option<ApiError>| {
        if let Some(e) = error {
            tracing::error!(plan = %plan_id, error = %e, "recovery plan runner stopped");
        }
        ctl.jobs.clear_pacer(&pacer_tag);
        ctl.plan_runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&plan_id);
    };
    let plan = match load(&ctl, &id) {
        Ok(p) => p,
        Err(e) => return ended(&ctl, Some(e)),
    };
    if let Some(pacer) = Pacer::new(plan.bandwidth) {
        ctl.jobs.set_pacer(&tag, Arc::new(pacer));
    }
    let worker = Workers::spawn_until_done(
        ctl.clone(),
        worker_name,
        TICK,
        Runner {
            plan,
            cache: Cache::default(),
        },
        tick,
    );
    tokio::spawn(async move {
        let error = match worker.await {
            Ok(result) => result.err(),
            Err(e) => Some(ApiError::from(e)),
        };
        ended(&ctl, error);
    });
}

/// What a plan's runner carries from one step to the next.
struct Runner {
    plan: Plan,
    cache: Cache,
}

/// One step of a plan's runner, and the plan written back if it changed; true once the
/// plan has ended.
fn tick(ctl: &Arc<Controller>, r: &mut Runner) -> Result<bool, ApiError> {
    let done = step(ctl, &mut r.plan, &mut r.cache);
    let write = match &r.cache.saved {
        None => true,
        Some((saved, at)) => {
            !r.plan.settles_as(saved)
                || (at.elapsed() >= PROGRESS_SAVE_EVERY && r.cache.progressed(&r.plan))
        }
    };
    if write {
        save(ctl, &r.plan)?;
        r.cache.saved = Some((r.plan.settled(), std::time::Instant::now()));
        r.cache.last = Some(r.plan.clone());
    }
    done
}

/// What a runner keeps between its ticks, so that a tick reads from the catalog only what
/// may have changed.
#[derive(Default)]
struct Cache {
    /// Agent name -> id.
    agent_ids: HashMap<String, String>,
    /// The downtime model, and how many restores had ended when it was loaded (new samples
    /// arrive only when one ends).
    model: Option<(usize, Model)>,
    /// When the ETA was last estimated.
    estimated: Option<std::time::Instant>,
    /// The plan as last written, settled (see `Plan::settled`), and when; and as written.
    saved: Option<(Plan, std::time::Instant)>,
    last: Option<Plan>,
    /// The restore jobs being followed, as `Jobs` last announced them: a tick reads a
    /// job's state from here, not from the catalog (200 devices at 10 ticks a second were
    /// 2,000 job reads a second).
    jobs: HashMap<String, tokio::sync::watch::Receiver<pb::JobInfo>>,
}

impl Cache {
    /// Job `id` as it stands now; its catalog row is read once, when it is first followed.
    fn job(&mut self, ctl: &Controller, id: &str) -> Result<Option<pb::JobInfo>, ApiError> {
        if !self.jobs.contains_key(id) {
            let Some(row) = ctl.jobs.row(id)? else {
                return Ok(None);
            };
            self.jobs.insert(id.to_string(), ctl.jobs.watch(&row)?);
        }
        Ok(self.jobs.get(id).map(|rx| rx.borrow().clone()))
    }

    /// Stops following the jobs no running source waits for.
    fn forget_ended(&mut self, plan: &Plan) {
        self.jobs.retain(|id, _| {
            plan.devices
                .iter()
                .flat_map(|d| &d.sources)
                .any(|s| s.state == StepState::Running && s.job_id == *id)
        });
    }

    /// Whether `plan` moved on since it was last written.
    fn progressed(&self, plan: &Plan) -> bool {
        self.last.as_ref() != Some(plan)
    }
}

fn offset(plan: &Plan, now_ms: i64) -> u64 {
    (now_ms - plan.started_ms).max(0) as u64
}

/// One pass of the runner; true when the plan has ended.
fn step(ctl: &Controller, plan: &mut Plan, cache: &mut Cache) -> Result<bool, ApiError> {
    let now = ctl.clock.now_ms();
    let tag = format!("{JOB_TAG}{}", plan.id);
    // Follow what runs.
    for d in 0..plan.devices.len() {
        if plan.devices[d].state != StepState::Running {
            continue;
        }
        follow_device(ctl, plan, d, &tag, now, cache)?;
    }
    // Start what may start: no more devices than the controller serves at once, so that
    // they start in the plan's order (beyond it, the controller would serve them in the
    // order their agents ask, and each device's estimate would be a lottery).
    let mut running = plan
        .devices
        .iter()
        .filter(|d| d.state == StepState::Running)
        .count();
    let at_once = super::plan::served_at_once(ctl, plan.concurrency, !plan.from_store.is_empty());
    for d in 0..plan.devices.len() {
        if running >= at_once {
            break;
        }
        if plan.devices[d].state != StepState::Pending {
            continue;
        }
        let tier = plan.devices[d].tier;
        let blocked = plan.devices.iter().any(|o| {
            o.tier < tier && (o.state == StepState::Pending || o.state == StepState::Running)
        });
        if blocked {
            break;
        }
        plan.devices[d].state = StepState::Running;
        plan.devices[d].actual_start_ms = offset(plan, now);
        running += 1;
        follow_device(ctl, plan, d, &tag, now, cache)?;
    }
    cache.forget_ended(plan);
    reestimate(ctl, plan, now, cache)?;
    plan.bytes_moved = plan
        .devices
        .iter()
        .flat_map(|d| &d.sources)
        .filter(|s| s.state == StepState::Done)
        .map(|s| s.wire_bytes)
        .sum();
    if plan.active() {
        return Ok(false);
    }
    let failed: Vec<&str> = plan
        .devices
        .iter()
        .filter(|d| d.state == StepState::Failed)
        .map(|d| d.agent.as_str())
        .collect();
    plan.state = if failed.is_empty() {
        PlanState::Finished
    } else {
        PlanState::Failed
    };
    plan.finished_ms = now;
    plan.eta_ms = 0;
    plan.actual_total_downtime_ms = plan.devices.iter().map(|d| d.actual_finish_ms).sum();
    plan.actual_longest_downtime_ms = plan
        .devices
        .iter()
        .map(|d| d.actual_finish_ms)
        .max()
        .unwrap_or(0);
    record_egress(ctl, plan, now);
    ctl.audit.ok(
        &format!("operator:{}", plan.created_by),
        "plan.end",
        &plan.id,
        serde_json::json!({
            "state": plan.state.as_str(),
            "failed": failed,
            "estimated_total_ms": plan.total_downtime_ms,
            "actual_total_ms": plan.actual_total_downtime_ms,
        }),
    );
    if failed.is_empty() {
        tracing::info!(plan = %plan.id, devices = plan.devices.len(), "recovery plan finished");
    } else {
        tracing::error!(plan = %plan.id, failed = ?failed, "recovery plan finished with failed devices");
    }
    Ok(true)
}

/// Records what the plan moved over its length: the fleet's capacity in the downtime model
/// (only when the plan moved enough to say something, and not for capped plans, whose
/// rate is the cap's).
fn record_egress(ctl: &Controller, plan: &Plan, now: i64) {
    let moved = plan.bytes_moved;
    let ms = plan.actual_longest_downtime_ms;
    if plan.bandwidth > 0 || moved < 16 << 20 || ms == 0 {
        return;
    }
    let sample = crate::catalog::SampleRow {
        agent_id: String::new(),
        kind: estimate::EGRESS.into(),
        bytes: moved,
        data_ms: ms,
        total_ms: ms,
        shared: false,
    };
    if let Err(e) = ctl
        .catalog
        .insert_sample(&format!("plan:{}", plan.id), &sample, 0, now)
    {
        tracing::warn!(plan = %plan.id, error = %e, "cannot record the plan's egress");
    }
}

/// Moves one running device forward: follows its current restore and, when it is done,
/// starts the next one at once.
fn follow_device(
    ctl: &Controller,
    plan: &mut Plan,
    d: usize,
    tag: &str,
    now: i64,
    cache: &mut Cache,
) -> Result<(), ApiError> {
    let started = plan.started_ms;
    let since_start = |t: i64| (t - started).max(0) as u64;
    let mode = plan.mode;
    let plan_id = plan.id.clone();
    let from_copy = !plan.from_store.is_empty();
    let dev = &mut plan.devices[d];
    loop {
        let Some(s) = dev
            .sources
            .iter()
            .position(|s| s.state == StepState::Running || s.state == StepState::Pending)
        else {
            let failed = dev.sources.iter().any(|s| s.state == StepState::Failed);
            dev.state = if failed {
                StepState::Failed
            } else {
                StepState::Done
            };
            if failed || dev.actual_finish_ms == 0 {
                dev.actual_finish_ms = since_start(now);
            }
            return Ok(());
        };
        if dev.sources[s].state == StepState::Pending {
            let target = ctl.catalog.find_agent(&dev.target_agent)?;
            let src = &mut dev.sources[s];
            src.attempts += 1;
            match submit(ctl, mode, &target, src, tag, from_copy) {
                Ok(job) => {
                    src.job_id = job;
                    src.state = StepState::Running;
                }
                Err(e) => {
                    src.error = e.to_string();
                    if src.attempts >= MAX_ATTEMPTS {
                        src.state = StepState::Failed;
                        dev.error = format!("{}: {e}", src.source);
                        continue;
                    }
                }
            }
            return Ok(());
        }
        let src = &mut dev.sources[s];
        let Some(job) = cache.job(ctl, &src.job_id)? else {
            src.state = StepState::Pending;
            return Ok(());
        };
        src.progress = job.progress;
        src.waiting.clear();
        match JobState::try_from(job.state).unwrap_or(JobState::Unspecified) {
            JobState::Succeeded => {
                src.state = StepState::Done;
                src.result = job.restore;
                src.error.clear();
                // The device is back when its last restore ended, not when we noticed.
                dev.actual_finish_ms = since_start(job.finished_unix_ms);
                continue;
            }
            JobState::Failed => {
                src.error = job.error.clone();
                if src.attempts >= MAX_ATTEMPTS {
                    src.state = StepState::Failed;
                    dev.error = format!("{}: {}", src.source, job.error);
                    tracing::error!(plan = %plan_id, device = %dev.agent, error = %dev.error, "device failed");
                    continue;
                }
                tracing::warn!(plan = %plan_id, device = %dev.agent, error = %job.error, "restore failed; trying again");
                src.state = StepState::Pending;
                continue;
            }
            // Queued again under the same id once the agent is back.
            JobState::Interrupted if ctl.jobs.connected(&job.agent_id) => {
                if let Some(mut row) = ctl.jobs.row(&job.id)? {
                    ctl.jobs.requeue_interrupted(&mut row, now)?;
                }
            }
            // Say why nothing moves: the plan waits for the machine (it may be being
            // rebuilt), and the watch shows it.
            JobState::Queued | JobState::Interrupted if !ctl.jobs.connected(&job.agent_id) => {
                src.waiting = format!("waiting for agent {} to connect", dev.target_agent);
            }
            _ => {}
        }
        return Ok(());
    }
}

/// Starts the restore of one source; returns the job id.
fn submit(
    ctl: &Controller,
    mode: Mode,
    target: &AgentRow,
    src: &Source,
    tag: &str,
    from_copy: bool,
) -> Result<String, ApiError> {
    let snap = ctl.catalog.find_snapshot(&src.snapshot)?;
    let destination = match SourceKind::of(&snap.source) {
        SourceKind::Path => Destination::Dir {
            target: src.target.clone(),
            mode,
            // The source ends exactly as its restore point.
            delete_extra: true,
        },
        SourceKind::Volume => Destination::Volume {
            name: snap.source.trim_start_matches("volume:").to_string(),
            stop_containers: true,
        },
        SourceKind::Image => Destination::Image,
    };
    // Privileges (device nodes, setuid, capabilities) only onto the device itself.
    let mut job = restores::job(ctl, &snap, target, destination, false).map_err(|e| match e {
        RestoreError::Target(t) => ApiError::FailedPrecondition(plan_target_refused(t)),
        other => other.into(),
    })?;
    // A plan from a copy store: the primary may be gone (its objects deleted), whatever
    // the last reads from it said; the controller serves the chunks, from the copy.
    job.direct_from_store &= !from_copy;
    let detail = format!(
        "{} snapshot {} of {} ({})",
        tag,
        &snap.id[..12],
        snap.source,
        if src.target.is_empty() {
            "Docker"
        } else {
            &src.target
        }
    );
    let row = ctl.jobs.submit_restore(target, detail, tag, job)?;
    Ok(row.id)
}

/// Re-estimates the time left from the measured rates and what is left to move.
fn reestimate(
    ctl: &Controller,
    plan: &mut Plan,
    now: i64,
    cache: &mut Cache,
) -> Result<(), ApiError> {
    if cache
        .estimated
        .is_some_and(|at| at.elapsed() < REESTIMATE_EVERY)
    {
        return Ok(());
    }
    cache.estimated = Some(std::time::Instant::now());
    let ended = plan
        .devices
        .iter()
        .flat_map(|d| &d.sources)
        .filter(|s| s.state.ended())
        .count();
    if cache.model.as_ref().is_none_or(|(n, _)| *n != ended) {
        cache.model = Some((ended, Model::load(&ctl.catalog)?));
    }
    let Some((_, model)) = &cache.model else {
        return Ok(());
    };
    let mut works = Vec::new();
    let mut running = Vec::new();
    let mut pending = Vec::new();
    let at = offset(plan, now) as f64;
    for (i, d) in plan.devices.iter().enumerate() {
        let target_id = match cache.agent_ids.get(&d.target_agent) {
            Some(id) => id.clone(),
            None => {
                let id = ctl
                    .catalog
                    .find_agent(&d.target_agent)
                    .map(|a| a.id)
                    .unwrap_or_default();
                cache.agent_ids.insert(d.target_agent.clone(), id.clone());
                id
            }
        };
        let mut steps = Vec::new();
        for s in &d.sources {
            if s.state.ended() {
                continue;
            }
            let rates = model.rates(&target_id, SourceKind::of(&s.source).as_str());
            let left = match (&s.progress, s.state) {
                (Some(p), StepState::Running) if p.bytes_total > 0 => {
                    1.0 - (p.bytes_done.min(p.bytes_total) as f64 / p.bytes_total as f64)
                }
                _ => 1.0,
            };
            let per_wire = if s.bytes > 0 {
                s.wire_bytes as f64 / s.bytes as f64
            } else {
                1.0
            };
            steps.push(Step {
                fixed_ms: rates.fixed_ms,
                wire_bytes: s.wire_bytes as f64 * left,
                max_rate: (rates.rate * per_wire).max(1.0),
            });
        }
        works.push(Work {
            tier: d.tier,
            steps,
        });
        match d.state {
            StepState::Running => running.push((i, d.actual_start_ms as f64)),
            StepState::Pending => pending.push(i),
            StepState::Done | StepState::Failed => {}
        }
    }
    let spans = estimate::simulate(
        &works,
        &running,
        &pending,
        super::plan::served_at_once(ctl, plan.concurrency, !plan.from_store.is_empty()),
        model.plan_bandwidth(plan.bandwidth),
        at,
    );
    let end = running
        .iter()
        .map(|(i, _)| spans[*i].finish_ms)
        .chain(pending.iter().map(|i| spans[*i].finish_ms))
        .fold(at, f64::max);
    plan.eta_ms = (end - at).max(0.0).round() as u64;
    Ok(())
}
