//! The API's listener: hyper serving the router over each accepted
//! connection, with the bounds `axum::serve` has no knob for ([`Limits`]): a
//! client has 30 s to send a request's head (slowloris is closed), and an
//! address may hold at most 128 connections at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// What a client connection may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client may take to send a request's head, or its first
    /// byte, or stay idle between requests on a kept connection.
    pub header_timeout: Duration,
    /// Connections one address may hold at once.
    pub per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(30),
            per_address: 128,
        }
    }
}

/// Open connections by client address.
#[derive(Clone, Default)]
struct Open(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open connection of an address, counted until dropped.
struct Counted {
    open: Open,
    ip: IpAddr,
}

impl Open {
    /// Counts a connection from `ip`, or `None` when it holds too many.
    fn admit(&self, ip: IpAddr, limit: usize) -> Option<Counted> {
        let mut open = self.0.lock().unwrap();
        let count = open.entry(ip).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Counted {
            open: self.clone(),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// connections in progress finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    peers: Option<Arc<crate::standby::Vouch>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let open = Open::default();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
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
            _ = &mut shutdown => break,
        };
        let Some(counted) = open.admit(peer.ip(), limits.per_address) else {
            tracing::warn!(%peer, "refused a connection: its address holds {} already", limits.per_address);
            continue;
        };
        let watcher = graceful.watcher();
        let peers = peers.clone();
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::http::Request<Incoming>| {
                // A request another server forwarded is its client's.
                let client = peers
                    .as_ref()
                    .and_then(|p| p.vouched(request.headers()))
                    .map_or(peer, |ip| std::net::SocketAddr::new(ip, peer.port()));
                request.extensions_mut().insert(ConnectInfo(client));
                request
            },
        ));
        tokio::spawn(async move {
            let _counted = counted;
            // hyper's head timeout starts once it knows the protocol, which
            // takes a first byte: a client that never sends one is closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(1..)) => {}
                _ => return,
            }
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    // In-flight requests finish; idle and streaming connections are told to close.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_of_connections() {
        let open = Open::default();
        let ip: IpAddr = [192, 0, 2, 7].into();
        let held: Vec<_> = (0..3).filter_map(|_| open.admit(ip, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(open.admit(ip, 3).is_none());
        assert!(
            open.admit([192, 0, 2, 8].into(), 3).is_some(),
            "others are not held up"
        );
        drop(held);
        assert!(
            open.admit(ip, 3).is_some(),
            "closed connections free their place"
        );
        assert!(
            open.0.lock().unwrap().len() <= 1,
            "no entry outlives its connections"
        );
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut answer = Vec::new();
        let guard = Duration::from_secs(20);
        tokio::time::timeout(guard, stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection")
            .ok();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn slow_heads_are_closed_and_an_address_gets_its_share() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            per_address: 3,
        };
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(
            listener,
            router,
            limits,
            None,
            std::future::pending(),
        ));

        // Slowloris: half a head, then nothing.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        until_closed(&mut slow).await;
        // Silent: connected, never a byte.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        until_closed(&mut silent).await;

        // Three held open; the fourth is closed at once, unanswered.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            held.push(stream);
        }
        for stream in &mut held {
            use tokio::io::AsyncReadExt;
            let mut first = [0u8; 12];
            stream.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
        }
        let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(until_closed(&mut fourth).await, "", "refused");
        drop(held);
        let answer = plain_get(addr).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// A plain GET on a connection of its own, its answer as text.
    async fn plain_get(addr: std::net::SocketAddr) -> String {
        use tokio::io::AsyncWriteExt;
        // The closed connections are counted off by their tasks: try a few times.
        for _ in 0..100 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let answer = until_closed(&mut stream).await;
            if !answer.is_empty() {
                return answer;
            }
            tokio::task::yield_now().await;
        }
        String::new()
    }
}
