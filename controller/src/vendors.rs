//! Trusted images: vendor keys (`ssh-ed25519`) an admin imports, and the lists of image
//! digests each vendor signs with `ssh-keygen -Y sign -n lifeboat-images` (a detached
//! SSHSIG signature anyone can check with `ssh-keygen -Y verify`). An image snapshot is
//! covered when its image id (the config digest) or one of its repository digests is on
//! a list; a policy with `require_trusted_images = true` makes restoring an image that is
//! not covered a refusal an admin must force (audited).

use lifeboat_core::snapshot::{Record, SourceKind};
use lifeboat_core::sshsig::{self, PublicKey};

use crate::Controller;
use crate::catalog::SnapshotRow;
use crate::error::ApiError;
use crate::policy;

/// The SSHSIG namespace lists are signed in: a signature made for anything else (a git
/// commit, a file) does not count as vouching for images.
pub const NAMESPACE: &str = "lifeboat-images";

/// Imports a vendor's public key under `name`.
pub fn add_key(ctl: &Controller, name: &str, line: &str) -> Result<(String, bool), ApiError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::InvalidArgument(format!(
            "vendor name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    let key = PublicKey::parse(line.trim())
        .map_err(|e| ApiError::InvalidArgument(format!("vendor key: {e}")))?;
    let fingerprint = key.fingerprint();
    if let Some(same) = ctl
        .catalog
        .vendor_keys()?
        .into_iter()
        .find(|k| k.fingerprint == fingerprint || k.name == name)
    {
        if same.name == name && same.fingerprint == fingerprint {
            return Ok((fingerprint, false));
        }
        return Err(ApiError::AlreadyExists(format!(
            "vendor {} already has key {}: a vendor's key is not replaced (add the new key under another name)",
            same.name, same.fingerprint
        )));
    }
    let added =
        ctl.catalog
            .add_vendor_key(name, &key.to_line(), &fingerprint, ctl.clock.now_ms())?;
    Ok((fingerprint, added))
}

/// The digests a list names: one per line (`sha256:<64 hex>`, or `NAME@sha256:...`),
/// anything after the first word ignored, blank lines and `#` comments skipped.
pub fn parse_list(list: &str) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for (i, line) in list.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or("");
        let digest = word.rsplit_once('@').map(|(_, d)| d).unwrap_or(word);
        let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        });
        if !ok {
            return Err(ApiError::InvalidArgument(format!(
                "line {}: {word:?} is not an image digest (sha256: and 64 lowercase hex characters)",
                i + 1
            )));
        }
        out.push(digest.to_owned());
    }
    if out.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the list names no image digest".into(),
        ));
    }
    Ok(out)
}

/// Checks `signature` over `list` against every vendor key; stores the digests under the
/// vendor whose key signed it. Returns (vendor, digests listed, new).
pub fn import_list(
    ctl: &Controller,
    list: &[u8],
    signature: &str,
) -> Result<(String, u64, u64), ApiError> {
    let text = std::str::from_utf8(list)
        .map_err(|_| ApiError::InvalidArgument("the list is not UTF-8 text".into()))?;
    let keys = ctl.catalog.vendor_keys()?;
    if keys.is_empty() {
        return Err(ApiError::FailedPrecondition(
            "no vendor key imported yet: `lifeboat trust key add NAME --key FILE.pub` first".into(),
        ));
    }
    let mut why = Vec::new();
    for k in &keys {
        let key = PublicKey::parse(&k.key).map_err(ApiError::internal)?;
        match sshsig::verify(signature, list, NAMESPACE, &key) {
            Ok(()) => {
                let digests = parse_list(text)?;
                let new = ctl
                    .catalog
                    .add_trusted_digests(&k.name, &digests, ctl.clock.now_ms())?;
                return Ok((k.name.clone(), digests.len() as u64, new));
            }
            Err(e) => why.push(format!("{}: {e}", k.name)),
        }
    }
    Err(ApiError::PermissionDenied(format!(
        "the signature verifies with no imported vendor key ({})",
        why.join("; ")
    )))
}

/// An image snapshot's digests: its image id and its repository digests; `None` for
/// other sources.
fn digests(ctl: &Controller, snap: &SnapshotRow) -> Result<Option<Vec<String>>, ApiError> {
    if SourceKind::of(&snap.source) != SourceKind::Image {
        return Ok(None);
    }
    let record = Record::parse(&ctl.store.read_snapshot(&snap.id)?.record)?;
    let mut out = vec![snap.source_path.clone()];
    if let Some(image) = &record.image {
        out.push(image.id.clone());
        out.extend(
            image
                .repo_digests
                .iter()
                .filter_map(|d| d.rsplit_once('@').map(|(_, h)| h.to_owned())),
        );
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

/// The vendors vouching for an image snapshot (empty: not covered); `None` for other sources.
pub fn vouched_by(ctl: &Controller, snap: &SnapshotRow) -> Result<Option<Vec<String>>, ApiError> {
    match digests(ctl, snap)? {
        Some(d) => Ok(Some(ctl.catalog.vouched_by(&d)?)),
        None => Ok(None),
    }
}

/// Whether a policy covering the snapshot's source requires trusted images.
pub fn required(ctl: &Controller, snap: &SnapshotRow) -> Result<bool, ApiError> {
    let Some(agent) = ctl.catalog.agent(&snap.agent_id)? else {
        return Ok(false);
    };
    Ok(policy::policies(ctl)?
        .iter()
        .any(|p| p.require_trusted_images && policy::covers(p, &agent, &snap.source)))
}

/// `Some(reason)` when restoring this snapshot must be refused for want of a vendor's
/// signature.
pub fn untrusted(ctl: &Controller, snap: &SnapshotRow) -> Result<Option<String>, ApiError> {
    if SourceKind::of(&snap.source) != SourceKind::Image || !required(ctl, snap)? {
        return Ok(None);
    }
    match vouched_by(ctl, snap)? {
        Some(v) if v.is_empty() => Ok(Some(format!(
            "image {} of snapshot {} is on no vendor's signed list and its policy requires trusted images",
            snap.source_path,
            &snap.id[..12.min(snap.id.len())]
        ))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_name_digests_one_per_line_and_bad_lines_are_named() {
        let h = "a".repeat(64);
        let list =
            format!("# vendor images\n\nsha256:{h} app:1.2\nregistry.example/app@sha256:{h}\n");
        assert_eq!(
            parse_list(&list).expect("parses"),
            [format!("sha256:{h}"), format!("sha256:{h}")]
        );
        let e = parse_list(&format!("sha256:{h}\nsha256:XYZ\n")).expect_err("bad");
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse_list("# nothing\n").is_err());
    }
}
