//! How many restores the controller serves chunks to at once (`--restore-memory`).
//!
//! Measured (BENCHMARKS.md, "Controller scale"): each restore being served holds a few
//! MiB in the controller: on each of its streams a chunk being read, a message queued, the
//! same bytes encoded and in the HTTP/2 send buffer, and chunks average 1 MiB. A thousand
//! restores at once held 3.7 GiB. Beyond what the store, the cores and the network
//! deliver, more restores at once add memory, not speed; so the controller serves a bounded
//! number of restore *jobs*, first come first served, and the rest wait before anything is
//! read for them (holding nothing).
//!
//! The unit is the job, not the stream: an agent reads its streams in order and opens the
//! next before the current one ends, so admitting streams one by one could let every
//! slot go to streams whose agents wait on another stream that cannot get one. A job keeps
//! its slot while it has a GetChunks stream open, and a moment after (the agent opens its
//! next request as it reads the last); a job whose agent went away frees its slot with its
//! streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

/// What one restore being served holds, for turning `--restore-memory` into restores.
pub const BYTES_PER_RESTORE: u64 = 8 << 20;
/// A job keeps its slot this long after its last stream closed.
const LINGER: Duration = Duration::from_millis(100);

pub struct Admission {
    slots: Arc<Semaphore>,
    limit: usize,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Milliseconds each job waited for its turn, until its outcome is recorded: the
    /// downtime model counts a restore's own time, not its place in the queue.
    waited_ms: Mutex<HashMap<String, u64>>,
}

#[derive(Default)]
struct Job {
    slot: OnceCell<OwnedSemaphorePermit>,
    streams: std::sync::atomic::AtomicUsize,
}

/// An open GetChunks stream of an admitted job.
pub struct Admitted {
    admission: Arc<Admission>,
    job_id: String,
    job: Arc<Job>,
}

impl Admission {
    pub fn new(memory_bytes: u64) -> Arc<Admission> {
        let limit =
            (memory_bytes / BYTES_PER_RESTORE).clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            jobs: Mutex::new(HashMap::new()),
            waited_ms: Mutex::new(HashMap::new()),
        })
    }

    /// Restores served at once at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Restores being served now.
    pub fn serving(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// Restores waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.jobs
            .lock()
            .map(|jobs| jobs.values().filter(|j| j.slot.get().is_none()).count())
            .unwrap_or(0)
    }

    /// Waits until `job_id` is being served (at once when one of its streams already is).
    pub async fn enter(self: &Arc<Admission>, job_id: &str) -> Admitted {
        let job = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let job = jobs.entry(job_id.to_string()).or_default().clone();
            job.streams
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            job
        };
        // Concurrent streams of one job wait for the same slot; the semaphore is fair, so
        // jobs are served in the order they asked.
        let slots = self.slots.clone();
        let asked = std::time::Instant::now();
        let _ = job
            .slot
            .get_or_try_init(|| async move { slots.acquire_owned().await })
            .await;
        let waited = asked.elapsed().as_millis() as u64;
        if waited > 0 {
            let mut w = self.waited_ms.lock().unwrap_or_else(|p| p.into_inner());
            *w.entry(job_id.to_string()).or_default() += waited;
        }
        Admitted {
            admission: self.clone(),
            job_id: job_id.to_string(),
            job,
        }
    }

    /// How long `job_id` waited for its turn in all (forgotten once asked: a job's outcome
    /// is recorded once).
    pub fn take_waited_ms(&self, job_id: &str) -> u64 {
        self.waited_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id)
            .unwrap_or(0)
    }

    /// Frees the job's slot if it has no stream open (after the linger).
    fn leave(&self, job_id: &str, job: &Arc<Job>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if job.streams.load(std::sync::atomic::Ordering::Acquire) == 0
            && jobs.get(job_id).is_some_and(|j| Arc::ptr_eq(j, job))
        {
            jobs.remove(job_id);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self
            .job
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            != 1
        {
            return;
        }
        let (admission, job_id, job) = (
            self.admission.clone(),
            self.job_id.clone(),
            self.job.clone(),
        );
        // Keep the slot a moment for the job's next request; outside a runtime (tests
        // dropping it by hand) free it now.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    admission.leave(&job_id, &job);
                });
            }
            Err(_) => admission.leave(&job_id, &job),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_beyond_the_limit_wait_and_a_jobs_own_streams_never_do() {
        let adm = Admission::new(2 * BYTES_PER_RESTORE);
        assert_eq!(adm.limit(), 2);
        let a1 = adm.enter("a").await;
        let _b = adm.enter("b").await;
        assert_eq!(adm.serving(), 2);
        // A second stream of an admitted job goes at once.
        let a2 = tokio::time::timeout(Duration::from_secs(1), adm.enter("a"))
            .await
            .expect("a's second stream is not held back");
        // A third job waits...
        let waiting = tokio::spawn({
            let adm = adm.clone();
            async move { adm.enter("c").await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        assert_eq!(adm.waiting(), 1);
        // ...while a's streams come and go within the linger, a keeps its slot...
        drop(a1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        // ...and once a's last stream has been closed for the linger, c is served.
        drop(a2);
        tokio::time::sleep(LINGER + Duration::from_millis(10)).await;
        let c = waiting.await.expect("c admitted");
        assert_eq!(adm.serving(), 2);
        assert_eq!(adm.waiting(), 0);
        drop(c);
        // c's wait is known (for its outcome), once; a and b did not wait.
        assert!(adm.take_waited_ms("c") >= LINGER.as_millis() as u64);
        assert_eq!(adm.take_waited_ms("c"), 0);
        assert!(adm.take_waited_ms("a") < 50);
    }

    #[test]
    fn the_budget_turns_into_at_least_one_restore() {
        assert_eq!(Admission::new(0).limit(), 1);
        assert_eq!(Admission::new(256 << 20).limit(), 32);
    }
}
