//! Applying a policy file to the catalog, audited.

use super::file::parse_file;
use crate::Controller;
use crate::error::ApiError;

/// What applying a policy file did to one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Changed,
    Unchanged,
}

impl Change {
    /// The wire form (`PolicyChange.change`).
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// What applying a policy file did.
#[derive(Debug)]
pub enum Applied {
    /// Each policy of the file, and what happened to it.
    Changes(Vec<(String, Change)>),
    /// The file's errors, each with its line; nothing was applied.
    Invalid(Vec<String>),
}

/// Applies a policy file: every policy in it is created or replaced (audited as
/// `actor`), or, with `dry_run`, only compared.
pub fn apply(
    ctl: &Controller,
    actor: &str,
    file: &str,
    text: &str,
    dry_run: bool,
) -> Result<Applied, ApiError> {
    let policies = match parse_file(file, text) {
        Ok(p) => p,
        Err(errors) => return Ok(Applied::Invalid(errors)),
    };
    let existing: std::collections::HashMap<String, String> = ctl
        .catalog
        .policies()?
        .into_iter()
        .map(|(n, spec, _)| (n, spec))
        .collect();
    let now = ctl.clock.now_ms();
    let mut changes = Vec::new();
    for p in policies {
        let spec = serde_json::to_string(&p)
            .map_err(|e| ApiError::internal(format!("encoding policy: {e}")))?;
        let change = match existing.get(&p.name) {
            None => Change::Created,
            Some(old) if *old == spec => Change::Unchanged,
            Some(_) => Change::Changed,
        };
        if !dry_run && change != Change::Unchanged {
            ctl.catalog.put_policy(&p.name, &spec, now)?;
            ctl.audit.ok(
                actor,
                if change == Change::Created {
                    "policy.create"
                } else {
                    "policy.change"
                },
                &p.name,
                serde_json::from_str(&spec).unwrap_or_default(),
            );
        }
        changes.push((p.name, change));
    }
    Ok(Applied::Changes(changes))
}
