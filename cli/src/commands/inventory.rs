//! `lifeboat sbom`: the packages a snapshot holds, as a CycloneDX SBOM, a table or JSON;
//! and `lifeboat sbom diff`, what changed between two snapshots.

use anyhow::{Context, Result};
use lifeboat_core::inventory::{self, Ecosystem, Inventory, Os, Package};
use lifeboat_proto::pb;

use crate::args::*;
use crate::connect::{Api, rpc};
use crate::output::{self, time};

pub async fn run(api: &mut Api, cmd: Cmd) -> Result<i32> {
    let Cmd::Sbom {
        cmd,
        snapshot,
        out,
        table,
        json,
    } = cmd
    else {
        unreachable!("routed by commands::dispatch")
    };
    if let Some(SbomCmd::Diff { a, b, json }) = cmd {
        return diff(api, a, b, json.json).await;
    }
    let snapshot = snapshot.context("name a snapshot: lifeboat sbom SNAPSHOT")?;
    let inv = fetch(api, &snapshot).await?;
    if json.json {
        out!("{}", serde_json::to_string_pretty(&listing_json(&inv))?);
    } else if table {
        out!("{}", describe(&inv));
        out!("{}", package_table(&inv.packages));
        for note in &inv.notes {
            out!("note: {note}");
        }
    } else {
        let bom = serde_json::to_string_pretty(&cyclonedx(&inv))?;
        match out {
            Some(path) => {
                std::fs::write(&path, bom + "\n")
                    .with_context(|| format!("writing the SBOM to {}", path.display()))?;
                eprintln!(
                    "{} packages written to {}",
                    inv.packages.len(),
                    path.display()
                );
            }
            None => out!("{bom}"),
        }
    }
    Ok(0)
}

async fn fetch(api: &mut Api, snapshot: &str) -> Result<pb::InventoryReply> {
    Ok(api
        .snapshot_inventory(pb::SnapshotRef {
            id: snapshot.to_owned(),
        })
        .await
        .map_err(rpc)?
        .into_inner())
}

