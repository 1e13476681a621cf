//! Deploying: one deployment at a time per environment, by the
//! environment's strategy (a plain rollout, or an experiment opened when a
//! release is promoted into an `ab` environment that runs one already),
//! then its aftermath; rolling back; and taking things up again after a
//! restart. An open experiment is a row the experiments loop takes up:
//! the deployments and the experiments meet there, not in a call.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use serde_json::json;
use sluice_spec::{AbStrategy, Environment, Strategy};
use sluice_store::{
    Deployment, DeploymentCause, DeploymentStatus, DeploymentStrategy, Experiment, Instance,
    InstanceState, NewDeployment, Promotion, PromotionStatus, Release, Topic,
};
use tokio::sync::OwnedMutexGuard;

use crate::aftermath::{self, Ended};
use crate::release::release_env;
use crate::{Actor, CdError, CdResult, Inner, Outcome, instances, rollout};

/// How a deployment began: ended by itself, or an experiment opened that
/// the experiments loop takes up (and whose end it follows), or not at
/// all, its promotion superseded by a newer release's while it waited.
#[derive(Debug)]
pub(crate) enum Began {
    Ended(i64, Outcome),
    Experiment,
    Superseded(i64),
}

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
) -> Result<Began> {
    // What automation asked for gives way to a newer release asked for the
    // same way; a rollback, a restart or healing does not.
    let give_way = cause.gives_way();
    if give_way {
        inner.want(&release.service, env, release.number);
    }
    let result = match turn(inner, &release.service, env, cause).await {
        Ok(_one_at_a_time) => match superseded(inner, promotion).await {
            Some(newer) => Ok(Began::Superseded(newer)),
            None => by_strategy(inner, release, env, cause, actor, give_way).await,
        },
        Err(e) => Err(e),
    };
    if give_way {
        inner.wanted_done(&release.service, env, release.number);
    }
    let (deployment, outcome) = match &result {
        // The experiments loop follows it to its end.
        Ok(Began::Experiment) => return result,
        Ok(Began::Superseded(newer)) => {
            if let Some(p) = promotion {
                let why = format!("v{newer} went to {env} by a later promotion");
                let superseded = PromotionStatus::Superseded;
                let _ = inner
                    .store
                    .set_promotion_status(p.id, superseded, None, Some(&why), "sluice")
                    .await;
            }
            return result;
        }
        Ok(Began::Ended(id, outcome)) => (Some(*id), outcome.clone()),
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

/// The newer release a later promotion takes to the environment: it makes
/// this promotion's deployment moot once its turn comes (after a restart
/// too, when every promotion still `deploying` asks for its turn again).
async fn superseded(inner: &Arc<Inner>, promotion: Option<&Promotion>) -> Option<i64> {
    let promotion = promotion?;
    let all = inner
        .store
        .promotions(Some(&promotion.service), false, 1000)
        .await
        .ok()?;
    promotion.superseded_by(&all)
}

/// A deployment's turn in its environment: its place in the queue of the
/// environment's deployments (first come, first served), and the
/// environment's lock, which an experiment holds while it is followed.
struct Turn {
    _queue: OwnedMutexGuard<()>,
    _environment: OwnedMutexGuard<()>,
}

/// Waits for the turn: the deployments before this one, then an open
/// experiment, end first (an experiment is a deployment that lasts).
/// Bringing the recorded release back after a restart does not wait for
/// an experiment: that is A, which the experiment needs.
async fn turn(
    inner: &Arc<Inner>,
    service: &str,
    env: &str,
    cause: DeploymentCause,
) -> Result<Turn> {
    let queue = inner.env_queue(service, env).lock_owned().await;
    loop {
        let ended = inner.store.woken(Topic::ExperimentEnded);
        let environment = inner.env_lock(service, env).lock_owned().await;
        let experimenting = inner
            .store
            .open_experiments(Some(service))
            .await?
            .iter()
            .any(|x| x.environment == env);
        if cause == DeploymentCause::Reconcile || !experimenting {
            return Ok(Turn {
                _queue: queue,
                _environment: environment,
            });
        }
        drop(environment);
        tokio::select! {
            _ = ended => {}
            _ = tokio::time::sleep(inner.config.gate_interval) => {}
            _ = inner.shutdown.cancelled() => return Err(anyhow!("the server is stopping")),
        }
    }
}

async fn by_strategy(
    inner: &Arc<Inner>,
    release: &Release,
    env: &str,
    cause: DeploymentCause,
    actor: &str,
    give_way: bool,
) -> Result<Began> {
    let (_, environment) = release_env(release, env)?;
    inner.store.ensure_env(&release.service, env).await?;
    let state = inner.store.env_state(&release.service, env).await?;
    // A release promoted into an `ab` environment that runs one already is an experiment.
    if let Strategy::Ab(ab) = &environment.strategy
        && let Some(baseline) = state.as_ref().and_then(|s| s.release_id)
        && cause.gives_way()
    {
        let x = NewExperiment {
            release,
            environment: &environment,
            ab,
            baseline,
            overrides: Default::default(),
            cause,
            actor,
        };
        open_experiment(inner, x).await?;
        return Ok(Began::Experiment);
    }
    let (id, outcome) = rollout::deploy(inner, release, env, cause, actor, give_way).await?;
    Ok(Began::Ended(id, outcome))
}

/// An experiment to open: B (a release, config on top of the
/// environment's, or both) beside what the environment runs.
pub(crate) struct NewExperiment<'a> {
    pub release: &'a Release,
    pub environment: &'a Environment,
    /// The strategy it runs by (with the goals given at its start, if any).
    pub ab: &'a AbStrategy,
    /// A's release.
    pub baseline: i64,
    pub overrides: BTreeMap<String, String>,
    pub cause: DeploymentCause,
    pub actor: &'a str,
}

/// Opens an experiment: its deployment and its row, at its first step.
/// The experiments loop takes it up from there.
async fn open_experiment(inner: &Arc<Inner>, x: NewExperiment<'_>) -> Result<()> {
    let (b, env) = (x.release, x.environment);
    let baseline = inner.store.release_by_id(x.baseline).await?;
    let deployment = inner
        .store
        .insert_deployment(NewDeployment {
            service: &b.service,
            env: &env.name,
            release: b,
            previous: Some(x.baseline),
            strategy: DeploymentStrategy::Ab,
            cause: x.cause,
            actor: x.actor,
        })
        .await?;
    // Goals given at the start are kept, so that a restart takes up the same ones.
    let given: Vec<String> = match &env.strategy {
        Strategy::Ab(s) if s.goals == x.ab.goals => Vec::new(),
        _ => x.ab.goals.iter().map(|g| g.to_text()).collect(),
    };
    let first = f64::from(x.ab.ramp().steps[0]);
    inner
        .store
        .insert_experiment(
            b,
            &baseline,
            &env.name,
            (first * 100.0) as i64,
            &json!(x.overrides),
            &json!(given),
            deployment,
        )
        .await?;
    inner.store.wake(Topic::ExperimentOpened).await;
    Ok(())
}

/// The deployments loop: deploys each promotion whose gates opened (status
/// `deploying`) once, woken when the gatekeeper opens one and now and then.
/// The promotions and the deployments meet in that row, not in a call.
pub(crate) async fn deployer(inner: Arc<Inner>) {
    crate::every_pass(inner, Topic::PromotionOpened, take_promotions).await
}

/// What the deployments loop does with a promotion whose gates opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Its experiment runs, or is followed here: not ours now.
    Leave,
    Deploy,
    /// Its experiment ended and nothing settled it (the server stopped in
    /// between): settle it by how the experiment came out.
    Settle(i64),
}

