//! What a restore point holds and whether to trust it: `lifeboat sbom` (its packages, as a
//! CycloneDX SBOM, a table or JSON) and `sbom diff`; `lifeboat vulns` (known
//! vulnerabilities against an imported OSV feed) and `vulns import`; `lifeboat anomalies`
//! (ransomware signals).

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

/// `lifeboat vulns import FILE...` and `lifeboat vulns (--snapshot | --device | --all)`.
pub async fn vulns(api: &mut Api, cmd: Cmd) -> Result<i32> {
    let Cmd::Vulns {
        cmd,
        snapshot,
        device,
        all,
        severity,
        json,
    } = cmd
    else {
        unreachable!("routed by commands::dispatch")
    };
    if let Some(VulnsCmd::Import { files, json }) = cmd {
        return import(api, &files, json.json).await;
    }
    let list = api
        .list_findings(pb::FindingsRequest {
            snapshot: snapshot.unwrap_or_default(),
            device: device.unwrap_or_default(),
            all,
            min_severity: severity.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if json.json {
        let findings: Vec<_> = list
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "device": f.agent_name, "source": f.source, "snapshot": f.snapshot_id,
                    "received": time(f.received_ms), "advisory": f.advisory, "aliases": f.aliases,
                    "summary": f.summary, "severity": f.severity, "score": f.score,
                    "ecosystem": f.ecosystem, "package": f.package, "installed": f.version,
                    "fixed": f.fixed,
                })
            })
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "findings": findings, "unread": list.unread, "advisories": list.advisories,
            }))?
        );
        return Ok(0);
    }
    if list.advisories == 0 {
        eprintln!(
            "the vulnerability feed is empty: import one with `lifeboat vulns import FILE...`"
        );
    }
    let rows = list
        .findings
        .iter()
        .map(|f| {
            vec![
                f.agent_name.clone(),
                f.source.clone(),
                short(&f.snapshot_id).to_owned(),
                f.severity.clone(),
                if f.aliases.is_empty() {
                    f.advisory.clone()
                } else {
                    format!("{} ({})", f.advisory, f.aliases.join(", "))
                },
                f.package.clone(),
                f.version.clone(),
                if f.fixed.is_empty() {
                    "-".into()
                } else {
                    f.fixed.clone()
                },
            ]
        })
        .collect();
    out!(
        "{}",
        output::table(
            &[
                "DEVICE",
                "SOURCE",
                "SNAPSHOT",
                "SEVERITY",
                "ADVISORY",
                "PACKAGE",
                "INSTALLED",
                "FIXED"
            ],
            rows
        )
    );
    out!(
        "{} findings ({} advisories in the feed)",
        list.findings.len(),
        list.advisories
    );
    for u in &list.unread {
        out!("not read: {u}");
    }
    Ok(0)
}

/// The records in `paths`: JSON files holding one record or an array of them, directories
/// of such files, and zip files of them.
fn records(paths: &[std::path::PathBuf]) -> Result<Vec<Vec<u8>>> {
    fn from_json(bytes: &[u8], origin: &str, out: &mut Vec<Vec<u8>>) -> Result<()> {
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).with_context(|| format!("{origin} is not JSON"))?;
        match doc {
            serde_json::Value::Array(items) => {
                for item in items {
                    out.push(serde_json::to_vec(&item)?);
                }
            }
            serde_json::Value::Object(_) => out.push(bytes.to_vec()),
            _ => anyhow::bail!("{origin} holds neither an OSV record nor an array of them"),
        }
        Ok(())
    }
    let mut out = Vec::new();
    let mut stack: Vec<std::path::PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let shown = path.display().to_string();
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).with_context(|| format!("reading {shown}"))? {
                let p = entry?.path();
                if p.is_dir() || p.extension().is_some_and(|e| e == "json" || e == "zip") {
                    stack.push(p);
                }
            }
        } else if path.extension().is_some_and(|e| e == "zip") {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {shown}"))?;
            let mut zip =
                zip::ZipArchive::new(file).with_context(|| format!("{shown} is not a zip file"))?;
            for i in 0..zip.len() {
                let mut member = zip
                    .by_index(i)
                    .with_context(|| format!("{shown}: member {i}"))?;
                if !member.is_file() || !member.name().ends_with(".json") {
                    continue;
                }
                let origin = format!("{shown}:{}", member.name());
                let mut bytes = Vec::with_capacity(member.size() as usize);
                std::io::Read::read_to_end(&mut member, &mut bytes)
                    .with_context(|| format!("reading {origin}"))?;
                from_json(&bytes, &origin, &mut out)?;
            }
        } else {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {shown}"))?;
            from_json(&bytes, &shown, &mut out)?;
        }
    }
    Ok(out)
}

