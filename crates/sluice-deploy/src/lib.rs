//! Continuous deployment: releases made from green mainline runs, the five
//! facets of each environment (instances and network, code, rendered config,
//! config values, data), deployments by strategy behind the proxy, promotions
//! through gates, rollbacks and pins, drift, and reconciling after a restart.
//!
//! [`Cd`] is the engine. Its controllers are loops that meet in the store
//! and are woken through it: the release maker (a green mainline run
//! becomes a release), the gatekeeper (promotions), the deployments loop,
//! the experiments loop, healing, and the watch over lost hosts.

mod aftermath;
mod certs;
pub mod clock;
mod data;
mod deploy;
mod experiment;
mod exposure;
mod gates;
mod heal;
mod health;
pub mod hosts;
mod incidents;
mod instances;
mod promote;
mod release;
mod release_maker;
mod render;
mod rollout;
mod rules;
pub mod runtime;
pub mod sockets;
#[cfg(test)]
mod testing;
mod traffic;
mod view;
mod workdir;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_proxy::{Backend, Listener, Metrics, Route, Telemetry};
use sluice_store::Store;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, SystemClock};
pub use gates::GateCheck;
pub use incidents::{IncidentView, OpenRequest, TimelineEntry};
pub use promote::{PromoteRequest, PromotionView};
pub use rules::{NewRuleRequest, Replay, ReplayTarget};
pub use runtime::{InstanceSpec, LocalRuntime, Runtime};
pub use sluice_spec::Layout;
pub use sluice_store::ExperimentCommand;
pub use traffic::InstanceTraffic;
pub use view::{EnvDetail, EnvDiff, EnvStatus, TRAFFIC_SECONDS};

/// How a deployment ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Succeeded,
    /// It failed; the environment went back to its previous release.
    RolledBack(String),
    /// It failed and there was nothing to go back to.
    Failed(String),
    /// A person took it back (an experiment's abort): no failure of its own.
    Aborted(String),
}

/// What the engine acts on and reads the time from: given to it, so that
/// tests can give a fake runtime and a clock they move.
pub struct World {
    pub runtime: Arc<dyn Runtime>,
    pub clock: Arc<dyn Clock>,
}

/// An incident that a part below the incidents module asks for (an
/// instance that stays unhealthy): raised into a queue that
/// `incidents::take_alarms` opens them from, so instance mechanics never
/// call upward.
pub(crate) struct Alarm {
    pub service: String,
    pub env: String,
    /// What kind of trouble: `health`.
    pub trigger: sluice_store::IncidentTrigger,
    pub title: String,
    pub detail: String,
}

/// Who is acting, as the API authenticated them. Whether their role allows
/// what they ask was decided where the request came in (the server's
/// `access` table); the engine trusts it.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    pub groups: Vec<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            name: "sluice".into(),
            groups: Vec::new(),
        }
    }
}

/// A refusal the API shows as 4xx: what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CdError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sluice_spec::paths::PathEscape> for CdError {
    fn from(escape: sluice_spec::paths::PathEscape) -> Self {
        CdError::Invalid(escape.to_string())
    }
}

pub type CdResult<T> = Result<T, CdError>;

/// The environment other than `key` whose entry point `addr` would take.
fn owner_of(
    entries: &HashMap<EnvKey, Entry>,
    key: &EnvKey,
    addr: std::net::SocketAddr,
) -> Option<EnvKey> {
    entries
        .iter()
        .find(|(owner, e)| *owner != key && e.owns(addr))
        .map(|(owner, _)| owner.clone())
}

impl Entry {
    /// Whether a claim on `addr` would take this entry point's address
    /// (`0.0.0.0:P` takes `127.0.0.1:P` too).
    fn owns(&self, addr: std::net::SocketAddr) -> bool {
        let overlaps = |mine: std::net::SocketAddr| {
            mine.port() == addr.port()
                && (mine.ip() == addr.ip()
                    || mine.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        };
        let bound = self.listener.as_ref().map(|l| l.addr);
        addr.port() != 0 && (overlaps(self.listen) || bound.is_some_and(overlaps))
    }
}

#[derive(Clone, Debug)]
pub struct CdConfig {
    pub data_dir: std::path::PathBuf,
    /// How often pending promotions are looked at again.
    pub gate_interval: Duration,
    /// How long draining an instance may take before it is stopped anyway.
    pub drain_timeout: Duration,
    /// How often environments are checked for missing instances.
    pub heal_interval: Duration,
    /// How often a running experiment looks for seconds that ended (its
    /// evidence comes by the second; a look finds what ended since).
    pub look_interval: Duration,
    /// Whether each environment's instances run as a user of their own (as root).
    pub isolation: sluice_ci::sandbox::Isolation,
    /// The program (this binary) whose `keep-sockets` keeps the entry points'
    /// sockets through a crash of the server ([`sockets`]); none: the
    /// sockets close with the server.
    pub socket_keeper: Option<std::path::PathBuf>,
    /// An agent silent this long gets no instances.
    pub agent_lease: Duration,
    /// Where environments without `hosts:` run: the agents these select
    /// (the server's local agent, `sluice serve --local-agent`), which
    /// serve their entry points alone. None: in this server's process.
    pub local_agent: Option<sluice_spec::HostsSpec>,
}

impl CdConfig {
    pub fn new(data_dir: &Path) -> Self {
        CdConfig {
            data_dir: data_dir.to_path_buf(),
            gate_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
            heal_interval: Duration::from_secs(2),
            look_interval: Duration::from_secs(1),
            isolation: sluice_ci::sandbox::Isolation::User,
            socket_keeper: None,
            agent_lease: sluice_ci::DEFAULT_AGENT_LEASE,
            local_agent: None,
        }
    }
}

/// The CD engine; cheap to clone.
#[derive(Clone)]
pub struct Cd {
    inner: Arc<Inner>,
}

/// `(service, environment)`.
type EnvKey = (String, String);

/// An entry point's name among the sockets kept through a crash.
fn sockets_key(service: &str, env: &str) -> String {
    format!("{service}/{env}")
}

/// The proxy's limits from `listen: { limits: … }`.
fn entry_limits(limits: &sluice_spec::EntryLimits, drain: Duration) -> sluice_proxy::Limits {
    sluice_proxy::Limits {
        idle: limits.idle_timeout,
        request_body: limits.request_timeout,
        answer: limits.answer_timeout,
        max_body: limits.max_body,
        max_header_bytes: usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX),
        max_headers: limits.max_headers as usize,
        drain,
    }
}

