//! Rules: the lessons of incidents, in a form the pipeline enforces. This
//! file owns their kinds, what makes one valid, how one describes itself and
//! `.sluice/rules.yaml`, the rules a repository keeps as code.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::raw::{Entries, from_yaml};
use crate::{FreezeWindow, Spec, parse_duration};

/// Where a repository keeps its rules, beside `sluice.yaml`.
pub const RULES_FILE: &str = ".sluice/rules.yaml";

/// What a rule demands. `environments` empty means every environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleSpec {
    /// A named CI job must be in the pipeline and pass; with `paths`, only
    /// for changes that touch files under one of them.
    RequireJob {
        job: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        paths: Vec<String>,
    },
    /// An extra check that every instance must pass to be healthy.
    HealthCheck {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        environments: Vec<String>,
        path: String,
        #[serde(default = "ok_status")]
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_contains: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_latency: Option<String>,
    },
    /// Before a promotion into one of `environments` completes, the
    /// environment it comes from must have stayed under these limits over `window`.
    MetricGate {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        environments: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_error_rate: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_p95: Option<String>,
        window: String,
        #[serde(default)]
        min_requests: u64,
    },
    /// No promotion while the cron expression matches (UTC).
    Freeze {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        environments: Vec<String>,
        cron: String,
    },
    /// A config key may not change without an approval, or must keep `value`.
    ConfigGuard {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        environments: Vec<String>,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// The release must have run healthy in the previous environment this long.
    Soak {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        environments: Vec<String>,
        duration: String,
    },
}

fn ok_status() -> u16 {
    200
}

/// One extra health check, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraCheck {
    pub path: String,
    pub status: u16,
    pub body_contains: Option<String>,
    pub max_latency: Option<Duration>,
}

impl RuleSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            RuleSpec::RequireJob { .. } => "require_job",
            RuleSpec::HealthCheck { .. } => "health_check",
            RuleSpec::MetricGate { .. } => "metric_gate",
            RuleSpec::Freeze { .. } => "freeze",
            RuleSpec::ConfigGuard { .. } => "config_guard",
            RuleSpec::Soak { .. } => "soak",
        }
    }

    fn environments(&self) -> &[String] {
        match self {
            RuleSpec::RequireJob { .. } => &[],
            RuleSpec::HealthCheck { environments, .. }
            | RuleSpec::MetricGate { environments, .. }
            | RuleSpec::Freeze { environments, .. }
            | RuleSpec::ConfigGuard { environments, .. }
            | RuleSpec::Soak { environments, .. } => environments,
        }
    }

    /// Whether the rule speaks about environment `env`.
    pub fn applies_to(&self, env: &str) -> bool {
        let listed = self.environments();
        listed.is_empty() || listed.iter().any(|e| e == env)
    }

    /// What is wrong with the rule, each with what to write instead.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut duration = |text: &Option<String>, what: &str| {
            if let Some(text) = text
                && let Err(why) = parse_duration(text)
            {
                found.push((
                    format!("bad {what} `{text}`: {why}"),
                    "write a number and a unit: `500ms`, `30s`, `10m`".to_string(),
                ));
            }
        };
        match self {
            RuleSpec::HealthCheck {
                max_latency,
                path,
                status,
                ..
            } => {
                duration(max_latency, "max_latency");
                if !path.starts_with('/') {
                    found.push((
                        format!("the health check path `{path}` does not start with `/`"),
                        "write the path the check requests, e.g. `/checkout`".into(),
                    ));
                }
                if !(100..=599).contains(status) {
                    found.push((
                        format!("{status} is not an HTTP status"),
                        "write the status the check expects, e.g. 200".into(),
                    ));
                }
            }
            RuleSpec::MetricGate {
                max_error_rate,
                max_p95,
                window,
                ..
            } => {
                duration(max_p95, "max_p95");
                duration(&Some(window.clone()), "window");
                if max_error_rate.is_none() && max_p95.is_none() {
                    found.push((
                        "a metric gate needs a limit".into(),
                        "add `max_error_rate: 0.01` (a share) or `max_p95: 300ms`, or both".into(),
                    ));
                }
                if let Some(rate) = max_error_rate
                    && !(0.0..=1.0).contains(rate)
                {
                    found.push((
                        format!("max_error_rate {rate} is not a share between 0 and 1"),
                        "write 0.01 for 1%".into(),
                    ));
                }
            }
            RuleSpec::Freeze { cron, .. } => {
                if let Err(why) = FreezeWindow::parse(cron) {
                    found.push((
                        format!("bad freeze window: {why}"),
                        "write a cron expression of the frozen minutes, e.g. `* 16-23 * * fri`"
                            .into(),
                    ));
                }
            }
            RuleSpec::Soak { duration: d, .. } => duration(&Some(d.clone()), "duration"),
            RuleSpec::RequireJob { job, .. } if job.trim().is_empty() => found.push((
                "the required job has no name".into(),
                "name a job of the pipeline, e.g. `checkout-regression`".into(),
            )),
            RuleSpec::RequireJob { .. } | RuleSpec::ConfigGuard { .. } => {}
        }
        found
    }

    /// The extra instance check a `health_check` rule adds.
    pub fn extra_check(&self) -> Option<ExtraCheck> {
        match self {
            RuleSpec::HealthCheck {
                path,
                status,
                body_contains,
                max_latency,
                ..
            } => Some(ExtraCheck {
                path: path.clone(),
                status: *status,
                body_contains: body_contains.clone(),
                max_latency: max_latency.as_deref().and_then(|d| parse_duration(d).ok()),
            }),
            _ => None,
        }
    }

    /// One sentence on what the rule demands.
    pub fn describe(&self) -> String {
        let scope = match self.environments() {
            [] => "every environment".to_string(),
            [one] => one.clone(),
            many => many.join(", "),
        };
        match self {
            RuleSpec::RequireJob { job, paths } if paths.is_empty() => {
                format!("every change must run job `{job}` and pass it")
            }
            RuleSpec::RequireJob { job, paths } => format!(
                "a change touching {} must run job `{job}` and pass it",
                paths.join(", ")
            ),
            RuleSpec::HealthCheck {
                path,
                status,
                body_contains,
                max_latency,
                ..
            } => {
                let mut text = format!("instances in {scope} must answer GET {path} with {status}");
                if let Some(body) = body_contains {
                    text.push_str(&format!(" and a body containing `{body}`"));
                }
                if let Some(limit) = max_latency {
                    text.push_str(&format!(" within {limit}"));
                }
                text
            }
            RuleSpec::MetricGate {
                max_error_rate,
                max_p95,
                window,
                ..
            } => {
                let mut limits = Vec::new();
                if let Some(rate) = max_error_rate {
                    limits.push(format!("error rate ≤ {:.2}%", rate * 100.0));
                }
                if let Some(p95) = max_p95 {
                    limits.push(format!("p95 ≤ {p95}"));
                }
                format!(
                    "promotions into {scope} need {} in the previous environment over the last {window}",
                    limits.join(" and ")
                )
            }
            RuleSpec::Freeze { cron, .. } => {
                format!("no promotion into {scope} while `{cron}` matches (UTC)")
            }
            RuleSpec::ConfigGuard {
                key,
                value: Some(value),
                ..
            } => format!("`{key}` must stay `{value}` in {scope}"),
            RuleSpec::ConfigGuard { key, .. } => {
                format!("a change of `{key}` in {scope} needs an approval")
            }
            RuleSpec::Soak { duration, .. } => format!(
                "a release must run healthy in the previous environment for {duration} before {scope}"
            ),
        }
    }
}

