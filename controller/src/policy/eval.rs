//! Policy evaluation: which agents a policy selects, which of their sources it covers, a
//! device's tier; the scheduler, retention, drills, plans and the devices view share it.

use std::collections::HashSet;

use lifeboat_proto::pb;

use super::*;
use crate::Controller;
use crate::catalog::AgentRow;
use crate::error::ApiError;

/// The policies in the catalog, in scheduling order (tier, then name).
pub fn policies(ctl: &Controller) -> Result<Vec<Policy>, ApiError> {
    let mut out = ctl
        .catalog
        .policies()?
        .into_iter()
        .map(|(_, spec, _)| spec.parse::<Policy>())
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.tier.cmp(&b.tier).then(a.name.cmp(&b.name)));
    Ok(out)
}

pub(super) fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// How an image is named as a source: `image:` and its first tag, or its id when it has
/// none.
pub fn image_source(i: &pb::DockerImage) -> String {
    let name = i
        .repo_tags
        .iter()
        .find(|t| t.as_str() != "<none>:<none>")
        .cloned()
        .unwrap_or_else(|| i.id.clone());
    format!("image:{name}")
}

/// The sources a policy means on one agent, from what the agent reported.
pub fn sources_for(policy: &Policy, agent: &AgentRow) -> Vec<String> {
    let inv = crate::restores::inventory(agent);
    let paths: Vec<&str> = agent.sources.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut out = Vec::new();
    for s in &policy.sources {
        match s.as_str() {
            "all-images" => out.extend(inv.images.iter().map(image_source)),
            "all-volumes" => out.extend(inv.volumes.iter().map(|v| format!("volume:{}", v.name))),
            s if s.starts_with("image:") || s.starts_with("volume:") => out.push(s.to_string()),
            s if s.contains(['*', '?']) => {
                out.extend(paths.iter().filter(|p| glob(s, p)).map(|p| p.to_string()))
            }
            s if paths.contains(&s) => out.push(s.to_string()),
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

/// Whether `source` of `agent` falls under `policy`.
pub fn covers(policy: &Policy, agent: &AgentRow, source: &str) -> bool {
    policy.selects(&agent.labels)
        && policy.sources.iter().any(|s| match s.as_str() {
            "all-images" => source.starts_with("image:"),
            "all-volumes" => source.starts_with("volume:"),
            p if p.contains(['*', '?']) && !p.contains(':') => glob(p, source),
            p => p == source,
        })
}

/// A device's recovery time objective in seconds: the shortest `rto` of the policies that
/// select it (0: none set).
pub fn rto_of(policies: &[Policy], agent: &AgentRow) -> u64 {
    policies
        .iter()
        .filter(|p| p.selects(&agent.labels) && p.rto_s > 0)
        .map(|p| p.rto_s)
        .min()
        .unwrap_or(0)
}

/// A device's tier: the lowest tier of the policies that select it (0 without any).
pub fn tier_of(policies: &[Policy], agent: &AgentRow) -> u32 {
    policies
        .iter()
        .filter(|p| p.selects(&agent.labels))
        .map(|p| p.tier)
        .min()
        .unwrap_or(0)
}
