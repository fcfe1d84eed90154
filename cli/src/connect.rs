//! The operator's connection to the controller: mTLS with the identity file, and gRPC
//! errors turned into the controller's own message.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lifeboat_core::identity::IdentityFile;
use lifeboat_proto::pb;
use lifeboat_proto::pb::operator_api_client::OperatorApiClient;
use lifeboat_proto::transport::{self, ClientTls};
use tonic::transport::Channel;

use crate::args::default_data_dir;

pub type Api = OperatorApiClient<Channel>;

/// Turns a gRPC status into an error carrying only the controller's message.
pub fn rpc(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub fn identity_path(cli_identity: Option<PathBuf>) -> PathBuf {
    cli_identity.unwrap_or_else(|| default_data_dir().join("admin.identity"))
}

/// The controller the operator talks to: `--controller`, or the identity file's.
pub fn controller_url(controller: Option<String>, identity: Option<PathBuf>) -> Result<String> {
    if let Some(url) = controller {
        return Ok(url);
    }
    let path = identity_path(identity);
    Ok(IdentityFile::load(&path)
        .with_context(|| format!("no usable operator identity at {}", path.display()))?
        .controller)
}

/// Connects as the operator named by the identity file.
pub async fn connect(controller: Option<String>, identity: Option<PathBuf>) -> Result<Api> {
    let path = identity_path(identity);
    let id = IdentityFile::load(&path).with_context(|| {
        format!(
            "no usable operator identity at {} (pass --identity FILE or set LIFEBOAT_IDENTITY)",
            path.display()
        )
    })?;
    let url = controller.unwrap_or(id.controller.clone());
    let tls = ClientTls::operator(&id.ca_pem, &id.cert_pem, &id.key_pem)?;
    let channel = transport::connect(&url, tls).await?;
    Ok(OperatorApiClient::new(channel))
}

/// Every audit entry from `since_ms` on, page by page.
pub async fn audit_entries(api: &mut Api, since_ms: i64) -> Result<Vec<pb::AuditEntry>> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .list_audit(pb::ListAuditRequest {
                since_unix_ms: since_ms,
                after_seq: after,
                limit: 5000,
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .entries;
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    Ok(all)
}
