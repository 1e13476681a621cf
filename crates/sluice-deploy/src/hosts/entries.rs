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

use super::wire::EntryReport;
use crate::EnvKey;
use crate::incidents::failures::FailureCount;

/// How far ahead of the server's clock a host's may be, in seconds.
const CLOCK_SKEW: u64 = 5;

/// What one agent last said of its entry point of one environment.
struct Seen {
    at: Instant,
    address: Option<SocketAddr>,
    holding: HashSet<String>,
    /// The instances its own health check takes out.
    failing: Vec<String>,
    /// The requests that failed most lately at it.
    failures: Vec<FailureCount>,
    /// Its seconds before this are in.
    through: u64,
    /// The version of the table it routes by.
    version: String,
    /// The goals tracker it counts for, and the number of its next event.
    goals: (u64, u64),
}

/// What a report brought that was not taken before.
#[derive(Default)]
pub(crate) struct Fresh {
    pub key: EnvKey,
    pub windows: Vec<sluice_proxy::SecondWindow>,
    /// Goal events for the server's tracker `tracker`.
    pub tracker: u64,
    pub goals: Vec<sluice_proxy::goals::GoalEvent>,
}

/// How many of an environment's latest tables are remembered with when
/// each was first sent.
const SENT_KEPT: usize = 32;

#[derive(Default)]
pub(crate) struct HostEntries {
    seen: Mutex<HashMap<(String, EnvKey), Seen>>,
    reported: tokio::sync::Notify,
    /// Each environment's latest tables and when each was first sent, to
    /// tell how long a route change takes to reach every host.
    sent: Mutex<HashMap<EnvKey, std::collections::VecDeque<(String, Instant)>>>,
}

