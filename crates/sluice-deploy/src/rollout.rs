//! Plain deployments by strategy: rolling (a new instance healthy before an
//! old one drains) or blue-green (the new group healthy, then the route
//! switched at once), so that no request fails; and going back to the
//! previous release by itself when the new one does not become healthy in
//! time. The caller holds the environment's turn (see `deploy`).

use sluice_store::DeploymentStrategy;
use std::sync::Arc;

use anyhow::Result;
use sluice_proxy::Route;
use sluice_spec::{Environment, Spec, Strategy};
use sluice_store::{DeploymentCause, DeploymentStatus, NewDeployment, Release};

use crate::instances::{
    admit, drain_then_stop, prepare, ready_timeout, retire, start_instance, stop_deployment,
    stop_instance, top_up, wait_healthy,
};
use crate::release::release_env;
use crate::{Inner, Live, Outcome};

/// Deploys `release` to `env` by its rolling or blue-green strategy (an
/// `ab` environment without an experiment rolls), recording the deployment;
/// `give_way`: a newer release asked for meanwhile supersedes it.
pub(crate) async fn deploy(
    inner: &Arc<Inner>,
    release: &Release,
    env: &str,
    cause: DeploymentCause,
    actor: &str,
    give_way: bool,
) -> Result<(i64, Outcome)> {
    let (spec, environment) = release_env(release, env)?;
    inner.store.ensure_env(&release.service, env).await?;
    let state = inner.store.env_state(&release.service, env).await?;
    let previous = state.as_ref().and_then(|s| s.release_id);
    let strategy = match environment.strategy {
        Strategy::BlueGreen => DeploymentStrategy::BlueGreen,
        Strategy::Rolling | Strategy::Ab(_) => DeploymentStrategy::Rolling,
    };
    let id = inner
        .store
        .insert_deployment(NewDeployment {
            service: &release.service,
            env,
            release,
            previous,
            strategy,
            cause,
            actor,
        })
        .await?;
    let result = async {
        prepare(inner, release, &spec, &environment, state.as_ref(), id).await?;
        let route = inner.route(&release.service, &environment).await?;
        match environment.strategy {
            Strategy::BlueGreen => {
                blue_green(inner, release, &spec, &environment, &route, id, give_way).await
            }
            Strategy::Rolling | Strategy::Ab(_) => {
                rolling(inner, release, &spec, &environment, &route, id, give_way).await
            }
        }
    }
    .await;
    let outcome = match result {
        Ok(()) => {
            inner
                .store
                .set_env_release(&release.service, env, release, actor, "env.release")
                .await?;
            inner
                .store
                .finish_deployment(id, DeploymentStatus::Succeeded, None)
                .await?;
            Outcome::Succeeded
        }
        Err(e) => {
            let why = format!("{e:#}");
            tracing::warn!(service = %release.service, env, release = %release.name(), %why, "deployment failed");
            match previous {
                Some(previous_id) => {
                    let previous = inner.store.release_by_id(previous_id).await?;
                    let restored = restore(inner, &previous, env, id).await;
                    let reason = match &restored {
                        Ok(()) => format!("{why}; back on {}", previous.name()),
                        Err(e) => {
                            format!("{why}; going back to {} failed too: {e:#}", previous.name())
                        }
                    };
                    inner
                        .store
                        .finish_deployment(id, DeploymentStatus::RolledBack, Some(&reason))
                        .await?;
                    Outcome::RolledBack(reason)
                }
                None => {
                    stop_deployment(inner, &release.service, env, id).await;
                    inner
                        .store
                        .finish_deployment(id, DeploymentStatus::Failed, Some(&why))
                        .await?;
                    Outcome::Failed(why)
                }
            }
        }
    };
    Ok((id, outcome))
}