pub(crate) struct Inner {
    store: Store,
    layout: Layout,
    config: CdConfig,
    runtime: Arc<dyn Runtime>,
    /// The instances on agents' hosts.
    hosts: hosts::Hosts,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    /// One listener and route per (service, environment).
    entries: Mutex<HashMap<EnvKey, Entry>>,
    /// Instances this server runs, with what checks their health.
    live: Mutex<HashMap<String, Live>>,
    /// One deployment at a time per (service, environment).
    locks: Mutex<HashMap<EnvKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The deployments waiting per (service, environment), in the order they came.
    queues: Mutex<HashMap<EnvKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The experiments this engine follows now.
    followed: Mutex<std::collections::HashSet<i64>>,
    /// The newest release asked for per environment by automation or a
    /// promotion: a deployment still waiting for an older one gives way.
    wanted: Mutex<HashMap<EnvKey, i64>>,
    /// Promotions are advanced one at a time, so none deploys twice.
    advancing: tokio::sync::Mutex<()>,
    /// Automatic promotions are asked for one release at a time: what was
    /// asked is read and added to under it, so none is asked twice.
    asking: tokio::sync::Mutex<()>,
    /// The experiments the experiments loop is taking up now.
    taking_up: Mutex<std::collections::HashSet<i64>>,
    /// The promotions the deployments loop is deploying now.
    deploying: Mutex<std::collections::HashSet<i64>>,
    /// What keeps the entry points' sockets through a crash, when started.
    kept_sockets: Option<sockets::Keeper>,
    /// Cancelled once the environments are back after a start: until then
    /// the agents' entry points are not told what to serve.
    environments_back: CancellationToken,
    /// Incidents asked for from below the incidents module (see [`Alarm`]).
    alarms: tokio::sync::mpsc::UnboundedSender<Alarm>,
    shutdown: CancellationToken,
}

struct Entry {
    route: Route,
    /// The address `listen:` asked for (port 0: any), as bound by `listener`.
    listen: std::net::SocketAddr,
    /// None when the local agent serves it alone (`CdConfig::local_agent`).
    listener: Option<Listener>,
    /// The HTTPS `listen:` asked for, as served by `listener`.
    tls: Option<sluice_spec::TlsSpec>,
    /// The limits `listen:` asked for, as `listener` holds clients to.
    limits: sluice_spec::EntryLimits,
    /// The plain listener sending clients on to HTTPS; stops when dropped.
    _redirect: Option<tokio_util::sync::DropGuard>,
    /// What keeps the certificate, when it comes from ACME; stops when dropped.
    keeper: Option<certs::Keeper>,
    telemetry: Telemetry,
    /// The windows of seconds before this are in the store (see [`traffic`]).
    stored_until: u64,
    /// The agents' hosts that serve this entry point too (`hosts:`).
    hosts: Option<sluice_spec::HostsSpec>,
}

#[derive(Clone)]
struct Live {
    service: String,
    env: String,
    /// The deployment (or experiment's deployment) that started it: an
    /// instance belongs to it, never to its release, which A and B may share.
    deployment: i64,
    backend: Arc<Backend>,
    /// Its health check (`run.health`; none: a TCP connect), which the
    /// entry points on hosts run too.
    check: Option<sluice_spec::HealthCheck>,
    checks: CancellationToken,
    /// Why the instance's last health probe failed.
    last_failure: Arc<Mutex<Option<health::Failure>>>,
}

impl Cd {
    /// Starts the engine: reconciles what a previous server left, then looks
    /// at pending promotions now and then.
    pub async fn start(store: Store, config: CdConfig, metrics: Metrics) -> anyhow::Result<Cd> {
        let world = World {
            runtime: Arc::new(LocalRuntime::new(store.clone(), &config.data_dir)),
            clock: Arc::new(SystemClock),
        };
        Cd::start_with(store, config, metrics, world).await
    }

