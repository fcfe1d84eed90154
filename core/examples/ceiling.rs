//! The machine's ceiling for a first backup: the agent's CPU work alone (read from the page
//! cache, FastCDC, keyed BLAKE3, zstd at the given level with the same skip of
//! incompressible chunks) on N threads, with no network, no store and no catalog. Also
//! reports what the chunks would occupy in a store (unique chunks, encoded), so compression
//! settings can be compared on size without a full run.
//!
//!     cargo run --release -p lifeboat-core --example ceiling -- DIR [--threads N] [--level L]
//!
//! Prints one JSON line: bytes, seconds, MB/s, CPU seconds, unique chunks, encoded bytes and
//! the CPU seconds spent in each stage (summed over threads).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lifeboat_core::ChunkKey;
use lifeboat_core::chunker::Chunker;
use lifeboat_core::codec::{DEFAULT_LEVEL, Encoder};
use lifeboat_core::tree::Kind;

#[derive(Default)]
struct Totals {
    bytes: u64,
    unique_chunks: u64,
    unique_bytes: u64,
    encoded_bytes: u64,
    read_chunk: Duration,
    hash: Duration,
    compress: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut level = DEFAULT_LEVEL;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().ok_or("--threads needs a number")?.parse()?,
            "--level" => level = args.next().ok_or("--level needs a number")?.parse()?,
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a}").into()),
        }
    }
    let dir = dir.ok_or("usage: ceiling DIR [--threads N] [--level L]")?;
    let walked = lifeboat_core::walk::scan(&dir)?;
    let files: Vec<PathBuf> = walked
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| lifeboat_core::walk::join(&dir, &e.path))
        .collect();
    let key = ChunkKey::from_bytes(*blake3::hash(b"ceiling benchmark key").as_bytes());
    let queue = Mutex::new(files.into_iter());
    let seen = Mutex::new(HashSet::new());
    let totals = Mutex::new(Totals::default());
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| -> Result<(), lifeboat_core::Error> {
                let mut enc = Encoder::new(level)?;
                let mut buf = vec![0u8; lifeboat_core::chunker::BUFFER_LEN];
                let mut t = Totals::default();
                while let Some(path) = queue.lock().ok().and_then(|mut q| q.next()) {
                    let file = std::fs::File::open(&path)
                        .map_err(|e| lifeboat_core::Error::io(path.display().to_string(), e))?;
                    let mut chunks = Chunker::with_buffer(file, &mut buf);
                    loop {
                        let t0 = Instant::now();
                        let Some(chunk) = chunks.next() else { break };
                        let chunk = chunk?;
                        let t1 = Instant::now();
                        let id = key.id_of(&chunk);
                        let t2 = Instant::now();
                        t.read_chunk += t1 - t0;
                        t.hash += t2 - t1;
                        t.bytes += chunk.len() as u64;
                        if seen.lock().map(|mut s| s.insert(id)).unwrap_or(false) {
                            t.unique_chunks += 1;
                            t.unique_bytes += chunk.len() as u64;
                            let blob = enc.encode_chunk(chunk)?;
                            t.encoded_bytes += blob.len() as u64;
                            t.compress += t2.elapsed();
                        }
                    }
                }
                if let Ok(mut all) = totals.lock() {
                    all.bytes += t.bytes;
                    all.unique_chunks += t.unique_chunks;
                    all.unique_bytes += t.unique_bytes;
                    all.encoded_bytes += t.encoded_bytes;
                    all.read_chunk += t.read_chunk;
                    all.hash += t.hash;
                    all.compress += t.compress;
                }
                Ok(())
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let t = totals.into_inner().map_err(|_| "a worker panicked")?;
    println!(
        "{{\"threads\":{threads},\"level\":{level},\"bytes\":{},\"seconds\":{secs:.3},\"mb_per_s\":{:.1},\"cpu_seconds\":{cpu:.2},\"unique_chunks\":{},\"unique_bytes\":{},\"encoded_bytes\":{},\"cpu_read_chunk\":{:.2},\"cpu_hash\":{:.2},\"cpu_compress\":{:.2}}}",
        t.bytes,
        t.bytes as f64 / secs / 1e6,
        t.unique_chunks,
        t.unique_bytes,
        t.encoded_bytes,
        t.read_chunk.as_secs_f64(),
        t.hash.as_secs_f64(),
        t.compress.as_secs_f64(),
    );
    Ok(())
}

/// User + system CPU seconds of this process so far (/proc/self/stat, in clock ticks of
/// 1/100 s, the value every Linux build uses for USER_HZ).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
