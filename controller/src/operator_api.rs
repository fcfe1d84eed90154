//! The operator-facing API behind the `lifeboat` CLI.
//!
//! One file because it is one trait impl (`OperatorApi`, 36 methods): each method
//! authorizes (`auth::operator`), maps the request to domain types, calls the domain
//! (`backups`, `restores`, `snapshots`, `policy`, `recovery`, `devices`, ...) and audits
//! what an operator did. Splitting it would add a forwarding layer, not separate concepts.
//! A method that grows a rule of its own moves the rule into its domain module.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lifeboat_core::restore::Mode;
use lifeboat_proto::pb::{self, operator_api_server::OperatorApi};
use tonic::{Request, Response, Status};

use crate::backups;
use crate::catalog::{AgentRow, OperatorRow, SnapshotRow};
use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::policy::{Applied, Consistency};
use crate::restores;
use crate::{Controller, access, auth, now_ms};

pub struct OperatorService(pub Arc<Controller>);

fn identity_info(o: OperatorRow) -> pb::IdentityInfo {
    pb::IdentityInfo {
        name: o.name,
        role: o.role,
        created_unix_ms: o.created_ms,
        expires_unix_ms: o.expires_ms,
        revoked_unix_ms: o.revoked_ms,
        created_by: o.created_by,
    }
}

fn approval_info(a: crate::catalog::ApprovalRow) -> pb::ApprovalInfo {
    pb::ApprovalInfo {
        id: a.id,
        action: a.action,
        target: a.target,
        requester: a.requester,
        created_unix_ms: a.created_ms,
        expires_unix_ms: a.expires_ms,
        state: a.state,
        decided_by: a.decided_by,
        decided_unix_ms: a.decided_ms,
    }
}

/// A snapshot as listings show it, with the copy stores that hold it whole, whether a
/// vendor vouches for it (images) and whether its ransomware signals made it suspect.
fn snapshot_info(ctl: &crate::Controller, s: SnapshotRow) -> Result<pb::SnapshotInfo, ApiError> {
    let catalog = &ctl.catalog;
    let trusted_by = crate::vendors::vouched_by(ctl, &s)?.unwrap_or_default();
    Ok(pb::SnapshotInfo {
        copies: catalog.copies_of(&s.id)?,
        suspect: catalog.anomaly(&s.id)?.is_some_and(|a| a.suspect),
        image_trusted: !trusted_by.is_empty(),
        trusted_by,
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
        quarantined_unix_ms: s.quarantined_ms,
        locked_until_unix_ms: s.locked_until_ms.max(0),
    })
}

fn vendor_key_info(k: crate::catalog::VendorKeyRow, added: bool) -> pb::VendorKeyInfo {
    pb::VendorKeyInfo {
        name: k.name,
        key: k.key,
        fingerprint: k.fingerprint,
        added_unix_ms: k.added_ms,
        digests: k.digests,
        added,
    }
}

