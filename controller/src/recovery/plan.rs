//! Recovery plans: what to restore where, in which order, and when each device will be
//! back. A plan is made once (`create`) and stored with an id (`model::Plan`, kept in its
//! wire form); `runner` carries it out.

use std::collections::HashMap;

use lifeboat_core::ChunkId;
use lifeboat_core::restore::Mode;
use lifeboat_core::snapshot::{Record, SourceKind};
use lifeboat_proto::pb;
use lifeboat_proto::states::{Basis, PlanState, StepState};
use prost::Message;

use super::estimate::{self, Model, Step, Work};
use super::model::{Device, Plan, Source};
use super::{Good, last_known_good};
use crate::Controller;
use crate::auth::Role;
use crate::error::ApiError;
use crate::restores::{self, TargetError};

/// Jobs a plan starts carry `plan:<id>` as their policy.
pub const JOB_TAG: &str = "plan:";
/// Tries per restore before its device is reported failed.
pub const MAX_ATTEMPTS: u32 = 3;
const DEFAULT_CONCURRENCY: u32 = 4;

/// What an operator asks a plan of (`lifeboat recover plan`).
#[derive(Debug, Clone, Default)]
pub struct PlanAsk {
    /// Devices by name, or a label selector; neither: every device.
    pub agents: Vec<String>,
    pub selector: String,
    /// The compromise time: restore points are the last good snapshots before it.
    pub before_ms: i64,
    /// Devices restored at once (0: 4).
    pub concurrency: u32,
    /// Controller egress for the plan, bytes per second (0: unlimited).
    pub bandwidth: u64,
    /// Device name -> the agent it is restored onto instead.
    pub target_map: HashMap<String, String>,
    pub mode: Mode,
    /// Consider quarantined snapshots too (admins only; audited).
    pub force: bool,
    /// Only restore points with a complete copy in this copy store.
    pub from_store: Option<String>,
    /// Pass over snapshots carrying these advisories (ids or CVE aliases).
    pub without: Vec<String>,
    /// Pass over snapshots with a finding above this severity.
    pub max_severity: Option<lifeboat_core::inventory::osv::Severity>,
}

