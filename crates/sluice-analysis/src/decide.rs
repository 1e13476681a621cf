//! The decision at a ramp step: advance, wait, hold for a person, roll back,
//! or stop a broken experiment; with the numbers behind it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::{ErrorRateTest, LatencyJudge, SampleRatio};

/// What the analysis says to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// B is not worse and the step has enough requests and time: next step.
    Advance,
    /// Not enough evidence yet; keep the step.
    Wait,
    /// Still inconclusive after the step's longest time: a person decides.
    Hold,
    /// B is worse: back to A.
    Rollback,
    /// The split does not match the weights: the experiment is broken.
    Broken,
}

#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
    pub numbers: BTreeMap<String, f64>,
}

/// The thresholds of an experiment.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The chance of rolling back a B that is not worse (one-sided).
    pub alpha: f64,
    /// The sample-ratio check's threshold on its p-value.
    pub srm_alpha: f64,
    /// Whether the sample-ratio check counts requests. An experiment with
    /// goals counts users instead (`goals::user_ratio_mismatch`): a B that
    /// makes users click more has more requests, and that is not broken.
    pub request_srm: bool,
    pub min_requests: u64,
    pub min_duration: Duration,
    pub max_step: Duration,
    pub error_rate: bool,
    pub latency_p50: bool,
    pub latency_p95: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            alpha: 0.05,
            srm_alpha: 1e-4,
            request_srm: true,
            min_requests: 1000,
            min_duration: Duration::from_secs(60),
            max_step: Duration::from_secs(600),
            error_rate: true,
            latency_p50: true,
            latency_p95: true,
        }
    }
}

/// What was seen since the experiment began, and at the current step.
pub struct Evidence<'a> {
    pub errors: &'a ErrorRateTest,
    pub latency: &'a LatencyJudge,
    pub split: &'a SampleRatio,
    /// B's requests at the current step, and how long the step has run.
    pub step_requests: u64,
    pub step_elapsed: Duration,
}

