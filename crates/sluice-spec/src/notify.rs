//! What can be notified: the change log's event kinds, and the routes
//! (`notify:` in `sluice.yaml`, or a channel's server-wide default) that
//! send some of them to channels.

use serde::Serialize;

/// Every kind of event the change log records, with what it means; routes
/// name these, or a prefix of them with `.*`, or `*` for all.
pub const EVENT_KINDS: &[(&str, &str)] = &[
    ("change.mainline", "a commit landed on the mainline branch"),
    ("change.review", "a change under review was pushed"),
    (
        "run.finished",
        "a CI run ended (passed, failed or cancelled)",
    ),
    ("release.created", "a green mainline run became a release"),
    (
        "release.skipped",
        "a green run's commit left the branch; no release",
    ),
    ("promotion.requested", "someone asked to promote a release"),
    (
        "promotion.blocked",
        "a promotion waits on a gate other than approvals",
    ),
    ("approval.needed", "a promotion waits for an approver"),
    ("promotion.approved", "an approver approved a promotion"),
    ("promotion.rejected", "an approver rejected a promotion"),
    (
        "promotion.superseded",
        "a later promotion took a newer release to the environment first",
    ),
    (
        "promotion.deploying",
        "every gate opened; the deployment starts",
    ),
    ("promotion.done", "a promotion's deployment succeeded"),
    (
        "promotion.failed",
        "a promotion's deployment did not succeed",
    ),
    ("promotion.override", "an admin overrode a freeze window"),
    ("deployment.started", "a deployment began"),
    ("deployment.succeeded", "a deployment finished healthy"),
    ("deployment.failed", "a deployment failed"),
    ("deployment.rolled_back", "a deployment was rolled back"),
    ("env.release", "an environment now runs another release"),
    ("env.pinned", "an environment was pinned to its release"),
    ("env.unpinned", "an environment was unpinned"),
    ("experiment.started", "an A/B experiment began"),
    ("experiment.step", "an experiment moved B to a larger share"),
    (
        "experiment.held",
        "an experiment held B's share: not enough evidence yet",
    ),
    ("experiment.paused", "a person paused an experiment"),
    ("experiment.resumed", "a paused or held experiment went on"),
    (
        "experiment.promoted",
        "B won: it became the environment's release",
    ),
    (
        "experiment.rolled_back",
        "B was worse: every request went back to A",
    ),
    (
        "experiment.aborted",
        "a person or a failure stopped an experiment",
    ),
    (
        "experiment.concluded",
        "a test kept A: B worse on its goal, no difference, or out of time",
    ),
    ("health.failed", "an environment's health checks failed"),
    (
        "health.recovered",
        "an environment's health checks pass again",
    ),
    ("instance.exposed", "an instance listens beyond loopback"),
    (
        "certificate.issued",
        "an entry point got its first certificate from ACME",
    ),
    (
        "certificate.renewed",
        "an entry point's ACME certificate was renewed",
    ),
    (
        "certificate.failed",
        "an ACME order failed (tried again with backoff)",
    ),
    (
        "data.prepared",
        "an environment's data was seeded or copied",
    ),
    ("incident.opened", "an incident was opened"),
    ("incident.mitigated", "an incident was mitigated"),
    ("incident.resolved", "an incident was resolved"),
    ("postmortem.edited", "a postmortem was written or changed"),
    ("rule.added", "a rule learnt from an incident was added"),
    ("rule.disabled", "a rule was disabled"),
    (
        "rule.blocked",
        "a rule stopped a change, a promotion or an instance (once each)",
    ),
    ("repo.added", "a repository is watched"),
    ("secret.set", "a repository's secret was set"),
    ("secret.deleted", "a repository's secret was deleted"),
    ("token.created", "an API token was made"),
    ("token.revoked", "an API token was revoked"),
    (
        "channel.added",
        "a notification channel was added or changed",
    ),
    ("channel.removed", "a notification channel was removed"),
];

/// Which events a route takes: one kind, every kind under a prefix, or all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum EventPattern {
    Kind(String),
    /// `experiment.*`: kinds that start with `experiment.`.
    Prefix(String),
    All,
}

impl EventPattern {
    /// Reads `incident.opened`, `experiment.*` or `*`; refuses a kind the
    /// change log never records, naming the ones it does.
    pub fn parse(text: &str) -> Result<EventPattern, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(EventPattern::All);
        }
        if let Some(stem) = text.strip_suffix(".*") {
            let prefix = format!("{stem}.");
            if EVENT_KINDS.iter().any(|(k, _)| k.starts_with(&prefix)) {
                return Ok(EventPattern::Prefix(prefix));
            }
        } else if EVENT_KINDS.iter().any(|(k, _)| *k == text) {
            return Ok(EventPattern::Kind(text.to_string()));
        }
        let shown: String = text.chars().take(60).collect();
        Err(format!(
            "`{}` is not an event kind; docs/notifications.md lists them (e.g. `deployment.failed`, `experiment.*`, `*`)",
            shown.escape_debug()
        ))
    }

    pub fn matches(&self, kind: &str) -> bool {
        match self {
            EventPattern::Kind(k) => k == kind,
            EventPattern::Prefix(p) => kind.starts_with(p.as_str()),
            EventPattern::All => true,
        }
    }
}

impl From<EventPattern> for String {
    fn from(pattern: EventPattern) -> String {
        match pattern {
            EventPattern::Kind(k) => k,
            EventPattern::Prefix(p) => format!("{p}*"),
            EventPattern::All => "*".into(),
        }
    }
}

/// `{ on: [...], env: [...], to: [...] }`: events of these kinds, in these
/// environments (any when empty), go to these channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotifyRoute {
    pub on: Vec<EventPattern>,
    pub env: Vec<String>,
    pub to: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::EventPattern;

    #[test]
    fn patterns_take_kinds_prefixes_and_all_and_nothing_else() {
        let cases = [
            ("deployment.failed", Some("deployment.failed")),
            ("experiment.*", Some("experiment.*")),
            ("*", Some("*")),
            ("deployment.exploded", None),
            ("nothing.*", None),
            ("experiment", None),
            ("", None),
            ("deployment.%", None),
        ];
        for (text, want) in cases {
            let got = EventPattern::parse(text).ok().map(String::from);
            assert_eq!(got.as_deref(), want, "{text}");
        }
        let prefix = EventPattern::parse("experiment.*").unwrap();
        assert!(prefix.matches("experiment.step"));
        assert!(!prefix.matches("experiments.step"));
        assert!(!prefix.matches("incident.opened"));
    }

    #[test]
    fn kinds_are_unique_and_dotted() {
        let mut seen = std::collections::HashSet::new();
        for (kind, _) in super::EVENT_KINDS {
            assert!(seen.insert(kind), "{kind} twice");
            let (head, tail) = kind.split_once('.').unwrap();
            assert!(!head.is_empty() && !tail.is_empty() && !tail.contains('.'));
            assert!(
                kind.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
            );
        }
    }
}
