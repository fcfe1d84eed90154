//! Every refusal Lifeboat promises, each asserting the exact reason and that nothing was
//! written.

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use lifeboat_core::identity::IdentityFile;
use lifeboat_core::{ChunkKey, codec, pack};
use lifeboat_proto::pb;
use lifeboat_proto::transport::{self, ClientTls};
use lifeboat_tests::Fleet;

fn small_source(fleet: &Fleet) -> std::path::PathBuf {
    let src = fleet.path("src");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    let mut rng = lifeboat_tests::tree::Rng::new(7);
    fs::write(src.join("a.bin"), rng.bytes(100_000)).expect("write");
    fs::write(src.join("b.bin"), rng.bytes(120_000)).expect("write");
    fs::write(src.join("sub/c.txt"), rng.text(50_000)).expect("write");
    src
}

fn no_temp_files(dir: &std::path::Path) {
    for e in fs::read_dir(dir).expect("ls") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".lifeboat-"),
            "temp file {name} left in {}",
            dir.display()
        );
    }
}

/// A controller and agent `a` (restore root `roots/`) with one backup of a small source.
fn backed_up_small_source() -> (
    Fleet,
    std::path::PathBuf,
    std::path::PathBuf,
    serde_json::Value,
) {
    let mut fleet = Fleet::start();
    let src = small_source(&fleet);
    let a = fleet.enroll("a");
    let root = fleet.path("roots");
    fleet.run_agent(&a, &[("data", src.as_path())], &[root.as_path()]);
    let s = fleet.backup("a", "data");
    (fleet, src, root, s)
}

/// Runs `lifeboat restore SNAPSHOT --agent a --to TARGET --wait --json`.
fn restore(
    fleet: &Fleet,
    snapshot: &serde_json::Value,
    target: &std::path::Path,
) -> (bool, serde_json::Value) {
    fleet.restore_to(snapshot["id"].as_str().expect("id"), "a", target, &[])
}

#[test]
fn planted_symlink_in_the_target_is_refused_before_any_write() {
    let (fleet, _src, root, s) = backed_up_small_source();

    let target = root.join("t");
    let outside = fleet.path("outside");
    fs::create_dir_all(&target).expect("mkdir");
    fs::create_dir_all(&outside).expect("mkdir");
    std::os::unix::fs::symlink(&outside, target.join("sub")).expect("plant symlink");

    let (ok, job) = restore(&fleet, &s, &target);
    assert!(!ok, "restore through a planted symlink must fail: {job}");
    assert_eq!(job["state"], "failed");
    let err = job["error"].as_str().expect("error");
    assert!(
        err.contains("refusing to restore through symlink or outside the root at \"sub\""),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&outside).expect("ls").count(),
        0,
        "something was written outside the root"
    );
    let left: Vec<_> = fs::read_dir(&target)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("sub")],
        "the restore wrote before refusing"
    );
}

