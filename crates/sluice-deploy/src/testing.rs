//! A harness for the deployment core's unit tests: the engine over a store
//! in a temporary directory, its instances run by [`FakeRuntime`] (no
//! processes: each instance is an HTTP server inside the test), its time
//! read from a [`FakeClock`] the test moves or runs fast (an experiment's
//! seconds), and releases made from a `sluice.yaml` text.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use sluice_store::{DeploymentStatus, NewChange, NewRepo, Release, Store};
use tokio_util::sync::CancellationToken;

use crate::clock::FakeClock;
use crate::runtime::{InstanceSpec, Runtime};
use crate::{Cd, CdConfig};

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs each instance as its `run.command` says:
/// - `serve`: answers every request with 200 and its release's name;
/// - `fail`: passes its health check but answers everything else with 500;
/// - `hang`: never listens, so it never becomes healthy;
/// - `crash`: exits again and again (its exits count up at once).
///
/// Armed with [`FakeRuntime::crash_at`], its n-th start or stop from then
/// on never returns, nor does any after it: the server is as good as
/// killed there, and the test drops its tokio runtime.
#[derive(Default)]
pub(crate) struct FakeRuntime {
    running: Mutex<HashMap<String, CancellationToken>>,
    exits: Mutex<HashMap<String, u32>>,
    /// Set: every instance's health check fails from now on.
    sick: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Starts and stops still allowed before the crash, once armed.
    crash_in: Mutex<Option<usize>>,
    crashed: tokio::sync::Notify,
}

impl FakeRuntime {
    /// The `nth` start or stop from now on (1: the next) hangs for ever, as
    /// does every one after it.
    pub fn crash_at(&self, nth: usize) {
        *self.crash_in.lock().unwrap() = Some(nth);
    }

    /// Resolves once the armed crash happened.
    pub async fn crashed(&self) {
        let crashed = self.crashed.notified();
        if *self.crash_in.lock().unwrap() == Some(0) {
            return;
        }
        crashed.await
    }

    /// Hangs when the armed crash is here or behind.
    async fn action(&self) {
        let crashing = {
            let mut left = self.crash_in.lock().unwrap();
            match left.as_mut() {
                Some(0) => true,
                Some(n) => {
                    *n -= 1;
                    *n == 0
                }
                None => false,
            }
        };
        if crashing {
            self.crashed.notify_waiters();
            std::future::pending::<()>().await;
        }
    }

    /// Makes every instance fail its health checks from now on.
    pub fn sicken(&self) {
        self.sick.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The ids of the instances running now.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }
}

fn var<'a>(spec: &'a InstanceSpec, name: &str) -> &'a str {
    spec.env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

impl Runtime for FakeRuntime {
    fn start(&self, spec: InstanceSpec) -> Boxed<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.action().await;
            let stop = CancellationToken::new();
            match spec.command.as_str() {
                "serve" | "fail" => {
                    let port: u16 = var(&spec, "PORT").parse()?;
                    let release = var(&spec, "SLUICE_RELEASE").to_string();
                    let status = if spec.command == "fail" {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    };
                    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                    let sick = self.sick.clone();
                    let app = axum::Router::new()
                        .route(
                            "/healthz",
                            axum::routing::get(move || {
                                let sick = sick.load(std::sync::atomic::Ordering::SeqCst);
                                async move {
                                    if sick {
                                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                                    } else {
                                        axum::http::StatusCode::OK
                                    }
                                }
                            }),
                        )
                        .fallback(move || {
                            let release = release.clone();
                            async move { (status, release) }
                        });
                    let stopped = stop.clone().cancelled_owned();
                    tokio::spawn(async move {
                        let _ = axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await;
                    });
                }
                "hang" => {}
                "crash" => {
                    self.exits.lock().unwrap().insert(spec.id.clone(), 3);
                }
                other => {
                    anyhow::bail!("the fake runtime runs serve, fail, hang or crash, not {other}")
                }
            }
            self.running.lock().unwrap().insert(spec.id, stop);
            Ok(())
        })
    }

    fn stop<'a>(&'a self, id: &'a str) -> Boxed<'a, ()> {
        Box::pin(async move {
            self.action().await;
            if let Some(stop) = self.running.lock().unwrap().remove(id) {
                stop.cancel();
            }
        })
    }

    fn stop_all(&self) -> Boxed<'_, ()> {
        Box::pin(async move {
            for (_, stop) in self.running.lock().unwrap().drain() {
                stop.cancel();
            }
        })
    }

    fn exits(&self, id: &str) -> u32 {
        self.exits.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

/// A `sluice.yaml` whose instances the fake runtime runs as `command`
/// (with quick health checks), and `environments` (YAML under
/// `environments:`, indented by four).
pub(crate) fn spec(command: &str, environments: &str) -> String {
    format!(
        "service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: 'true'
  artifact:
    paths: [sluice.yaml]
run:
  command: {command}
  ready_timeout: 1s
  health: {{ path: /healthz, interval: 50ms, timeout: 50ms, healthy: 1, unhealthy: 2 }}
environments:
{environments}"
    )
}

/// A tokio runtime for one engine alone: shutting it down kills that
/// engine where it stands, as kill -9 does a server (no task runs again).
pub(crate) fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `scenario(n)` for every `n` in `1..=actions`, each on a thread of
/// its own (they wait on the engine, not the processor); fails naming the
/// action of `what` a failing one was killed at.
pub(crate) fn at_each_action(actions: usize, what: &str, scenario: fn(usize)) {
    let runs: Vec<_> = (1..=actions)
        .map(|nth| std::thread::spawn(move || scenario(nth)))
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        if run.join().is_err() {
            panic!("killed at action {} of {what}", i + 1);
        }
    }
}

