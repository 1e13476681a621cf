//! A listener replaced by another on the same address (new limits, new
//! certificates) under continuous load: every new connection is taken and
//! every request under way answered, with none failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_proxy::{Limits, Listener, Route, Telemetry};

use crate::{backend, healthy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_replaced_under_load_refuses_nothing() {
    let route = Route::default();
    route.add(healthy("prod-1", backend("one").await, "v1"));
    let telemetry = Telemetry::detached("prod");
    let mut listener = Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        route.clone(),
        "prod",
        telemetry.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/", listener.addr);
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut load = Vec::new();
    for keep_alive in [false, false, false, false, true, true, true, true] {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        load.push(tokio::spawn(async move {
            // Half open a connection per request, half keep theirs.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(if keep_alive { 1 } else { 0 })
                .build()
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                match client.get(&url).send().await {
                    Ok(answer) if answer.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    Ok(answer) => panic!("answered {}", answer.status()),
                    Err(e) => {
                        eprintln!("failed: keep_alive={keep_alive} {e:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    let served = |n: usize| {
        let ok = ok.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let start = ok.load(Ordering::SeqCst);
            while ok.load(Ordering::SeqCst) < start + n {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for round in 0..5u64 {
        served(300).await;
        let limits = Limits {
            max_body: 1000 + round,
            ..Limits::default()
        };
        let next = listener
            .replace(route.clone(), "prod", telemetry.clone(), limits, None)
            .unwrap();
        assert_eq!(next.addr, listener.addr);
        // The old one goes after the new one takes connections.
        let old = std::mem::replace(&mut listener, next);
        drop(old);
    }
    served(300).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
}
