//! Learning from failure, end to end: a release with a bug in `/checkout`
//! that no test covers reaches prod as an experiment and is rolled back;
//! Sluice opens an incident whose top suspect is that release; the
//! postmortem's lessons become rules; a later change without the required
//! job fails CI, a change that brings the bug back stops in dev, and the
//! rules, replayed against the original release, say they would have caught it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{GitRepo, Server, copy_fixture, tempdir};

const SPEC: &str = r#"service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: python3 -m unittest discover -s tests -q
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  ready_timeout: 4s
  health: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }
environments:
  dev:
    deploy: auto
    instances: 1
    listen: 127.0.0.1:0
  prod:
    from: dev
    deploy: auto
    instances: 2
    listen: 127.0.0.1:0
    strategy:
      ab: { steps: [20, 100], min_requests: 30, min_duration: 1s, max_step: 60s, metrics: [error_rate] }
"#;

const REGRESSION_JOB: &str = r#"    checkout-regression:
      needs: [unit]
      steps:
        - run: python3 -c 'import json; print(json.dumps(["cart with one item"]))'
"#;

/// The spec with the job the postmortem asks for.
fn spec_with_regression_job() -> String {
    SPEC.replace("  artifact:", &format!("{REGRESSION_JOB}  artifact:"))
}

