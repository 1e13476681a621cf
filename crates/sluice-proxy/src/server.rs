//! The listener: accepts HTTP/1.1 and HTTP/2 connections, in the clear
//! (h2c) or over TLS ([`crate::tls`], ALPN), and hands each request to the
//! layered service of [`crate::layers`], one stack per worker thread; and
//! the plain listener that sends clients on to HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::header::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::acme::{ACME_TLS_ALPN, Challenges, HTTP_CHALLENGE_PATH};
use crate::layers::backend::BackendLayer;
use crate::layers::balance::BalanceLayer;
use crate::layers::forwarded::ForwardedLayer;
use crate::layers::goals::GoalsLayer;
use crate::layers::limits::LimitsLayer;
use crate::layers::record::RecordLayer;
use crate::layers::split::SplitLayer;
use crate::layers::timeout::TimeoutLayer;
use crate::layers::upstream::Upstream;
use crate::layers::{Peer, ProxyRequest, ProxyResponse};
use crate::route::Route;
use crate::telemetry::Telemetry;
use crate::tls::Certificates;

/// A listener serving one environment's route: one thread per core, each
/// with a single-threaded runtime and its own socket on the same port
/// (SO_REUSEPORT), so that a request and its upstream call stay on one core.
pub struct Listener {
    pub addr: SocketAddr,
    /// Stops this listener's workers accepting (and its certificates' reloading).
    accepting: CancellationToken,
    /// Drains the connections of this listener and of those it replaced.
    draining: std::sync::Mutex<Vec<CancellationToken>>,
    /// The worker threads, this listener's and those it replaced, each
    /// ending once its connections have drained.
    workers: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The listening sockets, one per worker (copies of the workers' own).
    sockets: Vec<std::net::TcpListener>,
}

/// What a client connection and its requests may take, and how long an
/// instance has to answer. Every client limit is answered as the client's
/// doing (431, 413, 408, or a closed connection) and counted against no
/// instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may wait for its next request's head and take
    /// to send it, counted from when it is ready for one: so also what a
    /// client sending its head a byte at a time (slowloris) gets before its
    /// connection is closed, and the TLS handshake's limit.
    pub idle: Duration,
    /// How long a request's body may take to arrive after its head (408).
    pub request_body: Duration,
    /// How long an instance has to start answering (504, the instance's failure).
    pub answer: Duration,
    /// The largest request body, in bytes (413).
    pub max_body: u64,
    /// The largest request head, in bytes (431; HTTP/2: the header list).
    pub max_header_bytes: usize,
    /// The most header fields in a request head (431).
    pub max_headers: usize,
    /// How long requests under way may take to finish once the listener
    /// stops: idle connections close at once, busy ones after their answer
    /// (HTTP/1.1 with `Connection: close`, HTTP/2 with GOAWAY).
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: Duration::from_secs(60),
            request_body: Duration::from_secs(60),
            answer: Duration::from_secs(30),
            max_body: 100 << 20,
            max_header_bytes: 64 << 10,
            max_headers: 100,
            drain: Duration::from_secs(30),
        }
    }
}

