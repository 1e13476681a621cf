//! A route: the backends of one environment, each with its health, draining
//! flag and in-flight count; selection among them; draining one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// One instance the route may send requests to.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub release: String,
    healthy: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    served: AtomicUsize,
}

impl Backend {
    pub fn new(
        id: impl Into<String>,
        addr: SocketAddr,
        release: impl Into<String>,
    ) -> Arc<Backend> {
        Arc::new(Backend {
            id: id.into(),
            addr,
            release: release.into(),
            healthy: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
        })
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn eligible(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn info(&self) -> BackendInfo {
        BackendInfo {
            id: self.id.clone(),
            addr: self.addr,
            release: self.release.clone(),
            healthy: self.is_healthy(),
            draining: self.is_draining(),
            in_flight: self.in_flight(),
            served: self.served.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct InFlight(pub Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The index of a least-loaded entry of `loads` (not empty); `turn` rotates among ties.
fn choose(loads: &[usize], turn: usize) -> usize {
    let fewest = loads.iter().copied().min().unwrap_or(0);
    let ties: Vec<usize> = (0..loads.len()).filter(|&i| loads[i] == fewest).collect();
    ties[turn % ties.len()]
}

/// What the API shows of a backend.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackendInfo {
    pub id: String,
    pub addr: SocketAddr,
    pub release: String,
    pub healthy: bool,
    pub draining: bool,
    pub in_flight: usize,
    pub served: usize,
}

/// The backends of one environment. Cheap to clone; all clones are one route.
#[derive(Clone, Default)]
pub struct Route {
    backends: Arc<RwLock<Vec<Arc<Backend>>>>,
    next: Arc<AtomicUsize>,
}

impl Route {
    pub fn add(&self, backend: Arc<Backend>) {
        let mut backends = self.backends.write().unwrap();
        backends.retain(|b| b.id != backend.id);
        backends.push(backend);
    }

    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends.read().unwrap().clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Backend>> {
        self.backends
            .read()
            .unwrap()
            .iter()
            .find(|b| b.id == id)
            .cloned()
    }

    /// The eligible backend with the fewest requests in flight, counted in
    /// flight at once (so that a drain cannot miss it); ties go round-robin,
    /// so an idle route spreads its requests evenly.
    pub(crate) fn pick(&self, except: Option<&str>) -> Option<InFlight> {
        let backends = self.backends.read().unwrap();
        let eligible: Vec<&Arc<Backend>> = backends
            .iter()
            .filter(|b| b.eligible() && Some(b.id.as_str()) != except)
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Each count is read once: other requests change them while we choose.
        let loads: Vec<usize> = eligible.iter().map(|b| b.in_flight()).collect();
        Some(eligible[choose(&loads, start)].start())
    }

    /// Stops sending new requests to a backend, waits (up to `limit`) for its
    /// requests in flight to finish, then removes it. Returns whether it drained.
    pub async fn drain(&self, id: &str, limit: Duration) -> bool {
        let Some(backend) = self.get(id) else {
            return true;
        };
        backend.draining.store(true, Ordering::SeqCst);
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
        self.backends.write().unwrap().retain(|b| b.id != id);
    }

    /// Whether any backend can take a request now.
    pub fn has_eligible(&self) -> bool {
        self.backends.read().unwrap().iter().any(|b| b.eligible())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn picks_only_healthy_non_draining_backends_evenly() {
        let route = Route::default();
        let (a, b, c) = (
            Backend::new("a", addr(1), "v1"),
            Backend::new("b", addr(2), "v1"),
            Backend::new("c", addr(3), "v1"),
        );
        a.set_healthy(true);
        b.set_healthy(true);
        route.add(a.clone());
        route.add(b.clone());
        route.add(c);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100 {
            *counts
                .entry(route.pick(None).unwrap().0.id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.get("c"), None, "unhealthy c gets nothing");
        assert_eq!((counts["a"], counts["b"]), (50, 50));
        b.draining.store(true, Ordering::SeqCst);
        assert!((0..10).all(|_| route.pick(None).unwrap().0.id == "a"));
        assert!(route.pick(Some("a")).is_none());
    }

    #[test]
    fn prefers_the_backend_with_fewer_requests_in_flight() {
        let route = Route::default();
        let (a, b) = (
            Backend::new("a", addr(1), "v1"),
            Backend::new("b", addr(2), "v1"),
        );
        a.set_healthy(true);
        b.set_healthy(true);
        route.add(a.clone());
        route.add(b);
        let _busy = a.start();
        assert!((0..10).all(|_| route.pick(None).unwrap().0.id == "b"));
    }

    #[test]
    fn chooses_among_the_least_loaded_in_turn() {
        assert_eq!(choose(&[2, 0, 1, 0], 0), 1);
        assert_eq!(choose(&[2, 0, 1, 0], 1), 3);
        assert_eq!(choose(&[2, 0, 1, 0], 2), 1);
        assert_eq!(choose(&[5], 7), 0);
    }

    #[tokio::test]
    async fn draining_waits_for_requests_in_flight() {
        let route = Route::default();
        let a = Backend::new("a", addr(1), "v1");
        a.set_healthy(true);
        route.add(a.clone());
        let guard = a.start();
        let drainer = tokio::spawn({
            let route = route.clone();
            async move { route.drain("a", Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drainer.is_finished(), "still one request in flight");
        assert!(route.pick(None).is_none(), "no new requests while draining");
        drop(guard);
        assert!(drainer.await.unwrap());
        assert!(route.backends().is_empty());
    }
}
