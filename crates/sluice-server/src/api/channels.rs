//! `/channels` and `/messages`: notification channels (admin), the messages
//! sent to them with every attempt, a test message, and a retry.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_notify::ChannelInput;
use sluice_store::Store;

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

#[utoipa::path(
    get,
    path = "/channels",
    tag = "notifications",
    responses((status = 200, description = "every channel with its server-wide routes, never its target", body = serde_json::Value))
)]
pub async fn list(State(store): State<Store>, _caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!(store.channels().await?)))
}

#[utoipa::path(
    post,
    path = "/channels",
    tag = "notifications",
    request_body = ChannelInput,
    responses((status = 201, description = "added (or replaced); a webhook's signing key is shown this once when Sluice made it", body = serde_json::Value))
)]
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Json(input): Json<ChannelInput>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (channel, made_key) = sluice_notify::validate(input).map_err(|why| {
        ApiError::bad_request(why).with_hint("docs/notifications.md describes each kind of channel")
    })?;
    let (name, kind) = (channel.name.clone(), channel.kind.clone());
    state.store.put_channel(channel, &caller.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "kind": kind, "signing_key": made_key })),
    ))
}

#[utoipa::path(
    delete,
    path = "/channels/{name}",
    tag = "notifications",
    params(("name" = String, Path, description = "the channel")),
    responses((status = 204, description = "removed"))
)]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.remove_channel(&name, &caller.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/channels/{name}/test",
    tag = "notifications",
    params(("name" = String, Path, description = "the channel")),
    responses((status = 200, description = "`sent`, or why not", body = serde_json::Value))
)]
pub async fn test(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    state.store.channel(&name).await?;
    let answer = sluice_notify::test_channel(&state.store, &name, &caller.name, &state.public_url)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(match answer {
        Ok(()) => json!({ "sent": true }),
        Err(why) => json!({ "sent": false, "error": why }),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct MessageQuery {
    /// Only this channel's.
    channel: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/messages",
    tag = "notifications",
    params(MessageQuery),
    responses((status = 200, description = "the latest messages, newest first", body = serde_json::Value))
)]
pub async fn messages(
    State(store): State<Store>,
    _caller: Caller,
    Query(q): Query<MessageQuery>,
) -> ApiResult<Json<Value>> {
    let limit = super::limit(q.limit, 50)?;
    Ok(Json(json!(
        store.messages(q.channel.as_deref(), limit).await?
    )))
}

#[utoipa::path(
    get,
    path = "/messages/{id}",
    tag = "notifications",
    params(("id" = i64, Path, description = "the message")),
    responses((status = 200, description = "a message, its events and every attempt", body = serde_json::Value))
)]
pub async fn message(
    State(store): State<Store>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let message = store.message(id).await?;
    let events = store.message_events(id).await?;
    let attempts = store.message_attempts(id).await?;
    Ok(Json(
        json!({ "message": message, "events": events, "attempts": attempts }),
    ))
}

#[utoipa::path(
    post,
    path = "/messages/{id}/retry",
    tag = "notifications",
    params(("id" = i64, Path, description = "a failed message")),
    responses((status = 200, description = "pending again, with another 24 hours of retries", body = serde_json::Value))
)]
pub async fn retry(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.store.retry_message(id).await?)))
}
