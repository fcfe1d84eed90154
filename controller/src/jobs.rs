//! Jobs and agent sessions.
//!
//! A job is created `queued` in the catalog, sent over its agent's session when the agent
//! is connected (then `running`), and finished by the agent's updates (`succeeded` or
//! `failed`). When a session ends, its running jobs become `interrupted`; if the same
//! agent process reconnects and reports the job as still running, it goes back to
//! `running`. Watchers (`lifeboat jobs watch`) get every change through a `watch` channel.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use lifeboat_core::ChunkId;
use lifeboat_core::pace::Pacer;
use lifeboat_proto::pb::{self, JobState};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::Clock;
use crate::catalog::{AgentRow, Catalog, JobRow};
use crate::error::ApiError;

pub type Outbound = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// How often a running job's progress reaches the catalog. Agents report every 500 ms; with
/// hundreds restoring at once, writing each report cost the controller more than the
/// restores' own bookkeeping. Watchers and listings see every report.
const PROGRESS_SAVE_EVERY_MS: i64 = 10_000;

struct SessionHandle {
    id: u64,
    tx: Outbound,
}

/// The chunks a restore job may read: those its snapshot references.
pub type Grant = Arc<Granted>;

/// The chunks of one snapshot: its tree's own, and those the tree references (shared with
/// every other grant and check of the same tree: `crate::checked`).
pub struct Granted {
    pub tree: HashSet<ChunkId>,
    pub chunks: crate::checked::TreeChunks,
}

impl Granted {
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains(id) || self.tree.contains(id)
    }
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, SessionHandle>,
    watchers: HashMap<String, watch::Sender<pb::JobInfo>>,
    /// Per running restore job, built on its first chunk read, dropped when it ends.
    grants: HashMap<String, Grant>,
    /// Bytes each running backup job uploaded (against its quota), dropped when it ends.
    uploaded: HashMap<String, u64>,
    /// Egress pacing by job tag (a plan's jobs share one pacer).
    pacers: HashMap<String, Arc<Pacer>>,
    /// Heartbeats not yet written to the catalog: agent id -> when.
    seen: HashMap<String, i64>,
    /// The latest progress of each running job, and when it was last written to the
    /// catalog: a running job's progress is written at most every [`PROGRESS_SAVE_EVERY`]
    /// (a restart interrupts running jobs anyway), and always with its end.
    progress: HashMap<String, Live>,
    /// Job rows whose last change the catalog could not take (its disk full, say): what
    /// the job is now, shown to watchers and listings and written again with the
    /// heartbeats until the catalog takes it.
    unsaved: HashMap<String, JobRow>,
    next_session: u64,
}

/// A running job's latest progress report.
struct Live {
    progress: pb::Progress,
    /// When the job's row last took its progress.
    saved_ms: i64,
    /// The agent that runs it (the one whose reports are taken).
    agent_id: String,
}

pub struct Jobs {
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// Held across each read-modify-write of a job row that agents' updates, commits and
    /// disconnects race on, so none of them writes back a row another one changed.
    rows: Mutex<()>,
    /// Told of every restore job that ended (its outcome feeds the downtime model and the
    /// drill that ran it: `recovery::outcome::restore_finished`).
    on_restore_end: RestoreEnded,
}

/// What `Jobs` calls when a restore job ends: the catalog, the job, the time.
pub type RestoreEnded = Box<dyn Fn(&Catalog, &JobRow, i64) + Send + Sync>;

/// A random id of `N` bytes in hex (jobs: 8; drills and plans, typed by people: 6).
pub fn random_id<const N: usize>() -> Result<String, ApiError> {
    Ok(hex::encode(lifeboat_core::sign::random_bytes::<N>()?))
}

