//! Snapshot signatures (ed25519), randomness and digests, on aws-lc-rs (the same crypto
//! library rustls uses here, so the process carries one implementation).

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::{Error, Result};

/// Domain separation: a snapshot signature can never be replayed as anything else.
const SNAPSHOT_CONTEXT: &[u8] = b"lifeboat snapshot record v1\0";

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out)
        .map_err(|_| Error::io("reading random bytes", std::io::Error::other("rng failure")))?;
    Ok(out)
}

/// SHA-256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// An agent's snapshot-signing key. Generated on the agent; never leaves it.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    pub fn generate() -> Result<Self> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| Error::Pki("cannot generate an ed25519 key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| Error::Pki(format!("invalid ed25519 key: {e}")))?;
        Ok(SigningKey {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    /// The PKCS#8 document to store (mode 0600) in the agent's state directory.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The 32-byte public key the controller records at enrollment.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs `msg` as is (callers put their own domain-separation prefix in it).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// Signs a serialized snapshot record.
    pub fn sign_record(&self, record: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(SNAPSHOT_CONTEXT.len() + record.len());
        msg.extend_from_slice(SNAPSHOT_CONTEXT);
        msg.extend_from_slice(record);
        self.pair.sign(&msg).as_ref().to_vec()
    }
}

/// A signature over `msg` by `public_key` (ed25519, 32 bytes), or why not.
pub fn verify(public_key: &[u8], msg: &[u8], sig: &[u8], what: &str) -> Result<()> {
    if public_key.len() != 32 {
        return Err(Error::BadSignature(format!(
            "{what}: public key is {} bytes, expected 32",
            public_key.len()
        )));
    }
    UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(msg, sig)
        .map_err(|_| Error::BadSignature(format!("{what} does not verify")))
}

/// Checks a snapshot record's signature against the agent key the controller recorded.
pub fn verify_record(public_key: &[u8], record: &[u8], sig: &[u8]) -> Result<()> {
    if public_key.len() != 32 {
        return Err(Error::BadSignature(format!(
            "public key is {} bytes, expected 32",
            public_key.len()
        )));
    }
    let mut msg = Vec::with_capacity(SNAPSHOT_CONTEXT.len() + record.len());
    msg.extend_from_slice(SNAPSHOT_CONTEXT);
    msg.extend_from_slice(record);
    UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(&msg, sig)
        .map_err(|_| Error::BadSignature("the record was not signed by the originating agent's key, or was changed after signing".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn sign_then_verify(record in proptest::collection::vec(any::<u8>(), 0..4096), flip in any::<prop::sample::Index>()) {
            let key = SigningKey::generate().expect("key");
            let sig = key.sign_record(&record);
            prop_assert!(verify_record(&key.public_key(), &record, &sig).is_ok());
            // Any change to the record breaks the signature.
            if !record.is_empty() {
                let mut tampered = record.clone();
                tampered[flip.index(record.len())] ^= 0x01;
                prop_assert!(verify_record(&key.public_key(), &tampered, &sig).is_err());
            }
            // Another agent's key does not verify it.
            let other = SigningKey::generate().expect("key");
            prop_assert!(verify_record(&other.public_key(), &record, &sig).is_err());
            // A reloaded key signs identically verifiable records.
            let reloaded = SigningKey::from_pkcs8(key.pkcs8()).expect("reload");
            prop_assert!(verify_record(&key.public_key(), &record, &reloaded.sign_record(&record)).is_ok());
        }
    }
}
