//! Recovery plans: what to restore where, in which order, and when each device will be
//! back; and the runner that carries a plan out.
//!
//! A plan is made once (`create`) and stored with an id as protobuf `PlanInfo`. Running it
//! (`start`) spawns one runner task per plan, the plan's only writer: every
//! [`TICK`] it reads the state of the restore jobs it started, starts devices up to the
//! plan's concurrency (tier by tier: a tier starts when every device of the tiers before
//! it finished), retries a failed restore up to [`MAX_ATTEMPTS`] times, re-estimates the
//! time left, and writes the plan back. A controller restart resumes every running plan
//! (`resume_all`): restores that were running are interrupted by the restart and queued
//! again under the same job id once their agent is back (an agent that still runs the job
//! ignores the second delivery), and devices already done are left alone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::Record;
use lifeboat_proto::pb::{self, JobState};
use prost::Message;

use super::estimate::{self, Model, Step, Work};
use super::pacer::Pacer;
use super::{Good, last_known_good, source_kind};
use crate::Controller;
use crate::auth::Role;
use crate::catalog::AgentRow;
use crate::error::ApiError;

/// Jobs a plan starts carry `plan:<id>` as their policy.
pub const JOB_TAG: &str = "plan:";
/// Tries per restore before its device is reported failed.
pub const MAX_ATTEMPTS: u32 = 3;
const TICK: Duration = Duration::from_millis(100);
const DEFAULT_CONCURRENCY: u32 = 4;

