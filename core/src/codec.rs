//! The chunk blob format.
//!
//! ```text
//! offset size field
//! 0      4    magic "LBCK"
//! 4      1    format version (1)
//! 5      1    flags: bit 0 = payload is zstd; bits 1..7 reserved (0), room for encryption
//! 6      2    reserved, 0
//! 8      4    raw length, u32 little endian (<= chunker::MAX_SIZE)
//! 12     ..   payload: zstd frame, or the raw bytes
//! ```
//!
//! Decoding never trusts the blob: the raw length is bounded by the maximum chunk size, zstd
//! output is written into a buffer of exactly that capacity (more output is an error), and
//! the zstd window is capped at the maximum chunk size.

use crate::chunker::MAX_SIZE;
use crate::{Error, Result};

pub const MAGIC: &[u8; 4] = b"LBCK";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 12;
const FLAG_ZSTD: u8 = 1;
/// log2 of MAX_SIZE: zstd frames declaring a larger window are refused.
const MAX_WINDOW_LOG: u32 = 22;
/// Default zstd level for chunk data: level 3 (zstd's own default, and what restic's "auto"
/// and borg's `zstd,3` use). On the shared benchmark data (BENCHMARKS.md, 3 runs each) level
/// 1 made a store 1.5% larger (1605 vs 1582 MB after two days) for a first backup only
/// about 3% shorter (5.8 vs 6.0 s; 9.8 vs 10.3 CPU-s): the store is paid for every day,
/// the first backup once. Day-2 backups and restores barely change (decompression costs the
/// same). `--compression-level 1` on the agent trades back.
pub const DEFAULT_LEVEL: i32 = 3;
/// Bytes sampled to decide whether a chunk is worth compressing, in [`PROBE_SLICES`] slices
/// spread over the chunk: a chunk of a disk image or an archive can hold text or zeros in
/// one part and random bytes in another, and one slice in its middle would miss them.
const PROBE_LEN: usize = 64 * 1024;
const PROBE_SLICES: usize = 8;

/// Encodes chunks; keeps zstd contexts and output buffers to reuse between chunks (one
/// encoder per thread).
///
/// Every frame it makes is decompressed again and compared with its input before it is
/// returned: a compressor that produces a wrong frame (restic #4523 met one) fails the
/// backup with [`Error::CompressorFault`] instead of storing a chunk that never restores
/// (RELIABILITY A15). `LIFEBOAT_FAULT_CORRUPT_FRAME=N` flips a bit in every Nth frame of
/// the process, for the test that shows the check holds.
pub struct Encoder {
    level: i32,
    compressor: zstd::bulk::Compressor<'static>,
    probe: zstd::bulk::Compressor<'static>,
    /// Reused outputs; never zero-filled, zstd writes into their spare capacity.
    scratch: Vec<u8>,
    probe_out: Vec<u8>,
    check_out: Vec<u8>,
    /// Fault injection: corrupt every Nth frame (0: never).
    corrupt_every: u64,
}

