//! The entry points on agents' hosts, the server's side: what each agent
//! last said of its entry points (the instances they may still send
//! requests to, up to which second their traffic is in), so that a drain
//! waits until no host routes to the instance, and the analysis until
//! every host's seconds are in. Each window is absorbed once, however
//! often an agent sends it again.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::wire::{EntryReport, MAX_WINDOWS};
use crate::EnvKey;

/// How far ahead of the server's clock a host's may be, in seconds.
const CLOCK_SKEW: u64 = 5;

/// What one agent last said of its entry point of one environment.
struct Seen {
    at: Instant,
    address: Option<SocketAddr>,
    holding: HashSet<String>,
    /// Its seconds before this are in.
    through: u64,
}

#[derive(Default)]
pub(crate) struct HostEntries {
    seen: Mutex<HashMap<(String, EnvKey), Seen>>,
    reported: tokio::sync::Notify,
}

impl HostEntries {
    /// Takes `agent`'s report of its entry points, giving `absorb` the
    /// windows of each not absorbed before, up to a few seconds past `second` (now)
    /// (the clocks of hosts differ a little, not more). Refuses a report
    /// that carries more windows than an agent sends. The caller keeps only
    /// the entry points the agent was asked to serve.
    pub(crate) fn take(
        &self,
        agent: &str,
        reports: &[&EntryReport],
        second: u64,
        absorb: impl Fn(&EnvKey, &[sluice_proxy::SecondWindow]),
    ) -> anyhow::Result<()> {
        if let Some(report) = reports.iter().find(|r| r.windows.len() > MAX_WINDOWS) {
            anyhow::bail!(
                "the report of {}'s entry point carries {} windows; an agent sends at most {MAX_WINDOWS}",
                report.environment,
                report.windows.len()
            );
        }
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        // An entry point it no longer reports, it closed.
        seen.retain(|(a, key), _| {
            a != agent
                || reports
                    .iter()
                    .any(|r| (&r.service, &r.environment) == (&key.0, &key.1))
        });
        for report in reports {
            let key = (report.service.clone(), report.environment.clone());
            let before = seen
                .get(&(agent.to_string(), key.clone()))
                .map_or(0, |s| s.through);
            let through = report.through.min(second + CLOCK_SKEW);
            let new: Vec<_> = report
                .windows
                .iter()
                .filter(|w| w.second >= before && w.second < through)
                .cloned()
                .collect();
            if !new.is_empty() {
                absorb(&key, &new);
            }
            seen.insert(
                (agent.to_string(), key),
                Seen {
                    at: now,
                    address: report.address,
                    holding: report.holding.iter().cloned().collect(),
                    through: before.max(through),
                },
            );
        }
        drop(seen);
        self.reported.notify_waiters();
        Ok(())
    }