/// One instance at a time: a new one healthy, then an old one drained and
/// stopped. Every instance running before is replaced, even one of the
/// same release (a redeploy), since instances belong to the deployment
/// that started them.
async fn rolling(
    inner: &Arc<Inner>,
    release: &Release,
    spec: &Spec,
    env: &Environment,
    route: &Route,
    deployment: i64,
    give_way: bool,
) -> Result<()> {
    let mut old: Vec<Live> = inner
        .live_in(&release.service, &env.name)
        .into_iter()
        .filter(|l| l.deployment != deployment)
        .collect();
    // A drained instance takes no requests, so it stops while the next one
    // starts; every stop is awaited before the deployment ends, failed or not.
    let mut stopping = Vec::new();
    let started = async {
        for _ in 0..env.instances {
            let new = start_instance(inner, release, spec, env, deployment, None).await?;
            wait_healthy(inner, &new.backend, ready_timeout(spec), give_way).await?;
            admit(inner, route, &new).await;
            if let Some(retired) = old.pop() {
                stopping.push(drain_then_stop(inner, route, retired).await);
            }
        }
        for retired in old.drain(..) {
            stopping.push(drain_then_stop(inner, route, retired).await);
        }
        anyhow::Ok(())
    }
    .await;
    for stop in stopping {
        let _ = stop.await;
    }
    started
}

/// A whole new group healthy, then the route switches at once.
async fn blue_green(
    inner: &Arc<Inner>,
    release: &Release,
    spec: &Spec,
    env: &Environment,
    route: &Route,
    deployment: i64,
    give_way: bool,
) -> Result<()> {
    let old: Vec<Live> = inner.live_in(&release.service, &env.name);
    let mut green = Vec::new();
    for _ in 0..env.instances {
        green.push(start_instance(inner, release, spec, env, deployment, None).await?);
    }
    for new in &green {
        if let Err(e) = wait_healthy(inner, &new.backend, ready_timeout(spec), give_way).await {
            for new in &green {
                stop_instance(inner, route, new).await;
            }
            return Err(e);
        }
    }
    futures::future::join_all(green.iter().map(|new| admit(inner, route, new))).await;
    futures::future::join_all(old.iter().map(|l| retire(inner, route, l))).await;
    Ok(())
}

