//! Health checks: each instance's HTTP check (or a TCP connect when the
//! service declares none), with thresholds, driving whether the proxy may
//! send it requests.

use std::sync::Arc;
use std::time::Duration;

use sluice_proxy::Backend;
use sluice_spec::HealthCheck;
use sluice_store::Store;
use tokio_util::sync::CancellationToken;

/// Checks `backend` until `stop`; flips it healthy after `healthy` passes in
/// a row and unhealthy after `unhealthy` failures, recording each flip.
pub fn watch(
    store: Store,
    backend: Arc<Backend>,
    check: Option<HealthCheck>,
    stop: CancellationToken,
) {
    let check = check.unwrap_or(HealthCheck {
        path: String::new(),
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(500),
        healthy: 1,
        unhealthy: 3,
    });
    let client = reqwest::Client::builder()
        .timeout(check.timeout)
        .pool_max_idle_per_host(1)
        .build()
        .unwrap_or_default();
    tokio::spawn(async move {
        let (mut passes, mut failures) = (0u32, 0u32);
        // Until it first turns healthy, check often: a deployment waits on it.
        let mut interval = Duration::from_millis(50).min(check.interval);
        loop {
            let ok = probe(&client, &backend, &check).await;
            if ok {
                passes += 1;
                failures = 0;
            } else {
                failures += 1;
                passes = 0;
            }
            let flip = if ok && !backend.is_healthy() && passes >= check.healthy {
                Some(true)
            } else if !ok && backend.is_healthy() && failures >= check.unhealthy {
                Some(false)
            } else {
                None
            };
            if let Some(healthy) = flip {
                backend.set_healthy(healthy);
                interval = check.interval;
                let state = if healthy { "healthy" } else { "unhealthy" };
                tracing::info!(instance = %backend.id, state, "health changed");
                let _ = store.set_instance_state(&backend.id, state).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
}

async fn probe(client: &reqwest::Client, backend: &Backend, check: &HealthCheck) -> bool {
    if check.path.is_empty() {
        return tokio::time::timeout(check.timeout, tokio::net::TcpStream::connect(backend.addr))
            .await
            .is_ok_and(|r| r.is_ok());
    }
    let url = format!("http://{}{}", backend.addr, check.path);
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}
