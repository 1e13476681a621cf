//! Continuous deployment: releases, environments' status and diffs,
//! deployments, instances, promotions with their gates, rollbacks and pins.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_deploy::{CdError, PromoteRequest};
use sluice_store::Store;

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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ServiceQuery {
    service: Option<String>,
    env: Option<String>,
    limit: Option<i64>,
    all: Option<bool>,
}

#[utoipa::path(
    get,
    path = "/releases",
    tag = "deploy",
    params(ServiceQuery),
    responses((status = 200, description = "releases, newest first", body = serde_json::Value))
)]
pub async fn releases(
    State(store): State<Store>,
    _caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        store
            .releases(q.service.as_deref(), super::limit(q.limit, 50)?)
            .await?
    )))
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "deploy",
    params(ServiceQuery),
    responses((status = 200, description = "every service and environment", body = serde_json::Value))
)]
pub async fn status(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.cd.status(q.service.as_deref()).await?)))
}

#[utoipa::path(
    get,
    path = "/deployments",
    tag = "deploy",
    params(ServiceQuery),
    responses((status = 200, description = "deployments, newest first", body = serde_json::Value))
)]
pub async fn deployments(
    State(store): State<Store>,
    _caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        store
            .deployments(
                q.service.as_deref(),
                q.env.as_deref(),
                None,
                super::limit(q.limit, 50)?
            )
            .await?
    )))
}

#[utoipa::path(
    get,
    path = "/instances/{id}/logs",
    tag = "deploy",
    params(("id" = String, Path, description = "the instance id")),
    responses((status = 200, description = "the end of its log, secrets masked", body = serde_json::Value))
)]
pub async fn instance_log(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let text = state.cd.instance_log(&id, 256 * 1024).await?;
    Ok(Json(json!({ "instance": id, "log": text })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    a: String,
    b: String,
}

#[utoipa::path(
    get,
    path = "/services/{service}/diff",
    tag = "deploy",
    params(("service" = String, Path, description = "the service name"), DiffQuery),
    responses((status = 200, description = "two environments side by side", body = serde_json::Value))
)]
pub async fn diff(
    State(state): State<AppState>,
    _caller: Caller,
    Path(service): Path<String>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.cd.diff(&service, &q.a, &q.b).await?)))
}

/// One environment: its facets, rendered config files and what each
/// instance answered in the last minute.
#[utoipa::path(
    get,
    path = "/services/{service}/environments/{env}",
    tag = "deploy",
    params(("service" = String, Path, description = "the service name"), ("env" = String, Path, description = "the environment name")),
    responses((status = 200, description = "its facets, files and traffic", body = serde_json::Value))
)]
pub async fn environment(
    State(state): State<AppState>,
    _caller: Caller,
    Path((service, env)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.cd.environment(&service, &env).await?)))
}

#[utoipa::path(
    post,
    path = "/promotions",
    tag = "deploy",
    request_body = sluice_deploy::PromoteRequest,
    responses((status = 201, description = "the promotion and its gates", body = serde_json::Value))
)]
pub async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PromoteRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let promotion = state.cd.promote(body, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(json!(promotion))))
}

#[utoipa::path(
    get,
    path = "/promotions",
    tag = "deploy",
    params(ServiceQuery),
    responses((status = 200, description = "promotions with their gates", body = serde_json::Value))
)]
pub async fn promotions(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        state
            .cd
            .promotions(q.service.as_deref(), !q.all.unwrap_or(false))
            .await?
    )))
}

#[utoipa::path(
    get,
    path = "/promotions/{id}",
    tag = "deploy",
    params(("id" = i64, Path, description = "the promotion id")),
    responses((status = 200, description = "the promotion and its gates", body = serde_json::Value))
)]
pub async fn promotion(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.cd.promotion(id).await?)))
}

#[utoipa::path(
    post,
    path = "/promotions/{id}/approve",
    tag = "deploy",
    params(("id" = i64, Path, description = "the promotion id")),
    responses((status = 200, description = "approved", body = serde_json::Value))
)]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.cd.approve(id, &caller.actor()).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Reason {
    #[serde(default)]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/promotions/{id}/reject",
    tag = "deploy",
    params(("id" = i64, Path, description = "the promotion id")),
    request_body = Reason,
    responses((status = 200, description = "rejected", body = serde_json::Value))
)]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(body): Json<Reason>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        state.cd.reject(id, &body.reason, &caller.actor()).await?
    )))
}

