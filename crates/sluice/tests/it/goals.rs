//! A/B goals end to end: simulated users of a real service, each with the
//! sticky cookie the entry point gave them, who check out more often on B.
//! Goals come from a request the entry point sees (`POST /checkout`), from
//! the service's `Sluice-Goal` answer header (`/buy`), and from the
//! browser's `POST /_sluice/goal`. The test ramps to its 50% split, holds,
//! and promotes B because it converts better; a B that converts better but
//! fails requests is rolled back by the error-rate guardrail all the same;
//! a test with `promote: manual` waits for a person; a restart keeps the
//! users counted; goals come from a backend and from `sluice ab start`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{GitRepo, Server, copy_fixture};

pub(crate) const SPEC: &str = r#"service: shop
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
      ab:
        steps: [10, 50, 100]
        min_requests: 40
        min_duration: 1s
        max_step: 120s
        metrics: [error_rate]
        mode: test
        goals:
          - { name: checkout, request: "POST /checkout", status: 2xx }
          - { name: purchase, value: true }
          - { name: signup }
        test: { split: 50, min_effect: 5%, max_duration: 10m }
"#;

/// Users until stopped: each lands on `/`, checks out with a probability
/// that depends on the release it sees (v1: 20%, v2: 40%, later ones 60%
/// when `b_better`, else 20% everywhere), buys for 10 after a checkout, and
/// one in three signs up from the browser.
pub(crate) struct Users {
    stop: Arc<AtomicBool>,
    /// Answers that carried `Sluice-Goal` out of the entry point.
    leaked: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Users {
    fn start(base: String, b_better: bool) -> Users {
        Users::across(vec![base], b_better)
    }

    /// Users of several entry points: user `n` lands on `bases[n % len]`
    /// and reaches their goals through the next one.
    pub(crate) fn across(bases: Vec<String>, b_better: bool) -> Users {
        let stop = Arc::new(AtomicBool::new(false));
        let leaked = Arc::new(AtomicU64::new(0));
        let workers = (0..8u64)
            .map(|worker| {
                let (bases, stop, leaked) = (bases.clone(), stop.clone(), leaked.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let deadline = Instant::now() + Duration::from_secs(240);
                    let mut n = worker;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        n += 8;
                        let at = n as usize % bases.len();
                        let through = (bases[at].as_str(), bases[(at + 1) % bases.len()].as_str());
                        let _ = visit(&client, through, n, b_better, &leaked).await;
                    }
                })
            })
            .collect();
        Users {
            stop,
            leaked,
            workers,
        }
    }

    pub(crate) async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.leaked.load(Ordering::Relaxed)
    }
}

