//! Who may call what.
//!
//! Every gRPC call passes through [`Authorize`], a tower layer in front of all services. It
//! resolves the caller (the TLS handshake established the certificate; the catalog says
//! whether that certificate is still the caller's current, unrevoked one), looks the method
//! up in [`POLICY`], and either attaches the [`Principal`] to the request or answers with a
//! denial (`PERMISSION_DENIED`, message starting with `denied: `), which is recorded in the
//! audit log. A method missing from `POLICY` is denied to
//! everyone: a new RPC stays closed until someone writes down who may call it.

use std::sync::Arc;
use std::task::{Context, Poll};

use lifeboat_proto::transport::{Peer, PeerInfo};
use tonic::Request;
use tonic::body::Body;
use tonic::codegen::http;

use crate::Controller;
use crate::catalog::AgentRow;
use crate::error::ApiError;

/// An operator identity's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Runs backups, restores, drills and recovery plans; quarantines snapshots.
    Operator,
    /// Also tokens, identities, deletion and revocation.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, ApiError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(ApiError::InvalidArgument(format!(
                "role {other:?} is not one of viewer, operator, admin"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Connected to the enrollment name without a certificate.
    Enrolling,
    Agent(Box<AgentRow>),
    Operator {
        name: String,
        role: Role,
    },
}

impl Principal {
    fn class(&self) -> Class {
        match self {
            Principal::Enrolling => Class::Enrolling,
            Principal::Agent(_) => Class::Agent,
            Principal::Operator { role, .. } => match role {
                Role::Viewer => Class::Viewer,
                Role::Operator => Class::Operator,
                Role::Admin => Class::Admin,
            },
        }
    }

    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        match self {
            Principal::Enrolling => "enrolling".into(),
            Principal::Agent(a) => format!("agent:{}", a.name),
            Principal::Operator { name, .. } => format!("operator:{name}"),
        }
    }
}

/// The caller classes an allow list names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Enrolling,
    Agent,
    Viewer,
    Operator,
    Admin,
}

const AGENT: &[Class] = &[Class::Agent];
const READERS: &[Class] = &[Class::Viewer, Class::Operator, Class::Admin];
const OPERATORS: &[Class] = &[Class::Operator, Class::Admin];
const ADMINS: &[Class] = &[Class::Admin];

