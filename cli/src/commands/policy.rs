//! `lifeboat policy`: apply, list and delete backup policies.

use anyhow::{Context, Result, bail};
use lifeboat_proto::pb;

use crate::args::PolicyCmd;
use crate::connect::{Api, rpc};
use crate::output;

pub async fn run(api: &mut Api, cmd: PolicyCmd) -> Result<i32> {
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
