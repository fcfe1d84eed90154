//! Background workers: every periodic task of the controller (audit anchor, heartbeat
//! flush, scheduler, drills, retention and GC, scrub) runs through [`Workers::spawn`]: on a
//! blocking thread, once per period, one run at a time, with a name and a state an operator
//! can see (`lifeboat status`, `/metrics`): when it last ran and for how long, how many runs
//! and failures, and the last error with its time. A failed run is logged and recorded; the
//! worker goes on at its next period.
//!
//! Recovery plan runners are not periodic (one per running plan) and keep their own loop
//! (`recovery::plan`).

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
    states: Mutex<BTreeMap<&'static str, WorkerState>>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, WorkerState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every worker's state, by name.
    pub fn states(&self) -> Vec<(String, WorkerState)> {
        self.lock()
            .iter()
            .map(|(name, s)| (name.to_string(), s.clone()))
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
        ctl.workers.lock().insert(
            name,
            WorkerState {
                every,
                ..Default::default()
            },
        );
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
                let now = ctl.clock.now_ms();
                let mut states = ctl.workers.lock();
                let s = states.entry(name).or_default();
                s.runs += 1;
                s.last_run_ms = now;
                s.last_duration_ms = began.elapsed().as_millis() as u64;
                if let Err(e) = outcome {
                    tracing::error!(worker = name, error = %e, "background worker failed");
                    s.failures += 1;
                    s.last_error = e.to_string();
                    s.last_error_ms = now;
                }
            }
        })
    }
}

/// The states as the API sends them.
pub fn to_pb(states: &[(String, WorkerState)]) -> Vec<pb::WorkerStatus> {
    states
        .iter()
        .map(|(name, s)| pb::WorkerStatus {
            name: name.clone(),
            every_seconds: s.every.as_secs(),
            runs: s.runs,
            failures: s.failures,
            last_run_unix_ms: s.last_run_ms,
            last_duration_ms: s.last_duration_ms,
            last_error: s.last_error.clone(),
            last_error_unix_ms: s.last_error_ms,
        })
        .collect()
}
