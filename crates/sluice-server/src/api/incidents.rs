//! Incidents and their postmortems, and the rules that enforce their lessons.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_deploy::{NewRuleRequest, OpenRequest, ReplayTarget};
use sluice_store::Store;

use crate::access::Operation;
use crate::auth::Caller;
use crate::ids::{IncidentId, RuleId};
use crate::{ApiError, ApiResult, AppState};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    service: Option<String>,
    /// Resolved incidents, disabled and expired rules too.
    all: Option<bool>,
}

#[utoipa::path(
    get,
    path = "/incidents",
    tag = "incidents",
    params(ListQuery),
    responses((status = 200, description = "incidents, newest first", body = serde_json::Value))
)]
pub async fn list(
    State(store): State<Store>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let open_only = !q.all.unwrap_or(false);
    Ok(Json(json!(
        store
            .incidents(q.service.as_deref(), open_only, 200)
            .await?
    )))
}

#[utoipa::path(
    post,
    path = "/incidents",
    tag = "incidents",
    request_body = sluice_deploy::OpenRequest,
    responses((status = 200, description = "the incident", body = serde_json::Value))
)]
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<OpenRequest>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        state.cd.open_incident(body, &caller.actor()).await?
    )))
}

#[utoipa::path(
    get,
    path = "/incidents/{id}",
    tag = "incidents",
    params(("id" = String, Path, description = "the incident: INC-N or N")),
    responses((status = 200, description = "its timeline and suspects", body = serde_json::Value))
)]
pub async fn show(
    State(state): State<AppState>,
    _caller: Caller,
    Path(IncidentId(id)): Path<IncidentId>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.cd.incident(id).await?)))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct Note {
    note: Option<String>,
}

#[utoipa::path(
    post,
    path = "/incidents/{id}/{verb}",
    tag = "incidents",
    params(("id" = String, Path, description = "the incident: INC-N or N"), ("verb" = String, Path, description = "acknowledge, mitigate, resolve or reopen")),
    request_body = Note,
    responses((status = 200, description = "the incident", body = serde_json::Value))
)]
pub async fn transition(
    State(state): State<AppState>,
    caller: Caller,
    Path((IncidentId(id), verb)): Path<(IncidentId, String)>,
    body: Option<Json<Note>>,
) -> ApiResult<Json<Value>> {
    let status = match verb.as_str() {
        "mitigate" => sluice_store::IncidentStatus::Mitigated,
        "resolve" => sluice_store::IncidentStatus::Resolved,
        other => {
            return Err(ApiError::not_found(format!(
                "an incident takes `mitigate` or `resolve`, not `{other}`"
            )));
        }
    };
    let note = body.and_then(|b| b.0.note);
    Ok(Json(json!(
        state
            .cd
            .set_incident_status(id, status, note.as_deref(), &caller.actor())
            .await?
    )))
}

#[utoipa::path(
    get,
    path = "/incidents/{id}/postmortem",
    tag = "incidents",
    params(("id" = String, Path, description = "the incident: INC-N or N")),
    responses((status = 200, description = "the postmortem as Markdown", body = serde_json::Value))
)]
pub async fn postmortem(
    State(state): State<AppState>,
    _caller: Caller,
    Path(IncidentId(id)): Path<IncidentId>,
) -> ApiResult<impl IntoResponse> {
    let text = state.cd.postmortem(id).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        text,
    ))
}

#[utoipa::path(
    put,
    path = "/incidents/{id}/postmortem",
    tag = "incidents",
    params(("id" = String, Path, description = "the incident: INC-N or N")),
    request_body = Value,
    responses((status = 200, description = "saved", body = serde_json::Value))
)]
pub async fn edit_postmortem(
    State(state): State<AppState>,
    caller: Caller,
    Path(IncidentId(id)): Path<IncidentId>,
    text: String,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        state.cd.edit_postmortem(id, &text, &caller.actor()).await?
    )))
}

