//! The listener: accepts HTTP/1.1 and HTTP/2 (h2c) connections, forwards each
//! request to a backend picked by the route, and streams the answer back
//! while the backend counts it in flight.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::time::Instant;

use crate::route::{Backend, InFlight, Route};
use crate::split::{COOKIE, FORCE_HEADER, Sticky, Variant, new_key};
use crate::telemetry::{AccessEntry, InstanceLabels, Telemetry};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A listener serving one environment's route: one thread per core, each
/// with a single-threaded runtime and its own socket on the same port
/// (SO_REUSEPORT), so that a request and its upstream call stay on one core.
pub struct Listener {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

/// How long an instance has to start answering a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Shared {
    route: Route,
    client: Client<HttpConnector, ProxyBody>,
    via: HeaderValue,
    telemetry: Telemetry,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port; `self.addr` tells which).
    pub async fn bind(
        addr: SocketAddr,
        route: Route,
        name: &str,
        telemetry: Telemetry,
    ) -> std::io::Result<Listener> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let first = reuse_port_socket(addr)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(reuse_port_socket(addr)?);
        }
        let via = HeaderValue::from_str(&format!("1.1 sluice-{name}"))
            .unwrap_or(HeaderValue::from_static("1.1 sluice"));
        let stop = CancellationToken::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let (route, telemetry, via, stop) =
                (route.clone(), telemetry.clone(), via.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("proxy-{name}-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            return tracing::error!(error = %e, "no runtime for a proxy worker");
                        }
                    };
                    runtime.block_on(async move {
                        let shared = Arc::new(Shared {
                            route,
                            client: upstream_client(),
                            via,
                            telemetry,
                        });
                        match TcpListener::from_std(socket) {
                            Ok(listener) => accept(listener, shared, stop).await,
                            Err(e) => {
                                tracing::error!(error = %e, "a proxy worker could not listen")
                            }
                        }
                    });
                })?;
        }
        Ok(Listener { addr, stop })
    }

    /// Stops accepting connections.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn reuse_port_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn upstream_client() -> Client<HttpConnector, ProxyBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| forward(shared.clone(), peer, request));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = connection => if let Err(e) = served {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                },
                // The worker's runtime ends with its listener; so do its connections.
                _ = stop.cancelled() => {}
            }
        });
    }
}

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

/// Forwards a request and answers; every answer is recorded when its body ends.
async fn forward(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut trace = Trace {
        telemetry: shared.telemetry.clone(),
        start: Instant::now(),
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        status: 0,
        variant: Variant::A,
        release: String::new(),
        instance: String::new(),
        error: None,
        bytes: 0,
        in_flight: None,
        share_b: 0.0,
    };
    let (response, guard) = route_request(&shared, peer, request, &mut trace).await;
    trace.status = response.status().as_u16();
    let (head, body) = response.into_parts();
    Ok(Response::from_parts(
        head,
        Recorded {
            inner: body,
            trace,
            _guard: guard,
        }
        .boxed(),
    ))
}

async fn route_request(
    shared: &Shared,
    peer: SocketAddr,
    request: Request<Incoming>,
    trace: &mut Trace,
) -> (Response<ProxyBody>, Option<InFlight>) {
    let (mut parts, body) = request.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(before) => format!("{before}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
    parts.headers.append(http::header::VIA, shared.via.clone());
    let forwarded = format!("for={};proto=http", forwarded_node(peer));
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        parts.headers.append(http::header::FORWARDED, value);
    }
    let choice = choose_variant(&shared.route, &parts.headers, peer);
    trace.share_b = choice.share_b;
    // A request without a body can be sent again to another backend when the
    // first could not even be connected to; one with a body is never replayed.
    let replayable = body.is_end_stream();
    let mut body = Some(body);
    let mut tried: Option<String> = None;
    for attempt in 0..2 {
        // A variant without a healthy instance sends its users to the other.
        let picked = match choice.variant {
            Some(variant) => shared
                .route
                .pick(Some(variant), tried.as_deref())
                .or_else(|| shared.route.pick(Some(variant.other()), tried.as_deref())),
            None => shared.route.pick(None, tried.as_deref()),
        };
        let Some(guard) = picked else {
            trace.error = Some("no healthy instance".into());
            return (
                error_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy instance"),
                None,
            );
        };
        let backend = guard.0.clone();
        trace.variant = backend.variant();
        trace.release = backend.release.clone();
        trace.instance = backend.id.clone();
        let labels = shared.telemetry.labels(backend.variant(), &backend.id);
        if trace.in_flight.is_none() {
            shared
                .telemetry
                .metrics
                .in_flight
                .get_or_create(&labels)
                .inc();
            trace.in_flight = Some(labels.clone());
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = Uri::try_from(format!("http://{}{path}", backend.addr)) else {
            return (
                error_response(StatusCode::BAD_REQUEST, "bad request target"),
                None,
            );
        };
        let mut upstream = Request::from_parts(parts.clone(), ());
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = http::Version::HTTP_11;
        let upstream_body: ProxyBody = match (replayable, body.take()) {
            (false, Some(body)) => body.boxed(),
            _ => Empty::new().map_err(|never| match never {}).boxed(),
        };
        let upstream = upstream.map(|_| upstream_body);
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, shared.client.request(upstream)).await;
        let Ok(answered) = answered else {
            record_failure(shared, &backend, &labels, false);
            trace.error = Some(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()));
            let mut response = error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "the instance did not answer in time",
            );
            set(response.headers_mut(), "x-sluice-instance", &backend.id);
            return (response, None);
        };
        match answered {
            Ok(response) => {
                backend.succeeded();
                let (mut head, incoming) = response.into_parts();
                for name in HOP_BY_HOP {
                    head.headers.remove(name);
                }
                head.headers.append(http::header::VIA, shared.via.clone());
                set(&mut head.headers, "x-sluice-instance", &backend.id);
                set(&mut head.headers, "x-sluice-release", &backend.release);
                set(
                    &mut head.headers,
                    "x-sluice-variant",
                    backend.variant().as_str(),
                );
                if let Some(key) = &choice.new_cookie
                    && let Ok(cookie) = HeaderValue::from_str(&format!(
                        "{COOKIE}={key}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000"
                    ))
                {
                    head.headers.append(http::header::SET_COOKIE, cookie);
                }
                return (Response::from_parts(head, incoming.boxed()), Some(guard));
            }
            Err(e) if e.is_connect() && replayable && attempt == 0 => {
                tracing::debug!(backend = %backend.id, error = %e, "connect failed; trying another instance");
                record_failure(shared, &backend, &labels, true);
                tried = Some(backend.id.clone());
            }
            Err(e) => {
                tracing::warn!(backend = %backend.id, error = %e, "upstream request failed");
                record_failure(shared, &backend, &labels, e.is_connect());
                trace.error = Some(e.to_string());
                let mut response =
                    error_response(StatusCode::BAD_GATEWAY, "the instance failed to answer");
                set(response.headers_mut(), "x-sluice-instance", &backend.id);
                return (response, None);
            }
        }
    }
    trace.error = Some("no instance could be reached".into());
    (
        error_response(StatusCode::BAD_GATEWAY, "no instance could be reached"),
        None,
    )
}

