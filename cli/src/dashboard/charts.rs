//! Charts as inline SVG: a device's snapshots on a timeline, drills' estimated against
//! actual time, and a recovery plan's devices on a time axis. Hover text is SVG `<title>`
//! (no script); colours come from the stylesheet's classes.

use lifeboat_proto::pb;
use lifeboat_proto::states::StepState;
use maud::{Markup, html};

use crate::output::{bytes, millis, time};

const WIDTH: f64 = 960.0;
const LABEL: f64 = 170.0;
const RIGHT: f64 = 20.0;

/// Maps a value range onto the chart's horizontal plot area.
#[derive(Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64) -> Axis {
        if hi > lo {
            Axis { lo, hi }
        } else {
            Axis { lo, hi: lo + 1.0 }
        }
    }

    fn x(&self, v: f64) -> f64 {
        let f = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        LABEL + f * (WIDTH - LABEL - RIGHT)
    }

    /// `n + 1` evenly spaced tick values from `lo` to `hi`.
    fn ticks(&self, n: u32) -> Vec<f64> {
        (0..=n)
            .map(|i| self.lo + (self.hi - self.lo) * f64::from(i) / f64::from(n))
            .collect()
    }
}

fn round(v: f64) -> String {
    format!("{v:.1}")
}

/// A Unix time in milliseconds as short as the span around it allows: "02:11:05" within
/// an hour, "02:11" within a day, "12-06 02:11" beyond.
fn short_time(ms: i64, span_ms: f64) -> String {
    let t = time(ms); // 2026-12-06T02:11:05Z
    let part = if span_ms < 3_600_000.0 {
        t.get(11..19)
    } else if span_ms < 86_400_000.0 {
        t.get(11..16)
    } else {
        t.get(5..16)
    };
    part.map(|s| s.replace('T', " ")).unwrap_or(t)
}

fn grid(axis: Axis, top: f64, bottom: f64, label: impl Fn(f64) -> String) -> Markup {
    let ticks = axis.ticks(5);
    let last = ticks.len() - 1;
    html! {
        @for (i, v) in ticks.into_iter().enumerate() {
            line.grid x1=(round(axis.x(v))) x2=(round(axis.x(v))) y1=(round(top)) y2=(round(bottom)) {}
            // The last label ends at its tick so that it stays inside the chart.
            text.tick x=(round(axis.x(v))) y=(round(bottom + 14.0)) text-anchor=(if i == last { "end" } else { "middle" }) { (label(v)) }
        }
    }
}

