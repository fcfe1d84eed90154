//! Operator commands over the gRPC API.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use lifeboat_core::identity::IdentityFile;
use lifeboat_proto::pb::{self, JobState, operator_api_client::OperatorApiClient};
use lifeboat_proto::transport::{self, ClientTls};
use tonic::transport::Channel;

use crate::output::{self, bytes, state_name, time};
use crate::{
    AgentsCmd, AuditCmd, Cli, Cmd, IdentityCmd, JobsCmd, PolicyCmd, SnapshotsCmd, TokenCmd,
    default_data_dir,
};

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
                let workers: Vec<_> = s
                    .workers
                    .iter()
                    .map(|w| serde_json::json!({"name": w.name, "every_seconds": w.every_seconds, "runs": w.runs, "failures": w.failures, "last_run_unix_ms": w.last_run_unix_ms, "last_duration_ms": w.last_duration_ms, "last_error": w.last_error, "last_error_unix_ms": w.last_error_unix_ms}))
                    .collect();
                out!(
                    "{}",
                    serde_json::json!({"version": s.version, "ca_fingerprint": s.ca_fingerprint, "operator": s.operator, "role": s.role, "agents": s.agents, "snapshots": s.snapshots, "chunks": s.chunks, "stored_bytes": s.stored_bytes, "workers": workers})
                );
            } else {
                out!(
                    "controller {} (you are {}, role {})\nCA fingerprint {}\n{} agents, {} snapshots, {} chunks, {} stored",
                    s.version,
                    s.operator,
                    s.role,
                    s.ca_fingerprint,
                    s.agents,
                    s.snapshots,
                    s.chunks,
                    bytes(s.stored_bytes)
                );
                let rows = s
                    .workers
                    .iter()
                    .map(|w| {
                        vec![
                            w.name.clone(),
                            output::millis(w.every_seconds * 1000),
                            w.runs.to_string(),
                            w.failures.to_string(),
                            match w.last_run_unix_ms {
                                0 => "never".into(),
                                ms => {
                                    format!("{} ({})", time(ms), output::millis(w.last_duration_ms))
                                }
                            },
                            match w.last_error_unix_ms {
                                0 => String::new(),
                                ms => format!("{}: {}", time(ms), w.last_error),
                            },
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    output::table(
                        &[
                            "WORKER",
                            "EVERY",
                            "RUNS",
                            "FAILED",
                            "LAST RUN",
                            "LAST ERROR"
                        ],
                        rows
                    )
                );
            }
        }
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    labels,
                    ttl,
                    uses,
                    json,
                },
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
                    uses,
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
                out!(
                    "{}",
                    serde_json::json!({"token": r.token, "uses": uses, "expires": time(r.expires_unix_ms), "ca_fingerprint": r.ca_fingerprint, "enroll_command": line})
                );
            } else {
                let machines = if uses > 1 {
                    format!(" (good for {uses} machines)")
                } else {
                    " (single use)".to_string()
                };
                out!(
                    "token: {}{machines}\nexpires: {}\nCA fingerprint: {}\n\nOn the new machine, run:\n  {line}",
                    r.token,
                    time(r.expires_unix_ms),
                    r.ca_fingerprint
                );
            }
        }
        Cmd::Agents {
            cmd: None,
            inventory: Some(name),
            json,
        } => {
            let agents = api
                .list_agents(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .agents;
            let a = agents
                .iter()
                .find(|a| a.name == name || a.id == name)
                .with_context(|| {
                    format!("no agent named {name:?}; `lifeboat agents` lists them")
                })?;
            output::inventory(a, json.json);
        }
        Cmd::Agents {
            cmd: Some(AgentsCmd::Revoke { agent }),
            json,
            ..
        } => {
            let a = api
                .revoke_agent(pb::NameRef { name: agent })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!("{}", output::agent_json(&a));
            } else {
                out!(
                    "agent {} revoked at {}: its session is closed and its certificate refused; its snapshots stay restorable",
                    a.name,
                    time(a.revoked_unix_ms)
                );
            }
        }
        Cmd::Agents {
            cmd: None,
            inventory: None,
            json,
        } => {
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
            cmd: Some(SnapshotsCmd::Protect { snapshot }),
            ..
        } => protect(&mut api, snapshot, true).await?,
        Cmd::Snapshots {
            cmd: Some(SnapshotsCmd::Unprotect { snapshot }),
            ..
        } => protect(&mut api, snapshot, false).await?,
        Cmd::Snapshots {
            cmd: Some(SnapshotsCmd::Delete { snapshot }),
            ..
        } => {
            api.delete_snapshot(pb::SnapshotRef {
                id: snapshot.clone(),
            })
            .await
            .map_err(rpc)?;
            out!("snapshot {snapshot} deleted");
        }
        Cmd::Snapshots {
            cmd: None,
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
            return finish_start(&mut api, j, wait, json.json).await;
        }
        Cmd::Policy { cmd } => return policy(&mut api, cmd).await,
        Cmd::Prune { dry_run, json } => {
            let r = api
                .prune(pb::PruneRequest { dry_run })
                .await
                .map_err(rpc)?
                .into_inner();
            let removed = r.items.iter().filter(|i| i.removed).count();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({"dry_run": r.dry_run, "removed": removed, "kept": r.items.len() - removed,
                        "snapshots": r.items.iter().map(|i| serde_json::json!({"id": i.snapshot_id, "agent": i.agent, "source": i.source, "received": time(i.received_unix_ms), "action": if i.removed { "remove" } else { "keep" }, "reasons": i.reasons})).collect::<Vec<_>>()})
                );
            } else {
                let rows = r
                    .items
                    .iter()
                    .map(|i| {
                        vec![
                            i.snapshot_id[..12.min(i.snapshot_id.len())].to_string(),
                            i.agent.clone(),
                            i.source.clone(),
                            time(i.received_unix_ms),
                            if i.removed { "remove" } else { "keep" }.into(),
                            i.reasons.join("; "),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    output::table(
                        &["ID", "AGENT", "SOURCE", "RECEIVED", "ACTION", "WHY"],
                        rows
                    )
                );
                let verb = if r.dry_run { "would remove" } else { "removed" };
                out!("{verb} {removed} of {} snapshots", r.items.len());
            }
        }
        Cmd::Verify {
            sample,
            snapshot,
            json,
        } => {
            let r = api
                .verify(pb::VerifyRequest {
                    sample_percent: sample.unwrap_or(0),
                    snapshot: snapshot.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "packs": r.packs, "chunks": r.chunks, "bytes": r.bytes,
                        "bad": r.bad.iter().map(|b| serde_json::json!({"chunk": b.id, "pack": b.pack, "reason": b.reason})).collect::<Vec<_>>(),
                        "affected_snapshots": r.affected.iter().map(|a| serde_json::json!({"id": a.id, "agent": a.agent, "source": a.source, "reason": a.reason})).collect::<Vec<_>>(),
                        "damaged_packs": r.damaged_packs.iter().map(|d| serde_json::json!({"pack": d.pack, "reason": d.reason})).collect::<Vec<_>>(),
                        "healed": r.healed, "unhealed": r.unhealed, "coverage_percent": r.coverage_percent,
                    })
                );
            } else {
                out!(
                    "read {} chunks ({}) in {} packs: {} bad",
                    r.chunks,
                    bytes(r.bytes),
                    r.packs,
                    r.bad.len()
                );
                for b in r.bad.iter().take(50) {
                    out!("  {} in pack {}: {}", b.id, b.pack, b.reason);
                }
                for a in &r.affected {
                    out!(
                        "  snapshot {} ({} {}) cannot be restored whole: {}",
                        &a.id[..12.min(a.id.len())],
                        a.agent,
                        a.source,
                        a.reason
                    );
                }
                for d in &r.damaged_packs {
                    out!("  pack {}: {}", d.pack, d.reason);
                }
                if r.healed + r.unhealed > 0 {
                    out!(
                        "bad chunks healed by later backups: {}; still missing: {} (back up the affected sources to heal them)",
                        r.healed,
                        r.unhealed
                    );
                }
                out!(
                    "coverage: {:.1}% of stored bytes read back within the scrub period",
                    r.coverage_percent
                );
            }
            if !r.bad.is_empty() || !r.affected.is_empty() || !r.damaged_packs.is_empty() {
                return Ok(2);
            }
        }
        Cmd::Gc { dry_run, json } => {
            let r = api
                .gc(pb::GcRequest {
                    dry_run,
                    ..Default::default()
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({"dry_run": r.dry_run, "referenced": r.referenced, "swept": r.swept, "leased": r.leased,
                        "packs_compacted": r.packs_compacted, "packs_deleted": r.packs_deleted, "bytes_reclaimed": r.bytes_reclaimed})
                );
            } else {
                let verb = if r.dry_run {
                    "would reclaim"
                } else {
                    "reclaimed"
                };
                out!(
                    "{verb} {} unreferenced chunks ({} kept: uploaded within the lease); {} chunks referenced",
                    r.swept,
                    r.leased,
                    r.referenced
                );
                if !r.dry_run {
                    out!(
                        "compacted {} packs, deleted {}, {} freed",
                        r.packs_compacted,
                        r.packs_deleted,
                        bytes(r.bytes_reclaimed)
                    );
                }
            }
        }
        Cmd::Diff { a, b, json } => {
            let d = api
                .diff_snapshots(pb::DiffRequest { a, b })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "entries": d.entries.iter().map(|e| serde_json::json!({
                            "path": e.path, "change": e.change, "what": e.what,
                            "kind_a": e.kind_a, "kind_b": e.kind_b, "size_a": e.size_a, "size_b": e.size_b,
                            "mode_a": format!("{:o}", e.mode_a), "mode_b": format!("{:o}", e.mode_b),
                            "owner_a": e.owner_a, "owner_b": e.owner_b,
                        })).collect::<Vec<_>>(),
                        "layers_added": d.layers_added, "layers_removed": d.layers_removed,
                    })
                );
            } else {
                let rows = d
                    .entries
                    .iter()
                    .map(|e| {
                        let mark = match e.change.as_str() {
                            "added" => "+",
                            "removed" => "-",
                            _ => "M",
                        };
                        vec![
                            mark.to_string(),
                            e.path.clone(),
                            e.what.join(","),
                            format!("{} -> {}", bytes(e.size_a), bytes(e.size_b)),
                            format!("{:o} -> {:o}", e.mode_a, e.mode_b),
                            format!("{} -> {}", e.owner_a, e.owner_b),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    output::table(&["", "PATH", "WHAT", "SIZE", "MODE", "OWNER"], rows)
                );
                for l in &d.layers_removed {
                    out!("- layer {l}");
                }
                for l in &d.layers_added {
                    out!("+ layer {l}");
                }
                out!("{} paths differ", d.entries.len());
            }
        }
        Cmd::Devices(json) => {
            let devices = api
                .list_devices(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .devices;
            output::devices(&devices, json.json);
            if devices.iter().any(|d| d.sources.iter().any(|s| s.overdue)) {
                return Ok(2);
            }
        }
        Cmd::Identity { cmd } => {
            identity(&mut api, cmd, cli.controller.clone(), cli.identity.clone()).await?
        }
        Cmd::Audit {
            cmd: Some(AuditCmd::Verify(json)),
            ..
        } => {
            let v = api
                .verify_audit(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({"ok": v.ok, "entries": v.entries, "broken_entry": (!v.ok).then_some(v.broken_seq), "reason": v.reason, "anchored_entry": v.anchor_seq})
                );
            } else if v.ok {
                out!(
                    "audit chain intact: {} entries, the store's anchor vouches for entry {}",
                    v.entries,
                    v.anchor_seq
                );
            } else {
                out!("audit chain BROKEN at entry {}: {}", v.broken_seq, v.reason);
            }
            return Ok(if v.ok { 0 } else { 2 });
        }
        Cmd::Audit {
            cmd: Some(AuditCmd::Export { out }),
            since,
            ..
        } => {
            let since = since_ms(since.as_deref())?;
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut n = 0u64;
            for e in audit_entries(&mut api, since).await? {
                writeln!(sink, "{}", output::audit_json(&e))?;
                n += 1;
            }
            sink.flush()?;
            if let Some(p) = out {
                eprintln!("{n} audit entries written to {}", p.display());
            }
        }
        Cmd::Audit {
            cmd: None,
            since,
            json,
        } => {
            let entries = audit_entries(&mut api, since_ms(since.as_deref())?).await?;
            output::listing(
                json.json,
                &entries,
                output::audit_json,
                output::AUDIT_HEADER,
                output::audit_row,
            );
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
                return finish_start(&mut api, j, wait, json.json).await;
            };
            let done = watch(&mut api, &j.id).await?;
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
        Cmd::Drill { cmd } => return crate::recovery::drill(&mut api, cmd).await,
        Cmd::Drills { limit, json } => {
            return crate::recovery::drills(&mut api, limit, json.json).await;
        }
        Cmd::Recover { cmd } => return crate::recovery::recover(&mut api, cmd).await,
        Cmd::Snapshots {
            cmd:
                Some(SnapshotsCmd::Quarantine {
                    agent,
                    selector,
                    after,
                    clear,
                    json,
                }),
            ..
        } => {
            let reply = api
                .quarantine(pb::QuarantineRequest {
                    agent: agent.unwrap_or_default(),
                    selector: selector.unwrap_or_default(),
                    after_unix_ms: time_arg("--after", &after)?,
                    clear,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                output::listing(
                    true,
                    &reply.snapshots,
                    output::snapshot_json,
                    output::SNAPSHOT_HEADER,
                    output::snapshot_row,
                );
            } else {
                out!(
                    "{} snapshots {}",
                    reply.snapshots.len(),
                    if clear {
                        "released from quarantine"
                    } else {
                        "quarantined"
                    }
                );
                if !reply.snapshots.is_empty() {
                    out!(
                        "{}",
                        output::table(
                            output::SNAPSHOT_HEADER,
                            reply.snapshots.iter().map(output::snapshot_row).collect()
                        )
                    );
                }
            }
        }
    }
    Ok(0)
}