/// The request path, outermost layer first (see [`crate::layers`]).
fn stack(
    route: Route,
    via: HeaderValue,
    telemetry: Telemetry,
    limits: Limits,
) -> impl Service<ProxyRequest, Response = ProxyResponse, Error = std::convert::Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(RecordLayer::new(telemetry.clone()))
        .layer(LimitsLayer::new(limits.max_body, limits.request_body))
        .layer(ForwardedLayer::new(via))
        .layer(SplitLayer::new(route.clone()))
        .layer(GoalsLayer::new(route.clone()))
        .layer(BalanceLayer::new(route))
        .layer(BackendLayer::new(telemetry))
        .layer(TimeoutLayer::new(limits.answer))
        .service(Upstream::new())
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port; `self.addr` tells which).
    pub async fn bind(
        addr: SocketAddr,
        route: Route,
        name: &str,
        telemetry: Telemetry,
    ) -> std::io::Result<Listener> {
        Listener::bind_with(addr, route, name, telemetry, Limits::default()).await
    }

    /// [`Listener::bind`] with other limits on client connections.
    pub async fn bind_with(
        addr: SocketAddr,
        route: Route,
        name: &str,
        telemetry: Telemetry,
        limits: Limits,
    ) -> std::io::Result<Listener> {
        Listener::bind_tls(addr, route, name, telemetry, limits, None).await
    }

    /// [`Listener::bind_with`], serving HTTPS with `certificates` when given
    /// (read again when their files change).
    pub async fn bind_tls(
        addr: SocketAddr,
        route: Route,
        name: &str,
        telemetry: Telemetry,
        limits: Limits,
        certificates: Option<Arc<Certificates>>,
    ) -> std::io::Result<Listener> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let first = reuse_port_socket(addr)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(reuse_port_socket(addr)?);
        }
        Listener::from_sockets(sockets, route, name, telemetry, limits, certificates)
    }

    /// A listener on sockets bound before (by a previous server, kept for
    /// it by `sluice keep-sockets`), serving what waits in them.
    pub fn from_sockets(
        sockets: Vec<std::net::TcpListener>,
        route: Route,
        name: &str,
        telemetry: Telemetry,
        limits: Limits,
        certificates: Option<Arc<Certificates>>,
    ) -> std::io::Result<Listener> {
        if sockets.is_empty() {
            return Err(std::io::Error::other("no socket to listen on"));
        }
        for socket in &sockets {
            socket.set_nonblocking(true)?;
        }
        let acceptor = acceptor(&certificates)?;
        Listener::serve_on(
            sockets,
            route,
            name,
            telemetry,
            limits,
            acceptor,
            certificates,
        )
    }

    /// The listening sockets, to keep copies of.
    pub fn sockets(&self) -> &[std::net::TcpListener] {
        &self.sockets
    }

    /// A listener on the same sockets with another configuration (limits,
    /// certificates), taking connections before this one is dropped. The
    /// sockets pass from one to the other and never close, so no connection
    /// waiting to be accepted is reset, as it would be in a socket of its own
    /// that closes.
    pub fn replace(
        &self,
        route: Route,
        name: &str,
        telemetry: Telemetry,
        limits: Limits,
        certificates: Option<Arc<Certificates>>,
    ) -> std::io::Result<Listener> {
        let acceptor = acceptor(&certificates)?;
        let sockets = self
            .sockets
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let next = Listener::serve_on(
            sockets,
            route,
            name,
            telemetry,
            limits,
            acceptor,
            certificates,
        )?;
        // This one stops accepting; its connections go on (closing one
        // between requests would race a client's next request on it), and
        // drain with the new listener's.
        self.accepting.cancel();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap());
        let draining = std::mem::take(&mut *self.draining.lock().unwrap());
        next.workers.lock().unwrap().extend(workers);
        next.draining.lock().unwrap().extend(draining);
        Ok(next)
    }

    /// One worker thread per socket, serving `route` on it.
    fn serve_on(
        sockets: Vec<std::net::TcpListener>,
        route: Route,
        name: &str,
        telemetry: Telemetry,
        limits: Limits,
        acceptor: Option<TlsAcceptor>,
        certificates: Option<Arc<Certificates>>,
    ) -> std::io::Result<Listener> {
        let addr = sockets[0].local_addr()?;
        // Each worker owns a copy; these are kept to hand over (`replace`).
        let kept = sockets
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let via = HeaderValue::from_str(&format!("1.1 sluice-{name}"))
            .unwrap_or(HeaderValue::from_static("1.1 sluice"));
        let (accepting, draining) = (CancellationToken::new(), CancellationToken::new());
        if let Some(certificates) = certificates {
            spawn_reloader(certificates, name, accepting.clone())?;
        }
        let mut workers = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let (route, telemetry, via, acceptor) = (
                route.clone(),
                telemetry.clone(),
                via.clone(),
                acceptor.clone(),
            );
            let stops = Stops {
                accepting: accepting.clone(),
                draining: draining.clone(),
            };
            let worker = std::thread::Builder::new()
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
                        // Handles of the worker's own, see Route::for_worker.
                        let via = HeaderValue::from_bytes(via.as_bytes()).unwrap_or(via);
                        let service =
                            stack(route.for_worker(), via, telemetry.for_worker(i), limits);
                        match TcpListener::from_std(socket) {
                            Ok(listener) => {
                                accept(listener, service, limits, acceptor, stops).await
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "a proxy worker could not listen")
                            }
                        }
                    });
                })?;
            workers.push(worker);
        }
        Ok(Listener {
            addr,
            accepting,
            draining: std::sync::Mutex::new(vec![draining]),
            workers: std::sync::Mutex::new(workers),
            sockets: kept,
        })
    }

    /// Stops accepting connections; those open drain in the background.
    pub fn close(&self) {
        self.accepting.cancel();
        for draining in self.draining.lock().unwrap().iter() {
            draining.cancel();
        }
    }

    /// Stops accepting connections now; the future it answers ends once
    /// every request under way has its answer (or `limits.drain` has passed).
    pub fn shutdown(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.close();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap());
        async move {
            let _ = tokio::task::spawn_blocking(move || {
                for worker in workers {
                    let _ = worker.join();
                }
            })
            .await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// What ends a worker: accepting stops when its listener is closed or
/// replaced; its connections drain only when the listener (or the one that
/// replaced it) is closed.
struct Stops {
    accepting: CancellationToken,
    draining: CancellationToken,
}

/// The TLS side of a listener serving `certificates`, if any.
fn acceptor(certificates: &Option<Arc<Certificates>>) -> std::io::Result<Option<TlsAcceptor>> {
    let Some(certificates) = certificates else {
        return Ok(None);
    };
    let config = certificates
        .server_config()
        .map_err(std::io::Error::other)?;
    Ok(Some(TlsAcceptor::from(config)))
}

fn reuse_port_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    migrate_waiting_connections();
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

/// Where Linux (5.14 and later) is told to move the connections waiting
/// in a closing listener's queue to another listener of its reuse-port
/// group, instead of resetting them.
const MIGRATE_REQUESTS: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Turns [`MIGRATE_REQUESTS`] on, once a process, when it may (root: it is
/// its network namespace's setting), else says what it costs. An entry
/// point that moves to another process on the same host binds beside the
/// old one and the old one closes (make before break): without this, each
/// connection the kernel queued at the old socket in between is reset.
fn migrate_waiting_connections() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Absent on older kernels, where nothing can be done.
        let Ok(value) = std::fs::read_to_string(MIGRATE_REQUESTS) else {
            return;
        };
        if value.trim() != "0" {
            return;
        }
        match std::fs::write(MIGRATE_REQUESTS, "1") {
            Ok(()) => tracing::info!(
                "set net.ipv4.tcp_migrate_req=1: connections waiting at an entry point that closes move to the one that replaces it"
            ),
            Err(e) => tracing::info!(
                error = %e,
                "net.ipv4.tcp_migrate_req is 0 and only root can set it: connections waiting at an entry point that moves to another process on this host are reset; run `sysctl -w net.ipv4.tcp_migrate_req=1` as root to keep them"
            ),
        }
    });
}

