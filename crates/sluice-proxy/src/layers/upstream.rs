//! The innermost service: the request to the picked backend over pooled
//! keep-alive connections; a failure becomes a 502 that says whether the
//! connection itself failed.

use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::Service;

use super::{
    Picked, ProxyBody, ProxyFuture, ProxyRequest, ProxyResponse, UpstreamError, error_response,
};

#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, ProxyBody>,
}

impl Upstream {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream { client }
    }
}

impl Service<ProxyRequest> for Upstream {
    type Response = ProxyResponse;
    type Error = std::convert::Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ProxyRequest) -> ProxyFuture {
        let backend = request
            .extensions()
            .get::<Picked>()
            .map(|p| p.backend.id.clone())
            .unwrap_or_default();
        let answered = self.client.request(request);
        Box::pin(async move {
            match answered.await {
                Ok(response) => Ok(response.map(|body| body.boxed())),
                Err(e) => {
                    if !e.is_connect() {
                        tracing::warn!(%backend, error = %e, "upstream request failed");
                    }
                    let mut response =
                        error_response(StatusCode::BAD_GATEWAY, "the instance failed to answer");
                    response.extensions_mut().insert(UpstreamError {
                        connect: e.is_connect(),
                        message: e.to_string(),
                    });
                    Ok(response)
                }
            }
        })
    }
}
