//! Gates: the conditions a promotion must meet before it deploys, each
//! saying whether it holds, why, and what would clear it. Pure: the facts
//! and the clock come in as arguments.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;
use sluice_spec::{Environment, FreezeWindow, Rule, RuleSpec, parse_duration};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GateCheck {
    pub gate: String,
    pub passed: bool,
    pub detail: String,
    /// What would clear a closed gate.
    pub clears: Option<String>,
    /// The rule behind the gate, for those that come from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// What the gates look at.
pub struct Facts<'a> {
    pub promotion_id: i64,
    pub release: i64,
    pub target: &'a Environment,
    pub requested_by: &'a str,
    pub approvers: Vec<String>,
    pub pinned: Option<String>,
    pub freeze_overridden: Option<(String, String)>,
    /// The release that runs in the `from` environment, and since when every
    /// instance of it has been healthy there (`None`: not healthy now).
    pub from_release: Option<i64>,
    pub from_healthy_since: Option<DateTime<Utc>>,
    /// Why the release's own deployment to `from` failed, when it did (a rule
    /// that kept its instance out, say).
    pub from_failure: Option<String>,
    /// The status of each job of the release's run.
    pub jobs: BTreeMap<String, String>,
    /// The rules in force for the release.
    pub rules: Vec<Rule>,
    /// The target's config values as the release it runs now has them
    /// (`None`: it runs nothing), and as the promoted release has them.
    pub config_now: Option<BTreeMap<String, String>>,
    pub config_next: BTreeMap<String, String>,
    /// The `from` environment's traffic over each metric gate's window (seconds).
    pub traffic: BTreeMap<u64, Traffic>,
}

/// An environment's requests over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    pub requests: u64,
    pub errors: u64,
    pub p95_ms: Option<f64>,
}

pub fn evaluate(facts: &Facts, now: DateTime<Utc>) -> Vec<GateCheck> {
    let mut checks = Vec::new();
    let env = &facts.target.name;
    let id = facts.promotion_id;
    let v = facts.release;
    if let Some(reason) = &facts.pinned {
        checks.push(closed(
            "pinned",
            format!("{env} is pinned ({reason})"),
            format!("`sluice unpin SERVICE {env}` when the cause is fixed"),
        ));
    }
    if let Some(from) = &facts.target.from {
        let check = match (facts.from_release, facts.from_healthy_since) {
            (Some(r), Some(_)) if r == v => open("from", format!("v{v} runs healthy in {from}")),
            (Some(r), None) if r == v => closed(
                "from",
                format!("v{v} runs in {from} but not every instance is healthy"),
                format!("{from} healthy again"),
            ),
            (_, _) if facts.from_release != Some(v) && facts.from_failure.is_some() => closed(
                "from",
                format!(
                    "v{v} failed in {from}: {}",
                    facts.from_failure.as_deref().unwrap_or_default()
                ),
                format!("a release that passes in {from}"),
            ),
            (Some(r), _) => closed(
                "from",
                format!("{from} runs v{r}, not v{v}"),
                format!("promote v{v} to {from} first"),
            ),
            (None, _) => closed(
                "from",
                format!("{from} runs no release yet"),
                format!("promote v{v} to {from} first"),
            ),
        };
        checks.push(check);
        if let Some(soak) = facts.target.deploy.soak {
            let needed = chrono::Duration::from_std(soak).unwrap_or_default();
            let check = match facts
                .from_healthy_since
                .filter(|_| facts.from_release == Some(v))
            {
                Some(since) if now - since >= needed => open(
                    "soak",
                    format!("v{v} has been healthy in {from} for {}", human(now - since)),
                ),
                Some(since) => closed(
                    "soak",
                    format!(
                        "v{v} has been healthy in {from} for {} of {}",
                        human(now - since),
                        human(needed)
                    ),
                    format!("wait until {} UTC", (since + needed).format("%H:%M:%S")),
                ),
                None => closed(
                    "soak",
                    format!("v{v} is not healthy in {from}, so it has not soaked"),
                    format!("{} healthy in {from}", human(needed)),
                ),
            };
            checks.push(check);
        }
    }
    let policy = &facts.target.deploy;
    if policy.approvals > 0 {
        let have = facts.approvers.len() as u32;
        let check = if have >= policy.approvals {
            open(
                "approvals",
                format!("approved by {}", facts.approvers.join(", ")),
            )
        } else {
            let who = if policy.approvers.is_empty() {
                "an approver".to_string()
            } else {
                format!("an approver in {}", policy.approvers.join(", "))
            };
            closed(
                "approvals",
                format!("{have} of {} approvals", policy.approvals),
                format!(
                    "{} more from {who} other than {}: `sluice approve {id}`",
                    policy.approvals - have,
                    facts.requested_by
                ),
            )
        };
        checks.push(check);
    }
    if let Some(window) = policy.freeze.iter().find(|w| {
        w.contains(
            now.minute(),
            now.hour(),
            now.day(),
            now.month(),
            now.weekday().num_days_from_sunday(),
        )
    }) {
        let check = match &facts.freeze_overridden {
            Some((admin, reason)) => open(
                "freeze",
                format!(
                    "{env} is frozen (`{}`) but {admin} overrode it: {reason}",
                    window.expression
                ),
            ),
            None => closed(
                "freeze",
                format!("{env} is frozen by `{}` (UTC)", window.expression),
                format!("the window to end, or an admin: `sluice override {id} --reason WHY`"),
            ),
        };
        checks.push(check);
    }
    for job in &policy.require_jobs {
        let check = match facts.jobs.get(job).map(String::as_str) {
            Some("success") => open("required job", format!("`{job}` passed in v{v}'s run")),
            Some(status) => closed(
                "required job",
                format!("`{job}` ended {status} in v{v}'s run"),
                "a release whose run passes it".to_string(),
            ),
            None => closed(
                "required job",
                format!("v{v}'s run has no job `{job}`"),
                format!("add `{job}` to the pipeline"),
            ),
        };
        checks.push(check);
    }
    for rule in facts.rules.iter().filter(|r| r.spec.applies_to(env)) {
        if let Some(verdict) = rule_verdict(facts, &rule.spec, now) {
            checks.push(rule_check(rule, verdict));
        }
    }
    checks
}

