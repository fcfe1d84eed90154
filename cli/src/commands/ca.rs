//! `lifeboat ca`: the fleet CA and its rotation, and `lifeboat identity renew`, which every
//! operator runs during one.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lifeboat_core::identity::IdentityFile;
use lifeboat_proto::pb;

use crate::args::CaCmd;
use crate::connect::{Api, identity_path, rpc};
use crate::output::time;

pub async fn run(
    api: &mut Api,
    cmd: CaCmd,
    controller: Option<String>,
    identity: Option<PathBuf>,
) -> Result<i32> {
    match cmd {
        CaCmd::Status(json) => {
            let s = api.ca_status(pb::Empty {}).await.map_err(rpc)?.into_inner();
            show(&s, json.json, None);
        }
        CaCmd::Rotate(json) => {
            api.rotate_ca(pb::RotateCaRequest {
                finish: false,
                force: false,
            })
            .await
            .map_err(rpc)?;
            // This operator moves at once: it is the one who will finish the rotation.
            let (path, _) = renew_own_identity(api, identity.clone()).await?;
            // This connection carries the certificate just replaced.
            let mut api = crate::connect::connect(controller, identity).await?;
            let s = api.ca_status(pb::Empty {}).await.map_err(rpc)?.into_inner();
            show(&s, json.json, Some(&path));
        }
        CaCmd::Finish { force, json } => {
            let s = api
                .rotate_ca(pb::RotateCaRequest {
                    finish: true,
                    force,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            // The identity file then trusts the new CA alone.
            let (path, _) = renew_own_identity(api, identity).await?;
            show(&s, json.json, Some(&path));
        }
    }
    Ok(0)
}

/// Renews the operator identity at `identity` (or the default) for a new key and writes it
/// in place; returns its path and expiry.
pub async fn renew_own_identity(
    api: &mut Api,
    identity: Option<PathBuf>,
) -> Result<(PathBuf, i64)> {
    let path = identity_path(identity);
    let mut id = IdentityFile::load(&path)
        .with_context(|| format!("reading the operator identity {}", path.display()))?;
    let (csr_pem, key_pem) = lifeboat_core::pki::make_csr("lifeboat operator")?;
    let r = api
        .renew_identity(pb::RenewRequest { csr_pem })
        .await
        .map_err(rpc)?
        .into_inner();
    (id.ca_pem, id.cert_pem, id.key_pem) = (r.ca_pem, r.cert_pem, key_pem);
    id.save(&path).with_context(|| {
        format!(
            "the controller renewed this identity but {} could not be written: the previous identity is now refused; ask another admin for a new one (`lifeboat identity create`)",
            path.display()
        )
    })?;
    Ok((path, r.not_after_unix_ms))
}

fn show(s: &pb::CaStatusReply, json: bool, renewed: Option<&std::path::Path>) {
    let pending = |list: &[pb::PendingHolder]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|h| {
                serde_json::json!({
                    "name": h.name,
                    "connected": h.connected,
                    "last_seen": (h.last_seen_unix_ms > 0).then(|| time(h.last_seen_unix_ms)),
                })
            })
            .collect()
    };
    let rotating = s.rotation_started_unix_ms > 0;
    // `ca finish` answers with how the rotation ended: who had moved.
    let finished = !rotating && s.agents + s.operators > 0;
    if json {
        out!(
            "{}",
            serde_json::json!({
                "ca_fingerprint": s.ca_fingerprint,
                "rotating": rotating,
                "finished": finished,
                "next_fingerprint": (!s.next_fingerprint.is_empty()).then_some(&s.next_fingerprint),
                "rotation_started": rotating.then(|| time(s.rotation_started_unix_ms)),
                "agents": s.agents,
                "agents_moved": s.agents_moved,
                "agents_pending": pending(&s.agents_pending),
                "operators": s.operators,
                "operators_moved": s.operators_moved,
                "operators_pending": pending(&s.operators_pending),
                "identity_renewed": renewed.map(|p| p.display().to_string()),
            })
        );
        return;
    }
    out!(
        "CA:        {} (what enrolling machines pin)",
        s.ca_fingerprint
    );
    if let Some(path) = renewed {
        out!(
            "identity:  {} renewed under the CA that signs now",
            path.display()
        );
    }
    if !rotating {
        if finished {
            out!(
                "finished:  {} of {} agents and {} of {} operators moved; the old CA is deleted",
                s.agents_moved,
                s.agents,
                s.operators_moved,
                s.operators
            );
            for h in &s.agents_pending {
                out!(
                    "  cut off: agent {} (enroll it again: `lifeboat token create --device {}`)",
                    h.name,
                    h.name
                );
            }
            for h in &s.operators_pending {
                out!(
                    "  cut off: operator {} (give them a new identity: `lifeboat identity create`)",
                    h.name
                );
            }
        } else {
            out!("rotation:  none under way (`lifeboat ca rotate` starts one)");
        }
        return;
    }
    out!(
        "rotation:  under way since {}; the new CA {} signs every certificate",
        time(s.rotation_started_unix_ms),
        s.next_fingerprint
    );
    out!("agents:    {} of {} moved", s.agents_moved, s.agents);
    out!("operators: {} of {} moved", s.operators_moved, s.operators);
    for h in &s.agents_pending {
        let how = if h.connected {
            "connected, renewing".to_string()
        } else {
            format!("offline, last seen {}", time(h.last_seen_unix_ms))
        };
        out!("  not moved: agent {} ({how})", h.name);
    }
    for h in &s.operators_pending {
        out!(
            "  not moved: operator {} (runs `lifeboat identity renew`)",
            h.name
        );
    }
    if s.agents_moved == s.agents && s.operators_moved == s.operators {
        out!("next: `lifeboat ca finish`: everyone has moved");
    } else {
        out!(
            "next: agents move at their next session; when everyone has, `lifeboat ca finish` (`--force` cuts off whoever has not)"
        );
    }
}
