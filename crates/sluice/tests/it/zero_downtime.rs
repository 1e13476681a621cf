//! Under steady load, a rolling deployment of 4 instances, a blue-green
//! switch and a rollback lose no request; a pinned environment waits; and
//! releases that change the entry point's limits lose none either.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::support::{GitRepo, Server, copy_fixture};

fn spec(strategy: &str) -> String {
    spec_listening(strategy, "127.0.0.1:0")
}

fn spec_listening(strategy: &str, listen: &str) -> String {
    format!(
        r#"service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: python3 -m unittest discover -s tests -q
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  ready_timeout: 15s
  health: {{ path: /healthz, interval: 300ms, timeout: 300ms, healthy: 1, unhealthy: 2 }}
  config_files:
    - {{ template: config/app.toml.tmpl, to: app.toml }}
environments:
  dev:
    deploy: auto
    instances: 4
    listen: {listen}
    strategy: {strategy}
    config: {{ GREETING: hi }}
"#
    )
}

/// Requests in a loop from several workers until stopped: (answered 2xx, failed, releases seen).
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let (ok, failed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let workers = (0..workers)
            .map(|_| {
                let (ok, failed, stop, client, url) = (
                    ok.clone(),
                    failed.clone(),
                    stop.clone(),
                    client.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let mut releases = Vec::new();
                    // Bounded: at most three minutes of requests.
                    let deadline = std::time::Instant::now() + Duration::from_secs(180);
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                        match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {
                                let release = r
                                    .headers()
                                    .get("x-sluice-release")
                                    .map(|v| v.to_str().unwrap().to_string())
                                    .unwrap_or_default();
                                if !releases.contains(&release) {
                                    releases.push(release);
                                }
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                eprintln!(
                                    "load: {} from {:?}",
                                    r.status(),
                                    r.headers().get("x-sluice-instance")
                                );
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("load: {e:?}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    releases
                })
            })
            .collect();
        Load {
            ok,
            failed,
            stop,
            workers,
        }
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut releases = Vec::new();
        for worker in self.workers {
            for r in worker.await.unwrap() {
                if !releases.contains(&r) {
                    releases.push(r);
                }
            }
        }
        releases.sort();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            releases,
        )
    }
}

async fn wait_release_made(server: &Server, number: i64) {
    for _ in 0..900 {
        let releases = server.get("/releases?service=shop").await;
        if releases
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["number"] == number)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("release v{number} was never made");
}

#[tokio::test]
async fn rolling_blue_green_and_rollback_lose_no_request_under_load() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", &spec("rolling"))]);
    server.add_repo(&repo);
    let dev = server.wait_env("shop", "dev", 1, 4).await;
    let load = Load::start(format!("http://{}/", dev["listen"].as_str().unwrap()), 8);
    tokio::time::sleep(Duration::from_millis(300)).await;

    repo.commit("v2", &[("app/VERSION", "2\n")]);
    server.wait_env("shop", "dev", 2, 4).await;
    repo.commit(
        "v3, switched blue-green",
        &[("app/VERSION", "3\n"), ("sluice.yaml", &spec("blue-green"))],
    );
    server.wait_env("shop", "dev", 3, 4).await;
    let deployments = server.get("/deployments?service=shop&env=dev").await;
    assert_eq!(deployments[0]["strategy"], "blue-green", "{deployments:#}");
    assert_eq!(deployments[1]["strategy"], "rolling");

    let out = server.cli(&["rollback", "shop", "dev"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled back to v2"));
    let dev = server.wait_env("shop", "dev", 2, 4).await;
    assert_eq!(dev["pinned"], true);

    // A new release does not move a pinned environment...
    repo.commit("v4", &[("app/VERSION", "4\n")]);
    wait_release_made(&server, 4).await;
    let promotion = loop {
        let open = server.get("/promotions?service=shop").await;
        if let Some(p) = open
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["release"] == 4 && p["blocked_by"] == "pinned")
        {
            break p.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        promotion["reason"]
            .as_str()
            .unwrap()
            .contains("rolled back to v2"),
        "{promotion:#}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.get("/status?service=shop").await[0]["release"],
        2,
        "still on v2 while pinned"
    );
    // ...until it is unpinned; then the waiting promotion proceeds by itself.
    assert!(server.cli(&["unpin", "shop", "dev"]).status.success());
    server.wait_env("shop", "dev", 4, 4).await;

    let (ok, failed, releases) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 200, "only {ok} requests were made");
    assert_eq!(
        releases,
        ["v1", "v2", "v3", "v4"],
        "every release answered in turn"
    );
    let log = server.get("/changelog?service=shop&env=dev").await;
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e: &Value| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "env.pinned",
        "env.unpinned",
        "deployment.succeeded",
        "env.release",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn releases_that_change_the_entry_point_s_limits_lose_no_request_under_load() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    let listening = |max_body: &str| {
        let listen = format!("{{ address: 127.0.0.1:0, limits: {{ max_body: {max_body} }} }}");
        spec_listening("rolling", &listen)
    };
    repo.commit("v1", &[("sluice.yaml", &listening("1MiB"))]);
    server.add_repo(&repo);
    let dev = server.wait_env("shop", "dev", 1, 4).await;
    let listen = dev["listen"].as_str().unwrap().to_string();
    let load = Load::start(format!("http://{listen}/"), 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (number, max_body) in [(2, "2MiB"), (3, "3MiB")] {
        let version = format!("{number}\n");
        repo.commit(
            &format!("v{number}: max_body {max_body}"),
            &[
                ("app/VERSION", &version),
                ("sluice.yaml", &listening(max_body)),
            ],
        );
        let dev = server.wait_env("shop", "dev", number, 4).await;
        assert_eq!(
            dev["listen"],
            listen.as_str(),
            "the entry point stays where it is"
        );
    }
    let (ok, failed, _) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 100, "only {ok} requests were made");
    // The new limit holds: 2.5 MiB passes 3 MiB and not 1 MiB.
    let large = reqwest::Client::new()
        .post(format!("http://{listen}/"))
        .body(vec![b'x'; 5 << 19])
        .send()
        .await
        .unwrap();
    assert_ne!(large.status(), 413);
}
