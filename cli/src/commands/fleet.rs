//! `lifeboat status`, `token`, `agents` and `devices`: the fleet and how to join it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lifeboat_core::identity::IdentityFile;
use lifeboat_proto::pb;

use crate::args::*;
use crate::connect::{Api, identity_path, rpc};
use crate::output::{self, bytes, time};

/// `controller` and `identity` are the global flags: the identity commands write them
/// into the files they make.
pub async fn run(
    api: &mut Api,
    cmd: Cmd,
    controller: Option<String>,
    identity: Option<PathBuf>,
) -> Result<i32> {
    match cmd {
        Cmd::Status(json) => {
            let s = api.status(pb::Empty {}).await.map_err(rpc)?.into_inner();
            if json.json {
                let workers: Vec<_> = s
                    .workers
                    .iter()
                    .map(|w| serde_json::json!({"name": w.name, "every_seconds": w.every_seconds, "every_ms": w.every_ms, "runs": w.runs, "failures": w.failures, "last_run_unix_ms": w.last_run_unix_ms, "last_duration_ms": w.last_duration_ms, "last_error": w.last_error, "last_error_unix_ms": w.last_error_unix_ms}))
                    .collect();
                out!(
                    "{}",
                    serde_json::json!({"version": s.version, "ca_fingerprint": s.ca_fingerprint, "operator": s.operator, "role": s.role, "agents": s.agents, "snapshots": s.snapshots, "chunks": s.chunks, "stored_bytes": s.stored_bytes, "store": s.store, "store_encrypted": s.store_encrypted, "store_object_lock": s.store_object_lock, "ca_rotation_started": (s.ca_rotation_started_unix_ms > 0).then(|| time(s.ca_rotation_started_unix_ms)), "recovery_recipient": s.recovery_recipient, "controller_key": hex::encode(&s.controller_signing_key), "workers": workers})
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
                out!(
                    "store {} ({})",
                    s.store,
                    match (s.store_encrypted, s.recovery_recipient.as_str()) {
                        (true, "") => "encrypted".to_string(),
                        (true, r) => format!("encrypted; recovery key {r}"),
                        (false, _) => "NOT encrypted: created before encryption at rest".into(),
                    }
                );
                out!(
                    "controller key {} (keep it beside the recovery key: `lifeboat-controller recover` trusts only states it signed)",
                    hex::encode(&s.controller_signing_key)
                );
                out!(
                    "immutability: {}",
                    if s.store_object_lock {
                        "Object Lock (COMPLIANCE): no credential deletes a locked snapshot's packs or envelope before its lock ends"
                    } else {
                        "none: whoever holds the store's credentials (or root on the controller, for a local store) can delete backups; use an S3 bucket created with Object Lock"
                    }
                );
                if s.ca_rotation_started_unix_ms > 0 {
                    out!(
                        "CA rotation: under way since {}; two CAs are trusted until it finishes (`lifeboat ca status`)",
                        time(s.ca_rotation_started_unix_ms)
                    );
                }
                let rows = s
                    .workers
                    .iter()
                    .map(|w| {
                        vec![
                            w.name.clone(),
                            output::millis(w.every_ms.max(w.every_seconds * 1000)),
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
                    device,
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
                    device: device.clone().unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let url = controller.clone().unwrap_or_else(|| {
                IdentityFile::load(&identity_path(identity.clone()))
                    .map(|i| i.controller)
                    .unwrap_or_default()
            });
            let name = device
                .as_deref()
                .map(|d| format!(" --name {d}"))
                .unwrap_or_default();
            let line = format!(
                "lifeboat-agent enroll --controller {url} --token {} --ca-fingerprint {}{name} --state-dir /var/lib/lifeboat-agent",
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
        _ => unreachable!("commands::dispatch sends only fleet commands here"),
    }
    Ok(0)
}
