//! The server: the JSON API under `/api/v1` (axum), live events over SSE,
//! authentication, and the wiring of the store and the CI and CD engines.

mod access;
mod api;
pub mod auth;
mod data_dir;
mod error;
mod ids;
mod lease;
mod limit;
mod listen;
pub mod local_agent;
mod metrics;
mod relay;
mod standby;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use sluice_ci::{Ci, CiConfig};
use sluice_deploy::{Cd, CdConfig};
use sluice_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ApiResult};
pub use metrics::metrics_page;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Every Prometheus metric the server exposes at `/metrics`.
    pub registry: Arc<prometheus_client::registry::Registry>,
    pub ci: Ci,
    pub cd: Cd,
    pub tokens: Arc<auth::Tokens>,
    /// The web UI's signed-in browsers.
    pub sessions: Arc<ui::Sessions>,
    /// The dashboard's address as people reach it, for links in messages.
    pub public_url: String,
    /// The data directory whose local agent serves entry points for this
    /// server: their metrics are part of its `/metrics`.
    pub local_agent: Option<PathBuf>,
}

impl axum::extract::FromRef<AppState> for Store {
    fn from_ref(state: &AppState) -> Store {
        state.store.clone()
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .nest("/api/v1", api::routes())
        .merge(ui::routes())
        .route("/metrics", axum::routing::get(metrics::page))
        .layer(axum::middleware::map_response(security_headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// What every answer tells the browser: run only our own scripts and
/// styles (no inline script), never sniff a type, never be framed, and
/// send no address of ours elsewhere.
pub(crate) async fn security_headers(
    mut response: axum::response::Response,
) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// How `sluice serve` was asked to run.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `None` means SQLite under the data directory.
    pub database: Option<String>,
    pub poll_interval: Duration,
    pub parallelism: Option<usize>,
    pub keep_workspaces: bool,
    /// Whether steps and instances run as users of their own (when the server is root).
    pub isolation: sluice_ci::sandbox::Isolation,
    /// The most of each run's log that is kept, in bytes.
    pub log_cap: u64,
    /// The dashboard's address in notifications; `http://LISTEN` when not given.
    pub public_url: Option<String>,
    /// How long an agent may be silent before its jobs are taken back.
    pub agent_lease: Duration,
    /// Jobs without `runs_on:` run on any agent, never on this host.
    pub jobs_on_agents: bool,
    /// With PostgreSQL: how long the controllers' lease lasts unless
    /// renewed (another server takes over within it after this one dies).
    pub controller_lease: Duration,
    /// With PostgreSQL: where the other servers forward requests while this
    /// one runs the controllers; `http://LISTEN` by default.
    pub advertise: Option<String>,
    /// This binary, whose `keep-sockets` keeps the entry points' sockets
    /// through a crash of the server; none: they close with it.
    pub socket_keeper: Option<PathBuf>,
    /// Run the environments without `hosts:` on a local agent, a process
    /// of its own that outlives this one (`--local-agent`).
    pub local_agent: Option<local_agent::LocalAgent>,
}

/// A server bound to its address, ready to serve.
pub struct Server {
    pub addr: SocketAddr,
    /// Set on the first start only: print it once.
    pub initial_admin_token: Option<String>,
    pub database: String,
    listener: TcpListener,
    store: Store,
    options: ServeOptions,
    data_dir: PathBuf,
    /// The engines, once this server runs the controllers.
    active: Option<Active>,
    /// With PostgreSQL: this server's part in the controllers' lease.
    candidate: Option<lease::Candidate>,
}

/// How a server stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Everything: the entry points close and the instances stop.
    Everything,
    /// For the next server (an upgrade): the entry points finish what is
    /// under way and their sockets stay with their keeper; the instances
    /// keep running, for the next server to adopt.
    HandOver,
}

/// What a server that runs the controllers has: its engines, and the
/// lease's term it holds (with PostgreSQL).
struct Active {
    state: AppState,
    notifier: sluice_notify::Notifier,
    term: Option<i64>,
}

impl Server {
    /// Opens the store (running migrations) and binds. With SQLite, or with
    /// PostgreSQL when no other server holds the controllers' lease, it
    /// recovers and starts the engines; otherwise it stands by (see
    /// [`Server::standing_by`]).
    pub async fn start(options: ServeOptions) -> anyhow::Result<Server> {
        let data_dir = data_dir::prepare(&options.data_dir, options.database.is_none())?;
        data_dir::check_reachable(&data_dir, options.isolation)?;
        let database = options
            .database
            .clone()
            .unwrap_or_else(|| Store::sqlite_url(&data_dir));
        let store = Store::connect(&database)
            .await
            .with_context(|| format!("could not open the database {}", redact(&database)))?;
        let listener = TcpListener::bind(options.listen).await.with_context(|| {
            format!(
                "could not listen on {}; is another server running there? (--listen ADDR)",
                options.listen
            )
        })?;
        let addr = listener.local_addr()?;
        let candidate = match store.dialect() {
            sluice_store::Dialect::Postgres => {
                let address = options
                    .advertise
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}"));
                let name = data_dir::server_name(&data_dir)?;
                Some(lease::Candidate::new(
                    name,
                    address,
                    options.controller_lease,
                ))
            }
            sluice_store::Dialect::Sqlite => None,
        };
        let term = match &candidate {
            Some(candidate) => candidate.try_take(&store).await?,
            None => None,
        };
        let active = if candidate.is_none() || term.is_some() {
            Some(activate(&store, &options, &data_dir, addr, term).await?)
        } else {
            None
        };
        let initial_admin_token = match &active {
            Some(active) => auth::ensure_initial_admin(&active.state, &data_dir)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?,
            None => None,
        };
        // After the admin's token: the first token made is the admin's.
        if let Some(active) = &active {
            start_local_agent(&active.state, &options, &data_dir, addr).await?;
        }
        Ok(Server {
            addr,
            initial_admin_token,
            database: redact(&database),
            listener,
            store,
            options,
            data_dir,
            active,
            candidate,
        })
    }

    /// Where the local agent logs, when this server runs one.
    pub fn local_agent_log(&self) -> Option<PathBuf> {
        let running = self.active.is_some() && self.options.local_agent.is_some();
        running.then(|| local_agent::log_path(&self.data_dir))
    }

    /// Whether another server runs the controllers: this one forwards
    /// every request to it, and takes over when it stops or dies.
    pub fn standing_by(&self) -> bool {
        self.active.is_none()
    }

    /// The HTTP surface over this server's state, for tests that call handlers directly.
    pub fn router(&self) -> Router {
        router(self.state().clone())
    }

    /// The engines' state of a server that runs the controllers.
    pub fn state(&self) -> &AppState {
        &self
            .active
            .as_ref()
            .expect("a server standing by has no engines")
            .state
    }

    /// Serves until `shutdown` resolves, then stops the engines and gives
    /// the controllers' lease up. Fails at once, without draining, when
    /// another server took the lease over: this one must stop acting.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.run_until(async move {
            shutdown.await;
            Stop::Everything
        })
        .await
    }

    /// [`Server::run`], stopping as `shutdown` says.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = Stop> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            store,
            options,
            data_dir,
            active,
            candidate,
            addr,
            ..
        } = self;
        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let local_agent = (options.local_agent.clone(), data_dir.clone());
        let slot = Arc::new(tokio::sync::Mutex::new(active));
        let peers = match &candidate {
            Some(_) => Some(Arc::new(standby::Vouch::new(&store.peer_secret().await?))),
            None => None,
        };
        if let Some(candidate) = &candidate {
            tokio::spawn(lease::say_up(
                store.clone(),
                candidate.clone(),
                stop.clone(),
            ));
        }
        let router = match (&candidate, &peers) {
            (Some(candidate), Some(peers)) => {
                let events = relay::start(store.clone(), stop.clone());
                let switch = standby::Switch::new(
                    store.clone(),
                    candidate.holder.clone(),
                    peers.clone(),
                    events,
                );
                let held = slot
                    .lock()
                    .await
                    .as_ref()
                    .map(|a| (a.state.clone(), a.term));
                match held {
                    Some((state, Some(term))) => {
                        switch.serve_own(router(state));
                        let (candidate, store) = (candidate.clone(), store.clone());
                        let (stop, lost) = (stop.clone(), lost.clone());
                        tokio::spawn(async move { candidate.keep(store, term, stop, lost).await });
                    }
                    _ => {
                        let takeover = Takeover {
                            candidate: candidate.clone(),
                            store: store.clone(),
                            options,
                            data_dir,
                            addr,
                            slot: slot.clone(),
                            switch: switch.clone(),
                        };
                        tokio::spawn(takeover.wait(stop.clone(), lost.clone()));
                    }
                }
                switch.router()
            }
            _ => router(slot.lock().await.as_ref().expect("started").state.clone()),
        };
        // CI stops first: agents' long polls answer at once instead of
        // holding the graceful drain of connections.
        let stopping = (slot.clone(), stop.clone());
        let handing_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asked = handing_over.clone();
        let shutdown = async move {
            if let Stop::HandOver = shutdown.await {
                asked.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            stopping.1.cancel();
            if let Some(active) = stopping.0.lock().await.as_ref() {
                active.state.ci.shutdown();
            }
        };
        tokio::select! {
            _ = listen::serve(listener, router, listen::Limits::default(), peers, shutdown) => {}
            _ = lost.cancelled() => anyhow::bail!(
                "this server lost the controllers' lease (another server runs them now, or the database could not be reached to renew it); it stops at once so that only one server acts"
            ),
        }
        let active = slot.lock().await.take();
        if let Some(active) = active {
            if handing_over.load(std::sync::atomic::Ordering::SeqCst) {
                active.state.cd.hand_over().await;
            } else {
                active.state.cd.shutdown().await;
                if let (Some(agent), data_dir) = &local_agent {
                    local_agent::stop(data_dir, agent).await;
                }
            }
            active.notifier.shutdown().await;
            if let (Some(candidate), Some(term)) = (&candidate, active.term)
                && let Err(e) = store.release_controllers(&candidate.holder, term).await
            {
                tracing::warn!(error = %e, "could not give the controllers' lease up");
            }
        }
        if let Some(candidate) = &candidate
            && !handing_over.load(std::sync::atomic::Ordering::SeqCst)
        {
            let _ = store.forget_server(&candidate.holder).await;
        }
        Ok(())
    }
}

