//! The rules in force for a release: the service's rules in the store and
//! the ones the release carries in `.sluice/rules.yaml`, the `health_check` rules its
//! instances get, and the traffic a `metric_gate` reads. Only reads.

//! whether it would have stopped it.

use std::sync::Arc;

use sluice_spec::{RULES_FILE, Rule};
use sluice_store::{Release, RuleRecord};

use crate::Inner;
use crate::gates::Traffic;

/// A stored rule as the spec crate reads it; `None` when its JSON no longer parses.
pub(crate) fn from_record(record: &RuleRecord) -> Option<Rule> {
    Rule::stored(record.name(), record.origin(), &record.spec)
        .inspect_err(|e| tracing::warn!(error = %e, "a stored rule is not enforced"))
        .ok()
}

/// The rules in force for `release`: the server's active ones for its
/// service, then those in the `.sluice/rules.yaml` it carries.
pub(crate) async fn in_force(inner: &Arc<Inner>, release: &Release) -> anyhow::Result<Vec<Rule>> {
    let mut rules: Vec<Rule> = inner
        .store
        .rules(Some(&release.service), true)
        .await?
        .iter()
        .filter_map(from_record)
        .collect();
    let dir = crate::release::unpack(&inner.store, &inner.layout, release).await?;
    if let Ok(text) = tokio::fs::read_to_string(dir.join(RULES_FILE)).await {
        let spec = sluice_spec::parse(sluice_spec::SPEC_FILE, &release.spec).ok();
        match sluice_spec::parse_rules(RULES_FILE, &text, spec.as_ref()) {
            Ok(own) => rules.extend(own),
            // CI failed such a change; a release made before that check cannot have one.
            Err(e) => {
                tracing::warn!(release = %release.name(), error = %e, "the release's rules do not parse")
            }
        }
    }
    Ok(rules)
}

/// The `health_check` rules for instances of `release` in `env`.
pub(crate) async fn health_rules(inner: &Arc<Inner>, release: &Release, env: &str) -> Vec<Rule> {
    match in_force(inner, release).await {
        Ok(rules) => rules
            .into_iter()
            .filter(|r| r.spec.extra_check().is_some() && r.spec.applies_to(env))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not read the rules in force");
            Vec::new()
        }
    }
}

/// An environment's traffic over the last `seconds`, from the proxy's windows.
pub(crate) fn traffic(inner: &Inner, service: &str, env: &str, seconds: u64) -> Traffic {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut latency = sluice_analysis::LogHistogram::default();
    let mut traffic = Traffic::default();
    for window in inner.windows(service, env, now.saturating_sub(seconds)) {
        for side in [&window.a, &window.b] {
            traffic.requests += side.requests;
            traffic.errors += side.errors;
            latency.merge(&side.latency);
        }
    }
    traffic.p95_ms = latency.quantile(0.95).map(|us| us / 1000.0);
    traffic
}
