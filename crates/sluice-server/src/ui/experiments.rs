//! Experiments: the list, and one experiment's live charts per variant
//! (requests per second, error rate, p50/p95 latency) with its weight steps
//! marked, its goals (each variant's conversion or value per user over time,
//! B's lift with its interval), its decision log, and pause / resume /
//! promote / abort.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect};
use serde::Deserialize;
use serde_json::Value;
use sluice_deploy::ExperimentCommand;
use sluice_store::Experiment;

use super::chart::{Marker, Series, line_chart};
use super::session::{Viewer, encode};
use super::{Chrome, PageResult, error_page, failed, render};
use crate::AppState;
use crate::access::Operation;

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
    goals: Vec<GoalRow>,
    goal_charts: String,
    mode: String,
    approver: Operation,
}

/// One goal as the page shows it.
struct GoalRow {
    name: String,
    primary: bool,
    kind: &'static str,
    a: String,
    b: String,
    lift: String,
    verdict: String,
}

/// The goals of the report (kept up to date while the experiment runs).
fn goal_rows(report: &Value) -> Vec<GoalRow> {
    let Some(goals) = report["goals"].as_array() else {
        return Vec::new();
    };
    goals
        .iter()
        .map(|g| {
            let value = g["value"].as_bool().unwrap_or(false);
            let side = |v: &Value| {
                let users = v["users"].as_u64().unwrap_or(0);
                match v["mean"].as_f64() {
                    Some(m) if value => format!("{m:.2} a user ({users} users)"),
                    Some(m) => format!("{:.2}% of {users} users", 100.0 * m),
                    None => format!("{users} users"),
                }
            };
            let (lift, verdict) = match g["lift"].as_object() {
                Some(l) => {
                    let pct = |k: &str| 100.0 * l[k].as_f64().unwrap_or(0.0);
                    let verdict = match (pct("lower"), pct("upper")) {
                        (lower, _) if lower > 0.0 => "B better",
                        (_, upper) if upper < 0.0 => "B worse",
                        _ => "not yet",
                    };
                    (
                        format!(
                            "{:+.1}% [{:+.1}%, {:+.1}%]",
                            pct("estimate"),
                            pct("lower"),
                            pct("upper")
                        ),
                        verdict.to_string(),
                    )
                }
                None => ("-".into(), "too few users yet".into()),
            };
            GoalRow {
                name: g["name"].as_str().unwrap_or("?").to_string(),
                primary: g["primary"] == true,
                kind: if value {
                    "value per user"
                } else {
                    "conversion"
                },
                a: side(&g["a"]),
                b: side(&g["b"]),
                lift,
                verdict,
            }
        })
        .collect()
}

/// Per goal: each variant's conversion (or value per user) over time, and
/// B's lift with its always-valid interval, from the report's points.
fn goal_charts(report: &Value) -> String {
    let points = report["goal_points"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<(String, bool)> = report["goals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            (
                g["name"].as_str().unwrap_or("?").to_string(),
                g["value"] == true,
            )
        })
        .collect();
    let mut html = String::new();
    for (name, value) in names {
        let scale = if value { 1.0 } else { 100.0 };
        let series = |what: &dyn Fn(&Value) -> Option<f64>| -> Vec<(u64, f64)> {
            points
                .iter()
                .filter_map(|p| {
                    let at = (p["at"].as_i64()? / 1000) as u64;
                    let goal = p["goals"]
                        .as_array()?
                        .iter()
                        .find(|g| g["goal"] == name.as_str())?;
                    what(goal).map(|v| (at, v))
                })
                .collect()
        };
        let means = [
            Series {
                name: "A",
                points: series(&|g| g["a"].as_f64().map(|m| m * scale)),
            },
            Series {
                name: "B",
                points: series(&|g| g["b"].as_f64().map(|m| m * scale)),
            },
        ];
        let lift = |k: &'static str| move |g: &Value| g["lift"][k].as_f64().map(|v| 100.0 * v);
        let lifts = [
            Series {
                name: "lift",
                points: series(&lift("estimate")),
            },
            Series {
                name: "bound",
                points: series(&lift("lower")),
            },
            Series {
                name: "bound",
                points: series(&lift("upper")),
            },
        ];
        let unit = if value { "" } else { "%" };
        let what = if value {
            "value per user"
        } else {
            "conversion"
        };
        for (title, svg) in [
            (
                format!("{name}: {what} per variant"),
                line_chart(&format!("{name} {what}"), unit, &means, &[]),
            ),
            (
                format!("{name}: B's lift with its interval"),
                line_chart(&format!("{name} lift"), "%", &lifts, &[]),
            ),
        ] {
            html.push_str("<figure><figcaption>");
            super::ansi::escape_into(&mut html, &title);
            html.push_str("</figcaption>");
            html.push_str(&svg);
            html.push_str("</figure>");
        }
    }
    html
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
    let full: Value = x
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    Ok(render(ShowPage {
        page: Chrome::new(&viewer, format!("Experiment {id}"), "experiments"),
        charts: charts_html(&state, &x),
        decisions: rows,
        report,
        goals: goal_rows(&full),
        goal_charts: goal_charts(&full),
        mode: full["mode"].as_str().unwrap_or("rollout").to_string(),
        x,
        approver: Operation::SteerExperiment,
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
    viewer.may(Operation::SteerExperiment)?;
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
    fn goals_read_as_rows_and_charts() {
        let report = serde_json::json!({
            "mode": "test",
            "goals": [
                { "name": "checkout", "primary": true, "value": false,
                  "a": { "users": 1097, "mean": 0.2 }, "b": { "users": 1072, "mean": 0.4 },
                  "lift": { "estimate": 1.0, "lower": 0.35, "upper": 1.54 } },
                { "name": "revenue", "primary": false, "value": true,
                  "a": { "users": 10, "mean": 2.0 }, "b": { "users": 12, "mean": 1.5 },
                  "lift": { "estimate": -0.25, "lower": -0.6, "upper": -0.01 } },
            ],
            "goal_points": [
                { "at": 1_000_000, "goals": [{ "goal": "checkout", "a": 0.2, "b": 0.3, "lift": { "estimate": 0.5, "lower": -0.2, "upper": 1.2 } }] },
                { "at": 1_005_000, "goals": [{ "goal": "checkout", "a": 0.2, "b": 0.4, "lift": { "estimate": 1.0, "lower": 0.35, "upper": 1.54 } }] },
            ],
        });
        let rows = super::goal_rows(&report);
        assert_eq!(
            (
                rows[0].a.as_str(),
                rows[0].lift.as_str(),
                rows[0].verdict.as_str()
            ),
            (
                "20.00% of 1097 users",
                "+100.0% [+35.0%, +154.0%]",
                "B better"
            )
        );
        assert_eq!(
            (rows[1].kind, rows[1].verdict.as_str()),
            ("value per user", "B worse")
        );
        let charts = super::goal_charts(&report);
        assert_eq!(charts.matches("<svg").count(), 4, "two charts a goal");
        assert!(
            charts.contains("checkout: B&#39;s lift") || charts.contains("checkout: B's lift"),
            "{charts}"
        );
        assert!(
            charts.contains(r#"class="zero""#),
            "a lift below zero draws the zero line"
        );
    }

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
