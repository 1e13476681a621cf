//! Experiments: the list, and one experiment's live charts per variant
//! (requests per second, error rate, p50/p95 latency) with its weight steps
//! marked, its decision log, and pause / resume / promote / abort.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect};
use serde::Deserialize;
use serde_json::Value;
use sluice_deploy::ExperimentCommand;
use sluice_store::{Experiment, Role};

use super::chart::{Marker, Series, line_chart};
use super::session::{Viewer, encode};
use super::{Chrome, PageResult, error_page, failed, render};
use crate::AppState;

#[derive(Template)]
#[template(path = "experiments.html")]
struct ListPage {
    page: Chrome,
    experiments: Vec<Experiment>,
}

pub async fn list(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let experiments = state.store.experiments(None, 100).await.map_err(failed)?;
    Ok(render(ListPage {
        page: Chrome::new(&viewer, "Experiments", "experiments"),
        experiments,
    }))
}

/// One decision of the log, as shown.
pub struct DecisionRow {
    pub at: String,
    pub action: String,
    pub weight: String,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "experiment.html")]
struct ShowPage {
    page: Chrome,
    x: Experiment,
    charts: String,
    decisions: Vec<DecisionRow>,
    report: Vec<ReportRow>,
    approver: Role,
}

/// One variant's line of the final report.
struct ReportRow {
    variant: &'static str,
    requests: String,
    errors: String,
    error_rate: String,
    p50: String,
    p95: String,
    p99: String,
}

/// The report's per-variant figures as table rows (none before it ends).
fn report_rows(report: Option<&str>) -> Vec<ReportRow> {
    let Some(report) = report.and_then(|r| serde_json::from_str::<Value>(r).ok()) else {
        return Vec::new();
    };
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |ms| format!("{ms:.1} ms"))
    };
    [("A", &report["a"]), ("B", &report["b"])]
        .into_iter()
        .map(|(variant, side)| ReportRow {
            variant,
            requests: side["requests"].to_string(),
            errors: side["errors"].to_string(),
            error_rate: side["error_rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{:.3}%", 100.0 * r)),
            p50: ms(&side["p50_ms"]),
            p95: ms(&side["p95_ms"]),
            p99: ms(&side["p99_ms"]),
        })
        .collect()
}

pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> PageResult {
    let x = state.store.experiment(id).await.map_err(failed)?;
    let decisions: Vec<Value> = serde_json::from_str(&x.decisions).unwrap_or_default();
    let rows = decisions
        .iter()
        .rev()
        .map(|d| DecisionRow {
            at: d["at"].as_i64().map_or("-".into(), super::when),
            action: d["action"].as_str().unwrap_or("?").to_string(),
            weight: d["weight"]
                .as_f64()
                .map_or(String::new(), |w| format!("{w}%")),
            reason: d["reason"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    let report = report_rows(x.report.as_deref());
    Ok(render(ShowPage {
        page: Chrome::new(&viewer, format!("Experiment {id}"), "experiments"),
        charts: charts_html(&state, &x),
        decisions: rows,
        report,
        x,
        approver: Role::Approver,
    }))
}

/// The charts alone, which the page fetches again every few seconds.
pub async fn charts(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path(id): Path<i64>,
) -> PageResult {
    let x = state.store.experiment(id).await.map_err(failed)?;
    Ok(Html(charts_html(&state, &x)).into_response())
}

fn charts_html(state: &AppState, x: &Experiment) -> String {
    let since = (x.created_at / 1000) as u64;
    let until = x.finished_at.map_or(u64::MAX, |t| (t / 1000) as u64 + 1);
    let windows: Vec<_> = state
        .cd
        .windows(&x.service, &x.environment, since.saturating_sub(1))
        .into_iter()
        .filter(|w| w.second <= until)
        .collect();
    let series = |name: &'static str,
                  value: &dyn Fn(&sluice_proxy::VariantWindow) -> Option<f64>,
                  b: bool| Series {
        name,
        points: windows
            .iter()
            .filter_map(|w| {
                let side = if b { &w.b } else { &w.a };
                value(side).map(|v| (w.second, v))
            })
            .collect(),
    };
    let rps = |s: &sluice_proxy::VariantWindow| Some(s.requests as f64);
    let errors = |s: &sluice_proxy::VariantWindow| {
        (s.requests > 0).then(|| 100.0 * s.errors as f64 / s.requests as f64)
    };
    let p50 = |s: &sluice_proxy::VariantWindow| s.latency.quantile(0.5).map(|us| us / 1000.0);
    let p95 = |s: &sluice_proxy::VariantWindow| s.latency.quantile(0.95).map(|us| us / 1000.0);
    let markers = markers(x);
    let charts = [
        line_chart(
            "Requests per second",
            "/s",
            &[series("A", &rps, false), series("B", &rps, true)],
            &markers,
        ),
        line_chart(
            "Error rate",
            "%",
            &[series("A", &errors, false), series("B", &errors, true)],
            &markers,
        ),
        line_chart(
            "Latency p50 and p95",
            " ms",
            &[
                series("A p50", &p50, false),
                series("B p50", &p50, true),
                series("A p95", &p95, false),
                series("B p95", &p95, true),
            ],
            &markers,
        ),
    ];
    let titles = [
        "Requests per second",
        "Error rate",
        "Latency: p50 (thick) and p95 (thin)",
    ];
    titles
        .iter()
        .zip(charts)
        .map(|(title, svg)| format!("<figure><figcaption>{title}</figcaption>{svg}</figure>"))
        .collect()
}

/// The start and each step of the weight, from the decision log.
fn markers(x: &Experiment) -> Vec<Marker> {
    let decisions: Vec<Value> = serde_json::from_str(&x.decisions).unwrap_or_default();
    let mut found = vec![Marker {
        second: (x.created_at / 1000) as u64,
        label: "start".into(),
    }];
    for d in decisions {
        let (Some(at), Some(action)) = (d["at"].as_i64(), d["action"].as_str()) else {
            continue;
        };
        if matches!(action, "advance" | "promote" | "rollback" | "abort") {
            found.push(Marker {
                second: (at / 1000) as u64,
                label: action.to_string(),
            });
        }
    }
    found
}

#[derive(Deserialize)]
pub struct Steer {
    csrf: String,
}

pub async fn steer(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((id, verb)): Path<(i64, String)>,
    Form(form): Form<Steer>,
) -> PageResult {
    viewer.check_csrf(&form.csrf)?;
    let command = match verb.as_str() {
        "pause" => ExperimentCommand::Pause,
        "resume" => ExperimentCommand::Resume,
        "promote" => ExperimentCommand::Promote,
        "abort" => ExperimentCommand::Abort,
        other => {
            return Err(error_page(
                StatusCode::NOT_FOUND,
                &format!("An experiment takes pause, resume, promote or abort, not `{other}`."),
                "",
            ));
        }
    };
    state
        .cd
        .experiment_command(id, command, &viewer.caller.actor())
        .await
        .map_err(failed)?;
    let to = format!("/experiments/{id}?sent={}", encode(&verb));
    Ok(Redirect::to(&to).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_report_reads_as_a_table() {
        let rows = super::report_rows(Some(
            r#"{"a":{"requests":990,"errors":1,"error_rate":0.00101,"p50_ms":2.04,"p95_ms":4.5,"p99_ms":null},"b":{"requests":10,"errors":0,"error_rate":0.0,"p50_ms":2.1,"p95_ms":4.9,"p99_ms":7.25}}"#,
        ));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].variant,
                rows[0].error_rate.as_str(),
                rows[0].p50.as_str(),
                rows[0].p99.as_str()
            ),
            ("A", "0.101%", "2.0 ms", "-")
        );
        assert_eq!(
            (rows[1].requests.as_str(), rows[1].p99.as_str()),
            ("10", "7.2 ms")
        );
        assert!(super::report_rows(None).is_empty());
    }
}
