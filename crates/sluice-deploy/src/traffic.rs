//! The proxy's traffic beyond its in-memory windows: kept in the store
//! (every ten seconds, each environment's finished ten-second buckets go to
//! the `traffic` table, the unfinished one too at shutdown, so that an
//! incident's timeline outlives a restart and the windows' 30 minutes; a
//! kill loses at most the last twenty seconds; buckets are kept 30 days),
//! and summed per instance for an environment's page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sluice_proxy::{SecondWindow, Variant, VariantWindow};
use sluice_store::{TRAFFIC_BUCKET_MS, TrafficBucket};

use crate::Inner;

const FLUSH_EVERY: Duration = Duration::from_secs(10);
const BUCKET_SECONDS: u64 = (TRAFFIC_BUCKET_MS / 1000) as u64;
const KEEP_FOR_MS: i64 = 30 * 24 * 3600 * 1000;

/// Flushes every ten seconds until shutdown; forgets old buckets hourly.
pub(crate) async fn keep(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut forgot_at = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.shutdown.cancelled() => return,
        }
        flush(&inner, false).await;
        let now = sluice_store::now_ms();
        if now - forgot_at > 3600 * 1000 {
            forgot_at = now;
            if let Err(e) = inner.store.forget_traffic_before(now - KEEP_FOR_MS).await {
                tracing::warn!(error = %e, "could not forget old traffic");
            }
        }
    }
}

/// Stores each environment's windows not stored yet: the finished buckets,
/// or with `everything` (at shutdown) all of them.
pub(crate) async fn flush(inner: &Inner, everything: bool) {
    let now = sluice_store::now_ms().max(0) as u64 / 1000;
    for (key, telemetry, from) in inner.unstored() {
        // A second's window is final once the clock has left it and every
        // entry point has sent it; a bucket once all its seconds are.
        let complete = inner.complete_before(&key.0, &key.1, now);
        let until = if everything {
            now + 1
        } else {
            complete.saturating_sub(1) / BUCKET_SECONDS * BUCKET_SECONDS
        };
        let windows = telemetry.windows_after(from.saturating_sub(1));
        let buckets = buckets(&key.0, &key.1, &windows, from, until);
        match inner.store.add_traffic(&buckets).await {
            Ok(()) => inner.stored_until(&key, until),
            Err(e) => {
                tracing::warn!(service = %key.0, env = %key.1, error = %e, "could not keep traffic")
            }
        }
    }
}

/// The windows of seconds in `from..until` summed into ten-second buckets.
pub(crate) fn buckets(
    service: &str,
    environment: &str,
    windows: &[SecondWindow],
    from: u64,
    until: u64,
) -> Vec<TrafficBucket> {
    let mut sums: BTreeMap<u64, TrafficBucket> = BTreeMap::new();
    for w in windows.iter().filter(|w| (from..until).contains(&w.second)) {
        let start = w.second / BUCKET_SECONDS * BUCKET_SECONDS;
        let bucket = sums.entry(start).or_insert_with(|| TrafficBucket {
            service: service.to_string(),
            environment: environment.to_string(),
            bucket: (start * 1000) as i64,
            ..Default::default()
        });
        bucket.a_requests += w.a.requests as i64;
        bucket.a_errors += w.a.errors as i64;
        bucket.b_requests += w.b.requests as i64;
        bucket.b_errors += w.b.errors as i64;
    }
    sums.into_values()
        .filter(|b| b.a_requests + b.b_requests > 0)
        .collect()
}

/// An environment's traffic since `since_ms`: the stored buckets, and the
/// ones still only in memory.
pub(crate) async fn since(
    inner: &Inner,
    service: &str,
    environment: &str,
    since_ms: i64,
) -> Vec<TrafficBucket> {
    let mut all = match inner
        .store
        .traffic(service, environment, since_ms, i64::MAX)
        .await
    {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = %e, "could not read kept traffic; the proxy's windows only");
            Vec::new()
        }
    };
    let from = inner.stored_through(service, environment);
    let windows = inner.windows(service, environment, (since_ms / 1000).max(0) as u64);
    for fresh in buckets(service, environment, &windows, from, u64::MAX) {
        match all.iter_mut().find(|b| b.bucket == fresh.bucket) {
            // A bucket stored in part (before a restart, say) and now growing.
            Some(kept) => {
                kept.a_requests += fresh.a_requests;
                kept.a_errors += fresh.a_errors;
                kept.b_requests += fresh.b_requests;
                kept.b_errors += fresh.b_errors;
            }
            None => all.push(fresh),
        }
    }
    all.sort_by_key(|b| b.bucket);
    all
}