impl HostEntries {
    /// Takes `agent`'s report of its entry points: what each brought
    /// that was not taken before (windows up to a few seconds past `second`,
    /// now: the clocks of hosts differ a little, not more; goal events).
    /// Refuses a report that carries more than an agent sends. The caller
    /// keeps only the entry points the agent was asked to serve.
    pub(crate) fn take(
        &self,
        agent: &str,
        reports: &[&EntryReport],
        second: u64,
    ) -> anyhow::Result<Vec<Fresh>> {
        for report in reports {
            report.check().map_err(anyhow::Error::msg)?;
        }
        let mut fresh = Vec::new();
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
            let last = seen.get(&(agent.to_string(), key.clone()));
            if last.is_none_or(|s| s.version != report.version) {
                self.applied(agent, &key, &report.version, now);
            }
            let failing_before = last.map_or(&[][..], |s| &s.failing[..]);
            say_checks_changed(agent, &key, failing_before, &report.failing);
            let before = last.map_or(0, |s| s.through);
            let through = report.through.min(second + CLOCK_SKEW);
            let windows: Vec<_> = report
                .windows
                .iter()
                .filter(|w| w.second >= before && w.second < through)
                .cloned()
                .collect();
            let (tracker, next) = last.map_or((0, 0), |s| s.goals);
            let (goals, goals_seen) = match &report.goals {
                Some(g) => {
                    let next = if g.tracker == tracker { next } else { 0 };
                    let skip = next.saturating_sub(g.first) as usize;
                    let new = g.events.iter().skip(skip).cloned().collect();
                    (new, (g.tracker, next.max(g.first + g.events.len() as u64)))
                }
                None => (Vec::new(), (tracker, next)),
            };
            fresh.push(Fresh {
                key: key.clone(),
                windows,
                tracker: goals_seen.0,
                goals,
            });
            seen.insert(
                (agent.to_string(), key),
                Seen {
                    at: now,
                    address: report.address,
                    holding: report.holding.iter().cloned().collect(),
                    failing: report.failing.clone(),
                    failures: report.failures.clone(),
                    through: before.max(through),
                    version: report.version.clone(),
                    goals: goals_seen,
                },
            );
        }
        drop(seen);
        self.reported.notify_waiters();
        Ok(fresh)
    }

    /// Notes that table `version` of `key` is being sent, the first time.
    pub(crate) fn sending(&self, key: &EnvKey, version: &str) {
        let mut sent = self.sent.lock().unwrap();
        let tables = sent.entry(key.clone()).or_default();
        if tables.iter().any(|(v, _)| v == version) {
            return;
        }
        tables.push_back((version.to_string(), Instant::now()));
        if tables.len() > SENT_KEPT {
            tables.pop_front();
        }
    }

    /// Tells (at debug level) how long table `version` took to reach
    /// `agent`'s entry point: from the first answer carrying it to the
    /// report that it routes by it (`bench/routes.sh` reads these).
    fn applied(&self, agent: &str, key: &EnvKey, version: &str, now: Instant) {
        let sent = self.sent.lock().unwrap();
        let first = sent
            .get(key)
            .and_then(|tables| tables.iter().find(|(v, _)| v == version));
        if let Some((_, at)) = first {
            let micros = (now - *at).as_micros() as u64;
            tracing::debug!(agent, service = %key.0, env = %key.1, version, micros, "a host's entry point routes by the new table");
        }
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
        self.until(limit, |now| !self.held(key, id, lease, now))
            .await
    }

    /// Waits (up to `limit`) until every host that reported within `lease`
    /// routes to instance `id` of `key`, as the server's table now does: a
    /// deployment goes on (and takes an older instance away) only once the
    /// hosts send requests to the new one. Returns whether they all do.
    pub(crate) async fn take_up(
        &self,
        key: &EnvKey,
        id: &str,
        lease: Duration,
        limit: Duration,
    ) -> bool {
        self.until(limit, |now| self.everywhere(key, id, lease, now))
            .await
    }

    /// Waits (up to `limit`) until the hosts' reports make `holds` true,
    /// looking again at each report. Returns whether it holds.
    async fn until(&self, limit: Duration, holds: impl Fn(Instant) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let reported = self.reported.notified();
            if holds(Instant::now()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, reported).await.is_err() {
                return holds(Instant::now());
            }
        }
    }

    /// Whether every host that reported within `lease` of `now` holds `id`.
    fn everywhere(&self, key: &EnvKey, id: &str, lease: Duration, now: Instant) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, k), s)| k == key && now - s.at <= lease)
            .all(|(_, s)| s.holding.contains(id))
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

    /// What each host's entry point of `key` that reported within `lease`
    /// said failed most lately.
    pub(crate) fn failures(&self, key: &EnvKey, lease: Duration) -> Vec<Vec<FailureCount>> {
        let now = Instant::now();
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, k), s)| k == key && now - s.at <= lease)
            .map(|(_, s)| s.failures.clone())
            .collect()
    }

    /// Each agent's entry point of `key` as last reported within `lease`,
    /// by agent.
    pub(crate) fn points(&self, key: &EnvKey, lease: Duration) -> Vec<HostPoint> {
        let now = Instant::now();
        let mut points: Vec<_> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, k), s)| k == key && now - s.at <= lease)
            .filter_map(|((agent, _), s)| {
                Some(HostPoint {
                    agent: agent.clone(),
                    address: s.address?,
                    failing: s.failing.clone(),
                    version: s.version.clone(),
                })
            })
            .collect();
        points.sort_by(|a, b| a.agent.cmp(&b.agent));
        points
    }
}

/// An agent's entry point of an environment, as it last reported it.
pub(crate) struct HostPoint {
    pub agent: String,
    pub address: SocketAddr,
    /// The version of the table it routes by.
    pub version: String,
    /// The instances its own health check takes out.
    pub failing: Vec<String>,
}