#[test]
fn a_tampered_chunk_fails_only_its_file() {
    let (fleet, src, root, s) = backed_up_small_source();

    // b.bin is one chunk (smaller than the minimum chunk size) stored raw (random bytes).
    let key =
        ChunkKey::from_slice(&fs::read(fleet.path("ctl/chunk.key")).expect("key")).expect("key");
    let id = key.id_of(&fs::read(src.join("b.bin")).expect("read"));
    let mut hit = None;
    for sub in fs::read_dir(fleet.path("ctl/store/packs")).expect("packs") {
        for p in fs::read_dir(sub.expect("dir").path()).expect("ls") {
            let p = p.expect("pack").path();
            if let Some(e) = pack::read_index(&p)
                .expect("index")
                .into_iter()
                .find(|e| e.id == id)
            {
                hit = Some((p, e));
            }
        }
    }
    let (pack_path, entry) = hit.expect("b.bin's chunk is in a pack");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack_path)
        .expect("open pack");
    // The tamperer holds the store's data key (root on the controller): the blob still
    // opens, and what must catch the change is the agent's check of the chunk's content.
    let mut stored = vec![0u8; entry.length as usize];
    f.read_exact_at(&mut stored, entry.offset).expect("read");
    let data_key = fleet.data_key().expect("an encrypted store");
    let chunk = data_key.chunk_key(&id);
    let mut blob = chunk.open_frame(&id, &stored).expect("opens");
    blob[codec::HEADER_LEN + 500] ^= 0x5a;
    let forged = chunk.seal_frame(&id, &blob).expect("seal");
    assert_eq!(forged.len(), stored.len());
    f.write_all_at(&forged, entry.offset).expect("tamper");
    drop(f);

    let target = root.join("t");
    let (ok, job) = restore(&fleet, &s, &target);
    assert!(!ok, "restore of a tampered chunk must fail: {job}");
    let err = job["error"].as_str().expect("error");
    assert!(
        err.contains("b.bin") && err.contains(&format!("chunk {id} does not match its content")),
        "{err}"
    );
    assert!(
        !target.join("b.bin").exists(),
        "a corrupted b.bin was left in place"
    );
    assert_eq!(
        fs::read(target.join("a.bin")).expect("a.bin"),
        fs::read(src.join("a.bin")).expect("src a.bin")
    );
    assert_eq!(
        fs::read(target.join("sub/c.txt")).expect("c.txt"),
        fs::read(src.join("sub/c.txt")).expect("src c.txt")
    );
    no_temp_files(&target);
    no_temp_files(&target.join("sub"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    transport::install_crypto_provider();
    let fleet = tokio::task::spawn_blocking(Fleet::start)
        .await
        .expect("start");
    let admin = IdentityFile::load(&fleet.identity).expect("identity");

    // Verifies the controller properly, but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(lifeboat_core::pki::cert_der(&admin.ca_pem).expect("ca"))
        .expect("root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let addr = transport::parse_url(&fleet.url).expect("url");
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
    let name =
        rustls::pki_types::ServerName::try_from(lifeboat_core::pki::CONTROLLER_NAME).expect("name");
    let res = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        // TLS 1.3: the server's verdict on our (missing) certificate arrives with the first read.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    }
    .await;
    let err = res.expect_err("the controller must refuse a client without a certificate");
    assert!(
        err.to_string().contains("CertificateRequired"),
        "unexpected refusal: {err}"
    );
    // The controller logs the refusal right after sending the alert; wait for the line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fleet.controller_log().contains("tls handshake refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "controller did not log the refusal:\n{}",
            fleet.controller_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The enrollment name accepts no certificate, but serves nothing except enrollment.
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates({
            let mut r = rustls::RootCertStore::empty();
            r.add(lifeboat_core::pki::cert_der(&admin.ca_pem).expect("ca"))
                .expect("root");
            r
        })
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let channel = transport::connect(
        &fleet.url,
        ClientTls::from_config(cfg, lifeboat_core::pki::ENROLL_NAME),
    )
    .await
    .expect("enroll channel");
    let status = pb::operator_api_client::OperatorApiClient::new(channel.clone())
        .status(pb::Empty {})
        .await
        .expect_err("operator call without identity");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let status = pb::agent_api_client::AgentApiClient::new(channel)
        .missing_chunks(pb::ChunkIds::default())
        .await
        .expect_err("agent call without identity");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[test]
fn join_tokens_are_single_use_expire_and_are_never_sent_to_an_impostor() {
    let fleet = Fleet::start();
    let token = fleet.token("10m");

    // A wrong CA fingerprint stops enrollment before the token is sent...
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = lifeboat_tests::bin("lifeboat-agent")
        .args([
            "enroll",
            "--controller",
            &fleet.url,
            "--token",
            &token,
            "--ca-fingerprint",
            &wrong,
            "--name",
            "x",
            "--state-dir",
        ])
        .arg(fleet.path("agents/x"))
        .output()
        .expect("enroll");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match the pinned fingerprint"),
        "{err}"
    );
    assert!(!fleet.path("agents/x/agent.json").exists());

    // ...so the token is still good for the real controller, exactly once.
    let out = fleet.enroll_with("first", &token);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fleet.enroll_with("second", &token);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("join token was already used"), "{err}");
    assert!(!fleet.path("agents/second/agent.json").exists());

    let short = fleet.token("1s");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = fleet.enroll_with("late", &short);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("join token has expired"), "{err}");

    let agents = fleet.cli_json(&["agents"]);
    let names: Vec<_> = agents
        .as_array()
        .expect("array")
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, vec!["first".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_chunk_that_does_not_match_its_id_is_refused() {
    transport::install_crypto_provider();
    let fleet = tokio::task::spawn_blocking(Fleet::start)
        .await
        .expect("start");
    let state = fleet.path("agents/a");
    let fleet = tokio::task::spawn_blocking(move || {
        fleet.enroll("a");
        fleet
    })
    .await
    .expect("enroll");
    // Inside a running backup job of a (uploads outside one are refused before this check).
    let mut job = lifeboat_tests::RawJob::start(&fleet, "a", "data").await;
    let key = ChunkKey::from_slice(&fs::read(state.join("chunk.key")).expect("key")).expect("key");

    let claimed = key.id_of(b"the bytes the id promises");
    let poisoned = pb::ChunkBlob {
        id: claimed.as_bytes().to_vec(),
        blob: codec::encode_raw(b"other bytes entirely").into(),
        ..Default::default()
    };
    let upload = job.request(tokio_stream::iter(vec![pb::ChunkBatch {
        chunks: vec![poisoned],
    }]));
    let status = job
        .api
        .put_chunks(upload)
        .await
        .expect_err("poisoned chunk accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains(&format!(
            "chunk {claimed} does not match its content; upload refused"
        )),
        "{}",
        status.message()
    );

    let missing = job
        .api
        .missing_chunks(pb::ChunkIds {
            ids: vec![claimed.as_bytes().to_vec()],
        })
        .await
        .expect("missing")
        .into_inner();
    assert_eq!(
        missing.ids,
        vec![claimed.as_bytes().to_vec()],
        "the refused chunk must not be stored"
    );

    // A correct chunk is accepted, for contrast.
    let good = b"the bytes the id promises";
    let upload = job.request(tokio_stream::iter(vec![pb::ChunkBatch {
        chunks: vec![pb::ChunkBlob {
            id: claimed.as_bytes().to_vec(),
            blob: codec::encode_raw(good).into(),
            ..Default::default()
        }],
    }]));
    let reply = job
        .api
        .put_chunks(upload)
        .await
        .expect("good chunk")
        .into_inner();
    assert_eq!(reply.stored, 1);
}