/// Makes a plan (not run yet) and stores it.
pub fn create(
    ctl: &Controller,
    operator: &str,
    role: Role,
    req: PlanAsk,
) -> Result<Plan, ApiError> {
    if req.before_ms <= 0 {
        return Err(ApiError::InvalidArgument(
            "--before is required: the compromise time; restore points are the last good snapshots before it".into(),
        ));
    }
    if req.force && role != Role::Admin {
        return Err(ApiError::PermissionDenied(
            "denied: only an admin may plan from quarantined snapshots (--force)".into(),
        ));
    }
    if req.force {
        let target = format!(
            "{} before {}",
            if req.agents.is_empty() {
                format!("selector {:?}", req.selector)
            } else {
                req.agents.join(",")
            },
            crate::when(req.before_ms)
        );
        crate::approvals::gate(ctl, operator, "plan.force", &target)?;
    }
    let from = req.from_store.as_deref();
    if let Some(store) = from
        && !ctl.store.copies().iter().any(|c| c.name == store)
    {
        let names: Vec<&str> = ctl.store.copies().iter().map(|c| c.name.as_str()).collect();
        return Err(ApiError::InvalidArgument(format!(
            "--from {store}: this controller has no such copy store (it has: {}); start it with --copy-store and --copy-name",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    let agents = crate::devices::select(ctl, &req.agents, &req.selector)?;
    let policies = crate::policy::policies(ctl)?;
    let model = Model::load(&ctl.catalog)?;
    let mode = req.mode;
    let concurrency = if req.concurrency == 0 {
        DEFAULT_CONCURRENCY
    } else {
        req.concurrency
    };
    let mut plan = Plan {
        id: crate::jobs::random_id::<6>()?,
        created_ms: ctl.clock.now_ms(),
        created_by: operator.to_string(),
        state: PlanState::Planned,
        before_ms: req.before_ms,
        concurrency,
        bandwidth: req.bandwidth,
        mode,
        forced: req.force,
        devices: Vec::new(),
        total_downtime_ms: 0,
        longest_downtime_ms: 0,
        makespan_ms: 0,
        started_ms: 0,
        finished_ms: 0,
        eta_ms: 0,
        warnings: Vec::new(),
        from_store: from.unwrap_or_default().to_string(),
        actual_total_downtime_ms: 0,
        actual_longest_downtime_ms: 0,
        bytes_moved: 0,
    };
    for from in req.target_map.keys() {
        if !agents.iter().any(|a| &a.name == from) {
            return Err(ApiError::InvalidArgument(format!(
                "the target map names {from:?}, which is not one of the devices in this plan"
            )));
        }
    }
    let criteria = super::Criteria {
        force: req.force,
        from_copy: from.map(str::to_owned),
        without: req.without.clone(),
        max_severity: req.max_severity,
    };
    let ask = DeviceAsk {
        req: &req,
        criteria: &criteria,
        policies: &policies,
        model: &model,
    };
    let mut errors = Vec::new();
    let mut works = Vec::new();
    let mut forced_points = Vec::new();
    // Each device's restore points are read and verified from the store: side by side.
    for planned in side_by_side(&agents, |origin| plan_device(ctl, &ask, origin))? {
        errors.extend(planned.errors);
        plan.warnings.extend(planned.warnings);
        forced_points.extend(planned.forced);
        if let Some((dev, work)) = planned.device {
            works.push(work);
            plan.devices.push(dev);
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::FailedPrecondition(format!(
            "the plan cannot restore {} source(s) where they belong:\n  {}",
            errors.len(),
            first_of(&errors)
        )));
    }
    if plan.devices.is_empty() {
        return Err(ApiError::FailedPrecondition(format!(
            "nothing to restore: no selected device has a good snapshot before the cut-off{}",
            if plan.warnings.is_empty() {
                String::new()
            } else {
                format!("\n  {}", first_of(&plan.warnings))
            }
        )));
    }
    // Plan order: tier, then shortest first.
    let bandwidth = model.plan_bandwidth(plan.bandwidth);
    let at_once = served_at_once(ctl, concurrency, from.is_some());
    let order = estimate::order(&works, at_once, bandwidth);
    let spans = estimate::simulate(&works, &[], &order, at_once, bandwidth, 0.0);
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
            "before_unix_ms": plan.before_ms,
            "concurrency": plan.concurrency,
            "bandwidth": plan.bandwidth,
            "mode": plan.mode.name(),
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

/// What a plan asks of every device.
struct DeviceAsk<'a> {
    req: &'a PlanAsk,
    /// What a restore point must be besides good.
    criteria: &'a super::Criteria,
    policies: &'a [crate::policy::Policy],
    model: &'a Model,
}

/// What planning one device gave: the device and its work (none when nothing of it is
/// restored), what it adds to the plan's refusals and warnings, and the quarantined
/// restore points it uses.
#[derive(Default)]
struct Planned {
    device: Option<(Device, Work)>,
    errors: Vec<String>,
    warnings: Vec<String>,
    forced: Vec<String>,
}

/// Plans device `origin`: for each of its sources, the last good snapshot before the
/// cut-off (read and verified), where it goes, and what moving it costs.
fn plan_device(
    ctl: &Controller,
    ask: &DeviceAsk<'_>,
    origin: &crate::catalog::AgentRow,
) -> Result<Planned, ApiError> {
    let mut out = Planned::default();
    let target = match ask.req.target_map.get(&origin.name) {
        Some(name) => {
            let t = ctl.catalog.find_agent(name)?;
            if t.revoked_ms != 0 {
                out.errors.push(format!(
                    "{}: the target map sends it to {}, which is revoked",
                    origin.name, t.name
                ));
                return Ok(out);
            }
            t
        }
        None => origin.clone(),
    };
    if target.revoked_ms != 0 {
        out.errors.push(format!(
            "{}: the agent is revoked; send the device to a replacement with --target-map",
            origin.name
        ));
        return Ok(out);
    }
    let mut names: Vec<String> = ctl
        .catalog
        .snapshots(Some(&origin.id), None)?
        .into_iter()
        .map(|s| s.source)
        .collect();
    names.sort();
    names.dedup();
    let mut dev = Device {
        agent: origin.name.clone(),
        target_agent: target.name.clone(),
        tier: crate::policy::tier_of(ask.policies, origin),
        sources: Vec::new(),
        bytes: 0,
        est_start_ms: 0,
        est_finish_ms: 0,
        basis: Basis::Assumed,
        state: StepState::Pending,
        actual_start_ms: 0,
        actual_finish_ms: 0,
        error: String::new(),
    };
    let mut steps = Vec::new();
    let mut measured = true;
    for name in names {
        let (good, skipped) =
            last_known_good(ctl, &origin.id, &name, ask.req.before_ms, ask.criteria)?;
        let passed_over: Vec<String> = skipped
            .iter()
            .map(|(id, why)| format!("{}: {why}", &id[..12.min(id.len())]))
            .collect();
        let Some(Good { snap, job, chunks }) = good else {
            // Every snapshot passed over, newest first (the first few).
            let why = if passed_over.is_empty() {
                String::new()
            } else {
                let more = passed_over.len().saturating_sub(5);
                format!(
                    " (passed over, newest first: {}{})",
                    passed_over
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; "),
                    if more > 0 {
                        format!("; and {more} more")
                    } else {
                        String::new()
                    }
                )
            };
            out.warnings.push(format!(
                "{} {name}: no good snapshot before the cut-off{why}; not restored",
                origin.name
            ));
            continue;
        };
        let kind = SourceKind::of(&name);
        let target_path = match kind {
            SourceKind::Path => {
                // Back to its configured path (or, without one, where it was read).
                let path = origin
                    .sources
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .map(|(_, _, p)| p.clone())
                    .unwrap_or_else(|| snap.source_path.clone());
                match restores::check_dir(&target, &path) {
                    Ok(()) => path,
                    Err(e) => {
                        out.errors.push(format!(
                            "{} {name}: {}",
                            origin.name,
                            plan_target_refused(e)
                        ));
                        continue;
                    }
                }
            }
            // Repair applies to host paths; images and volumes are restored whole.
            _ => {
                if let Err(e) = restores::check_docker(&target) {
                    out.errors.push(format!("{} {name}: {e}", origin.name));
                    continue;
                }
                String::new()
            }
        };
        if snap.quarantined_ms != 0 {
            out.forced.push(snap.id.clone());
        }
        let all: Vec<ChunkId> = chunks.iter().copied().collect();
        let mut wire = ctl.catalog.chunk_lengths(&all)?;
        let record = Record::parse(&job.record)?;
        let tree_ids = record.tree_chunks()?;
        wire += ctl.catalog.chunk_lengths(&tree_ids)?;
        let repair = ask.req.mode == Mode::Repair && kind == SourceKind::Path;
        if repair && target.id == origin.id && ctl.jobs.connected(&origin.id) {
            // What the machine holds, as best the controller knows: its newest snapshot
            // of the source. Repair hashes the disk anyway; a wrong guess costs time.
            if let Some(newest) = ctl.catalog.latest_snapshot(&origin.id, &name)?
                && newest.id != snap.id
                && let Ok(job) = restores::verified(ctl, &newest)
                && let Ok(rec) = Record::parse(&job.record)
                && let Ok(held) = super::complete_chunks(ctl, &rec)
            {
                let moved: Vec<ChunkId> = chunks.difference(&held).copied().collect();
                wire = ctl.catalog.chunk_lengths(&moved)? + ctl.catalog.chunk_lengths(&tree_ids)?;
            } else if ctl
                .catalog
                .latest_snapshot(&origin.id, &name)?
                .map(|n| n.id)
                == Some(snap.id.clone())
            {
                wire = ctl.catalog.chunk_lengths(&tree_ids)?;
            }
        }
        let rates = ask.model.rates(&target.id, kind.as_str());
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
        dev.sources.push(Source {
            source: name.clone(),
            snapshot: snap.id.clone(),
            snapshot_ms: snap.received_ms,
            target: target_path,
            bytes: snap.bytes,
            wire_bytes: wire,
            files: snap.files,
            quarantined: snap.quarantined_ms != 0,
            job_id: String::new(),
            state: StepState::Pending,
            attempts: 0,
            error: String::new(),
            waiting: String::new(),
            result: None,
            progress: None,
            chosen_because: ask.criteria.describe(ask.req.before_ms),
            passed_over,
        });
    }
    nested_outer_first(&mut dev, &mut steps, &mut out.warnings);
    if !dev.sources.is_empty() {
        dev.basis = Basis::of(measured);
        let work = Work {
            tier: dev.tier,
            steps,
        };
        out.device = Some((dev, work));
    }
    Ok(out)
}

/// Orders a device's restores so that a directory is restored before any source that lies
/// inside it, and warns of each such pair.
///
/// A plan restores a host path exactly as its restore point (`delete_extra`), one source
/// after another. A source inside another (`/srv/db` beside `/srv`) is also in the outer
/// source's snapshots, as it was when that one was taken; restored after the inner one, the
/// outer restore would put that older copy back over the inner source's chosen restore
/// point (and remove what the older copy lacks), the plan still reporting the inner
/// source restored. Outer first, then inner over it: each source ends as its own restore
/// point. Sorting by path does it, since a path sorts before every path below it.
fn nested_outer_first(dev: &mut Device, steps: &mut Vec<Step>, warnings: &mut Vec<String>) {
    let path = |s: &Source| (s.target.is_empty(), std::path::PathBuf::from(&s.target));
    let mut order: Vec<usize> = (0..dev.sources.len()).collect();
    order.sort_by_key(|&i| path(&dev.sources[i]));
    let mut sources = Vec::with_capacity(order.len());
    let mut ordered = Vec::with_capacity(order.len());
    for &i in &order {
        sources.push(dev.sources[i].clone());
        ordered.push(steps[i].clone());
    }
    for (i, inner) in sources.iter().enumerate() {
        let outer = sources[..i].iter().rev().find(|o| {
            !o.target.is_empty()
                && !inner.target.is_empty()
                && std::path::Path::new(&inner.target).starts_with(&o.target)
        });
        if let Some(outer) = outer {
            warnings.push(format!(
                "{} {}: {} lies inside source {} ({}), whose restore also writes it; {} is \
                 restored first, then {} over it, so each ends as its own restore point",
                dev.agent,
                inner.source,
                inner.target,
                outer.source,
                outer.target,
                outer.source,
                inner.source
            ));
        }
    }
    dev.sources = sources;
    *steps = ordered;
}

/// `f` of every item, on as many threads as the machine has cores (at most 8), in order;
/// the first error wins.
fn side_by_side<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, ApiError> + Sync,
) -> Result<Vec<R>, ApiError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let out = crate::parallel::striped(items, threads, f);
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::internal("a planning thread panicked"))))
        .collect()
}

