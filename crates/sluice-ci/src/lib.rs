//! Continuous integration: noticing changes in git repositories, running
//! their pipelines as processes, keeping their logs and packing artifacts.
//!
//! [`Ci`] is the engine. It owns a dispatcher that claims queued runs from the
//! store, a poller that rescans repositories, a loop that turns the webhook
//! deliveries any server holds into runs ([`inbox`]), and the pluggable [`Executor`]
//! (where steps run). A run's changes reach its forge ([`ForgeStatus`]) and
//! the store, whose `RunEnded` wake-up is what CD's release maker waits on.

pub mod agent;
pub mod artifact;
mod detect;
mod events;
pub mod executor;
pub mod git;
pub mod inbox;
pub mod logs;
mod notify;
pub mod remote;
mod rules;
mod run;
pub mod sandbox;
pub mod servers;
pub mod webhook;
pub mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_store::{Repo, Run, RunStatus, Store};
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

pub use detect::{AddRepo, HOOK_MARKER, source_dir};
pub use events::Event;
pub use executor::{Executor, LocalExecutor, StepOutcome, StepRequest};
pub use logs::{LogSink, LogWriter, Masker};
pub use notify::{ForgeStatus, forge_state};

/// How long an agent may be silent before its jobs are taken back.
pub const DEFAULT_AGENT_LEASE: Duration = Duration::from_secs(15);

/// How the engine runs; `Default` is for tests and `sluice serve` fills it in.
#[derive(Clone, Debug)]
pub struct CiConfig {
    pub data_dir: PathBuf,
    /// Jobs that may run at once across all runs.
    pub parallelism: usize,
    /// How often every repository is rescanned, for remotes and missed hooks.
    pub poll_interval: Duration,
    /// Keep each run's workspace after it ends, for debugging.
    pub keep_workspaces: bool,
    /// The server's address, for hooks and links in commit statuses.
    pub server_url: String,
    /// The `sluice` binary that installed hooks call.
    pub sluice_bin: PathBuf,
    /// Whether steps run as a user of their own (when the server is root).
    pub isolation: sandbox::Isolation,
    /// The most of a run's log that is kept, in bytes: its end.
    pub log_cap: u64,
    /// How long an agent may be silent before its jobs are taken back.
    pub agent_lease: Duration,
    /// Jobs without `runs_on:` run on any agent (as `runs_on: {}`), never
    /// on the server's host.
    pub jobs_on_agents: bool,
}

impl CiConfig {
    pub fn new(data_dir: &Path, server_url: &str) -> Self {
        CiConfig {
            data_dir: data_dir.to_path_buf(),
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            poll_interval: Duration::from_secs(10),
            keep_workspaces: false,
            server_url: server_url.to_string(),
            sluice_bin: std::env::current_exe().unwrap_or_else(|_| "sluice".into()),
            isolation: sandbox::Isolation::User,
            log_cap: logs::DEFAULT_CAP,
            agent_lease: DEFAULT_AGENT_LEASE,
            jobs_on_agents: false,
        }
    }
}

/// The CI engine; cheap to clone.
#[derive(Clone)]
pub struct Ci {
    engine: Arc<Engine>,
}

struct Engine {
    store: Store,
    config: CiConfig,
    executor: Arc<dyn Executor>,
    forge: ForgeStatus,
    events: broadcast::Sender<Event>,
    wake: Notify,
    job_slots: Arc<Semaphore>,
    running: Mutex<HashMap<i64, Cancel>>,
    /// Each job this server's runs have on agents, by job id.
    agent_jobs: Mutex<HashMap<i64, remote::Watched>>,
    scanning: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

#[derive(Clone)]
struct Cancel {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Ci {
    /// Recovers from a previous server's end (kills its leftover steps, marks
    /// its running runs `error`), then starts the dispatcher and the poller.
    pub async fn start(store: Store, config: CiConfig) -> anyhow::Result<Ci> {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        let killed = executor::kill_leftovers(&store, &host, &config.data_dir).await;
        if killed > 0 {
            tracing::warn!(killed, "killed the steps a previous server left running");
        }
        let executor = Arc::new(LocalExecutor::new(store.clone(), host, &config.data_dir));
        Ci::start_with(store, config, executor).await
    }

    /// [`Ci::start`] with steps run by `executor` (tests give a fake one).
    pub async fn start_with(
        store: Store,
        config: CiConfig,
        executor: Arc<dyn Executor>,
    ) -> anyhow::Result<Ci> {
        let interrupted = store.interrupt_running_runs().await?;
        if !interrupted.is_empty() {
            tracing::warn!(?interrupted, "runs of a previous server ended as error");
        }
        let (events, _) = broadcast::channel(4096);
        let forge = ForgeStatus::new(config.server_url.clone());
        let engine = Arc::new(Engine {
            job_slots: Arc::new(Semaphore::new(config.parallelism.max(1))),
            store,
            config,
            executor,
            forge,
            events,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            agent_jobs: Mutex::new(HashMap::new()),
            scanning: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
        });
        engine.end_leases_of(&interrupted).await;
        for id in &interrupted {
            let workspace = engine.workspace(*id);
            let _ = tokio::fs::remove_dir_all(run::step_home(&workspace)).await;
            let _ = tokio::fs::remove_dir_all(workspace).await;
        }
        engine.refresh_hooks().await;
        tokio::spawn(dispatch(engine.clone()));
        tokio::spawn(poll(engine.clone()));
        tokio::spawn(inbox::take_held_deliveries(engine.clone()));
        Ok(Ci { engine })
    }

