//! Runs: needs order, logs, artifacts, review changes, failures, timeouts,
//! spec errors and secrets.

use std::io::Read;

use serde_json::Value;

use crate::support::{GitRepo, Server, each_database, process_alive, writable_by_steps};

const TWO_JOBS: &str = r#"service: shop
pipeline:
  jobs:
    integration:
      needs: [unit]
      steps:
        - run: echo "integration sees $(cat unit.out)"; date +%s%N > integration.start
        - run: mkdir -p app && echo "print('v1')" > app/main.py
    unit:
      steps:
        - run: echo unit running; sleep 0.2; echo done > unit.out; date +%s%N > unit.end
  artifact:
    paths: [app/, sluice.yaml]
"#;

fn job<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {run:#}"))
}

#[tokio::test]
async fn mainline_commit_runs_two_jobs_in_needs_order_with_logs_and_artifact() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        repo.commit("initial", &[("README", "shop\n")]);
        server.add_repo(&repo);
        let sha = repo.commit("add pipeline", &[("sluice.yaml", TWO_JOBS)]);
        let run = server
            .wait_run("the pipeline commit", |r| r["sha"] == sha.as_str())
            .await;
        assert_eq!(run["status"], "success", "{run:#}");
        assert_eq!(run["kind"], "mainline");
        let (unit, integration) = (job(&run, "unit"), job(&run, "integration"));
        assert!(
            integration["started_at"].as_i64() >= unit["finished_at"].as_i64(),
            "integration starts after unit ends"
        );
        assert_eq!(integration["steps"].as_array().unwrap().len(), 2);
        assert_eq!(integration["steps"][0]["exit_code"], 0);
        let logs = server.logs(&run).await;
        assert!(logs.contains(&"unit running".to_string()), "{logs:?}");
        assert!(
            logs.contains(&"integration sees done".to_string()),
            "{logs:?}"
        );
        // The artifact holds the declared paths and is served by its digest.
        let digest = run["artifact_sha256"].as_str().expect("an artifact");
        let response = server
            .request(
                reqwest::Method::GET,
                &format!("/artifacts/{digest}"),
                Some(&server.token),
            )
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.unwrap();
        assert_eq!(sha256_hex(&bytes), digest);
        let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]))
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["app", "app/main.py", "sluice.yaml"]);
        let mut text = String::new();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().ends_with("main.py") {
                entry.read_to_string(&mut text).unwrap();
            }
        }
        assert_eq!(text, "print('v1')\n");
    })
    .await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn a_commit_on_a_feature_branch_gets_a_review_run_and_no_artifact() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        repo.commit("pipeline", &[("sluice.yaml", TWO_JOBS)]);
        server.add_repo(&repo);
        server.wait_run("main", |r| r["branch"] == "main").await;
        repo.git(&["checkout", "-q", "-b", "feature/x"]);
        let sha = repo.commit("feature work", &[("feature.txt", "x\n")]);
        let run = server
            .wait_run("the feature commit", |r| r["sha"] == sha.as_str())
            .await;
        assert_eq!(run["status"], "success", "{run:#}");
        assert_eq!(run["kind"], "review");
        assert_eq!(run["branch"], "feature/x");
        assert!(
            run["artifact_sha256"].is_null(),
            "review runs make no artifact"
        );
        let changes = server.get("/changes").await;
        let change = changes
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["sha"] == sha.as_str())
            .unwrap();
        assert_eq!(change["status"], "success");
        assert_eq!(change["kind"], "review");
    })
    .await;
}

#[tokio::test]
async fn a_failing_step_fails_the_run_with_its_exit_code_and_output() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        let spec = "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: echo 'expected 2, got 3' >&2; exit 3\n        - run: echo never\n    deploy-docs:\n      needs: [unit]\n      steps:\n        - run: echo never either\n";
        let sha = repo.commit("broken test", &[("sluice.yaml", spec)]);
        server.add_repo(&repo);
        let run = server.wait_run("the broken commit", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["status"], "failure");
        assert!(run["reason"].as_str().unwrap().contains("exited with 3"), "{run:#}");
        let unit = job(&run, "unit");
        assert_eq!(unit["steps"][0]["exit_code"], 3);
        assert_eq!(unit["steps"][1]["status"], "skipped");
        assert_eq!(job(&run, "deploy-docs")["status"], "skipped");
        let logs = server.logs(&run).await;
        assert!(logs.contains(&"expected 2, got 3".to_string()), "{logs:?}");
        assert!(!logs.iter().any(|l| l.contains("never")), "{logs:?}");
        let shown = server.cli(&["show", &run["id"].to_string()]);
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(text.contains("exit 3") && text.contains("FAILURE"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn a_timeout_kills_the_step_and_the_child_it_spawned() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        let pidfile = dir.join("child.pid");
        writable_by_steps(&pidfile);
        let spec = format!(
            "service: shop\npipeline:\n  jobs:\n    hang:\n      timeout: 2s\n      steps:\n        - run: sleep 300 & echo $! > {}; echo waiting; wait\n",
            pidfile.display()
        );
        let sha = repo.commit("hangs", &[("sluice.yaml", &spec)]);
        server.add_repo(&repo);
        let run = server.wait_run("the hanging commit", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["status"], "failure");
        assert!(run["reason"].as_str().unwrap().contains("timed out after 2s"), "{run:#}");
        let step = &job(&run, "hang")["steps"][0];
        let took = step["finished_at"].as_i64().unwrap() - step["started_at"].as_i64().unwrap();
        assert!(took < 4_000, "killed within timeout + 2 s, took {took} ms");
        let child: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(!process_alive(child), "the step's child {child} was killed with it");
    })
    .await;
}