/// Usage errors exit 1 with a message naming what was wrong (exit 2 means a failed job or
/// verification, which scripts act on); help exits 0.
#[test]
fn cli_usage_errors_exit_1_and_name_the_mistake() {
    let cases: [(&[&str], &str); 6] = [
        (&["--no-such-flag"], "--no-such-flag"),
        (&["no-such-command"], "no-such-command"),
        (&["restore"], "<SNAPSHOT>"),
        (&["verify", "--snapshot", ""], "--snapshot"),
        (&["verify", "--sample", "101"], "101"),
        (&["verify", "--sample", "0"], "--sample"),
    ];
    for (args, named) in cases {
        let out = lifeboat_tests::bin("lifeboat")
            .args(args)
            .output()
            .expect("run lifeboat");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "lifeboat {args:?}: {err}");
        assert!(
            err.contains(named),
            "lifeboat {args:?} does not name {named}: {err}"
        );
    }
    let help = lifeboat_tests::bin("lifeboat")
        .arg("--help")
        .output()
        .expect("run lifeboat");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage"));
}

/// A controller with agent "raw" enrolled (not running) and a small source to back up.
async fn fleet_with_raw_agent() -> (Fleet, std::path::PathBuf) {
    tokio::task::spawn_blocking(|| {
        let fleet = Fleet::start();
        let src = small_source(&fleet);
        fleet.enroll("raw");
        (fleet, src)
    })
    .await
    .expect("setup")
}

/// After an attack: another agent enrolls and backs up `src`, so the controller still
/// serves, and its RSS grew less than 64 MiB since `rss_before`; returns its RSS then.
async fn another_agent_backs_up(fleet: Fleet, src: std::path::PathBuf, rss_before: u64) -> u64 {
    let rss_after = tokio::task::spawn_blocking(move || {
        let mut fleet = fleet;
        let b = fleet.enroll("b");
        fleet.run_agent(&b, &[("data", src.as_path())], &[]);
        fleet.backup("b", "data");
        fleet.controller_rss()
    })
    .await
    .expect("after");
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < 64 << 20,
        "controller RSS grew {} MiB",
        growth >> 20
    );
    rss_after
}

/// B1 (part): hostile bytes at the controller's port. 200 connections of garbage where a
/// TLS handshake belongs, and an agent's message over the size limit: each is refused, the
/// controller stays up with RSS growth under 64 MiB, and another agent backs up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_garbage_and_oversized_messages_leave_the_controller_serving() {
    use tokio::io::AsyncWriteExt;
    transport::install_crypto_provider();
    let (fleet, src) = tokio::task::spawn_blocking(|| {
        let mut fleet = Fleet::start();
        let src = small_source(&fleet);
        let a = fleet.enroll("a");
        fleet.enroll("raw");
        fleet.run_agent(&a, &[("data", src.as_path())], &[]);
        fleet.backup("a", "data");
        (fleet, src)
    })
    .await
    .expect("setup");
    let rss_before = fleet.controller_rss();
    let addr = fleet.url.trim_start_matches("https://").to_string();
    let mut rng = lifeboat_tests::tree::Rng::new(1);
    for i in 0..200 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
        // Random bytes, and every tenth a TLS record header claiming 16 MiB.
        let junk = if i % 10 == 0 {
            vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0xff, 0xff, 0xff]
        } else {
            rng.bytes(1 + (i * 37) % 4000)
        };
        let _ = tcp.write_all(&junk).await;
        let _ = tcp.shutdown().await;
    }
    // An agent's upload one byte over the message limit, inside a running backup job of
    // its own (uploads outside one are refused before any message is read).
    let mut job = lifeboat_tests::RawJob::start(&fleet, "raw", "data").await;
    let huge = pb::ChunkBatch {
        chunks: vec![pb::ChunkBlob {
            id: vec![0; 32],
            blob: vec![7u8; lifeboat_proto::MAX_MESSAGE_BYTES + 1].into(),
            ..Default::default()
        }],
    };
    let upload = job.request(tokio_stream::iter(vec![huge]));
    let refused = job
        .api
        .put_chunks(upload)
        .await
        .expect_err("an oversized message was accepted");
    // tonic refuses a message over the decoding limit as OUT_OF_RANGE, before any handler.
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    let refused_code = refused.code();
    // Still serving: another agent enrolls and backs up.
    let rss_after = another_agent_backs_up(fleet, src, rss_before).await;
    eprintln!(
        "B1: 200 garbage connections and an oversized message refused ({:?}); RSS {} -> {} MiB",
        refused_code,
        rss_before >> 20,
        rss_after >> 20
    );
}