/// A rule in force: its id (`R3`, or `rules.yaml:NAME` for one kept in the
/// repository), the incident it came from, and what it demands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    pub id: String,
    /// `INC-7 "checkout fails"`.
    pub origin: Option<String>,
    pub spec: RuleSpec,
}

impl Rule {
    /// A rule as the server stores it: its spec as JSON.
    pub fn stored(id: String, origin: Option<String>, json: &str) -> Result<Rule, String> {
        let spec =
            serde_json::from_str(json).map_err(|e| format!("rule {id} does not parse: {e}"))?;
        Ok(Rule { id, origin, spec })
    }

    /// `rule R3 (from INC-7 "checkout fails")`.
    pub fn label(&self) -> String {
        match &self.origin {
            Some(origin) => format!("rule {} (from {origin})", self.id),
            None => format!("rule {}", self.id),
        }
    }

    /// `blocked by rule R3 (from INC-7 "checkout fails"): why`.
    pub fn blocks(&self, why: &str) -> String {
        format!("blocked by {}: {why}", self.label())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRulesFile {
    #[serde(default)]
    rules: Entries<Spanned<RuleSpec>>,
}

/// A rule's fields are read after its `kind`, by which time the parser only
/// knows where the rule starts: an unknown field is looked for from there,
/// so that the error points at it rather than at the rule's name.
fn pinpoint(diagnostic: Diagnostic, text: &str) -> Diagnostic {
    let field = diagnostic
        .message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field.to_string());
    match field {
        Some(field) => point_at_key(diagnostic, text, &field),
        None => diagnostic,
    }
}

/// The diagnostic moved to the first `field:` key at or after where it points.
fn point_at_key(diagnostic: Diagnostic, text: &str, field: &str) -> Diagnostic {
    let key = format!("{field}:");
    let found = text
        .lines()
        .enumerate()
        .skip(diagnostic.line.saturating_sub(1))
        .find_map(|(i, line)| {
            let column = line.find(&key)?;
            // A key: at the start of the line's content, or after `{` or `,`.
            let before = line[..column].trim_end();
            (before.is_empty() || before.ends_with('{') || before.ends_with(','))
                .then_some((i + 1, column + 1))
        });
    match found {
        Some((line, column)) => Diagnostic::at(
            &diagnostic.file,
            text,
            line,
            column,
            field.len(),
            &diagnostic.message,
            diagnostic.help.clone(),
        ),
        None => diagnostic,
    }
}

/// Parses and validates `.sluice/rules.yaml`; with the service's `spec`,
/// environment names are checked against it too.
pub fn parse_rules(file: &str, text: &str, spec: Option<&Spec>) -> Result<Vec<Rule>, Diagnostics> {
    let raw: RawRulesFile = from_yaml(
        file,
        text,
        "write `rules:` and under it one named rule per key, e.g. `checkout-tested: { kind: require_job, job: checkout-regression }`",
    )
    .map_err(|errors| Diagnostics(errors.0.into_iter().map(|d| pinpoint(d, text)).collect()))?;
    let mut found = Vec::new();
    let mut rules = Vec::new();
    for (name, rule) in raw.rules.0 {
        if let Some(why) = crate::paths::name_problem(&name.value) {
            let message = format!("`{}` is not a valid rule name: {why}", name.value);
            let help = "use lowercase letters, digits and `-`, e.g. `checkout-tested`";
            found.push(Diagnostic::spanned(
                file,
                text,
                &name,
                &message,
                Some(help.into()),
            ));
        }
        for (message, help) in rule.value.problems() {
            found.push(Diagnostic::spanned(file, text, &rule, &message, Some(help)));
        }
        if let Some(spec) = spec {
            for env in rule.value.environments() {
                if spec.environment(env).is_none() {
                    let known: Vec<&str> =
                        spec.environments.iter().map(|e| e.name.as_str()).collect();
                    let unknown = Diagnostic::spanned(
                        file,
                        text,
                        &rule,
                        &format!(
                            "rule `{}` names environment `{env}`, which sluice.yaml does not define",
                            name.value
                        ),
                        Some(format!("the environments are: {}", known.join(", "))),
                    );
                    found.push(point_at_key(unknown, text, "environments"));
                }
            }
        }
        rules.push(Rule {
            id: format!("rules.yaml:{}", name.value),
            origin: None,
            spec: rule.value,
        });
    }
    if found.is_empty() {
        Ok(rules)
    } else {
        Err(Diagnostics(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_is_pointed_at_not_its_rule() {
        let block = "rules:\n  tested:\n    kind: require_job\n    jbo: checkout\n";
        let error = &parse_rules(RULES_FILE, block, None).unwrap_err().0[0];
        assert_eq!((error.line, error.column), (4, 5), "{error}");
        let flow = "rules:\n  up: { kind: health_check, path: /, stauts: 503 }\n";
        let error = &parse_rules(RULES_FILE, flow, None).unwrap_err().0[0];
        assert_eq!((error.line, error.column), (2, 38), "{error}");
        assert!(error.message.contains("unknown field `stauts`"), "{error}");
    }

    #[test]
    fn a_rules_file_parses_in_order() {
        let text = "rules:\n  tested:\n    kind: require_job\n    job: checkout-regression\n  checkout-up:\n    kind: health_check\n    path: /checkout\n";
        let rules = parse_rules(RULES_FILE, text, None).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].id, "rules.yaml:tested");
        assert_eq!(
            rules[1].spec.extra_check().unwrap(),
            ExtraCheck {
                path: "/checkout".into(),
                status: 200,
                body_contains: None,
                max_latency: None
            }
        );
    }

    #[test]
    fn an_unknown_field_is_located() {
        let text = "rules:\n  tested:\n    kind: require_job\n    jobb: x\n";
        let error = parse_rules(RULES_FILE, text, None).unwrap_err();
        let shown = error.to_string();
        assert!(shown.contains("jobb"), "{shown}");
        assert!(shown.contains(".sluice/rules.yaml:"), "{shown}");
    }

    #[test]
    fn semantic_problems_point_at_the_rule() {
        let text = "rules:\n  slow:\n    kind: metric_gate\n    window: 5 minutes\n";
        let error = parse_rules(RULES_FILE, text, None).unwrap_err();
        assert_eq!(error.len(), 2, "{error}");
        assert!(error.0.iter().all(|d| d.line == 3), "{error}");
    }

    #[test]
    fn json_round_trips() {
        let rule = RuleSpec::ConfigGuard {
            environments: vec!["prod".into()],
            key: "PAYMENTS".into(),
            value: Some("on".into()),
        };
        let text = serde_json::to_string(&rule).unwrap();
        assert_eq!(serde_json::from_str::<RuleSpec>(&text).unwrap(), rule);
        assert!(rule.applies_to("prod") && !rule.applies_to("dev"));
        assert_eq!(rule.describe(), "`PAYMENTS` must stay `on` in prod");
    }

    #[test]
    fn a_block_names_the_rule_and_its_incident() {
        let rule = Rule {
            id: "R3".into(),
            origin: Some("INC-7 \"checkout fails\"".into()),
            spec: RuleSpec::RequireJob {
                job: "checkout-regression".into(),
                paths: vec![],
            },
        };
        assert_eq!(
            rule.blocks("no such job"),
            "blocked by rule R3 (from INC-7 \"checkout fails\"): no such job"
        );
    }
}