async fn import(api: &mut Api, paths: &[std::path::PathBuf], json: bool) -> Result<i32> {
    let records = records(paths)?;
    if records.is_empty() {
        anyhow::bail!(
            "no OSV record found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Batches well under the controller's message limit.
    const BATCH_BYTES: usize = 2 << 20;
    let total = records.len();
    let mut reply = pb::ImportAdvisoriesReply::default();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut size = 0;
    let mut sent = 0;
    let mut iter = records.into_iter().peekable();
    while let Some(r) = iter.next() {
        size += r.len();
        batch.push(r);
        if size >= BATCH_BYTES || iter.peek().is_none() {
            sent += batch.len();
            let part = api
                .import_advisories(pb::ImportAdvisoriesRequest {
                    records: std::mem::take(&mut batch),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            reply.new += part.new;
            reply.updated += part.updated;
            reply.unchanged += part.unchanged;
            reply.refused.extend(part.refused);
            reply.advisories = part.advisories;
            size = 0;
            if total > 1000 && !json {
                eprintln!("{sent} of {total} records sent");
            }
        }
    }
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "records": total, "new": reply.new, "updated": reply.updated,
                "unchanged": reply.unchanged, "refused": reply.refused, "advisories": reply.advisories,
            }))?
        );
    } else {
        out!(
            "{total} records: {} new, {} updated, {} unchanged, {} refused; {} advisories in the feed",
            reply.new,
            reply.updated,
            reply.unchanged,
            reply.refused.len(),
            reply.advisories
        );
        for r in &reply.refused {
            out!("refused: {r}");
        }
        if reply.new + reply.updated > 0 {
            out!(
                "every snapshot is matched against the new feed in the background; `lifeboat vulns --all` shows the findings"
            );
        }
    }
    Ok(0)
}

