//! Bytes from an anonymous client to an environment's entry point: the
//! proxy (hyper's framing and every layer) answers or closes, never panics,
//! and a client's garbage never ejects the instance behind it.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice_proxy::{Backend, Listener, Route, Telemetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Proxy {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    backend: Arc<Backend>,
}

/// An instance on loopback that answers every request `200 ok` (hyper, so
/// that it speaks HTTP correctly and any failure is the proxy's).
async fn instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

static PROXY: LazyLock<Proxy> = LazyLock::new(|| {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (addr, backend) = runtime.block_on(async {
        let route = Route::default();
        let backend = Backend::new("fuzz.dev-v1-1", instance().await, "v1");
        backend.set_healthy(true);
        route.add(backend.clone());
        let listener = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            route,
            "fuzz",
            Telemetry::detached("fuzz"),
        )
        .await
        .unwrap();
        let addr = listener.addr;
        std::mem::forget(listener);
        (addr, backend)
    });
    Proxy { runtime, addr, backend }
});

fuzz_target!(|bytes: &[u8]| {
    let proxy = &*PROXY;
    proxy.runtime.block_on(async {
        let Ok(mut stream) = TcpStream::connect(proxy.addr).await else { return };
        let _ = stream.write_all(bytes).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    });
    assert!(!proxy.backend.is_ejected(), "a client's bytes ejected the instance");
});
