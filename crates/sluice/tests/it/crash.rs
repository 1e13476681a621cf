//! kill -9 of the server at 20 moments a seeded generator picks, while
//! changes go through CI, a release, dev's rolling deployment and prod's
//! experiment under load, the server restarted each time. Afterwards: every
//! environment serves its recorded release, no instance is orphaned or
//! doubled, no run, promotion, deployment or experiment is left unfinished,
//! and the change log has each event once. `SLUICE_CRASH_SEED` replays a
//! failing seed. On SQLite, and on PostgreSQL when the suite has one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support::{GitRepo, Server, copy_fixture};

fn spec(prod_port: u16) -> String {
    format!(
        "service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: 'true'
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  ready_timeout: 15s
  health: {{ path: /healthz, interval: 100ms, timeout: 100ms, healthy: 1, unhealthy: 2 }}
environments:
  dev:
    deploy: auto
    instances: 2
    listen: 127.0.0.1:0
  prod:
    deploy: auto
    from: dev
    instances: 1
    listen: 127.0.0.1:{prod_port}
    strategy:
      ab: {{ steps: [50, 100], min_requests: 30, min_duration: 1s, max_step: 10m, metrics: [error_rate] }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_at_twenty_random_moments_lose_nothing_and_double_nothing() {
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261130);
    eprintln!("SLUICE_CRASH_SEED={seed}");
    let top = crate::support::tempdir();
    for (n, database) in crate::support::databases(top.path())
        .await
        .into_iter()
        .enumerate()
    {
        let dir = top.path().join(format!("db{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        eprintln!(
            "-- against {}",
            database.as_deref().map_or("sqlite", |_| "postgres")
        );
        kill_twenty_times(&dir, database.as_deref(), seed).await;
    }
}

async fn kill_twenty_times(dir: &std::path::Path, database: Option<&str>, seed: u64) {
    let mut moments = rand::rngs::StdRng::seed_from_u64(seed);
    let data = dir.join("data");
    let prod_port = crate::support::free_port();
    let mut server = Server::start(&data, database);
    let repo = GitRepo::new(dir, "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", &spec(prod_port))]);
    server.add_repo(&repo);
    server.wait_env("shop", "prod", 1, 1).await;

    // Users keep coming, through every restart (errors while it is down).
    let load = tokio_util_free_load(format!("http://127.0.0.1:{prod_port}/"));
    for change in 2..22 {
        repo.commit(
            &format!("change {change}"),
            &[("app/VERSION", &format!("{change}\n"))],
        );
        let moment = Duration::from_millis(moments.random_range(0..4000));
        tokio::time::sleep(moment).await;
        eprintln!("kill -9 {moment:?} after change {change}");
        server.kill_hard();
        server = Server::start(&data, database);
    }

    let settled = settle(&server).await;
    load.abort();
    // The newest release (a run a kill interrupted makes none: it is not
    // run again by itself, see docs/operations.md).
    let releases = server.get("/releases?service=shop").await;
    let newest = releases
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["number"].as_i64())
        .max()
        .unwrap();
    for env in ["dev", "prod"] {
        let status = &settled[env];
        let release = status["release"].as_i64().unwrap();
        // Nothing lost, nothing backwards: the newest release reached both.
        assert_eq!(release, newest, "{env} runs the newest release: {status:#}");
        let listen = status["listen"].as_str().unwrap();
        for _ in 0..10 {
            let answer = reqwest::get(format!("http://{listen}/")).await.unwrap();
            assert_eq!(answer.status(), 200, "{env}");
            assert_eq!(
                answer.headers()["x-sluice-release"],
                format!("v{release}").as_str(),
                "{env} serves its recorded release"
            );
        }
    }
    // What runs is what the store says runs, each once.
    let mut recorded: Vec<String> = ["dev", "prod"]
        .iter()
        .flat_map(|env| settled[*env]["instances"].as_array().unwrap().clone())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    recorded.sort();
    let mut running: Vec<String> = crate::restart::instance_processes(&data)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    running.sort();
    assert_eq!(running, recorded, "no instance orphaned or doubled");
    assert_eq!(recorded.len(), 3, "dev's two and prod's one");

    // Each object's events once: a release made, a deployment or an
    // experiment started and ended, a promotion asked for.
    let log = server.get("/changelog?limit=1000").await;
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for event in log.as_array().unwrap() {
        let kind = event["kind"].as_str().unwrap_or_default();
        let once = kind == "release.created"
            || kind == "promotion.requested"
            || kind == "experiment.started"
            || kind.starts_with("deployment.");
        if once {
            let key = (
                kind.to_string(),
                event["subject"].as_str().unwrap_or_default().to_string(),
            );
            *seen.entry(key).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events recorded twice: {twice:?}");
    assert!(seen.len() > 10, "{seen:?}");
}

/// Sends requests to `url` one after another until aborted.
fn tokio_util_free_load(url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        loop {
            if client.get(&url).send().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

/// Waits until nothing is left unfinished (every run ended, no deployment
/// running, no experiment open, every promotion done, failed or rejected)
/// and each environment runs its recorded release on all its instances;
/// returns the environments' status by name.
async fn settle(server: &Server) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let runs = server.get("/runs?limit=100").await;
        let deployments = server.get("/deployments?service=shop&limit=1000").await;
        let experiments = server.get("/experiments?service=shop").await;
        let promotions = server.get("/promotions?service=shop&all=true").await;
        let status = server.get("/status?service=shop").await;
        let unfinished = |list: &Value, open: &[&str]| {
            list.as_array()
                .unwrap()
                .iter()
                .filter(|x| open.contains(&x["status"].as_str().unwrap_or_default()))
                .count()
        };
        let busy = unfinished(&runs, &["queued", "running"])
            + unfinished(&deployments, &["running"])
            + unfinished(&experiments, &["starting", "running", "paused", "held"])
            + unfinished(&promotions, &["pending", "deploying"]);
        let envs: BTreeMap<String, Value> = status
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["environment"].as_str().unwrap().to_string(), e.clone()))
            .collect();
        let whole = envs.values().all(|e| {
            let instances = e["instances"].as_array().unwrap();
            instances.len() == e["desired_instances"].as_u64().unwrap() as usize
                && instances
                    .iter()
                    .all(|i| i["healthy"] == true && i["release"] == e["release"])
        });
        if busy == 0 && whole && envs.len() == 2 {
            return envs;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: runs {runs:#} deployments {deployments:#} experiments {experiments:#} promotions {promotions:#} status {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
