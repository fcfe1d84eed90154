//! `lifeboat identity`, `audit` and `approvals`: who may act, what was done, and what
//! waits for a second admin.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use lifeboat_core::identity::IdentityFile;
use lifeboat_proto::pb;

use crate::args::*;
use crate::connect::{Api, audit_entries, identity_path, rpc};
use crate::output::{self, time};

/// `controller` and `identity` are the global flags: the identity commands write them
/// into the files they make.
pub async fn run(
    api: &mut Api,
    cmd: Cmd,
    controller: Option<String>,
    identity: Option<PathBuf>,
) -> Result<i32> {
    match cmd {
        Cmd::Approvals(json) => {
            let list = api
                .list_approvals(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .approvals;
            output::listing(
                json.json,
                &list,
                output::approval_json,
                output::APPROVAL_HEADER,
                output::approval_row,
            );
        }
        Cmd::Approve { id, json } => {
            let a = api
                .approve(pb::NameRef { name: id })
                .await
                .map_err(rpc)?
                .into_inner();
            decided(&a, json.json);
        }
        Cmd::Reject { id, json } => {
            let a = api
                .reject(pb::NameRef { name: id })
                .await
                .map_err(rpc)?
                .into_inner();
            decided(&a, json.json);
        }
        Cmd::Identity { cmd } => {
            identity_cmd(api, cmd, controller.clone(), identity.clone()).await?
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
            filter,
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
            for e in audit_entries(api, since).await? {
                if !filter.keeps(&e) {
                    continue;
                }
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
            filter,
            json,
        } => {
            let mut entries = audit_entries(api, since_ms(since.as_deref())?).await?;
            entries.retain(|e| filter.keeps(e));
            output::listing(
                json.json,
                &entries,
                output::audit_json,
                output::AUDIT_HEADER,
                output::audit_row,
            );
        }
        _ => unreachable!("commands::dispatch sends only access commands here"),
    }
    Ok(0)
}

async fn identity_cmd(
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
        IdentityCmd::Pem { out } => identity_pem(identity, &out)?,
        IdentityCmd::Renew => {
            let (path, not_after_ms) = super::ca::renew_own_identity(api, identity).await?;
            out!(
                "identity renewed under the CA that signs now and written to {} (valid until {}); the previous one is refused from now on",
                path.display(),
                time(not_after_ms)
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

/// `lifeboat identity pem --out DIR`: the identity file's CA, certificate and key as PEM
/// files, for a scraper of `/metrics`. No connection needed.
pub fn identity_pem(identity: Option<PathBuf>, out: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = identity_path(identity);
    let id = IdentityFile::load(&path).with_context(|| {
        format!(
            "no usable operator identity at {} (pass --identity FILE)",
            path.display()
        )
    })?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, body, mode) in [
        ("ca.crt", &id.ca_pem, 0o644),
        ("client.crt", &id.cert_pem, 0o644),
        ("client.key", &id.key_pem, 0o600),
    ] {
        let file = out.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&file)
            .and_then(|mut f| f.write_all(body.as_bytes()).and_then(|()| f.sync_all()))
            .with_context(|| {
                format!(
                    "writing {} (remove it first to write it again)",
                    file.display()
                )
            })?;
    }
    out!(
        "identity {} ({}) written to {}: ca.crt, client.crt, client.key; scrape /metrics with them and server name {}",
        id.name,
        id.role,
        out.display(),
        lifeboat_core::pki::CONTROLLER_NAME
    );
    Ok(())
}

/// What `approve` and `reject` print.
fn decided(a: &pb::ApprovalInfo, json: bool) {
    if json {
        out!("{}", output::approval_json(a));
    } else {
        out!(
            "request {} ({} {} by {}) is {}",
            a.id,
            a.action,
            a.target,
            a.requester,
            a.state
        );
    }
}
