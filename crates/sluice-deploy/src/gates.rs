//! Gates: the conditions a promotion must meet before it deploys, each
//! saying whether it holds, why, and what would clear it. Pure: the facts
//! and the clock come in as arguments.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;
use sluice_spec::Environment;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GateCheck {
    pub gate: String,
    pub passed: bool,
    pub detail: String,
    /// What would clear a closed gate.
    pub clears: Option<String>,
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
    /// The status of each job of the release's run.
    pub jobs: BTreeMap<String, String>,
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
    checks
}

fn open(gate: &str, detail: String) -> GateCheck {
    GateCheck {
        gate: gate.to_string(),
        passed: true,
        detail,
        clears: None,
    }
}

fn closed(gate: &str, detail: String, clears: String) -> GateCheck {
    GateCheck {
        gate: gate.to_string(),
        passed: false,
        detail,
        clears: Some(clears),
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
            jobs: BTreeMap::from([("unit".to_string(), "success".to_string())]),
        }
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
