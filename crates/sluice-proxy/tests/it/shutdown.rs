//! A listener that stops lets every request under way finish: HTTP/1.1
//! answers close their connections, HTTP/2 gets GOAWAY after its streams,
//! and no new connection is taken.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use sluice_proxy::{Listener, Route, Telemetry};
use tokio::sync::Semaphore;

use super::healthy;

/// A backend whose answers wait until the test lets them go.
async fn gated_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<Semaphore>) {
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (s, g) = (started.clone(), gate.clone());
    let app = Router::new().route(
        "/held",
        get(move || {
            let (started, gate) = (s.clone(), g.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _pass = gate.acquire().await.unwrap();
                "x".repeat(64 << 10)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, started, gate)
}

/// prod's entry point, in front of `backend`.
async fn listening_before(backend: SocketAddr) -> Listener {
    let route = Route::default();
    route.add(healthy("prod-1", backend, "v1"));
    Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        route,
        "prod",
        Telemetry::detached("prod"),
    )
    .await
    .unwrap()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_listener_lets_every_request_under_way_finish() {
    let (backend, started, gate) = gated_backend().await;
    let listener = listening_before(backend).await;
    let url = format!("http://{}/held", listener.addr);

    let mut under_way = Vec::new();
    for _ in 0..6 {
        let client = reqwest::Client::builder().http1_only().build().unwrap();
        let url = url.clone();
        under_way.push(tokio::spawn(async move {
            let answer = client.get(&url).send().await.unwrap();
            let close = answer.headers().get("connection").cloned();
            (answer.status(), close, answer.text().await.unwrap().len())
        }));
    }
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..4 {
        let (h2, url) = (h2.clone(), url.clone());
        under_way.push(tokio::spawn(async move {
            let answer = h2.get(&url).send().await.unwrap();
            (answer.status(), None, answer.text().await.unwrap().len())
        }));
    }
    until("ten requests at the backend", || {
        started.load(Ordering::SeqCst) == 10
    })
    .await;

    let drained = tokio::spawn(listener.shutdown());
    let addr = listener.addr;
    let refused =
        || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err();
    until("new connections refused", refused).await;
    assert!(
        !drained.is_finished(),
        "it waits for the requests under way"
    );

    gate.add_permits(10);
    for request in under_way {
        let (status, close, length) = request.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(length, 64 << 10, "the whole answer");
        if let Some(close) = close {
            assert_eq!(close, "close");
        }
    }
    drained.await.unwrap();
}

/// A connection taken in the instant before the stop, whose request was not
/// read yet, is answered rather than closed as idle (the one request a
/// hand-over between servers could fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_the_stop_gets_its_first_answer() {
    use std::io::{Read, Write};
    let (backend, _started, gate) = gated_backend().await;
    gate.add_permits(100);
    let listener = listening_before(backend).await;
    let addr = listener.addr;
    // Several, as each met the stop or its request first by chance.
    let early: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let early = std::net::TcpStream::connect(addr).unwrap();
            early
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            early
        })
        .collect();
    until(
        "the connections accepted, waiting for their first byte",
        || accept_queues(addr.port()) == Some(0),
    )
    .await;

    let drained = tokio::spawn(listener.shutdown());
    let answers = tokio::task::spawn_blocking(move || {
        for mut early in &early {
            early
                .write_all(b"GET /held HTTP/1.1\r\nhost: prod\r\n\r\n")
                .unwrap();
        }
        early
            .into_iter()
            .map(|mut early| {
                let mut answer = Vec::new();
                let read = early.read_to_end(&mut answer);
                format!("{read:?} {}", String::from_utf8_lossy(&answer))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for answer in answers {
        assert!(
            answer.starts_with("Ok(") && answer.contains("HTTP/1.1 200"),
            "{answer:.200}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer:.300}"
        );
    }
    drained.await.unwrap();
}

/// How many connections wait to be accepted on the listening sockets of
/// `port` (the kernel shows the accept queue of a listening socket as its
/// `rx_queue` in /proc/net/tcp); none when no socket listens there.
fn accept_queues(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{port:04X}");
    let waiting: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(3) == Some(&"0A");
            let here = fields.get(1).is_some_and(|a| a.ends_with(&local));
            let queue = fields.get(4)?.split_once(':')?.1;
            (listening && here).then(|| u64::from_str_radix(queue, 16).ok())?
        })
        .collect();
    (!waiting.is_empty()).then(|| waiting.iter().sum())
}