    pub fn store(&self) -> &Store {
        &self.engine.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.engine.events.subscribe()
    }

    /// Where the engine's events go out, for a stream to subscribe to.
    pub fn events(&self) -> broadcast::Sender<Event> {
        self.engine.events.clone()
    }

    /// Where things are under the data directory.
    pub fn layout(&self) -> sluice_spec::Layout {
        sluice_spec::Layout::new(&self.engine.config.data_dir)
    }

    /// Registers a repository, hooks it where it can, and queues a run of its mainline head.
    pub async fn add_repo(&self, request: AddRepo, actor: &str) -> anyhow::Result<Repo> {
        self.engine.add_repo(request, actor).await
    }

    /// Rescans a repository's refs now; returns the runs it queued.
    pub async fn scan(&self, repo: &str, source: &str) -> anyhow::Result<Vec<Run>> {
        let repo = self.engine.store.repo(repo).await?;
        self.engine.scan(&repo, source).await
    }

    /// Takes a verified webhook delivery that came to this server: holds
    /// it, then turns it into a run now.
    pub async fn accept_webhook(
        &self,
        repo: &Repo,
        announced: webhook::Announced,
        delivery: Option<&str>,
    ) -> anyhow::Result<inbox::Accepted> {
        self.engine
            .accept_delivery(repo, &announced, delivery)
            .await
    }

    /// Cancels a queued or running run; false when it had already ended.
    pub async fn cancel(&self, run_id: i64, reason: &str) -> anyhow::Result<bool> {
        self.engine.cancel(run_id, reason).await
    }

    /// Stops the dispatcher and cancels what runs, for a clean shutdown.
    pub fn shutdown(&self) {
        self.engine.shutdown.cancel();
        for cancel in self.engine.running.lock().unwrap().values() {
            cancel.token.cancel();
        }
    }
}

impl Engine {
    fn workspace(&self, run_id: i64) -> PathBuf {
        sluice_spec::Layout::new(&self.config.data_dir).workspace(run_id)
    }

    fn emit(&self, run_id: i64, status: RunStatus) {
        let _ = self.events.send(Event::Run { run_id, status });
    }

    async fn notify(&self, run_id: i64) {
        let Ok(run) = self.store.run(run_id).await else {
            return;
        };
        self.emit(run_id, run.status);
        let notice = sluice_store::Notice::Run {
            run_id,
            status: run.status,
        };
        self.store.tell(&notice).await;
        if run.status.is_finished() {
            self.store.wake(sluice_store::Topic::RunEnded).await;
        }
        if let Ok(repo) = self.store.repo_by_id(run.repo_id).await {
            self.forge.run_changed(&repo, &run).await;
        }
    }

    async fn cancel(&self, run_id: i64, reason: &str) -> anyhow::Result<bool> {
        let running = self.running.lock().unwrap().get(&run_id).cloned();
        if let Some(cancel) = running {
            *cancel.reason.lock().unwrap() = Some(reason.to_string());
            cancel.token.cancel();
            return Ok(true);
        }
        let ended = self
            .store
            .finish_run(run_id, RunStatus::Cancelled, Some(reason), None)
            .await?;
        if ended {
            self.notify(run_id).await;
        }
        Ok(ended)
    }
}

/// Claims queued runs and starts each; woken at once when a run is queued.
async fn dispatch(engine: Arc<Engine>) {
    loop {
        loop {
            match engine.store.claim_queued_run().await {
                Ok(Some(run)) => {
                    let cancel = Cancel {
                        token: engine.shutdown.child_token(),
                        reason: Arc::default(),
                    };
                    engine
                        .running
                        .lock()
                        .unwrap()
                        .insert(run.id, cancel.clone());
                    tokio::spawn(run::execute(engine.clone(), run, cancel));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "could not claim a queued run");
                    break;
                }
            }
        }
        tokio::select! {
            _ = engine.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = engine.shutdown.cancelled() => return,
        }
    }
}

/// Rescans every repository now and then: remotes have no hook, and a hook may be missed.
async fn poll(engine: Arc<Engine>) {
    // The first scan, at start, finds commits made while no server was running.
    loop {
        if let Ok(repos) = engine.store.repos().await {
            for repo in repos {
                if let Err(e) = engine.scan(&repo, "poll").await {
                    tracing::warn!(repo = %repo.name, error = %format!("{e:#}"), "poll failed");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(engine.config.poll_interval) => {}
            _ = engine.shutdown.cancelled() => return,
        }
    }
}