/// A standby's wait for the controllers' lease, and what it does once it
/// has it: the engines start (a restart's recovery, as after a crash) and
/// the switch answers with this server's own router.
struct Takeover {
    candidate: lease::Candidate,
    store: Store,
    options: ServeOptions,
    data_dir: PathBuf,
    addr: SocketAddr,
    slot: Arc<tokio::sync::Mutex<Option<Active>>>,
    switch: standby::Switch,
}

impl Takeover {
    async fn wait(self, stop: CancellationToken, lost: CancellationToken) {
        let Some(term) = self.candidate.wait_to_take(&self.store, &stop).await else {
            return;
        };
        let (candidate, store) = (self.candidate.clone(), self.store.clone());
        let renewing = (stop.clone(), lost.clone());
        tokio::spawn(async move { candidate.keep(store, term, renewing.0, renewing.1).await });
        let mut slot = self.slot.lock().await;
        match activate(
            &self.store,
            &self.options,
            &self.data_dir,
            self.addr,
            Some(term),
        )
        .await
        {
            Ok(active) => {
                let local =
                    start_local_agent(&active.state, &self.options, &self.data_dir, self.addr)
                        .await;
                if let Err(e) = local {
                    tracing::error!(error = %format!("{e:#}"), "could not start the local agent");
                }
                self.switch.serve_own(router(active.state.clone()));
                *slot = Some(active);
                tracing::info!(term, "took the controllers over");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "could not start the engines after taking the controllers over");
                lost.cancel();
            }
        }
    }
}

