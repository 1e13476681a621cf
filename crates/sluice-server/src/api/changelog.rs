//! `GET /changelog`: the change log, filtered by service, environment, kind and time.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::{ChangeQuery, Store};

use crate::auth::Caller;
use crate::{ApiError, ApiResult};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    service: Option<String>,
    env: Option<String>,
    kind: Option<String>,
    /// A duration back from now, such as `1h`.
    since: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/changelog",
    tag = "changelog",
    params(LogQuery),
    responses((status = 200, description = "change-log events, newest first", body = serde_json::Value))
)]
pub async fn list(
    State(store): State<Store>,
    _caller: Caller,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Value>> {
    let since_ms = match &q.since {
        Some(text) => {
            let back = sluice_spec::parse_duration(text).map_err(|e| {
                ApiError::bad_request(format!("bad `since`: {e}"))
                    .with_hint("write a duration such as 30m, 1h or 2d")
            })?;
            Some(sluice_store::now_ms() - back.as_millis() as i64)
        }
        None => None,
    };
    let query = ChangeQuery {
        service: q.service,
        environment: q.env,
        kind_prefix: q.kind,
        since_ms,
        limit: super::limit(q.limit, 200)?,
    };
    Ok(Json(json!(store.changes_log(&query).await?)))
}
