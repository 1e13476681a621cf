//! `/changes` and `/runs`: the status of every change, a run's jobs and steps,
//! its stored log, and cancelling it.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::{Role, RunFilter, RunStatus};

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

#[derive(Deserialize)]
pub struct ListQuery {
    repo: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

pub async fn changes(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(
        state
            .store
            .changes(q.repo.as_deref(), q.limit.unwrap_or(100))
            .await?
    )))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
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
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(json!(state.store.runs(&filter).await?)))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(state.store.run_detail(id).await?)))
}

#[derive(Deserialize)]
pub struct LogQuery {
    after: Option<i64>,
}

pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let run = state.store.run(id).await?;
    let lines = state.store.logs(id, q.after.unwrap_or(-1)).await?;
    Ok(Json(
        json!({ "run_id": id, "status": run.status, "lines": lines }),
    ))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Developer)?;
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
