//! One handler per page: read what it shows from the controller, render it. Actions (a
//! drill, a plan run) are a confirmation page (GET) and a form post that starts them.

use std::collections::HashMap;

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use lifeboat_proto::pb;
use lifeboat_proto::states::{DrillState, PlanState};
use maud::{Markup, html};
use serde::Deserialize;

use super::charts;
use super::console::Console;
use super::render::{
    PageError, Section, badge, csrf_field, device_href, encode, now_ms, page, short_id,
};
use crate::output::{bytes, millis, time};

type Page = Result<Markup, PageError>;

/// An age or interval to its two largest units: "3h 12m", "11months 30days".
fn age(seconds: u64) -> String {
    let full = humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// The newest drill of each device (drills come newest first).
fn last_drills(drills: &[pb::DrillInfo]) -> HashMap<&str, &pb::DrillInfo> {
    let mut last = HashMap::new();
    for d in drills {
        last.entry(d.agent.as_str()).or_insert(d);
    }
    last
}

fn drill_summary(d: &pb::DrillInfo) -> Markup {
    html! {
        (badge(&d.state)) " "
        span.sub { (time(d.started_unix_ms)) }
        @if d.over_rto { " " (badge("over-RTO")) }
        @if d.actual_ms > 0 {
            br; span.sub { "estimated " (millis(d.estimate_ms)) ", took " (millis(d.actual_ms)) }
        }
    }
}

pub async fn fleet(State(c): State<Console>) -> Page {
    let mut api = c.api.clone();
    let status = api.status(pb::Empty {}).await?.into_inner();
    let devices = api.list_devices(pb::Empty {}).await?.into_inner().devices;
    let drills = api
        .list_drills(pb::ListDrillsRequest {
            limit: 1000,
            ids: Vec::new(),
        })
        .await?
        .into_inner()
        .drills;
    let snapshots = api
        .list_snapshots(pb::ListSnapshotsRequest::default())
        .await?
        .into_inner()
        .snapshots;
    let mut suspect: HashMap<&str, usize> = HashMap::new();
    // Quarantined, or judged suspect by their ransomware signals.
    for s in snapshots
        .iter()
        .filter(|s| s.quarantined_unix_ms > 0 || s.suspect)
    {
        *suspect.entry(s.agent_name.as_str()).or_default() += 1;
    }
    let last_drill = last_drills(&drills);
    let overdue = devices
        .iter()
        .filter(|d| d.sources.iter().any(|s| s.overdue))
        .count();
    let uncovered = devices
        .iter()
        .filter(|d| d.sources.iter().all(|s| s.last_unix_ms == 0))
        .count();
    let longest = devices
        .iter()
        .map(|d| d.restore_estimate_ms)
        .max()
        .unwrap_or(0);
    let body = html! {
        div.cards {
            div.card { div.figure #devices-count { (devices.len()) } div.what { "devices" } }
            div.card { div.figure #overdue-count { (overdue) } div.what { "with an overdue source" } }
            div.card { div.figure #uncovered-count { (uncovered) } div.what { "without any snapshot" } }
            div.card { div.figure { (millis(longest)) } div.what { "longest estimated downtime" } }
            div.card { div.figure { (status.snapshots) } div.what { "snapshots" } }
            div.card { div.figure { (bytes(status.stored_bytes)) } div.what { "stored" (if status.store_encrypted { ", encrypted" } else { "" }) } }
        }
        table #fleet {
            thead { tr {
                th { "Device" } th { "Tier" } th { "Source" } th { "Last backup" } th { "RPO" }
                th.num { "Vulnerabilities" }
                th.num { "Estimated downtime" } th { "Last drill" } th.num { "Suspect snapshots" }
            } }
            tbody {
                @for d in &devices {
                    @let sources = d.sources.len().max(1);
                    @for (i, s) in d.sources.iter().map(Some).chain(d.sources.is_empty().then_some(None)).enumerate() {
                        tr data-device=(d.agent) data-source=[s.map(|s| &s.source)]
                            data-last-snapshot=[s.filter(|s| !s.last_snapshot.is_empty()).map(|s| &s.last_snapshot)]
                            data-overdue=[s.map(|s| s.overdue)] {
                            @if i == 0 {
                                td rowspan=(sources) {
                                    a href=(device_href(&d.agent)) { (d.agent) }
                                    br; (badge(if d.connected { "connected" } else { "offline" }))
                                }
                                td rowspan=(sources) { (d.tier) }
                            }
                            @match s {
                                Some(s) => {
                                    td { (s.source) br; span.sub { (s.policies.join(", ")) } }
                                    td {
                                        @if s.last_unix_ms > 0 {
                                            (time(s.last_unix_ms)) br;
                                            span.sub { (age(s.age_seconds)) " ago · " span.id { (short_id(&s.last_snapshot)) } }
                                        } @else { (badge("never")) }
                                    }
                                    td {
                                        @if s.rpo_seconds > 0 { (age(s.rpo_seconds)) " " }
                                        @if s.overdue { (badge("overdue")) } @else if s.last_unix_ms > 0 { (badge("ok")) }
                                    }
                                    td.num data-vulns=[s.vulns_known.then_some(s.vulns)] {
                                        @if s.vulns_known { (s.vulns) } @else { span.sub { "not scanned" } }
                                    }
                                }
                                None => { td colspan="4" { span.sub { "no sources" } } }
                            }
                            @if i == 0 {
                                td.num rowspan=(sources) data-estimate-ms=(d.restore_estimate_ms) data-rto-s=(d.rto_seconds) {
                                    (millis(d.restore_estimate_ms)) br; span.sub { (d.estimate_basis) }
                                    @if d.rto_seconds > 0 {
                                        br; span.sub { "RTO " (age(d.rto_seconds)) }
                                        @if d.estimate_over_rto { " " (badge("over-RTO")) }
                                    }
                                }
                                td rowspan=(sources) {
                                    @match last_drill.get(d.agent.as_str()) {
                                        Some(dr) => { (drill_summary(dr)) }
                                        None => { span.sub { "never drilled" } }
                                    }
                                }
                                td.num rowspan=(sources) data-suspect=(suspect.get(d.agent.as_str()).copied().unwrap_or(0)) {
                                    @match suspect.get(d.agent.as_str()) {
                                        Some(n) => { (badge("suspect")) " " (n) }
                                        None => { "0" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.sub { "Estimated downtime: restoring the device now, alone, from its last known good snapshots; "
            "measured: from this device's own restores and drills, assumed: from fleet-wide figures. "
            "Vulnerabilities: known advisories of the source's newest snapshot against the imported feed "
            "(lifeboat vulns); suspect snapshots: quarantined, or judged so by their ransomware signals "
            "(lifeboat anomalies)." }
    };
    Ok(page(&c.me, Section::Fleet, "Fleet", Some(60), body))
}

pub async fn device(State(c): State<Console>, Path(name): Path<String>) -> Page {
    let mut api = c.api.clone();
    let devices = api.list_devices(pb::Empty {}).await?.into_inner().devices;
    let Some(d) = devices.into_iter().find(|d| d.agent == name) else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("no device named {name:?}: the fleet page lists every enrolled device"),
        ));
    };
    let mut snapshots = api
        .list_snapshots(pb::ListSnapshotsRequest {
            agent: name.clone(),
            source: String::new(),
        })
        .await?
        .into_inner()
        .snapshots;
    snapshots.sort_by_key(|s| std::cmp::Reverse(s.received_unix_ms));
    let drills: Vec<pb::DrillInfo> = api
        .list_drills(pb::ListDrillsRequest {
            limit: 1000,
            ids: Vec::new(),
        })
        .await?
        .into_inner()
        .drills
        .into_iter()
        .filter(|dr| dr.agent == name)
        .collect();
    let body = html! {
        dl.facts {
            dt { "State" } dd { (badge(if d.connected { "connected" } else { "offline" })) }
            dt { "Tier" } dd { (d.tier) }
            dt { "Estimated downtime" } dd #estimate data-estimate-ms=(d.restore_estimate_ms) {
                (millis(d.restore_estimate_ms)) " (" (d.estimate_basis) ": "
                (bytes(d.rate_bytes_per_sec as u64)) "/s and " (millis(d.fixed_ms)) " per restore)"
            }
        }
        @if c.me.can_act() {
            p { a.button href=(format!("/drills/new?agent={}", encode(&name))) { "Drill this device…" } }
        }
        h2 { "Snapshots" }
        (charts::timeline(&snapshots, now_ms()))
        table #snapshots {
            thead { tr { th { "Snapshot" } th { "Source" } th { "Taken" } th.num { "Files" } th.num { "Size" } th.num { "New" } th { "State" } } }
            tbody {
                @for s in &snapshots {
                    tr id=(format!("snapshot-{}", s.id)) data-snapshot=(s.id) class=[(s.quarantined_unix_ms > 0).then_some("quarantined")] {
                        td.id { (short_id(&s.id)) }
                        td { (s.source) }
                        td { (time(s.received_unix_ms)) }
                        td.num { (s.files) }
                        td.num { (bytes(s.bytes)) }
                        td.num { (bytes(s.bytes_new)) }
                        td {
                            @if s.quarantined_unix_ms > 0 { (badge("quarantined")) " " span.sub { "since " (time(s.quarantined_unix_ms)) } }
                            @if s.locked_until_unix_ms > 0 { span.sub { " locked until " (time(s.locked_until_unix_ms)) } }
                        }
                    }
                }
            }
        }
        h2 { "Drills" }
        @if drills.is_empty() {
            p.sub { "Never drilled: the downtime estimate has no measurement of this device yet." }
        } @else {
            (charts::drill_bars(&drills))
            (drill_table(&drills))
        }
    };
    Ok(page(&c.me, Section::Fleet, &name, None, body))
}

fn drill_table(drills: &[pb::DrillInfo]) -> Markup {
    html! {
        table #drills-table {
            thead { tr {
                th { "Started" } th { "Device" } th { "Source" } th { "Snapshot" } th { "State" }
                th.num { "Size" } th.num { "Estimate" } th.num { "Actual" } th.num { "RTO" } th { "Error" }
            } }
            tbody {
                @for d in drills {
                    tr data-drill=(d.id) data-state=(d.state) data-estimate-ms=(d.estimate_ms) data-actual-ms=(d.actual_ms) {
                        td { (time(d.started_unix_ms)) }
                        td { a href=(device_href(&d.agent)) { (d.agent) } }
                        td { (d.source) }
                        td.id { (short_id(&d.snapshot)) }
                        td { (badge(&d.state)) }
                        td.num { (bytes(d.bytes)) }
                        td.num { (millis(d.estimate_ms)) br; span.sub { (d.estimate_basis) } }
                        td.num { @if d.actual_ms > 0 { (millis(d.actual_ms)) } @else { "-" } }
                        td.num data-over-rto=(d.over_rto) {
                            @if d.rto_ms > 0 { (millis(d.rto_ms)) } @else { "-" }
                            @if d.over_rto { br; (badge("over-RTO")) }
                        }
                        td.error { (d.error) }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct DrillsQuery {
    started: Option<usize>,
}

pub async fn drills(State(c): State<Console>, Query(q): Query<DrillsQuery>) -> Page {
    let mut api = c.api.clone();
    let drills = api
        .list_drills(pb::ListDrillsRequest {
            limit: 200,
            ids: Vec::new(),
        })
        .await?
        .into_inner()
        .drills;
    // A drill just started may still be queued (its agent busy, the machine loaded): the
    // page follows it from then, not only once it runs.
    let active = drills
        .iter()
        .any(|d| d.state == DrillState::Queued || d.state == DrillState::Running);
    let failed = drills
        .iter()
        .filter(|d| d.state == DrillState::Failed)
        .count();
    let body = html! {
        @if let Some(n) = q.started {
            p.notice { "Started " (n) " drill" (if n == 1 { "" } else { "s" }) "; this page follows them." }
        }
        div.cards {
            div.card { div.figure { (drills.len()) } div.what { "drills (newest 200)" } }
            div.card { div.figure #failed-count { (failed) } div.what { "failed" } }
        }
        @if c.me.can_act() {
            p { a.button href="/drills/new" { "Start a drill…" } }
        }
        @if drills.is_empty() {
            p.sub { "No drills yet." }
        } @else {
            (charts::drill_bars(&drills))
            (drill_table(&drills))
        }
    };
    Ok(page(
        &c.me,
        Section::Drills,
        "Drills",
        active.then_some(2),
        body,
    ))
}

#[derive(Deserialize)]
pub struct DrillAsk {
    agent: Option<String>,
}

/// What a drill of the chosen device would do, and the button that starts it.
pub async fn confirm_drill(State(c): State<Console>, Query(q): Query<DrillAsk>) -> Page {
    let mut api = c.api.clone();
    let devices = api.list_devices(pb::Empty {}).await?.into_inner().devices;
    let chosen = q.agent.as_deref().filter(|a| !a.is_empty());
    let device = chosen.and_then(|a| devices.iter().find(|d| d.agent == a));
    if let (Some(a), None) = (chosen, device) {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("no device named {a:?}"),
        ));
    }
    let body = html! {
        @if !c.me.can_act() {
            p.warning { "Your role (" (c.me.role) ") may not start drills; an operator or admin can." }
        }
        @match device {
            None => {
                form method="get" action="/drills/new" {
                    label { "Device " select name="agent" {
                        @for d in &devices { option value=(d.agent) { (d.agent) } }
                    } }
                    " " button type="submit" { "Next" }
                }
            }
            Some(d) => {
                p { "A drill restores each source of " strong { (d.agent) } " from its last snapshot into a sandbox "
                    "on the agent, verifies every file, times it, and removes the sandbox. The device itself is not touched." }
                table {
                    thead { tr { th { "Source" } th { "Snapshot" } th { "Taken" } th.num { "Estimated time" } } }
                    tbody { @for s in &d.sources {
                        tr { td { (s.source) } td.id { (short_id(&s.last_snapshot)) } td { (time(s.last_unix_ms)) }
                             td.num { (millis(s.restore_estimate_ms)) } }
                    } }
                }
                form.confirm method="post" action="/drills" {
                    (csrf_field(c.gate.csrf()))
                    input type="hidden" name="agent" value=(d.agent);
                    p { button #confirm type="submit" { "Start the drill" } " " a.button.secondary href=(device_href(&d.agent)) { "Cancel" } }
                }
            }
        }
    };
    Ok(page(&c.me, Section::Drills, "Start a drill", None, body))
}

#[derive(Deserialize)]
pub struct DrillForm {
    csrf: String,
    agent: String,
}

pub async fn start_drill(
    State(c): State<Console>,
    Form(f): Form<DrillForm>,
) -> Result<Response, PageError> {
    check_form(&c, &f.csrf)?;
    let started = c
        .api
        .clone()
        .run_drill(pb::DrillRequest {
            agents: vec![f.agent],
            ..Default::default()
        })
        .await?
        .into_inner()
        .drills;
    Ok(Redirect::to(&format!("/drills?started={}", started.len())).into_response())
}

fn check_form(c: &Console, csrf: &str) -> Result<(), PageError> {
    if c.gate.is_csrf(csrf) {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "this form did not come from the dashboard's own page (or the dashboard restarted): reload the page and try again",
        ))
    }
}

pub async fn plans(State(c): State<Console>) -> Page {
    let plans = c
        .api
        .clone()
        .list_plans(pb::Empty {})
        .await?
        .into_inner()
        .plans;
    let running = plans.iter().any(|p| p.state == PlanState::Running);
    let body = html! {
        @if plans.is_empty() {
            p.sub { "No recovery plans. Make one with " code { "lifeboat recover plan --before TIME" } "." }
        } @else {
            table #plans {
                thead { tr {
                    th { "Plan" } th { "State" } th { "Created" } th { "By" } th { "Restore points before" }
                    th.num { "Devices" } th.num { "Estimated makespan" } th.num { "Actual" }
                } }
                tbody { @for p in &plans {
                    tr data-plan=(p.id) data-state=(p.state) {
                        td { a href=(format!("/plans/{}", encode(&p.id))) { (p.id) } }
                        td { (badge(&p.state)) }
                        td { (time(p.created_unix_ms)) }
                        td { (p.created_by) }
                        td { (time(p.before_unix_ms)) }
                        td.num { (p.devices.len()) }
                        td.num { (millis(p.makespan_ms)) }
                        td.num { @if p.finished_unix_ms > 0 { (millis((p.finished_unix_ms - p.started_unix_ms).max(0) as u64)) } @else { "-" } }
                    }
                } }
            }
        }
    };
    Ok(page(
        &c.me,
        Section::Plans,
        "Recovery plans",
        running.then_some(2),
        body,
    ))
}

async fn get_plan(c: &Console, id: String) -> Result<pb::PlanInfo, PageError> {
    Ok(c.api
        .clone()
        .get_plan(pb::NameRef { name: id })
        .await?
        .into_inner())
}

pub async fn plan(State(c): State<Console>, Path(id): Path<String>) -> Page {
    let p = get_plan(&c, id).await?;
    let running = p.state == PlanState::Running;
    let now = now_ms();
    let done = p.devices.iter().filter(|d| d.state == "done").count();
    let failed = p.devices.iter().filter(|d| d.state == "failed").count();
    let body = html! {
        div.cards #plan data-state=(p.state) data-eta-ms=(p.eta_ms) {
            div.card { div.figure { (badge(&p.state)) } div.what { "state" } }
            div.card { div.figure #back-count { (done) " / " (p.devices.len()) } div.what { "devices back" } }
            div.card { div.figure { (failed) } div.what { "failed" } }
            div.card { div.figure { (millis(p.makespan_ms)) } div.what { "estimated makespan" } }
            @if running {
                div.card { div.figure #eta { (millis(p.eta_ms)) } div.what { "fleet ETA (until the last device is back)" } }
            }
            @if p.finished_unix_ms > 0 {
                div.card { div.figure { (millis((p.finished_unix_ms - p.started_unix_ms).max(0) as u64)) } div.what { "took" } }
                div.card { div.figure { (millis(p.actual_longest_downtime_ms)) } div.what { "longest downtime (estimated " (millis(p.longest_downtime_ms)) ")" } }
            }
        }
        dl.facts {
            dt { "Restore points" } dd { "last known good before " (time(p.before_unix_ms)) @if p.forced { " (quarantined ones allowed)" } }
            dt { "Limits" } dd { (p.concurrency) " devices at once"
                @if p.bandwidth_bytes_per_sec > 0 { ", " (bytes(p.bandwidth_bytes_per_sec)) "/s" } ", " (p.mode) }
            dt { "Created" } dd { (time(p.created_unix_ms)) " by " (p.created_by) }
            @if p.started_unix_ms > 0 { dt { "Started" } dd { (time(p.started_unix_ms)) } }
        }
        @for w in &p.warnings { p.warning { (w) } }
        @if p.state == PlanState::Planned && c.me.can_act() {
            p { a.button href=(format!("/plans/{}/run", encode(&p.id))) { "Run this plan…" } }
        }
        (charts::plan_gantt(&p, now))
        table #plan-devices {
            thead { tr {
                th { "Tier" } th { "Device" } th { "Restored onto" } th.num { "Size" } th { "State" }
                th.num { "Estimated window" } th.num { "Actual window" } th { "Error" }
            } }
            tbody { @for d in &p.devices {
                tr data-device=(d.agent) data-state=(d.state) data-est-finish-ms=(d.est_finish_ms) {
                    td { (d.tier) }
                    td { a href=(device_href(&d.agent)) { (d.agent) } }
                    td { (d.target_agent) }
                    td.num { (bytes(d.bytes)) }
                    td { (badge(&d.state)) }
                    td.num { (millis(d.est_start_ms)) " – " (millis(d.est_finish_ms)) br; span.sub { (d.estimate_basis) } }
                    td.num { @if d.state == "done" || d.state == "failed" { (millis(d.actual_start_ms)) " – " (millis(d.actual_finish_ms)) }
                             @else if d.state == "running" { "since " (millis(d.actual_start_ms)) } @else { "-" } }
                    td.error { (d.error) }
                }
            } }
        }
    };
    Ok(page(
        &c.me,
        Section::Plans,
        &format!("Plan {}", p.id),
        running.then_some(2),
        body,
    ))
}

pub async fn confirm_plan_run(State(c): State<Console>, Path(id): Path<String>) -> Page {
    let p = get_plan(&c, id).await?;
    let body = html! {
        @if p.state != PlanState::Planned {
            p.warning { "This plan is " (p.state) "; only a planned plan can be run." }
        } @else {
            @if !c.me.can_act() {
                p.warning { "Your role (" (c.me.role) ") may not run plans; an operator or admin can." }
            }
            p { "Running it restores " strong { (p.devices.len()) " devices" } " over their current contents, "
                (p.concurrency) " at a time, in tier order (" (p.mode) " mode). Estimated makespan: "
                strong { (millis(p.makespan_ms)) } "." }
            @for w in &p.warnings { p.warning { (w) } }
            form.confirm method="post" action=(format!("/plans/{}/run", encode(&p.id))) {
                (csrf_field(c.gate.csrf()))
                p { button #confirm type="submit" { "Run the plan now" } " " a.button.secondary href=(format!("/plans/{}", encode(&p.id))) { "Cancel" } }
            }
        }
    };
    Ok(page(
        &c.me,
        Section::Plans,
        &format!("Run plan {}", p.id),
        None,
        body,
    ))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn run_plan(
    State(c): State<Console>,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    check_form(&c, &f.csrf)?;
    let p = c
        .api
        .clone()
        .run_plan(pb::NameRef { name: id })
        .await?
        .into_inner();
    Ok(Redirect::to(&format!("/plans/{}", encode(&p.id))).into_response())
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    since: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    text: Option<String>,
}

const AUDIT_SHOWN: usize = 500;

pub async fn audit(State(c): State<Console>, Query(q): Query<AuditQuery>) -> Page {
    let mut api = c.api.clone();
    let since = q
        .since
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "7d".into());
    let since_ms = crate::args::since_ms(Some(&since))
        .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let entries = crate::connect::audit_entries(&mut api, since_ms)
        .await
        .map_err(|e| PageError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let verification = api.verify_audit(pb::Empty {}).await?.into_inner();
    // The form sends an empty field for "any".
    let given = |f: &Option<String>| f.clone().filter(|v| !v.is_empty());
    let filter = crate::args::AuditFilter {
        actor: given(&q.actor),
        action: given(&q.action),
        outcome: given(&q.outcome),
    };
    let text = q.text.as_deref().unwrap_or("").to_lowercase();
    let mut shown: Vec<&pb::AuditEntry> = entries
        .iter()
        .filter(|e| filter.keeps(e))
        .filter(|e| {
            text.is_empty()
                || e.target.to_lowercase().contains(&text)
                || e.detail.to_lowercase().contains(&text)
        })
        .collect();
    let matched = shown.len();
    shown.reverse();
    shown.truncate(AUDIT_SHOWN);
    let choices = |f: fn(&pb::AuditEntry) -> &str| {
        let mut v: Vec<&str> = entries.iter().map(f).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let select = |name: &str, current: &Option<String>, values: Vec<&str>| {
        html! {
            select name=(name) {
                option value="" { "any" }
                @for v in values { option value=(v) selected[current.as_deref() == Some(v)] { (v) } }
            }
        }
    };
    let body = html! {
        @if verification.ok {
            p.notice #chain { "Hash chain verified: " (verification.entries) " entries, none altered or missing." }
        } @else {
            p.warning #chain { "The hash chain is broken at entry " (verification.broken_seq) ": " (verification.reason) }
        }
        form.filters method="get" action="/audit" {
            label { "Since (time or age)" input name="since" value=(since); }
            label { "Actor" (select("actor", &q.actor, choices(|e| &e.actor))) }
            label { "Action" (select("action", &q.action, choices(|e| &e.action))) }
            label { "Outcome" (select("outcome", &q.outcome, choices(|e| &e.outcome))) }
            label { "Target or detail contains" input name="text" value=(q.text.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        p.sub #audit-count data-matched=(matched) {
            (matched) " of " (entries.len()) " entries since " (time(since_ms)) " match"
            @if matched > AUDIT_SHOWN { "; the newest " (AUDIT_SHOWN) " are shown" }
        }
        table #audit {
            thead { tr { th.num { "#" } th { "Time" } th { "Actor" } th { "Action" } th { "Target" } th { "Outcome" } th { "Detail" } } }
            tbody { @for e in shown {
                tr data-seq=(e.seq) {
                    td.num { (e.seq) } td { (time(e.unix_ms)) } td { (e.actor) } td { (e.action) }
                    td { (e.target) } td { (badge(&e.outcome)) } td { code { (e.detail) } }
                }
            } }
        }
    };
    Ok(page(&c.me, Section::Audit, "Audit log", None, body))
}

pub async fn not_found(State(c): State<Console>) -> Response {
    let body =
        html! { p { "There is no such page. " a href="/" { "The fleet" } " lists every device." } };
    (
        StatusCode::NOT_FOUND,
        page(&c.me, Section::Fleet, "Not found", None, body),
    )
        .into_response()
}
