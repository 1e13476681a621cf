//! `sluice validate [FILE]`: every error with its place, or a one-line summary.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

pub fn validate(file: &Path) -> Result<ExitCode> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => bail!(
            "could not read {}: {e}\nhint: run this in the repository's root, or give the file: `sluice validate PATH`",
            file.display()
        ),
    };
    let name = file.display().to_string();
    match sluice_spec::parse(&name, &text) {
        Ok(spec) => {
            crate::say!("{}", summary(&name, &spec));
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}\n");
            let count = errors.len();
            eprintln!("{name}: {count} error{}", if count == 1 { "" } else { "s" });
            Ok(ExitCode::FAILURE)
        }
    }
}

fn summary(name: &str, spec: &sluice_spec::Spec) -> String {
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
