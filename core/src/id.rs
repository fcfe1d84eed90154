//! Chunk ids: keyed BLAKE3-256 of a chunk's plaintext.

use std::fmt;

use crate::{Error, Result};

/// The fleet's secret chunk-id key. Chunk ids are `BLAKE3-keyed(key, plaintext)`, so two
/// fleets never share ids and a reader of the store cannot test for known content.
#[derive(Clone)]
pub struct ChunkKey(
    [u8; 32],
    /// [`ChunkKey::zero_chunk_id`], once asked for.
    std::sync::OnceLock<ChunkId>,
);

impl ChunkKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ChunkKey(bytes, std::sync::OnceLock::new())
    }

    /// Parses a key from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::InvalidRecord(format!("chunk key must be 32 bytes, got {}", bytes.len()))
        })?;
        Ok(ChunkKey::from_bytes(arr))
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        Ok(ChunkKey::from_bytes(crate::sign::random_bytes()?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id of `data` under this key.
    pub fn id_of(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.0, data).as_bytes())
    }

    /// The id of the chunk every long run of zeros is cut into
    /// ([`crate::chunker::zero_chunk_len`] zeros): what a sparse file's holes are made of.
    /// Hashes a few MiB the first time, then kept.
    pub fn zero_chunk_id(&self) -> ChunkId {
        *self
            .1
            .get_or_init(|| self.id_of(crate::chunker::zero_chunk()))
    }

    /// The content hash of a file of `size` bytes made of `chunks`, in order. Each chunk id
    /// already binds its bytes, so hashing the id list names the whole content without a
    /// second pass over the data (a 32-byte update per chunk instead of one per byte).
    pub fn content_hash(&self, size: u64, chunks: &[ChunkId]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"lifeboat file v1");
        h.update(&size.to_le_bytes());
        for id in chunks {
            h.update(id.as_bytes());
        }
        *h.finalize().as_bytes()
    }
}

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkKey(..)")
    }
}

/// A chunk id: 32 bytes, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Parses 64 lowercase hex characters. Anything else (upper case, other length, path
    /// separators) is refused, so an id can safely become part of a path or a key.
    pub fn parse_hex(s: &str) -> Result<Self> {
        let valid = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(Error::InvalidChunkId(s.chars().take(80).collect()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| Error::InvalidChunkId(s.to_string()))?;
        Ok(ChunkId(out))
    }

    /// Parses an id received as raw bytes; the length must be exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::InvalidChunkId(format!("<{} bytes>", bytes.len())))?;
        Ok(ChunkId(arr))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_validation() {
        let key = ChunkKey::from_bytes([7; 32]);
        let id = key.id_of(b"hello");
        assert_eq!(ChunkId::parse_hex(&id.to_hex()).expect("valid"), id);
        for bad in [
            "",
            "../etc/passwd",
            &id.to_hex().to_uppercase(),
            &id.to_hex()[..63],
            &format!("{}0", id.to_hex()),
        ] {
            assert!(
                matches!(ChunkId::parse_hex(bad), Err(Error::InvalidChunkId(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn keyed_ids_differ_between_keys() {
        let a = ChunkKey::from_bytes([1; 32]).id_of(b"same bytes");
        let b = ChunkKey::from_bytes([2; 32]).id_of(b"same bytes");
        assert_ne!(a, b);
    }
}
