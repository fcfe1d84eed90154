//! Trust: the authorization matrix, append-only agents, grants, revocation, renewal,
//! countersigned history and the audit chain, against a real controller and real agents.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use lifeboat_core::identity::IdentityFile;
use lifeboat_core::pki::{self, Ca, Validity};
use lifeboat_core::sign::SigningKey;
use lifeboat_core::snapshot::{Record, Stats, TreeRef};
use lifeboat_core::{ChunkKey, codec};
use lifeboat_proto::pb::{
    self, agent_api_client::AgentApiClient, operator_api_client::OperatorApiClient,
};
use lifeboat_proto::transport::{self, ClientTls};
use lifeboat_tests::{Fleet, agent_tls, wait_for};
use serde_json::Value;
use tonic::transport::Channel;

/// The caller classes of the matrix, and the RPCs each may call.
const AGENT_RPCS: &[&str] = &[
    "Session",
    "MissingChunks",
    "PutChunks",
    "GetChunks",
    "LocateChunks",
    "CommitSnapshot",
    "RenewCertificate",
];
const READ_RPCS: &[&str] = &[
    "Status",
    "ListAgents",
    "ListSnapshots",
    "ListJobs",
    "GetJob",
    "WatchJob",
    "ListIdentities",
    "ListAudit",
    "VerifyAudit",
    "ListPolicies",
    "ListDevices",
    "DiffSnapshots",
    "SnapshotInventory",
    "ListFindings",
    "ListAnomalies",
    "ListVendorKeys",
    "ListDrills",
    "GetPlan",
    "ListPlans",
    "RenewIdentity",
    "CaStatus",
];
const OPERATE_RPCS: &[&str] = &[
    "StartBackup",
    "StartRestore",
    "Verify",
    "Quarantine",
    "RunDrill",
    "PlanRecovery",
    "RunPlan",
    "LockSnapshot",
    "ImportAdvisories",
];
const ADMIN_RPCS: &[&str] = &[
    "CreateToken",
    "CreateIdentity",
    "RevokeIdentity",
    "RevokeAgent",
    "DeleteSnapshot",
    "ApplyPolicies",
    "DeletePolicy",
    "Prune",
    "ProtectSnapshot",
    "Gc",
    "ListApprovals",
    "Approve",
    "Reject",
    "AddVendorKey",
    "ImportTrustedDigests",
    "RotateCa",
    "DismissAnomaly",
];

fn all_rpcs() -> Vec<&'static str> {
    let mut v = vec!["Enroll"];
    v.extend(AGENT_RPCS);
    v.extend(READ_RPCS);
    v.extend(OPERATE_RPCS);
    v.extend(ADMIN_RPCS);
    v
}

/// Every RPC the proto file declares, by name.
fn proto_rpcs() -> BTreeSet<String> {
    include_str!("../../proto/proto/lifeboat.proto")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(|name| name.trim().to_string())
        .collect()
}

fn path_of(rpc: &str) -> String {
    let service = if rpc == "Enroll" {
        "Enrollment"
    } else if AGENT_RPCS.contains(&rpc) {
        "AgentApi"
    } else {
        "OperatorApi"
    };
    format!("/lifeboat.v1.{service}/{rpc}")
}

