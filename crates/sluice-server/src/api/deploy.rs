//! Continuous deployment: releases, environments' status and diffs,
//! deployments, instances, promotions with their gates, rollbacks and pins.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_deploy::{CdError, PromoteRequest};
use sluice_store::Role;

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

impl From<CdError> for ApiError {
    fn from(error: CdError) -> Self {
        match error {
            CdError::NotFound(m) => ApiError::not_found(m),
            CdError::Invalid(m) => ApiError::bad_request(m),
            CdError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            CdError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            CdError::Store(e) => e.into(),
            CdError::Other(e) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "failed", format!("{e:#}"))
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ServiceQuery {
    service: Option<String>,
    env: Option<String>,
    limit: Option<i64>,
    all: Option<bool>,
}

pub async fn releases(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(
        state
            .store
            .releases(q.service.as_deref(), super::limit(q.limit, 50)?)
            .await?
    )))
}

pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(state.cd.status(q.service.as_deref()).await?)))
}

pub async fn deployments(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(
        state
            .store
            .deployments(
                q.service.as_deref(),
                q.env.as_deref(),
                None,
                super::limit(q.limit, 50)?
            )
            .await?
    )))
}

pub async fn instance_log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let text = state.cd.instance_log(&id, 256 * 1024).await?;
    Ok(Json(json!({ "instance": id, "log": text })))
}

#[derive(Deserialize)]
pub struct DiffQuery {
    a: String,
    b: String,
}

pub async fn diff(
    State(state): State<AppState>,
    caller: Caller,
    Path(service): Path<String>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(state.cd.diff(&service, &q.a, &q.b).await?)))
}

/// One environment: its facets, rendered config files and what each
/// instance answered in the last minute.
pub async fn environment(
    State(state): State<AppState>,
    caller: Caller,
    Path((service, env)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(state.cd.environment(&service, &env).await?)))
}

pub async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PromoteRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Developer)?;
    let promotion = state.cd.promote(body, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(json!(promotion))))
}

pub async fn promotions(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(
        state
            .cd
            .promotions(q.service.as_deref(), !q.all.unwrap_or(false))
            .await?
    )))
}

pub async fn promotion(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(state.cd.promotion(id).await?)))
}

pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Approver)?;
    Ok(Json(json!(state.cd.approve(id, &caller.actor()).await?)))
}

#[derive(Deserialize)]
pub struct Reason {
    #[serde(default)]
    reason: String,
}

pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(body): Json<Reason>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Approver)?;
    Ok(Json(json!(
        state.cd.reject(id, &body.reason, &caller.actor()).await?
    )))
}

pub async fn override_freeze(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(body): Json<Reason>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    Ok(Json(json!(
        state
            .cd
            .override_freeze(id, &body.reason, &caller.actor())
            .await?
    )))
}

#[derive(Deserialize)]
pub struct RollbackTo {
    to: Option<i64>,
}

pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path((service, env)): Path<(String, String)>,
    Json(body): Json<RollbackTo>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Approver)?;
    Ok(Json(json!(
        state
            .cd
            .rollback(&service, &env, body.to, &caller.actor())
            .await?
    )))
}

pub async fn unpin(
    State(state): State<AppState>,
    caller: Caller,
    Path((service, env)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Approver)?;
    state.cd.unpin(&service, &env, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An experiment with its decisions and report as JSON rather than text.
fn experiment_json(x: sluice_store::Experiment) -> Value {
    let decisions: Value = serde_json::from_str(&x.decisions).unwrap_or(Value::Null);
    let report: Value = x
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    let overrides: Value = serde_json::from_str(&x.overrides).unwrap_or(Value::Null);
    let mut value = json!(x);
    value["decisions"] = decisions;
    value["report"] = report;
    value["overrides"] = overrides;
    value["weight"] = json!(x.weight_bp as f64 / 100.0);
    value
}

pub async fn experiments(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let all = state
        .store
        .experiments(q.service.as_deref(), super::limit(q.limit, 50)?)
        .await?;
    Ok(Json(Value::Array(
        all.into_iter().map(experiment_json).collect(),
    )))
}

pub async fn experiment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(experiment_json(state.store.experiment(id).await?)))
}

#[derive(Deserialize)]
pub struct NewExperiment {
    service: String,
    env: String,
    release: i64,
    #[serde(default)]
    set: std::collections::BTreeMap<String, String>,
}

pub async fn start_experiment(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewExperiment>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Approver)?;
    state
        .cd
        .start_experiment(
            &body.service,
            &body.env,
            body.release,
            body.set,
            &caller.actor(),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({ "starting": true, "service": body.service, "env": body.env, "release": body.release }),
        ),
    ))
}

pub async fn steer_experiment(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, verb)): Path<(i64, String)>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Approver)?;
    let command = match verb.as_str() {
        "pause" => sluice_deploy::ExperimentCommand::Pause,
        "resume" => sluice_deploy::ExperimentCommand::Resume,
        "promote" => sluice_deploy::ExperimentCommand::Promote,
        "abort" => sluice_deploy::ExperimentCommand::Abort,
        other => {
            return Err(ApiError::not_found(format!(
                "experiments take pause, resume, promote or abort, not `{other}`"
            )));
        }
    };
    state
        .cd
        .experiment_command(id, command, &caller.actor())
        .await?;
    Ok(Json(json!({ "experiment": id, "sent": verb })))
}
