//! The agent's entry points: one per environment its host serves, at the
//! host's address and the port of the environment's `listen:`, routing by
//! the server's table. Each counts its traffic in windows of seconds,
//! sent with the agent's reports until the server has taken them, and
//! keeps an access log on the host (`envs/SERVICE/ENV/access.log` in the
//! agent's data directory, as the server's entry points do). When the
//! server is out of reach, they go on routing by the last table. Their
//! sockets are kept by `sluice keep-sockets` (as the server's are), so that
//! through a kill -9 or a hand-over of the agent clients wait in them
//! instead of being refused, and the next agent process answers them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sluice_proxy::goals::{self, GoalEvent, GoalTracker};
use sluice_proxy::{AccessLog, Listener, Metrics, Route, Telemetry};

use super::checks::Checks;
use super::tls;
use super::wire::{
    EntryReport, GoalsReport, HostEntry, HostLimits, HostTls, MAX_GOAL_EVENTS, MAX_WINDOWS,
};
use crate::EnvKey;
use crate::incidents::failures::{self, FailureCount, FailureTail};
use crate::sockets::Keeper;

struct EntryPoint {
    listen: SocketAddr,
    listener: Listener,
    route: Route,
    telemetry: Telemetry,
    /// The version of the table it routes by.
    version: String,
    /// Its seconds before this the server has taken.
    sent_through: u64,
    /// What its goals tracker counted that the server has not taken.
    goals: GoalQueue,
    /// This host's own checks of the instances it routes to.
    checks: Checks,
    /// What its listener holds clients to.
    limits: HostLimits,
    /// The HTTPS it serves, as the server last sent it.
    tls: Option<HostTls>,
    /// The plain listener sending clients on to HTTPS, on its port; stops
    /// when dropped.
    redirect: Option<(u16, tokio_util::sync::DropGuard)>,
    /// What failed lately, as its access log grows.
    failures: FailureTail,
}

impl EntryPoint {
    /// What failed most lately at it, as much as a report carries.
    fn recent_failures(&mut self) -> Vec<FailureCount> {
        self.failures
            .read()
            .into_iter()
            .filter(|f| f.request.len() <= failures::MAX_REQUEST_CHARS)
            .take(failures::MAX_REPORTED)
            .collect()
    }
}

/// Routes `route` by `entry`'s table, where this host's `checks` agree,
/// and checks the instances it names.
fn follow(route: &Route, checks: &Checks, entry: &HostEntry) -> Result<(), String> {
    let mut table = entry.table.clone();
    checks.filter(&mut table);
    route.apply(&table)?;
    checks.keep_checking(route, &entry.checks);
    Ok(())
}

/// A host's goal events for the server's tracker `tracker`, numbered from
/// `first`: taken from the entry point's tracker, sent until the server
/// has them.
#[derive(Default)]
struct GoalQueue {
    tracker: u64,
    first: u64,
    events: VecDeque<GoalEvent>,
}

impl GoalQueue {
    /// Adds what `tracker` counted since; a new experiment's starts afresh.
    fn fill(&mut self, tracker: Option<Arc<GoalTracker>>) {
        let Some(tracker) = tracker else {
            return;
        };
        if tracker.id() != self.tracker {
            *self = GoalQueue {
                tracker: tracker.id(),
                ..GoalQueue::default()
            };
        }
        self.events.extend(tracker.take_events());
        while self.events.len() > goals::MAX_EVENTS {
            self.events.pop_front();
            self.first += 1;
        }
    }

    /// The next events to send, and whether more wait.
    fn report(&self) -> (Option<GoalsReport>, bool) {
        if self.tracker == 0 {
            return (None, false);
        }
        let events: Vec<GoalEvent> = self.events.iter().take(MAX_GOAL_EVENTS).cloned().collect();
        let more = self.events.len() > events.len();
        let report = GoalsReport {
            tracker: self.tracker,
            first: self.first,
            events,
        };
        (Some(report), more)
    }