#[utoipa::path(
    get,
    path = "/rules",
    tag = "incidents",
    params(ListQuery),
    responses((status = 200, description = "rules with what each blocked", body = serde_json::Value))
)]
pub async fn rules(
    State(store): State<Store>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let active_only = !q.all.unwrap_or(false);
    let mut out = Vec::new();
    for rule in store.rules(q.service.as_deref(), active_only).await? {
        out.push(rule_json(&store, rule).await?);
    }
    Ok(Json(json!(out)))
}

/// A rule with what it demands in words and what it has blocked.
async fn rule_json(store: &Store, rule: sluice_store::RuleRecord) -> ApiResult<Value> {
    let blocks = store.rule_blocks(&rule.name()).await?;
    let spec: Value = serde_json::from_str(&rule.spec).unwrap_or(Value::Null);
    let describes = serde_json::from_value::<sluice_spec::RuleSpec>(spec.clone())
        .map(|s| s.describe())
        .unwrap_or_default();
    let active = rule.is_active(sluice_store::now_ms());
    let mut value = json!(rule);
    value["spec"] = spec;
    value["name"] = json!(rule.name());
    value["origin"] = json!(rule.origin());
    value["describes"] = json!(describes);
    value["active"] = json!(active);
    value["blocks"] = json!(blocks);
    Ok(value)
}

#[utoipa::path(
    post,
    path = "/rules",
    tag = "incidents",
    request_body = Value,
    responses((status = 200, description = "the rule", body = serde_json::Value))
)]
pub async fn add_rule(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let request: NewRuleRequest = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request(format!("not a rule: {e}")).with_hint(
            "send {\"service\": …, \"rule\": {\"kind\": \"require_job\" | \"health_check\" | \"metric_gate\" | \"freeze\" | \"config_guard\" | \"soak\", …}}; docs/api.md lists the fields",
        )
    })?;
    let rule = state.cd.add_rule(request, &caller.actor()).await?;
    Ok(Json(rule_json(&state.store, rule).await?))
}

#[utoipa::path(
    get,
    path = "/rules/{id}",
    tag = "incidents",
    params(("id" = String, Path, description = "the rule: RN or N")),
    responses((status = 200, description = "the rule", body = serde_json::Value))
)]
pub async fn rule(
    State(store): State<Store>,
    _caller: Caller,
    Path(RuleId(id)): Path<RuleId>,
) -> ApiResult<Json<Value>> {
    let rule = store.rule(id).await?;
    Ok(Json(rule_json(&store, rule).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Reason {
    #[serde(default)]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/rules/{id}/disable",
    tag = "incidents",
    params(("id" = String, Path, description = "the rule: RN or N")),
    request_body = Reason,
    responses((status = 200, description = "disabled", body = serde_json::Value))
)]
pub async fn disable_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(RuleId(id)): Path<RuleId>,
    Json(body): Json<Reason>,
) -> ApiResult<Json<Value>> {
    let rule = state
        .cd
        .disable_rule(id, &body.reason, &caller.actor())
        .await?;
    Ok(Json(rule_json(&state.store, rule).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ReplayBody {
    change: Option<String>,
    release: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/rules/{id}/test",
    tag = "incidents",
    params(("id" = String, Path, description = "the rule: RN or N")),
    request_body = ReplayBody,
    responses((status = 200, description = "whether it would have stopped the change or release", body = serde_json::Value))
)]
pub async fn test_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(RuleId(id)): Path<RuleId>,
    Json(body): Json<ReplayBody>,
) -> ApiResult<Json<Value>> {
    caller.may(Operation::ReplayRule)?;
    // Replaying a health check starts the release against a copy of the
    // data: running code is an approver's to ask for.
    let rule = state.store.rule(id).await?;
    if let Ok(sluice_spec::RuleSpec::HealthCheck { .. }) = serde_json::from_str(&rule.spec) {
        caller.may(Operation::ReplayRuleStartingInstance)?;
    }
    let target = match (body.change, body.release) {
        (Some(sha), None) => ReplayTarget::Change(sha),
        (None, Some(n)) => ReplayTarget::Release(n),
        _ => {
            return Err(ApiError::bad_request(
                "say what to test the rule against: {\"change\": SHA} or {\"release\": N}",
            ));
        }
    };
    Ok(Json(json!(state.cd.replay_rule(id, target).await?)))
}