/// Reads the certificates again when their files change, on a thread of
/// its own, until the listener stops.
fn spawn_reloader(
    certificates: Arc<Certificates>,
    name: &str,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let name = name.to_string();
    std::thread::Builder::new()
        .name(format!("tls-{name}"))
        .spawn(move || {
            while !stop.is_cancelled() {
                std::thread::sleep(crate::tls::RELOAD_EVERY);
                match certificates.reload_if_changed() {
                    Ok(true) => tracing::info!(env = %name, "certificates read again"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(env = %name, error = %e, "certificates not read again; the old ones are served"),
                }
            }
        })?;
    Ok(())
}

async fn accept<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    stops: Stops,
) where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let connections = TaskTracker::new();
    let stop = stops.draining;
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
            _ = stops.accepting.cancelled() => break,
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let stack = service.clone();
        let client = Peer::over(peer, tls.is_some());
        let (tls, stop) = (tls.clone(), stop.clone());
        connections.spawn(async move {
            // hyper's header timeout starts once it knows the protocol, which
            // takes a first byte: a client that never sends one is closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.idle, stream.peek(&mut first)).await {
                Ok(Ok(1..)) => {}
                _ => return,
            }
            let begun = CancellationToken::new();
            let first_request = begun.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                first_request.cancel();
                let mut request = request.map(|body| body.map_err(Into::into).boxed());
                request.extensions_mut().insert(client.clone());
                stack.clone().oneshot(request)
            });
            match tls {
                None => serve(TokioIo::new(stream), service, limits, peer, stop, begun).await,
                // The handshake has the head's time limit too.
                Some(tls) => {
                    match tokio::time::timeout(limits.idle, tls.accept(stream)).await {
                        // A TLS-ALPN-01 check ends with its handshake.
                        Ok(Ok(stream))
                            if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) => {}
                        Ok(Ok(stream)) => {
                            serve(TokioIo::new(stream), service, limits, peer, stop, begun).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    // Replaced: the connections go on until they end, or drain.
    drop(listener);
    connections.close();
    tokio::select! {
        _ = connections.wait() => return,
        _ = stop.cancelled() => {}
    }
    // Stopped: the connections finish what they have begun, within the drain time.
    if tokio::time::timeout(limits.drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(drain = ?limits.drain, "requests still under way when the drain time ended");
    }
}

/// HTTP/1.1 or HTTP/2 (by its preface) on one connection, until the
/// client closes it or `stop`: then gracefully (idle: closed at once; busy:
/// after the answer under way). `begun` is cancelled by its first request.
async fn serve<I, S>(
    io: TokioIo<I>,
    service: S,
    limits: Limits,
    peer: SocketAddr,
    stop: CancellationToken,
    begun: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = ProxyResponse,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = stop.cancelled() => {
            // Accepted in the instant before the stop, its first request
            // (whose first byte has come) is not read yet: closed now as
            // idle, it would fail. It is answered first.
            let first = tokio::time::timeout(limits.idle, begun.cancelled());
            tokio::select! {
                ended = connection.as_mut() => return log_end(ended, peer),
                _ = first => {}
            }
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    log_end(ended, peer);
}

fn log_end(ended: Result<(), Box<dyn std::error::Error + Send + Sync>>, peer: SocketAddr) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// A plain-HTTP listener that sends every request on to the same host and
/// path over HTTPS (308), but for the ACME HTTP-01 challenge path, which
/// `challenges` answers.
pub async fn redirect_to_https(
    addr: SocketAddr,
    https_port: u16,
    challenges: Option<Arc<Challenges>>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    // SO_REUSEPORT, as the entry point: a new one binds before the old goes.
    let listener = TcpListener::from_std(reuse_port_socket(addr)?)?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
                _ = stop.cancelled() => return,
            };
            let challenges = challenges.clone();
            let begun = CancellationToken::new();
            let first_request = begun.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                first_request.cancel();
                let answer = redirect(&request, https_port, challenges.as_deref());
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            tokio::spawn(serve(
                TokioIo::new(stream),
                service,
                Limits::default(),
                peer,
                stop.clone(),
                begun,
            ));
        }
    });
    Ok(bound)
}

fn redirect(
    request: &Request<Incoming>,
    https_port: u16,
    challenges: Option<&Challenges>,
) -> ProxyResponse {
    use http::StatusCode;
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Some(token) = request.uri().path().strip_prefix(HTTP_CHALLENGE_PATH) {
        return match challenges.and_then(|c| c.http_answer(token)) {
            Some(answer) => http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .body(
                    http_body_util::Full::new(bytes::Bytes::from(answer))
                        .map_err(|never| match never {})
                        .boxed(),
                )
                .unwrap_or_else(|_| {
                    crate::layers::error_response(StatusCode::INTERNAL_SERVER_ERROR, "no answer")
                }),
            None => {
                crate::layers::error_response(StatusCode::NOT_FOUND, "no ACME challenge is pending")
            }
        };
    }
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return crate::layers::error_response(
            StatusCode::BAD_REQUEST,
            "a request needs a Host to be sent on to HTTPS",
        );
    };
    let location = match https_port {
        443 => format!("https://{}{path}", host.host()),
        port => format!("https://{}:{port}{path}", host.host()),
    };
    let mut response = crate::layers::error_response(StatusCode::PERMANENT_REDIRECT, "use HTTPS");
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    response
}
