//! The downtime model: how long restoring a snapshot onto a device takes.
//!
//! Every finished restore (operator restores, drills, plan restores) leaves a sample: the
//! bytes it wrote, the milliseconds the agent spent fetching, verifying and writing them
//! (`data_ms`), and the milliseconds the controller saw from dispatch to the final report
//! (`total_ms`). For a device and a source kind (`path`, `volume`, `image`) the model fits
//!
//! ```text
//! estimate(bytes) = fixed + bytes / rate
//! rate  = Σ bytes / Σ data_ms       over the device's newest samples run alone
//! fixed = median(total_ms − data_ms) over the device's newest samples
//! ```
//!
//! Samples of restores that ran beside others in a plan are shared: their data rate says
//! more about the plan's limits than about the device, so they feed `fixed` only. A device
//! without samples of its own borrows the fleet's figures for that kind (`assumed`), and a
//! fleet without any uses [`DEFAULT_RATE`] and [`DEFAULT_FIXED_MS`] (`assumed`).
//!
//! A plan adds limits: at most `concurrency` devices at once (and, for restores read
//! through the controller, no more than it serves at once: `plan::served_at_once`), and the controller's egress
//! shared by the restores moving data at the same moment: the plan's `--bandwidth`, and in
//! any case the fleet's capacity, which is the best aggregate rate restores moved data at
//! together (an `egress` sample: recorded when a plan ends, and by the calibration burst a
//! drill run of several devices begins with, `drill::calibrate`), and at least the best
//! rate one device restored at alone. Without either, concurrent restores are assumed to
//! gain nothing over one restore alone: pessimistic where agents and controller are
//! separate machines. [`simulate`] plays
//! the plan forward in time: every device runs its sources one after another, each one a
//! data part then a fixed part; the data parts running at one instant split the egress
//! fairly (max-min: none gets more than its device's own rate, what one cannot use goes to
//! the others). The fixed part is played after the data part although setup comes first:
//! restores started together ask for data together, so a device whose setup happens to be
//! a few milliseconds shorter must not be simulated as having the whole egress to itself.
//! A tier starts only when every device of the tiers before it has finished.

use std::collections::HashMap;

use crate::catalog::SampleRow;

/// Bytes per second assumed before any restore was measured.
pub const DEFAULT_RATE: f64 = 100e6;
/// Fixed milliseconds per restore assumed before any restore was measured.
pub const DEFAULT_FIXED_MS: f64 = 1000.0;
/// Samples per (device, kind) the fit looks at.
pub const SAMPLES: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub rate: f64,
    pub fixed_ms: f64,
    pub measured: bool,
}

impl Rates {
    pub fn basis(&self) -> &'static str {
        lifeboat_proto::states::Basis::of(self.measured).as_str()
    }

    pub fn estimate_ms(&self, bytes: u64) -> f64 {
        self.fixed_ms + bytes as f64 * 1000.0 / self.rate
    }
}

#[derive(Default)]
struct Acc {
    bytes: u64,
    data_ms: u64,
    fixed: Vec<u64>,
}

impl Acc {
    fn add(&mut self, s: &SampleRow) {
        if !s.shared && s.data_ms > 0 {
            self.bytes += s.bytes;
            self.data_ms += s.data_ms;
        }
        self.fixed.push(s.total_ms.saturating_sub(s.data_ms));
    }

    fn rate(&self) -> Option<f64> {
        (self.data_ms > 0 && self.bytes > 0)
            .then(|| self.bytes as f64 * 1000.0 / self.data_ms as f64)
    }

    fn fixed(&self) -> Option<f64> {
        let mut v = self.fixed.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(v[v.len() / 2] as f64)
    }
}

/// The kind of the samples that record a whole plan's egress (agent id empty).
pub const EGRESS: &str = "egress";

/// The fitted model of the whole fleet.
#[derive(Default)]
pub struct Model {
    device: HashMap<(String, String), Acc>,
    fleet: HashMap<String, Acc>,
    /// Best aggregate rate a plan moved data at.
    egress: f64,
}