/// Calls `rpc` with an empty request; `Ok(())` unless the authorization layer denied it.
async fn call(channel: &Channel, rpc: &str) -> Result<(), tonic::Status> {
    let mut op = OperatorApiClient::new(channel.clone());
    let mut ag = AgentApiClient::new(channel.clone());
    let mut en = pb::enrollment_client::EnrollmentClient::new(channel.clone());
    let res: Result<(), tonic::Status> = match rpc {
        "Enroll" => en.enroll(pb::EnrollRequest::default()).await.map(drop),
        "Session" => ag
            .session(tokio_stream::iter(Vec::<pb::AgentMessage>::new()))
            .await
            .map(drop),
        "MissingChunks" => ag.missing_chunks(pb::ChunkIds::default()).await.map(drop),
        "PutChunks" => ag
            .put_chunks(tokio_stream::iter(Vec::<pb::ChunkBatch>::new()))
            .await
            .map(drop),
        "GetChunks" => ag
            .get_chunks(pb::GetChunksRequest::default())
            .await
            .map(drop),
        "LocateChunks" => ag
            .locate_chunks(pb::GetChunksRequest::default())
            .await
            .map(drop),
        "CommitSnapshot" => ag
            .commit_snapshot(pb::CommitRequest::default())
            .await
            .map(drop),
        "RenewCertificate" => ag
            .renew_certificate(pb::RenewRequest::default())
            .await
            .map(drop),
        "Status" => op.status(pb::Empty {}).await.map(drop),
        "ListAgents" => op.list_agents(pb::Empty {}).await.map(drop),
        "ListSnapshots" => op
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .map(drop),
        "ListJobs" => op.list_jobs(pb::ListJobsRequest::default()).await.map(drop),
        "GetJob" => op.get_job(pb::JobRef::default()).await.map(drop),
        "WatchJob" => op.watch_job(pb::JobRef::default()).await.map(drop),
        "ListIdentities" => op.list_identities(pb::Empty {}).await.map(drop),
        "ListAudit" => op
            .list_audit(pb::ListAuditRequest::default())
            .await
            .map(drop),
        "VerifyAudit" => op.verify_audit(pb::Empty {}).await.map(drop),
        "StartBackup" => op
            .start_backup(pb::StartBackupRequest::default())
            .await
            .map(drop),
        "StartRestore" => op
            .start_restore(pb::StartRestoreRequest::default())
            .await
            .map(drop),
        "CreateToken" => op
            .create_token(pb::CreateTokenRequest::default())
            .await
            .map(drop),
        "CreateIdentity" => op
            .create_identity(pb::CreateIdentityRequest::default())
            .await
            .map(drop),
        "RevokeIdentity" => op.revoke_identity(pb::NameRef::default()).await.map(drop),
        // An empty CSR: refused by the handler, after authorization.
        "RenewIdentity" => op
            .renew_identity(pb::RenewRequest::default())
            .await
            .map(drop),
        "CaStatus" => op.ca_status(pb::Empty {}).await.map(drop),
        // Finishing when no rotation is under way: refused by the handler, changing nothing.
        "RotateCa" => op
            .rotate_ca(pb::RotateCaRequest {
                finish: true,
                force: false,
            })
            .await
            .map(drop),
        "RevokeAgent" => op.revoke_agent(pb::NameRef::default()).await.map(drop),
        "DeleteSnapshot" => op
            .delete_snapshot(pb::SnapshotRef::default())
            .await
            .map(drop),
        "ListPolicies" => op.list_policies(pb::Empty {}).await.map(drop),
        "Verify" => op.verify(pb::VerifyRequest::default()).await.map(drop),
        // A dry run: the matrix must not reclaim anything.
        "Gc" => op
            .gc(pb::GcRequest {
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        "ListDevices" => op.list_devices(pb::Empty {}).await.map(drop),
        "DiffSnapshots" => op
            .diff_snapshots(pb::DiffRequest::default())
            .await
            .map(drop),
        "SnapshotInventory" => op
            .snapshot_inventory(pb::SnapshotRef::default())
            .await
            .map(drop),
        "ListFindings" => op
            .list_findings(pb::FindingsRequest::default())
            .await
            .map(drop),
        "ListAnomalies" => op
            .list_anomalies(pb::AnomaliesRequest::default())
            .await
            .map(drop),
        "ListVendorKeys" => op.list_vendor_keys(pb::Empty {}).await.map(drop),
        // No snapshot named: past authorization, nothing is dismissed.
        "DismissAnomaly" => op
            .dismiss_anomaly(pb::DismissAnomalyRequest::default())
            .await
            .map(drop),
        // Invalid on purpose: the matrix must not add a key or trust a digest.
        "AddVendorKey" => op
            .add_vendor_key(pb::VendorKeyRequest::default())
            .await
            .map(drop),
        "ImportTrustedDigests" => op
            .import_trusted_digests(pb::TrustedDigestsRequest::default())
            .await
            .map(drop),
        // Nothing to import: the matrix must not change the feed.
        "ImportAdvisories" => op
            .import_advisories(pb::ImportAdvisoriesRequest::default())
            .await
            .map(drop),
        "ApplyPolicies" => op
            .apply_policies(pb::ApplyPoliciesRequest::default())
            .await
            .map(drop),
        "DeletePolicy" => op.delete_policy(pb::NameRef::default()).await.map(drop),
        // A dry run: the matrix must not delete anything.
        "Prune" => op.prune(pb::PruneRequest { dry_run: true }).await.map(drop),
        "ProtectSnapshot" => op
            .protect_snapshot(pb::ProtectRequest::default())
            .await
            .map(drop),
        "LockSnapshot" => op
            .lock_snapshot(pb::LockSnapshotRequest::default())
            .await
            .map(drop),
        // Named devices that do not exist: past authorization, nothing happens.
        "Quarantine" => op
            .quarantine(pb::QuarantineRequest {
                agent: "nobody".into(),
                after_unix_ms: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        "RunDrill" => op
            .run_drill(pb::DrillRequest {
                agents: vec!["nobody".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        "ListDrills" => op
            .list_drills(pb::ListDrillsRequest::default())
            .await
            .map(drop),
        "PlanRecovery" => op
            .plan_recovery(pb::PlanRequest {
                agents: vec!["nobody".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        "RunPlan" => op.run_plan(pb::NameRef::default()).await.map(drop),
        "GetPlan" => op.get_plan(pb::NameRef::default()).await.map(drop),
        "ListPlans" => op.list_plans(pb::Empty {}).await.map(drop),
        "ListApprovals" => op.list_approvals(pb::Empty {}).await.map(drop),
        "Approve" => op.approve(pb::NameRef::default()).await.map(drop),
        "Reject" => op.reject(pb::NameRef::default()).await.map(drop),
        other => panic!("no such rpc {other}"),
    };
    match res {
        Err(s) if s.message().starts_with("denied: ") => Err(s),
        _ => Ok(()),
    }
}

fn identity_tls(path: &Path) -> ClientTls {
    let id = IdentityFile::load(path).expect("identity");
    ClientTls::with_identity(&id.ca_pem, &id.cert_pem, &id.key_pem).expect("tls")
}

fn audit(fleet: &Fleet) -> Vec<Value> {
    fleet
        .cli_json(&["audit"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Starts a fleet with viewer and operator identities and agents `a` (running, with a
/// source) and `gone` (enrolled, then revoked).
fn fleet_with_roles() -> (Fleet, tempfile::TempDir) {
    let mut fleet = Fleet::start();
    for role in ["viewer", "operator"] {
        let out = fleet.cli(&[
            "identity",
            "create",
            role,
            "--role",
            role,
            "--out",
            fleet
                .path(&format!("{role}.identity"))
                .to_str()
                .expect("path"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let src = tempfile::tempdir().expect("src");
    fs::write(src.path().join("hello.txt"), b"hello from a").expect("write");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    fleet.enroll("gone");
    let out = fleet.cli(&["agents", "revoke", "gone"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (fleet, src)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_allows_exactly_its_callers_and_audits_every_denial() {
    transport::install_crypto_provider();
    let (fleet, _src) = tokio::task::spawn_blocking(fleet_with_roles)
        .await
        .expect("fleet");
    let admin = IdentityFile::load(&fleet.identity).expect("admin");
    // The matrix covers the whole proto: an RPC added without a row here fails.
    let covered: BTreeSet<String> = all_rpcs().into_iter().map(String::from).collect();
    assert_eq!(
        covered,
        proto_rpcs(),
        "the matrix and the proto's RPCs differ"
    );

    // Credentials that never get past the handshake.
    let other_ca = Ca::generate().expect("ca");
    let (foreign, _) = other_ca
        .issue_client("operator:admin", Validity::from_now(pki::days(1)))
        .expect("foreign cert");
    let fleet_ca = Ca::load(
        &fs::read_to_string(fleet.path("ctl/ca.crt")).expect("ca.crt"),
        &fs::read_to_string(fleet.path("ctl/ca.key")).expect("ca.key"),
    )
    .expect("fleet ca");
    let past = time::OffsetDateTime::now_utc();
    let (expired, _) = fleet_ca
        .issue_client(
            "operator:admin",
            Validity {
                not_before: past - time::Duration::days(2),
                not_after: past - time::Duration::days(1),
            },
        )
        .expect("expired cert");
    let mut no_cert = rustls::ClientConfig::builder()
        .with_root_certificates({
            let mut r = rustls::RootCertStore::empty();
            r.add(pki::cert_der(&admin.ca_pem).expect("ca"))
                .expect("root");
            r
        })
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    let refused_at_handshake = [
        (
            "no certificate",
            ClientTls::from_config(no_cert, pki::CONTROLLER_NAME),
        ),
        (
            "certificate from another CA",
            ClientTls::with_identity(&admin.ca_pem, &foreign.cert_pem, &foreign.key_pem)
                .expect("tls"),
        ),
        (
            "expired certificate",
            ClientTls::with_identity(&admin.ca_pem, &expired.cert_pem, &expired.key_pem)
                .expect("tls"),
        ),
    ];
    let audited_before = audit(&fleet).len();
    for (who, tls) in refused_at_handshake {
        // TLS 1.3 may report the server's refusal only with the first response. The API
        // answers a status call at once; a call still unanswered after 20 s (the client's
        // channel retrying a connection the server keeps refusing, seen once in 270 runs)
        // never reached it either, and the audit check below shows the refusal.
        let outcome = match transport::connect(&fleet.url, tls).await {
            Err(_) => None,
            Ok(ch) => tokio::time::timeout(
                Duration::from_secs(20),
                OperatorApiClient::new(ch).status(pb::Empty {}),
            )
            .await
            .ok(),
        };
        if let Some(res) = outcome {
            let status = res.expect_err(who);
            assert!(
                !matches!(
                    status.code(),
                    tonic::Code::Ok | tonic::Code::PermissionDenied
                ),
                "{who}: reached the API: {status:?}"
            );
        }
    }
    // Each refusal is in the audit log with its reason (a client may retry the handshake,
    // so count kinds, not entries).
    for reason in ["no certificates", "UnknownIssuer", "expired"] {
        wait_for(
            &format!("a handshake refusal for {reason:?} in the audit log"),
            Duration::from_secs(10),
            || {
                audit(&fleet)[audited_before..]
                    .iter()
                    .any(|e| {
                        e["target"] == "tls.handshake"
                            && e["outcome"] == "denied"
                            && e["detail"]["reason"]
                                .as_str()
                                .unwrap_or_default()
                                .to_lowercase()
                                .contains(&reason.to_lowercase())
                    })
                    .then_some(())
            },
        );
    }

    // Authenticated callers: exactly their allow list.
    let enrolling = ClientTls::enrollment(&fleet.fingerprint).expect("enrolling");
    let classes: Vec<(&str, ClientTls, Vec<&str>)> = vec![
        ("enrolling", enrolling, vec!["Enroll"]),
        (
            "agent",
            agent_tls(&fleet.path("agents/a")),
            AGENT_RPCS.to_vec(),
        ),
        (
            "revoked agent",
            agent_tls(&fleet.path("agents/gone")),
            vec![],
        ),
        (
            "viewer",
            identity_tls(&fleet.path("viewer.identity")),
            READ_RPCS.to_vec(),
        ),
        (
            "operator",
            identity_tls(&fleet.path("operator.identity")),
            [READ_RPCS, OPERATE_RPCS].concat(),
        ),
        (
            "admin",
            identity_tls(&fleet.identity),
            [READ_RPCS, OPERATE_RPCS, ADMIN_RPCS].concat(),
        ),
    ];
    let before = audit(&fleet).len();
    let mut denials = Vec::new();
    for (who, tls, allowed) in classes {
        let channel = transport::connect(&fleet.url, tls).await.expect(who);
        let mut got = BTreeSet::new();
        for rpc in all_rpcs() {
            match call(&channel, rpc).await {
                Ok(()) => {
                    got.insert(rpc);
                }
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        tonic::Code::PermissionDenied,
                        "{who} {rpc}: {status:?}"
                    );
                    denials.push(path_of(rpc));
                }
            }
        }
        let want: BTreeSet<&str> = allowed.into_iter().collect();
        assert_eq!(got, want, "{who}: allowed set");
    }
    // Every denial, and nothing else of the matrix, is in the audit log.
    let mut logged: Vec<String> = audit(&fleet)[before..]
        .iter()
        .filter(|e| e["action"] == "authz.denied")
        .map(|e| e["target"].as_str().unwrap_or_default().to_string())
        .collect();
    logged.sort();
    denials.sort();
    assert_eq!(logged, denials);
}

/// Opens an agent session the test drives by hand: says `hello`, and returns the sender
/// for further messages and the controller's stream.
async fn open_session(
    api: &mut AgentApiClient<Channel>,
    hello: pb::Hello,
) -> (
    tokio::sync::mpsc::Sender<pb::AgentMessage>,
    tonic::Streaming<pb::ControllerMessage>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(hello)),
    })
    .await
    .expect("hello");
    let session = api
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    (tx, session)
}

/// A client speaking as agent `name` with its own certificate.
async fn as_agent(fleet: &Fleet, name: &str) -> AgentApiClient<Channel> {
    let ch = transport::connect(
        &fleet.url,
        agent_tls(&fleet.path(&format!("agents/{name}"))),
    )
    .await
    .expect("connect as agent");
    AgentApiClient::new(ch).max_decoding_message_size(lifeboat_proto::MAX_MESSAGE_BYTES)
}

fn chunk_key(fleet: &Fleet, agent: &str) -> ChunkKey {
    ChunkKey::from_slice(&fs::read(fleet.path(&format!("agents/{agent}/chunk.key"))).expect("key"))
        .expect("key")
}

async fn get(
    api: &mut AgentApiClient<Channel>,
    job: &str,
    ids: &[lifeboat_core::ChunkId],
) -> Result<usize, tonic::Status> {
    let mut s = api
        .get_chunks(pb::GetChunksRequest {
            job_id: job.to_string(),
            ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(b) = s.message().await? {
        n += b.chunks.len();
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_read_only_what_a_running_restore_job_grants() {
    transport::install_crypto_provider();
    let mut fleet = tokio::task::spawn_blocking(Fleet::start)
        .await
        .expect("fleet");
    // b's data: small files, so each is one chunk whose id the test can compute.
    let b_src = tempfile::tempdir().expect("src");
    let secrets: Vec<Vec<u8>> = (0..8)
        .map(|i| format!("secret {i} of agent b").repeat(50).into_bytes())
        .collect();
    for (i, s) in secrets.iter().enumerate() {
        fs::write(b_src.path().join(format!("s{i}")), s).expect("write");
    }
    let a_src = tempfile::tempdir().expect("src");
    fs::write(a_src.path().join("mine"), b"a's own file").expect("write");
    let root = tempfile::tempdir().expect("root");
    let (fleet, b_snap, a_snap) = tokio::task::spawn_blocking({
        let (a_src, b_src) = (a_src.path().to_owned(), b_src.path().to_owned());
        move || {
            let a = fleet.enroll("a");
            let b = fleet.enroll("b");
            fleet.run_agent(&b, &[("data", &b_src)], &[]);
            fleet.run_agent(&a, &[("data", &a_src)], &[]);
            let b_snap = fleet.backup("b", "data")["id"]
                .as_str()
                .expect("id")
                .to_string();
            let a_snap = fleet.backup("a", "data")["id"]
                .as_str()
                .expect("id")
                .to_string();
            // From here on the test speaks as agent a itself.
            fleet.kill_agent("a");
            (fleet, b_snap, a_snap)
        }
    })
    .await
    .expect("setup");
    let key = chunk_key(&fleet, "b");
    let b_ids: Vec<_> = secrets.iter().map(|s| key.id_of(s)).collect();
    let a_only = key.id_of(b"a's own file");
    // b's manifest: the tree chunks its snapshot record names.
    let envelope = fleet.read_envelope(&b_snap);
    let tree_ids = Record::parse(&envelope.record)
        .expect("record")
        .tree_chunks()
        .expect("tree chunks");
    let known: Vec<_> = b_ids.iter().chain(&tree_ids).copied().collect();
    let mut api = as_agent(&fleet, "a").await;

    // No grant: no job, a made-up job, another agent's job. Many randomized attempts.
    let mut rng = lifeboat_tests::tree::Rng::new(7);
    for _ in 0..60 {
        let id = known[(rng.next_u64() % known.len() as u64) as usize];
        let job = match rng.next_u64() % 3 {
            0 => String::new(),
            1 => hex::encode(rng.bytes(8)),
            _ => "0".repeat(16),
        };
        let status = get(&mut api, &job, &[id])
            .await
            .expect_err("read without a grant");
        assert!(
            matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::NotFound
            ),
            "{status:?}"
        );
    }
    // Agents cannot list snapshots or restore anything themselves.
    let op = OperatorApiClient::new(
        transport::connect(&fleet.url, agent_tls(&fleet.path("agents/a")))
            .await
            .expect("connect"),
    );
    for status in [
        op.clone()
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .expect_err("list"),
        op.clone()
            .start_restore(pb::StartRestoreRequest {
                snapshot: b_snap.clone(),
                agent: "a".into(),
                target: root.path().join("x").display().to_string(),
                ..Default::default()
            })
            .await
            .expect_err("restore"),
    ] {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    // An operator restores b's snapshot onto a: the job reaches a over its session.
    let (tx, mut session) = open_session(
        &mut api,
        pb::Hello {
            restore_roots: vec![root.path().display().to_string()],
            ..Default::default()
        },
    )
    .await;
    let target = root.path().join("restored").display().to_string();
    let started = {
        let (snap, target) = (b_snap.clone(), target.clone());
        let fleet = &fleet;
        tokio::task::block_in_place(|| {
            fleet.cli_json(&["restore", &snap, "--agent", "a", "--to", &target])
        })
    };
    let job_id = started["id"].as_str().expect("job").to_string();
    let job = lifeboat_tests::next_job(&mut session).await;
    assert_eq!(job.job_id, job_id);

    // Inside the grant: the snapshot's file and tree chunks, yes; a chunk it does not
    // reference, no.
    assert_eq!(
        get(&mut api, &job_id, &known).await.expect("granted read"),
        known.len()
    );
    let status = get(&mut api, &job_id, &[a_only])
        .await
        .expect_err("outside the snapshot");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(!a_snap.is_empty());

    // The job ends: the grant ends with it.
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::JobUpdate(pb::JobUpdate {
            job_id: job_id.clone(),
            state: pb::JobState::Succeeded as i32,
            ..Default::default()
        })),
    })
    .await
    .expect("update");
    wait_for("the job to end", Duration::from_secs(10), || {
        (tokio::task::block_in_place(|| fleet.job_info(&job_id))["state"] == "succeeded")
            .then_some(())
    });
    let status = get(&mut api, &job_id, &b_ids)
        .await
        .expect_err("read after the job ended");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

fn record(agent_id: &str, agent_name: &str, job_id: &str, finished_ms: i64) -> Record {
    Record {
        version: 1,
        agent_id: agent_id.into(),
        agent_name: agent_name.into(),
        hostname: "h".into(),
        source: "data".into(),
        source_kind: "path".into(),
        source_path: "/data".into(),
        job_id: job_id.into(),
        parent: None,
        started_unix_ms: finished_ms - 1000,
        finished_unix_ms: finished_ms,
        tree: TreeRef {
            chunks: vec!["ab".repeat(32)],
            size: 1,
            hash: "cd".repeat(32),
        },
        stats: Stats::default(),
        image: None,
        consistency: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cannot_delete_overwrite_impersonate_or_backdate() {
    transport::install_crypto_provider();
    let src = tempfile::tempdir().expect("src");
    fs::write(src.path().join("f"), b"some data").expect("write");
    let (fleet, snaps_before, a_job) = tokio::task::spawn_blocking({
        let src = src.path().to_owned();
        move || {
            let mut fleet = Fleet::start();
            let a = fleet.enroll("a");
            fleet.enroll("b");
            fleet.run_agent(&a, &[("data", &src)], &[]);
            let snap = fleet.backup("a", "data");
            let job = fleet.cli_json(&["jobs"]).as_array().expect("jobs")[0]["id"]
                .as_str()
                .expect("id")
                .to_string();
            assert!(!snap["id"].as_str().unwrap_or_default().is_empty());
            let snaps = fleet.cli_json(&["snapshots"]);
            (fleet, snaps, job)
        }
    })
    .await
    .expect("setup");
    let mut api = as_agent(&fleet, "a").await;
    let agents = tokio::task::block_in_place(|| fleet.cli_json(&["agents"]));
    let id_of = |name: &str| {
        agents
            .as_array()
            .expect("agents")
            .iter()
            .find(|a| a["name"] == name)
            .expect("agent")["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let signing =
        SigningKey::from_pkcs8(&fs::read(fleet.path("agents/a/signing.key")).expect("key"))
            .expect("key");

    // Delete: not an agent's call.
    let snap_id = snaps_before[0]["id"].as_str().expect("id").to_string();
    let status = OperatorApiClient::new(
        transport::connect(&fleet.url, agent_tls(&fleet.path("agents/a")))
            .await
            .expect("connect"),
    )
    .delete_snapshot(pb::SnapshotRef { id: snap_id })
    .await
    .expect_err("agent deleted a snapshot");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // Overwrite a stored chunk with other bytes under its id: outside a job it is not
    // even read; inside a running backup job (of b, a bare session) it is refused as not
    // matching its id.
    let key = chunk_key(&fleet, "a");
    let stored = key.id_of(b"some data");
    let evil = || {
        tokio_stream::iter(vec![pb::ChunkBatch {
            chunks: vec![pb::ChunkBlob {
                id: stored.as_bytes().to_vec(),
                blob: codec::encode_raw(b"evil data").into(),
                ..Default::default()
            }],
        }])
    };
    let status = api
        .put_chunks(evil())
        .await
        .expect_err("upload outside a job");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let mut b_job = lifeboat_tests::RawJob::start(&fleet, "b", "data").await;
    let upload = b_job.request(evil());
    let status = b_job
        .api
        .put_chunks(upload)
        .await
        .expect_err("overwrite accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Commit under b's identity (signed with a's key, naming b).
    let as_b = record(&id_of("b"), "b", &a_job, lifeboat_tests::now_ms()).to_bytes();
    let status = api
        .commit_snapshot(pb::CommitRequest {
            job_id: a_job.clone(),
            signature: signing.sign_record(&as_b),
            record: as_b,
        })
        .await
        .expect_err("commit as b");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // Commit dated a day in the future.
    let future = record(
        &id_of("a"),
        "a",
        &a_job,
        lifeboat_tests::now_ms() + 86_400_000,
    )
    .to_bytes();
    let status = api
        .commit_snapshot(pb::CommitRequest {
            job_id: a_job.clone(),
            signature: signing.sign_record(&future),
            record: future,
        })
        .await
        .expect_err("future-dated commit");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("in the future"), "{status:?}");

    // Nothing changed: the same snapshots, with the same receive times.
    let snaps_after = tokio::task::block_in_place(|| fleet.cli_json(&["snapshots"]));
    assert_eq!(snaps_after, snaps_before);
    let log = tokio::task::block_in_place(|| audit(&fleet));
    assert!(
        log.iter().any(|e| e["action"] == "authz.denied"
            && e["target"] == "/lifeboat.v1.AgentApi/CommitSnapshot")
    );
}

/// Also B17 (signature-bundle confusion): another snapshot's valid countersignature, with
/// its receive time, attached to this one is refused: it is bound to the record it signed.
#[test]
fn a_tampered_record_or_countersignature_is_refused_before_any_write() {
    let mut fleet = Fleet::start();
    let src = tempfile::tempdir().expect("src");
    fs::write(src.path().join("f"), b"precious").expect("write");
    let root = tempfile::tempdir().expect("root");
    let a = fleet.enroll("a");
    fleet.run_agent(&a, &[("data", src.path())], &[root.path()]);
    let snap = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    // The forger holds the store's data key too (root on the controller): what stops
    // the forgeries below is the signatures, not the encryption.
    let file = fleet.envelope_path(&snap);
    let pristine = fs::read(&file).expect("envelope");
    let env = fleet.read_envelope(&snap);
    // A second snapshot of the same source, whose countersignature is genuine.
    fs::write(src.path().join("f2"), b"later").expect("write");
    let other = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let other_env = fleet.read_envelope(&other);

    let mut cases: Vec<(&str, lifeboat_core::snapshot::Envelope, &str)> = Vec::new();
    let mut e = env.clone();
    let at = e.record.iter().position(|b| *b == b'f').expect("byte");
    e.record[at] = b'g';
    cases.push(("record", e, "originating agent"));
    let mut e = env.clone();
    e.countersignature[3] ^= 1;
    cases.push(("countersignature", e, "countersignature"));
    let mut e = env.clone();
    e.received_unix_ms -= 86_400_000;
    cases.push(("receive time", e, "countersignature"));
    let mut e = env.clone();
    e.countersignature = other_env.countersignature.clone();
    e.received_unix_ms = other_env.received_unix_ms;
    assert_ne!(e.countersignature, env.countersignature);
    cases.push(("another snapshot's countersignature", e, "countersignature"));
    for (what, tampered, named) in cases {
        fs::write(&file, fleet.sealed_envelope(&snap, &tampered)).expect("tamper");
        let target = root.path().join(what.replace(' ', "-"));
        let out = fleet.cli(&[
            "restore",
            &snap[..16],
            "--agent",
            "a",
            "--to",
            target.to_str().expect("path"),
            "--wait",
        ]);
        assert!(
            !out.status.success(),
            "{what}: restore of a tampered snapshot succeeded"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("fails verification") && err.contains(named),
            "{what}: {err}"
        );
        assert!(!target.exists(), "{what}: something was written");
    }
    fs::write(&file, &pristine).expect("restore pristine");
    let target = root.path().join("ok");
    let (ok, job) = fleet.job(&[
        "restore",
        &snap,
        "--agent",
        "a",
        "--to",
        target.to_str().expect("path"),
    ]);
    assert!(ok, "{job}");
    assert_eq!(fs::read(target.join("f")).expect("restored"), b"precious");
}

#[test]
fn audit_verify_names_the_exact_broken_entry() {
    let mut fleet = Fleet::start();
    for _ in 0..9 {
        fleet.token("5m");
    }
    let n = audit(&fleet).len();
    assert!(n >= 9, "{n} entries");
    let out = fleet.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A clean stop anchors the head in the store.
    fleet.stop_controller();
    let db = fleet.path("ctl/catalog.db");
    let pristine = fs::read(&db).expect("catalog");
    assert!(
        !fleet.path("ctl/catalog.db-wal").exists()
            || fs::metadata(fleet.path("ctl/catalog.db-wal"))
                .expect("wal")
                .len()
                == 0
    );

    let cases: Vec<(&str, String, u64)> = vec![
        ("modified", "UPDATE audit SET detail = '{\"ttl_s\":1}' WHERE seq = 5".into(), 5),
        ("deleted", "DELETE FROM audit WHERE seq = 5".into(), 5),
        (
            "reordered",
            "UPDATE audit SET seq = -1 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = -1".into(),
            4,
        ),
        ("truncated", "DELETE FROM audit WHERE seq > 7".into(), 8),
    ];
    for (what, sql, broken) in cases {
        fs::write(&db, &pristine).expect("pristine");
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute_batch(&sql).expect(what);
        drop(conn);
        fleet.start_controller();
        let out = fleet.cli(&["audit", "verify", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["ok"], false, "{what}");
        assert_eq!(v["broken_entry"], broken, "{what}: {v}");
        fleet.stop_controller();
    }
    fs::write(&db, &pristine).expect("pristine");
    fleet.start_controller();
    let out = fleet.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Export: one JSON object per line, in order.
    let out = fleet.cli(&["audit", "export"]);
    assert!(out.status.success());
    let seqs: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json line")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn certificates_renew_over_the_session_and_revocation_closes_it() {
    let mut fleet = Fleet::start_with(&["--agent-cert-lifetime", "9s"]);
    let src = tempfile::tempdir().expect("src");
    fs::write(src.path().join("f"), b"data").expect("write");
    let root = tempfile::tempdir().expect("root");
    let a = fleet.enroll("a");
    let b = fleet.enroll("b");
    fleet.run_agent(&a, &[("data", src.path())], &[]);
    fleet.run_agent(&b, &[], &[root.path()]);
    let expires = |fleet: &Fleet| {
        fleet
            .cli_json(&["agents"])
            .as_array()
            .expect("agents")
            .iter()
            .find(|x| x["name"] == "a")
            .expect("a")["cert_expires"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let first = expires(&fleet);
    let first_end = humantime::parse_rfc3339(&first).expect("cert_expires is RFC 3339");
    // Renewed twice (at two thirds of each 9 s lifetime), so past the first certificate's
    // end, on the one session it opened.
    wait_for("two renewals", Duration::from_secs(60), || {
        (fleet.agent_log("a").matches("certificate renewed").count() >= 2).then_some(())
    });
    assert!(
        std::time::SystemTime::now() > first_end,
        "two renewals came before the first certificate ({first}) expired"
    );
    assert_ne!(expires(&fleet), first);
    let log = fleet.agent_log("a");
    assert_eq!(
        log.matches("connected to the controller").count(),
        1,
        "{log}"
    );
    assert!(log.matches("certificate renewed").count() >= 2, "{log}");
    let renewals = audit(&fleet)
        .iter()
        .filter(|e| e["action"] == "cert.renew" && e["target"] == "a")
        .count();
    assert!(renewals >= 2);
    let snap = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Revocation: the session closes at once and the certificate is refused after.
    let out = fleet.cli(&["agents", "revoke", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("a to be disconnected", Duration::from_secs(10), || {
        let agents = fleet.cli_json(&["agents"]);
        let a = agents
            .as_array()?
            .iter()
            .find(|x| x["name"] == "a")?
            .clone();
        (a["connected"] == false && a["revoked"].is_string()).then_some(())
    });
    wait_for(
        "a's reconnect to be refused",
        Duration::from_secs(20),
        || fleet.agent_log("a").contains("was revoked").then_some(()),
    );
    let out = fleet.cli(&["backup", "a"]);
    assert!(!out.status.success());
    // Its snapshots stay restorable by operators, onto another agent.
    let target = root.path().join("from-a");
    let (ok, job) = fleet.job(&[
        "restore",
        &snap,
        "--agent",
        "b",
        "--to",
        target.to_str().expect("path"),
    ]);
    assert!(ok, "{job}");
    assert_eq!(fs::read(target.join("f")).expect("restored"), b"data");
    let actions: Vec<String> = audit(&fleet)
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_string())
        .collect();
    for want in [
        "agent.enroll",
        "cert.renew",
        "agent.revoke",
        "restore.start",
        "snapshot.commit",
        "backup.start",
        "token.create",
    ] {
        assert!(
            actions.iter().any(|a| a == want),
            "no {want} in {actions:?}"
        );
    }
}

/// A malformed certificate request is INVALID_ARGUMENT and leaves the join token unspent
/// (it enrolls the machine right after); a caller without a valid token learns nothing
/// about which agent names exist.
/// One `Enroll` call straight over gRPC (as a stranger with a token would make it).
fn enroll_raw(
    fleet: &Fleet,
    rt: &tokio::runtime::Runtime,
    token: &str,
    name: &str,
    csr_pem: String,
) -> Result<(), tonic::Status> {
    let (url, fp) = (fleet.url.clone(), fleet.fingerprint.clone());
    let (token, name) = (token.to_string(), name.to_string());
    rt.block_on(async move {
        let channel = transport::connect(&url, ClientTls::enrollment(&fp).expect("tls"))
            .await
            .expect("connect");
        pb::enrollment_client::EnrollmentClient::new(channel)
            .enroll(pb::EnrollRequest {
                token,
                name,
                labels: Default::default(),
                csr_pem,
                signing_public_key: SigningKey::generate().expect("key").public_key(),
                hostname: "h".into(),
            })
            .await
            .map(drop)
    })
}

#[test]
fn enrollment_refusals_spend_no_token_and_leak_no_names() {
    let fleet = Fleet::start();
    fleet.enroll("taken");
    let token = fleet.token("10m");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let enroll =
        |token: &str, name: &str, csr_pem: String| enroll_raw(&fleet, &rt, token, name, csr_pem);
    let bad = enroll(
        &token,
        "fresh",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n".into(),
    )
    .expect_err("a malformed CSR was accepted");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(
        bad.message().contains("certificate signing request"),
        "{bad:?}"
    );
    // Without a valid token, a taken name and a free one get the same answer.
    for name in ["taken", "free"] {
        let e = enroll("lbt_not-a-token", name, pki::make_csr("x").expect("csr").0)
            .expect_err("an unknown token enrolled");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{name}: {e:?}");
    }
    // With a valid one, a taken name is refused and the token is still not spent.
    let e = enroll(&token, "taken", pki::make_csr("x").expect("csr").0)
        .expect_err("a taken name enrolled");
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    let out = fleet.enroll_with("fresh", &token);
    assert!(
        out.status.success(),
        "the token was spent by refused requests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = fleet.enroll_with("fresh-2", &token);
    assert!(!again.status.success(), "a single-use token enrolled twice");
}

/// D7: an enrollment storm. 1,000 machines join at once, each over its own connection with
/// its own CSR and signing key, all with one token of 1,000 uses: every one enrolls under an
/// id of its own, the token is spent exactly 1,000 times (one more join is refused as used),
/// and the catalog lists the 1,000 agents. The join times are printed (p50,
/// p99), not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_an_enrollment_storm_enrolls_each_machine_exactly_once() {
    const N: usize = 1000;
    transport::install_crypto_provider();
    let fleet = tokio::task::spawn_blocking(Fleet::start)
        .await
        .expect("fleet");
    let token = tokio::task::block_in_place(|| {
        fleet.cli_json(&["token", "create", "--uses", &N.to_string(), "--ttl", "10m"])["token"]
            .as_str()
            .expect("token")
            .to_string()
    });
    let join = |name: String, token: String| {
        let (url, fp) = (fleet.url.clone(), fleet.fingerprint.clone());
        let (csr_pem, _key) = pki::make_csr("storm").expect("csr");
        let key = SigningKey::generate().expect("key").public_key();
        async move {
            let started = std::time::Instant::now();
            let channel = transport::connect(&url, ClientTls::enrollment(&fp).expect("tls"))
                .await
                .expect("connect");
            let reply = pb::enrollment_client::EnrollmentClient::new(channel)
                .enroll(pb::EnrollRequest {
                    token,
                    name,
                    labels: Default::default(),
                    csr_pem,
                    signing_public_key: key,
                    hostname: "storm".into(),
                })
                .await;
            (reply.map(|r| r.into_inner().agent_id), started.elapsed())
        }
    };
    let joins: Vec<_> = (0..N)
        .map(|i| join(format!("storm-{i:04}"), token.clone()))
        .collect();
    let results = futures::future::join_all(joins).await;
    let mut ids = BTreeSet::new();
    let mut times = Vec::new();
    for (i, (reply, took)) in results.into_iter().enumerate() {
        let id = reply.unwrap_or_else(|e| panic!("machine {i} was refused: {e:?}"));
        ids.insert(id);
        times.push(took);
    }
    assert_eq!(ids.len(), N, "two machines got one identity");
    let (extra, _) = join("storm-extra".into(), token.clone()).await;
    let refused = extra.expect_err("one machine more than the token's uses joined");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("already used"), "{refused:?}");
    let listed = tokio::task::block_in_place(|| fleet.cli_json(&["agents"]));
    let names: BTreeSet<&str> = listed
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .filter(|n| n.starts_with("storm-"))
        .collect();
    assert_eq!(names.len(), N, "agents listed");
    times.sort();
    eprintln!(
        "D7: {N} concurrent joins, each its own connection: p50 {:?}, p99 {:?}, slowest {:?}",
        times[N / 2],
        times[N * 99 / 100],
        times[N - 1]
    );
}

/// D2's storm, bounded: a controller paced at 10 handshakes a second meets 200 agent
/// connections at once (as after a restart under a fleet): 100 that wait as an agent
/// does, then 100 whose clients give up after a second (as an older agent, or one gone,
/// would). Handshakes complete no faster than the pace allows (the k-th no sooner than
/// (k − 1)/10 s in), every patient connection is served in turn, and the departed ones
/// are closed when their turn comes without a handshake spent on them (`/metrics`:
/// started = the patient ones and the operator's, shed = the departed, none left
/// waiting); meanwhile `lifeboat status` gets through in the operators' lane. How long
/// a real fleet takes to come back is the benchmark's (`bench/controller_scale.py
/// --restart`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_a_handshake_storm_is_paced_and_what_cannot_wait_is_shed() {
    const N: usize = 100;
    const RATE: f64 = 10.0;
    transport::install_crypto_provider();
    let fleet =
        tokio::task::spawn_blocking(|| Fleet::start_with(&["--max-handshakes-per-second", "10"]))
            .await
            .expect("fleet");
    let metric = |name: &str| lifeboat_tests::counter(&lifeboat_tests::metrics(&fleet), name);
    let (started_before, shed_before) = tokio::task::block_in_place(|| {
        assert_eq!(metric("lifeboat_tls_handshakes_per_second_limit"), 10);
        (
            metric("lifeboat_tls_handshakes_started_total"),
            metric("lifeboat_tls_handshakes_shed_total"),
        )
    });
    // The admin's certificate without the operators' ALPN hint: queued as agents are.
    let tls = identity_tls(&fleet.identity);
    let storm = std::time::Instant::now();
    let connect = |patience: Duration| {
        let (url, tls) = (fleet.url.clone(), tls.clone());
        async move {
            let r = tokio::time::timeout(patience, transport::connect(&url, tls)).await;
            (matches!(r, Ok(Ok(_))), storm.elapsed())
        }
    };
    let patient = futures::future::join_all((0..N).map(|_| connect(Duration::from_secs(60))));
    let impatient = async {
        // Behind the patient ones in the queue.
        tokio::time::sleep(Duration::from_millis(300)).await;
        futures::future::join_all((0..N).map(|_| connect(Duration::from_secs(1)))).await
    };
    let operator = {
        let mut cli = fleet.cli_command(&["status"]);
        tokio::task::spawn_blocking(move || {
            // Once the storm fills the agents' lane.
            std::thread::sleep(Duration::from_millis(500));
            let t = std::time::Instant::now();
            (cli.output().expect("lifeboat status"), t.elapsed())
        })
    };
    let (patient, impatient) = futures::future::join(patient, impatient).await;
    let (status, status_took) = operator.await.expect("status");
    assert!(
        status.status.success(),
        "lifeboat status during the storm: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut served: Vec<Duration> = patient
        .iter()
        .filter_map(|(ok, t)| ok.then_some(*t))
        .collect();
    served.sort();
    assert_eq!(served.len(), N, "patient connections served");
    assert!(
        impatient.iter().all(|(ok, _)| !ok),
        "a connection given up after 1 s, behind 10 s of others, was served"
    );
    for (k, t) in served.iter().enumerate() {
        // One token in the bucket at the start, then one every 1/10 s.
        let earliest = k as f64 / RATE - 0.01;
        assert!(
            t.as_secs_f64() >= earliest,
            "handshake {} of the storm completed {t:?} in, before the pace allows ({earliest:.2} s)",
            k + 1
        );
    }
    let (started, shed) = tokio::task::block_in_place(|| {
        wait_for(
            "every waiting connection handled",
            Duration::from_secs(30),
            || (metric("lifeboat_tls_handshakes_waiting") == 0).then_some(()),
        );
        (
            metric("lifeboat_tls_handshakes_started_total") - started_before,
            metric("lifeboat_tls_handshakes_shed_total") - shed_before,
        )
    });
    assert_eq!(
        started,
        N as u64 + 1,
        "handshakes started: the patient connections and the operator's, none for a client that left"
    );
    assert_eq!(
        shed, N as u64,
        "connections whose clients left, closed at their turn"
    );
    eprintln!(
        "D2 storm: {} connections at once, paced at 10/s: {N} served (last {:?} in), {shed} departed and shed; `lifeboat status` meanwhile took {status_took:?}",
        2 * N,
        served.last().expect("served"),
    );
}

/// A job names only the snapshots the controller saw it commit: an agent that reports its
/// backup succeeded with another agent's snapshot gets a failed job that lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_lists_only_snapshots_it_committed() {
    transport::install_crypto_provider();
    let src = tempfile::tempdir().expect("src");
    fs::write(src.path().join("f"), b"the real data").expect("write");
    let (fleet, a_snap) = tokio::task::spawn_blocking({
        let src = src.path().to_owned();
        move || {
            let mut fleet = Fleet::start();
            let a = fleet.enroll("a");
            fleet.enroll("b");
            fleet.run_agent(&a, &[("data", &src)], &[]);
            let snap = fleet.backup("a", "data")["id"]
                .as_str()
                .expect("id")
                .to_string();
            (fleet, snap)
        }
    })
    .await
    .expect("setup");
    let b = lifeboat_tests::RawJob::start(&fleet, "b", "data").await;
    let job_id = b.job_id.clone();
    b.tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::JobUpdate(pb::JobUpdate {
            job_id: job_id.clone(),
            state: pb::JobState::Succeeded as i32,
            snapshot_ids: vec![a_snap.clone()],
            ..Default::default()
        })),
    })
    .await
    .expect("update");
    let job = tokio::task::block_in_place(|| {
        wait_for("the job to end", Duration::from_secs(10), || {
            let j = fleet.job_info(&job_id);
            (j["state"] != "running" && j["state"] != "queued").then_some(j)
        })
    });
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["snapshot_ids"], serde_json::json!([]), "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("committed 0 snapshots"),
        "{job}"
    );
}

/// A snapshot of another machine brings no privileges along unless the operator asks:
/// restored onto b, a's device node is not created, its setuid/setgid files lose those
/// bits and its file capabilities, and the job lists each; `--keep-privileges` restores
/// them, and so does a restore onto a itself.
#[test]
fn a_snapshot_of_another_machine_brings_no_privileges_unless_asked() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    if !lifeboat_tests::tree::is_root() {
        eprintln!("\n!!! SKIPPED: device nodes and setuid-root files need root\n");
        return;
    }
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("mem"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 1),
    )
    .expect("mknod");
    for (name, mode) in [("suid", 0o4755), ("sgid", 0o2755), ("capped", 0o755)] {
        fs::write(src.join(name), b"#!/bin/sh\n").expect("write");
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    // VFS_CAP_REVISION_2, CAP_NET_RAW permitted.
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    rustix::fs::setxattr(
        src.join("capped"),
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr security.capability");
    let (ra, rb) = (fleet.path("roots-a"), fleet.path("roots-b"));
    let a = fleet.enroll("a");
    let b = fleet.enroll("b");
    fleet.run_agent(&a, &[("data", src.as_path())], &[ra.as_path()]);
    fleet.run_agent(&b, &[], &[rb.as_path()]);
    let snap = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let restore = |agent: &str, to: &Path, extra: &[&str]| {
        let mut args = vec!["restore", &snap, "--agent", agent, "--to"];
        args.push(to.to_str().expect("utf8"));
        args.extend(extra);
        let (ok, job) = fleet.job(&args);
        assert!(ok, "restore onto {agent} {extra:?}: {job}");
        job
    };
    let has_cap = |p: &Path| {
        let mut buf = [0u8; 64];
        rustix::fs::getxattr(p, "security.capability", &mut buf).is_ok()
    };

    let plain = rb.join("plain");
    let job = restore("b", &plain, &[]);
    assert!(
        fs::symlink_metadata(plain.join("mem")).is_err(),
        "a device node of another machine was created"
    );
    assert_eq!(
        fs::metadata(plain.join("suid")).expect("suid").mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::metadata(plain.join("sgid")).expect("sgid").mode() & 0o7777,
        0o755
    );
    assert!(!has_cap(&plain.join("capped")), "capabilities were kept");
    let skipped: Vec<String> = job["restore"]["skipped"]
        .as_array()
        .expect("skipped list")
        .iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    for name in ["mem", "suid", "sgid", "capped"] {
        assert!(
            skipped.iter().any(|s| s.starts_with(&format!("{name}: "))),
            "{name} is not listed as skipped: {skipped:?}"
        );
    }

    let asked = rb.join("asked");
    restore("b", &asked, &["--keep-privileges"]);
    let own = ra.join("own");
    restore("a", &own, &[]);
    for dir in [&asked, &own] {
        let mem = fs::symlink_metadata(dir.join("mem")).expect("device node");
        assert!(mem.file_type().is_char_device());
        assert_eq!(mem.rdev(), rustix::fs::makedev(1, 1));
        assert_eq!(
            fs::metadata(dir.join("suid")).expect("suid").mode() & 0o7777,
            0o4755
        );
        assert_eq!(
            fs::metadata(dir.join("sgid")).expect("sgid").mode() & 0o7777,
            0o2755
        );
        assert!(
            has_cap(&dir.join("capped")),
            "capabilities lost in {}",
            dir.display()
        );
    }
    let audit = fleet.cli_json(&["audit"]);
    assert!(
        audit.to_string().contains("\"keep_privileges\":true"),
        "the asked-for privileges are not in the audit log"
    );
}

/// A flood of anonymous denials cannot hide an identity's: after 400 enrollments with a
/// bad token from one address, a compromised agent's denied DeleteSnapshot and ListAgents
/// are both in the audit log, and that address used at most its own budget of entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_anonymous_denials_hides_no_identity_denial() {
    transport::install_crypto_provider();
    let fleet = tokio::task::spawn_blocking(|| {
        let fleet = Fleet::start();
        fleet.enroll("a");
        fleet
    })
    .await
    .expect("setup");
    let channel = transport::connect(
        &fleet.url,
        ClientTls::enrollment(&fleet.fingerprint).expect("tls"),
    )
    .await
    .expect("connect");
    let mut en = pb::enrollment_client::EnrollmentClient::new(channel);
    let flood = 400;
    for i in 0..flood {
        let refused = en
            .enroll(pb::EnrollRequest {
                token: format!("lbt_guess-{i}"),
                name: format!("guess-{i}"),
                signing_public_key: vec![0; 32],
                ..Default::default()
            })
            .await
            .expect_err("a guessed token enrolled");
        // Past ten failures a minute the address is refused without its token being
        // checked (`access::FAILED_JOINS_PER_MINUTE`, issue 19).
        let expected = if i < 10 {
            tonic::Code::Unauthenticated
        } else {
            tonic::Code::ResourceExhausted
        };
        assert_eq!(refused.code(), expected, "guess {i}: {refused:?}");
    }
    let op = OperatorApiClient::new(
        transport::connect(&fleet.url, agent_tls(&fleet.path("agents/a")))
            .await
            .expect("connect as a"),
    );
    let delete = op
        .clone()
        .delete_snapshot(pb::SnapshotRef {
            id: "ab".repeat(32),
        })
        .await
        .expect_err("an agent deleted a snapshot");
    let list = op
        .clone()
        .list_agents(pb::Empty {})
        .await
        .expect_err("an agent listed agents");
    for s in [&delete, &list] {
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    }
    let entries = tokio::task::block_in_place(|| audit(&fleet));
    let denied_to_a = |method: &str| {
        entries.iter().any(|e| {
            e["actor"] == "agent:a"
                && e["outcome"] == "denied"
                && e["target"].as_str().unwrap_or_default().ends_with(method)
        })
    };
    assert!(
        denied_to_a("/DeleteSnapshot"),
        "the agent's DeleteSnapshot is not audited"
    );
    assert!(
        denied_to_a("/ListAgents"),
        "the agent's ListAgents is not audited"
    );
    let guesses = entries
        .iter()
        .filter(|e| {
            e["outcome"] == "denied"
                && e["actor"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("enrolling:")
        })
        .count();
    // The per-source budget (audit.rs: 120 a minute; the minute may turn during the flood).
    assert!(
        guesses > 0 && guesses <= 2 * 120,
        "{guesses} of {flood} denials from one address were recorded"
    );
    // /metrics counts every denial, recorded or not, by whether the caller had an
    // identity (deploy/prometheus: LifeboatIdentityDenied, LifeboatAnonymousDenialsFlood).
    let identity_denials = entries
        .iter()
        .filter(|e| {
            let actor = e["actor"].as_str().unwrap_or_default();
            e["action"] == "authz.denied"
                && (actor.starts_with("agent:") || actor.starts_with("operator:"))
        })
        .count();
    assert!(identity_denials >= 2, "{entries:?}");
    let metrics = tokio::task::block_in_place(|| lifeboat_tests::metrics(&fleet));
    let count = |caller: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("lifeboat_denials_total{{caller=\"{caller}\"}} "))
            })
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    assert_eq!(count("identity"), Some(identity_denials), "{metrics}");
    assert!(
        count("anonymous").is_some_and(|n| n >= guesses),
        "{guesses} recorded anonymous denials, metrics say {:?}",
        count("anonymous")
    );
    eprintln!(
        "audit: {flood} anonymous denials from one address, {guesses} recorded; both identity denials recorded"
    );
}

/// Issue 19, item 1: a compromised agent, signing with its own key, floods commits — on
/// its finished backup job, on another agent's job, and on its own running job for
/// sources the job did not name or twice for one source. None is accepted (each refused
/// and audited), so a `keep.last` policy still keeps every real snapshot. The forged
/// records reuse a real snapshot's tree, so the store's completeness check alone would
/// have let every one of them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_taken_only_inside_a_running_job_for_its_sources() {
    transport::install_crypto_provider();
    let src = tempfile::tempdir().expect("src");
    fs::write(src.path().join("f"), b"the real data").expect("write");
    let (fleet, real, finished_job) = tokio::task::spawn_blocking({
        let src = src.path().to_owned();
        move || {
            let mut fleet = Fleet::start();
            let a = fleet.enroll("a");
            fleet.enroll("b");
            fleet.run_agent(&a, &[("data", &src)], &[]);
            let policy = fleet.path("keep.toml");
            fs::write(
                &policy,
                "[[policy]]\nname = \"keep\"\nsources = [\"data\"]\nschedule = \"0 3 * * *\"\nkeep = { last = 2 }\n",
            )
            .expect("policy");
            let out = fleet.cli(&["policy", "apply", "--file", policy.to_str().expect("path")]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let mut real = Vec::new();
            for _ in 0..2 {
                real.push(fleet.backup("a", "data")["id"].as_str().expect("id").to_string());
            }
            let job = fleet.cli_json(&["jobs"]).as_array().expect("jobs")[0]["id"]
                .as_str()
                .expect("id")
                .to_string();
            (fleet, real, job)
        }
    })
    .await
    .expect("setup");
    let env = fleet.read_envelope(&real[1]);
    let base = Record::parse(&env.record).expect("record");
    let key_of = |name: &str| {
        SigningKey::from_pkcs8(
            &fs::read(fleet.path(&format!("agents/{name}/signing.key"))).expect("key"),
        )
        .expect("key")
    };
    let (key_a, key_b) = (key_of("a"), key_of("b"));
    let agents = tokio::task::block_in_place(|| fleet.cli_json(&["agents"]));
    let id_of = |name: &str| {
        agents
            .as_array()
            .expect("agents")
            .iter()
            .find(|a| a["name"] == name)
            .expect("agent")["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let forged = |as_agent: &str, job: &str, source: &str, n: i64| {
        let mut r = base.clone();
        r.agent_id = id_of(as_agent);
        r.agent_name = as_agent.into();
        r.job_id = job.into();
        r.source = source.into();
        r.parent = None;
        r.finished_unix_ms = lifeboat_tests::now_ms() - n;
        r.started_unix_ms = r.finished_unix_ms - 1000;
        r.to_bytes()
    };

    // b's own backup job, running: b is a bare session that reported one source.
    let raw_b = lifeboat_tests::RawJob::start(&fleet, "b", "data").await;
    let (mut api_b, b_job) = (raw_b.api.clone(), raw_b.job_id.clone());
    let mut api_a = as_agent(&fleet, "a").await;
    let mut refused = std::collections::BTreeMap::<String, usize>::new();
    let commit =
        async |api: &mut AgentApiClient<Channel>, key: &SigningKey, record: Vec<u8>, job: &str| {
            api.commit_snapshot(pb::CommitRequest {
                job_id: job.into(),
                signature: key.sign_record(&record),
                record,
            })
            .await
        };
    // 400 on a's finished job, for its own source.
    for n in 0..400 {
        let r = forged("a", &finished_job, "data", n);
        let e = commit(&mut api_a, &key_a, r, &finished_job)
            .await
            .expect_err("commit on a finished job");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("only while their backup job runs"),
            "{e:?}"
        );
        *refused.entry("finished job".into()).or_default() += 1;
    }
    // 300 as a on b's job.
    for n in 0..300 {
        let r = forged("a", &b_job, "data", n);
        let e = commit(&mut api_a, &key_a, r, &b_job)
            .await
            .expect_err("commit on another agent's job");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        *refused.entry("another agent's job".into()).or_default() += 1;
    }
    // 299 as b on its running job for sources it did not name...
    for n in 0..299 {
        let r = forged("b", &b_job, &format!("other-{}", n % 7), n);
        let e = commit(&mut api_b, &key_b, r, &b_job)
            .await
            .expect_err("commit of a source the job did not name");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("did not ask for source"), "{e:?}");
        *refused.entry("source not named".into()).or_default() += 1;
    }
    // ... and its one real commit of "data", then a second one of it.
    let r = forged("b", &b_job, "data", 0);
    let ok = commit(&mut api_b, &key_b, r, &b_job)
        .await
        .expect("b's own commit")
        .into_inner();
    let r = forged("b", &b_job, "data", 1);
    let e = commit(&mut api_b, &key_b, r, &b_job)
        .await
        .expect_err("a second commit of one source");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("one snapshot per source and job"),
        "{e:?}"
    );
    *refused.entry("second of one source".into()).or_default() += 1;
    let total: usize = refused.values().sum();
    assert_eq!(total, 1000, "{refused:?}");

    tokio::task::block_in_place(|| {
        let snaps = fleet.cli_json(&["snapshots"]);
        let mut ids: Vec<String> = snaps
            .as_array()
            .expect("snapshots")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        let mut want = vec![real[0].clone(), real[1].clone(), ok.snapshot_id.clone()];
        want.sort();
        assert_eq!(ids, want, "forged commits were accepted");
        let denials = audit(&fleet)
            .iter()
            .filter(|e| e["action"] == "snapshot.commit" && e["outcome"] == "denied")
            .count();
        assert!(denials >= 1000, "{denials} of 1000 refused commits audited");
        // The operator finds them with the CLI's filters, and Prometheus counts them
        // (deploy/prometheus: LifeboatCommitsRefused fires above 10 in 10 minutes).
        let filtered = fleet.cli_json(&[
            "audit",
            "--action",
            "snapshot.commit",
            "--outcome",
            "denied",
        ]);
        let filtered = filtered.as_array().expect("audit");
        assert_eq!(filtered.len(), denials, "audit --action --outcome");
        assert!(
            filtered
                .iter()
                .all(|e| e["action"] == "snapshot.commit" && e["outcome"] == "denied"),
            "{filtered:?}"
        );
        let metrics = lifeboat_tests::metrics(&fleet);
        let counted = metrics
            .lines()
            .find_map(|l| l.strip_prefix("lifeboat_refusals_total{action=\"snapshot.commit\"} "))
            .and_then(|v| v.trim().parse::<usize>().ok());
        assert_eq!(
            counted,
            Some(denials),
            "lifeboat_refusals_total in:\n{metrics}"
        );
        // keep.last = 2 still keeps both real snapshots of a.
        let out = fleet.cli(&["prune"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kept: Vec<String> = fleet
            .cli_json(&["snapshots", "--agent", "a"])
            .as_array()
            .expect("snapshots")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect();
        for id in &real {
            assert!(kept.contains(id), "real snapshot {id} was pruned: {kept:?}");
        }
        eprintln!(
            "refused {refused:?}; {denials} denials audited; a keeps {} snapshots",
            kept.len()
        );
    });
}

/// C5 and issue 19, item 5: a consumed token and an expired one are refused, each with its
/// reason; after ten failures a minute, an address is refused at once (even with a valid
/// token, which stays unspent), so 1,000 guesses in a row get nowhere; and no token's
/// secret appears in the controller's log, an agent's output or the audit log.
#[test]
fn enrollment_guesses_are_rate_limited_and_token_secrets_never_logged() {
    let fleet = Fleet::start();
    let used = fleet.token("10m");
    let out = fleet.enroll_with("first", &used);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut outputs = vec![out];
    let short = fleet.token("2s");
    std::thread::sleep(Duration::from_millis(2500));
    let spare = fleet.token("10m");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let enroll = |token: &str, name: &str| {
        enroll_raw(&fleet, &rt, token, name, pki::make_csr("x").expect("csr").0)
    };
    let e = enroll(&used, "second").expect_err("a used token enrolled again");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("already used"), "{e:?}");
    let e = enroll(&short, "late").expect_err("an expired token enrolled");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("expired"), "{e:?}");
    for i in 0..8 {
        let e = enroll(&format!("lbt_guess-{i}"), "guess").expect_err("a guess enrolled");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "guess {i}: {e:?}");
    }
    // Ten failures: the address is refused at once, a valid token included.
    let e = enroll(&spare, "legit").expect_err("enrolled past the limit");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("too many failed join attempts"),
        "{e:?}"
    );
    let started = std::time::Instant::now();
    let mut accepted = 0;
    for i in 0..1000 {
        match enroll(&format!("lbt_brute-{i}"), "brute") {
            Ok(()) => accepted += 1,
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(accepted, 0);
    eprintln!(
        "1,000 guesses after the limit in {:.1} s: 0 accepted, all refused without a token check",
        started.elapsed().as_secs_f64()
    );
    // The valid token refused past the limit was not spent (read from the catalog: it
    // could be used once the minute has passed, which the suite does not wait for).
    let spent: i64 = rusqlite::Connection::open(fleet.path("ctl/catalog.db"))
        .expect("catalog")
        .query_row(
            "SELECT used FROM tokens WHERE hash = ?1",
            [lifeboat_core::sign::sha256_hex(spare.as_bytes())],
            |r| r.get(0),
        )
        .expect("the spare token's row");
    assert_eq!(spent, 0, "a token refused by the rate limit was spent");
    // No secret reached a log.
    let audit_log = String::from_utf8_lossy(&fleet.cli(&["audit", "export"]).stdout).to_string();
    outputs.push(fleet.enroll_with("after", "lbt_not-a-token"));
    let mut logs = vec![fleet.controller_log(), audit_log];
    for o in &outputs {
        logs.push(String::from_utf8_lossy(&o.stdout).to_string());
        logs.push(String::from_utf8_lossy(&o.stderr).to_string());
    }
    for secret in [&used, &short, &spare] {
        let tail = secret.trim_start_matches("lbt_");
        for (i, log) in logs.iter().enumerate() {
            assert!(!log.contains(tail), "a token secret is in log {i}");
        }
    }
    let denials = audit(&fleet)
        .iter()
        .filter(|e| e["target"] == "/lifeboat.v1.Enrollment/Enroll" && e["outcome"] == "denied")
        .count();
    assert!(denials >= 11, "{denials} enrollment denials audited");
}

/// Issue 19, item 4: `/metrics` (agent names, tiers, estimated downtimes) answers only a
/// client certificate of the fleet CA that the catalog honours: 401 without one, 403 for a
/// revoked identity (audited), 200 for a viewer's identity written out as PEM files by
/// `lifeboat identity pem` (what a Prometheus scrape config uses); `/healthz` answers
/// anyone and names nothing of the fleet.
#[test]
fn metrics_need_a_fleet_identity_and_healthz_says_nothing() {
    let fleet = Fleet::start();
    fleet.enroll("secret-host");
    let admin = IdentityFile::load(&fleet.path("ctl/admin.identity")).expect("admin identity");
    let anonymous = lifeboat_tests::https_get(&fleet, "/metrics", &admin.ca_pem, None);
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(anonymous.contains("client certificate"), "{anonymous}");
    assert!(!anonymous.contains("secret-host"), "{anonymous}");
    let health = lifeboat_tests::https_get(&fleet, "/healthz", &admin.ca_pem, None);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.ends_with("ok\n") && !health.contains("secret-host"),
        "{health}"
    );

    // A viewer identity for the scraper, as PEM files.
    let id_file = fleet.path("prometheus.identity");
    let out = fleet.cli(&[
        "identity",
        "create",
        "prometheus",
        "--role",
        "viewer",
        "--out",
        id_file.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = fleet.path("prometheus");
    let out = lifeboat_tests::bin("lifeboat")
        .args(["identity", "pem", "--identity"])
        .arg(&id_file)
        .arg("--out")
        .arg(&pem)
        .output()
        .expect("lifeboat identity pem");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let key_mode = fs::metadata(pem.join("client.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let read = |f: &str| fs::read_to_string(pem.join(f)).expect("pem file");
    let (ca, cert, key) = (read("ca.crt"), read("client.crt"), read("client.key"));
    let scraped = lifeboat_tests::https_get(&fleet, "/metrics", &ca, Some((&cert, &key)));
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(scraped.contains("lifeboat_agents 1"), "{scraped}");

    // Revoked: refused, and the refusal audited.
    let out = fleet.cli(&["identity", "revoke", "prometheus"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = lifeboat_tests::https_get(&fleet, "/metrics", &ca, Some((&cert, &key)));
    assert!(revoked.starts_with("HTTP/1.1 403"), "{revoked}");
    assert!(revoked.contains("revoked"), "{revoked}");
    assert!(!revoked.contains("secret-host"), "{revoked}");
    let denied = audit(&fleet)
        .iter()
        .any(|e| e["target"] == "/metrics" && e["outcome"] == "denied");
    assert!(denied, "the refused scrape is not audited");
}

/// Issue 19, item 2: uploads belong to a running backup job of the agent and count against
/// that job's quota (`--upload-quota` here; a policy's `upload_quota` overrides it, see
/// `policy::tests`). A backup past its quota fails with RESOURCE_EXHAUSTED naming the quota
/// (refusal `quota_exceeded`) and commits nothing; uploads naming no job, a finished job or
/// another agent's job are refused and audited; GC reclaims what the refused job uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_need_a_running_backup_job_and_stay_within_its_quota() {
    transport::install_crypto_provider();
    let src = tempfile::tempdir().expect("src");
    let small = tempfile::tempdir().expect("small");
    fs::write(small.path().join("note"), b"a small source under its quota").expect("write");
    let mut noise = vec![0u8; 12 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(src.path().join("big"), &noise).expect("write");
    let (fleet, job) = tokio::task::spawn_blocking({
        let (src, small) = (src.path().to_owned(), small.path().to_owned());
        move || {
            let mut fleet = Fleet::start_with(&["--upload-quota", "4MiB", "--gc-lease", "0s"]);
            let a = fleet.enroll("a");
            fleet.enroll("b");
            fleet.run_agent(&a, &[("data", &src), ("small", &small)], &[]);
            let (ok, job) = fleet.job(&["backup", "a", "--source", "data"]);
            assert!(!ok, "a backup past its quota succeeded: {job}");
            (fleet, job)
        }
    })
    .await
    .expect("setup");
    assert_eq!(job["refusal"], "quota_exceeded", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("upload quota of 4.0 MiB"), "{error}");
    assert_eq!(job["snapshot_ids"], serde_json::json!([]), "{job}");
    let finished = job["id"].as_str().expect("job id").to_string();

    // Raw uploads as a: no job, its finished job, another agent's job.
    let key = chunk_key(&fleet, "a");
    let blob = b"uploaded outside a job";
    let batch = || {
        tokio_stream::iter(vec![pb::ChunkBatch {
            chunks: vec![pb::ChunkBlob {
                id: key.id_of(blob).as_bytes().to_vec(),
                blob: codec::encode_raw(blob).into(),
                ..Default::default()
            }],
        }])
    };
    let mut api = as_agent(&fleet, "a").await;
    let put = async |api: &mut AgentApiClient<Channel>, job: Option<&str>| {
        let mut req = tonic::Request::new(batch());
        if let Some(j) = job {
            req.metadata_mut()
                .insert(lifeboat_proto::JOB_METADATA, j.parse().expect("metadata"));
        }
        api.put_chunks(req).await
    };
    let e = put(&mut api, None)
        .await
        .expect_err("an upload without a job");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = put(&mut api, Some(&finished))
        .await
        .expect_err("an upload on a finished job");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not running"), "{e:?}");
    let b_job = "00000000deadbeef";
    let e = put(&mut api, Some(b_job))
        .await
        .expect_err("an upload on a job not a's");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    tokio::task::block_in_place(|| {
        let refused = audit(&fleet)
            .iter()
            .filter(|e| e["action"] == "chunks.upload" && e["outcome"] == "denied")
            .count();
        assert!(
            refused >= 4,
            "{refused} refused uploads audited (quota and three raw)"
        );
        // What the refused job uploaded is reclaimed (the lease is 0 s here) once its pack
        // is sealed, which the next commit does.
        let (ok, small) = fleet.job(&["backup", "a", "--source", "small"]);
        assert!(ok, "a backup within its quota failed: {small}");
        let before = fleet.cli_json(&["status"])["chunks"]
            .as_u64()
            .expect("chunks");
        let gc = fleet.cli_json(&["gc"]);
        let swept = gc["swept"].as_u64().expect("swept");
        assert!(swept >= 1, "nothing of the refused job was reclaimed: {gc}");
        let after = fleet.cli_json(&["status"])["chunks"]
            .as_u64()
            .expect("chunks");
        assert_eq!(after, before - swept, "{gc}");
        let verify = fleet.cli(&["verify"]);
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
        eprintln!(
            "quota 4 MiB: the 12 MiB backup refused; of {before} chunks, GC swept {swept}, {after} left (the small snapshot's)"
        );
    });
}

/// C9 (part): a copy of everything the controller holds does not let anyone sign as an
/// agent or speak as one. After two agents enrolled and backed up, no file under the
/// controller's data directory (catalog and its WAL, keys, settings, store) contains either
/// agent's snapshot-signing key (its PKCS#8 file or the bare ed25519 seed) or its TLS
/// private key (PEM body or DER): they were made on the agents and never left them.
#[test]
fn c9_the_controller_holds_no_agent_private_key() {
    use base64::Engine as _;
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("src");
    fs::write(src.join("f"), b"some data to back up").expect("write");
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for name in ["a", "b"] {
        let agent = fleet.enroll(name);
        fleet.run_agent(&agent, &[("data", src.as_path())], &[]);
        fleet.backup(name, "data");
        let pkcs8 = fs::read(agent.state_dir.join("signing.key")).expect("signing key");
        SigningKey::from_pkcs8(&pkcs8).expect("a signing key");
        // ed25519 in PKCS#8: the 32-byte seed is the OCTET STRING inside an OCTET STRING.
        let seed = pkcs8
            .windows(4)
            .position(|w| w == [0x04, 0x22, 0x04, 0x20])
            .map(|at| pkcs8[at + 4..at + 36].to_vec())
            .expect("the seed in the PKCS#8 key");
        let pem = fs::read_to_string(agent.state_dir.join("tls.pem")).expect("tls.pem");
        let body: String = pem
            .split("-----BEGIN PRIVATE KEY-----")
            .nth(1)
            .and_then(|rest| rest.split("-----END PRIVATE KEY-----").next())
            .expect("a private key in tls.pem")
            .split_whitespace()
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .expect("PEM body");
        secrets.push((format!("{name}: signing.key"), pkcs8));
        secrets.push((format!("{name}: signing seed"), seed));
        secrets.push((format!("{name}: TLS key (DER)"), der));
        // The PEM body's first line as written (64 characters).
        secrets.push((
            format!("{name}: TLS key (PEM)"),
            body.as_bytes()[..64].to_vec(),
        ));
    }
    fleet.stop_controller();
    let files = lifeboat_tests::tree::files(&fleet.path("ctl"));
    assert!(files.len() > 10, "{files:?}");
    let mut bytes_read = 0usize;
    for file in &files {
        let content = fs::read(file).expect("read");
        bytes_read += content.len();
        for (what, secret) in &secrets {
            assert!(
                !content
                    .windows(secret.len())
                    .any(|w| w == secret.as_slice()),
                "{} holds {what}",
                file.display()
            );
        }
    }
    eprintln!(
        "C9: {} files ({bytes_read} bytes) under the controller's data directory hold none of {} agent secrets",
        files.len(),
        secrets.len()
    );
}

/// The fingerprints of the CAs in a PEM bundle.
fn fingerprints(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .map(|c| pki::fingerprint(c).expect("a certificate"))
        .collect()
}

/// `lifeboat ca status --json`.
fn ca_status(fleet: &Fleet) -> Value {
    fleet.cli_json(&["ca", "status"])
}

fn pending_agents(status: &Value) -> Vec<String> {
    status["agents_pending"]
        .as_array()
        .expect("agents_pending")
        .iter()
        .map(|h| h["name"].as_str().expect("name").to_string())
        .collect()
}

/// What a call made with `tls` comes to: `Ok(status)` if it reached the API (answered or
/// refused by it), `Err` if the connection was refused before (the handshake).
async fn reach(fleet: &Fleet, tls: ClientTls) -> Result<tonic::Status, String> {
    let channel = transport::connect(&fleet.url, tls)
        .await
        .map_err(|e| e.to_string())?;
    match OperatorApiClient::new(channel).status(pb::Empty {}).await {
        Ok(_) => Ok(tonic::Status::ok("answered")),
        // TLS 1.3 may report the server's refusal only with the first response, as a
        // connection that broke.
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ) =>
        {
            Err(s.to_string())
        }
        Err(s) => Ok(s),
    }
}

/// C9, rotating in bulk: the controller's CA key has been copied. `lifeboat ca rotate`
/// moves every connected agent (and the admin) to a new CA over their sessions, an agent
/// offline then moves when it comes back, a controller restart midway keeps the rotation,
/// backups go on throughout, and `lifeboat ca finish` (refused while anyone has not moved)
/// leaves the copied key worth nothing: its certificates are refused at the handshake and
/// every agent trusts the new CA alone. A snapshot from before restores identical after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c9_a_ca_rotation_moves_the_fleet_and_shuts_out_the_copied_ca() {
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let mut rng = lifeboat_tests::tree::Rng::new(9);
    lifeboat_tests::tree::make_tree(&src, &mut rng);
    let expected = lifeboat_tests::tree::manifest(&src);
    let root = fleet.path("restores");
    fs::create_dir_all(&root).expect("restore root");
    let agents: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| fleet.enroll(n))
        .collect();
    for agent in &agents {
        fleet.run_agent(agent, &[("data", src.as_path())], &[root.as_path()]);
    }
    let before = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("snapshot id")
        .to_string();
    // c and d are offline when the rotation starts.
    fleet.kill_agent("c");
    fleet.kill_agent("d");

    // The attacker's copy of the controller's CA, and a certificate it mints.
    let ctl_dir = fleet.path("ctl");
    let old_key = fs::read_to_string(ctl_dir.join("ca.key")).expect("ca.key");
    let old_crt = fs::read_to_string(ctl_dir.join("ca.crt")).expect("ca.crt");
    let old_fp = pki::fingerprint(&old_crt).expect("fingerprint");
    assert_eq!(old_fp, fleet.fingerprint);
    let (minted, _) = Ca::load(&old_crt, &old_key)
        .expect("the copied CA")
        .issue_client("operator:admin", Validity::from_now(pki::days(1)))
        .expect("a minted certificate");
    let minted_tls = |server_ca: &str| {
        ClientTls::with_identity(server_ca, &minted.cert_pem, &minted.key_pem).expect("tls")
    };
    // Before the rotation the minted certificate gets through the handshake: only the
    // catalog's serial check turns it away.
    let reached = reach(&fleet, minted_tls(&old_crt))
        .await
        .expect("the copied CA's certificate passes the handshake before the rotation");
    assert_eq!(reached.code(), tonic::Code::PermissionDenied, "{reached:?}");

    // Start: a new CA; the admin's identity is renewed under it at once.
    let started = fleet.cli_json(&["ca", "rotate"]);
    assert_eq!(started["rotating"], true, "{started}");
    assert_eq!(started["ca_fingerprint"], old_fp.as_str(), "{started}");
    let new_fp = started["next_fingerprint"]
        .as_str()
        .expect("the new CA")
        .to_string();
    assert_ne!(new_fp, old_fp);
    assert_eq!(started["operators_moved"], 1, "{started}");
    assert_eq!(
        started["identity_renewed"].as_str(),
        fleet.identity.to_str(),
        "{started}"
    );
    let admin = IdentityFile::load(&fleet.identity).expect("identity");
    assert_eq!(
        fingerprints(&admin.ca_pem),
        [old_fp.clone(), new_fp.clone()]
    );
    assert!(ctl_dir.join("ca-next.key").exists());
    // The connected agents move by themselves (renewed under the new CA and reconnected).
    let status = wait_for(
        "a and b to move to the new CA",
        Duration::from_secs(30),
        || {
            let s = ca_status(&fleet);
            (s["agents_moved"] == 2).then_some(s)
        },
    );
    assert_eq!(status["agents"], 4, "{status}");
    assert_eq!(pending_agents(&status), ["c", "d"], "{status}");
    // Monitoring sees it too: `lifeboat status`, and /metrics (an alert fires after a day).
    let s = fleet.cli_json(&["status"]);
    assert!(s["ca_rotation_started"].is_string(), "{s}");
    let page = tokio::task::block_in_place(|| lifeboat_tests::metrics(&fleet));
    assert_eq!(
        lifeboat_tests::counter(&page, "lifeboat_ca_rotation_agents_pending"),
        2
    );
    assert_eq!(
        lifeboat_tests::counter(&page, "lifeboat_ca_rotation_operators_pending"),
        0
    );
    assert!(lifeboat_tests::counter(&page, "lifeboat_ca_rotation_started_timestamp_seconds") > 0);
    for name in ["a", "b"] {
        let ca = fs::read_to_string(fleet.path(&format!("agents/{name}/ca.crt"))).expect("ca");
        assert_eq!(
            fingerprints(&ca),
            [old_fp.clone(), new_fp.clone()],
            "{name}"
        );
    }
    // Backups go on during the rotation, with the new certificates.
    fleet.backup("b", "data");
    // A controller restart midway keeps the rotation where it was.
    fleet.stop_controller();
    fleet.start_controller();
    fleet.wait_connected(2);
    let status = ca_status(&fleet);
    assert_eq!(status["rotating"], true, "{status}");
    assert_eq!(status["next_fingerprint"], new_fp.as_str(), "{status}");
    assert_eq!(status["agents_moved"], 2, "{status}");

    // Finishing is refused while anyone has not moved, and says who.
    let out = fleet.cli(&["ca", "finish"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "finished with c and d behind");
    assert!(
        err.contains("agent c") && err.contains("agent d") && err.contains("--force"),
        "{err}"
    );
    // c comes back and moves at its first session.
    fleet.run_agent(&agents[2], &[("data", src.as_path())], &[root.as_path()]);
    wait_for("c to move to the new CA", Duration::from_secs(30), || {
        (ca_status(&fleet)["agents_moved"] == 3).then_some(())
    });

    // Finish, cutting off d, which never came back.
    let finished = fleet.cli_json(&["ca", "finish", "--force"]);
    assert_eq!(finished["rotating"], false, "{finished}");
    assert_eq!(finished["finished"], true, "{finished}");
    assert_eq!(finished["agents_moved"], 3, "{finished}");
    assert_eq!(pending_agents(&finished), ["d"], "the one cut off");
    let page = tokio::task::block_in_place(|| lifeboat_tests::metrics(&fleet));
    assert_eq!(
        lifeboat_tests::counter(&page, "lifeboat_ca_rotation_started_timestamp_seconds"),
        0
    );
    assert_eq!(finished["ca_fingerprint"], new_fp.as_str(), "{finished}");
    assert!(!ctl_dir.join("ca-next.key").exists());
    assert!(!ctl_dir.join("ca-next.crt").exists());
    let key_now = fs::read_to_string(ctl_dir.join("ca.key")).expect("ca.key");
    assert_ne!(key_now, old_key, "the old CA key is gone");
    assert_eq!(
        fingerprints(&fs::read_to_string(ctl_dir.join("ca.crt")).expect("ca.crt")),
        [new_fp.as_str()]
    );
    // Everyone who moved trusts the new CA alone.
    let admin = IdentityFile::load(&fleet.identity).expect("identity");
    assert_eq!(fingerprints(&admin.ca_pem), [new_fp.as_str()]);
    for name in ["a", "b", "c"] {
        wait_for(
            &format!("{name} to trust the new CA alone"),
            Duration::from_secs(30),
            || {
                let ca = fs::read_to_string(fleet.path(&format!("agents/{name}/ca.crt"))).ok()?;
                (fingerprints(&ca) == [new_fp.as_str()]).then_some(())
            },
        );
    }
    // The copied CA no longer gets through the door: the handshake refuses it, audited.
    let audited = audit(&fleet).len();
    let refused = reach(&fleet, minted_tls(&admin.ca_pem)).await;
    assert!(
        refused.is_err(),
        "a certificate of the copied CA reached the API after the rotation: {refused:?}"
    );
    wait_for(
        "the refused handshake in the audit log",
        Duration::from_secs(10),
        || {
            audit(&fleet)[audited..]
                .iter()
                .any(|e| {
                    e["target"] == "tls.handshake"
                        && e["detail"]["reason"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("UnknownIssuer")
                })
                .then_some(())
        },
    );

    // The fleet works on: a backup of an agent that moved late, and the snapshot from
    // before the rotation restores identical.
    fleet.backup("c", "data");
    let target = root.join("before");
    let (ok, job) = fleet.restore_to(&before, "a", &target, &[]);
    assert!(
        ok,
        "restore after the rotation: {job}\n{}",
        fleet.agent_log("a")
    );
    lifeboat_tests::tree::assert_same(&expected, &target);
    // d was cut off: it cannot connect, and enrolls again to come back.
    let log_before = fleet.agent_log("d").len();
    fleet.spawn_agent(
        &agents[3],
        &[("data", src.as_path())],
        &[root.as_path()],
        &[],
    );
    wait_for(
        "d to fail connecting and say so",
        Duration::from_secs(30),
        || {
            let log = fleet.agent_log("d");
            log[log_before..]
                .contains("if the fleet's CA was rotated while it was offline")
                .then_some(())
        },
    );
    let d = fleet
        .cli_json(&["agents"])
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["name"] == "d")
        .cloned()
        .expect("d is listed");
    assert_eq!(d["connected"], false, "{d}");
    // The audit log says who rotated and whom the finish cut off.
    let entries = audit(&fleet);
    let find = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("{action} audited: {entries:?}"))
            .clone()
    };
    assert_eq!(find("ca.rotate")["actor"], "operator:admin");
    let finish = find("ca.finish");
    assert_eq!(finish["detail"]["forced"], true, "{finish}");
    assert_eq!(
        finish["detail"]["cut_off"],
        serde_json::json!(["agent d"]),
        "{finish}"
    );
}
