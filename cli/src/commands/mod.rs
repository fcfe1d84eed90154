//! Operator commands over the gRPC API, one module per command group; `dispatch` routes
//! a parsed command line to its group.

mod access;
mod ca;
mod fleet;
mod inventory;
mod jobs;
mod policy;
mod recovery;
mod snapshots;
mod up;

use anyhow::Result;

use crate::args::{AnomaliesCmd, Cli, Cmd, IdentityCmd, default_data_dir};
use crate::connect::connect;

pub async fn dispatch(cli: Cli) -> Result<i32> {
    if let Cmd::Up {
        data_dir,
        listen,
        sources,
        restore_roots,
    } = cli.cmd
    {
        return up::up(
            data_dir.unwrap_or_else(default_data_dir),
            listen,
            sources,
            restore_roots,
        )
        .await
        .map(|()| 0);
    }
    if let Cmd::Identity {
        cmd: IdentityCmd::Pem { out },
    } = &cli.cmd
    {
        return access::identity_pem(cli.identity, out).map(|()| 0);
    }
    if let Cmd::Docs(d) = &cli.cmd {
        // `completions` and `man`, from this program's own command line.
        d.run(<Cli as clap::CommandFactory>::command(), "lifeboat")?;
        return Ok(0);
    }
    let mut api = connect(cli.controller.clone(), cli.identity.clone()).await?;
    match cli.cmd {
        Cmd::Dashboard { listen, no_open } => {
            let controller = crate::connect::controller_url(cli.controller, cli.identity)?;
            crate::dashboard::serve(api, controller, listen, !no_open)
                .await
                .map(|()| 0)
        }
        Cmd::Up { .. } | Cmd::Docs(_) => {
            unreachable!("handled above")
        }
        c @ (Cmd::Status(_) | Cmd::Token { .. } | Cmd::Agents { .. } | Cmd::Devices(_)) => {
            fleet::run(&mut api, c, cli.controller, cli.identity).await
        }
        c @ (Cmd::Snapshots { .. }
        | Cmd::Diff { .. }
        | Cmd::Verify { .. }
        | Cmd::Gc { .. }
        | Cmd::Prune { .. }) => snapshots::run(&mut api, c).await,
        c @ (Cmd::Jobs { .. } | Cmd::Backup { .. } | Cmd::Restore { .. }) => {
            jobs::run(&mut api, c).await
        }
        c @ Cmd::Sbom { .. } => inventory::run(&mut api, c).await,
        c @ Cmd::Vulns { .. } => inventory::vulns(&mut api, c).await,
        Cmd::Trust { cmd } => inventory::trust(&mut api, cmd).await,
        Cmd::Anomalies {
            cmd:
                Some(AnomaliesCmd::Dismiss {
                    snapshot,
                    note,
                    json,
                }),
            ..
        } => inventory::dismiss(&mut api, snapshot, note, json.json).await,
        Cmd::Anomalies {
            cmd: None,
            all,
            device,
            json,
        } => inventory::anomalies(&mut api, all, device.unwrap_or_default(), json.json).await,
        Cmd::Policy { cmd } => policy::run(&mut api, cmd).await,
        c @ (Cmd::Identity { .. }
        | Cmd::Audit { .. }
        | Cmd::Approvals(_)
        | Cmd::Approve { .. }
        | Cmd::Reject { .. }) => access::run(&mut api, c, cli.controller, cli.identity).await,
        Cmd::Ca { cmd } => ca::run(&mut api, cmd, cli.controller, cli.identity).await,
        Cmd::Drill { cmd } => recovery::drill(&mut api, cmd).await,
        Cmd::Drills { limit, json } => recovery::drills(&mut api, limit, json.json).await,
        Cmd::Recover { cmd } => recovery::recover(&mut api, cmd).await,
    }
}
