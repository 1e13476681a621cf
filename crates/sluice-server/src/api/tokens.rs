//! `/tokens` and `/whoami`: who am I, and minting and revoking tokens (admin).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::Role;

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

#[utoipa::path(
    get,
    path = "/whoami",
    tag = "tokens",
    responses((status = 200, description = "who the token is", body = serde_json::Value))
)]
pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(
        json!({ "id": caller.token_id, "name": caller.name, "role": caller.role, "groups": caller.groups }),
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    name: String,
    role: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    request_body = NewToken,
    responses((status = 201, description = "the token, shown once", body = serde_json::Value))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::bad_request(format!("unknown role `{}`", body.role))
            .with_hint("expected viewer, developer, approver or admin")
    })?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "a token needs a name: one line, at most 100 characters",
        )
        .with_hint("--name NAME says whose or what it is for"));
    }
    let taken = state.store.tokens().await?;
    if taken
        .iter()
        .any(|t| t.revoked_at.is_none() && t.name == name)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("a token named `{name}` exists already"),
        )
        .with_hint("give each token its own name, or revoke the old one first"));
    }
    let (id, token) = state
        .tokens
        .mint(
            &state.store,
            body.name.trim(),
            role,
            &body.groups,
            &caller.name,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": id, "name": body.name.trim(), "role": role, "groups": body.groups, "token": token }),
        ),
    ))
}

#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    responses((status = 200, description = "every token, without its secret", body = serde_json::Value))
)]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.store.tokens().await?)))
}

#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "the token id")),
    responses((status = 204, description = "revoked"))
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.revoke_token(&id, &caller.name).await?;
    state.tokens.forget(&id);
    Ok(StatusCode::NO_CONTENT)
}