/// Logs each instance a host's own check took out or put back since its
/// last report: the server's check may see it otherwise (a network
/// between two hosts that fails, not between the server and either).
fn say_checks_changed(agent: &str, key: &EnvKey, before: &[String], now: &[String]) {
    for id in now.iter().filter(|id| !before.contains(id)) {
        tracing::warn!(agent, service = %key.0, env = %key.1, instance = %id, "a host's own check takes an instance out of its entry point");
    }
    for id in before.iter().filter(|id| !now.contains(id)) {
        tracing::info!(agent, service = %key.0, env = %key.1, instance = %id, "a host's own check puts an instance back in its entry point");
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::MAX_WINDOWS;
    use super::*;
    use sluice_proxy::SecondWindow;

    fn report(holding: &[&str], windows: &[u64], through: u64) -> EntryReport {
        EntryReport {
            service: "shop".into(),
            environment: "prod".into(),
            address: None,
            version: String::new(),
            goals: None,
            more: false,
            holding: holding.iter().map(|h| h.to_string()).collect(),
            failing: Vec::new(),
            failures: Vec::new(),
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

    /// The seconds of the windows a report brought that were new.
    fn seconds(fresh: Vec<Fresh>) -> Vec<u64> {
        fresh
            .iter()
            .flat_map(|f| f.windows.iter().map(|w| w.second))
            .collect()
    }

    #[test]
    fn a_window_sent_twice_is_absorbed_once() {
        let entries = HostEntries::default();
        let take = |agent: &str, report: EntryReport| {
            seconds(entries.take(agent, &[&report], 20).unwrap())
        };
        assert_eq!(take("web-1", report(&[], &[10, 11], 12)), [10, 11]);
        // The answer was lost: the agent sends them again, with one more.
        assert_eq!(take("web-1", report(&[], &[10, 11, 12], 13)), [12]);
        assert_eq!(take("web-2", report(&[], &[11], 12)), [11]);
        // One from too far ahead of the server's clock is not taken.
        assert_eq!(take("web-2", report(&[], &[12, 40], 41)), [12]);
        let lease = Duration::from_secs(10);
        assert_eq!(
            entries.complete_before(&key(), 30, lease),
            13,
            "web-1 is behind"
        );
        assert_eq!(entries.complete_before(&key(), 5, lease), 5);
    }

    #[test]
    fn goal_events_sent_again_or_of_another_experiment_count_once() {
        use sluice_proxy::goals::GoalEvent;
        let entries = HostEntries::default();
        let exposed = |user| GoalEvent::Exposed {
            user,
            b: true,
            share_b: 0.1,
        };
        let with_goals = |tracker, first, users: &[u64]| EntryReport {
            goals: Some(super::super::wire::GoalsReport {
                tracker,
                first,
                events: users.iter().map(|u| exposed(*u)).collect(),
            }),
            ..report(&[], &[], 0)
        };
        let take = |report: EntryReport| {
            let fresh = entries.take("web-1", &[&report], 20).unwrap();
            (fresh[0].tracker, fresh[0].goals.clone())
        };
        assert_eq!(
            take(with_goals(7, 0, &[1, 2])),
            (7, vec![exposed(1), exposed(2)])
        );
        // Sent again with one more: only the new one.
        assert_eq!(take(with_goals(7, 0, &[1, 2, 3])), (7, vec![exposed(3)]));
        assert_eq!(take(with_goals(7, 3, &[4])), (7, vec![exposed(4)]));
        // A new experiment's tracker numbers its events afresh.
        assert_eq!(take(with_goals(8, 0, &[5])), (8, vec![exposed(5)]));
    }

    #[test]
    fn too_many_windows_are_refused() {
        let entries = HostEntries::default();
        let seconds: Vec<u64> = (0..MAX_WINDOWS as u64 + 1).collect();
        let error = entries
            .take("web-1", &[&report(&[], &seconds, 100)], 200)
            .err()
            .unwrap();
        assert!(error.to_string().contains("at most 60"), "{error}");
    }

    #[tokio::test]
    async fn a_drain_waits_until_no_host_holds_the_instance() {
        let entries = std::sync::Arc::new(HostEntries::default());
        let lease = Duration::from_secs(10);
        entries
            .take("web-1", &[&report(&["a", "b"], &[], 0)], 20)
            .unwrap();
        entries
            .take("web-2", &[&report(&["b"], &[], 0)], 20)
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
            .take("web-1", &[&report(&["a"], &[], 0)], 20)
            .unwrap();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "web-2 still holds b");
        entries.take("web-2", &[&report(&[], &[], 0)], 20).unwrap();
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