impl OperatorService {
    fn agent_info(&self, a: AgentRow) -> pb::AgentInfo {
        // Heartbeats reach the catalog every few seconds; the newest may be in memory.
        let last_seen = self
            .0
            .jobs
            .last_seen(&a.id)
            .map_or(a.last_seen_ms, |m| m.max(a.last_seen_ms));
        pb::AgentInfo {
            connected: self.0.jobs.connected(&a.id),
            id: a.id,
            name: a.name,
            labels: a.labels.into_iter().collect(),
            hostname: a.hostname,
            last_seen_unix_ms: last_seen,
            enrolled_unix_ms: a.enrolled_ms,
            sources: a
                .sources
                .into_iter()
                .map(|(name, kind, path)| pb::Source { name, kind, path })
                .collect(),
            restore_roots: a.restore_roots,
            version: a.version,
            revoked_unix_ms: a.revoked_ms,
            cert_expires_unix_ms: a.cert_expires_ms,
            docker: a
                .docker
                .as_deref()
                .and_then(|b| prost::Message::decode(b).ok()),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl OperatorApi for OperatorService {
    type WatchJobStream = BoxStream<pb::JobInfo>;

    async fn status(&self, req: Request<pb::Empty>) -> Result<Response<pb::StatusReply>, Status> {
        let (operator, role) = auth::operator(&req)?;
        let (agents, snapshots, chunks, stored_bytes) = self.0.catalog.totals()?;
        Ok(Response::new(pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            ca_fingerprint: self.0.authority.trust().presented_fingerprint.clone(),
            operator,
            agents,
            snapshots,
            chunks,
            stored_bytes,
            role: role.as_str().into(),
            controller_signing_key: self.0.signer_public_key.clone(),
            workers: crate::workers::to_pb(&self.0.workers.states()),
            store: self.0.store.describe(),
            store_encrypted: self.0.store.is_encrypted(),
            store_object_lock: self.0.store.object_lock(),
            recovery_recipient: self.0.recovery_recipient.clone().unwrap_or_default(),
            ca_rotation_started_unix_ms: self.0.authority.trust().rotation_started_ms.unwrap_or(0),
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let (operator, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let new = access::create_token(
            &self.0,
            &operator,
            access::TokenRequest {
                labels: req.labels.into_iter().collect(),
                ttl_s: req.ttl_seconds,
                uses: req.uses,
                device: req.device,
            },
        )?;
        Ok(Response::new(pb::CreateTokenReply {
            token: new.token,
            expires_unix_ms: new.expires_ms,
            ca_fingerprint: self.0.authority.trust().presented_fingerprint.clone(),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::AgentList>, Status> {
        auth::operator(&req)?;
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
        auth::operator(&req)?;
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
            .map(|s| snapshot_info(&self.0, s))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::SnapshotList { snapshots }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::JobList>, Status> {
        auth::operator(&req)?;
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
        auth::operator(&req)?;
        let id = req.into_inner().id;
        let row = self.0.jobs.row(&id)?.ok_or_else(|| {
            ApiError::NotFound(format!("no job {id}; `lifeboat jobs` lists them"))
        })?;
        Ok(Response::new(self.0.jobs.info(&row)?))
    }

    async fn watch_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        auth::operator(&req)?;
        let id = req.into_inner().id;
        let row = self.0.jobs.row(&id)?.ok_or_else(|| {
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
        let (operator, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let agent = self.0.catalog.find_agent(&req.agent)?;
        let consistency = match req.consistency.as_str() {
            "" => None,
            word => Some(Consistency::parse(word).ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "--consistency {word:?} is not one of pause, hook, none"
                ))
            })?),
        };
        let sources = backups::SourceRequest {
            sources: req.sources,
            all_images: req.all_images,
            all_volumes: req.all_volumes,
        };
        let options = backups::Options {
            full_reread: req.full_reread,
            consistency,
            hook: req.hook.filter(|h| !h.container.is_empty()),
            bandwidth: 0,
        };
        let row = backups::for_operator(&self.0, &operator, &agent, &sources, options)?;
        Ok(Response::new(self.0.jobs.info(&row)?))
    }

    async fn start_restore(
        &self,
        req: Request<pb::StartRestoreRequest>,
    ) -> Result<Response<pb::JobInfo>, Status> {
        let (operator, role) = auth::operator(&req)?;
        let req = req.into_inner();
        let snap = self.0.catalog.find_snapshot(&req.snapshot)?;
        let agent = self.0.catalog.find_agent(&req.agent)?;
        let mode = Mode::parse(&req.mode).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let ask = restores::OperatorAsk {
            target: req.target,
            mode,
            delete_extra: req.delete_extra,
            volume: req.volume,
            stop_containers: req.stop_containers,
            keep_privileges: req.keep_privileges,
            force: req.force,
        };
        let row = restores::for_operator(&self.0, &operator, role, &snap, &agent, ask)?;
        Ok(Response::new(self.0.jobs.info(&row)?))
    }

    async fn create_identity(
        &self,
        req: Request<pb::CreateIdentityRequest>,
    ) -> Result<Response<pb::CreateIdentityReply>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let (cert_pem, validity) = access::create_identity(
            &self.0,
            &admin,
            &req.name,
            &req.role,
            req.ttl_seconds,
            &req.csr_pem,
        )?;
        Ok(Response::new(pb::CreateIdentityReply {
            cert_pem,
            ca_pem: self.0.authority.trust().trusted_pem.clone(),
            not_after_unix_ms: validity.not_after_ms(),
        }))
    }

    async fn renew_identity(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CreateIdentityReply>, Status> {
        let (name, _) = auth::operator(&req)?;
        let (cert_pem, validity) =
            access::rotation::renew_identity(&self.0, &name, &req.into_inner().csr_pem)?;
        Ok(Response::new(pb::CreateIdentityReply {
            cert_pem,
            ca_pem: self.0.authority.trust().trusted_pem.clone(),
            not_after_unix_ms: validity.not_after_ms(),
        }))
    }

    async fn ca_status(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::CaStatusReply>, Status> {
        auth::operator(&req)?;
        let ctl = self.0.clone();
        let reply = tokio::task::spawn_blocking(move || access::rotation::ca_status(&ctl))
            .await
            .map_err(ApiError::from)??;
        Ok(Response::new(reply))
    }

    async fn rotate_ca(
        &self,
        req: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::CaStatusReply>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let req = req.into_inner();
        // CA keys are made and files synced: off the async threads (tasks spawned from
        // a blocking thread still run on the runtime).
        let ctl = self.0.clone();
        let reply = tokio::task::spawn_blocking(move || {
            if req.finish {
                access::rotation::finish(&ctl, &admin, req.force)
            } else {
                access::rotation::start(&ctl, &admin)
            }
        })
        .await
        .map_err(ApiError::from)??;
        Ok(Response::new(reply))
    }

    async fn list_identities(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::IdentityList>, Status> {
        auth::operator(&req)?;
        let identities = self
            .0
            .catalog
            .operators()?
            .into_iter()
            .map(identity_info)
            .collect();
        Ok(Response::new(pb::IdentityList { identities }))
    }

    async fn revoke_identity(
        &self,
        req: Request<pb::NameRef>,
    ) -> Result<Response<pb::IdentityInfo>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let name = req.into_inner().name;
        let row = access::revoke_identity(&self.0, &admin, &name)?;
        Ok(Response::new(identity_info(row)))
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::NameRef>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let name = req.into_inner().name;
        let agent = self.0.catalog.find_agent(&name)?;
        let newly = self.0.catalog.revoke_agent(&agent.id, now_ms())?;
        // Close its session now; its running jobs become interrupted, and every call it
        // makes from here on is refused by the authorization layer.
        self.0.jobs.kick(&agent.id);
        if newly {
            self.0.audit.ok(
                &format!("operator:{admin}"),
                "agent.revoke",
                &agent.name,
                serde_json::json!({ "agent_id": agent.id, "serial": agent.cert_serial }),
            );
            tracing::warn!(agent = %agent.name, %admin, "agent revoked");
        }
        let agent = self.0.catalog.agent(&agent.id)?.unwrap_or(agent);
        Ok(Response::new(self.agent_info(agent)))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let snap = self.0.catalog.find_snapshot(&req.into_inner().id)?;
        // A locked snapshot is refused before anyone is asked to approve its deletion.
        if snap.locked_until_ms <= self.0.clock.now_ms() {
            crate::approvals::gate(&self.0, &admin, "snapshot.delete", &snap.id)?;
        }
        let ctl = self.0.clone();
        tokio::task::spawn_blocking(move || {
            crate::snapshots::delete(&ctl, &snap, &format!("operator:{admin}"))
        })
        .await
        .map_err(ApiError::from)??;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_approvals(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::ApprovalList>, Status> {
        auth::operator(&req)?;
        let approvals = self
            .0
            .catalog
            .approvals()?
            .into_iter()
            .map(approval_info)
            .collect();
        Ok(Response::new(pb::ApprovalList { approvals }))
    }

    async fn approve(
        &self,
        req: Request<pb::NameRef>,
    ) -> Result<Response<pb::ApprovalInfo>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let row = crate::approvals::decide(&self.0, &admin, &req.into_inner().name, true)?;
        Ok(Response::new(approval_info(row)))
    }

    async fn reject(
        &self,
        req: Request<pb::NameRef>,
    ) -> Result<Response<pb::ApprovalInfo>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let row = crate::approvals::decide(&self.0, &admin, &req.into_inner().name, false)?;
        Ok(Response::new(approval_info(row)))
    }

    async fn lock_snapshot(
        &self,
        req: Request<pb::LockSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        let (operator, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let snap = self.0.catalog.find_snapshot(&req.id)?;
        let ctl = self.0.clone();
        let snap = tokio::task::spawn_blocking(move || {
            crate::snapshots::extend_lock(
                &ctl,
                &snap,
                req.until_unix_ms,
                &format!("operator:{operator}"),
            )
        })
        .await
        .map_err(ApiError::from)??;
        Ok(Response::new(snapshot_info(&self.0, snap)?))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::AuditList>, Status> {
        auth::operator(&req)?;
        let req = req.into_inner();
        let limit = match req.limit {
            0 => 1000,
            n => n.min(10_000),
        };
        let entries = self
            .0
            .audit
            .list(req.since_unix_ms, req.after_seq, limit)?
            .into_iter()
            .map(|e| pb::AuditEntry {
                seq: e.seq,
                unix_ms: e.ts_ms,
                actor: e.actor,
                action: e.action,
                target: e.target,
                outcome: e.outcome,
                detail: e.detail,
            })
            .collect();
        Ok(Response::new(pb::AuditList { entries }))
    }

    async fn apply_policies(
        &self,
        req: Request<pb::ApplyPoliciesRequest>,
    ) -> Result<Response<pb::ApplyPoliciesReply>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let file = if req.file_name.is_empty() {
            "policy"
        } else {
            req.file_name.as_str()
        };
        let reply = match crate::policy::apply(
            &self.0,
            &format!("operator:{admin}"),
            file,
            &req.text,
            req.dry_run,
        )? {
            Applied::Changes(changes) => pb::ApplyPoliciesReply {
                changes: changes
                    .into_iter()
                    .map(|(name, change)| pb::PolicyChange {
                        name,
                        change: change.as_str().into(),
                    })
                    .collect(),
                errors: Vec::new(),
            },
            Applied::Invalid(errors) => pb::ApplyPoliciesReply {
                changes: Vec::new(),
                errors,
            },
        };
        Ok(Response::new(reply))
    }

    async fn list_policies(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::PolicyList>, Status> {
        auth::operator(&req)?;
        let policies = self
            .0
            .catalog
            .policies()?
            .into_iter()
            .map(|(name, spec_json, updated)| pb::PolicyInfo {
                name,
                spec_json,
                updated_unix_ms: updated,
            })
            .collect();
        Ok(Response::new(pb::PolicyList { policies }))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::NameRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let name = req.into_inner().name;
        if crate::policy::policies(&self.0)?
            .iter()
            .any(|p| p.name == name)
        {
            crate::approvals::gate(&self.0, &admin, "policy.delete", &name)?;
        }
        if !self.0.catalog.delete_policy(&name)? {
            return Err(ApiError::NotFound(format!(
                "no policy {name:?}; `lifeboat policy list` shows them"
            ))
            .into());
        }
        self.0.audit.ok(
            &format!("operator:{admin}"),
            "policy.delete",
            &name,
            serde_json::json!({}),
        );
        Ok(Response::new(pb::Empty {}))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneReply>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let dry_run = req.into_inner().dry_run;
        let ctl = self.0.clone();
        let actor = format!("operator:{admin}");
        let outcomes = tokio::task::spawn_blocking(move || {
            crate::anomalies::catch_up(&ctl, crate::retention::ANALYSIS_BUDGET)?;
            crate::retention::prune(&ctl, ctl.clock.now_ms(), dry_run, &actor)
        })
        .await
        .map_err(ApiError::from)??;
        Ok(Response::new(pb::PruneReply {
            dry_run,
            items: outcomes
                .into_iter()
                .map(|o| pb::PruneItem {
                    snapshot_id: o.id,
                    agent: o.agent,
                    source: o.source,
                    received_unix_ms: o.received_ms,
                    removed: o.removed,
                    reasons: o.reasons,
                })
                .collect(),
        }))
    }

    async fn protect_snapshot(
        &self,
        req: Request<pb::ProtectRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let snap = self.0.catalog.find_snapshot(&req.snapshot)?;
        self.0.catalog.set_protected(&snap.id, req.protect)?;
        self.0.audit.ok(
            &format!("operator:{admin}"),
            if req.protect {
                "snapshot.protect"
            } else {
                "snapshot.unprotect"
            },
            &snap.id,
            serde_json::json!({ "agent": snap.agent_name, "source": snap.source }),
        );
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_devices(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::DeviceList>, Status> {
        auth::operator(&req)?;
        let ctl = self.0.clone();
        let devices =
            tokio::task::spawn_blocking(move || crate::devices::devices(&ctl, ctl.clock.now_ms()))
                .await
                .map_err(ApiError::from)??;
        Ok(Response::new(pb::DeviceList { devices }))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        let (operator, _) = auth::operator(&req)?;
        let req = req.into_inner();
        if req.sample_percent > 100 {
            return Err(ApiError::InvalidArgument(format!(
                "a sample of {}% of the packs: give a percentage from 1 to 100",
                req.sample_percent
            ))
            .into());
        }
        let scope = if !req.snapshot.is_empty() {
            crate::scrub::Scope::Snapshot(req.snapshot)
        } else if req.sample_percent > 0 {
            crate::scrub::Scope::Sample(req.sample_percent)
        } else {
            crate::scrub::Scope::All
        };
        tracing::info!(%operator, ?scope, "verify requested");
        let ctl = self.0.clone();
        let period = self.0.scrub_period_ms;
        let report = tokio::task::spawn_blocking(move || crate::scrub::scrub(&ctl, scope, period))
            .await
            .map_err(ApiError::from)??;
        Ok(Response::new(crate::scrub::to_pb(&report)))
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcReply>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let below = if req.compact_below > 0.0 {
            req.compact_below.min(1.0)
        } else {
            0.5
        };
        tracing::info!(%admin, dry_run = req.dry_run, "gc requested");
        let ctl = self.0.clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::gc::gc(
                &ctl,
                ctl.clock.now_ms(),
                ctl.gc_lease_ms,
                below,
                req.dry_run,
            )
        })
        .await
        .map_err(ApiError::from)??;
        Ok(Response::new(pb::GcReply {
            referenced: r.referenced,
            swept: r.swept,
            leased: r.leased,
            packs_compacted: r.packs_compacted,
            packs_deleted: r.packs_deleted,
            bytes_reclaimed: r.bytes_reclaimed,
            dry_run: req.dry_run,
        }))
    }

    async fn diff_snapshots(
        &self,
        req: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffReply>, Status> {
        auth::operator(&req)?;
        let req = req.into_inner();
        let ctl = self.0.clone();
        let reply = tokio::task::spawn_blocking(move || crate::diff::diff(&ctl, &req.a, &req.b))
            .await
            .map_err(ApiError::from)??;
        Ok(Response::new(reply))
    }

    async fn snapshot_inventory(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::InventoryReply>, Status> {
        auth::operator(&req)?;
        let id = req.into_inner().id;
        let ctl = self.0.clone();
        let reply = tokio::task::spawn_blocking(move || {
            crate::inventory::of_snapshot(&ctl, &id).map(|s| crate::inventory::reply(&s))
        })
        .await
        .map_err(ApiError::from)??;
        Ok(Response::new(reply))
    }

    async fn import_advisories(
        &self,
        req: Request<pb::ImportAdvisoriesRequest>,
    ) -> Result<Response<pb::ImportAdvisoriesReply>, Status> {
        let (operator, _) = auth::operator(&req)?;
        let records = req.into_inner().records;
        let ctl = self.0.clone();
        let (counts, refused, advisories) = tokio::task::spawn_blocking(move || {
            let (counts, refused) = crate::vulns::import(&ctl, &records)?;
            Ok::<_, ApiError>((counts, refused, ctl.catalog.advisory_count()?))
        })
        .await
        .map_err(ApiError::from)??;
        self.0.audit.ok(
            &operator,
            "advisories.import",
            "feed",
            serde_json::json!({"new": counts.new, "updated": counts.updated, "unchanged": counts.unchanged, "refused": refused.len()}),
        );
        Ok(Response::new(pb::ImportAdvisoriesReply {
            new: counts.new,
            updated: counts.updated,
            unchanged: counts.unchanged,
            refused,
            advisories,
        }))
    }

    async fn list_findings(
        &self,
        req: Request<pb::FindingsRequest>,
    ) -> Result<Response<pb::FindingList>, Status> {
        auth::operator(&req)?;
        let req = req.into_inner();
        let scope = match (req.snapshot.is_empty(), req.device.is_empty(), req.all) {
            (false, true, false) => crate::vulns::Scope::Snapshot(req.snapshot),
            (true, false, false) => crate::vulns::Scope::Device(req.device),
            (true, true, true) => crate::vulns::Scope::All,
            _ => {
                return Err(ApiError::InvalidArgument(
                    "name one of: a snapshot, a device, or all devices".into(),
                )
                .into());
            }
        };
        let min = if req.min_severity.is_empty() {
            lifeboat_core::inventory::osv::Severity::Unknown
        } else {
            lifeboat_core::inventory::osv::Severity::parse(&req.min_severity).ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "severity {:?}: give low, medium, high or critical",
                    req.min_severity
                ))
            })?
        };
        let ctl = self.0.clone();
        let reply = tokio::task::spawn_blocking(move || crate::vulns::list(&ctl, scope, min))
            .await
            .map_err(ApiError::from)??;
        Ok(Response::new(reply))
    }

    async fn list_anomalies(
        &self,
        req: Request<pb::AnomaliesRequest>,
    ) -> Result<Response<pb::AnomalyList>, Status> {
        auth::operator(&req)?;
        let req = req.into_inner();
        let ctl = self.0.clone();
        let reply =
            tokio::task::spawn_blocking(move || crate::anomalies::list(&ctl, req.all, &req.device))
                .await
                .map_err(ApiError::from)??;
        Ok(Response::new(reply))
    }

    async fn dismiss_anomaly(
        &self,
        req: Request<pb::DismissAnomalyRequest>,
    ) -> Result<Response<pb::Anomaly>, Status> {
        let (admin, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let ctl = self.0.clone();
        let reply = tokio::task::spawn_blocking(move || {
            crate::anomalies::dismiss(&ctl, &admin, &req.snapshot_id, &req.note)
        })
        .await
        .map_err(ApiError::from)??;
        Ok(Response::new(reply))
    }

    async fn add_vendor_key(
        &self,
        req: Request<pb::VendorKeyRequest>,
    ) -> Result<Response<pb::VendorKeyInfo>, Status> {
        let (operator, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let (fingerprint, added) = crate::vendors::add_key(&self.0, &req.name, &req.key)?;
        if added {
            self.0.audit.ok(
                &format!("operator:{operator}"),
                "vendor.key_add",
                &req.name,
                serde_json::json!({ "fingerprint": fingerprint }),
            );
        }
        let row = self
            .0
            .catalog
            .vendor_keys()?
            .into_iter()
            .find(|k| k.name == req.name)
            .ok_or_else(|| ApiError::internal("the vendor key vanished"))?;
        Ok(Response::new(vendor_key_info(row, added)))
    }

    async fn import_trusted_digests(
        &self,
        req: Request<pb::TrustedDigestsRequest>,
    ) -> Result<Response<pb::TrustedDigestsReply>, Status> {
        let (operator, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let (vendor, listed, new) =
            crate::vendors::import_list(&self.0, &req.list, &req.signature)?;
        self.0.audit.ok(
            &format!("operator:{operator}"),
            "vendor.digests_import",
            &vendor,
            serde_json::json!({ "listed": listed, "new": new }),
        );
        Ok(Response::new(pb::TrustedDigestsReply {
            vendor,
            listed,
            new,
        }))
    }

    async fn list_vendor_keys(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::VendorKeyList>, Status> {
        auth::operator(&req)?;
        let keys = self
            .0
            .catalog
            .vendor_keys()?
            .into_iter()
            .map(|k| vendor_key_info(k, false))
            .collect();
        Ok(Response::new(pb::VendorKeyList { keys }))
    }

    async fn quarantine(
        &self,
        req: Request<pb::QuarantineRequest>,
    ) -> Result<Response<pb::QuarantineReply>, Status> {
        let (operator, role) = auth::operator(&req)?;
        let req = req.into_inner();
        let changed = crate::recovery::quarantine(
            &self.0,
            &operator,
            role,
            &req.agent,
            &req.selector,
            req.after_unix_ms,
            req.clear,
        )?;
        Ok(Response::new(pb::QuarantineReply {
            snapshots: changed
                .into_iter()
                .map(|s| snapshot_info(&self.0, s))
                .collect::<Result<_, _>>()?,
        }))
    }

    async fn run_drill(
        &self,
        req: Request<pb::DrillRequest>,
    ) -> Result<Response<pb::DrillList>, Status> {
        let (operator, _) = auth::operator(&req)?;
        let req = req.into_inner();
        let agents = crate::devices::select(&self.0, &req.agents, &req.selector)?;
        let ctl = self.0.clone();
        let rows = crate::recovery::drill::start(
            &ctl,
            &format!("operator:{operator}"),
            agents,
            req.sample,
            &req.probe,
            req.probe_timeout_seconds,
            "",
        )?;
        Ok(Response::new(pb::DrillList {
            drills: rows
                .into_iter()
                .map(|d| crate::recovery::drill::info(&self.0, d))
                .collect(),
        }))
    }

    async fn list_drills(
        &self,
        req: Request<pb::ListDrillsRequest>,
    ) -> Result<Response<pb::DrillList>, Status> {
        auth::operator(&req)?;
        let req = req.into_inner();
        let limit = if req.limit == 0 { 100 } else { req.limit };
        let rows = self.0.catalog.drills(limit, &req.ids)?;
        Ok(Response::new(pb::DrillList {
            drills: rows
                .into_iter()
                .map(|d| crate::recovery::drill::info(&self.0, d))
                .collect(),
        }))
    }

    async fn plan_recovery(
        &self,
        req: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanInfo>, Status> {
        let (operator, role) = auth::operator(&req)?;
        let req = req.into_inner();
        let ask = crate::recovery::plan::PlanAsk {
            agents: req.agents,
            selector: req.selector,
            before_ms: req.before_unix_ms,
            concurrency: req.concurrency,
            bandwidth: req.bandwidth_bytes_per_sec,
            target_map: req.target_map,
            mode: Mode::parse(&req.mode).map_err(|e| ApiError::InvalidArgument(e.to_string()))?,
            force: req.force,
            from_store: (!req.from_store.is_empty()).then_some(req.from_store),
            without: req
                .without
                .iter()
                .map(|w| w.trim().to_owned())
                .filter(|w| !w.is_empty())
                .collect(),
            max_severity: match req.max_severity.as_str() {
                "" => None,
                s => Some(
                    lifeboat_core::inventory::osv::Severity::parse(s).ok_or_else(|| {
                        ApiError::InvalidArgument(format!(
                            "--max-severity {s:?}: give low, medium or high"
                        ))
                    })?,
                ),
            },
        };
        let ctl = self.0.clone();
        let plan = tokio::task::spawn_blocking(move || {
            crate::recovery::plan::create(&ctl, &operator, role, ask)
        })
        .await
        .map_err(ApiError::from)??;
        Ok(Response::new(plan.to_wire()))
    }

    async fn run_plan(&self, req: Request<pb::NameRef>) -> Result<Response<pb::PlanInfo>, Status> {
        let (operator, _) = auth::operator(&req)?;
        let plan = crate::recovery::runner::start(&self.0, &operator, &req.into_inner().name)?;
        Ok(Response::new(plan.to_wire()))
    }

    async fn get_plan(&self, req: Request<pb::NameRef>) -> Result<Response<pb::PlanInfo>, Status> {
        auth::operator(&req)?;
        let plan = crate::recovery::plan::load(&self.0, &req.into_inner().name)?;
        Ok(Response::new(plan.to_wire()))
    }

    async fn list_plans(&self, req: Request<pb::Empty>) -> Result<Response<pb::PlanList>, Status> {
        auth::operator(&req)?;
        let mut plans = Vec::new();
        for (id, _) in self.0.catalog.plans()? {
            let mut p = crate::recovery::plan::load(&self.0, &id)?;
            // The list shows plans, not every device's progress.
            for d in &mut p.devices {
                for s in &mut d.sources {
                    s.result = None;
                    s.progress = None;
                }
            }
            plans.push(p.to_wire());
        }
        Ok(Response::new(pb::PlanList { plans }))
    }

    async fn verify_audit(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::AuditVerification>, Status> {
        auth::operator(&req)?;
        let ctl = self.0.clone();
        let v = tokio::task::spawn_blocking(move || ctl.audit.verify())
            .await
            .map_err(ApiError::from)??;
        Ok(Response::new(pb::AuditVerification {
            ok: v.ok(),
            entries: v.entries,
            broken_seq: v.broken_seq.unwrap_or(0),
            reason: v.reason,
            anchor_seq: v.anchor_seq,
        }))
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
