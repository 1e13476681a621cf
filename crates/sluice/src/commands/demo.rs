//! `sluice demo`: the real system on embedded defaults, telling a story. It
//! writes a sample shop's repository, starts the server (API and dashboard)
//! in this process, and drives changes through it with the API the CLI uses:
//! v1 to prod through approvals, a faster v2 as an A/B experiment that is
//! promoted, a v3 that breaks guest checkout and is rolled back, its incident,
//! postmortem and rule, a v4 stopped by that rule, and a change under review.
//! The team's chat hears of what needs it (a local receiver, or `--notify-url`).

mod inbox;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};
use sluice_server::{ServeOptions, Server};

use crate::cli::{Demo, Global, Speed};
use crate::client::Client;
use crate::say;

/// The sample service, as files to write into the repository.
const SHOP: &[(&str, &str)] = &[
    (
        "app/server.py",
        include_str!("../../demo/shop/app/server.py"),
    ),
    ("app/shop.py", include_str!("../../demo/shop/app/shop.py")),
    (
        "app/settings.py",
        include_str!("../../demo/shop/app/settings.py"),
    ),
    (
        "tests/test_shop.py",
        include_str!("../../demo/shop/tests/test_shop.py"),
    ),
    (
        "tests/integration.py",
        include_str!("../../demo/shop/tests/integration.py"),
    ),
    (
        "config/app.toml.tmpl",
        include_str!("../../demo/shop/config/app.toml.tmpl"),
    ),
    (
        "fixtures/products.json",
        include_str!("../../demo/shop/fixtures/products.json"),
    ),
    (".gitignore", "__pycache__/\n"),
];
const SPEC: &str = include_str!("../../demo/shop/sluice.yaml");

/// What v5 makes prod's experiments: a test of orders at a 50% split.
const TEST_STRATEGY: &str = "max_step: 2m, mode: test, goals: [{ name: order, request: \"POST /order\", status: 2xx }], test: { split: 50, min_effect: 5%, max_duration: 10m } }";

/// How long each stage may take before the demo says it did not happen.
const STAGE_LIMIT: Duration = Duration::from_secs(240);

