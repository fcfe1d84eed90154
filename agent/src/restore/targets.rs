//! Where running restores write, so that two never write the same place at once.
//!
//! A restore job claims its destination (a directory, or a Docker volume) for as long as
//! it runs; a second job whose destination is the same directory, one inside it or one
//! around it, or the same volume, is refused at its start, naming the job that writes
//! there. Two restores of different snapshots into one directory would otherwise each
//! rename their files into place and leave a tree that is neither snapshot, both jobs
//! reporting success: the split brain a controller cut off from this agent could cause by
//! starting a restore again while the first one still ran here (checklist row A10). The
//! same job delivered twice never gets here (`session::start_job` runs a job id once).

use std::path::PathBuf;
use std::sync::Mutex;

use crate::AgentError;

/// A restore's destination on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Dir(PathBuf),
    Volume(String),
}

impl Target {
    fn overlaps(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Dir(a), Target::Dir(b)) => a.starts_with(b) || b.starts_with(a),
            (Target::Volume(a), Target::Volume(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Dir(p) => write!(f, "directory {}", p.display()),
            Target::Volume(v) => write!(f, "volume {v}"),
        }
    }
}

/// The destinations of the restores running on this agent, each with its job.
#[derive(Debug, Default)]
pub struct Targets(Mutex<Vec<(Target, String)>>);

/// A destination held by a job until this is dropped (the job ended, however it ended).
#[derive(Debug)]
pub struct Claim<'a> {
    targets: &'a Targets,
    job: String,
}

impl Targets {
    /// Claims `target` for `job`, or says which running job writes there.
    pub fn claim(&self, target: Target, job: &str) -> Result<Claim<'_>, AgentError> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((theirs, by)) = held.iter().find(|(t, _)| t.overlaps(&target)) {
            let place = if *theirs == target {
                String::new()
            } else {
                format!(" (its {theirs})")
            };
            return Err(AgentError::Restore(format!(
                "restore job {by} is writing {target}{place} on this agent; two restores \
                 never write one place at once: wait for job {by} to end (lifeboat jobs \
                 watch {by}), or restore somewhere else"
            )));
        }
        held.push((target, job.to_string()));
        Ok(Claim {
            targets: self,
            job: job.to_string(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut held = self.targets.0.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(_, job)| *job != self.job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> Target {
        Target::Dir(PathBuf::from(p))
    }

    #[test]
    fn one_place_one_writer_until_it_ends() {
        let targets = Targets::default();
        let first = targets.claim(dir("/srv/restore/web"), "j1").expect("free");
        for (place, what) in [
            (dir("/srv/restore/web"), "the same directory"),
            (dir("/srv/restore/web/data"), "one inside it"),
            (dir("/srv/restore"), "one around it"),
        ] {
            let e = targets.claim(place, "j2").expect_err(what).to_string();
            assert!(e.contains("restore job j1 is writing"), "{what}: {e}");
        }
        // Components, not characters: /srv/restore/web2 is another place.
        let beside = targets
            .claim(dir("/srv/restore/web2"), "j3")
            .expect("beside");
        let volume = targets
            .claim(Target::Volume("pg".into()), "j4")
            .expect("volume");
        assert!(targets.claim(Target::Volume("pg".into()), "j5").is_err());
        drop(first);
        let again = targets
            .claim(dir("/srv/restore/web"), "j6")
            .expect("free again");
        drop((again, beside, volume));
        assert!(targets.claim(Target::Volume("pg".into()), "j7").is_ok());
    }
}
