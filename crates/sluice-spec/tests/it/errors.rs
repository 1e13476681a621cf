//! Snapshots of the errors rendered for each bad file under `tests/fixtures/bad`.

use std::path::Path;

fn fixtures() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_bad_file_renders_its_errors() {
    let all = fixtures();
    assert!(
        all.len() >= 12,
        "expected at least 12 bad fixtures, found {}",
        all.len()
    );
    for (name, text) in all {
        let errors = sluice_spec::parse(&format!("{name}.yaml"), &text)
            .expect_err(&format!("{name}.yaml should not validate"));
        insta::assert_snapshot!(name.clone(), errors.to_string());
    }
}

#[test]
fn all_errors_are_reported_not_just_the_first() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad/many-errors.yaml"),
    )
    .unwrap();
    let errors = sluice_spec::parse("many-errors.yaml", &text).unwrap_err();
    assert!(errors.len() >= 7, "found only {}: {errors}", errors.len());
    let lines: Vec<usize> = errors.0.iter().map(|d| d.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "errors come in file order");
}
