//! A host's own health checks of the instances its entry point routes to,
//! on every host as a load balancer checks its backends: the same check as
//! the server's (`run.health`), with the same thresholds. An instance is
//! routed to only when the server's table and this host's check both say
//! it is healthy, so that while the server is away an instance that stops
//! answering is taken out on every host, and put back when it answers again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_proxy::{Backend, Route, RouteTable};
use tokio_util::sync::CancellationToken;

use super::wire::HostCheck;

/// What the table and this host's check say of one instance.
#[derive(Clone, Copy, Default)]
struct Verdict {
    table: bool,
    /// None until the check has decided.
    ours: Option<bool>,
}

impl Verdict {
    fn healthy(self) -> bool {
        self.table && self.ours.unwrap_or(true)
    }
}

/// The checks of one entry point's instances.
#[derive(Default)]
pub(crate) struct Checks {
    verdicts: Arc<Mutex<HashMap<String, Verdict>>>,
    /// One task per instance checked, stopped by its token.
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Checks {
    /// Notes what `table` says of each instance, and makes it say an
    /// instance is healthy only when this host's check agrees.
    pub(crate) fn filter(&self, table: &mut RouteTable) {
        let mut verdicts = self.verdicts.lock().unwrap();
        verdicts.retain(|id, _| table.backends.iter().any(|b| &b.id == id));
        for backend in &mut table.backends {
            let verdict = verdicts.entry(backend.id.clone()).or_default();
            verdict.table = backend.healthy;
            backend.healthy = verdict.healthy();
        }
    }

    /// Checks each instance of `route` that `checks` names, from now on;
    /// stops checking the others.
    pub(crate) fn keep_checking(&self, route: &Route, checks: &BTreeMap<String, HostCheck>) {
        let mut running = self.running.lock().unwrap();
        running.retain(|id, stop| {
            let kept = checks.contains_key(id) && route.get(id).is_some();
            if !kept {
                stop.cancel();
            }
            kept
        });
        for backend in route.backends() {
            let Some(check) = checks.get(&backend.id) else {
                continue;
            };
            if running.contains_key(&backend.id) {
                continue;
            }
            let stop = CancellationToken::new();
            running.insert(backend.id.clone(), stop.clone());
            let probed = Backend::new(&backend.id, backend.addr, &backend.release);
            let (route, verdicts) = (route.clone(), self.verdicts.clone());
            tokio::spawn(check_until(probed, check.to_check(), route, verdicts, stop));
        }
    }

    /// The instances this host's check took out, sorted.
    pub(crate) fn failing(&self) -> Vec<String> {
        let verdicts = self.verdicts.lock().unwrap();
        let mut failing: Vec<String> = verdicts
            .iter()
            .filter(|(_, v)| v.ours == Some(false))
            .map(|(id, _)| id.clone())
            .collect();
        failing.sort();
        failing
    }

    pub(crate) fn stop_all(&self) {
        for (_, stop) in self.running.lock().unwrap().drain() {
            stop.cancel();
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Probes `probed` until `stop`; on a flip past the thresholds, notes it
/// and routes to the instance by what the table and this check both say.
async fn check_until(
    probed: Arc<Backend>,
    check: sluice_spec::HealthCheck,
    route: Route,
    verdicts: Arc<Mutex<HashMap<String, Verdict>>>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(check.timeout)
        .pool_max_idle_per_host(1)
        .build()
        .unwrap_or_default();
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let result = crate::health::probe(&client, &probed, &check, &[]).await;
        (passes, failures) = match result {
            Ok(()) => (passes.saturating_add(1), 0),
            Err(_) => (0, failures.saturating_add(1)),
        };
        let decided = match (passes >= check.healthy, failures >= check.unhealthy) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        if let Some(ours) = decided {
            let healthy = {
                let mut verdicts = verdicts.lock().unwrap();
                let verdict = verdicts.entry(probed.id.clone()).or_default();
                let before = verdict.ours;
                verdict.ours = Some(ours);
                if before != Some(ours) {
                    tracing::info!(instance = %probed.id, healthy = ours, "this host's check of an instance changed");
                }
                verdict.healthy()
            };
            if let Some(backend) = route.get(&probed.id) {
                backend.set_healthy(healthy);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(check.interval.max(Duration::from_millis(50))) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proxy::{TableBackend, Variant};

    fn table(healthy: &[(&str, bool)]) -> RouteTable {
        RouteTable {
            backends: healthy
                .iter()
                .enumerate()
                .map(|(i, (id, healthy))| TableBackend {
                    id: id.to_string(),
                    addr: std::net::SocketAddr::from(([10, 0, 0, 1], i as u16 + 1)),
                    release: "v1".into(),
                    variant: Variant::A,
                    healthy: *healthy,
                    draining: false,
                })
                .collect(),
            ..RouteTable::default()
        }
    }

    fn healthy(table: &RouteTable) -> Vec<bool> {
        table.backends.iter().map(|b| b.healthy).collect()
    }

    #[test]
    fn an_instance_is_routed_to_when_the_table_and_the_host_both_say_healthy() {
        let checks = Checks::default();
        let mut first = table(&[("a", true), ("b", false)]);
        checks.filter(&mut first);
        assert_eq!(
            healthy(&first),
            [true, false],
            "undecided: the table's word"
        );
        checks.verdicts.lock().unwrap().get_mut("a").unwrap().ours = Some(false);
        checks.verdicts.lock().unwrap().get_mut("b").unwrap().ours = Some(true);
        let mut again = table(&[("a", true), ("b", false)]);
        checks.filter(&mut again);
        assert_eq!(healthy(&again), [false, false], "either one says no");
        assert_eq!(checks.failing(), ["a"], "what the host's check took out");
        let mut gone = table(&[("b", true)]);
        checks.filter(&mut gone);
        assert_eq!(healthy(&gone), [true]);
        assert!(
            !checks.verdicts.lock().unwrap().contains_key("a"),
            "a left the table"
        );
    }
}
