//! The operator-facing API behind the `lifeboat` CLI.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lifeboat_proto::pb::{self, operator_api_server::OperatorApi};
use tonic::{Request, Response, Status};

use crate::catalog::{AgentRow, SnapshotRow};
use crate::enroll::{token_hash, validate_labels};
use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::{Controller, auth, now_ms};

pub struct OperatorService(pub Arc<Controller>);

const DEFAULT_TOKEN_TTL_S: u64 = 3600;
const MAX_TOKEN_TTL_S: u64 = 7 * 24 * 3600;

fn snapshot_info(s: SnapshotRow) -> pb::SnapshotInfo {
    pb::SnapshotInfo {
        id: s.id,
        agent_id: s.agent_id,
        agent_name: s.agent_name,
        source: s.source,
        source_path: s.source_path,
        hostname: s.hostname,
        received_unix_ms: s.received_ms,
        agent_time_unix_ms: s.agent_time_ms,
        files: s.files,
        dirs: s.dirs,
        bytes: s.bytes,
        bytes_new: s.bytes_new,
        bytes_read: s.bytes_read,
        parent: s.parent,
    }
}

impl OperatorService {
    fn agent_info(&self, a: AgentRow) -> pb::AgentInfo {
        pb::AgentInfo {
            connected: self.0.jobs.connected(&a.id),
            id: a.id,
            name: a.name,
            labels: a.labels.into_iter().collect(),
            hostname: a.hostname,
            last_seen_unix_ms: a.last_seen_ms,
            enrolled_unix_ms: a.enrolled_ms,
            sources: a
                .sources
                .into_iter()
                .map(|(name, kind, path)| pb::Source { name, kind, path })
                .collect(),
            restore_roots: a.restore_roots,
            version: a.version,
        }
    }
}

