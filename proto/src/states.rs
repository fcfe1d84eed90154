//! The states of recovery plans, their devices and sources, and drills, and the
//! consistency modes of a volume backup. Their wire form (`PlanInfo.state`,
//! `PlanDevice.state`, `PlanSource.state`, `DrillInfo.state`, `BackupJob.consistency`) and
//! stored form is a lowercase word, which operators' scripts read from `--json`; this module is
//! the one mapping between those words and the enums the code decides with.
//!
//! A stored or received word compares directly with a state (`plan.state == PlanState::Running`)
//! and is set from one (`plan.state = PlanState::Running.into()`).

macro_rules! word_states {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every state, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire and stored word.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }

            /// The state a word names, if any.
            pub fn parse(word: &str) -> Option<$name> {
                match word {
                    $($word => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for String {
            fn from(s: $name) -> String {
                s.as_str().to_string()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, s: &$name) -> bool {
                self == s.as_str()
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, s: &$name) -> bool {
                self == s.as_str()
            }
        }
    };
}

word_states!(
    /// A recovery plan's state.
    PlanState {
        /// Made, not started: `lifeboat recover run` starts it.
        Planned = "planned",
        Running = "running",
        /// Every device is back.
        Finished = "finished",
        /// It ended with at least one device that could not be restored.
        Failed = "failed",
    }
);

word_states!(
    /// The state of one device of a plan, and of each of its sources.
    StepState {
        Pending = "pending",
        Running = "running",
        Done = "done",
        Failed = "failed",
    }
);

word_states!(
    /// A restore drill's state.
    DrillState {
        Queued = "queued",
        Running = "running",
        Passed = "passed",
        Failed = "failed",
    }
);

word_states!(
    /// How a volume is kept consistent while a backup reads it (`BackupJob.consistency`, a
    /// policy's `consistency`; the empty word is the agent's choice: pause when a running
    /// container uses the volume, else none).
    Consistency {
        /// Pause the running containers that use the volume for the read.
        Pause = "pause",
        /// Run the hook's commands in a container before and after.
        Hook = "hook",
        /// Read as is, and record that.
        None = "none",
    }
);

word_states!(
    /// What an estimate rests on (`DeviceInfo.estimate_basis`, `PlanDevice.estimate_basis`,
    /// `DrillInfo.estimate_basis`).
    Basis {
        /// Restores or drills of this device were timed.
        Measured = "measured",
        /// None ran here yet: the fleet's rates stand in.
        Assumed = "assumed",
    }
);

impl Basis {
    pub fn of(measured: bool) -> Basis {
        if measured {
            Basis::Measured
        } else {
            Basis::Assumed
        }
    }
}

impl StepState {
    /// Whether nothing more will happen to it.
    pub fn ended(self) -> bool {
        matches!(self, StepState::Done | StepState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_maps_back_to_its_state() {
        for s in PlanState::ALL {
            assert_eq!(PlanState::parse(s.as_str()), Some(*s));
            assert_eq!(String::from(*s), *s);
        }
        for s in StepState::ALL {
            assert_eq!(StepState::parse(s.as_str()), Some(*s));
        }
        for s in DrillState::ALL {
            assert_eq!(DrillState::parse(s.as_str()), Some(*s));
        }
        for s in Consistency::ALL {
            assert_eq!(Consistency::parse(s.as_str()), Some(*s));
        }
        assert_eq!(Consistency::parse(""), None);
        assert_eq!(PlanState::parse("Running"), None);
        assert!("done" == &StepState::Done);
    }
}
