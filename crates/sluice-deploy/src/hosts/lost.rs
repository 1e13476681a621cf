//! Lost hosts: an agent silent past its lease has its instances marked
//! lost. They leave their entry point and the server's watch at once, and
//! healing starts the environment's count again on the matching hosts that
//! are left (or opens an incident that it cannot). When the agent comes
//! back, the instances it still runs are among what it is no longer to run,
//! so it stops them: nothing runs twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_store::{Agent, InstanceState};

use crate::{Inner, Live};

/// How often agents' silences are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The agents silent past `lease` at `now` (milliseconds), to a server
/// listening since `since`: one that was down heard nobody meanwhile, and
/// gives every agent a lease from its start to be heard again.
fn silent(agents: &[Agent], now: i64, since: i64, lease: Duration) -> Vec<&str> {
    let lease = lease.as_millis() as i64;
    agents
        .iter()
        .filter(|a| now - a.seen_at.max(since) > lease)
        .map(|a| a.name.as_str())
        .collect()
}

/// Looks for lost hosts until the server stops.
pub(crate) async fn watch(inner: Arc<Inner>) {
    let since = sluice_store::now_ms();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = inner.shutdown.cancelled() => return,
        }
        if let Err(e) = look(&inner, since).await {
            tracing::warn!(error = %format!("{e:#}"), "could not look for lost hosts");
        }
    }
}

async fn look(inner: &Arc<Inner>, since: i64) -> anyhow::Result<()> {
    let agents = inner.store.agents().await?;
    let silent = silent(&agents, sluice_store::now_ms(), since, inner.hosts.lease);
    if silent.is_empty() {
        return Ok(());
    }
    let mut lost: BTreeMap<(String, String, String), Vec<Live>> = BTreeMap::new();
    for instance in inner.store.live_instances(None, None).await? {
        let Some(agent) = instance.agent.filter(|a| silent.contains(&a.as_str())) else {
            continue;
        };
        let live = inner.live.lock().unwrap().get(&instance.id).cloned();
        if let Some(live) = live {
            lost.entry((agent, instance.service, instance.environment))
                .or_default()
                .push(live);
        }
    }
    for ((agent, service, env), instances) in lost {
        lose(inner, &agent, &service, &env, &instances).await?;
    }
    Ok(())
}

/// Takes the instances of a silent agent out of their entry point and the
/// server's watch, and says so.
async fn lose(
    inner: &Arc<Inner>,
    agent: &str,
    service: &str,
    env: &str,
    instances: &[Live],
) -> anyhow::Result<()> {
    let route = inner
        .entries
        .lock()
        .unwrap()
        .get(&(service.to_string(), env.to_string()))
        .map(|e| e.route.clone());
    let mut ids = Vec::new();
    for live in instances {
        let id = &live.backend.id;
        if let Some(route) = &route {
            route.remove(id);
        }
        live.checks.cancel();
        inner.live.lock().unwrap().remove(id);
        inner.hosts.forget(id).await;
        inner
            .store
            .set_instance_state(id, InstanceState::Stopped)
            .await?;
        ids.push(id.clone());
    }
    let lease = sluice_spec::format_duration(inner.hosts.lease);
    let summary = format!(
        "agent `{agent}` was silent past its lease ({lease}): {} of {service} in {env} lost ({}); started again on the matching hosts left, if any",
        ids.len(),
        ids.join(", ")
    );
    tracing::warn!(%agent, %service, %env, lost = ?ids, "instances lost with their host");
    inner
        .store
        .append_change(sluice_store::NewChangeEvent {
            actor: "sluice".into(),
            kind: "instances.lost".into(),
            service: Some(service.to_string()),
            environment: Some(env.to_string()),
            subject: format!("agent {agent}"),
            summary,
            before: None,
            after: None,
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, seen_at: i64) -> Agent {
        Agent {
            id: 1,
            name: name.into(),
            token_id: String::new(),
            labels_json: "{}".into(),
            cores: 1,
            memory_mb: 1,
            version: String::new(),
            registered_at: 0,
            seen_at,
            address: String::new(),
            jobs: 1,
        }
    }

    #[test]
    fn an_agent_is_silent_once_its_lease_has_passed() {
        let agents = [
            agent("heard", 9_000),
            agent("at-the-edge", 7_000),
            agent("gone", 6_999),
        ];
        assert_eq!(silent(&agents, 10_000, 0, Duration::from_secs(3)), ["gone"]);
    }

    #[test]
    fn a_server_that_was_down_gives_every_agent_a_lease_from_its_start() {
        // Heard last at 1 s; the server was down from then until 60 s.
        let agents = [agent("waited-for", 1_000)];
        let lease = Duration::from_secs(3);
        assert!(silent(&agents, 62_000, 60_000, lease).is_empty());
        assert_eq!(silent(&agents, 63_001, 60_000, lease), ["waited-for"]);
    }
}
