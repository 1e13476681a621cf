//! `sluice validate` as a user runs it: every error, exit codes, summary.

use std::process::Command;

use crate::support::SLUICE;

fn validate(text: &str) -> (bool, String, String) {
    let dir = crate::support::tempdir();
    let file = dir.path().join("sluice.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(SLUICE)
        .current_dir(dir.path())
        .args(["validate"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_file_gets_a_one_line_summary() {
    let (ok, stdout, _) = validate(
        "service: shop\npipeline:\n  jobs:\n    unit:\n      steps: [{ run: make test }]\nenvironments:\n  dev: { listen: 127.0.0.1:8101, deploy: auto }\n",
    );
    assert!(ok);
    insta::assert_snapshot!(stdout, @"sluice.yaml: ok: service `shop`, 1 job, environments dev");
}

#[test]
fn a_bad_file_gets_every_error_and_exit_1() {
    let (ok, _, stderr) = validate(
        "service: shop\npipeline:\n  jobs:\n    unit:\n      needs: [lint]\n      timeout: 5\n      steps: [{ run: make test }]\n",
    );
    assert!(!ok);
    insta::assert_snapshot!(stderr, @r"
    error: unknown job `lint` in `needs`
     --> sluice.yaml:5:15
      |
    5 |       needs: [lint]
      |               ^^^^
      = help: expected one of the jobs under `pipeline.jobs`: unit

    error: bad timeout: `5` has no unit
     --> sluice.yaml:6:16
      |
    6 |       timeout: 5
      |                ^
      = help: write a number and a unit: `500ms`, `30s`, `10m`, `1h30m`

    sluice.yaml: 2 errors
    ");
}

#[test]
fn a_missing_file_says_what_to_do() {
    let dir = crate::support::tempdir();
    let out = Command::new(SLUICE)
        .current_dir(dir.path())
        .args(["validate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not read sluice.yaml") && stderr.contains("hint:"),
        "{stderr}"
    );
}

#[test]
fn the_repository_rules_are_checked_with_the_sluice_yaml() {
    let dir = crate::support::tempdir();
    let spec = "service: shop\npipeline:\n  jobs:\n    unit:\n      steps: [{ run: make test }]\nenvironments:\n  dev: { listen: 127.0.0.1:8101, deploy: auto }\n";
    std::fs::write(dir.path().join("sluice.yaml"), spec).unwrap();
    std::fs::create_dir(dir.path().join(".sluice")).unwrap();
    let rules = dir.path().join(".sluice/rules.yaml");
    let run = |args: &[&str]| {
        let out = Command::new(SLUICE)
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    std::fs::write(
        &rules,
        "rules:\n  tested:\n    kind: require_job\n    job: unit\n",
    )
    .unwrap();
    let (ok, text) = run(&["validate"]);
    assert!(ok, "{text}");
    insta::assert_snapshot!(text, @r"
    sluice.yaml: ok: service `shop`, 1 job, environments dev
    .sluice/rules.yaml: ok: 1 rule: tested
    ");
    std::fs::write(
        &rules,
        "rules:\n  up:\n    kind: health_check\n    environments: [prod]\n    path: /\n",
    )
    .unwrap();
    let (ok, text) = run(&["validate", ".sluice/rules.yaml"]);
    assert!(!ok);
    insta::assert_snapshot!(text, @r"
    error: rule `up` names environment `prod`, which sluice.yaml does not define
     --> .sluice/rules.yaml:4:5
      |
    4 |     environments: [prod]
      |     ^^^^^^^^^^^^
      = help: the environments are: dev

    .sluice/rules.yaml: 1 error
    ");
}
