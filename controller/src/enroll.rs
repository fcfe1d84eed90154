//! The enrollment service: the one call a machine makes before it has a certificate. It
//! maps the request to `access::join`, where the rules of joining live.

use std::sync::Arc;

use lifeboat_proto::pb::{self, enrollment_server::Enrollment};
use tonic::{Request, Response, Status};

use crate::Controller;
use crate::access::{self, JoinLimiter, JoinRequest};

pub struct EnrollService {
    ctl: Arc<Controller>,
    limiter: JoinLimiter,
}

impl EnrollService {
    pub fn new(ctl: Arc<Controller>) -> EnrollService {
        EnrollService {
            ctl,
            limiter: JoinLimiter::default(),
        }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = req
            .extensions()
            .get::<lifeboat_proto::transport::PeerInfo>();
        let remote = peer.map(|p| p.remote.to_string()).unwrap_or_default();
        let remote_ip = peer.map(|p| p.remote.ip().to_string()).unwrap_or_default();
        let req = req.into_inner();
        let joined = access::join(
            &self.ctl,
            &self.limiter,
            JoinRequest {
                token: req.token,
                name: req.name,
                hostname: req.hostname,
                labels: req.labels.into_iter().collect(),
                signing_public_key: req.signing_public_key,
                csr_pem: req.csr_pem,
                remote,
                remote_ip,
            },
        )?;
        // The agent keeps its certificate from here on: its row (and the token's use) must
        // survive a power cut as surely as the certificate does on the agent's disk.
        self.ctl
            .catalog
            .sync()
            .map_err(crate::error::ApiError::from)?;
        Ok(Response::new(pb::EnrollResponse {
            agent_id: joined.agent.id,
            name: joined.agent.name,
            cert_pem: joined.cert_pem,
            ca_pem: self.ctl.authority.trust().trusted_pem.clone(),
            chunk_key: self.ctl.chunk_key.as_bytes().to_vec(),
            controller_signing_key: self.ctl.signer_public_key.clone(),
        }))
    }
}