/// Starts the local agent, when asked for, reaching this server at `addr`.
async fn start_local_agent(
    state: &AppState,
    options: &ServeOptions,
    data_dir: &std::path::Path,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let Some(agent) = &options.local_agent else {
        return Ok(());
    };
    let host = match addr.ip() {
        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    };
    let url = format!("http://{}", SocketAddr::new(host, addr.port()));
    let name = data_dir::server_name(data_dir)?;
    local_agent::ensure(state, agent, data_dir, &name, &url).await
}

/// Recovers what a previous holder left and starts the engines.
async fn activate(
    store: &Store,
    options: &ServeOptions,
    data_dir: &std::path::Path,
    addr: SocketAddr,
    term: Option<i64>,
) -> anyhow::Result<Active> {
    let mut config = CiConfig::new(data_dir, &format!("http://{addr}"));
    config.poll_interval = options.poll_interval;
    config.keep_workspaces = options.keep_workspaces;
    config.isolation = options.isolation;
    config.log_cap = options.log_cap;
    config.agent_lease = options.agent_lease;
    config.jobs_on_agents = options.jobs_on_agents;
    if let Some(parallelism) = options.parallelism {
        config.parallelism = parallelism;
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = sluice_proxy::Metrics::register(&mut registry);
    let mut cd_config = CdConfig::new(data_dir);
    cd_config.isolation = options.isolation;
    cd_config.socket_keeper = options.socket_keeper.clone();
    cd_config.agent_lease = options.agent_lease;
    if options.local_agent.is_some() {
        let name = data_dir::server_name(data_dir)?;
        cd_config.local_agent = Some(local_agent::selector(&name));
    }
    let cd = Cd::start(store.clone(), cd_config, metrics).await?;
    let ci = Ci::start(store.clone(), config).await?;
    let public_url = options
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let notifier = sluice_notify::Notifier::start(
        store.clone(),
        sluice_notify::NotifyConfig {
            public_url: public_url.clone(),
            tick: Duration::from_millis(250),
        },
    );
    Ok(Active {
        state: AppState {
            store: store.clone(),
            registry: Arc::new(registry),
            ci,
            cd,
            tokens: Arc::default(),
            sessions: Arc::default(),
            public_url,
            local_agent: options.local_agent.as_ref().map(|_| data_dir.to_path_buf()),
        },
        notifier,
        term,
    })
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:pw@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            super::redact("sqlite:///x/sluice.db"),
            "sqlite:///x/sluice.db"
        );
    }
}
