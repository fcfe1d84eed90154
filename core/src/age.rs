//! Files in the age format (<https://age-encryption.org/v1>), X25519 recipients only: how
//! the store's data key is kept wrapped, so that an operator holding the recovery key can
//! unwrap it with the standard `age` tool (`age -d -i recovery.key store-key.age`) and a
//! controller rebuilt from nothing but the store and that key can read it too.
//!
//! Written from the specification on aws-lc-rs (X25519, HKDF-SHA-256, HMAC-SHA-256,
//! ChaCha20-Poly1305) rather than through the `age` crate, whose localisation stack would
//! double the controller's build. The interoperability test (`tests/tests/encryption.rs`)
//! decrypts what this writes with the real `age` binary.
//!
//! ```text
//! age-encryption.org/v1
//! -> X25519 <ephemeral share, base64>
//! <file key wrapped for that recipient, base64>
//! ...one stanza per recipient...
//! --- <HMAC-SHA-256 of the header, base64>
//! <16-byte nonce><STREAM: ChaCha20-Poly1305 over 64 KiB chunks>
//! ```

use aws_lc_rs::{aead, agreement, hkdf, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;

const VERSION_LINE: &str = "age-encryption.org/v1";
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const RECIPIENT_HRP: &str = "age";
const IDENTITY_HRP: &str = "age-secret-key-";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgeError {
    #[error("not an age recipient (age1...): {0}")]
    BadRecipient(String),
    #[error("not an age identity (AGE-SECRET-KEY-1...): {0}")]
    BadIdentity(String),
    #[error("not an age file: {0}")]
    Malformed(String),
    #[error("this age file is not encrypted to the identity given")]
    NoMatchingRecipient,
    #[error("the age file's header or payload was altered or is truncated")]
    Tampered,
    #[error("the system's random source failed")]
    Random,
}

/// An X25519 public key that files can be encrypted to (`age1...`).
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient([u8; 32]);

/// An X25519 private key (`AGE-SECRET-KEY-1...`). Its `Debug` shows only the recipient.
pub struct Identity {
    key: agreement::PrivateKey,
    public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.to_recipient())
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&bech32::encode(RECIPIENT_HRP, &self.0))
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({self})")
    }
}

impl std::str::FromStr for Recipient {
    type Err = AgeError;
    fn from_str(s: &str) -> Result<Recipient, AgeError> {
        let bad = || AgeError::BadRecipient(s.to_string());
        let (hrp, data) = bech32::decode(s).ok_or_else(bad)?;
        if hrp != RECIPIENT_HRP || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        Ok(Recipient(data.try_into().map_err(|_| bad())?))
    }
}

impl Identity {
    pub fn generate() -> Result<Identity, AgeError> {
        let key =
            agreement::PrivateKey::generate(&agreement::X25519).map_err(|_| AgeError::Random)?;
        Identity::from_key(key).ok_or(AgeError::Random)
    }

    fn from_key(key: agreement::PrivateKey) -> Option<Identity> {
        let public = key.compute_public_key().ok()?.as_ref().try_into().ok()?;
        Some(Identity { key, public })
    }

    /// Parses `AGE-SECRET-KEY-1...`, alone or in a key file as `age-keygen` writes it
    /// (comment lines start with `#`).
    pub fn parse(text: &str) -> Result<Identity, AgeError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        let bad = || AgeError::BadIdentity("no AGE-SECRET-KEY-1... line".into());
        if !line.starts_with("AGE-SECRET-KEY-1") {
            return Err(bad());
        }
        let (hrp, data) = bech32::decode(&line.to_ascii_lowercase()).ok_or_else(bad)?;
        if hrp != IDENTITY_HRP || data.len() != 32 {
            return Err(bad());
        }
        let key = agreement::PrivateKey::from_private_key(&agreement::X25519, &data)
            .map_err(|_| bad())?;
        Identity::from_key(key).ok_or_else(bad)
    }

    pub fn to_recipient(&self) -> Recipient {
        Recipient(self.public)
    }

    /// `AGE-SECRET-KEY-1...`: the secret, for the operator's vault.
    pub fn to_secret_string(&self) -> String {
        use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
        let seed: Result<Curve25519SeedBin<'_>, _> = self.key.as_be_bytes();
        match seed {
            Ok(seed) => bech32::encode(IDENTITY_HRP, seed.as_ref()).to_ascii_uppercase(),
            Err(_) => String::new(),
        }
    }
}