/// Kills the engine of `world` where it stands: its tasks never run again.
pub(crate) fn kill(server: tokio::runtime::Runtime, world: Harness) {
    server.shutdown_background();
    // Nothing of it may run, not even what its drop would do.
    std::mem::forget(world);
}

/// Requests sent to an entry point, one after another, until dropped.
pub(crate) struct Load(#[allow(dead_code)] tokio_util::sync::DropGuard);

/// The engine with a fake runtime over a fresh SQLite store.
pub(crate) struct Harness {
    pub cd: Cd,
    pub runtime: std::sync::Arc<FakeRuntime>,
    pub clock: std::sync::Arc<FakeClock>,
    repo: sluice_store::Repo,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl Harness {
    /// The engine with a clock that stands still until moved.
    pub async fn new() -> Harness {
        Harness::with_clock(FakeClock::new()).await
    }

    /// The engine with a clock that runs `speed` times as fast as the real
    /// one: an experiment's seconds (its steps, the entry point's windows)
    /// pass that much sooner.
    pub async fn fast(speed: u32) -> Harness {
        Harness::with_clock(FakeClock::running(speed)).await
    }

    async fn with_clock(clock: FakeClock) -> Harness {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        Harness::open(dir, std::sync::Arc::default(), std::sync::Arc::new(clock)).await
    }

    /// The engine over the store in `dir` (new or left by another engine,
    /// as a server started again finds it), its instances run by `runtime`,
    /// its time read from `clock`.
    pub async fn open(
        dir: std::sync::Arc<tempfile::TempDir>,
        runtime: std::sync::Arc<FakeRuntime>,
        clock: std::sync::Arc<FakeClock>,
    ) -> Harness {
        let store = Store::connect(&Store::sqlite_url(dir.path()))
            .await
            .unwrap();
        let config = CdConfig {
            isolation: sluice_ci::sandbox::Isolation::None,
            drain_timeout: Duration::from_millis(200),
            heal_interval: Duration::from_secs(3600),
            look_interval: Duration::from_millis(100),
            ..CdConfig::new(dir.path())
        };
        let metrics =
            sluice_proxy::Metrics::register(&mut prometheus_client::registry::Registry::default());
        let repo = match store.repo("shop").await {
            Ok(repo) => repo,
            Err(_) => store
                .insert_repo(
                    NewRepo {
                        name: "shop".into(),
                        url: "file:///nowhere/shop".into(),
                        local_path: None,
                        webhook_secret: "s".into(),
                        status_url: None,
                        status_token: None,
                        hook: "none".into(),
                    },
                    "test",
                )
                .await
                .unwrap(),
        };
        let world = crate::World {
            runtime: runtime.clone(),
            clock: clock.clone(),
        };
        let cd = Cd::start_with(store, config, metrics, world).await.unwrap();
        Harness {
            cd,
            runtime,
            clock,
            repo,
            _dir: dir,
        }
    }

    pub fn store(&self) -> &Store {
        &self.cd.inner.store
    }

    /// Makes the next release of `shop` carrying `spec`.
    pub async fn release(&self, spec: &str) -> Release {
        let inner = &self.cd.inner;
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("sluice.yaml"), spec).unwrap();
        let sha256 = sluice_ci::artifact::pack(
            work.path(),
            &["sluice.yaml".to_string()],
            &inner.layout.artifacts(),
        )
        .unwrap()
        .sha256;
        let sha = format!("{:040x}", rand::random::<u128>());
        let run = inner
            .store
            .insert_change(NewChange {
                repo_id: self.repo.id,
                ref_name: "refs/heads/main".into(),
                branch: "main".into(),
                sha,
                kind: "mainline".into(),
                source: "hook".into(),
                pull_request: None,
                title: "a change".into(),
                author: "ana".into(),
            })
            .await
            .unwrap()
            .expect("a run");
        let release = inner
            .store
            .create_release("shop", &run, &sha256, spec)
            .await
            .unwrap();
        crate::release::unpack(&inner.store, &inner.layout, &release)
            .await
            .unwrap();
        release
    }

    /// Waits until `check` finds what it looks for (at most 20 s).
    pub async fn until<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = check().await {
                return found;
            }
            assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the engine has settled with `release` in `env`: every
    /// promotion, deployment and experiment ended, `instances` instances,
    /// all of that release and each running once, and the entry point
    /// answering with it.
    pub async fn settled(&self, env: &str, release: i64, instances: usize) {
        let store = self.store();
        self.until(&format!("v{release} alone in {env}, settled"), || async {
            let status = self.status(env).await;
            let promotions = store.promotions(Some("shop"), true, 100).await.unwrap();
            let deployments = store
                .deployments(Some("shop"), None, Some(DeploymentStatus::Running), 100)
                .await
                .unwrap();
            let experiments = store.experiments(Some("shop"), 100).await.unwrap();
            let live = store.live_instances(Some("shop"), Some(env)).await.unwrap();
            let mut ids: Vec<String> = live.iter().map(|i| i.id.clone()).collect();
            ids.sort();
            // This environment's processes: ids are `SERVICE.ENV-vN-K`.
            let prefix = format!("shop.{env}-");
            let running: Vec<String> = self
                .runtime
                .running()
                .into_iter()
                .filter(|id| id.starts_with(&prefix))
                .collect();
            let settled = status.release == Some(release)
                && promotions.is_empty()
                && deployments.is_empty()
                && experiments.iter().all(|x| !x.is_open())
                && live.len() == instances
                && live.iter().all(|i| i.release == release)
                && ids == running;
            settled.then_some(())
        })
        .await;
        assert_eq!(self.answer(env).await, format!("v{release}"));
    }

    /// The first open incident of `shop`, once there is one.
    pub async fn incident(&self) -> sluice_store::Incident {
        self.until("an incident", || async {
            let open = self
                .store()
                .incidents(Some("shop"), true, 10)
                .await
                .unwrap();
            open.into_iter().next()
        })
        .await
    }

    /// An environment's status, as `sluice status` shows it.
    pub async fn status(&self, env: &str) -> crate::EnvStatus {
        let all = self.cd.status(Some("shop")).await.unwrap();
        all.into_iter()
            .find(|s| s.environment == env)
            .unwrap_or_else(|| panic!("no environment {env}"))
    }

    /// Sends requests to an environment's entry point until dropped.
    pub async fn load(&self, env: &str) -> Load {
        let listen = self.status(env).await.listen.expect("an entry point");
        let url = format!("http://{listen}/");
        let stop = CancellationToken::new();
        let running = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !running.is_cancelled() {
                let _ = client.get(&url).send().await;
            }
        });
        Load(stop.drop_guard())
    }

    /// Sends requests to an environment's entry point until dropped, once
    /// it has one (after a restart, once the environment is back).
    pub async fn load_when_served(&self, env: &str) -> Load {
        self.until("an entry point", || async {
            self.status(env).await.listen.map(|_| ())
        })
        .await;
        self.load(env).await
    }

    /// What an environment's entry point answers `GET /` with.
    pub async fn answer(&self, env: &str) -> String {
        let listen = self.status(env).await.listen.expect("an entry point");
        let url = format!("http://{listen}/");
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    }
}
