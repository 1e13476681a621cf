//! The proxy over real sockets: backends on loopback, requests through it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use sluice_proxy::{Backend, Listener, Metrics, Route, Split, Sticky, Telemetry, Variant};

mod handoff;
mod limits;
mod shutdown;
mod tls;

async fn backend(name: &'static str) -> SocketAddr {
    let app = Router::new()
        .route("/", get(move || async move { name }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
        .route("/echo", post(|body: axum::body::Bytes| async move { body }))
        .route(
            "/proto",
            get(|headers: axum::http::HeaderMap| async move {
                format!(
                    "{:?} {:?}",
                    headers.get("x-forwarded-proto"),
                    headers.get("forwarded")
                )
            }),
        )
        .route(
            "/headers",
            get(|headers: axum::http::HeaderMap| async move {
                format!(
                    "{:?} {:?}",
                    headers.get("x-forwarded-for"),
                    headers.get("via")
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn proxy(route: &Route) -> String {
    let listener = Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        route.clone(),
        "test",
        Telemetry::detached("test"),
    )
    .await
    .unwrap();
    let url = format!("http://{}", listener.addr);
    std::mem::forget(listener);
    url
}

/// The entry point of `prod` over `route`, recording into `telemetry`.
async fn prod_listener(route: &Route, telemetry: &Telemetry) -> Listener {
    Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        route.clone(),
        "prod",
        telemetry.clone(),
    )
    .await
    .unwrap()
}

fn healthy(id: &str, addr: SocketAddr, release: &str) -> std::sync::Arc<Backend> {
    let backend = Backend::new(id, addr, release);
    backend.set_healthy(true);
    backend
}

#[tokio::test]
async fn spreads_requests_and_names_the_instance() {
    let route = Route::default();
    route.add(healthy("dev-1", backend("one").await, "v1"));
    route.add(healthy("dev-2", backend("two").await, "v1"));
    let url = proxy(&route).await;
    let client = reqwest::Client::new();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20 {
        let response = client.get(&url).send().await.unwrap();
        let instance = response.headers()["x-sluice-instance"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(response.headers()["x-sluice-release"], "v1");
        let body = response.text().await.unwrap();
        assert_eq!(body, if instance == "dev-1" { "one" } else { "two" });
        *seen.entry(instance).or_insert(0) += 1;
    }
    assert_eq!((seen["dev-1"], seen["dev-2"]), (10, 10));
}

#[tokio::test]
async fn answers_503_without_a_healthy_instance_and_502_when_it_fails() {
    let route = Route::default();
    let url = proxy(&route).await;
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 503);
    let unhealthy = Backend::new("dev-1", backend("one").await, "v1");
    route.add(unhealthy.clone());
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        503,
        "unhealthy instances get nothing"
    );
    unhealthy.set_healthy(true);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_instance() {
    let route = Route::default();
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    route.add(healthy("gone", closed, "v1"));
    route.add(healthy("alive", backend("alive").await, "v1"));
    let url = proxy(&route).await;
    for _ in 0..10 {
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "alive");
    }
    // A request with a body never left either: it goes to the other one whole.
    let client = reqwest::Client::new();
    for i in 0..10 {
        let order = format!("order {i}");
        let response = client
            .post(format!("{url}/echo"))
            .body(order.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), order);
    }
}

/// An instance that answers one request per connection and then closes it,
/// without saying so (as one whose keep-alive timeout ran out would).
async fn one_shot_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce";
                let _ = socket.write_all(answer).await;
            });
        }
    });
    addr
}

/// An instance that keeps its connections alive and counts how many it accepted.
async fn counting_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buffer = [0u8; 1024];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_and_used_again() {
    let route = Route::default();
    let (addr, accepted) = counting_backend().await;
    route.add(healthy("dev-1", addr, "v1"));
    let url = proxy(&route).await;
    let client = reqwest::Client::new();
    for _ in 0..50 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        opened <= workers,
        "50 requests one after the other opened {opened} connections to the instance"
    );
}

