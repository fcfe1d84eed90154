//! The inventory of every snapshot: the packages it holds, read from the snapshot in the
//! store, never from the live machine (`lifeboat_core::inventory` parses the databases;
//! this module finds them in a tree or an image's layers and reads them through verified
//! chunk reads).
//!
//! Snapshots of a source that did not change have the same package databases: an
//! inventory is keyed by what it was read from (each database file's path and content
//! hash, or an image's id), so it is read and stored once and every later snapshot links
//! to it. The `inventory` worker reads new snapshots after their commit, within a time
//! budget per run; an operator asking for one not read yet has it read on the spot.

use std::io::{BufRead, Read};
use std::time::{Duration, Instant};

use lifeboat_core::ChunkId;
use lifeboat_core::inventory::{self, Inventory, MAX_DATABASE_BYTES, Scan};
use lifeboat_core::snapshot::Record;
use lifeboat_core::tree::{Entry, Kind, Tree};
use lifeboat_proto::pb;

use crate::Controller;
use crate::catalog::{InventoryLink, SnapshotRow};
use crate::error::ApiError;

/// Part of every key: a reader that learns a new database reads every snapshot again.
const READER_VERSION: &str = "inventory-1";

/// How long one run of the worker may read before it leaves the rest for the next.
pub const WORKER_BUDGET: Duration = Duration::from_secs(2);

/// A snapshot's inventory with the snapshot it belongs to.
pub struct SnapshotInventory {
    /// What the inventory is stored under (shared by snapshots with the same databases).
    pub key: String,
    pub snapshot: SnapshotRow,
    pub record: Record,
    pub inventory: Inventory,
    pub scanned_ms: i64,
}

/// The inventory of the snapshot `prefix` names: stored, or read now.
pub fn of_snapshot(ctl: &Controller, prefix: &str) -> Result<SnapshotInventory, ApiError> {
    let snapshot = ctl.catalog.find_snapshot(prefix)?;
    let env = ctl.store.read_snapshot(&snapshot.id)?;
    let record = Record::parse(&env.record)?;
    let stored = match ctl.catalog.inventory_link(&snapshot.id)? {
        Some(link) if !link.key.is_empty() => ctl
            .catalog
            .inventory(&link.key)?
            .map(|body| (decode(&body), link)),
        _ => None,
    };
    let (inventory, link) = match stored {
        Some((Ok(inv), link)) => (inv, link),
        // Never read, failed before, or stored by a reader that no longer parses it.
        _ => {
            let link = read_and_store(ctl, &snapshot.id, &record)?;
            let body = ctl.catalog.inventory(&link.key)?.ok_or_else(|| {
                ApiError::internal(format!("inventory {} vanished while read", link.key))
            })?;
            (decode(&body)?, link)
        }
    };
    let scanned_ms = link.scanned_ms;
    Ok(SnapshotInventory {
        key: link.key,
        snapshot,
        record,
        inventory,
        scanned_ms,
    })
}

fn decode(body: &[u8]) -> Result<Inventory, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::internal(format!("a stored inventory does not parse: {e}")))
}

/// The worker: inventories snapshots not read yet, oldest first, until the budget is spent.
/// A snapshot that cannot be read is recorded with its error (so it is not read again
/// every run) and logged; an operator's request reads it again.
pub fn catch_up(ctl: &Controller, budget: Duration) -> Result<(), ApiError> {
    let began = Instant::now();
    while began.elapsed() < budget {
        let pending = ctl.catalog.snapshots_without_inventory(16)?;
        if pending.is_empty() {
            return Ok(());
        }
        for id in pending {
            let outcome = ctl
                .store
                .read_snapshot(&id)
                .and_then(|env| Ok(Record::parse(&env.record)?))
                .and_then(|record| read_and_store(ctl, &id, &record));
            if let Err(e) = outcome {
                tracing::warn!(snapshot = %id, error = %e, "could not read the snapshot's packages");
                let link = InventoryLink {
                    key: String::new(),
                    scanned_ms: ctl.clock.now_ms(),
                    error: e.to_string(),
                };
                ctl.catalog.link_inventory(&id, &link, None)?;
            }
            if began.elapsed() >= budget {
                break;
            }
        }
    }
    Ok(())
}