/// `LIFEBOAT_FAULT_CORRUPT_FRAME`, read once.
fn corrupt_every_from_env() -> u64 {
    static EVERY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("LIFEBOAT_FAULT_CORRUPT_FRAME")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// Whether this frame is one fault injection corrupts (counted across the process).
fn fault_hits(every: u64) -> bool {
    static FRAMES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    every > 0 && FRAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % every == every - 1
}

/// Decompresses `frame` (with this thread's decompressor) and compares it with `data`, the
/// input it was made from.
fn check_frame(out: &mut Vec<u8>, data: &[u8], frame: &[u8]) -> Result<()> {
    out.clear();
    out.reserve(data.len());
    let decoded = with_decompressor(|d| d.decompress_to_buffer(frame, out))?;
    let same = matches!(decoded, Ok(n) if n == data.len() && out[..] == *data);
    match same {
        true => Ok(()),
        false => Err(Error::CompressorFault(data.len())),
    }
}

impl Encoder {
    pub fn new(level: i32) -> Result<Self> {
        let mk = |l| {
            zstd::bulk::Compressor::new(l).map_err(|e| Error::io("creating zstd compressor", e))
        };
        Ok(Encoder {
            level,
            compressor: mk(level)?,
            probe: mk(1)?,
            scratch: Vec::new(),
            probe_out: Vec::with_capacity(zstd::zstd_safe::compress_bound(PROBE_LEN)),
            check_out: Vec::new(),
            corrupt_every: corrupt_every_from_env(),
        })
    }

    /// Encodes `data` (at most MAX_SIZE bytes) as a blob. Incompressible data (archives,
    /// media, encrypted files) is noticed on a 64 KiB probe and stored raw without paying
    /// for a full compression pass.
    pub fn encode(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        Ok(self
            .encode_compressed(data)?
            .unwrap_or_else(|| encode_raw(data)))
    }

    /// The compressed blob, or `None` when compression does not pay.
    fn encode_compressed(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        if data.len() > MAX_SIZE {
            return Err(Error::CorruptBlob(format!(
                "chunk of {} bytes exceeds the maximum {MAX_SIZE}",
                data.len()
            )));
        }
        let worth_trying = self.level > 0 && (data.len() <= 2 * PROBE_LEN || self.probe(data)?);
        if worth_trying {
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(data.len()));
            let n = self
                .compressor
                .compress_to_buffer(data, &mut self.scratch)
                .map_err(|e| Error::io("zstd compress", e))?;
            // Keep the compressed form only when it saves at least 1/32 of the size.
            if n < data.len() - data.len() / 32 {
                if fault_hits(self.corrupt_every) {
                    self.scratch[n / 2] ^= 0x10;
                }
                check_frame(&mut self.check_out, data, &self.scratch[..n])?;
                let mut out = Vec::with_capacity(HEADER_LEN + n);
                out.extend_from_slice(&header(FLAG_ZSTD, data.len()));
                out.extend_from_slice(&self.scratch[..n]);
                return Ok(Some(out));
            }
        }
        Ok(None)
    }
}

