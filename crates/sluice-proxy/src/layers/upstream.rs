//! The innermost service: the request to the picked backend over keep-alive
//! HTTP/1.1 connections, pooled per worker thread. A request that never left
//! (its connection could not be made) comes back inside its 502 as
//! [`Unsent`], so that the balancer can send it to another instance. An
//! upgrade the instance accepts (101) becomes a tunnel between the client's
//! connection and the instance's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderValue, UPGRADE};
use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use super::{
    ClientFault, Keep, Kept, Picked, ProxyFuture, ProxyRequest, ProxyResponse, UpstreamError,
    error_response,
};

/// How long a connection may take to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle connection is kept, and how many per instance.
const IDLE_FOR: Duration = Duration::from_secs(60);
const MAX_IDLE_PER_INSTANCE: usize = 256;

/// The request, taken back because it was never sent (answer extension).
#[derive(Clone)]
pub struct Unsent(Arc<Mutex<Option<ProxyRequest>>>);

impl Unsent {
    pub(crate) fn new(request: ProxyRequest) -> Unsent {
        Unsent(Arc::new(Mutex::new(Some(request))))
    }

    pub fn take(&self) -> Option<ProxyRequest> {
        self.0.lock().unwrap().take()
    }
}

/// The client side of the proxy: one per worker, its clones share the pool.
#[derive(Clone, Default)]
pub struct Upstream {
    pool: Arc<Pool>,
}

impl Upstream {
    pub fn new() -> Self {
        Upstream::default()
    }
}

/// Idle keep-alive connections by instance address, the latest used last.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

struct Idle {
    sender: SendRequest<super::ProxyBody>,
    since: Instant,
}

