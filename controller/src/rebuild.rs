//! `lifeboat-controller rebuild-catalog`: rebuilds the store index (packs, chunks,
//! snapshots) from the store alone, for when the catalog is lost or suspect; and
//! [`catch_up`], which indexes only what a recovered catalog does not list yet.

use std::path::Path;

use lifeboat_core::pack;
use lifeboat_core::snapshot::Record;

use crate::catalog::AgentRow;
use crate::error::ApiError;
use crate::snapshots;
use crate::{lock_data_dir, now_ms, setup};

/// What a rebuild found.
#[derive(Debug, Default)]
pub struct RebuildReport {
    pub packs: u64,
    pub chunks: u64,
    pub snapshots: u64,
    /// Files that could not be read, with the reason; they are left in place.
    pub skipped: Vec<String>,
    /// Packs whose trailer could not be read, with what was salvaged from them; the
    /// damaged files are moved to `STORE/damaged/`.
    pub salvaged: Vec<String>,
    /// Packs and snapshots a recovered catalog listed that the store no longer holds.
    pub forgotten: Vec<String>,
    /// When the newest snapshot indexed now was received (0: none).
    pub newest_received_ms: i64,
}

pub fn rebuild_catalog(data_dir: &Path) -> Result<RebuildReport, ApiError> {
    index_store(data_dir, &Default::default(), true)
}

/// Indexes the packs and snapshot envelopes of the store that the catalog does not list
/// (a catalog recovered from a state saved earlier), leaving what it lists alone.
pub fn catch_up(
    data_dir: &Path,
    s3: &crate::store::location::S3Options,
) -> Result<RebuildReport, ApiError> {
    index_store(data_dir, s3, false)
}

/// Indexes the store: everything anew (`full`), or only what the catalog lacks.
fn index_store(
    data_dir: &Path,
    s3: &crate::store::location::S3Options,
    full: bool,
) -> Result<RebuildReport, ApiError> {
    let _lock = lock_data_dir(data_dir)?;
    let mut prepared = setup::prepare(data_dir, None, s3, None, setup::print_recovery_banner)?;
    let catalog = std::sync::Arc::new(prepared.catalog);
    let objects = crate::store::open_objects(&prepared.store, &prepared.staging_dir)?;
    let store = crate::store::Store::open(
        objects,
        prepared.chunk_key.clone(),
        prepared.data_key.take(),
        catalog.clone(),
    )?;
    let controller_key = prepared.signer.public_key();
    let mut report = RebuildReport::default();
    restore_admin(data_dir, &catalog)?;
    let present_packs = store.pack_names()?;
    let present_snaps = store.snapshot_ids()?;
    if full {
        catalog.clear_store_index()?;
    } else {
        // What the catalog lists and the store no longer holds went after the state was
        // saved (GC compacted a pack, a snapshot was deleted): forget it, so a relocated
        // chunk is found in its new pack.
        let packs: std::collections::HashSet<&String> =
            present_packs.iter().map(|(name, _)| name).collect();
        for gone in catalog.pack_names()?.iter().filter(|p| !packs.contains(p)) {
            catalog.forget_pack(gone)?;
            report.forgotten.push(format!("pack {gone}"));
        }
        let snaps: std::collections::HashSet<&String> =
            present_snaps.iter().map(|(id, _)| id).collect();
        for gone in catalog
            .snapshot_ids()?
            .iter()
            .filter(|s| !snaps.contains(s))
        {
            catalog.delete_snapshot(gone)?;
            report.forgotten.push(format!("snapshot {gone}"));
        }
    }
    for (name, version) in present_packs {
        if !full && catalog.retained_pack(&name)?.is_some() {
            continue;
        }
        // On a versioned bucket, the version Lifeboat wrote (the oldest), whatever was
        // written or deleted on top of it.
        let file = match store.pack_file_at(&name, &version) {
            Ok(f) => f,
            Err(e) => {
                report.skipped.push(format!("pack {name}: {e}"));
                continue;
            }
        };
        match pack::read_index(&file.path) {
            Ok(entries) => {
                let size = std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
                report.chunks += entries.len() as u64;
                catalog.insert_pack(
                    &pack::SealedPack {
                        name,
                        path: file.path.clone(),
                        size,
                        entries,
                    },
                    // Its retention is not in a listing: commits extend it as they need.
                    &crate::store::objects::Stored {
                        version,
                        retained_until_ms: 0,
                    },
                    now_ms(),
                )?;
                report.packs += 1;
            }
            Err(e) => match salvage(&store, &prepared.chunk_key, &file, &name) {
                Ok((sealed, moved)) => {
                    let n = sealed.as_ref().map_or(0, |(p, _)| p.entries.len());
                    report.salvaged.push(format!(
                        "pack {name}: {e}; {n} chunks salvaged{}; the damaged file is now {moved}",
                        sealed
                            .as_ref()
                            .map(|(p, _)| format!(" into pack {}", p.name))
                            .unwrap_or_default(),
                    ));
                    if let Some((sealed, stored)) = sealed {
                        report.chunks += n as u64;
                        report.packs += 1;
                        catalog.insert_pack(&sealed, &stored, now_ms())?;
                    }
                }
                Err(salvage_error) => report
                    .skipped
                    .push(format!("{e}; salvaging it failed: {salvage_error}")),
            },
        }
    }
    let known: std::collections::HashSet<String> = if full {
        Default::default()
    } else {
        catalog.snapshot_ids()?.into_iter().collect()
    };
    for (id, version) in present_snaps {
        if known.contains(&id) {
            continue;
        }
        let parsed = store.read_snapshot_at(&id, &version).and_then(|env| {
            if env.id() != id {
                return Err(ApiError::InvalidArgument(format!(
                    "snapshot file {id} holds a record with another id"
                )));
            }
            // The countersignature vouches for the agent key in the envelope, so snapshots
            // stay verifiable even when the agent's row was lost with the catalog.
            let record: Record = env.verify(&env.public_key, &controller_key)?;
            Ok((env, record))
        });
        match parsed {
            Ok((env, record)) => {
                if catalog.agent(&record.agent_id)?.is_none() {
                    // The agent's row was lost with the catalog: keep its key so its
                    // snapshots stay verifiable. It must re-enroll to connect again.
                    catalog.insert_agent(&AgentRow {
                        id: record.agent_id.clone(),
                        name: record.agent_name.clone(),
                        labels: Default::default(),
                        hostname: record.hostname.clone(),
                        signing_key: env.public_key.clone(),
                        cert_serial: String::new(),
                        enrolled_ms: 0,
                        last_seen_ms: 0,
                        sources: Vec::new(),
                        restore_roots: Vec::new(),
                        version: String::new(),
                        // Its certificate is unknown: it must re-enroll to connect.
                        revoked_ms: 0,
                        prev_serial: String::new(),
                        cert_expires_ms: 0,
                        docker: None,
                    })?;
                }
                let mut row = snapshots::row(&id, &record, env.received_unix_ms);
                row.envelope_version = version;
                catalog.insert_snapshot(&row)?;
                report.snapshots += 1;
                report.newest_received_ms = report.newest_received_ms.max(env.received_unix_ms);
            }
            Err(e) => report.skipped.push(format!("snapshot {id}: {e}")),
        }
    }
    Ok(report)
}