impl Jobs {
    pub fn new(catalog: Arc<Catalog>, clock: Arc<dyn Clock>, on_restore_end: RestoreEnded) -> Jobs {
        Jobs {
            catalog,
            clock,
            inner: Mutex::new(Inner::default()),
            rows: Mutex::new(()),
            on_restore_end,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, ()> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that backup job `job_id` committed `snapshot_id`. A job's snapshots are the
    /// ones the controller saw it commit, never the ones its agent names.
    ///
    /// A commit accepted while the job ran can land after its agent's session was seen to
    /// end (the agent died between sending the commit and hearing the answer): the job,
    /// ended as interrupted meanwhile, succeeded once every source is committed, or a
    /// retry would back it up a second time.
    pub fn committed(&self, job_id: &str, snapshot_id: &str) -> Result<(), ApiError> {
        let _rows = self.rows();
        let mut row = self
            .catalog
            .job(job_id)?
            .ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))?;
        if !row.snapshot_ids.iter().any(|s| s == snapshot_id) {
            row.snapshot_ids.push(snapshot_id.to_string());
            if row.state == JobState::Interrupted as i32 && Self::committed_every_source(&row) {
                tracing::info!(
                    job = job_id,
                    snapshot = snapshot_id,
                    "a commit landed after its agent went away: the job succeeded"
                );
                row.state = JobState::Succeeded as i32;
                row.error.clear();
            }
            self.save(&row);
        }
        Ok(())
    }

    /// Ends a running job whose agent went away: a backup that committed a snapshot for
    /// every source it was given succeeded (only its report was lost); anything else is
    /// interrupted, to be retried.
    fn end_unreported(&self, job: &mut JobRow, why: &str) {
        job.finished_ms = self.clock.now_ms();
        if Self::committed_every_source(job) {
            job.state = JobState::Succeeded as i32;
            job.error.clear();
        } else {
            job.state = JobState::Interrupted as i32;
            job.error = why.into();
        }
        self.save(job);
    }

    /// The snapshot a restore job reads.
    fn restored_snapshot(job: &JobRow) -> Option<String> {
        match pb::Job::decode(job.job.as_slice()).ok()?.kind? {
            pb::job::Kind::Restore(r) => Some(r.snapshot_id),
            pb::job::Kind::Backup(_) => None,
        }
    }

    fn committed_every_source(job: &JobRow) -> bool {
        let Ok(pb::Job {
            kind: Some(pb::job::Kind::Backup(b)),
            ..
        }) = pb::Job::decode(job.job.as_slice())
        else {
            return false;
        };
        !b.sources.is_empty() && job.snapshot_ids.len() >= b.sources.len()
    }

    /// Marks jobs that were running when the controller stopped as interrupted.
    pub fn recover_after_restart(&self) -> Result<(), ApiError> {
        let n = self.catalog.move_jobs(
            JobState::Running as i32,
            JobState::Interrupted as i32,
            "controller restarted while the job ran",
            self.clock.now_ms(),
        )?;
        if n > 0 {
            tracing::warn!(jobs = n, "marked jobs interrupted by a controller restart");
        }
        Ok(())
    }

    /// Registers a new session for `agent_id`, replacing any older one.
    pub fn connect(&self, agent_id: &str, tx: Outbound) -> u64 {
        let mut inner = self.lock();
        inner.next_session += 1;
        let id = inner.next_session;
        inner
            .sessions
            .insert(agent_id.to_string(), SessionHandle { id, tx });
        id
    }

    /// Ends a session; its running jobs become interrupted unless a newer session exists.
    pub fn disconnect(&self, agent_id: &str, session: u64) {
        {
            let mut inner = self.lock();
            match inner.sessions.get(agent_id) {
                Some(s) if s.id == session => {
                    inner.sessions.remove(agent_id);
                }
                _ => return,
            }
        }
        let _rows = self.rows();
        if let Ok(running) = self
            .catalog
            .jobs_in_state(agent_id, JobState::Running as i32)
        {
            for mut job in running {
                self.end_unreported(&mut job, "agent disconnected while the job ran");
            }
        }
    }

