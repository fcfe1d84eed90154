//! Snapshots as the controller holds them: reading a snapshot's tree from the store,
//! checking that every chunk it references is indexed, committing a snapshot an agent
//! signed, and the chunks a restore job may read.
//!
//! Everything that asks "is this snapshot whole?" (commit, restore points, GC, scrub,
//! diff, rebuild) comes here; nothing here knows about gRPC.

use std::collections::HashSet;
use std::sync::Arc;

use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::{Envelope, Record};
use lifeboat_core::tree::Tree;
use lifeboat_proto::pb::{self, JobState};

use crate::Controller;
use crate::catalog::{AgentRow, JobRow, SnapshotRow};
use crate::error::ApiError;
use crate::jobs::Grant;

/// Chunk ids per catalog query.
const ID_BATCH: usize = 4096;
/// How far ahead of the controller's clock an agent's own timestamps may be: the skew
/// certificates allow (`pki::CLOCK_SKEW`, an hour), so a clock that can still connect can
/// still back up. Nothing is decided by these times (retention goes by receive time); a
/// record dated further ahead is a broken clock or a lie, and is refused saying which.
const MAX_CLOCK_SKEW_MS: i64 = lifeboat_core::pki::CLOCK_SKEW.as_millis() as i64;

/// Loads and parses a snapshot's tree (every tree chunk verified, then the whole against
/// the record's size and keyed hash: `Record::read_tree`).
pub fn load_tree(ctl: &Controller, record: &Record) -> Result<Tree, ApiError> {
    let chunks = record
        .tree_chunks()?
        .into_iter()
        .map(|id| {
            ctl.store.read_chunk(&id).map_err(|e| match e {
                ApiError::NotFound(_) => {
                    ApiError::FailedPrecondition(format!("tree chunk {id} is not in the store"))
                }
                other => other,
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
/// tree against the record; and, if any of them is not indexed, how many and which first.
pub fn referenced_chunks(
    ctl: &Controller,
    record: &Record,
) -> Result<(HashSet<ChunkId>, Option<Incomplete>), ApiError> {
    let tree = load_tree(ctl, record)?;
    let chunks: HashSet<ChunkId> = tree.chunk_ids().copied().collect();
    let all: Vec<ChunkId> = chunks.iter().copied().collect();
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
    Ok((chunks, incomplete))
}

/// Commits a snapshot `agent` signed under its backup job `job_id`: the record must name
/// the agent and the job, must not be dated in the future, and every chunk its tree
/// references must be indexed (a refusal typed `MissingChunks` otherwise, which the agent
/// and the scheduler act on). Blocking: it may seal the open pack and writes the envelope.
pub fn commit(
    ctl: &Controller,
    agent: &AgentRow,
    job_id: &str,
    raw_record: Vec<u8>,
    signature: Vec<u8>,
) -> Result<SnapshotRow, ApiError> {
    lifeboat_core::sign::verify_record(&agent.signing_key, &raw_record, &signature)?;
    let record = Record::parse(&raw_record)?;
    if record.agent_id != agent.id || record.agent_name != agent.name {
        return Err(ApiError::PermissionDenied(
            "a snapshot record must name the committing agent".into(),
        ));
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
        return Err(ApiError::InvalidArgument(format!(
            "the snapshot record is dated {} s in the future by the controller's clock; fix the agent's clock (NTP) and back up again",
            (claimed - now) / 1000
        )));
    }
    let job = ctl
        .catalog
        .job(job_id)?
        .ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))?;
    may_commit(ctl, agent, &job, &record)?;
    // Whole: the tree is readable and matches the record, every chunk it references is
    // indexed. Returns every chunk it needs, its tree's included.
    let whole = |ctl: &Controller| -> Result<Vec<ChunkId>, ApiError> {
        match referenced_chunks(ctl, &record)? {
            (chunks, None) => {
                let mut all: Vec<ChunkId> = chunks.into_iter().collect();
                all.extend(record.tree_chunks()?);
                Ok(all)
            }
            (_, Some(i)) => Err(ApiError::MissingChunks(format!(
                "snapshot references {} chunks the store does not have (first: {}): they were reclaimed (a backup paused past the GC lease) or found bad; the backup runs again and uploads them",
                i.missing, i.first
            ))),
        }
    };
    ctl.store.flush_for(&record.tree_chunks()?)?;
    // With GC's sweep held off, until the snapshot is listed.
    let mut commits = ctl.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
    let needed = match whole(ctl) {
        Ok(needed) => needed,
        Err(_) => {
            // A chunk accepted after the tree (not our agent's order) may still sit in the
            // open pack: seal everything, then check again.
            drop(commits);
            ctl.store.flush()?;
            commits = ctl.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
            match whole(ctl) {
                Ok(needed) => needed,
                // Say why the chunks are missing when the store knows: a pack of this
                // backup's could not be written.
                Err(e) => return Err(ctl.store.seal_failure_since(job.started_ms).unwrap_or(e)),
            }
        }
    };
    // Again under the lock, so that two commits of one source cannot both pass, and a job
    // that ended meanwhile takes none. One snapshot per source and run of the job (a job
    // interrupted and queued again is dispatched anew: `started_ms` moves, and the sources
    // it had not committed are backed up again with the rest).
    let job = ctl
        .catalog
        .job(job_id)?
        .ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))?;
    may_commit(ctl, agent, &job, &record)?;
    for id in &job.snapshot_ids {
        let earlier = ctl.catalog.find_snapshot(id)?;
        if earlier.source == record.source && earlier.received_ms >= job.started_ms {
            return Err(refused(
                ctl,
                agent,
                &job.id,
                ApiError::PermissionDenied(format!(
                    "job {} already committed snapshot {} of {:?}: one snapshot per source and job",
                    job.id,
                    &earlier.id[..12],
                    record.source
                )),
            ));
        }
    }
    let _commits = commits;
    let env = Envelope::countersign(
        raw_record,
        signature,
        agent.signing_key.clone(),
        crate::now_ms(),
        &ctl.signer,
    );
    // Its lock is fixed now, from the policies covering its source, and stored with it.
    // Where the store has Object Lock, every pack it needs is retained that long before
    // its envelope (retained as long) makes it visible.
    let mut row = row(&env.id(), &record, env.received_unix_ms);
    row.locked_until_ms =
        crate::retention::policy_lock(ctl, &agent.id, &record.source, row.received_ms)?.0;
    ctl.store.retain(None, &needed, row.locked_until_ms)?;
    row.envelope_version = ctl.store.write_snapshot(&env, row.locked_until_ms)?.version;
    ctl.catalog.insert_snapshot(&row)?;
    ctl.jobs.committed(&record.job_id, &row.id)?;
    Ok(row)
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
) -> Result<(), ApiError> {
    use prost::Message;
    if job.agent_id != agent.id || job.kind != "backup" || record.job_id != job.id {
        return Err(refused(
            ctl,
            agent,
            &job.id,
            ApiError::PermissionDenied(
                "snapshots are committed by the agent's own backup job".into(),
            ),
        ));
    }
    if job.state != JobState::Running as i32 {
        let state = JobState::try_from(job.state).unwrap_or(JobState::Unspecified);
        return Err(refused(
            ctl,
            agent,
            &job.id,
            ApiError::FailedPrecondition(format!(
                "job {} is {}: snapshots are committed only while their backup job runs",
                job.id,
                state.as_str_name().to_lowercase()
            )),
        ));
    }
    let asked = match pb::Job::decode(job.job.as_slice()).map(|j| j.kind) {
        Ok(Some(pb::job::Kind::Backup(b))) => b.sources,
        _ => {
            return Err(ApiError::internal(format!(
                "stored job {} is not a backup",
                job.id
            )));
        }
    };
    if !asked.contains(&record.source) {
        return Err(refused(
            ctl,
            agent,
            &job.id,
            ApiError::PermissionDenied(format!(
                "job {} did not ask for source {:?} (it asked for {})",
                job.id,
                record.source,
                asked.join(", ")
            )),
        ));
    }
    Ok(())
}

/// A commit refused: audited (`snapshot.commit`, denied, with its job), then returned.
fn refused(ctl: &Controller, agent: &AgentRow, job_id: &str, e: ApiError) -> ApiError {
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
pub fn delete(ctl: &Controller, snap: &SnapshotRow, actor: &str) -> Result<(), ApiError> {
    let now = ctl.clock.now_ms();
    if snap.locked_until_ms > now {
        let e = ApiError::FailedPrecondition(format!(
            "snapshot {} is locked until {}: nobody can delete it before then",
            &snap.id[..12],
            crate::when(snap.locked_until_ms)
        ));
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
) -> Result<SnapshotRow, ApiError> {
    if until_ms < snap.locked_until_ms {
        let e = ApiError::FailedPrecondition(format!(
            "snapshot {} is locked until {}: a lock can be extended, never shortened",
            &snap.id[..12],
            crate::when(snap.locked_until_ms)
        ));
        ctl.audit
            .refused(actor, "snapshot.lock", &snap.id, &e.to_string());
        return Err(e);
    }
    if until_ms <= ctl.clock.now_ms() {
        return Err(ApiError::InvalidArgument(format!(
            "{} is in the past: give a date to lock snapshot {} until",
            crate::when(until_ms),
            &snap.id[..12]
        )));
    }
    // The store first (its packs, then its envelope), so the catalog never promises a
    // lock the store does not keep.
    if ctl.store.object_lock() {
        let env = ctl.store.read_snapshot(&snap.id)?;
        let record = Record::parse(&env.record)?;
        let (chunks, _) = referenced_chunks(ctl, &record)?;
        let mut needed: Vec<ChunkId> = chunks.into_iter().collect();
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
    ctl.catalog.find_snapshot(&snap.id)
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
) -> Result<JobRow, ApiError> {
    let job = ctl
        .catalog
        .job(job_id)?
        .ok_or_else(|| ApiError::NotFound(format!("no job {job_id:?}")))?;
    if !may_read(&job, agent) {
        return Err(ApiError::PermissionDenied(
            "reading chunks needs a running restore job of this agent".into(),
        ));
    }
    let granted = match ctl.jobs.grant(&job.id) {
        Some(g) => g,
        None => {
            let g = grant(ctl, &job)?;
            ctl.jobs.set_grant(&job.id, g.clone());
            g
        }
    };
    if let Some(outside) = wanted.iter().find(|id| !granted.contains(*id)) {
        ctl.audit.denied(
            &format!("agent:{}", agent.name),
            rpc,
            "",
            &format!(
                "chunk {outside} is not part of the snapshot restore job {} grants",
                job.id
            ),
        );
        return Err(ApiError::PermissionDenied(format!(
            "chunk {outside} is not part of the snapshot this restore job reads"
        )));
    }
    Ok(job)
}

/// The chunks restore job `job` may read: the tree chunks and every file chunk of the
/// snapshot it restores.
pub fn grant(ctl: &Controller, job: &JobRow) -> Result<Grant, ApiError> {
    use prost::Message;
    let pb_job = pb::Job::decode(job.job.as_slice())
        .map_err(|e| ApiError::internal(format!("stored job {}: {e}", job.id)))?;
    let Some(pb::job::Kind::Restore(r)) = pb_job.kind else {
        return Err(ApiError::PermissionDenied(format!(
            "job {} is not a restore",
            job.id
        )));
    };
    let record = Record::parse(&r.record)?;
    let mut ids: HashSet<ChunkId> = record.tree_chunks()?.into_iter().collect();
    ids.extend(load_tree(ctl, &record)?.chunk_ids().copied());
    Ok(Arc::new(ids))
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
