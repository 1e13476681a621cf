//! Configuration management: `run.config_files` templates rendered per
//! environment with minijinja, and a hash of what an instance is given, so
//! drift from the desired configuration can be seen.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use minijinja::{Environment as Templates, UndefinedBehavior};
use sha2::{Digest, Sha256};
use sluice_spec::{Environment, Spec};

/// Renders every config file of `spec` for `env`; returns `(to, text)` pairs.
/// Templates see `service`, `environment`, `release`, `instances`, `listen`
/// and `config` (the environment's values); an undefined name is an error.
pub fn render(
    spec: &Spec,
    env: &Environment,
    release: &str,
    release_dir: &Path,
) -> Result<Vec<(String, String)>> {
    let Some(run) = &spec.run else {
        return Ok(Vec::new());
    };
    let mut templates = Templates::new();
    templates.set_undefined_behavior(UndefinedBehavior::Strict);
    templates.set_keep_trailing_newline(true);
    let context = minijinja::context! {
        service => spec.service,
        environment => env.name,
        release => release,
        instances => env.instances,
        listen => env.listen.to_string(),
        config => env.config,
    };
    let mut out = Vec::new();
    for file in &run.config_files {
        let path = sluice_spec::paths::existing_inside(release_dir, &file.template);
        let source = path.and_then(std::fs::read_to_string).with_context(|| {
            format!(
                "template {} is not in the release; add it to the repository",
                file.template
            )
        })?;
        let rendered = templates
            .render_str(&source, &context)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.template))
            .with_context(|| format!("could not render {} for {}", file.template, env.name))?;
        out.push((file.to.clone(), rendered));
    }
    Ok(out)
}

/// Writes rendered files under `dir`.
pub fn write(dir: &Path, files: &[(String, String)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (to, text) in files {
        let path = sluice_spec::paths::inside(dir, to)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

/// A digest of an instance's configuration: values and rendered files.
pub fn config_hash(values: &BTreeMap<String, String>, files: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in values {
        hasher.update(format!("{k}={v}\n"));
    }
    for (to, text) in files {
        hasher.update(format!("--- {to}\n{text}\n"));
    }
    hex::encode(&hasher.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "service: shop\npipeline:\n  jobs:\n    a:\n      steps: [{ run: 'true' }]\nrun:\n  command: ./start\n  config_files:\n    - { template: app.toml.tmpl, to: conf/app.toml }\nenvironments:\n  dev: { listen: 127.0.0.1:0, config: { LOG_LEVEL: debug } }\n  prod: { listen: 127.0.0.1:0, instances: 4, config: { LOG_LEVEL: warn } }\n";

    #[test]
    fn renders_each_environment_with_its_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.toml.tmpl"), "env = \"{{ environment }}\"\nlevel = \"{{ config.LOG_LEVEL }}\"\nworkers = {{ instances }}\nrelease = \"{{ release }}\"\n").unwrap();
        let spec = sluice_spec::parse("s", SPEC).unwrap();
        let dev = render(&spec, spec.environment("dev").unwrap(), "v3", dir.path()).unwrap();
        let prod = render(&spec, spec.environment("prod").unwrap(), "v3", dir.path()).unwrap();
        assert_eq!(dev[0].0, "conf/app.toml");
        assert_eq!(
            dev[0].1,
            "env = \"dev\"\nlevel = \"debug\"\nworkers = 1\nrelease = \"v3\"\n"
        );
        assert!(prod[0].1.contains("level = \"warn\"") && prod[0].1.contains("workers = 4"));
        assert_ne!(
            config_hash(&spec.environment("dev").unwrap().config, &dev),
            config_hash(&spec.environment("prod").unwrap().config, &prod)
        );
    }

    #[test]
    fn an_undefined_value_is_an_error_naming_the_template() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("app.toml.tmpl"),
            "x = {{ config.MISSING }}\n",
        )
        .unwrap();
        let spec = sluice_spec::parse("s", SPEC).unwrap();
        let error = render(&spec, spec.environment("dev").unwrap(), "v1", dir.path()).unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("app.toml.tmpl") && text.contains("dev"),
            "{text}"
        );
    }
}
