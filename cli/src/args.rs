//! The command line's definitions (clap): every command, flag and default. Operators'
//! scripts depend on these names; add freely, rename never.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Back up and restore a fleet of machines"
)]
pub struct Cli {
    /// Controller URL, https://HOST:PORT (default: the one in the identity file).
    #[arg(long, global = true, env = "LIFEBOAT_CONTROLLER")]
    pub controller: Option<String>,
    /// Operator identity file (default: the one `lifeboat up` made in the per-user data directory).
    #[arg(long, global = true, env = "LIFEBOAT_IDENTITY")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub log: lifeboat_proto::logs::LogArgs,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone, Copy)]
pub struct Json {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum VulnsCmd {
    /// Import OSV advisories (for air-gapped updates): JSON files (one record or an array),
    /// directories of them, or the zip files osv.dev exports per ecosystem. Advisories of
    /// Debian, Alpine, PyPI, npm and crates.io are kept; a newer `modified` replaces a
    /// stored advisory. Every snapshot is matched against the new feed in the background.
    Import {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum TrustCmd {
    /// Import a vendor's public key (admin): an `ssh-ed25519 AAAA...` line, as in a .pub file.
    AddKey {
        /// What the vendor is called in listings and the audit log.
        name: String,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Import a list of image digests (one `sha256:...` per line) a vendor signed (admin);
    /// the signature is checked against every imported vendor key.
    Import {
        list: PathBuf,
        /// The detached signature (default: LIST.sig, as ssh-keygen -Y sign writes it).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        #[command(flatten)]
        json: Json,
    },
    /// Vendor keys, their fingerprints, and how many image digests each vouches for.
    List(Json),
}

#[derive(Subcommand)]
pub enum SbomCmd {
    /// What was installed, removed or upgraded from snapshot A to snapshot B (the patch
    /// history between two restore points).
    Diff {
        a: String,
        b: String,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Start a controller and a local agent on this machine (the embedded default).
    Up {
        /// Data directory (default: the per-user data directory).
        #[arg(long, env = "LIFEBOAT_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: std::net::SocketAddr,
        /// A directory to back up, NAME=PATH (repeatable).
        #[arg(long = "source", value_name = "NAME=PATH")]
        sources: Vec<String>,
        /// Where restores may write (default: DATA_DIR/restores).
        #[arg(long = "restore-root", value_name = "PATH")]
        restore_roots: Vec<PathBuf>,
    },
    /// Controller status.
    Status(Json),
    /// Join tokens for new machines.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// List enrolled agents, show what one can back up, or revoke one.
    Agents {
        #[command(subcommand)]
        cmd: Option<AgentsCmd>,
        /// Show this agent's inventory: host paths, Docker images, volumes, containers.
        #[arg(long, value_name = "AGENT")]
        inventory: Option<String>,
        #[command(flatten)]
        json: Json,
    },
    /// List snapshots, or delete one (admin).
    Snapshots {
        #[command(subcommand)]
        cmd: Option<SnapshotsCmd>,
        /// Only this agent's (name or id).
        #[arg(long)]
        agent: Option<String>,
        /// Only this source's.
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        json: Json,
    },
    /// List jobs, or watch one.
    Jobs {
        #[command(subcommand)]
        cmd: Option<JobsCmd>,
        /// How many of the newest jobs to list.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        json: Json,
    },
    /// Back up an agent's sources now.
    Backup {
        agent: String,
        /// A host path name, image:REF (a tag or an image id) or volume:NAME (repeatable;
        /// default: all of the agent's host paths).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Every image in the agent's Docker Engine.
        #[arg(long)]
        all_images: bool,
        /// Every Docker volume on the agent.
        #[arg(long)]
        all_volumes: bool,
        /// Volumes: pause (the containers using it, for the read), hook (run
        /// --hook-before/--hook-after in --hook-container) or none (read as is).
        /// Default: pause when a running container uses the volume.
        #[arg(long, value_parser = ["pause", "hook", "none"])]
        consistency: Option<String>,
        /// The container the hook commands run in.
        #[arg(long)]
        hook_container: Option<String>,
        /// Command run before the read, e.g. "pg_dump -f /data/dump.sql" (split on spaces;
        /// use sh -c '...' for more).
        #[arg(long)]
        hook_before: Option<String>,
        /// Command run after the read.
        #[arg(long)]
        hook_after: Option<String>,
        /// How long each hook command may run.
        #[arg(long, default_value = "60s")]
        hook_timeout: humantime::Duration,
        /// Re-read every file instead of skipping unchanged ones.
        #[arg(long)]
        full: bool,
        /// Wait for the job to finish; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Backup policies: what is backed up where, when, and how long it is kept.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Apply every policy's retention now (also runs on the controller's schedule).
    Prune {
        /// Show what would be removed, and why the rest is kept; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Per device and source: the last backup, its age against the policy (RPO), overdue ones.
    Devices(Json),
    /// Reclaim chunks no snapshot references and compact packs (admin; also runs after
    /// the scheduled retention). Safe beside running backups.
    Gc {
        /// Count what would be reclaimed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite packs with less than this fraction of their bytes still referenced
        /// (default 0.5; 1 rewrites every pack holding anything unreferenced, reclaiming
        /// all of it at the cost of rewriting the rest).
        #[arg(long, value_name = "FRACTION", value_parser = fraction)]
        compact_below: Option<f64>,
        #[command(flatten)]
        json: Json,
    },
    /// What changed between two snapshots: files added, removed and changed (with sizes,
    /// modes, owners), and for images the layers.
    Diff {
        a: String,
        b: String,
        #[command(flatten)]
        json: Json,
    },
    /// The packages a snapshot holds (OS packages, Python, npm, Rust; an image's layer by
    /// layer), read from the snapshot in the store: a CycloneDX 1.5 SBOM (JSON), or a table
    /// or the listing's JSON. `lifeboat sbom diff A B`: what changed between two snapshots.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Sbom {
        #[command(subcommand)]
        cmd: Option<SbomCmd>,
        /// Snapshot id or unique prefix.
        #[arg(required = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        snapshot: Option<String>,
        /// Write the SBOM to this file instead of standard output.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["table", "json"])]
        out: Option<PathBuf>,
        /// A table of the packages instead of the SBOM.
        #[arg(long, conflicts_with = "json")]
        table: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Known vulnerabilities of restore points, matched against an offline OSV feed: of one
    /// snapshot, or of each source's newest snapshot of a device or of every device.
    /// `lifeboat vulns import FILE...` imports the feed.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["snapshot", "device", "all"])))]
    Vulns {
        #[command(subcommand)]
        cmd: Option<VulnsCmd>,
        /// One snapshot (id or unique prefix).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        snapshot: Option<String>,
        /// Each source's newest snapshot of this device.
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        device: Option<String>,
        /// Each source's newest snapshot of every device.
        #[arg(long)]
        all: bool,
        /// Only findings at or above this severity.
        #[arg(long, value_name = "S", value_parser = ["low", "medium", "high", "critical"])]
        severity: Option<String>,
        #[command(flatten)]
        json: Json,
    },
    /// Ransomware signals: snapshots whose changes against the snapshot before them look
    /// like encryption in place (files rewritten, content that stopped compressing, new
    /// extensions, ransom notes), with their score and reasons; suspect ones by default.
    Anomalies {
        #[command(subcommand)]
        cmd: Option<AnomaliesCmd>,
        /// Every analyzed snapshot, with its score, not only the suspect ones.
        #[arg(long)]
        all: bool,
        /// Only this device's snapshots.
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        device: Option<String>,
        #[command(flatten)]
        json: Json,
    },
    /// Trusted images: vendors' ssh-ed25519 keys and the lists of image digests they sign
    /// (`ssh-keygen -Y sign -n lifeboat-images -f KEY LIST`). A policy with
    /// `require_trusted_images = true` restores only images on such a list.
    Trust {
        #[command(subcommand)]
        cmd: TrustCmd,
    },
    /// Read stored chunks back and recompute their ids (scrub). Exits 2 when any is bad.
    Verify {
        /// Only about this percentage of the packs (1 to 100), chosen at random.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
        sample: Option<u32>,
        /// Only the chunks of this snapshot (id or unique prefix).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        snapshot: Option<String>,
        #[command(flatten)]
        json: Json,
    },
    /// Operator identities and their roles (viewer, operator, admin).
    Identity {
        #[command(subcommand)]
        cmd: IdentityCmd,
    },
    /// The fleet CA, and its rotation: a new CA, every agent and operator moved to it, the
    /// old one's key deleted (after the controller's secrets may have been copied).
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Requests for destructive actions waiting for a second admin (`--require-approval`).
    Approvals(Json),
    /// Approve another admin's request: they may then run their command once.
    Approve {
        id: String,
        #[command(flatten)]
        json: Json,
    },
    /// Reject another admin's request.
    Reject {
        id: String,
        #[command(flatten)]
        json: Json,
    },
    /// The hash-chained audit log: list it, verify it, export it.
    Audit {
        #[command(subcommand)]
        cmd: Option<AuditCmd>,
        /// Only entries from this time on: RFC 3339 (2026-11-29T08:00:00Z) or an age (24h).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        filter: AuditFilter,
        #[command(flatten)]
        json: Json,
    },
    /// Restore a snapshot onto an agent (the same machine or another one).
    Restore {
        /// Snapshot id or unique prefix.
        snapshot: String,
        /// The agent that writes the files.
        #[arg(long)]
        agent: String,
        /// Host path snapshots: absolute target directory on that agent, inside one of its
        /// restore roots. (Images go back into the agent's Docker Engine, volumes into
        /// their volume.)
        #[arg(long)]
        to: Option<String>,
        /// Volume snapshots: restore into this volume instead of the one it came from.
        #[arg(long)]
        volume: Option<String>,
        /// Volume snapshots: stop the running containers that use the volume for the swap,
        /// and start them again after.
        #[arg(long)]
        stop_containers: bool,
        /// replace: write every file. repair: hash what is on disk against the snapshot and
        /// rewrite only the files that differ (the target is the same machine, its disk
        /// intact); the report lists every modified, planted and missing file.
        #[arg(long, value_parser = ["replace", "repair"], default_value = "replace")]
        mode: String,
        /// Remove files the snapshot does not have, so the target ends exactly as the
        /// snapshot (without it, they are left and reported as planted).
        #[arg(long)]
        delete_extra: bool,
        /// Restore a quarantined snapshot, or an image no vendor vouches for where its
        /// policy requires trusted images, anyway (admin; recorded in the audit log).
        #[arg(long)]
        force: bool,
        /// Onto another machine than the snapshot's: create its device nodes and keep
        /// setuid/setgid bits and file capabilities (without it they are skipped and
        /// listed; recorded in the audit log).
        #[arg(long)]
        keep_privileges: bool,
        /// Write the restore's report (modified, planted, missing files; phase times) to
        /// this file as JSON. Implies --wait.
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Restore drills: restore into a sandbox, verify, probe, time, clean up.
    Drill {
        #[command(subcommand)]
        cmd: DrillCmd,
    },
    /// Drill results, newest first (a failed drill makes this exit 2, one that passed
    /// but took longer than its device's RTO exit 3).
    Drills {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        json: Json,
    },
    /// Recovery plans: restore many devices from their last known good snapshots.
    Recover {
        #[command(subcommand)]
        cmd: RecoverCmd,
    },
    /// Serve the web console on this machine: the fleet, devices, recovery plans, drills
    /// and the audit log, read from the controller with this identity over mTLS (nothing
    /// new listens on the controller). Prints its URL and opens it on a desktop.
    Dashboard {
        /// Where to serve: a loopback address, 127.0.0.1:PORT (port 0: any free one).
        #[arg(long, default_value = "127.0.0.1:8743", value_parser = loopback)]
        listen: std::net::SocketAddr,
        /// Print the URL only; do not start a browser.
        #[arg(long)]
        no_open: bool,
    },
    #[command(flatten)]
    Docs(lifeboat_proto::docs::DocsCmd),
}

#[derive(Subcommand)]
pub enum DrillCmd {
    /// Drill the chosen devices now, one after another; waits and prints the results,
    /// exits 2 if any drill failed, 3 if all passed but one took longer than its
    /// device's RTO (the policies' `rto`).
    Run {
        /// A device to drill (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Devices whose labels match KEY=VALUE[,KEY=VALUE].
        #[arg(long)]
        selector: Option<String>,
        /// Only this many devices (the least recently drilled).
        #[arg(long)]
        sample: Option<u32>,
        /// A shell command run in the restored directory on the agent (LIFEBOAT_RESTORED
        /// names it; for images, a temporary tag to run a container from). The agent must
        /// run with --allow-probes.
        #[arg(long)]
        probe: Option<String>,
        #[arg(long, default_value = "5m")]
        probe_timeout: humantime::Duration,
        /// Start the drills and return.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum RecoverCmd {
    /// Plan a recovery: the last known good restore point of every source of every chosen
    /// device, restored in tier order under the limits. Prints the plan; runs nothing.
    Plan {
        /// A device (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        #[arg(long)]
        selector: Option<String>,
        /// The compromise time: RFC 3339 (2026-11-29T08:00:00Z) or an age (6h).
        #[arg(long)]
        before: String,
        /// Devices restored at once.
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        /// The controller's egress for the plan, e.g. 200MiB/s or 1Gbit/s (default:
        /// unlimited).
        #[arg(long)]
        bandwidth: Option<String>,
        /// A file of `DEVICE = REPLACEMENT-AGENT` lines: restore those devices onto
        /// another agent.
        #[arg(long)]
        target_map: Option<PathBuf>,
        /// replace (write everything) or repair (rewrite only what differs on disk).
        #[arg(long, value_parser = ["replace", "repair"], default_value = "replace")]
        mode: String,
        /// Consider quarantined snapshots too (admin; recorded in the audit log).
        #[arg(long)]
        force: bool,
        /// Only restore points with a complete copy in this copy store (`--copy-name`):
        /// the plan holds when the primary store is gone.
        #[arg(long = "from")]
        from_store: Option<String>,
        /// Pass over restore points that carry these advisories (CVE ids or the feed's
        /// own ids; repeat or separate with commas), as `lifeboat vulns` lists them.
        #[arg(long, value_name = "CVE-ID", num_args = 1.., value_delimiter = ',')]
        without: Vec<String>,
        /// Pass over restore points with a finding above this severity.
        #[arg(long, value_name = "S", value_parser = ["low", "medium", "high"])]
        max_severity: Option<String>,
        #[command(flatten)]
        json: Json,
    },
    /// Run a plan. With --wait, return when it ends, print the report, and exit 2 if any
    /// device failed.
    Run {
        plan: String,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Follow a running plan: per-device progress and the fleet's ETA.
    Watch { plan: String },
    /// Show a plan (its estimate, and once run, what happened).
    Show {
        plan: String,
        #[command(flatten)]
        json: Json,
    },
    /// List plans.
    List(Json),
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a single-use join token and print the enroll command for the new machine.
    Create {
        /// Label the agent gets, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// How long the token stays valid (e.g. 30m, 1h, 2d).
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// How many machines may enroll with it (a fleet rolled out by one compose file or
        /// image); single-use by default.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Re-enroll this existing device (a rebuilt machine) under its name, keeping its
        /// snapshots, drills and history; its old certificate stops working.
        #[arg(long)]
        device: Option<String>,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum AgentsCmd {
    /// Revoke an agent (admin): its session closes now and its certificate is refused
    /// from then on; its snapshots stay restorable.
    Revoke { agent: String },
}

#[derive(Subcommand)]
pub enum SnapshotsCmd {
    /// Delete a snapshot (admin). Its chunks are reclaimed by garbage collection. A locked
    /// snapshot cannot be deleted before its lock ends.
    Delete { snapshot: String },
    /// Extend a snapshot's lock: nobody may delete it before DATE. A lock is fixed from
    /// the snapshot's policy when it is committed and can be extended, never shortened.
    Lock {
        snapshot: String,
        /// RFC 3339 (2027-06-01T00:00:00Z), a date (2027-06-01, midnight UTC), or a
        /// duration from now (90d).
        #[arg(long)]
        until: String,
    },
    /// Pin a snapshot: retention never removes it (admin).
    Protect { snapshot: String },
    /// Unpin a snapshot (admin).
    Unprotect { snapshot: String },
    /// Mark every snapshot received after the compromise time as suspect: restores and
    /// plans skip them unless an admin forces it.
    Quarantine {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        selector: Option<String>,
        /// RFC 3339 (2026-11-29T08:00:00Z) or an age (6h).
        #[arg(long)]
        after: String,
        /// Lift the quarantine of the snapshots after that time instead (admin).
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Create or update the policies in a TOML file (idempotent).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: Json,
    },
    /// List policies.
    List(Json),
    /// Show one policy.
    Show {
        name: String,
        #[command(flatten)]
        json: Json,
    },
    /// Delete a policy (its snapshots stay; retention no longer applies to them).
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum IdentityCmd {
    /// Create an operator identity file (admin). The key is made here and never sent.
    Create {
        name: String,
        /// viewer (read only), operator (backups, restores), or admin (everything).
        #[arg(long)]
        role: String,
        /// Where to write the identity file (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// How long the identity stays valid.
        #[arg(long, default_value = "90d")]
        valid_for: humantime::Duration,
    },
    /// List operator identities.
    List(Json),
    /// Renew your own identity (the file given with --identity, rewritten in place) for a
    /// new key, from the CA that signs now: same name, role and expiry. The previous file
    /// is refused from then on. During a CA rotation, every operator runs this.
    Renew,
    /// Revoke an operator identity (admin); it is refused from then on.
    Revoke { name: String },
    /// Write the identity given with --identity as PEM files for other tools (Prometheus
    /// scraping /metrics): DIR/ca.crt, DIR/client.crt and DIR/client.key (mode 0600).
    /// Works offline.
    Pem {
        /// A directory (created if missing; existing files are not overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// The CA in force (what enrolling machines pin) and, during a rotation, who has not
    /// moved to the new CA yet.
    Status(Json),
    /// Start a rotation (admin): a new CA signs every certificate from now on; connected
    /// agents renew at once, the others when they reconnect. Your own identity file is
    /// renewed under the new CA.
    Rotate(Json),
    /// Finish the rotation (admin): the new CA becomes the only one, the old one's key is
    /// deleted and its certificates are refused. Refused while anyone has not moved.
    Finish {
        /// Finish anyway: agents that have not moved lose their certificates (enroll them
        /// again with `lifeboat token create --device NAME`), operators their identities.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        json: Json,
    },
}

/// Which audit entries to show (all of those given must match).
#[derive(Args, Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only entries of this actor (`agent:web-1`, `operator:alice`, `controller`).
    #[arg(long, global = true)]
    pub actor: Option<String>,
    /// Only entries of this action (`snapshot.commit`, `authz.denied`, `restore.start`...).
    #[arg(long, global = true)]
    pub action: Option<String>,
    /// Only entries with this outcome (`ok` or `denied`).
    #[arg(long, global = true)]
    pub outcome: Option<String>,
}

impl AuditFilter {
    pub fn keeps(&self, e: &lifeboat_proto::pb::AuditEntry) -> bool {
        let wanted = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
        wanted(&self.actor, &e.actor)
            && wanted(&self.action, &e.action)
            && wanted(&self.outcome, &e.outcome)
    }
}

#[derive(Subcommand)]
pub enum AnomaliesCmd {
    /// Clear a suspect snapshot's suspicion after review (admin; audited with the note):
    /// recovery plans may pick it and retention counts it again. A quarantine stays until
    /// lifted (`lifeboat snapshots quarantine --clear`).
    Dismiss {
        /// Snapshot id or unique prefix.
        snapshot: String,
        /// Why it is not suspect (required; kept in the audit log).
        #[arg(long)]
        note: String,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the whole chain and the store's anchor; names the first broken entry.
    Verify(Json),
    /// Write the log as JSON Lines (for a SIEM).
    Export {
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum JobsCmd {
    /// Follow a job with a live progress bar until it ends.
    Watch { id: String },
    /// Show one job.
    Show {
        id: String,
        #[command(flatten)]
        json: Json,
    },
}

/// A fraction above 0 and at most 1.
fn fraction(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!(
            "{s:?} is not a fraction above 0 and at most 1 (such as 0.5)"
        )),
    }
}

/// The per-user data directory `lifeboat up` uses by default.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("lifeboat");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/lifeboat"),
        None => PathBuf::from("/var/lib/lifeboat"),
    }
}

/// A point in time to come, given as RFC 3339, a date (midnight UTC) or a duration from
/// now (`90d`), in Unix milliseconds.
pub fn until_arg(flag: &str, s: &str) -> Result<i64> {
    let t = match humantime::parse_rfc3339_weak(s)
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{s}T00:00:00Z")))
    {
        Ok(t) => t,
        Err(_) => {
            let ahead = humantime::parse_duration(s).with_context(|| {
                format!(
                    "{flag} {s:?}: expected a time (2027-06-01T00:00:00Z), a date (2027-06-01) or a duration from now (90d)"
                )
            })?;
            std::time::SystemTime::now() + ahead
        }
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// A point in time given as RFC 3339 or as an age (`6h` ago), in Unix milliseconds.
pub fn time_arg(flag: &str, s: &str) -> Result<i64> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).with_context(|| {
                format!("{flag} {s:?}: expected a time (2026-11-29T08:00:00Z) or an age (6h)")
            })?;
            std::time::SystemTime::now() - age
        }
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// `--listen` of the dashboard: a loopback address only (it serves plain HTTP).
fn loopback(s: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = s
        .parse()
        .map_err(|e| format!("{e}: expected 127.0.0.1:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the dashboard serves on 127.0.0.1:PORT only \
             (reach it from another machine through an SSH tunnel)"
        ));
    }
    Ok(addr)
}

/// Parses `--since`: an RFC 3339 time or an age such as `24h`.
pub fn since_ms(since: Option<&str>) -> Result<i64> {
    let Some(s) = since else { return Ok(0) };
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).with_context(|| {
                format!("--since {s:?}: expected a time (2026-11-29T08:00:00Z) or an age (24h)")
            })?;
            std::time::SystemTime::now() - age
        }
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}
