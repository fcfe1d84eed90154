//! Snapshots as the controller holds them: reading a snapshot's tree from the store,
//! checking that every chunk it references is indexed, committing a snapshot an agent
//! signed, and the chunks a restore job may read.
//!
//! Everything that asks "is this snapshot whole?" (commit, restore points, GC, scrub,
//! diff, rebuild) comes here; nothing here knows about gRPC.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::{Envelope, Record, SourceKind};
use lifeboat_core::tree::Tree;
use lifeboat_proto::pb::{self, JobState};

use crate::Controller;
use crate::catalog::{AgentRow, CatalogError, JobRow, SnapshotRow};
use crate::checked::TreeChunks;
use crate::error::{ApiError, DomainError, Kind, core_kind};
use crate::jobs::{Grant, Granted};

/// Why a snapshot was not committed, read, deleted or locked.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("tree chunk {0} is not in the store")]
    TreeChunkMissing(ChunkId),
    /// The refusal the agent and the scheduler act on (`pb::Refusal::MissingChunks`).
    #[error(
        "snapshot references {missing} chunks the store does not have (first: {first}): they were reclaimed (a backup paused past the GC lease) or found bad; the backup runs again and uploads them"
    )]
    MissingChunks { missing: usize, first: ChunkId },
    #[error("a snapshot record must name the committing agent")]
    NotTheAgent,
    #[error(
        "the snapshot record is dated {0} s in the future by the controller's clock; fix the agent's clock (NTP) and back up again"
    )]
    FromTheFuture(i64),
    #[error("no job {0}")]
    NoJob(String),
    #[error("snapshots are committed by the agent's own backup job")]
    NotItsJob,
    #[error("job {job} is {state}: snapshots are committed only while their backup job runs")]
    JobNotRunning { job: String, state: String },
    #[error("job {job} did not ask for source {name:?} (it asked for {asked})")]
    SourceNotAsked {
        job: String,
        name: String,
        asked: String,
    },
    #[error(
        "job {job} already committed snapshot {earlier} of {name:?}: one snapshot per source and job"
    )]
    AlreadyCommitted {
        job: String,
        earlier: String,
        name: String,
    },
    #[error("snapshot {id} is locked until {until}: nobody can delete it before then")]
    Locked { id: String, until: String },
    #[error("snapshot {id} is locked until {until}: a lock can be extended, never shortened")]
    NeverShortened { id: String, until: String },
    #[error("{at} is in the past: give a date to lock snapshot {id} until")]
    PastDate { at: String, id: String },
    #[error("reading chunks needs a running restore job of this agent")]
    NoReadGrant,
    #[error(
        "restore job {job} was interrupted (the controller restarted, or lost this agent's session): it goes on once the agent's new session says it still runs it; ask again then"
    )]
    ReadInterrupted { job: String },
    #[error("chunk {0} is not part of the snapshot this restore job reads")]
    OutsideGrant(ChunkId),
    #[error("job {0} is not a restore")]
    NotARestore(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A record or tree that does not parse or verify.
    #[error(transparent)]
    Core(#[from] lifeboat_core::Error),
    /// The store's and retention's errors (not typed by their own domains yet).
    #[error(transparent)]
    Other(#[from] ApiError),
}

impl DomainError for SnapshotError {
    fn kind(&self) -> Kind {
        use SnapshotError as E;
        match self {
            E::MissingChunks { .. } => Kind::MissingChunks,
            E::NotTheAgent
            | E::NotItsJob
            | E::SourceNotAsked { .. }
            | E::AlreadyCommitted { .. }
            | E::NoReadGrant
            | E::OutsideGrant(_)
            | E::NotARestore(_) => Kind::PermissionDenied,
            E::FromTheFuture(_) | E::PastDate { .. } => Kind::InvalidArgument,
            // Worth asking again: the agent's next session resumes the job.
            E::ReadInterrupted { .. } => Kind::Unavailable,
            E::NoJob(_) => Kind::NotFound,
            E::TreeChunkMissing(_)
            | E::JobNotRunning { .. }
            | E::Locked { .. }
            | E::NeverShortened { .. } => Kind::FailedPrecondition,
            E::Catalog(e) => e.kind(),
            E::Core(e) => core_kind(e),
            E::Other(e) => e.kind(),
        }
    }
}

/// Chunk ids per catalog query.
const ID_BATCH: usize = 4096;
/// How far ahead of the controller's clock an agent's own timestamps may be: the skew
/// certificates allow (`pki::CLOCK_SKEW`, an hour), so a clock that can still connect can
/// still back up. Nothing is decided by these times (retention goes by receive time); a
/// record dated further ahead is a broken clock or a lie, and is refused saying which.
const MAX_CLOCK_SKEW_MS: i64 = lifeboat_core::pki::CLOCK_SKEW.as_millis() as i64;

/// Loads and parses a snapshot's tree (every tree chunk verified, then the whole against
/// the record's size and keyed hash: `Record::read_tree`).
pub fn load_tree(ctl: &Controller, record: &Record) -> Result<Tree, SnapshotError> {
    let chunks = record
        .tree_chunks()?
        .into_iter()
        .map(|id| {
            ctl.store.read_chunk(&id).map_err(|e| match e {
                ApiError::NotFound(_) => SnapshotError::TreeChunkMissing(id),
                other => SnapshotError::Other(other),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(record.read_tree(&ctl.chunk_key, chunks)?)
}

/// Chunks a snapshot references that the catalog does not index: never stored, reclaimed,
/// or found bad by scrub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    pub missing: usize,
    pub first: ChunkId,
}

/// Every chunk a snapshot's tree references (its tree chunks excluded), after checking the
/// tree against the record; and, if any of them or of the tree's own chunks is not
/// indexed, how many and which first.
pub fn referenced_chunks(
    ctl: &Controller,
    record: &Record,
) -> Result<(TreeChunks, Option<Incomplete>), SnapshotError> {
    let tree = record.tree_chunks()?;
    let chunks = referenced(ctl, record, &tree)?;
    let all: Vec<ChunkId> = chunks.iter().chain(&tree).copied().collect();
    Ok((chunks, unindexed(ctl, &all)?))
}

/// Every chunk the tree of `record` (made of the chunks `tree`) references, its own chunks
/// excluded: from the tree as read from the store and checked against the record, or as
/// read lately, a tree being known by its own chunk ids (`crate::checked`). Says nothing
/// of whether the chunks are still indexed.
fn referenced(
    ctl: &Controller,
    record: &Record,
    tree: &[ChunkId],
) -> Result<TreeChunks, SnapshotError> {
    if let Some(chunks) = ctl.checked.tree(tree) {
        return Ok(chunks);
    }
    let chunks: TreeChunks = Arc::new(load_tree(ctl, record)?.chunk_ids().copied().collect());
    ctl.checked.put_tree(tree.to_vec(), chunks.clone());
    Ok(chunks)
}

/// How many of `all` the catalog does not index (missing, reclaimed or found bad), and
/// which first; None when every one is.
fn unindexed(ctl: &Controller, all: &[ChunkId]) -> Result<Option<Incomplete>, SnapshotError> {
    let mut incomplete: Option<Incomplete> = None;
    for batch in all.chunks(ID_BATCH) {
        let missing = ctl.catalog.unknown_chunks(batch)?;
        if let Some(first) = missing.first() {
            let i = incomplete.get_or_insert(Incomplete {
                missing: 0,
                first: *first,
            });
            i.missing += missing.len();
        }
    }
    Ok(incomplete)
}

/// Commits a snapshot `agent` signed under its backup job `job_id`: the record must name
/// the agent and the job, must not be dated in the future, and every chunk its tree
/// references must be indexed (a refusal typed `MissingChunks` otherwise, which the agent
/// and the scheduler act on). The checks run on the caller's thread; the listing runs in a
/// group with the commits that arrive meanwhile ([`commit_group`]). Blocking: it may seal
/// the open pack and writes the envelope.
pub fn commit(
    ctl: &Controller,
    agent: &AgentRow,
    job_id: &str,
    raw_record: Vec<u8>,
    signature: Vec<u8>,
) -> Result<SnapshotRow, SnapshotError> {
    let prepared = prepare(ctl, agent, job_id, raw_record, signature)?;
    ctl.commits.join(
        prepared,
        |group| commit_group(ctl, group),
        || {
            Err(ApiError::internal(
                "the commit group this snapshot was in failed (see the controller's log); the backup runs again",
            )
            .into())
        },
    )
}

/// A commit checked and countersigned, waiting for its group.
pub struct Prepared {
    agent: AgentRow,
    job_id: String,
    record: Record,
    env: Envelope,
    row: SnapshotRow,
    /// Every chunk the snapshot needs, its tree's included.
    needed: Vec<ChunkId>,
    /// [`Controller::chunk_sweeps`] before `needed` was found indexed.
    sweeps: u64,
}

/// Everything about a commit that needs no lock: the signature, the record, the job, the
/// tree and its chunks, the lock its policies give it, the countersignature.
fn prepare(
    ctl: &Controller,
    agent: &AgentRow,
    job_id: &str,
    raw_record: Vec<u8>,
    signature: Vec<u8>,
) -> Result<Prepared, SnapshotError> {
    lifeboat_core::sign::verify_record(&agent.signing_key, &raw_record, &signature)?;
    let record = Record::parse(&raw_record)?;
    if record.agent_id != agent.id || record.agent_name != agent.name {
        return Err(SnapshotError::NotTheAgent);
    }
    // The agent's clock decides nothing (retention goes by receive time), but a record
    // that claims to come from the future is a lie or a broken clock: refuse it.
    let now = crate::now_ms();
    let claimed = record.finished_unix_ms.max(record.started_unix_ms);
    if claimed > now + MAX_CLOCK_SKEW_MS {
        ctl.audit.denied(
            &format!("agent:{}", agent.name),
            "/lifeboat.v1.AgentApi/CommitSnapshot",
            "",
            &format!(
                "record dated {} ms ahead of the controller's clock",
                claimed - now
            ),
        );
        return Err(SnapshotError::FromTheFuture((claimed - now) / 1000));
    }
    let job = ctl
        .jobs
        .row(job_id)?
        .ok_or_else(|| SnapshotError::NoJob(job_id.to_string()))?;
    may_commit(ctl, agent, &job, &record)?;
    ctl.store.flush_for(&record.tree_chunks()?)?;
    // Read before the check: a sweep after it shows as a changed count under the lock.
    let sweeps = ctl.chunk_sweeps.load(Ordering::SeqCst);
    let (needed, tree) = match whole(ctl, &record) {
        Ok(whole) => whole,
        Err(_) => {
            // A chunk accepted after the tree (not our agent's order) may still sit in the
            // open pack: seal everything, then check again.
            ctl.store.flush()?;
            whole(ctl, &record).map_err(|e| {
                // Say why the chunks are missing when the store knows: a pack of this
                // backup's could not be written.
                match ctl.store.seal_failure_since(job.started_ms) {
                    Some(failure) => SnapshotError::Other(failure),
                    None => e,
                }
            })?
        }
    };
    // A host path's or a volume's tree must be in walk order, as the restore reads it (an
    // agent never writes one otherwise): one that is not would be listed and never restore.
    if SourceKind::of(&record.source) != SourceKind::Image {
        tree.check_walk_order()?;
    }
    drop(tree);
    let env = Envelope::countersign(
        raw_record,
        signature,
        agent.signing_key.clone(),
        crate::now_ms(),
        &ctl.signer,
    );
    // Its lock is fixed now, from the policies covering its source, and stored with it.
    let mut row = row(&env.id(), &record, env.received_unix_ms);
    row.locked_until_ms =
        crate::retention::policy_lock(ctl, &agent.id, &record.source, row.received_ms)?.0;
    Ok(Prepared {
        agent: agent.clone(),
        job_id: job.id,
        record,
        env,
        row,
        needed,
        sweeps,
    })
}

/// The snapshot is whole: its tree is readable and matches the record, and every chunk it
/// references is indexed. Returns every chunk it needs, its tree's included, and the tree.
fn whole(ctl: &Controller, record: &Record) -> Result<(Vec<ChunkId>, Tree), SnapshotError> {
    let tree = load_tree(ctl, record)?;
    let chunks: HashSet<ChunkId> = tree.chunk_ids().copied().collect();
    let mut all: Vec<ChunkId> = chunks.into_iter().collect();
    all.extend(record.tree_chunks()?);
    match unindexed(ctl, &all)? {
        None => Ok((all, tree)),
        Some(i) => Err(SnapshotError::MissingChunks {
            missing: i.missing,
            first: i.first,
        }),
    }
}

/// Lists a group of prepared commits, with GC's sweep held off: each is checked again
/// where something may have changed since it was prepared (its job, a sweep), then every
/// envelope is written (sharing their syncs) and, once durable, listed in the catalog and
/// named by its job. One result per commit, in order.
pub fn commit_group(
    ctl: &Controller,
    group: Vec<Prepared>,
) -> Vec<Result<SnapshotRow, SnapshotError>> {
    let _commits = ctl.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
    let sweeps = ctl.chunk_sweeps.load(Ordering::SeqCst);
    // (job, source) → the snapshot this group commits for it.
    let mut in_group: HashMap<(String, String), String> = HashMap::new();
    let checked: Vec<Result<Prepared, SnapshotError>> = group
        .into_iter()
        .map(|p| {
            still_committable(ctl, &p, sweeps, &in_group)?;
            // Where the store has Object Lock, every pack it needs is retained as long as
            // its envelope (written next) before the envelope makes it visible.
            ctl.store.retain(None, &p.needed, p.row.locked_until_ms)?;
            in_group.insert(
                (p.job_id.clone(), p.record.source.clone()),
                p.row.id.clone(),
            );
            Ok(p)
        })
        .collect();
    let mut written = {
        let envelopes: Vec<(&Envelope, i64)> = checked
            .iter()
            .flatten()
            .map(|p| (&p.env, p.row.locked_until_ms))
            .collect();
        ctl.store.write_snapshots(&envelopes).into_iter()
    };
    let mut listed: Vec<Result<(SnapshotRow, String), SnapshotError>> = checked
        .into_iter()
        .map(|p| {
            let p = p?;
            let stored = written.next().unwrap_or_else(|| {
                Err(ApiError::internal(
                    "the store did not answer for an envelope",
                ))
            })?;
            let row = SnapshotRow {
                envelope_version: stored.version,
                ..p.row
            };
            Ok((row, p.job_id))
        })
        .collect();
    let stored: Vec<&SnapshotRow> = listed.iter().flatten().map(|(row, _)| row).collect();
    match ctl.catalog.insert_snapshots(&stored) {
        Ok(inherited) => {
            for (row, _) in listed.iter_mut().flatten() {
                if inherited.contains(&row.id) {
                    row.quarantined_ms = row.received_ms;
                    quarantined_on_arrival(ctl, row);
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, snapshots = stored.len(), "cannot list a group of committed snapshots; their envelopes are in the store (rebuild-catalog lists them)");
            let (kind, why) = (crate::error::DomainError::kind(&e), e.to_string());
            for l in listed.iter_mut().filter(|l| l.is_ok()) {
                *l = Err(ApiError::new(
                    kind,
                    format!("listing the snapshot in the catalog failed: {why}"),
                )
                .into());
            }
        }
    }
    listed
        .into_iter()
        .map(|l| {
            let (row, job_id) = l?;
            ctl.jobs.committed(&job_id, &row.id)?;
            Ok(row)
        })
        .collect()
}

/// A snapshot listed under its device's quarantine: said in the log and the audit log, as a
/// quarantine set by hand or by the anomalies worker is.
fn quarantined_on_arrival(ctl: &Controller, row: &SnapshotRow) {
    tracing::warn!(snapshot = %row.id, device = %row.agent_name, source = %row.source,
        "the device is under quarantine: its new snapshot is quarantined too (an admin lifts it: lifeboat snapshots quarantine --clear)");
    ctl.audit.ok(
        "controller:quarantine",
        "snapshot.quarantine",
        &row.agent_name,
        serde_json::json!({"because": "the device is under quarantine", "snapshots": [row.id]}),
    );
}

/// Checks a prepared commit again under the commit lock: its job may have ended or
/// committed this source meanwhile (here or earlier in the same group), and a GC sweep
/// since it was prepared may have reclaimed a chunk it needs. One snapshot per source and
/// run of the job (a job interrupted and queued again is dispatched anew: `started_ms`
/// moves, and the sources it had not committed are backed up again with the rest).
fn still_committable(
    ctl: &Controller,
    p: &Prepared,
    sweeps: u64,
    in_group: &HashMap<(String, String), String>,
) -> Result<(), SnapshotError> {
    if p.sweeps != sweeps {
        whole(ctl, &p.record)?;
    }
    let job = ctl
        .jobs
        .row(&p.job_id)?
        .ok_or_else(|| SnapshotError::NoJob(p.job_id.clone()))?;
    may_commit(ctl, &p.agent, &job, &p.record)?;
    let already = |earlier: &str| {
        refused(
            ctl,
            &p.agent,
            &job.id,
            SnapshotError::AlreadyCommitted {
                job: job.id.clone(),
                earlier: earlier[..12].to_string(),
                name: p.record.source.clone(),
            },
        )
    };
    if let Some(earlier) = in_group.get(&(job.id.clone(), p.record.source.clone())) {
        return Err(already(earlier));
    }
    for id in &job.snapshot_ids {
        let earlier = ctl.catalog.find_snapshot(id)?;
        if earlier.source == p.record.source && earlier.received_ms >= job.started_ms {
            return Err(already(&earlier.id));
        }
    }
    Ok(())
}

/// Whether `agent` may commit `record` under `job`: only inside its own backup job while
/// that job runs, and only for a source the job asked for. Anything else is refused and
/// audited: a compromised agent could otherwise flood a `keep.last` policy with commits on
/// a finished job until its real snapshots were pruned.
fn may_commit(
    ctl: &Controller,
    agent: &AgentRow,
    job: &JobRow,
    record: &Record,
) -> Result<(), SnapshotError> {
    use prost::Message;
    if job.agent_id != agent.id || job.kind != "backup" || record.job_id != job.id {
        return Err(refused(ctl, agent, &job.id, SnapshotError::NotItsJob));
    }
    if job.state != JobState::Running as i32 {
        let state = JobState::try_from(job.state).unwrap_or(JobState::Unspecified);
        return Err(refused(
            ctl,
            agent,
            &job.id,
            SnapshotError::JobNotRunning {
                job: job.id.clone(),
                state: state.as_str_name().to_lowercase(),
            },
        ));
    }
    let asked = match pb::Job::decode(job.job.as_slice()).map(|j| j.kind) {
        Ok(Some(pb::job::Kind::Backup(b))) => b.sources,
        _ => {
            return Err(
                CatalogError::broken(format!("stored job {} is not a backup", job.id)).into(),
            );
        }
    };
    if !asked.contains(&record.source) {
        return Err(refused(
            ctl,
            agent,
            &job.id,
            SnapshotError::SourceNotAsked {
                job: job.id.clone(),
                name: record.source.clone(),
                asked: asked.join(", "),
            },
        ));
    }
    Ok(())
}

/// A commit refused: audited (`snapshot.commit`, denied, with its job), then returned.
fn refused(ctl: &Controller, agent: &AgentRow, job_id: &str, e: SnapshotError) -> SnapshotError {
    ctl.audit.refused(
        &format!("agent:{}", agent.name),
        "snapshot.commit",
        job_id,
        &e.to_string(),
    );
    e
}

/// Deletes snapshot `snap` for `actor` (an admin), unless it is locked: then the attempt
/// is refused with the date it becomes possible, and audited. Blocking.
pub fn delete(ctl: &Controller, snap: &SnapshotRow, actor: &str) -> Result<(), SnapshotError> {
    let now = ctl.clock.now_ms();
    if snap.locked_until_ms > now {
        let e = SnapshotError::Locked {
            id: snap.id[..12].to_string(),
            until: crate::when(snap.locked_until_ms),
        };
        ctl.audit
            .refused(actor, "snapshot.delete", &snap.id, &e.to_string());
        return Err(e);
    }
    ctl.store.delete_snapshot(&snap.id)?;
    ctl.audit.ok(
        actor,
        "snapshot.delete",
        &snap.id,
        serde_json::json!({ "agent": snap.agent_name, "source": snap.source, "received_ms": snap.received_ms }),
    );
    Ok(())
}

/// Extends snapshot `snap`'s lock to `until_ms` for `actor`. A lock is never shortened:
/// an earlier date than the one in force is refused, naming it. Audited. Returns the
/// snapshot as it is now. Blocking.
pub fn extend_lock(
    ctl: &Controller,
    snap: &SnapshotRow,
    until_ms: i64,
    actor: &str,
) -> Result<SnapshotRow, SnapshotError> {
    if until_ms < snap.locked_until_ms {
        let e = SnapshotError::NeverShortened {
            id: snap.id[..12].to_string(),
            until: crate::when(snap.locked_until_ms),
        };
        ctl.audit
            .refused(actor, "snapshot.lock", &snap.id, &e.to_string());
        return Err(e);
    }
    if until_ms <= ctl.clock.now_ms() {
        return Err(SnapshotError::PastDate {
            at: crate::when(until_ms),
            id: snap.id[..12].to_string(),
        });
    }
    // The store first (its packs, then its envelope), so the catalog never promises a
    // lock the store does not keep.
    if ctl.store.object_lock() {
        let env = ctl.store.read_snapshot(&snap.id)?;
        let record = Record::parse(&env.record)?;
        let (chunks, _) = referenced_chunks(ctl, &record)?;
        let mut needed: Vec<ChunkId> = chunks.iter().copied().collect();
        needed.extend(record.tree_chunks()?);
        let _commits = ctl.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        ctl.store
            .retain(Some((&snap.id, &snap.envelope_version)), &needed, until_ms)?;
    }
    let now_until = ctl.catalog.extend_lock(&snap.id, until_ms)?;
    ctl.audit.ok(
        actor,
        "snapshot.lock",
        &snap.id,
        serde_json::json!({ "agent": snap.agent_name, "source": snap.source, "from_ms": snap.locked_until_ms, "until_ms": now_until }),
    );
    Ok(ctl.catalog.find_snapshot(&snap.id)?)
}

/// Whether `job` is a restore job of `agent` that is running now: the only grant to read
/// chunks.
pub fn may_read(job: &JobRow, agent: &AgentRow) -> bool {
    job.agent_id == agent.id && job.kind == "restore" && job.state == JobState::Running as i32
}

/// The restore job `job_id` of `agent` if it grants reading every chunk of `wanted`: it
/// must be a running restore job of that agent, and each chunk part of the snapshot it
/// restores (the grant is computed once per job, then kept with it). A chunk outside the
/// grant is refused and audited as a denial of `rpc`. Blocking (the first read of a job
/// loads its snapshot's tree).
pub fn granted_read(
    ctl: &Controller,
    agent: &AgentRow,
    job_id: &str,
    wanted: &[ChunkId],
    rpc: &str,
) -> Result<JobRow, SnapshotError> {
    let job = ctl
        .jobs
        .row(job_id)?
        .ok_or_else(|| SnapshotError::NoJob(format!("{job_id:?}")))?;
    if !may_read(&job, agent) {
        // A read that reached a restarted controller before the agent's new session
        // did: not refused for good, or the restore would fail on the race.
        if job.agent_id == agent.id
            && job.kind == "restore"
            && job.state == JobState::Interrupted as i32
        {
            return Err(SnapshotError::ReadInterrupted { job: job.id });
        }
        return Err(SnapshotError::NoReadGrant);
    }
    let granted = match ctl.jobs.grant(&job.id) {
        Some(g) => g,
        None => {
            let g = grant(ctl, &job)?;
            ctl.jobs.set_grant(&job.id, g.clone());
            g
        }
    };
    if let Some(outside) = wanted.iter().find(|id| !granted.contains(id)) {
        ctl.audit.denied(
            &format!("agent:{}", agent.name),
            rpc,
            "",
            &format!(
                "chunk {outside} is not part of the snapshot restore job {} grants",
                job.id
            ),
        );
        return Err(SnapshotError::OutsideGrant(*outside));
    }
    Ok(job)
}

/// The chunks restore job `job` may read: the tree chunks and every file chunk of the
/// snapshot it restores.
pub fn grant(ctl: &Controller, job: &JobRow) -> Result<Grant, SnapshotError> {
    use prost::Message;
    let pb_job = pb::Job::decode(job.job.as_slice())
        .map_err(|e| CatalogError::broken(format!("stored job {}: {e}", job.id)))?;
    let Some(pb::job::Kind::Restore(r)) = pb_job.kind else {
        return Err(SnapshotError::NotARestore(job.id.clone()));
    };
    let record = Record::parse(&r.record)?;
    let tree = record.tree_chunks()?;
    Ok(Arc::new(Granted {
        chunks: referenced(ctl, &record, &tree)?,
        tree: tree.into_iter().collect(),
    }))
}

/// The catalog row of a snapshot, from its record; its lock not fixed yet (-1: a commit
/// fixes it, a rebuild from the store has `retention::fix_unset_locks` do it).
pub fn row(id: &str, r: &Record, received_ms: i64) -> SnapshotRow {
    SnapshotRow {
        id: id.to_string(),
        agent_id: r.agent_id.clone(),
        agent_name: r.agent_name.clone(),
        source: r.source.clone(),
        source_path: r.source_path.clone(),
        hostname: r.hostname.clone(),
        received_ms,
        agent_time_ms: r.finished_unix_ms,
        files: r.stats.files,
        dirs: r.stats.dirs,
        bytes: r.stats.bytes,
        bytes_new: r.stats.bytes_new,
        bytes_read: r.stats.bytes_read,
        parent: r.parent.clone().unwrap_or_default(),
        quarantined_ms: 0,
        locked_until_ms: -1,
        envelope_version: String::new(),
    }
}
