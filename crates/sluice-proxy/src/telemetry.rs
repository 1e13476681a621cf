//! What the proxy tells about the requests it served: Prometheus metrics per
//! environment × variant × instance, per-second windows per variant kept for
//! 30 minutes (for the analysis and the UI), and an access log of JSON lines.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use sluice_analysis::LogHistogram;
use tokio::sync::mpsc;

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
    pub(crate) in_flight: Family<InstanceLabels, Gauge>,
    pub(crate) connect_errors: Family<InstanceLabels, Counter>,
    pub(crate) ejections: Family<InstanceLabels, Counter>,
}

impl Metrics {
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
#[derive(Clone, Debug, Default, Serialize)]
pub struct VariantWindow {
    pub requests: u64,
    /// 5xx answers, the proxy's own included.
    pub errors: u64,
    pub latency: LogHistogram,
}

/// One second of an environment's traffic.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SecondWindow {
    /// Seconds since the Unix epoch.
    pub second: u64,
    /// The sum of B's weight (0 to 1) over the requests routed this second:
    /// how many B should have had, for the sample-ratio check.
    pub expected_b: f64,
    pub a: VariantWindow,
    pub b: VariantWindow,
}

/// An environment's telemetry: metrics, windows, access log.
#[derive(Clone)]
pub struct Telemetry {
    pub(crate) service: String,
    pub(crate) environment: String,
    pub(crate) metrics: Metrics,
    windows: Arc<Mutex<VecDeque<SecondWindow>>>,
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
    /// Telemetry for a service's environment, with an access log at `access_log` when given.
    pub fn new(
        service: &str,
        environment: &str,
        metrics: Metrics,
        access_log: Option<PathBuf>,
    ) -> Telemetry {
        let access = access_log.and_then(|path| {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).ok()?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ok()?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_access_log(file, rx));
            Some(tx)
        });
        Telemetry {
            service: service.to_string(),
            environment: environment.to_string(),
            metrics,
            windows: Arc::default(),
            access,
        }
    }

    /// A telemetry that only counts, for tests and tools.
    pub fn detached(environment: &str) -> Telemetry {
        Telemetry::new(
            "test",
            environment,
            Metrics::register(&mut Registry::default()),
            None,
        )
    }

    pub(crate) fn labels(&self, variant: Variant, instance: &str) -> InstanceLabels {
        InstanceLabels {
            service: self.service.clone(),
            environment: self.environment.clone(),
            variant: variant.as_str().to_string(),
            instance: instance.to_string(),
        }
    }

    /// Records an answered request; `share_b` is B's weight when it was routed.
    pub(crate) fn record(&self, entry: &AccessEntry, variant: Variant, share_b: f64) {
        let class = format!("{}xx", entry.status / 100);
        let labels = self.labels(variant, entry.instance);
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                service: labels.service.clone(),
                environment: labels.environment.clone(),
                variant: labels.variant.clone(),
                instance: labels.instance.clone(),
                class,
            })
            .inc();
        self.metrics
            .duration
            .get_or_create(&labels)
            .observe(entry.latency_ms / 1000.0);
        {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs();
            let mut windows = self.windows.lock().unwrap();
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
            side.requests += 1;
            if entry.status >= 500 {
                side.errors += 1;
            }
            side.latency.record(entry.latency_ms * 1000.0);
        }
        if let Some(access) = &self.access {
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

    /// The windows of seconds after `after` (seconds since the epoch), oldest first.
    pub fn windows_after(&self, after: u64) -> Vec<SecondWindow> {
        self.windows
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.second > after)
            .cloned()
            .collect()
    }
}

async fn write_access_log(file: std::fs::File, mut lines: mpsc::UnboundedReceiver<String>) {
    let mut out = std::io::BufWriter::new(file);
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let _ = out.flush();
                continue;
            }
        };
        match line {
            Some(line) => {
                let _ = writeln!(out, "{line}");
            }
            None => break,
        }
    }
    let _ = out.flush();
}
