//! What the proxy tells about the requests it served: Prometheus metrics per
//! environment × variant × instance, per-second windows per variant kept for
//! 30 minutes (for the analysis and the UI), and the access log ([`crate::access_log`]).

use std::collections::VecDeque;
use std::collections::btree_map::Entry;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sluice_analysis::LogHistogram;
use tokio::sync::mpsc;

use crate::access_log::AccessLog;
use crate::route::Backend;
use crate::split::Variant;

/// How many seconds of windows are kept.
pub const WINDOW_SECONDS: usize = 30 * 60;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub service: String,
    pub environment: String,
    pub variant: String,
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub environment: String,
    pub variant: String,
    pub instance: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: String,
}

/// The proxy's Prometheus metrics, shared by every environment's listener.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<InstanceLabels, Histogram>,
    in_flight: Family<InstanceLabels, Gauge>,
    connect_errors: Family<InstanceLabels, Counter>,
    ejections: Family<InstanceLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Metrics counted but not registered anywhere (nothing serves them).
    pub fn unregistered() -> Metrics {
        Metrics::register(&mut Registry::default())
    }

    /// Registers the metrics under `sluice_proxy_…`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            in_flight: Family::default(),
            connect_errors: Family::default(),
            ejections: Family::default(),
        };
        let proxy = registry.sub_registry_with_prefix("sluice_proxy");
        proxy.register(
            "requests",
            "Requests answered, by status class",
            metrics.requests.clone(),
        );
        proxy.register(
            "request_duration_seconds",
            "Time from a request's arrival until its answer's last byte",
            metrics.duration.clone(),
        );
        proxy.register(
            "requests_in_flight",
            "Requests being answered now",
            metrics.in_flight.clone(),
        );
        proxy.register(
            "upstream_connect_errors",
            "Connections to an instance that failed",
            metrics.connect_errors.clone(),
        );
        proxy.register(
            "ejections",
            "Times an instance was taken out after consecutive failures",
            metrics.ejections.clone(),
        );
        metrics
    }
}

/// One variant's requests in one second.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VariantWindow {
    pub requests: u64,
    /// 5xx answers, the proxy's own included.
    pub errors: u64,
    pub latency: LogHistogram,
}

/// One second of an environment's traffic.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SecondWindow {
    /// Seconds since the Unix epoch.
    pub second: u64,
    /// The sum of B's weight (0 to 1) over the requests routed this second:
    /// how many B should have had, for the sample-ratio check.
    pub expected_b: f64,
    pub a: VariantWindow,
    pub b: VariantWindow,
    /// The same requests by the instance that answered them (none for the
    /// proxy's own answers when no instance could).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceWindow>,
}

/// One instance's requests in one second.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceWindow {
    pub instance: String,
    pub variant: Variant,
    #[serde(flatten)]
    pub window: VariantWindow,
}

/// One instance's metrics as one variant, made once so that a request
/// touches counters rather than label sets.
pub(crate) struct InstanceMetrics {
    family: Family<RequestLabels, Counter>,
    labels: InstanceLabels,
    /// Requests by status class (1xx to 5xx), each made when first seen.
    requests: [OnceLock<Counter>; 5],
    pub(crate) duration: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) connect_errors: Counter,
    pub(crate) ejections: Counter,
}

impl InstanceMetrics {
    fn new(metrics: &Metrics, labels: InstanceLabels) -> InstanceMetrics {
        InstanceMetrics {
            family: metrics.requests.clone(),
            requests: Default::default(),
            duration: metrics.duration.get_or_create(&labels).clone(),
            in_flight: metrics.in_flight.get_or_create(&labels).clone(),
            connect_errors: metrics.connect_errors.get_or_create(&labels).clone(),
            ejections: metrics.ejections.get_or_create(&labels).clone(),
            labels,
        }
    }

    fn requests(&self, status: u16) -> &Counter {
        let class = usize::from(status / 100).clamp(1, 5);
        self.requests[class - 1].get_or_init(|| {
            let labels = &self.labels;
            self.family
                .get_or_create(&RequestLabels {
                    service: labels.service.clone(),
                    environment: labels.environment.clone(),
                    variant: labels.variant.clone(),
                    instance: labels.instance.clone(),
                    class: format!("{class}xx"),
                })
                .clone()
        })
    }
}

/// The metrics of one instance in each variant it may serve as.
#[derive(Default)]
pub(crate) struct InstanceSlots([OnceLock<InstanceMetrics>; 2]);

impl std::fmt::Debug for InstanceSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceSlots")
    }
}

/// An environment's telemetry: metrics, windows, access log. Cheap to
/// clone; each proxy worker has its own handle ([`Telemetry::for_worker`])
/// and its own shard of the windows, so that a request writes nothing
/// another core reads but the metrics themselves.
#[derive(Clone)]
pub struct Telemetry(Arc<Handle>);

