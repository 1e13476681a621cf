//! Who may do what: one table of operation → least role, enforced where a
//! request enters (each API handler, each dashboard form) and nowhere else.
//! The CD and CI engines trust their caller.

use axum::Extension;
use axum::handler::Handler;
use sluice_store::Role;

use crate::AppState;

/// Everything a token can ask Sluice to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Any page or `GET`: runs, logs, releases, environments, incidents…
    Read,
    CancelRun,
    AddRepository,
    /// Reading secrets' names, setting and deleting secrets.
    ManageSecrets,
    ManageTokens,
    Promote,
    /// Approving or rejecting a promotion.
    DecidePromotion,
    OverrideFreeze,
    /// Rolling back or unpinning an environment.
    Rollback,
    StartExperiment,
    /// Pausing, resuming, promoting or aborting an experiment.
    SteerExperiment,
    ReportGoal,
    /// Opening an incident, moving it on, writing its postmortem.
    HandleIncident,
    /// Adding or disabling a rule.
    ManageRules,
    /// Replaying a rule that only reads what was recorded.
    ReplayRule,
    /// Replaying a rule that starts the release (a health check): it runs code.
    ReplayRuleStartingInstance,
    /// Adding, removing or testing a notification channel.
    ManageChannels,
    RetryMessage,
    /// What an agent does: register, claim jobs, report on them.
    AgentWork,
}

impl Operation {
    /// The least role that may do it. The one table: a change here changes
    /// the API, the dashboard's buttons and its forms together.
    pub const fn role(self) -> Role {
        use Operation::*;
        match self {
            Read | ReplayRule => Role::Viewer,
            CancelRun | Promote | ReportGoal | HandleIncident | RetryMessage => Role::Developer,
            DecidePromotion
            | Rollback
            | StartExperiment
            | SteerExperiment
            | ManageRules
            | ReplayRuleStartingInstance => Role::Approver,
            AddRepository | ManageSecrets | ManageTokens | OverrideFreeze | ManageChannels => {
                Role::Admin
            }
            AgentWork => Role::Agent,
        }
    }

    /// What it is, as a refusal names it ("approving a promotion needs…").
    pub const fn doing(self) -> &'static str {
        use Operation::*;
        match self {
            Read => "reading",
            CancelRun => "cancelling a run",
            AddRepository => "adding a repository",
            ManageSecrets => "managing secrets",
            ManageTokens => "managing tokens",
            Promote => "asking for a promotion",
            DecidePromotion => "deciding a promotion",
            OverrideFreeze => "overriding a freeze",
            Rollback => "rolling back or unpinning",
            StartExperiment => "starting an experiment",
            SteerExperiment => "steering an experiment",
            ReportGoal => "reporting a goal",
            HandleIncident => "handling an incident",
            ManageRules => "adding or disabling a rule",
            ReplayRule => "replaying a rule",
            ReplayRuleStartingInstance => "replaying a rule that starts the release",
            ManageChannels => "managing channels",
            RetryMessage => "sending a message again",
            AgentWork => "an agent's work",
        }
    }

    /// Whether `role` may do it. An agent's token does an agent's work and
    /// nothing else, and only an agent's token does it: a person's token
    /// cannot pose as an agent, nor a stolen agent's token read anything.
    pub fn allows(self, role: Role) -> bool {
        match (self, role) {
            (Operation::AgentWork, role) => role == Role::Agent,
            (_, Role::Agent) => false,
            (operation, role) => role >= operation.role(),
        }
    }

    /// The refusal for `who`, who holds `role`.
    pub fn refusal(self, who: &str, role: Role) -> String {
        format!(
            "{} needs the {} role; `{who}` has {role}",
            capitalised(self.doing()),
            self.role()
        )
    }

    /// Who can give the missing role.
    pub const fn ask(self) -> &'static str {
        match self.role() {
            Role::Admin => "ask an admin",
            Role::Approver => "ask an admin for an approver token",
            Role::Developer => "ask an admin for a developer token",
            Role::Viewer => "sign in with a token",
            Role::Agent => "ask an admin for an agent token",
        }
    }
}

/// `handler`, reached only by callers whose role allows `operation`: the
/// route carries the operation, and the [`Caller`](crate::auth::Caller)
/// extractor refuses before anything else of the request (its body) is read.
pub fn needs<H, T>(operation: Operation, handler: H) -> impl Handler<T, AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    handler.layer(Extension(operation))
}

pub(crate) fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::Operation::*;
    use super::*;

    #[test]
    fn the_table() {
        let table = [
            (Read, Role::Viewer),
            (ReplayRule, Role::Viewer),
            (CancelRun, Role::Developer),
            (Promote, Role::Developer),
            (ReportGoal, Role::Developer),
            (HandleIncident, Role::Developer),
            (RetryMessage, Role::Developer),
            (DecidePromotion, Role::Approver),
            (Rollback, Role::Approver),
            (StartExperiment, Role::Approver),
            (SteerExperiment, Role::Approver),
            (ManageRules, Role::Approver),
            (ReplayRuleStartingInstance, Role::Approver),
            (AddRepository, Role::Admin),
            (ManageSecrets, Role::Admin),
            (ManageTokens, Role::Admin),
            (OverrideFreeze, Role::Admin),
            (ManageChannels, Role::Admin),
            (AgentWork, Role::Agent),
        ];
        for (operation, role) in table {
            assert_eq!(operation.role(), role, "{operation:?}");
        }
    }

    #[test]
    fn a_role_may_do_what_lower_roles_may() {
        let roles = [Role::Viewer, Role::Developer, Role::Approver, Role::Admin];
        for operation in [Read, Promote, SteerExperiment, ManageTokens] {
            let allowed: Vec<bool> = roles.iter().map(|r| operation.allows(*r)).collect();
            assert!(allowed.windows(2).all(|w| w[0] <= w[1]), "{operation:?}");
            assert!(operation.allows(Role::Admin));
        }
        assert!(!ReplayRuleStartingInstance.allows(Role::Developer));
    }

    #[test]
    fn an_agent_token_does_an_agent_s_work_and_nothing_else() {
        assert!(AgentWork.allows(Role::Agent));
        for role in [Role::Viewer, Role::Developer, Role::Approver, Role::Admin] {
            assert!(!AgentWork.allows(role), "{role}");
        }
        for operation in [Read, ReplayRule, CancelRun, ManageTokens] {
            assert!(!operation.allows(Role::Agent), "{operation:?}");
        }
    }

    #[test]
    fn a_refusal_says_what_who_and_which_role() {
        assert_eq!(
            SteerExperiment.refusal("ci-bot", Role::Developer),
            "Steering an experiment needs the approver role; `ci-bot` has developer"
        );
    }
}
