//! `POST /hooks/{repo}`: GitHub- and Gitea-style webhooks, verified by
//! `X-Hub-Signature-256` before anything is read or queued.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use sluice_ci::inbox::Accepted;
use sluice_ci::webhook::{self, Announced, Parsed};
use sluice_store::{Repo, Store};

use crate::{ApiError, ApiResult, AppState};

fn header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
}

/// A delivery that passed every check and asks for a change.
struct Delivery {
    repo: Repo,
    announced: Announced,
    id: Option<String>,
}

/// What a delivery is answered.
type Answer = (StatusCode, Json<Value>);

/// Checks a delivery at the edge: its repository and signature, its
/// event, and whether it was taken before. `Ok(Err(answer))` is a
/// delivery that asks for nothing, answered so.
async fn verify(
    store: &Store,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Result<Delivery, Answer>> {
    // An unknown repository and a bad signature look the same from outside.
    let refused = || {
        ApiError::unauthorized("missing or bad X-Hub-Signature-256")
            .with_hint("sign the body with HMAC-SHA256 and the repository's webhook secret")
    };
    let repo = store.repo(name).await.map_err(|_| refused())?;
    if !webhook::signature_is_valid(
        &repo.webhook_secret,
        body,
        header(headers, &["x-hub-signature-256", "x-gitea-signature-256"]),
    ) {
        return Err(refused());
    }
    let event = header(
        headers,
        &["x-github-event", "x-gitea-event", "x-gogs-event"],
    )
    .unwrap_or("");
    let announced = match webhook::parse(event, body).map_err(ApiError::bad_request)? {
        Parsed::Ignored(why) => return Ok(Err(ignored(&why))),
        Parsed::Change(announced) => announced,
    };
    let delivery = header(
        headers,
        &["x-github-delivery", "x-gitea-delivery", "x-gogs-delivery"],
    );
    if let Some(delivery) = delivery
        && store.delivery_seen(repo.id, delivery).await?
    {
        return Ok(Err(ignored("this delivery was received before")));
    }
    Ok(Ok(Delivery {
        repo,
        announced,
        id: delivery.map(str::to_string),
    }))
}

/// Accepted, and held for the server that runs CI to queue its run.
fn held(id: i64) -> Answer {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "queued": null, "held": id })),
    )
}

fn ignored(why: &str) -> Answer {
    (
        StatusCode::OK,
        Json(json!({ "queued": null, "ignored": why })),
    )
}

#[utoipa::path(
    post,
    path = "/hooks/{repo}",
    tag = "hooks",
    params(("repo" = String, Path, description = "the repository name")),
    request_body = Value,
    responses((status = 202, description = "accepted (its run queued, or held for the server that runs CI), ignored, or a duplicate delivery", body = serde_json::Value))
)]
pub async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Answer> {
    let delivery = match verify(&state.store, &name, &headers, &body).await? {
        Ok(delivery) => delivery,
        Err(answer) => return Ok(answer),
    };
    let accepted = state
        .ci
        .accept_webhook(&delivery.repo, delivery.announced, delivery.id.as_deref())
        .await
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    Ok(match accepted {
        Accepted::Queued(run) => (StatusCode::ACCEPTED, Json(json!({ "queued": run }))),
        Accepted::AlreadyRun => ignored("this commit on this ref already has a run"),
        Accepted::Duplicate => ignored("this delivery was received before"),
        Accepted::Held(id) => held(id),
    })
}

/// The same endpoint on a server standing by: the delivery is held in the
/// store, and the server running CI (this one's holder, or whoever takes
/// the controllers over) queues its run. So a forge is answered, and its
/// delivery kept, even while no server acts.
pub async fn hold(
    State(store): State<Store>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Answer> {
    let delivery = match verify(&store, &name, &headers, &body).await? {
        Ok(delivery) => delivery,
        Err(answer) => return Ok(answer),
    };
    let kept = sluice_ci::inbox::hold(
        &store,
        &delivery.repo,
        &delivery.announced,
        delivery.id.as_deref(),
    )
    .await
    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(match kept {
        Some(id) => held(id),
        None => ignored("this delivery was received before"),
    })
}
