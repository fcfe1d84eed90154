//! The chunk index at scale: insert and lookup rates of the catalog's `chunks` table as it
//! grows to `--chunks` entries (default 10 million), and its size on disk per chunk.
//!
//!     cargo run --release -p lifeboat-controller --example chunk_index -- [--chunks N] [--dir DIR]
//!
//! Chunks are inserted the way the controller does when it seals a pack (one transaction
//! per pack of 32 chunks, through `Catalog::insert_pack`); lookups go through
//! `Catalog::unknown_chunks` (what `MissingChunks` asks, 4096 ids per call) and
//! `Catalog::chunk_location` (what a restore reads). Prints one JSON object.

use std::time::Instant;

use lifeboat_controller::catalog::Catalog;
use lifeboat_core::ChunkId;
use lifeboat_core::pack::{IndexEntry, SealedPack};

const PER_PACK: u64 = 32;

fn id(n: u64) -> ChunkId {
    ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn size_of_dir(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: u64 = arg("--chunks").map_or(Ok(10_000_000), |s| s.parse())?;
    let dir = match arg("--dir") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join("lifeboat-chunk-index"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let catalog = Catalog::open(&dir.join("catalog.db"))?;

    // Inserts, timed per tenth so the rate as the table grows is visible.
    let mut marks = Vec::new();
    let started = Instant::now();
    let mut tenth = Instant::now();
    let mut n = 0u64;
    while n < total {
        let entries = (n..(n + PER_PACK).min(total))
            .map(|i| IndexEntry {
                id: id(i),
                offset: (i % PER_PACK) << 20,
                length: 1 << 20,
            })
            .collect::<Vec<_>>();
        n += entries.len() as u64;
        let pack = SealedPack {
            name: hex::encode(id(u64::MAX - n).as_bytes()),
            path: dir.join("unused"),
            size: PER_PACK << 20,
            entries,
        };
        catalog.insert_pack(&pack, &Default::default(), 0)?;
        if n % (total / 10).max(PER_PACK) < PER_PACK || n == total {
            let secs = tenth.elapsed().as_secs_f64();
            marks.push(
                serde_json::json!({ "chunks": n, "inserts_per_sec": (total / 10) as f64 / secs }),
            );
            eprintln!(
                "{n} chunks, {:.0} inserts/s over the last tenth",
                (total / 10) as f64 / secs
            );
            tenth = Instant::now();
        }
    }
    let insert_secs = started.elapsed().as_secs_f64();

    // MissingChunks: 4096 ids per call, half stored and half new (a backup of changed data).
    let calls = 200u64;
    let t = Instant::now();
    let mut unknown = 0;
    for c in 0..calls {
        let ids: Vec<ChunkId> = (0..4096u64)
            .map(|i| {
                let k = (c * 4096 + i).wrapping_mul(2_654_435_761) % total;
                if i % 2 == 0 {
                    id(k)
                } else {
                    id(total + c * 4096 + i)
                }
            })
            .collect();
        unknown += catalog.unknown_chunks(&ids)?.len();
    }
    let lookups_per_sec = (calls * 4096) as f64 / t.elapsed().as_secs_f64();
    assert_eq!(unknown as u64, calls * 2048, "half the ids are new");

    // Restore reads: one location per chunk, random order.
    let reads = 200_000u64;
    let t = Instant::now();
    for i in 0..reads {
        let k = i.wrapping_mul(2_654_435_761) % total;
        catalog
            .chunk_location(&id(k))?
            .ok_or("a stored chunk has no location")?;
    }
    let locations_per_sec = reads as f64 / t.elapsed().as_secs_f64();

    drop(catalog);
    // Size after a checkpoint (closing the last connection folds the WAL in).
    let bytes = size_of_dir(&dir);
    let out = serde_json::json!({
        "chunks": total,
        "insert_seconds": insert_secs,
        "inserts_per_sec": total as f64 / insert_secs,
        "inserts_per_sec_by_size": marks,
        "missing_chunks_lookups_per_sec": lookups_per_sec,
        "chunk_locations_per_sec": locations_per_sec,
        "catalog_bytes": bytes,
        "bytes_per_chunk": bytes as f64 / total as f64,
    });
    println!("{out}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
