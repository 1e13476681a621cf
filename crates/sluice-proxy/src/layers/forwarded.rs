//! Forwarding headers: hop-by-hop headers dropped both ways; the client in
//! `X-Forwarded-For` and `Forwarded`; this proxy in `Via` both ways.

use std::task::{Context, Poll};

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderName, HeaderValue};
use tower::{Layer, Service};

use super::{Peer, ProxyFuture, ProxyRequest};

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Drops the hop-by-hop headers: the standard ones and those `Connection` names.
fn drop_hop_by_hop(headers: &mut http::HeaderMap) {
    // One pass over the message's few names finds which are there (most
    // requests have none; most answers only `Connection: keep-alive`).
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Other headers `Connection` names as hop-by-hop (rarely any).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive")
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The protocol a message asks to switch to (`Upgrade`, with `Connection: upgrade`).
fn asked_upgrade(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let protocol = headers.get(header::UPGRADE)?;
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| protocol.clone())
}

/// An upgrade is hop-by-hop too, but the proxy takes part in it: it is
/// asked of the instance, and its acceptance told to the client.
fn pass_on(headers: &mut http::HeaderMap, upgrade: Option<HeaderValue>) {
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

impl Peer {
    /// The client at `addr`, over HTTPS when `tls`, with the forms the
    /// forwarding headers name it by (`X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `Forwarded`).
    pub fn over(addr: SocketAddr, tls: bool) -> Peer {
        let node = match addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            // `Forwarded`'s node syntax: IPv6 addresses quoted and bracketed.
            IpAddr::V6(ip) => format!("\"[{ip}]\""),
        };
        let value = |text: &str| HeaderValue::from_str(text).expect("an address is a header value");
        let proto = if tls { "https" } else { "http" };
        Peer {
            addr,
            ip: value(&addr.ip().to_string()),
            forwarded: value(&format!("for={node};proto={proto}")),
            proto: HeaderValue::from_static(proto),
        }
    }
}

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

    fn call(&mut self, request: ProxyRequest) -> ProxyFuture {
        let (mut head, body) = request.into_parts();
        let upgrade = asked_upgrade(&head.headers);
        drop_hop_by_hop(&mut head.headers);
        pass_on(&mut head.headers, upgrade);
        if let Some(peer) = head.extensions.get::<Peer>() {
            name_the_client(&mut head.headers, peer);
        }
        head.headers.append(header::VIA, self.via.clone());
        let request = ProxyRequest::from_parts(head, body);
        let via = self.via.clone();
        let answered = self.inner.call(request);
        Box::pin(async move {
            let mut response = answered.await?;
            let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
            let upgrade = switching
                .then(|| asked_upgrade(response.headers()))
                .flatten();
            let headers = response.headers_mut();
            drop_hop_by_hop(headers);
            pass_on(headers, upgrade);
            headers.append(header::VIA, via);
            Ok(response)
        })
    }
}

/// Adds the client to `X-Forwarded-For` (after the proxies before us) and `Forwarded`.
fn name_the_client(headers: &mut http::HeaderMap, peer: &Peer) {
    let before = headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|before| HeaderValue::from_str(&format!("{before}, {}", peer.addr.ip())).ok());
    headers.insert(X_FORWARDED_FOR, before.unwrap_or_else(|| peer.ip.clone()));
    headers.insert(X_FORWARDED_PROTO, peer.proto.clone());
    headers.append(header::FORWARDED, peer.forwarded.clone());
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
                assert_eq!(
                    headers["x-forwarded-proto"], "http",
                    "never what the client claims"
                );
                assert_eq!(headers["via"], "1.1 sluice-prod");
                assert!(headers.get("connection").is_none());
                assert!(headers.get("x-hop").is_none(), "named by Connection");
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
            .insert("x-forwarded-proto", HeaderValue::from_static("https"));
        request
            .headers_mut()
            .insert("connection", HeaderValue::from_static("close, x-hop"));
        request
            .headers_mut()
            .insert("x-hop", HeaderValue::from_static("1"));
        request
            .extensions_mut()
            .insert(Peer::over(([127, 0, 0, 2], 9).into(), false));
        let response = service.oneshot(request).await.unwrap();
        assert!(response.headers().get("keep-alive").is_none());
        assert_eq!(response.headers()["via"], "1.1 sluice-prod");
    }

    #[tokio::test]
    async fn an_upgrade_is_passed_on_and_its_acceptance_told() {
        for status in [101, 200] {
            let service = ForwardedLayer::new(HeaderValue::from_static("1.1 sluice")).layer(
                service_fn(move |request: ProxyRequest| async move {
                    let headers = request.headers();
                    assert_eq!(headers["connection"], "upgrade");
                    assert_eq!(headers["upgrade"], "websocket");
                    assert!(headers.get("keep-alive").is_none());
                    let mut response =
                        http::Response::new(Empty::new().map_err(|n| match n {}).boxed());
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    let headers = response.headers_mut();
                    headers.insert("connection", HeaderValue::from_static("Upgrade"));
                    headers.insert("upgrade", HeaderValue::from_static("websocket"));
                    Ok::<_, std::convert::Infallible>(response)
                }),
            );
            let mut request = http::Request::new(Empty::new().map_err(|n| match n {}).boxed());
            let headers = request.headers_mut();
            headers.insert(
                "connection",
                HeaderValue::from_static("keep-alive, Upgrade"),
            );
            headers.insert("upgrade", HeaderValue::from_static("websocket"));
            headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            let response = service.oneshot(request).await.unwrap();
            let told = response.headers().get("upgrade").is_some();
            assert_eq!(told, status == 101, "only a 101 tells of an upgrade");
        }
    }
}