impl Pool {
    /// The most recently used idle connection to `addr` that is still open.
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<super::ProxyBody>> {
        let mut idle = self.idle.lock().unwrap();
        let kept = idle.get_mut(&addr)?;
        while let Some(connection) = kept.pop() {
            if !connection.sender.is_closed() && connection.since.elapsed() < IDLE_FOR {
                return Some(connection.sender);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<super::ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        let kept = idle.entry(addr).or_default();
        if kept.len() < MAX_IDLE_PER_INSTANCE {
            kept.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("could not connect to {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("could not connect to {0} within {CONNECT_TIMEOUT:?}")]
    TimedOut(SocketAddr),
    #[error("no HTTP/1.1 connection to {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<super::ProxyBody>, ConnectError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ConnectError::Tcp(addr, e)),
        Err(_) => return Err(ConnectError::TimedOut(addr)),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(addr, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Makes the request one an instance expects: origin-form target, a `Host`
/// header (an HTTP/2 request carries it in its target), HTTP/1.1.
fn prepare(request: &mut ProxyRequest, addr: SocketAddr) {
    if request.uri().authority().is_some() || request.uri().scheme().is_some() {
        let host = request.uri().authority().map(|a| a.as_str().to_owned());
        if let Some(host) = host
            && !request.headers().contains_key(HOST)
            && let Ok(value) = HeaderValue::from_str(&host)
        {
            request.headers_mut().insert(HOST, value);
        }
        let target = request
            .uri()
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        *request.uri_mut() = target;
    }
    if !request.headers().contains_key(HOST)
        && let Ok(value) = HeaderValue::from_str(&addr.to_string())
    {
        request.headers_mut().insert(HOST, value);
    }
    *request.version_mut() = http::Version::HTTP_11;
}

impl Service<ProxyRequest> for Upstream {
    type Response = ProxyResponse;
    type Error = std::convert::Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ProxyRequest) -> ProxyFuture {
        let pool = self.pool.clone();
        Box::pin(async move { Ok(send(pool, request).await) })
    }
}

async fn send(pool: Arc<Pool>, mut request: ProxyRequest) -> ProxyResponse {
    let Some(addr) = request
        .extensions()
        .get::<Picked>()
        .map(|p| p.backend().addr)
    else {
        return error_response(StatusCode::BAD_GATEWAY, "no instance was picked");
    };
    prepare(&mut request, addr);
    // The client's side of an upgrade (a WebSocket, say), should it be one,
    // and what keeps its tunnel in flight on the backend.
    let client_side = request
        .headers()
        .contains_key(UPGRADE)
        .then(|| request.extensions().get::<OnUpgrade>().cloned())
        .flatten();
    let picked = client_side
        .as_ref()
        .and_then(|_| request.extensions().get::<Picked>().cloned());
    loop {
        let (mut sender, fresh) = match pool.take(addr) {
            Some(kept) => (kept, false),
            None => match connect(addr).await {
                Ok(sender) => (sender, true),
                Err(e) => return unsent(request, e.to_string()),
            },
        };
        if let Err(e) = sender.ready().await {
            if fresh {
                return unsent(request, format!("connection to {addr} closed: {e}"));
            }
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(mut response) => {
                if let Some(client_side) = client_side
                    && response.status() == StatusCode::SWITCHING_PROTOCOLS
                {
                    // The connection is the tunnel's now, never the pool's.
                    tunnel(client_side, hyper::upgrade::on(&mut response), picked, addr);
                    return response.map(|body| body.map_err(Into::into).boxed());
                }
                let (head, body) = response.into_parts();
                let back = GoesBack {
                    sender: Some(sender),
                    pool,
                    addr,
                };
                return ProxyResponse::from_parts(
                    head,
                    Kept::new(body.map_err(Into::into), back).boxed(),
                );
            }
            Err(mut e) => match e.take_message() {
                // A kept connection the instance closed meanwhile: try a new one.
                Some(back) if !fresh => request = back,
                Some(back) => return unsent(back, e.into_error().to_string()),
                None => {
                    let e = e.into_error();
                    if client_broke_it(&e) {
                        return client_fault(e);
                    }
                    tracing::warn!(%addr, error = %e, "upstream request failed");
                    return failed(false, e.to_string());
                }
            },
        }
    }
}

/// Once both sides have switched protocols, copies bytes both ways until
/// either closes. The tunnel counts as a request in flight on its backend,
/// for balancing and for draining, as long as it is open.
fn tunnel(
    client_side: OnUpgrade,
    instance_side: OnUpgrade,
    picked: Option<Picked>,
    addr: SocketAddr,
) {
    tokio::spawn(async move {
        let _in_flight = picked;
        let (client, instance) = match tokio::try_join!(client_side, instance_side) {
            Ok(both) => both,
            Err(e) => return tracing::debug!(%addr, error = %e, "an upgrade did not happen"),
        };
        let (mut client, mut instance) = (TokioIo::new(client), TokioIo::new(instance));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut instance).await {
            tracing::debug!(%addr, error = %e, "an upgraded connection ended with an error");
        }
    });
}

fn failed(connect: bool, message: String) -> ProxyResponse {
    let mut response = error_response(StatusCode::BAD_GATEWAY, "the instance failed to answer");
    response
        .extensions_mut()
        .insert(UpstreamError { connect, message });
    response
}

/// Whether sending failed on the client's side: reading its request's body
/// (malformed, or cut short) is what failed, not the instance.
fn client_broke_it(error: &hyper::Error) -> bool {
    error.is_user()
}

/// The client's own protocol error: a 400 for that client (413 or 408 for a
/// body over its limits), and no failure of the instance's.
fn client_fault(error: hyper::Error) -> ProxyResponse {
    if let Some(limit) = super::limits::broken_limit(&error) {
        return super::limits::refused(limit);
    }
    let message = std::error::Error::source(&error)
        .map_or_else(|| error.to_string(), |cause| cause.to_string());
    let mut response = error_response(
        StatusCode::BAD_REQUEST,
        "the request's body could not be read",
    );
    response.extensions_mut().insert(ClientFault(message));
    response
}

/// A 502 for a request that never left, with the request inside.
fn unsent(request: ProxyRequest, message: String) -> ProxyResponse {
    let mut response = failed(true, message);
    response.extensions_mut().insert(Unsent::new(request));
    response
}

/// An answer's connection, back to the pool once the answer's body was read
/// to the end (a body dropped half-read closes the connection with it).
struct GoesBack {
    sender: Option<SendRequest<super::ProxyBody>>,
    pool: Arc<Pool>,
    addr: SocketAddr,
}

impl Keep for GoesBack {
    fn release(&mut self, ended: bool) {
        if ended && let Some(sender) = self.sender.take() {
            self.pool.put(self.addr, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Empty, Full};

    fn request(uri: &str) -> ProxyRequest {
        let mut request = http::Request::new(Empty::new().map_err(|n| match n {}).boxed());
        *request.uri_mut() = uri.parse().unwrap();
        request
    }

    #[test]
    fn an_absolute_target_becomes_origin_form_with_its_host() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let mut h2 = request("http://shop.example/cart?id=3");
        *h2.version_mut() = http::Version::HTTP_2;
        prepare(&mut h2, addr);
        assert_eq!(h2.uri(), "/cart?id=3");
        assert_eq!(h2.headers()[HOST], "shop.example");
        assert_eq!(h2.version(), http::Version::HTTP_11);

        let mut bare = request("/");
        prepare(&mut bare, addr);
        assert_eq!(
            bare.headers()[HOST],
            "127.0.0.1:9",
            "no host at all: the instance's"
        );

        let mut kept = request("/x");
        kept.headers_mut()
            .insert(HOST, HeaderValue::from_static("shop"));
        prepare(&mut kept, addr);
        assert_eq!(kept.headers()[HOST], "shop");
    }

    #[tokio::test]
    async fn a_refused_connection_gives_the_request_back() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let mut request = http::Request::new(
            Full::new(Bytes::from("order"))
                .map_err(|n| match n {})
                .boxed(),
        );
        let backend = crate::route::Backend::new("a-1", addr, "v1");
        request
            .extensions_mut()
            .insert(Picked::new(backend.start()));
        let response = send(Arc::default(), request).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let error = response.extensions().get::<UpstreamError>().unwrap();
        assert!(error.connect, "{}", error.message);
        let back = response
            .extensions()
            .get::<Unsent>()
            .unwrap()
            .take()
            .unwrap();
        let body = back.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "order", "the body was never read");
    }
}
