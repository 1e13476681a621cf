//! Healing: an environment that runs fewer instances than it declares, with
//! no deployment or experiment under way, is brought back to its release by
//! itself, as a deployment (cause `heal`) with an incident.

use sluice_store::DeploymentCause;
use sluice_store::DeploymentStatus;
use sluice_store::DeploymentStrategy;
use sluice_store::IncidentTrigger;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_store::{EnvState, NewDeployment};

use crate::Inner;
use crate::instances::top_up;
use crate::release::release_env;

/// How many instances to start: what is declared and does not run.
fn shortfall(declared: u32, running: usize) -> usize {
    (declared as usize).saturating_sub(running)
}

/// How long to leave an environment alone after its `failures`-th failed
/// healing in a row: an environment that cannot start is not retried in a loop.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(5)
        .saturating_mul(1 << failures.saturating_sub(1).min(6))
        .min(Duration::from_secs(300))
}

/// Looks at every environment now and then until the server stops.
pub(crate) async fn keep(inner: Arc<Inner>) {
    let mut failed: HashMap<(String, String), (u32, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.config.heal_interval) => {}
            _ = inner.shutdown.cancelled() => return,
        }
        let Ok(states) = inner.store.env_states(None).await else {
            continue;
        };
        for state in states {
            let key = (state.service.clone(), state.name.clone());
            if failed
                .get(&key)
                .is_some_and(|(_, until)| Instant::now() < *until)
            {
                continue;
            }
            match heal(&inner, &state).await {
                Ok(()) => {
                    failed.remove(&key);
                }
                Err(e) => {
                    let failures = failed.get(&key).map_or(0, |(n, _)| *n) + 1;
                    failed.insert(key, (failures, Instant::now() + backoff(failures)));
                    tracing::warn!(service = %state.service, env = %state.name, error = %format!("{e:#}"), "could not heal the environment");
                }
            }
        }
    }
}

async fn heal(inner: &Arc<Inner>, state: &EnvState) -> anyhow::Result<()> {
    let Some(release_id) = state.release_id else {
        return Ok(());
    };
    // A deployment or an experiment holds the lock for as long as it runs.
    let lock = inner.env_lock(&state.service, &state.name);
    let Ok(_alone) = lock.try_lock() else {
        return Ok(());
    };
    let release = inner.store.release_by_id(release_id).await?;
    let (spec, env) = release_env(&release, &state.name)?;
    let running = inner.live_in(&state.service, &state.name).len();
    let missing = shortfall(env.instances, running);
    if missing == 0 || inner.shutdown.is_cancelled() {
        return Ok(());
    }
    let id = inner
        .store
        .insert_deployment(NewDeployment {
            service: &state.service,
            env: &state.name,
            release: &release,
            previous: Some(release.id),
            strategy: DeploymentStrategy::Rolling,
            cause: DeploymentCause::Heal,
            actor: "sluice",
        })
        .await?;
    let why = format!(
        "{running} of {} instances of {} ran with no deployment under way",
        env.instances,
        release.name()
    );
    tracing::warn!(service = %state.service, env = %state.name, %why, "healing");
    let route = inner.route(&state.service, &env).await?;
    let result = top_up(inner, &release, &spec, &env, &route, running, id).await;
    let (status, reason) = match &result {
        Ok(()) => (
            DeploymentStatus::Succeeded,
            format!("healed: {why}; started {missing}"),
        ),
        Err(e) => (
            DeploymentStatus::Failed,
            format!("could not heal: {why}; {e:#}"),
        ),
    };
    inner
        .store
        .finish_deployment(id, status, Some(&reason))
        .await?;
    let title = format!(
        "{} ran fewer instances than declared in {}",
        state.service, state.name
    );
    inner.raise(crate::Alarm {
        service: state.service.clone(),
        env: state.name.clone(),
        trigger: IncidentTrigger::Heal,
        title,
        detail: reason,
    });
    result
}

#[cfg(test)]
mod tests {
    use super::shortfall;

    #[test]
    fn failed_healing_waits_longer_each_time_up_to_five_minutes() {
        assert_eq!(super::backoff(1).as_secs(), 5);
        assert_eq!(super::backoff(2).as_secs(), 10);
        assert_eq!(super::backoff(30).as_secs(), 300);
    }

    #[test]
    fn only_missing_instances_are_started() {
        for (declared, running, missing) in [(2, 0, 2), (2, 1, 1), (2, 2, 0), (2, 3, 0), (0, 0, 0)]
        {
            assert_eq!(
                shortfall(declared, running),
                missing,
                "{declared} declared, {running} running"
            );
        }
    }
}
