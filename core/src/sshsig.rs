//! Detached signatures in OpenSSH's SSHSIG format, as `ssh-keygen -Y sign` makes them and
//! `ssh-keygen -Y verify` checks them: how a vendor signs the list of image digests it
//! vouches for, with a key an operator already knows how to handle. Only `ssh-ed25519`
//! keys are accepted (verified with aws-lc-rs, already the process's crypto).
//!
//! ```text
//! blob      = "SSHSIG" u32(1) string(public key) string(namespace) string(reserved)
//!             string(hash algorithm) string(signature)
//! signed    = "SSHSIG" string(namespace) string(reserved) string(hash algorithm)
//!             string(H(message))
//! ```

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

const MAGIC: &[u8] = b"SSHSIG";
const ED25519_NAME: &str = "ssh-ed25519";

/// An `ssh-ed25519` public key, from an `authorized_keys`-style line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key's wire form (what the signature names).
    blob: Vec<u8>,
    key: [u8; 32],
    pub comment: String,
}

impl PublicKey {
    /// Parses `ssh-ed25519 AAAA... [comment]`.
    pub fn parse(line: &str) -> Result<PublicKey, String> {
        let mut parts = line.split_whitespace();
        let algo = parts.next().ok_or("an empty public key")?;
        if algo != ED25519_NAME {
            return Err(format!(
                "{algo:?} keys are not accepted: give an ssh-ed25519 public key"
            ));
        }
        let blob = STANDARD
            .decode(parts.next().ok_or("the public key has no base64 part")?)
            .map_err(|e| format!("the public key's base64 does not decode: {e}"))?;
        let key = Self::from_blob(&blob)?;
        Ok(PublicKey {
            blob,
            key,
            comment: parts.collect::<Vec<_>>().join(" "),
        })
    }

    fn from_blob(blob: &[u8]) -> Result<[u8; 32], String> {
        let mut r = Reader(blob);
        let algo = r.string()?;
        if algo != ED25519_NAME.as_bytes() {
            return Err(format!(
                "a {:?} key, not ssh-ed25519",
                String::from_utf8_lossy(algo)
            ));
        }
        let key: [u8; 32] = r
            .string()?
            .try_into()
            .map_err(|_| "an ssh-ed25519 key is 32 bytes".to_string())?;
        r.end()?;
        Ok(key)
    }

    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let d = digest::digest(&digest::SHA256, &self.blob);
        format!("SHA256:{}", STANDARD_NO_PAD.encode(d.as_ref()))
    }

    /// The key as an `authorized_keys` line.
    pub fn to_line(&self) -> String {
        let mut s = format!("{ED25519_NAME} {}", STANDARD.encode(&self.blob));
        if !self.comment.is_empty() {
            s.push(' ');
            s.push_str(&self.comment);
        }
        s
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the signature is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the signature".into())
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Checks that `armored` (`-----BEGIN SSH SIGNATURE-----` ...) is `key`'s signature of
/// `message` in `namespace`. The error says what does not hold.
pub fn verify(
    armored: &str,
    message: &[u8],
    namespace: &str,
    key: &PublicKey,
) -> Result<(), String> {
    let body: String = armored
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN SSH SIGNATURE-----")
        .skip(1)
        .take_while(|l| *l != "-----END SSH SIGNATURE-----")
        .collect();
    if body.is_empty() {
        return Err("not an SSH signature (no -----BEGIN SSH SIGNATURE----- block)".into());
    }
    let blob = STANDARD
        .decode(body)
        .map_err(|e| format!("the signature's base64 does not decode: {e}"))?;
    let mut r = Reader(&blob);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not an SSHSIG signature".into());
    }
    if r.u32()? != 1 {
        return Err("an SSHSIG version other than 1".into());
    }
    let signer = r.string()?;
    let ns = r.string()?;
    let reserved = r.string()?;
    let hash = r.string()?;
    let sig = r.string()?;
    r.end()?;
    if ns != namespace.as_bytes() {
        return Err(format!(
            "signed for namespace {:?}, not {namespace:?} (sign with ssh-keygen -Y sign -n {namespace})",
            String::from_utf8_lossy(ns)
        ));
    }
    if signer != key.blob.as_slice() {
        return Err(format!("signed by another key than {}", key.fingerprint()));
    }
    let digest = match hash {
        b"sha512" => digest::digest(&digest::SHA512, message),
        b"sha256" => digest::digest(&digest::SHA256, message),
        other => {
            return Err(format!(
                "hash algorithm {:?} is not SSHSIG's",
                String::from_utf8_lossy(other)
            ));
        }
    };
    let mut s = Reader(sig);
    if s.string()? != ED25519_NAME.as_bytes() {
        return Err("the signature is not an ssh-ed25519 signature".into());
    }
    let raw = s.string()?;
    s.end()?;
    let mut signed = MAGIC.to_vec();
    put_string(&mut signed, ns);
    put_string(&mut signed, reserved);
    put_string(&mut signed, hash);
    put_string(&mut signed, digest.as_ref());
    UnparsedPublicKey::new(&ED25519, key.key)
        .verify(&signed, raw)
        .map_err(|_| "the signature does not match the list: it was changed after signing, or signed with another key".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_other_than_ed25519_and_garbage_are_refused_with_a_reason() {
        assert!(
            PublicKey::parse("ssh-rsa AAAAB3NzaC1yc2E x")
                .expect_err("rsa")
                .contains("ssh-ed25519")
        );
        assert!(
            PublicKey::parse("ssh-ed25519 !!!")
                .expect_err("b64")
                .contains("base64")
        );
        assert!(PublicKey::parse("").is_err());
        let k = PublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl vendor",
        )
        .expect("a real ed25519 key line");
        assert_eq!(k.comment, "vendor");
        assert!(k.fingerprint().starts_with("SHA256:"));
        assert!(
            verify("not a signature", b"x", "n", &k)
                .expect_err("none")
                .contains("BEGIN SSH SIGNATURE")
        );
    }
}