pub async fn demo(options: Demo) -> Result<ExitCode> {
    let (root, _temporary) = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
            (dir.canonicalize()?, None)
        }
        None => {
            let dir = tempfile::Builder::new().prefix("sluice-demo-").tempdir()?;
            (dir.path().to_path_buf(), Some(dir))
        }
    };
    let repo = root.join("shop");
    if repo.exists() {
        bail!(
            "{} exists already: the demo writes a new repository; give another --dir or remove it",
            repo.display()
        );
    }
    let server = Server::start(ServeOptions {
        data_dir: root.join("data"),
        listen: options.listen,
        database: None,
        poll_interval: Duration::from_secs(10),
        parallelism: None,
        keep_workspaces: false,
        isolation: Default::default(),
        log_cap: sluice_ci::logs::DEFAULT_CAP,
        public_url: None,
        agent_lease: sluice_ci::DEFAULT_AGENT_LEASE,
        jobs_on_agents: false,
        controller_lease: std::time::Duration::from_secs(10),
        advertise: None,
        socket_keeper: std::env::current_exe().ok(),
        local_agent: None,
    })
    .await
    .context("the demo's server did not start (is the port taken? try --listen 127.0.0.1:0)")?;
    let url = format!("http://{}", server.addr);
    let admin = server
        .initial_admin_token
        .clone()
        .context("the data directory has a server already; give the demo a new --dir")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    say!(
        "Sluice demo: the real server, on SQLite in {}",
        root.display()
    );
    say!("  dashboard: {url}/  (sign in with the token below)");
    say!("  token:     {admin}");
    say!("  CLI:       export SLUICE_SERVER={url} SLUICE_TOKEN={admin}");
    say!();
    let story = Story::new(&url, &admin, &repo, options.speed, &root).await?;
    let inbox = story
        .team_chat(options.notify_url.as_deref(), &options.notify_kind)
        .await?;
    // Ctrl-C or SIGTERM ends the demo as it ends a server: instances stopped.
    let told = tokio::select! {
        told = story.tell() => told,
        _ = super::serve::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    story.traffic.store(false, Ordering::Relaxed);
    match &told {
        Ok(()) => {
            story.told_the_team(inbox.as_ref()).await?;
            say!();
            say!(
                "The story is told. Everything above is in the dashboard at {url}/ and in the change log:"
            );
            say!("  sluice changes --server {url} --token {admin}");
        }
        Err(e) => say!("\nThe demo stopped: {e:#}"),
    }
    if !options.exit && told.is_ok() {
        say!("The server stays up for you to explore; Ctrl-C ends it.");
        super::serve::shutdown_signal().await;
    }
    let _ = stop.send(());
    let _ = serving.await;
    Ok(if told.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct Story {
    admin: Client,
    /// A second person, who approves what the first asks for.
    sam: Client,
    repo: PathBuf,
    speed: Speed,
    started: Instant,
    traffic: Arc<AtomicBool>,
}

impl Story {
    async fn new(url: &str, admin: &str, repo: &Path, speed: Speed, root: &Path) -> Result<Story> {
        let client = |token: &str| {
            Client::new(&Global {
                server: url.to_string(),
                token: Some(token.to_string()),
                data_dir: root.join("data"),
            })
        };
        let admin = client(admin);
        let made = admin
            .json(admin.request(Method::POST, "/tokens").json(
                &json!({ "name": "sam", "role": "approver", "groups": ["release-managers"] }),
            ))
            .await?;
        let sam = client(made["token"].as_str().context("no token for sam")?);
        Ok(Story {
            admin,
            sam,
            repo: repo.to_path_buf(),
            speed,
            started: Instant::now(),
            traffic: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The channel `team-chat` that the shop's `notify:` routes name: the
    /// given URL, or a local receiver of signed webhooks.
    async fn team_chat(&self, url: Option<&str>, kind: &str) -> Result<Option<inbox::Inbox>> {
        let (inbox, url, kind) = match url {
            Some(url) => (None, url.to_string(), kind.to_string()),
            None => {
                let inbox = inbox::Inbox::start().await?;
                let url = inbox.url.clone();
                (Some(inbox), url, "webhook".to_string())
            }
        };
        let channel = json!({ "name": "team-chat", "kind": kind, "url": url, "wait": "1s", "interval": "3s" });
        let made = self
            .admin
            .json(self.admin.request(Method::POST, "/channels").json(&channel))
            .await?;
        if let (Some(inbox), Some(key)) = (&inbox, made["signing_key"].as_str()) {
            inbox.trust(key);
        }
        self.tell_line(&format!(
            "the team's chat is the {kind} channel `team-chat` ({url})"
        ));
        Ok(inbox)
    }

    /// Waits for the last messages to go out, then shows what the team heard.
    async fn told_the_team(&self, inbox: Option<&inbox::Inbox>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let channels = self.admin.get("/channels").await?;
            let messages = self.admin.get("/messages?channel=team-chat").await?;
            let waiting = channels
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["waiting"].as_i64() > Some(0));
            let pending = messages
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["status"] == "pending");
            if !waiting && !pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let messages = self.admin.get("/messages?channel=team-chat").await?;
        let count = messages.as_array().map_or(0, Vec::len);
        say!();
        match inbox {
            Some(inbox) => {
                say!("What the team chat was told ({count} messages, each signed and checked):");
                for line in inbox.transcript() {
                    say!("{line}");
                }
            }
            None => say!(
                "The team chat was sent {count} messages; `sluice channel messages` lists them."
            ),
        }
        Ok(())
    }

    fn tell_line(&self, text: &str) {
        let t = self.started.elapsed().as_secs();
        say!("[{}:{:02}] {text}", t / 60, t % 60);
    }

    /// A pause for the reader, shorter at higher speeds.
    async fn pause(&self, seconds: f64) {
        if let Some(d) = self.speed.scale(seconds) {
            tokio::time::sleep(d).await;
        }
    }

    async fn tell(&self) -> Result<()> {
        self.write_repository()?;
        self.tell_line("wrote the shop's repository: a Python service, its tests, config template, seed data and sluice.yaml");
        self.admin
            .json(
                self.admin
                    .request(Method::POST, "/repos")
                    .json(&json!({ "location": self.repo })),
            )
            .await?;
        self.tell_line("Sluice watches it now: a git hook tells it of every commit");
        self.pause(3.0).await;

        // v1: commit → CI → release → dev → pre-prod → prod.
        let v1 = self.commit("Open the shop")?;
        self.ci(&v1, "v1").await?;
        self.through_the_environments(1).await?;
        self.start_traffic().await?;
        self.pause(5.0).await;

        // v2, faster: an experiment in prod that ramps and is promoted.
        self.edit("app/settings.py", "WORK_MS = 20", "WORK_MS = 2")?;
        let v2 = self.commit("Cache the product list: pages ten times faster")?;
        self.ci(&v2, "v2").await?;
        self.through_the_environments(2).await?;
        self.pause(5.0).await;

        // v3 breaks guest checkout: rolled back, an incident, a lesson.
        self.edit(
            "app/settings.py",
            "GUEST_CHECKOUT_WORKS = True",
            "GUEST_CHECKOUT_WORKS = False",
        )?;
        let v3 = self.commit("One-page checkout")?;
        self.ci(&v3, "v3").await?;
        self.through_the_environments(3).await?;
        let incident = self.incident().await?;
        self.lesson(incident).await?;
        self.pause(5.0).await;

        // v4 still has the bug: the rule stops it in dev.
        self.edit(
            "sluice.yaml",
            "GREETING: \"hello\"",
            "GREETING: \"hello, shopper\"",
        )?;
        let v4 = self.commit("A warmer greeting in prod")?;
        self.ci(&v4, "v4").await?;
        self.stopped_in_dev(4).await?;
        self.pause(3.0).await;

        // v5 fixes guest checkout and lays checkout out on one page: a test
        // in prod, whose shoppers order more on it, promoted by its result.
        self.edit(
            "app/settings.py",
            "GUEST_CHECKOUT_WORKS = False",
            "GUEST_CHECKOUT_WORKS = True",
        )?;
        self.edit(
            "app/settings.py",
            "CHECKOUT = \"three pages\"",
            "CHECKOUT = \"one page\"",
        )?;
        self.edit("sluice.yaml", "max_step: 2m }", TEST_STRATEGY)?;
        self.start_shoppers().await?;
        let v5 = self.commit("Checkout on one page, and guests welcome again")?;
        self.ci(&v5, "v5").await?;
        self.through_the_environments(5).await?;
        self.pause(3.0).await;

        // A change under review: CI, a status, and nowhere else.
        self.review().await?;
        Ok(())
    }

    fn write_repository(&self) -> Result<()> {
        std::fs::create_dir_all(&self.repo)?;
        for (path, text) in SHOP {
            let file = self.repo.join(path);
            std::fs::create_dir_all(file.parent().unwrap_or(&self.repo))?;
            std::fs::write(&file, text)?;
        }
        let (requests, duration) = self.speed.analysis();
        let spec = SPEC
            .replace("MIN_REQUESTS", &requests.to_string())
            .replace("MIN_DURATION", duration);
        std::fs::write(self.repo.join("sluice.yaml"), spec)?;
        self.git(&["init", "-q", "-b", "main"])?;
        Ok(())
    }

    fn edit(&self, file: &str, from: &str, to: &str) -> Result<()> {
        let path = self.repo.join(file);
        let text = std::fs::read_to_string(&path)?;
        if !text.contains(from) {
            bail!("{file} has no `{from}` to change");
        }
        std::fs::write(&path, text.replace(from, to))?;
        Ok(())
    }

    fn git(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.repo)
            .args([
                "-c",
                "user.name=Demo Developer",
                "-c",
                "user.email=dev@shop.example",
            ])
            .args(args)
            .output()
            .context("could not run git; the demo needs it on PATH")?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn commit(&self, message: &str) -> Result<String> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", message])?;
        let sha = self.git(&["rev-parse", "HEAD"])?;
        self.tell_line(&format!("commit {} \"{message}\"", &sha[..10]));
        Ok(sha)
    }

    /// Waits for something the API shows; `check` says whether it is there.
    async fn until<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + STAGE_LIMIT;
        loop {
            if let Some(found) = check().await? {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!("{what} did not happen within {} s", STAGE_LIMIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn ci(&self, sha: &str, name: &str) -> Result<()> {
        let run = self
            .until("the commit's CI run", async || {
                let runs = self.admin.get("/runs?limit=50").await?;
                Ok(runs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["sha"] == sha && r["finished_at"].is_i64())
                    .cloned())
            })
            .await?;
        if run["status"] != "success" {
            bail!(
                "{name}'s run {} ended {}: {}",
                run["id"],
                run["status"],
                run["reason"]
            );
        }
        let took =
            run["finished_at"].as_i64().unwrap_or(0) - run["created_at"].as_i64().unwrap_or(0);
        self.tell_line(&format!(
            "CI: run {} passed (unit and integration tests) in {:.1} s; release {name} is made",
            run["id"],
            took as f64 / 1000.0
        ));
        Ok(())
    }

    async fn env(&self, env: &str) -> Result<Option<Value>> {
        let all = self.admin.get("/status?service=shop").await?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["environment"] == env)
            .cloned())
    }

    async fn runs(&self, env: &str, release: i64) -> Result<()> {
        self.until(&format!("{env} running v{release}"), async || {
            let e = self.env(env).await?;
            Ok(e.filter(|e| e["release"] == release && e["health"] == "healthy"))
        })
        .await?;
        Ok(())
    }

    /// dev by itself; pre-prod and prod asked for by one person and approved by another.
    async fn through_the_environments(&self, release: i64) -> Result<()> {
        self.runs("dev", release).await?;
        self.tell_line(&format!(
            "dev runs v{release}: deployed by itself (deploy: auto)"
        ));
        self.pause(2.0).await;
        for env in ["pre-prod", "prod"] {
            let asked = self
                .admin
                .json(
                    self.admin
                        .request(Method::POST, "/promotions")
                        .json(&json!({ "service": "shop", "to": env, "release": release })),
                )
                .await?;
            let id = asked["id"].as_i64().context("no promotion id")?;
            self.tell_line(&format!(
                "you asked to promote v{release} to {env}: promotion {id} waits for an approval"
            ));
            self.pause(3.0).await;
            self.sam
                .json(
                    self.sam
                        .request(Method::POST, &format!("/promotions/{id}/approve")),
                )
                .await?;
            self.tell_line(&format!("sam approved promotion {id}"));
            if env == "prod" && release > 1 {
                return self.experiment(release).await;
            }
            self.runs(env, release).await?;
            self.tell_line(&format!("{env} runs v{release}"));
        }
        Ok(())
    }

    /// Follows prod's experiment of `release` step by step until it ends.
    async fn experiment(&self, release: i64) -> Result<()> {
        let mut shown = (String::new(), -1i64);
        let ended = self
            .until(
                &format!("the experiment of v{release} to end"),
                async || {
                    let all = self.admin.get("/experiments?service=shop").await?;
                    let Some(x) = all
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|x| x["release"] == release)
                        .cloned()
                    else {
                        return Ok(None);
                    };
                    let status = x["status"].as_str().unwrap_or("").to_string();
                    let weight = x["weight_bp"].as_i64().unwrap_or(0);
                    if (status.clone(), weight) != shown {
                        let why = x["decisions"]
                            .as_str()
                            .and_then(|d| serde_json::from_str::<Vec<Value>>(d).ok())
                            .and_then(|d| {
                                d.last()
                                    .map(|l| l["reason"].as_str().unwrap_or("").to_string())
                            })
                            .unwrap_or_default();
                        let because = if why.is_empty() {
                            String::new()
                        } else {
                            format!(": {why}")
                        };
                        self.tell_line(&format!(
                        "experiment {}: v{release} (B) {status} at {}% of prod's users{because}",
                        x["id"],
                        weight as f64 / 100.0
                    ));
                        shown = (status.clone(), weight);
                    }
                    let open =
                        matches!(status.as_str(), "starting" | "running" | "paused" | "held");
                    Ok((!open).then_some(x))
                },
            )
            .await?;
        match (release, ended["status"].as_str()) {
            (2, Some("promoted")) => {
                self.tell_line("v2 is prod's release now; A drained and stopped");
                Ok(())
            }
            (3, Some("rolled_back")) => {
                self.tell_line("v3 was rolled back by itself: every user is back on v2");
                Ok(())
            }
            (5, Some("promoted")) => {
                let reason = ended["reason"].as_str().unwrap_or("");
                self.tell_line(&format!(
                    "v5 is prod's release by the test's result: {reason}"
                ));
                Ok(())
            }
            (_, status) => bail!("the experiment of v{release} ended {status:?}"),
        }
    }

    /// Users in prod: pages and checkouts, some signed in, some guests.
    async fn start_traffic(&self) -> Result<()> {
        let prod = self.env("prod").await?.context("prod is not there")?;
        let listen = prod["listen"].as_str().context("prod has no entry point")?;
        let base = format!("http://{listen}");
        let rate = self.speed.requests_per_second();
        self.traffic.store(true, Ordering::Relaxed);
        let on = self.traffic.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut n: u64 = 0;
            while on.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                // Two in five check out as guests, one signed in, two browse.
                let request = match n % 5 {
                    0 | 1 => http.get(format!("{base}/checkout")),
                    2 => http
                        .get(format!("{base}/checkout"))
                        .header("X-User-Id", format!("user-{}", n % 500)),
                    _ => http.get(format!("{base}/")),
                };
                tokio::spawn(async move {
                    let _ = request.timeout(Duration::from_secs(10)).send().await;
                });
            }
        });
        self.tell_line(&format!(
            "users arrive in prod: {rate:.0} requests a second, pages and checkouts, signed in or as guests"
        ));
        Ok(())
    }

    /// Shoppers in prod, each with the cookie prod gives them: they land,
    /// check out, and order more often when checkout is on one page (35%
    /// against 20%), as people do with fewer steps to a purchase.
    async fn start_shoppers(&self) -> Result<()> {
        let prod = self.env("prod").await?.context("prod is not there")?;
        let listen = prod["listen"].as_str().context("prod has no entry point")?;
        let base = format!("http://{listen}");
        let rate = self.speed.requests_per_second() / 4.0;
        let on = self.traffic.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut n: u64 = 0;
            while on.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let (http, base) = (http.clone(), base.clone());
                tokio::spawn(async move { shop(&http, &base, n).await });
            }
        });
        self.tell_line(&format!(
            "shoppers arrive in prod too: {rate:.0} a second, each with prod's cookie; some of them order"
        ));
        Ok(())
    }

    async fn incident(&self) -> Result<i64> {
        let incident = self
            .until("an incident for v3", async || {
                let all = self.admin.get("/incidents?service=shop").await?;
                Ok(all.as_array().into_iter().flatten().next().cloned())
            })
            .await?;
        let id = incident["id"].as_i64().context("no incident id")?;
        self.tell_line(&format!(
            "Sluice opened INC-{id} \"{}\": {}",
            incident["title"].as_str().unwrap_or(""),
            incident["trigger_detail"].as_str().unwrap_or("")
        ));
        let view = self.admin.get(&format!("/incidents/{id}")).await?;
        let top = &view["suspects"][0];
        if top["release"] != 3 {
            bail!("INC-{id}'s top suspect is not v3: {top}");
        }
        self.tell_line(&format!(
            "its top suspect: {} ({}): {}",
            top["subject"].as_str().unwrap_or(""),
            top["summary"].as_str().unwrap_or(""),
            top["why"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        ));
        Ok(id)
    }

    /// The postmortem is drafted, dev and pre-prod go back to v2, and the
    /// lesson becomes a rule.
    async fn lesson(&self, id: i64) -> Result<()> {
        let template = self
            .admin
            .send(
                self.admin
                    .request(Method::GET, &format!("/incidents/{id}/postmortem")),
            )
            .await?
            .text()
            .await?;
        let draft = template
            .replace(
                "_What happened, in two or three sentences._",
                "v3's one-page checkout failed every guest checkout. The experiment in prod caught it at 1% of the users and rolled it back by itself.",
            )
            .replace(
                "- [ ] _Each lesson",
                "- [x] Instances must answer a guest's GET /checkout before they take traffic (rule R1)\n- [ ] _Each lesson",
            );
        self.admin
            .json(
                self.admin
                    .request(Method::PUT, &format!("/incidents/{id}/postmortem"))
                    .body(draft),
            )
            .await?;
        self.tell_line(&format!(
            "the postmortem of INC-{id} is drafted from its template"
        ));
        for env in ["dev", "pre-prod"] {
            let path = format!("/services/shop/environments/{env}");
            self.admin
                .json(
                    self.admin
                        .request(Method::POST, &format!("{path}/rollback"))
                        .json(&json!({ "to": 2 })),
                )
                .await?;
            self.admin
                .json(self.admin.request(Method::POST, &format!("{path}/unpin")))
                .await?;
        }
        self.tell_line("dev and pre-prod, which ran v3 too, are rolled back to v2");
        let rule = self
            .admin
            .json(self.admin.request(Method::POST, "/rules").json(&json!({
                "service": "shop",
                "incident": id,
                "note": "a guest must be able to check out",
                "rule": { "kind": "health_check", "path": "/checkout", "status": 200 },
            })))
            .await?;
        self.tell_line(&format!(
            "the lesson is rule {} (from INC-{id}): {}",
            rule["name"].as_str().unwrap_or(""),
            rule["describes"].as_str().unwrap_or("")
        ));
        let replay = self
            .admin
            .json(
                self.admin
                    .request(Method::POST, &format!("/rules/{}/test", rule["id"]))
                    .json(&json!({ "release": 3 })),
            )
            .await?;
        self.tell_line(&format!(
            "replayed: {}",
            replay["reason"].as_str().unwrap_or("")
        ));
        Ok(())
    }

    async fn stopped_in_dev(&self, release: i64) -> Result<()> {
        let deployment = self
            .until(&format!("v{release}'s deployment to dev"), async || {
                let all = self.admin.get("/deployments?service=shop&env=dev").await?;
                Ok(all
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|d| d["release"] == release && d["status"] != "running")
                    .cloned())
            })
            .await?;
        let reason = deployment["reason"].as_str().unwrap_or("");
        if deployment["status"] == "succeeded" || !reason.contains("blocked by rule") {
            bail!("v{release} was not stopped by the rule: {deployment}");
        }
        self.tell_line(&format!(
            "v{release} stopped in dev and went no further: {reason}"
        ));
        self.runs("dev", 2).await?;
        Ok(())
    }

    async fn review(&self) -> Result<()> {
        self.git(&["checkout", "-q", "-b", "wishlist"])?;
        std::fs::write(
            self.repo.join("app/wishlist.py"),
            "\"\"\"A wish list, under review.\"\"\"\n\nWISHES = []\n",
        )?;
        let sha = self.commit("Wish lists (under review)")?;
        let run = self
            .until("the review change's run", async || {
                let runs = self.admin.get("/runs?limit=50").await?;
                Ok(runs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["sha"] == sha.as_str() && r["finished_at"].is_i64())
                    .cloned())
            })
            .await?;
        self.tell_line(&format!(
            "the change on branch wishlist got run {}: {}; as a change under review it makes no release and deploys nowhere",
            run["id"], run["status"]
        ));
        self.git(&["checkout", "-q", "main"])?;
        Ok(())
    }
}

/// One shopper's visit: the page, checkout, and (sometimes) an order.
async fn shop(http: &reqwest::Client, base: &str, n: u64) -> Option<()> {
    let timeout = Duration::from_secs(10);
    let landing = http
        .get(format!("{base}/"))
        .timeout(timeout)
        .send()
        .await
        .ok()?;
    let cookie = landing
        .headers()
        .get("set-cookie")?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .to_string();
    let page: Value = landing.json().await.ok()?;
    let one_page = page["checkout"] == "one page";
    let with = |r: reqwest::RequestBuilder| r.header("cookie", &cookie).timeout(timeout);
    with(http.get(format!("{base}/checkout")))
        .send()
        .await
        .ok()?;
    // A spread number in 0..100 per shopper.
    let draw = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100;
    if draw < if one_page { 35 } else { 20 } {
        with(http.post(format!("{base}/order"))).send().await.ok()?;
    }
    Some(())
}
