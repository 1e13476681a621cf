//! `/changes` and `/runs`: the status of every change, a run's jobs and steps,
//! its stored log, and cancelling it.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::{RunFilter, RunStatus, Store};

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    repo: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/changes",
    tag = "runs",
    params(ListQuery),
    responses((status = 200, description = "changes, newest first", body = serde_json::Value))
)]
pub async fn changes(
    State(store): State<Store>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        store
            .changes(q.repo.as_deref(), super::limit(q.limit, 100)?)
            .await?
    )))
}

#[utoipa::path(
    get,
    path = "/runs",
    tag = "runs",
    params(ListQuery),
    responses((status = 200, description = "runs, newest first", body = serde_json::Value))
)]
pub async fn list(
    State(store): State<Store>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let status = match q.status.as_deref() {
        Some(text) => Some(RunStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!("unknown status `{text}`"))
                .with_hint("expected queued, running, success, failure, cancelled or error")
        })?),
        None => None,
    };
    let filter = RunFilter {
        repo: q.repo,
        status,
        limit: super::limit(q.limit, 100)?,
    };
    Ok(Json(json!(store.runs(&filter).await?)))
}

#[utoipa::path(
    get,
    path = "/runs/{id}",
    tag = "runs",
    params(("id" = i64, Path, description = "the run id")),
    responses((status = 200, description = "the run with its jobs and steps", body = serde_json::Value))
)]
pub async fn show(
    State(store): State<Store>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(store.run_detail(id).await?)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    after: Option<i64>,
    limit: Option<usize>,
}

/// Lines a page of `GET /runs/{id}/logs` holds unless `limit` says fewer.
const LOG_PAGE: usize = 10_000;

/// A page of a run's log: the lines after `after`, at most `limit` (1 to
/// 10000); `next_after` is where the next page starts, when there is one.
#[utoipa::path(
    get,
    path = "/runs/{id}/logs",
    tag = "runs",
    params(("id" = i64, Path, description = "the run id"), LogQuery),
    responses((status = 200, description = "a page of the log", body = serde_json::Value))
)]
pub async fn logs(
    State(store): State<Store>,
    _caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(LOG_PAGE);
    if !(1..=LOG_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("`limit` is {limit}"))
            .with_hint(format!("ask for 1 to {LOG_PAGE} lines a page")));
    }
    let run = store.run(id).await?;
    let mut lines = store
        .logs_page(id, q.after.unwrap_or(-1), limit + 1)
        .await?;
    let more = lines.len() > limit;
    lines.truncate(limit);
    let next_after = more.then(|| lines.last().map(|l| l.seq)).flatten();
    Ok(Json(
        json!({ "run_id": id, "status": run.status, "lines": lines, "next_after": next_after }),
    ))
}

/// The whole stored log as text, one line per line, streamed a page at a
/// time: `JOB STREAM LINE`.
#[utoipa::path(
    get,
    path = "/runs/{id}/logs/raw",
    tag = "runs",
    params(("id" = i64, Path, description = "the run id")),
    responses((status = 200, description = "the stored log as text", body = String, content_type = "text/plain"))
)]
pub async fn raw_log(
    State(store): State<Store>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<axum::response::Response> {
    store.run(id).await?;
    let store = store.clone();
    let pages = futures::stream::unfold(Some(-1i64), move |after| {
        let store = store.clone();
        async move {
            let after = after?;
            let lines = match store.logs_page(id, after, 1_000).await {
                Ok(lines) if !lines.is_empty() => lines,
                Ok(_) => return None,
                Err(e) => return Some((Err(std::io::Error::other(e)), None)),
            };
            let next = lines.last().map(|l| l.seq);
            let mut text = String::new();
            for l in &lines {
                let job = if l.job.is_empty() { "-" } else { &l.job };
                text.push_str(&format!("{job} {} {}\n", l.stream, l.line));
            }
            Some((Ok(bytes::Bytes::from(text)), next))
        }
    });
    axum::response::Response::builder()
        .header(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"run-{id}.log\""),
        )
        .body(axum::body::Body::from_stream(pages))
        .map_err(ApiError::internal)
}

#[utoipa::path(
    post,
    path = "/runs/{id}/cancel",
    tag = "runs",
    params(("id" = i64, Path, description = "the run id")),
    responses((status = 200, description = "cancelled, or why not", body = serde_json::Value))
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let run = state.store.run(id).await?;
    if run.status.is_finished() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            format!("run {id} already ended {}", run.status),
        ));
    }
    let cancelled = state
        .ci
        .cancel(id, &format!("cancelled by {}", caller.name))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "run_id": id, "cancelled": cancelled })))
}
