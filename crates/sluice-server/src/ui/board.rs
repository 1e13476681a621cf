//! The overview board (services × environments, and the value stream of
//! the latest releases), an environment's page, a diff of two environments,
//! and the change log with its filters.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use sluice_deploy::{EnvDetail, EnvDiff, EnvStatus};
use sluice_store::{ChangeEvent, ChangeQuery, Experiment, Release, Store};

use super::session::Viewer;
use super::{Chrome, PageResult, failed, render};
use crate::AppState;

/// One service's row of the board.
pub struct ServiceRow {
    pub service: String,
    pub cells: Vec<Cell>,
    /// Incidents not yet resolved.
    pub incidents: Vec<sluice_store::Incident>,
    /// What rules stopped lately (a change, a promotion, an instance).
    pub blocks: Vec<sluice_store::RuleBlock>,
    pub stream: Vec<StreamRow>,
    pub environments: Vec<String>,
}

/// One environment of a service.
pub struct Cell {
    pub status: EnvStatus,
    pub healthy: usize,
    pub experiment: Option<Experiment>,
}

/// A release and where it runs now.
pub struct StreamRow {
    pub release: Release,
    /// Per environment of the service: `runs`, or empty.
    pub runs_in: Vec<bool>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    page: Chrome,
    services: Vec<ServiceRow>,
}

pub async fn overview(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let statuses = state.cd.status(None).await.map_err(failed)?;
    let experiments = state.store.experiments(None, 200).await.map_err(failed)?;
    let mut by_service: BTreeMap<String, Vec<EnvStatus>> = BTreeMap::new();
    // A service with an open incident is on the board even before it runs anywhere.
    for incident in state
        .store
        .incidents(None, true, 200)
        .await
        .map_err(failed)?
    {
        by_service.entry(incident.service).or_default();
    }
    for status in statuses {
        by_service
            .entry(status.service.clone())
            .or_default()
            .push(status);
    }
    let mut services = Vec::new();
    for (service, mut envs) in by_service {
        let releases = state
            .store
            .releases(Some(&service), 5)
            .await
            .map_err(failed)?;
        let order = env_order(releases.first());
        envs.sort_by_key(|e| order.iter().position(|o| *o == e.environment));
        let cells = envs
            .iter()
            .map(|status| Cell {
                healthy: status.instances.iter().filter(|i| i.healthy).count(),
                experiment: experiments
                    .iter()
                    .find(|x| {
                        x.service == service && x.environment == status.environment && x.is_open()
                    })
                    .cloned(),
                status: status.clone(),
            })
            .collect();
        let stream = releases
            .into_iter()
            .map(|release| StreamRow {
                runs_in: envs
                    .iter()
                    .map(|e| e.release == Some(release.number))
                    .collect(),
                release,
            })
            .collect();
        let incidents = state
            .store
            .incidents(Some(&service), true, 20)
            .await
            .map_err(failed)?;
        let blocks = state
            .store
            .service_blocks(&service, 5)
            .await
            .map_err(failed)?;
        services.push(ServiceRow {
            incidents,
            blocks,
            environments: envs.iter().map(|e| e.environment.clone()).collect(),
            service,
            cells,
            stream,
        });
    }
    Ok(render(Overview {
        page: Chrome::new(&viewer, "Overview", "overview"),
        services,
    }))
}

/// The environments in the order the newest release declares them.
fn env_order(release: Option<&Release>) -> Vec<String> {
    release
        .and_then(|r| sluice_spec::parse(sluice_spec::SPEC_FILE, &r.spec).ok())
        .map(|spec| spec.environments.iter().map(|e| e.name.clone()).collect())
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "environment.html")]
struct EnvironmentPage {
    page: Chrome,
    status: EnvStatus,
    detail: EnvDetail,
    others: Vec<String>,
}

pub async fn environment(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((service, env)): Path<(String, String)>,
) -> PageResult {
    let statuses = state.cd.status(Some(&service)).await.map_err(failed)?;
    let others = statuses
        .iter()
        .map(|s| s.environment.clone())
        .filter(|e| *e != env)
        .collect();
    let status = statuses
        .into_iter()
        .find(|s| s.environment == env)
        .ok_or_else(|| {
            super::error_page(
                axum::http::StatusCode::NOT_FOUND,
                &format!("{service} has no environment `{env}` yet"),
                "It appears once a release is deployed there.",
            )
        })?;
    let detail = state.cd.environment(&service, &env).await.map_err(failed)?;
    Ok(render(EnvironmentPage {
        page: Chrome::new(&viewer, format!("{service} · {env}"), "overview"),
        status,
        detail,
        others,
    }))
}

#[derive(Deserialize)]
pub struct DiffQuery {
    a: String,
    b: String,
}

#[derive(Template)]
#[template(path = "diff.html")]
struct DiffPage {
    page: Chrome,
    diff: EnvDiff,
}

pub async fn diff(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(service): Path<String>,
    Query(q): Query<DiffQuery>,
) -> PageResult {
    let diff = state.cd.diff(&service, &q.a, &q.b).await.map_err(failed)?;
    Ok(render(DiffPage {
        page: Chrome::new(
            &viewer,
            format!("{service}: {} and {}", q.a, q.b),
            "overview",
        ),
        diff,
    }))
}

#[derive(Deserialize, Default)]
pub struct LogQuery {
    service: Option<String>,
    env: Option<String>,
    kind: Option<String>,
    /// How far back: `30m`, `1h`, `2d`.
    since: Option<String>,
}

#[derive(Template)]
#[template(path = "changelog.html")]
struct ChangelogPage {
    page: Chrome,
    events: Vec<ChangeEvent>,
    service: String,
    env: String,
    kind: String,
    since: String,
    error: Option<String>,
}

pub async fn changelog(
    State(store): State<Store>,
    viewer: Viewer,
    Query(q): Query<LogQuery>,
) -> PageResult {
    let blank = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let (service, env, kind, since) = (
        blank(q.service),
        blank(q.env),
        blank(q.kind),
        blank(q.since),
    );
    let mut error = None;
    let since_ms = match &since {
        Some(text) => match sluice_spec::parse_duration(text) {
            Ok(d) => Some(sluice_store::now_ms() - d.as_millis() as i64),
            Err(why) => {
                error = Some(format!(
                    "`{text}` is not a duration ({why}); write 30m, 1h or 2d"
                ));
                None
            }
        },
        None => None,
    };
    let events = store
        .changes_log(&ChangeQuery {
            service: service.clone(),
            environment: env.clone(),
            kind_prefix: kind.clone(),
            since_ms,
            limit: 300,
        })
        .await
        .map_err(failed)?;
    Ok(render(ChangelogPage {
        page: Chrome::new(&viewer, "Change log", "changelog"),
        events,
        service: service.unwrap_or_default(),
        env: env.unwrap_or_default(),
        kind: kind.unwrap_or_default(),
        since: since.unwrap_or_default(),
        error,
    }))
}