/// Every RPC and who may call it. Anything not listed is denied.
pub const POLICY: &[(&str, &[Class])] = &[
    ("/lifeboat.v1.Enrollment/Enroll", &[Class::Enrolling]),
    ("/lifeboat.v1.AgentApi/Session", AGENT),
    ("/lifeboat.v1.AgentApi/MissingChunks", AGENT),
    ("/lifeboat.v1.AgentApi/PutChunks", AGENT),
    // Further limited to what a running restore job of the caller grants.
    ("/lifeboat.v1.AgentApi/GetChunks", AGENT),
    ("/lifeboat.v1.AgentApi/LocateChunks", AGENT),
    // Further limited to the caller's own backup job and id.
    ("/lifeboat.v1.AgentApi/CommitSnapshot", AGENT),
    ("/lifeboat.v1.AgentApi/RenewCertificate", AGENT),
    ("/lifeboat.v1.OperatorApi/Status", READERS),
    ("/lifeboat.v1.OperatorApi/ListAgents", READERS),
    ("/lifeboat.v1.OperatorApi/ListSnapshots", READERS),
    ("/lifeboat.v1.OperatorApi/ListJobs", READERS),
    ("/lifeboat.v1.OperatorApi/GetJob", READERS),
    ("/lifeboat.v1.OperatorApi/WatchJob", READERS),
    ("/lifeboat.v1.OperatorApi/ListIdentities", READERS),
    // Only the caller's own identity.
    ("/lifeboat.v1.OperatorApi/RenewIdentity", READERS),
    ("/lifeboat.v1.OperatorApi/CaStatus", READERS),
    ("/lifeboat.v1.OperatorApi/ListAudit", READERS),
    ("/lifeboat.v1.OperatorApi/VerifyAudit", READERS),
    ("/lifeboat.v1.OperatorApi/ListPolicies", READERS),
    ("/lifeboat.v1.OperatorApi/ListDevices", READERS),
    ("/lifeboat.v1.OperatorApi/DiffSnapshots", READERS),
    ("/lifeboat.v1.OperatorApi/SnapshotInventory", READERS),
    ("/lifeboat.v1.OperatorApi/ImportAdvisories", OPERATORS),
    ("/lifeboat.v1.OperatorApi/ListFindings", READERS),
    ("/lifeboat.v1.OperatorApi/ListAnomalies", READERS),
    ("/lifeboat.v1.OperatorApi/DismissAnomaly", ADMINS),
    ("/lifeboat.v1.OperatorApi/AddVendorKey", ADMINS),
    ("/lifeboat.v1.OperatorApi/ImportTrustedDigests", ADMINS),
    ("/lifeboat.v1.OperatorApi/ListVendorKeys", READERS),
    ("/lifeboat.v1.OperatorApi/ListDrills", READERS),
    ("/lifeboat.v1.OperatorApi/GetPlan", READERS),
    ("/lifeboat.v1.OperatorApi/ListPlans", READERS),
    ("/lifeboat.v1.OperatorApi/StartBackup", OPERATORS),
    ("/lifeboat.v1.OperatorApi/StartRestore", OPERATORS),
    ("/lifeboat.v1.OperatorApi/Verify", OPERATORS),
    // Marking snapshots suspect is for operators in an incident; lifting it is an admin's
    // (checked in the handler), as is restoring or planning from quarantined snapshots.
    ("/lifeboat.v1.OperatorApi/Quarantine", OPERATORS),
    ("/lifeboat.v1.OperatorApi/RunDrill", OPERATORS),
    ("/lifeboat.v1.OperatorApi/PlanRecovery", OPERATORS),
    ("/lifeboat.v1.OperatorApi/RunPlan", OPERATORS),
    // Extending a lock only protects; nobody can shorten one.
    ("/lifeboat.v1.OperatorApi/LockSnapshot", OPERATORS),
    ("/lifeboat.v1.OperatorApi/CreateToken", ADMINS),
    ("/lifeboat.v1.OperatorApi/CreateIdentity", ADMINS),
    ("/lifeboat.v1.OperatorApi/RevokeIdentity", ADMINS),
    ("/lifeboat.v1.OperatorApi/RotateCa", ADMINS),
    ("/lifeboat.v1.OperatorApi/RevokeAgent", ADMINS),
    ("/lifeboat.v1.OperatorApi/DeleteSnapshot", ADMINS),
    ("/lifeboat.v1.OperatorApi/ApplyPolicies", ADMINS),
    ("/lifeboat.v1.OperatorApi/DeletePolicy", ADMINS),
    ("/lifeboat.v1.OperatorApi/Prune", ADMINS),
    ("/lifeboat.v1.OperatorApi/Gc", ADMINS),
    ("/lifeboat.v1.OperatorApi/ProtectSnapshot", ADMINS),
    ("/lifeboat.v1.OperatorApi/ListApprovals", ADMINS),
    // Further limited to an admin other than the requester.
    ("/lifeboat.v1.OperatorApi/Approve", ADMINS),
    ("/lifeboat.v1.OperatorApi/Reject", ADMINS),
];

fn allowed(path: &str, class: Class) -> bool {
    POLICY
        .iter()
        .any(|(p, classes)| *p == path && classes.contains(&class))
}

/// Resolves the caller behind a verified certificate against the catalog.
pub(crate) fn resolve(ctl: &Controller, peer: &Peer) -> Result<Principal, ApiError> {
    match peer {
        Peer::Enrolling => Ok(Principal::Enrolling),
        Peer::Agent { id, serial } => {
            let row = ctl
                .catalog
                .agent(id)?
                .ok_or_else(|| ApiError::PermissionDenied(format!("agent {id} is not enrolled")))?;
            if row.revoked_ms != 0 {
                return Err(ApiError::PermissionDenied(format!(
                    "agent {} was revoked; enroll the machine again with a new token once it is trusted",
                    row.name
                )));
            }
            if &row.cert_serial == serial {
                if !row.prev_serial.is_empty() {
                    // The renewed certificate is in use: the previous one is retired.
                    ctl.catalog.retire_prev_serial(id)?;
                }
                Ok(Principal::Agent(Box::new(row)))
            } else if !row.prev_serial.is_empty() && &row.prev_serial == serial {
                // Renewed, but this connection still carries the previous certificate.
                Ok(Principal::Agent(Box::new(row)))
            } else {
                Err(ApiError::PermissionDenied(format!(
                    "agent {} presented a certificate that is not its current one",
                    row.name
                )))
            }
        }
        Peer::Operator { name, serial } => {
            let row = ctl.catalog.operator(name)?.ok_or_else(|| {
                ApiError::PermissionDenied(format!("operator {name:?} is unknown"))
            })?;
            if row.revoked_ms != 0 {
                return Err(ApiError::PermissionDenied(format!(
                    "operator identity {name:?} was revoked; ask an admin for a new one"
                )));
            }
            if &row.cert_serial != serial {
                return Err(ApiError::PermissionDenied(format!(
                    "operator {name:?} presented a certificate that was replaced; use the newest identity file"
                )));
            }
            Ok(Principal::Operator {
                name: name.clone(),
                role: Role::parse(&row.role)?,
            })
        }
    }
}

