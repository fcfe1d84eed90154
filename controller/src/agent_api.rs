//! The agent-facing API: the session, the chunk data plane, and snapshot commits.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::{Envelope, Record, validate_name};
use lifeboat_core::tree::Tree;
use lifeboat_proto::pb::{self, JobState, agent_api_server::AgentApi, agent_message::Msg};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::SnapshotRow;
use crate::error::ApiError;
use crate::{Controller, auth, now_ms};

pub struct AgentService(pub Arc<Controller>);

/// Ids per MissingChunks or GetChunks request.
const MAX_IDS: usize = 4096;
/// GetChunks fills each message up to this many bytes.
const BATCH_BYTES: usize = 1 << 20;

fn ids(raw: &[Vec<u8>]) -> Result<Vec<ChunkId>, ApiError> {
    if raw.len() > MAX_IDS {
        return Err(ApiError::InvalidArgument(format!(
            "at most {MAX_IDS} chunk ids per request"
        )));
    }
    raw.iter()
        .map(|b| ChunkId::from_slice(b).map_err(ApiError::from))
        .collect()
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentApi for AgentService {
    type SessionStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;
    type GetChunksStream = BoxStream<pb::ChunkBatch>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let ctl = self.0.clone();
        let agent = auth::agent(&ctl, &req)?;
        let mut inbound = req.into_inner();
        let Some(pb::AgentMessage {
            msg: Some(Msg::Hello(hello)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("a session starts with a hello"));
        };
        let mut sources = Vec::new();
        for s in &hello.sources {
            validate_name("source", &s.name).map_err(ApiError::from)?;
            sources.push((s.name.clone(), s.kind.clone(), s.path.clone()));
        }
        ctl.catalog.update_agent_hello(
            &agent.id,
            &hello.hostname,
            &hello.version,
            &sources,
            &hello.restore_roots,
            now_ms(),
        )?;
        let (tx, rx) = mpsc::channel(64);
        let session = ctl.jobs.connect(&agent.id, tx);
        ctl.jobs.reconcile(&agent.id, &hello.running_jobs)?;
        ctl.jobs.dispatch(&agent.id)?;
        tracing::info!(agent = %agent.name, sources = sources.len(), "agent connected");
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(pb::AgentMessage {
                        msg: Some(Msg::JobUpdate(u)),
                    })) => {
                        if let Err(e) = ctl.jobs.update(&agent.id, u) {
                            tracing::warn!(agent = %agent.name, error = %e, "rejected job update");
                        }
                    }
                    Ok(Some(pb::AgentMessage {
                        msg: Some(Msg::Heartbeat(_)),
                    })) => {
                        let _ = ctl.catalog.touch_agent(&agent.id, now_ms());
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = ctl.catalog.touch_agent(&agent.id, now_ms());
            ctl.jobs.disconnect(&agent.id, session);
            tracing::info!(agent = %agent.name, "agent disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn missing_chunks(
        &self,
        req: Request<pb::ChunkIds>,
    ) -> Result<Response<pb::ChunkIds>, Status> {
        auth::agent(&self.0, &req)?;
        let wanted = ids(&req.into_inner().ids)?;
        let ctl = self.0.clone();
        let missing = tokio::task::spawn_blocking(move || ctl.store.missing(&wanted))
            .await
            .map_err(ApiError::from)??;
        Ok(Response::new(pb::ChunkIds {
            ids: missing.iter().map(|i| i.as_bytes().to_vec()).collect(),
        }))
    }

    async fn put_chunks(
        &self,
        req: Request<Streaming<pb::ChunkBatch>>,
    ) -> Result<Response<pb::PutChunksReply>, Status> {
        let agent = auth::agent(&self.0, &req)?;
        let mut stream = req.into_inner();
        let mut reply = pb::PutChunksReply::default();
        while let Some(batch) = stream.message().await? {
            let ctl = self.0.clone();
            // One blocking hop per message: verify and append every chunk in it.
            let res =
                tokio::task::spawn_blocking(move || -> Result<pb::PutChunksReply, ApiError> {
                    let chunks = batch
                        .chunks
                        .iter()
                        .map(|c| Ok((ChunkId::from_slice(&c.id)?, &c.blob[..])))
                        .collect::<Result<Vec<_>, ApiError>>()?;
                    let sum = ctl.store.put_batch(&chunks)?;
                    Ok(pb::PutChunksReply {
                        stored: sum.stored,
                        duplicate: sum.duplicate,
                        bytes_stored: sum.bytes_stored,
                    })
                })
                .await
                .map_err(ApiError::from)?;
            match res {
                Ok(r) => {
                    reply.stored += r.stored;
                    reply.duplicate += r.duplicate;
                    reply.bytes_stored += r.bytes_stored;
                }
                Err(e) => {
                    tracing::warn!(agent = %agent.name, error = %e, "chunk upload refused");
                    return Err(e.into());
                }
            }
        }
        Ok(Response::new(reply))
    }

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let agent = auth::agent(&self.0, &req)?;
        let req = req.into_inner();
        // A restore job of this agent, running now, is the grant to read chunks.
        let job = self
            .0
            .catalog
            .job(&req.job_id)?
            .ok_or_else(|| ApiError::PermissionDenied(format!("no job {}", req.job_id)))?;
        if job.agent_id != agent.id
            || job.kind != "restore"
            || job.state != JobState::Running as i32
        {
            return Err(ApiError::PermissionDenied(
                "reading chunks needs a running restore job of this agent".into(),
            )
            .into());
        }
        let wanted = ids(&req.ids)?;
        let (tx, rx) = mpsc::channel(4);
        let ctl = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = pb::ChunkBatch::default();
            let mut bytes = 0usize;
            for id in wanted {
                match ctl.store.read_blob(&id) {
                    Ok(blob) => {
                        bytes += blob.len();
                        batch.chunks.push(pb::ChunkBlob {
                            id: id.as_bytes().to_vec(),
                            blob: blob.into(),
                        });
                        if bytes >= BATCH_BYTES {
                            bytes = 0;
                            if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        // Send what was read, then the error.
                        if !batch.chunks.is_empty() {
                            let _ = tx.blocking_send(Ok(std::mem::take(&mut batch)));
                        }
                        let _ = tx.blocking_send(Err(Status::from(e)));
                        return;
                    }
                }
            }
            if !batch.chunks.is_empty() {
                let _ = tx.blocking_send(Ok(batch));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit_snapshot(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitReply>, Status> {
        let agent = auth::agent(&self.0, &req)?;
        let req = req.into_inner();
        lifeboat_core::sign::verify_record(&agent.signing_key, &req.record, &req.signature)
            .map_err(ApiError::from)?;
        let record = Record::parse(&req.record).map_err(ApiError::from)?;
        if record.agent_id != agent.id || record.agent_name != agent.name {
            return Err(ApiError::PermissionDenied(
                "a snapshot record must name the committing agent".into(),
            )
            .into());
        }
        let job = self
            .0
            .catalog
            .job(&req.job_id)?
            .ok_or_else(|| ApiError::NotFound(format!("no job {}", req.job_id)))?;
        if job.agent_id != agent.id || job.kind != "backup" || record.job_id != job.id {
            return Err(ApiError::PermissionDenied(
                "snapshots are committed by the agent's own backup job".into(),
            )
            .into());
        }
        let ctl = self.0.clone();
        let signature = req.signature;
        let raw_record = req.record;
        let row = tokio::task::spawn_blocking(move || -> Result<SnapshotRow, ApiError> {
            ctl.store.flush()?;
            check_tree_complete(&ctl, &record)?;
            let env = Envelope {
                record: raw_record,
                signature,
                public_key: agent.signing_key.clone(),
                received_unix_ms: now_ms(),
            };
            ctl.store.write_snapshot(&env)?;
            let row = snapshot_row(&env.id(), &record, env.received_unix_ms);
            ctl.catalog.insert_snapshot(&row)?;
            Ok(row)
        })
        .await
        .map_err(ApiError::from)??;
        tracing::info!(agent = %row.agent_name, source = %row.source, snapshot = %row.id, files = row.files, "snapshot committed");
        Ok(Response::new(pb::CommitReply {
            snapshot_id: row.id,
            received_unix_ms: row.received_ms,
        }))
    }
}

/// Reads the snapshot's tree from the store, checks it against the record, and checks
/// that every chunk it references is stored.
fn check_tree_complete(ctl: &Controller, record: &Record) -> Result<(), ApiError> {
    let tree = load_tree(ctl, record)?;
    let mut seen = HashSet::new();
    let refs: Vec<ChunkId> = tree
        .chunk_ids()
        .filter(|id| seen.insert(**id))
        .copied()
        .collect();
    for batch in refs.chunks(MAX_IDS) {
        let missing = ctl.catalog.unknown_chunks(batch)?;
        if let Some(first) = missing.first() {
            return Err(ApiError::FailedPrecondition(format!(
                "snapshot references {} chunks the store does not have (first: {first}); run the backup again with a full re-read",
                missing.len()
            )));
        }
    }
    Ok(())
}

/// Loads and parses a snapshot's tree (verifying every tree chunk and the tree hash).
pub fn load_tree(ctl: &Controller, record: &Record) -> Result<Tree, ApiError> {
    let mut bytes = Vec::with_capacity(record.tree.size as usize);
    for id in record.tree_chunks()? {
        bytes.extend_from_slice(&ctl.store.read_chunk(&id).map_err(|e| match e {
            ApiError::NotFound(_) => {
                ApiError::FailedPrecondition(format!("tree chunk {id} is not in the store"))
            }
            other => other,
        })?);
    }
    let hash = blake3::keyed_hash(ctl.chunk_key.as_bytes(), &bytes).to_hex();
    if bytes.len() as u64 != record.tree.size || hash.as_str() != record.tree.hash {
        return Err(ApiError::InvalidArgument(
            "the stored tree does not match the record's size and hash".into(),
        ));
    }
    Ok(Tree::parse(&bytes)?)
}

pub fn snapshot_row(id: &str, r: &Record, received_ms: i64) -> SnapshotRow {
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
    }
}
