//! A route: the backends of one environment, each with its health, draining
//! flag and in-flight count; selection among them; draining one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use std::time::Duration;

use http::HeaderValue;

use crate::goals::GoalTracker;
use crate::split::{Split, Variant};
use crate::telemetry::InstanceSlots;

/// One instance the route may send requests to.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub release: String,
    healthy: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// 0 for A, 1 for B.
    variant: AtomicU8,
    /// Failures in a row; at [`EJECT_AFTER`] the backend is taken out for a while.
    failures: std::sync::atomic::AtomicU32,
    /// Until when (ms since the epoch) it is out.
    ejected_until: std::sync::atomic::AtomicU64,
    /// Its metric handles, made by its environment's telemetry on first use.
    pub(crate) metrics: InstanceSlots,
    /// Its id and release as header values, for attributing each answer.
    pub(crate) id_header: Option<HeaderValue>,
    pub(crate) release_header: Option<HeaderValue>,
    /// The changes of the route it was added to, told of its own.
    changes: std::sync::OnceLock<Changes>,
}

/// A count of a route's changes, which its watchers wait on.
#[derive(Clone, Debug)]
struct Changes(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for Changes {
    fn default() -> Changes {
        Changes(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl Changes {
    fn tell(&self) {
        self.0.send_modify(|count| *count += 1);
    }
}

/// Consecutive failures that eject a backend, and for how long.
pub const EJECT_AFTER: u32 = 5;
pub const EJECT_FOR: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Backend {
    pub fn new(
        id: impl Into<String>,
        addr: SocketAddr,
        release: impl Into<String>,
    ) -> Arc<Backend> {
        let (id, release) = (id.into(), release.into());
        Arc::new(Backend {
            id_header: HeaderValue::from_str(&id).ok(),
            release_header: HeaderValue::from_str(&release).ok(),
            id,
            addr,
            release,
            healthy: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            variant: AtomicU8::new(0),
            failures: std::sync::atomic::AtomicU32::new(0),
            ejected_until: std::sync::atomic::AtomicU64::new(0),
            metrics: InstanceSlots::default(),
            changes: std::sync::OnceLock::new(),
        })
    }

    /// Tells its route's watchers, when it has a route.
    fn changed(&self) {
        if let Some(changes) = self.changes.get() {
            changes.tell();
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::SeqCst) != healthy {
            self.changed();
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    pub fn set_variant(&self, variant: Variant) {
        let to = if variant == Variant::B { 1 } else { 0 };
        if self.variant.swap(to, Ordering::SeqCst) != to {
            self.changed();
        }
    }

    /// Sends it no new requests; it is removed once those in flight are done.
    pub(crate) fn set_draining(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.changed();
        }
    }

    pub fn variant(&self) -> Variant {
        if self.variant.load(Ordering::SeqCst) == 1 {
            Variant::B
        } else {
            Variant::A
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn eligible(&self) -> bool {
        self.is_healthy() && !self.is_draining() && !self.is_ejected()
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::SeqCst) > now_ms()
    }

    /// Counts a failure to reach it; returns true when this one ejects it.
    pub(crate) fn failed(&self) -> bool {
        if self.failures.fetch_add(1, Ordering::SeqCst) + 1 >= EJECT_AFTER {
            self.failures.store(0, Ordering::SeqCst);
            self.ejected_until
                .store(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::SeqCst);
            return true;
        }
        false
    }

    pub(crate) fn succeeded(&self) {
        // Read first: most requests succeed, and a write would take the
        // backend's cache line from the other cores every time.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::SeqCst);
        }
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

pub(crate) struct InFlight(pub Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The two candidates of the power of two choices among `n` (not zero):
/// one by `turn` (so an idle route still rotates) and another by `random`.
fn candidates(n: usize, turn: usize, random: usize) -> (usize, Option<usize>) {
    let first = turn % n;
    if n == 1 {
        return (first, None);
    }
    (first, Some((first + 1 + random % (n - 1)) % n))
}

/// The backends of one environment and its split. Cheap to clone; all
/// clones are one route. Each proxy worker takes its own handle
/// ([`Route::for_worker`]), so that a request touches no reference count,
/// lock or turn counter that another core writes: the backends and the
/// split are read through `ArcSwap`, whose readers write nothing shared.
#[derive(Clone, Default)]
pub struct Route(Arc<Handle>);

#[derive(Default)]
struct Handle {
    shared: Arc<Shared>,
    /// Whose turn it is to be the first of the two choices, per handle.
    next: AtomicUsize,
}

#[derive(Default)]
struct Shared {
    backends: ArcSwap<Vec<Arc<Backend>>>,
    split: ArcSwapOption<Split>,
    goals: ArcSwapOption<GoalTracker>,
    changes: Changes,
}

impl Route {
    /// A handle on the same route for one worker thread.
    pub(crate) fn for_worker(&self) -> Route {
        Route(Arc::new(Handle {
            shared: self.0.shared.clone(),
            next: AtomicUsize::new(0),
        }))
    }

    fn shared(&self) -> &Shared {
        &self.0.shared
    }

    /// A watch on the route's changes (backends, their health, variant and
    /// draining, the split): its value counts them.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared().changes.0.subscribe()
    }

    pub fn add(&self, backend: Arc<Backend>) {
        let _ = backend.changes.set(self.shared().changes.clone());
        self.shared().backends.rcu(|backends| {
            let mut backends: Vec<Arc<Backend>> = backends
                .iter()
                .filter(|b| b.id != backend.id)
                .cloned()
                .collect();
            backends.push(backend.clone());
            backends
        });
        self.shared().changes.tell();
    }

    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.shared().backends.load().to_vec()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Backend>> {
        self.shared()
            .backends
            .load()
            .iter()
            .find(|b| b.id == id)
            .cloned()
    }

    /// Sets (or, with `None`, ends) the split between A and B.
    pub fn set_split(&self, split: Option<Split>) {
        if self.split() != split {
            self.shared().split.store(split.map(Arc::new));
            self.shared().changes.tell();
        }
    }

    pub fn split(&self) -> Option<Split> {
        self.shared().split.load().as_deref().cloned()
    }

    /// Sets (or, with `None`, ends) the goals counted per user.
    pub fn set_goals(&self, goals: Option<Arc<GoalTracker>>) {
        let before = self.shared().goals.swap(goals.clone());
        let same = match (&before, &goals) {
            (Some(before), Some(after)) => Arc::ptr_eq(before, after),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.shared().changes.tell();
        }
    }

    /// The goals counted now, if any.
    pub fn goals(&self) -> Option<Arc<GoalTracker>> {
        self.shared().goals.load_full()
    }

    /// The split as it is now, read without copying it.
    pub(crate) fn current_split(&self) -> arc_swap::Guard<Option<Arc<Split>>> {
        self.shared().split.load()
    }

    /// Picks an eligible backend of `variant` (any, with `None`) by the power
    /// of two choices: of two taken at random, the one with fewer requests in
    /// flight. It is counted in flight at once, so that a drain cannot miss it.
    pub(crate) fn pick(&self, variant: Option<Variant>, except: Option<&str>) -> Option<InFlight> {
        let backends = self.shared().backends.load();
        let eligible = |b: &&Arc<Backend>| {
            b.eligible()
                && Some(b.id.as_str()) != except
                && variant.is_none_or(|v| b.variant() == v)
        };
        let n = backends.iter().filter(eligible).count();
        if n == 0 {
            return None;
        }
        let turn = self.0.next.fetch_add(1, Ordering::Relaxed);
        let (first, second) = candidates(n, turn, rand::random::<u32>() as usize);
        // Health may change while we choose: then the first still eligible one.
        let nth = |k: usize| backends.iter().filter(eligible).nth(k);
        let first = nth(first).or_else(|| backends.iter().find(eligible))?;
        let chosen = match second.and_then(nth) {
            Some(second) if second.in_flight() < first.in_flight() => second,
            _ => first,
        };
        Some(chosen.start())
    }

    /// Stops sending new requests to a backend, waits (up to `limit`) for its
    /// requests in flight to finish, then removes it. Returns whether it drained.
    pub async fn drain(&self, id: &str, limit: Duration) -> bool {
        let Some(backend) = self.get(id) else {
            return true;
        };
        backend.set_draining();
        let deadline = tokio::time::Instant::now() + limit;
        let drained = loop {
            if backend.in_flight() == 0 {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.remove(id);
        drained
    }

    pub fn remove(&self, id: &str) {
        let before = self.shared().backends.rcu(|backends| {
            backends
                .iter()
                .filter(|b| b.id != id)
                .cloned()
                .collect::<Vec<_>>()
        });
        if before.iter().any(|b| b.id == id) {
            self.shared().changes.tell();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A route of healthy backends named `ids`, returned with them.
    fn healthy_route(ids: &[&str]) -> (Route, Vec<Arc<Backend>>) {
        let route = Route::default();
        let backends: Vec<Arc<Backend>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let backend = Backend::new(*id, addr(i as u16 + 1), "v1");
                backend.set_healthy(true);
                route.add(backend.clone());
                backend
            })
            .collect();
        (route, backends)
    }

    #[test]
    fn picks_only_healthy_non_draining_backends_evenly() {
        let (route, backends) = healthy_route(&["a", "b", "c"]);
        backends[2].set_healthy(false);
        let b = &backends[1];
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100 {
            *counts
                .entry(route.pick(None, None).unwrap().0.id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.get("c"), None, "unhealthy c gets nothing");
        assert_eq!((counts["a"], counts["b"]), (50, 50));
        b.draining.store(true, Ordering::SeqCst);
        assert!((0..10).all(|_| route.pick(None, None).unwrap().0.id == "a"));
        assert!(route.pick(None, Some("a")).is_none());
    }

    #[test]
    fn prefers_the_backend_with_fewer_requests_in_flight() {
        let (route, backends) = healthy_route(&["a", "b"]);
        let a = &backends[0];
        let _busy = a.start();
        assert!((0..10).all(|_| route.pick(None, None).unwrap().0.id == "b"));
    }

    #[test]
    fn the_two_candidates_are_distinct_and_the_first_rotates() {
        assert_eq!(candidates(1, 7, 3), (0, None));
        for n in 2..6 {
            for turn in 0..10 {
                for random in 0..10 {
                    let (first, second) = candidates(n, turn, random);
                    assert_eq!(first, turn % n);
                    let second = second.unwrap();
                    assert!(second < n && second != first, "{n} {turn} {random}");
                }
            }
        }
    }

    #[test]
    fn consecutive_failures_eject_a_backend_for_a_while() {
        let (route, backends) = healthy_route(&["a", "b"]);
        let a = &backends[0];
        for _ in 0..EJECT_AFTER - 1 {
            assert!(!a.failed());
        }
        a.succeeded();
        for _ in 0..EJECT_AFTER - 1 {
            assert!(!a.failed(), "a success resets the count");
        }
        assert!(a.failed());
        assert!(a.is_ejected());
        assert!((0..10).all(|_| route.pick(None, None).unwrap().0.id == "b"));
    }

    #[tokio::test]
    async fn draining_waits_for_requests_in_flight() {
        let (route, backends) = healthy_route(&["a"]);
        let guard = backends[0].start();
        let drainer = tokio::spawn({
            let route = route.clone();
            async move { route.drain("a", Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drainer.is_finished(), "still one request in flight");
        assert!(
            route.pick(None, None).is_none(),
            "no new requests while draining"
        );
        drop(guard);
        assert!(drainer.await.unwrap());
        assert!(route.backends().is_empty());
    }
}