/// What one instance answered, as one variant, over the last seconds.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceTraffic {
    pub instance: String,
    pub variant: Variant,
    pub requests: u64,
    pub per_second: f64,
    /// 5xx answers.
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

impl InstanceTraffic {
    /// `0.4%`, for a page.
    pub fn error_share(&self) -> String {
        let share = self.errors as f64 / self.requests.max(1) as f64;
        format!("{:.1}%", 100.0 * share)
    }

    /// `12.3 ms`, or `-` without requests.
    pub fn p50(&self) -> String {
        millis(self.p50_ms)
    }

    pub fn p95(&self) -> String {
        millis(self.p95_ms)
    }
}

fn millis(value: Option<f64>) -> String {
    value.map_or("-".into(), |ms| format!("{ms:.1} ms"))
}

/// Each instance's requests over the `seconds` the windows cover, busiest first.
pub(crate) fn per_instance(windows: &[SecondWindow], seconds: u64) -> Vec<InstanceTraffic> {
    let mut sums: Vec<(&str, Variant, VariantWindow)> = Vec::new();
    for instance in windows.iter().flat_map(|w| &w.instances) {
        let key = (instance.instance.as_str(), instance.variant);
        match sums.iter_mut().find(|s| (s.0, s.1) == key) {
            Some(sum) => sum.2.merge(&instance.window),
            None => sums.push((key.0, key.1, instance.window.clone())),
        }
    }
    let mut traffic: Vec<InstanceTraffic> = sums
        .into_iter()
        .map(|(instance, variant, sum)| InstanceTraffic {
            instance: instance.to_string(),
            variant,
            requests: sum.requests,
            per_second: sum.requests as f64 / seconds.max(1) as f64,
            errors: sum.errors,
            p50_ms: sum.latency.quantile(0.5).map(|us| us / 1000.0),
            p95_ms: sum.latency.quantile(0.95).map(|us| us / 1000.0),
        })
        .collect();
    traffic.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then(a.instance.cmp(&b.instance))
    });
    traffic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(at: u64, a: (u64, u64), b: (u64, u64)) -> SecondWindow {
        let mut w = SecondWindow {
            second: at,
            ..Default::default()
        };
        (w.a.requests, w.a.errors, w.b.requests, w.b.errors) = (a.0, a.1, b.0, b.1);
        w
    }

    #[test]
    fn each_instance_gets_its_rate_errors_and_latency() {
        let mut windows = Vec::new();
        for at in 0..10 {
            let mut w = second(at, (3, 0), (1, 1));
            for (instance, variant, n, errors) in
                [("a-1", Variant::A, 3, 0), ("b-1", Variant::B, 1, 1)]
            {
                let mut window = sluice_proxy::VariantWindow {
                    requests: n,
                    errors,
                    ..Default::default()
                };
                for _ in 0..n {
                    window.latency.record(if variant == Variant::B {
                        40_000.0
                    } else {
                        10_000.0
                    });
                }
                w.instances.push(sluice_proxy::InstanceWindow {
                    instance: instance.into(),
                    variant,
                    window,
                });
            }
            windows.push(w);
        }
        let traffic = per_instance(&windows, 10);
        let rows: Vec<(&str, u64, f64, u64)> = traffic
            .iter()
            .map(|t| (t.instance.as_str(), t.requests, t.per_second, t.errors))
            .collect();
        assert_eq!(
            rows,
            vec![("a-1", 30, 3.0, 0), ("b-1", 10, 1.0, 10)],
            "busiest first"
        );
        assert_eq!(traffic[1].error_share(), "100.0%");
        let p50 = traffic[1].p50_ms.unwrap();
        assert!((38.0..42.0).contains(&p50), "{p50}");
    }

    #[test]
    fn seconds_are_summed_into_ten_second_buckets_within_the_range() {
        let windows = [
            second(1_000, (5, 1), (0, 0)),
            second(1_009, (5, 0), (2, 2)),
            second(1_010, (3, 0), (0, 0)),
            second(1_020, (4, 0), (0, 0)),
            second(1_031, (0, 0), (0, 0)),
        ];
        let sums: Vec<(i64, i64, i64, i64, i64)> = buckets("shop", "prod", &windows, 1_000, 1_020)
            .iter()
            .map(|b| (b.bucket, b.a_requests, b.a_errors, b.b_requests, b.b_errors))
            .collect();
        assert_eq!(
            sums,
            vec![(1_000_000, 10, 1, 2, 2), (1_010_000, 3, 0, 0, 0)],
            "1020 is not before the end; an empty second makes no bucket"
        );
        assert!(buckets("shop", "prod", &windows, 1_040, 2_000).is_empty());
    }
}
