//! A simulated week of a fleet under two policies, driven through the real scheduler, job
//! table and SQLite catalog with an injected clock: the right jobs start at the right times,
//! with splay, within the concurrency limits; an agent offline for a day gets one catch-up
//! run; an interrupted job is retried after its backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use lifeboat_controller::catalog::AgentRow;
use lifeboat_controller::{Clock, ServeConfig, scheduler};
use lifeboat_proto::pb::{self, JobState};
use tokio::sync::mpsc;

struct SimClock(AtomicI64);

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

const POLICIES: &str = r#"
[[policy]]
name = "web-hourly"
selector = "role=web"
sources = ["data"]
schedule = "0 * * * *"
timezone = "UTC"
splay = "10m"
max_concurrent = 3
keep = { last = 3 }

[[policy]]
name = "db-nightly"
selector = "role=db,site=fra"
sources = ["data*"]
schedule = "0 2 * * *"
timezone = "Europe/Berlin"
keep = { daily = 7 }
tier = 0
"#;

fn agent(id: &str, labels: &[(&str, &str)]) -> AgentRow {
    AgentRow {
        id: id.into(),
        name: id.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        hostname: id.into(),
        signing_key: vec![0; 32],
        cert_serial: String::new(),
        enrolled_ms: 0,
        last_seen_ms: 0,
        sources: vec![
            ("data".into(), "path".into(), "/srv/data".into()),
            ("data-logs".into(), "path".into(), "/srv/logs".into()),
        ],
        restore_roots: Vec::new(),
        version: String::new(),
        revoked_ms: 0,
        prev_serial: String::new(),
        cert_expires_ms: 0,
        docker: None,
    }
}

