//! Health checks: each instance's HTTP check (or a TCP connect when the
//! service declares none) plus the checks that rules add, with thresholds,
//! driving whether the proxy may send it requests; a check that keeps
//! failing raises an alarm (an incident).

use sluice_store::InstanceState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proxy::Backend;
use sluice_spec::{HealthCheck, Rule};
use sluice_store::{NewChangeEvent, Store};
use tokio_util::sync::CancellationToken;

/// Why a probe failed: the words, and the rule whose check it was, if any.
#[derive(Clone, Debug)]
pub struct Failure {
    pub rule: Option<String>,
    pub message: String,
}

impl Failure {
    fn of(message: String) -> Failure {
        Failure {
            rule: None,
            message,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Called once per unhealthy stretch that lasts `after`, with why.
#[derive(Clone)]
pub struct Alarm {
    pub after: Duration,
    pub fire: Arc<dyn Fn(String) + Send + Sync>,
}

/// Everything one instance's checks need.
pub struct Watch {
    pub store: Store,
    pub service: String,
    pub env: String,
    pub backend: Arc<Backend>,
    pub check: Option<HealthCheck>,
    /// `health_check` rules that apply to this instance.
    pub rules: Vec<Rule>,
    /// Why the last probe failed, for whoever waits on the instance.
    pub last_failure: Arc<Mutex<Option<Failure>>>,
    pub alarm: Option<Alarm>,
    pub stop: CancellationToken,
}

/// Checks the instance until `stop`; flips it healthy after `healthy` passes
/// in a row and unhealthy after `unhealthy` failures, recording each flip.
pub fn watch(watch: Watch) {
    let check = watch
        .check
        .clone()
        .unwrap_or_else(HealthCheck::connect_only);
    let client = reqwest::Client::builder()
        .timeout(check.timeout)
        .pool_max_idle_per_host(1)
        .build()
        .unwrap_or_default();
    tokio::spawn(async move {
        let backend = watch.backend.clone();
        let (mut passes, mut failures) = (0u32, 0u32);
        let mut served = false;
        let mut unhealthy_since: Option<Instant> = None;
        // Until it first turns healthy, check often: a deployment waits on it.
        let mut interval = Duration::from_millis(50).min(check.interval);
        loop {
            let result = probe(&client, &backend, &check, &watch.rules).await;
            *watch.last_failure.lock().unwrap() = result.clone().err();
            if result.is_ok() {
                passes += 1;
                failures = 0;
            } else {
                failures += 1;
                passes = 0;
            }
            let flip = match &result {
                Ok(()) if !backend.is_healthy() && passes >= check.healthy => Some(true),
                Err(_) if backend.is_healthy() && failures >= check.unhealthy => Some(false),
                _ => None,
            };
            if let Some(healthy) = flip {
                backend.set_healthy(healthy);
                interval = check.interval;
                let state = if healthy {
                    InstanceState::Healthy
                } else {
                    InstanceState::Unhealthy
                };
                tracing::info!(instance = %backend.id, %state, "health changed");
                let _ = watch.store.set_instance_state(&backend.id, state).await;
                // Starting up is not news; losing health after serving is, and so is getting it back.
                if served {
                    record_flip(&watch, healthy, result.as_ref().err()).await;
                }
                served |= healthy;
                unhealthy_since = (!healthy).then(Instant::now);
            }
            if let (Some(since), Some(alarm), Err(why)) = (unhealthy_since, &watch.alarm, &result)
                && since.elapsed() >= alarm.after
            {
                (alarm.fire)(why.message.clone());
                unhealthy_since = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = watch.stop.cancelled() => return,
            }
        }
    });
}

async fn record_flip(watch: &Watch, healthy: bool, why: Option<&Failure>) {
    let id = &watch.backend.id;
    let summary = match why {
        Some(why) => format!("instance {id} turned unhealthy: {why}"),
        None => format!("instance {id} is healthy again"),
    };
    let event = NewChangeEvent {
        actor: "sluice".into(),
        kind: if healthy {
            "health.recovered"
        } else {
            "health.failed"
        }
        .into(),
        service: Some(watch.service.clone()),
        environment: Some(watch.env.clone()),
        subject: id.clone(),
        summary,
        before: None,
        after: None,
    };
    let _ = watch.store.append_change(event).await;
}

/// One look at an instance: its own check, then each rule's; the first failure says why.
pub(crate) async fn probe(
    client: &reqwest::Client,
    backend: &Backend,
    check: &HealthCheck,
    rules: &[Rule],
) -> Result<(), Failure> {
    if check.path.is_empty() {
        let connected =
            tokio::time::timeout(check.timeout, tokio::net::TcpStream::connect(backend.addr)).await;
        match connected {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Failure::of(format!("could not connect: {e}"))),
            Err(_) => return Err(Failure::of("connecting timed out".into())),
        }
    } else {
        let url = format!("http://{}{}", backend.addr, check.path);
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                return Err(Failure::of(format!(
                    "GET {} answered {}",
                    check.path,
                    r.status()
                )));
            }
            Err(e) => return Err(Failure::of(format!("GET {} failed: {e}", check.path))),
        }
    }
    for rule in rules {
        if let Some(extra) = rule.spec.extra_check() {
            rule_probe(client, backend, &extra)
                .await
                .map_err(|why| Failure {
                    rule: Some(rule.id.clone()),
                    message: rule.blocks(&why),
                })?;
        }
    }
    Ok(())
}

/// A rule's check: status, body and latency as the rule demands.
pub(crate) async fn rule_probe(
    client: &reqwest::Client,
    backend: &Backend,
    check: &sluice_spec::ExtraCheck,
) -> Result<(), String> {
    let url = format!("http://{}{}", backend.addr, check.path);
    let began = Instant::now();
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {} failed: {e}", check.path))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let took = began.elapsed();
    if status != check.status {
        return Err(format!(
            "GET {} answered {status}, expected {}",
            check.path, check.status
        ));
    }
    if let Some(needle) = &check.body_contains
        && !body.contains(needle.as_str())
    {
        return Err(format!(
            "GET {}'s body does not contain `{needle}`",
            check.path
        ));
    }
    if let Some(limit) = check.max_latency
        && took > limit
    {
        return Err(format!(
            "GET {} took {} ms, more than {}",
            check.path,
            took.as_millis(),
            sluice_spec::format_duration(limit)
        ));
    }
    Ok(())
}