/// What a rule says about a promotion: `Ok(why it holds)` or
/// `Err((why it blocks, what clears it))`; `None` for rules about something else.
type Verdict = Result<String, (String, String)>;

fn rule_verdict(facts: &Facts, spec: &RuleSpec, now: DateTime<Utc>) -> Option<Verdict> {
    let v = facts.release;
    let id = facts.promotion_id;
    let env = &facts.target.name;
    let from = facts.target.from.as_deref();
    Some(match spec {
        // With paths it is about changes, which CI judges; without, about every release.
        RuleSpec::RequireJob { job, paths } if paths.is_empty() => {
            match facts.jobs.get(job).map(String::as_str) {
                Some("success") => Ok(format!("`{job}` passed in v{v}'s run")),
                Some(status) => Err((
                    format!("job `{job}` ended {status} in v{v}'s run"),
                    "a release whose run passes it".into(),
                )),
                None => Err((
                    format!("v{v}'s pipeline has no job `{job}`"),
                    format!("add `{job}` to the pipeline and release again"),
                )),
            }
        }
        RuleSpec::RequireJob { .. } | RuleSpec::HealthCheck { .. } => return None,
        RuleSpec::Freeze { cron, .. } => {
            let window = FreezeWindow::parse(cron).ok()?;
            let frozen = window.contains(
                now.minute(),
                now.hour(),
                now.day(),
                now.month(),
                now.weekday().num_days_from_sunday(),
            );
            match (&facts.freeze_overridden, frozen) {
                (_, false) => Ok(format!("`{cron}` does not match now")),
                (Some((admin, reason)), true) => Ok(format!(
                    "frozen by `{cron}`, but {admin} overrode it: {reason}"
                )),
                (None, true) => Err((
                    format!("{env} is frozen by `{cron}` (UTC)"),
                    format!("the window to end, or an admin: `sluice override {id} --reason WHY`"),
                )),
            }
        }
        RuleSpec::Soak { duration, .. } => {
            let from = from?;
            let needed = chrono::Duration::from_std(parse_duration(duration).ok()?).ok()?;
            match facts
                .from_healthy_since
                .filter(|_| facts.from_release == Some(v))
            {
                Some(since) if now - since >= needed => Ok(format!(
                    "v{v} has been healthy in {from} for {}",
                    human(now - since)
                )),
                Some(since) => Err((
                    format!(
                        "v{v} has been healthy in {from} for {} of {}",
                        human(now - since),
                        human(needed)
                    ),
                    format!("wait until {} UTC", (since + needed).format("%H:%M:%S")),
                )),
                None => Err((
                    format!("v{v} is not running healthy in {from}"),
                    format!("{} healthy in {from}", human(needed)),
                )),
            }
        }
        RuleSpec::MetricGate {
            max_error_rate,
            max_p95,
            window,
            min_requests,
            ..
        } => {
            let from = from?;
            let seconds = parse_duration(window).ok()?.as_secs();
            let traffic = facts.traffic.get(&seconds).copied().unwrap_or_default();
            let rate = traffic.errors as f64 / traffic.requests.max(1) as f64;
            if traffic.requests < *min_requests {
                Err((
                    format!(
                        "{from} had {} requests over the last {window}, fewer than the {min_requests} the rule needs to judge",
                        traffic.requests
                    ),
                    format!("traffic in {from}"),
                ))
            } else if let Some(max) = max_error_rate.filter(|max| rate > *max) {
                Err((
                    format!(
                        "{from}'s error rate over the last {window} is {:.2}% ({} of {}), above {:.2}%",
                        rate * 100.0,
                        traffic.errors,
                        traffic.requests,
                        max * 100.0
                    ),
                    format!("{from}'s errors to fall below the limit"),
                ))
            } else if let (Some(max), Some(p95)) = (max_p95, traffic.p95_ms)
                && let Ok(limit) = parse_duration(max)
                && p95 > limit.as_secs_f64() * 1000.0
            {
                Err((
                    format!("{from}'s p95 over the last {window} is {p95:.0} ms, above {max}"),
                    format!("{from}'s latency to fall below the limit"),
                ))
            } else {
                Ok(format!(
                    "{from}: {} requests, {:.2}% errors over the last {window}",
                    traffic.requests,
                    rate * 100.0
                ))
            }
        }
        RuleSpec::ConfigGuard { key, value, .. } => {
            let next = facts.config_next.get(key);
            let now_value = facts.config_now.as_ref().and_then(|c| c.get(key));
            let shown = |v: Option<&String>| v.map_or("unset".to_string(), |v| format!("`{v}`"));
            match value {
                Some(kept) if next != Some(kept) => Err((
                    format!(
                        "v{v} sets `{key}` to {} in {env}; the rule keeps it `{kept}`",
                        shown(next)
                    ),
                    format!("set `{key}: {kept}` for {env} in sluice.yaml and release again"),
                )),
                Some(kept) => Ok(format!("`{key}` stays `{kept}`")),
                None if facts.config_now.is_none() || now_value == next => {
                    Ok(format!("`{key}` does not change"))
                }
                None if !facts.approvers.is_empty() => Ok(format!(
                    "`{key}` changes from {} to {}, approved by {}",
                    shown(now_value),
                    shown(next),
                    facts.approvers.join(", ")
                )),
                None => Err((
                    format!(
                        "v{v} changes `{key}` in {env} from {} to {}",
                        shown(now_value),
                        shown(next)
                    ),
                    format!("an approval: `sluice approve {id}`"),
                )),
            }
        }
    })
}

