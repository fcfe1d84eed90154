//! No dedup oracle (issue 19, item 3): an agent asking which chunks are missing learns
//! nothing about what other machines hold. A chunk stored only for another agent is
//! reported missing, uploaded, verified and dropped as a duplicate: stored once. The price,
//! measured here: a second machine with the same data uploads it once on its first backup
//! (and never again); `--dedup-scope fleet` trades that for fleet-wide answers.

use lifeboat_core::ChunkId;
use lifeboat_proto::pb::{self, agent_api_client::AgentApiClient};
use lifeboat_proto::transport;
use lifeboat_tests::tree::Rng;
use lifeboat_tests::{Fleet, agent_tls};
use serde_json::Value;

const SIZE: usize = 3 << 20;

/// Two agents with the same 3 MiB file; `a` backs it up first. Returns the fleet, the
/// sources, and the chunk ids the store holds after `a`'s backup.
fn two_machines(serve_args: &[&str]) -> (Fleet, Vec<tempfile::TempDir>, Vec<ChunkId>) {
    let mut fleet = Fleet::start_with(serve_args);
    let data = Rng::new(91).bytes(SIZE);
    let mut dirs = Vec::new();
    for name in ["a", "b"] {
        let src = tempfile::tempdir().expect("src");
        std::fs::write(src.path().join("shared.bin"), &data).expect("write");
        let agent = fleet.enroll(name);
        fleet.run_agent(&agent, &[("data", src.path())], &[]);
        dirs.push(src);
    }
    fleet.backup("a", "data");
    let held = fleet
        .chunk_index()
        .into_iter()
        .map(|(id, ..)| ChunkId::parse_hex(&id).expect("id"))
        .collect();
    (fleet, dirs, held)
}

async fn missing(fleet: &Fleet, agent: &str, ids: &[ChunkId]) -> Vec<Vec<u8>> {
    transport::install_crypto_provider();
    let channel = transport::connect(
        &fleet.url,
        agent_tls(&fleet.path(&format!("agents/{agent}"))),
    )
    .await
    .expect("connect");
    AgentApiClient::new(channel)
        .missing_chunks(pb::ChunkIds {
            ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
        })
        .await
        .expect("missing chunks")
        .into_inner()
        .ids
}

fn uploaded(job: &Value) -> u64 {
    job["progress"]["bytes_uploaded"]
        .as_u64()
        .expect("bytes uploaded")
}

fn stored(fleet: &Fleet) -> (u64, u64) {
    let s = fleet.cli_json(&["status"]);
    (
        s["chunks"].as_u64().expect("chunks"),
        s["stored_bytes"].as_u64().expect("bytes"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_learns_nothing_about_what_others_hold() {
    let (fleet, _dirs, held) = tokio::task::spawn_blocking(|| two_machines(&[]))
        .await
        .expect("fleet");
    assert!(held.len() > 3, "{held:?}");
    // The holder is answered truthfully; the other machine is told all of it is missing.
    assert!(missing(&fleet, "a", &held).await.is_empty());
    assert_eq!(missing(&fleet, "b", &held).await.len(), held.len());

    // b's first backup uploads the shared data once more; the store keeps it once.
    let before = stored(&fleet);
    let fleet = tokio::task::spawn_blocking(move || {
        let (ok, job) = fleet.job(&["backup", "b", "--source", "data"]);
        assert!(ok, "{job}");
        assert!(
            uploaded(&job) as usize > SIZE / 2,
            "b proved it holds the data: {job}"
        );
        let after = stored(&fleet);
        eprintln!(
            "price of no oracle: b's first backup uploaded {} B of a {SIZE} B file a already stored; the store grew {} B",
            uploaded(&job),
            after.1 - before.1
        );
        assert!(
            after.1 - before.1 < (SIZE / 10) as u64,
            "stored once: {before:?} -> {after:?}"
        );
        // Later backups upload nothing new.
        let (ok, job) = fleet.job(&["backup", "b", "--source", "data"]);
        assert!(ok, "{job}");
        assert!(uploaded(&job) < 64 << 10, "{job}");
        fleet
    })
    .await
    .expect("backups");
    // Now b holds the file's chunks too; only a's own tree (which b never had) stays
    // hidden.
    let still = missing(&fleet, "b", &held).await;
    assert!(
        still.len() <= 2 && still.len() < held.len(),
        "{} of {}",
        still.len(),
        held.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_that_trusts_itself_can_answer_fleet_wide() {
    let (fleet, _dirs, held) =
        tokio::task::spawn_blocking(|| two_machines(&["--dedup-scope", "fleet"]))
            .await
            .expect("fleet");
    assert!(missing(&fleet, "b", &held).await.is_empty());
    tokio::task::spawn_blocking(move || {
        let (ok, job) = fleet.job(&["backup", "b", "--source", "data"]);
        assert!(ok, "{job}");
        assert!(uploaded(&job) < 64 << 10, "nothing uploaded twice: {job}");
    })
    .await
    .expect("backup");
}
