//! The proxy over real sockets: backends on loopback, requests through it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use sluice_proxy::{Backend, Listener, Route};

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
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), route.clone(), "test")
        .await
        .unwrap();
    let url = format!("http://{}", listener.addr);
    std::mem::forget(listener);
    url
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