    /// [`Cd::start`] in a given world (tests give a fake runtime and clock).
    pub async fn start_with(
        store: Store,
        config: CdConfig,
        metrics: Metrics,
        world: World,
    ) -> anyhow::Result<Cd> {
        let World { runtime, clock } = world;
        let (alarms, raised) = tokio::sync::mpsc::unbounded_channel();
        let kept_sockets = config.socket_keeper.as_ref().and_then(|program| {
            sockets::Keeper::connect_or_start(&config.data_dir, program)
                .inspect_err(|e| tracing::warn!(error = %e, "could not start the keeper of the entry points' sockets; they close with the server"))
                .ok()
        });
        let inner = Arc::new(Inner {
            kept_sockets,
            layout: Layout::new(&config.data_dir),
            hosts: hosts::Hosts::new(store.clone(), config.agent_lease),
            store,
            config,
            runtime,
            clock,
            metrics,
            entries: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            wanted: Mutex::new(HashMap::new()),
            advancing: tokio::sync::Mutex::new(()),
            asking: tokio::sync::Mutex::new(()),
            deploying: Mutex::default(),
            taking_up: Mutex::default(),
            alarms,
            followed: Mutex::default(),
            environments_back: CancellationToken::new(),
            shutdown: CancellationToken::new(),
        });
        let kept = inner.reconcile().await?;
        // What a kill left unasked is asked for before anyone else may ask
        // (it only writes rows; the loops that act on them start below).
        release_maker::catch_up(&inner).await;
        // Environments come back first, so that no promotion races them.
        let started = inner.clone();
        tokio::spawn(async move {
            started.restart_environments(kept).await;
            started.environments_back.cancel();
            tokio::spawn(heal::keep(started.clone()));
            tokio::spawn(hosts::lost::watch(started.clone()));
            tokio::spawn(deploy::deployer(started.clone()));
            tokio::spawn(experiment::keeper(started.clone()));
            promote::gatekeeper(started).await;
        });
        tokio::spawn(release_maker::keep(inner.clone()));
        tokio::spawn(traffic::keep(inner.clone()));
        tokio::spawn(data::note_use(inner.clone(), inner.config.heal_interval));
        tokio::spawn(incidents::take_alarms(inner.clone(), raised));
        Ok(Cd { inner })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub async fn promote(&self, request: PromoteRequest, actor: &Actor) -> CdResult<PromotionView> {
        promote::request(&self.inner, request, actor).await
    }

    pub async fn promotion(&self, id: i64) -> CdResult<PromotionView> {
        promote::view(&self.inner, id).await
    }

    pub async fn promotions(
        &self,
        service: Option<&str>,
        open_only: bool,
    ) -> CdResult<Vec<PromotionView>> {
        promote::list(&self.inner, service, open_only).await
    }

    pub async fn approve(&self, id: i64, actor: &Actor) -> CdResult<PromotionView> {
        promote::approve(&self.inner, id, actor).await
    }

    pub async fn reject(&self, id: i64, reason: &str, actor: &Actor) -> CdResult<PromotionView> {
        promote::reject(&self.inner, id, reason, actor).await
    }

    pub async fn override_freeze(
        &self,
        id: i64,
        reason: &str,
        actor: &Actor,
    ) -> CdResult<PromotionView> {
        promote::override_freeze(&self.inner, id, reason, actor).await
    }

    /// Deploys the previous release (or `to`) and pins the environment.
    pub async fn rollback(
        &self,
        service: &str,
        env: &str,
        to: Option<i64>,
        actor: &Actor,
    ) -> CdResult<sluice_store::Deployment> {
        deploy::rollback(&self.inner, service, env, to, actor).await
    }

    pub async fn unpin(&self, service: &str, env: &str, actor: &Actor) -> CdResult<()> {
        let state = self
            .inner
            .store
            .env_state(service, env)
            .await?
            .ok_or_else(|| {
                CdError::NotFound(format!("{service} has no environment `{env}` yet"))
            })?;
        if !state.pinned.0 {
            return Err(CdError::Conflict(format!("{env} is not pinned")));
        }
        self.inner
            .store
            .set_pinned(service, env, false, None, &actor.name)
            .await?;
        Ok(())
    }

    /// Takes agent `agent`'s report of its host's instances and answers
    /// what the host is to run (see [`hosts`]). The caller checked that
    /// the agent is the caller's.
    pub async fn host_report(
        &self,
        agent: &str,
        report: &hosts::wire::HostReport,
        wait: Duration,
    ) -> CdResult<hosts::wire::HostWork> {
        Ok(hosts::answer(&self.inner, agent, report, wait).await?)
    }

    /// The files instance `id` starts from on agent `agent`'s host, as a
    /// tar: the release's (`work/`) and its rendered config (`config/`).
    pub async fn hosted_files(&self, agent: &str, id: &str) -> CdResult<Vec<u8>> {
        let inner = &self.inner;
        let placed = inner.store.placement(id).await?;
        if placed.is_none_or(|p| p.agent != agent) {
            return Err(CdError::NotFound(format!(
                "agent `{agent}` runs no instance `{id}`"
            )));
        }
        let instance = inner.store.instance(id).await?;
        let release = inner.layout.release(&instance.service, instance.release)?;
        let config =
            inner
                .layout
                .config(&instance.service, &instance.environment, instance.release)?;
        Ok(
            tokio::task::spawn_blocking(move || hosts::files(&release, &config))
                .await
                .map_err(anyhow::Error::from)??,
        )
    }

    pub async fn status(&self, service: Option<&str>) -> CdResult<Vec<EnvStatus>> {
        view::status(&self.inner, service).await
    }

    /// One environment's facets and rendered config files.
    pub async fn environment(&self, service: &str, env: &str) -> CdResult<EnvDetail> {
        view::detail(&self.inner, service, env).await
    }

    pub async fn diff(&self, service: &str, a: &str, b: &str) -> CdResult<EnvDiff> {
        view::diff(&self.inner, service, a, b).await
    }

    /// The end of an instance's log file.
    pub async fn instance_log(&self, id: &str, max_bytes: u64) -> CdResult<String> {
        self.inner.instance_log(id, max_bytes).await
    }

    /// Starts an experiment of release `number` against what `env` runs, B
    /// with `overrides` on top of the environment's config; it runs in the
    /// background until promoted or rolled back.
    pub async fn start_experiment(
        &self,
        service: &str,
        env: &str,
        number: i64,
        overrides: std::collections::BTreeMap<String, String>,
        goals: Vec<String>,
        actor: &Actor,
    ) -> CdResult<()> {
        if goals.len() > 8 {
            return Err(CdError::Invalid("an experiment has at most 8 goals".into()));
        }
        let given = goals
            .iter()
            .map(|g| sluice_spec::parse_goal(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CdError::Invalid)?;
        let release = self
            .inner
            .store
            .release(service, number)
            .await
            .map_err(|_| CdError::NotFound(format!("{service} has no release v{number}")))?;
        let (_, environment) =
            release::release_env(&release, env).map_err(|e| CdError::Invalid(format!("{e:#}")))?;
        let state = self.inner.store.env_state(service, env).await?;
        let Some(baseline) = state.and_then(|s| s.release_id) else {
            return Err(CdError::Conflict(format!(
                "{env} runs no release yet: there is no A to compare B with; promote one first"
            )));
        };
        let open = self.inner.store.open_experiments(Some(service)).await?;
        if open.iter().any(|x| x.environment == env) {
            return Err(CdError::Conflict(format!(
                "an experiment already runs in {env}"
            )));
        }
        let mut ab = match &environment.strategy {
            sluice_spec::Strategy::Ab(ab) => ab.clone(),
            _ => sluice_spec::AbStrategy::default(),
        };
        // Goals given at the start replace the strategy's.
        if !given.is_empty() {
            ab.goals = given;
        }
        let (inner, actor) = (self.inner.clone(), actor.name.clone());
        tokio::spawn(async move {
            let experiment = deploy::NewExperiment {
                release: &release,
                environment: &environment,
                ab: &ab,
                baseline,
                overrides,
                cause: sluice_store::DeploymentCause::Experiment,
                actor: &actor,
            };
            deploy::experiment(&inner, experiment).await
        });
        Ok(())
    }

    /// Tells an open experiment what a person decided: the command waits in
    /// the store until the experiment takes it (at once when it runs here,
    /// or when it goes on after a restart).
    pub async fn experiment_command(
        &self,
        id: i64,
        command: ExperimentCommand,
        actor: &Actor,
    ) -> CdResult<()> {
        let experiment = self.inner.store.experiment(id).await?;
        if !experiment.is_open() {
            return Err(CdError::Conflict(format!(
                "experiment {id} is {}; it takes no more commands",
                experiment.status
            )));
        }
        self.inner
            .store
            .add_experiment_command(id, command, &actor.name)
            .await?;
        self.inner
            .store
            .wake(sluice_store::Topic::ExperimentCommand)
            .await;
        Ok(())
    }

    /// A goal a service's backend says a user reached (a payment confirmed
    /// by the payment provider, say): counted in the open experiment `id`
    /// for the user of sticky key `user`, once the experiment has exposed
    /// them. Whether it was counted.
    pub async fn record_goal(
        &self,
        id: i64,
        user: &str,
        goal: &str,
        value: Option<f64>,
    ) -> CdResult<bool> {
        if user.is_empty() || user.len() > 256 || !user.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CdError::Invalid(
                "`user` is the user's sticky key (the sluice_key cookie, or the sticky header's value): 1 to 256 visible characters".into(),
            ));
        }
        let report = match value {
            Some(value) => format!("{goal}; value={value}"),
            None => goal.to_string(),
        };
        if sluice_proxy::goals::parse_report(&report).is_none() {
            return Err(CdError::Invalid(
                "a goal is a name of letters, digits, -, _ and . with an optional value from 0 to 1e9".into(),
            ));
        }
        let x = self.inner.store.experiment(id).await?;
        if !x.is_open() {
            return Err(CdError::Conflict(format!(
                "experiment {id} is {}; it counts no more goals",
                x.status
            )));
        }
        let (tracker, on_hosts) = {
            let entries = self.inner.entries.lock().unwrap();
            let entry = entries.get(&(x.service.clone(), x.environment.clone()));
            (
                entry.and_then(|e| e.route.goals()),
                entry.is_some_and(|e| e.hosts.is_some()),
            )
        };
        let Some(tracker) = tracker else {
            return Err(CdError::Conflict(format!(
                "experiment {id} counts no goals: declare `goals` in its strategy"
            )));
        };
        let Some(index) = tracker.index_of(goal) else {
            let names: Vec<&str> = tracker.goals().iter().map(|g| g.name.as_str()).collect();
            return Err(CdError::Invalid(format!(
                "experiment {id} has no goal `{goal}`; it has {}",
                names.join(", ")
            )));
        };
        // The hosts' entry points tell of the users they expose with their
        // next report: a user exposed there a moment ago is waited for.
        let wait = if on_hosts {
            hosts::agent::REPORT_WAIT + Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let deadline = tokio::time::Instant::now() + wait;
        let user = sluice_proxy::goals::user_id(user);
        loop {
            let applied = tracker.applied();
            if tracker.reach(user, index, value) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::select! {
                _ = applied => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// What an open experiment has seen at its current step, before any
    /// decision: requests, errors and latency per variant, against the
    /// step's `min_requests`.
    pub async fn experiment_progress(
        &self,
        x: &sluice_store::Experiment,
    ) -> Option<serde_json::Value> {
        if !x.is_open() {
            return None;
        }
        let release = self.inner.store.release_by_id(x.release_id).await.ok()?;
        let (_, env) = release::release_env(&release, &x.environment).ok()?;
        let min_requests = match &env.strategy {
            sluice_spec::Strategy::Ab(ab) => ab.min_requests,
            _ => sluice_spec::AbStrategy::default().min_requests,
        };
        let since = (x.step_started_at / 1000).max(0) as u64;
        let windows = self.windows(&x.service, &x.environment, since.saturating_sub(1));
        let side = |pick: fn(&sluice_proxy::SecondWindow) -> &sluice_proxy::VariantWindow| {
            let mut total = sluice_proxy::VariantWindow::default();
            windows.iter().for_each(|w| total.merge(pick(w)));
            let ms = |q| total.latency.quantile(q).map(|us| us / 1000.0);
            serde_json::json!({
                "requests": total.requests,
                "errors": total.errors,
                "p50_ms": ms(0.5),
                "p95_ms": ms(0.95),
            })
        };
        Some(serde_json::json!({
            "min_requests": min_requests,
            "a": side(|w| &w.a),
            "b": side(|w| &w.b),
        }))
    }

    /// An environment's per-second windows after `after` (seconds since the epoch).
    pub fn windows(&self, service: &str, env: &str, after: u64) -> Vec<sluice_proxy::SecondWindow> {
        self.inner.windows(service, env, after)
    }

    pub async fn open_incident(
        &self,
        request: OpenRequest,
        actor: &Actor,
    ) -> CdResult<sluice_store::Incident> {
        incidents::open(&self.inner, request, actor).await
    }

    pub async fn incident(&self, id: i64) -> CdResult<IncidentView> {
        incidents::view(&self.inner, id).await
    }

    /// Moves an incident to `mitigated` or `resolved`.
    pub async fn set_incident_status(
        &self,
        id: i64,
        status: sluice_store::IncidentStatus,
        note: Option<&str>,
        actor: &Actor,
    ) -> CdResult<sluice_store::Incident> {
        incidents::transition(&self.inner, id, status, note, actor).await
    }

    /// The postmortem's Markdown: as edited, or the pre-filled template.
    pub async fn postmortem(&self, id: i64) -> CdResult<String> {
        incidents::postmortem(&self.inner, id).await
    }

    pub async fn edit_postmortem(
        &self,
        id: i64,
        text: &str,
        actor: &Actor,
    ) -> CdResult<sluice_store::Incident> {
        incidents::edit_postmortem(&self.inner, id, text, actor).await
    }

    pub async fn add_rule(
        &self,
        request: NewRuleRequest,
        actor: &Actor,
    ) -> CdResult<sluice_store::RuleRecord> {
        rules::add(&self.inner, request, actor).await
    }

    pub async fn disable_rule(
        &self,
        id: i64,
        reason: &str,
        actor: &Actor,
    ) -> CdResult<sluice_store::RuleRecord> {
        rules::disable(&self.inner, id, reason, actor).await
    }

    /// Whether rule `id` would have stopped a past change or release.
    pub async fn replay_rule(&self, id: i64, target: ReplayTarget) -> CdResult<Replay> {
        rules::replay(&self.inner, id, target).await
    }

    /// Stops every instance, for a clean shutdown.
    pub async fn shutdown(&self) {
        self.stop(false).await
    }

    /// Stops for the next server to take over (an upgrade): the entry
    /// points stop accepting and finish what is under way, while their
    /// sockets stay with their keeper, and the instances keep running, to be
    /// adopted; connections made meanwhile wait for the next server.
    pub async fn hand_over(&self) {
        self.stop(true).await
    }

    async fn stop(&self, hand_over: bool) {
        self.inner.shutdown.cancel();
        // Entry points first: the requests under way get their answers from
        // instances still running, then the instances stop.
        let draining: Vec<_> = self
            .inner
            .entries
            .lock()
            .unwrap()
            .values()
            .filter_map(|e| e.listener.as_ref().map(|l| l.shutdown()))
            .collect();
        futures::future::join_all(draining).await;
        traffic::flush(&self.inner, true).await;
        if hand_over && let Some(keeper) = &self.inner.kept_sockets {
            keeper.linger();
            self.inner.runtime.release_all().await;
            return;
        }
        // A clean stop closes the entry points for good.
        if let Some(keeper) = &self.inner.kept_sockets {
            keeper.quit();
        }
        if let Err(e) = hosts::stop_local(&self.inner).await {
            tracing::warn!(error = %format!("{e:#}"), "could not stop the local agent's instances");
        }
        self.inner.runtime.stop_all().await;
    }
}

impl Inner {
    /// The end of an instance's log file, with the secrets it was given shown as `***`.
    async fn instance_log(&self, id: &str, max_bytes: u64) -> CdResult<String> {
        let instance = self.store.instance(id).await?;
        let path = self
            .layout
            .instance_log(&instance.service, &instance.environment, id)?;
        let text = tokio::fs::read(&path)
            .await
            .map_err(|e| CdError::NotFound(format!("no log for {id}: {e}")))?;
        let start = text.len().saturating_sub(max_bytes as usize);
        let text = String::from_utf8_lossy(&text[start..]).into_owned();
        let release = self.store.release_by_id(instance.release_id).await?;
        let secrets = self.store.secrets(release.repo_id).await?;
        let masker = sluice_ci::logs::Masker::new(secrets.into_values().map(|s| s.value).collect());
        Ok(text.lines().map(|l| masker.mask(l) + "\n").collect())
    }

    /// Asks for an incident from below the incidents module.
    fn raise(&self, alarm: Alarm) {
        let _ = self.alarms.send(alarm);
    }

    /// Notes that `number` is the release last asked for in the environment.
    fn want(&self, service: &str, env: &str, number: i64) {
        self.wanted
            .lock()
            .unwrap()
            .insert((service.to_string(), env.to_string()), number);
    }

    /// Forgets the request for `number` once its deployment has ended.
    fn wanted_done(&self, service: &str, env: &str, number: i64) {
        let mut wanted = self.wanted.lock().unwrap();
        let key = (service.to_string(), env.to_string());
        if wanted.get(&key) == Some(&number) {
            wanted.remove(&key);
        }
    }

    /// A release newer than `number`, asked for in the environment last.
    fn superseded_by(&self, service: &str, env: &str, number: i64) -> Option<i64> {
        self.wanted
            .lock()
            .unwrap()
            .get(&(service.to_string(), env.to_string()))
            .copied()
            .filter(|newest| *newest > number)
    }

    /// The user an environment's instances, seeds and replays run as, if any.
    /// How often an instance's process exited, wherever it runs.
    fn exits(&self, id: &str) -> u32 {
        if self.hosts.runs(id) {
            self.hosts.exits(id)
        } else {
            self.runtime.exits(id)
        }
    }

    /// Stops an instance's process, wherever it runs.
    async fn stop_process(&self, id: &str) {
        if self.hosts.runs(id) {
            self.hosts.stop(id).await;
        } else {
            self.runtime.stop(id).await;
        }
    }

    fn env_uid(&self, service: &str, env: &str) -> Option<u32> {
        sluice_ci::sandbox::env_uid(service, env, self.config.isolation)
    }

    /// The turn of the environment experiment `id` runs in.
    async fn env_lock_of_experiment(&self, id: i64) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let x = self.store.experiment(id).await.ok()?;
        Some(self.env_lock(&x.service, &x.environment))
    }

    /// Held by a deployment, or by an experiment while it is followed.
    fn env_lock(&self, service: &str, env: &str) -> Arc<tokio::sync::Mutex<()>> {
        per_env(&self.locks, service, env)
    }

    /// Held by the deployment whose turn is next (see `deploy::turn`).
    fn env_queue(&self, service: &str, env: &str) -> Arc<tokio::sync::Mutex<()>> {
        per_env(&self.queues, service, env)
    }

    /// The route of an environment, binding its listener the first time,
    /// and again at the new address when a release moves it (the new one
    /// is bound before the old is released). An address belongs to one
    /// environment of one service: another's claim is refused.
    async fn route(&self, service: &str, env: &sluice_spec::Environment) -> anyhow::Result<Route> {
        self.route_with(service, env, &[], None).await
    }

    /// [`Inner::route`], with `first` routed (and `split` set, when given)
    /// before its listener answers anything: instances kept through a
    /// restart, whose entry point must not answer 503 in between, nor send
    /// an experiment's B users to A.
    async fn route_with(
        &self,
        service: &str,
        env: &sluice_spec::Environment,
        first: &[Arc<sluice_proxy::Backend>],
        split: Option<sluice_proxy::Split>,
    ) -> anyhow::Result<Route> {
        let key = (service.to_string(), env.name.clone());
        let existing = {
            let entries = self.entries.lock().unwrap();
            if let Some(owner) = owner_of(&entries, &key, env.listen) {
                anyhow::bail!(
                    "{} is already the entry point of {} {}; give {service} {} an address of its own in `listen:`",
                    env.listen,
                    owner.0,
                    owner.1,
                    env.name
                );
            }
            let here = self.local_agent_for(env).is_none();
            entries.get(&key).map(|e| {
                let same = e.listen == env.listen
                    && e.tls == env.tls
                    && e.limits == env.limits
                    && e.listener.is_some() == here;
                (e.route.clone(), e.telemetry.clone(), same)
            })
        };
        let add_first = |route: &Route| {
            if split.is_some() {
                route.set_split(split.clone());
            }
            first.iter().for_each(|b| route.add(b.clone()));
        };
        let (route, telemetry) = match existing {
            Some((route, _, true)) => {
                add_first(&route);
                if let Some(entry) = self.entries.lock().unwrap().get_mut(&key) {
                    entry.hosts = self.hosts_of(env);
                }
                return Ok(route);
            }
            Some((route, telemetry, false)) => (route, telemetry),
            None => {
                let access_log = self.layout.access_log(service, &env.name)?;
                let clock = self.clock.clone();
                let telemetry = Telemetry::with_clock(
                    service,
                    &env.name,
                    self.metrics.clone(),
                    Some(sluice_proxy::AccessLog::new(access_log)),
                    Arc::new(move || clock.unix_ms().max(0) as u64 / 1000),
                );
                (Route::default(), telemetry)
            }
        };
        add_first(&route);
        if self.local_agent_for(env).is_some() {
            self.leave_to_local_agent(key, env, route.clone(), telemetry);
            return Ok(route);
        }
        let (certificates, keeper) = self.certificates(service, env)?;
        let limits = entry_limits(&env.limits, self.config.drain_timeout);
        // At the same address, the new listener takes over the old one's
        // sockets, so that no connection waiting to be accepted is reset.
        let replaced = {
            let entries = self.entries.lock().unwrap();
            let same_address = entries.get(&key).filter(|e| e.listen == env.listen);
            let listening = same_address.and_then(|e| e.listener.as_ref());
            listening.map(|listener| {
                listener.replace(
                    route.clone(),
                    &env.name,
                    telemetry.clone(),
                    limits,
                    certificates.clone(),
                )
            })
        };
        let listener = match replaced {
            Some(replaced) => replaced,
            None => match self.kept_sockets_of(service, env) {
                // What a previous server listened on, with what waits in it.
                Some(kept) => Listener::from_sockets(
                    kept,
                    route.clone(),
                    &env.name,
                    telemetry.clone(),
                    limits,
                    certificates,
                ),
                None => {
                    Listener::bind_tls(
                        env.listen,
                        route.clone(),
                        &env.name,
                        telemetry.clone(),
                        limits,
                        certificates,
                    )
                    .await
                }
            },
        }
        .map_err(|e| {
            anyhow::anyhow!(
                "could not listen on {} for {}: {e}; is the address taken?",
                env.listen,
                env.name
            )
        })?;
        let redirect = match env.tls.as_ref().and_then(|t| t.redirect_from) {
            Some(from) => {
                let stop = tokio_util::sync::CancellationToken::new();
                let challenges = keeper.as_ref().map(|k| k.challenges.clone());
                sluice_proxy::redirect_to_https(
                    from,
                    listener.addr.port(),
                    challenges,
                    stop.clone(),
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "could not listen on {from} to send {} on to HTTPS: {e}",
                        env.name
                    )
                })?;
                Some(stop.drop_guard())
            }
            None => None,
        };
        tracing::info!(service, env = %env.name, addr = %listener.addr, "environment entry point listening");
        if let Some(keeper) = &self.kept_sockets
            && let Err(e) = keeper.put(&sockets_key(service, &env.name), listener.sockets())
        {
            tracing::warn!(service, env = %env.name, error = %e, "could not give the entry point's sockets to their keeper; they close with the server");
        }
        let mut entries = self.entries.lock().unwrap();
        // Claimed meanwhile by another environment: its claim came first.
        if let Some(owner) = owner_of(&entries, &key, env.listen) {
            anyhow::bail!(
                "{} was claimed meanwhile by {} {}",
                env.listen,
                owner.0,
                owner.1
            );
        }
        match entries.get_mut(&key) {
            // The old listener is dropped here, after the new one listens.
            Some(entry) => {
                entry.listen = env.listen;
                entry.listener = Some(listener);
                entry.tls = env.tls.clone();
                entry.limits = env.limits;
                entry._redirect = redirect;
                entry.keeper = keeper;
                entry.hosts = self.hosts_of(env);
            }
            None => {
                entries.insert(
                    key,
                    Entry {
                        route: route.clone(),
                        listen: env.listen,
                        listener: Some(listener),
                        tls: env.tls.clone(),
                        limits: env.limits,
                        _redirect: redirect,
                        keeper,
                        telemetry,
                        stored_until: 0,
                        hosts: self.hosts_of(env),
                    },
                );
            }
        }
        Ok(route)
    }

    /// The agents `env`'s instances run on: those its `hosts:` select, or
    /// the local agent for an environment it serves; none: this process.
    fn hosts_of(&self, env: &sluice_spec::Environment) -> Option<sluice_spec::HostsSpec> {
        env.hosts
            .clone()
            .or_else(|| self.local_agent_for(env).cloned())
    }

    /// The local agent, when `env` runs there and only there: it has no
    /// `hosts:` of its own, and its certificate is not ACME's, whose
    /// challenges only this process answers.
    fn local_agent_for(&self, env: &sluice_spec::Environment) -> Option<&sluice_spec::HostsSpec> {
        let local = self.config.local_agent.as_ref()?;
        (env.hosts.is_none() && !env.acme()).then_some(local)
    }

    /// Makes `env`'s entry point the local agent's alone: this process
    /// routes and counts for it but listens nowhere, and lets its former
    /// listener and kept sockets go so that the agent can bind the address.
    fn leave_to_local_agent(
        &self,
        key: EnvKey,
        env: &sluice_spec::Environment,
        route: Route,
        telemetry: Telemetry,
    ) {
        if let Some(keeper) = &self.kept_sockets {
            let _ = keeper.drop_key(&sockets_key(&key.0, &key.1));
        }
        let mut entries = self.entries.lock().unwrap();
        let entry = entries.entry(key).or_insert_with(|| Entry {
            route,
            listen: env.listen,
            listener: None,
            tls: None,
            limits: env.limits,
            _redirect: None,
            keeper: None,
            telemetry,
            stored_until: 0,
            hosts: None,
        });
        entry.listen = env.listen;
        entry.tls = env.tls.clone();
        entry.limits = env.limits;
        entry.hosts = self.hosts_of(env);
        entry._redirect = None;
        entry.keeper = None;
        // Dropped, it stops accepting; what it accepted is answered.
        if let Some(listener) = entry.listener.take() {
            tokio::spawn(listener.shutdown());
        }
    }

    /// The sockets a previous server's entry point listened on, kept
    /// through its crash, when they are at the address `listen:` asks for.
    fn kept_sockets_of(
        &self,
        service: &str,
        env: &sluice_spec::Environment,
    ) -> Option<Vec<std::net::TcpListener>> {
        let keeper = self.kept_sockets.as_ref()?;
        let key = sockets_key(service, &env.name);
        let kept = keeper
            .take(&key)
            .inspect_err(|e| tracing::warn!(service, env = %env.name, error = %e, "could not ask the keeper for the entry point's sockets; it listens afresh"))
            .ok()
            .filter(|k| !k.is_empty())?;
        let at = kept[0].local_addr().ok()?;
        let wanted = env.listen;
        if sockets::serve_as(at, wanted) {
            tracing::info!(service, env = %env.name, addr = %at, "the entry point takes back the sockets a previous server listened on");
            Some(kept)
        } else {
            // The address changed meanwhile: those sockets are done.
            let _ = keeper.drop_key(&key);
            None
        }
    }

    /// The certificates `tls:` asks for: files read now (an error names the
    /// one that does not load), or ACME's, with their keeper started.
    fn certificates(
        &self,
        service: &str,
        env: &sluice_spec::Environment,
    ) -> anyhow::Result<(
        Option<Arc<sluice_proxy::tls::Certificates>>,
        Option<certs::Keeper>,
    )> {
        use sluice_proxy::tls::{CertFiles, Certificates};
        let Some(tls) = &env.tls else {
            return Ok((None, None));
        };
        match &tls.certs {
            sluice_spec::CertSource::Files(files) => {
                let files = files
                    .iter()
                    .map(|c| CertFiles {
                        cert: c.cert.clone(),
                        key: c.key.clone(),
                    })
                    .collect();
                let certificates = Certificates::load(files)
                    .map_err(|e| anyhow::anyhow!("could not serve HTTPS for {}: {e}", env.name))?;
                Ok((Some(certificates), None))
            }
            sluice_spec::CertSource::Acme(acme) => {
                let files = certs::AcmeFiles {
                    dir: self.layout.acme(service, &env.name)?,
                };
                let keeper = certs::start(self.store.clone(), service, &env.name, acme, files)
                    .map_err(|e| {
                        anyhow::anyhow!("could not keep ACME certificates for {}: {e}", env.name)
                    })?;
                Ok((Some(keeper.certificates.clone()), Some(keeper)))
            }
        }
    }

    /// What the ACME keeper of an environment's entry point last saw.
    fn certificate_status(&self, service: &str, env: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap();
        let entry = entries.get(&(service.to_string(), env.to_string()))?;
        entry.keeper.as_ref().map(|k| k.status())
    }

    /// The address an environment's entry point was asked for and the one it is bound to.
    fn entry_point(
        &self,
        service: &str,
        env: &str,
    ) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        let entries = self.entries.lock().unwrap();
        let key = (service.to_string(), env.to_string());
        let entry = entries.get(&key)?;
        let bound = match &entry.listener {
            Some(listener) => listener.addr,
            // The local agent's, as it reports it.
            None => {
                self.hosts
                    .entries
                    .points(&key, self.hosts.lease)
                    .first()?
                    .address
            }
        };
        Some((entry.listen, bound))
    }