#[tokio::test]
async fn a_daemon_a_step_started_ends_with_the_step_and_cancel_ends_the_run() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        let (quick, slow) = (dir.join("quick.pid"), dir.join("slow.pid"));
        writable_by_steps(&quick);
        writable_by_steps(&slow);
        // A step that leaves a daemon in a session of its own, and exits
        // once the daemon has written its pid (so it has left the group).
        let spec = format!(
            "service: shop\npipeline:\n  jobs:\n    leave:\n      steps:\n        - run: \"setsid sh -c 'echo $$ > {0}; exec sleep 300' </dev/null >/dev/null 2>&1 & while [ ! -s {0} ]; do sleep 0.05; done\"\n",
            quick.display()
        );
        let sha = repo.commit("leaves a daemon", &[("sluice.yaml", &spec)]);
        server.add_repo(&repo);
        let run = server.wait_run("the daemon's run", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["status"], "success", "{run:#}");
        let daemon: i32 = std::fs::read_to_string(&quick).unwrap().trim().parse().unwrap();
        assert!(!process_alive(daemon), "the daemon {daemon} ended with its step");
        let logs = server.logs(&run).await;
        assert!(logs.iter().any(|l| l.contains("the step left running")), "{logs:?}");

        // A daemon beside a step that goes on: cancel ends both.
        let spec = format!(
            "service: shop\npipeline:\n  jobs:\n    hang:\n      steps:\n        - run: \"setsid sh -c 'echo $$ > {0}; exec sleep 300' </dev/null >/dev/null 2>&1 & while [ ! -s {0} ]; do sleep 0.05; done; echo up; sleep 300\"\n",
            slow.display()
        );
        let sha = repo.commit("hangs with a daemon", &[("sluice.yaml", &spec)]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let id = loop {
            let runs = server.get("/runs").await;
            let running = runs.as_array().unwrap().iter().find(|r| r["sha"] == sha.as_str() && r["status"] == "running").cloned();
            if let Some(run) = running
                && server.logs(&run).await.iter().any(|l| l == "up")
            {
                break run["id"].as_i64().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "never started: {runs:#}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let out = server.cli(&["cancel", &id.to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let run = server.wait_run("the cancelled run", |r| r["id"] == id && r["status"] != "running").await;
        assert_eq!(run["status"], "cancelled", "{run:#}");
        let daemon: i32 = std::fs::read_to_string(&slow).unwrap().trim().parse().unwrap();
        assert!(!process_alive(daemon), "the daemon {daemon} ended with the cancelled run");

        // A daemon that also drops its environment (and so its mark) is
        // still in the step's cgroup, where cgroup v2 can be had (as root).
        if sluice_ci::sandbox::steps_cgroup_root(&server.data_dir).is_none() {
            return;
        }
        let hidden = dir.join("hidden.pid");
        writable_by_steps(&hidden);
        let spec = format!(
            "service: shop\npipeline:\n  jobs:\n    hide:\n      steps:\n        - run: \"setsid env -i sh -c 'echo $$ > {0}; exec sleep 300' </dev/null >/dev/null 2>&1 & while [ ! -s {0} ]; do sleep 0.05; done\"\n",
            hidden.display()
        );
        let sha = repo.commit("hides a daemon", &[("sluice.yaml", &spec)]);
        let run = server.wait_run("the hidden daemon's run", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["status"], "success", "{run:#}");
        let daemon: i32 = std::fs::read_to_string(&hidden).unwrap().trim().parse().unwrap();
        assert!(!process_alive(daemon), "the markless daemon {daemon} ended with its step");
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_output_keeps_the_log_s_end_and_pages_and_downloads_it() {
    each_database(|dir, db| async move {
        let server = Server::start_with(&dir.join("data"), db.as_deref(), &["--log-cap", "256KiB"]);
        let repo = GitRepo::new(&dir, "shop");
        // About 1 MiB of output: four times the cap.
        let spec = "service: shop\npipeline:\n  jobs:\n    flood:\n      steps:\n        - run: seq -f 'line %06g of the flood, padded to be a little longer than most' 1 16000\n";
        let sha = repo.commit("floods", &[("sluice.yaml", spec)]);
        server.add_repo(&repo);
        let run = server.wait_run("the flood", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["status"], "success", "{run:#}");
        let id = run["id"].as_i64().unwrap();
        let first = server.get(&format!("/runs/{id}/logs?limit=1000")).await;
        assert_eq!(first["lines"].as_array().unwrap().len(), 1000);
        let next = first["next_after"].as_i64().expect("more pages");
        let second = server.get(&format!("/runs/{id}/logs?after={next}&limit=1000")).await;
        assert!(second["lines"][0]["seq"].as_i64().unwrap() > next);
        let too_many = server
            .request(reqwest::Method::GET, &format!("/runs/{id}/logs?limit=100000"), Some(&server.token))
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(too_many.status(), 400, "a page is bounded");

        let raw = reqwest::Client::new()
            .get(format!("{}/api/v1/runs/{id}/logs/raw", server.url))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap();
        assert!(raw.headers()["content-disposition"].to_str().unwrap().contains("run-"));
        let text = raw.text().await.unwrap();
        assert!(text.len() < 400 << 10, "the stored log is capped: {} bytes", text.len());
        assert!(text.contains("line 016000 of the flood"), "its end is kept");
        assert!(!text.contains("line 000001 of the flood"), "its beginning is cut");
        assert!(text.contains("lines were cut, its end is kept"));
    })
    .await;
}

#[tokio::test]
async fn a_bad_sluice_yaml_fails_the_run_with_its_line_and_column() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        let spec = "service: shop\npipeline:\n  jobs:\n    unit:\n      needs: [build]\n      steps:\n        - run: make test\n";
        let sha = repo.commit("typo", &[("sluice.yaml", spec)]);
        server.add_repo(&repo);
        let run = server.wait_run("the typo", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["status"], "failure");
        assert!(run["reason"].as_str().unwrap().contains("not valid"), "{run:#}");
        let logs = server.logs(&run).await.join("\n");
        assert!(logs.contains("unknown job `build` in `needs`"), "{logs}");
        assert!(logs.contains("--> sluice.yaml:5:15"), "{logs}");
        assert!(logs.contains("^^^^^"), "{logs}");
    })
    .await;
}

