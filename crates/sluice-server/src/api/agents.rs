//! `/agents`: agents register, claim jobs by long poll, renew their leases
//! and report on the jobs they run (an agent token's work, and nothing
//! else); people list the agents.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_ci::remote::{AgentError, MAX_WAIT};
use sluice_ci::wire::{Finished, Generation, Hello, LogBatch, Registered, Renewal, StepReport};

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> Self {
        match error {
            AgentError::Invalid(why) => ApiError::bad_request(why),
            AgentError::NotYours(why) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", why)
                .with_hint("each agent registers its name with its own token: `sluice token create --role agent`"),
            AgentError::Stale(why) => ApiError::new(StatusCode::CONFLICT, "stale_lease", why),
            AgentError::Store(e) => e.into(),
            AgentError::Other(e) => ApiError::internal(format!("{e:#}")),
        }
    }
}

#[utoipa::path(
    get,
    path = "/agents",
    tag = "agents",
    responses((status = 200, description = "every agent that registered, and whether it is heard from", body = serde_json::Value))
)]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<Value>> {
    let agents: Vec<Value> = state
        .ci
        .agents()
        .await?
        .into_iter()
        .map(|(agent, online)| {
            let labels = agent.labels();
            let mut shown = json!(agent);
            shown["labels"] = json!(labels);
            shown["online"] = json!(online);
            shown
        })
        .collect();
    Ok(Json(json!(agents)))
}

#[utoipa::path(
    post,
    path = "/agents",
    tag = "agents",
    request_body = Hello,
    responses((status = 200, description = "registered: how often to be heard from", body = Registered))
)]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    extensions: axum::http::Extensions,
    Json(hello): Json<Hello>,
) -> ApiResult<Json<Registered>> {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|p| p.0.ip());
    Ok(Json(
        state
            .ci
            .register_agent(&caller.token_id, &hello, peer)
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/agents/{name}/heartbeat",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name")),
    responses((status = 204, description = "heard"))
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.ci.agent_heartbeat(&caller.token_id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A long poll's wait.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// How long to wait for something to do, in milliseconds (at most 30 000).
    wait_ms: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/agents/{name}/claim",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), WaitQuery),
    responses(
        (status = 200, description = "a job, claimed under a lease", body = sluice_ci::wire::Claimed),
        (status = 204, description = "no job came within the wait")
    )
)]
pub async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    match state.ci.claim_job(&caller.token_id, &name, wait).await? {
        Some(claimed) => Ok(Json(claimed).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[utoipa::path(
    post,
    path = "/agents/{name}/jobs/{job}/renew",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), ("job" = i64, Path, description = "the job id")),
    request_body = Generation,
    responses((status = 200, description = "the lease runs on; whether to cancel", body = Renewal))
)]
pub async fn renew(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, job)): Path<(String, i64)>,
    Json(body): Json<Generation>,
) -> ApiResult<Json<Renewal>> {
    Ok(Json(
        state
            .ci
            .renew_lease(&caller.token_id, &name, job, body.generation)
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/agents/{name}/jobs/{job}/log",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), ("job" = i64, Path, description = "the job id")),
    request_body = LogBatch,
    responses((status = 204, description = "written to the run's log"))
)]
pub async fn log(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, job)): Path<(String, i64)>,
    Json(batch): Json<LogBatch>,
) -> ApiResult<StatusCode> {
    state
        .ci
        .job_log(&caller.token_id, &name, job, batch)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/agents/{name}/jobs/{job}/steps",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), ("job" = i64, Path, description = "the job id")),
    request_body = StepReport,
    responses((status = 204, description = "recorded"))
)]
pub async fn step(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, job)): Path<(String, i64)>,
    Json(report): Json<StepReport>,
) -> ApiResult<StatusCode> {
    state
        .ci
        .job_step(&caller.token_id, &name, job, report)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/agents/{name}/jobs/{job}/finish",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), ("job" = i64, Path, description = "the job id")),
    request_body = Finished,
    responses((status = 204, description = "the job's end is recorded"))
)]
pub async fn finish(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, job)): Path<(String, i64)>,
    Json(finished): Json<Finished>,
) -> ApiResult<StatusCode> {
    state
        .ci
        .job_finished(&caller.token_id, &name, job, finished)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/agents/{name}/jobs/{job}/source",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), ("job" = i64, Path, description = "the job id"), Generation),
    responses((status = 200, description = "the tree of the job's commit, as a tar", content_type = "application/x-tar"))
)]
pub async fn source(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, job)): Path<(String, i64)>,
    Query(q): Query<Generation>,
) -> ApiResult<Response> {
    let tar = state
        .ci
        .job_source(&caller.token_id, &name, job, q.generation)
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        Bytes::from(tar),
    )
        .into_response())
}

#[utoipa::path(
    put,
    path = "/agents/{name}/jobs/{job}/artifact",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), ("job" = i64, Path, description = "the job id"), sluice_ci::wire::Upload),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the artifact (.tar.gz), as the agent packed it"),
    responses((status = 204, description = "stored by its sha256, as the job's artifact"))
)]
pub async fn artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, job)): Path<(String, i64)>,
    Query(upload): Query<sluice_ci::wire::Upload>,
    body: axum::body::Body,
) -> ApiResult<StatusCode> {
    state
        .ci
        .job_artifact(
            &caller.token_id,
            &name,
            job,
            upload,
            body.into_data_stream(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The largest report of a host: each entry point's windows and goal
/// events, within their limits, for a few dozen environments.
pub const MAX_REPORT_BYTES: usize = 16 << 20;

#[utoipa::path(
    post,
    path = "/agents/{name}/instances",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), WaitQuery),
    request_body = sluice_deploy::hosts::wire::HostReport,
    responses((status = 200, description = "every instance the agent's host is to run", body = sluice_deploy::hosts::wire::HostWork))
)]
pub async fn instances(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
    Json(report): Json<sluice_deploy::hosts::wire::HostReport>,
) -> ApiResult<Json<sluice_deploy::hosts::wire::HostWork>> {
    // Also what says the agent is the caller's, and alive.
    state.ci.agent_heartbeat(&caller.token_id, &name).await?;
    report.check().map_err(ApiError::bad_request)?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(sluice_deploy::hosts::MAX_WAIT);
    Ok(Json(state.cd.host_report(&name, &report, wait).await?))
}

#[utoipa::path(
    get,
    path = "/agents/{name}/instances/{id}/files",
    tag = "agents",
    params(("name" = String, Path, description = "the agent's name"), ("id" = String, Path, description = "the instance's id")),
    responses((status = 200, description = "the release's files (`work/`) and the rendered config (`config/`), as a tar", content_type = "application/x-tar"))
)]
pub async fn instance_files(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    state.ci.agent_heartbeat(&caller.token_id, &name).await?;
    let tar = state.cd.hosted_files(&name, &id).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        Bytes::from(tar),
    )
        .into_response())
}