    /// The version of the routing table the hosts of `key` are sent now;
    /// none when it runs on no agent's host.
    fn hosts_table_version(&self, key: &EnvKey) -> Option<String> {
        let entries = self.entries.lock().unwrap();
        let entry = entries.get(key).filter(|e| e.hosts.is_some())?;
        let count = *entry.route.watch().borrow();
        Some(self.hosts.version(count))
    }

    /// The environments on hosts whose `hosts:` `matches`, with their
    /// routes; `None` until the environments are back after a start.
    fn served_by(
        &self,
        matches: impl Fn(&sluice_spec::HostsSpec) -> bool,
    ) -> Option<Vec<hosts::Served>> {
        if !self.environments_back.is_cancelled() {
            return None;
        }
        let entries = self.entries.lock().unwrap();
        let live = self.live.lock().unwrap();
        let check_of = |id: &str| {
            let check = live.get(id)?.check.clone();
            Some(hosts::wire::HostCheck::of(
                &check.unwrap_or_else(sluice_spec::HealthCheck::connect_only),
            ))
        };
        let mut served: Vec<hosts::Served> = entries
            .iter()
            .filter(|(_, e)| e.hosts.as_ref().is_some_and(&matches))
            .map(|(key, e)| hosts::Served {
                key: key.clone(),
                listen: match &e.listener {
                    Some(listener) => hosts::Listen::Port(listener.addr.port()),
                    None => hosts::Listen::At(e.listen),
                },
                checks: (e.route.backends().iter())
                    .filter_map(|b| Some((b.id.clone(), check_of(&b.id)?)))
                    .collect(),
                route: e.route.clone(),
                limits: hosts::wire::HostLimits::of(&entry_limits(
                    &e.limits,
                    self.config.drain_timeout,
                )),
                tls: e.tls.as_ref().and_then(|tls| match &tls.certs {
                    sluice_spec::CertSource::Files(paths) => {
                        Some((paths.clone(), tls.redirect_from.map(|a| a.port())))
                    }
                    sluice_spec::CertSource::Acme(_) => None,
                }),
            })
            .collect();
        served.sort_by(|a, b| a.key.cmp(&b.key));
        Some(served)
    }

