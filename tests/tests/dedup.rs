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

/// The two-sample Kolmogorov-Smirnov statistic of `a` and `b` and its asymptotic p-value
/// (the chance of a D this large from one distribution).
fn ks(a: &mut [u64], b: &mut [u64]) -> (f64, f64) {
    a.sort_unstable();
    b.sort_unstable();
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] == x {
            i += 1;
        }
        while j < b.len() && b[j] == x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    let ne = n * m / (n + m);
    let lambda = (ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * d;
    let p = (1..=100)
        .map(|k| {
            let k = k as f64;
            2.0 * (-1f64).powf(k - 1.0) * (-2.0 * k * k * lambda * lambda).exp()
        })
        .sum::<f64>()
        .clamp(0.0, 1.0);
    (d, p)
}

/// B14: a backs up 4,200 small files (a chunk each); agent b probes 1,000 times for
/// chunks only a holds and 1,000 times for chunks nobody holds, one id per call,
/// interleaved; then 100 times each with 4,096 distinct ids a call (the most a call may
/// ask), where a per-id difference in the controller's work would add up. Every answer is "missing", and the controller does the same lookups for both (whose
/// a chunk is, asked of every id). The latency distributions are compared (two-sample
/// Kolmogorov-Smirnov) and printed, not asserted: on a shared machine a timing assertion
/// fails by chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b14_probes_for_another_agents_chunks_answer_as_for_chunks_nobody_has() {
    let (fleet, _dirs, held) = tokio::task::spawn_blocking(|| {
        let mut fleet = Fleet::start();
        let mut rng = Rng::new(41);
        let dirs = [
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        ];
        for i in 0..4_200 {
            std::fs::write(dirs[0].path().join(format!("f{i:04}")), rng.bytes(2048))
                .expect("write");
        }
        for (name, dir) in ["a", "b"].iter().zip(&dirs) {
            let agent = fleet.enroll(name);
            fleet.run_agent(&agent, &[("data", dir.path())], &[]);
        }
        fleet.backup("a", "data");
        let mut held: Vec<ChunkId> = fleet
            .chunk_index()
            .into_iter()
            .map(|(id, ..)| ChunkId::parse_hex(&id).expect("id"))
            .collect();
        // In no order, as random ids are (the index lists them sorted, and sorted ids find
        // their rows faster: that would be the probe's order speaking, not the store).
        for i in (1..held.len()).rev() {
            held.swap(i, rng.next_u64() as usize % (i + 1));
        }
        (fleet, dirs, held)
    })
    .await
    .expect("fleet");
    assert!(held.len() >= 4_200, "{} chunks", held.len());
    transport::install_crypto_provider();
    let channel = transport::connect(&fleet.url, agent_tls(&fleet.path("agents/b")))
        .await
        .expect("connect");
    let mut client = AgentApiClient::new(channel);
    let mut rng = Rng::new(14);
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let mut figures = Vec::new();
    for (probes, per_call) in [(1_000, 1), (100, 4_096)] {
        let (mut theirs, mut nobodys) = (Vec::new(), Vec::new());
        for i in 0..2 * probes {
            let ids: Vec<Vec<u8>> = (0..per_call)
                .map(|k| match i % 2 {
                    0 => held[(i / 2 * per_call + k) % held.len()]
                        .as_bytes()
                        .to_vec(),
                    _ => rng.bytes(32),
                })
                .collect();
            let t = std::time::Instant::now();
            let answer = client
                .missing_chunks(pb::ChunkIds { ids: ids.clone() })
                .await
                .expect("missing chunks")
                .into_inner()
                .ids;
            let took = t.elapsed().as_micros() as u64;
            assert_eq!(answer, ids, "probe {i}: every id is missing to b");
            match i % 2 {
                0 => theirs.push(took),
                _ => nobodys.push(took),
            }
        }
        let (m1, m2) = (median(&theirs), median(&nobodys));
        let (d, p) = ks(&mut theirs, &mut nobodys);
        figures.push(format!(
            "{probes} calls of {per_call} id(s) each way: median {m1} / {m2} µs, Kolmogorov-Smirnov D = {d:.3}, p = {p:.2}"
        ));
    }
    eprintln!(
        "B14: b probing for a's chunks and for chunks nobody has, every answer \"missing\"; {}",
        figures.join("; ")
    );
}
