//! Egress pacing for a plan: every chunk a plan's restores read reserves its bytes on one
//! schedule (first come, first served), so the plan never sends faster than its
//! bandwidth and concurrent restores interleave chunk by chunk.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Pacer {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl Pacer {
    pub fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Blocks (a blocking thread) until `bytes` may be sent.
    pub fn take(&self, bytes: usize) {
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            start
        };
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_each_other() {
        let p = Pacer::new(1_000_000);
        let t = Instant::now();
        p.take(0);
        p.take(100_000); // may go now; the next waits 100 ms
        p.take(100_000);
        assert!(
            t.elapsed() >= Duration::from_millis(95),
            "{:?}",
            t.elapsed()
        );
    }
}
