//! Encryption at rest: every chunk blob and snapshot envelope in an encrypted store is
//! sealed with AES-256-GCM.
//!
//! ```text
//! sealed = nonce (12, random) | ciphertext | tag (16)
//! a chunk in a pack, framed so that a pack whose trailer is lost can still be walked:
//! frame  = length of what follows the id (u32 LE) | chunk id (32) | sealed
//! chunk key    = BLAKE3 derive_key("lifeboat 2026-12 chunk blob", data key | chunk id)
//! envelope key = BLAKE3 derive_key("lifeboat 2026-12 snapshot envelope", data key | snapshot id)
//! associated data: the chunk id (or the snapshot id)
//! ```
//!
//! One key per chunk means a job can be handed the keys of exactly the chunks of one
//! snapshot (a restore straight from the object store) and decrypt nothing else, even in
//! the same pack; binding the id as associated data means a blob moved to another chunk's
//! place does not open. A fresh random nonce per sealing: a chunk key seals a handful of
//! times at most (one upload, a heal after scrub), far from GCM's limits.
//!
//! The data key itself is never stored in the clear: it lives wrapped in an age file (see
//! [`crate::age`]), for the controller and for the operator's offline recovery key.

use aws_lc_rs::aead;

use crate::{ChunkId, Error, Result};

const NONCE: usize = 12;
const TAG: usize = 16;
/// What sealing adds to a blob.
pub const OVERHEAD: usize = NONCE + TAG;
/// What framing adds before a sealed chunk.
pub const FRAME_HEADER: usize = 4 + 32;
/// The largest sealed chunk a frame may declare (a chunk is at most a few MiB).
const MAX_SEALED: usize = 64 << 20;

const CHUNK_CONTEXT: &str = "lifeboat 2026-12 chunk blob";
const ENVELOPE_CONTEXT: &str = "lifeboat 2026-12 snapshot envelope";

/// The store's data key: 32 random bytes, the root of every chunk and envelope key.
pub struct DataKey([u8; 32]);

/// The key of one chunk (or one envelope): what a restore job is handed.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl std::fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobKey(..)")
    }
}

impl DataKey {
    pub fn generate() -> Result<DataKey> {
        Ok(DataKey(crate::sign::random_bytes()?))
    }