/// One raw gRPC call of agent `name`: `frame` as the whole request body of `method`, sent
/// as the agent would over its mTLS channel. Returns the status it was answered with.
async fn raw_grpc_call(fleet: &Fleet, name: &str, method: &str, frame: Vec<u8>) -> tonic::Status {
    use http_body_util::BodyExt;
    use tower::{Service, ServiceExt};
    let mut channel = transport::connect(
        &fleet.url,
        lifeboat_tests::agent_tls(&fleet.path(&format!("agents/{name}"))),
    )
    .await
    .expect("connect as the agent");
    let req = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("/lifeboat.v1.AgentApi/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(frame),
        )))
        .expect("request");
    let resp = channel
        .ready()
        .await
        .expect("channel ready")
        .call(req)
        .await
        .expect("an answer, not a dropped connection");
    let (parts, body) = resp.into_parts();
    let trailers = body
        .collect()
        .await
        .expect("the answer's body")
        .trailers()
        .cloned()
        .unwrap_or_default();
    // A refusal before any message comes as headers only; otherwise in the trailers.
    tonic::Status::from_header_map(&parts.headers)
        .or_else(|| tonic::Status::from_header_map(&trailers))
        .expect("a grpc-status")
}

/// B1 (rest): frames that lie. A length prefix claiming 2 GiB (with five bytes behind it), a
/// frame cut short of its length, and a message whose protobuf does not parse (a varint
/// that never ends): each is refused with a status (OUT_OF_RANGE for the size before a byte
/// of it is buffered; INTERNAL for the others, as gRPC's status codes prescribe for a
/// request that does not parse), the controller's RSS does not grow by the 2 GiB claimed,
/// and an agent backs up afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_lying_length_prefixes_and_invalid_protobuf_are_refused_and_the_controller_serves_on() {
    transport::install_crypto_provider();
    let (fleet, src) = fleet_with_raw_agent().await;
    let rss_before = fleet.controller_rss();
    let frame = |claimed: u32, payload: &[u8]| {
        let mut f = vec![0u8];
        f.extend(claimed.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    // A 2 GiB claim: refused on the claim alone, never buffered.
    let huge = raw_grpc_call(&fleet, "raw", "MissingChunks", frame(0x7fff_ffff, b"short")).await;
    assert_eq!(
        huge.code(),
        tonic::Code::OutOfRange,
        "2 GiB claim: {huge:?}"
    );
    // A frame that ends before its length: 100 bytes claimed, 5 sent, then the stream ends.
    let truncated = raw_grpc_call(&fleet, "raw", "MissingChunks", frame(100, b"short")).await;
    assert_ne!(
        truncated.code(),
        tonic::Code::Ok,
        "a truncated frame was accepted"
    );
    // Field 1 (length-delimited) whose length varint never ends.
    let bad = [
        0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let invalid = raw_grpc_call(
        &fleet,
        "raw",
        "MissingChunks",
        frame(bad.len() as u32, &bad),
    )
    .await;
    assert_eq!(
        invalid.code(),
        tonic::Code::Internal,
        "invalid protobuf: {invalid:?}"
    );
    // Still serving: another agent enrolls and backs up.
    let rss_after = another_agent_backs_up(fleet, src, rss_before).await;
    eprintln!(
        "B1: 2 GiB claim -> {:?} ({}); truncated frame -> {:?} ({}); invalid protobuf -> {:?} ({}); RSS {} -> {} MiB",
        huge.code(),
        huge.message(),
        truncated.code(),
        truncated.message(),
        invalid.code(),
        invalid.message(),
        rss_before >> 20,
        rss_after >> 20
    );
}

/// B1 (rest): many streams from one peer. The controller advertises a limit on concurrent
/// streams per connection (HTTP/2 SETTINGS, read here over a raw HTTP/2 connection), so a
/// peer cannot start a handler per stream without bound; 10,000 concurrent calls over one
/// agent's channel are all answered, the controller's RSS grows by less than 64 MiB, and
/// another agent backs up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_ten_thousand_streams_from_one_peer_are_bounded() {
    transport::install_crypto_provider();
    let (fleet, src) = fleet_with_raw_agent().await;
    let tls = lifeboat_tests::agent_tls(&fleet.path("agents/raw"));
    // The limit the controller advertises, read off a raw HTTP/2 connection.
    let (config, server_name) = tls.parts();
    let addr = fleet.url.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from(server_name).expect("server name");
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("tls");
    let (send, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    // Any answer comes after the server's SETTINGS: once one is in, so is the limit.
    let req = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://{server_name}/lifeboat.v1.AgentApi/MissingChunks"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (answer, _) = send.send_request(req, true).expect("send");
    answer.await.expect("an answer");
    let advertised = send.current_max_send_streams();
    assert_eq!(
        advertised,
        lifeboat_proto::MAX_STREAMS_PER_CONNECTION as usize,
        "streams per connection the controller allows"
    );
    // 10,000 concurrent calls over one agent channel: every one answered.
    let rss_before = fleet.controller_rss();
    let channel = transport::connect(&fleet.url, tls).await.expect("connect");
    let api = pb::agent_api_client::AgentApiClient::new(channel);
    let calls = (0..10_000u32).map(|i| {
        let mut api = api.clone();
        async move {
            let id = blake3::hash(&i.to_le_bytes());
            api.missing_chunks(pb::ChunkIds {
                ids: vec![id.as_bytes().to_vec()],
            })
            .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        refused.is_empty(),
        "{} calls failed, first: {:?}",
        refused.len(),
        refused.first()
    );
    // Still serving: another agent enrolls and backs up.
    let rss_after = another_agent_backs_up(fleet, src, rss_before).await;
    eprintln!(
        "B1: {advertised} streams per connection advertised; 10,000 concurrent calls from one peer answered; RSS {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
}

/// A host path's tree out of walk order is refused at commit, naming the entry: the
/// restore reads trees in walk order (with no set of every path), so such a tree would be
/// listed and never restore. No agent writes one; a compromised one could. The same tree
/// in walk order, committed next in the same job, is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_out_of_walk_order_is_refused_at_commit() {
    use lifeboat_core::snapshot::{Record, Stats, TreeRef};
    use lifeboat_core::tree::{Entry, Kind, TreeWriter};
    transport::install_crypto_provider();
    let fleet = tokio::task::spawn_blocking(|| {
        let fleet = Fleet::start();
        fleet.enroll("raw");
        fleet
    })
    .await
    .expect("setup");
    let key = ChunkKey::from_slice(&fs::read(fleet.path("agents/raw/chunk.key")).expect("key"))
        .expect("key");
    let signing = lifeboat_core::sign::SigningKey::from_pkcs8(
        &fs::read(fleet.path("agents/raw/signing.key")).expect("key"),
    )
    .expect("key");
    let agent_id = tokio::task::block_in_place(|| fleet.cli_json(&["agents"]))[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut job = lifeboat_tests::RawJob::start(&fleet, "raw", "data").await;

    let mut commit = async |paths: &[&str]| {
        let mut root = Entry::new(Vec::new(), Kind::Dir);
        root.mode = 0o755;
        let mut w = TreeWriter::new(&root);
        for p in paths {
            let mut e = Entry::new(p.as_bytes().to_vec(), Kind::File);
            e.mode = 0o644;
            e.content_hash = key.content_hash(0, &[]);
            w.push(&e).expect("entry");
        }
        let tree = w.finish();
        let id = key.id_of(&tree);
        let upload = job.request(tokio_stream::iter(vec![pb::ChunkBatch {
            chunks: vec![pb::ChunkBlob {
                id: id.as_bytes().to_vec(),
                blob: codec::encode_raw(&tree).into(),
                ..Default::default()
            }],
        }]));
        job.api
            .put_chunks(upload)
            .await
            .expect("tree chunk uploaded");
        let now = lifeboat_tests::now_ms();
        let record = Record {
            version: 1,
            agent_id: agent_id.clone(),
            agent_name: "raw".into(),
            hostname: "raw".into(),
            source: "data".into(),
            source_kind: "path".into(),
            source_path: "/data".into(),
            job_id: job.job_id.clone(),
            parent: None,
            started_unix_ms: now - 1000,
            finished_unix_ms: now,
            tree: TreeRef {
                chunks: vec![id.to_hex()],
                size: tree.len() as u64,
                hash: blake3::keyed_hash(key.as_bytes(), &tree)
                    .to_hex()
                    .to_string(),
            },
            stats: Stats::default(),
            image: None,
            consistency: None,
        }
        .to_bytes();
        job.api
            .commit_snapshot(pb::CommitRequest {
                job_id: job.job_id.clone(),
                signature: signing.sign_record(&record),
                record,
            })
            .await
    };
    let refused = commit(&["b.txt", "a.txt"])
        .await
        .expect_err("a tree out of walk order was committed");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("\"a.txt\" is out of walk order"),
        "{refused:?}"
    );
    tokio::task::block_in_place(|| {
        assert_eq!(fleet.cli_json(&["snapshots"]), serde_json::json!([]));
    });
    commit(&["a.txt", "b.txt"])
        .await
        .expect("the same tree in walk order is committed");
    tokio::task::block_in_place(|| {
        let listed = fleet.cli_json(&["snapshots"]);
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    });
}

/// Unmounts a bind mount when the test ends, however it ends.
struct BindMount(std::path::PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// B9: hardlinks. 20,000 links to one file, a file linked from outside the source, and a
/// bind mount of the source inside itself (a directory that is its own ancestor). The
/// backup completes, keeps the loop empty and says why in the agent's log; the restore
/// gives back one inode with all its names (every link a link of the same file), the
/// outsider's link as a file of its own, and nothing but an empty directory at the loop.
#[test]
fn b9_many_links_a_link_from_outside_and_a_bind_mount_loop() {
    use std::os::unix::fs::MetadataExt;
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let outside = fleet.path("outside");
    fs::create_dir_all(src.join("data")).expect("mkdir");
    fs::create_dir_all(src.join("links")).expect("mkdir");
    fs::create_dir_all(src.join("loop")).expect("mkdir");
    fs::create_dir_all(&outside).expect("mkdir");
    let mut rng = lifeboat_tests::tree::Rng::new(9);
    let original = rng.bytes(100_000);
    fs::write(src.join("data/original.bin"), &original).expect("write");
    const LINKS: usize = 20_000;
    for i in 0..LINKS {
        fs::hard_link(
            src.join("data/original.bin"),
            src.join(format!("links/l{i:05}")),
        )
        .expect("link");
    }
    let shared = rng.bytes(50_000);
    fs::write(outside.join("shared.bin"), &shared).expect("write");
    fs::hard_link(outside.join("shared.bin"), src.join("from-outside.bin")).expect("link");
    let bound = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&src)
        .arg(src.join("loop"))
        .output()
        .expect("run mount");
    if !bound.status.success() {
        let why = String::from_utf8_lossy(&bound.stderr);
        assert!(
            std::env::var_os("LIFEBOAT_REQUIRE_MOUNT").is_none(),
            "bind-mounting the source into itself failed: {why}"
        );
        eprintln!("\n!!! SKIPPED: this test needs to bind-mount (root): {why}\n");
        return;
    }
    let _bind = BindMount(src.join("loop"));
    assert!(
        src.join("loop/data/original.bin").exists(),
        "the loop shows the source"
    );

    let a = fleet.enroll("a");
    let root = fleet.path("roots");
    fleet.run_agent(&a, &[("data", src.as_path())], &[root.as_path()]);
    let out = fleet.cli(&["backup", "a", "--source", "data", "--wait", "--json"]);
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job JSON");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a backup that left a path out exits 3, as restic's does: {job}\n{stderr}"
    );
    assert!(stderr.contains("left out 1 path"), "{stderr}");
    assert_eq!(job["state"], "succeeded", "{job}");
    let log = fleet.agent_log("a");
    assert!(
        log.contains("the same directory as") && log.contains("loop"),
        "the loop is named in the agent's log:\n{log}"
    );
    let warnings = job["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{job}");
    let warning = warnings[0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("data: ") && warning.contains("loop") && warning.contains("kept empty"),
        "the job says what it left out: {warning}"
    );
    let shown = fleet.cli(&["jobs", "show", job["id"].as_str().expect("id")]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("left out of the snapshots: 1") && shown.contains("kept empty"),
        "{shown}"
    );
    let snap = fleet.cli_json(&["snapshots"])[0].clone();
    assert_eq!(snap["id"], job["snapshot_ids"][0]);
    assert_eq!(
        snap["files"].as_u64(),
        Some(2),
        "one file per inode, the loop not descended: {snap}"
    );

    let target = root.join("restored");
    let (ok, job) = fleet.restore_to(snap["id"].as_str().expect("id"), "a", &target, &[]);
    assert!(ok, "restore: {job}");
    let first = fs::metadata(target.join("data/original.bin")).expect("original");
    assert_eq!(first.nlink(), LINKS as u64 + 1, "every name of the inode");
    assert_eq!(
        fs::read(target.join("data/original.bin")).expect("read"),
        original
    );
    let mut names = 0;
    for e in fs::read_dir(target.join("links")).expect("links") {
        let m = e.expect("entry").metadata().expect("metadata");
        assert_eq!(
            (m.dev(), m.ino()),
            (first.dev(), first.ino()),
            "a link of the original"
        );
        names += 1;
    }
    assert_eq!(names, LINKS);
    assert_eq!(
        fs::read(target.join("from-outside.bin")).expect("read"),
        shared
    );
    assert_eq!(
        fs::metadata(target.join("from-outside.bin"))
            .expect("outsider")
            .nlink(),
        1,
        "the outsider's link is a file of its own"
    );
    assert_eq!(
        fs::read_dir(target.join("loop")).expect("loop").count(),
        0,
        "the loop is restored empty"
    );
}

/// B10 (part): a source 1,000 directories deep, with names of 255 bytes, 20,000 files in
/// one directory and a sparse file of 256 MiB holding two islands of data. The backup and
/// the restore complete, the restore is identical (every path, mode, time and byte), and
/// the sparse file takes no more blocks than the source's plus 1%.
#[test]
fn b10_deep_wide_long_named_and_sparse_trees_restore_identical() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    let mut deep = src.join("deep");
    for _ in 0..1000 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).expect("mkdir 1,000 deep");
    fs::write(deep.join("bottom.txt"), b"at the bottom\n").expect("write");
    let long_dir = src.join(format!("{}-dir", "n".repeat(251)));
    fs::create_dir_all(&long_dir).expect("mkdir");
    fs::write(
        long_dir.join(format!("{}.txt", "f".repeat(251))),
        b"long name\n",
    )
    .expect("write");
    let wide = src.join("wide");
    fs::create_dir_all(&wide).expect("mkdir");
    for i in 0..20_000 {
        fs::write(wide.join(format!("file-{i:05}")), i.to_string()).expect("write");
    }
    let mut rng = lifeboat_tests::tree::Rng::new(10);
    {
        let mut f = fs::File::create(src.join("sparse.img")).expect("sparse");
        f.set_len(256 << 20).expect("set_len");
        for off in [3u64 << 20, 200 << 20] {
            f.seek(SeekFrom::Start(off)).expect("seek");
            f.write_all(&rng.bytes(64 << 10)).expect("write");
        }
    }
    let expected = lifeboat_tests::tree::manifest(&src);
    let a = fleet.enroll("a");
    let root = fleet.path("roots");
    fleet.run_agent(&a, &[("data", src.as_path())], &[root.as_path()]);
    let snap = fleet.backup("a", "data");
    assert_eq!(snap["files"].as_u64(), Some(20_003), "{snap}");
    let target = root.join("restored");
    let (ok, job) = fleet.restore_to(snap["id"].as_str().expect("id"), "a", &target, &[]);
    assert!(ok, "restore: {job}");
    lifeboat_tests::tree::assert_same(&expected, &target);
    let blocks = |p: &std::path::Path| fs::metadata(p).expect("sparse.img").blocks();
    let (source, restored) = (
        blocks(&src.join("sparse.img")),
        blocks(&target.join("sparse.img")),
    );
    assert!(
        restored <= source + source / 100,
        "sparse.img restored with {restored} blocks, the source has {source}"
    );
}

/// Bytes agent `pid` has read through `read` and its kin so far (`rchar` of
/// `/proc/PID/io`): the file reads of a backup, and its sockets' few.
fn bytes_read_by(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}

/// The ranges of `path` that hold data (`SEEK_DATA` / `SEEK_HOLE`); the rest reads as zeros.
fn data_ranges(path: &std::path::Path) -> Vec<std::ops::Range<u64>> {
    use rustix::fs::{SeekFrom, seek};
    let f = fs::File::open(path).expect("open");
    let len = f.metadata().expect("metadata").len();
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match seek(&f, SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => panic!("SEEK_DATA on {}: {e}", path.display()),
        };
        let end = seek(&f, SeekFrom::Hole(start)).expect("SEEK_HOLE").min(len);
        ranges.push(start..end);
        at = end;
    }
    ranges
}

