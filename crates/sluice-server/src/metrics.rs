//! `/metrics`: the server's Prometheus metrics in the text format, with
//! those of its local agent's entry points merged in (the environments it
//! serves in the server's place).

use std::time::Duration;

use crate::{ApiError, AppState};

/// How long `/metrics` waits for the local agent's.
const LOCAL_AGENT_WITHIN: Duration = Duration::from_secs(2);

/// The Prometheus text format of every metric. Read without a token, as
/// scrapers do; it names services, environments and instances, no secrets.
pub(crate) async fn page(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    let local = match &state.local_agent {
        Some(data_dir) => local_agent_metrics(data_dir).await,
        None => None,
    };
    let mut response = metrics_page(&state.registry);
    if let Some(local) = local {
        use axum::response::IntoResponse;
        let own = axum::body::to_bytes(std::mem::take(response.body_mut()), usize::MAX).await;
        if let Ok(own) = own {
            let merged = merge(&String::from_utf8_lossy(&own), &local);
            response = ([(axum::http::header::CONTENT_TYPE, TEXT)], merged).into_response();
        }
    }
    response
}

/// What the local agent's entry points counted, when it answers in time.
async fn local_agent_metrics(data_dir: &std::path::Path) -> Option<String> {
    let addr = crate::local_agent::metrics_address(data_dir)?;
    let client = reqwest::Client::builder()
        .timeout(LOCAL_AGENT_WITHIN)
        .build()
        .ok()?;
    let answer = client.get(format!("http://{addr}/metrics")).send().await;
    match answer {
        Ok(answer) if answer.status().is_success() => answer.text().await.ok(),
        other => {
            tracing::warn!(
                ?other,
                "the local agent's metrics are missing from /metrics"
            );
            None
        }
    }
}

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `registry` in Prometheus's text format, as `/metrics` answers it (an
/// agent serves its entry points' metrics the same way).
pub fn metrics_page(registry: &prometheus_client::registry::Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => (
            [(axum::http::header::CONTENT_TYPE, TEXT)],
            prometheus_text(&text),
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// OpenMetrics text as Prometheus's own format: a counter's HELP and TYPE
/// name its `_total` series, and there is no `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The families of `own` with the samples of `other`'s of the same name
/// after their own, then `other`'s families `own` does not have: one
/// `# HELP` and `# TYPE` per family, as Prometheus requires.
fn merge(own: &str, other: &str) -> String {
    let theirs = families(other);
    let mut out = String::with_capacity(own.len() + other.len());
    let mut merged = std::collections::HashSet::new();
    for (name, lines) in families(own) {
        lines.iter().for_each(|l| push_line(&mut out, l));
        if let Some((_, extra)) = theirs.iter().find(|(n, _)| *n == name) {
            extra
                .iter()
                .filter(|l| !l.starts_with('#'))
                .for_each(|l| push_line(&mut out, l));
        }
        merged.insert(name);
    }
    for (name, lines) in &theirs {
        if !merged.contains(name) {
            lines.iter().for_each(|l| push_line(&mut out, l));
        }
    }
    out
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

/// The families of a page in order: each family's name (from its first
/// `# HELP` or `# TYPE`) with its lines.
fn families(page: &str) -> Vec<(&str, Vec<&str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in page.lines().filter(|l| !l.is_empty()) {
        let named = ["# HELP ", "# TYPE ", "# UNIT "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .and_then(|rest| rest.split(' ').next());
        match (named, out.last_mut()) {
            (Some(name), Some((last, lines))) if *last == name => lines.push(line),
            (Some(name), _) => out.push((name, vec![line])),
            (None, Some((_, lines))) => lines.push(line),
            (None, None) => out.push(("", vec![line])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_series() {
        let open = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 5\n# TYPE x_in_flight gauge\nx_in_flight 1\n# EOF\n";
        assert_eq!(
            prometheus_text(open),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 5\n# TYPE x_in_flight gauge\nx_in_flight 1\n"
        );
    }

    #[test]
    fn the_local_agents_samples_join_the_families_of_the_same_name() {
        let own = "# HELP r_total Requests.\n# TYPE r_total counter\nr_total{env=\"a\"} 1\n# HELP up Up.\n# TYPE up gauge\nup 1\n";
        let agent = "# HELP r_total Requests.\n# TYPE r_total counter\nr_total{env=\"b\"} 2\n# HELP only_there X.\n# TYPE only_there gauge\nonly_there 3\n";
        assert_eq!(
            merge(own, agent),
            "# HELP r_total Requests.\n# TYPE r_total counter\nr_total{env=\"a\"} 1\nr_total{env=\"b\"} 2\n# HELP up Up.\n# TYPE up gauge\nup 1\n# HELP only_there X.\n# TYPE only_there gauge\nonly_there 3\n"
        );
        assert_eq!(merge(own, ""), own);
    }
}