/// One user's visit, landing on `base` and reaching goals through
/// `goals_at`; `n` makes their choices (a fixed, spread sequence).
async fn visit(
    client: &reqwest::Client,
    (base, goals_at): (&str, &str),
    n: u64,
    b_better: bool,
    leaked: &AtomicU64,
) -> Result<(), reqwest::Error> {
    let landing = client.get(format!("{base}/")).send().await?;
    let release = landing
        .headers()
        .get("x-sluice-release")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(cookie) = crate::support::cookie_of(&landing) else {
        return Ok(());
    };
    // A spread number in 0..100 per user.
    let draw = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100;
    // Each release checks out better than the last (20%, 40%, then 60%).
    let level = release.trim_start_matches('v').parse::<u64>().unwrap_or(1);
    let checks_out = draw < if b_better { 20 * level.min(3) } else { 20 };
    if checks_out {
        let post = |path: &str| {
            client
                .post(format!("{goals_at}{path}"))
                .header("cookie", &cookie)
        };
        post("/checkout").send().await?;
        let bought = post("/buy?amount=10").send().await?;
        if bought.headers().contains_key("sluice-goal") {
            leaked.fetch_add(1, Ordering::Relaxed);
        }
    }
    if draw.is_multiple_of(3) {
        client
            .post(format!("{goals_at}/_sluice/goal"))
            .header("cookie", &cookie)
            .body(r#"{"goal":"signup"}"#)
            .send()
            .await?;
    }
    Ok(())
}

pub(crate) async fn experiment_ended(server: &Server, release: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(200);
    loop {
        let all = server.get("/experiments?service=shop").await;
        if let Some(x) = all.as_array().unwrap().iter().find(|x| {
            x["release"] == release
                && [
                    "promoted",
                    "rolled_back",
                    "broken",
                    "held",
                    "concluded",
                    "aborted",
                ]
                .contains(&x["status"].as_str().unwrap())
        }) {
            return x.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the experiment of v{release} never ended: {all:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn goal<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["goals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no goal {name}: {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_promotes_the_b_that_converts_better_and_guardrails_still_roll_back() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", SPEC)]);
    server.add_repo(&repo);
    let prod = server.wait_env("shop", "prod", 1, 2).await;
    let base = format!("http://{}", prod["listen"].as_str().unwrap());
    let users = Users::start(base.clone(), true);

    // v2: users check out twice as often on it.
    repo.commit("v2, a clearer checkout", &[("app/VERSION", "2\n")]);
    let x = experiment_ended(&server, 2).await;
    assert_eq!(x["status"], "promoted", "{x:#}");
    let reason = x["reason"].as_str().unwrap();
    assert!(
        reason.contains("B is better") && reason.contains("checkout"),
        "{reason}"
    );
    let report = &x["report"];
    assert_eq!(report["mode"], "test");
    let checkout = goal(report, "checkout");
    assert_eq!(checkout["primary"], true);
    assert!(
        checkout["lift"]["lower"].as_f64().unwrap() > 0.0,
        "{checkout:#}"
    );
    assert!(
        checkout["a"]["users"].as_u64().unwrap() >= 1000,
        "{checkout:#}"
    );
    // From the answer header: 10 a buyer, more of them on B.
    let purchase = goal(report, "purchase");
    assert_eq!(purchase["value"], true);
    assert!(
        purchase["b"]["mean"].as_f64().unwrap() > purchase["a"]["mean"].as_f64().unwrap(),
        "{purchase:#}"
    );
    // From the browser: about a third of the users of each side.
    let signup = goal(report, "signup");
    for side in ["a", "b"] {
        let (users, reached) = (
            signup[side]["users"].as_f64().unwrap(),
            signup[side]["reached"].as_f64().unwrap(),
        );
        assert!((0.2..0.5).contains(&(reached / users)), "{signup:#}");
    }
    // The test ramped to 50% and held there until it decided, never
    // stepping on to 100%.
    let weights: Vec<f64> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["weight"].as_f64())
        .collect();
    assert!(
        weights.contains(&50.0) && !weights.contains(&100.0),
        "{weights:?}"
    );
    server.wait_env("shop", "prod", 2, 2).await;
    let log = server.get("/changelog?kind=experiment.promoted").await;
    assert!(log.to_string().contains("B is better"), "{log:#}");

    // v3 converts better still, but fails a fifth of its pages.
    repo.commit("v3, better and broken", &[("app/ERROR_RATE", "0.2\n")]);
    let x = experiment_ended(&server, 3).await;
    assert_eq!(x["status"], "rolled_back", "{x:#}");
    assert!(
        x["reason"].as_str().unwrap().contains("error rate"),
        "{x:#}"
    );
    server.wait_env("shop", "prod", 2, 2).await;

    // v4 fixes v3's errors and converts better still; its test waits for a
    // person to promote it.
    let manual = SPEC.replace(
        "max_duration: 10m }",
        "max_duration: 10m, promote: manual }",
    );
    repo.commit(
        "v4, promoted by a person",
        &[
            ("app/VERSION", "4\n"),
            ("app/ERROR_RATE", "0\n"),
            ("sluice.yaml", &manual),
        ],
    );
    let held = experiment_ended(&server, 4).await;
    assert_eq!(held["status"], "held", "{held:#}");
    assert!(
        held["reason"].as_str().unwrap().contains("B is better"),
        "{held:#}"
    );
    let id = held["id"].as_i64().unwrap();
    let out = server.cli(&["ab", "promote", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_env("shop", "prod", 4, 2).await;

    // Started by hand, with goals of its own replacing the strategy's.
    let out = server.cli(&[
        "ab",
        "start",
        "shop",
        "prod",
        "--release",
        "2",
        "--set",
        "GREETING=hi",
        "--goal",
        "signup",
        "--goal",
        "checkout=POST /checkout",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_hand = wait_experiment(&server, "the goals given by hand counted", |x| {
        let names: Vec<&str> = x["report"]["goals"]
            .as_array()
            .map(|g| g.iter().filter_map(|g| g["name"].as_str()).collect())
            .unwrap_or_default();
        x["status"] == "running"
            && names == ["signup", "checkout"]
            && x["report"]["goals"][0]["a"]["reached"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(by_hand["goals"], r#"["signup","checkout=POST /checkout"]"#);
    let id = by_hand["id"].as_i64().unwrap();
    let (status, _) = server
        .post(&format!("/experiments/{id}/abort"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200);

    let leaked = users.finish().await;
    assert_eq!(leaked, 0, "Sluice-Goal never leaves the entry point");
}

/// Users the test's primary goal counted, as the experiment's report says.
fn counted(x: &Value) -> u64 {
    x["report"]["goals"].get(0).map_or(0, |g| {
        g["a"]["users"].as_u64().unwrap_or(0) + g["b"]["users"].as_u64().unwrap_or(0)
    })
}

async fn wait_experiment(server: &Server, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = server.get("/experiments?service=shop").await;
        if let Some(x) = all.as_array().unwrap().iter().find(|x| pick(x)) {
            return x.clone();
        }
        assert!(Instant::now() < deadline, "never saw {what}: {all:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_test_keeps_its_users_and_conversions() {
    let dir = crate::support::tempdir();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", SPEC)]);
    server.add_repo(&repo);
    let prod = server.wait_env("shop", "prod", 1, 2).await;
    let base = format!("http://{}", prod["listen"].as_str().unwrap());
    // A and B alike: the test holds at its split, undecided.
    let users = Users::start(base, false);
    repo.commit("v2", &[("app/VERSION", "2\n")]);
    wait_experiment(&server, "users counted at the split", |x| {
        x["release"] == 2 && x["weight_bp"] == 5000 && counted(x) >= 1500
    })
    .await;
    users.finish().await;
    let before = wait_experiment(&server, "the report", |x| x["release"] == 2).await;
    let (kept, reached) = (
        counted(&before),
        before["report"]["goals"][0]["b"]["reached"].clone(),
    );
    assert_eq!(before["status"], "running", "{before:#}");

    // Stopped as an operator would; no user comes meanwhile or after.
    server.stop();
    let restarted = Server::start(&data, None);
    let after = wait_experiment(&restarted, "the experiment resumed with its users", |x| {
        x["release"] == 2 && x["decisions"].to_string().contains("resume") && counted(x) >= kept
    })
    .await;
    assert_eq!(after["weight_bp"], 5000, "{after:#}");
    assert!(
        after["report"]["goals"][0]["b"]["reached"].as_u64() >= reached.as_u64(),
        "conversions kept: {after:#}"
    );

    // A service's backend reports a goal for a user it knows by their key.
    let status = restarted.get("/status?service=shop").await;
    let listen = status
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "prod")
        .unwrap()["listen"]
        .as_str()
        .unwrap()
        .to_string();
    let landing = reqwest::get(format!("http://{listen}/")).await.unwrap();
    let key = landing.headers()["set-cookie"].to_str().unwrap();
    let key = key
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("sluice_key=")
        .to_string();
    let id = after["id"].as_i64().unwrap();
    let path = format!("/experiments/{id}/goals");
    let (status, body) = restarted
        .post(
            &path,
            serde_json::json!({ "user": key, "goal": "purchase", "value": 12.5 }),
        )
        .await;
    assert_eq!(
        (status, body["counted"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (status, body) = restarted
        .post(
            &path,
            serde_json::json!({ "user": "never-seen", "goal": "signup" }),
        )
        .await;
    assert_eq!(
        (status, body["counted"].as_bool()),
        (200, Some(false)),
        "{body}"
    );
    let (status, body) = restarted
        .post(&path, serde_json::json!({ "user": key, "goal": "refund" }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("checkout, purchase, signup"),
        "{body}"
    );
}
