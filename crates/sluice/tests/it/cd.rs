//! Continuous deployment end to end: a real Python service built and tested
//! by its own pipeline, released, deployed to dev by itself, promoted through
//! approvals and a freeze, kept off traffic when its health fails.

use serde_json::{Value, json};

use crate::support::{GitRepo, Server, copy_fixture, each_database};

pub fn shop_spec(extra_prod: &str) -> String {
    format!(
        r#"service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: python3 -m unittest discover -s tests -q
    integration:
      needs: [unit]
      steps:
        - run: python3 tests/integration.py
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  ready_timeout: 10s
  health: {{ path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }}
  config_files:
    - template: config/app.toml.tmpl
      to: app.toml
environments:
  dev:
    deploy: auto
    instances: 1
    listen: 127.0.0.1:0
    config: {{ GREETING: hello-dev }}
    data: {{ seed: fixtures/seed.txt }}
  pre-prod:
    from: dev
    deploy: {{ approvals: 1, approvers: [release-managers] }}
    instances: 2
    listen: 127.0.0.1:0
    config: {{ GREETING: hello-pre }}
    data: {{ copy_from: dev, scrub: scripts/scrub.sh }}
  prod:
    from: pre-prod
    instances: 4
    listen: 127.0.0.1:0
    config: {{ GREETING: hello-prod }}
{extra_prod}"#
    )
}

async fn through(env: &Value, path: &str) -> (reqwest::header::HeaderMap, Value) {
    let url = format!("http://{}{path}", env["listen"].as_str().unwrap());
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.json().await.unwrap())
}

