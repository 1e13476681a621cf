//! How changes are noticed: the hook, polling a remote, webhooks; and the
//! commit statuses posted back to a forge.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::support::{GitRepo, Server, each_database};

const PIPELINE: &str =
    "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: echo ok\n";

async fn webhook(
    server: &Server,
    repo: &str,
    event: &str,
    delivery: &str,
    body: &Value,
    secret: Option<&str>,
) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut request = server
        .request(reqwest::Method::POST, &format!("/hooks/{repo}"), None)
        .await
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(bytes.clone());
    if let Some(secret) = secret {
        request = request.header(
            "X-Hub-Signature-256",
            sluice_ci::webhook::sign(secret, &bytes),
        );
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn add_with_secret(server: &Server, repo: &GitRepo, secret: &str) {
    let (status, body) = server
        .post(
            "/repos",
            json!({ "location": repo.path.to_str().unwrap(), "webhook_secret": secret }),
        )
        .await;
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["webhook_secret"], secret);
}

#[tokio::test]
async fn a_webhook_with_a_bad_signature_gets_401_and_queues_nothing() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        repo.commit("pipeline", &[("sluice.yaml", PIPELINE)]);
        add_with_secret(&server, &repo, "webhook-secret").await;
        server.wait_run("main", |r| r["branch"] == "main").await;
        repo.git(&["checkout", "-q", "-b", "pr-branch"]);
        // Commit without the hook noticing: this is a commit only a webhook announces.
        std::fs::remove_file(repo.path.join(".git/hooks/reference-transaction")).unwrap();
        let sha = repo.commit("pr work", &[("x.txt", "x\n")]);
        let body = json!({ "action": "opened", "number": 12, "pull_request": { "title": "PR", "head": { "sha": sha, "ref": "pr-branch" }, "user": { "login": "ana" } } });
        for secret in [None, Some("wrong-secret")] {
            let (status, answer) = webhook(&server, "shop", "pull_request", "d-1", &body, secret).await;
            assert_eq!(status, 401, "{answer:#}");
            assert_eq!(answer["error"]["code"], "unauthorized");
        }
        let (status, _) = webhook(&server, "no-such-repo", "pull_request", "d-1", &body, Some("webhook-secret")).await;
        assert_eq!(status, 401, "an unknown repository looks like a bad signature");
        // The hook (at `checkout -b`) and polling may pick the branch up, as
        // often as they race the commit; only what the webhooks queued matters.
        let runs = server.get("/runs").await;
        assert!(runs.as_array().unwrap().iter().all(|r| r["ref_name"] != "refs/pull/12/head"), "{runs:#}");
        let changes = server.get("/changes?repo=shop").await;
        assert!(changes.as_array().unwrap().iter().all(|c| c["source"] != "webhook"), "{changes:#}");
    })
    .await;
}

#[tokio::test]
async fn a_redelivered_webhook_creates_no_second_run() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        repo.commit("pipeline", &[("sluice.yaml", PIPELINE)]);
        add_with_secret(&server, &repo, "s").await;
        server.wait_run("main", |r| r["branch"] == "main").await;
        std::fs::remove_file(repo.path.join(".git/hooks/reference-transaction")).unwrap();
        repo.git(&["checkout", "-q", "-b", "feature/pr"]);
        let sha = repo.commit("pr work", &[("x.txt", "x\n")]);
        let body = json!({ "action": "synchronize", "number": 7, "pull_request": { "title": "new cart", "head": { "sha": sha, "ref": "feature/pr" }, "user": { "login": "bo" } } });
        let (status, first) = webhook(&server, "shop", "pull_request", "delivery-1", &body, Some("s")).await;
        assert_eq!(status, 202, "{first:#}");
        let run_id = first["queued"].as_i64().unwrap();
        let (status, again) = webhook(&server, "shop", "pull_request", "delivery-1", &body, Some("s")).await;
        assert_eq!((status, again["queued"].clone()), (200, Value::Null), "same delivery id: {again:#}");
        let (status, same) = webhook(&server, "shop", "pull_request", "delivery-2", &body, Some("s")).await;
        assert_eq!((status, same["queued"].clone()), (200, Value::Null), "same ref and sha: {same:#}");
        let run = server.wait_run("the pull request", |r| r["id"] == run_id).await;
        assert_eq!(run["status"], "success");
        assert_eq!(run["kind"], "review");
        assert_eq!(run["pull_request"], 7);
        assert_eq!(run["ref_name"], "refs/pull/7/head");
        let runs = server.get("/runs").await;
        let for_sha = runs.as_array().unwrap().iter().filter(|r| r["ref_name"] == "refs/pull/7/head").count();
        assert_eq!(for_sha, 1);
    })
    .await;
}

#[tokio::test]
async fn a_push_webhook_on_the_mainline_is_a_mainline_change() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    repo.commit("pipeline", &[("sluice.yaml", PIPELINE)]);
    add_with_secret(&server, &repo, "s").await;
    server.wait_run("main", |r| r["branch"] == "main").await;
    std::fs::remove_file(repo.path.join(".git/hooks/reference-transaction")).unwrap();
    let sha = repo.commit("second", &[("y.txt", "y\n")]);
    let body = json!({ "ref": "refs/heads/main", "after": sha, "head_commit": { "message": "second" }, "pusher": { "name": "ana" } });
    let (status, answer) = webhook(&server, "shop", "push", "p-1", &body, Some("s")).await;
    assert_eq!(status, 202, "{answer:#}");
    let run = server
        .wait_run("the push", |r| r["sha"] == sha.as_str())
        .await;
    assert_eq!(run["kind"], "mainline");
    assert_eq!(run["status"], "success");
}