/// Pure: from its experiment (the newest opened for it), with whether
/// that is followed here.
fn next(experiment: Option<(&Experiment, bool)>) -> Next {
    match experiment {
        Some((x, followed)) if x.is_open() || followed => Next::Leave,
        Some((x, _)) => Next::Settle(x.id),
        None => Next::Deploy,
    }
}

/// Claims each promotion the list shows `deploying` that no task here has,
/// and gives it a task of its own.
async fn take_promotions(inner: &Arc<Inner>) {
    let Ok(open) = inner.store.promotions(None, true, 1000).await else {
        return;
    };
    for promotion in open
        .into_iter()
        .filter(|p| p.status == PromotionStatus::Deploying)
    {
        if !inner.deploying.lock().unwrap().insert(promotion.id) {
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            take_promotion(&inner, promotion.id).await;
            inner.deploying.lock().unwrap().remove(&promotion.id);
        });
    }
}

/// A claimed promotion, read again: the list was read before the claim,
/// and a task that ended in between may have deployed and settled it
/// (deploying it again would open an experiment of the release against
/// itself). A task writes the store before it lets its claim go, so what
/// is read here, under the claim, is current.
async fn take_promotion(inner: &Arc<Inner>, id: i64) {
    let Ok(promotion) = inner.store.promotion(id).await else {
        return;
    };
    if promotion.status != PromotionStatus::Deploying {
        return;
    }
    let Ok(experiments) = inner
        .store
        .experiments(Some(&promotion.service), 1000)
        .await
    else {
        return;
    };
    // Newest first: the experiment opened for this promotion, if one was.
    let experiment = experiments.iter().find(|x| {
        x.environment == promotion.environment
            && x.release_id == promotion.release_id
            && x.created_at >= promotion.created_at
    });
    let followed = experiment.is_some_and(|x| inner.taking_up.lock().unwrap().contains(&x.id));
    match next(experiment.map(|x| (x, followed))) {
        Next::Leave => {}
        Next::Settle(x) => settle_by_experiment(inner, promotion.id, x).await,
        Next::Deploy => deploy_promotion(inner, &promotion).await,
    }
}