/// Reads the snapshot's tree, then its databases unless an inventory with the same key is
/// stored already; links the snapshot to it.
fn read_and_store(ctl: &Controller, id: &str, record: &Record) -> Result<InventoryLink, ApiError> {
    let tree = crate::snapshots::load_tree(ctl, record)?;
    let key = key(record, &tree);
    let link = InventoryLink {
        key: key.clone(),
        scanned_ms: ctl.clock.now_ms(),
        error: String::new(),
    };
    if ctl.catalog.inventory(&key)?.is_some() {
        ctl.catalog.link_inventory(id, &link, None)?;
        tracing::info!(snapshot = %id, "the snapshot's packages are those of an earlier snapshot");
        return Ok(link);
    }
    let inventory = read(ctl, record, &tree)?;
    tracing::info!(
        snapshot = %id,
        packages = inventory.packages.len(),
        notes = inventory.notes.len(),
        "read the snapshot's packages"
    );
    let body = serde_json::to_vec(&inventory)
        .map_err(|e| ApiError::internal(format!("encoding an inventory: {e}")))?;
    ctl.catalog.link_inventory(id, &link, Some(&body))?;
    Ok(link)
}

/// What an inventory is read from: an image's id, or the path and content of every
/// database in the tree.
fn key(record: &Record, tree: &Tree) -> String {
    let mut h = blake3::Hasher::new();
    h.update(READER_VERSION.as_bytes());
    if let Some(image) = &record.image {
        h.update(b"\0image\0");
        h.update(image.id.as_bytes());
    } else {
        for e in databases(tree) {
            h.update(&(e.path.len() as u64).to_le_bytes());
            h.update(&e.path);
            h.update(&e.content_hash);
        }
    }
    h.finalize().to_hex().to_string()
}

/// The tree's package database files, in tree order.
fn databases(tree: &Tree) -> impl Iterator<Item = &Entry> {
    tree.entries
        .iter()
        .filter(|e| e.kind == Kind::File && inventory::database(&e.display_path()).is_some())
}

fn read(ctl: &Controller, record: &Record, tree: &Tree) -> Result<Inventory, ApiError> {
    let mut scan = Scan::new();
    match &record.image {
        Some(image) => read_image(ctl, tree, &image.layers, &mut scan)?,
        None => {
            for e in databases(tree) {
                let path = e.display_path();
                let Some(db) = inventory::database(&path) else {
                    continue;
                };
                if e.size > MAX_DATABASE_BYTES {
                    scan.note(format!(
                        "{path}: {} bytes, larger than a package database is read",
                        e.size
                    ));
                    continue;
                }
                scan.file(&path, "", db, &read_file(ctl, e)?);
            }
        }
    }
    Ok(scan.finish())
}

/// An image archive (`docker save`): `manifest.json` names the layer tarballs in order;
/// each is read as a stream from the store, and its databases and whiteouts applied.
fn read_image(
    ctl: &Controller,
    tree: &Tree,
    diff_ids: &[String],
    scan: &mut Scan,
) -> Result<(), ApiError> {
    let find = |path: &str| {
        tree.entries
            .iter()
            .find(|e| e.kind == Kind::File && e.path == path.as_bytes())
    };
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let manifest = match find("manifest.json") {
        Some(m) if m.size <= MAX_DATABASE_BYTES => m,
        _ => {
            scan.note("the image archive has no readable manifest.json: no layer was read");
            return Ok(());
        }
    };
    let layers = match serde_json::from_slice::<Vec<Manifest>>(&read_file(ctl, manifest)?) {
        Ok(m) => m.into_iter().next().map(|m| m.layers).unwrap_or_default(),
        Err(e) => {
            scan.note(format!(
                "the image's manifest.json does not parse ({e}): no layer was read"
            ));
            return Ok(());
        }
    };
    for (i, path) in layers.iter().enumerate() {
        let layer = diff_ids.get(i).cloned().unwrap_or_else(|| path.clone());
        let Some(entry) = find(path) else {
            scan.note(format!("layer {layer}: {path} is not in the archive"));
            continue;
        };
        if let Err(e) = read_layer(ctl, entry, &layer, scan) {
            scan.note(format!("layer {layer}: {e}"));
        }
    }
    Ok(())
}

fn read_layer(
    ctl: &Controller,
    entry: &Entry,
    layer: &str,
    scan: &mut Scan,
) -> std::io::Result<()> {
    scan_layer(Chunks::new(ctl, &entry.chunks), layer, scan)
}

/// Applies one layer tarball (plain, gzip or zstd, as a registry serves them) to `scan`:
/// its whiteouts, then its package databases.
fn scan_layer(layer_tar: impl Read, layer: &str, scan: &mut Scan) -> std::io::Result<()> {
    let mut head = std::io::BufReader::with_capacity(1 << 16, layer_tar);
    let magic = head.fill_buf()?;
    let stream: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(head))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(head)?)
    } else {
        Box::new(head)
    };
    let mut archive = tar::Archive::new(stream);
    for member in archive.entries()? {
        let mut member = member?;
        let path = String::from_utf8_lossy(&member.path_bytes()).into_owned();
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        if name == ".wh..wh..opq" {
            scan.opaque(dir);
        } else if let Some(gone) = name.strip_prefix(".wh.") {
            scan.whiteout(&if dir.is_empty() {
                gone.to_owned()
            } else {
                format!("{dir}/{gone}")
            });
        } else if member.header().entry_type().is_file()
            && let Some(db) = inventory::database(&path)
        {
            let size = member.size();
            if size > MAX_DATABASE_BYTES {
                scan.note(format!(
                    "layer {layer}: {path}: {size} bytes, larger than a package database is read"
                ));
                continue;
            }
            let mut bytes = Vec::with_capacity(size as usize);
            member.read_to_end(&mut bytes)?;
            scan.file(&path, layer, db, &bytes);
        }
    }
    Ok(())
}

