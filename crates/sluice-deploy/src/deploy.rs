//! Deploying: one deployment at a time per environment, by the
//! environment's strategy (a plain rollout, or an experiment when a release
//! is promoted into an `ab` environment that runs one already), then its
//! aftermath; rolling back; and taking things up again after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use sluice_spec::{AbStrategy, Environment, Spec, Strategy};
use sluice_store::{
    Deployment, DeploymentCause, DeploymentStatus, InstanceState, Promotion, PromotionStatus,
    Release,
};

use crate::aftermath::{self, Ended};
use crate::release::release_env;
use crate::{Actor, CdError, CdResult, Inner, Outcome, experiment, instances, rollout};

/// Deploys `release` to `env` by the environment's strategy, one deployment
/// at a time per environment, then does what follows (see [`aftermath`]):
/// `promotion` is the promotion that asked for it, if one did.
pub(crate) async fn deploy(
    inner: &Arc<Inner>,
    release: &Release,
    env: &str,
    cause: DeploymentCause,
    actor: &str,
    promotion: Option<&Promotion>,
) -> Result<(i64, Outcome)> {
    // What automation asked for gives way to a newer release asked for the
    // same way; a rollback, a restart or healing does not.
    let give_way = cause.gives_way();
    if give_way {
        inner.want(&release.service, env, release.number);
    }
    let result = {
        let lock = inner.env_lock(&release.service, env);
        let _one_at_a_time = lock.lock().await;
        by_strategy(inner, release, env, cause, actor, give_way).await
    };
    if give_way {
        inner.wanted_done(&release.service, env, release.number);
    }
    let (deployment, outcome) = match &result {
        Ok((id, outcome)) => (Some(*id), outcome.clone()),
        Err(e) => (None, Outcome::Failed(format!("{e:#}"))),
    };
    let ended = Ended {
        release,
        env,
        cause,
        promotion,
        deployment,
        outcome,
    };
    aftermath::follow(inner, ended).await;
    result
}

async fn by_strategy(
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
    // A release promoted into an `ab` environment that runs one already is an experiment.
    if let Strategy::Ab(ab) = &environment.strategy
        && let Some(baseline) = state.as_ref().and_then(|s| s.release_id)
        && cause.gives_way()
    {
        return experiment::run(
            inner,
            release,
            &spec,
            &environment,
            ab,
            baseline,
            Default::default(),
            cause,
            actor,
        )
        .await;
    }
    rollout::deploy(inner, release, env, cause, actor, give_way).await
}

