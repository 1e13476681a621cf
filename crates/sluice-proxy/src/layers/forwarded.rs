//! Forwarding headers: hop-by-hop headers dropped both ways; the client in
//! `X-Forwarded-For` and `Forwarded`; this proxy in `Via` both ways.

use std::task::{Context, Poll};

use http::header::HeaderValue;
use tower::{Layer, Service};

use super::{Peer, ProxyFuture, ProxyRequest};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

#[derive(Clone)]
pub struct ForwardedLayer {
    via: HeaderValue,
}

impl ForwardedLayer {
    pub fn new(via: HeaderValue) -> Self {
        ForwardedLayer { via }
    }
}

impl<S> Layer<S> for ForwardedLayer {
    type Service = Forwarded<S>;
    fn layer(&self, inner: S) -> Forwarded<S> {
        Forwarded {
            inner,
            via: self.via.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Forwarded<S> {
    inner: S,
    via: HeaderValue,
}

impl<S> Service<ProxyRequest> for Forwarded<S>
where
    S: Service<ProxyRequest, Response = super::ProxyResponse, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = super::ProxyResponse;
    type Error = std::convert::Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ProxyRequest) -> ProxyFuture {
        let headers = request.headers_mut();
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        if let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() {
            let headers = request.headers_mut();
            let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(before) => format!("{before}, {}", peer.ip()),
                None => peer.ip().to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
                headers.insert("x-forwarded-for", value);
            }
            let forwarded = format!("for={};proto=http", node(peer));
            if let Ok(value) = HeaderValue::from_str(&forwarded) {
                headers.append(http::header::FORWARDED, value);
            }
        }
        request
            .headers_mut()
            .append(http::header::VIA, self.via.clone());
        let via = self.via.clone();
        let answered = self.inner.call(request);
        Box::pin(async move {
            let mut response = answered.await?;
            let headers = response.headers_mut();
            for name in HOP_BY_HOP {
                headers.remove(name);
            }
            headers.append(http::header::VIA, via);
            Ok(response)
        })
    }
}

/// `Forwarded`'s node syntax: IPv6 addresses quoted and bracketed.
fn node(peer: std::net::SocketAddr) -> String {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("\"[{ip}]\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    #[tokio::test]
    async fn the_client_and_the_proxy_are_named_and_hop_headers_dropped() {
        let service = ServiceBuilder::new()
            .layer(ForwardedLayer::new(HeaderValue::from_static(
                "1.1 sluice-prod",
            )))
            .service(service_fn(|request: ProxyRequest| async move {
                let headers = request.headers();
                assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
                assert_eq!(headers["forwarded"], "for=127.0.0.2;proto=http");
                assert_eq!(headers["via"], "1.1 sluice-prod");
                assert!(headers.get("connection").is_none());
                let mut response =
                    http::Response::new(Empty::new().map_err(|n| match n {}).boxed());
                response
                    .headers_mut()
                    .insert("keep-alive", HeaderValue::from_static("5"));
                Ok::<_, std::convert::Infallible>(response)
            }));
        let mut request = http::Request::new(Empty::new().map_err(|n| match n {}).boxed());
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        request
            .headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
        request
            .extensions_mut()
            .insert(Peer(([127, 0, 0, 2], 9).into()));
        let response = service.oneshot(request).await.unwrap();
        assert!(response.headers().get("keep-alive").is_none());
        assert_eq!(response.headers()["via"], "1.1 sluice-prod");
    }
}