/// B10 at a terabyte: a sparse file of 1 TiB holding three islands of data (one of them
/// at an odd offset) backs up reading its data and not its holes (the agent's reads stay
/// far below a GiB), and restores identical: the same length, mode and time, the same
/// bytes wherever either file holds data (everywhere else both read as zeros), and no
/// more blocks than the source's plus 1%.
#[test]
fn b10_a_terabyte_sparse_file_backs_up_and_restores_at_the_cost_of_its_data() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    const TIB: u64 = 1 << 40;
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    let disk = src.join("disk.img");
    let mut rng = lifeboat_tests::tree::Rng::new(1010);
    {
        let f = fs::File::create(&disk).expect("disk.img");
        f.set_len(TIB)
            .expect("a 1 TiB sparse file in the test's directory");
        for (off, len) in [
            (0, 1 << 20),
            ((300 << 30) + 5, 64 << 10),
            (TIB - (10 << 20), 3 << 20),
        ] {
            f.write_all_at(&rng.bytes(len), off).expect("island");
        }
    }
    let a = fleet.enroll("a");
    let root = fleet.path("roots");
    fleet.run_agent(&a, &[("data", src.as_path())], &[root.as_path()]);
    let before = bytes_read_by(fleet.agent_pid("a"));
    let snap = fleet.backup("a", "data");
    let read = bytes_read_by(fleet.agent_pid("a")) - before;
    assert!(
        read < 1 << 30,
        "the backup of a 1 TiB file with 4 MiB of data read {read} bytes: its holes were read"
    );
    let target = root.join("restored");
    let (ok, job) = fleet.restore_to(snap["id"].as_str().expect("id"), "a", &target, &[]);
    assert!(ok, "restore: {job}");
    let restored = target.join("disk.img");
    let (s, r) = (
        fs::metadata(&disk).expect("source"),
        fs::metadata(&restored).expect("restored"),
    );
    assert_eq!(r.len(), TIB, "restored length");
    assert_eq!(
        (r.mode(), r.mtime()),
        (s.mode(), s.mtime()),
        "mode and mtime"
    );
    assert!(
        r.blocks() <= s.blocks() + s.blocks() / 100,
        "disk.img restored with {} blocks, the source has {}",
        r.blocks(),
        s.blocks()
    );
    let (sf, rf) = (
        fs::File::open(&disk).expect("source"),
        fs::File::open(&restored).expect("restored"),
    );
    let mut compared = 0;
    for range in data_ranges(&disk).into_iter().chain(data_ranges(&restored)) {
        let len = usize::try_from(range.end - range.start).expect("range");
        assert!(
            len <= 64 << 20,
            "a data range of {len} bytes at {}",
            range.start
        );
        let (mut x, mut y) = (vec![0; len], vec![0; len]);
        sf.read_exact_at(&mut x, range.start).expect("read source");
        rf.read_exact_at(&mut y, range.start)
            .expect("read restored");
        assert!(x == y, "disk.img differs within {range:?}");
        compared += len;
    }
    assert!(compared >= 4 << 20, "compared {compared} bytes of data");
}

