//! What failed most lately at an environment's entry points: the failed
//! requests (5xx) among the last lines of an access log, by `METHOD /path`,
//! counted on the server for its own entry point and on each agent's host
//! for its own, and merged when an incident opens.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many of an access log's last lines are read.
const LINES: usize = 5000;
/// How many requests a host reports, the most failed first.
pub const MAX_REPORTED: usize = 20;
/// The longest `METHOD /path` a host may report.
pub const MAX_REQUEST_CHARS: usize = 300;

/// Failed requests of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureCount {
    /// `METHOD /path`, without the query.
    pub request: String,
    pub count: u64,
}

/// The failed requests among the last lines of `tail` (an access log's
/// end, JSON lines), the most failed first.
pub fn count(tail: &str) -> Vec<FailureCount> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in tail.lines().rev().take(LINES) {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if entry["status"].as_u64().is_some_and(|s| s >= 500) {
            let path = entry["path"].as_str().unwrap_or("?");
            let path = path.split('?').next().unwrap_or(path);
            let request = format!("{} {path}", entry["method"].as_str().unwrap_or("?"));
            *counts.entry(request).or_default() += 1;
        }
    }
    let mut ranked: Vec<FailureCount> = counts
        .into_iter()
        .map(|(request, count)| FailureCount { request, count })
        .collect();
    ranked.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.request.cmp(&b.request))
    });
    ranked
}

/// The three requests that failed most over every count given:
/// `GET /checkout (57 of 60 failures)`.
pub fn worst(counts: &[Vec<FailureCount>]) -> Vec<String> {
    let mut merged: BTreeMap<&str, u64> = BTreeMap::new();
    for failure in counts.iter().flatten() {
        *merged.entry(&failure.request).or_default() += failure.count;
    }
    let total: u64 = merged.values().sum();
    let mut ranked: Vec<(&str, u64)> = merged.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(3)
        .map(|(request, n)| format!("{request} ({n} of {total} failures)"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(method: &str, path: &str, status: u16) -> String {
        serde_json::json!({ "method": method, "path": path, "status": status }).to_string()
    }

    #[test]
    fn failures_are_counted_by_request_and_merged_over_hosts() {
        let server: Vec<String> = [
            line("POST", "/checkout?cart=1", 500),
            line("POST", "/checkout", 502),
            line("GET", "/", 200),
            line("GET", "/cart", 503),
            "not json".to_string(),
        ]
        .into();
        let here = count(&server.join("\n"));
        assert_eq!(
            here,
            [
                FailureCount {
                    request: "POST /checkout".into(),
                    count: 2
                },
                FailureCount {
                    request: "GET /cart".into(),
                    count: 1
                },
            ]
        );
        let host = count(&[line("GET", "/cart", 500), line("GET", "/cart", 500)].join("\n"));
        assert_eq!(
            worst(&[here, host]),
            [
                "GET /cart (3 of 5 failures)",
                "POST /checkout (2 of 5 failures)"
            ]
        );
        assert!(worst(&[]).is_empty());
    }
}
