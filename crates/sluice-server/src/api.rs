//! The JSON API under `/api/v1`: one module per resource.

mod agents;
mod artifacts;
mod changelog;
mod channels;
mod deploy;
pub mod events;
pub(crate) mod hooks;
mod incidents;
pub mod openapi;
mod repos;
mod runs;
mod tokens;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post, put};
use sluice_store::Store;

use crate::access::{Operation, needs};
use crate::auth::Gate;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/health",
            get(|| async {
                axum::Json(serde_json::json!({
                    "status": "ok",
                    "version": env!("CARGO_PKG_VERSION"),
                    "role": "controllers",
                }))
            }),
        )
        .route("/openapi.json", get(openapi::serve))
        .route("/whoami", get(tokens::whoami))
        .route(
            "/tokens",
            get(needs(Operation::ManageTokens, tokens::list))
                .post(needs(Operation::ManageTokens, tokens::create)),
        )
        .route(
            "/tokens/{id}",
            axum::routing::delete(needs(Operation::ManageTokens, tokens::revoke)),
        )
        .route("/repos", post(needs(Operation::AddRepository, repos::add)))
        .route("/repos/{name}/notify", post(repos::notify))
        .route(
            "/repos/{name}/secrets",
            get(needs(Operation::ManageSecrets, repos::secret_names)),
        )
        .route(
            "/repos/{name}/secrets/{secret}",
            put(needs(Operation::ManageSecrets, repos::set_secret))
                .delete(needs(Operation::ManageSecrets, repos::delete_secret)),
        )
        .route("/hooks/{repo}", post(hooks::receive))
        .route(
            "/agents",
            get(agents::list).post(needs(Operation::AgentWork, agents::register)),
        )
        .route(
            "/agents/{name}/heartbeat",
            post(needs(Operation::AgentWork, agents::heartbeat)),
        )
        .route(
            "/agents/{name}/claim",
            post(needs(Operation::AgentWork, agents::claim)),
        )
        .route(
            "/agents/{name}/jobs/{job}/renew",
            post(needs(Operation::AgentWork, agents::renew)),
        )
        .route(
            "/agents/{name}/jobs/{job}/log",
            post(needs(Operation::AgentWork, agents::log)),
        )
        .route(
            "/agents/{name}/jobs/{job}/steps",
            post(needs(Operation::AgentWork, agents::step)),
        )
        .route(
            "/agents/{name}/jobs/{job}/finish",
            post(needs(Operation::AgentWork, agents::finish)),
        )
        .route(
            "/agents/{name}/jobs/{job}/source",
            get(needs(Operation::AgentWork, agents::source)),
        )
        .route(
            "/agents/{name}/jobs/{job}/artifact",
            put(needs(Operation::AgentWork, agents::artifact)),
        )
        .route(
            "/agents/{name}/instances",
            // A report may carry each entry point's windows and goal events.
            post(needs(Operation::AgentWork, agents::instances)).layer(
                axum::extract::DefaultBodyLimit::max(agents::MAX_REPORT_BYTES),
            ),
        )
        .route(
            "/agents/{name}/instances/{id}/files",
            get(needs(Operation::AgentWork, agents::instance_files)),
        )
        .route(
            "/runs/{id}/cancel",
            post(needs(Operation::CancelRun, runs::cancel)),
        )
        .route("/artifacts/{sha256}", get(artifacts::download))
        .route("/status", get(deploy::status))
        .route("/instances/{id}/logs", get(deploy::instance_log))
        .route("/services/{service}/diff", get(deploy::diff))
        .route(
            "/services/{service}/environments/{env}",
            get(deploy::environment),
        )
        .route(
            "/services/{service}/environments/{env}/rollback",
            post(needs(Operation::Rollback, deploy::rollback)),
        )
        .route(
            "/services/{service}/environments/{env}/unpin",
            post(needs(Operation::Rollback, deploy::unpin)),
        )
        .route(
            "/promotions",
            get(deploy::promotions).post(needs(Operation::Promote, deploy::promote)),
        )
        .route("/promotions/{id}", get(deploy::promotion))
        .route(
            "/promotions/{id}/approve",
            post(needs(Operation::DecidePromotion, deploy::approve)),
        )
        .route(
            "/promotions/{id}/reject",
            post(needs(Operation::DecidePromotion, deploy::reject)),
        )
        .route(
            "/promotions/{id}/override",
            post(needs(Operation::OverrideFreeze, deploy::override_freeze)),
        )
        .route(
            "/experiments",
            get(deploy::experiments)
                .post(needs(Operation::StartExperiment, deploy::start_experiment)),
        )
        .route("/experiments/{id}", get(deploy::experiment))
        .route(
            "/experiments/{id}/goals",
            post(needs(Operation::ReportGoal, deploy::report_goal)),
        )
        .route(
            "/experiments/{id}/{verb}",
            post(needs(Operation::SteerExperiment, deploy::steer_experiment)),
        )
        .route(
            "/incidents",
            post(needs(Operation::HandleIncident, incidents::open)),
        )
        .route("/incidents/{id}", get(incidents::show))
        .route(
            "/incidents/{id}/postmortem",
            get(incidents::postmortem)
                .put(needs(Operation::HandleIncident, incidents::edit_postmortem)),
        )
        .route(
            "/incidents/{id}/{verb}",
            post(needs(Operation::HandleIncident, incidents::transition)),
        )
        .route(
            "/rules",
            post(needs(Operation::ManageRules, incidents::add_rule)),
        )
        .route(
            "/rules/{id}/disable",
            post(needs(Operation::ManageRules, incidents::disable_rule)),
        )
        .route("/rules/{id}/test", post(incidents::test_rule))
        .route(
            "/channels",
            post(needs(Operation::ManageChannels, channels::add)),
        )
        .route(
            "/channels/{name}",
            axum::routing::delete(needs(Operation::ManageChannels, channels::remove)),
        )
        .route(
            "/channels/{name}/test",
            post(needs(Operation::ManageChannels, channels::test)),
        )
        .route(
            "/messages/{id}/retry",
            post(needs(Operation::RetryMessage, channels::retry)),
        )
        .merge(events::routes())
        .merge(store_reads())
        .fallback(|| async {
            ApiError::not_found("no such endpoint")
                .with_hint("the endpoints are listed in docs/api.md")
        })
        .layer(axum::middleware::map_response(json_errors))
}

