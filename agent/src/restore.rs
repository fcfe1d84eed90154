//! A restore job: verify the snapshot's signature, fetch and verify its tree, then write
//! it under a directory handle inside one of this agent's restore roots.

mod direct;
mod fetch;
mod image;
mod resume;
pub mod targets;
mod tree;
mod volume;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lifeboat_core::Error as CoreError;
use lifeboat_core::restore::{self, Options};
use lifeboat_core::snapshot::{Record, SourceKind};
use lifeboat_core::tree::{Tree, TreeFile};
use lifeboat_proto::pb;

use crate::backup::Counters;
use crate::client::Client;
use crate::docker::Engine;
use crate::state::AgentState;
use crate::{AgentError, absolute_clean};

pub(crate) use fetch::FETCH_STREAMS;
use fetch::{Prefetched, restore_dir};
pub use resume::Link;
use tree::Restored;

/// Where a restore writes.
enum Destination {
    /// A host path below one of the agent's restore roots (or, for a drill, the agent's
    /// sandbox directory).
    Dir { root: PathBuf, target: PathBuf },
    /// The Engine's image store.
    Image(Arc<Engine>),
    /// A Docker volume (created when missing), swapped in once fully verified.
    Volume {
        engine: Arc<Engine>,
        volume: String,
        stop_containers: bool,
    },
}

/// The restore root that contains `target`, which must lie strictly below it.
pub fn root_for<'a>(roots: &'a [PathBuf], target: &Path) -> Result<&'a Path, AgentError> {
    let clean = absolute_clean(target)
        .map_err(|why| AgentError::Config(format!("restore target {}: {why}", target.display())))?;
    if clean.as_path() != target || !target.is_absolute() {
        return Err(AgentError::Config(format!(
            "restore target {} must be an absolute, normalized path",
            target.display()
        )));
    }
    roots
        .iter()
        .map(|r| r.as_path())
        .find(|r| target.starts_with(r) && target != *r)
        .ok_or_else(|| {
            AgentError::Config(format!(
                "restore target {} is outside this agent's restore roots ({})",
                target.display(),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// What the agent allows a restore job to do beyond writing below its restore roots.
pub struct Permissions<'a> {
    pub roots: &'a [PathBuf],
    /// Drills may run their probe command (`--allow-probes`).
    pub probes: bool,
}

/// Everything one restore job runs with.
pub struct RestoreRun<'a> {
    pub state: Arc<AgentState>,
    /// The session's connection (the tree is fetched on it) and the bulk connections the
    /// chunks stream on (none: the session's).
    pub client: Client,
    pub bulk: Vec<Client>,
    /// The agent's session with the controller (a broken chunk stream waits for it).
    pub link: tokio::sync::watch::Receiver<Link>,
    pub job_id: &'a str,
    pub job: pb::RestoreJob,
    pub allowed: Permissions<'a>,
    pub engine: Option<Arc<Engine>>,
    pub counters: Arc<Counters>,
    /// The destinations of the restores running on this agent.
    pub targets: &'a targets::Targets,
}

/// Runs a restore job: verification, the restore itself, and for a drill the probe and
/// the removal of the sandbox. Times every phase.
pub async fn run_restore(run: RestoreRun<'_>) -> Result<pb::RestoreResult, AgentError> {
    let started = Instant::now();
    let mode = restore::Mode::parse(&run.job.mode)?;
    if !run.job.probe.is_empty() && !run.allowed.probes {
        return Err(AgentError::Config(
            "this agent does not run drill probes; start it with --allow-probes to allow them"
                .into(),
        ));
    }
    if !run.job.sandbox {
        return restore_into(&run, mode, &Sandbox::None, started).await;
    }
    let engine = run.engine.as_deref();
    let sandbox = sandbox_for(&run.state, run.job_id, &run.job, engine).await?;
    let result = restore_into(&run, mode, &sandbox, started).await;
    // The sandbox goes, whatever happened.
    let cleanup = Instant::now();
    sandbox.remove(engine).await;
    result.map(|mut r| {
        r.finish_ms += cleanup.elapsed().as_millis() as u64;
        r
    })
}

/// A drill's scratch place, chosen by the agent (never by the controller).
enum Sandbox {
    None,
    Dir(PathBuf),
    Volume(String),
    /// A temporary tag; the image itself is removed after when the Engine did not hold it.
    ImageTag {
        tag: String,
        remove: Option<String>,
    },
}

async fn sandbox_for(
    state: &AgentState,
    job_id: &str,
    job: &pb::RestoreJob,
    engine: Option<&Engine>,
) -> Result<Sandbox, AgentError> {
    if !job_id.chars().all(|c| c.is_ascii_alphanumeric()) || job_id.is_empty() {
        return Err(AgentError::Config(format!(
            "drill job id {job_id:?} is not a plain name"
        )));
    }
    let record = Record::parse(&job.record)?;
    Ok(match SourceKind::of(&record.source) {
        SourceKind::Path => Sandbox::Dir(state.dir.join("sandbox").join(job_id)),
        SourceKind::Volume => Sandbox::Volume(format!("lifeboat-drill-{job_id}")),
        SourceKind::Image => {
            let id = record
                .image
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_default();
            let held = match engine {
                Some(e) => e.image(&id).await.is_ok(),
                None => true,
            };
            Sandbox::ImageTag {
                tag: format!("lifeboat-drill:{job_id}"),
                remove: (!held).then_some(id),
            }
        }
    })
}

impl Sandbox {
    async fn remove(&self, engine: Option<&Engine>) {
        let res = match (self, engine) {
            (Sandbox::Dir(dir), _) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::Restore(
                        format!("removing {}: {e}", dir.display()),
                    )),
                    _ => Ok(()),
                })
                .await
                .unwrap_or_else(|e| Err(AgentError::Restore(e.to_string())))
            }
            (Sandbox::Volume(v), Some(engine)) => engine.remove_volume(v).await,
            (Sandbox::ImageTag { tag, remove }, Some(engine)) => {
                engine.remove_image(tag, false).await.and(match remove {
                    Some(id) => engine.remove_image(id, true).await,
                    None => Ok(()),
                })
            }
            _ => Ok(()),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "could not remove a drill's sandbox");
        }
    }
}