/// A (small) file's bytes, every chunk verified.
fn read_file(ctl: &Controller, e: &Entry) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::with_capacity(e.size as usize);
    for id in &e.chunks {
        bytes.extend_from_slice(&ctl.store.read_chunk(id)?);
    }
    Ok(bytes)
}

/// A file's bytes as a stream, one verified chunk read from the store at a time.
struct Chunks<'a> {
    ctl: &'a Controller,
    ids: std::slice::Iter<'a, ChunkId>,
    buf: Vec<u8>,
    at: usize,
}

impl<'a> Chunks<'a> {
    fn new(ctl: &'a Controller, ids: &'a [ChunkId]) -> Self {
        Chunks {
            ctl,
            ids: ids.iter(),
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Chunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            let Some(id) = self.ids.next() else {
                return Ok(0);
            };
            self.buf = self
                .ctl
                .store
                .read_chunk(id)
                .map_err(|e| std::io::Error::other(format!("chunk {id}: {e}")))?;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The wire form.
pub fn reply(s: &SnapshotInventory) -> pb::InventoryReply {
    let os = s.inventory.os.as_ref();
    pb::InventoryReply {
        snapshot_id: s.snapshot.id.clone(),
        agent_name: s.snapshot.agent_name.clone(),
        source: s.snapshot.source.clone(),
        received_ms: s.snapshot.received_ms,
        image_id: s
            .record
            .image
            .as_ref()
            .map(|i| i.id.clone())
            .unwrap_or_default(),
        os_id: os.map(|o| o.id.clone()).unwrap_or_default(),
        os_version: os.map(|o| o.version_id.clone()).unwrap_or_default(),
        os_pretty_name: os.map(|o| o.pretty_name.clone()).unwrap_or_default(),
        packages: s
            .inventory
            .packages
            .iter()
            .map(|p| pb::InventoryPackage {
                ecosystem: p.ecosystem.osv().into(),
                name: p.name.clone(),
                version: p.version.clone(),
                source: p.source.clone(),
                arch: p.arch.clone(),
                location: p.location.clone(),
                layer: p.layer.clone(),
                purl: p.purl(os),
            })
            .collect(),
        notes: s.inventory.notes.clone(),
        scanned_ms: s.scanned_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, body.as_bytes())
                .expect("test value");
        }
        b.into_inner().expect("test value")
    }

    #[test]
    fn layers_are_read_plain_gzip_or_zstd_with_their_whiteouts() {
        let status = "Package: curl\nStatus: install ok installed\nVersion: 7.88-1\n";
        let meta = "Name: six\nVersion: 1.16.0\n";
        let bottom = layer(&[
            ("var/lib/dpkg/status", status),
            ("usr/lib/python3/six-1.16.0.dist-info/METADATA", meta),
            ("etc/os-release", "ID=debian\nVERSION_ID=12\n"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layer(&[(
            "var/lib/dpkg/status",
            "Package: curl\nStatus: install ok installed\nVersion: 7.88-2\n",
        )]))
        .expect("test value");
        let middle = gz.finish().expect("test value");
        let top = zstd::encode_all(
            &layer(&[("usr/lib/python3/.wh.six-1.16.0.dist-info", "")])[..],
            3,
        )
        .expect("test value");
        let mut scan = Scan::new();
        for (bytes, id) in [(bottom, "l1"), (middle, "l2"), (top, "l3")] {
            scan_layer(&bytes[..], id, &mut scan).expect("test value");
        }
        let inv = scan.finish();
        let got: Vec<_> = inv
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.layer.as_str()))
            .collect();
        assert_eq!(got, [("curl", "7.88-2", "l2")]);
        assert_eq!(inv.os.expect("test value").id, "debian");
    }

    #[test]
    fn a_layer_that_is_not_a_tarball_is_an_error_not_a_panic() {
        let mut scan = Scan::new();
        assert!(scan_layer(&[0x1f, 0x8b, 1, 2, 3][..], "l", &mut scan).is_err());
        assert!(
            scan_layer(
                &b"garbage that is not a tar header at all"[..],
                "l",
                &mut scan
            )
            .is_err()
        );
    }
}
