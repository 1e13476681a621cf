//! The request timeout: an instance that has not started answering in time
//! gets the request counted as its failure, and the client a 504.

use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tower::{Layer, Service};

use super::{ProxyFuture, ProxyRequest, ProxyResponse, UpstreamError, error_response};

#[derive(Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<ProxyRequest> for Timeout<S>
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
        let limit = self.limit;
        let answered = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(limit, answered).await {
                Ok(answered) => answered,
                Err(_) => {
                    let message = format!("no answer within {limit:?}");
                    let mut response = error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the instance did not answer in time",
                    );
                    response.extensions_mut().insert(UpstreamError {
                        connect: false,
                        message,
                    });
                    Ok(response)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn a_slow_instance_gets_a_504() {
        let service = TimeoutLayer::new(Duration::from_millis(50)).layer(service_fn(
            |_: ProxyRequest| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, std::convert::Infallible>(error_response(StatusCode::OK, "late"))
            },
        ));
        let request = http::Request::new(Empty::new().map_err(|n| match n {}).boxed());
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            response
                .extensions()
                .get::<UpstreamError>()
                .unwrap()
                .message,
            "no answer within 50ms"
        );
    }
}
