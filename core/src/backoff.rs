//! The one retry schedule: a step that doubles from `first` up to `max`, each pause drawn
//! at random between half and one and a half steps. On average the schedule is the
//! step's; spread over a whole step, many clients that failed together (10,000 agents
//! whose controller restarted) do not come back together. The agent's reconnects, its
//! range GETs from the object store and the controller's S3 client all pause through it.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            step: first,
        }
    }

    /// Back to the first step (after a success that lasted).
    pub fn reset(&mut self) {
        self.step = self.first;
    }

    /// The pause before the next try, in `[step / 2, 3 step / 2)`; the step then doubles.
    pub fn pause(&mut self) -> Duration {
        let pause = jitter(self.step);
        self.step = (self.step * 2).min(self.max);
        pause
    }
}

/// A random duration in `[d / 2, 3 d / 2)` (`d` itself when under 1 ns).
pub fn jitter(d: Duration) -> Duration {
    let spread = d.as_nanos().min(u128::from(u64::MAX)) as u64;
    if spread == 0 {
        return d;
    }
    let r = crate::sign::random_bytes::<8>().map_or(0, u64::from_le_bytes);
    d / 2 + Duration::from_nanos(r % spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_cap_each_within_half_a_step_of_it() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let steps = [200, 400, 800, 1000, 1000];
        for step in steps {
            let p = b.pause().as_millis() as u64;
            assert!(
                (step / 2..step * 3 / 2).contains(&p),
                "a pause of {p} ms for a step of {step} ms"
            );
        }
        b.reset();
        assert!(b.pause() < Duration::from_millis(300));
    }

    #[test]
    fn pauses_are_spread_not_equal() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            seen.insert(jitter(Duration::from_secs(1)).as_millis());
        }
        assert!(
            seen.len() > 10,
            "50 pauses of a 1 s step took {} values",
            seen.len()
        );
    }
}