/// One line naming the snapshot and its distribution.
fn describe(inv: &pb::InventoryReply) -> String {
    let os = if inv.os_pretty_name.is_empty() {
        inv.os_id.clone()
    } else {
        inv.os_pretty_name.clone()
    };
    format!(
        "snapshot {} of {} {} ({}){}: {} packages",
        short(&inv.snapshot_id),
        inv.agent_name,
        inv.source,
        time(inv.received_ms),
        if os.is_empty() {
            String::new()
        } else {
            format!(", {os}")
        },
        inv.packages.len()
    )
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn package_table(packages: &[pb::InventoryPackage]) -> String {
    let rows = packages
        .iter()
        .map(|p| {
            vec![
                p.ecosystem.clone(),
                p.name.clone(),
                p.version.clone(),
                p.location.clone(),
                short_layer(&p.layer),
            ]
        })
        .collect();
    output::table(&["ECOSYSTEM", "NAME", "VERSION", "FOUND IN", "LAYER"], rows)
}

fn short_layer(layer: &str) -> String {
    let hex = layer.strip_prefix("sha256:").unwrap_or(layer);
    if hex.is_empty() {
        "-".into()
    } else {
        hex[..hex.len().min(12)].to_owned()
    }
}

fn package_json(p: &pb::InventoryPackage) -> serde_json::Value {
    serde_json::json!({
        "ecosystem": p.ecosystem, "name": p.name, "version": p.version,
        "source": p.source, "arch": p.arch, "location": p.location,
        "layer": p.layer, "purl": p.purl,
    })
}

fn listing_json(inv: &pb::InventoryReply) -> serde_json::Value {
    serde_json::json!({
        "snapshot": inv.snapshot_id,
        "agent": inv.agent_name,
        "source": inv.source,
        "received": time(inv.received_ms),
        "image_id": inv.image_id,
        "os": {"id": inv.os_id, "version_id": inv.os_version, "pretty_name": inv.os_pretty_name},
        "packages": inv.packages.iter().map(package_json).collect::<Vec<_>>(),
        "notes": inv.notes,
        "scanned": time(inv.scanned_ms),
    })
}

/// A CycloneDX 1.5 BOM: the snapshot as the described component, its distribution, and
/// one library per package with its package URL and where it was found.
fn cyclonedx(inv: &pb::InventoryReply) -> serde_json::Value {
    let prop = |name: &str, value: &str| serde_json::json!({"name": name, "value": value});
    let mut meta_props = vec![
        prop("lifeboat:snapshot", &inv.snapshot_id),
        prop("lifeboat:agent", &inv.agent_name),
        prop("lifeboat:source", &inv.source),
    ];
    if !inv.image_id.is_empty() {
        meta_props.push(prop("lifeboat:image-id", &inv.image_id));
    }
    let mut components = Vec::new();
    if !inv.os_id.is_empty() {
        components.push(serde_json::json!({
            "type": "operating-system",
            "bom-ref": format!("os:{}-{}", inv.os_id, inv.os_version),
            "name": inv.os_id,
            "version": inv.os_version,
            "description": inv.os_pretty_name,
        }));
    }
    let mut refs = std::collections::HashSet::new();
    for p in &inv.packages {
        // bom-refs must be unique; a purl is, unless one package sits in two places.
        let mut bom_ref = p.purl.clone();
        let mut n = 1;
        while !refs.insert(bom_ref.clone()) {
            n += 1;
            bom_ref = format!("{}#{n}", p.purl);
        }
        let mut props = vec![
            prop("lifeboat:location", &p.location),
            prop("lifeboat:ecosystem", &p.ecosystem),
        ];
        if !p.layer.is_empty() {
            props.push(prop("lifeboat:layer", &p.layer));
        }
        if !p.source.is_empty() && p.source != p.name {
            props.push(prop("lifeboat:source-package", &p.source));
        }
        components.push(serde_json::json!({
            "type": "library",
            "bom-ref": bom_ref,
            "name": p.name,
            "version": p.version,
            "purl": p.purl,
            "properties": props,
        }));
    }
    serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial_number(&inv.snapshot_id),
        "version": 1,
        "metadata": {
            "timestamp": time(inv.received_ms),
            "tools": {"components": [{
                "type": "application",
                "name": "lifeboat",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": if inv.image_id.is_empty() { "application" } else { "container" },
                "bom-ref": format!("snapshot:{}", inv.snapshot_id),
                "name": format!("{}/{}", inv.agent_name, inv.source),
                "version": inv.snapshot_id,
            },
            "properties": meta_props,
        },
        "components": components,
    })
}

/// The same snapshot always gets the same serial number: a UUID (version 5 layout) made
/// from a hash of the snapshot id.
fn serial_number(snapshot_id: &str) -> String {
    let hex: Vec<char> = blake3::hash(snapshot_id.as_bytes())
        .to_hex()
        .chars()
        .take(32)
        .collect();
    let mut h = hex;
    h[12] = '5';
    h[16] = ['8', '9', 'a', 'b'][h[16].to_digit(16).unwrap_or(0) as usize % 4];
    let s: String = h.into_iter().collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// The reply as the core's inventory, to compare two.
fn as_inventory(inv: &pb::InventoryReply) -> Inventory {
    Inventory {
        os: (!inv.os_id.is_empty()).then(|| Os {
            id: inv.os_id.clone(),
            version_id: inv.os_version.clone(),
            pretty_name: inv.os_pretty_name.clone(),
        }),
        packages: inv
            .packages
            .iter()
            .filter_map(|p| {
                Some(Package {
                    ecosystem: Ecosystem::from_osv(&p.ecosystem)?,
                    name: p.name.clone(),
                    version: p.version.clone(),
                    source: p.source.clone(),
                    arch: p.arch.clone(),
                    location: p.location.clone(),
                    layer: p.layer.clone(),
                })
            })
            .collect(),
        notes: inv.notes.clone(),
    }
}

async fn diff(api: &mut Api, a: String, b: String, json: bool) -> Result<i32> {
    let (ia, ib) = (fetch(api, &a).await?, fetch(api, &b).await?);
    let c = inventory::changes(&as_inventory(&ia), &as_inventory(&ib));
    let pkg = |p: &Package| serde_json::json!({"ecosystem": p.ecosystem.osv(), "name": p.name, "version": p.version, "arch": p.arch, "location": p.location});
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "a": ia.snapshot_id, "b": ib.snapshot_id,
                "installed": c.installed.iter().map(pkg).collect::<Vec<_>>(),
                "removed": c.removed.iter().map(pkg).collect::<Vec<_>>(),
                "changed": c.changed.iter().map(|(x, y)| serde_json::json!({
                    "ecosystem": x.ecosystem.osv(), "name": x.name, "arch": x.arch,
                    "from": x.version, "to": y.version,
                })).collect::<Vec<_>>(),
            }))?
        );
        return Ok(0);
    }
    out!("from {}", describe(&ia));
    out!("to   {}", describe(&ib));
    let mut rows: Vec<Vec<String>> = Vec::new();
    for p in &c.installed {
        rows.push(vec![
            "+".into(),
            p.ecosystem.osv().into(),
            p.name.clone(),
            "-".into(),
            p.version.clone(),
        ]);
    }
    for p in &c.removed {
        rows.push(vec![
            "-".into(),
            p.ecosystem.osv().into(),
            p.name.clone(),
            p.version.clone(),
            "-".into(),
        ]);
    }
    for (x, y) in &c.changed {
        rows.push(vec![
            "M".into(),
            x.ecosystem.osv().into(),
            x.name.clone(),
            x.version.clone(),
            y.version.clone(),
        ]);
    }
    rows.sort_by(|x, y| (&x[1], &x[2]).cmp(&(&y[1], &y[2])));
    if rows.is_empty() {
        out!("no package changed");
    } else {
        out!(
            "{}",
            output::table(&["", "ECOSYSTEM", "NAME", "FROM", "TO"], rows)
        );
        out!(
            "{} installed, {} removed, {} changed",
            c.installed.len(),
            c.removed.len(),
            c.changed.len()
        );
    }
    Ok(0)
}