#[tokio::test]
async fn a_remote_repository_is_noticed_by_polling() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let upstream = GitRepo::new(dir.path(), "upstream");
    upstream.commit("pipeline", &[("sluice.yaml", PIPELINE)]);
    let url = format!("file://{}", upstream.path.display());
    let out = server.cli(&["repo", "add", &url, "--name", "remote-shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("noticed by: poll"));
    server
        .wait_run("the first commit", |r| r["repo"] == "remote-shop")
        .await;
    upstream.git(&["checkout", "-q", "-b", "feature/remote"]);
    let sha = upstream.commit("remote work", &[("z.txt", "z\n")]);
    let run = server
        .wait_run("the polled commit", |r| r["sha"] == sha.as_str())
        .await;
    assert_eq!(run["status"], "success");
    assert_eq!(run["kind"], "review");
    let change = server.get("/changes?repo=remote-shop").await;
    assert_eq!(change[0]["source"], "poll");
}

#[tokio::test]
async fn each_run_posts_its_commit_status_to_the_forge() {
    let calls: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let recorded = calls.clone();
    let forge = axum::Router::new().route(
        "/repos/acme/shop/statuses/{sha}",
        axum::routing::post(
            move |axum::extract::Path(sha): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  axum::Json(body): axum::Json<Value>| {
                let recorded = recorded.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    recorded.lock().unwrap().push((sha, auth, body));
                    axum::http::StatusCode::CREATED
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forge_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, forge).await.unwrap() });

    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    let sha = repo.commit("pipeline", &[("sluice.yaml", PIPELINE)]);
    let status_url = format!("{forge_url}/repos/acme/shop/statuses/{{sha}}");
    let out = std::process::Command::new(crate::support::SLUICE)
        .args([
            "repo",
            "add",
            repo.path.to_str().unwrap(),
            "--status-url",
            &status_url,
        ])
        .env("SLUICE_SERVER", &server.url)
        .env("SLUICE_TOKEN", &server.token)
        .env("SLUICE_STATUS_TOKEN", "forge-token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
        .wait_run("the commit", |r| r["sha"] == sha.as_str())
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let states: Vec<String> = calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| b["state"].as_str().unwrap().to_string())
            .collect();
        if states.last().map(String::as_str) == Some("success") {
            assert_eq!(
                states.first().map(String::as_str),
                Some("pending"),
                "{states:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "statuses so far: {states:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let calls = calls.lock().unwrap();
    let (posted_sha, auth, body) = calls.last().unwrap();
    assert_eq!(posted_sha, &sha);
    assert_eq!(auth, "Bearer forge-token");
    assert_eq!(body["context"], "sluice/ci");
    assert!(
        body["target_url"]
            .as_str()
            .unwrap()
            .starts_with(&server.url)
    );
}

#[tokio::test]
async fn every_commit_of_a_burst_becomes_a_change_and_a_rescan_finds_what_a_hook_missed() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        repo.commit("pipeline", &[("sluice.yaml", PIPELINE)]);
        server.add_repo(&repo);
        server.wait_run("main", |r| r["branch"] == "main").await;
        // A burst, each commit poking the server through the hook.
        let mut shas: Vec<String> = (0..30)
            .map(|i| repo.commit(&format!("burst {i}"), &[("n", &i.to_string())]))
            .collect();
        // The hook gone: these are noticed by the next scan only.
        std::fs::remove_file(repo.path.join(".git/hooks/reference-transaction")).unwrap();
        shas.extend(
            (0..5).map(|i| repo.commit(&format!("unhooked {i}"), &[("m", &i.to_string())])),
        );
        let out = server.cli(&["notify", "--repo", "shop"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for sha in &shas {
            let run = server
                .wait_run("each commit", |r| r["sha"] == sha.as_str())
                .await;
            assert_eq!(run["kind"], "mainline");
        }
        let runs = server.get("/runs?limit=100").await;
        assert_eq!(
            runs.as_array().unwrap().len(),
            36,
            "one run a commit, none twice"
        );

        // With `changes: tips`, a burst is one change: its tip.
        let tips = format!("{PIPELINE}  changes: tips\n");
        repo.commit("tips only", &[("sluice.yaml", &tips)]);
        server.wait_run("tips", |r| r["title"] == "tips only").await;
        // Three commits made apart from any branch, then main moved once.
        repo.git(&["checkout", "-q", "--detach"]);
        let burst: Vec<String> = (0..3)
            .map(|i| repo.commit(&format!("quiet {i}"), &[("q", &i.to_string())]))
            .collect();
        repo.git(&["checkout", "-q", "-B", "main"]);
        server.cli(&["notify", "--repo", "shop"]);
        server
            .wait_run("the tip", |r| r["sha"] == burst[2].as_str())
            .await;
        let runs = server.get("/runs?limit=100").await;
        let quiet = runs
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["title"].as_str().is_some_and(|t| t.starts_with("quiet")));
        assert_eq!(quiet.count(), 1, "{runs:#}");
    })
    .await;
}
