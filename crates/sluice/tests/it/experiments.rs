//! A/B experiments end to end: a healthy B ramps to 100% and becomes the
//! release; a B that fails 5% of its requests is rolled back by itself in
//! an early step; no request fails during the steps but B's own 500s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{GitRepo, Server, copy_fixture};

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
  health: { path: /healthz, interval: 300ms, timeout: 300ms, healthy: 1, unhealthy: 2 }
environments:
  prod:
    deploy: auto
    instances: 2
    listen: 127.0.0.1:0
    strategy:
      ab: { steps: [10, 50, 100], min_requests: 40, min_duration: 1s, max_step: 60s, metrics: [error_rate], allow_force: true }
"#;

/// Every answer that was not a 2xx: (status, release), or (0, error) for a failed request.
type Failures = Arc<Mutex<Vec<(u16, String)>>>;

fn load(
    url: String,
    stop: Arc<AtomicBool>,
    failures: Failures,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..6)
        .map(|_| {
            let (url, stop, failures) = (url.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                // A new client each request: no cookie, so each is a new user.
                let deadline = Instant::now() + Duration::from_secs(240);
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let client = reqwest::Client::new();
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            let release = r
                                .headers()
                                .get("x-sluice-release")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            failures
                                .lock()
                                .unwrap()
                                .push((r.status().as_u16(), release));
                        }
                        Err(e) => failures.lock().unwrap().push((0, e.to_string())),
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                sent
            })
        })
        .collect()
}

async fn wait_experiment(server: &Server, release: i64, done: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = server.get("/experiments?service=shop").await;
        if let Some(x) = all
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["release"] == release && done.contains(&x["status"].as_str().unwrap()))
        {
            return x.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the experiment of v{release} never ended: {all:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_healthy_b_is_promoted_and_a_failing_b_rolled_back_by_itself() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", SPEC)]);
    server.add_repo(&repo);
    let prod = server.wait_env("shop", "prod", 1, 2).await;
    let url = format!("http://{}/", prod["listen"].as_str().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Failures = Arc::default();
    let workers = load(url.clone(), stop.clone(), failures.clone());

    // v2 is healthy: it ramps 10 → 50 → 100 and becomes the release.
    repo.commit("v2", &[("app/VERSION", "2\n")]);
    let promoted =
        wait_experiment(&server, 2, &["promoted", "rolled_back", "broken", "held"]).await;
    assert_eq!(promoted["status"], "promoted", "{promoted:#}");
    let weights: Vec<f64> = promoted["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["weight"].as_f64())
        .collect();
    assert!(
        weights.contains(&10.0) && weights.contains(&50.0),
        "{weights:?}"
    );
    assert_eq!(promoted["report"]["b"]["errors"], 0);
    server.wait_env("shop", "prod", 2, 2).await;

    // A tester may force a variant where the environment allows it.
    let forced = reqwest::Client::new()
        .get(&url)
        .header("x-sluice-variant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(forced.headers()["x-sluice-release"], "v2");

    // v3 fails 5% of its requests: rolled back by itself in an early step.
    repo.commit(
        "v3 breaks checkout for some",
        &[("app/ERROR_RATE", "0.05\n")],
    );
    let rolled = wait_experiment(&server, 3, &["promoted", "rolled_back", "broken", "held"]).await;
    assert_eq!(rolled["status"], "rolled_back", "{rolled:#}");
    assert!(
        rolled["weight"].as_f64().unwrap() <= 50.0,
        "caught at 10% or 50%: {rolled:#}"
    );
    assert!(
        rolled["reason"].as_str().unwrap().contains("error rate"),
        "{rolled:#}"
    );
    let status = server.wait_env("shop", "prod", 2, 2).await;
    assert!(
        status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["release"] == 2),
        "B's instances are gone"
    );

    // Per backend, the last minute shows v3's instance and its 5xx beside A's.
    let prod = server.get("/services/shop/environments/prod").await;
    let traffic = prod["traffic"].as_array().unwrap();
    let b = traffic
        .iter()
        .find(|t| t["variant"] == "b" && t["instance"].as_str().unwrap().contains("v3"))
        .unwrap_or_else(|| panic!("no row for v3's instance: {traffic:#?}"));
    assert!(b["errors"].as_u64().unwrap() > 0, "{b:#}");
    assert!(
        traffic
            .iter()
            .any(|t| t["variant"] == "a" && t["errors"] == 0),
        "{traffic:#?}"
    );

    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for worker in workers {
        sent += worker.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures
            .iter()
            .all(|(status, release)| *status == 500 && release == "v3"),
        "only B's own 500s may fail: {failures:?}"
    );
    assert!(
        !failures.is_empty(),
        "v3 did fail some requests before it was rolled back"
    );
    assert!(sent > 500, "only {sent} requests");
    let log = server.get("/changelog?service=shop&kind=experiment.").await;
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "experiment.started",
        "experiment.step",
        "experiment.promoted",
        "experiment.rolled_back",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let out = server.cli(&["ab", "status", "shop"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rolled_back at 10% B") || text.contains("rolled_back at 50% B"),
        "{text}"
    );
}