/// Settles a promotion still `deploying` whose experiment ended.
async fn settle_by_experiment(inner: &Arc<Inner>, promotion: i64, experiment: i64) {
    let still_deploying = inner
        .store
        .promotion(promotion)
        .await
        .is_ok_and(|p| p.status == PromotionStatus::Deploying);
    let Ok(x) = inner.store.experiment(experiment).await else {
        return;
    };
    let Some(Ok(deployment)) = (match x.deployment_id {
        Some(id) => Some(inner.store.deployment(id).await),
        None => None,
    }) else {
        return;
    };
    if still_deploying && !x.is_open() {
        aftermath::after_experiment(inner, &x, aftermath::outcome_of(&x, &deployment)).await;
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

/// Opens an experiment a person started (`sluice ab start`) in its
/// environment's turn; the experiments loop takes it up.
pub(crate) async fn experiment(inner: &Arc<Inner>, x: NewExperiment<'_>) {
    let opened = async {
        let _one_at_a_time = turn(inner, &x.release.service, &x.environment.name, x.cause).await?;
        open_experiment(inner, x).await
    };
    if let Err(e) = opened.await {
        tracing::error!(error = %format!("{e:#}"), "the experiment could not be opened");
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
    let Began::Ended(id, outcome) = deploy(
        inner,
        &target,
        env,
        DeploymentCause::Rollback,
        &actor.name,
        None,
    )
    .await?
    else {
        return Err(CdError::Other(anyhow!("a rollback opened an experiment")));
    };
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
    /// After a restart: keeps the instances the old server left that still
    /// match what the store wants (see [`Inner::keepable`]), kills the
    /// rest, and ends its unfinished deployments (each environment's
    /// recorded release then comes back, see [`Inner::restart_environments`]),
    /// so that what runs matches the store and nothing runs twice. What was
    /// asked for and not done is taken up by each loop's first pass: a
    /// promotion still `deploying` by the deployments loop, an open
    /// experiment by the experiments loop. Returns the instances kept.
    pub(crate) async fn reconcile(self: &Arc<Self>) -> anyhow::Result<Vec<Instance>> {
        let kept = self.keepable().await?;
        let groups: Vec<i32> = kept
            .iter()
            .filter(|i| i.agent.is_none())
            .filter_map(|i| i.pid)
            .map(|p| p as i32)
            .collect();
        let killed = self.runtime.stop_leftovers(&groups);
        if !killed.is_empty() {
            tracing::warn!(?killed, "stopped instances left by a previous server");
        }
        for instance in self.store.live_instances(None, None).await? {
            if kept.iter().any(|k| k.id == instance.id) {
                continue;
            }
            self.store
                .set_instance_state(&instance.id, InstanceState::Stopped)
                .await?;
            if instance.agent.is_some() {
                // Its agent stops it when it next reports.
                self.store.ask_stop(&instance.id).await?;
            }
            instances::remove_workdir(self, &instance.service, &instance.environment, &instance.id)
                .await;
        }
        // Open experiments go on once the environments are back: their
        // deployments stay open.
        let open = self.store.open_experiments(None).await?;
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
        Ok(kept)
    }

    /// Routes the instances kept through a restart behind the environment's
    /// entry point again, under the deployment that started them, and tops
    /// up to the declared count: nothing that runs is started again. On
    /// failure, every one of them is stopped, for a deployment to start the
    /// environment afresh.
    async fn resume(
        self: &Arc<Self>,
        release: &Release,
        env: &str,
        kept: &[&Instance],
        experiment: Option<(&sluice_store::Experiment, &[&Instance])>,
    ) -> Result<()> {
        let service = &release.service;
        let (spec, environment) = release_env(release, env)?;
        let deployment = self
            .store
            .deployments(
                Some(service),
                Some(env),
                Some(DeploymentStatus::Succeeded),
                1000,
            )
            .await?
            .into_iter()
            .find(|d| d.release == release.number)
            .map_or(0, |d| d.id);
        // Adopted before the entry point listens, so that its first request
        // finds them routed rather than an empty table (a 503).
        let mut adopted = Vec::new();
        let mut failure = None;
        for instance in kept {
            match instances::adopt_instance(
                self,
                release,
                &spec,
                &environment,
                instance,
                deployment,
                None,
            )
            .await
            {
                Ok(live) => adopted.push(live),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // An open experiment's B goes on too, at its split, routed with A.
        let (b_group, split) = match (&failure, experiment) {
            (None, Some((x, b_kept))) if !b_kept.is_empty() => {
                match self.adopt_b(x, b_kept).await {
                    Ok((group, split)) => (group, Some(split)),
                    Err(e) => {
                        tracing::warn!(service = %service, env, error = %format!("{e:#}"), "could not keep B's instances; the experiment starts them again");
                        self.give_up_kept(b_kept).await;
                        (Vec::new(), None)
                    }
                }
            }
            _ => (Vec::new(), None),
        };
        let routed = match failure {
            Some(e) => Err(e),
            None => {
                let backends: Vec<_> = adopted
                    .iter()
                    .chain(&b_group)
                    .map(|l| l.backend.clone())
                    .collect();
                self.route_with(service, &environment, &backends, split)
                    .await
            }
        };
        let a_kept = adopted.len();
        adopted.extend(b_group);
        let route = routed.as_ref().cloned().unwrap_or_default();
        let topped = match routed {
            Ok(_) => {
                instances::top_up(
                    self,
                    release,
                    &spec,
                    &environment,
                    &route,
                    a_kept,
                    deployment,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = topped {
            for live in &adopted {
                instances::stop_instance(self, &route, live).await;
            }
            self.give_up_kept(kept).await;
            if let Some((_, b_kept)) = experiment {
                self.give_up_kept(b_kept).await;
            }
            return Err(e);
        }
        let _ = self
            .store
            .append_change(sluice_store::NewChangeEvent {
                actor: "sluice".into(),
                kind: "instances.kept".into(),
                service: Some(service.clone()),
                environment: Some(env.to_string()),
                subject: release.name(),
                summary: kept_summary(env, release, &adopted),
                before: None,
                after: None,
            })
            .await;
        Ok(())
    }

    /// Supervises an open experiment's B instances kept through a restart
    /// again, marked as B, with the split its step gives; all or none.
    async fn adopt_b(
        self: &Arc<Self>,
        x: &sluice_store::Experiment,
        kept: &[&Instance],
    ) -> Result<(Vec<crate::Live>, sluice_proxy::Split)> {
        let plan = crate::experiment::plan::Plan::of(self, x).await?;
        let (b_env, data_dir) = (plan.b_env(), plan.data_dir(self)?);
        let mut group = Vec::new();
        for instance in kept {
            let adopted = instances::adopt_instance(
                self,
                &plan.b,
                &plan.spec,
                &b_env,
                instance,
                plan.deployment,
                data_dir.as_deref(),
            )
            .await;
            match adopted {
                Ok(live) => {
                    live.backend.set_variant(sluice_proxy::Variant::B);
                    group.push(live);
                }
                Err(e) => {
                    for live in &group {
                        instances::stop_instance(self, &sluice_proxy::Route::default(), live).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok((group, plan.split()?))
    }

    /// Stops the kept instances not (or no longer) supervised, and records
    /// them stopped.
    async fn give_up_kept(&self, kept: &[&Instance]) {
        for instance in kept {
            if instance.agent.is_some() {
                let _ = self.store.ask_stop(&instance.id).await;
            } else if let (Some(pid), Some(ticks)) = (instance.pid, instance.start_ticks) {
                crate::runtime::kill_group(pid as i32, ticks);
            }
            let _ = self
                .store
                .set_instance_state(&instance.id, InstanceState::Stopped)
                .await;
        }
    }

    /// The instances a previous server left running that this one can keep:
    /// their process is the one recorded (pid and start time) and was
    /// started by a server of this data directory (not by another server
    /// sharing the database, whose paths are not this one's), and they run
    /// their environment's recorded release (A) or, while an experiment is
    /// open there, its B (see [`kept_as`]).
    async fn keepable(&self) -> anyhow::Result<Vec<Instance>> {
        let states = self.store.env_states(None).await?;
        let open = self.open_experiments().await?;
        let mut kept = Vec::new();
        for instance in self.store.live_instances(None, None).await? {
            let wanted = states
                .iter()
                .find(|s| s.service == instance.service && s.name == instance.environment)
                .and_then(|s| s.release_id);
            let experiment = open
                .iter()
                .find(|x| x.service == instance.service && x.environment == instance.environment);
            let alive = match (&instance.agent, instance.pid, instance.start_ticks) {
                // On an agent's host: as the agent last reported it.
                (Some(_), _, _) => self
                    .store
                    .placement(&instance.id)
                    .await?
                    .is_some_and(|p| p.running == 1 && p.stop_asked == 0),
                (None, Some(pid), Some(ticks)) => self.runtime.can_adopt(pid as i32, ticks),
                _ => false,
            };
            if alive && kept_as(&instance, wanted, experiment).is_some() {
                kept.push(instance);
            }
        }
        Ok(kept)
    }

    async fn open_experiments(&self) -> anyhow::Result<Vec<sluice_store::Experiment>> {
        Ok(self.store.open_experiments(None).await?)
    }

    /// Brings each environment's recorded release back (after
    /// [`Inner::reconcile`]): with the instances `kept` running through the
    /// restart when it has any, else started again by a deployment.
    pub(crate) async fn restart_environments(self: &Arc<Self>, kept: Vec<Instance>) {
        let Ok(states) = self.store.env_states(None).await else {
            return;
        };
        let open = self.open_experiments().await.unwrap_or_default();
        for state in states {
            let Some(release_id) = state.release_id else {
                continue;
            };
            let Ok(release) = self.store.release_by_id(release_id).await else {
                continue;
            };
            let here = |i: &&Instance| i.service == state.service && i.environment == state.name;
            let open_here = open
                .iter()
                .find(|x| x.service == state.service && x.environment == state.name);
            let (mine, b): (Vec<&Instance>, Vec<&Instance>) = kept
                .iter()
                .filter(here)
                .partition(|i| kept_as(i, Some(release_id), open_here) == Some(KeptAs::A));
            let experiment = open_here.map(|x| (x, b.as_slice()));
            if mine.is_empty() {
                // B without A: the experiment starts its B again, once A is back.
                self.give_up_kept(&b).await;
            } else {
                match self.resume(&release, &state.name, &mine, experiment).await {
                    Ok(()) => {
                        tracing::info!(service = %state.service, env = %state.name, release = %release.name(), kept = mine.len(), "environment kept running through the restart");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(service = %state.service, env = %state.name, error = %format!("{e:#}"), "could not keep the environment's instances; starting it again");
                        // (Already stopped, unless resume failed before adopting any.)
                        self.give_up_kept(&mine).await;
                        self.give_up_kept(&b).await;
                    }
                }
            }
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
                Ok(Began::Ended(_, Outcome::Succeeded)) => {
                    tracing::info!(service = %state.service, env = %state.name, release = %release.name(), "reconciled")
                }
                Ok(began) => {
                    tracing::error!(service = %state.service, env = %state.name, ?began, "could not reconcile")
                }
                Err(e) => {
                    tracing::error!(service = %state.service, env = %state.name, error = %format!("{e:#}"), "could not reconcile")
                }
            }
        }
    }
}

/// What a restart may keep an instance left running as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KeptAs {
    /// Its environment's own: it runs the recorded release.
    A,
    /// The B of the experiment open in its environment.
    B,
}

/// What an instance left running is to its environment, which runs
/// release `wanted` and may have `open` experiment: that experiment's B if
/// it was started as such (even on the same release, when B tries a config
/// change), else A if it runs the wanted release and is nobody's B (a
/// promoted B is A again), else nothing to keep.
fn kept_as(
    instance: &Instance,
    wanted: Option<i64>,
    open: Option<&sluice_store::Experiment>,
) -> Option<KeptAs> {
    match (instance.experiment_id, open) {
        (Some(of), Some(x)) if of == x.id => Some(KeptAs::B),
        (None, _) if Some(instance.release_id) == wanted => Some(KeptAs::A),
        _ => None,
    }
}

/// What a restart kept of an environment, for the change log.
fn kept_summary(env: &str, release: &Release, kept: &[crate::Live]) -> String {
    let b: Vec<&crate::Live> = kept
        .iter()
        .filter(|l| l.backend.variant() == sluice_proxy::Variant::B)
        .collect();
    let a = kept.len() - b.len();
    let mut summary = format!(
        "{env} kept {a} instance(s) of {} running through the server's restart",
        release.name()
    );
    if let Some(first) = b.first() {
        summary.push_str(&format!(
            ", and {} of the experiment's B ({})",
            b.len(),
            first.backend.release
        ));
    }
    summary
}

#[cfg(test)]
mod tests {
    //! A server killed at any start or stop of a deployment, then started
    //! again over the same store, ends where it would have without the kill.

    use std::sync::Arc;

    use sluice_store::PromotionStatus;

    use crate::clock::FakeClock;
    use crate::testing::{FakeRuntime, Harness, at_each_action, kill, server_runtime, spec};

    #[test]
    fn a_restart_keeps_a_and_the_open_experiments_b_by_what_they_were_started_as() {
        use super::{KeptAs, kept_as};
        let instance = |release_id, experiment_id| sluice_store::Instance {
            id: "shop-prod-v1-1".into(),
            service: "shop".into(),
            environment: "prod".into(),
            release_id,
            release: release_id,
            port: 4000,
            pid: Some(10),
            start_ticks: Some(1),
            state: sluice_store::InstanceState::Healthy,
            restarts: 0,
            config_hash: String::new(),
            experiment_id,
            agent: None,
            created_at: 0,
            stopped_at: None,
        };
        let open = |id, release_id| sluice_store::Experiment {
            id,
            release_id,
            ..experiment(sluice_store::ExperimentStatus::Running)
        };
        let (of_v2, config_on_v1) = (open(7, 2), open(8, 1));
        let table = [
            // release, started as B of, wanted, open experiment → kept as
            (1, None, Some(1), None, Some(KeptAs::A)),
            (2, None, Some(1), None, None),
            (1, None, None, None, None),
            (2, Some(7), Some(1), Some(&of_v2), Some(KeptAs::B)),
            (1, None, Some(1), Some(&of_v2), Some(KeptAs::A)),
            // A config experiment on the same release: told apart all the same.
            (1, Some(8), Some(1), Some(&config_on_v1), Some(KeptAs::B)),
            (1, None, Some(1), Some(&config_on_v1), Some(KeptAs::A)),
            // The B of an experiment no longer open (rolled back as the
            // server died): not kept, even on the wanted release.
            (1, Some(8), Some(1), None, None),
            (1, Some(8), Some(1), Some(&of_v2), None),
        ];
        for (release, of, wanted, x, expected) in table {
            assert_eq!(
                kept_as(&instance(release, of), wanted, x),
                expected,
                "v{release} started as B of {of:?}, wanted {wanted:?}, open {:?}",
                x.map(|x| x.id)
            );
        }
    }

    fn experiment(status: sluice_store::ExperimentStatus) -> sluice_store::Experiment {
        sluice_store::Experiment {
            id: 7,
            service: "shop".into(),
            environment: "prod".into(),
            release_id: 2,
            release: 2,
            baseline_release_id: 1,
            status,
            step: 0,
            weight_bp: 100,
            overrides: "{}".into(),
            goals: "[]".into(),
            deployment_id: Some(3),
            reason: None,
            decisions: "[]".into(),
            report: None,
            created_at: 0,
            step_started_at: 0,
            finished_at: None,
        }
    }

    #[test]
    fn a_promotion_is_deployed_once_and_settled_by_its_experiment() {
        use super::{Next, next};
        use sluice_store::ExperimentStatus::{Promoted, RolledBack, Running, Starting};
        let x = experiment;
        let (starting, running, promoted, rolled_back) =
            (x(Starting), x(Running), x(Promoted), x(RolledBack));
        let table = [
            // its experiment and whether followed here → next
            (None, Next::Deploy),
            (Some((&starting, false)), Next::Leave),
            (Some((&running, false)), Next::Leave),
            // Ended while its follower settles it: left to the follower.
            (Some((&promoted, true)), Next::Leave),
            // Ended and nobody settled it (a restart in between): settled, not deployed again.
            (Some((&promoted, false)), Next::Settle(7)),
            (Some((&rolled_back, false)), Next::Settle(7)),
        ];
        for (experiment, expected) in table {
            assert_eq!(
                next(experiment),
                expected,
                "{:?}",
                experiment.map(|(x, f)| (x.status, f))
            );
        }
    }

    const PROD: &str = "  prod:
    deploy: auto
    instances: 2
    listen: 127.0.0.1:0
";

    #[tokio::test]
    async fn a_promotion_whose_turn_comes_after_a_newer_one_was_opened_gives_way() {
        let world = Harness::new().await;
        let (v1, v2) = (
            world.release(&spec("serve", PROD)).await,
            world.release(&spec("serve", PROD)).await,
        );
        let store = world.store();
        let mut waiting = Vec::new();
        for release in [&v1, &v2] {
            let p = store
                .insert_promotion("shop", "prod", release, "ana")
                .await
                .unwrap();
            store
                .set_promotion_status(p.id, PromotionStatus::Deploying, None, None, "sluice")
                .await
                .unwrap();
            waiting.push(store.promotion(p.id).await.unwrap());
        }
        let inner = &world.cd.inner;
        let cause = sluice_store::DeploymentCause::Promotion;
        let began = super::deploy(inner, &v1, "prod", cause, "ana", Some(&waiting[0])).await;
        assert!(
            matches!(began, Ok(super::Began::Superseded(2))),
            "{began:?}"
        );
        let older = store.promotion(waiting[0].id).await.unwrap();
        assert_eq!(older.status, PromotionStatus::Superseded);
        assert_eq!(
            older.reason.as_deref(),
            Some("v2 went to prod by a later promotion")
        );
        // The newer one is deployed by the deployments loop, woken.
        store.wake(sluice_store::Topic::PromotionOpened).await;
        world.settled("prod", 2, 2).await;
    }

    /// A pass of the deployments loop lists a promotion as `deploying`, and
    /// the task deploying it ends before the pass claims it: the claimed
    /// promotion is read again and left, not deployed a second time (in an
    /// `ab` environment that opened an experiment of v1 against itself).
    #[tokio::test]
    async fn a_promotion_listed_before_its_deployment_ended_is_not_deployed_again() {
        let world = Harness::new().await;
        let ab = format!("{PROD}    strategy:\n      ab: {{ steps: [50, 100] }}\n");
        let v1 = world.release(&spec("serve", &ab)).await;
        crate::aftermath::ask_for_automatic(&world.cd.inner, &v1, None).await;
        world.settled("prod", 1, 2).await;
        let store = world.store();
        let done = world
            .until("the promotion settled", || async {
                let all = store.promotions(Some("shop"), false, 10).await.unwrap();
                all.into_iter().find(|p| p.status == PromotionStatus::Done)
            })
            .await;
        // What the late pass does with the promotion its stale list showed.
        super::take_promotion(&world.cd.inner, done.id).await;
        assert!(
            store
                .experiments(Some("shop"), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let deployments = store
            .deployments(Some("shop"), None, None, 10)
            .await
            .unwrap();
        assert_eq!(deployments.len(), 1, "{deployments:?}");
    }

    /// v1 runs in prod and v2 is asked for; the server is killed at the
    /// `nth` start or stop from then on, and started again.
    fn kill_during_deployment(nth: usize) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let runtime = Arc::new(FakeRuntime::default());
        let clock = Arc::new(FakeClock::new());
        let server = server_runtime();
        let world = server.block_on(async {
            let world = Harness::open(dir.clone(), runtime.clone(), clock.clone()).await;
            let v1 = world.release(&spec("serve", PROD)).await;
            crate::aftermath::ask_for_automatic(&world.cd.inner, &v1, None).await;
            world.settled("prod", 1, 2).await;
            let v2 = world.release(&spec("serve", PROD)).await;
            runtime.crash_at(nth);
            crate::aftermath::ask_for_automatic(&world.cd.inner, &v2, None).await;
            tokio::select! {
                _ = runtime.crashed() => {}
                _ = world.settled("prod", 2, 2) => {}
            }
            world
        });
        kill(server, world);
        server_runtime().block_on(async {
            let world = Harness::open(dir, Arc::default(), clock).await;
            world.settled("prod", 2, 2).await;
        });
    }

    #[test]
    fn a_server_killed_at_any_action_of_a_deployment_ends_as_without_the_kill() {
        // Rolling two instances: start, stop, start, stop; the fifth is past the end.
        at_each_action(5, "the deployment", kill_during_deployment);
    }
}
