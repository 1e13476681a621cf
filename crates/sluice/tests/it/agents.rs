//! CI on agents, on real hosts: three network namespaces, an agent in each
//! connecting out to the server in the root namespace. Jobs land on the
//! agents their `runs_on:` labels name; an agent killed (-9) in the middle
//! of a job loses it within its lease, the job passes on another agent,
//! and the dead agent's late report is refused. Agent tokens do an agent's
//! work and nothing else.

use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::hosts::{Host, missing};
use crate::support::{GitRepo, Server, tempdir};

fn spec(flag: &std::path::Path) -> String {
    format!(
        r#"service: shop
pipeline:
  jobs:
    build:
      runs_on: {{ role: build }}
      steps:
        - run: echo "built on $(ip netns identify $$) as uid $(id -u)"; mkdir out; ip netns identify $$ > out/where
    test:
      needs: [build]
      runs_on: {{ role: test }}
      steps:
        - run: echo "testing on $(ip netns identify $$) with $SHOP_SECRET"
        # The first attempt sleeps until its agent is killed; the next passes.
        - run: if [ -s {flag} ]; then echo passed; else echo first > {flag}; sleep 600; fi
  artifact: {{ paths: [out/], from: build }}
"#,
        flag = flag.display()
    )
}

struct Agent {
    name: &'static str,
    token: String,
    child: Child,
}