/// Copies the chunks still readable in a damaged pack into a new pack (sealed, stored and
/// checked like any other) and sets the damaged one aside under `damaged/`, where it stays
/// for whoever investigates: nothing is deleted. Returns the new pack and where the damaged
/// one went.
fn salvage(
    store: &crate::store::Store,
    key: &lifeboat_core::ChunkKey,
    damaged: &crate::store::PackFile,
    name: &str,
) -> Result<
    (
        Option<(pack::SealedPack, crate::store::objects::Stored)>,
        String,
    ),
    ApiError,
> {
    let found = pack::salvage(&damaged.path, key, store.data_key())?;
    let mut writer = None;
    if !found.is_empty() {
        let file = std::fs::File::open(&damaged.path)
            .map_err(|e| ApiError::internal(format!("opening {}: {e}", damaged.path.display())))?;
        let mut w = store.new_pack()?;
        for e in &found {
            let blob = pack::read_blob(&file, e.offset, e.length)?;
            w.add(e.id, &blob)?;
        }
        writer = Some(w);
    }
    // Set aside before the new pack is stored: it may get the same name (a pack is named
    // by its trailer, and an intact run of blobs makes the same trailer again).
    let moved = store.set_aside(name, damaged)?;
    let sealed = writer.map(|w| store.store_pack(w)).transpose()?;
    Ok((sealed, moved))
}

/// Re-registers the admin identity of `DIR/admin.identity`, so the operator who rebuilt a
/// lost catalog can still reach the controller. Other operators and agents re-enroll.
fn restore_admin(data_dir: &Path, catalog: &crate::catalog::Catalog) -> Result<(), ApiError> {
    let path = data_dir.join("admin.identity");
    if !path.exists() {
        return Ok(());
    }
    let id = lifeboat_core::identity::IdentityFile::load(&path)?;
    let der = lifeboat_core::pki::cert_der(&id.cert_pem)?;
    if let Some(lifeboat_proto::transport::Peer::Operator { name, serial }) =
        lifeboat_proto::transport::peer_from_cert(der.as_ref())
        && catalog.operator(&name)?.is_none()
    {
        let expires = lifeboat_core::pki::validity_of(&id.cert_pem)?.not_after_ms();
        catalog.add_operator(
            &name,
            &id.role,
            &serial,
            now_ms(),
            expires,
            "rebuild-catalog",
        )?;
    }
    Ok(())
}
