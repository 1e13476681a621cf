//! Balancing: a healthy, non-draining, non-ejected backend of the chosen
//! variant (the other variant's when it has none) by power of two choices;
//! the request sent again to another backend when the first could not even
//! be connected to and the request has no body; every answer attributed.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tower::{Layer, Service};

use super::{
    Choice, Picked, ProxyFuture, ProxyRequest, ProxyResponse, Served, UpstreamError,
    error_response, set_header,
};
use crate::route::Route;

#[derive(Clone)]
pub struct BalanceLayer {
    route: Route,
}

impl BalanceLayer {
    pub fn new(route: Route) -> Self {
        BalanceLayer { route }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            route: self.route.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    route: Route,
}

impl<S> Service<ProxyRequest> for Balance<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = std::convert::Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ProxyRequest) -> ProxyFuture {
        let (mut inner, route) = (self.inner.clone(), self.route.clone());
        Box::pin(async move {
            let choice = request
                .extensions()
                .get::<Choice>()
                .copied()
                .unwrap_or(Choice {
                    variant: None,
                    share_b: 0.0,
                });
            let (parts, body) = request.into_parts();
            // Only a request without a body can be sent twice.
            let replayable = body.is_end_stream();
            let mut body = Some(body);
            let mut tried: Option<String> = None;
            loop {
                let picked = match choice.variant {
                    Some(variant) => route
                        .pick(Some(variant), tried.as_deref())
                        .or_else(|| route.pick(Some(variant.other()), tried.as_deref())),
                    None => route.pick(None, tried.as_deref()),
                };
                let Some(guard) = picked else {
                    let mut response =
                        error_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy instance");
                    response.extensions_mut().insert(UpstreamError {
                        connect: false,
                        message: "no healthy instance".into(),
                    });
                    response.extensions_mut().insert(Served {
                        variant: choice.variant.unwrap_or(crate::split::Variant::A),
                        release: String::new(),
                        instance: String::new(),
                        share_b: choice.share_b,
                    });
                    return Ok(response);
                };
                let backend = guard.0.clone();
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let Ok(uri) = Uri::try_from(format!("http://{}{path}", backend.addr)) else {
                    return Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        "bad request target",
                    ));
                };
                let mut upstream = http::Request::from_parts(
                    parts.clone(),
                    match (replayable, body.take()) {
                        (false, Some(body)) => body,
                        _ => Empty::new().map_err(|never| match never {}).boxed(),
                    },
                );
                *upstream.uri_mut() = uri;
                *upstream.version_mut() = http::Version::HTTP_11;
                upstream.extensions_mut().insert(Picked {
                    backend: backend.clone(),
                    _guard: Arc::new(guard),
                });
                let mut response = inner.call(upstream).await?;
                let connect_failed = response
                    .extensions()
                    .get::<UpstreamError>()
                    .is_some_and(|e| e.connect);
                if connect_failed && replayable && tried.is_none() {
                    tracing::debug!(backend = %backend.id, "connect failed; trying another instance");
                    tried = Some(backend.id.clone());
                    continue;
                }
                let headers = response.headers_mut();
                set_header(headers, "x-sluice-instance", &backend.id);
                set_header(headers, "x-sluice-release", &backend.release);
                set_header(headers, "x-sluice-variant", backend.variant().as_str());
                response.extensions_mut().insert(Served {
                    variant: backend.variant(),
                    release: backend.release.clone(),
                    instance: backend.id.clone(),
                    share_b: choice.share_b,
                });
                return Ok(response);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Backend;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn empty() -> ProxyRequest {
        http::Request::new(Empty::new().map_err(|n| match n {}).boxed())
    }

    #[tokio::test]
    async fn a_failed_connect_is_tried_once_elsewhere_and_the_answer_attributed() {
        let route = Route::default();
        for (id, port) in [("a-1", 1), ("a-2", 2)] {
            let backend = Backend::new(id, ([127, 0, 0, 1], port).into(), "v1");
            backend.set_healthy(true);
            route.add(backend);
        }
        let service = ServiceBuilder::new()
            .layer(BalanceLayer::new(route))
            .service(service_fn(|request: ProxyRequest| async move {
                let picked = request.extensions().get::<Picked>().unwrap();
                let mut response = error_response(StatusCode::OK, "ok");
                if picked.backend.addr.port() == 1 {
                    response = error_response(StatusCode::BAD_GATEWAY, "refused");
                    response.extensions_mut().insert(UpstreamError {
                        connect: true,
                        message: "refused".into(),
                    });
                }
                Ok::<_, std::convert::Infallible>(response)
            }));
        for _ in 0..6 {
            let response = service.clone().oneshot(empty()).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "every request reaches a-2"
            );
            assert_eq!(response.headers()["x-sluice-instance"], "a-2");
            assert_eq!(response.extensions().get::<Served>().unwrap().release, "v1");
        }
    }

    #[tokio::test]
    async fn no_healthy_backend_is_a_503() {
        let service =
            BalanceLayer::new(Route::default()).layer(service_fn(|_: ProxyRequest| async {
                Ok::<_, std::convert::Infallible>(error_response(StatusCode::OK, "unreachable"))
            }));
        let response = service.oneshot(empty()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