/// `snapshots protect|unprotect`.
async fn protect(api: &mut Api, snapshot: String, protect: bool) -> Result<()> {
    api.protect_snapshot(pb::ProtectRequest {
        snapshot: snapshot.clone(),
        protect,
    })
    .await
    .map_err(rpc)?;
    if protect {
        out!("snapshot {snapshot} is protected: retention never removes it");
    } else {
        out!("snapshot {snapshot} is no longer protected");
    }
    Ok(())
}

async fn policy(api: &mut Api, cmd: PolicyCmd) -> Result<i32> {
    match cmd {
        PolicyCmd::Apply {
            file,
            dry_run,
            json,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let r = api
                .apply_policies(pb::ApplyPoliciesRequest {
                    file_name: file.display().to_string(),
                    text,
                    dry_run,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if !r.errors.is_empty() {
                for e in &r.errors {
                    eprintln!("{e}");
                }
                bail!(
                    "{} has {} error(s); nothing was applied",
                    file.display(),
                    r.errors.len()
                );
            }
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({"dry_run": dry_run, "changes": r.changes.iter().map(|c| serde_json::json!({"name": c.name, "change": c.change})).collect::<Vec<_>>()})
                );
            } else {
                for c in &r.changes {
                    let verb = match (dry_run, c.change.as_str()) {
                        (true, "created") => "would be created",
                        (true, "changed") => "would change",
                        (_, other) => other,
                    };
                    out!("policy {} {verb}", c.name);
                }
            }
        }
        PolicyCmd::List(json) => {
            let list = api
                .list_policies(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .policies;
            output::listing(
                json.json,
                &list,
                output::policy_json,
                output::POLICY_HEADER,
                output::policy_row,
            );
        }
        PolicyCmd::Show { name, json } => {
            let list = api
                .list_policies(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .policies;
            let p = list.iter().find(|p| p.name == name).with_context(|| {
                format!("no policy {name:?}; `lifeboat policy list` shows them")
            })?;
            let v = output::policy_json(p);
            if json.json {
                out!("{v}");
            } else {
                out!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        PolicyCmd::Delete { name } => {
            api.delete_policy(pb::NameRef { name: name.clone() })
                .await
                .map_err(rpc)?;
            out!("policy {name} deleted");
        }
    }
    Ok(0)
}

/// A point in time given as RFC 3339 or as an age (`6h` ago), in Unix milliseconds.
pub fn time_arg(flag: &str, s: &str) -> Result<i64> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).with_context(|| {
                format!("{flag} {s:?}: expected a time (2026-11-29T08:00:00Z) or an age (6h)")
            })?;
            std::time::SystemTime::now() - age
        }
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// Parses `--since`: an RFC 3339 time or an age such as `24h`.
fn since_ms(since: Option<&str>) -> Result<i64> {
    let Some(s) = since else { return Ok(0) };
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).with_context(|| {
                format!("--since {s:?}: expected a time (2026-11-29T08:00:00Z) or an age (24h)")
            })?;
            std::time::SystemTime::now() - age
        }
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// Every audit entry from `since_ms` on, page by page.
async fn audit_entries(api: &mut Api, since_ms: i64) -> Result<Vec<pb::AuditEntry>> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .list_audit(pb::ListAuditRequest {
                since_unix_ms: since_ms,
                after_seq: after,
                limit: 5000,
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .entries;
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    Ok(all)
}

async fn identity(
    api: &mut Api,
    cmd: IdentityCmd,
    controller: Option<String>,
    identity: Option<PathBuf>,
) -> Result<()> {
    match cmd {
        IdentityCmd::Create {
            name,
            role,
            out,
            valid_for,
        } => {
            if out.exists() {
                bail!("{} exists; choose another --out", out.display());
            }
            let (csr_pem, key_pem) = lifeboat_core::pki::make_csr("lifeboat operator")?;
            let r = api
                .create_identity(pb::CreateIdentityRequest {
                    name: name.clone(),
                    role: role.clone(),
                    csr_pem,
                    ttl_seconds: valid_for.as_secs(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let controller = controller.unwrap_or_else(|| {
                IdentityFile::load(&identity_path(identity))
                    .map(|i| i.controller)
                    .unwrap_or_default()
            });
            IdentityFile {
                version: 1,
                name: name.clone(),
                role: role.clone(),
                controller,
                ca_pem: r.ca_pem,
                cert_pem: r.cert_pem,
                key_pem,
            }
            .save(&out)?;
            out!(
                "identity {name} ({role}) written to {} (valid until {}); use it with --identity {} or LIFEBOAT_IDENTITY",
                out.display(),
                time(r.not_after_unix_ms),
                out.display()
            );
        }
        IdentityCmd::List(json) => {
            let ids = api
                .list_identities(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .identities;
            output::listing(
                json.json,
                &ids,
                output::identity_json,
                output::IDENTITY_HEADER,
                output::identity_row,
            );
        }
        IdentityCmd::Revoke { name } => {
            let i = api
                .revoke_identity(pb::NameRef { name })
                .await
                .map_err(rpc)?
                .into_inner();
            out!(
                "identity {} ({}) revoked at {}",
                i.name,
                i.role,
                time(i.revoked_unix_ms)
            );
        }
    }
    Ok(())
}

/// 0 for a job that succeeded (or is still going), 2 for one that failed or was
/// interrupted, with its reason on stderr.
pub fn exit_code(j: &pb::JobInfo) -> i32 {
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