    pub fn from_slice(b: &[u8]) -> Result<DataKey> {
        Ok(DataKey(b.try_into().map_err(|_| {
            Error::Invalid(format!(
                "a store data key is 32 bytes, not {}: the key file is damaged",
                b.len()
            ))
        })?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key that seals chunk `id`.
    pub fn chunk_key(&self, id: &ChunkId) -> BlobKey {
        self.derive(CHUNK_CONTEXT, id.as_bytes())
    }

    /// The key that seals the envelope of snapshot `id` (64 hex).
    pub fn envelope_key(&self, id: &str) -> BlobKey {
        self.derive(ENVELOPE_CONTEXT, id.as_bytes())
    }

    /// Chunk `id`'s blob as a pack holds it: sealed under its key, framed.
    pub fn seal_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>> {
        self.chunk_key(id).seal_frame(id, blob)
    }

    /// The blob in chunk `id`'s frame; a frame of another chunk, or one altered, is refused.
    pub fn open_chunk(&self, id: &ChunkId, frame: &[u8]) -> Result<Vec<u8>> {
        self.chunk_key(id).open_frame(id, frame)
    }

    /// Snapshot `id`'s envelope as the store holds it.
    pub fn seal_envelope(&self, id: &str, envelope: &[u8]) -> Result<Vec<u8>> {
        self.envelope_key(id).seal(id.as_bytes(), envelope)
    }

    /// What [`DataKey::seal_envelope`] sealed for snapshot `id`.
    pub fn open_envelope(&self, id: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        self.envelope_key(id).open(id.as_bytes(), sealed)
    }

    /// [`DataKey::open_chunk`] in the frame's own buffer (the store's reads).
    pub fn open_chunk_vec(&self, id: &ChunkId, frame: Vec<u8>) -> Result<Vec<u8>> {
        self.chunk_key(id).open_frame_vec(id, frame)
    }

    fn derive(&self, context: &str, id: &[u8]) -> BlobKey {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(&self.0);
        h.update(id);
        BlobKey(*h.finalize().as_bytes())
    }
}

impl BlobKey {
    pub fn from_slice(b: &[u8]) -> Result<BlobKey> {
        Ok(BlobKey(b.try_into().map_err(|_| {
            Error::Invalid(format!("a blob key is 32 bytes, not {}", b.len()))
        })?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> aead::LessSafeKey {
        match aead::UnboundKey::new(&aead::AES_256_GCM, &self.0) {
            Ok(k) => aead::LessSafeKey::new(k),
            Err(_) => unreachable!("AES-256-GCM takes any 32-byte key"),
        }
    }

    /// Seals `plain` bound to `id` (the chunk id's bytes, or the snapshot id's).
    pub fn seal(&self, id: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        self.seal_after(&[], id, plain)
    }

    /// `header`, then `plain` sealed bound to `id`: one buffer, encrypted in place.
    fn seal_after(&self, header: &[u8], id: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; NONCE] = crate::sign::random_bytes()?;
        let mut out = Vec::with_capacity(header.len() + plain.len() + OVERHEAD);
        out.extend_from_slice(header);
        out.extend_from_slice(&nonce);
        let at = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .aead()
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(id),
                &mut out[at..],
            )
            .map_err(|_| Error::Invalid("sealing a blob failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// [`BlobKey::seal`] for chunk `id`, framed (see the module doc).
    pub fn seal_frame(&self, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>> {
        let mut header = [0u8; FRAME_HEADER];
        header[..4].copy_from_slice(&((blob.len() + OVERHEAD) as u32).to_le_bytes());
        header[4..].copy_from_slice(id.as_bytes());
        self.seal_after(&header, id.as_bytes(), blob)
    }

    /// Opens a frame [`BlobKey::seal_frame`] made for chunk `id`.
    pub fn open_frame(&self, id: &ChunkId, frame: &[u8]) -> Result<Vec<u8>> {
        self.open_frame_vec(id, frame.to_vec())
    }

    /// [`BlobKey::open_frame`] in place: the blob comes back in `frame`'s own buffer.
    pub fn open_frame_vec(&self, id: &ChunkId, frame: Vec<u8>) -> Result<Vec<u8>> {
        match frame_extent(&frame) {
            Some((framed, len)) if framed == *id && len == frame.len() => {
                self.open_at(id.as_bytes(), frame, FRAME_HEADER)
            }
            _ => Err(Error::CorruptBlob(format!(
                "the {} bytes stored for chunk {id} are not its frame",
                frame.len()
            ))),
        }
    }

    /// Opens what [`BlobKey::seal`] made for the same `id`; anything else (another key,
    /// another id, a flipped bit, a cut) is refused.
    pub fn open(&self, id: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        self.open_at(id, sealed.to_vec(), 0)
    }

    /// Opens the sealed blob at `buf[at..]` in place and moves it to the front.
    fn open_at(&self, id: &[u8], mut buf: Vec<u8>, at: usize) -> Result<Vec<u8>> {
        let refused = |n: usize| {
            Error::CorruptBlob(format!(
                "a sealed blob of {n} bytes does not open with its key (corrupt, or not this one)"
            ))
        };
        let sealed_len = buf.len().saturating_sub(at);
        if sealed_len < OVERHEAD {
            return Err(refused(sealed_len));
        }
        let nonce: [u8; NONCE] = buf[at..at + NONCE]
            .try_into()
            .map_err(|_| refused(sealed_len))?;
        let body = at + NONCE;
        let plain_len = self
            .aead()
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(id),
                &mut buf[body..],
            )
            .map_err(|_| refused(sealed_len))?
            .len();
        buf.copy_within(body..body + plain_len, 0);
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// The chunk id a frame names and the frame's whole length, read from its header alone
/// (nothing is verified: the frame must still open).
pub fn frame_extent(bytes: &[u8]) -> Option<(ChunkId, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if !(OVERHEAD..=MAX_SEALED).contains(&len) {
        return None;
    }
    let id = ChunkId(bytes.get(4..FRAME_HEADER)?.try_into().ok()?);
    Some((id, FRAME_HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_opens_only_with_its_own_key_and_id() {
        let data = DataKey::generate().expect("key");
        let (a, b) = (ChunkId([1; 32]), ChunkId([2; 32]));
        let plain = b"the chunk's compressed bytes".to_vec();
        let sealed = data.chunk_key(&a).seal(a.as_bytes(), &plain).expect("seal");
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(
            !sealed.windows(plain.len()).any(|w| w == plain),
            "no plaintext in the sealed blob"
        );
        assert_eq!(
            data.chunk_key(&a)
                .open(a.as_bytes(), &sealed)
                .expect("open"),
            plain
        );
        // Another chunk's key, or this key with another id, does not open it.
        assert!(data.chunk_key(&b).open(a.as_bytes(), &sealed).is_err());
        assert!(data.chunk_key(&a).open(b.as_bytes(), &sealed).is_err());
        // Nor another store's data key.
        let other = DataKey::generate().expect("key");
        assert!(other.chunk_key(&a).open(a.as_bytes(), &sealed).is_err());
        // Every flipped bit is refused.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x04;
            assert!(
                data.chunk_key(&a).open(a.as_bytes(), &bad).is_err(),
                "bit at {i}"
            );
        }
        assert!(
            data.chunk_key(&a)
                .open(a.as_bytes(), &sealed[..20])
                .is_err()
        );
        // Two sealings of the same blob differ (fresh nonces).
        let again = data.chunk_key(&a).seal(a.as_bytes(), &plain).expect("seal");
        assert_ne!(again, sealed);
    }

    #[test]
    fn a_frame_names_its_chunk_and_opens_only_as_that_chunk() {
        let data = DataKey::generate().expect("key");
        let (a, b) = (ChunkId([3; 32]), ChunkId([4; 32]));
        let frame = data.seal_chunk(&a, b"blob").expect("seal");
        assert_eq!(frame.len(), 4 + FRAME_HEADER + OVERHEAD);
        assert_eq!(frame_extent(&frame), Some((a, frame.len())));
        assert_eq!(data.open_chunk(&a, &frame).expect("open"), b"blob");
        assert!(data.open_chunk(&b, &frame).is_err());
        // Relabelled as chunk b: its header now says b, but it was sealed for a.
        let mut relabelled = frame.clone();
        relabelled[4..FRAME_HEADER].copy_from_slice(b.as_bytes());
        assert!(data.open_chunk(&b, &relabelled).is_err());
        assert!(data.open_chunk(&a, &frame[..frame.len() - 1]).is_err());
        assert_eq!(
            frame_extent(&[0xff; 40]),
            None,
            "an absurd length is no frame"
        );
    }

    #[test]
    fn chunk_and_envelope_keys_are_distinct() {
        let data = DataKey::generate().expect("key");
        let id = ChunkId([7; 32]);
        assert_ne!(
            data.chunk_key(&id),
            data.envelope_key(&hex::encode([7u8; 32]))
        );
        assert_ne!(data.chunk_key(&id), data.chunk_key(&ChunkId([8; 32])));
    }
}