    /// The server took `report`: its events are not sent again.
    fn taken(&mut self, report: &GoalsReport) {
        if report.tracker != self.tracker || report.first != self.first {
            return;
        }
        let count = report.events.len().min(self.events.len());
        self.events.drain(..count);
        self.first += count as u64;
    }
}

pub(crate) struct EntryPoints {
    serving: Mutex<HashMap<EnvKey, EntryPoint>>,
    /// The entry points' Prometheus metrics (`sluice agent --metrics`).
    metrics: Metrics,
    /// What keeps their sockets through a restart of the agent: started
    /// (or found) with the first entry point, with `program` in `data_dir`.
    keeper: std::sync::OnceLock<Option<Keeper>>,
    program: Option<PathBuf>,
    data_dir: PathBuf,
}

impl EntryPoints {
    /// Entry points whose sockets the keeper of `data_dir` keeps, started
    /// with `program` when none runs yet, counting into `metrics`.
    pub(crate) fn new(data_dir: &Path, program: Option<&Path>, metrics: Metrics) -> EntryPoints {
        EntryPoints {
            serving: Mutex::default(),
            metrics,
            keeper: std::sync::OnceLock::new(),
            program: program.map(Path::to_path_buf),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The keeper, found or started on first use; none without a program.
    fn keeper(&self) -> Option<&Keeper> {
        self.keeper
            .get_or_init(|| {
                let program = self.program.as_ref()?;
                Keeper::connect_or_start(&self.data_dir, program)
                    .inspect_err(|e| tracing::warn!(error = %e, "could not start the keeper of the entry points' sockets; they close with the agent"))
                    .ok()
            })
            .as_ref()
    }

    /// What each entry point reports: where it listens, what it holds, its
    /// windows of the seconds that ended and its goal events, not taken yet.
    pub(crate) fn reports(&self, now: u64) -> Vec<EntryReport> {
        let mut serving = self.serving.lock().unwrap();
        serving
            .iter_mut()
            .map(|(key, entry)| {
                entry.route.sweep();
                entry.goals.fill(entry.route.goals());
                let (goals, more) = entry.goals.report();
                let mut windows = entry
                    .telemetry
                    .windows_after(entry.sent_through.saturating_sub(1));
                windows.retain(|w| w.second >= entry.sent_through && w.second < now);
                windows.truncate(MAX_WINDOWS);
                let through = match windows.len() {
                    MAX_WINDOWS => windows.last().map_or(now, |w| w.second + 1),
                    _ => now,
                };
                EntryReport {
                    service: key.0.clone(),
                    environment: key.1.clone(),
                    address: Some(entry.listener.addr),
                    version: entry.version.clone(),
                    holding: entry.route.holding(),
                    failing: entry.checks.failing(),
                    failures: entry.recent_failures(),
                    from: entry.sent_through,
                    through: through.max(entry.sent_through),
                    more: more || windows.len() == MAX_WINDOWS,
                    windows,
                    goals,
                }
            })
            .collect()
    }

    /// The server took `reports`: their windows are not sent again.
    pub(crate) fn taken(&self, reports: &[EntryReport]) {
        let mut serving = self.serving.lock().unwrap();
        for report in reports {
            let key = (report.service.clone(), report.environment.clone());
            if let Some(entry) = serving.get_mut(&key) {
                entry.sent_through = entry.sent_through.max(report.through);
                if let Some(goals) = &report.goals {
                    entry.goals.taken(goals);
                }
            }
        }
    }

    /// Serves `entries` from now on: binds the new ones, routes each by
    /// its table, and closes those no longer asked for. `None` (a server
    /// starting) leaves every entry point as it is. Whether every one
    /// asked for serves.
    pub(crate) async fn serve(&self, entries: Option<Vec<HostEntry>>) -> bool {
        let Some(entries) = entries else {
            return true;
        };
        let mut all = true;
        self.close_all_but(&entries);
        for entry in entries {
            let key = (entry.service.clone(), entry.environment.clone());
            if let Err(e) = self.route(&key, &entry) {
                tracing::warn!(service = %key.0, env = %key.1, error = %e, "cannot route by the server's table");
                all = false;
                continue;
            }
            if !self.serving.lock().unwrap().contains_key(&key) {
                match self.bind(&entry).await {
                    Ok(bound) => {
                        tracing::info!(service = %key.0, env = %key.1, addr = %bound.listener.addr, https = entry.tls.is_some(), "entry point listening on this host");
                        self.serving.lock().unwrap().insert(key.clone(), bound);
                    }
                    Err(e) => {
                        all = false;
                        tracing::warn!(service = %key.0, env = %key.1, listen = %entry.listen, error = %e, "cannot listen; trying again at the next report");
                        continue;
                    }
                }
            }
            all &= self.redirect(&key, &entry).await;
        }
        all
    }

    /// Sends plain HTTP on to HTTPS at the port `entry` names, when it
    /// names one (and stops doing so when it no longer does). Whether that
    /// is so.
    async fn redirect(&self, key: &EnvKey, entry: &HostEntry) -> bool {
        let wanted = entry.tls.as_ref().and_then(|t| t.redirect_port);
        let https_port = match self.serving.lock().unwrap().get(key) {
            Some(serving) if serving.redirect.as_ref().map(|r| r.0) != wanted => {
                serving.listener.addr.port()
            }
            _ => return true,
        };
        let redirect = match wanted {
            Some(port) => {
                let stop = tokio_util::sync::CancellationToken::new();
                let from = SocketAddr::new(entry.listen.ip(), port);
                match sluice_proxy::redirect_to_https(from, https_port, None, stop.clone()).await {
                    Ok(_) => Some((port, stop.drop_guard())),
                    Err(e) => {
                        tracing::warn!(service = %key.0, env = %key.1, %from, error = %e, "cannot listen to send plain HTTP on to HTTPS; trying again at the next report");
                        return false;
                    }
                }
            }
            None => None,
        };
        if let Some(serving) = self.serving.lock().unwrap().get_mut(key) {
            serving.redirect = redirect;
        }
        true
    }

    /// Routes an entry point already serving by `entry`'s table, and holds
    /// its clients to `entry`'s limits: changed, a listener with them takes
    /// over the same sockets (as the server's does), so no client waiting
    /// to be accepted is refused.
    fn route(&self, key: &EnvKey, entry: &HostEntry) -> Result<(), String> {
        let mut serving = self.serving.lock().unwrap();
        let Some(serving) = serving.get_mut(key) else {
            return Ok(());
        };
        follow(&serving.route, &serving.checks, entry)?;
        serving.version = entry.version.clone();
        let dir = tls::dir(&self.data_dir, &key.0, &key.1).map_err(|e| e.to_string())?;
        if let Some(sent) = &entry.tls
            && serving.tls.as_ref() != Some(sent)
        {
            // Its listener reads them again (as the server's reads its files).
            tls::write(&dir, &sent.pairs)
                .map_err(|e| format!("cannot write the certificates: {e}"))?;
        }
        let https_changed = serving.tls.is_some() != entry.tls.is_some();
        if serving.limits != entry.limits || https_changed {
            let certificates = match entry.tls {
                Some(_) => Some(tls::load(&dir).map_err(|e| format!("cannot serve HTTPS: {e}"))?),
                None => None,
            };
            // The old listener stops accepting; its connections finish.
            serving.listener = serving
                .listener
                .replace(
                    serving.route.clone(),
                    &entry.environment,
                    serving.telemetry.clone(),
                    entry.limits.to_limits(),
                    certificates,
                )
                .map_err(|e| format!("cannot apply the entry point's new limits: {e}"))?;
            serving.limits = entry.limits.clone();
            tracing::info!(service = %key.0, env = %key.1, https = entry.tls.is_some(), "the entry point holds clients to new limits");
        }
        serving.tls = entry.tls.clone();
        Ok(())
    }

    /// Closes the entry points not among `entries`, and those to move.
    fn close_all_but(&self, entries: &[HostEntry]) {
        self.serving.lock().unwrap().retain(|key, serving| {
            let kept = entries.iter().any(|e| {
                (&e.service, &e.environment) == (&key.0, &key.1) && e.listen == serving.listen
            });
            if !kept {
                tracing::info!(service = %key.0, env = %key.1, "closing an entry point the server no longer asks for");
                if let Some(keeper) = self.keeper() {
                    let _ = keeper.drop_key(&sockets_key(key));
                }
            }
            kept
        });
    }

    /// Listens for `entry`: on the sockets a previous agent process left
    /// with the keeper, when they are at its address, else afresh (and
    /// the keeper keeps copies).
    async fn bind(&self, entry: &HostEntry) -> std::io::Result<EntryPoint> {
        let (route, checks) = (Route::default(), Checks::default());
        // Routed before it listens: its first request finds the instances.
        follow(&route, &checks, entry).map_err(std::io::Error::other)?;
        let access_log = sluice_spec::Layout::new(&self.data_dir)
            .access_log(&entry.service, &entry.environment)
            .map_err(std::io::Error::other)?;
        let telemetry = Telemetry::new(
            &entry.service,
            &entry.environment,
            self.metrics.clone(),
            Some(AccessLog::new(access_log.clone())),
        );
        let certificates = match &entry.tls {
            Some(sent) => {
                let dir = tls::dir(&self.data_dir, &entry.service, &entry.environment)?;
                tls::write(&dir, &sent.pairs)?;
                Some(tls::load(&dir)?)
            }
            None => None,
        };
        let key = sockets_key(&(entry.service.clone(), entry.environment.clone()));
        let listener = match self.kept(&key, entry.listen) {
            Some(kept) => {
                tracing::info!(service = %entry.service, env = %entry.environment, "the entry point takes back the sockets a previous agent listened on");
                Listener::from_sockets(
                    kept,
                    route.clone(),
                    &entry.environment,
                    telemetry.clone(),
                    entry.limits.to_limits(),
                    certificates,
                )?
            }
            None => {
                let listener = Listener::bind_tls(
                    entry.listen,
                    route.clone(),
                    &entry.environment,
                    telemetry.clone(),
                    entry.limits.to_limits(),
                    certificates,
                )
                .await?;
                if let Some(keeper) = self.keeper()
                    && let Err(e) = keeper.put(&key, listener.sockets())
                {
                    tracing::warn!(service = %entry.service, env = %entry.environment, error = %e, "could not give the entry point's sockets to their keeper; they close with the agent");
                }
                listener
            }
        };
        Ok(EntryPoint {
            listen: entry.listen,
            listener,
            route,
            telemetry,
            version: entry.version.clone(),
            sent_through: 0,
            goals: GoalQueue::default(),
            checks,
            limits: entry.limits.clone(),
            tls: entry.tls.clone(),
            redirect: None,
            failures: FailureTail::new(&access_log),
        })
    }

    /// The sockets the keeper has for `key`, when they are at `listen`.
    fn kept(&self, key: &str, listen: SocketAddr) -> Option<Vec<std::net::TcpListener>> {
        let keeper = self.keeper()?;
        let kept = keeper.take(key).ok().filter(|k| !k.is_empty())?;
        if crate::sockets::serve_as(kept[0].local_addr().ok()?, listen) {
            Some(kept)
        } else {
            let _ = keeper.drop_key(key);
            None
        }
    }

    /// Closes every entry point, letting the requests under way finish.
    /// Handing over, the keeper keeps their sockets for the next agent
    /// process; else it ends and they close.
    pub(crate) async fn close(&self, handing_over: bool) {
        let closing: Vec<EntryPoint> = self
            .serving
            .lock()
            .unwrap()
            .drain()
            .map(|(_, e)| e)
            .collect();
        // Not started for a host that serves no entry point.
        if let Some(Some(keeper)) = self.keeper.get() {
            if handing_over {
                keeper.linger();
            } else {
                keeper.quit();
            }
        }
        futures::future::join_all(closing.iter().map(|e| e.listener.shutdown())).await;
    }
}

/// The keeper's name for an environment's sockets.
fn sockets_key((service, env): &EnvKey) -> String {
    format!("{service}/{env}")
}