impl Model {
    pub fn from_samples(samples: &[SampleRow]) -> Model {
        let mut m = Model::default();
        for s in samples {
            if s.kind == EGRESS {
                if s.data_ms > 0 {
                    m.egress = m.egress.max(s.bytes as f64 * 1000.0 / s.data_ms as f64);
                }
                continue;
            }
            m.device
                .entry((s.agent_id.clone(), s.kind.clone()))
                .or_default()
                .add(s);
            m.fleet.entry(s.kind.clone()).or_default().add(s);
        }
        m
    }

    pub fn load(catalog: &crate::catalog::Catalog) -> Result<Model, crate::error::ApiError> {
        Ok(Model::from_samples(&catalog.recent_samples(SAMPLES)?))
    }

    /// What the controller can send at once, in bytes per second: the best a plan moved,
    /// and at least the best one device restored at alone (infinite before any sample).
    pub fn capacity(&self) -> f64 {
        let best_device = self
            .device
            .values()
            .filter_map(Acc::rate)
            .fold(0.0, f64::max);
        let c = self.egress.max(best_device);
        if c > 0.0 { c } else { f64::INFINITY }
    }

    /// The egress limit a plan is simulated with: its own cap (0: none) within the fleet's
    /// capacity (infinite: no limit known).
    pub fn plan_bandwidth(&self, cap: u64) -> f64 {
        let c = self.capacity();
        if cap > 0 { c.min(cap as f64) } else { c }
    }

    /// The rates for restoring a `kind` source onto `agent_id`.
    pub fn rates(&self, agent_id: &str, kind: &str) -> Rates {
        let own = self.device.get(&(agent_id.to_string(), kind.to_string()));
        let fleet = self.fleet.get(kind);
        let own_rate = own.and_then(Acc::rate);
        let rate = own_rate
            .or_else(|| fleet.and_then(Acc::rate))
            .unwrap_or(DEFAULT_RATE);
        let fixed = own
            .and_then(Acc::fixed)
            .or_else(|| fleet.and_then(Acc::fixed))
            .unwrap_or(DEFAULT_FIXED_MS);
        Rates {
            rate,
            fixed_ms: fixed,
            measured: own_rate.is_some(),
        }
    }
}

/// One restore of a plan, as the simulation sees it.
#[derive(Debug, Clone)]
pub struct Step {
    pub fixed_ms: f64,
    /// Bytes the controller sends.
    pub wire_bytes: f64,
    /// The device's own limit, in wire bytes per second.
    pub max_rate: f64,
}

/// A device: its restores run one after another.
#[derive(Debug, Clone)]
pub struct Work {
    pub tier: u32,
    pub steps: Vec<Step>,
}

impl Work {
    /// Its length alone with `share` bytes per second of egress (for ordering).
    pub fn alone_ms(&self, share: f64) -> f64 {
        self.steps
            .iter()
            .map(|s| s.fixed_ms + s.wire_bytes * 1000.0 / s.max_rate.min(share))
            .sum()
    }
}

/// Start and finish (milliseconds from the plan's start) of every device.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Span {
    pub start_ms: f64,
    pub finish_ms: f64,
}

struct Active {
    device: usize,
    step: usize,
    fixed_left: f64,
    bytes_left: f64,
}