/// Encrypts `plaintext` to every recipient: any one of their identities decrypts it.
pub fn encrypt(plaintext: &[u8], recipients: &[Recipient]) -> Result<Vec<u8>, AgeError> {
    let file_key: [u8; 16] = random()?;
    let mut header = format!("{VERSION_LINE}\n");
    for r in recipients {
        let ephemeral =
            agreement::PrivateKey::generate(&agreement::X25519).map_err(|_| AgeError::Random)?;
        let share = ephemeral
            .compute_public_key()
            .map_err(|_| AgeError::Random)?;
        let shared = x25519(&ephemeral, &r.0).ok_or(AgeError::Random)?;
        let wrap_key = derive(&shared, &[share.as_ref(), &r.0].concat(), X25519_INFO);
        let mut body = file_key.to_vec();
        chacha(&wrap_key)
            .seal_in_place_append_tag(zero_nonce(), aead::Aad::empty(), &mut body)
            .map_err(|_| AgeError::Random)?;
        header.push_str(&format!(
            "-> X25519 {}\n{}\n",
            B64.encode(share.as_ref()),
            B64.encode(&body)
        ));
    }
    header.push_str("---");
    let mac = hmac::sign(&header_key(&file_key), header.as_bytes());
    let mut out = format!("{header} {}\n", B64.encode(mac.as_ref())).into_bytes();

    let nonce: [u8; 16] = random()?;
    out.extend_from_slice(&nonce);
    let payload = chacha(&derive(&file_key, &nonce, b"payload"));
    let chunks: Vec<&[u8]> = if plaintext.is_empty() {
        vec![&[]]
    } else {
        plaintext.chunks(CHUNK).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let mut buf = chunk.to_vec();
        payload
            .seal_in_place_append_tag(
                stream_nonce(i as u64, i + 1 == chunks.len()),
                aead::Aad::empty(),
                &mut buf,
            )
            .map_err(|_| AgeError::Random)?;
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

/// Decrypts an age file with `identity`.
pub fn decrypt(file: &[u8], identity: &Identity) -> Result<Vec<u8>, AgeError> {
    let malformed = |why: &str| AgeError::Malformed(why.to_string());
    let end = find(file, b"\n---").ok_or_else(|| malformed("no header end (---)"))? + 4;
    let header = std::str::from_utf8(&file[..end]).map_err(|_| malformed("header not UTF-8"))?;
    let rest = &file[end..];
    let mac_end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| malformed("no MAC line"))?;
    let mac_line = std::str::from_utf8(&rest[..mac_end]).map_err(|_| malformed("MAC line"))?;
    let mac = mac_line
        .strip_prefix(' ')
        .and_then(|m| B64.decode(m).ok())
        .ok_or_else(|| malformed("MAC is not base64"))?;
    let body = &rest[mac_end + 1..];

    let mut lines = header.split('\n');
    if lines.next() != Some(VERSION_LINE) {
        return Err(malformed("not an age-encryption.org/v1 file"));
    }
    let mut file_key = None;
    let mut line = lines.next();
    while let Some(l) = line {
        if l == "---" {
            break;
        }
        let args: Vec<&str> = l
            .strip_prefix("-> ")
            .ok_or_else(|| malformed("expected a recipient stanza"))?
            .split(' ')
            .collect();
        // The stanza's body: base64 lines of 64 columns, the last one shorter.
        let mut wrapped = String::new();
        loop {
            let b = lines
                .next()
                .ok_or_else(|| malformed("stanza body missing"))?;
            wrapped.push_str(b);
            if b.len() < 64 {
                break;
            }
        }
        if file_key.is_none() && args.len() == 2 && args[0] == "X25519" {
            let share = B64
                .decode(args[1])
                .map_err(|_| malformed("X25519 share is not base64"))?;
            let body = B64
                .decode(&wrapped)
                .map_err(|_| malformed("stanza body is not base64"))?;
            file_key = unwrap_x25519(identity, &share, &body);
        }
        line = lines.next();
    }
    let file_key = file_key.ok_or(AgeError::NoMatchingRecipient)?;
    hmac::verify(&header_key(&file_key), header.as_bytes(), &mac)
        .map_err(|_| AgeError::Tampered)?;

    if body.len() < 16 + TAG {
        return Err(AgeError::Tampered);
    }
    let (nonce, mut ciphertext) = body.split_at(16);
    let payload = chacha(&derive(&file_key, nonce, b"payload"));
    let mut out = Vec::new();
    let mut counter = 0u64;
    loop {
        let take = ciphertext.len().min(CHUNK + TAG);
        let last = take == ciphertext.len();
        let mut buf = ciphertext[..take].to_vec();
        let plain = payload
            .open_in_place(stream_nonce(counter, last), aead::Aad::empty(), &mut buf)
            .map_err(|_| AgeError::Tampered)?;
        if plain.is_empty() && (!last || counter > 0) {
            return Err(AgeError::Tampered); // only an empty file has an empty chunk
        }
        out.extend_from_slice(plain);
        ciphertext = &ciphertext[take..];
        if last {
            return Ok(out);
        }
        counter += 1;
    }
}

fn unwrap_x25519(identity: &Identity, share: &[u8], body: &[u8]) -> Option<[u8; 16]> {
    if share.len() != 32 || body.len() != 16 + TAG {
        return None;
    }
    let shared = x25519(&identity.key, share)?;
    let key = derive(&shared, &[share, &identity.public].concat(), X25519_INFO);
    let mut buf = body.to_vec();
    let plain = chacha(&key)
        .open_in_place(zero_nonce(), aead::Aad::empty(), &mut buf)
        .ok()?;
    plain.try_into().ok()
}

/// The X25519 shared secret, refused when all zero (a low-order share).
fn x25519(private: &agreement::PrivateKey, peer: &[u8]) -> Option<Vec<u8>> {
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
    let shared = agreement::agree(private, peer, (), |s| Ok(s.to_vec())).ok()?;
    shared.iter().any(|&b| b != 0).then_some(shared)
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256 to 32 bytes.
fn derive(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let info = [info];
    let okm = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    // Expanding to 32 bytes of SHA-256 cannot fail (the limit is 255 x 32).
    if let Ok(okm) = okm.expand(&info, Len(32)) {
        let _ = okm.fill(&mut out);
    }
    out
}

fn header_key(file_key: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &derive(file_key, &[], b"header"))
}

fn chacha(key: &[u8; 32]) -> aead::LessSafeKey {
    // A 32-byte key is always a valid ChaCha20-Poly1305 key.
    match aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key) {
        Ok(k) => aead::LessSafeKey::new(k),
        Err(_) => unreachable!("ChaCha20-Poly1305 takes any 32-byte key"),
    }
}