fn rule_check(rule: &Rule, verdict: Verdict) -> GateCheck {
    let gate = format!("rule {}", rule.id);
    let mut check = match verdict {
        Ok(why) => open(&gate, format!("{} holds: {why}", rule.label())),
        Err((why, clears)) => closed(&gate, rule.blocks(&why), clears),
    };
    check.rule = Some(rule.id.clone());
    check
}

fn open(gate: &str, detail: String) -> GateCheck {
    GateCheck {
        gate: gate.to_string(),
        passed: true,
        detail,
        clears: None,
        rule: None,
    }
}

fn closed(gate: &str, detail: String, clears: String) -> GateCheck {
    GateCheck {
        gate: gate.to_string(),
        passed: false,
        detail,
        clears: Some(clears),
        rule: None,
    }
}

fn human(d: chrono::Duration) -> String {
    sluice_spec::format_duration(std::time::Duration::from_secs(d.num_seconds().max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn prod(extra: &str) -> Environment {
        let text = format!(
            "service: s\npipeline:\n  jobs:\n    unit:\n      steps: [{{ run: 'true' }}]\nenvironments:\n  pre-prod: {{ listen: 127.0.0.1:0 }}\n  prod:\n    from: pre-prod\n    listen: 127.0.0.1:0\n    deploy: {{ {extra} }}\n"
        );
        sluice_spec::parse("s", &text)
            .unwrap()
            .environment("prod")
            .unwrap()
            .clone()
    }

    fn facts<'a>(env: &'a Environment) -> Facts<'a> {
        Facts {
            promotion_id: 7,
            release: 3,
            target: env,
            requested_by: "ana",
            approvers: vec![],
            pinned: None,
            freeze_overridden: None,
            from_release: Some(3),
            from_healthy_since: Some(Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()),
            from_failure: None,
            jobs: BTreeMap::from([("unit".to_string(), "success".to_string())]),
            rules: vec![],
            config_now: Some(BTreeMap::from([("MODE".to_string(), "a".to_string())])),
            config_next: BTreeMap::from([("MODE".to_string(), "b".to_string())]),
            traffic: BTreeMap::new(),
        }
    }

    fn rule(id: &str, spec: RuleSpec) -> Rule {
        Rule {
            id: id.into(),
            origin: Some("INC-7 \"checkout fails\"".into()),
            spec,
        }
    }

    #[test]
    fn a_rule_block_names_the_rule_and_its_incident() {
        let env = prod("approvals: 0");
        let mut f = facts(&env);
        f.rules = vec![rule(
            "R3",
            RuleSpec::RequireJob {
                job: "checkout-regression".into(),
                paths: vec![],
            },
        )];
        let check = evaluate(&f, friday(11)).pop().unwrap();
        assert_eq!(
            (check.passed, check.detail.as_str(), check.rule.as_deref()),
            (
                false,
                "blocked by rule R3 (from INC-7 \"checkout fails\"): v3's pipeline has no job `checkout-regression`",
                Some("R3")
            )
        );
    }

    #[test]
    fn a_config_guard_wants_an_approval_for_a_change() {
        let env = prod("approvals: 0");
        let mut f = facts(&env);
        f.rules = vec![rule(
            "R4",
            RuleSpec::ConfigGuard {
                environments: vec!["prod".into()],
                key: "MODE".into(),
                value: None,
            },
        )];
        let check = evaluate(&f, friday(11)).pop().unwrap();
        assert!(!check.passed);
        assert!(
            check
                .detail
                .ends_with("v3 changes `MODE` in prod from `a` to `b`"),
            "{check:?}"
        );
        f.approvers = vec!["bo".into()];
        assert!(evaluate(&f, friday(11)).iter().all(|c| c.passed));
    }

    #[test]
    fn a_metric_gate_judges_the_previous_environment() {
        let env = prod("approvals: 0");
        let mut f = facts(&env);
        f.rules = vec![rule(
            "R5",
            RuleSpec::MetricGate {
                environments: vec![],
                max_error_rate: Some(0.01),
                max_p95: Some("300ms".into()),
                window: "5m".into(),
                min_requests: 100,
            },
        )];
        let judged = |f: &Facts| evaluate(f, friday(11)).pop().unwrap();
        assert!(judged(&f).detail.contains("fewer than the 100"));
        f.traffic.insert(
            300,
            Traffic {
                requests: 1000,
                errors: 30,
                p95_ms: Some(120.0),
            },
        );
        assert!(
            judged(&f)
                .detail
                .contains("error rate over the last 5m is 3.00% (30 of 1000), above 1.00%")
        );
        f.traffic.insert(
            300,
            Traffic {
                requests: 1000,
                errors: 3,
                p95_ms: Some(420.0),
            },
        );
        assert!(
            judged(&f)
                .detail
                .contains("p95 over the last 5m is 420 ms, above 300ms")
        );
        f.traffic.insert(
            300,
            Traffic {
                requests: 1000,
                errors: 3,
                p95_ms: Some(120.0),
            },
        );
        assert!(judged(&f).passed);
    }

    #[test]
    fn a_rule_for_another_environment_says_nothing() {
        let env = prod("approvals: 0");
        let mut f = facts(&env);
        f.rules = vec![rule(
            "R6",
            RuleSpec::Freeze {
                environments: vec!["dev".into()],
                cron: "* * * * *".into(),
            },
        )];
        assert!(evaluate(&f, friday(11)).iter().all(|c| c.passed));
        f.rules[0].spec = RuleSpec::Freeze {
            environments: vec!["prod".into()],
            cron: "* * * * *".into(),
        };
        assert!(!evaluate(&f, friday(11)).iter().all(|c| c.passed));
    }

    fn friday(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, hour, 30, 0).unwrap()
    }

    #[test]
    fn approvals_count_and_say_who_else_is_needed() {
        let env = prod("approvals: 2, approvers: [release-managers]");
        let mut f = facts(&env);
        f.approvers = vec!["bo".into()];
        let checks = evaluate(&f, friday(11));
        let approvals = checks.iter().find(|c| c.gate == "approvals").unwrap();
        assert!(!approvals.passed);
        assert_eq!(approvals.detail, "1 of 2 approvals");
        assert_eq!(
            approvals.clears.as_deref(),
            Some("1 more from an approver in release-managers other than ana: `sluice approve 7`")
        );
        f.approvers.push("cy".into());
        assert!(evaluate(&f, friday(11)).iter().all(|c| c.passed));
    }

    #[test]
    fn soak_waits_for_healthy_time_in_the_previous_environment() {
        let env = prod("soak: 2h");
        let checks = evaluate(&facts(&env), friday(11));
        let soak = checks.iter().find(|c| c.gate == "soak").unwrap();
        assert!(!soak.passed, "{soak:?}");
        assert_eq!(soak.clears.as_deref(), Some("wait until 12:00:00 UTC"));
        assert!(evaluate(&facts(&env), friday(12)).iter().all(|c| c.passed));
    }

    #[test]
    fn the_release_must_run_healthy_in_from_first() {
        let env = prod("approvals: 0");
        let mut f = facts(&env);
        f.from_release = Some(2);
        let from = evaluate(&f, friday(11))
            .into_iter()
            .find(|c| c.gate == "from")
            .unwrap();
        assert_eq!(
            (from.passed, from.detail.as_str()),
            (false, "pre-prod runs v2, not v3")
        );
        // A release a rule kept out of pre-prod says so, not only what runs there.
        f.from_failure = Some(
            "instance x did not become healthy: rule R1 (from INC-1): GET /checkout answered 500"
                .into(),
        );
        let from = evaluate(&f, friday(11))
            .into_iter()
            .find(|c| c.gate == "from")
            .unwrap();
        assert!(
            !from.passed
                && from.detail.starts_with("v3 failed in pre-prod: ")
                && from.detail.contains("rule R1"),
            "{}",
            from.detail
        );
        assert_eq!(
            from.clears.as_deref(),
            Some("a release that passes in pre-prod")
        );
        f.from_failure = None;
        f.from_release = Some(3);
        f.from_healthy_since = None;
        assert!(
            !evaluate(&f, friday(11))
                .into_iter()
                .find(|c| c.gate == "from")
                .unwrap()
                .passed
        );
    }

    #[test]
    fn a_freeze_blocks_until_an_admin_overrides_it() {
        let env = prod("freeze: ['* 16-23 * * fri']");
        assert!(
            evaluate(&facts(&env), friday(11)).iter().all(|c| c.passed),
            "not frozen in the morning"
        );
        let frozen = evaluate(&facts(&env), friday(17))
            .into_iter()
            .find(|c| c.gate == "freeze")
            .unwrap();
        assert!(!frozen.passed);
        assert!(frozen.clears.unwrap().contains("sluice override 7"));
        let mut f = facts(&env);
        f.freeze_overridden = Some(("root".into(), "hotfix for INC-3".into()));
        assert!(evaluate(&f, friday(17)).iter().all(|c| c.passed));
    }

    #[test]
    fn required_jobs_must_have_passed() {
        let env = prod("require_jobs: [unit]");
        let mut f = facts(&env);
        assert!(evaluate(&f, friday(11)).iter().all(|c| c.passed));
        f.jobs.insert("unit".into(), "failure".into());
        assert!(!evaluate(&f, friday(11)).iter().all(|c| c.passed));
    }

    #[test]
    fn a_pinned_environment_is_closed() {
        let env = prod("approvals: 0");
        let mut f = facts(&env);
        f.pinned = Some("rolled back to v2 by ana".into());
        let pinned = &evaluate(&f, friday(11))[0];
        assert_eq!((pinned.gate.as_str(), pinned.passed), ("pinned", false));
    }
}