    /// Ends `agent_id`'s session now (revocation): dropping its sender ends the stream, and
    /// its running jobs become interrupted.
    pub fn kick(&self, agent_id: &str) {
        let session = self.lock().sessions.get(agent_id).map(|s| s.id);
        if let Some(id) = session {
            self.disconnect(agent_id, id);
        }
    }

    /// Sends `msg` into every open session (a CA rotation's news); a session that closes
    /// meanwhile hears what it needs at its next start.
    pub fn tell_sessions(&self, msg: pb::ControllerMessage) {
        let sessions: Vec<Outbound> = self
            .lock()
            .sessions
            .values()
            .map(|s| s.tx.clone())
            .collect();
        for tx in sessions {
            let msg = msg.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ok(msg)).await;
            });
        }
    }

    /// Drops every session (controller shutdown), which ends their streams.
    pub fn close_all(&self) {
        self.lock().sessions.clear();
    }

    pub fn connected(&self, agent_id: &str) -> bool {
        self.lock().sessions.contains_key(agent_id)
    }

    /// Reconciles jobs after an agent (re)connects: the ones it still runs are running,
    /// any other job we thought it was running is interrupted.
    pub fn reconcile(&self, agent_id: &str, still_running: &[String]) -> Result<(), ApiError> {
        let _rows = self.rows();
        for state in [JobState::Running, JobState::Interrupted] {
            for job in self.catalog.jobs_in_state(agent_id, state as i32)? {
                // A change the catalog could not take yet is what the job is now.
                let mut job = self.lock().unsaved.get(&job.id).cloned().unwrap_or(job);
                if job.state != state as i32 {
                    continue;
                }
                let runs = still_running.contains(&job.id);
                if runs && state == JobState::Interrupted {
                    job.state = JobState::Running as i32;
                    job.error.clear();
                    job.finished_ms = 0;
                    self.save(&job);
                } else if !runs && state == JobState::Running {
                    self.end_unreported(&mut job, "the agent restarted while the job ran");
                }
            }
        }
        Ok(())
    }

    /// Submits restore job `job` for `agent` (operator restores, plans, drills and
    /// calibration bursts alike), tagged with `policy`.
    pub fn submit_restore(
        &self,
        agent: &AgentRow,
        detail: String,
        policy: &str,
        job: pb::RestoreJob,
    ) -> Result<JobRow, ApiError> {
        self.submit(agent, "restore", detail, policy, |id| pb::Job {
            job_id: id.to_string(),
            kind: Some(pb::job::Kind::Restore(job)),
        })
    }

    /// Creates a job for `agent` and dispatches it if the agent is connected.
    pub fn submit(
        &self,
        agent: &AgentRow,
        kind: &str,
        detail: String,
        policy: &str,
        build: impl FnOnce(&str) -> pb::Job,
    ) -> Result<JobRow, ApiError> {
        let id = random_id::<8>()?;
        let job = build(&id);
        let row = JobRow {
            id: id.clone(),
            kind: kind.into(),
            agent_id: agent.id.clone(),
            state: JobState::Queued as i32,
            detail,
            job: job.encode_to_vec(),
            created_ms: self.clock.now_ms(),
            started_ms: 0,
            finished_ms: 0,
            progress: None,
            error: String::new(),
            snapshot_ids: Vec::new(),
            policy: policy.to_string(),
            attempts: 0,
            result: None,
            refusal: 0,
        };
        self.catalog.insert_job(&row)?;
        self.dispatch(&agent.id)?;
        Ok(self.catalog.job(&id)?.unwrap_or(row))
    }

    /// Queues an interrupted job again under the same id once its agent is back, and the
    /// interruption is over a second old (a report racing the hello lands first); an agent
    /// still running it ignores the second delivery, so it never runs twice at once.
    /// Returns whether it was queued. Recovery plans and drills resume through it.
    pub fn requeue_interrupted(&self, job: &mut JobRow, now_ms: i64) -> Result<bool, ApiError> {
        if job.state != JobState::Interrupted as i32
            || !self.connected(&job.agent_id)
            || now_ms - job.finished_ms <= 1000
        {
            return Ok(false);
        }
        self.requeue(job)?;
        Ok(true)
    }

    /// Queues an interrupted job again (a scheduler retry) and dispatches it.
    pub fn requeue(&self, job: &mut JobRow) -> Result<(), ApiError> {
        job.state = JobState::Queued as i32;
        job.finished_ms = 0;
        self.save(job);
        self.dispatch(&job.agent_id)
    }

    /// Sends every queued job of `agent_id` over its session, if it has one.
    pub fn dispatch(&self, agent_id: &str) -> Result<(), ApiError> {
        let Some(tx) = self.lock().sessions.get(agent_id).map(|s| s.tx.clone()) else {
            return Ok(());
        };
        for mut row in self
            .catalog
            .jobs_in_state(agent_id, JobState::Queued as i32)?
        {
            let job = pb::Job::decode(row.job.as_slice())
                .map_err(|e| ApiError::internal(format!("stored job {}: {e}", row.id)))?;
            let msg = pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Job(job)),
            };
            // Running before it is sent: the agent may ask for its chunks, or even report
            // it finished, before `try_send` returns here.
            row.state = JobState::Running as i32;
            row.started_ms = self.clock.now_ms();
            self.save(&row);
            if tx.try_send(Ok(msg)).is_err() {
                // The session is gone or saturated; the job stays queued.
                row.state = JobState::Queued as i32;
                row.started_ms = 0;
                self.save(&row);
                break;
            }
        }
        Ok(())
    }

    /// Applies an agent's update to one of its jobs.
    pub fn update(&self, agent_id: &str, upd: pb::JobUpdate) -> Result<(), ApiError> {
        if self.progress_only(agent_id, &upd) {
            return Ok(());
        }
        let rows = self.rows();
        let mut row = self
            .row(&upd.job_id)?
            .ok_or_else(|| ApiError::NotFound(format!("no job {}", upd.job_id)))?;
        if row.agent_id != agent_id {
            return Err(ApiError::PermissionDenied(format!(
                "job {} belongs to another agent",
                row.id
            )));
        }
        if Self::is_terminal(row.state) {
            return Ok(());
        }
        let state = JobState::try_from(upd.state).unwrap_or(JobState::Unspecified);
        if state == JobState::Running
            && row.state == JobState::Running as i32
            && let Some(p) = upd.progress
        {
            // Progress alone: kept here, written now and then.
            let now = self.clock.now_ms();
            let due = {
                let mut inner = self.lock();
                let saved_ms = inner.progress.get(&row.id).map_or(0, |l| l.saved_ms);
                let due = now - saved_ms >= PROGRESS_SAVE_EVERY_MS;
                if due {
                    row.progress = Some(p.encode_to_vec());
                }
                let at = if due { now } else { saved_ms };
                inner.progress.insert(
                    row.id.clone(),
                    Live {
                        progress: p,
                        saved_ms: at,
                        agent_id: agent_id.to_string(),
                    },
                );
                due
            };
            if due {
                self.save(&row);
            } else {
                self.notify(&row);
            }
            return Ok(());
        }
        match state {
            JobState::Running => row.state = JobState::Running as i32,
            JobState::Succeeded | JobState::Failed => {
                row.state = state as i32;
                row.finished_ms = self.clock.now_ms();
                row.error = upd.error;
                row.refusal = match state {
                    JobState::Failed => upd.refusal,
                    _ => 0,
                };
                // A job's snapshots are the controller's knowledge, never the agent's word:
                // a backup's are those it saw the job commit, a restore's the one it reads.
                let claimed = upd.snapshot_ids;
                if row.kind == "restore" {
                    row.snapshot_ids = Self::restored_snapshot(&row).into_iter().collect();
                } else if state == JobState::Succeeded && !Self::committed_every_source(&row) {
                    row.state = JobState::Failed as i32;
                    row.error = format!(
                        "the agent reported success, but the job committed {} snapshots for its sources",
                        row.snapshot_ids.len()
                    );
                }
                if let Some(stray) = claimed.iter().find(|s| !row.snapshot_ids.contains(s)) {
                    tracing::warn!(job = %row.id, snapshot = %stray, "the agent names a snapshot its job did not commit or read; ignored");
                }
                // The result column holds a backup's BackupResult, a restore's RestoreResult.
                let result = match row.kind.as_str() {
                    "backup" => upd.backup.map(|b| b.encode_to_vec()),
                    _ => upd.restore.map(|r| r.encode_to_vec()),
                };
                if result.is_some() {
                    row.result = result;
                }
            }
            _ => {
                return Err(ApiError::InvalidArgument(format!(
                    "agents cannot set a job to {state:?}"
                )));
            }
        }
        if let Some(p) = upd.progress {
            row.progress = Some(p.encode_to_vec());
            self.lock().progress.remove(&row.id);
        }
        self.save(&row);
        drop(rows);
        if Self::is_terminal(row.state) && row.kind == "restore" {
            (self.on_restore_end)(&self.catalog, &row, self.clock.now_ms());
        }
        Ok(())
    }

    /// Takes a progress report of a job this agent is known to run, when its row is not
    /// due for the progress yet: kept here and shown to the job's watchers, with no
    /// catalog read (hundreds of restores report twice a second). False: `update` must
    /// read the row.
    fn progress_only(&self, agent_id: &str, upd: &pb::JobUpdate) -> bool {
        let Some(p) = &upd.progress else {
            return false;
        };
        if upd.state != JobState::Running as i32 {
            return false;
        }
        let now = self.clock.now_ms();
        let mut guard = self.lock();
        let inner = &mut *guard;
        // A job has a live entry only while it runs: leaving Running drops it (`save`).
        let Some(live) = inner.progress.get_mut(&upd.job_id) else {
            return false;
        };
        if live.agent_id != agent_id || now - live.saved_ms >= PROGRESS_SAVE_EVERY_MS {
            return false;
        }
        live.progress = p.clone();
        if let Some(w) = inner.watchers.get(&upd.job_id) {
            w.send_if_modified(|info| {
                let running = info.state == JobState::Running as i32;
                if running {
                    info.progress = Some(p.clone());
                }
                running
            });
        }
        true
    }

    /// Notes that `agent_id` was heard from; `flush_seen` writes it with the others.
    pub fn seen(&self, agent_id: &str, now_ms: i64) {
        self.lock().seen.insert(agent_id.to_string(), now_ms);
    }

    /// When the agent was last heard from, if that is not in the catalog yet.
    pub fn last_seen(&self, agent_id: &str) -> Option<i64> {
        self.lock().seen.get(agent_id).copied()
    }

    /// Writes the heartbeats gathered since the last flush in one transaction.
    pub fn flush_seen(&self) -> Result<usize, ApiError> {
        self.save_unsaved();
        let seen: Vec<(String, i64)> = self.lock().seen.drain().collect();
        self.catalog.touch_agents(&seen)?;
        Ok(seen.len())
    }

    /// A job's row as it is now: a change the catalog could not take yet, else the
    /// catalog's.
    pub fn row(&self, id: &str) -> Result<Option<JobRow>, ApiError> {
        if let Some(row) = self.lock().unsaved.get(id) {
            return Ok(Some(row.clone()));
        }
        Ok(self.catalog.job(id)?)
    }

    /// Writes again the job rows the catalog could not take; each stays kept until it does.
    fn save_unsaved(&self) {
        let _rows = self.rows();
        let pending: Vec<JobRow> = self.lock().unsaved.values().cloned().collect();
        for row in pending {
            if self.catalog.update_job(&row).is_ok() {
                tracing::info!(job = %row.id, "the job's state, kept while the catalog could not take it, is saved");
                self.lock().unsaved.remove(&row.id);
            }
        }
    }

    /// Counts `bytes` uploaded by backup job `job_id` against `quota`: refused, with the
    /// bytes it had uploaded, when they would pass it.
    pub fn charge_upload(&self, job_id: &str, bytes: u64, quota: u64) -> Result<(), u64> {
        let mut inner = self.lock();
        let used = inner.uploaded.entry(job_id.to_string()).or_default();
        if used.saturating_add(bytes) > quota {
            return Err(*used);
        }
        *used += bytes;
        Ok(())
    }

    /// Paces every chunk read by jobs tagged `tag` (see `recovery::plan`).
    pub fn set_pacer(&self, tag: &str, pacer: Arc<Pacer>) {
        self.lock().pacers.insert(tag.to_string(), pacer);
    }

    pub fn clear_pacer(&self, tag: &str) {
        self.lock().pacers.remove(tag);
    }

    pub fn pacer(&self, tag: &str) -> Option<Arc<Pacer>> {
        if tag.is_empty() {
            return None;
        }
        self.lock().pacers.get(tag).cloned()
    }

    /// The grant of a restore job, if built.
    pub fn grant(&self, job_id: &str) -> Option<Grant> {
        self.lock().grants.get(job_id).cloned()
    }

    pub fn set_grant(&self, job_id: &str, grant: Grant) {
        self.lock().grants.insert(job_id.to_string(), grant);
    }

    fn save(&self, row: &JobRow) {
        // A job that stops running keeps the last progress it reported.
        let live = if row.state == JobState::Running as i32 {
            None
        } else {
            self.lock().progress.remove(&row.id)
        };
        let with_progress;
        let row = match live {
            Some(live) => {
                with_progress = JobRow {
                    progress: Some(live.progress.encode_to_vec()),
                    ..row.clone()
                };
                &with_progress
            }
            None => row,
        };
        match self.catalog.update_job(row) {
            Ok(()) => {
                self.lock().unsaved.remove(&row.id);
            }
            Err(e) => {
                // Kept, and written again with the heartbeats: the job's watchers and
                // listings see it now, and its end still ends its grants.
                tracing::error!(job = %row.id, error = %e, "cannot save the job's state yet; kept in memory and saved again every 5 s");
                self.lock().unsaved.insert(row.id.clone(), row.clone());
            }
        }
        if Self::is_terminal(row.state) {
            let mut inner = self.lock();
            inner.grants.remove(&row.id);
            inner.uploaded.remove(&row.id);
        }
        self.notify(row);
    }

    /// Tells the job's watchers, if any, what it is now.
    fn notify(&self, row: &JobRow) {
        let watcher = self.lock().watchers.get(&row.id).cloned();
        if let Some(w) = watcher
            && let Ok(info) = self.info(row)
        {
            w.send_replace(info);
        }
    }

    /// A receiver that sees the job's current state and every later change.
    pub fn watch(&self, row: &JobRow) -> Result<watch::Receiver<pb::JobInfo>, ApiError> {
        let info = self.info(row)?;
        let mut inner = self.lock();
        inner.watchers.retain(|_, w| w.receiver_count() > 0);
        let w = inner
            .watchers
            .entry(row.id.clone())
            .or_insert_with(|| watch::channel(info.clone()).0);
        w.send_replace(info);
        Ok(w.subscribe())
    }

    pub fn info(&self, row: &JobRow) -> Result<pb::JobInfo, ApiError> {
        let unsaved = self.lock().unsaved.get(&row.id).cloned();
        let row = unsaved.as_ref().unwrap_or(row);
        let agent_name = self
            .catalog
            .agent(&row.agent_id)?
            .map(|a| a.name)
            .unwrap_or_default();
        Ok(pb::JobInfo {
            id: row.id.clone(),
            kind: row.kind.clone(),
            agent_id: row.agent_id.clone(),
            agent_name,
            state: row.state,
            detail: row.detail.clone(),
            created_unix_ms: row.created_ms,
            started_unix_ms: row.started_ms,
            finished_unix_ms: row.finished_ms,
            progress: self.progress(row),
            error: row.error.clone(),
            snapshot_ids: row.snapshot_ids.clone(),
            restore: row
                .result
                .as_deref()
                .filter(|_| row.kind != "backup")
                .and_then(|r| pb::RestoreResult::decode(r).ok()),
            refusal: row.refusal,
            backup: row
                .result
                .as_deref()
                .filter(|_| row.kind == "backup")
                .and_then(|r| pb::BackupResult::decode(r).ok()),
        })
    }

    /// The job's latest progress: a running job's as last reported, else as stored.
    pub fn progress(&self, row: &JobRow) -> Option<pb::Progress> {
        if row.state == JobState::Running as i32
            && let Some(live) = self.lock().progress.get(&row.id)
        {
            return Some(live.progress.clone());
        }
        row.progress
            .as_deref()
            .and_then(|p| pb::Progress::decode(p).ok())
    }

    /// Succeeded and failed jobs take no more agent updates (the scheduler may queue a
    /// failed scheduled job again, see `scheduler::tick`).
    pub fn is_terminal(state: i32) -> bool {
        state == JobState::Succeeded as i32 || state == JobState::Failed as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup job of `sources` in `state`, as the catalog holds it.
    fn backup_job(id: &str, sources: &[&str], state: JobState) -> JobRow {
        let job = pb::Job {
            job_id: id.into(),
            kind: Some(pb::job::Kind::Backup(pb::BackupJob {
                sources: sources.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })),
        };
        JobRow {
            id: id.into(),
            kind: "backup".into(),
            agent_id: "a1".into(),
            state: state as i32,
            detail: String::new(),
            job: job.encode_to_vec(),
            created_ms: 1,
            started_ms: 1,
            finished_ms: 2,
            progress: None,
            error: "agent disconnected while the job ran".into(),
            snapshot_ids: Vec::new(),
            policy: String::new(),
            attempts: 0,
            result: None,
            refusal: 0,
        }
    }

    /// A commit that lands after the agent's session was seen to end makes the job, ended
    /// as interrupted meanwhile, succeeded once every source is in, so no retry backs it up
    /// again; a job with a source still missing stays interrupted.
    #[test]
    fn a_commit_landing_after_the_agent_went_away_makes_its_job_succeeded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Arc::new(Catalog::open(&dir.path().join("catalog.db")).expect("catalog"));
        let jobs = Jobs::new(
            catalog.clone(),
            Arc::new(crate::SystemClock),
            Box::new(|_, _, _| {}),
        );
        catalog
            .insert_job(&backup_job("one", &["data"], JobState::Interrupted))
            .expect("insert");
        catalog
            .insert_job(&backup_job("two", &["data", "etc"], JobState::Interrupted))
            .expect("insert");

        jobs.committed("one", "s1").expect("commit");
        jobs.committed("two", "s2").expect("commit");
        let one = catalog.job("one").expect("read").expect("job");
        assert_eq!(
            (one.state, one.error.as_str(), one.snapshot_ids.as_slice()),
            (JobState::Succeeded as i32, "", &["s1".to_string()][..])
        );
        let two = catalog.job("two").expect("read").expect("job");
        assert_eq!(two.state, JobState::Interrupted as i32);

        jobs.committed("two", "s3").expect("commit");
        let two = catalog.job("two").expect("read").expect("job");
        assert_eq!(
            (two.state, two.snapshot_ids.len()),
            (JobState::Succeeded as i32, 2)
        );
    }
}
