//! The agent's entry points: one per environment its host serves, at the
//! host's address and the port of the environment's `listen:`, routing by
//! the server's table. Each counts its traffic in windows of seconds,
//! sent with the agent's reports until the server has taken them. When the
//! server is out of reach, they go on routing by the last table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use sluice_proxy::{Listener, Metrics, Route, Telemetry};

use super::wire::{EntryReport, HostEntry, MAX_WINDOWS};
use crate::EnvKey;

struct EntryPoint {
    listen: SocketAddr,
    listener: Listener,
    route: Route,
    telemetry: Telemetry,
    /// The version of the table it routes by.
    version: String,
    /// Its seconds before this the server has taken.
    sent_through: u64,
}

pub(crate) struct EntryPoints {
    serving: Mutex<HashMap<EnvKey, EntryPoint>>,
    /// The entry points' own Prometheus metrics (not served by the agent yet).
    metrics: Metrics,
}

impl Default for EntryPoints {
    fn default() -> EntryPoints {
        EntryPoints {
            serving: Mutex::default(),
            metrics: Metrics::unregistered(),
        }
    }
}

impl EntryPoints {
    /// What each entry point reports: where it listens, what it holds, and
    /// its windows of the seconds that ended and were not taken yet.
    pub(crate) fn reports(&self, now: u64) -> Vec<EntryReport> {
        let serving = self.serving.lock().unwrap();
        serving
            .iter()
            .map(|(key, entry)| {
                entry.route.sweep();
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
                    from: entry.sent_through,
                    through: through.max(entry.sent_through),
                    windows,
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
            }
        }
    }

    /// Serves `entries` from now on: binds the new ones, routes each by
    /// its table, and closes those no longer asked for. `None` (a server
    /// starting) leaves every entry point as it is.
    pub(crate) async fn serve(&self, entries: Option<Vec<HostEntry>>) {
        let Some(entries) = entries else {
            return;
        };
        self.close_all_but(&entries);
        for entry in entries {
            let key = (entry.service.clone(), entry.environment.clone());
            if let Err(e) = self.route(&key, &entry) {
                tracing::warn!(service = %key.0, env = %key.1, error = %e, "cannot route by the server's table");
                continue;
            }
            if self.serving.lock().unwrap().contains_key(&key) {
                continue;
            }
            match self.bind(&entry).await {
                Ok(bound) => {
                    tracing::info!(service = %key.0, env = %key.1, addr = %bound.listener.addr, "entry point listening on this host");
                    self.serving.lock().unwrap().insert(key, bound);
                }
                Err(e) => {
                    tracing::warn!(service = %key.0, env = %key.1, listen = %entry.listen, error = %e, "cannot listen; trying again at the next report")
                }
            }
        }
    }

    /// Routes an entry point already serving by `entry`'s table.
    fn route(&self, key: &EnvKey, entry: &HostEntry) -> Result<(), String> {
        let mut serving = self.serving.lock().unwrap();
        let Some(serving) = serving.get_mut(key) else {
            return Ok(());
        };
        serving.route.apply(&entry.table)?;
        serving.version = entry.version.clone();
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
            }
            kept
        });
    }

    async fn bind(&self, entry: &HostEntry) -> std::io::Result<EntryPoint> {
        let route = Route::default();
        route.apply(&entry.table).map_err(std::io::Error::other)?;
        let telemetry = Telemetry::new(
            &entry.service,
            &entry.environment,
            self.metrics.clone(),
            None,
        );
        let listener = Listener::bind(
            entry.listen,
            route.clone(),
            &entry.environment,
            telemetry.clone(),
        )
        .await?;
        Ok(EntryPoint {
            listen: entry.listen,
            listener,
            route,
            telemetry,
            version: entry.version.clone(),
            sent_through: 0,
        })
    }

    /// Closes every entry point, letting the requests under way finish.
    pub(crate) async fn close(&self) {
        let closing: Vec<EntryPoint> = self
            .serving
            .lock()
            .unwrap()
            .drain()
            .map(|(_, e)| e)
            .collect();
        futures::future::join_all(closing.iter().map(|e| e.listener.shutdown())).await;
    }
}
