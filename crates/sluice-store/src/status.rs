//! The states of the rows the deployment core keeps: promotions,
//! deployments (and what caused them), instances, experiments and
//! incidents. Enums in the code, their names as text in the database, the
//! API, the CLI and the pages.

/// An enum stored as text: `as_str`, `parse`, `Display`, `Serialize`, and
/// `TryFrom<String>` for reading a row (`#[sqlx(try_from = "String")]`).
macro_rules! stored_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                $name::parse(&text)
                    .ok_or_else(|| format!("unknown {} `{text}`", stringify!($name)))
            }
        }
    };
}

stored_enum!(
    /// Where a promotion is.
    PromotionStatus {
        /// Waiting for its gates (approvals, soak, rules, freezes).
        Pending = "pending",
        Deploying = "deploying",
        Done = "done",
        Failed = "failed",
        Rejected = "rejected",
        /// A later promotion took a newer release to the environment first.
        Superseded = "superseded",
    }
);

stored_enum!(
    /// Where a deployment is.
    DeploymentStatus {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Its new release was taken out again (an experiment rolled back).
        RolledBack = "rolled_back",
    }
);

stored_enum!(
    /// Why a deployment was made, which decides how it runs: an
    /// experiment's deployment is an A/B experiment, and only automatic and
    /// promoted ones give way to a newer release asked for meanwhile.
    DeploymentCause {
        /// The first environment, straight after a green mainline run.
        Auto = "auto",
        Promotion = "promotion",
        Rollback = "rollback",
        /// Bringing an environment back to its recorded release at start.
        Reconcile = "reconcile",
        /// An environment below its declared count, brought back.
        Heal = "heal",
        /// `sluice ab start`: B beside A.
        Experiment = "experiment",
    }
);

stored_enum!(
    /// How a deployment puts its release in.
    DeploymentStrategy {
        /// One new instance healthy, then one old one drained, in turn.
        Rolling = "rolling",
        /// The whole new group healthy, then the route switched at once.
        BlueGreen = "blue-green",
        /// B beside A, its share of users ramped by the experiment.
        Ab = "ab",
    }
);

stored_enum!(
    /// What an instance is doing.
    InstanceState {
        Starting = "starting",
        Healthy = "healthy",
        Unhealthy = "unhealthy",
        Draining = "draining",
        Stopped = "stopped",
    }
);

stored_enum!(
    /// Where an experiment is.
    ExperimentStatus {
        /// Opened: B's group is starting, and no user sees B yet.
        Starting = "starting",
        Running = "running",
        Paused = "paused",
        /// Past `max_step` without a decision: waiting for a person.
        Held = "held",
        Promoted = "promoted",
        RolledBack = "rolled_back",
        Aborted = "aborted",
        /// Its split did not match the weights (sample-ratio mismatch).
        Broken = "broken",
        /// A test that ended keeping A.
        Concluded = "concluded",
    }
);

stored_enum!(
    /// What a person may tell a running experiment.
    ExperimentCommand {
        Pause = "pause",
        Resume = "resume",
        /// Take B to 100% now.
        Promote = "promote",
        /// Take B away now.
        Abort = "abort",
    }
);

stored_enum!(
    /// What opened an incident.
    IncidentTrigger {
        /// A person (`sluice incident open`).
        Manual = "manual",
        /// An instance that stayed unhealthy.
        Health = "health",
        /// A deployment that failed.
        Deployment = "deployment",
        /// An experiment that was rolled back.
        Experiment = "experiment",
        /// An environment found below its declared instances.
        Heal = "heal",
    }
);

stored_enum!(
    /// Where an incident is.
    IncidentStatus {
        Open = "open",
        Mitigated = "mitigated",
        Resolved = "resolved",
    }
);

impl PromotionStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed | Self::Rejected | Self::Superseded
        )
    }
}

impl DeploymentCause {
    /// Whether a newer release asked for the same environment meanwhile
    /// supersedes this deployment while it waits.
    pub fn gives_way(self) -> bool {
        matches!(self, Self::Auto | Self::Promotion)
    }
}

impl ExperimentStatus {
    /// Whether it still runs (and takes commands).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Paused | Self::Held
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_reads_back_as_itself() {
        fn round_trip<T: Copy + PartialEq + std::fmt::Debug + TryFrom<String>>(
            all: &[T],
            text: impl Fn(T) -> &'static str,
        ) {
            for &value in all {
                assert_eq!(T::try_from(text(value).to_string()).ok(), Some(value));
            }
        }
        round_trip(PromotionStatus::ALL, PromotionStatus::as_str);
        round_trip(DeploymentStatus::ALL, DeploymentStatus::as_str);
        round_trip(DeploymentCause::ALL, DeploymentCause::as_str);
        round_trip(InstanceState::ALL, InstanceState::as_str);
        round_trip(ExperimentStatus::ALL, ExperimentStatus::as_str);
        round_trip(IncidentStatus::ALL, IncidentStatus::as_str);
        round_trip(ExperimentCommand::ALL, ExperimentCommand::as_str);
        round_trip(IncidentTrigger::ALL, IncidentTrigger::as_str);
        round_trip(DeploymentStrategy::ALL, DeploymentStrategy::as_str);
        assert_eq!(
            ExperimentStatus::try_from("lost".to_string()).unwrap_err(),
            "unknown ExperimentStatus `lost`"
        );
    }

    #[test]
    fn the_json_is_the_stored_text() {
        assert_eq!(
            serde_json::to_string(&ExperimentStatus::RolledBack).unwrap(),
            "\"rolled_back\""
        );
    }

    #[test]
    fn which_are_open_final_or_give_way() {
        let open: Vec<_> = ExperimentStatus::ALL
            .iter()
            .filter(|s| s.is_open())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(open, ["starting", "running", "paused", "held"]);
        let final_: Vec<_> = PromotionStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(final_, ["done", "failed", "rejected", "superseded"]);
        let give_way: Vec<_> = DeploymentCause::ALL
            .iter()
            .filter(|c| c.gives_way())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(give_way, ["auto", "promotion"]);
    }
}