/// Decides one call: the principal to attach, or the status to answer with.
fn decide(
    ctl: &Controller,
    path: &str,
    peer: Option<&PeerInfo>,
) -> Result<Principal, tonic::Status> {
    let Some(info) = peer else {
        return Err(ApiError::Unauthenticated(
            "denied: the connection carries no TLS identity".into(),
        )
        .into());
    };
    let principal = match resolve(ctl, &info.peer) {
        Ok(p) => p,
        Err(e) => {
            let e = match e {
                ApiError::PermissionDenied(m) => ApiError::PermissionDenied(format!("denied: {m}")),
                other => other,
            };
            let actor = match &info.peer {
                Peer::Enrolling => "enrolling".to_string(),
                Peer::Agent { id, .. } => format!("agent-id:{id}"),
                Peer::Operator { name, .. } => format!("operator:{name}"),
            };
            // A certificate the catalog does not honour (unknown, revoked, replaced) is
            // no identity: its denials share the anonymous budget of its address.
            ctl.audit.denied_anonymous(
                &actor,
                &actor,
                path,
                &info.remote.to_string(),
                &e.to_string(),
            );
            return Err(e.into());
        }
    };
    if allowed(path, principal.class()) {
        return Ok(principal);
    }
    let why = if POLICY.iter().any(|(p, _)| *p == path) {
        let role = match &principal {
            Principal::Operator { role, .. } => format!(" (role {})", role.as_str()),
            _ => String::new(),
        };
        format!("denied: {}{role} may not call {path}", principal.actor())
    } else {
        format!("denied: {path} is not an API method")
    };
    let remote = info.remote.to_string();
    match principal {
        Principal::Enrolling => ctl.audit.denied_anonymous(
            &info.remote.ip().to_string(),
            &principal.actor(),
            path,
            &remote,
            &why,
        ),
        Principal::Agent(_) | Principal::Operator { .. } => {
            ctl.audit.denied(&principal.actor(), path, &remote, &why)
        }
    }
    Err(ApiError::PermissionDenied(why).into())
}

/// The tower layer that puts [`Authorize`] in front of every service.
#[derive(Clone)]
pub struct AuthorizeLayer(pub Arc<Controller>);

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            ctl: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    ctl: Arc<Controller>,
}

impl<S> tower::Service<http::Request<Body>> for Authorize<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let decision = decide(
            &self.ctl,
            req.uri().path(),
            req.extensions().get::<PeerInfo>(),
        );
        match decision {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Box::pin(self.inner.call(req))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

fn principal<T>(req: &Request<T>) -> Result<&Principal, ApiError> {
    req.extensions()
        .get::<Principal>()
        .ok_or_else(|| ApiError::internal("request was not authorized (no principal)"))
}

/// The calling agent (the layer has checked its certificate and the allow list).
pub fn agent<T>(req: &Request<T>) -> Result<AgentRow, ApiError> {
    match principal(req)? {
        Principal::Agent(row) => Ok((**row).clone()),
        _ => Err(ApiError::PermissionDenied(
            "this call is for agents only".into(),
        )),
    }
}

/// The calling operator's name and role.
pub fn operator<T>(req: &Request<T>) -> Result<(String, Role), ApiError> {
    match principal(req)? {
        Principal::Operator { name, role } => Ok((name.clone(), *role)),
        _ => Err(ApiError::PermissionDenied(
            "this call is for operators only; use an operator identity file".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `rpc` in the proto file has an allow list, and every allow list names an rpc.
    #[test]
    fn policy_covers_exactly_the_api() {
        let proto = include_str!("../../proto/proto/lifeboat.proto");
        let mut service = "";
        let mut methods = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or("");
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap_or("").trim();
                methods.push(format!("/lifeboat.v1.{service}/{name}"));
            }
        }
        let mut listed: Vec<String> = POLICY.iter().map(|(p, _)| p.to_string()).collect();
        methods.sort();
        listed.sort();
        assert_eq!(methods, listed);
    }

    #[test]
    fn roles_are_ordered_by_what_they_may_do() {
        for (path, classes) in POLICY {
            if classes.contains(&Class::Viewer) {
                assert!(classes.contains(&Class::Operator), "{path}");
            }
            if classes.contains(&Class::Operator) {
                assert!(classes.contains(&Class::Admin), "{path}");
            }
            // Agents and operators never share a method.
            assert!(
                !(classes.contains(&Class::Agent) && classes.contains(&Class::Admin)),
                "{path}"
            );
        }
    }
}
