//! Goals on the request path (see [`crate::goals`]): a user's exposure on
//! each request of an experiment with goals, the goals a request reaches
//! once answered, the `Sluice-Goal` headers of an answer (counted, then
//! removed, whether or not an experiment runs), and `POST /_sluice/goal`,
//! answered here and never sent on.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;
use tower::{Layer, Service};

use super::{Choice, OwnAnswer, ProxyFuture, ProxyRequest, ProxyResponse, error_response};
use crate::goals::{GOAL_HEADER, GOAL_PATH, GoalTracker, parse_report};
use crate::route::Route;

/// The largest body `POST /_sluice/goal` reads.
const MAX_REPORT: usize = 4096;

#[derive(Clone)]
pub struct GoalsLayer {
    route: Route,
}

impl GoalsLayer {
    pub fn new(route: Route) -> Self {
        GoalsLayer { route }
    }
}

impl<S> Layer<S> for GoalsLayer {
    type Service = Goals<S>;
    fn layer(&self, inner: S) -> Goals<S> {
        Goals {
            inner,
            route: self.route.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Goals<S> {
    inner: S,
    route: Route,
}

impl<S> Service<ProxyRequest> for Goals<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = std::convert::Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ProxyRequest) -> ProxyFuture {
        let tracked = self.route.goals().and_then(|goals| {
            let choice = request.extensions().get::<Choice>()?;
            let user = choice.user?;
            goals.expose(user, choice.variant?, choice.share_b);
            Some((goals, user))
        });
        if request.uri().path() == GOAL_PATH {
            return Box::pin(report(request, tracked));
        }
        let reached = tracked.as_ref().map_or_else(Vec::new, |(goals, _)| {
            goals.requested(request.method(), request.uri().path())
        });
        let answered = self.inner.call(request);
        Box::pin(async move {
            let mut response = answered.await?;
            let reports = take_reports(&mut response);
            if let Some((goals, user)) = tracked {
                for index in reached {
                    if goals.accepts(index, response.status()) {
                        goals.reach(user, index, None);
                    }
                }
                for (name, value) in reports {
                    if let Some(index) = goals.index_of(&name) {
                        goals.reach(user, index, value);
                    }
                }
            }
            Ok(response)
        })
    }
}

/// The answer's `Sluice-Goal` reports, removed from it.
fn take_reports(response: &mut ProxyResponse) -> Vec<(String, Option<f64>)> {
    let http::header::Entry::Occupied(entry) = response.headers_mut().entry(GOAL_HEADER) else {
        return Vec::new();
    };
    let (_, values) = entry.remove_entry_mult();
    values
        .filter_map(|v| {
            let text = v.to_str().ok()?;
            parse_report(text).map(|(name, value)| (name.to_string(), value))
        })
        .collect()
}

/// `POST /_sluice/goal` with `{"goal": NAME, "value": NUMBER?}`: counted
/// for the user of the request's cookie, once exposed; 204 whether or not
/// an experiment counts it, 400 for a report that is not one.
async fn report(
    request: ProxyRequest,
    tracked: Option<(Arc<GoalTracker>, u64)>,
) -> Result<ProxyResponse, std::convert::Infallible> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Report {
        goal: String,
        value: Option<f64>,
    }
    if request.method() != Method::POST {
        return Ok(own(error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "report a goal with POST",
        )));
    }
    let body = match Limited::new(request.into_body(), MAX_REPORT)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(own(error_response(
                StatusCode::BAD_REQUEST,
                "a goal report is JSON of at most 4 KiB",
            )));
        }
    };
    let Ok(report) = serde_json::from_slice::<Report>(&body) else {
        return Ok(own(error_response(
            StatusCode::BAD_REQUEST,
            "send JSON with goal (a name) and, for a value goal, value (a number)",
        )));
    };
    let text = match report.value {
        Some(value) => format!("{}; value={value}", report.goal),
        None => report.goal.clone(),
    };
    let Some((name, value)) = parse_report(&text) else {
        return Ok(own(error_response(
            StatusCode::BAD_REQUEST,
            "a goal is a name of letters, digits, -, _ and ., with a value from 0 to 1e9",
        )));
    };
    if let Some((goals, user)) = tracked
        && let Some(index) = goals.index_of(name)
    {
        goals.reach(user, index, value);
    }
    let mut response = ProxyResponse::new(Empty::<Bytes>::new().map_err(|n| match n {}).boxed());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(own(response))
}