/// Brings an environment back to `release` after deployment `failed`:
/// tops what runs outside that deployment up to the instance count with
/// `release`, then stops the failed deployment's own instances.
async fn restore(inner: &Arc<Inner>, release: &Release, env: &str, failed: i64) -> Result<()> {
    let (spec, environment) = release_env(release, env)?;
    let route = inner.route(&release.service, &environment).await?;
    let current: Vec<Live> = inner.live_in(&release.service, env);
    let (theirs, kept): (Vec<Live>, Vec<Live>) =
        current.into_iter().partition(|l| l.deployment == failed);
    top_up(
        inner,
        release,
        &spec,
        &environment,
        &route,
        kept.len(),
        failed,
    )
    .await?;
    for other in &theirs {
        retire(inner, &route, other).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Deployments against the fake runtime: no processes, the real store,
    //! the real entry points.

    use sluice_store::{DeploymentStatus, IncidentStatus};

    use crate::testing::Harness;

    fn spec(command: &str, strategy: &str) -> String {
        let dev = format!(
            "  dev:\n    deploy: auto\n    instances: 2\n    listen: 127.0.0.1:0\n    strategy: {strategy}\n"
        );
        crate::testing::spec(command, &dev)
    }

    async fn deployments(world: &Harness) -> Vec<sluice_store::Deployment> {
        world
            .store()
            .deployments(Some("shop"), Some("dev"), None, 100)
            .await
            .unwrap()
    }

    /// Deploys `spec` as the next release and waits for its deployment to end.
    async fn deploy(world: &Harness, spec: &str) -> sluice_store::Deployment {
        let release = world.release(spec).await;
        crate::aftermath::ask_for_automatic(&world.cd.inner, &release, None).await;
        world
            .until("the deployment to end", || async {
                deployments(world)
                    .await
                    .into_iter()
                    .find(|d| d.release == release.number && d.status != DeploymentStatus::Running)
            })
            .await
    }

    #[tokio::test]
    async fn a_rolling_deployment_replaces_every_instance() {
        let world = Harness::new().await;
        let first = deploy(&world, &spec("serve", "rolling")).await;
        assert_eq!(first.status, DeploymentStatus::Succeeded);
        assert_eq!(world.answer("dev").await, "v1");
        let second = deploy(&world, &spec("serve", "rolling")).await;
        assert_eq!(second.status, DeploymentStatus::Succeeded);
        assert_eq!(second.strategy, sluice_store::DeploymentStrategy::Rolling);
        assert_eq!(world.answer("dev").await, "v2");
        let status = world.status("dev").await;
        assert_eq!(status.release, Some(2));
        assert_eq!(status.instances.len(), 2);
        assert!(status.instances.iter().all(|i| i.release == 2));
        assert_eq!(world.runtime.running().len(), 2, "v1's instances stopped");
    }

    #[tokio::test]
    async fn a_new_instance_that_never_becomes_healthy_goes_back_with_an_incident() {
        let world = Harness::new().await;
        deploy(&world, &spec("serve", "rolling")).await;
        let failed = deploy(&world, &spec("hang", "rolling")).await;
        assert_eq!(failed.status, DeploymentStatus::RolledBack);
        let reason = failed.reason.unwrap_or_default();
        assert!(reason.contains("back on v1"), "{reason}");
        assert_eq!(world.answer("dev").await, "v1", "v1 still serves");
        let status = world.status("dev").await;
        assert_eq!(status.release, Some(1));
        assert!(status.instances.iter().all(|i| i.release == 1));
        assert_eq!(world.runtime.running().len(), 2, "v2's instance stopped");
        // What follows a failed automatic deployment: an incident.
        let incident = world.incident().await;
        assert_eq!(incident.status, IncidentStatus::Open);
        assert!(incident.title.contains("v2"), "{}", incident.title);
    }

    #[tokio::test]
    async fn an_instance_that_stays_unhealthy_opens_an_incident() {
        let world = Harness::new().await;
        let quick = spec("serve", "rolling")
            .replace("unhealthy: 2 }", "unhealthy: 2, incident_after: 300ms }");
        deploy(&world, &quick).await;
        world.runtime.sicken();
        let incident = world.incident().await;
        assert_eq!(incident.trigger_kind, sluice_store::IncidentTrigger::Health);
        assert_eq!(incident.title, "shop is unhealthy in dev");
    }

    #[tokio::test]
    async fn an_instance_that_keeps_exiting_fails_its_deployment_at_once() {
        let world = Harness::new().await;
        let failed = deploy(&world, &spec("crash", "rolling")).await;
        assert_eq!(failed.status, DeploymentStatus::Failed);
        let reason = failed.reason.unwrap_or_default();
        assert!(reason.contains("exited 3 times"), "{reason}");
        assert!(world.runtime.running().is_empty());
    }

    #[tokio::test]
    async fn a_blue_green_deployment_switches_the_whole_group() {
        let world = Harness::new().await;
        deploy(&world, &spec("serve", "blue-green")).await;
        let old = world.runtime.running();
        let switched = deploy(&world, &spec("serve", "blue-green")).await;
        assert_eq!(switched.status, DeploymentStatus::Succeeded);
        assert_eq!(
            switched.strategy,
            sluice_store::DeploymentStrategy::BlueGreen
        );
        assert_eq!(world.answer("dev").await, "v2");
        let new = world.runtime.running();
        assert_eq!(new.len(), 2);
        assert!(new.iter().all(|id| !old.contains(id)), "{old:?} {new:?}");
    }

    #[tokio::test]
    async fn an_environment_moves_to_a_host_without_its_data_only_when_it_kept_none() {
        let world = Harness::new().await;
        deploy(&world, &spec("serve", "rolling")).await;
        let data = world.cd.inner.layout.data("shop", "dev").unwrap();
        // The controllers move to a server on another host, without the
        // data directory: dev never wrote to it, so it starts there empty.
        std::fs::remove_dir_all(&data).unwrap();
        let moved = deploy(&world, &spec("serve", "rolling")).await;
        assert_eq!(moved.status, DeploymentStatus::Succeeded, "{moved:?}");
        assert!(data.is_dir());
        // Once it was seen holding something, it does not start from nothing.
        std::fs::write(data.join("orders.db"), "orders").unwrap();
        world.store().mark_data_in_use("shop", "dev").await.unwrap();
        std::fs::remove_dir_all(&data).unwrap();
        let refused = deploy(&world, &spec("serve", "rolling")).await;
        assert_ne!(refused.status, DeploymentStatus::Succeeded);
        let reason = refused.reason.unwrap_or_default();
        assert!(
            reason.contains("dev's data is not on this host"),
            "{reason}"
        );
        assert!(!data.exists(), "no empty directory stands in for the data");
        let incident = world.incident().await;
        assert!(incident.title.contains("dev"), "{incident:?}");
    }
}
