//! `sluice validate [FILE]`: every error with its place, or a one-line
//! summary; for a `sluice.yaml`, its repository's `.sluice/rules.yaml` too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use sluice_spec::{Diagnostics, RULES_FILE, Spec};

pub fn validate(file: &Path) -> Result<ExitCode> {
    let is_rules = file.file_name().is_some_and(|n| n == "rules.yaml");
    let mut ok = true;
    if is_rules {
        // The environments a rule names are checked against the repository's sluice.yaml.
        let spec_file = file
            .parent()
            .and_then(Path::parent)
            .map(|r| r.join("sluice.yaml"));
        let spec = spec_file.and_then(|f| {
            let text = std::fs::read_to_string(&f).ok()?;
            sluice_spec::parse(&f.display().to_string(), &text).ok()
        });
        ok &= check_rules(file, spec.as_ref())?;
    } else {
        let text = read(file)?;
        let name = file.display().to_string();
        let spec = report(&name, sluice_spec::parse(&name, &text), summary);
        ok &= spec.is_some();
        let rules = rules_beside(file);
        if rules.exists() {
            ok &= check_rules(&rules, spec.as_ref())?;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read(file: &Path) -> Result<String> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text),
        Err(e) => bail!(
            "could not read {}: {e}\nhint: run this in the repository's root, or give the file: `sluice validate PATH`",
            file.display()
        ),
    }
}

/// `.sluice/rules.yaml` in the same repository as `spec_file`.
fn rules_beside(spec_file: &Path) -> PathBuf {
    let root = spec_file.parent().unwrap_or(Path::new(""));
    root.join(RULES_FILE)
}

fn check_rules(file: &Path, spec: Option<&Spec>) -> Result<bool> {
    let text = read(file)?;
    let name = file.display().to_string();
    let parsed = sluice_spec::parse_rules(&name, &text, spec);
    let summary = |name: &str, rules: &Vec<sluice_spec::Rule>| rules_summary(name, rules);
    Ok(report(&name, parsed, summary).is_some())
}

/// Prints the summary of what parsed, or every error and their count.
fn report<T>(
    name: &str,
    parsed: Result<T, Diagnostics>,
    summary: fn(&str, &T) -> String,
) -> Option<T> {
    match parsed {
        Ok(value) => {
            crate::say!("{}", summary(name, &value));
            Some(value)
        }
        Err(errors) => {
            eprintln!("{errors}\n");
            let count = errors.len();
            eprintln!("{name}: {count} error{}", if count == 1 { "" } else { "s" });
            None
        }
    }
}

fn summary(name: &str, spec: &Spec) -> String {
    let jobs = spec.pipeline.jobs.len();
    let environments: Vec<&str> = spec.environments.iter().map(|e| e.name.as_str()).collect();
    let envs = if environments.is_empty() {
        "no environments".to_string()
    } else {
        format!("environments {}", environments.join(", "))
    };
    format!(
        "{name}: ok: service `{}`, {jobs} job{}, {envs}",
        spec.service,
        if jobs == 1 { "" } else { "s" }
    )
}

fn rules_summary(name: &str, rules: &[sluice_spec::Rule]) -> String {
    let names: Vec<&str> = rules
        .iter()
        .map(|r| r.id.trim_start_matches("rules.yaml:"))
        .collect();
    format!(
        "{name}: ok: {} rule{}: {}",
        rules.len(),
        if rules.len() == 1 { "" } else { "s" },
        names.join(", ")
    )
}
