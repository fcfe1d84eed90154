//! `lifeboat-controller`: serve the fleet, or rebuild the catalog from the store.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lifeboat-controller",
    version,
    about = "Lifeboat controller: catalog, store and scheduler for a fleet of agents"
)]
struct Cli {
    #[command(flatten)]
    log: lifeboat_proto::logs::LogArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve agents and operators over mTLS gRPC.
    Serve(Box<ServeArgs>),
    /// Rebuild the chunk index and snapshot list from the store alone (controller stopped).
    RebuildCatalog {
        #[arg(long, env = "LIFEBOAT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Bring back a controller whose machine is gone, from its store and the offline
    /// recovery key: keys, CA, policies, agents, quarantine marks, locks, drills, plans
    /// and the audit log from the newest state saved in the store, then everything the
    /// store gained since. The agents reconnect with the certificates they hold.
    Recover(Box<RecoverArgs>),
    #[command(flatten)]
    Docs(lifeboat_proto::docs::DocsCmd),
}

#[derive(clap::Args)]
struct RecoverArgs {
    /// The new, empty data directory.
    #[arg(long, env = "LIFEBOAT_DATA_DIR")]
    data_dir: PathBuf,
    /// The store, as the lost controller's --store gave it (s3://BUCKET/PREFIX or a
    /// directory). S3 credentials come from the AWS environment or credentials file.
    #[arg(long)]
    store: String,
    #[command(flatten)]
    s3: S3Args,
    /// The recovery key's file (AGE-SECRET-KEY-1..., as age-keygen writes it). A line
    /// `# lifeboat controller key: HEX` in it (the recovery kit as the banner shows it)
    /// names the store's controller key.
    #[arg(long)]
    recovery_key: PathBuf,
    /// This store's controller key (64 hex digits; `lifeboat status` and every agent's
    /// state.json name it): only states it signed are trusted. Overrides the recovery key
    /// file's; without either, the one key every signed state in the store names.
    #[arg(long)]
    controller_key: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Data directory: CA, keys, catalog, identity files (created on first start).
    #[arg(long, env = "LIFEBOAT_DATA_DIR")]
    data_dir: PathBuf,
    /// gRPC (TLS) listen address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// HTTPS listen address for /metrics and /healthz.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Where the store lives: a directory (default DATA_DIR/store) or
    /// s3://BUCKET/PREFIX; fixed at first start. S3 credentials come from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the shared credentials file.
    #[arg(long)]
    store: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// The public half (age1..., from `age-keygen` on an offline machine) of the recovery
    /// key that a new store's data key is wrapped to. Without it, one is made on first
    /// start and its secret printed once.
    #[arg(long)]
    recovery_recipient: Option<String>,
    /// Lifetime of agent certificates; agents renew over their session with a third left.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    agent_cert_lifetime: std::time::Duration,
    /// Scheduled jobs queued or running at once, fleet-wide.
    #[arg(long, default_value_t = 32)]
    max_concurrent_jobs: u32,
    /// How often retention runs on its own (0s: only `lifeboat prune`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    prune_every: std::time::Duration,
    /// Read every stored chunk back at least once per this period (0s: only
    /// `lifeboat verify`).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    scrub_period: std::time::Duration,
    /// GC never reclaims chunks uploaded within this window: a backup paused longer is
    /// refused at commit and runs again.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    gc_lease: std::time::Duration,
    /// Bytes one backup job may upload (a policy's `upload_quota` overrides it); a job
    /// past it is refused, and GC reclaims what it uploaded.
    #[arg(long, default_value = "1TiB", value_parser = parse_size)]
    upload_quota: u64,
    /// Memory for restores read through the controller: it serves chunks to this much
    /// divided by 8 MiB restores at once (what one holds in flight), the rest wait their
    /// turn. Restores straight from an S3 store do not count.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    restore_memory: u64,
    /// TLS handshakes started per second at most (0: no limit). Bounds the CPU a
    /// reconnect storm takes after a restart: connections wait their turn, those that
    /// cannot start within 25 s are closed, and their agents come back after their
    /// backoff. `lifeboat` commands have a lane of their own.
    #[arg(long, default_value_t = lifeboat_controller::DEFAULT_MAX_HANDSHAKES_PER_SECOND)]
    max_handshakes_per_second: u32,
    /// Do not scan new snapshots in the background (packages, vulnerabilities, ransomware
    /// signals); `lifeboat sbom` and `vulns` still read a snapshot when asked, and
    /// nothing is judged suspect.
    #[arg(long)]
    no_scan: bool,
    /// With an S3 store, agents restore straight from it through presigned GETs that last
    /// this long (each request for more chunks gets fresh ones).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    store_url_ttl: std::time::Duration,
    /// How often the controller saves its own state (keys, catalog) in the store,
    /// encrypted to the recovery key, for `lifeboat-controller recover` (0s: never).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    state_every: std::time::Duration,
    /// An off-site copy store (s3://BUCKET/PREFIX or a directory): snapshots of sources
    /// whose policy says `copy = "30d"` are copied there, verified, and locked there that
    /// long where it has Object Lock.
    #[arg(long)]
    copy_store: Option<String>,
    /// The copy store's name in listings and `recover plan --from`.
    #[arg(long, default_value = "offsite")]
    copy_name: String,
    #[arg(long)]
    copy_s3_endpoint: Option<String>,
    #[arg(long)]
    copy_s3_region: Option<String>,
    #[arg(long)]
    copy_s3_path_style: bool,
    #[arg(long)]
    copy_s3_ca: Option<PathBuf>,
    /// The profile of the shared credentials file (AWS_SHARED_CREDENTIALS_FILE or
    /// ~/.aws/credentials) whose keys reach the copy store: never the primary's.
    #[arg(long)]
    copy_s3_profile: Option<String>,
    /// How often new snapshots are copied.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    copy_every: std::time::Duration,
    /// Four eyes: deleting a snapshot or a policy, lifting a quarantine, forcing a
    /// quarantined restore point and revoking an admin need a second admin's approval
    /// (`lifeboat approvals`, `lifeboat approve ID`).
    #[arg(long)]
    require_approval: bool,
    /// How long an approval request (and an approval) lasts.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    approval_ttl: std::time::Duration,
    /// Whose chunks an agent's "which of these are missing?" is answered about: `agent`
    /// (what it uploaded or its snapshots use: no agent learns what others hold; the
    /// first backup of data other machines also hold uploads it once more) or `fleet`
    /// (the whole store: less upload, for a fleet that trusts itself).
    #[arg(long, default_value = "agent", value_parser = ["agent", "fleet"])]
    dedup_scope: String,
}

/// How to reach an S3 store (`serve`, `recover`).
#[derive(clap::Args)]
struct S3Args {
    /// The S3 endpoint, for an s3:// store (e.g. https://s3.eu-west-1.amazonaws.com).
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// The S3 region (default us-east-1).
    #[arg(long)]
    s3_region: Option<String>,
    /// Path-style addressing (ENDPOINT/BUCKET/KEY), as most servers other than AWS want.
    #[arg(long)]
    s3_path_style: bool,
    /// PEM roots that verify the S3 endpoint's certificate (default: the system's).
    #[arg(long)]
    s3_ca: Option<PathBuf>,
}

impl From<S3Args> for lifeboat_controller::store::location::S3Options {
    fn from(a: S3Args) -> Self {
        lifeboat_controller::store::location::S3Options {
            endpoint: a.s3_endpoint,
            region: a.s3_region,
            path_style: a.s3_path_style,
            ca_file: a.s3_ca,
        }
    }
}

/// The one time the recovery key's secret is shown.
fn parse_size(s: &str) -> Result<u64, String> {
    lifeboat_core::units::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size like 1TiB or 500GB"))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    lifeboat_proto::logs::init(cli.log.format, "info");
    if let Err(e) = real_main(cli).await {
        eprintln!("lifeboat-controller: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve(args) => {
            let ServeArgs {
                data_dir,
                listen,
                http,
                store,
                s3,
                recovery_recipient,
                agent_cert_lifetime,
                max_concurrent_jobs,
                prune_every,
                scrub_period,
                gc_lease,
                upload_quota,
                restore_memory,
                max_handshakes_per_second,
                no_scan,
                store_url_ttl,
                state_every,
                copy_store,
                copy_name,
                copy_s3_endpoint,
                copy_s3_region,
                copy_s3_path_style,
                copy_s3_ca,
                copy_s3_profile,
                copy_every,
                require_approval,
                approval_ttl,
                dedup_scope,
            } = *args;
            let copy = copy_store.map(|store| lifeboat_controller::CopyConfig {
                name: copy_name,
                store,
                s3: lifeboat_controller::store::location::S3Options {
                    endpoint: copy_s3_endpoint,
                    region: copy_s3_region,
                    path_style: copy_s3_path_style,
                    ca_file: copy_s3_ca,
                },
                s3_profile: copy_s3_profile,
                every: copy_every,
            });
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let http = match http {
                Some(a) => Some(
                    tokio::net::TcpListener::bind(a)
                        .await
                        .with_context(|| format!("cannot listen on {a}"))?,
                ),
                None => None,
            };
            let running = lifeboat_controller::start(
                &lifeboat_controller::ServeConfig {
                    data_dir,
                    store,
                    s3: s3.into(),
                    recovery_recipient,
                    agent_cert_lifetime,
                    max_concurrent_jobs,
                    prune_every: (!prune_every.is_zero()).then_some(prune_every),
                    scrub_period: (!scrub_period.is_zero()).then_some(scrub_period),
                    gc_lease,
                    upload_quota,
                    restore_memory,
                    max_handshakes_per_second,
                    store_url_ttl,
                    state_every: (!state_every.is_zero()).then_some(state_every),
                    copy,
                    require_approval: require_approval.then_some(approval_ttl),
                    fleet_dedup: dedup_scope == "fleet",
                    scan: !no_scan,
                    show_recovery_key: lifeboat_controller::setup::print_recovery_banner,
                },
                listener,
                http,
            )?;
            println!("lifeboat-controller listening on {}", running.url);
            if let Some(a) = running.http_addr {
                println!("metrics: {}/metrics", lifeboat_controller::url_for(a));
            }
            println!("CA fingerprint: {}", running.ca_fingerprint());
            println!("admin identity: {}", running.identity_path.display());
            running.serve(shutdown_signal()).await?;
            Ok(())
        }
        Cmd::Recover(args) => recover(*args).await,
        Cmd::Docs(d) => Ok(d.run(Cli::command(), "lifeboat-controller")?),
        Cmd::RebuildCatalog { data_dir } => {
            let r = tokio::task::spawn_blocking(move || {
                lifeboat_controller::rebuild::rebuild_catalog(&data_dir)
            })
            .await??;
            println!(
                "rebuilt catalog: {} packs, {} chunks, {} snapshots",
                r.packs, r.chunks, r.snapshots
            );
            for s in &r.salvaged {
                println!("salvaged: {s}");
            }
            for s in &r.skipped {
                println!("skipped: {s}");
            }
            if !r.skipped.is_empty() || !r.salvaged.is_empty() {
                anyhow::bail!(
                    "{} store files could not be read whole ({} salvaged, {} left in place); run `lifeboat verify` to see which snapshots are affected",
                    r.skipped.len() + r.salvaged.len(),
                    r.salvaged.len(),
                    r.skipped.len()
                );
            }
            Ok(())
        }
    }
}

async fn recover(args: RecoverArgs) -> anyhow::Result<()> {
    use lifeboat_controller::store::location::{S3Options, StoreLocation};
    let s3: S3Options = args.s3.into();
    let location = StoreLocation::parse(&args.store, &s3)
        .map_err(|e| anyhow::anyhow!("--store {}: {e}", args.store))?;
    let key = std::fs::read_to_string(&args.recovery_key)
        .with_context(|| format!("reading the recovery key {}", args.recovery_key.display()))?;
    let data_dir = args.data_dir.clone();
    let r = tokio::task::spawn_blocking(move || {
        let staging = data_dir.join("staging");
        let objects = lifeboat_controller::store::open_objects(&location, &staging)?;
        lifeboat_controller::state::recover(
            &data_dir,
            objects.as_ref(),
            &args.store,
            &s3,
            &key,
            args.controller_key.as_deref(),
        )
    })
    .await??;
    for why in &r.refused {
        eprintln!("refused: {why}");
    }
    println!(
        "recovered the controller from {} (saved {}): its keys, CA, policies, agents, quarantine marks, locks, drills, plans and audit log",
        r.state,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.saved_ms.max(0) as u64)
        )
    );
    match (r.signer.as_str(), r.pinned) {
        ("", _) => eprintln!(
            "WARNING: this state is not signed (a controller older than 2026-12-06 wrote it): nothing shows it was this store's controller's"
        ),
        (k, true) => println!("signed by this store's controller key {k}"),
        (k, false) => println!(
            "signed by controller key {k}, the only key the store's states name; nothing you hold pinned it: compare it with `lifeboat status` of the lost controller or `controller_key` in an agent's state.json"
        ),
    }
    let stale_ms = r.since.newest_received_ms - r.saved_ms;
    // Three periods: at least two saves missing.
    if r.every_ms > 0 && stale_ms > 3 * r.every_ms {
        eprintln!(
            "WARNING: the store holds snapshots received {} after this state, which was saved every {}: the states saved since are missing (deleted, or the controller could not write them). Enrollments, revocations, policy changes and quarantine marks made after it are not recovered: review `lifeboat agents` and revoke again what must stay revoked",
            humantime::format_duration(std::time::Duration::from_secs((stale_ms / 1000) as u64)),
            humantime::format_duration(std::time::Duration::from_millis(r.every_ms as u64)),
        );
    }
    println!(
        "indexed since then: {} packs ({} chunks), {} snapshots; forgotten (gone from the store since): {}",
        r.since.packs,
        r.since.chunks,
        r.since.snapshots,
        r.since.forgotten.len()
    );
    for s in r.since.salvaged.iter().chain(&r.since.skipped) {
        println!("  {s}");
    }
    println!(
        "next: lifeboat-controller serve --data-dir {} --listen ADDRESS-THE-AGENTS-KNOW; they reconnect with the certificates they hold",
        args.data_dir.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