/// Users checking out in prod, each a new one (no cookie), until stopped.
fn shoppers(url: String, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(180);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let _ = reqwest::Client::new().get(&url).send().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

fn has_error_rate_jump(incident: &Value) -> bool {
    incident["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "metric.error_rate")
}

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "sluice {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the CLI and checks its exit code; returns its output.
fn cli_exits(server: &Server, args: &[&str], code: i32) -> String {
    let out = server.cli(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "sluice {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Digits become `#` (release, rule and incident numbers stay), so times,
/// counts and scores do not make a snapshot differ between runs.
fn stable(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let named = i > 0 && matches!(chars[i - 1], 'v' | 'R') || out.ends_with("INC-");
        if chars[i].is_ascii_digit() && !named {
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            {
                i += 1;
            }
            out.push('#');
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test]
async fn an_incident_becomes_rules_that_stop_the_bug_coming_back() {
    let dir = tempdir();
    let mut server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("shop v1", &[("sluice.yaml", SPEC)]);
    server.add_repo(&repo);
    let prod = server.wait_env("shop", "prod", 1, 2).await;
    let checkout = format!("http://{}/checkout", prod["listen"].as_str().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let load = shoppers(checkout, stop.clone());

    // v2 breaks checkout; its tests pass, dev's health check passes, and
    // prod's experiment rolls it back.
    repo.commit(
        "express checkout",
        &[("app/CHECKOUT_BUG", "the cart total is undefined\n")],
    );
    let incident = server
        .wait_for("/incidents?service=shop", "an incident", |i| {
            i["environment"] == "prod"
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    assert_eq!(incident["trigger_kind"], "experiment", "{incident:#}");
    assert_eq!(incident["status"], "open");
    assert!(
        incident["trigger_detail"]
            .as_str()
            .unwrap()
            .contains("GET /checkout"),
        "{incident:#}"
    );
    let id = incident["id"].as_i64().unwrap();
    let view = server.get(&format!("/incidents/{id}")).await;
    let top = &view["suspects"][0];
    assert_eq!(top["release"], 2, "{:#}", view["suspects"]);
    assert_eq!(top["environment"], "prod");
    assert!(
        top["why"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("app/CHECKOUT_BUG")),
        "{top:#}"
    );
    assert!(
        has_error_rate_jump(&view),
        "the proxy's error-rate jump is on the timeline"
    );
    let timeline: Vec<String> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "metric.error_rate" && e["environment"] == "prod")
        .map(|e| {
            format!(
                "{:<22} {}",
                e["kind"].as_str().unwrap(),
                stable(e["summary"].as_str().unwrap())
            )
        })
        .collect();
    insta::assert_snapshot!("incident_timeline", timeline.join("\n"));
    let template = cli_ok(&server, &["postmortem", "show", &format!("INC-{id}")]);
    let template: Vec<String> = template
        .lines()
        .filter(|l| !l.starts_with("| ") || l.contains(" prod |") && !l.ends_with("| proxy |"))
        .map(stable)
        .collect();
    insta::assert_snapshot!("postmortem_template", template.join("\n"));

    // The postmortem's action items become rules.
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nprintf '\\n- [x] R1: instances must pass GET /checkout\\n- [x] R2: every change runs checkout-regression\\n' >> \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(crate::support::SLUICE)
        .args(["postmortem", "edit", &format!("INC-{id}")])
        .env("SLUICE_SERVER", &server.url)
        .env("SLUICE_TOKEN", &server.token)
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edited = cli_ok(&server, &["postmortem", "show", &format!("INC-{id}")]);
    assert!(
        edited.contains("- [x] R2: every change runs checkout-regression"),
        "{edited}"
    );
    let inc = format!("INC-{id}");
    let made = cli_ok(
        &server,
        &[
            "rule",
            "add",
            "health-check",
            "--service",
            "shop",
            "--path",
            "/checkout",
            "--incident",
            &inc,
            "--note",
            "checkout must work before an instance takes traffic",
        ],
    );
    assert!(made.starts_with("rule R1 (from INC-"), "{made}");
    cli_ok(
        &server,
        &[
            "rule",
            "add",
            "require-job",
            "checkout-regression",
            "--service",
            "shop",
            "--incident",
            &inc,
        ],
    );

    // Replayed against the release that caused the incident, both would have stopped it.
    let replay = cli_exits(&server, &["rule", "test", "R2", "--release", "v2"], 1);
    assert!(
        replay.contains("would have blocked v2: its pipeline had no job `checkout-regression`"),
        "{replay}"
    );
    let replay = cli_exits(&server, &["rule", "test", "R1", "--release", "v2"], 1);
    assert!(
        replay.contains("would have blocked v2: GET /checkout answered 500, expected 200"),
        "{replay}"
    );
    let replay = cli_exits(&server, &["rule", "test", "R1", "--release", "v1"], 0);
    assert!(replay.contains("would have let v1 through"), "{replay}");
    assert!(
        replay.contains("(against no snapshot and no seed: empty data)"),
        "{replay}"
    );
    // Ids as people write them, in the API's paths too.
    let (status, body) = server
        .post("/rules/R1/test", serde_json::json!({ "release": 1 }))
        .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("passed")),
        "{body:#}"
    );
    assert_eq!(server.get("/incidents/INC-1").await["name"], "INC-1");
    // A replay that cannot run says so, apart from a verdict.
    cli_exits(&server, &["rule", "test", "R1", "--release", "v99"], 2);

    // A fix without the required job fails CI, naming the rule.
    repo.git(&["rm", "-q", "app/CHECKOUT_BUG"]);
    let fix = repo.commit("fix checkout", &[]);
    let run = server
        .wait_run("the fix", |r| r["sha"] == fix.as_str())
        .await;
    assert_eq!(run["status"], "failure", "{run:#}");
    let ci_block = run["reason"].as_str().unwrap().to_string();

    // With the job it passes; prod is frozen by a rule for now, which its promotion says.
    cli_ok(
        &server,
        &[
            "rule",
            "add",
            "freeze",
            "--service",
            "shop",
            "--env",
            "prod",
            "--cron",
            "* * * * *",
            "--incident",
            &inc,
        ],
    );
    let fixed = repo.commit(
        "checkout regression test",
        &[("sluice.yaml", &spec_with_regression_job())],
    );
    let run = server
        .wait_run("the tested fix", |r| r["sha"] == fixed.as_str())
        .await;
    assert_eq!(run["status"], "success", "{run:#}");
    server.wait_env("shop", "dev", 3, 1).await;
    let blocked = server
        .wait_for(
            "/promotions?service=shop",
            "prod's promotion blocked",
            |p| p["environment"] == "prod" && p["release"] == 3 && p["blocked_by"] == "rule R3",
        )
        .await;
    let cd_block = blocked["reason"].as_str().unwrap().to_string();
    insta::assert_snapshot!("block_messages", format!("CI: {ci_block}\nCD: {cd_block}"));

    // The bug comes back: dev's new health check stops it, and prod never sees it.
    let again = repo.commit(
        "one-click checkout",
        &[("app/CHECKOUT_BUG", "the cart total is undefined again\n")],
    );
    let run = server
        .wait_run("the bug again", |r| r["sha"] == again.as_str())
        .await;
    assert_eq!(
        run["status"], "success",
        "no test covers checkout, so CI passes"
    );
    let failed = server
        .wait_for(
            "/deployments?service=shop&env=dev",
            "v4's dev deployment end",
            |d| d["release"] == 4 && d["status"] != "running",
        )
        .await;
    assert_eq!(failed["status"], "rolled_back", "{failed:#}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("blocked by rule R1 (from INC-"),
        "{failed:#}"
    );
    server.wait_env("shop", "dev", 3, 1).await;
    let prod_deployments = server.get("/deployments?service=shop&env=prod").await;
    assert!(
        prod_deployments
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["release"] != 4),
        "{prod_deployments:#}"
    );
    let rule = server.get("/rules/1").await;
    assert!(
        rule["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["subject"].as_str().unwrap().contains("(v4)")),
        "{rule:#}"
    );
    let rule2 = server.get("/rules/2").await;
    assert_eq!(rule2["blocks"][0]["subject"], format!("run {}", 3));

    // The incident moves on, each step in the change log.
    cli_ok(
        &server,
        &["incident", "mitigate", &inc, "--note", "v2 rolled back"],
    );
    cli_ok(&server, &["incident", "resolve", &inc]);
    let shown = cli_ok(&server, &["incident", "show", &inc]);
    assert!(shown.contains("resolved"), "{shown}");
    let log = server.get("/changelog?kind=incident.").await;
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == inc.as_str())
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["incident.resolved", "incident.mitigated", "incident.opened"]
    );

    // After a restart the proxy's windows are gone, the kept traffic is not.
    server.stop();
    let server = Server::start(&dir.path().join("data"), None);
    let view = server.get("/incidents/1").await;
    assert!(
        has_error_rate_jump(&view),
        "the error-rate jump outlives the restart: {:#}",
        view["timeline"]
    );
}

#[tokio::test]
async fn an_instance_that_stays_unhealthy_opens_an_incident() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    let spec = SPEC
        .replace("unhealthy: 2 }", "unhealthy: 2, incident_after: 1s }")
        .split("  prod:")
        .next()
        .unwrap()
        .to_string();
    repo.commit("shop v1", &[("sluice.yaml", &spec)]);
    server.add_repo(&repo);
    let dev = server.wait_env("shop", "dev", 1, 1).await;

    // The service's own check starts failing (the fixture reads app/BROKEN
    // at each check, in the instance's working directory).
    // Its working directory, wherever it runs (the server's or its agent's).
    let pid = dev["instances"][0]["pid"].as_i64().unwrap();
    let workdir = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    let broken = workdir.join("app/BROKEN");
    std::fs::write(&broken, "disk full\n").unwrap();
    let incident = server
        .wait_for("/incidents?service=shop", "a health incident", |i| {
            i["environment"] == "dev"
        })
        .await;
    assert_eq!(incident["trigger_kind"], "health", "{incident:#}");
    assert_eq!(incident["title"], "shop is unhealthy in dev");
    assert!(
        incident["trigger_detail"]
            .as_str()
            .unwrap()
            .contains("GET /healthz answered 500"),
        "{incident:#}"
    );
    std::fs::remove_file(&broken).unwrap();
    let recovered = server
        .wait_for("/changelog?service=shop&kind=health.", "recovery", |e| {
            e["kind"] == "health.recovered"
        })
        .await;
    assert_eq!(recovered["environment"], "dev");
    let view = server.get(&format!("/incidents/{}", incident["id"])).await;
    assert!(
        view["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "health.failed"),
        "{:#}",
        view["timeline"]
    );
}