/// The reads that need nothing but the store: every server answers them
/// itself, a standby too (and while no server acts, during a takeover).
/// Where a path takes a write as well, the write is in [`routes`]: a
/// standby forwards it (its `method_not_allowed_fallback`).
pub fn store_reads<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Store: FromRef<S>,
    Gate: FromRef<S>,
{
    Router::new()
        .route("/changes", get(runs::changes))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/logs", get(runs::logs))
        .route("/runs/{id}/logs/raw", get(runs::raw_log))
        .route("/changelog", get(changelog::list))
        .route("/repos/{name}", get(repos::show))
        .route("/releases", get(deploy::releases))
        .route("/deployments", get(deploy::deployments))
        .route("/messages", get(channels::messages))
        .route("/messages/{id}", get(channels::message))
        .route("/repos", get(repos::list))
        .route("/incidents", get(incidents::list))
        .route("/rules", get(incidents::rules))
        .route("/rules/{id}", get(incidents::rule))
        .route("/channels", get(channels::list))
}

/// The most rows a list answers with.
pub const MAX_LIMIT: i64 = 1000;

/// A list's `limit`: `default` when not given, refused outside 1..=1000.
pub fn limit(asked: Option<i64>, default: i64) -> Result<i64, ApiError> {
    match asked {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("`limit` is {n}"))
            .with_hint(format!("ask for 1 to {MAX_LIMIT} rows"))),
    }
}

/// Errors axum answers by itself (a path or query that does not parse, a
/// body that is not JSON, a method not allowed) in the documented shape:
/// `{"error": {"code", "message", "hint"}}`.
pub(crate) async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 16 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let code = match status {
        axum::http::StatusCode::NOT_FOUND => "not_found",
        axum::http::StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text.trim().to_string()
    };
    ApiError::new(status, code, message)
        .with_hint("docs/api.md describes each endpoint's path, query and body")
        .into_response()
}
