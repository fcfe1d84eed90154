//! `lifeboat backup`, `restore` and `jobs`, and how a job is followed to its end and its exit code.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use lifeboat_proto::pb::{self, JobState};

use crate::args::*;
use crate::connect::{Api, rpc};
use crate::output::{self, bytes, state_name};

pub async fn run(api: &mut Api, cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Jobs {
            cmd: None,
            limit,
            json,
        } => {
            let jobs = api
                .list_jobs(pb::ListJobsRequest { limit })
                .await
                .map_err(rpc)?
                .into_inner()
                .jobs;
            output::listing(
                json.json,
                &jobs,
                output::job_json,
                output::JOB_HEADER,
                output::job_row,
            );
        }
        Cmd::Jobs {
            cmd: Some(JobsCmd::Show { id, json }),
            ..
        } => {
            let j = api
                .get_job(pb::JobRef { id })
                .await
                .map_err(rpc)?
                .into_inner();
            print_job(&j, json.json);
            return Ok(exit_code(&j));
        }
        Cmd::Jobs {
            cmd: Some(JobsCmd::Watch { id }),
            ..
        } => {
            let j = watch(api, &id).await?;
            print_job(&j, false);
            return Ok(exit_code(&j));
        }
        Cmd::Backup {
            agent,
            sources,
            all_images,
            all_volumes,
            consistency,
            hook_container,
            hook_before,
            hook_after,
            hook_timeout,
            full,
            wait,
            json,
        } => {
            let words = |c: Option<String>| -> Vec<String> {
                c.map(|c| c.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default()
            };
            let hook = hook_container.map(|container| pb::Hook {
                container,
                before: words(hook_before),
                after: words(hook_after),
                timeout_seconds: hook_timeout.as_secs().min(u64::from(u32::MAX)) as u32,
            });
            let j = api
                .start_backup(pb::StartBackupRequest {
                    agent,
                    sources,
                    full_reread: full,
                    all_images,
                    all_volumes,
                    consistency: consistency.unwrap_or_default(),
                    hook,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            return finish_start(api, j, wait, json.json).await;
        }
        Cmd::Restore {
            snapshot,
            agent,
            to,
            volume,
            stop_containers,
            mode,
            delete_extra,
            force,
            keep_privileges,
            report,
            wait,
            json,
        } => {
            let j = api
                .start_restore(pb::StartRestoreRequest {
                    snapshot,
                    agent,
                    target: to.unwrap_or_default(),
                    volume: volume.unwrap_or_default(),
                    stop_containers,
                    mode,
                    delete_extra,
                    force,
                    keep_privileges,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let Some(report) = report else {
                return finish_start(api, j, wait, json.json).await;
            };
            let done = watch(api, &j.id).await?;
            print_job(&done, json.json);
            if let Some(r) = &done.restore {
                let text = serde_json::to_string_pretty(&output::restore_json(r))?;
                std::fs::write(&report, text + "\n")
                    .with_context(|| format!("writing the report to {}", report.display()))?;
                if !json.json {
                    out!("  report: {}", report.display());
                }
            }
            return Ok(exit_code(&done));
        }
        _ => unreachable!("commands::dispatch sends only jobs commands here"),
    }
    Ok(0)
}

/// 0 for a job that succeeded (or is still going), 2 for one that failed or was
/// interrupted, with its reason on stderr; 3, as restic does, for a backup that succeeded
/// but left paths out of its snapshots (they are listed in its warnings).
pub fn exit_code(j: &pb::JobInfo) -> i32 {
    let left_out = j
        .backup
        .as_ref()
        .map_or(0, |b| b.warnings.len() as u64 + u64::from(b.more_warnings));
    match JobState::try_from(j.state) {
        Ok(JobState::Succeeded) if left_out > 0 => {
            eprintln!(
                "lifeboat: job {} succeeded, but its snapshots left out {left_out} path(s): see its warnings (`lifeboat jobs show {}`)",
                j.id, j.id
            );
            3
        }
        Ok(JobState::Failed) | Ok(JobState::Interrupted) => {
            eprintln!(
                "lifeboat: job {} {}: {}",
                j.id,
                state_name(j.state),
                j.error
            );
            2
        }
        _ => 0,
    }
}

async fn finish_start(api: &mut Api, j: pb::JobInfo, wait: bool, json: bool) -> Result<i32> {
    if !wait {
        if json {
            out!("{}", output::job_json(&j));
        } else {
            out!(
                "job {} {} ({}); follow it with: lifeboat jobs watch {}",
                j.id,
                state_name(j.state),
                j.detail,
                j.id
            );
        }
        return Ok(0);
    }
    let done = watch(api, &j.id).await?;
    print_job(&done, json);
    Ok(exit_code(&done))
}

pub fn print_job(j: &pb::JobInfo, json: bool) {
    if json {
        out!("{}", output::job_json(j));
        return;
    }
    let p = j.progress.clone().unwrap_or_default();
    out!(
        "job {} ({} on {}): {}",
        j.id,
        j.kind,
        j.agent_name,
        state_name(j.state)
    );
    out!("  {}", j.detail);
    let moved = if j.kind == "backup" {
        format!(", {} uploaded", bytes(p.bytes_uploaded))
    } else {
        String::new()
    };
    out!(
        "  {} of {} files, {} of {}{moved}",
        p.files_done,
        p.files_total,
        bytes(p.bytes_done),
        bytes(p.bytes_total)
    );
    if !j.snapshot_ids.is_empty() {
        out!("  snapshots: {}", j.snapshot_ids.join(", "));
    }
    if let Some(b) = j.backup.as_ref().filter(|b| !b.warnings.is_empty()) {
        let n = b.warnings.len() + b.more_warnings as usize;
        out!("  left out of the snapshots: {n} (the agent's log has each)");
        for w in &b.warnings {
            out!("    {w}");
        }
        if b.more_warnings > 0 {
            out!("    ... {} more", b.more_warnings);
        }
    }
    if let Some(r) = &j.restore {
        out!(
            "  {} mode: {} fetched, {} written, {} files unchanged; phases: setup {} ms, data {} ms, finish {} ms",
            r.mode,
            bytes(r.bytes_fetched),
            bytes(r.bytes_written),
            r.unchanged,
            r.setup_ms,
            r.data_ms,
            r.finish_ms
        );
        let extras = if r.extras_removed {
            "planted (removed)"
        } else {
            "planted (left in place; --delete-extra removes them)"
        };
        for (what, list) in [
            ("modified", &r.modified),
            ("missing", &r.missing),
            (extras, &r.planted),
            ("skipped", &r.skipped),
        ] {
            if list.is_empty() {
                continue;
            }
            out!("  {what}: {}", list.len());
            for p in list.iter().take(20) {
                out!("    {p}");
            }
            if list.len() > 20 {
                out!("    ... {} more (--report FILE lists all)", list.len() - 20);
            }
        }
    }
    if !j.error.is_empty() {
        out!("  error: {}", j.error);
    }
}

/// Follows a job until it ends, with a progress bar on a terminal.
pub async fn watch(api: &mut Api, id: &str) -> Result<pb::JobInfo> {
    let mut stream = api
        .watch_job(pb::JobRef { id: id.to_string() })
        .await
        .map_err(rpc)?
        .into_inner();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last = None;
    while let Some(info) = stream.message().await.map_err(rpc)? {
        let p = info.progress.clone().unwrap_or_default();
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!(
            "{} {} {}/{} files",
            state_name(info.state),
            p.phase,
            p.files_done,
            p.files_total
        ));
        let terminal = matches!(
            JobState::try_from(info.state),
            Ok(JobState::Succeeded) | Ok(JobState::Failed)
        );
        last = Some(info);
        if terminal {
            break;
        }
    }
    bar.finish_and_clear();
    match last {
        Some(j) => Ok(j),
        None => bail!("the controller ended the watch of job {id} without a state"),
    }
}
