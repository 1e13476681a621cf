//! Incidents (timeline, suspects with their diffs, the postmortem rendered
//! from Markdown, its rules) and rules (origin, what each blocked, disable
//! with a reason).

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};
use serde::Deserialize;
use sluice_deploy::IncidentView;
use sluice_store::{Incident, RuleBlock, RuleRecord, Store};

use super::session::{Viewer, encode};
use super::{Chrome, Done, PageResult, failed, render};
use crate::AppState;
use crate::access::Operation;
use crate::ids::{IncidentId, RuleId};

#[derive(Template)]
#[template(path = "incidents.html")]
struct ListPage {
    page: Chrome,
    incidents: Vec<Incident>,
}

pub async fn list(State(store): State<Store>, viewer: Viewer) -> PageResult {
    let incidents = store.incidents(None, false, 200).await.map_err(failed)?;
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
    Path(IncidentId(id)): Path<IncidentId>,
) -> PageResult {
    let view = state.cd.incident(id).await.map_err(failed)?;
    let text = state.cd.postmortem(id).await.map_err(failed)?;
    Ok(render(ShowPage {
        page: Chrome::new(&viewer, format!("INC-{id}"), "incidents"),
        postmortem: markdown(&text),
        view,
    }))
}

/// Markdown as HTML, with any raw HTML in it shown as text and links or
/// images to anything but http, https, mailto or a relative address
/// (`javascript:`, `data:`…) pointing nowhere.
pub fn markdown(text: &str) -> String {
    let events =
        Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS).map(|event| {
            match event {
                Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
                Event::Start(Tag::Link {
                    link_type,
                    dest_url,
                    title,
                    id,
                }) => Event::Start(Tag::Link {
                    link_type,
                    dest_url: safe_url(dest_url),
                    title,
                    id,
                }),
                Event::Start(Tag::Image {
                    link_type,
                    dest_url,
                    title,
                    id,
                }) => Event::Start(Tag::Image {
                    link_type,
                    dest_url: safe_url(dest_url),
                    title,
                    id,
                }),
                other => other,
            }
        });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

/// `url` when it is relative or http, https or mailto; `#` otherwise.
/// Browsers drop tabs, newlines and leading spaces from a scheme, so the
/// check does too.
fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    let seen: String = url
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    let scheme_end = seen.find(':');
    let before_path = seen.find(['/', '?', '#']).unwrap_or(seen.len());
    match scheme_end {
        Some(end) if end < before_path => {
            if matches!(&seen[..end], "http" | "https" | "mailto") {
                url
            } else {
                CowStr::Borrowed("#")
            }
        }
        _ => url,
    }
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
    approver: Operation,
}

pub async fn rules(
    State(store): State<Store>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> PageResult {
    let now = sluice_store::now_ms();
    let mut rows = Vec::new();
    for record in store.rules(None, false).await.map_err(failed)? {
        let blocks = store.rule_blocks(&record.name()).await.map_err(failed)?;
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
        approver: Operation::ManageRules,
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
    Path(RuleId(id)): Path<RuleId>,
    Form(form): Form<Disable>,
) -> PageResult {
    viewer.check_csrf(&form.csrf)?;
    viewer.may(Operation::ManageRules)?;
    state
        .cd
        .disable_rule(id, &form.reason, &viewer.caller.actor())
        .await
        .map_err(failed)?;
    let done = format!("R{id} is disabled.");
    Ok(Redirect::to(&format!("/rules?done={}", encode(&done))).into_response())
}

#[cfg(test)]
mod tests {
    use super::markdown;

    #[test]
    fn only_safe_links_survive_a_postmortem() {
        for evil in [
            "[x](javascript:alert(1))",
            "[x](JavaScript:alert(1))",
            "[x](java\tscript:alert(1))",
            "[x]( javascript:alert(1))",
            "[x](data:text/html,<script>alert(1)</script>)",
            "[x](vbscript:msgbox)",
            "![x](data:image/svg+xml,<svg onload=alert(1)>)",
            "<javascript:alert(1)>",
        ] {
            let html = markdown(evil);
            for attribute in ["href=\"", "src=\""] {
                for (at, _) in html.match_indices(attribute) {
                    let value = &html[at + attribute.len()..];
                    assert!(value.starts_with("#\""), "{evil}: {html}");
                }
            }
        }
        for good in [
            (
                "[a](https://example.com/x)",
                "href=\"https://example.com/x\"",
            ),
            ("[a](http://example.com)", "href=\"http://example.com\""),
            (
                "[a](mailto:ops@example.com)",
                "href=\"mailto:ops@example.com\"",
            ),
            ("[a](/incidents/1)", "href=\"/incidents/1\""),
            ("[a](runs/3?x=a:b)", "href=\"runs/3?x=a:b\""),
        ] {
            assert!(markdown(good.0).contains(good.1), "{}", markdown(good.0));
        }
    }
}
