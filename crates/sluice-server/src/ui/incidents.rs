//! Incidents (timeline, suspects with their diffs, the postmortem rendered
//! from Markdown, its rules) and rules (origin, what each blocked, disable
//! with a reason).

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use pulldown_cmark::{Event, Options, Parser};
use serde::Deserialize;
use sluice_deploy::IncidentView;
use sluice_store::{Incident, Role, RuleBlock, RuleRecord};

use super::session::{Viewer, encode};
use super::{Chrome, PageResult, error_page, failed, render};
use crate::AppState;

#[derive(Template)]
#[template(path = "incidents.html")]
struct ListPage {
    page: Chrome,
    incidents: Vec<Incident>,
}

pub async fn list(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let incidents = state
        .store
        .incidents(None, false, 200)
        .await
        .map_err(failed)?;
    Ok(render(ListPage {
        page: Chrome::new(&viewer, "Incidents", "incidents"),
        incidents,
    }))
}

#[derive(Template)]
#[template(path = "incident.html")]
struct ShowPage {
    page: Chrome,
    view: IncidentView,
    postmortem: String,
}

pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> PageResult {
    let view = state.cd.incident(id).await.map_err(failed)?;
    let text = state.cd.postmortem(id).await.map_err(failed)?;
    Ok(render(ShowPage {
        page: Chrome::new(&viewer, format!("INC-{id}"), "incidents"),
        postmortem: markdown(&text),
        view,
    }))
}

/// Markdown as HTML, with any raw HTML in it shown as text.
pub fn markdown(text: &str) -> String {
    let events =
        Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS).map(|event| {
            match event {
                Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
                other => other,
            }
        });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

/// A rule as the rules page shows it.
pub struct RuleRow {
    pub record: RuleRecord,
    pub describes: String,
    pub active: bool,
    pub blocks: Vec<RuleBlock>,
}

#[derive(Template)]
#[template(path = "rules.html")]
struct RulesPage {
    page: Chrome,
    rules: Vec<RuleRow>,
    approver: Role,
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

pub async fn rules(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> PageResult {
    let now = sluice_store::now_ms();
    let mut rows = Vec::new();
    for record in state.store.rules(None, false).await.map_err(failed)? {
        let blocks = state
            .store
            .rule_blocks(&record.name())
            .await
            .map_err(failed)?;
        let describes = serde_json::from_str::<sluice_spec::RuleSpec>(&record.spec)
            .map(|s| s.describe())
            .unwrap_or_else(|e| format!("(does not parse: {e})"));
        rows.push(RuleRow {
            active: record.is_active(now),
            record,
            describes,
            blocks,
        });
    }
    let mut page = Chrome::new(&viewer, "Rules", "rules");
    page.flash = q.done;
    Ok(render(RulesPage {
        page,
        rules: rows,
        approver: Role::Approver,
    }))
}

#[derive(Deserialize)]
pub struct Disable {
    csrf: String,
    #[serde(default)]
    reason: String,
}

pub async fn disable_rule(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<Disable>,
) -> PageResult {
    viewer.check_csrf(&form.csrf)?;
    if viewer.caller.role < Role::Approver {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "Disabling a rule needs the approver role; you ({}) have {}.",
                viewer.caller.name, viewer.caller.role
            ),
            "Ask an admin for an approver token.",
        ));
    }
    state
        .cd
        .disable_rule(id, &form.reason, &viewer.caller.actor())
        .await
        .map_err(failed)?;
    let done = format!("R{id} is disabled.");
    Ok(Redirect::to(&format!("/rules?done={}", encode(&done))).into_response())
}