/// `lifeboat anomalies [--all] [--device D]`.
pub async fn anomalies(api: &mut Api, all: bool, device: String, json: bool) -> Result<i32> {
    let list = api
        .list_anomalies(pb::AnomaliesRequest { all, device })
        .await
        .map_err(rpc)?
        .into_inner();
    if json {
        let items: Vec<_> = list
            .anomalies
            .iter()
            .map(|a| {
                serde_json::json!({
                    "snapshot": a.snapshot_id, "device": a.agent_name, "source": a.source,
                    "received": time(a.received_ms), "compared_with": a.parent,
                    "score": a.score, "threshold": a.threshold, "suspect": a.suspect,
                    "quarantined": a.quarantined, "reasons": a.reasons,
                    "figures": serde_json::from_str::<serde_json::Value>(&a.report_json).unwrap_or_default(),
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(0);
    }
    if list.anomalies.is_empty() {
        out!(
            "{}",
            if all {
                "no snapshot analyzed yet"
            } else {
                "no suspect snapshot"
            }
        );
        return Ok(0);
    }
    let rows = list
        .anomalies
        .iter()
        .map(|a| {
            vec![
                short(&a.snapshot_id).to_owned(),
                time(a.received_ms),
                a.agent_name.clone(),
                a.source.clone(),
                format!("{}/{}", a.score, a.threshold),
                match (a.suspect, a.quarantined) {
                    (_, true) => "quarantined".into(),
                    (true, false) => "SUSPECT".into(),
                    (false, false) => "-".into(),
                },
                a.reasons.join("; "),
            ]
        })
        .collect();
    out!(
        "{}",
        output::table(
            &[
                "SNAPSHOT", "TIME", "DEVICE", "SOURCE", "SCORE", "STATE", "REASONS"
            ],
            rows
        )
    );
    Ok(0)
}

/// `lifeboat anomalies dismiss SNAPSHOT --note WHY`.
pub async fn dismiss(api: &mut Api, snapshot: String, note: String, json: bool) -> Result<i32> {
    let a = api
        .dismiss_anomaly(pb::DismissAnomalyRequest {
            snapshot_id: snapshot,
            note,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if json {
        out!(
            "{}",
            serde_json::json!({
                "snapshot": a.snapshot_id, "device": a.agent_name, "source": a.source,
                "suspect": a.suspect, "quarantined": a.quarantined, "reasons": a.reasons,
            })
        );
        return Ok(0);
    }
    out!(
        "snapshot {} of {} ({}) is no longer suspect",
        short(&a.snapshot_id),
        a.agent_name,
        a.source
    );
    if a.quarantined {
        out!(
            "it is still quarantined: lifeboat snapshots quarantine --agent {} --after TIME --clear lifts that",
            a.agent_name
        );
    }
    Ok(0)
}

/// `lifeboat trust add-key | import | list`.
pub async fn trust(api: &mut Api, cmd: TrustCmd) -> Result<i32> {
    match cmd {
        TrustCmd::AddKey { name, key } => {
            let line = std::fs::read_to_string(&key)
                .with_context(|| format!("reading the vendor key {}", key.display()))?;
            let k = api
                .add_vendor_key(pb::VendorKeyRequest { name, key: line })
                .await
                .map_err(rpc)?
                .into_inner();
            if k.added {
                out!("vendor {} added: {}", k.name, k.fingerprint);
            } else {
                out!("vendor {} already has this key: {}", k.name, k.fingerprint);
            }
        }
        TrustCmd::Import {
            list,
            signature,
            json,
        } => {
            let sig_path = signature.unwrap_or_else(|| {
                let mut p = list.clone().into_os_string();
                p.push(".sig");
                p.into()
            });
            let bytes =
                std::fs::read(&list).with_context(|| format!("reading {}", list.display()))?;
            let sig = std::fs::read_to_string(&sig_path).with_context(|| {
                format!(
                    "reading the signature {} (give it with --signature)",
                    sig_path.display()
                )
            })?;
            let r = api
                .import_trusted_digests(pb::TrustedDigestsRequest {
                    list: bytes,
                    signature: sig,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json.json {
                out!(
                    "{}",
                    serde_json::json!({"vendor": r.vendor, "listed": r.listed, "new": r.new})
                );
            } else {
                out!(
                    "signed by {}: {} digests listed, {} new",
                    r.vendor,
                    r.listed,
                    r.new
                );
            }
        }
        TrustCmd::List(json) => {
            let keys = api
                .list_vendor_keys(pb::Empty {})
                .await
                .map_err(rpc)?
                .into_inner()
                .keys;
            if json.json {
                let items: Vec<_> = keys
                    .iter()
                    .map(|k| serde_json::json!({"name": k.name, "fingerprint": k.fingerprint, "key": k.key, "added": time(k.added_unix_ms), "digests": k.digests}))
                    .collect();
                out!("{}", serde_json::Value::Array(items));
            } else {
                let rows = keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.name.clone(),
                            k.fingerprint.clone(),
                            time(k.added_unix_ms),
                            k.digests.to_string(),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    output::table(&["VENDOR", "FINGERPRINT", "ADDED", "DIGESTS"], rows)
                );
            }
        }
    }
    Ok(0)
}
