//! Balancing: a healthy, non-draining, non-ejected backend of the chosen
//! variant (the other variant's when it has none) by power of two choices;
//! the request sent again to another backend when it never left (the first
//! could not even be connected to); every answer attributed.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use tower::{Layer, Service};

use super::upstream::Unsent;
use super::{
    Choice, ClientFault, Picked, ProxyFuture, ProxyRequest, ProxyResponse, Served, UpstreamError,
    error_response,
};
use crate::route::{Backend, Route};

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
                    user: None,
                    share_b: 0.0,
                });
            let mut request = request;
            let mut tried: Option<Arc<Backend>> = None;
            loop {
                let except = tried.as_ref().map(|b| b.id.as_str());
                let picked = match choice.variant {
                    Some(variant) => route
                        .pick(Some(variant), except)
                        .or_else(|| route.pick(Some(variant.other()), except)),
                    None => route.pick(None, except),
                };
                let Some(guard) = picked else {
                    return Ok(no_instance(choice));
                };
                let backend = guard.0.clone();
                request.extensions_mut().insert(Picked::new(guard));
                let mut response = inner.call(request).await?;
                // Sent nowhere: the request comes back and goes to another instance, once.
                let unsent = response.extensions_mut().remove::<Unsent>();
                if let Some(back) = unsent.and_then(|u| u.take())
                    && tried.is_none()
                {
                    tracing::debug!(backend = %backend.id, "connect failed; trying another instance");
                    request = back;
                    tried = Some(backend);
                    continue;
                }
                if response.extensions().get::<ClientFault>().is_some() {
                    // The client's own error: served by nobody, counted for nobody.
                    return Ok(response);
                }
                attribute(&mut response, &backend);
                response.extensions_mut().insert(Served {
                    variant: backend.variant(),
                    backend: Some(backend),
                    share_b: choice.share_b,
                });
                return Ok(response);
            }
        })
    }
}

/// Names who served the answer, for the client and whoever debugs it.
fn attribute(response: &mut ProxyResponse, backend: &Backend) {
    let headers = response.headers_mut();
    // Room for these three and the `Via` and `Set-Cookie` the outer layers
    // add, so that the map grows once rather than on each of them.
    headers.reserve(5);
    if let Some(id) = &backend.id_header {
        headers.insert(HeaderName::from_static("x-sluice-instance"), id.clone());
    }
    if let Some(release) = &backend.release_header {
        headers.insert(HeaderName::from_static("x-sluice-release"), release.clone());
    }
    headers.insert(
        HeaderName::from_static("x-sluice-variant"),
        HeaderValue::from_static(backend.variant().as_str()),
    );
}

fn no_instance(choice: Choice) -> ProxyResponse {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy instance");
    response.extensions_mut().insert(UpstreamError {
        connect: false,
        message: "no healthy instance".into(),
    });
    response.extensions_mut().insert(Served {
        variant: choice.variant.unwrap_or(crate::split::Variant::A),
        backend: None,
        share_b: choice.share_b,
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
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
                if picked.backend().addr.port() == 1 {
                    let mut response = error_response(StatusCode::BAD_GATEWAY, "refused");
                    response.extensions_mut().insert(UpstreamError {
                        connect: true,
                        message: "refused".into(),
                    });
                    response.extensions_mut().insert(Unsent::new(request));
                    return Ok(response);
                }
                Ok::<_, std::convert::Infallible>(error_response(StatusCode::OK, "ok"))
            }));
        for _ in 0..6 {
            let response = service.clone().oneshot(empty()).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "every request reaches a-2"
            );
            assert_eq!(response.headers()["x-sluice-instance"], "a-2");
            let served = response.extensions().get::<Served>().unwrap();
            assert_eq!(served.backend.as_ref().unwrap().release, "v1");
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