pub fn decide(e: &Evidence, policy: &Policy) -> Decision {
    let mut numbers = BTreeMap::from([
        ("a_requests".to_string(), e.errors.a_requests as f64),
        ("b_requests".to_string(), e.errors.b_requests as f64),
        ("a_error_rate".to_string(), e.errors.a_rate()),
        ("b_error_rate".to_string(), e.errors.b_rate()),
        ("error_rate_lr".to_string(), e.errors.likelihood_ratio()),
        ("p50_share_above".to_string(), e.latency.p50.share_above()),
        ("p50_lr".to_string(), e.latency.p50.likelihood_ratio()),
        ("p95_share_above".to_string(), e.latency.p95.share_above()),
        ("p95_lr".to_string(), e.latency.p95.likelihood_ratio()),
        ("split_p_value".to_string(), e.split.p_value()),
        ("observed_b_share".to_string(), e.split.observed_share()),
        ("expected_b_share".to_string(), e.split.expected_share()),
    ]);
    for (q, name) in [(0.5, "p50"), (0.95, "p95")] {
        if let Some(effect) = e.latency.effect(q) {
            numbers.insert(format!("{name}_b_ms"), effect.b_micros / 1000.0);
            numbers.insert(format!("{name}_a_ms"), effect.a_micros / 1000.0);
        }
    }
    numbers.insert("step_requests".to_string(), e.step_requests as f64);
    let decision = |action, reason: String| Decision {
        action,
        reason,
        numbers: numbers.clone(),
    };
    if policy.request_srm && e.split.total >= 1000 && e.split.p_value() < policy.srm_alpha {
        return decision(
            Action::Broken,
            format!(
                "B got {:.2}% of requests where its weights expect {:.2}% (p = {:.1e}); the split is broken, not B judged",
                100.0 * e.split.observed_share(),
                100.0 * e.split.expected_share(),
                e.split.p_value()
            ),
        );
    }
    let threshold = 1.0 / policy.alpha;
    if policy.error_rate && e.errors.rejects(policy.alpha) {
        return decision(
            Action::Rollback,
            format!(
                "B's error rate {:.3}% is above A's {:.3}% (likelihood ratio {:.0} ≥ {threshold:.0})",
                100.0 * e.errors.b_rate(),
                100.0 * e.errors.a_rate(),
                e.errors.likelihood_ratio()
            ),
        );
    }
    for (on, q, name) in [
        (policy.latency_p50, 0.5, "p50"),
        (policy.latency_p95, 0.95, "p95"),
    ] {
        let test = e.latency.test(q);
        if let Some(effect) = e.latency.slower(q, policy.alpha).filter(|_| on) {
            let min = e.latency.config().min_effect;
            return decision(
                Action::Rollback,
                format!(
                    "B is slower at {name}: {:.1} ms against {:.1} ms on A's slowest instance over the same seconds (at least {:.0}% and {:.0} ms matter); {:.1}% of its requests took longer than A's {name}, where {:.0}% would be equal (likelihood ratio {:.0} ≥ {threshold:.0})",
                    effect.b_micros / 1000.0,
                    effect.a_micros / 1000.0,
                    100.0 * min.ratio,
                    min.micros / 1000.0,
                    100.0 * test.share_above(),
                    100.0 * (1.0 - test.quantile),
                    test.likelihood_ratio()
                ),
            );
        }
    }
    if e.step_requests < policy.min_requests || e.step_elapsed < policy.min_duration {
        return decision(
            Action::Wait,
            format!(
                "{} of {} requests and {}s of {}s at this step",
                e.step_requests,
                policy.min_requests,
                e.step_elapsed.as_secs(),
                policy.min_duration.as_secs()
            ),
        );
    }
    // Evidence leaning against B without crossing: wait for more, up to max_step.
    let leaning = threshold.sqrt();
    let worst = [
        (policy.error_rate, e.errors.likelihood_ratio()),
        (policy.latency_p50, e.latency.weighing(0.5)),
        (policy.latency_p95, e.latency.weighing(0.95)),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, lr)| lr)
    .fold(0.0, f64::max);
    if worst >= leaning {
        let action = if e.step_elapsed >= policy.max_step {
            Action::Hold
        } else {
            Action::Wait
        };
        return decision(
            action,
            format!(
                "inconclusive: the evidence leans against B (likelihood ratio {worst:.1}) without crossing {threshold:.0}"
            ),
        );
    }
    decision(
        Action::Advance,
        format!(
            "B is not worse after {} requests at this step",
            e.step_requests
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence<'a>(
        errors: &'a ErrorRateTest,
        latency: &'a LatencyJudge,
        split: &'a SampleRatio,
        requests: u64,
        secs: u64,
    ) -> Evidence<'a> {
        Evidence {
            errors,
            latency,
            split,
            step_requests: requests,
            step_elapsed: Duration::from_secs(secs),
        }
    }

    #[test]
    fn waits_then_advances_a_good_b() {
        let (mut errors, mut latency, mut split) = (
            ErrorRateTest::default(),
            LatencyJudge::new(Default::default()),
            SampleRatio::default(),
        );
        errors.observe(99_000, 99, 1_000, 1);
        latency.p50.observe(480, 1000);
        split.observe(99_000, 1_000, 0.01);
        let policy = Policy::default();
        assert_eq!(
            decide(&evidence(&errors, &latency, &split, 500, 120), &policy).action,
            Action::Wait
        );
        assert_eq!(
            decide(&evidence(&errors, &latency, &split, 1000, 120), &policy).action,
            Action::Advance
        );
    }

    #[test]
    fn rolls_back_a_failing_b_and_says_why() {
        let (mut errors, latency, mut split) = (
            ErrorRateTest::default(),
            LatencyJudge::new(Default::default()),
            SampleRatio::default(),
        );
        errors.observe(99_000, 99, 1_000, 30);
        split.observe(99_000, 1_000, 0.01);
        let decision = decide(
            &evidence(&errors, &latency, &split, 10, 1),
            &Policy::default(),
        );
        assert_eq!(decision.action, Action::Rollback);
        assert!(
            decision.reason.contains("3.000%") && decision.reason.contains("0.100%"),
            "{}",
            decision.reason
        );
        assert!(decision.numbers["error_rate_lr"] >= 20.0);
    }

    #[test]
    fn stops_a_broken_split() {
        let (errors, latency, mut split) = (
            ErrorRateTest::default(),
            LatencyJudge::new(Default::default()),
            SampleRatio::default(),
        );
        split.observe(9_000, 1_000, 0.01);
        assert_eq!(
            decide(
                &evidence(&errors, &latency, &split, 1000, 600),
                &Policy::default()
            )
            .action,
            Action::Broken
        );
    }
}