/// Counts a failure against a backend, ejecting it after several in a row.
fn record_failure(shared: &Shared, backend: &Backend, labels: &InstanceLabels, connect: bool) {
    if connect {
        shared
            .telemetry
            .metrics
            .connect_errors
            .get_or_create(labels)
            .inc();
    }
    if backend.failed() {
        tracing::warn!(backend = %backend.id, "ejected after consecutive failures");
        shared
            .telemetry
            .metrics
            .ejections
            .get_or_create(labels)
            .inc();
    }
}

/// The variant a request goes to, and the cookie to set when the user is new.
struct Choice {
    variant: Option<Variant>,
    new_cookie: Option<String>,
    /// B's weight (0 to 1) for this request: what it expects of the split.
    share_b: f64,
}

fn choose_variant(route: &Route, headers: &http::HeaderMap, peer: SocketAddr) -> Choice {
    let Some(split) = route.split() else {
        return Choice {
            variant: None,
            new_cookie: None,
            share_b: 0.0,
        };
    };
    if split.allow_force
        && let Some(forced) = headers
            .get(FORCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Variant::parse)
    {
        // A forced request is no sample of the split: it expects what it gets.
        let share_b = if forced == Variant::B { 1.0 } else { 0.0 };
        return Choice {
            variant: Some(forced),
            new_cookie: None,
            share_b,
        };
    }
    let (key, new_cookie) = match &split.sticky {
        Sticky::Cookie => match cookie(headers, COOKIE) {
            Some(key) => (key, None),
            None => {
                let key = new_key();
                (key.clone(), Some(key))
            }
        },
        // Without the header, the client's address is the best key there is.
        Sticky::Header(name) => (
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| peer.ip().to_string(), String::from),
            None,
        ),
    };
    Choice {
        variant: Some(split.variant_for(&key)),
        new_cookie,
        share_b: split.percent() / 100.0,
    }
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `Forwarded`'s node syntax: IPv6 addresses quoted and bracketed.
fn forwarded_node(peer: SocketAddr) -> String {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("\"[{ip}]\""),
    }
}

fn set(headers: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = format!("{{\"error\":{{\"code\":\"proxy\",\"message\":\"{message}\"}}}}\n");
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What is known of a request, recorded (metrics, window, access log) when its answer ends.
struct Trace {
    telemetry: Telemetry,
    start: Instant,
    method: String,
    path: String,
    status: u16,
    variant: Variant,
    release: String,
    instance: String,
    error: Option<String>,
    bytes: u64,
    in_flight: Option<InstanceLabels>,
    /// B's weight when the request was routed (the variant itself when forced).
    share_b: f64,
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Some(labels) = &self.in_flight {
            self.telemetry.metrics.in_flight.get_or_create(labels).dec();
        }
        let entry = AccessEntry {
            time: None,
            method: &self.method,
            path: &self.path,
            status: self.status,
            latency_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            bytes: self.bytes,
            variant: self.variant.as_str(),
            release: &self.release,
            instance: if self.instance.is_empty() {
                "-"
            } else {
                &self.instance
            },
            error: self.error.as_deref(),
        };
        self.telemetry.record(&entry, self.variant, self.share_b);
    }
}

/// An answer's body, streamed through; it keeps its backend's request in
/// flight and counts its bytes until it ends, then the request is recorded.
struct Recorded {
    inner: ProxyBody,
    trace: Trace,
    _guard: Option<InFlight>,
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.trace.bytes += data.len() as u64;
        }
        if let Poll::Ready(Some(Err(e))) = &polled {
            self.trace.error = Some(e.to_string());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
