//! A recovery plan as the planner makes it and the runner carries it out: states are
//! enums, times are offsets from the plan's start. `pb::PlanInfo` is only its wire form
//! (`to_wire`, `from_wire`); the catalog keeps that form's protobuf encoding, so a plan
//! stored by an earlier version loads unchanged, and a plan that does not parse is named.

use lifeboat_core::restore::Mode;
use lifeboat_proto::pb;
use lifeboat_proto::states::{Basis, PlanState, StepState};

use crate::catalog::CatalogError;

/// A recovery plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub id: String,
    pub created_ms: i64,
    pub created_by: String,
    pub state: PlanState,
    /// The compromise time: restore points are the last good snapshots before it.
    pub before_ms: i64,
    /// Devices restored at once.
    pub concurrency: u32,
    /// Controller egress for the plan, bytes per second (0: unlimited).
    pub bandwidth: u64,
    pub mode: Mode,
    /// Quarantined snapshots were considered (an admin's choice, audited).
    pub forced: bool,
    /// In the order they start: tier, then shortest first.
    pub devices: Vec<Device>,
    /// The estimate: sum and maximum of device downtimes, and the plan's length.
    pub total_downtime_ms: u64,
    pub longest_downtime_ms: u64,
    pub makespan_ms: u64,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// While running: the re-estimated time until the last device is back.
    pub eta_ms: u64,
    /// Sources without a restore point before the cut-off, and similar.
    pub warnings: Vec<String>,
    /// The copy store its restore points come from (`--from`); empty: the primary. Its
    /// restores read through the controller, which falls back to the copy, never
    /// straight from the primary the operator has given up on.
    pub from_store: String,
    /// Once ended: the same sums, measured.
    pub actual_total_downtime_ms: u64,
    pub actual_longest_downtime_ms: u64,
    /// Bytes sent for the restores that finished.
    pub bytes_moved: u64,
}

/// One device of a plan and where it is restored.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub agent: String,
    /// The agent it is restored onto (itself unless the target map says otherwise).
    pub target_agent: String,
    pub tier: u32,
    pub sources: Vec<Source>,
    pub bytes: u64,
    /// Offsets from the plan's start: the estimate, and (once run) what happened.
    pub est_start_ms: u64,
    pub est_finish_ms: u64,
    pub basis: Basis,
    pub state: StepState,
    pub actual_start_ms: u64,
    pub actual_finish_ms: u64,
    pub error: String,
}

/// One source of a device: its restore point and its restore.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub source: String,
    pub snapshot: String,
    pub snapshot_ms: i64,
    /// Host paths: where it goes on the target agent; empty for images and volumes.
    pub target: String,
    /// Bytes written, and bytes sent (stored, compressed chunks).
    pub bytes: u64,
    pub wire_bytes: u64,
    pub files: u64,
    pub quarantined: bool,
    pub job_id: String,
    pub state: StepState,
    pub attempts: u32,
    pub error: String,
    /// Why nothing moves now (its target agent is not connected), set on every step it
    /// holds; shown in place of the error while set.
    pub waiting: String,
    pub result: Option<pb::RestoreResult>,
    pub progress: Option<pb::Progress>,
    /// What the restore point was chosen by, and the newer ones passed over (with why).
    pub chosen_because: String,
    pub passed_over: Vec<String>,
}

impl Plan {
    /// The plan without what moves on every step of a running restore (each source's
    /// progress, the ETA): two plans whose `settled` forms are equal differ only there.
    pub fn settled(&self) -> Plan {
        let mut p = self.clone();
        p.eta_ms = 0;
        for s in p.devices.iter_mut().flat_map(|d| d.sources.iter_mut()) {
            s.progress = None;
        }
        p
    }