#[tokio::test]
async fn connections_the_instance_closed_are_not_used_again() {
    let route = Route::default();
    route.add(healthy("dev-1", one_shot_backend().await, "v1"));
    let url = proxy(&route).await;
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "once");
        // Time for the instance's close to reach the proxy.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn streams_bodies_and_adds_forwarding_headers() {
    let route = Route::default();
    route.add(healthy("dev-1", backend("one").await, "v1"));
    let url = proxy(&route).await;
    let big = vec![b'x'; 1024 * 1024];
    let echoed = reqwest::Client::new()
        .post(format!("{url}/echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(echoed.len(), big.len());
    let headers = reqwest::get(format!("{url}/headers"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        headers.contains("127.0.0.1") && headers.contains("sluice-test"),
        "{headers}"
    );
}

#[tokio::test]
async fn draining_lets_requests_in_flight_finish() {
    let route = Route::default();
    route.add(healthy("old", backend("old").await, "v1"));
    let url = proxy(&route).await;
    let slow = tokio::spawn(reqwest::get(format!("{url}/slow")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    route.add(healthy("new", backend("new").await, "v2"));
    let drained = route.drain("old", Duration::from_secs(5)).await;
    assert!(drained);
    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slow");
    assert_eq!(
        reqwest::get(&url).await.unwrap().text().await.unwrap(),
        "new"
    );
}

fn variant_backend(
    id: &str,
    addr: SocketAddr,
    release: &str,
    variant: Variant,
) -> std::sync::Arc<Backend> {
    let backend = healthy(id, addr, release);
    backend.set_variant(variant);
    backend
}

#[tokio::test]
async fn the_split_is_sticky_by_cookie_and_keeps_users_on_b_as_it_grows() {
    let route = Route::default();
    route.add(variant_backend(
        "prod-v1-1",
        backend("a").await,
        "v1",
        Variant::A,
    ));
    route.add(variant_backend(
        "prod-v2-1",
        backend("b").await,
        "v2",
        Variant::B,
    ));
    route.set_split(Some(Split::new(25.0, Sticky::Cookie, false).unwrap()));
    let url = proxy(&route).await;
    let client = reqwest::Client::new();
    let mut users = Vec::new();
    for _ in 0..2000 {
        let response = client.get(&url).send().await.unwrap();
        let variant = response.headers()["x-sluice-variant"]
            .to_str()
            .unwrap()
            .to_string();
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert!(cookie.starts_with("sluice_key="), "{cookie}");
        let release = response.headers()["x-sluice-release"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(release, if variant == "b" { "v2" } else { "v1" });
        users.push((cookie, variant));
    }
    let on_b = users.iter().filter(|(_, v)| v == "b").count() as f64 / users.len() as f64;
    assert!(
        (on_b - 0.25).abs() < 0.04,
        "{:.1}% of new users on B at 25%",
        on_b * 100.0
    );
    route.set_split(Some(Split::new(50.0, Sticky::Cookie, false).unwrap()));
    for (cookie, before) in users.iter().take(400) {
        let response = client
            .get(&url)
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert!(
            response.headers().get("set-cookie").is_none(),
            "a known user gets no new key"
        );
        let now = response.headers()["x-sluice-variant"].to_str().unwrap();
        if before == "b" {
            assert_eq!(now, "b", "a user on B at 25% is still on B at 50%");
        }
    }
}

#[tokio::test]
async fn a_header_can_be_the_key_and_forcing_needs_permission() {
    let route = Route::default();
    route.add(variant_backend("a-1", backend("a").await, "v1", Variant::A));
    route.add(variant_backend("b-1", backend("b").await, "v2", Variant::B));
    let header = axum::http::HeaderName::from_static("x-user-id");
    route.set_split(Some(
        Split::new(50.0, Sticky::Header(header.clone()), false).unwrap(),
    ));
    let url = proxy(&route).await;
    let client = reqwest::Client::new();
    for user in ["ana", "bo", "cy", "di"] {
        let expected = Split::new(50.0, Sticky::Cookie, false)
            .unwrap()
            .variant_for(user);
        for _ in 0..3 {
            let response = client
                .get(&url)
                .header("x-user-id", user)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.headers()["x-sluice-variant"],
                expected.as_str(),
                "{user}"
            );
        }
    }
    let forced = client
        .get(&url)
        .header("x-user-id", "ana")
        .header("x-sluice-variant", "b")
        .send()
        .await
        .unwrap();
    let natural = Split::new(50.0, Sticky::Cookie, false)
        .unwrap()
        .variant_for("ana");
    assert_eq!(
        forced.headers()["x-sluice-variant"],
        natural.as_str(),
        "forcing is off"
    );
    route.set_split(Some(
        Split::new(50.0, Sticky::Header(header), true).unwrap(),
    ));
    for variant in ["a", "b"] {
        let forced = client
            .get(&url)
            .header("x-user-id", "ana")
            .header("x-sluice-variant", variant)
            .send()
            .await
            .unwrap();
        assert_eq!(forced.headers()["x-sluice-variant"], variant);
    }
}

#[tokio::test]
async fn users_of_a_variant_without_a_healthy_instance_go_to_the_other() {
    let route = Route::default();
    route.add(variant_backend("a-1", backend("a").await, "v1", Variant::A));
    let b = variant_backend("b-1", backend("b").await, "v2", Variant::B);
    b.set_healthy(false);
    route.add(b);
    route.set_split(Some(Split::new(100.0, Sticky::Cookie, false).unwrap()));
    let url = proxy(&route).await;
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-sluice-variant"], "a");
}

#[tokio::test]
async fn every_request_is_counted_windowed_and_logged() {
    let dir = std::env::temp_dir().join(format!("sluice-proxy-access-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut registry = prometheus_client::registry::Registry::default();
    let telemetry = Telemetry::new(
        "shop",
        "prod",
        Metrics::register(&mut registry),
        Some(sluice_proxy::AccessLog::new(dir.join("access.log"))),
    );
    let route = Route::default();
    route.add(variant_backend(
        "prod-v1-1",
        backend("a").await,
        "v1",
        Variant::A,
    ));
    let listener = prod_listener(&route, &telemetry).await;
    let url = format!("http://{}", listener.addr);
    for _ in 0..5 {
        assert_eq!(reqwest::get(&url).await.unwrap().text().await.unwrap(), "a");
    }
    let windows = telemetry.windows_after(0);
    let served: u64 = windows.iter().map(|w| w.a.requests).sum();
    assert_eq!(served, 5);
    assert_eq!(windows.iter().map(|w| w.b.requests).sum::<u64>(), 0);
    let by_instance: u64 = windows
        .iter()
        .flat_map(|w| &w.instances)
        .filter(|i| i.instance == "prod-v1-1" && i.variant == Variant::A)
        .map(|i| i.window.requests)
        .sum();
    assert_eq!(
        by_instance, 5,
        "each request is counted for its instance too"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains(r#"sluice_proxy_requests_total{service="shop",environment="prod",variant="a",instance="prod-v1-1",class="2xx"} 5"#), "{text}");
    assert!(
        text.contains("sluice_proxy_request_duration_seconds_bucket"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let log = std::fs::read_to_string(dir.join("access.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["instance"], "prod-v1-1");
    assert_eq!(lines[0]["release"], "v1");
    assert_eq!(lines[0]["variant"], "a");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["bytes"], 1);
    assert!(lines[0]["latency_ms"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_and_forwarded_as_http1() {
    let route = Route::default();
    route.add(healthy("dev-1", backend("one").await, "v1"));
    let url = proxy(&route).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..3 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.headers()["x-sluice-instance"], "dev-1");
        assert_eq!(response.text().await.unwrap(), "one");
    }
}

/// An instance that switches any connection asking for `Upgrade: echo` to
/// echoing the bytes it is sent, as a WebSocket server would switch.
async fn echo_upgrade_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                assert!(head.contains("upgrade: echo"), "{head}");
                assert!(head.contains("connection: upgrade"), "{head}");
                let switched = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";
                socket.write_all(switched).await.unwrap();
                let (mut reader, mut writer) = socket.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upgrade_becomes_a_tunnel_to_the_instance() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let route = Route::default();
    route.add(healthy("dev-1", echo_upgrade_backend().await, "v1"));
    let url = proxy(&route).await;
    let mut client = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    client
        .write_all(
            b"GET /socket HTTP/1.1\r\nhost: shop\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(client.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("x-sluice-instance: dev-1"), "{head}");
    for message in ["ping", "and again"] {
        client.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message.as_bytes(), "through the tunnel and back");
    }
    // An open tunnel is in flight: draining its instance waits for it.
    let drainer = tokio::spawn({
        let route = route.clone();
        async move { route.drain("dev-1", Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!drainer.is_finished(), "the tunnel is still open");
    drop(client);
    assert!(drainer.await.unwrap(), "drained once the tunnel closed");
}

#[tokio::test]
async fn idle_and_slow_clients_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let route = Route::default();
    route.add(healthy("dev-1", backend("one").await, "v1"));
    let limits = sluice_proxy::Limits {
        idle: Duration::from_millis(300),
        ..Default::default()
    };
    let listener = Listener::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        route.clone(),
        "test",
        Telemetry::detached("test"),
        limits,
    )
    .await
    .unwrap();
    let closed = |mut socket: tokio::net::TcpStream| async move {
        let mut rest = Vec::new();
        // Generous: the point is that it ends, not when.
        tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut rest))
            .await
            .is_ok()
    };
    // A connection that never sends a request.
    let idle = tokio::net::TcpStream::connect(listener.addr).await.unwrap();
    assert!(closed(idle).await, "an idle connection is closed");
    // A head sent a byte at a time, slower than the limit allows.
    let mut slow = tokio::net::TcpStream::connect(listener.addr).await.unwrap();
    for byte in b"GET / HTTP/1.1\r\n".iter().take(4) {
        // The proxy may have closed it already.
        let _ = slow.write_all(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(closed(slow).await, "a slow head is not waited for");
    // A kept-alive connection, once served, then idle.
    let mut kept = tokio::net::TcpStream::connect(listener.addr).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.ends_with(b"one") {
        let n = kept.read(&mut buffer).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    assert!(
        closed(kept).await,
        "an idle kept-alive connection is closed"
    );
    // A client that asks in time is served.
    let answer = reqwest::get(format!("http://{}/", listener.addr))
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "one");
}

/// Sends a request whose chunked body has an invalid chunk size and returns
/// the status line of the answer, if one came before the proxy closed.
async fn malformed_chunked(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().map(str::to_string)
}

#[tokio::test]
async fn a_client_s_malformed_body_is_its_own_400_and_never_ejects_an_instance() {
    let telemetry = Telemetry::detached("prod");
    let route = Route::default();
    for id in ["prod-v1-1", "prod-v1-2"] {
        route.add(variant_backend(id, backend("a").await, "v1", Variant::A));
    }
    let listener = prod_listener(&route, &telemetry).await;
    let addr = listener.addr.to_string();
    for _ in 0..100 {
        let status = malformed_chunked(&addr).await;
        assert!(
            status
                .as_deref()
                .is_none_or(|s| s.starts_with("HTTP/1.1 400")),
            "the client's own error: {status:?}"
        );
    }
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let response = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(response.status(), 200, "no instance was ejected");
    }
    let windows = telemetry.windows_after(0);
    let errors: u64 = windows.iter().map(|w| w.a.errors + w.b.errors).sum();
    assert_eq!(errors, 0, "never in the A/B error rate");
    let by_instance: u64 = windows
        .iter()
        .flat_map(|w| &w.instances)
        .map(|i| i.window.requests)
        .sum();
    assert_eq!(
        by_instance, 100,
        "only the good requests count for instances"
    );
}