/// Agents chosen by name or by a label selector (not both, not neither).
pub fn select_agents(
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

/// A device's tier: the lowest tier of the policies that select it (0 without any).
pub fn tier_of(policies: &[crate::policy::Policy], agent: &AgentRow) -> u32 {
    policies
        .iter()
        .filter(|p| p.selects(&agent.labels))
        .map(|p| p.tier)
        .min()
        .unwrap_or(0)
}

/// Where a host-path source goes back to on `target`: its configured path, which must lie
/// below one of the target agent's restore roots.
fn path_target(
    origin: &AgentRow,
    target: &AgentRow,
    source: &str,
    recorded: &str,
) -> Result<String, String> {
    let path = origin
        .sources
        .iter()
        .find(|(name, _, _)| name == source)
        .map(|(_, _, p)| p.clone())
        .unwrap_or_else(|| recorded.to_string());
    let p = Path::new(&path);
    if target
        .restore_roots
        .iter()
        .any(|r| p.starts_with(r) && p != Path::new(r))
    {
        Ok(path)
    } else {
        Err(format!(
            "{path} is not below a restore root of agent {} ({}); start that agent with --restore-root covering it, or send the device elsewhere with --target-map",
            target.name,
            if target.restore_roots.is_empty() {
                "it has none".to_string()
            } else {
                target.restore_roots.join(", ")
            }
        ))
    }
}

fn docker_target(target: &AgentRow, kind: &str) -> Result<(), String> {
    let inv = target
        .docker
        .as_deref()
        .and_then(|d| pb::DockerInventory::decode(d).ok())
        .unwrap_or_default();
    if !inv.available {
        return Err(format!(
            "agent {} has no Docker Engine for the {kind}",
            target.name
        ));
    }
    if !inv.restore_allowed {
        return Err(format!(
            "agent {} does not restore into Docker; start it with --docker-restore",
            target.name
        ));
    }
    Ok(())
}

/// Makes a plan (not run yet) and stores it.
pub fn create(
    ctl: &Controller,
    operator: &str,
    role: Role,
    req: pb::PlanRequest,
) -> Result<pb::PlanInfo, ApiError> {
    if req.before_unix_ms <= 0 {
        return Err(ApiError::InvalidArgument(
            "--before is required: the compromise time; restore points are the last good snapshots before it".into(),
        ));
    }
    lifeboat_core::restore::Mode::parse(&req.mode)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    if req.force && role != Role::Admin {
        return Err(ApiError::PermissionDenied(
            "denied: only an admin may plan from quarantined snapshots (--force)".into(),
        ));
    }
    let agents = select_agents(ctl, &req.agents, &req.selector)?;
    let policies = crate::scheduler::policies(ctl)?;
    let model = Model::load(&ctl.catalog)?;
    let mode = if req.mode.is_empty() {
        "replace".to_string()
    } else {
        req.mode.clone()
    };
    let concurrency = if req.concurrency == 0 {
        DEFAULT_CONCURRENCY
    } else {
        req.concurrency
    };
    let mut plan = pb::PlanInfo {
        id: crate::jobs::random_id::<6>()?,
        created_unix_ms: ctl.clock.now_ms(),
        created_by: operator.to_string(),
        state: "planned".into(),
        before_unix_ms: req.before_unix_ms,
        concurrency,
        bandwidth_bytes_per_sec: req.bandwidth_bytes_per_sec,
        mode: mode.clone(),
        forced: req.force,
        ..Default::default()
    };
    for from in req.target_map.keys() {
        if !agents.iter().any(|a| &a.name == from) {
            return Err(ApiError::InvalidArgument(format!(
                "the target map names {from:?}, which is not one of the devices in this plan"
            )));
        }
    }
    let mut errors = Vec::new();
    let mut works = Vec::new();
    let mut forced_points = Vec::new();
    for origin in &agents {
        let target = match req.target_map.get(&origin.name) {
            Some(name) => {
                let t = ctl.catalog.find_agent(name)?;
                if t.revoked_ms != 0 {
                    errors.push(format!(
                        "{}: the target map sends it to {}, which is revoked",
                        origin.name, t.name
                    ));
                    continue;
                }
                t
            }
            None => origin.clone(),
        };
        if target.revoked_ms != 0 {
            errors.push(format!(
                "{}: the agent is revoked; send the device to a replacement with --target-map",
                origin.name
            ));
            continue;
        }
        let mut names: Vec<String> = ctl
            .catalog
            .snapshots(Some(&origin.id), None)?
            .into_iter()
            .map(|s| s.source)
            .collect();
        names.sort();
        names.dedup();
        let mut dev = pb::PlanDevice {
            agent: origin.name.clone(),
            target_agent: target.name.clone(),
            tier: tier_of(&policies, origin),
            state: "pending".into(),
            ..Default::default()
        };
        let mut steps = Vec::new();
        let mut measured = true;
        for name in names {
            let (good, skipped) =
                last_known_good(ctl, &origin.id, &name, req.before_unix_ms, req.force)?;
            let Some(Good { snap, job, chunks }) = good else {
                let why = skipped
                    .first()
                    .map(|(id, why)| format!(" (newest before it, {}: {why})", &id[..12]))
                    .unwrap_or_default();
                plan.warnings.push(format!(
                    "{} {name}: no good snapshot before the cut-off{why}; not restored",
                    origin.name
                ));
                continue;
            };
            let kind = source_kind(&name);
            let target_path = match kind {
                "path" => match path_target(origin, &target, &name, &snap.source_path) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(format!("{} {name}: {e}", origin.name));
                        continue;
                    }
                },
                // Repair applies to host paths; images and volumes are restored whole.
                _ => {
                    if let Err(e) = docker_target(&target, kind) {
                        errors.push(format!("{} {name}: {e}", origin.name));
                        continue;
                    }
                    String::new()
                }
            };
            if snap.quarantined_ms != 0 {
                forced_points.push(snap.id.clone());
            }
            let all: Vec<ChunkId> = chunks.iter().copied().collect();
            let mut wire = ctl.catalog.chunk_lengths(&all)?;
            let record = Record::parse(&job.record)?;
            let tree_ids = record.tree_chunks()?;
            wire += ctl.catalog.chunk_lengths(&tree_ids)?;
            let repair = mode == "repair" && kind == "path";
            if repair && target.id == origin.id && ctl.jobs.connected(&origin.id) {
                // What the machine holds, as best the controller knows: its newest snapshot
                // of the source. Repair hashes the disk anyway; a wrong guess costs time.
                if let Some(newest) = ctl.catalog.latest_snapshot(&origin.id, &name)?
                    && newest.id != snap.id
                    && let Ok(job) = super::restore_job(ctl, &newest)
                    && let Ok(rec) = Record::parse(&job.record)
                    && let Ok(held) = super::complete_chunks(ctl, &rec)
                {
                    let moved: Vec<ChunkId> = chunks.difference(&held).copied().collect();
                    wire = ctl.catalog.chunk_lengths(&moved)?
                        + ctl.catalog.chunk_lengths(&tree_ids)?;
                } else if ctl
                    .catalog
                    .latest_snapshot(&origin.id, &name)?
                    .map(|n| n.id)
                    == Some(snap.id.clone())
                {
                    wire = ctl.catalog.chunk_lengths(&tree_ids)?;
                }
            }
            let rates = model.rates(&target.id, kind);
            measured &= rates.measured;
            let max_rate = if repair || snap.bytes == 0 {
                rates.rate
            } else {
                rates.rate * wire as f64 / snap.bytes as f64
            };
            steps.push(Step {
                fixed_ms: rates.fixed_ms,
                wire_bytes: wire as f64,
                max_rate: max_rate.max(1.0),
            });
            dev.bytes += snap.bytes;
            dev.sources.push(pb::PlanSource {
                source: name.clone(),
                snapshot: snap.id.clone(),
                snapshot_unix_ms: snap.received_ms,
                target: target_path,
                bytes: snap.bytes,
                wire_bytes: wire,
                files: snap.files,
                quarantined: snap.quarantined_ms != 0,
                state: "pending".into(),
                ..Default::default()
            });
        }
        if dev.sources.is_empty() {
            continue;
        }
        dev.estimate_basis = if measured { "measured" } else { "assumed" }.into();
        works.push(Work {
            tier: dev.tier,
            steps,
        });
        plan.devices.push(dev);
    }
    if !errors.is_empty() {
        return Err(ApiError::FailedPrecondition(format!(
            "the plan cannot restore every source where it belongs:\n  {}",
            errors.join("\n  ")
        )));
    }
    if plan.devices.is_empty() {
        return Err(ApiError::FailedPrecondition(format!(
            "nothing to restore: no selected device has a good snapshot before the cut-off{}",
            if plan.warnings.is_empty() {
                String::new()
            } else {
                format!("\n  {}", plan.warnings.join("\n  "))
            }
        )));
    }
    // Plan order: tier, then shortest first.
    let bandwidth = model.plan_bandwidth(plan.bandwidth_bytes_per_sec);
    let order = estimate::order(&works, concurrency as usize, bandwidth);
    let spans = estimate::simulate(&works, &[], &order, concurrency as usize, bandwidth, 0.0);
    let mut devices = Vec::with_capacity(order.len());
    for &i in &order {
        let mut d = plan.devices[i].clone();
        d.est_start_ms = spans[i].start_ms.round() as u64;
        d.est_finish_ms = spans[i].finish_ms.round() as u64;
        devices.push(d);
    }
    plan.devices = devices;
    plan.total_downtime_ms = plan.devices.iter().map(|d| d.est_finish_ms).sum();
    plan.longest_downtime_ms = plan
        .devices
        .iter()
        .map(|d| d.est_finish_ms)
        .max()
        .unwrap_or(0);
    plan.makespan_ms = plan.longest_downtime_ms;
    plan.eta_ms = plan.makespan_ms;
    save(ctl, &plan)?;
    ctl.audit.ok(
        &format!("operator:{operator}"),
        "plan.create",
        &plan.id,
        serde_json::json!({
            "devices": plan.devices.len(),
            "before_unix_ms": plan.before_unix_ms,
            "concurrency": plan.concurrency,
            "bandwidth": plan.bandwidth_bytes_per_sec,
            "mode": plan.mode,
            "forced": plan.forced,
        }),
    );
    if !forced_points.is_empty() {
        ctl.audit.ok(
            &format!("operator:{operator}"),
            "plan.quarantined_forced",
            &plan.id,
            serde_json::json!({ "snapshots": forced_points }),
        );
    }
    Ok(plan)
}

