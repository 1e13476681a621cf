//! The limits an operator sets on an entry point's clients, each answered
//! with its own status (413, 408, 431) over a real socket, and none of
//! them counted against an instance or a variant.

use std::time::Duration;

use sluice_proxy::{Limits, Listener, Route, Telemetry, Variant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{backend, variant_backend};

fn limits() -> Limits {
    Limits {
        request_body: Duration::from_secs(1),
        max_body: 1024,
        max_header_bytes: 8 << 10,
        max_headers: 20,
        ..Limits::default()
    }
}

/// Writes `head` (and `body`, if any) on a fresh connection and returns the
/// status line of the answer, reading until the proxy closes or answers.
async fn status_of(addr: &str, head: &str, body: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before it has read everything.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn each_limit_has_its_status_and_counts_against_no_instance() {
    let telemetry = Telemetry::detached("prod");
    let route = Route::default();
    route.add(variant_backend(
        "prod-v1-1",
        backend("a").await,
        "v1",
        Variant::A,
    ));
    let listener = Listener::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        route.clone(),
        "prod",
        telemetry.clone(),
        limits(),
    )
    .await
    .unwrap();
    let addr = listener.addr.to_string();

    // Within every limit: answered by the instance.
    let fine = status_of(
        &addr,
        "POST /echo HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\n\r\n",
        b"hello",
    )
    .await;
    assert_eq!(fine, "HTTP/1.1 200 OK");

    // A declared body over max_body: refused before it is sent on.
    let declared = status_of(
        &addr,
        "POST /echo HTTP/1.1\r\nHost: shop\r\nContent-Length: 2000\r\n\r\n",
        &[b'x'; 2000],
    )
    .await;
    assert_eq!(declared, "HTTP/1.1 413 Payload Too Large");

    // A chunked body that grows over max_body on the way.
    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'x'; 512]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let grown = status_of(
        &addr,
        "POST /echo HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n",
        &chunked,
    )
    .await;
    assert_eq!(grown, "HTTP/1.1 413 Payload Too Large");

    // A body that stops arriving: 408 after request_timeout.
    let stalled = status_of(
        &addr,
        "POST /echo HTTP/1.1\r\nHost: shop\r\nContent-Length: 100\r\n\r\n",
        b"only ten b",
    )
    .await;
    assert_eq!(stalled, "HTTP/1.1 408 Request Timeout");

    // Too many header fields, and a head too large: 431 from hyper.
    let many: String = (0..30).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let too_many = status_of(
        &addr,
        &format!("GET / HTTP/1.1\r\nHost: shop\r\n{many}\r\n"),
        b"",
    )
    .await;
    assert_eq!(too_many, "HTTP/1.1 431 Request Header Fields Too Large");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: shop\r\nCookie: {}\r\n\r\n",
        "c".repeat(20_000)
    );
    let too_large = status_of(&addr, &huge, b"").await;
    assert_eq!(too_large, "HTTP/1.1 431 Request Header Fields Too Large");

    // None of them is the instance's: it is still in, and no window has an error.
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let answer = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "the instance was never ejected");
    }
    let windows = telemetry.windows_after(0);
    let errors: u64 = windows.iter().map(|w| w.a.errors + w.b.errors).sum();
    assert_eq!(errors, 0, "never in the A/B error rate");
    let by_instance: u64 = windows
        .iter()
        .flat_map(|w| &w.instances)
        .map(|i| i.window.errors)
        .sum();
    assert_eq!(by_instance, 0, "never an instance's error");
}

#[tokio::test]
async fn an_instance_too_slow_to_answer_gets_504_as_its_own_failure() {
    let telemetry = Telemetry::detached("prod");
    let route = Route::default();
    route.add(variant_backend(
        "prod-v1-1",
        backend("a").await,
        "v1",
        Variant::A,
    ));
    let listener = Listener::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        route,
        "prod",
        telemetry.clone(),
        Limits {
            answer: Duration::from_millis(100),
            ..limits()
        },
    )
    .await
    .unwrap();
    let answer = reqwest::get(format!("http://{}/slow", listener.addr))
        .await
        .unwrap();
    assert_eq!(answer.status(), 504);
    let windows = telemetry.windows_after(0);
    let errors: u64 = windows.iter().map(|w| w.a.errors).sum();
    assert_eq!(errors, 1, "the instance's own failure");
}