#[tokio::test]
async fn a_commit_flows_from_ci_to_prod_through_its_gates() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let ana = server
            .token_for("ana", "approver", &["release-managers"])
            .await;
        let bo = server
            .token_for("bo", "approver", &["release-managers"])
            .await;
        let dev_only = server.token_for("cy", "developer", &[]).await;
        let repo = GitRepo::new(&dir, "shop");
        copy_fixture(&repo, "shop");
        let spec = shop_spec("    deploy: { freeze: [\"* * * * *\"] }\n");
        let sha = repo.commit("shop v1", &[("sluice.yaml", &spec)]);
        server.add_repo(&repo);

        // CI → release v1 → dev, by itself.
        let run = server.wait_run("v1", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["status"], "success", "{run:#}");
        let dev = server.wait_env("shop", "dev", 1, 1).await;
        let (headers, body) = through(&dev, "/").await;
        assert_eq!(body["release"], "v1");
        assert_eq!(body["env"], "dev");
        assert_eq!(body["greeting"], "hello-dev");
        assert!(
            body["config"]
                .as_str()
                .unwrap()
                .contains("greeting = \"hello-dev\""),
            "{body:#}"
        );
        assert_eq!(
            body["data"],
            json!(["seed.txt"]),
            "seeded on the first deployment"
        );
        assert_eq!(headers["x-sluice-release"], "v1");
        assert_eq!(
            headers["x-sluice-instance"],
            body["instance"].as_str().unwrap()
        );
        let releases = server.get("/releases?service=shop").await;
        assert_eq!(releases[0]["number"], 1);
        assert_eq!(releases[0]["sha"], sha.as_str());

        // An instance that dies is started again, and its log says so.
        let instance = dev["instances"][0].clone();
        let pid = instance["pid"].as_i64().unwrap() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let status = server.get("/status?service=shop").await;
            let now = status
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["environment"] == "dev")
                .unwrap()["instances"][0]
                .clone();
            if now["restarts"].as_i64() >= Some(1) && now["healthy"] == true {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the instance was not restarted: {now:#}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let log = server.cli(&["instance", "logs", instance["id"].as_str().unwrap()]);
        let text = String::from_utf8_lossy(&log.stdout);
        assert!(
            text.contains("exited") && text.contains("restarting in 1s"),
            "{text}"
        );

        // A promotion can be rejected, with a reason.
        let (_, rejected) = server
            .post_as(
                &ana,
                "/promotions",
                json!({ "service": "shop", "to": "pre-prod", "release": 1 }),
            )
            .await;
        let rejected_id = rejected["id"].as_i64().unwrap();
        let (status, body) = server
            .post_as(
                &bo,
                &format!("/promotions/{rejected_id}/reject"),
                json!({ "reason": "" }),
            )
            .await;
        assert_eq!(status, 400, "a rejection needs a reason: {body:#}");
        let out = std::process::Command::new(crate::support::SLUICE)
            .args([
                "reject",
                &rejected_id.to_string(),
                "--reason",
                "wait for the load test",
            ])
            .env("SLUICE_SERVER", &server.url)
            .env("SLUICE_TOKEN", &bo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("rejected by bo: wait for the load test")
        );

        // Promotion to pre-prod waits for an approver other than the one who asked.
        let (status, promotion) = server
            .post_as(
                &ana,
                "/promotions",
                json!({ "service": "shop", "to": "pre-prod" }),
            )
            .await;
        assert_eq!(status, 201, "{promotion:#}");
        let id = promotion["id"].as_i64().unwrap();
        assert_eq!(promotion["status"], "pending");
        assert_eq!(promotion["blocked_by"], "approvals");
        let (status, refused) = server
            .post_as(&ana, &format!("/promotions/{id}/approve"), json!({}))
            .await;
        assert_eq!(status, 403, "{refused:#}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("someone else must approve")
        );
        let (status, _) = server
            .post_as(&dev_only, &format!("/promotions/{id}/approve"), json!({}))
            .await;
        assert_eq!(status, 403, "a developer cannot approve");
        let (status, approved) = server
            .post_as(&bo, &format!("/promotions/{id}/approve"), json!({}))
            .await;
        assert_eq!(status, 200, "{approved:#}");
        let done = server.wait_promotion(id, |p| p["status"] == "done").await;
        assert_eq!(done["approvals"][0]["approver"], "bo");
        let pre = server.wait_env("shop", "pre-prod", 1, 2).await;
        let (_, body) = through(&pre, "/").await;
        assert_eq!(body["greeting"], "hello-pre");
        let mut data: Vec<String> = serde_json::from_value(body["data"].clone()).unwrap();
        data.sort();
        assert_eq!(
            data,
            ["scrubbed", "seed.txt"],
            "copied from dev through the scrub script"
        );

        // Prod is frozen: blocked until an admin overrides, with a reason that is logged.
        let (_, promotion) = server
            .post_as(
                &ana,
                "/promotions",
                json!({ "service": "shop", "to": "prod" }),
            )
            .await;
        let id = promotion["id"].as_i64().unwrap();
        assert_eq!(promotion["blocked_by"], "freeze", "{promotion:#}");
        let (status, _) = server
            .post_as(
                &bo,
                &format!("/promotions/{id}/override"),
                json!({ "reason": "x" }),
            )
            .await;
        assert_eq!(status, 403, "only an admin overrides a freeze");
        let out = server.cli(&[
            "override",
            &id.to_string(),
            "--reason",
            "launch approved by the CTO",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.wait_promotion(id, |p| p["status"] == "done").await;
        let prod = server.wait_env("shop", "prod", 1, 4).await;
        let (_, body) = through(&prod, "/").await;
        assert_eq!(body["greeting"], "hello-prod");
        let log = server.get("/changelog?env=prod").await;
        let overridden = log
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "promotion.override")
            .expect("the override is in the change log");
        assert!(
            overridden["summary"]
                .as_str()
                .unwrap()
                .contains("launch approved by the CTO")
        );
        assert_eq!(overridden["actor"], "initial-admin");

        // A release whose health check fails never takes traffic; dev stays on v1.
        let broken = repo.commit("v2 breaks its health check", &[("app/BROKEN", "yes\n")]);
        server.wait_run("v2", |r| r["sha"] == broken.as_str()).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let failed = loop {
            let deployments = server.get("/deployments?service=shop&env=dev").await;
            if let Some(d) = deployments
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["release"] == 2 && d["status"] != "running")
            {
                break d.clone();
            }
            assert!(std::time::Instant::now() < deadline, "{deployments:#}");
            let (_, body) = through(&dev, "/").await;
            assert_eq!(body["release"], "v1", "v2 must never answer a request");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(failed["status"], "rolled_back", "{failed:#}");
        assert!(
            failed["reason"]
                .as_str()
                .unwrap()
                .contains("did not become healthy"),
            "{failed:#}"
        );
        server.wait_env("shop", "dev", 1, 1).await;
        let (_, body) = through(&dev, "/").await;
        assert_eq!(body["release"], "v1");

        // What differs between dev and pre-prod, and what changed in prod.
        let diff = server.cli(&["diff", "shop", "dev", "pre-prod"]);
        assert!(
            diff.status.success(),
            "{}",
            String::from_utf8_lossy(&diff.stderr)
        );
        // The entry points are bound to ports the kernel chose (`listen: 127.0.0.1:0`).
        insta::assert_snapshot!(
            "diff_dev_pre_prod",
            any_port(&String::from_utf8_lossy(&diff.stdout))
        );
        let changes = server.cli(&["changes", "--env", "prod"]);
        let text = String::from_utf8_lossy(&changes.stdout);
        // Times differ from run to run, and so do promotion numbers (v2's
        // promotion into dev may come before or after ana's into prod).
        let stable: String = text
            .lines()
            .map(|l| {
                let l = if l.starts_with("20") {
                    format!("<time>{}", &l[19..])
                } else {
                    l.to_string()
                };
                ["promotion ", "override "]
                    .iter()
                    .fold(l, |l, before| numbered_as_n(&l, before))
            })
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!("changes_in_prod", stable);
        let status = server.cli(&["status"]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            text.contains("shop     prod      v1       healthy  4/4"),
            "{text}"
        );
    })
    .await;
}

/// `text` with the number after each `before` written as `N`.
fn numbered_as_n(text: &str, before: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(before) {
        let (head, tail) = rest.split_at(at + before.len());
        out.push_str(head);
        let digits = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            out.push('N');
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// `127.0.0.1:PORT` for every loopback address with a port in `text`.
fn any_port(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("127.0.0.1:") {
        let (before, after) = rest.split_at(at + "127.0.0.1:".len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        out.push_str(if digits > 0 { "PORT" } else { "" });
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}
