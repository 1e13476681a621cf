//! Several servers on one PostgreSQL: one runs the controllers under a
//! lease and the others serve live streams themselves and forward every
//! other request to it. kill -9 of it in the middle of an experiment:
//! another takes over within 15 s, the experiment ends as it would have,
//! a stream opened on the other before the kill goes on, and a webhook it
//! held meanwhile becomes a run. A server frozen past its lease stops by
//! itself when it wakes, having done nothing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sluice_store::{ControllersLease, Store};

use crate::restart::{
    Load, instance_processes, promote_by_hand, releases_answering, sorted_processes,
    wait_both_variants, wait_experiment, wait_prod,
};
use crate::support::{GitRepo, Server, copy_fixture, free_port, tempdir};

/// A fresh PostgreSQL database, or `None` (the test is skipped) when
/// `SLUICE_TEST_POSTGRES` names no server; CI always sets it.
async fn postgres(dir: &std::path::Path) -> Option<String> {
    let url = sluice_store::testing::fresh_postgres(dir).await;
    if url.is_none() {
        eprintln!("skipped: several servers need PostgreSQL (SLUICE_TEST_POSTGRES)");
    }
    url
}

/// Waits until the lease names a holder other than `not`, alive.
async fn wait_holder(store: &Store, not: &str, deadline: Duration) -> ControllersLease {
    let since = Instant::now();
    loop {
        if let Some(lease) = store.controllers().await.unwrap()
            && lease.holder != not
            && lease.left_ms >= 0
        {
            return lease;
        }
        assert!(
            since.elapsed() < deadline,
            "no other server took the controllers over within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `server` answers itself (its engines started).
async fn wait_answering(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = server
            .request(reqwest::Method::GET, "/status", Some(&server.token))
            .await
            .send()
            .await;
        if response.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "the server never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_standby_takes_the_controllers_over_after_a_kill_9_and_the_experiment_goes_on() {
    let dir = tempdir();
    let Some(db) = postgres(dir.path()).await else {
        return;
    };
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = Server::start(&data_a, Some(&db));
    let _leftovers = Leftovers(data_a.clone());
    let mut b = Server::start(&data_b, Some(&db));
    b.token = a.token.clone();
    let store = Store::connect(&db).await.unwrap();
    let held = store.controllers().await.unwrap().unwrap();
    assert_eq!(held.address, a.url, "the first server runs the controllers");

    // Each answers for itself whether it acts.
    let role = |server: &Server| {
        let url = format!("{}/api/v1/health", server.url);
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["role"]
                .clone()
        }
    };
    assert_eq!(
        (role(&a).await, role(&b).await),
        ("controllers".into(), "standby".into())
    );

    // Everything below goes through B, which forwards it to A.
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    let port = free_port();
    let spec = format!(
        "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: 'echo unit-tests-passed'\n  artifact:\n    paths: [app/]\nrun:\n  command: exec python3 app/server.py\n  health: {{ path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }}\nenvironments:\n  prod:\n    deploy: auto\n    instances: 1\n    listen: 127.0.0.1:{port}\n    strategy:\n      ab: {{ steps: [20, 100], min_requests: 1000000, max_step: 10m, metrics: [error_rate] }}\n"
    );
    // B serves a live stream itself: A's CI events as A tells them over
    // PostgreSQL, the log's lines read from the database.
    let mut events = Stream::open(&b, "/events").await;
    repo.commit("v1", &[("sluice.yaml", &spec)]);
    b.add_repo(&repo);
    events
        .until(|seen| seen.contains("unit-tests-passed"))
        .await;
    events
        .until(|seen| seen.contains(r#""status":"success""#))
        .await;
    b.wait_env("shop", "prod", 1, 1).await;
    // And its metrics: a scraper of both counts A's environments once.
    reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    let metrics = |server: &Server| {
        let url = format!("{}/metrics", server.url);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let (of_a, of_b) = (metrics(&a).await, metrics(&b).await);
    assert!(of_a.contains("environment=\"prod\""), "{of_a}");
    assert_eq!(
        of_b,
        "# HELP sluice_standby Whether this server stands by while another runs the controllers.\n# TYPE sluice_standby gauge\nsluice_standby 1\n"
    );
    let v2 = repo.commit("v2", &[("app/VERSION", "2\n")]);
    let experiment = wait_experiment(&b, |x| x["status"] == "running").await;
    let id = experiment["id"].as_i64().unwrap();
    wait_both_variants(&b).await;
    // A's local agent runs them, in processes of their own.
    let running = sorted_processes(&data_a);
    assert_eq!(running.len(), 2, "{running:?}");
    let load = Load::start(format!("http://127.0.0.1:{port}/"));
    load.served(20).await;

    // A person signs in to the dashboard through B (the sign-in is A's).
    let (session, _) = crate::notify::sign_in(&b.url, &b.token, "/changes").await;

    a.kill_hard();
    // While no server acts, B answers what needs only the database itself.
    let runs = b.get("/runs").await;
    assert!(runs.as_array().is_some_and(|r| r.len() >= 2), "{runs:#}");
    let run = runs[0]["id"].as_i64().unwrap();
    assert_eq!(b.get(&format!("/runs/{run}")).await["id"], run);
    let log = b.get(&format!("/runs/{run}/logs")).await;
    assert!(
        log["lines"].to_string().contains("unit-tests-passed"),
        "{log:#}"
    );
    for read in [
        "/changelog?service=shop",
        "/releases?service=shop",
        "/deployments",
        "/repos",
    ] {
        let answer = b.get(read).await;
        assert!(
            answer.as_array().is_some_and(|a| !a.is_empty()),
            "{read}: {answer:#}"
        );
    }
    // Lists that are empty here, answered all the same.
    for read in ["/incidents?all=true", "/rules?all=true", "/channels"] {
        let answer = b.get(read).await;
        assert!(answer.is_array(), "{read}: {answer:#}");
    }
    // And a forge's webhook: B holds the delivery in the database.
    let secret = store.repo("shop").await.unwrap().webhook_secret;
    let pull_request = json!({ "action": "opened", "number": 7, "pull_request": { "title": "new cart", "head": { "sha": v2, "ref": "cart" }, "user": { "login": "bo" } } });
    let (status, answer) = webhook(&b, &secret, "pr-7", &pull_request).await;
    assert_eq!(status, 202, "{answer:#}");
    assert!(answer["held"].as_i64().is_some(), "{answer:#}");
    let (status, again) = webhook(&b, &secret, "pr-7", &pull_request).await;
    assert_eq!(
        (status, &again["ignored"]),
        (200, &json!("this delivery was received before"))
    );
    // B shows the dashboard's pages that need only the database itself, with the
    // dashboard's headers, and its assets; a page that needs the holder
    // loads again by itself.
    for (path, shows) in [
        ("/changes".to_string(), "v2".to_string()),
        (format!("/runs/{run}"), "unit-tests-passed".to_string()),
        ("/changelog?service=shop".to_string(), "shop".to_string()),
        ("/incidents".to_string(), "Incidents".to_string()),
        ("/rules".to_string(), "Rules".to_string()),
        ("/assets/sluice.css".to_string(), "{".to_string()),
    ] {
        let page = reqwest::Client::new()
            .get(format!("{}{path}", b.url))
            .header("Cookie", &session)
            .header("Accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{path}");
        assert!(
            page.headers().contains_key("content-security-policy"),
            "{path}"
        );
        let text = page.text().await.unwrap();
        assert!(text.contains(&shows), "{path}: {text}");
    }
    let page = reqwest::Client::new()
        .get(format!("{}/", b.url))
        .header("Accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 503);
    assert_eq!(page.headers()["refresh"], "2");
    assert!(page.text().await.unwrap().contains("Switching servers"));
    // The lease runs out (10 s by default) and B, asking every second, takes it.
    let taken = wait_holder(&store, &held.holder, Duration::from_secs(15)).await;
    assert_eq!(
        (taken.address.as_str(), taken.term),
        (b.url.as_str(), held.term + 1)
    );
    let taken_at = sluice_store::now_ms();
    wait_answering(&b).await;
    assert_eq!(role(&b).await, "controllers");
    // A's local agent turns to B, which it heard of from A.
    let local_a = running_agent_of(&data_a);
    wait_heard(&b, &local_a, taken_at).await;
    // The delivery B held is a run now, of the pull request's ref (no
    // scan finds that ref: only the delivery names it).
    let run = b
        .wait_run("the pull request B held", |r| r["pull_request"] == 7)
        .await;
    assert_eq!(
        (&run["ref_name"], &run["kind"], &run["sha"]),
        (&json!("refs/pull/7/head"), &json!("review"), &json!(v2))
    );

    // B goes on with the same experiment at its step, A and B beside each
    // other behind the same address: the same instances, which A's local
    // agent keeps running, reaching B now. The entry point is B's local
    // agent's; A's served it until B's did, then gave the address up, and
    // no request failed on the way.
    wait_prod(&b, "prod served by B's local agent alone", |prod| {
        let points = &prod["host_entry_points"];
        prod["listen"] == format!("127.0.0.1:{port}")
            && points.as_array().map(Vec::len) == Some(1)
            && points[0]["agent"] != local_a.as_str()
    })
    .await;
    load.served(100).await;
    let failed = load.finish("a kill -9 of the holder and a takeover").await;
    assert_eq!(failed, Vec::<String>::new());
    assert_eq!(
        sorted_processes(&data_a),
        running,
        "no instance started again"
    );
    assert_eq!(instance_processes(&data_b), [], "nothing runs twice");
    let holders = listening(port);
    let of_a = data_a.canonicalize().unwrap().display().to_string();
    assert!(
        !holders.is_empty() && holders.iter().all(|(_, cmd)| !cmd.contains(&of_a)),
        "only B's local agent listens at the address: {holders:#?}"
    );
    let going_on = wait_experiment(&b, |x| x["id"] == id).await;
    assert_eq!(
        (going_on["status"].as_str(), going_on["weight_bp"].as_i64()),
        (Some("running"), Some(2000)),
        "{going_on:#}"
    );
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(releases_answering(&url).await, ["v1", "v2"]);

    // It ends as it would have: promoted by a person, its promotion done.
    promote_by_hand(&b, id).await;

    // The stream opened on B before the kill goes on: B's own CI events
    // now, told over PostgreSQL like A's were.
    let runs = b.get("/runs").await;
    let before = (runs.as_array().unwrap().iter())
        .filter_map(|run| run["id"].as_i64())
        .max()
        .expect("runs before the kill");
    repo.commit("v3", &[("app/VERSION", "3\n")]);
    events
        .until(|seen| run_ids(seen).into_iter().any(|run| run > before))
        .await;
    store.close().await;
}

/// Posts a forge's signed `pull_request` delivery to `server`.
async fn webhook(server: &Server, secret: &str, delivery: &str, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/hooks/shop", server.url))
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", delivery)
        .header(
            "X-Hub-Signature-256",
            sluice_ci::webhook::sign(secret, &bytes),
        )
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `server` heard from agent `name` after `since` (ms).
async fn wait_heard(server: &Server, name: &str, since: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = server.get("/agents").await;
        let heard = (agents.as_array().into_iter().flatten())
            .any(|a| a["name"] == name && a["seen_at"].as_i64() > Some(since));
        if heard {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not heard: {agents:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The processes that hold a socket listening at `port`, with their
/// command lines.
fn listening(port: u16) -> Vec<(i32, String)> {
    let ss = std::process::Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&ss.stdout);
    let mut pids: Vec<i32> = (text.split("pid=").skip(1))
        .filter_map(|rest| rest.split(',').next()?.parse().ok())
        .collect();
    pids.sort();
    pids.dedup();
    (pids.into_iter())
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid, String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

/// The name of the local agent the server of `data` started.
fn running_agent_of(data: &std::path::Path) -> String {
    let args = std::fs::read_to_string(data.join("local-agent/pid"))
        .ok()
        .and_then(|pid| std::fs::read(format!("/proc/{}/cmdline", pid.trim())).ok())
        .expect("the local agent runs");
    let args: Vec<String> = (args.split(|b| *b == 0))
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "--name").expect("--name");
    args[at + 1].clone()
}

/// An SSE stream as read so far.
struct Stream {
    response: reqwest::Response,
    seen: String,
}

impl Stream {
    async fn open(server: &Server, path: &str) -> Stream {
        let response = server
            .request(reqwest::Method::GET, path, Some(&server.token))
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Stream {
            response,
            seen: String::new(),
        }
    }

    /// Reads on until what was read satisfies `done`; returns it. Fails
    /// when the stream ends or a minute goes by.
    async fn until(&mut self, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !done(&self.seen) {
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("not seen within a minute:\n{}", self.seen))
                .expect("the stream is not cut")
                .expect("the stream stays open");
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        self.seen.clone()
    }
}

/// The runs a stream's run events name.
fn run_ids(seen: &str) -> Vec<i64> {
    seen.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter(|event| event["type"] == "run")
        .filter_map(|event| event["run_id"].as_i64())
        .collect()
}

/// What a killed server's host still runs is that server's to stop at its
/// next start; here, the test's, even when it fails.
struct Leftovers(std::path::PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (pid, _) in instance_processes(&self.0) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test]
async fn a_server_frozen_past_its_lease_stops_by_itself_when_it_wakes() {
    let dir = tempdir();
    let Some(db) = postgres(dir.path()).await else {
        return;
    };
    let lease = ["--controller-lease", "2s"];
    let mut a = Server::start_with(&dir.path().join("a"), Some(&db), &lease);
    let mut b = Server::start_with(&dir.path().join("b"), Some(&db), &lease);
    b.token = a.token.clone();
    let store = Store::connect(&db).await.unwrap();
    let held = store.controllers().await.unwrap().unwrap();

    // A freezes (a long pause, a host that stops answering): B takes over.
    let pid = nix::unistd::Pid::from_raw(a.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let taken = wait_holder(&store, &held.holder, Duration::from_secs(15)).await;
    assert_eq!(taken.address, b.url);

    // A wakes: its renewal is refused, and it stops at once.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(a.wait_exit().await, Some(75));
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    assert!(log.contains("lost the controllers' lease"), "{log}");
    wait_answering(&b).await;
    assert!(b.get("/runs").await.is_array());
    store.close().await;
}