/// Plays the plan forward. `running` devices are already going (started at their given
/// offset, with only the listed work left); `order` lists the devices not started yet, in
/// the order they may start. `bandwidth` 0 means unlimited.
pub fn simulate(
    devices: &[Work],
    running: &[(usize, f64)],
    order: &[usize],
    concurrency: usize,
    bandwidth: f64,
    now_ms: f64,
) -> Vec<Span> {
    let mut spans = vec![Span::default(); devices.len()];
    let mut active: Vec<Active> = Vec::new();
    let mut finished = vec![false; devices.len()];
    let mut pending: Vec<usize> = order.to_vec();
    // Devices neither running nor pending are done already.
    for (i, f) in finished.iter_mut().enumerate() {
        *f = !pending.contains(&i) && !running.iter().any(|(d, _)| *d == i);
    }
    let begin = |d: usize, at: f64, spans: &mut Vec<Span>, active: &mut Vec<Active>| {
        spans[d].start_ms = at;
        let first = devices[d].steps.first();
        active.push(Active {
            device: d,
            step: 0,
            fixed_left: first.map_or(0.0, |s| s.fixed_ms),
            bytes_left: first.map_or(0.0, |s| s.wire_bytes),
        });
    };
    for &(d, started) in running {
        begin(d, now_ms, &mut spans, &mut active);
        spans[d].start_ms = started;
    }
    let mut t = now_ms;
    let concurrency = concurrency.max(1);
    loop {
        // Start what may start: free slots, and no unfinished device of an earlier tier.
        while active.len() < concurrency && !pending.is_empty() {
            let d = pending[0];
            let tier = devices[d].tier;
            let blocked = (0..devices.len()).any(|o| !finished[o] && devices[o].tier < tier);
            if blocked {
                break;
            }
            pending.remove(0);
            begin(d, t, &mut spans, &mut active);
        }
        if active.is_empty() {
            if pending.is_empty() {
                break;
            }
            // Only reachable if a tier waits on itself; start the next device anyway.
            let d = pending.remove(0);
            begin(d, t, &mut spans, &mut active);
        }
        // Rates of the data parts now: max-min fair share of the egress.
        let movers: Vec<usize> = (0..active.len())
            .filter(|&i| active[i].bytes_left > 0.0)
            .collect();
        let mut rate = vec![0.0f64; active.len()];
        let mut caps: Vec<(usize, f64)> = movers
            .iter()
            .map(|&i| {
                let a = &active[i];
                (i, devices[a.device].steps[a.step].max_rate)
            })
            .collect();
        caps.sort_by(|x, y| x.1.total_cmp(&y.1));
        let mut left = if bandwidth > 0.0 {
            bandwidth
        } else {
            f64::INFINITY
        };
        let mut n = caps.len();
        for (i, cap) in caps {
            let share = left / n as f64;
            let r = cap.min(share);
            rate[i] = r;
            left -= r;
            n -= 1;
        }
        // The next event: a data part or a fixed part ends.
        let mut dt = f64::INFINITY;
        for (i, a) in active.iter().enumerate() {
            if a.bytes_left > 0.0 {
                if rate[i] > 0.0 {
                    dt = dt.min(a.bytes_left * 1000.0 / rate[i]);
                }
            } else if a.fixed_left > 0.0 {
                dt = dt.min(a.fixed_left);
            } else {
                dt = 0.0;
            }
        }
        if !dt.is_finite() {
            break;
        }
        t += dt;
        for (i, a) in active.iter_mut().enumerate() {
            if a.bytes_left > 0.0 {
                a.bytes_left -= rate[i] * dt / 1000.0;
                if a.bytes_left < 1e-6 {
                    a.bytes_left = 0.0;
                }
            } else if a.fixed_left > 0.0 {
                a.fixed_left -= dt;
                if a.fixed_left < 1e-9 {
                    a.fixed_left = 0.0;
                }
            }
        }
        // Advance finished steps; retire finished devices.
        let mut i = 0;
        while i < active.len() {
            let a = &mut active[i];
            if a.fixed_left <= 0.0 && a.bytes_left <= 0.0 {
                a.step += 1;
                if let Some(s) = devices[a.device].steps.get(a.step) {
                    a.fixed_left = s.fixed_ms;
                    a.bytes_left = s.wire_bytes;
                    i += 1;
                    continue;
                }
                let d = a.device;
                spans[d].finish_ms = t;
                finished[d] = true;
                active.remove(i);
                continue;
            }
            i += 1;
        }
    }
    spans
}

