//! Plain deployments by strategy: rolling (a new instance healthy before an
//! old one drains) or blue-green (the new group healthy, then the route
//! switched at once), so that no request fails; and going back to the
//! previous release by itself when the new one does not become healthy in
//! time. The caller holds the environment's turn (see `deploy`).

use std::sync::Arc;

use anyhow::Result;
use sluice_proxy::Route;
use sluice_spec::{Environment, Spec, Strategy};
use sluice_store::{DeploymentCause, DeploymentStatus, NewDeployment, Release};

use crate::instances::{
    drain_then_stop, prepare, ready_timeout, retire, start_instance, stop_deployment,
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
        Strategy::BlueGreen => "blue-green",
        Strategy::Rolling | Strategy::Ab(_) => "rolling",
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
            route.add(new.backend.clone());
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
    for new in &green {
        route.add(new.backend.clone());
    }
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