    /// Adds what an agent's entry point counted to its environment's: its
    /// windows, and its goal events when the experiment's tracker is the
    /// one they were counted for.
    fn absorb(&self, fresh: hosts::entries::Fresh) {
        let (telemetry, goals) = match self.entries.lock().unwrap().get(&fresh.key) {
            Some(entry) => (entry.telemetry.clone(), entry.route.goals()),
            None => return,
        };
        telemetry.absorb(&fresh.windows);
        if let Some(tracker) = goals.filter(|t| t.id() == fresh.tracker) {
            fresh.goals.iter().for_each(|event| tracker.apply(event));
        }
    }

    /// The first second (before `now`) whose traffic may not be in yet from
    /// every entry point of the environment: the hosts' come a report late.
    fn complete_before(&self, service: &str, env: &str, now: u64) -> u64 {
        let key = (service.to_string(), env.to_string());
        self.hosts
            .entries
            .complete_before(&key, now, self.hosts.lease)
    }

    fn windows(&self, service: &str, env: &str, after: u64) -> Vec<sluice_proxy::SecondWindow> {
        let entries = self.entries.lock().unwrap();
        entries
            .get(&(service.to_string(), env.to_string()))
            .map(|e| e.telemetry.windows_after(after))
            .unwrap_or_default()
    }