#[tokio::test]
async fn jobs_run_on_the_agents_their_labels_name_and_a_lost_job_passes_on_another() {
    if let Some(what) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the agents' test, but {what} is missing"
        );
        eprintln!("skipped: {what} is missing");
        return;
    }
    let dir = tempdir();
    let server = Server::start_on(
        "0.0.0.0:0",
        &dir.path().join("data"),
        None,
        &["--agent-lease", "2s"],
    );
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let hosts: Vec<Host> = (0..3).map(|_| Host::make()).collect();
    let mut agents = Vec::new();
    for (host, (name, role)) in hosts.iter().zip([
        ("builder", "build"),
        ("tester-1", "test"),
        ("tester-2", "test"),
    ]) {
        let token = server.token_for(name, "agent", &[]).await;
        let url = format!("http://{}:{port}", host.gateway);
        let label = format!("role={role}");
        let log = dir.path().join(format!("{name}.log"));
        let data = dir.path().join(name);
        let child = host.spawn(
            crate::support::SLUICE,
            &[
                "agent",
                "--server",
                &url,
                "--token",
                &token,
                "--name",
                name,
                "--label",
                &label,
                "--data-dir",
            ]
            .into_iter()
            .chain([data.to_str().unwrap()])
            .collect::<Vec<_>>(),
            &log,
        );
        agents.push(Agent { name, token, child });
    }
    let listed = server
        .wait_for("/agents", "three agents online", |a| a["online"] == true)
        .await;
    assert!(listed["cores"].as_i64().unwrap() >= 1, "{listed:#}");
    wait_online(&server, 3).await;
    let listed = server.cli(&["agents"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("builder") && l.contains("online") && l.contains("role=build")),
        "{listed}"
    );

    refusals(&server, &agents).await;

    // A first commit registers the repository, to give it a secret.
    let flag = dir.path().join("first-attempt");
    crate::support::writable_by_steps(&flag);
    let repo = GitRepo::new(dir.path(), "shop");
    let here =
        "service: shop\npipeline:\n  jobs:\n    hello:\n      steps:\n        - run: echo here\n";
    repo.commit("v0", &[("sluice.yaml", here)]);
    server.add_repo(&repo);
    server.wait_run("v0", |r| r["title"] == "v0").await;
    let response = server
        .request(
            reqwest::Method::PUT,
            "/repos/shop/secrets/SHOP_SECRET",
            Some(&server.token),
        )
        .await
        .json(&json!({ "value": "s3cret-only-for-the-claimer" }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    repo.commit("v1", &[("sluice.yaml", &spec(&flag))]);

    // The test job's first claim: find its agent, and kill it mid-step.
    let first = wait_attempt(&server, |a| a["state"] == "running").await;
    let victim = first["agent"].as_str().unwrap().to_string();
    wait_file(&flag).await;
    let dead = agents.iter_mut().find(|a| a.name == victim).unwrap();
    dead.child.kill().unwrap();
    let _ = dead.child.wait();

    let run = server.wait_run("v1", |r| r["title"] == "v1").await;
    assert_eq!(run["status"], "success", "{run:#}");
    let jobs = run["jobs"].as_array().unwrap();
    let test = jobs.iter().find(|j| j["name"] == "test").unwrap();
    let attempts = test["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{test:#}");
    assert_eq!(attempts[0]["agent"], victim.as_str());
    assert_eq!(attempts[0]["state"], "lost");
    assert!(
        attempts[0]["reason"]
            .as_str()
            .unwrap()
            .contains("silent past its lease"),
        "{test:#}"
    );
    let survivor = attempts[1]["agent"].as_str().unwrap();
    assert_ne!(survivor, victim);
    assert!(survivor.starts_with("tester-"), "{test:#}");
    assert_eq!(attempts[1]["state"], "ended");

    // The artifact was packed where `build` ran, and uploaded by its sha256.
    let sha = run["artifact_sha256"]
        .as_str()
        .expect("an artifact")
        .to_string();
    let packed = artifact_file(&server, &sha, "out/where").await;
    assert_eq!(packed.trim(), hosts[0].ns, "packed on the builder's host");

    // Each job ran in the namespace of an agent its labels name.
    let log = server.logs(&run).await.join("\n");
    let built = format!("built on {} as uid ", hosts[0].ns);
    let uid: u32 = log
        .lines()
        .find_map(|l| l.split(&built).nth(1))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{built}` in {log}"));
    assert!(
        (100_000..150_000).contains(&uid),
        "a step's own user, not root: {uid}"
    );
    let survivor_host = if survivor == "tester-1" {
        &hosts[1]
    } else {
        &hosts[2]
    };
    assert!(
        log.contains(&format!("testing on {} with ***", survivor_host.ns)),
        "the secret reached the step, masked in the log: {log}"
    );
    assert!(!log.contains("s3cret-only-for-the-claimer"), "{log}");
    assert!(log.contains("passed"), "{log}");
    assert!(log.contains(&format!("steps run as uid {uid}")), "{log}");
    assert!(
        log.contains(&format!("lost: agent `{victim}` was silent past its lease")),
        "{log}"
    );

    // The dead agent's late report, under its own token and claim, is refused.
    let dead = agents.iter().find(|a| a.name == victim).unwrap();
    let job = test["id"].as_i64().unwrap();
    let late =
        json!({ "generation": attempts[0]["generation"], "status": "success", "reason": null });
    let (status, body) = server
        .post_as(
            &dead.token,
            &format!("/agents/{victim}/jobs/{job}/finish"),
            late,
        )
        .await;
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(body["error"]["code"], "stale_lease", "{body:#}");
    let (status, _) = server
        .post_as(
            &dead.token,
            &format!("/agents/{victim}/jobs/{job}/renew"),
            json!({ "generation": attempts[0]["generation"] }),
        )
        .await;
    assert_eq!(status, 409);
    let run = server.get(&format!("/runs/{}", run["id"])).await;
    assert_eq!(run["status"], "success", "the late report changed nothing");

    // A cancel reaches the step on its agent, which kills it.
    let slow = "service: shop\npipeline:\n  jobs:\n    test:\n      runs_on: { role: test }\n      steps:\n        - run: echo started; exec sleep 601\n";
    repo.commit("v2", &[("sluice.yaml", slow)]);
    let running = wait_log_line(&server, "v2", "started").await;
    let (status, body) = server
        .post(&format!("/runs/{}/cancel", running["id"]), json!({}))
        .await;
    assert!(status < 300, "{body:#}");
    let run = server.wait_run("v2", |r| r["title"] == "v2").await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_eq!(run["jobs"][0]["steps"][0]["status"], "cancelled", "{run:#}");
    assert!(
        !sleeping("sleep 601"),
        "the step's process was killed on its agent"
    );

    // A job's timeout holds on its agent, and ends it as a failure.
    let slow = "service: shop\npipeline:\n  jobs:\n    test:\n      runs_on: { role: test }\n      timeout: 1s\n      steps:\n        - run: exec sleep 602\n";
    repo.commit("v3", &[("sluice.yaml", slow)]);
    let run = server.wait_run("v3", |r| r["title"] == "v3").await;
    assert_eq!(run["status"], "failure", "{run:#}");
    let reason = run["jobs"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("timed out after 1s"), "{run:#}");
    assert!(!sleeping("sleep 602"));

    // SIGTERM drains an agent: the job under way finishes, then it exits.
    let slow = "service: shop\npipeline:\n  jobs:\n    test:\n      runs_on: { role: test }\n      steps:\n        - run: echo begun; sleep 1; echo finished\n";
    repo.commit("v4", &[("sluice.yaml", slow)]);
    wait_log_line(&server, "v4", "begun").await;
    let draining = agents
        .iter_mut()
        .find(|a| a.name.starts_with("tester-") && a.name != victim)
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(draining.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let run = server.wait_run("v4", |r| r["title"] == "v4").await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert!(server.logs(&run).await.iter().any(|l| l == "finished"));
    let exited = crate::support::exited(&mut draining.child, "the agent").await;
    assert!(
        exited.success(),
        "the agent exits cleanly once drained: {exited}"
    );
}

/// Whether a process with this command line runs.
fn sleeping(command: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == command)
            .unwrap_or(false)
    })
}

/// The run titled `title` once its log has a line containing `text`.
/// `sluice serve --jobs-on agents` runs no job on its own host: one without
/// `runs_on:` waits for an agent, any agent, and passes there.
#[tokio::test]
async fn with_jobs_on_agents_a_job_without_runs_on_waits_for_any_agent() {
    let dir = tempdir();
    let server = Server::start_on(
        "127.0.0.1:0",
        &dir.path().join("data"),
        None,
        &["--jobs-on", "agents"],
    );
    let repo = GitRepo::new(dir.path(), "shop");
    let spec = "service: shop\npipeline:\n  jobs:\n    hello:\n      steps:\n        - run: echo \"hello from $PWD\"\n";
    repo.commit("v0", &[("sluice.yaml", spec)]);
    server.add_repo(&repo);
    // With no agent, the job is offered and waits: it is not run here.
    let waiting = server
        .wait_for("/runs", "the run waiting for an agent", |r| {
            r["title"] == "v0" && r["status"] == "running"
        })
        .await;
    let detail = server.get(&format!("/runs/{}", waiting["id"])).await;
    let hello = &detail["jobs"][0];
    assert!(
        hello["attempts"].as_array().is_none_or(|a| a.is_empty()),
        "{detail:#}"
    );
    assert!(
        !server
            .logs(&waiting)
            .await
            .iter()
            .any(|l| l.contains("hello from")),
        "a step ran on the server's host"
    );
    let token = server.token_for("anywhere", "agent", &[]).await;
    let agent_data = dir.path().join("agent");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = std::process::Command::new(crate::support::SLUICE)
        .args(["agent", "--server", &server.url, "--token", &token])
        .args(["--name", "anywhere", "--isolation", "none", "--data-dir"])
        .arg(&agent_data)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let run = server.wait_run("v0", |r| r["title"] == "v0").await;
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(run["status"], "success", "{run:#}");
    let attempts = run["jobs"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{run:#}");
    assert_eq!(attempts[0]["agent"], "anywhere");
    let logs = server.logs(&run).await.join("\n");
    assert!(
        logs.contains(&format!("hello from {}", agent_data.display())),
        "the step ran in the agent's work tree: {logs}"
    );
}

async fn wait_log_line(server: &Server, title: &str, text: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = server.get("/runs").await;
        if let Some(run) = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["title"] == title)
            && server.logs(run).await.iter().any(|l| l.contains(text))
        {
            return run.clone();
        }
        assert!(Instant::now() < deadline, "no `{text}` in {title}'s log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One file of a stored artifact.
async fn artifact_file(server: &Server, sha: &str, path: &str) -> String {
    let bytes = server
        .request(
            reqwest::Method::GET,
            &format!("/artifacts/{sha}"),
            Some(&server.token),
        )
        .await
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), sha);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(path) {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            return text;
        }
    }
    panic!("no {path} in the artifact");
}

/// An agent's token does an agent's work, as that agent only; no other token does it.
async fn refusals(server: &Server, agents: &[Agent]) {
    let builder = &agents[0];
    let (status, body) = server
        .post_as(&builder.token, "/agents/tester-1/claim", json!({}))
        .await;
    assert_eq!(status, 403, "another agent's name: {body:#}");
    let response = server
        .request(reqwest::Method::GET, "/runs", Some(&builder.token))
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        403,
        "an agent token cannot read"
    );
    let developer = server.token_for("dev", "developer", &[]).await;
    let (status, body) = server
        .post_as(&developer, "/agents/builder/claim", json!({}))
        .await;
    assert_eq!(status, 403, "a person's token cannot claim: {body:#}");
    let (status, body) = server.post("/agents/builder/claim", json!({})).await;
    assert_eq!(status, 403, "nor an admin's: {body:#}");
}

/// Waits until `count` agents the test started are online (the server's
/// local agent, which runs no job, aside).
pub(crate) async fn wait_online(server: &Server, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = server.get("/agents").await;
        let online = agents
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["online"] == true && a["labels"]["sluice.local"].is_null())
            .count();
        if online == count {
            return;
        }
        assert!(Instant::now() < deadline, "agents: {agents:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first attempt at the `test` job that `pick` matches.
async fn wait_attempt(server: &Server, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = server.get("/runs").await;
        if let Some(run) = runs.as_array().unwrap().iter().find(|r| r["title"] == "v1") {
            let run = server.get(&format!("/runs/{}", run["id"])).await;
            let found = run["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| j["name"] == "test")
                .flat_map(|j| j["attempts"].as_array().cloned().unwrap_or_default())
                .find(|a| pick(a));
            if let Some(attempt) = found {
                return attempt;
            }
        }
        assert!(Instant::now() < deadline, "no such attempt: {runs:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a step wrote to `path`.
async fn wait_file(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
