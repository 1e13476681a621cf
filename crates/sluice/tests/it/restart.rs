//! kill -9 of the server in the middle of a run: the next start marks the run
//! `error`, keeps the log lines stored before the kill, and kills the step the
//! old server left behind.

use std::time::{Duration, Instant};

use crate::support::{GitRepo, Server, each_database, process_alive};

#[tokio::test]
async fn a_run_interrupted_by_kill_9_ends_as_error_with_its_logs_and_no_leftovers() {
    each_database(|dir, db| async move {
        let data = dir.join("data");
        let mut server = Server::start(&data, db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        let pidfile = dir.join("step.pid");
        crate::support::writable_by_steps(&pidfile);
        let spec = format!(
            "service: shop\npipeline:\n  jobs:\n    long:\n      steps:\n        - run: echo $$ > {}; echo before the crash; sleep 300\n",
            pidfile.display()
        );
        let sha = repo.commit("long job", &[("sluice.yaml", &spec)]);
        server.add_repo(&repo);
        // Wait until the line is stored, not only printed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let run_id = loop {
            let runs = server.get("/runs").await;
            if let Some(run) = runs.as_array().unwrap().iter().find(|r| r["sha"] == sha.as_str() && r["status"] == "running") {
                let logs = server.logs(run).await;
                if logs.iter().any(|l| l == "before the crash") {
                    break run["id"].as_i64().unwrap();
                }
            }
            assert!(Instant::now() < deadline, "the step never started: {runs:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let step: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(process_alive(step));
        server.kill_hard();
        assert!(process_alive(step), "kill -9 of the server leaves its step running");

        let restarted = Server::start(&data, db.as_deref());
        let run = restarted.wait_run("the interrupted run", |r| r["id"] == run_id).await;
        assert_eq!(run["status"], "error");
        assert!(run["reason"].as_str().unwrap().contains("interrupted"), "{run:#}");
        assert!(restarted.logs(&run).await.contains(&"before the crash".to_string()));
        assert!(!process_alive(step), "the new server killed the step the old one left");
        // The new server still runs new changes.
        let next = repo.commit("quick", &[("sluice.yaml", "service: shop\npipeline:\n  jobs:\n    quick:\n      steps:\n        - run: echo fine\n")]);
        let run = restarted.wait_run("the next commit", |r| r["sha"] == next.as_str()).await;
        assert_eq!(run["status"], "success");
    })
    .await;
}

/// What the tests of the server's own instances start it with: the
/// environments in its process, not on its local agent.
const IN_PROCESS: &[&str] = &["--local-agent", "off"];

/// Pids of the live processes that are instances of the server with this
/// data directory, its local agent's included (whose `SLUICE_HOME` is its
/// own directory under `agents/`).
pub fn instance_processes(data: &std::path::Path) -> Vec<(i32, String)> {
    let home = format!("SLUICE_HOME={}", data.canonicalize().unwrap().display());
    let agents = format!("{home}/agents/");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let ours = |v: &&[u8]| *v == home.as_bytes() || v.starts_with(agents.as_bytes());
        if vars.iter().any(ours) && process_alive(pid) {
            let instance = vars
                .iter()
                .find_map(|v| v.strip_prefix(b"SLUICE_INSTANCE="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            found.push((pid, instance));
        }
    }
    found
}

#[tokio::test]
async fn a_kill_9_during_a_deployment_is_reconciled_with_nothing_orphaned_or_doubled() {
    each_database(|dir, db| async move {
        let data = dir.join("data");
        let mut server = Server::start_with(&data, db.as_deref(), IN_PROCESS);
        let repo = GitRepo::new(&dir, "shop");
        crate::support::copy_fixture(&repo, "shop");
        let spec = |delay: &str| {
            format!(
                "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: 'true'\n  artifact:\n    paths: [app/]\nrun:\n  command: exec python3 app/server.py\n  ready_timeout: 20s\n  health: {{ path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }}\nenvironments:\n  dev:\n    deploy: auto\n    instances: 2\n    listen: 127.0.0.1:0\n    config: {{ STARTUP_DELAY: '{delay}' }}\n"
            )
        };
        repo.commit("v1", &[("sluice.yaml", &spec("0"))]);
        server.add_repo(&repo);
        server.wait_env("shop", "dev", 1, 2).await;
        let before = instance_processes(&data);
        assert_eq!(before.len(), 2, "{before:?}");

        // v2 starts slowly: kill the server while its deployment is under way.
        repo.commit("v2 starts slowly", &[("sluice.yaml", &spec("3"))]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let running = server.get("/deployments?service=shop&env=dev").await;
            let started = running.as_array().unwrap().iter().any(|d| d["release"] == 2 && d["status"] == "running");
            if started && instance_processes(&data).len() > 2 {
                break;
            }
            assert!(Instant::now() < deadline, "v2's deployment never started: {running:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill_hard();
        let orphans = instance_processes(&data);
        assert!(orphans.len() >= 3, "the instances outlive the server: {orphans:?}");

        let restarted = Server::start_with(&data, db.as_deref(), IN_PROCESS);
        // The interrupted deployment is recorded as such, and then completes.
        let dev = restarted.wait_env("shop", "dev", 2, 2).await;
        let deployments = restarted.get("/deployments?service=shop&env=dev").await;
        assert!(
            deployments.as_array().unwrap().iter().any(|d| d["release"] == 2 && d["status"] == "failed" && d["reason"].as_str().unwrap().contains("interrupted")),
            "{deployments:#}"
        );
        let running = instance_processes(&data);
        for (pid, _) in &orphans {
            assert!(!running.iter().any(|(p, _)| p == pid), "process {pid} of the old server is still running: {running:?}");
        }
        let mut ids: Vec<String> = running.iter().map(|(_, id)| id.clone()).collect();
        ids.sort();
        let mut recorded: Vec<String> = dev["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
        recorded.sort();
        assert_eq!(ids, recorded, "what runs is what the store says runs, each once");
        assert_eq!(dev["drift"], serde_json::json!([]));
    })
    .await;
}

/// A restart keeps what matches: the instances that run their
/// environment's recorded release go on serving through a kill -9 of the
/// server, the next one adopts them (the same processes, nothing
/// restarted, no deployment), and supervises them as its own; the entry
/// point's sockets, kept meanwhile by `sluice keep-sockets`, refuse nothing.
#[tokio::test]
async fn instances_that_match_keep_running_through_a_kill_9() {
    each_database(|dir, db| async move {
        let data = dir.join("data");
        let mut server = Server::start_with(&data, db.as_deref(), IN_PROCESS);
        let repo = GitRepo::new(&dir, "shop");
        crate::support::copy_fixture(&repo, "shop");
        // A service that takes 2 s to start: started again, it would be down that long.
        let spec = "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: 'true'\n  artifact:\n    paths: [app/]\nrun:\n  command: exec python3 app/server.py\n  ready_timeout: 20s\n  health: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }\nenvironments:\n  dev:\n    deploy: auto\n    instances: 2\n    listen: 127.0.0.1:0\n    config: { STARTUP_DELAY: '2' }\n";
        repo.commit("v1", &[("sluice.yaml", spec)]);
        server.add_repo(&repo);
        let dev = server.wait_env("shop", "dev", 1, 2).await;
        let mut before = instance_processes(&data);
        before.sort();
        assert_eq!(before.len(), 2, "{before:?}");
        let deployments = server.get("/deployments?service=shop&env=dev").await;

        // One request after another, each on a connection of its own, through
        // the kill and the restart.
        let url = format!("http://{}/", dev["listen"].as_str().unwrap());
        let load = Load::start(url.clone());
        load.served(20).await;

        server.kill_hard();
        assert_eq!(instance_processes(&data).len(), 2, "the instances outlive the server");
        let restarted = Server::start_with(&data, db.as_deref(), IN_PROCESS);
        let kept = restarted.wait_env("shop", "dev", 1, 2).await;
        load.served(20).await;
        let failed = load.finish("the kill -9 and restart").await;
        // The entry point's sockets were kept: a connection made while no
        // server ran waited for the next one instead of being refused. Only
        // a request the killed server was answering can fail.
        assert!(failed.len() <= 1, "{failed:?}");
        assert_eq!(kept["listen"], dev["listen"], "the same address");
        let mut after = instance_processes(&data);
        after.sort();
        assert_eq!(before, after, "the same processes serve, none started again");
        let ids = |env: &serde_json::Value| {
            let mut ids: Vec<String> = env["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&dev), ids(&kept));
        assert_eq!(
            restarted.get("/deployments?service=shop&env=dev").await,
            deployments,
            "no deployment was needed"
        );
        for _ in 0..20 {
            let answer = reqwest::get(&url).await.unwrap();
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.headers()["x-sluice-release"], "v1");
        }
        let changes = restarted.get("/changelog?kind=instances.kept").await;
        assert!(changes.to_string().contains("kept 2 instance(s) of v1"), "{changes:#}");

        // Adopted, an instance is supervised as before: killed, it is started again.
        let (pid, id) = after[0].clone();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = instance_processes(&data);
            if now.len() == 2 && now.iter().any(|(p, i)| *i == id && *p != pid) {
                break;
            }
            assert!(Instant::now() < deadline, "the adopted instance was not restarted: {now:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// `sluice serve --local-agent`: the environments without `hosts:` run on
/// an agent process of the server's, which serves their entry points too.
/// A kill -9 of the server fails no request (the killed server was
/// answering none), and the next server keeps the agent and its instances;
/// a clean stop stops them all.
#[tokio::test]
async fn with_a_local_agent_a_kill_9_of_the_server_fails_no_request() {
    let dir = crate::support::tempdir();
    let data = dir.path().join("data");
    let mut server = Server::start_with(&data, None, &["--local-agent", "on"]);
    let repo = GitRepo::new(dir.path(), "shop");
    crate::support::copy_fixture(&repo, "shop");
    // A service that takes 2 s to start: started again, it would be down that long.
    let spec = "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: 'true'\n  artifact:\n    paths: [app/]\nrun:\n  command: exec python3 app/server.py\n  ready_timeout: 20s\n  health: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }\nenvironments:\n  dev:\n    deploy: auto\n    instances: 2\n    listen: 127.0.0.1:0\n    config: { STARTUP_DELAY: '2' }\n";
    repo.commit("v1", &[("sluice.yaml", spec)]);
    server.add_repo(&repo);
    let dev = server.wait_env("shop", "dev", 1, 2).await;

    // The instances are the local agent's, and so is the only entry point.
    let agents = server.get("/agents").await;
    let name = agents[0]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("local-"), "{agents:#}");
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents:#}");
    for instance in dev["instances"].as_array().unwrap() {
        assert_eq!(instance["host"], name.as_str(), "{dev:#}");
    }
    assert_eq!(
        dev["host_entry_points"][0]["address"], dev["listen"],
        "{dev:#}"
    );
    let home = data.join("agents").join(&name).join("host");
    let before = sorted_processes(&home);
    assert_eq!(before.len(), 2, "{before:?}");
    let agent_pid = local_agent_pid(&data);
    for (pid, _) in &before {
        assert_eq!(
            parent_of(*pid),
            agent_pid,
            "an instance is the agent's child"
        );
    }

    let url = format!("http://{}/", dev["listen"].as_str().unwrap());
    let load = Load::start(url.clone());
    load.served(20).await;
    let address = server.url.trim_start_matches("http://").to_string();
    server.kill_hard();
    // Served while no server runs at all.
    load.served(50).await;
    let restarted = Server::start_on(&address, &data, None, &["--local-agent", "on"]);
    let kept = restarted.wait_env("shop", "dev", 1, 2).await;
    load.served(20).await;
    let failed = load.finish("the kill -9 and restart").await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(kept["listen"], dev["listen"], "the same address");
    assert_eq!(
        before,
        sorted_processes(&home),
        "the same processes serve, none started again"
    );
    assert_eq!(local_agent_pid(&data), agent_pid, "the same agent");
    let changes = restarted.get("/changelog?kind=instances.lost").await;
    assert_eq!(
        changes.as_array().unwrap().len(),
        0,
        "nothing was lost: {changes:#}"
    );

    // The server comes back at another address: its agent hands its host
    // over to one that reaches it there, and nothing starts again.
    let mut restarted = restarted;
    restarted.kill_hard();
    let load = Load::start(url.clone());
    let mut moved = Server::start_with(&data, None, &["--local-agent", "on"]);
    assert_ne!(moved.url, restarted.url);
    let kept = moved.wait_env("shop", "dev", 1, 2).await;
    assert_ne!(local_agent_pid(&data), agent_pid, "a new agent");
    assert!(
        !process_alive(agent_pid),
        "the old agent handed over and left"
    );
    let agent_pid = local_agent_pid(&data);
    load.served(50).await;
    let failed = load.finish("the hand-over to a new local agent").await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(kept["listen"], dev["listen"], "the same address");
    assert_eq!(
        before,
        sorted_processes(&home),
        "the same processes serve, none started again"
    );

    // A clean stop of the server stops its agent, and the agent its instances.
    moved.stop();
    assert!(
        !process_alive(agent_pid),
        "the local agent stopped with the server"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !instance_processes(&home).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the instances outlived the agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Started again, the server starts a new agent, and the agent the
    // instances: the entry point (at a new port: `listen` asks for any)
    // answers once they are ready.
    let again = Server::start_with(&data, None, &["--local-agent", "on"]);
    let dev = again.wait_env("shop", "dev", 1, 2).await;
    assert!(process_alive(local_agent_pid(&data)), "a new local agent");
    let load = Load::start(format!("http://{}/", dev["listen"].as_str().unwrap()));
    load.served(20).await;
    load.finish("a start after a clean stop").await;
}

/// The instance processes under `home`, in order.
pub(crate) fn sorted_processes(home: &std::path::Path) -> Vec<(i32, String)> {
    let mut processes = instance_processes(home);
    processes.sort();
    processes
}

/// The process id of the local agent of the server with data directory `data`.
fn local_agent_pid(data: &std::path::Path) -> i32 {
    let pid = std::fs::read_to_string(data.join("local-agent/pid")).unwrap();
    pid.trim().parse().unwrap()
}

/// The parent of process `pid`.
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// An upgrade's hand-over (SIGUSR2): the server finishes what its entry
/// point is answering and leaves, the instances and the entry point's
/// sockets stay, and the next server (the upgraded binary) takes them over:
/// nothing is started again, and no request fails.
#[tokio::test]
async fn a_hand_over_restarts_nothing_and_answers_what_waits() {
    let dir = crate::support::tempdir();
    let data = dir.path().join("data");
    let mut server = Server::start_with(&data, None, IN_PROCESS);
    let repo = GitRepo::new(dir.path(), "shop");
    crate::support::copy_fixture(&repo, "shop");
    let spec = "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: 'true'\n  artifact:\n    paths: [app/]\nrun:\n  command: exec python3 app/server.py\n  health: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }\nenvironments:\n  dev:\n    deploy: auto\n    instances: 2\n    listen: 127.0.0.1:0\n";
    repo.commit("v1", &[("sluice.yaml", spec)]);
    server.add_repo(&repo);
    let dev = server.wait_env("shop", "dev", 1, 2).await;
    let mut before = instance_processes(&data);
    before.sort();
    let url = format!("http://{}/", dev["listen"].as_str().unwrap());
    let load = Load::start(url);
    load.served(20).await;

    let pid = nix::unistd::Pid::from_raw(server.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2).unwrap();
    assert_eq!(server.wait_exit().await, Some(0));
    let restarted = Server::start_with(&data, None, IN_PROCESS);
    restarted.wait_env("shop", "dev", 1, 2).await;
    load.served(20).await;
    let failed = load.finish("the hand-over").await;
    // Every request is answered: by the old server (its drain answers even
    // a connection accepted in the instant before it stopped) or by the new
    // one (connections wait in the kept sockets meanwhile).
    assert!(failed.is_empty(), "{failed:?}");
    let mut after = instance_processes(&data);
    after.sort();
    assert_eq!(
        before, after,
        "the same processes serve, none started again"
    );
}

/// One request after another to `url`, each on a connection of its own,
/// until [`Load::finish`].
pub(crate) struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// How many were answered (200) so far.
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// How many were answered, the failures, the slowest.
    task: tokio::task::JoinHandle<(usize, Vec<String>, Duration)>,
}

impl Load {
    pub(crate) fn start(url: String) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stopping, counting) = (stop.clone(), answered.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let (mut ok, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = Instant::now();
                match client.get(&url).send().await {
                    Ok(answer) if answer.status() == 200 => {
                        ok += 1;
                        counting.store(ok, std::sync::atomic::Ordering::SeqCst);
                    }
                    // With the release that answered, when one did.
                    Ok(answer) => failed.push(format!(
                        "{} {}",
                        answer.status().as_u16(),
                        answer
                            .headers()
                            .get("x-sluice-release")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                    )),
                    Err(e) => failed.push(format!("{e:?}")),
                }
                slowest = slowest.max(sent.elapsed());
            }
            (ok, failed, slowest)
        });
        Load {
            stop,
            answered,
            task,
        }
    }

    /// Waits until `more` requests were answered from now: the load runs
    /// through what the test does next (or, after it, goes on again).
    pub(crate) async fn served(&self, more: usize) {
        let count = || self.answered.load(std::sync::atomic::Ordering::SeqCst);
        let (from, deadline) = (count(), Instant::now() + Duration::from_secs(60));
        while count() < from + more {
            assert!(
                Instant::now() < deadline,
                "the load got {} answers in 60 s",
                count() - from
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops it, says how it went `through` what the test did, and gives
    /// the failures.
    pub(crate) async fn finish(self, through: &str) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (ok, failed, slowest) = self.task.await.unwrap();
        eprintln!(
            "through {through}: {ok} answered, {} failed, the slowest in {slowest:?}",
            failed.len()
        );
        failed
    }
}

/// An upgrade in the middle of an experiment: A and B go on as they are, at
/// the same split, and no request fails.
#[tokio::test]
async fn a_hand_over_in_the_middle_of_an_experiment_keeps_a_and_b() {
    let dir = crate::support::tempdir();
    let (mut server, data, id, url) = in_an_experiment(dir.path()).await;
    let id = serde_json::Value::from(id);
    let running = AandB::under_load(&data, &url).await;

    let pid = nix::unistd::Pid::from_raw(server.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2).unwrap();
    assert_eq!(server.wait_exit().await, Some(0));
    let restarted = Server::start_with(&data, None, IN_PROCESS);
    let resumed = wait_experiment(&restarted, |x| {
        x["decisions"].to_string().contains("the server restarted")
    })
    .await;
    assert_eq!((&resumed["id"], &resumed["weight_bp"]), (&id, &2000.into()));
    running.kept("the hand-over in the experiment", 0).await;
}

#[tokio::test]
async fn an_experiment_goes_on_after_a_kill_9() {
    let dir = crate::support::tempdir();
    let (mut server, data, id, url) = in_an_experiment(dir.path()).await;
    let running = AandB::under_load(&data, &url).await;
    assert_eq!(running.before.len(), 2, "A and B: {:?}", running.before);

    server.kill_hard();
    // A pause sent as the server died (in the store, not yet taken) is
    // not lost: the experiment takes it when it goes on.
    {
        let store = sluice_store::Store::connect(&sluice_store::Store::sqlite_url(&data))
            .await
            .unwrap();
        store
            .add_experiment_command(id, sluice_store::ExperimentCommand::Pause, "ana")
            .await
            .unwrap();
        store.close().await;
    }
    let restarted = Server::start_with(&data, None, IN_PROCESS);
    let paused = wait_experiment(&restarted, |x| x["status"] == "paused").await;
    assert!(
        paused["decisions"].to_string().contains("paused by ana"),
        "{paused:#}"
    );
    // A and B kept running through it, neither started again, and B's user
    // stayed on B: only a request the killed server was answering can fail.
    running.kept("the kill -9 in the experiment", 1).await;
    let changes = restarted.get("/changelog?kind=instances.kept").await;
    assert!(
        changes
            .to_string()
            .contains("and 1 of the experiment's B (v2)"),
        "{changes:#}"
    );
    let out = restarted.cli(&["ab", "resume", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The experiment is taken up again at its step, B beside A.
    let resumed = wait_experiment(&restarted, |x| {
        x["status"] == "running" && x["decisions"].to_string().contains("resumed by")
    })
    .await;
    assert_eq!(
        (resumed["id"].as_i64(), resumed["weight_bp"].as_i64()),
        (Some(id), Some(2000))
    );
    let prod = wait_both_variants(&restarted).await;
    let url = format!("http://{}/", prod["listen"].as_str().unwrap());
    assert_eq!(
        releases_answering(&url).await,
        ["v1", "v2"],
        "both variants answer"
    );
    let deployments = restarted.get("/deployments?service=shop&env=prod").await;
    let ab = deployments
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["release"] == 2)
        .unwrap();
    assert_eq!(
        ab["status"], "running",
        "the experiment's deployment stays open: {ab:#}"
    );

    // It ends as it would have: promoted by a person, its promotion done.
    promote_by_hand(&restarted, id).await;
}

/// A config experiment: B runs the release A runs, with a config value
/// changed. A restart tells them apart by what each was started as.
#[tokio::test]
async fn a_config_experiment_on_the_running_release_goes_on_after_a_kill_9() {
    let dir = crate::support::tempdir();
    let (mut server, data, _repo) = serving_v1(dir.path()).await;
    let out = server.cli(&[
        "ab",
        "start",
        "shop",
        "prod",
        "--release",
        "1",
        "--set",
        "GREETING=hi",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let experiment = wait_experiment(&server, |x| x["status"] == "running").await;
    let prod = wait_prod_healthy(&server, |releases| releases == [1, 1]).await;
    let url = format!("http://{}/", prod["listen"].as_str().unwrap());
    let running = AandB::under_load(&data, &url).await;
    assert_eq!(running.before.len(), 2, "A and B: {:?}", running.before);

    server.kill_hard();
    let restarted = Server::start_with(&data, None, IN_PROCESS);
    let resumed = wait_experiment(&restarted, |x| {
        x["decisions"].to_string().contains("the server restarted")
    })
    .await;
    assert_eq!(
        (&resumed["id"], &resumed["status"], &resumed["weight_bp"]),
        (&experiment["id"], &"running".into(), &2000.into())
    );
    running
        .kept("the kill -9 in the config experiment", 1)
        .await;
    let changes = restarted.get("/changelog?kind=instances.kept").await;
    assert!(
        changes
            .to_string()
            .contains("kept 1 instance(s) of v1 running through the server's restart, and 1 of the experiment's B (v1)"),
        "{changes:#}"
    );
}

/// An experiment's A and B as a restart finds them: their processes, a
/// user the split gives B, and a load through the entry point.
struct AandB {
    data: std::path::PathBuf,
    url: String,
    before: Vec<(i32, String)>,
    b_user: String,
    load: Load,
}

impl AandB {
    async fn under_load(data: &std::path::Path, url: &str) -> AandB {
        let mut before = instance_processes(data);
        before.sort();
        let b_user = user_of_variant(url, "b").await;
        let load = Load::start(url.to_string());
        load.served(20).await;
        AandB {
            data: data.to_path_buf(),
            url: url.to_string(),
            before,
            b_user,
            load,
        }
    }

    /// After the restart (`through`): at most `failures` requests failed,
    /// the same processes serve A and B, and B's user is still on B.
    async fn kept(self, through: &str, failures: usize) {
        self.load.served(20).await;
        let failed = self.load.finish(through).await;
        assert!(failed.len() <= failures, "{failed:?}");
        let mut after = instance_processes(&self.data);
        after.sort();
        assert_eq!(self.before, after, "the same processes serve A and B");
        assert_eq!(variant_for(&self.url, &self.b_user).await, "b");
    }
}

/// A server in `dir` whose shop runs v1 in prod (one instance) and an
/// experiment of v2 at 20 %: the server, its data directory, the
/// experiment's id and prod's entry point.
async fn in_an_experiment(dir: &std::path::Path) -> (Server, std::path::PathBuf, i64, String) {
    let (server, data, repo) = serving_v1(dir).await;
    repo.commit("v2", &[("app/VERSION", "2\n")]);
    let experiment = wait_experiment(&server, |x| x["status"] == "running").await;
    let prod = wait_both_variants(&server).await;
    let url = format!("http://{}/", prod["listen"].as_str().unwrap());
    (server, data, experiment["id"].as_i64().unwrap(), url)
}

/// A server in `dir` whose shop runs v1 in prod (one instance), with an A/B
/// strategy that stays at its first step (20 %): the server, its data
/// directory and the shop's repository.
async fn serving_v1(dir: &std::path::Path) -> (Server, std::path::PathBuf, GitRepo) {
    let data = dir.join("data");
    let server = Server::start_with(&data, None, IN_PROCESS);
    let repo = GitRepo::new(dir, "shop");
    crate::support::copy_fixture(&repo, "shop");
    let spec = "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: 'true'\n  artifact:\n    paths: [app/]\nrun:\n  command: exec python3 app/server.py\n  health: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }\nenvironments:\n  prod:\n    deploy: auto\n    instances: 1\n    listen: 127.0.0.1:0\n    strategy:\n      ab: { steps: [20, 100], min_requests: 1000000, max_step: 10m, metrics: [error_rate] }\n";
    repo.commit("v1", &[("sluice.yaml", spec)]);
    server.add_repo(&repo);
    server.wait_env("shop", "prod", 1, 1).await;
    (server, data, repo)
}

/// A user's sticky cookie (`sluice_key=…`) that the split gives `variant`.
async fn user_of_variant(url: &str, variant: &str) -> String {
    for _ in 0..500 {
        let answer = reqwest::get(url).await.unwrap();
        let cookie = answer.headers()["set-cookie"].to_str().unwrap();
        if answer.headers()["x-sluice-variant"] == variant {
            return cookie.split(';').next().unwrap().to_string();
        }
    }
    panic!("no user got {variant} in 500");
}

/// The variant that answers the user whose cookie is `user`.
async fn variant_for(url: &str, user: &str) -> String {
    let answer = reqwest::Client::new()
        .get(url)
        .header("cookie", user)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.headers()["x-sluice-variant"]
        .to_str()
        .unwrap()
        .to_string()
}

/// The releases that answer 60 requests at `url`, each once.
pub(crate) async fn releases_answering(url: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let answer = reqwest::get(url).await.unwrap();
        assert_eq!(answer.status(), 200);
        seen.insert(
            answer.headers()["x-sluice-release"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    seen.into_iter().collect()
}

/// Promotes experiment `id` as a person would, and waits for prod to run v2
/// with its promotion done.
pub(crate) async fn promote_by_hand(server: &Server, id: i64) {
    let out = server.cli(&["ab", "promote", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_env("shop", "prod", 2, 1).await;
    // The promotion is settled once the experiment's end is recorded, a
    // moment after prod runs v2.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let promotions = server.get("/promotions?service=shop&all=true").await;
        let done = promotions
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["release"] == 2 && p["status"] == "done");
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "{promotions:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn wait_experiment(
    server: &Server,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = server.get("/experiments?service=shop").await;
        if let Some(x) = all.as_array().unwrap().iter().find(|x| pick(x)) {
            return x.clone();
        }
        assert!(Instant::now() < deadline, "no such experiment: {all:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn wait_both_variants(server: &Server) -> serde_json::Value {
    wait_prod_healthy(server, |releases| {
        releases.contains(&1) && releases.contains(&2)
    })
    .await
}

/// Prod's status once the releases of its healthy instances are `wanted`.
async fn wait_prod_healthy(server: &Server, wanted: impl Fn(&[i64]) -> bool) -> serde_json::Value {
    wait_prod(server, "A and B running again", |prod| {
        let healthy: Vec<i64> = prod["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["healthy"] == true)
            .filter_map(|i| i["release"].as_i64())
            .collect();
        wanted(&healthy)
    })
    .await
}

/// The shop's prod status once `done` says it is as awaited (`what`).
pub(crate) async fn wait_prod(
    server: &Server,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = server.get("/status?service=shop").await;
        let prod = status
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["environment"] == "prod")
            .cloned();
        if let Some(prod) = prod.filter(|p| done(p)) {
            return prod;
        }
        assert!(Instant::now() < deadline, "never {what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
