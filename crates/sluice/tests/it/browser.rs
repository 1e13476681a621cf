//! The web dashboard in a real browser: `ui-tests/browser.mjs` (Playwright
//! and Debian's Chromium) signs in, follows a running job's log live,
//! approves a promotion as an approver (a viewer cannot), and watches an
//! experiment's charts gain points; screenshots go to
//! `target/ui-screenshots`. `.ci/run` installs Chromium and playwright-core;
//! elsewhere the test says what is missing and passes only outside CI.

use std::path::PathBuf;
use std::process::Command;

use crate::support::{GitRepo, Server, copy_fixture, tempdir};

const SPEC: &str = r#"service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "checking cart $i"; sleep 0.5; done; printf '\033[32mall green\033[0m\n'
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  health: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }
environments:
  dev:
    deploy: auto
    instances: 1
    listen: 127.0.0.1:0
  prod:
    from: dev
    deploy: { approvals: 1 }
    instances: 1
    listen: 127.0.0.1:0
    strategy:
      ab: { steps: [20, 100], min_requests: 1000000, min_duration: 1s, max_step: 10m, metrics: [error_rate] }
"#;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What the browser test needs that is not here, if anything.
fn missing() -> Option<String> {
    let ui = workspace().join("ui-tests");
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node".into());
    }
    if !ui.join("node_modules/playwright-core").exists() {
        return Some("playwright-core (run `npm ci` in ui-tests/)".into());
    }
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        return Some("/usr/bin/chromium (apt-get install chromium)".into());
    }
    None
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    if let Some(what) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test, but {what} is missing"
        );
        eprintln!("skipped: {what} is missing");
        return;
    }
    let dir = tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let ana = server.token_for("ana", "approver", &[]).await;
    let vic = server.token_for("vic", "viewer", &[]).await;
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("shop v1", &[("sluice.yaml", SPEC)]);
    server.add_repo(&repo);
    let shots = workspace().join("target/ui-screenshots");
    let out = tokio::process::Command::new("node")
        .arg(workspace().join("ui-tests/browser.mjs"))
        .env("SLUICE_URL", &server.url)
        .env("ADMIN_TOKEN", &server.token)
        .env("ANA_TOKEN", &ana)
        .env("VIC_TOKEN", &vic)
        .env("REPO", &repo.path)
        .env("SHOTS", &shots)
        .output()
        .await
        .expect("run node");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    assert!(out.status.success(), "the browser test failed:\n{said}");
    for page in [
        "run",
        "promotions",
        "promotions-as-viewer",
        "environment",
        "experiment",
        "overview",
        "overview-phone",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
    let prod = server.get("/deployments?service=shop&env=prod").await;
    assert!(
        prod.as_array()
            .unwrap()
            .iter()
            .any(|d| d["release"] == 1 && d["status"] == "succeeded"),
        "{prod:#}"
    );
}
