//! `POST /hooks/{repo}`: GitHub- and Gitea-style webhooks, verified by
//! `X-Hub-Signature-256` before anything is read or queued.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use sluice_ci::webhook::{self, Parsed};

use crate::{ApiError, ApiResult, AppState};

fn header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
}

#[utoipa::path(
    post,
    path = "/hooks/{repo}",
    tag = "hooks",
    params(("repo" = String, Path, description = "the repository name")),
    request_body = Value,
    responses((status = 202, description = "accepted, ignored, or a duplicate delivery", body = serde_json::Value))
)]
pub async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // An unknown repository and a bad signature look the same from outside.
    let refused = || {
        ApiError::unauthorized("missing or bad X-Hub-Signature-256")
            .with_hint("sign the body with HMAC-SHA256 and the repository's webhook secret")
    };
    let repo = state.store.repo(&name).await.map_err(|_| refused())?;
    if !webhook::signature_is_valid(
        &repo.webhook_secret,
        &body,
        header(&headers, &["x-hub-signature-256", "x-gitea-signature-256"]),
    ) {
        return Err(refused());
    }
    let event = header(
        &headers,
        &["x-github-event", "x-gitea-event", "x-gogs-event"],
    )
    .unwrap_or("");
    let parsed = webhook::parse(event, &body).map_err(ApiError::bad_request)?;
    let announced = match parsed {
        Parsed::Ignored(why) => {
            return Ok((
                StatusCode::OK,
                Json(json!({ "queued": null, "ignored": why })),
            ));
        }
        Parsed::Change(announced) => announced,
    };
    let delivery = header(
        &headers,
        &["x-github-delivery", "x-gitea-delivery", "x-gogs-delivery"],
    );
    if let Some(delivery) = delivery
        && state.store.delivery_seen(repo.id, delivery).await?
    {
        return Ok((
            StatusCode::OK,
            Json(json!({ "queued": null, "ignored": "this delivery was received before" })),
        ));
    }
    let run = state
        .ci
        .accept_webhook(&repo, announced)
        .await
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    // Recorded once taken, so that a delivery that failed here can be redelivered.
    if let Some(delivery) = delivery {
        state.store.record_delivery(repo.id, delivery).await?;
    }
    Ok(match run {
        Some(run) => (StatusCode::ACCEPTED, Json(json!({ "queued": run.id }))),
        None => (
            StatusCode::OK,
            Json(json!({ "queued": null, "ignored": "this commit on this ref already has a run" })),
        ),
    })
}
