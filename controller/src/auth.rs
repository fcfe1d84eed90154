//! Who may call what. The TLS handshake established the peer; here each RPC checks that
//! the peer is of the right kind and that its certificate is the one on record (a
//! replaced or unknown certificate is refused even though the CA signed it).

use lifeboat_proto::transport::{Peer, PeerInfo};
use tonic::Request;

use crate::Controller;
use crate::catalog::AgentRow;
use crate::error::ApiError;

fn peer<T>(req: &Request<T>) -> Result<&Peer, ApiError> {
    req.extensions()
        .get::<PeerInfo>()
        .map(|p| &p.peer)
        .ok_or_else(|| ApiError::Unauthenticated("connection carries no TLS identity".into()))
}

/// The calling agent, which must be enrolled with the certificate it presented.
pub fn agent<T>(ctl: &Controller, req: &Request<T>) -> Result<AgentRow, ApiError> {
    let Peer::Agent { id, serial } = peer(req)? else {
        return Err(ApiError::PermissionDenied(
            "this call is for agents only".into(),
        ));
    };
    let row = ctl
        .catalog
        .agent(id)?
        .ok_or_else(|| ApiError::PermissionDenied(format!("agent {id} is not enrolled")))?;
    if &row.cert_serial != serial {
        return Err(ApiError::PermissionDenied(format!(
            "agent {id} presented a certificate that is not its current one"
        )));
    }
    Ok(row)
}

/// The calling operator's name; the certificate must be the one recorded for it.
pub fn operator<T>(ctl: &Controller, req: &Request<T>) -> Result<String, ApiError> {
    let Peer::Operator { name, serial } = peer(req)? else {
        return Err(ApiError::PermissionDenied(
            "this call is for operators only; use an operator identity file".into(),
        ));
    };
    let ok = ctl
        .catalog
        .operator_serial(name)?
        .is_some_and(|s| &s == serial);
    if !ok {
        return Err(ApiError::PermissionDenied(format!(
            "operator {name:?} is unknown or its certificate was replaced"
        )));
    }
    Ok(name.clone())
}
