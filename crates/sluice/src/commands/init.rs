//! `sluice init [DIR]`: a starting `sluice.yaml` for an existing repository,
//! with build and test commands guessed from what is there (Cargo.toml,
//! package.json, pyproject.toml or setup.py, go.mod, Makefile), comments on
//! what to fill in, and validated before it is written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::say;

/// What a repository's files say about building, testing and running it.
struct Guess {
    kind: &'static str,
    /// `(job, needs, command)`.
    jobs: Vec<(&'static str, Option<&'static str>, String)>,
    artifact: Vec<String>,
    /// How to start one instance, when it can be guessed.
    run: Option<String>,
}

pub fn init(dir: Option<PathBuf>, force: bool) -> Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let target = dir.join(sluice_spec::SPEC_FILE);
    if target.exists() && !force {
        bail!(
            "{} exists already; `sluice validate` checks it, `sluice init --force` replaces it",
            target.display()
        );
    }
    let service = service_name(&dir);
    let guess = guess(&dir);
    let text = render(&service, &guess);
    if let Err(errors) = sluice_spec::parse(sluice_spec::SPEC_FILE, &text) {
        bail!("the written sluice.yaml would not be valid (a bug in `sluice init`):\n{errors}");
    }
    std::fs::write(&target, &text)
        .with_context(|| format!("could not write {}", target.display()))?;
    say!("wrote {} for a {} project", target.display(), guess.kind);
    say!(
        "read it, fill in what its comments ask, then `sluice validate` and `sluice repo add {}`",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The directory's name as a service name: lowercase letters, digits and dashes.
fn service_name(dir: &Path) -> String {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_lowercase()))
        .unwrap_or_default();
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-').to_string();
    if clean.is_empty() || !clean.starts_with(|c: char| c.is_ascii_alphabetic()) {
        "service".into()
    } else {
        clean
    }
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// `name = "x"` in a Cargo.toml's or pyproject.toml's text.
fn toml_name(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("name"))
        .and_then(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
}

fn existing(dir: &Path, candidates: &[&str]) -> Vec<String> {
    candidates
        .iter()
        .filter(|c| dir.join(c.trim_end_matches('/')).exists())
        .map(|c| c.to_string())
        .collect()
}

fn guess(dir: &Path) -> Guess {
    if let Some(cargo) = read(dir, "Cargo.toml") {
        let name = toml_name(&cargo).unwrap_or_else(|| "app".into());
        return Guess {
            kind: "Rust (Cargo)",
            jobs: vec![
                ("test", None, "cargo test --locked".into()),
                (
                    "build",
                    Some("test"),
                    "cargo build --release --locked".into(),
                ),
            ],
            artifact: vec![format!("target/release/{name}")],
            run: Some(format!("exec ./target/release/{name}")),
        };
    }
    if let Some(package) = read(dir, "package.json") {
        let scripts: serde_json::Value = serde_json::from_str::<serde_json::Value>(&package)
            .map(|p| p["scripts"].clone())
            .unwrap_or_default();
        let install = if dir.join("package-lock.json").exists() {
            "npm ci"
        } else {
            "npm install"
        };
        let mut jobs = vec![("test", None, format!("{install} && npm test"))];
        if scripts["build"].is_string() {
            jobs.push(("build", Some("test"), format!("{install} && npm run build")));
        }
        let mut artifact = existing(dir, &["dist/", "build/", "src/", "lib/"]);
        artifact.extend(existing(dir, &["package.json", "package-lock.json"]));
        return Guess {
            kind: "Node.js (npm)",
            jobs,
            artifact,
            run: scripts["start"]
                .is_string()
                .then(|| "exec npm start".to_string()),
        };
    }
    if dir.join("pyproject.toml").exists() || dir.join("setup.py").exists() {
        let test = if dir.join("tests").is_dir() || dir.join("test").is_dir() {
            "python3 -m pytest -q"
        } else {
            "python3 -m unittest discover -q"
        };
        let mut artifact = existing(dir, &["src/", "app/"]);
        artifact.extend(existing(dir, &["pyproject.toml", "setup.py"]));
        return Guess {
            kind: "Python",
            jobs: vec![("test", None, test.into())],
            artifact,
            run: None,
        };
    }
    if let Some(gomod) = read(dir, "go.mod") {
        let module = gomod
            .lines()
            .find_map(|l| l.strip_prefix("module "))
            .and_then(|m| m.trim().rsplit('/').next().map(str::to_string))
            .unwrap_or_else(|| "app".into());
        return Guess {
            kind: "Go",
            jobs: vec![
                ("test", None, "go vet ./... && go test ./...".into()),
                ("build", Some("test"), format!("go build -o bin/{module} .")),
            ],
            artifact: vec!["bin/".into()],
            run: Some(format!("exec ./bin/{module}")),
        };
    }
    if let Some(makefile) = read(dir, "Makefile") {
        let has = |target: &str| {
            makefile
                .lines()
                .any(|l| l.starts_with(&format!("{target}:")))
        };
        let mut jobs = vec![("build", None, "make".to_string())];
        if has("test") {
            jobs.push(("test", Some("build"), "make test".into()));
        }
        return Guess {
            kind: "Makefile",
            jobs,
            artifact: Vec::new(),
            run: None,
        };
    }
    Guess {
        kind: "unrecognised",
        jobs: vec![(
            "test",
            None,
            "echo 'sluice init found no build system: replace this step with your tests' && false"
                .into(),
        )],
        artifact: Vec::new(),
        run: None,
    }
}

