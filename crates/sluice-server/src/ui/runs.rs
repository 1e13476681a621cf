//! Changes with their run status, a run's page (jobs, steps, durations,
//! the agents that claimed them, and the log, which follows live while the
//! run goes on), and the agents that run jobs.

use askama::Template;
use axum::extract::{Path, State};
use sluice_store::{Change, LogLine, RunDetail, Store};

use super::session::Viewer;
use super::{Chrome, PageResult, ansi, failed, render};
use crate::AppState;

#[derive(Template)]
#[template(path = "changes.html")]
struct ChangesPage {
    page: Chrome,
    changes: Vec<Change>,
}

pub async fn changes(State(store): State<Store>, viewer: Viewer) -> PageResult {
    let changes = store.changes(None, 200).await.map_err(failed)?;
    Ok(render(ChangesPage {
        page: Chrome::new(&viewer, "Changes", "changes"),
        changes,
    }))
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    page: Chrome,
    agents: Vec<(sluice_store::Agent, bool)>,
}

pub async fn agents(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let agents = state.ci.agents().await.map_err(failed)?;
    Ok(render(AgentsPage {
        page: Chrome::new(&viewer, "Agents", "agents"),
        agents,
    }))
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    page: Chrome,
    detail: RunDetail,
    lines: Vec<LogLine>,
    finished: bool,
}

impl RunPage {
    fn line_html(&self, line: &LogLine) -> String {
        ansi::to_html(&line.line)
    }
}

/// The lines of a run's log its page shows: its end.
pub const LOG_TAIL: usize = 5_000;

pub async fn run(State(store): State<Store>, viewer: Viewer, Path(id): Path<i64>) -> PageResult {
    let detail = store.run_detail(id).await.map_err(failed)?;
    // A page shows the end of a long log; the whole is a download.
    let lines = store.log_tail(id, LOG_TAIL).await.map_err(failed)?;
    Ok(render(RunPage {
        page: Chrome::new(&viewer, format!("Run {id}"), "changes"),
        finished: detail.run.status.is_finished(),
        detail,
        lines,
    }))
}

/// `1.2 s` between two times, `running` without an end.
pub fn took(start: &Option<i64>, end: &Option<i64>) -> String {
    match (start, end) {
        (Some(a), Some(b)) => format!("{:.1} s", (b - a).max(0) as f64 / 1000.0),
        (Some(_), None) => "running".into(),
        _ => "–".into(),
    }
}
