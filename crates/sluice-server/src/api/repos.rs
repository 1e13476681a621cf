//! `/repos`: registering repositories, their secrets, and the hook's poke.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_ci::AddRepo;
use sluice_store::Role;

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<AddRepo>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let repo =
        state
            .ci
            .add_repo(body, &caller.name)
            .await
            .map_err(|e| match e.downcast::<sluice_store::StoreError>() {
                Ok(store) => ApiError::from(store),
                Err(other) => ApiError::bad_request(format!("{other:#}")),
            })?;
    let mut shown = json!(repo);
    // The webhook secret is shown once, to whoever registered the repository.
    shown["webhook_secret"] = json!(repo.webhook_secret);
    shown["webhook_url"] = json!(format!("/api/v1/hooks/{}", repo.name));
    Ok((StatusCode::CREATED, Json(shown)))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(state.store.repos().await?)))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(state.store.repo(&name).await?)))
}

/// The git hook's poke. It carries no data, only "look again", so it needs no
/// token: the server reads the repository itself, and a scan is idempotent.
pub async fn notify(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let queued = state.ci.scan(&name, "hook").await.map_err(|e| match e
        .downcast::<sluice_store::StoreError>()
    {
        Ok(store) => ApiError::from(store),
        Err(other) => ApiError::internal(format!("{other:#}")),
    })?;
    let ids: Vec<i64> = queued.iter().map(|r| r.id).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": ids }))))
}

#[derive(Deserialize)]
pub struct SecretValue {
    value: String,
}

pub async fn set_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, secret)): Path<(String, String)>,
    Json(body): Json<SecretValue>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let valid = !secret.is_empty()
        && secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !secret.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(
            ApiError::bad_request(format!("`{secret}` is not a valid variable name"))
                .with_hint("secrets become environment variables: use letters, digits and `_`"),
        );
    }
    if body.value.is_empty() {
        return Err(
            ApiError::bad_request("the secret's value is empty").with_hint(
                "pipe the value on stdin: `printf %s VALUE | sluice secret set REPO NAME`",
            ),
        );
    }
    let repo = state.store.repo(&name).await?;
    state
        .store
        .set_secret(&repo, &secret, &body.value, &caller.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn secret_names(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let repo = state.store.repo(&name).await?;
    let names: Vec<String> = state.store.secrets(repo.id).await?.into_keys().collect();
    Ok(Json(json!(names)))
}