    /// Each environment with its telemetry and the second from which its
    /// windows are not in the store yet.
    fn unstored(&self) -> Vec<(EnvKey, Telemetry, u64)> {
        let entries = self.entries.lock().unwrap();
        entries
            .iter()
            .map(|(key, e)| (key.clone(), e.telemetry.clone(), e.stored_until))
            .collect()
    }

    fn stored_until(&self, key: &EnvKey, until: u64) {
        if let Some(entry) = self.entries.lock().unwrap().get_mut(key) {
            entry.stored_until = until;
        }
    }

    fn stored_through(&self, service: &str, env: &str) -> u64 {
        let entries = self.entries.lock().unwrap();
        entries
            .get(&(service.to_string(), env.to_string()))
            .map_or(0, |e| e.stored_until)
    }

    fn live_in(&self, service: &str, env: &str) -> Vec<Live> {
        self.live
            .lock()
            .unwrap()
            .values()
            .filter(|l| l.service == service && l.env == env)
            .cloned()
            .collect()
    }
}

/// The lock of one (service, environment) in `locks`, made on first use.
fn per_env(
    locks: &Mutex<HashMap<EnvKey, Arc<tokio::sync::Mutex<()>>>>,
    service: &str,
    env: &str,
) -> Arc<tokio::sync::Mutex<()>> {
    locks
        .lock()
        .unwrap()
        .entry((service.to_string(), env.to_string()))
        .or_default()
        .clone()
}

/// A controller's loop: a pass at once (after a restart, its first), then
/// one each time `topic` is woken and at each tick, until the server stops.
async fn every_pass(
    inner: Arc<Inner>,
    topic: sluice_store::Topic,
    pass: impl AsyncFn(&Arc<Inner>),
) {
    loop {
        // Made before the pass, so that a wake-up during it is not missed.
        let woken = inner.store.woken(topic);
        pass(&inner).await;
        tokio::select! {
            _ = tokio::time::sleep(inner.config.gate_interval) => {}
            _ = woken => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}