async fn restore_into(
    run: &RestoreRun<'_>,
    mode: restore::Mode,
    sandbox: &Sandbox,
    started: Instant,
) -> Result<pb::RestoreResult, AgentError> {
    let RestoreRun {
        state,
        client,
        bulk,
        link,
        job_id,
        job,
        allowed,
        engine,
        counters,
        targets,
    } = run;
    let job_id: &str = job_id;
    let roots = allowed.roots;
    let job = job.clone();
    let counters = counters.clone();
    // Both signatures, before a byte is written: the origin agent's over the record, and
    // the controller's countersignature (with the key pinned at our enrollment) over the
    // record, that signature and key, and the receive time.
    let controller_key = hex::decode(&state.info.controller_key).unwrap_or_default();
    if controller_key.len() != 32 {
        return Err(AgentError::Restore(
            "this agent was enrolled without the controller's countersigning key and cannot verify snapshots; enroll it again".into(),
        ));
    }
    let envelope = lifeboat_core::snapshot::Envelope {
        record: job.record.clone(),
        signature: job.signature.clone(),
        public_key: job.origin_public_key.clone(),
        countersignature: job.countersignature.clone(),
        received_unix_ms: job.received_unix_ms,
    };
    envelope
        .verify(&job.origin_public_key, &controller_key)
        .map_err(|e| {
            AgentError::Restore(format!(
                "snapshot {}: {e}; refusing to restore it",
                job.snapshot_id
            ))
        })?;
    if lifeboat_core::snapshot::snapshot_id(&job.record) != job.snapshot_id {
        return Err(AgentError::Restore(format!(
            "snapshot {}: the record does not have that id",
            job.snapshot_id
        )));
    }
    let record = Record::parse(&job.record)?;
    // Where it goes, checked before anything is fetched.
    let kind = SourceKind::of(&record.source);
    if mode == restore::Mode::Repair && kind != SourceKind::Path {
        return Err(AgentError::Config(format!(
            "repair mode is for host paths; a {} snapshot is restored whole",
            record.source_kind
        )));
    }
    let destination = match (kind, sandbox) {
        (SourceKind::Path, Sandbox::Dir(dir)) => {
            let root = dir
                .parent()
                .ok_or_else(|| AgentError::Restore("the sandbox has no parent".into()))?
                .to_owned();
            std::fs::create_dir_all(&root)
                .map_err(|e| AgentError::Restore(format!("creating {}: {e}", root.display())))?;
            Destination::Dir {
                root,
                target: dir.clone(),
            }
        }
        (SourceKind::Path, _) => {
            let target = PathBuf::from(&job.target);
            let root = root_for(roots, &target)?.to_owned();
            Destination::Dir { root, target }
        }
        (kind, _) => {
            let engine = engine.clone().ok_or_else(|| {
                AgentError::Config(format!(
                    "a {kind} snapshot is restored through Docker, and this agent has no Docker Engine"
                ))
            })?;
            if !engine.restore_allowed {
                return Err(AgentError::Config(format!(
                    "this agent does not restore into Docker; start it with --docker-restore to allow {kind} restores"
                )));
            }
            if kind == SourceKind::Image {
                Destination::Image(engine)
            } else {
                let volume = if let Sandbox::Volume(v) = sandbox {
                    v.clone()
                } else if job.volume.is_empty() {
                    record.source.trim_start_matches("volume:").to_string()
                } else {
                    job.volume.clone()
                };
                lifeboat_core::snapshot::validate_source(&format!("volume:{volume}"))?;
                Destination::Volume {
                    engine,
                    volume,
                    stop_containers: job.stop_containers,
                }
            }
        }
    };
    // Held until this function returns, however the restore ends.
    let _claim = match &destination {
        Destination::Dir { target, .. } => {
            Some(targets.claim(targets::Target::Dir(target.clone()), job_id)?)
        }
        Destination::Volume { volume, .. } => {
            Some(targets.claim(targets::Target::Volume(volume.clone()), job_id)?)
        }
        Destination::Image(_) => None,
    };

    counters.set_phase("fetching tree");
    crate::pause_point("restore-before-tree").await;
    // With the store in object storage the agent reads even its tree from there.
    let direct = match job.direct_from_store {
        true => Some(lifeboat_proto::http::client(None).map_err(AgentError::Config)?),
        false => None,
    };
    let file = tree::fetch(
        client,
        direct.as_ref(),
        link.clone(),
        job_id,
        state,
        &record,
    )
    .await?;
    // A directory's or a volume's tree is read from its file as the restore goes; an
    // image's, in its archive's order, is parsed whole to write the archive back.
    let tree = tokio::task::spawn_blocking(move || -> Result<Restored, CoreError> {
        if kind == SourceKind::Image {
            use std::io::{Read, Seek};
            let mut bytes = Vec::new();
            let mut file = file;
            file.seek(std::io::SeekFrom::Start(0))
                .and_then(|_| file.read_to_end(&mut bytes))
                .map_err(|e| CoreError::io("reading the snapshot's tree", e))?;
            return Ok(Restored::Parsed(Box::new(Tree::parse(&bytes)?)));
        }
        Ok(Restored::Walked(Arc::new(TreeFile::open(file)?)))
    })
    .await
    .map_err(|e| AgentError::Restore(format!("reading the snapshot's tree: {e}")))??;
    let (files, bytes) = tree.files();
    counters.files_total.store(files, Ordering::Relaxed);
    counters.bytes_total.store(bytes, Ordering::Relaxed);
    // Repair: what is on disk already is neither fetched nor written.
    let same = Arc::new(match (&destination, mode, &tree) {
        (Destination::Dir { root, target }, restore::Mode::Repair, Restored::Walked(tree)) => {
            counters.set_phase("comparing with what is on disk");
            let (root, target) = (root.clone(), target.clone());
            let (scan_tree, key) = (tree.clone(), state.chunk_key.clone());
            tokio::task::spawn_blocking(move || -> Result<_, AgentError> {
                let fd = restore::open_target(&root, &target)?;
                Ok(restore::repair_scan(&scan_tree, &key, &fd)?)
            })
            .await
            .map_err(|e| AgentError::Restore(format!("repair scan: {e}")))??
        }
        _ => HashSet::new(),
    });
    counters.set_phase("restoring");

    let order = tree.chunk_order(same.clone(), &state.chunk_key)?;
    let clients = if bulk.is_empty() {
        vec![client.clone()]
    } else {
        bulk.clone()
    };
    let source = Prefetched::start(
        clients,
        job_id.to_string(),
        state.chunk_key.clone(),
        order,
        direct,
        link.clone(),
    );
    let fetched = source.fetched.clone();
    let key = state.chunk_key.clone();
    let progress = counters.clone();
    let setup_ms = started.elapsed().as_millis() as u64;
    let data_started = Instant::now();
    let mut opts = Options::for_current_user();
    opts.mode = mode;
    opts.delete_extra = job.delete_extra;
    opts.privileges = job.keep_privileges;
    // The place a probe looks at.
    let (report, restored) = match (destination, tree) {
        (Destination::Dir { root, target }, Restored::Walked(tree)) => {
            let report = restore_dir(
                root,
                target.clone(),
                tree,
                key,
                source,
                progress,
                opts,
                same,
            )
            .await?;
            (report, target.display().to_string())
        }
        (Destination::Image(engine), Restored::Parsed(tree)) => {
            let report = image::restore(&engine, &record, *tree, key, source, counters).await?;
            let mut place = record
                .image
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_default();
            if let Sandbox::ImageTag { tag, .. } = sandbox {
                engine.tag(&place, tag).await?;
                place = tag.clone();
            }
            (report, place)
        }
        (
            Destination::Volume {
                engine,
                volume,
                stop_containers,
            },
            Restored::Walked(tree),
        ) => {
            let report = volume::restore(
                &engine,
                &volume,
                stop_containers,
                job_id,
                tree,
                key,
                source,
                counters,
                opts.privileges,
            )
            .await?;
            let place = engine
                .volume(&volume)
                .await?
                .map(|v| v.mountpoint.display().to_string())
                .unwrap_or_default();
            (report, place)
        }
        _ => {
            return Err(AgentError::Restore(format!(
                "a {kind} snapshot's tree was read for another kind of destination"
            )));
        }
    };
    let data_ms = data_started.elapsed().as_millis() as u64;
    let mut result = pb::RestoreResult {
        files: report.files,
        bytes: report.bytes,
        setup_ms,
        data_ms,
        finish_ms: 0,
        modified: report.modified.clone(),
        missing: report.missing.clone(),
        planted: report.planted.clone(),
        unchanged: report.unchanged,
        bytes_written: report.bytes_written,
        extras_removed: job.delete_extra,
        sandbox: if matches!(sandbox, Sandbox::None) {
            String::new()
        } else {
            restored.clone()
        },
        mode: mode.name().into(),
        bytes_fetched: fetched.load(Ordering::Relaxed),
        skipped: report
            .skipped
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect(),
        ..Default::default()
    };
    for (p, why) in &report.skipped {
        tracing::warn!(path = %p, "not restored: {why}");
    }
    if !report.failed.is_empty() {
        let list: Vec<String> = report
            .failed
            .iter()
            .take(20)
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        return Err(AgentError::Restore(format!(
            "restored {} files, but {} entries failed verification and were not written: {}",
            report.files,
            report.failed.len(),
            list.join("; ")
        )));
    }
    if !job.probe.is_empty() {
        let probe_started = Instant::now();
        let timeout = Duration::from_secs(match job.probe_timeout_seconds {
            0 => 300,
            n => n as u64,
        });
        let (code, output) = probe(&job.probe, &restored, timeout).await?;
        result.probed = true;
        result.probe_exit = code;
        result.probe_output = output.clone();
        result.probe_ms = probe_started.elapsed().as_millis() as u64;
        if code != 0 {
            return Err(AgentError::Restore(format!(
                "probe failed with exit code {code}: {}",
                output.trim()
            )));
        }
    }
    Ok(result)
}

/// Runs a drill's probe: `sh -c CMD`, in the restored directory when there is one, with
/// `LIFEBOAT_RESTORED` naming what was restored (a directory, a volume's mountpoint, or a
/// temporary image tag to run a container from). Returns the exit code (-1: killed or
/// timed out) and the end of its output.
async fn probe(cmd: &str, restored: &str, timeout: Duration) -> Result<(i32, String), AgentError> {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c").arg(cmd).env("LIFEBOAT_RESTORED", restored);
    if Path::new(restored).is_dir() {
        c.current_dir(restored);
    }
    c.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let child = c.output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Ok((
            -1,
            format!("the probe did not finish within {} s", timeout.as_secs()),
        )),
        Ok(Err(e)) => Err(AgentError::Restore(format!(
            "starting the probe {cmd:?}: {e}"
        ))),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            const KEEP: usize = 2000;
            if text.len() > KEEP {
                let mut cut = text.len() - KEEP;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text = text[cut..].to_string();
            }
            Ok((out.status.code().unwrap_or(-1), text))
        }
    }
}
