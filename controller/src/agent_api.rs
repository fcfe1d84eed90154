//! The agent-facing API: the session, the chunk data plane, and snapshot commits.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lifeboat_core::ChunkId;
use lifeboat_core::snapshot::validate_name;
use lifeboat_proto::pb::{self, agent_api_server::AgentApi, agent_message::Msg};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ApiError;
use crate::store::PutSummary;
use crate::{Controller, access, auth, backups, now_ms, snapshots};

pub struct AgentService(pub Arc<Controller>);

/// Ids per MissingChunks or GetChunks request.
const MAX_IDS: usize = 4096;
/// GetChunks fills each message up to this many bytes (small chunks share a message; a
/// large chunk goes alone). With one message queued per stream, a restore holds about
/// three messages in the controller: the one being filled, the queued one, the one being
/// encoded; a mass restore multiplies that by its concurrency.
const BATCH_BYTES: usize = 256 << 10;
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
        let agent = auth::agent(&req)?;
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
        let (tx, rx) = mpsc::channel(64);
        // Weak: the session ends when `Jobs` drops its sender (revocation), acks or not.
        let acks = tx.downgrade();
        ctl.catalog.update_agent_hello(
            &agent.id,
            &hello.hostname,
            &hello.version,
            &sources,
            &hello.restore_roots,
        )?;
        ctl.jobs.seen(&agent.id, now_ms());
        if let Some(inv) = &hello.docker {
            ctl.catalog
                .update_agent_docker(&agent.id, &prost::Message::encode_to_vec(inv))?;
        }
        // Which CAs to trust, and during a CA rotation whether to renew now: first.
        let trust = ctl
            .authority
            .trust()
            .for_agent(&ctl.catalog.agent_cert_ca(&agent.id)?);
        let _ = tx.try_send(Ok(pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Trust(trust)),
        }));
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
                        msg: Some(Msg::Inventory(inv)),
                    })) => {
                        let bytes = prost::Message::encode_to_vec(&inv);
                        if let Err(e) = ctl.catalog.update_agent_docker(&agent.id, &bytes) {
                            tracing::warn!(agent = %agent.name, error = %e, "cannot store the Docker inventory");
                        }
                    }
                    Ok(Some(pb::AgentMessage {
                        msg: Some(Msg::Heartbeat(hb)),
                    })) => {
                        // In memory; written with every other agent's every few seconds.
                        ctl.jobs.seen(&agent.id, now_ms());
                        let ack = pb::ControllerMessage {
                            msg: Some(pb::controller_message::Msg::HeartbeatAck(
                                pb::HeartbeatAck {
                                    unix_ms: hb.unix_ms,
                                },
                            )),
                        };
                        // A full queue means the agent is behind: it will send another.
                        if let Some(tx) = acks.upgrade() {
                            let _ = tx.try_send(Ok(ack));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            ctl.jobs.seen(&agent.id, now_ms());
            ctl.jobs.disconnect(&agent.id, session);
            tracing::info!(agent = %agent.name, "agent disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn missing_chunks(
        &self,
        req: Request<pb::ChunkIds>,
    ) -> Result<Response<pb::ChunkIds>, Status> {
        let agent = auth::agent(&req)?;
        let wanted = ids(&req.into_inner().ids)?;
        let ctl = self.0.clone();
        let missing =
            tokio::task::spawn_blocking(move || backups::missing_for(&ctl, &agent, &wanted))
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
        let agent = auth::agent(&req)?;
        let job_id = req
            .metadata()
            .get(lifeboat_proto::JOB_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let quota = {
            let (ctl, agent, job_id) = (self.0.clone(), agent.clone(), job_id.clone());
            tokio::task::spawn_blocking(move || backups::upload_allowance(&ctl, &agent, &job_id))
                .await
                .map_err(ApiError::from)??
        };
        let mut stream = req.into_inner();
        let mut reply = pb::PutChunksReply::default();
        // One message is verified and appended (on a blocking thread) while the next one
        // is received and decoded; messages are still stored one after another, in order.
        let mut storing: Option<tokio::task::JoinHandle<Result<PutSummary, ApiError>>> = None;
        loop {
            let next = stream.message().await;
            if let Some(previous) = storing.take() {
                let sum = previous.await.map_err(ApiError::from)?.inspect_err(|e| {
                    tracing::warn!(agent = %agent.name, error = %e, "chunk upload refused");
                })?;
                reply.stored += sum.stored;
                reply.duplicate += sum.duplicate;
                reply.bytes_stored += sum.bytes_stored;
            }
            let Some(batch) = next? else {
                break;
            };
            let bytes: u64 = batch.chunks.iter().map(|c| c.blob.len() as u64).sum();
            backups::charge_upload(&self.0, &agent, &job_id, bytes, quota)?;
            let (ctl, agent_id) = (self.0.clone(), agent.id.clone());
            storing = Some(tokio::task::spawn_blocking(move || {
                let chunks = batch
                    .chunks
                    .iter()
                    .map(|c| Ok((ChunkId::from_slice(&c.id)?, &c.blob[..])))
                    .collect::<Result<Vec<_>, ApiError>>()?;
                backups::store_chunks(&ctl, &agent_id, &chunks)
            }));
        }
        Ok(Response::new(reply))
    }

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let agent = auth::agent(&req)?;
        let (job, wanted) = self
            .granted(&agent, req.into_inner(), "/lifeboat.v1.AgentApi/GetChunks")
            .await?;
        // Nothing is read for a restore until it is among those being served.
        let admitted = self.0.restore_admission.enter(&job.id).await;
        let (tx, rx) = mpsc::channel(1);
        let ctl = self.0.clone();
        let pacer = self.0.jobs.pacer(&job.policy);
        tokio::task::spawn_blocking(move || {
            let _admitted = admitted;
            let mut batch = pb::ChunkBatch::default();
            let mut bytes = 0usize;
            for id in wanted {
                match ctl.store.try_read_blob(&id) {
                    Ok(Err(why)) => {
                        // Only the files that use this chunk fail; the others restore.
                        tracing::warn!(chunk = %id, error = %why, "a restore asked for a chunk the store cannot read");
                        batch.chunks.push(pb::ChunkBlob {
                            id: id.as_bytes().to_vec(),
                            blob: Default::default(),
                            unavailable: why,
                        });
                    }
                    Ok(Ok(blob)) => {
                        if let Some(p) = &pacer {
                            // Send what is batched before waiting for the next slot.
                            if !batch.chunks.is_empty() {
                                bytes = 0;
                                if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                                    return;
                                }
                            }
                            p.take(blob.len() as u64);
                        }
                        bytes += blob.len();
                        ctl.restore_bytes_sent
                            .fetch_add(blob.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        batch.chunks.push(pb::ChunkBlob {
                            id: id.as_bytes().to_vec(),
                            blob: blob.into(),
                            unavailable: String::new(),
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

    async fn locate_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<pb::ChunkLocations>, Status> {
        let agent = auth::agent(&req)?;
        let (job, wanted) = self
            .granted(
                &agent,
                req.into_inner(),
                "/lifeboat.v1.AgentApi/LocateChunks",
            )
            .await?;
        let ctl = self.0.clone();
        let pacer = self.0.jobs.pacer(&job.policy);
        let ttl = self.0.store_url_ttl;
        let located = tokio::task::spawn_blocking(move || {
            let located = ctl.store.locate(&wanted, ttl)?;
            // The controller leaves the data path but keeps its pace: the URLs for these
            // bytes are handed out only when the policy's egress allows them.
            let bytes: u64 = located
                .iter()
                .flat_map(|l| &l.chunks)
                .map(|c| u64::from(c.length))
                .sum();
            if let Some(p) = &pacer {
                p.take(bytes);
            }
            ctl.restore_bytes_direct
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, ApiError>(located)
        })
        .await
        .map_err(ApiError::from)??
        .ok_or_else(|| {
            ApiError::FailedPrecondition(
                "the store is on the controller's disk: read chunks with GetChunks".into(),
            )
        })?;
        Ok(Response::new(pb::ChunkLocations {
            urls: located.urls,
            chunks: located
                .chunks
                .into_iter()
                .map(|c| pb::ChunkLocation {
                    id: c.id.as_bytes().to_vec(),
                    url: c.url,
                    offset: c.offset,
                    length: c.length,
                    key: c.key.map(|k| k.as_bytes().to_vec()).unwrap_or_default(),
                    unavailable: c.unavailable,
                })
                .collect(),
            expires_unix_ms: self.0.clock.now_ms() + ttl.as_millis() as i64,
        }))
    }

    async fn commit_snapshot(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitReply>, Status> {
        let agent = auth::agent(&req)?;
        let req = req.into_inner();
        let ctl = self.0.clone();
        let row = tokio::task::spawn_blocking(move || {
            snapshots::commit(&ctl, &agent, &req.job_id, req.record, req.signature)
        })
        .await
        .map_err(ApiError::from)??;
        tracing::info!(agent = %row.agent_name, source = %row.source, snapshot = %row.id, files = row.files, "snapshot committed");
        self.0.audit.ok(
            &format!("agent:{}", row.agent_name),
            "snapshot.commit",
            &row.id,
            serde_json::json!({ "source": row.source, "received_ms": row.received_ms, "files": row.files, "bytes": row.bytes }),
        );
        Ok(Response::new(pb::CommitReply {
            snapshot_id: row.id,
            received_unix_ms: row.received_ms,
        }))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewReply>, Status> {
        let agent = auth::agent(&req)?;
        let presented = req
            .extensions()
            .get::<lifeboat_proto::transport::PeerInfo>()
            .and_then(|p| match &p.peer {
                lifeboat_proto::transport::Peer::Agent { serial, .. } => Some(serial.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let cert_pem = access::renew(&self.0, &agent, &presented, &req.into_inner().csr_pem)?;
        Ok(Response::new(pb::RenewReply { cert_pem }))
    }
}

impl AgentService {
    /// The chunks a read asks for, and the restore job that grants them all (see
    /// [`snapshots::granted_read`]).
    async fn granted(
        &self,
        agent: &crate::catalog::AgentRow,
        req: pb::GetChunksRequest,
        rpc: &'static str,
    ) -> Result<(crate::catalog::JobRow, Vec<ChunkId>), Status> {
        let wanted = ids(&req.ids)?;
        let (ctl, agent, asked) = (self.0.clone(), agent.clone(), wanted.clone());
        let job = tokio::task::spawn_blocking(move || {
            snapshots::granted_read(&ctl, &agent, &req.job_id, &asked, rpc)
        })
        .await
        .map_err(ApiError::from)??;
        Ok((job, wanted))
    }
}