#[utoipa::path(
    post,
    path = "/promotions/{id}/override",
    tag = "deploy",
    params(("id" = i64, Path, description = "the promotion id")),
    request_body = Reason,
    responses((status = 200, description = "the freeze overridden", body = serde_json::Value))
)]
pub async fn override_freeze(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(body): Json<Reason>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        state
            .cd
            .override_freeze(id, &body.reason, &caller.actor())
            .await?
    )))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RollbackTo {
    to: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/services/{service}/environments/{env}/rollback",
    tag = "deploy",
    params(("service" = String, Path, description = "the service name"), ("env" = String, Path, description = "the environment name")),
    request_body = RollbackTo,
    responses((status = 200, description = "the rollback deployment", body = serde_json::Value))
)]
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path((service, env)): Path<(String, String)>,
    Json(body): Json<RollbackTo>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        state
            .cd
            .rollback(&service, &env, body.to, &caller.actor())
            .await?
    )))
}

#[utoipa::path(
    post,
    path = "/services/{service}/environments/{env}/unpin",
    tag = "deploy",
    params(("service" = String, Path, description = "the service name"), ("env" = String, Path, description = "the environment name")),
    responses((status = 204, description = "unpinned"))
)]
pub async fn unpin(
    State(state): State<AppState>,
    caller: Caller,
    Path((service, env)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
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

#[utoipa::path(
    get,
    path = "/experiments",
    tag = "deploy",
    params(ServiceQuery),
    responses((status = 200, description = "experiments, newest first", body = serde_json::Value))
)]
pub async fn experiments(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<ServiceQuery>,
) -> ApiResult<Json<Value>> {
    let all = state
        .store
        .experiments(q.service.as_deref(), super::limit(q.limit, 50)?)
        .await?;
    let mut out = Vec::new();
    for x in all {
        let progress = state.cd.experiment_progress(&x).await;
        let mut json = experiment_json(x);
        if let Some(progress) = progress {
            json["step_progress"] = progress;
        }
        out.push(json);
    }
    Ok(Json(Value::Array(out)))
}

#[utoipa::path(
    get,
    path = "/experiments/{id}",
    tag = "deploy",
    params(("id" = i64, Path, description = "the experiment id")),
    responses((status = 200, description = "the experiment, its decisions and report", body = serde_json::Value))
)]
pub async fn experiment(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let x = state.store.experiment(id).await?;
    let progress = state.cd.experiment_progress(&x).await;
    let mut json = experiment_json(x);
    if let Some(progress) = progress {
        json["step_progress"] = progress;
    }
    Ok(Json(json))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewExperiment {
    service: String,
    env: String,
    release: i64,
    #[serde(default)]
    set: std::collections::BTreeMap<String, String>,
    /// Goals replacing the strategy's: `NAME`, `NAME=METHOD /path` or `NAME:value`.
    #[serde(default)]
    goals: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/experiments",
    tag = "deploy",
    request_body = NewExperiment,
    responses((status = 201, description = "the experiment", body = serde_json::Value))
)]
pub async fn start_experiment(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewExperiment>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    state
        .cd
        .start_experiment(
            &body.service,
            &body.env,
            body.release,
            body.set,
            body.goals,
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

/// A goal a user reached, reported by a service's backend.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GoalReport {
    /// The user's sticky key: the `sluice_key` cookie, or the sticky header's value.
    user: String,
    goal: String,
    /// For a value goal: what to add to the user's total.
    value: Option<f64>,
}

#[utoipa::path(
    post,
    path = "/experiments/{id}/goals",
    tag = "deploy",
    params(("id" = i64, Path, description = "the experiment id")),
    request_body = GoalReport,
    responses(
        (status = 200, description = "whether the user was one the experiment counts", body = serde_json::Value),
        (status = 400, description = "no such goal, or a bad user or value"),
        (status = 409, description = "the experiment is over or counts no goals"),
    )
)]
pub async fn report_goal(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
    Json(body): Json<GoalReport>,
) -> ApiResult<Json<Value>> {
    let counted = state
        .cd
        .record_goal(id, &body.user, &body.goal, body.value)
        .await?;
    Ok(Json(
        json!({ "experiment": id, "goal": body.goal, "counted": counted }),
    ))
}

#[utoipa::path(
    post,
    path = "/experiments/{id}/{verb}",
    tag = "deploy",
    params(("id" = i64, Path, description = "the experiment id"), ("verb" = String, Path, description = "pause, resume, promote or rollback")),
    responses((status = 200, description = "the experiment", body = serde_json::Value))
)]
pub async fn steer_experiment(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, verb)): Path<(i64, String)>,
) -> ApiResult<Json<Value>> {
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