/// The restore target must be an absolute, normalized path inside one of the agent's
/// restore roots. The agent checks again; this gives the operator the error at once.
fn check_target(agent: &AgentRow, target: &str) -> Result<(), ApiError> {
    let p = Path::new(target);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(ApiError::InvalidArgument(format!(
            "--to {target:?} must be an absolute path without `.` or `..`"
        )));
    }
    if agent.restore_roots.is_empty() {
        return Err(ApiError::FailedPrecondition(format!(
            "agent {} accepts no restores: start it with --restore-root PATH",
            agent.name
        )));
    }
    if !agent
        .restore_roots
        .iter()
        .any(|r| p.starts_with(r) && p != Path::new(r))
    {
        return Err(ApiError::FailedPrecondition(format!(
            "--to {target} is outside agent {}'s restore roots ({}); restore below one of them",
            agent.name,
            agent.restore_roots.join(", ")
        )));
    }
    Ok(())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl OperatorApi for OperatorService {
    type WatchJobStream = BoxStream<pb::JobInfo>;

    async fn status(&self, req: Request<pb::Empty>) -> Result<Response<pb::StatusReply>, Status> {
        let operator = auth::operator(&self.0, &req)?;
        let (agents, snapshots, chunks, stored_bytes) = self.0.catalog.totals()?;
        Ok(Response::new(pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            ca_fingerprint: self.0.ca_fingerprint.clone(),
            operator,
            agents,
            snapshots,
            chunks,
            stored_bytes,
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let operator = auth::operator(&self.0, &req)?;
        let req = req.into_inner();
        let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
        validate_labels(&labels)?;
        let ttl = if req.ttl_seconds == 0 {
            DEFAULT_TOKEN_TTL_S
        } else {
            req.ttl_seconds
        };
        if ttl > MAX_TOKEN_TTL_S {
            return Err(ApiError::InvalidArgument("--ttl may be at most 7 days".into()).into());
        }
        let token = format!(
            "lbt_{}",
            hex::encode(lifeboat_core::sign::random_bytes::<24>().map_err(ApiError::from)?)
        );
        let now = now_ms();
        let expires = now + (ttl as i64) * 1000;
        self.0
            .catalog
            .insert_token(&token_hash(&token), &labels, now, expires)?;
        tracing::info!(%operator, ttl_s = ttl, "join token created");
        Ok(Response::new(pb::CreateTokenReply {
            token,
            expires_unix_ms: expires,
            ca_fingerprint: self.0.ca_fingerprint.clone(),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::AgentList>, Status> {
        auth::operator(&self.0, &req)?;
        let agents = self
            .0
            .catalog
            .agents()?
            .into_iter()
            .map(|a| self.agent_info(a))
            .collect();
        Ok(Response::new(pb::AgentList { agents }))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::SnapshotList>, Status> {
        auth::operator(&self.0, &req)?;
        let req = req.into_inner();
        let agent_id = if req.agent.is_empty() {
            None
        } else {
            Some(self.0.catalog.find_agent(&req.agent)?.id)
        };
        let source = (!req.source.is_empty()).then_some(req.source.as_str());
        let snapshots = self
            .0
            .catalog
            .snapshots(agent_id.as_deref(), source)?
            .into_iter()
            .map(snapshot_info)
            .collect();
        Ok(Response::new(pb::SnapshotList { snapshots }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::JobList>, Status> {
        auth::operator(&self.0, &req)?;
        let limit = match req.into_inner().limit {
            0 => 100,
            n => n.min(10_000),
        };
        let jobs = self
            .0
            .catalog
            .jobs(limit)?
            .iter()
            .map(|j| self.0.jobs.info(j))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::JobList { jobs }))
    }

    async fn get_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::JobInfo>, Status> {
        auth::operator(&self.0, &req)?;
        let id = req.into_inner().id;
        let row = self.0.catalog.job(&id)?.ok_or_else(|| {
            ApiError::NotFound(format!("no job {id}; `lifeboat jobs` lists them"))
        })?;
        Ok(Response::new(self.0.jobs.info(&row)?))
    }

    async fn watch_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        auth::operator(&self.0, &req)?;
        let id = req.into_inner().id;
        let row = self.0.catalog.job(&id)?.ok_or_else(|| {
            ApiError::NotFound(format!("no job {id}; `lifeboat jobs` lists them"))
        })?;
        let mut rx = self.0.jobs.watch(&row)?;
        let stream = async_stream(move |tx| async move {
            loop {
                let info = rx.borrow_and_update().clone();
                let done = Jobs::is_terminal(info.state);
                if tx.send(Ok(info)).await.is_err() || done || rx.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn start_backup(
        &self,
        req: Request<pb::StartBackupRequest>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        let operator = auth::operator(&self.0, &req)?;
        let req = req.into_inner();
        let agent = self.0.catalog.find_agent(&req.agent)?;
        let known: Vec<&str> = agent.sources.iter().map(|(n, _, _)| n.as_str()).collect();
        if known.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "agent {} has reported no sources; start it with --source NAME=PATH",
                agent.name
            ))
            .into());
        }
        let sources: Vec<String> = if req.sources.is_empty() {
            known.iter().map(|s| s.to_string()).collect()
        } else {
            req.sources
        };
        if let Some(bad) = sources.iter().find(|s| !known.contains(&s.as_str())) {
            return Err(ApiError::NotFound(format!(
                "agent {} has no source {bad:?}; it has: {}",
                agent.name,
                known.join(", ")
            ))
            .into());
        }
        let detail = format!("sources {}", sources.join(","));
        let full = req.full_reread;
        let row = self.0.jobs.submit(&agent, "backup", detail, |id| pb::Job {
            job_id: id.to_string(),
            kind: Some(pb::job::Kind::Backup(pb::BackupJob {
                sources,
                full_reread: full,
            })),
        })?;
        tracing::info!(%operator, agent = %agent.name, job = %row.id, "backup requested");
        Ok(Response::new(self.0.jobs.info(&row)?))
    }

    async fn start_restore(
        &self,
        req: Request<pb::StartRestoreRequest>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        let operator = auth::operator(&self.0, &req)?;
        let req = req.into_inner();
        let snap = self.0.catalog.find_snapshot(&req.snapshot)?;
        let agent = self.0.catalog.find_agent(&req.agent)?;
        check_target(&agent, &req.target)?;
        let env = self.0.store.read_snapshot(&snap.id)?;
        // Verify against the key recorded at enrollment, not the one stored beside the record.
        let origin_key = self
            .0
            .catalog
            .agent(&snap.agent_id)?
            .map(|a| a.signing_key)
            .unwrap_or(env.public_key);
        let detail = format!("snapshot {} to {}", &snap.id[..12], req.target);
        let target = req.target.clone();
        let row = self
            .0
            .jobs
            .submit(&agent, "restore", detail, |id| pb::Job {
                job_id: id.to_string(),
                kind: Some(pb::job::Kind::Restore(pb::RestoreJob {
                    snapshot_id: snap.id.clone(),
                    record: env.record,
                    signature: env.signature,
                    origin_public_key: origin_key,
                    target,
                })),
            })?;
        tracing::info!(%operator, agent = %agent.name, snapshot = %snap.id, job = %row.id, "restore requested");
        Ok(Response::new(self.0.jobs.info(&row)?))
    }
}

/// A boxed stream fed by a task.
fn async_stream<T, F, Fut>(f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