struct Handle {
    shared: Arc<Shared>,
    shard: usize,
}

/// What second it is, for the windows: the machine's clock, or one a test
/// runs faster.
pub type SecondClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Seconds since the Unix epoch by the machine's clock.
pub fn system_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

struct Shared {
    /// Numbers the windows.
    clock: SecondClock,
    service: String,
    environment: String,
    metrics: Metrics,
    /// Per-second windows, one deque per worker, merged when read.
    windows: Vec<Mutex<VecDeque<SecondWindow>>>,
    /// Windows counted elsewhere: the entry points on agents' hosts.
    absorbed: Mutex<std::collections::BTreeMap<u64, SecondWindow>>,
    /// The metrics of requests no instance answered.
    unserved: InstanceSlots,
    access: Option<mpsc::UnboundedSender<String>>,
}

/// One answered request, as recorded.
#[derive(Serialize)]
pub struct AccessEntry<'a> {
    /// Filled in only when the entry is written.
    pub time: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    pub bytes: u64,
    pub variant: &'a str,
    pub release: &'a str,
    pub instance: &'a str,
    pub error: Option<&'a str>,
}

impl Telemetry {
    /// Telemetry for a service's environment, with an access log when given.
    pub fn new(
        service: &str,
        environment: &str,
        metrics: Metrics,
        access_log: Option<AccessLog>,
    ) -> Telemetry {
        Telemetry::with_clock(
            service,
            environment,
            metrics,
            access_log,
            Arc::new(system_second),
        )
    }

    /// The same, its windows numbered by `clock`.
    pub fn with_clock(
        service: &str,
        environment: &str,
        metrics: Metrics,
        access_log: Option<AccessLog>,
        clock: SecondClock,
    ) -> Telemetry {
        let access = access_log.and_then(AccessLog::start);
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Shared {
            clock,
            service: service.to_string(),
            environment: environment.to_string(),
            metrics,
            windows: (0..shards).map(|_| Mutex::default()).collect(),
            absorbed: Mutex::default(),
            unserved: InstanceSlots::default(),
            access,
        };
        Telemetry(Arc::new(Handle {
            shared: Arc::new(shared),
            shard: 0,
        }))
    }

    /// A telemetry that only counts, for tests and tools.
    pub fn detached(environment: &str) -> Telemetry {
        Telemetry::new("test", environment, Metrics::unregistered(), None)
    }

    /// The same telemetry, recording its windows in worker `worker`'s shard.
    pub(crate) fn for_worker(&self, worker: usize) -> Telemetry {
        let shared = self.shared().clone();
        let shard = worker % shared.windows.len();
        Telemetry(Arc::new(Handle { shared, shard }))
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.0.shared
    }

    /// Whether requests are written to an access log.
    pub(crate) fn logs_access(&self) -> bool {
        self.shared().access.is_some()
    }

