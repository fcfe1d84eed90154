//! Operator commands over the gRPC API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use lifeboat_core::identity::IdentityFile;
use lifeboat_proto::pb::{self, JobState, operator_api_client::OperatorApiClient};
use lifeboat_proto::transport::{self, ClientTls};
use tonic::transport::Channel;

use crate::output::{self, bytes, state_name, time};
use crate::{Cli, Cmd, JobsCmd, TokenCmd, default_data_dir};

pub type Api = OperatorApiClient<Channel>;

/// Turns a gRPC status into an error carrying only the controller's message.
pub fn rpc(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub fn identity_path(cli_identity: Option<PathBuf>) -> PathBuf {
    cli_identity.unwrap_or_else(|| default_data_dir().join("admin.identity"))
}

/// Connects as the operator named by the identity file.
pub async fn connect(controller: Option<String>, identity: Option<PathBuf>) -> Result<Api> {
    let path = identity_path(identity);
    let id = IdentityFile::load(&path).with_context(|| {
        format!(
            "no usable operator identity at {} (pass --identity FILE or set LIFEBOAT_IDENTITY)",
            path.display()
        )
    })?;
    let url = controller.unwrap_or(id.controller.clone());
    let tls = ClientTls::with_identity(&id.ca_pem, &id.cert_pem, &id.key_pem)?;
    let channel = transport::connect(&url, tls).await?;
    Ok(OperatorApiClient::new(channel))
}

pub async fn dispatch(cli: Cli) -> Result<i32> {
    if let Cmd::Up {
        data_dir,
        listen,
        sources,
        restore_roots,
    } = cli.cmd
    {
        return crate::up::up(
            data_dir.unwrap_or_else(default_data_dir),
            listen,
            sources,
            restore_roots,
        )
        .await
        .map(|()| 0);
    }
    let mut api = connect(cli.controller.clone(), cli.identity.clone()).await?;
    match cli.cmd {
        Cmd::Up { .. } => unreachable!("handled above"),
        Cmd::Status(json) => {
            let s = api.status(pb::Empty {}).await.map_err(rpc)?.into_inner();
            if json.json {
                println!(
                    "{}",
                    serde_json::json!({"version": s.version, "ca_fingerprint": s.ca_fingerprint, "operator": s.operator, "agents": s.agents, "snapshots": s.snapshots, "chunks": s.chunks, "stored_bytes": s.stored_bytes})
                );
            } else {
                println!(
                    "controller {} (you are {})\nCA fingerprint {}\n{} agents, {} snapshots, {} chunks, {} stored",
                    s.version,
                    s.operator,
                    s.ca_fingerprint,
                    s.agents,
                    s.snapshots,
                    s.chunks,
                    bytes(s.stored_bytes)
                );
            }
        }
        Cmd::Token {
            cmd: TokenCmd::Create { labels, ttl, json },
        } => {
            let labels = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .with_context(|| format!("--label {l:?}: expected KEY=VALUE"))
                })
                .collect::<Result<std::collections::HashMap<_, _>>>()?;
            let r = api
                .create_token(pb::CreateTokenRequest {
                    labels,
                    ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let url = cli.controller.clone().unwrap_or_else(|| {
                IdentityFile::load(&identity_path(cli.identity.clone()))
                    .map(|i| i.controller)
                    .unwrap_or_default()
            });
            let line = format!(
                "lifeboat-agent enroll --controller {url} --token {} --ca-fingerprint {} --state-dir /var/lib/lifeboat-agent",
                r.token, r.ca_fingerprint
            );
            if json.json {
                println!(
                    "{}",
                    serde_json::json!({"token": r.token, "expires": time(r.expires_unix_ms), "ca_fingerprint": r.ca_fingerprint, "enroll_command": line})
                );
            } else {
                println!(
                    "token: {}\nexpires: {}\n\nOn the new machine, run:\n  {line}",
                    r.token,
                    time(r.expires_unix_ms)
                );
            }
        }
        Cmd::Agents(json) => {
            let agents = api
                .list_agents(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .agents;
            output::listing(
                json.json,
                &agents,
                output::agent_json,
                output::AGENT_HEADER,
                output::agent_row,
            );
        }
        Cmd::Snapshots {
            agent,
            source,
            json,
        } => {
            let request = pb::ListSnapshotsRequest {
                agent: agent.unwrap_or_default(),
                source: source.unwrap_or_default(),
            };
            let snaps = api
                .list_snapshots(request)
                .await
                .map_err(rpc)?
                .into_inner()
                .snapshots;
            output::listing(
                json.json,
                &snaps,
                output::snapshot_json,
                output::SNAPSHOT_HEADER,
                output::snapshot_row,
            );
        }
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
            let j = watch(&mut api, &id).await?;
            print_job(&j, false);
            return Ok(exit_code(&j));
        }
        Cmd::Backup {
            agent,
            sources,
            full,
            wait,
            json,
        } => {
            let j = api
                .start_backup(pb::StartBackupRequest {
                    agent,
                    sources,
                    full_reread: full,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            return finish_start(&mut api, j, wait, json.json).await;
        }
        Cmd::Restore {
            snapshot,
            agent,
            to,
            wait,
            json,
        } => {
            let j = api
                .start_restore(pb::StartRestoreRequest {
                    snapshot,
                    agent,
                    target: to,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            return finish_start(&mut api, j, wait, json.json).await;
        }
    }
    Ok(0)
}

/// 0 for a job that succeeded (or is still going), 2 for one that failed or was
/// interrupted, with its reason on stderr.
fn exit_code(j: &pb::JobInfo) -> i32 {
    match JobState::try_from(j.state) {
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
            println!("{}", output::job_json(&j));
        } else {
            println!(
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

fn print_job(j: &pb::JobInfo, json: bool) {
    if json {
        println!("{}", output::job_json(j));
        return;
    }
    let p = j.progress.clone().unwrap_or_default();
    println!(
        "job {} ({} on {}): {}",
        j.id,
        j.kind,
        j.agent_name,
        state_name(j.state)
    );
    println!("  {}", j.detail);
    let moved = if j.kind == "backup" {
        format!(", {} uploaded", bytes(p.bytes_uploaded))
    } else {
        String::new()
    };
    println!(
        "  {} of {} files, {} of {}{moved}",
        p.files_done,
        p.files_total,
        bytes(p.bytes_done),
        bytes(p.bytes_total)
    );
    if !j.snapshot_ids.is_empty() {
        println!("  snapshots: {}", j.snapshot_ids.join(", "));
    }
    if !j.error.is_empty() {
        println!("  error: {}", j.error);
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