/// A controller in `dir` whose clock the test sets (it starts at `t0`), with no periodic
/// retention or scrub and room for 5 jobs at once.
async fn start(dir: &std::path::Path, t0: i64) -> (lifeboat_controller::Running, Arc<SimClock>) {
    let clock = Arc::new(SimClock(AtomicI64::new(t0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let running = lifeboat_controller::start_with_clock(
        &ServeConfig {
            data_dir: dir.join("ctl"),
            store: None,
            s3: Default::default(),
            recovery_recipient: None,
            agent_cert_lifetime: std::time::Duration::from_secs(86_400),
            max_concurrent_jobs: 5,
            prune_every: None,
            scrub_period: None,
            gc_lease: std::time::Duration::from_secs(3600),
            upload_quota: lifeboat_controller::DEFAULT_UPLOAD_QUOTA,
            restore_memory: lifeboat_controller::DEFAULT_RESTORE_MEMORY,
            store_url_ttl: lifeboat_controller::DEFAULT_STORE_URL_TTL,
            state_every: Some(lifeboat_controller::DEFAULT_STATE_EVERY),
            copy: None,
            require_approval: None,
            fleet_dedup: false,
            max_handshakes_per_second: lifeboat_controller::DEFAULT_MAX_HANDSHAKES_PER_SECOND,
            scan: true,
            show_recovery_key: |_, _| {},
        },
        listener,
        None,
        clock.clone(),
    )
    .expect("controller");
    (running, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_week() {
    let dir = tempfile::tempdir().expect("dir");
    // Monday 2026-01-05 00:00 UTC (Berlin is UTC+1 in January).
    let t0 = "2026-01-05T00:00:00Z"
        .parse::<jiff::Timestamp>()
        .expect("t0")
        .as_millisecond();
    let (running, clock) = start(dir.path(), t0).await;
    let ctl = running.ctl.clone();

    let web = ["web-1", "web-2", "web-3", "web-4"];
    let db = ["db-1", "db-2"];
    for w in web {
        ctl.catalog
            .insert_agent(&agent(w, &[("role", "web"), ("site", "fra")]))
            .expect("agent");
    }
    for d in db {
        ctl.catalog
            .insert_agent(&agent(d, &[("role", "db"), ("site", "fra")]))
            .expect("agent");
    }
    // Not selected by any policy: never scheduled.
    ctl.catalog
        .insert_agent(&agent("other", &[("role", "db"), ("site", "ber")]))
        .expect("agent");
    for p in lifeboat_controller::policy::parse_file("p.toml", POLICIES).expect("policies") {
        let spec = serde_json::to_string(&p).expect("json");
        ctl.catalog.put_policy(&p.name, &spec, t0).expect("put");
    }

    // Every agent is connected: its session is a channel the simulation reads.
    let mut inboxes: HashMap<String, mpsc::Receiver<Result<pb::ControllerMessage, tonic::Status>>> =
        HashMap::new();
    let mut sessions: HashMap<String, u64> = HashMap::new();
    for a in web.iter().chain(&db).chain(&["other"]) {
        let (tx, rx) = mpsc::channel(64);
        sessions.insert(a.to_string(), ctl.jobs.connect(a, tx));
        inboxes.insert(a.to_string(), rx);
    }

    // (job id, agent, policy, start) and when each finishes: jobs take 20 minutes.
    let mut starts: Vec<(String, String, String, i64)> = Vec::new();
    let mut running_jobs: Vec<(String, String, i64)> = Vec::new();
    let mut max_web_concurrent = 0;
    let mut max_total_concurrent = 0;
    let mut interrupted_job = None;
    let mut reconnect_web1 = 0;
    let end = t0 + 7 * DAY;
    let mut t = t0;
    while t < end {
        clock.0.store(t, Ordering::SeqCst);
        // web-3 is offline on day 3.
        if t == t0 + 2 * DAY {
            ctl.jobs.disconnect("web-3", sessions["web-3"]);
            running_jobs.retain(|(_, a, _)| a != "web-3");
        }
        if t == t0 + 3 * DAY + 30 * MIN {
            let (tx, rx) = mpsc::channel(64);
            sessions.insert("web-3".into(), ctl.jobs.connect("web-3", tx));
            inboxes.insert("web-3".into(), rx);
        }
        // web-1 drops in the middle of its 10:00 job on day 5, and is back a minute later.
        if t >= t0 + 4 * DAY + 10 * HOUR
            && interrupted_job.is_none()
            && let Some(job) = running_jobs
                .iter()
                .find(|(_, a, _)| a == "web-1")
                .map(|(j, _, _)| j.clone())
        {
            ctl.jobs.disconnect("web-1", sessions["web-1"]);
            running_jobs.retain(|(_, a, _)| a != "web-1");
            assert_eq!(
                ctl.catalog.job(&job).expect("job").expect("row").state,
                JobState::Interrupted as i32
            );
            interrupted_job = Some(job);
            reconnect_web1 = t + MIN;
        }
        if t == reconnect_web1 {
            let (tx, rx) = mpsc::channel(64);
            sessions.insert("web-1".into(), ctl.jobs.connect("web-1", tx));
            inboxes.insert("web-1".into(), rx);
        }
        // Jobs that are done report success.
        let (done, still): (Vec<_>, Vec<_>) = running_jobs
            .into_iter()
            .partition(|(_, _, until)| *until <= t);
        running_jobs = still;
        for (job, agent, _) in done {
            // A backup succeeds by committing its snapshot (one source per policy here).
            ctl.jobs
                .committed(&job, &format!("snapshot-of-{job}"))
                .expect("commit");
            ctl.jobs
                .update(
                    &agent,
                    pb::JobUpdate {
                        job_id: job,
                        state: JobState::Succeeded as i32,
                        ..Default::default()
                    },
                )
                .expect("update");
        }
        let report = scheduler::tick(&ctl, t).expect("tick");
        assert!(
            scheduler::tick(&ctl, t).expect("tick").started.is_empty(),
            "a second tick at the same time starts nothing"
        );
        for (policy, agent, job) in report.started {
            starts.push((job.clone(), agent.clone(), policy, t));
        }
        // What reached the agents' sessions is what runs.
        for (agent, rx) in inboxes.iter_mut() {
            while let Ok(Ok(msg)) = rx.try_recv() {
                if let Some(pb::controller_message::Msg::Job(j)) = msg.msg {
                    running_jobs.push((j.job_id, agent.clone(), t + 20 * MIN));
                }
            }
        }
        let web_now = running_jobs
            .iter()
            .filter(|(_, a, _)| a.starts_with("web"))
            .count();
        max_web_concurrent = max_web_concurrent.max(web_now);
        max_total_concurrent = max_total_concurrent.max(running_jobs.len());
        t += MIN;
    }

    // Concurrency: the web policy's limit and the fleet's.
    assert!(
        max_web_concurrent <= 3,
        "web jobs at once: {max_web_concurrent}"
    );
    assert_eq!(
        max_web_concurrent, 3,
        "the limit is reached (4 agents, 20-minute jobs)"
    );
    assert!(max_total_concurrent <= 5);

    let runs = |agent: &str, policy: &str| -> Vec<i64> {
        starts
            .iter()
            .filter(|(_, a, p, _)| a == agent && p == policy)
            .map(|(_, _, _, t)| *t)
            .collect()
    };
    // Hourly: one run per slot after the first hour (slots count from the policy's first sight).
    for w in ["web-2", "web-4"] {
        let r = runs(w, "web-hourly");
        assert_eq!(r.len(), 7 * 24 - 1, "{w}: {} runs", r.len());
        for (i, start) in r.iter().enumerate() {
            let slot = t0 + (i as i64 + 1) * HOUR;
            // Splay (≤10 min) plus waiting for a free slot under the limit.
            assert!(
                *start >= slot && *start < slot + 40 * MIN,
                "{w} run {i} at +{} min",
                (start - slot) / MIN
            );
        }
    }
    // Splay spreads the fleet: the four agents do not all start in the same minute.
    let first: Vec<i64> = web.iter().map(|w| runs(w, "web-hourly")[0]).collect();
    assert!(first.iter().any(|s| *s != first[0]), "{first:?}");
    // web-3, offline from day 3 00:00 to day 4 00:30: the 25 slots 48h..=72h are missed,
    // and run once, as it reconnects.
    let r3 = runs("web-3", "web-hourly");
    let offline = (t0 + 2 * DAY, t0 + 3 * DAY + 30 * MIN);
    assert!(
        r3.iter().all(|s| *s < offline.0 || *s >= offline.1),
        "{r3:?}"
    );
    let catch_up: Vec<_> = r3
        .iter()
        .filter(|s| **s >= offline.1 && **s < t0 + 3 * DAY + HOUR)
        .collect();
    assert_eq!(catch_up, vec![&offline.1], "one run as it reconnects");
    assert_eq!(r3.len(), 7 * 24 - 1 - 25 + 1, "{} runs", r3.len());
    // db: nightly at 02:00 Berlin = 01:00 UTC in January, 7 nights, both data* sources.
    for d in db {
        let r = runs(d, "db-nightly");
        assert_eq!(
            r,
            (0..7).map(|i| t0 + i * DAY + HOUR).collect::<Vec<_>>(),
            "{d}"
        );
    }
    let db_job = starts
        .iter()
        .find(|(_, a, _, _)| a == "db-1")
        .expect("db job");
    let row = ctl.catalog.job(&db_job.0).expect("job").expect("row");
    assert!(row.detail.contains("data,data-logs"), "{}", row.detail);
    assert!(runs("other", "db-nightly").is_empty() && runs("other", "web-hourly").is_empty());

    // The interrupted job was retried (same job, attempt 1) and succeeded; no second job was
    // started for its slot meanwhile.
    let job = interrupted_job.expect("interrupted");
    let row = ctl.catalog.job(&job).expect("job").expect("row");
    assert_eq!(row.state, JobState::Succeeded as i32, "{row:?}");
    assert_eq!(row.attempts, 1);
    assert!(
        row.error.is_empty() || row.error.contains("retry 1"),
        "{}",
        row.error
    );
    let slot = t0 + 4 * DAY + 10 * HOUR;
    assert_eq!(
        runs("web-1", "web-hourly")
            .iter()
            .filter(|s| **s >= slot && **s < slot + HOUR)
            .count(),
        1
    );
}

/// A scheduled backup refused at commit for missing chunks (typed `Refusal::MissingChunks`,
/// whatever its error text says) is queued again after its backoff; one that failed for
/// any other reason waits for its next slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_refused_for_missing_chunks_is_retried_and_no_other_failure_is() {
    let dir = tempfile::tempdir().expect("dir");
    let t0 = "2026-01-05T00:00:00Z"
        .parse::<jiff::Timestamp>()
        .expect("t0")
        .as_millisecond();
    let (running, clock) = start(dir.path(), t0).await;
    let ctl = running.ctl.clone();
    let policy = r#"
[[policy]]
name = "daily"
selector = "role=web"
sources = ["data"]
schedule = "0 3 * * *"
timezone = "UTC"
keep = { last = 3 }
"#;
    ctl.catalog
        .insert_agent(&agent("web-1", &[("role", "web")]))
        .expect("agent");
    for p in lifeboat_controller::policy::parse_file("p.toml", policy).expect("policy") {
        let spec = serde_json::to_string(&p).expect("json");
        ctl.catalog.put_policy(&p.name, &spec, t0).expect("put");
    }
    let (tx, mut rx) = mpsc::channel(64);
    ctl.jobs.connect("web-1", tx);
    let fail = |job: &str, refusal: pb::Refusal| {
        ctl.jobs
            .update(
                "web-1",
                pb::JobUpdate {
                    job_id: job.into(),
                    state: JobState::Failed as i32,
                    error: "the words do not matter".into(),
                    refusal: refusal as i32,
                    ..Default::default()
                },
            )
            .expect("update");
    };
    let mut started = |t: i64| {
        clock.0.store(t, Ordering::SeqCst);
        let report = scheduler::tick(&ctl, t).expect("tick");
        while rx.try_recv().is_ok() {}
        (report.started, report.retried)
    };
    started(t0);
    let (first, _) = started(t0 + 3 * HOUR + MIN);
    assert_eq!(first.len(), 1, "the 03:00 slot starts one backup");
    let job = first[0].2.clone();
    fail(&job, pb::Refusal::MissingChunks);
    let (_, retried) = started(t0 + 5 * HOUR);
    assert_eq!(
        retried,
        vec![job.clone()],
        "a missing-chunks refusal is retried"
    );
    fail(&job, pb::Refusal::Unspecified);
    let (new, retried) = started(t0 + 8 * HOUR);
    assert!(
        new.is_empty() && retried.is_empty(),
        "another failure waits for the next slot: {new:?} {retried:?}"
    );
}
