//! Wrong answers a real application ran into: an A/A experiment rolled
//! back took A's instances with it; an environment short of instances stayed
//! so; a crash-looping instance made its deployment wait the whole
//! `ready_timeout`; `rollback` to the running release refused; a commit
//! amended away while its run ran became a release.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{GitRepo, Server, copy_fixture};

fn spec(strategy: &str, command: &str) -> String {
    format!(
        r#"service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: "true"
  artifact:
    paths: [app/]
run:
  command: {command}
  ready_timeout: 60s
  health: {{ path: /healthz, interval: 300ms, timeout: 300ms, healthy: 1, unhealthy: 2 }}
environments:
  prod:
    deploy: auto
    instances: 2
    listen: 127.0.0.1:0
    strategy: {strategy}
"#
    )
}

const SERVE: &str = "exec python3 app/server.py";

/// Requests sent until `stop`, with every answer that was not a 2xx.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let workers = (0..4)
            .map(|_| {
                let (url, stop, sent, failures) =
                    (url.clone(), stop.clone(), sent.clone(), failures.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {}
                            Ok(r) => failures.lock().unwrap().push(r.status().to_string()),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failures,
            workers,
        }
    }

    /// Stops the load; returns how many requests were sent and which failed.
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

/// A server whose prod runs the shop fixture's v1 (rolling, two instances).
async fn shop_on_v1() -> (tempfile::TempDir, Server, GitRepo, Value) {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", &spec("rolling", SERVE))]);
    server.add_repo(&repo);
    let prod = server.wait_env("shop", "prod", 1, 2).await;
    (dir, server, repo, prod)
}

fn instance_ids(status: &Value) -> Vec<String> {
    let mut ids: Vec<String> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn rolling_back_an_aa_experiment_leaves_a_serving_and_rollback_to_the_running_release_redeploys_it()
 {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    let ab = "{ ab: { steps: [50, 100], min_requests: 100000, min_duration: 1h, max_step: 1h } }";
    repo.commit("v1", &[("sluice.yaml", &spec(ab, SERVE))]);
    server.add_repo(&repo);
    let prod = server.wait_env("shop", "prod", 1, 2).await;
    let a_ids = instance_ids(&prod);
    let load = Load::start(format!("http://{}/", prod["listen"].as_str().unwrap()));

    // An A/A check: B is the release prod already runs.
    let (status, body) = server
        .post(
            "/experiments",
            json!({ "service": "shop", "env": "prod", "release": 1 }),
        )
        .await;
    assert_eq!(status, 202, "{body:#}");
    let x = server
        .wait_for("/experiments?service=shop", "the A/A experiment", |x| {
            x["release"] == 1 && x["status"] == "running"
        })
        .await;
    // B serves half the users for a while, then is aborted.
    let before = load.sent.load(Ordering::Relaxed);
    while load.sent.load(Ordering::Relaxed) < before + 200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = server
        .post(&format!("/experiments/{}/abort", x["id"]), json!({}))
        .await;
    assert!(status < 300, "{status} {body:#}");
    server
        .wait_for("/experiments?service=shop", "the abort", |x| {
            x["release"] == 1 && x["status"] == "aborted"
        })
        .await;
    let after = server.wait_env("shop", "prod", 1, 2).await;
    assert_eq!(instance_ids(&after), a_ids, "A's own instances serve on");

    // Rolling back to the release that runs starts it afresh.
    let out = server.cli(&["rollback", "shop", "prod", "--to", "v1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let redeployed = server.wait_env("shop", "prod", 1, 2).await;
    let new_ids = instance_ids(&redeployed);
    assert!(
        new_ids.iter().all(|id| !a_ids.contains(id)),
        "{new_ids:?} replaced {a_ids:?}"
    );

    let (sent, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert!(sent > 200, "only {sent} requests");
}

#[tokio::test]
async fn an_environment_short_of_instances_is_brought_back_by_itself_with_an_incident() {
    let dir = crate::support::tempdir();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    // The app cannot start while a dependency it needs is away (`hold`).
    let hold = dir.path().join("hold");
    let command = format!(
        "test ! -e {} || {{ echo the database is away; exit 1; }}; exec python3 app/server.py",
        hold.display()
    );
    repo.commit("v1", &[("sluice.yaml", &spec("rolling", &command))]);
    server.add_repo(&repo);
    server.wait_env("shop", "prod", 1, 2).await;

    // The server restarts while the dependency is away: prod cannot come back.
    std::fs::write(&hold, "").unwrap();
    server.stop();
    let server = Server::start(&data, None);
    server
        .wait_for("/deployments?service=shop", "the failed restart", |d| {
            d["cause"] == "reconcile" && d["status"] != "running"
        })
        .await;
    // The dependency is back: Sluice brings prod back without being asked.
    std::fs::remove_file(&hold).unwrap();
    server.wait_env("shop", "prod", 1, 2).await;
    let healed = server
        .wait_for("/deployments?service=shop", "the healing", |d| {
            d["cause"] == "heal" && d["status"] == "succeeded"
        })
        .await;
    assert!(
        healed["reason"]
            .as_str()
            .unwrap()
            .contains("of 2 instances of v1 ran"),
        "{healed:#}"
    );
    server
        .wait_for("/incidents?service=shop", "the incident", |i| {
            i["title"]
                .as_str()
                .unwrap()
                .contains("ran fewer instances than declared in prod")
        })
        .await;
    server
        .wait_for("/changelog?service=shop", "the change-log event", |e| {
            e["kind"] == "deployment.succeeded" && e["summary"].as_str().unwrap().contains("healed")
        })
        .await;
}

#[tokio::test]
async fn a_crash_looping_instance_fails_its_deployment_at_once_with_its_log() {
    let (_dir, server, repo, _) = shop_on_v1().await;

    // v2 exits at once, every time; its ready_timeout is a minute.
    let crashing = "echo KeyError DATABASE_URL is not set; exit 3";
    repo.commit("v2", &[("sluice.yaml", &spec("rolling", crashing))]);
    let failed = server
        .wait_for("/deployments?service=shop", "v2's deployment", |d| {
            d["release"] == 2 && d["status"] != "running"
        })
        .await;
    let reason = failed["reason"].as_str().unwrap();
    assert_eq!(failed["status"], "rolled_back", "{failed:#}");
    assert!(
        reason.contains("exited 3 times before it became healthy"),
        "{reason}"
    );
    assert!(
        reason.contains("KeyError DATABASE_URL is not set"),
        "{reason}"
    );
    assert!(
        !reason.contains("did not become healthy within"),
        "{reason}"
    );
    server.wait_env("shop", "prod", 1, 2).await;
}

#[tokio::test]
async fn a_commit_amended_away_while_its_run_ran_is_not_released() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    // Each run waits at a gate the test opens.
    let gate = dir.path().join("gate");
    let gated = spec("rolling", SERVE).replace(
        r#"- run: "true""#,
        &format!(
            "- run: while [ ! -e {} ]; do sleep 0.05; done",
            gate.display()
        ),
    );
    std::fs::write(&gate, "").unwrap();
    repo.commit("v1", &[("sluice.yaml", &gated)]);
    server.add_repo(&repo);
    server.wait_env("shop", "prod", 1, 2).await;

    std::fs::remove_file(&gate).unwrap();
    let typo = repo.commit("v2 with a typo", &[("app/VERSION", "2 typo\n")]);
    server
        .wait_for("/runs", "the run of the typo", |r| {
            r["sha"] == typo.as_str() && r["status"] == "running"
        })
        .await;
    repo.write("app/VERSION", "2\n");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "--amend", "-m", "v2"]);
    let amended = repo.git(&["rev-parse", "HEAD"]);
    std::fs::write(&gate, "").unwrap();
    let typo_run = server
        .wait_run("the typo's run", |r| {
            r["sha"] == typo.as_str() && r["status"] == "success"
        })
        .await;
    server
        .wait_run("the amended run", |r| {
            r["sha"] == amended.as_str() && r["status"] == "success"
        })
        .await;
    let v2 = server.wait_env("shop", "prod", 2, 2).await;
    let releases = server.get("/releases?service=shop").await;
    let shas: Vec<&str> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sha"].as_str().unwrap())
        .collect();
    assert!(shas.contains(&amended.as_str()), "{releases:#}");
    assert!(
        !shas.contains(&typo.as_str()),
        "the amended-away commit was released: {releases:#}"
    );
    assert_eq!(shas.len(), 2, "{releases:#} {v2:#}");
    server
        .wait_for("/changelog", "the skipped release", |e| {
            e["kind"] == "release.skipped" && e["subject"] == format!("run {}", typo_run["id"])
        })
        .await;
}

#[tokio::test]
async fn an_instance_gets_a_clean_environment_and_listens_on_host() {
    let (_dir, server, repo, prod) = shop_on_v1().await;
    let url = format!("http://{}/environ", prod["listen"].as_str().unwrap());
    let seen: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let keys: Vec<&str> = seen["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let given = [
        "PATH",
        "LANG",
        "HOME",
        "HOST",
        "PORT",
        "SLUICE_SERVICE",
        "SLUICE_ENV",
        "SLUICE_RELEASE",
        "SLUICE_INSTANCE",
        "SLUICE_CONFIG_DIR",
        "DATA_DIR",
        "SLUICE_HOME",
    ];
    // The shell that runs the command adds a few of its own.
    let shell = ["PWD", "SHLVL", "_", "OLDPWD"];
    let foreign: Vec<&&str> = keys
        .iter()
        .filter(|k| !given.contains(k) && !shell.contains(k))
        .collect();
    assert!(
        foreign.is_empty(),
        "the instance saw more than it was given: {foreign:?}"
    );
    assert_eq!(seen["values"]["HOST"], "127.0.0.1");
    let home = seen["values"]["HOME"].as_str().unwrap();
    assert!(
        home.contains("/releases/") || home.contains("/instances/"),
        "HOME is its working directory: {home}"
    );
    assert_ne!(
        seen["values"]["HOME"].as_str(),
        std::env::var("HOME").ok().as_deref()
    );
    let exposed = server.get("/changelog?service=shop&kind=instance.").await;
    assert_eq!(exposed.as_array().unwrap().len(), 0, "{exposed:#}");

    // An app that binds every interface anyway is told so.
    let anywhere = spec("rolling", "LISTEN_ANYWHERE=1 exec python3 app/server.py");
    repo.commit("v2 listens everywhere", &[("sluice.yaml", &anywhere)]);
    server.wait_env("shop", "prod", 2, 2).await;
    let warned = server
        .wait_for("/changelog?service=shop", "the warning", |e| {
            e["kind"] == "instance.exposed"
        })
        .await;
    let summary = warned["summary"].as_str().unwrap();
    assert!(
        summary.contains("0.0.0.0") && summary.contains("$HOST"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_newer_release_supersedes_a_deployment_still_waiting() {
    let (_dir, server, repo, _) = shop_on_v1().await;

    // v2 never passes its health check; its ready_timeout is a minute.
    repo.commit("v2 breaks health", &[("app/BROKEN", "")]);
    server
        .wait_for("/deployments?service=shop", "v2's deployment", |d| {
            d["release"] == 2 && d["status"] == "running"
        })
        .await;
    repo.git(&["rm", "-q", "app/BROKEN"]);
    repo.commit("v3 fixes it", &[]);
    let superseded = server
        .wait_for("/deployments?service=shop", "v2 giving way", |d| {
            d["release"] == 2 && d["status"] != "running"
        })
        .await;
    let reason = superseded["reason"].as_str().unwrap();
    assert!(reason.contains("superseded: v3 was asked for"), "{reason}");
    server.wait_env("shop", "prod", 3, 2).await;
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn as_root_a_data_directory_environments_cannot_reach_is_refused_at_start() {
    if !is_root() {
        eprintln!("skipped: only root runs instances as users of their own");
        return;
    }
    let dir = crate::support::tempdir();
    let closed = dir.path().join("home");
    std::fs::create_dir(&closed).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = std::process::Command::new(crate::support::SLUICE)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(closed.join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not reach the data directory")
            && stderr.contains("cannot enter")
            && stderr.contains("home (mode 700")
            && stderr.contains("--isolation none"),
        "{stderr}"
    );
    // The documented way out starts it.
    let mut child = std::process::Command::new(crate::support::SLUICE)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--isolation",
            "none",
            "--data-dir",
        ])
        .arg(closed.join("data"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    // Stopped as an operator would: its local agent stops with it.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    crate::support::stop_orphaned_local_agent(&closed.join("data"));
    assert!(!first.is_empty(), "it started with --isolation none");
}

#[tokio::test]
async fn as_root_a_program_the_environment_cannot_run_fails_the_deployment_saying_why() {
    if !is_root() {
        eprintln!("skipped: only root runs instances as users of their own");
        return;
    }
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    // An interpreter installed under root's home, as a virtualenv is.
    let venv = dir.path().join("root-home/venv/bin");
    std::fs::create_dir_all(&venv).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", venv.join("python3")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("root-home"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let command = format!("exec {}/python3 app/server.py", venv.display());
    repo.commit("v1", &[("sluice.yaml", &spec("rolling", &command))]);
    server.add_repo(&repo);
    let failed = server
        .wait_for("/deployments?service=shop", "the deployment", |d| {
            d["status"] != "running"
        })
        .await;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert!(
        reason.contains("which cannot run")
            && reason.contains("root-home (mode 700")
            && reason.contains("--isolation none"),
        "{reason}"
    );
}