    /// The metrics of `backend` as the variant it now serves, or of the
    /// requests no instance answered. A backend belongs to one environment,
    /// so its handles are made on first use and kept with it.
    pub(crate) fn instance<'a>(
        &'a self,
        variant: Variant,
        backend: Option<&'a Backend>,
    ) -> &'a InstanceMetrics {
        let (slots, instance) = match backend {
            Some(backend) => (&backend.metrics, backend.id.as_str()),
            None => (&self.shared().unserved, "-"),
        };
        slots.0[usize::from(variant == Variant::B)].get_or_init(|| {
            let shared = self.shared();
            let labels = InstanceLabels {
                service: shared.service.clone(),
                environment: shared.environment.clone(),
                variant: variant.as_str().to_string(),
                instance: instance.to_string(),
            };
            InstanceMetrics::new(&shared.metrics, labels)
        })
    }

    /// Records an answered request; `share_b` is B's weight when it was routed.
    pub(crate) fn record(
        &self,
        entry: &AccessEntry,
        variant: Variant,
        backend: Option<&Backend>,
        share_b: f64,
    ) {
        let metrics = self.instance(variant, backend);
        metrics.requests(entry.status).inc();
        metrics.duration.observe(entry.latency_ms / 1000.0);
        self.window(entry, variant, backend, share_b);
        self.log_access(entry);
    }

    /// Writes the request to the access log, if one is kept.
    pub(crate) fn log_access(&self, entry: &AccessEntry) {
        if let Some(access) = &self.shared().access {
            // The clock is read and the line built only for a log that is kept.
            let entry = AccessEntry {
                time: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                ..*entry
            };
            if let Ok(line) = serde_json::to_string(&entry) {
                let _ = access.send(line);
            }
        }
    }

    /// Counts the request in this second's window of its variant and instance.
    fn window(
        &self,
        entry: &AccessEntry,
        variant: Variant,
        backend: Option<&Backend>,
        share_b: f64,
    ) {
        let now = (self.shared().clock)();
        let mut windows = self.shared().windows[self.0.shard].lock().unwrap();
        if windows.back().is_none_or(|w| w.second != now) {
            windows.push_back(SecondWindow {
                second: now,
                ..Default::default()
            });
            while windows.len() > WINDOW_SECONDS {
                windows.pop_front();
            }
        }
        let window = windows.back_mut().expect("just pushed");
        window.expected_b += share_b;
        let side = if variant == Variant::B {
            &mut window.b
        } else {
            &mut window.a
        };
        side.count(entry);
        if let Some(backend) = backend {
            window.instance(&backend.id, variant).count(entry);
        }
    }

    /// The windows of seconds after `after` (seconds since the epoch), oldest
    /// first, each the sum of every worker's and of those absorbed.
    pub fn windows_after(&self, after: u64) -> Vec<SecondWindow> {
        let mut seconds = std::collections::BTreeMap::<u64, SecondWindow>::new();
        for shard in &self.shared().windows {
            for window in shard.lock().unwrap().iter().filter(|w| w.second > after) {
                add_to(&mut seconds, window);
            }
        }
        let absorbed = self.shared().absorbed.lock().unwrap();
        for window in absorbed.range(after.saturating_add(1)..).map(|(_, w)| w) {
            add_to(&mut seconds, window);
        }
        seconds.into_values().collect()
    }

    /// Adds windows counted elsewhere (by an entry point on an agent's
    /// host) to these, keeping as many seconds as the workers' own.
    pub fn absorb(&self, windows: &[SecondWindow]) {
        let mut absorbed = self.shared().absorbed.lock().unwrap();
        for window in windows {
            add_to(&mut absorbed, window);
        }
        while absorbed.len() > WINDOW_SECONDS {
            absorbed.pop_first();
        }
    }
}

/// Adds `window` to the sum of its second in `seconds`.
fn add_to(seconds: &mut std::collections::BTreeMap<u64, SecondWindow>, window: &SecondWindow) {
    match seconds.entry(window.second) {
        Entry::Vacant(vacant) => {
            vacant.insert(window.clone());
        }
        Entry::Occupied(mut sum) => sum.get_mut().merge(window),
    }
}

impl SecondWindow {
    fn merge(&mut self, other: &SecondWindow) {
        self.expected_b += other.expected_b;
        self.a.merge(&other.a);
        self.b.merge(&other.b);
        for theirs in &other.instances {
            self.instance(&theirs.instance, theirs.variant)
                .merge(&theirs.window);
        }
    }

    /// The window of `instance` as `variant` in this second, made when first
    /// needed (a handful of instances: a scan beats a map).
    fn instance(&mut self, instance: &str, variant: Variant) -> &mut VariantWindow {
        let at = match self
            .instances
            .iter()
            .position(|i| i.instance == instance && i.variant == variant)
        {
            Some(at) => at,
            None => {
                self.instances.push(InstanceWindow {
                    instance: instance.to_string(),
                    variant,
                    window: VariantWindow::default(),
                });
                self.instances.len() - 1
            }
        };
        &mut self.instances[at].window
    }
}

impl VariantWindow {
    fn count(&mut self, entry: &AccessEntry) {
        self.requests += 1;
        if entry.status >= 500 {
            self.errors += 1;
        }
        self.latency.record(entry.latency_ms * 1000.0);
    }

    /// Adds `other`'s requests, errors and latencies to these.
    pub fn merge(&mut self, other: &VariantWindow) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(second: u64, requests: u64) -> SecondWindow {
        SecondWindow {
            second,
            a: VariantWindow {
                requests,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn windows_absorbed_from_hosts_are_summed_with_the_workers_own() {
        let telemetry = Telemetry::detached("prod");
        telemetry.absorb(&[window(10, 2), window(11, 1)]);
        telemetry.absorb(&[window(10, 3)]);
        let seconds: Vec<(u64, u64)> = telemetry
            .windows_after(0)
            .iter()
            .map(|w| (w.second, w.a.requests))
            .collect();
        assert_eq!(seconds, [(10, 5), (11, 1)]);
        assert_eq!(telemetry.windows_after(10).len(), 1);
        let old: Vec<SecondWindow> = (0..WINDOW_SECONDS as u64 + 5)
            .map(|s| window(100 + s, 1))
            .collect();
        telemetry.absorb(&old);
        assert_eq!(telemetry.windows_after(0).len(), WINDOW_SECONDS);
    }
}