fn own(mut response: ProxyResponse) -> ProxyResponse {
    response.extensions_mut().insert(OwnAnswer);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goals::{Goal, RequestRule};
    use crate::split::Variant;
    use http::HeaderValue;
    use http_body_util::Full;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn stack(
        route: Route,
    ) -> impl Service<ProxyRequest, Response = ProxyResponse, Error = std::convert::Infallible>
    {
        ServiceBuilder::new()
            .layer(GoalsLayer::new(route))
            .service(service_fn(|request: ProxyRequest| async move {
                let mut response =
                    http::Response::new(Empty::new().map_err(|n| match n {}).boxed());
                if request.uri().path() == "/buy" {
                    let headers = response.headers_mut();
                    headers.append(GOAL_HEADER, HeaderValue::from_static("purchase; value=20"));
                    headers.append(GOAL_HEADER, HeaderValue::from_static("purchase; value=5"));
                }
                if request.uri().path() == "/fail" {
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                Ok::<_, std::convert::Infallible>(response)
            }))
    }

    fn request(
        method: Method,
        path: &str,
        user: u64,
        variant: Variant,
        body: &str,
    ) -> ProxyRequest {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .body(
                Full::new(Bytes::from(body.to_string()))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .unwrap();
        request.extensions_mut().insert(Choice {
            variant: Some(variant),
            user: Some(user),
            share_b: 0.5,
        });
        request
    }

    fn route_with_goals() -> (Route, Arc<GoalTracker>) {
        let route = Route::default();
        let goals = Arc::new(
            GoalTracker::new(vec![
                Goal {
                    name: "checkout".into(),
                    on: Some(RequestRule {
                        method: Method::POST,
                        path: "/fail".into(),
                        status_class: Some(2),
                    }),
                    value: false,
                },
                Goal {
                    name: "signup".into(),
                    on: Some(RequestRule {
                        method: Method::POST,
                        path: "/signup".into(),
                        status_class: Some(2),
                    }),
                    value: false,
                },
                Goal {
                    name: "purchase".into(),
                    on: None,
                    value: true,
                },
            ])
            .unwrap(),
        );
        route.set_goals(Some(goals.clone()));
        (route, goals)
    }

    #[tokio::test]
    async fn requests_headers_and_reports_reach_goals() {
        let (route, goals) = route_with_goals();
        let send = |method: Method, path: &str, user: u64, variant: Variant, body: &str| {
            stack(route.clone()).oneshot(request(method, path, user, variant, body))
        };
        send(Method::POST, "/signup", 1, Variant::A, "")
            .await
            .unwrap();
        // Answered 500: the rule asks for 2xx.
        send(Method::POST, "/fail", 1, Variant::A, "")
            .await
            .unwrap();
        let bought = send(Method::GET, "/buy", 2, Variant::B, "").await.unwrap();
        assert!(
            bought.headers().get(GOAL_HEADER).is_none(),
            "removed before it leaves"
        );
        let reported = send(
            Method::POST,
            GOAL_PATH,
            1,
            Variant::A,
            r#"{"goal":"purchase","value":7.5}"#,
        )
        .await
        .unwrap();
        assert_eq!(reported.status(), StatusCode::NO_CONTENT);
        assert!(reported.extensions().get::<OwnAnswer>().is_some());
        let arms = goals.arms();
        assert_eq!(
            (arms[0].a.sum, arms[0].b.sum),
            (0.0, 0.0),
            "checkout answered 500"
        );
        assert_eq!(arms[1].a.sum, 1.0, "signup");
        assert_eq!(arms[2].b.sum, 25.0, "both headers added up");
        assert_eq!(arms[2].a.sum, 7.5, "the report");
        assert_eq!((arms[2].a.users, arms[2].b.users), (1, 1));
    }

    #[tokio::test]
    async fn bad_reports_are_refused() {
        let (route, goals) = route_with_goals();
        for body in [
            "",
            "{}",
            r#"{"goal":"purchase","value":-3}"#,
            r#"{"goal":"x y"}"#,
            &"x".repeat(5000),
        ] {
            let answer = stack(route.clone())
                .oneshot(request(Method::POST, GOAL_PATH, 1, Variant::A, body))
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{body:.40}");
        }
        let get = stack(route.clone())
            .oneshot(request(Method::GET, GOAL_PATH, 1, Variant::A, ""))
            .await
            .unwrap();
        assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(goals.arms().iter().all(|g| g.a.sum == 0.0));
    }
}