impl Encoder {
    /// True when one of the probe slices of `data` (longer than `PROBE_LEN`) compresses by
    /// at least 1/16: the whole chunk is then worth a compression pass.
    fn probe(&mut self, data: &[u8]) -> Result<bool> {
        let slice = PROBE_LEN / PROBE_SLICES;
        let step = (data.len() - slice) / (PROBE_SLICES - 1);
        for i in 0..PROBE_SLICES {
            let at = i * step;
            self.probe_out.clear();
            let packed = self
                .probe
                .compress_to_buffer(&data[at..at + slice], &mut self.probe_out)
                .map_err(|e| Error::io("zstd probe", e))?;
            if packed < slice - slice / 16 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn header(flags: u8, raw_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h[5] = flags;
    h[8..12].copy_from_slice(&(raw_len as u32).to_le_bytes());
    h
}

impl Encoder {
    /// Like [`Encoder::encode`], but takes the chunk by value: when it is stored raw, its
    /// buffer becomes the blob without a copy.
    pub fn encode_chunk(&mut self, chunk: crate::chunker::Chunk) -> Result<Vec<u8>> {
        let blob = self.encode_compressed(&chunk)?;
        Ok(blob.unwrap_or_else(|| {
            let len = chunk.len();
            let mut framed = chunk.into_framed();
            framed[..HEADER_LEN].copy_from_slice(&header(0, len));
            framed
        }))
    }
}

/// Stores `data` without compression.
pub fn encode_raw(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.extend_from_slice(&header(0, data.len()));
    out.extend_from_slice(data);
    out
}

/// Whether a blob (its header checked by [`declared_len`]) holds a zstd frame.
pub fn is_zstd(blob: &[u8]) -> bool {
    blob.get(5).is_some_and(|f| f & FLAG_ZSTD != 0)
}

/// The raw (decoded) length a blob declares, after checking its header.
pub fn declared_len(blob: &[u8]) -> Result<usize> {
    if blob.len() < HEADER_LEN {
        return Err(Error::CorruptBlob(format!(
            "{} bytes is shorter than the header",
            blob.len()
        )));
    }
    if &blob[..4] != MAGIC {
        return Err(Error::CorruptBlob("bad magic".into()));
    }
    if blob[4] != VERSION {
        return Err(Error::CorruptBlob(format!(
            "unknown format version {}",
            blob[4]
        )));
    }
    if blob[5] & !FLAG_ZSTD != 0 || blob[6] != 0 || blob[7] != 0 {
        return Err(Error::CorruptBlob(format!(
            "unknown flags {:#04x}",
            blob[5]
        )));
    }
    let raw_len = u32::from_le_bytes([blob[8], blob[9], blob[10], blob[11]]) as usize;
    if raw_len > MAX_SIZE {
        return Err(Error::CorruptBlob(format!(
            "declared length {raw_len} exceeds the maximum chunk size"
        )));
    }
    Ok(raw_len)
}

thread_local! {
    /// One decompression context per thread, reused: creating one per chunk is measurable.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's decompressor (window capped at the maximum chunk size).
fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> Result<std::io::Result<T>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut d = zstd::bulk::Decompressor::new()
                .map_err(|e| Error::io("creating zstd decompressor", e))?;
            d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(MAX_WINDOW_LOG))
                .map_err(|e| Error::io("configuring zstd decompressor", e))?;
            *slot = Some(d);
        }
        match slot.as_mut() {
            Some(d) => Ok(f(d)),
            None => Err(Error::io(
                "zstd decompressor",
                std::io::Error::other("missing"),
            )),
        }
    })
}

/// Decodes a blob into its plaintext. Does not check the chunk id: see [`decode_verified`].
pub fn decode(blob: &[u8]) -> Result<Vec<u8>> {
    let raw_len = declared_len(blob)?;
    let payload = &blob[HEADER_LEN..];
    if blob[5] & FLAG_ZSTD == 0 {
        if payload.len() != raw_len {
            return Err(Error::CorruptBlob(format!(
                "raw payload is {} bytes, header says {raw_len}",
                payload.len()
            )));
        }
        return Ok(payload.to_vec());
    }
    let mut out = Vec::with_capacity(raw_len);
    with_decompressor(|d| d.decompress_to_buffer(payload, &mut out))?.map_err(|e| {
        Error::CorruptBlob(format!(
            "zstd payload does not decode within {raw_len} bytes: {e}"
        ))
    })?;
    if out.len() != raw_len {
        return Err(Error::CorruptBlob(format!(
            "decoded {} bytes, header says {raw_len}",
            out.len()
        )));
    }
    Ok(out)
}

/// Checks that a blob decodes to a chunk with `id`, without keeping the plaintext (raw
/// payloads are hashed in place).
pub fn verify(key: &crate::ChunkKey, id: &crate::ChunkId, blob: &[u8]) -> Result<()> {
    if verify_raw(key, id, blob)? {
        return Ok(());
    }
    decode_verified(key, id, blob).map(drop)
}

/// For a raw blob: checks its length and hashes its payload in place against `id`, and
/// says `true`. For a compressed one: `false` (the caller decodes it).
fn verify_raw(key: &crate::ChunkKey, id: &crate::ChunkId, blob: &[u8]) -> Result<bool> {
    let raw_len = declared_len(blob)?;
    if blob[5] & FLAG_ZSTD != 0 {
        return Ok(false);
    }
    let payload = &blob[HEADER_LEN..];
    if payload.len() != raw_len {
        return Err(Error::CorruptBlob(format!(
            "chunk {id}: raw payload is {} bytes, header says {raw_len}",
            payload.len()
        )));
    }
    if key.id_of(payload) != *id {
        return Err(Error::ChunkMismatch { id: id.to_hex() });
    }
    Ok(true)
}

