//! Live events over SSE: every event, or one run's log (stored lines first,
//! then live ones, ending when the run does). Every server serves these
//! itself: a server standing by reads what the one running CI tells over
//! PostgreSQL ([`crate::relay`]), so a stream lasts through a takeover.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use sluice_ci::Event;
use sluice_store::Store;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::{Caller, Gate};
use crate::{ApiResult, AppState};

/// What the live streams read: the store, and events as they happen (the
/// CI engine's, or those relayed to a server standing by).
#[derive(Clone)]
pub struct Live {
    pub store: Store,
    pub events: broadcast::Sender<Event>,
}

impl FromRef<AppState> for Live {
    fn from_ref(state: &AppState) -> Live {
        Live {
            store: state.store.clone(),
            events: state.ci.events(),
        }
    }
}

/// The live streams' routes, for any server that can check callers and
/// has events.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Live: FromRef<S>,
    Gate: FromRef<S>,
{
    Router::new()
        .route("/runs/{id}/logs/stream", get(run_logs))
        .route("/events", get(all))
}

fn sse(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn json_event(name: &str, value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_default())
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    responses((status = 200, description = "server-sent events: runs, deployments, promotions, experiments", body = String, content_type = "text/event-stream"))
)]
pub async fn all(State(live): State<Live>, _caller: Caller) -> ApiResult<Response> {
    let mut events = live.events.subscribe();
    let stream = async_stream::stream! {
        loop {
            match events.recv().await {
                Ok(event) => yield Ok(json_event("event", &event)),
                Err(RecvError::Lagged(missed)) => yield Ok(SseEvent::default().event("lagged").data(missed.to_string())),
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(sse(stream))
}

#[utoipa::path(
    get,
    path = "/runs/{id}/logs/stream",
    tag = "events",
    params(("id" = i64, Path, description = "the run id")),
    responses((status = 200, description = "server-sent events: each line, then the end", body = String, content_type = "text/event-stream"))
)]
pub async fn run_logs(
    State(live): State<Live>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    live.store.run(id).await?;
    // Subscribe before reading the stored lines, so that none falls in between.
    let mut events = live.events.subscribe();
    let store = live.store.clone();
    let stream = async_stream::stream! {
        let mut last = -1;
        for line in store.logs(id, -1).await.unwrap_or_default() {
            last = line.seq;
            yield Ok(json_event("line", &line));
        }
        loop {
            if let Ok(run) = store.run(id).await && run.status.is_finished() {
                // The sink stores every line before the run is marked ended.
                for line in store.logs(id, last).await.unwrap_or_default() {
                    yield Ok(json_event("line", &line));
                }
                yield Ok(json_event("end", &serde_json::json!({ "status": run.status, "reason": run.reason })));
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Ok(Event::Log { run_id, line })) if run_id == id && line.seq > last => {
                    last = line.seq;
                    yield Ok(json_event("line", &line));
                }
                Ok(Err(RecvError::Lagged(_))) => {
                    for line in store.logs(id, last).await.unwrap_or_default() {
                        last = line.seq;
                        yield Ok(json_event("line", &line));
                    }
                }
                Ok(Err(RecvError::Closed)) => break,
                _ => {}
            }
        }
    };
    Ok(sse(stream))
}
