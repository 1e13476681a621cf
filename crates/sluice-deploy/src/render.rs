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
    // A template comes from a commit: its work and its size are bounded.
    templates.set_fuel(Some(FUEL));
    templates.set_recursion_limit(64);
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
        let mut rendered = Bounded::default();
        templates
            .template_from_str(&source)
            .and_then(|template| {
                template
                    .render_captured_to(&context, &mut rendered)
                    .map(drop)
            })
            .map_err(|e| match rendered.over {
                true => anyhow::anyhow!(
                    "{}: the rendered file is larger than {} KiB",
                    file.template,
                    MAX_RENDERED >> 10
                ),
                false => anyhow::anyhow!("{}: {e}", file.template),
            })
            .with_context(|| format!("could not render {} for {}", file.template, env.name))?;
        let rendered = String::from_utf8_lossy(&rendered.bytes).into_owned();
        out.push((file.to.clone(), rendered));
    }
    Ok(out)
}

/// The work a template may do (minijinja's instructions): far more than a
/// config file needs, far less than a loop that renders gigabytes.
const FUEL: u64 = 2_000_000;
/// The largest rendered config file.
pub const MAX_RENDERED: usize = 1 << 20;

/// What a template writes, refused past [`MAX_RENDERED`].
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED {
            self.over = true;
            return Err(std::io::Error::other("the rendered file is too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

    #[test]
    fn a_template_that_renders_without_end_is_stopped() {
        let spec = sluice_spec::parse("s", SPEC).unwrap();
        let dev = spec.environment("dev").unwrap();
        let table = [
            (
                "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}",
                "fuel",
            ),
            (
                "{% for a in range(100) %}{{ 'y' * 100000 }}{% endfor %}",
                "larger than 1024 KiB",
            ),
            (
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                "recursion",
            ),
        ];
        for (template, why) in table {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("app.toml.tmpl"), template).unwrap();
            let error = render(&spec, dev, "v1", dir.path()).unwrap_err();
            let text = format!("{error:#}");
            assert!(
                text.contains(why) && text.contains("app.toml.tmpl"),
                "{template}: {text}"
            );
        }
    }

    #[test]
    fn a_template_that_is_a_link_out_of_the_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("token"), "slc_secret").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("token"),
            dir.path().join("app.toml.tmpl"),
        )
        .unwrap();
        let spec = sluice_spec::parse("s", SPEC).unwrap();
        let error = render(&spec, spec.environment("dev").unwrap(), "v1", dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains("leads outside"), "{error:#}");
    }
}
