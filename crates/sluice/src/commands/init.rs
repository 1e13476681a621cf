//! `sluice init [DIR]`: a starting `sluice.yaml` for an existing repository,
//! named after the project, with build, test and start commands guessed
//! from what is there (Cargo.toml, package.json, pyproject.toml, setup.py or
//! requirements.txt, go.mod, Makefile), comments on what to fill in, and
//! validated before it is written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::say;

/// What a repository's files say about building, testing and running it.
struct Guess {
    kind: &'static str,
    /// The project's own name, when its manifest gives one.
    name: Option<String>,
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
    let guess = guess(&dir);
    let service = service_name(guess.name.as_deref(), &dir);
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

/// The project's name (or else the directory's) as a service name:
/// lowercase letters, digits and dashes.
fn service_name(project: Option<&str>, dir: &Path) -> String {
    let from_dir = || {
        dir.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    };
    // An npm scope (`@acme/shop`) is not part of the name.
    let name = project
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(from_dir)
        .to_lowercase();
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean: String = clean.trim_matches('-').chars().take(63).collect();
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

/// Every file and directory at the top of the repository but git's and Sluice's own.
fn top_level(dir: &Path) -> Vec<String> {
    let mut all: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let skip = name.starts_with(".git") || name == ".sluice" || name == "sluice.yaml";
            (!skip).then(|| {
                if e.path().is_dir() {
                    format!("{name}/")
                } else {
                    name
                }
            })
        })
        .collect();
    all.sort();
    all
}

