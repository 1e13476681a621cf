//! `/repos`: registering repositories, their secrets, and the hook's poke.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_ci::AddRepo;
use sluice_store::Store;

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

#[utoipa::path(
    post,
    path = "/repos",
    tag = "repos",
    request_body = sluice_ci::AddRepo,
    responses((status = 201, description = "the repository, with its webhook secret shown once", body = serde_json::Value))
)]
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<AddRepo>,
) -> ApiResult<(StatusCode, Json<Value>)> {
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

#[utoipa::path(
    get,
    path = "/repos",
    tag = "repos",
    responses((status = 200, description = "watched repositories", body = serde_json::Value))
)]
pub async fn list(State(store): State<Store>, _caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!(store.repos().await?)))
}

#[utoipa::path(
    get,
    path = "/repos/{name}",
    tag = "repos",
    params(("name" = String, Path, description = "the repository name")),
    responses((status = 200, description = "the repository", body = serde_json::Value))
)]
pub async fn show(
    State(store): State<Store>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(store.repo(&name).await?)))
}

/// The git hook's poke. It carries no data, only "look again", so it needs no
/// token: the server reads the repository itself, and a scan is idempotent.
/// It answers the same whether or not the repository exists, and before the
/// scan, so that it tells an anonymous caller nothing.
#[utoipa::path(
    post,
    path = "/repos/{name}/notify",
    tag = "repos",
    params(("name" = String, Path, description = "the repository name")),
    responses((status = 202, description = "the server looks again; the same answer for any name", body = serde_json::Value))
)]
pub async fn notify(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> (StatusCode, Json<Value>) {
    tokio::spawn(async move {
        if let Err(e) = state.ci.scan(&name, "hook").await {
            tracing::debug!(repo = %name.chars().take(100).collect::<String>(), error = %format!("{e:#}"), "a notify found nothing to scan");
        }
    });
    (StatusCode::ACCEPTED, Json(json!({ "accepted": true })))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SecretValue {
    value: String,
    /// Given to review runs too (changes not on the mainline).
    #[serde(default)]
    review: bool,
}

/// The shortest value that is masked in logs: a shorter one would turn
/// every `a` or `1` of a log into `***`.
pub const MIN_MASKED: usize = 4;

#[utoipa::path(
    put,
    path = "/repos/{name}/secrets/{secret}",
    tag = "repos",
    params(("name" = String, Path, description = "the repository name"), ("secret" = String, Path, description = "the secret name")),
    request_body = SecretValue,
    responses((status = 200, description = "set", body = serde_json::Value))
)]
pub async fn set_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, secret)): Path<(String, String)>,
    Json(body): Json<SecretValue>,
) -> ApiResult<Json<Value>> {
    if let Some(problem) = sluice_spec::paths::secret_name_problem(&secret) {
        return Err(ApiError::bad_request(problem).with_hint(
            "choose another name, e.g. `DEPLOY_KEY`; the step can copy it where it is needed",
        ));
    }
    if body.value.is_empty() {
        return Err(
            ApiError::bad_request("the secret's value is empty").with_hint(
                "pipe the value on stdin: `printf %s VALUE | sluice secret set REPO NAME`",
            ),
        );
    }
    if body.value.len() > 64 * 1024 {
        return Err(
            ApiError::bad_request("the secret's value is longer than 64 KiB").with_hint(
                "keep large files in the repository, encrypted, and their key in a secret",
            ),
        );
    }
    let repo = state.store.repo(&name).await?;
    state
        .store
        .set_secret(&repo, &secret, &body.value, body.review, &caller.name)
        .await?;
    let masked = body.value.chars().count() >= MIN_MASKED;
    Ok(Json(json!({
        "name": secret,
        "review": body.review,
        "masked": masked,
        "warning": (!masked).then(|| format!(
            "the value is shorter than {MIN_MASKED} characters, so logs will not mask it"
        )),
    })))
}

#[utoipa::path(
    delete,
    path = "/repos/{name}/secrets/{secret}",
    tag = "repos",
    params(("name" = String, Path, description = "the repository name"), ("secret" = String, Path, description = "the secret name")),
    responses((status = 204, description = "deleted"))
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, secret)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let repo = state.store.repo(&name).await?;
    if !state
        .store
        .delete_secret(&repo, &secret, &caller.name)
        .await?
    {
        return Err(
            ApiError::not_found(format!("`{name}` has no secret `{secret}`"))
                .with_hint(format!("`sluice secret list {name}` names its secrets")),
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/repos/{name}/secrets",
    tag = "repos",
    params(("name" = String, Path, description = "the repository name")),
    responses((status = 200, description = "names and whether review runs get each, never values", body = serde_json::Value))
)]
pub async fn secret_names(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let repo = state.store.repo(&name).await?;
    let secrets = state.store.secrets(repo.id).await?;
    let listed: Vec<Value> = secrets
        .into_iter()
        .map(|(name, s)| json!({ "name": name, "review": s.review }))
        .collect();
    Ok(Json(json!(listed)))
}