/// B6: a process racing the restore swaps the target's directories for symlinks to a
/// directory outside it, in a tight loop (at least 10,000 swaps, restores run again until
/// then). Nothing outside the target changes: every directory is opened beneath the
/// target's handle with symlinks refused (`openat2` RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS),
/// so a swapped component fails the open instead of being followed. A restore may fail
/// (it met a symlink where its tree has a directory), or succeed where the race missed.
/// The tree holds 2,000 files; soaking (`LIFEBOAT_SOAK=1`), the checklist's million.
#[test]
fn b6_directories_swapped_for_symlinks_during_a_restore_lead_nowhere() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const SWAPS: u64 = 10_000;
    // Directories, and files in each and in its `sub`.
    let (dirs, files) = match lifeboat_tests::soaking() {
        true => (5_000, 100),
        false => (100, 10),
    };
    let mut fleet = Fleet::start();
    let src = fleet.path("src");
    for d in 0..dirs {
        let dir = src.join(format!("d{d:04}"));
        fs::create_dir_all(dir.join("sub")).expect("mkdir");
        for f in 0..files {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).expect("write");
            fs::write(
                dir.join("sub").join(format!("g{f}")),
                format!("{d}/sub/{f}"),
            )
            .expect("write");
        }
    }
    let outside = fleet.path("outside");
    fs::create_dir_all(outside.join("sub")).expect("mkdir");
    fs::write(outside.join("keep.txt"), b"untouched").expect("write");
    let before = lifeboat_tests::tree::manifest(&outside);
    let a = fleet.enroll("a");
    let root = fleet.path("roots");
    fleet.run_agent(&a, &[("data", src.as_path())], &[root.as_path()]);
    let snap = fleet.backup("a", "data")["id"]
        .as_str()
        .expect("id")
        .to_string();

    let swaps = Arc::new(AtomicU64::new(0));
    let (mut runs, mut failed) = (0, 0);
    let mut why = String::new();
    while swaps.load(Ordering::Relaxed) < SWAPS && runs < 50 {
        let target = root.join(format!("race-{runs}"));
        fs::create_dir_all(&target).expect("target");
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = {
            let (target, outside, stop, swaps) =
                (target.clone(), outside.clone(), stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let d = format!("d{:04}", i % dirs);
                    let (dir, moved) = (target.join(&d), target.join(format!("{d}.moved")));
                    i += 1;
                    if fs::rename(&dir, &moved).is_err() {
                        // Not made yet: plant the symlink first, and take it away after.
                        if std::os::unix::fs::symlink(&outside, &dir).is_ok() {
                            swaps.fetch_add(1, Ordering::Relaxed);
                            let _ = fs::remove_file(&dir);
                        }
                        continue;
                    }
                    if std::os::unix::fs::symlink(&outside, &dir).is_ok() {
                        swaps.fetch_add(1, Ordering::Relaxed);
                        let _ = fs::remove_file(&dir);
                    }
                    let _ = fs::rename(&moved, &dir);
                }
            })
        };
        let to = target.to_str().expect("utf-8").to_string();
        let job = fleet.start_job(&["restore", &snap, "--agent", "a", "--to", &to]);
        let end = lifeboat_tests::wait_for(
            "the restore to end",
            std::time::Duration::from_secs(3_600),
            || {
                let j = fleet.job_info(&job);
                (j["state"] != "running" && j["state"] != "queued").then_some(j)
            },
        );
        stop.store(true, Ordering::Relaxed);
        attacker.join().expect("attacker");
        if end["state"] != "succeeded" {
            failed += 1;
            why = end["error"].as_str().unwrap_or_default().to_string();
        }
        runs += 1;
        assert_eq!(
            lifeboat_tests::tree::manifest(&outside),
            before,
            "the directory outside the target changed during restore {runs}: {end}"
        );
    }
    let swaps = swaps.load(Ordering::Relaxed);
    eprintln!(
        "B6: {swaps} swaps over {runs} restores of {} files ({failed} failed, the last: {why}); nothing outside the target changed",
        dirs * files * 2
    );
    assert!(swaps >= SWAPS, "only {swaps} swaps in {runs} restores");
}