/// Stores `plan` (its wire form's encoding); returns what was written.
pub(super) fn save(ctl: &Controller, plan: &Plan) -> Result<Vec<u8>, ApiError> {
    let bytes = plan.to_wire().encode_to_vec();
    ctl.catalog
        .put_plan(&plan.id, plan.created_ms, plan.state.as_str(), &bytes)?;
    Ok(bytes)
}

/// The plan whose id starts with `id`.
pub fn load(ctl: &Controller, id: &str) -> Result<Plan, ApiError> {
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
    let wire = pb::PlanInfo::decode(bytes.as_slice())
        .map_err(|e| ApiError::internal(format!("stored plan {id}: {e}")))?;
    Ok(Plan::from_wire(wire)?)
}

/// A plan's restore target refused, worded for `lifeboat recover`.
pub(super) fn plan_target_refused(e: TargetError) -> String {
    match &e {
        TargetError::NoRestoreRoots { agent } | TargetError::OutsideRoots { agent, .. } => {
            let (target, roots) = match &e {
                TargetError::OutsideRoots { target, roots, .. } => {
                    (target.as_str(), roots.join(", "))
                }
                _ => ("the source", "it has none".to_string()),
            };
            format!(
                "{target} is not below a restore root of agent {agent} ({roots}); start that agent with --restore-root covering it, or send the device elsewhere with --target-map"
            )
        }
        _ => e.to_string(),
    }
}

/// The first lines of a list for a message, and how many more there are: a plan of a
/// thousand devices names twenty.
fn first_of(lines: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut out = lines
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    if lines.len() > SHOWN {
        out.push_str(&format!("\n  … and {} more", lines.len() - SHOWN));
    }
    out
}

/// Devices whose restores really run at once under a plan's `concurrency`: through the
/// controller, no more than it serves at once (`admission`); straight from an S3 store,
/// the plan's own limit (never for a plan from a copy store: its restores go through the
/// controller).
pub(crate) fn served_at_once(ctl: &Controller, concurrency: u32, from_copy: bool) -> usize {
    let plan = concurrency.max(1) as usize;
    if ctl.store.direct_reads() && !from_copy {
        plan
    } else {
        plan.min(ctl.restore_admission.limit())
    }
}
