//! The one byte pacer: an agent's backup bandwidth (`bandwidth` in a policy) and a recovery
//! plan's egress (`--bandwidth`) both pace through it.
//!
//! Every caller reserves its bytes on one schedule, first come first served: a reservation
//! starts when the previous one ends (or now, if the pacer was idle: idle time earns no
//! burst), lasts `bytes / rate`, and `take` returns when it ends. So whatever went through
//! a pacer in any window took at least `bytes / rate`, however many threads share it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: f64,
    /// When the last reservation ends.
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer at `bytes_per_sec`; none for 0 (unlimited).
    pub fn new(bytes_per_sec: u64) -> Option<Pacer> {
        (bytes_per_sec > 0).then(|| Pacer {
            bytes_per_sec: bytes_per_sec as f64,
            next: Mutex::new(Instant::now()),
        })
    }

    /// Reserves `bytes` and blocks (a blocking thread) until the reservation ends.
    pub fn take(&self, bytes: u64) {
        let end = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            *next
        };
        let now = Instant::now();
        if end > now {
            std::thread::sleep(end - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 MB at 4 MB/s cannot take less than 0.75 s (a lower bound: slow machines only
    /// make it longer).
    #[test]
    fn a_pacer_paces_what_is_sent() {
        let pacer = Pacer::new(4_000_000).expect("pacer");
        let t = Instant::now();
        for _ in 0..3 {
            pacer.take(1_000_000);
        }
        assert!(
            t.elapsed() >= Duration::from_millis(740),
            "{:?}",
            t.elapsed()
        );
        assert!(Pacer::new(0).is_none());
    }

    #[test]
    fn reservations_follow_each_other_across_threads() {
        let p = std::sync::Arc::new(Pacer::new(1_000_000).expect("pacer"));
        let t = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || p.take(100_000))
            })
            .collect();
        for th in threads {
            th.join().expect("thread");
        }
        // Two reservations of 100 ms each, one after the other.
        assert!(
            t.elapsed() >= Duration::from_millis(195),
            "{:?}",
            t.elapsed()
        );
    }
}