/// The deployments loop: deploys each promotion whose gates opened (status
/// `deploying`) once, woken when the gatekeeper opens one and now and then.
/// The promotions and the deployments meet in that row, not in a call.
pub(crate) async fn deployer(inner: Arc<Inner>) {
    loop {
        take_promotions(&inner).await;
        tokio::select! {
            _ = tokio::time::sleep(inner.config.gate_interval) => {}
            _ = inner.deployments_wanted.notified() => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

async fn take_promotions(inner: &Arc<Inner>) {
    let Ok(open) = inner.store.promotions(None, true, 1000).await else {
        return;
    };
    let experiments = inner
        .store
        .experiments(None, 1000)
        .await
        .unwrap_or_default();
    for promotion in open
        .into_iter()
        .filter(|p| p.status == PromotionStatus::Deploying)
    {
        // A promotion whose experiment runs is the experiment's to end
        // (after a restart: `resume_experiment`).
        let experimenting = experiments.iter().any(|x| {
            x.is_open()
                && x.service == promotion.service
                && x.environment == promotion.environment
                && x.release_id == promotion.release_id
        });
        if experimenting || !inner.deploying.lock().unwrap().insert(promotion.id) {
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            deploy_promotion(&inner, &promotion).await;
            inner.deploying.lock().unwrap().remove(&promotion.id);
        });
    }
}

/// Deploys what a promotion asks for; how it ends is settled by what
/// follows every deployment (see [`aftermath`]).
async fn deploy_promotion(inner: &Arc<Inner>, promotion: &Promotion) {
    let release = match inner.store.release_by_id(promotion.release_id).await {
        Ok(release) => release,
        Err(e) => {
            tracing::error!(promotion = promotion.id, error = %e, "the promotion's release cannot be read");
            return;
        }
    };
    let cause = if promotion.requested_by == "sluice" {
        DeploymentCause::Auto
    } else {
        DeploymentCause::Promotion
    };
    let _ = deploy(
        inner,
        &release,
        &promotion.environment,
        cause,
        &promotion.requested_by,
        Some(promotion),
    )
    .await;
}

/// The experiments loop: takes up every open experiment that nothing here
/// follows, once (see [`Inner::resume_experiment`]). After a restart its
/// first pass takes up what the old server left; later passes, one whose
/// task ended without ending it.
pub(crate) async fn experiments_keeper(inner: Arc<Inner>) {
    loop {
        take_experiments(&inner).await;
        tokio::select! {
            _ = tokio::time::sleep(inner.config.gate_interval) => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

async fn take_experiments(inner: &Arc<Inner>) {
    let Ok(all) = inner.store.experiments(None, 1000).await else {
        return;
    };
    for x in all.into_iter().filter(|x| x.is_open()) {
        let followed = inner.experiments.lock().unwrap().contains_key(&x.id);
        if followed || !inner.resuming.lock().unwrap().insert(x.id) {
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            inner.clone().resume_experiment(x.id).await;
            inner.resuming.lock().unwrap().remove(&x.id);
        });
    }
}

/// An experiment a person started (`sluice ab start`).
pub(crate) struct Experiment<'a> {
    pub release: &'a Release,
    pub spec: &'a Spec,
    pub environment: &'a Environment,
    pub ab: &'a AbStrategy,
    /// A's release.
    pub baseline: i64,
    /// Config values B runs with besides the environment's.
    pub overrides: BTreeMap<String, String>,
    pub actor: &'a str,
}

/// Runs an experiment a person started, in its environment's turn, then
/// does what follows it.
pub(crate) async fn experiment(inner: &Arc<Inner>, x: Experiment<'_>) {
    let env = &x.environment.name;
    let result = {
        let lock = inner.env_lock(&x.release.service, env);
        let _one_at_a_time = lock.lock().await;
        experiment::run(
            inner,
            x.release,
            x.spec,
            x.environment,
            x.ab,
            x.baseline,
            x.overrides,
            DeploymentCause::Experiment,
            x.actor,
        )
        .await
    };
    match result {
        Ok((deployment, outcome)) => {
            let ended = Ended {
                release: x.release,
                env,
                cause: DeploymentCause::Experiment,
                promotion: None,
                deployment: Some(deployment),
                outcome,
            };
            aftermath::follow(inner, ended).await
        }
        Err(e) => tracing::error!(error = %format!("{e:#}"), "the experiment could not run"),
    }
}

/// Deploys the previous release (or `to`) without gates, then pins the environment.
pub(crate) async fn rollback(
    inner: &Arc<Inner>,
    service: &str,
    env: &str,
    to: Option<i64>,
    actor: &Actor,
) -> CdResult<Deployment> {
    let state =
        inner.store.env_state(service, env).await?.ok_or_else(|| {
            CdError::NotFound(format!("{service} has no environment `{env}` yet"))
        })?;
    let current = state.release.ok_or_else(|| {
        CdError::Conflict(format!(
            "{env} runs no release; there is nothing to roll back"
        ))
    })?;
    let target = match to {
        Some(number) => inner
            .store
            .release(service, number)
            .await
            .map_err(|_| CdError::NotFound(format!("{service} has no release v{number}")))?,
        None => {
            let history = inner
                .store
                .deployments(
                    Some(service),
                    Some(env),
                    Some(DeploymentStatus::Succeeded),
                    1000,
                )
                .await?;
            let previous = history
                .iter()
                .find(|d| d.release != current)
                .ok_or_else(|| {
                    CdError::Conflict(format!(
                        "{env} has run no release before v{current}; name one with --to vN"
                    ))
                })?;
            inner.store.release_by_id(previous.release_id).await?
        }
    };
    // Rolling back to the release that runs redeploys it: fresh instances.
    let (id, outcome) = deploy(
        inner,
        &target,
        env,
        DeploymentCause::Rollback,
        &actor.name,
        None,
    )
    .await?;
    inner
        .store
        .set_pinned(
            service,
            env,
            true,
            Some(&format!(
                "rolled back to {} by {}",
                target.name(),
                actor.name
            )),
            &actor.name,
        )
        .await?;
    match outcome {
        Outcome::Succeeded => Ok(inner.store.deployment(id).await?),
        Outcome::RolledBack(why) | Outcome::Failed(why) | Outcome::Aborted(why) => Err(
            CdError::Other(anyhow!("the rollback to {} failed: {why}", target.name())),
        ),
    }
}

impl Inner {
    /// After a restart: kills the instances the old server left, ends its
    /// unfinished deployments, and starts each environment's recorded release
    /// again, so that what runs matches the store and nothing runs twice.
    pub(crate) async fn reconcile(self: &Arc<Self>) -> anyhow::Result<()> {
        let killed = self.runtime.stop_leftovers();
        if !killed.is_empty() {
            tracing::warn!(?killed, "stopped instances left by a previous server");
        }
        for instance in self.store.live_instances(None, None).await? {
            self.store
                .set_instance_state(&instance.id, InstanceState::Stopped)
                .await?;
            instances::remove_workdir(self, &instance.service, &instance.environment, &instance.id)
                .await;
        }
        // Experiments that were open go on after the environments are back
        // (see `restart_environments`): their deployments and promotions stay open.
        let open: Vec<sluice_store::Experiment> = self
            .store
            .experiments(None, 1000)
            .await?
            .into_iter()
            .filter(|x| x.is_open())
            .collect();
        for deployment in self
            .store
            .deployments(None, None, Some(DeploymentStatus::Running), 1000)
            .await?
            .into_iter()
            .filter(|d| !open.iter().any(|x| x.deployment_id == Some(d.id)))
        {
            self.store
                .finish_deployment(
                    deployment.id,
                    DeploymentStatus::Failed,
                    Some("interrupted: the server stopped during the deployment"),
                )
                .await?;
        }
        for promotion in self.store.promotions(None, true, 1000).await? {
            let experimenting = open.iter().any(|x| {
                x.service == promotion.service
                    && x.environment == promotion.environment
                    && x.release_id == promotion.release_id
            });
            if promotion.status == PromotionStatus::Deploying && !experimenting {
                self.store
                    .set_promotion_status(
                        promotion.id,
                        PromotionStatus::Pending,
                        None,
                        Some("the server restarted during its deployment"),
                        "sluice",
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Starts each environment's recorded release again (after [`Inner::reconcile`]).
    pub(crate) async fn restart_environments(self: &Arc<Self>) {
        let Ok(states) = self.store.env_states(None).await else {
            return;
        };
        for state in states {
            let Some(release_id) = state.release_id else {
                continue;
            };
            let Ok(release) = self.store.release_by_id(release_id).await else {
                continue;
            };
            match deploy(
                self,
                &release,
                &state.name,
                DeploymentCause::Reconcile,
                "sluice",
                None,
            )
            .await
            {
                Ok((_, Outcome::Succeeded)) => {
                    tracing::info!(service = %state.service, env = %state.name, release = %release.name(), "reconciled")
                }
                Ok((_, outcome)) => {
                    tracing::error!(service = %state.service, env = %state.name, ?outcome, "could not reconcile")
                }
                Err(e) => {
                    tracing::error!(service = %state.service, env = %state.name, error = %format!("{e:#}"), "could not reconcile")
                }
            }
        }
    }

    /// Takes an open experiment up again in its environment's turn, then
    /// settles what asked for it; nothing when it ended while waiting.
    async fn resume_experiment(self: Arc<Self>, id: i64) {
        let resumed = {
            let lock = self.env_lock_of_experiment(id).await;
            let Some(lock) = lock else {
                return;
            };
            let _one_at_a_time = lock.lock().await;
            // Whoever held the turn may have ended it meanwhile.
            let Ok(x) = self.store.experiment(id).await else {
                return;
            };
            if !x.is_open() || self.experiments.lock().unwrap().contains_key(&id) {
                return;
            }
            (experiment::resume(&self, &x).await, x)
        };
        let (resumed, x) = resumed;
        let outcome = match resumed {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        tracing::info!(experiment = x.id, ?outcome, "a resumed experiment ended");
        let Ok(release) = self.store.release_by_id(x.release_id).await else {
            return;
        };
        let promotion = self
            .store
            .promotions(Some(&x.service), true, 1000)
            .await
            .ok()
            .and_then(|all| {
                all.into_iter().find(|p| {
                    p.status == PromotionStatus::Deploying
                        && p.environment == x.environment
                        && p.release_id == x.release_id
                })
            });
        let cause = match &promotion {
            Some(p) if p.requested_by == "sluice" => DeploymentCause::Auto,
            Some(_) => DeploymentCause::Promotion,
            None => DeploymentCause::Experiment,
        };
        let ended = Ended {
            release: &release,
            env: &x.environment,
            cause,
            promotion: promotion.as_ref(),
            deployment: x.deployment_id,
            outcome,
        };
        aftermath::follow(&self, ended).await
    }
}