fn guess(dir: &Path) -> Guess {
    if let Some(cargo) = read(dir, "Cargo.toml") {
        let name = toml_name(&cargo).unwrap_or_else(|| "app".into());
        return Guess {
            kind: "Rust (Cargo)",
            name: Some(name.clone()),
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
        return node(dir, &package);
    }
    if dir.join("pyproject.toml").exists()
        || dir.join("setup.py").exists()
        || dir.join("requirements.txt").exists()
    {
        return python(dir);
    }
    if let Some(gomod) = read(dir, "go.mod") {
        let module = gomod
            .lines()
            .find_map(|l| l.strip_prefix("module "))
            .and_then(|m| m.trim().rsplit('/').next().map(str::to_string))
            .unwrap_or_else(|| "app".into());
        return Guess {
            kind: "Go",
            name: Some(module.clone()),
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
        // `make run` starts it from the release, which then carries the whole tree.
        let (artifact, run) = if has("run") {
            (top_level(dir), Some("exec make run".to_string()))
        } else {
            (Vec::new(), None)
        };
        return Guess {
            kind: "Makefile",
            name: None,
            jobs,
            artifact,
            run,
        };
    }
    Guess {
        kind: "unrecognised",
        name: None,
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

/// A Node.js project: dependencies installed from its lock, its tests, its
/// build if it has one; the artifact carries what `node` needs to start it
/// (its code, `package.json` and `node_modules`), started with `node`
/// itself (not `npm start`, whose wrapper checks for updates and hides
/// signals).
fn node(dir: &Path, package: &str) -> Guess {
    let manifest: serde_json::Value = serde_json::from_str(package).unwrap_or_default();
    let scripts = &manifest["scripts"];
    let install = if dir.join("package-lock.json").exists() {
        "npm ci --no-audit --no-fund"
    } else {
        "npm install --no-audit --no-fund"
    };
    let test = if scripts["test"].is_string() {
        " && npm test"
    } else {
        ""
    };
    let mut jobs = vec![("test", None, format!("{install}{test}"))];
    if scripts["build"].is_string() {
        jobs.push(("build", Some("test"), format!("{install} && npm run build")));
    }
    // What starts it: `node FILE` in the start script, else `main`, else index.js.
    let entry = scripts["start"]
        .as_str()
        .and_then(|start| start.strip_prefix("node "))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        .or_else(|| manifest["main"].as_str().map(str::to_string))
        .or_else(|| {
            dir.join("index.js")
                .exists()
                .then(|| "index.js".to_string())
        })
        .filter(|e| !e.is_empty() && !e.starts_with(['-', '/']) && !e.contains(".."));
    let mut artifact = existing(
        dir,
        &["dist/", "build/", "src/", "lib/", "public/", "views/"],
    );
    if let Some(entry) = &entry {
        let top = entry.split('/').next().unwrap_or(entry);
        let top = if entry.contains('/') {
            format!("{top}/")
        } else {
            top.to_string()
        };
        if !artifact.contains(&top) {
            artifact.push(top);
        }
    }
    artifact.extend(existing(dir, &["package.json", "package-lock.json"]));
    // What it needs at run time, installed by the test job.
    if manifest["dependencies"]
        .as_object()
        .is_some_and(|deps| !deps.is_empty())
    {
        artifact.push("node_modules/".into());
    }
    Guess {
        kind: "Node.js (npm)",
        name: manifest["name"].as_str().map(str::to_string),
        jobs,
        artifact,
        run: entry.map(|e| format!("exec node {e}")),
    }
}

/// A Python project: its requirements installed into `.deps` (beside the
/// code, carried in the artifact), its tests run with them; the artifact
/// carries its packages and modules, started with `python3` when it has an
/// obvious entry point.
fn python(dir: &Path) -> Guess {
    let name = read(dir, "pyproject.toml").and_then(|t| toml_name(&t));
    let requirements = dir.join("requirements.txt").exists();
    let with_deps = if requirements {
        "PYTHONPATH=.deps "
    } else {
        ""
    };
    let tests = if dir.join("tests").is_dir() {
        Some("tests")
    } else if dir.join("test").is_dir() {
        Some("test")
    } else {
        None
    };
    let pytest = read(dir, "requirements.txt")
        .into_iter()
        .chain(read(dir, "requirements-dev.txt"))
        .chain(read(dir, "pyproject.toml"))
        .any(|t| t.contains("pytest"));
    let test = match (tests, pytest) {
        (_, true) => format!("{with_deps}python3 -m pytest -q"),
        (Some(t), false) => format!("{with_deps}python3 -m unittest discover -s {t} -q"),
        (None, false) => format!("{with_deps}python3 -m unittest discover -q"),
    };
    let mut steps = Vec::new();
    if requirements {
        steps.push("python3 -m pip install --quiet --target .deps -r requirements.txt".to_string());
    }
    steps.push(test);
    let mut artifact = Vec::new();
    let mut entry = None;
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut names: Vec<(String, bool)> = entries
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.path().is_dir(),
                )
            })
            .collect();
        names.sort();
        for (file, is_dir) in names {
            let package = is_dir && dir.join(&file).join("__init__.py").exists();
            let code = package
                || (is_dir && ["src", "app", "templates", "static"].contains(&file.as_str()));
            if code {
                artifact.push(format!("{file}/"));
            } else if !is_dir
                && file.ends_with(".py")
                && !file.starts_with("test")
                && file != "setup.py"
            {
                artifact.push(file.clone());
                if entry.is_none()
                    && ["app.py", "main.py", "server.py", "wsgi.py"].contains(&file.as_str())
                {
                    entry = Some(file);
                }
            }
        }
    }
    artifact.extend(existing(
        dir,
        &["pyproject.toml", "setup.py", "requirements.txt"],
    ));
    if requirements {
        artifact.push(".deps/".into());
    }
    Guess {
        kind: "Python",
        name,
        jobs: vec![("test", None, steps.join(" && "))],
        artifact,
        run: entry.map(|e| format!("{with_deps}exec python3 {e}")),
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
                "# How one instance starts; it gets HOST and PORT and should listen there.\nrun:\n  command: {}\n  health: {{ path: / }}   # a path your service answers 200 on once it is ready\n{environments}",
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