    /// Whether the plan differs from `settled` (a [`Plan::settled`] form) only in what
    /// moves on every step: `self.settled() == *settled`, without copying the plan (the
    /// runner asks every tick).
    pub fn settles_as(&mut self, settled: &Plan) -> bool {
        let eta = std::mem::take(&mut self.eta_ms);
        let progress: Vec<Option<pb::Progress>> = self
            .devices
            .iter_mut()
            .flat_map(|d| d.sources.iter_mut())
            .map(|s| s.progress.take())
            .collect();
        let same = *self == *settled;
        self.eta_ms = eta;
        for (s, p) in self
            .devices
            .iter_mut()
            .flat_map(|d| d.sources.iter_mut())
            .zip(progress)
        {
            s.progress = p;
        }
        same
    }

    /// Whether any device still waits or runs.
    pub fn active(&self) -> bool {
        self.devices.iter().any(|d| !d.state.ended())
    }

    pub fn to_wire(&self) -> pb::PlanInfo {
        pb::PlanInfo {
            id: self.id.clone(),
            created_unix_ms: self.created_ms,
            created_by: self.created_by.clone(),
            state: self.state.into(),
            before_unix_ms: self.before_ms,
            concurrency: self.concurrency,
            bandwidth_bytes_per_sec: self.bandwidth,
            mode: self.mode.name().into(),
            forced: self.forced,
            devices: self.devices.iter().map(Device::to_wire).collect(),
            total_downtime_ms: self.total_downtime_ms,
            longest_downtime_ms: self.longest_downtime_ms,
            makespan_ms: self.makespan_ms,
            started_unix_ms: self.started_ms,
            finished_unix_ms: self.finished_ms,
            eta_ms: self.eta_ms,
            warnings: self.warnings.clone(),
            actual_total_downtime_ms: self.actual_total_downtime_ms,
            actual_longest_downtime_ms: self.actual_longest_downtime_ms,
            bytes_moved: self.bytes_moved,
            from_store: self.from_store.clone(),
        }
    }

    /// A plan from its wire form; a word this version does not know is an error naming it.
    pub fn from_wire(p: pb::PlanInfo) -> Result<Plan, CatalogError> {
        let bad = |what: &str, word: &str| {
            CatalogError::broken(format!("plan {}: unknown {what} {word:?}", p.id))
        };
        Ok(Plan {
            state: PlanState::parse(&p.state).ok_or_else(|| bad("state", &p.state))?,
            mode: Mode::parse(&p.mode).map_err(|_| bad("mode", &p.mode))?,
            devices: p
                .devices
                .into_iter()
                .map(|d| Device::from_wire(d).map_err(|(what, word)| bad(what, &word)))
                .collect::<Result<_, _>>()?,
            id: p.id,
            created_ms: p.created_unix_ms,
            created_by: p.created_by,
            before_ms: p.before_unix_ms,
            concurrency: p.concurrency,
            bandwidth: p.bandwidth_bytes_per_sec,
            forced: p.forced,
            total_downtime_ms: p.total_downtime_ms,
            longest_downtime_ms: p.longest_downtime_ms,
            makespan_ms: p.makespan_ms,
            started_ms: p.started_unix_ms,
            finished_ms: p.finished_unix_ms,
            eta_ms: p.eta_ms,
            warnings: p.warnings,
            actual_total_downtime_ms: p.actual_total_downtime_ms,
            actual_longest_downtime_ms: p.actual_longest_downtime_ms,
            bytes_moved: p.bytes_moved,
            from_store: p.from_store,
        })
    }
}

impl Device {
    fn to_wire(&self) -> pb::PlanDevice {
        pb::PlanDevice {
            agent: self.agent.clone(),
            target_agent: self.target_agent.clone(),
            tier: self.tier,
            sources: self.sources.iter().map(Source::to_wire).collect(),
            bytes: self.bytes,
            est_start_ms: self.est_start_ms,
            est_finish_ms: self.est_finish_ms,
            estimate_basis: self.basis.into(),
            state: self.state.into(),
            actual_start_ms: self.actual_start_ms,
            actual_finish_ms: self.actual_finish_ms,
            error: self.error.clone(),
            // Its source tried most often (what `lifeboat recover show` reports).
            attempts: self.sources.iter().map(|s| s.attempts).max().unwrap_or(0),
        }
    }

