//! Thin helpers over the generated agent client.

use lifeboat_core::ChunkId;
use lifeboat_proto::pb::{self, agent_api_client::AgentApiClient};
use tonic::transport::Channel;

use crate::AgentError;

pub type Client = AgentApiClient<Channel>;

pub fn client(channel: Channel) -> Client {
    let max = lifeboat_proto::MAX_MESSAGE_BYTES;
    AgentApiClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
}

/// The subset of `ids` the store lacks.
pub async fn missing(client: &mut Client, ids: &[ChunkId]) -> Result<Vec<ChunkId>, AgentError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let reply = client
        .missing_chunks(pb::ChunkIds {
            ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
        })
        .await?;
    reply
        .into_inner()
        .ids
        .iter()
        .map(|b| ChunkId::from_slice(b).map_err(AgentError::from))
        .collect()
}

/// Fetches blobs for `ids` under a restore job's grant, in order; a failed call's status
/// as it came, for the caller to judge (a break is worth waiting out).
pub async fn get(
    client: &mut Client,
    job_id: &str,
    ids: &[ChunkId],
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut stream = client
        .get_chunks(pb::GetChunksRequest {
            job_id: job_id.to_string(),
            ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
        })
        .await?
        .into_inner();
    let mut out = Vec::with_capacity(ids.len());
    while let Some(batch) = stream.message().await? {
        for msg in batch.chunks {
            let want = ids
                .get(out.len())
                .ok_or_else(|| tonic::Status::internal("controller sent more chunks than asked"))?;
            if msg.id != want.as_bytes() {
                return Err(tonic::Status::internal(format!(
                    "controller sent chunk out of order (wanted {want})"
                )));
            }
            out.push(Vec::from(msg.blob));
        }
    }
    if out.len() != ids.len() {
        return Err(tonic::Status::internal(format!(
            "controller sent {} of {} chunks",
            out.len(),
            ids.len()
        )));
    }
    Ok(out)
}