fn render(service: &str, guess: &Guess) -> String {
    let mut out = format!(
        "# The service definition Sluice reads at every commit; docs/sluice-yaml.md\n\
         # lists every field. `sluice init` guessed this from a {} project:\n\
         # check each command before you rely on it.\n\
         service: {service}\n\
         mainline: main          # other branches are changes under review\n\
         pipeline:\n  jobs:\n",
        guess.kind
    );
    for (name, needs, command) in &guess.jobs {
        out.push_str(&format!("    {name}:\n"));
        if let Some(needs) = needs {
            out.push_str(&format!("      needs: [{needs}]\n"));
        }
        out.push_str(&format!(
            "      steps:\n        - run: {}\n",
            yaml_string(command)
        ));
    }
    if guess.artifact.is_empty() {
        out.push_str(
            "  # What a green mainline run keeps as its release; fill in and uncomment:\n  # artifact:\n  #   paths: [dist/]\n",
        );
    } else {
        out.push_str(&format!(
            "  # What a green mainline run keeps as its release.\n  artifact:\n    paths: [{}]\n",
            guess.artifact.join(", ")
        ));
    }
    let environments = "environments:\n  dev:\n    deploy: auto          # every green mainline release\n    instances: 1\n    listen: 127.0.0.1:8081  # the entry point Sluice's proxy opens\n  prod:\n    from: dev\n    deploy: { approvals: 1 }\n    instances: 2\n    listen: 127.0.0.1:8082\n";
    match &guess.run {
        Some(command) => {
            out.push_str(&format!(
                "# How one instance starts; it gets PORT and should answer on it.\nrun:\n  command: {}\n  # health: {{ path: /healthz }}   # add the path your service answers when it is ready\n{environments}",
                yaml_string(command)
            ));
        }
        None => {
            out.push_str("# How one instance starts (it gets PORT); fill in and uncomment to deploy:\n# run:\n#   command: exec ./start-my-service\n#   health: { path: /healthz }\n");
            for line in environments.lines() {
                out.push_str(&format!("# {line}\n"));
            }
        }
    }
    out
}

/// A plain YAML scalar when it is one, a quoted one otherwise.
fn yaml_string(text: &str) -> String {
    let plain = !text.contains(": ")
        && !text.contains(" #")
        && !text.starts_with(['\'', '"', '[', '{', '&', '*', '!', '|', '>', '%', '@', '`']);
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}
