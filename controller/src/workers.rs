//! Background workers: every periodic task of the controller (audit anchor, heartbeat
//! flush, scheduler, drills, retention and GC, scrub) runs through [`Workers::spawn`]: on a
//! blocking thread, once per period, one run at a time, with a name and a state an operator
//! can see (`lifeboat status`, `/metrics`): when it last ran and for how long, how many runs
//! and failures, and the last error with its time. A failed run is logged and recorded; the
//! worker goes on at its next period.
//!
//! A task that lives until its work is done (a recovery plan's runner, `recovery::runner`)
//! runs through [`Workers::spawn_until_done`]: the same steps, the same state, carrying its
//! own state from step to step; it leaves the table when it is done, and stays there with
//! its error when it stopped on one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_proto::pb;

use crate::Controller;
use crate::error::ApiError;

/// What a worker has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerState {
    pub every: Duration,
    pub runs: u64,
    pub failures: u64,
    /// When the last run ended (0: never ran).
    pub last_run_ms: i64,
    pub last_duration_ms: u64,
    /// The last failure, and when it ended ("" and 0: never failed).
    pub last_error: String,
    pub last_error_ms: i64,
}

/// The controller's workers and their states, by name.
#[derive(Default)]
pub struct Workers {
    states: Mutex<BTreeMap<String, WorkerState>>,
}

/// When to run first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At once, then every period.
    Now,
    /// After one period.
    AfterOnePeriod,
}

impl Workers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkerState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every worker's state, by name.
    pub fn states(&self) -> Vec<(String, WorkerState)> {
        self.lock()
            .iter()
            .map(|(name, s)| (name.clone(), s.clone()))
            .collect()
    }

    /// Runs `work` every `every` until the returned task is aborted. `work` runs on a
    /// blocking thread and logs what it did; its error is logged and recorded here.
    pub fn spawn(
        ctl: Arc<Controller>,
        name: &'static str,
        every: Duration,
        start: Start,
        work: impl Fn(&Arc<Controller>) -> Result<(), ApiError> + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        ctl.workers.register(name, every);
        let work = Arc::new(work);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if start == Start::AfterOnePeriod {
                tick.tick().await;
            }
            loop {
                tick.tick().await;
                let (c, w) = (ctl.clone(), work.clone());
                let began = Instant::now();
                let outcome = match tokio::task::spawn_blocking(move || w(&c)).await {
                    Ok(res) => res,
                    Err(e) => Err(ApiError::internal(format!(
                        "the {name} worker panicked: {e}"
                    ))),
                };
                ctl.workers
                    .record(&ctl, name, began, outcome.as_ref().err());
            }
        })
    }

    /// Runs `step` every `every` on a blocking thread, handing it `state` each time, until
    /// it returns `Ok(true)` (done: the worker leaves the table) or an error (the worker
    /// stays in the table with it). The task's result is the step's error, if any.
    pub fn spawn_until_done<S: Send + 'static>(
        ctl: Arc<Controller>,
        name: String,
        every: Duration,
        mut state: S,
        step: fn(&Arc<Controller>, &mut S) -> Result<bool, ApiError>,
    ) -> tokio::task::JoinHandle<Result<(), ApiError>> {
        ctl.workers.register(&name, every);
        tokio::spawn(async move {
            loop {
                let c = ctl.clone();
                let began = Instant::now();
                let (back, outcome) = tokio::task::spawn_blocking(move || {
                    let outcome = step(&c, &mut state);
                    (state, outcome)
                })
                .await
                .map_err(|e| ApiError::internal(format!("the {name} worker panicked: {e}")))?;
                state = back;
                ctl.workers
                    .record(&ctl, &name, began, outcome.as_ref().err());
                match outcome {
                    Ok(true) => {
                        ctl.workers.lock().remove(&name);
                        return Ok(());
                    }
                    Ok(false) => tokio::time::sleep(every).await,
                    Err(e) => return Err(e),
                }
            }
        })
    }

    fn register(&self, name: &str, every: Duration) {
        self.lock().insert(
            name.to_string(),
            WorkerState {
                every,
                ..Default::default()
            },
        );
    }

    /// Records one run of worker `name` that began at `began`.
    fn record(&self, ctl: &Controller, name: &str, began: Instant, error: Option<&ApiError>) {
        let now = ctl.clock.now_ms();
        let mut states = self.lock();
        let s = states.entry(name.to_string()).or_default();
        s.runs += 1;
        s.last_run_ms = now;
        s.last_duration_ms = began.elapsed().as_millis() as u64;
        if let Some(e) = error {
            tracing::error!(worker = name, error = %e, "background worker failed");
            s.failures += 1;
            s.last_error = e.to_string();
            s.last_error_ms = now;
        }
    }
}

/// The states as the API sends them.
pub fn to_pb(states: &[(String, WorkerState)]) -> Vec<pb::WorkerStatus> {
    states
        .iter()
        .map(|(name, s)| pb::WorkerStatus {
            name: name.clone(),
            every_seconds: s.every.as_secs(),
            every_ms: s.every.as_millis() as u64,
            runs: s.runs,
            failures: s.failures,
            last_run_unix_ms: s.last_run_ms,
            last_duration_ms: s.last_duration_ms,
            last_error: s.last_error.clone(),
            last_error_unix_ms: s.last_error_ms,
        })
        .collect()
}