    /// Waits (up to `limit`) until no host that reported within `lease`
    /// holds instance `id` of `key`: none routes a new request to it, nor
    /// waits for one. Returns whether none does.
    pub(crate) async fn let_go(
        &self,
        key: &EnvKey,
        id: &str,
        lease: Duration,
        limit: Duration,
    ) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let reported = self.reported.notified();
            if !self.held(key, id, lease, Instant::now()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, reported).await.is_err() {
                return !self.held(key, id, lease, Instant::now());
            }
        }
    }

    /// Whether a host that reported within `lease` of `now` holds `id`.
    fn held(&self, key: &EnvKey, id: &str, lease: Duration, now: Instant) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|((_, k), s)| k == key && now - s.at <= lease && s.holding.contains(id))
    }

    /// The first second of `key` whose traffic may not be in yet from
    /// every host that reported within `lease` (`now` with none).
    pub(crate) fn complete_before(&self, key: &EnvKey, now: u64, lease: Duration) -> u64 {
        let at = Instant::now();
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, k), s)| k == key && at - s.at <= lease)
            .map(|(_, s)| s.through)
            .fold(now, u64::min)
    }

    /// Each agent's entry point of `key` and where it listens, as last
    /// reported within `lease`.
    pub(crate) fn addresses(&self, key: &EnvKey, lease: Duration) -> Vec<(String, SocketAddr)> {
        let now = Instant::now();
        let mut addresses: Vec<_> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, k), s)| k == key && now - s.at <= lease)
            .filter_map(|((agent, _), s)| Some((agent.clone(), s.address?)))
            .collect();
        addresses.sort();
        addresses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proxy::SecondWindow;

    fn report(holding: &[&str], windows: &[u64], through: u64) -> EntryReport {
        EntryReport {
            service: "shop".into(),
            environment: "prod".into(),
            address: None,
            version: String::new(),
            holding: holding.iter().map(|h| h.to_string()).collect(),
            from: 0,
            through,
            windows: windows
                .iter()
                .map(|s| SecondWindow {
                    second: *s,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn key() -> EnvKey {
        ("shop".into(), "prod".into())
    }

    #[test]
    fn a_window_sent_twice_is_absorbed_once() {
        let entries = HostEntries::default();
        let absorbed = Mutex::new(Vec::new());
        let absorb = |_: &EnvKey, w: &[SecondWindow]| {
            absorbed.lock().unwrap().extend(w.iter().map(|w| w.second))
        };
        entries
            .take("web-1", &[&report(&[], &[10, 11], 12)], 20, absorb)
            .unwrap();
        // The answer was lost: the agent sends them again, with one more.
        entries
            .take("web-1", &[&report(&[], &[10, 11, 12], 13)], 20, absorb)
            .unwrap();
        entries
            .take("web-2", &[&report(&[], &[11], 12)], 20, absorb)
            .unwrap();
        assert_eq!(*absorbed.lock().unwrap(), [10, 11, 12, 11]);
        // One from too far ahead of the server's clock is not taken.
        entries
            .take("web-2", &[&report(&[], &[12, 40], 41)], 20, absorb)
            .unwrap();
        assert_eq!(*absorbed.lock().unwrap(), [10, 11, 12, 11, 12]);
        let lease = Duration::from_secs(10);
        assert_eq!(
            entries.complete_before(&key(), 30, lease),
            13,
            "web-1 is behind"
        );
        assert_eq!(entries.complete_before(&key(), 5, lease), 5);
    }

    #[test]
    fn too_many_windows_are_refused() {
        let entries = HostEntries::default();
        let seconds: Vec<u64> = (0..MAX_WINDOWS as u64 + 1).collect();
        let error = entries
            .take("web-1", &[&report(&[], &seconds, 100)], 200, |_, _| {})
            .unwrap_err();
        assert!(error.to_string().contains("at most 60"), "{error}");
    }

    #[tokio::test]
    async fn a_drain_waits_until_no_host_holds_the_instance() {
        let entries = std::sync::Arc::new(HostEntries::default());
        let lease = Duration::from_secs(10);
        entries
            .take("web-1", &[&report(&["a", "b"], &[], 0)], 20, |_, _| {})
            .unwrap();
        entries
            .take("web-2", &[&report(&["b"], &[], 0)], 20, |_, _| {})
            .unwrap();
        let waiting = tokio::spawn({
            let entries = entries.clone();
            async move {
                entries
                    .let_go(&key(), "b", lease, Duration::from_secs(30))
                    .await
            }
        });
        entries
            .take("web-1", &[&report(&["a"], &[], 0)], 20, |_, _| {})
            .unwrap();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "web-2 still holds b");
        entries
            .take("web-2", &[&report(&[], &[], 0)], 20, |_, _| {})
            .unwrap();
        assert!(waiting.await.unwrap());
        assert!(
            !entries.let_go(&key(), "a", lease, Duration::ZERO).await,
            "web-1 holds a"
        );
        let later = Instant::now() + lease + Duration::from_secs(1);
        assert!(
            !entries.held(&key(), "a", lease, later),
            "unless it is silent past its lease"
        );
    }
}