/// The order a plan starts its devices in: by tier, then shortest first (which minimises
/// the sum of downtimes within a tier when devices share the same limits).
pub fn order(devices: &[Work], concurrency: usize, bandwidth: f64) -> Vec<usize> {
    let share = if bandwidth > 0.0 {
        bandwidth / concurrency.max(1) as f64
    } else {
        f64::INFINITY
    };
    let mut idx: Vec<usize> = (0..devices.len()).collect();
    idx.sort_by(|&a, &b| {
        devices[a]
            .tier
            .cmp(&devices[b].tier)
            .then(
                devices[a]
                    .alone_ms(share)
                    .total_cmp(&devices[b].alone_ms(share)),
            )
            .then(a.cmp(&b))
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(tier: u32, mb: f64) -> Work {
        Work {
            tier,
            steps: vec![Step {
                fixed_ms: 100.0,
                wire_bytes: mb * 1e6,
                max_rate: 100e6,
            }],
        }
    }

    #[test]
    fn alone_is_fixed_plus_bytes_over_rate() {
        let d = [work(0, 10.0)];
        let s = simulate(&d, &[], &[0], 1, 0.0, 0.0);
        assert!((s[0].finish_ms - 200.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn egress_is_shared_fairly() {
        // Two devices of 10 MB under 10 MB/s: both move at 5 MB/s after their fixed part.
        let d = [work(0, 10.0), work(0, 10.0)];
        let s = simulate(&d, &[], &[0, 1], 2, 10e6, 0.0);
        for span in &s {
            assert!((span.finish_ms - 2100.0).abs() < 1e-3, "{s:?}");
        }
    }

    #[test]
    fn concurrency_queues_and_tiers_wait() {
        let d = [work(1, 10.0), work(0, 10.0), work(0, 10.0)];
        let o = order(&d, 2, 0.0);
        assert_eq!(o, vec![1, 2, 0]);
        let s = simulate(&d, &[], &o, 2, 0.0, 0.0);
        // Tier 1 starts only after both tier-0 devices finished.
        assert!((s[0].start_ms - 200.0).abs() < 1e-6, "{s:?}");
        assert!((s[0].finish_ms - 400.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn a_slow_device_leaves_egress_to_the_others() {
        let mut slow = work(0, 1.0);
        slow.steps[0].max_rate = 1e6;
        let d = [slow, work(0, 9.0)];
        let s = simulate(&d, &[], &[0, 1], 2, 10e6, 0.0);
        // The fast one gets the 9 MB/s the slow one cannot use: 100 + 1000 ms.
        assert!((s[1].finish_ms - 1100.0).abs() < 1e-3, "{s:?}");
        assert!((s[0].finish_ms - 1100.0).abs() < 1e-3, "{s:?}");
    }

    #[test]
    fn model_prefers_own_samples_then_fleet_then_defaults() {
        let sample = |agent: &str, bytes, data_ms, total_ms, shared| SampleRow {
            agent_id: agent.into(),
            kind: "path".into(),
            bytes,
            data_ms,
            total_ms,
            shared,
        };
        let m = Model::from_samples(&[
            sample("a", 10_000_000, 100, 150, false),
            sample("a", 10_000_000, 1000, 1050, true),
        ]);
        let a = m.rates("a", "path");
        assert!(a.measured);
        assert!((a.rate - 100e6).abs() < 1.0, "{a:?}");
        assert_eq!(a.fixed_ms, 50.0);
        let b = m.rates("b", "path");
        assert!(!b.measured);
        assert!((b.rate - 100e6).abs() < 1.0);
        let c = m.rates("b", "image");
        assert_eq!(
            (c.rate, c.fixed_ms, c.measured),
            (DEFAULT_RATE, DEFAULT_FIXED_MS, false)
        );
        // Capacity: the best device alone until a plan measured more; a plan's cap binds.
        assert!((m.capacity() - 100e6).abs() < 1.0);
        assert_eq!(m.plan_bandwidth(1_000_000), 1e6);
        let plan = SampleRow {
            agent_id: String::new(),
            kind: EGRESS.into(),
            bytes: 300_000_000,
            data_ms: 1000,
            total_ms: 1000,
            shared: false,
        };
        let m2 = Model::from_samples(&[sample("a", 10_000_000, 100, 150, false), plan]);
        assert!((m2.capacity() - 300e6).abs() < 1.0);
        assert!(Model::default().capacity().is_infinite());
    }
}
