//! `sluice init` on a sample of each kind of repository it recognises: the
//! written sluice.yaml validates and carries the commands it guessed.

use std::process::Command;

use crate::support::{SLUICE, tempdir};

fn init(files: &[(&str, &str)]) -> (String, String) {
    let dir = tempdir();
    let repo = dir.path().join("my-service");
    for (file, text) in files {
        let path = repo.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(&repo).unwrap();
    let out = Command::new(SLUICE)
        .arg("init")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = repo.join("sluice.yaml");
    let checked = Command::new(SLUICE)
        .arg("validate")
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let again = Command::new(SLUICE)
        .arg("init")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "init keeps an existing sluice.yaml"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    (
        std::fs::read_to_string(spec).unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn each_kind_of_repository_gets_a_valid_starting_point() {
    let (rust, said) = init(&[(
        "Cargo.toml",
        "[package]\nname = \"billing\"\nversion = \"0.1.0\"\n",
    )]);
    assert!(said.contains("Rust (Cargo)"), "{said}");
    assert!(rust.contains("service: my-service"), "{rust}");
    assert!(
        rust.contains("cargo test --locked") && rust.contains("target/release/billing"),
        "{rust}"
    );

    let (node, _) = init(&[
        (
            "package.json",
            r#"{"scripts": {"test": "jest", "build": "tsc", "start": "node dist/index.js"}}"#,
        ),
        ("package-lock.json", "{}"),
        ("dist/index.js", ""),
    ]);
    assert!(
        node.contains("npm ci && npm test") && node.contains("npm run build"),
        "{node}"
    );
    assert!(
        node.contains("exec npm start") && node.contains("dist/"),
        "{node}"
    );

    let (python, _) = init(&[
        ("pyproject.toml", "[project]\nname = \"shop\"\n"),
        ("tests/test_x.py", ""),
    ]);
    assert!(python.contains("python3 -m pytest -q"), "{python}");
    assert!(
        python.contains("# run:"),
        "no start command to guess: {python}"
    );

    let (setup, _) = init(&[("setup.py", "from setuptools import setup\n")]);
    assert!(setup.contains("python3 -m unittest discover -q"), "{setup}");

    let (go, _) = init(&[("go.mod", "module example.com/acme/api\n\ngo 1.22\n")]);
    assert!(
        go.contains("go test ./...") && go.contains("go build -o bin/api ."),
        "{go}"
    );

    let (make, _) = init(&[("Makefile", "all:\n\tcc main.c\n\ntest:\n\t./run-tests\n")]);
    assert!(
        make.contains("run: make\n") && make.contains("make test"),
        "{make}"
    );

    let (nothing, said) = init(&[("README.md", "# hi\n")]);
    assert!(said.contains("unrecognised"), "{said}");
    assert!(nothing.contains("found no build system"), "{nothing}");
}