/// Decodes a blob and checks that its plaintext hashes to `id` under `key`.
pub fn decode_verified(key: &crate::ChunkKey, id: &crate::ChunkId, blob: &[u8]) -> Result<Vec<u8>> {
    let data = decode(blob).map_err(|e| match e {
        Error::CorruptBlob(reason) => Error::CorruptBlob(format!("chunk {id}: {reason}")),
        other => other,
    })?;
    if key.id_of(&data) != *id {
        return Err(Error::ChunkMismatch { id: id.to_hex() });
    }
    Ok(data)
}

/// A chunk's plaintext, checked against its id. Only [`Verified::decode`] makes one, so a
/// writer that takes `Verified` chunks cannot be handed bytes nobody checked.
#[derive(Debug, Clone)]
pub struct Verified {
    id: crate::ChunkId,
    data: bytes::Bytes,
}

impl Verified {
    /// Decodes `blob` and checks the plaintext against `id`. A raw payload is a slice of
    /// `blob` (no copy); a compressed one is decompressed once.
    pub fn decode(key: &crate::ChunkKey, id: &crate::ChunkId, blob: bytes::Bytes) -> Result<Self> {
        let data = if verify_raw(key, id, &blob)? {
            blob.slice(HEADER_LEN..)
        } else {
            bytes::Bytes::from(decode_verified(key, id, &blob)?)
        };
        Ok(Verified { id: *id, data })
    }