fn save(ctl: &Controller, plan: &pb::PlanInfo) -> Result<(), ApiError> {
    ctl.catalog.put_plan(
        &plan.id,
        plan.created_unix_ms,
        &plan.state,
        &plan.encode_to_vec(),
    )
}

pub fn load(ctl: &Controller, id: &str) -> Result<pb::PlanInfo, ApiError> {
    let mut matches: Vec<String> = ctl
        .catalog
        .plans()?
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(id))
        .collect();
    if id.is_empty() || matches.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no plan {id:?}; `lifeboat recover list` shows the plans"
        )));
    }
    if matches.len() > 1 {
        return Err(ApiError::InvalidArgument(format!(
            "plan id {id:?} is ambiguous"
        )));
    }
    let bytes = ctl
        .catalog
        .plan(&matches.remove(0))?
        .ok_or_else(|| ApiError::NotFound(format!("no plan {id:?}")))?;
    pb::PlanInfo::decode(bytes.as_slice())
        .map_err(|e| ApiError::internal(format!("stored plan {id}: {e}")))
}

/// Starts running a planned plan.
pub fn start(ctl: &Arc<Controller>, operator: &str, id: &str) -> Result<pb::PlanInfo, ApiError> {
    let mut plan = load(ctl, id)?;
    match plan.state.as_str() {
        "planned" => {}
        "running" => return Ok(plan),
        other => {
            return Err(ApiError::FailedPrecondition(format!(
                "plan {} is {other}; make a new plan with `lifeboat recover plan`",
                plan.id
            )));
        }
    }
    plan.state = "running".into();
    plan.started_unix_ms = ctl.clock.now_ms();
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
        if state == "running" {
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
    tokio::spawn(async move {
        let tag = format!("{JOB_TAG}{id}");
        let result = run(&ctl, &id, &tag).await;
        if let Err(e) = result {
            tracing::error!(plan = %id, error = %e, "recovery plan runner stopped");
        }
        ctl.jobs.clear_pacer(&tag);
        ctl.plan_runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    });
}

async fn run(ctl: &Arc<Controller>, id: &str, tag: &str) -> Result<(), ApiError> {
    let mut plan = load(ctl, id)?;
    if plan.bandwidth_bytes_per_sec > 0 {
        ctl.jobs
            .set_pacer(tag, Arc::new(Pacer::new(plan.bandwidth_bytes_per_sec)));
    }
    let mut cache = Cache::default();
    loop {
        let c = ctl.clone();
        let (p, k, done) = tokio::task::spawn_blocking(move || {
            let done = step(&c, &mut plan, &mut cache);
            (plan, cache, done)
        })
        .await
        .map_err(ApiError::from)?;
        (plan, cache) = (p, k);
        let bytes = plan.encode_to_vec();
        if bytes != cache.saved {
            ctl.catalog
                .put_plan(&plan.id, plan.created_unix_ms, &plan.state, &bytes)?;
            cache.saved = bytes;
        }
        if done? {
            return Ok(());
        }
        tokio::time::sleep(TICK).await;
    }
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
    /// The plan as last written.
    saved: Vec<u8>,
}

fn offset(plan: &pb::PlanInfo, now_ms: i64) -> u64 {
    (now_ms - plan.started_unix_ms).max(0) as u64
}

/// One pass of the runner; true when the plan has ended.
fn step(ctl: &Controller, plan: &mut pb::PlanInfo, cache: &mut Cache) -> Result<bool, ApiError> {
    let now = ctl.clock.now_ms();
    let tag = format!("{JOB_TAG}{}", plan.id);
    // Follow what runs.
    for d in 0..plan.devices.len() {
        if plan.devices[d].state != "running" {
            continue;
        }
        follow_device(ctl, plan, d, &tag, now)?;
    }
    // Start what may start.
    let mut running = plan.devices.iter().filter(|d| d.state == "running").count();
    for d in 0..plan.devices.len() {
        if running >= plan.concurrency.max(1) as usize {
            break;
        }
        if plan.devices[d].state != "pending" {
            continue;
        }
        let tier = plan.devices[d].tier;
        let blocked = plan
            .devices
            .iter()
            .any(|o| o.tier < tier && (o.state == "pending" || o.state == "running"));
        if blocked {
            break;
        }
        plan.devices[d].state = "running".into();
        plan.devices[d].actual_start_ms = offset(plan, now);
        running += 1;
        follow_device(ctl, plan, d, &tag, now)?;
    }
    reestimate(ctl, plan, now, cache)?;
    plan.bytes_moved = plan
        .devices
        .iter()
        .flat_map(|d| &d.sources)
        .filter(|s| s.state == "done")
        .map(|s| s.wire_bytes)
        .sum();
    let active = plan
        .devices
        .iter()
        .any(|d| d.state == "pending" || d.state == "running");
    if active {
        return Ok(false);
    }
    let failed: Vec<&str> = plan
        .devices
        .iter()
        .filter(|d| d.state == "failed")
        .map(|d| d.agent.as_str())
        .collect();
    plan.state = if failed.is_empty() {
        "finished"
    } else {
        "failed"
    }
    .into();
    plan.finished_unix_ms = now;
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
            "state": plan.state,
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
fn record_egress(ctl: &Controller, plan: &pb::PlanInfo, now: i64) {
    let moved = plan.bytes_moved;
    let ms = plan.actual_longest_downtime_ms;
    if plan.bandwidth_bytes_per_sec > 0 || moved < 16 << 20 || ms == 0 {
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
    plan: &mut pb::PlanInfo,
    d: usize,
    tag: &str,
    now: i64,
) -> Result<(), ApiError> {
    let started = plan.started_unix_ms;
    let since_start = |t: i64| (t - started).max(0) as u64;
    let mode = plan_mode(&plan.mode).to_string();
    let plan_id = plan.id.clone();
    let dev = &mut plan.devices[d];
    loop {
        let Some(s) = dev
            .sources
            .iter()
            .position(|s| s.state == "running" || s.state == "pending")
        else {
            let failed = dev.sources.iter().any(|s| s.state == "failed");
            dev.state = if failed { "failed" } else { "done" }.into();
            if failed || dev.actual_finish_ms == 0 {
                dev.actual_finish_ms = since_start(now);
            }
            return Ok(());
        };
        if dev.sources[s].state == "pending" {
            let target = ctl.catalog.find_agent(&dev.target_agent)?;
            let src = &mut dev.sources[s];
            src.attempts += 1;
            match submit(ctl, &mode, &target, src, tag) {
                Ok(job) => {
                    src.job_id = job;
                    src.state = "running".into();
                }
                Err(e) => {
                    src.error = e.to_string();
                    if src.attempts >= MAX_ATTEMPTS {
                        src.state = "failed".into();
                        dev.error = format!("{}: {e}", src.source);
                        continue;
                    }
                }
            }
            return Ok(());
        }
        let src = &mut dev.sources[s];
        let Some(mut job) = ctl.catalog.job(&src.job_id)? else {
            src.state = "pending".into();
            return Ok(());
        };
        src.progress = job
            .progress
            .as_deref()
            .and_then(|p| pb::Progress::decode(p).ok());
        match JobState::try_from(job.state).unwrap_or(JobState::Unspecified) {
            JobState::Succeeded => {
                src.state = "done".into();
                src.result = job
                    .result
                    .as_deref()
                    .and_then(|r| pb::RestoreResult::decode(r).ok());
                src.error.clear();
                // The device is back when its last restore ended, not when we noticed.
                dev.actual_finish_ms = since_start(job.finished_ms);
                continue;
            }
            JobState::Failed => {
                src.error = job.error.clone();
                if src.attempts >= MAX_ATTEMPTS {
                    src.state = "failed".into();
                    dev.error = format!("{}: {}", src.source, job.error);
                    tracing::error!(plan = %plan_id, device = %dev.agent, error = %dev.error, "device failed");
                    continue;
                }
                tracing::warn!(plan = %plan_id, device = %dev.agent, error = %job.error, "restore failed; trying again");
                src.state = "pending".into();
                continue;
            }
            // Queued again under the same id once the agent is back: an agent still running
            // it ignores the second delivery, so it never runs twice at once.
            JobState::Interrupted
                if ctl.jobs.connected(&job.agent_id) && now - job.finished_ms > 1000 =>
            {
                ctl.jobs.requeue(&mut job)?;
            }
            // Say why nothing moves: the plan waits for the machine (it may be being
            // rebuilt), and the watch shows it.
            JobState::Queued | JobState::Interrupted if !ctl.jobs.connected(&job.agent_id) => {
                src.error = format!("waiting for agent {} to connect", dev.target_agent);
            }
            _ => {
                if src.error.starts_with("waiting for agent") {
                    src.error.clear();
                }
            }
        }
        return Ok(());
    }
}

fn plan_mode(mode: &str) -> &str {
    if mode.is_empty() { "replace" } else { mode }
}

/// Starts the restore of one source; returns the job id.
fn submit(
    ctl: &Controller,
    mode: &str,
    target: &AgentRow,
    src: &pb::PlanSource,
    tag: &str,
) -> Result<String, ApiError> {
    let snap = ctl.catalog.find_snapshot(&src.snapshot)?;
    let mut job = super::restore_job(ctl, &snap)?;
    // Privileges (device nodes, setuid, capabilities) only onto the device itself.
    job.keep_privileges = target.id == snap.agent_id;
    let kind = source_kind(&snap.source);
    match kind {
        "path" => {
            job.target = src.target.clone();
            job.mode = mode.to_string();
            // The source ends exactly as its restore point.
            job.delete_extra = true;
        }
        "volume" => {
            job.volume = snap.source.trim_start_matches("volume:").to_string();
            job.stop_containers = true;
        }
        _ => {}
    }
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
    let row = ctl
        .jobs
        .submit(target, "restore", detail, tag, |id| pb::Job {
            job_id: id.to_string(),
            kind: Some(pb::job::Kind::Restore(job)),
        })?;
    Ok(row.id)
}

/// Re-estimates the time left from the measured rates and what is left to move.
fn reestimate(
    ctl: &Controller,
    plan: &mut pb::PlanInfo,
    now: i64,
    cache: &mut Cache,
) -> Result<(), ApiError> {
    let ended = plan
        .devices
        .iter()
        .flat_map(|d| &d.sources)
        .filter(|s| s.state == "done" || s.state == "failed")
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
            if s.state == "done" || s.state == "failed" {
                continue;
            }
            let rates = model.rates(&target_id, source_kind(&s.source));
            let left = match (&s.progress, s.state.as_str()) {
                (Some(p), "running") if p.bytes_total > 0 => {
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
        match d.state.as_str() {
            "running" => {
                running.push((i, d.actual_start_ms as f64));
            }
            "pending" => pending.push(i),
            _ => {}
        }
    }
    let spans = estimate::simulate(
        &works,
        &running,
        &pending,
        plan.concurrency as usize,
        model.plan_bandwidth(plan.bandwidth_bytes_per_sec),
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