#[tokio::test]
async fn secrets_are_given_to_steps_and_never_stored_in_logs() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        repo.commit("readme", &[("README", "x\n")]);
        server.add_repo(&repo);
        let out = server.cli_with_input(&["secret", "set", "shop", "DEPLOY_KEY"], "s3cr3t-value-42\n");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let spec = "service: shop\npipeline:\n  jobs:\n    leak:\n      steps:\n        - run: echo \"key=$DEPLOY_KEY\"; echo \"$DEPLOY_KEY\" >&2; test \"$DEPLOY_KEY\" = s3cr3t-value-42\n";
        let sha = repo.commit("tries to leak", &[("sluice.yaml", spec)]);
        let run = server.wait_run("the leaking commit", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["status"], "success", "the step saw the secret: {run:#}");
        let logs = server.logs(&run).await;
        assert!(logs.contains(&"key=***".to_string()), "{logs:?}");
        assert!(logs.contains(&"***".to_string()), "{logs:?}");
        let raw = server.get(&format!("/runs/{}/logs", run["id"])).await.to_string();
        assert!(!raw.contains("s3cr3t-value-42"));
        let followed = server.cli(&["logs", "--follow", &run["id"].to_string()]);
        let text = String::from_utf8_lossy(&followed.stdout);
        assert!(text.contains("key=***") && !text.contains("s3cr3t"), "{text}");
        assert!(text.contains("ended success"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn review_runs_get_only_review_secrets_and_the_admin_token_is_masked() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        repo.commit("readme", &[("README", "x\n")]);
        server.add_repo(&repo);
        for (name, value, review) in [("DEPLOY_KEY", "prod-only-key-1", false), ("LINT_KEY", "shared-key-22", true)] {
            let mut args = vec!["secret", "set", "shop", name];
            if review {
                args.push("--review");
            }
            let out = server.cli_with_input(&args, value);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let refused = server.cli_with_input(&["secret", "set", "shop", "LD_PRELOAD"], "/tmp/evil.so");
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("reserved"));
        let listed = String::from_utf8_lossy(&server.cli(&["secret", "list", "shop"]).stdout).into_owned();
        assert!(listed.contains("LINT_KEY  every run") && listed.contains("DEPLOY_KEY  mainline runs"), "{listed}");

        repo.git(&["checkout", "-q", "-b", "feature/x"]);
        let spec = format!(
            "service: shop\npipeline:\n  jobs:\n    look:\n      steps:\n        - run: echo \"deploy=${{DEPLOY_KEY:-none}} lint=$LINT_KEY admin={}\"\n",
            server.token
        );
        let sha = repo.commit("a proposal", &[("sluice.yaml", &spec)]);
        let run = server.wait_run("the review run", |r| r["sha"] == sha.as_str()).await;
        assert_eq!(run["kind"], "review");
        assert_eq!(run["status"], "success", "{run:#}");
        let logs = server.logs(&run).await;
        assert!(
            logs.contains(&"deploy=none lint=*** admin=***".to_string()),
            "a review run gets review secrets only, and no log shows the admin token: {logs:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_newer_commit_on_a_review_branch_cancels_the_older_run() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        repo.commit("readme", &[("README", "x\n")]);
        server.add_repo(&repo);
        repo.git(&["checkout", "-q", "-b", "feature/slow"]);
        let slow = "service: shop\npipeline:\n  jobs:\n    slow:\n      steps:\n        - run: echo started; sleep 30\n";
        let first = repo.commit("slow", &[("sluice.yaml", slow)]);
        // Wait until the first run's step is running, then push again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let runs = server.get("/runs").await;
            let running = runs.as_array().unwrap().iter().any(|r| r["sha"] == first.as_str() && r["status"] == "running");
            if running {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "first run never started: {runs:#}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let fixed = "service: shop\npipeline:\n  jobs:\n    slow:\n      steps:\n        - run: echo quick\n";
        let second = repo.commit("quick", &[("sluice.yaml", fixed)]);
        let older = server.wait_run("the first commit", |r| r["sha"] == first.as_str()).await;
        assert_eq!(older["status"], "cancelled", "{older:#}");
        assert!(older["reason"].as_str().unwrap().contains("superseded"), "{older:#}");
        let newer = server.wait_run("the second commit", |r| r["sha"] == second.as_str()).await;
        assert_eq!(newer["status"], "success");
    })
    .await;
}

#[tokio::test]
async fn cancel_stops_a_running_run() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    let spec =
        "service: shop\npipeline:\n  jobs:\n    slow:\n      steps:\n        - run: sleep 60\n";
    let sha = repo.commit("slow", &[("sluice.yaml", spec)]);
    server.add_repo(&repo);
    let id = loop {
        let runs = server.get("/runs").await;
        if let Some(run) = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["sha"] == sha.as_str() && r["status"] == "running")
        {
            break run["id"].to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let out = server.cli(&["cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = server
        .wait_run("the slow commit", |r| r["sha"] == sha.as_str())
        .await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["reason"], "cancelled by initial-admin");
    let again = server.cli(&["cancel", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already ended cancelled"));
}

#[tokio::test]
async fn the_repository_rules_file_is_validated_and_enforced() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    let bad = "rules:\n  tested:\n    kind: require_job\n    jbo: checkout-regression\n";
    let sha = repo.commit(
        "rules",
        &[("sluice.yaml", TWO_JOBS), (".sluice/rules.yaml", bad)],
    );
    server.add_repo(&repo);
    let run = server
        .wait_run("bad rules", |r| r["sha"] == sha.as_str())
        .await;
    assert_eq!(run["status"], "failure");
    assert_eq!(run["reason"], ".sluice/rules.yaml is not valid", "{run:#}");
    let logs = server.logs(&run).await.join("\n");
    assert!(logs.contains("--> .sluice/rules.yaml:4:5"), "{logs}");
    assert!(logs.contains("jbo"), "{logs}");

    let good = "rules:\n  tested:\n    kind: require_job\n    job: checkout-regression\n    paths: [app/]\n";
    let sha = repo.commit("rules fixed", &[(".sluice/rules.yaml", good)]);
    let run = server
        .wait_run("rules kept", |r| r["sha"] == sha.as_str())
        .await;
    assert_eq!(
        run["status"], "success",
        "the change touches no file under app/: {run:#}"
    );
    let sha = repo.commit("touch the app", &[("app/cart.py", "total = 0\n")]);
    let run = server
        .wait_run("rules enforced", |r| r["sha"] == sha.as_str())
        .await;
    assert_eq!(run["status"], "failure");
    assert_eq!(
        run["reason"],
        "blocked by rule rules.yaml:tested: the pipeline has no job `checkout-regression`"
    );
}