    pub fn id(&self) -> &crate::ChunkId {
        &self.id
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn into_data(self) -> bytes::Bytes {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A15: with every frame corrupted (one bit), no frame that does not give back its
    /// chunk leaves the encoder: each is refused with `CompressorFault` (a flip that left
    /// the output intact may pass, and its blob then decodes to the chunk); without the
    /// fault, 10,000 chunks encode with no false alarm.
    #[test]
    fn a15_a_corrupted_frame_never_leaves_the_encoder() {
        let chunk = |i: usize| -> Vec<u8> {
            format!("line {i} of a log that compresses well\n")
                .repeat(20 + i % 200)
                .into_bytes()
        };
        let mut enc = Encoder::new(DEFAULT_LEVEL).expect("encoder");
        enc.corrupt_every = 1;
        let (mut caught, mut intact) = (0, 0);
        for i in 0..10_000 {
            let data = chunk(i);
            match enc.encode(&data) {
                Err(Error::CompressorFault(n)) => {
                    assert_eq!(n, data.len());
                    caught += 1;
                }
                Ok(blob) => {
                    assert_eq!(decode(&blob).expect("decodes"), data, "chunk {i}");
                    intact += 1;
                }
                Err(e) => panic!("chunk {i}: {e}"),
            }
        }
        assert!(caught > 9_900, "{caught} caught, {intact} intact");
        enc.corrupt_every = 0;
        for i in 0..10_000 {
            let data = chunk(i);
            let blob = enc.encode(&data).expect("no false alarm");
            assert!(is_zstd(&blob), "chunk {i} was compressed");
        }
    }

    #[test]
    fn compressible_data_is_compressed_and_random_is_not() {
        let mut enc = Encoder::new(DEFAULT_LEVEL).expect("encoder");
        let text = b"lifeboat ".repeat(100_000);
        let blob = enc.encode(&text).expect("encode");
        assert_eq!(blob[5], FLAG_ZSTD);
        assert!(blob.len() < text.len() / 10);
        assert_eq!(decode(&blob).expect("decode"), text);

        let mut noise = vec![0u8; 1 << 20];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let blob = enc.encode(&noise).expect("encode");
        assert_eq!(blob[5], 0, "incompressible data must be stored raw");
        assert_eq!(decode(&blob).expect("decode"), noise);
    }

    #[test]
    fn a_chunk_that_is_random_only_in_its_middle_is_still_compressed() {
        // Like a disk image: a region of random bytes between zeros and text. A probe of
        // the middle alone sees only noise; the chunk as a whole halves.
        let mut enc = Encoder::new(DEFAULT_LEVEL).expect("encoder");
        let mut data = vec![0u8; 512 << 10];
        let mut x = 0x9e3779b97f4a7c15u64;
        data.extend((0..1 << 20).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        data.extend(b"log line 42: ok\n".repeat(32 << 10));
        let blob = enc.encode(&data).expect("encode");
        assert_eq!(
            blob[5], FLAG_ZSTD,
            "the zeros and the text must be compressed"
        );
        assert!(
            blob.len() < data.len() * 3 / 4,
            "{} of {}",
            blob.len(),
            data.len()
        );
        assert_eq!(decode(&blob).expect("decode"), data);
    }

    #[test]
    fn encoding_a_chunk_in_place_matches_encoding_a_slice() {
        let mut enc = Encoder::new(DEFAULT_LEVEL).expect("encoder");
        let text = b"lifeboat ".repeat(300_000);
        let mut noise = vec![0u8; 2 << 20];
        let mut x = 0x2545F4914F6CDD1Du64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for data in [&text[..], &noise[..], b"tiny"] {
            for chunk in crate::chunker::Chunker::new(data) {
                let chunk = chunk.expect("chunk");
                let by_slice = enc.encode(&chunk).expect("encode");
                let in_place = enc.encode_chunk(chunk).expect("encode_chunk");
                assert_eq!(in_place, by_slice);
            }
        }
    }

    #[test]
    fn refuses_output_beyond_declared_length() {
        let data = vec![0u8; 100_000];
        let mut blob = Encoder::new(3)
            .expect("encoder")
            .encode(&data)
            .expect("encode");
        blob[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(decode(&blob), Err(Error::CorruptBlob(_))));
    }

    #[test]
    fn refuses_declared_length_beyond_max_chunk() {
        let mut blob = encode_raw(b"abc");
        blob[8..12].copy_from_slice(&((MAX_SIZE + 1) as u32).to_le_bytes());
        assert!(matches!(decode(&blob), Err(Error::CorruptBlob(_))));
    }

    #[test]
    fn refuses_a_zstd_bomb_with_a_large_window() {
        // 64 MiB of zeros compresses to a few KiB with a 2^26 window; the header claims a
        // small length and the decoder must refuse rather than inflate.
        let zeros = vec![0u8; 64 << 20];
        let mut c = zstd::bulk::Compressor::new(19).expect("compressor");
        c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(26))
            .expect("window");
        let frame = c.compress(&zeros).expect("compress");
        let mut blob = header(FLAG_ZSTD, MAX_SIZE).to_vec();
        blob.extend_from_slice(&frame);
        assert!(matches!(decode(&blob), Err(Error::CorruptBlob(_))));
    }

    #[test]
    fn detects_a_tampered_chunk() {
        let key = crate::ChunkKey::from_bytes([3; 32]);
        let data = b"important bytes".to_vec();
        let id = key.id_of(&data);
        let mut blob = encode_raw(&data);
        *blob.last_mut().expect("non-empty") ^= 1;
        assert!(matches!(
            decode_verified(&key, &id, &blob),
            Err(Error::ChunkMismatch { .. })
        ));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(data in proptest::collection::vec(any::<u8>(), 0..300_000), level in 0i32..6, repeat in 1usize..4) {
            let data: Vec<u8> = data.iter().copied().cycle().take(data.len() * repeat).collect();
            let mut enc = Encoder::new(level).expect("encoder");
            let blob = enc.encode(&data).expect("encode");
            prop_assert_eq!(decode(&blob).expect("decode"), data);
        }
    }
}