    /// The device from its wire form, or which word did not parse.
    fn from_wire(d: pb::PlanDevice) -> Result<Device, (&'static str, String)> {
        Ok(Device {
            basis: Basis::parse(&d.estimate_basis)
                .ok_or(("estimate basis", d.estimate_basis.clone()))?,
            state: StepState::parse(&d.state).ok_or(("device state", d.state.clone()))?,
            sources: d
                .sources
                .into_iter()
                .map(Source::from_wire)
                .collect::<Result<_, _>>()?,
            agent: d.agent,
            target_agent: d.target_agent,
            tier: d.tier,
            bytes: d.bytes,
            est_start_ms: d.est_start_ms,
            est_finish_ms: d.est_finish_ms,
            actual_start_ms: d.actual_start_ms,
            actual_finish_ms: d.actual_finish_ms,
            error: d.error,
        })
    }
}

impl Source {
    fn to_wire(&self) -> pb::PlanSource {
        pb::PlanSource {
            source: self.source.clone(),
            snapshot: self.snapshot.clone(),
            snapshot_unix_ms: self.snapshot_ms,
            target: self.target.clone(),
            bytes: self.bytes,
            wire_bytes: self.wire_bytes,
            files: self.files,
            quarantined: self.quarantined,
            job_id: self.job_id.clone(),
            state: self.state.into(),
            attempts: self.attempts,
            error: if self.waiting.is_empty() {
                self.error.clone()
            } else {
                self.waiting.clone()
            },
            result: self.result.clone(),
            progress: self.progress.clone(),
            chosen_because: self.chosen_because.clone(),
            passed_over: self.passed_over.clone(),
        }
    }

    fn from_wire(s: pb::PlanSource) -> Result<Source, (&'static str, String)> {
        Ok(Source {
            state: StepState::parse(&s.state).ok_or(("source state", s.state.clone()))?,
            source: s.source,
            snapshot: s.snapshot,
            snapshot_ms: s.snapshot_unix_ms,
            target: s.target,
            bytes: s.bytes,
            wire_bytes: s.wire_bytes,
            files: s.files,
            quarantined: s.quarantined,
            job_id: s.job_id,
            attempts: s.attempts,
            error: s.error,
            waiting: String::new(),
            result: s.result,
            progress: s.progress,
            chosen_because: s.chosen_because,
            passed_over: s.passed_over,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_plan() -> Plan {
        let source = |name: &str| pb::PlanSource {
            source: name.into(),
            state: "running".into(),
            job_id: format!("job-{name}"),
            progress: Some(pb::Progress {
                bytes_done: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        Plan::from_wire(pb::PlanInfo {
            id: "p".into(),
            state: "running".into(),
            mode: "replace".into(),
            eta_ms: 5_000,
            devices: (0..3)
                .map(|i| pb::PlanDevice {
                    agent: format!("a{i}"),
                    state: "running".into(),
                    estimate_basis: "measured".into(),
                    sources: vec![source("data"), source("volume:db")],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .expect("plan")
    }

    #[test]
    fn a_plan_settles_as_its_settled_form_whatever_its_progress_and_eta_and_keeps_them() {
        let mut plan = running_plan();
        let settled = plan.settled();
        plan.eta_ms = 1_234;
        plan.devices[2].sources[1].progress = Some(pb::Progress {
            bytes_done: 99,
            ..Default::default()
        });
        let before = plan.clone();
        assert!(plan.settles_as(&settled));
        // Asking leaves the plan as it was: the progress and ETA are put back.
        assert_eq!(plan, before);
        // Any other change is not settled alike.
        plan.devices[1].sources[0].state = StepState::Done;
        assert!(!plan.settles_as(&settled));
        assert_eq!(
            plan.devices[2].sources[1].progress,
            before.devices[2].sources[1].progress
        );
        let mut plan = before.clone();
        plan.devices[0].error = "failed".into();
        assert!(!plan.settles_as(&settled));
        assert_eq!(plan.settled() == settled, plan.settles_as(&settled));
    }
}
