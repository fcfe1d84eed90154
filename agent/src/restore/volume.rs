//! Restoring a volume snapshot: the tree is restored, and verified, into a staging
//! directory beside the volume's data; only when every file is in place is the staging
//! directory atomically exchanged with the volume's `_data` (`renameat2(RENAME_EXCHANGE)`),
//! and the old contents removed. A failure leaves the volume exactly as it was. Containers
//! that mount the volume are stopped for the exchange (only with `--stop-containers`) and
//! started again after.

use std::path::Path;
use std::sync::Arc;

use lifeboat_core::ChunkKey;
use lifeboat_core::restore::Report;
use lifeboat_core::tree::TreeFile;

use crate::AgentError;
use crate::backup::Counters;
use crate::docker::Engine;

#[allow(clippy::too_many_arguments)]
pub async fn restore(
    engine: &Engine,
    volume: &str,
    stop_containers: bool,
    job_id: &str,
    tree: std::sync::Arc<TreeFile>,
    key: ChunkKey,
    source: super::fetch::Prefetched,
    counters: Arc<Counters>,
    privileges: bool,
) -> Result<Report, AgentError> {
    let vol = match engine.volume(volume).await? {
        Some(v) => v,
        None => {
            tracing::info!(%volume, "creating the volume");
            engine.create_volume(volume).await?
        }
    };
    let running: Vec<_> = vol.users.iter().filter(|u| u.running).cloned().collect();
    if !running.is_empty() && !stop_containers {
        let names: Vec<_> = running.iter().map(|u| u.name.as_str()).collect();
        return Err(AgentError::Config(format!(
            "volume {volume} is used by running container(s) {}; pass --stop-containers to stop them for the restore (they are started again after)",
            names.join(", ")
        )));
    }
    let data = vol.mountpoint.clone();
    let parent = data
        .parent()
        .ok_or_else(|| {
            AgentError::Docker(format!(
                "volume {volume}: odd mountpoint {}",
                data.display()
            ))
        })?
        .to_owned();
    let staging = parent.join(format!("_data.lifeboat-{job_id}"));
    remove_tree(&staging)?; // a previous attempt of this job

    let report = super::fetch::restore_dir(
        parent.clone(),
        staging.clone(),
        tree,
        key,
        source,
        counters.clone(),
        lifeboat_core::restore::Options {
            privileges,
            ..lifeboat_core::restore::Options::for_current_user()
        },
        Default::default(),
    )
    .await;
    let report = match report {
        Ok(r) if r.failed.is_empty() => r,
        Ok(r) => {
            remove_tree(&staging)?;
            return Err(AgentError::Docker(format!(
                "{} entries failed verification (first: {}); volume {volume} was left untouched",
                r.failed.len(),
                r.failed
                    .first()
                    .map(|(p, why)| format!("{p}: {why}"))
                    .unwrap_or_default()
            )));
        }
        Err(e) => {
            remove_tree(&staging)?;
            return Err(AgentError::Docker(format!(
                "{e}; volume {volume} was left untouched"
            )));
        }
    };

    counters.set_phase("swapping the volume's contents");
    let mut stopped = Vec::new();
    for u in &running {
        engine.stop(&u.id).await?;
        tracing::info!(container = %u.name, %volume, "stopped for the restore");
        stopped.push(u);
    }
    let swapped = exchange(&staging, &data);
    // Start what we stopped whatever happened, then report.
    let mut start_errors = Vec::new();
    for u in stopped {
        if let Err(e) = engine.start(&u.id).await {
            start_errors.push(e.to_string());
        }
    }
    swapped?;
    remove_tree(&staging)?; // now the old contents
    if !start_errors.is_empty() {
        return Err(AgentError::Docker(format!(
            "volume {volume} restored, but containers did not start again: {}",
            start_errors.join("; ")
        )));
    }
    Ok(report)
}

/// Atomically swaps two directories, then makes the swap durable.
fn exchange(a: &Path, b: &Path) -> Result<(), AgentError> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| {
        AgentError::Docker(format!(
            "swapping {} with {}: {e}",
            a.display(),
            b.display()
        ))
    })?;
    if let Some(dir) = b.parent() {
        lifeboat_core::durable::sync_dir(dir)?;
    }
    Ok(())
}

fn remove_tree(p: &Path) -> Result<(), AgentError> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::Docker(format!("removing {}: {e}", p.display()))),
    }
}
