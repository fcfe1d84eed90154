//! `lifeboat drill`, `lifeboat drills` and `lifeboat recover`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lifeboat_proto::pb;
use lifeboat_proto::states::{DrillState, PlanState, StepState};

use crate::args::{DrillCmd, RecoverCmd, time_arg};
use crate::connect::{Api, rpc};
use crate::output::{self, bytes, millis};

pub async fn drill(api: &mut Api, cmd: DrillCmd) -> Result<i32> {
    let DrillCmd::Run {
        agents,
        selector,
        sample,
        probe,
        probe_timeout,
        no_wait,
        json,
    } = cmd;
    let started = api
        .run_drill(pb::DrillRequest {
            agents,
            selector: selector.unwrap_or_default(),
            sample: sample.unwrap_or(0),
            probe: probe.unwrap_or_default(),
            probe_timeout_seconds: probe_timeout.as_secs().min(u32::MAX as u64) as u32,
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .drills;
    let ids: Vec<String> = started.iter().map(|d| d.id.clone()).collect();
    let mut drills = started;
    if !no_wait {
        let bar = ProgressBar::new(drills.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} drills {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        loop {
            drills = api
                .list_drills(pb::ListDrillsRequest {
                    limit: 0,
                    ids: ids.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .drills;
            let done = drills
                .iter()
                .filter(|d| d.state == DrillState::Passed || d.state == DrillState::Failed)
                .count();
            bar.set_position(done as u64);
            if let Some(d) = drills.iter().find(|d| d.state == DrillState::Running) {
                bar.set_message(format!("{} {}", d.agent, d.source));
            }
            if done == drills.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bar.finish_and_clear();
    }
    print_drills(&drills, json.json);
    Ok(drill_exit(&drills))
}

fn drill_exit(drills: &[pb::DrillInfo]) -> i32 {
    let failed: Vec<&pb::DrillInfo> = drills
        .iter()
        .filter(|d| d.state == DrillState::Failed)
        .collect();
    for d in &failed {
        eprintln!(
            "lifeboat: DRILL FAILED: {} {} ({}): {}",
            d.agent, d.source, d.id, d.error
        );
    }
    let over: Vec<&pb::DrillInfo> = drills.iter().filter(|d| d.over_rto).collect();
    for d in &over {
        eprintln!(
            "lifeboat: DRILL OVER RTO: {} {} ({}) restored in {}, its RTO is {}",
            d.agent,
            d.source,
            d.id,
            millis(d.actual_ms),
            millis(d.rto_ms)
        );
    }
    match (failed.is_empty(), over.is_empty()) {
        (false, _) => 2,
        (true, false) => 3,
        (true, true) => 0,
    }
}

fn print_drills(drills: &[pb::DrillInfo], json: bool) {
    output::listing(
        json,
        drills,
        output::drill_json,
        output::DRILL_HEADER,
        output::drill_row,
    );
}

pub async fn drills(api: &mut Api, limit: u32, json: bool) -> Result<i32> {
    let drills = api
        .list_drills(pb::ListDrillsRequest {
            limit,
            ids: Vec::new(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .drills;
    print_drills(&drills, json);
    Ok(drill_exit(&drills))
}

/// Parses `--bandwidth`: `200MiB/s`, `50MB/s`, `1Gbit/s`, or bytes per second.
pub fn parse_rate(s: &str) -> Result<u64> {
    lifeboat_core::units::parse_rate(s).with_context(|| {
        format!("--bandwidth {s:?}: expected e.g. 200MiB/s, 50MB/s or 1Gbit/s (B, KB, MB, GB, KiB, MiB, GiB, Mbit, Gbit per second)")
    })
}

/// Reads a target map: `DEVICE = AGENT` per line (quotes optional, `#` comments).
pub fn read_target_map(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the target map {}", path.display()))?;
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((from, to)) = line.split_once('=') else {
            bail!("{}:{}: expected DEVICE = AGENT", path.display(), n + 1);
        };
        let unquote = |s: &str| s.trim().trim_matches('"').to_string();
        let (from, to) = (unquote(from), unquote(to));
        if from.is_empty() || to.is_empty() {
            bail!("{}:{}: expected DEVICE = AGENT", path.display(), n + 1);
        }
        if map.insert(from.clone(), to).is_some() {
            bail!("{}:{}: {from} is mapped twice", path.display(), n + 1);
        }
    }
    Ok(map)
}

pub async fn recover(api: &mut Api, cmd: RecoverCmd) -> Result<i32> {
    match cmd {
        RecoverCmd::Plan {
            agents,
            selector,
            before,
            concurrency,
            bandwidth,
            target_map,
            mode,
            force,
            from_store,
            without,
            max_severity,
            json,
        } => {
            let plan = api
                .plan_recovery(pb::PlanRequest {
                    agents,
                    selector: selector.unwrap_or_default(),
                    before_unix_ms: time_arg("--before", &before)?,
                    concurrency,
                    bandwidth_bytes_per_sec: match bandwidth {
                        Some(b) => parse_rate(&b)?,
                        None => 0,
                    },
                    target_map: match target_map {
                        Some(p) => read_target_map(&p)?,
                        None => HashMap::new(),
                    },
                    mode,
                    force,
                    from_store: from_store.unwrap_or_default(),
                    without,
                    max_severity: max_severity.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!("{}", output::plan_json(&plan));
            } else {
                out!("{}", output::plan_table(&plan));
                out!("\nrun it with: lifeboat recover run {} --wait", plan.id);
            }
            Ok(0)
        }
        RecoverCmd::Run { plan, wait, json } => {
            let p = api
                .run_plan(pb::NameRef { name: plan })
                .await
                .map_err(rpc)?
                .into_inner();
            if !wait {
                if json.json {
                    out!("{}", output::plan_json(&p));
                } else {
                    out!(
                        "plan {} running; follow it with: lifeboat recover watch {}",
                        p.id,
                        p.id
                    );
                }
                return Ok(0);
            }
            let done = follow(api, &p.id, !json.json).await?;
            report(&done, json.json);
            Ok(plan_exit(&done))
        }
        RecoverCmd::Watch { plan } => {
            let done = follow(api, &plan, true).await?;
            report(&done, false);
            Ok(plan_exit(&done))
        }
        RecoverCmd::Show { plan, json } => {
            let p = api
                .get_plan(pb::NameRef { name: plan })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!("{}", output::plan_json(&p));
            } else {
                out!("{}", output::plan_table(&p));
            }
            Ok(0)
        }
        RecoverCmd::List(json) => {
            let plans = api
                .list_plans(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .plans;
            output::listing(
                json.json,
                &plans,
                output::plan_json,
                &[
                    "ID",
                    "CREATED",
                    "STATE",
                    "BEFORE",
                    "DEVICES",
                    "EST. LONGEST",
                    "ACTUAL LONGEST",
                ],
                |p| {
                    vec![
                        p.id.clone(),
                        output::time(p.created_unix_ms),
                        p.state.clone(),
                        output::time(p.before_unix_ms),
                        p.devices.len().to_string(),
                        millis(p.longest_downtime_ms),
                        if p.finished_unix_ms > 0 {
                            millis(p.actual_longest_downtime_ms)
                        } else {
                            "-".into()
                        },
                    ]
                },
            );
            Ok(0)
        }
    }
}

fn plan_exit(p: &pb::PlanInfo) -> i32 {
    let failed: Vec<&pb::PlanDevice> = p
        .devices
        .iter()
        .filter(|d| d.state == StepState::Failed)
        .collect();
    for d in &failed {
        eprintln!("lifeboat: device {} FAILED: {}", d.agent, d.error);
    }
    if failed.is_empty() { 0 } else { 2 }
}

/// The end-of-plan report: estimated versus actual downtime per device.
fn report(p: &pb::PlanInfo, json: bool) {
    if json {
        out!("{}", output::plan_json(p));
        return;
    }
    out!("{}", output::plan_table(p));
    let moved = p.bytes_moved;
    let verified = p
        .devices
        .iter()
        .flat_map(|d| &d.sources)
        .filter(|s| s.state == StepState::Done)
        .count();
    let sources: usize = p.devices.iter().map(|d| d.sources.len()).sum();
    out!(
        "moved {}; {verified} of {sources} sources restored and verified (every chunk id, file length and content hash, both signatures)",
        bytes(moved)
    );
}

/// Follows a plan until it ends: one bar per running device and the fleet's ETA.
async fn follow(api: &mut Api, id: &str, show: bool) -> Result<pb::PlanInfo> {
    let multi = MultiProgress::new();
    if !show {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let fleet = multi.add(ProgressBar::new(0));
    fleet.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    fleet.enable_steady_tick(Duration::from_millis(200));
    let style =
        ProgressStyle::with_template("  {prefix:20} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let p = api
            .get_plan(pb::NameRef {
                name: id.to_string(),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let done = p
            .devices
            .iter()
            .filter(|d| d.state == StepState::Done)
            .count();
        let failed = p
            .devices
            .iter()
            .filter(|d| d.state == StepState::Failed)
            .count();
        fleet.set_message(format!(
            "plan {}: {done}/{} devices back, {failed} failed, all back in about {}",
            p.id,
            p.devices.len(),
            millis(p.eta_ms)
        ));
        for d in &p.devices {
            if d.state == StepState::Pending {
                continue;
            }
            let bar = bars.entry(d.agent.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(d.bytes));
                b.set_style(style.clone());
                b.set_prefix(d.agent.clone());
                b
            });
            let done_bytes: u64 = d
                .sources
                .iter()
                .map(|s| match StepState::parse(&s.state) {
                    Some(StepState::Done) => s.bytes,
                    Some(StepState::Running) => {
                        s.progress.as_ref().map_or(0, |p| p.bytes_done.min(s.bytes))
                    }
                    _ => 0,
                })
                .sum();
            bar.set_position(done_bytes);
            bar.set_message(match StepState::parse(&d.state) {
                Some(StepState::Done) => format!("back after {}", millis(d.actual_finish_ms)),
                Some(StepState::Failed) => format!("FAILED: {}", d.error),
                _ => match d
                    .sources
                    .iter()
                    .find(|s| s.state == StepState::Running && !s.error.is_empty())
                {
                    Some(s) => s.error.clone(),
                    None => format!("restoring (estimate {})", millis(d.est_finish_ms)),
                },
            });
            if (d.state == StepState::Done || d.state == StepState::Failed) && !bar.is_finished() {
                bar.finish();
            }
        }
        if p.state != PlanState::Running && p.state != PlanState::Planned {
            fleet.finish_and_clear();
            multi.clear().ok();
            return Ok(p);
        }
        if p.state == PlanState::Planned {
            bail!(
                "plan {} has not been started; run it with: lifeboat recover run {}",
                p.id,
                p.id
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
