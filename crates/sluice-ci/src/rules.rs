//! The rules CI enforces: `require_job` rules, the server's and those in the
//! commit's own `.sluice/rules.yaml`, for the changes they cover. A run that
//! lacks a required job, or whose required job does not pass, fails with the
//! rule named.

use std::collections::HashMap;
use std::path::Path;

use sluice_spec::{Diagnostics, RULES_FILE, Rule, RuleSpec, Spec};
use sluice_store::{RunStatus, Store};

use crate::git;

/// A job that a rule requires of this change.
pub(crate) struct Required {
    pub rule: Rule,
    pub job: String,
}

pub(crate) enum RulesError {
    /// The commit's `.sluice/rules.yaml` is not valid.
    Invalid(Diagnostics),
    Other(String),
}

/// The jobs that rules require of the change at `sha`.
pub(crate) async fn required_jobs(
    store: &Store,
    source: &Path,
    sha: &str,
    spec: &Spec,
) -> Result<Vec<Required>, RulesError> {
    let mut rules: Vec<Rule> = store
        .rules(Some(&spec.service), true)
        .await
        .map_err(|e| RulesError::Other(format!("could not read the rules: {e}")))?
        .into_iter()
        .filter_map(|r| Rule::stored(r.name(), r.origin(), &r.spec).ok())
        .collect();
    let own = git::show_file(source, sha, RULES_FILE)
        .await
        .map_err(|e| RulesError::Other(format!("{e:#}")))?;
    if let Some(text) = own {
        rules.extend(
            sluice_spec::parse_rules(RULES_FILE, &text, Some(spec)).map_err(RulesError::Invalid)?,
        );
    }
    let mut files: Option<Vec<String>> = None;
    let mut required = Vec::new();
    for rule in rules {
        let RuleSpec::RequireJob { job, paths } = &rule.spec else {
            continue;
        };
        if !paths.is_empty() {
            if files.is_none() {
                files = Some(
                    git::changed_files(source, sha)
                        .await
                        .map_err(|e| RulesError::Other(format!("{e:#}")))?,
                );
            }
            let touched = files
                .iter()
                .flatten()
                .any(|f| paths.iter().any(|p| f.starts_with(p.as_str())));
            if !touched {
                continue;
            }
        }
        let job = job.clone();
        required.push(Required { rule, job });
    }
    Ok(required)
}

/// Why the run cannot pass: a required job the pipeline does not have.
pub(crate) fn missing(required: &[Required], spec: &Spec) -> Option<(String, String)> {
    required
        .iter()
        .find(|r| spec.pipeline.jobs.iter().all(|j| j.name != r.job))
        .map(|r| {
            (
                r.rule.id.clone(),
                r.rule
                    .blocks(&format!("the pipeline has no job `{}`", r.job)),
            )
        })
}

/// Why the run failed a rule: a required job that did not pass.
pub(crate) fn unmet(
    required: &[Required],
    ended: &HashMap<String, RunStatus>,
) -> Option<(String, String)> {
    required.iter().find_map(|r| match ended.get(&r.job) {
        Some(RunStatus::Success) => None,
        Some(status) => Some((
            r.rule.id.clone(),
            r.rule.blocks(&format!("job `{}` ended {status}", r.job)),
        )),
        None => Some((
            r.rule.id.clone(),
            r.rule.blocks(&format!("job `{}` did not run", r.job)),
        )),
    })
}