fn zero_nonce() -> aead::Nonce {
    aead::Nonce::assume_unique_for_key([0; 12])
}

/// STREAM's nonce: an 11-byte big-endian chunk counter, then 1 for the last chunk.
fn stream_nonce(counter: u64, last: bool) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    aead::Nonce::assume_unique_for_key(n)
}

fn random<const N: usize>() -> Result<[u8; N], AgeError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| AgeError::Random)?;
    Ok(b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Bech32 (BIP 173, the original checksum), as age encodes its keys. No length limit:
/// age's secret keys are longer than BIP 173's 90 characters.
mod bech32 {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];

    fn polymod(values: impl Iterator<Item = u8>) -> u32 {
        let mut chk = 1u32;
        for v in values {
            let top = chk >> 25;
            chk = ((chk & 0x1ff_ffff) << 5) ^ u32::from(v);
            for (i, g) in GEN.iter().enumerate() {
                if (top >> i) & 1 == 1 {
                    chk ^= g;
                }
            }
        }
        chk
    }

    fn hrp_expand(hrp: &str) -> Vec<u8> {
        let b = hrp.as_bytes();
        let mut v: Vec<u8> = b.iter().map(|c| c >> 5).collect();
        v.push(0);
        v.extend(b.iter().map(|c| c & 31));
        v
    }

    /// Regroups bits: 8 to 5 (padded) or 5 to 8 (padding must be zero).
    fn regroup(data: &[u8], from: u32, to: u32, pad: bool) -> Option<Vec<u8>> {
        let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
        let max = (1u32 << to) - 1;
        for &d in data {
            acc = (acc << from) | u32::from(d);
            bits += from;
            while bits >= to {
                bits -= to;
                out.push(((acc >> bits) & max) as u8);
            }
        }
        if pad {
            if bits > 0 {
                out.push(((acc << (to - bits)) & max) as u8);
            }
        } else if bits >= from || ((acc << (to - bits)) & max) != 0 {
            return None;
        }
        Some(out)
    }

    pub fn encode(hrp: &str, data: &[u8]) -> String {
        let five = regroup(data, 8, 5, true).unwrap_or_default();
        let pm = polymod(
            hrp_expand(hrp)
                .into_iter()
                .chain(five.iter().copied())
                .chain([0; 6]),
        ) ^ 1;
        let mut s = format!("{hrp}1");
        for v in five
            .iter()
            .copied()
            .chain((0..6).map(|i| ((pm >> (5 * (5 - i))) & 31) as u8))
        {
            s.push(CHARSET[v as usize] as char);
        }
        s
    }

    /// `(hrp, data)` of a lowercase bech32 string with a valid checksum.
    pub fn decode(s: &str) -> Option<(String, Vec<u8>)> {
        let sep = s.rfind('1')?;
        let (hrp, rest) = (&s[..sep], &s[sep + 1..]);
        if hrp.is_empty() || rest.len() < 6 {
            return None;
        }
        let values: Vec<u8> = rest
            .bytes()
            .map(|c| CHARSET.iter().position(|&x| x == c).map(|p| p as u8))
            .collect::<Option<_>>()?;
        if polymod(hrp_expand(hrp).into_iter().chain(values.iter().copied())) != 1 {
            return None;
        }
        let data = regroup(&values[..values.len() - 6], 5, 8, false)?;
        Some((hrp.to_string(), data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let id = Identity::generate().expect("identity");
        let secret = id.to_secret_string();
        assert!(secret.starts_with("AGE-SECRET-KEY-1"), "{secret}");
        let again = Identity::parse(&format!("# created: now\n# public key: x\n{secret}\n"))
            .expect("parse");
        assert_eq!(again.to_recipient(), id.to_recipient());
        let r = id.to_recipient().to_string();
        assert!(r.starts_with("age1") && r.len() == 62, "{r}");
        assert_eq!(
            r.parse::<Recipient>().expect("recipient"),
            id.to_recipient()
        );
        // One changed character breaks the checksum.
        let mut broken = r.clone().into_bytes();
        broken[10] = if broken[10] == b'q' { b'p' } else { b'q' };
        assert!(
            String::from_utf8(broken)
                .expect("utf8")
                .parse::<Recipient>()
                .is_err()
        );
        assert!(Identity::parse("AGE-SECRET-KEY-1QQQ").is_err());
    }

    #[test]
    fn bech32_matches_bip173_vectors() {
        assert!(bech32::decode("a12uel5l").is_some());
        assert!(bech32::decode("abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw").is_some());
        assert!(bech32::decode("a12uel5m").is_none());
        let (hrp, data) =
            bech32::decode("abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw").expect("vector");
        assert_eq!(hrp, "abcdef");
        assert_eq!(
            bech32::encode("abcdef", &data),
            "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw"
        );
    }

    #[test]
    fn any_recipient_decrypts_and_nothing_else_does() {
        let (a, b, c) = (
            Identity::generate().expect("a"),
            Identity::generate().expect("b"),
            Identity::generate().expect("c"),
        );
        for len in [0usize, 1, 32, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let file = encrypt(&plain, &[a.to_recipient(), b.to_recipient()]).expect("encrypt");
            assert_eq!(decrypt(&file, &a).expect("a"), plain, "len {len}");
            assert_eq!(decrypt(&file, &b).expect("b"), plain, "len {len}");
            assert_eq!(decrypt(&file, &c), Err(AgeError::NoMatchingRecipient));
            // Any flipped byte, in the header or the payload, is refused.
            for at in [30, file.len() / 2, file.len() - 1] {
                let mut bad = file.clone();
                bad[at] ^= 0x20;
                assert!(decrypt(&bad, &a).is_err(), "flip at {at} of {}", file.len());
            }
            // A truncated payload is refused.
            if len > CHUNK {
                assert!(decrypt(&file[..file.len() - (CHUNK / 2)], &a).is_err());
            }
        }
    }
}