/// A device's snapshots, one lane per source, quarantined ones marked with a cross.
pub fn timeline(snapshots: &[pb::SnapshotInfo], now_ms: i64) -> Markup {
    let mut sources: Vec<&str> = snapshots.iter().map(|s| s.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    let first = snapshots
        .iter()
        .map(|s| s.received_unix_ms)
        .min()
        .unwrap_or(now_ms);
    // A little room before the first snapshot, and at least ten minutes in all, so that
    // a new device's snapshots are not dots piled at the edge.
    let span = ((now_ms - first).max(0) as f64 * 1.05).max(600_000.0);
    let axis = Axis::new(now_ms as f64 - span, now_ms as f64);
    let lane = 30.0;
    let top = 10.0;
    let bottom = top + lane * sources.len().max(1) as f64;
    html! {
        svg.chart.timeline role="img" viewBox=(format!("0 0 {WIDTH} {}", bottom + 24.0)) {
            title { "Snapshots by source over time" }
            (grid(axis, top, bottom, |v| short_time(v as i64, span)))
            @for (i, source) in sources.iter().enumerate() {
                @let y = top + lane * i as f64 + lane / 2.0;
                text.label x="8" y=(round(y + 4.0)) { (source) }
                line.lane x1=(LABEL) x2=(WIDTH - RIGHT) y1=(round(y)) y2=(round(y)) {}
                @for s in snapshots.iter().filter(|s| s.source == *source) {
                    @let x = axis.x(s.received_unix_ms as f64);
                    @let tip = format!("{} · {} · {}{}", &s.id[..s.id.len().min(12)], time(s.received_unix_ms), bytes(s.bytes),
                        if s.quarantined_unix_ms > 0 { " · QUARANTINED" } else { "" });
                    a href=(format!("#snapshot-{}", s.id)) {
                        @if s.quarantined_unix_ms > 0 {
                            g.mark.quarantined data-snapshot=(s.id) {
                                title { (tip) }
                                line x1=(round(x - 5.0)) x2=(round(x + 5.0)) y1=(round(y - 5.0)) y2=(round(y + 5.0)) {}
                                line x1=(round(x - 5.0)) x2=(round(x + 5.0)) y1=(round(y + 5.0)) y2=(round(y - 5.0)) {}
                            }
                        } @else {
                            circle.mark data-snapshot=(s.id) cx=(round(x)) cy=(round(y)) r="5" { title { (tip) } }
                        }
                    }
                }
            }
        }
    }
}

/// The key above a chart of estimated against actual bars.
fn legend(estimate: &str, actual_class: &str) -> Markup {
    html! {
        rect.estimate x=(LABEL) y="4" width="12" height="8" {}
        text.tick x=(LABEL + 16.0) y="12" { (estimate) }
        rect class=(format!("actual {actual_class}")) x=(LABEL + 100.0) y="4" width="12" height="8" {}
        text.tick x=(LABEL + 116.0) y="12" { "actual" }
    }
}

/// Drills newest first, each as two bars: the estimate before it and the time it took.
pub fn drill_bars(drills: &[pb::DrillInfo]) -> Markup {
    let shown: Vec<&pb::DrillInfo> = drills.iter().take(30).collect();
    let max = shown
        .iter()
        .map(|d| d.estimate_ms.max(d.actual_ms))
        .max()
        .unwrap_or(0);
    let axis = Axis::new(0.0, max.max(1) as f64);
    let row = 26.0;
    let top = 24.0;
    let bottom = top + row * shown.len().max(1) as f64;
    html! {
        svg.chart.drills role="img" viewBox=(format!("0 0 {WIDTH} {}", bottom + 24.0)) {
            title { "Drills: estimated against actual restore time" }
            (legend("estimate", "passed"))
            (grid(axis, top, bottom, |v| millis(v as u64)))
            @for (i, d) in shown.iter().enumerate() {
                @let y = top + row * i as f64;
                g data-drill=(d.id) {
                    title { (format!("{} {} · {} · estimate {} ({}) · actual {}", d.agent, d.source, d.state,
                        millis(d.estimate_ms), d.estimate_basis,
                        if d.actual_ms > 0 { millis(d.actual_ms) } else { "-".into() })) }
                    text.label x="8" y=(round(y + 15.0)) { (format!("{} {} {}", short_time(d.started_unix_ms, f64::INFINITY), d.agent, d.source)) }
                    rect.estimate x=(LABEL) y=(round(y + 3.0)) height="9" width=(round(axis.x(d.estimate_ms as f64) - LABEL)) {}
                    @if d.actual_ms > 0 {
                        rect class=(format!("actual {}", d.state)) x=(LABEL) y=(round(y + 13.0)) height="9" width=(round(axis.x(d.actual_ms as f64) - LABEL)) {}
                    }
                }
            }
        }
    }
}

/// A plan's devices by tier on a time axis from the plan's start: the estimated window
/// above, what happened below (up to now while it runs), and a line at now.
pub fn plan_gantt(p: &pb::PlanInfo, now_ms: i64) -> Markup {
    let mut devices: Vec<&pb::PlanDevice> = p.devices.iter().collect();
    devices.sort_by_key(|d| (d.tier, d.est_start_ms, d.agent.clone()));
    let running = p.started_unix_ms > 0 && p.finished_unix_ms == 0;
    let elapsed = if p.started_unix_ms > 0 {
        let end = if p.finished_unix_ms > 0 {
            p.finished_unix_ms
        } else {
            now_ms
        };
        (end - p.started_unix_ms).max(0) as u64
    } else {
        0
    };
    let span = devices
        .iter()
        .map(|d| d.est_finish_ms.max(d.actual_finish_ms))
        .chain([
            p.makespan_ms,
            elapsed,
            if running { elapsed + p.eta_ms } else { 0 },
        ])
        .max()
        .unwrap_or(0);
    let axis = Axis::new(0.0, span.max(1) as f64);
    let row = 24.0;
    let top = 24.0;
    let bottom = top + row * devices.len().max(1) as f64;
    html! {
        svg.chart.gantt role="img" viewBox=(format!("0 0 {WIDTH} {}", bottom + 24.0)) {
            title { "Recovery plan: devices on a time axis from the plan's start" }
            (legend("estimated", "done"))
            (grid(axis, top, bottom, |v| millis(v as u64)))
            @for (i, d) in devices.iter().enumerate() {
                @let y = top + row * i as f64;
                @if i == 0 || devices[i - 1].tier != d.tier {
                    line.tier x1="0" x2=(WIDTH) y1=(round(y)) y2=(round(y)) {}
                }
                g data-device=(d.agent) data-state=(d.state) {
                    title { (format!("{} (tier {}) · {} · estimated {}–{} · {}", d.agent, d.tier, d.state,
                        millis(d.est_start_ms), millis(d.est_finish_ms), actual_span(d))) }
                    text.label x="8" y=(round(y + 16.0)) { (format!("T{} {}", d.tier, d.agent)) }
                    rect.estimate x=(round(axis.x(d.est_start_ms as f64))) y=(round(y + 3.0)) height="8"
                        width=(round((axis.x(d.est_finish_ms as f64) - axis.x(d.est_start_ms as f64)).max(1.0))) {}
                    @if let Some((from, to)) = actual_window(d, elapsed) {
                        rect class=(format!("actual {}", d.state)) x=(round(axis.x(from as f64))) y=(round(y + 12.0)) height="9"
                            width=(round((axis.x(to as f64) - axis.x(from as f64)).max(1.0))) {}
                    }
                }
            }
            @if running {
                line.now x1=(round(axis.x(elapsed as f64))) x2=(round(axis.x(elapsed as f64))) y1=(round(top)) y2=(round(bottom)) {}
            }
        }
    }
}

/// Where the device's actual bar runs: its start to its finish, or to now while running.
fn actual_window(d: &pb::PlanDevice, elapsed_ms: u64) -> Option<(u64, u64)> {
    let state = StepState::parse(&d.state)?;
    if state.ended() {
        Some((d.actual_start_ms, d.actual_finish_ms))
    } else if state == StepState::Running {
        Some((d.actual_start_ms, elapsed_ms.max(d.actual_start_ms)))
    } else {
        None
    }
}

fn actual_span(d: &pb::PlanDevice) -> String {
    match StepState::parse(&d.state) {
        Some(s) if s.ended() => format!(
            "actual {}–{}",
            millis(d.actual_start_ms),
            millis(d.actual_finish_ms)
        ),
        Some(StepState::Running) => format!("started {}", millis(d.actual_start_ms)),
        _ => "not started".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_maps_its_range_onto_the_plot_and_clamps_outside_it() {
        let a = Axis::new(100.0, 200.0);
        assert_eq!(a.x(100.0), LABEL);
        assert_eq!(a.x(200.0), WIDTH - RIGHT);
        assert_eq!(a.x(50.0), LABEL);
        assert_eq!(a.x(500.0), WIDTH - RIGHT);
        assert_eq!(a.ticks(4), vec![100.0, 125.0, 150.0, 175.0, 200.0]);
        // An empty range still draws (no division by zero).
        assert!(Axis::new(5.0, 5.0).x(5.0).is_finite());
    }

    #[test]
    fn time_labels_are_as_short_as_the_span_allows() {
        let t = 1_796_437_865_000; // 2026-12-05T02:31:05Z
        assert_eq!(short_time(t, 600_000.0), "02:31:05");
        assert_eq!(short_time(t, 7_200_000.0), "02:31");
        assert_eq!(short_time(t, 3.0 * 86_400_000.0), "12-05 02:31");
    }

    #[test]
    fn a_plans_bars_follow_its_devices_states() {
        let d = |state: &str| pb::PlanDevice {
            agent: "db".into(),
            state: state.into(),
            actual_start_ms: 1_000,
            actual_finish_ms: 4_000,
            ..Default::default()
        };
        assert_eq!(actual_window(&d("pending"), 9_000), None);
        assert_eq!(actual_window(&d("running"), 9_000), Some((1_000, 9_000)));
        assert_eq!(actual_window(&d("done"), 9_000), Some((1_000, 4_000)));
        assert_eq!(actual_window(&d("failed"), 9_000), Some((1_000, 4_000)));
    }

    #[test]
    fn names_from_agents_are_escaped_in_the_svg() {
        let s = pb::SnapshotInfo {
            id: "abc".into(),
            source: "<script>alert(1)</script>".into(),
            received_unix_ms: 1_000,
            ..Default::default()
        };
        let svg = timeline(&[s], 10_000_000).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
    }
}