/// B2 on every run: each input the fuzzers kept (`fuzz/corpus/TARGET/`, the inputs that
/// reached new code in their timed runs, minimized) and every input that once broke a
/// target (`fuzz/regressions/TARGET/`, kept by hand, out of minimization's reach) goes
/// through the same assertion as its fuzz target (`fuzz/checks.rs`): refused with an error,
/// or parsed to something sound; never a panic. The timed runs themselves are
/// `fuzz/soak.sh` (`BENCHMARKS.md`).
#[test]
fn b2_every_kept_fuzz_input_is_refused_or_parsed_soundly() {
    mod checks {
        include!("../../fuzz/checks.rs");
    }
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 5] = [
        ("codec_decode", checks::codec_decode),
        ("envelope_parse", checks::envelope_parse),
        ("pack_index", checks::pack_index),
        ("pack_salvage", checks::pack_salvage),
        ("tree_parse", checks::tree_parse),
    ];
    let fuzz = lifeboat_tests::repo_dir().join("fuzz");
    let mut counts = Vec::new();
    for (target, check) in targets {
        let dir = fuzz.join("corpus").join(target);
        let mut inputs: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        assert!(
            !inputs.is_empty(),
            "{target}: no kept input in {}",
            dir.display()
        );
        if let Ok(found) = fs::read_dir(fuzz.join("regressions").join(target)) {
            inputs.extend(found.map(|e| e.expect("entry").path()));
        }
        for input in &inputs {
            let bytes = fs::read(input).expect("read");
            if let Err(panic) = std::panic::catch_unwind(|| check(&bytes)) {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                panic!("{target} on {}: {why}", input.display());
            }
        }
        counts.push(format!("{target} {}", inputs.len()));
    }
    eprintln!(
        "B2 (kept corpus): every input replayed, 0 panics: {}",
        counts.join(", ")
    );
}
