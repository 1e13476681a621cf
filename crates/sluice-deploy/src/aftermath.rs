//! What follows a deployment, decided in one place: the promotion that asked
//! for it is settled, a failure raises an incident, and a promotion that
//! succeeded asks for the automatic promotions that follow it. [`decide`] is
//! a pure function of what happened; [`follow`] performs its actions, which
//! meet the other parts without calling them: a follow-up is a promotion
//! row the gatekeeper takes up, an incident an [`Alarm`] the incidents
//! module opens.

use std::sync::Arc;

use sluice_store::{
    Deployment, DeploymentCause, DeploymentStatus, Experiment, ExperimentStatus, IncidentTrigger,
    Promotion, PromotionStatus, Release, Topic,
};

use crate::{Alarm, Inner, Outcome};

/// A deployment that ended, and what asked for it.
pub(crate) struct Ended<'a> {
    pub release: &'a Release,
    pub env: &'a str,
    pub cause: DeploymentCause,
    /// The promotion it served, if a promotion asked for it.
    pub promotion: Option<&'a Promotion>,
    /// Its deployment, unless it failed before one was recorded.
    pub deployment: Option<i64>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// The promotion is done or failed, with why.
    Settle {
        status: PromotionStatus,
        reason: Option<String>,
    },
    /// A failure of the change itself: the incidents module decides which
    /// incident (a new one, or the open one for the same cause).
    OpenIncident,
    /// Ask for the `deploy: auto` environments whose `from` is this one.
    FollowUps,
}

/// What follows: pure, from how it ended, what asked for it, and whether
/// the server is stopping (which is no outcome: the next start takes the
/// deployment up again, so nothing is settled).
pub(crate) fn decide(
    cause: DeploymentCause,
    promoted: bool,
    outcome: &Outcome,
    stopping: bool,
) -> Vec<Action> {
    if stopping {
        return Vec::new();
    }
    let mut actions = Vec::new();
    let why = match outcome {
        Outcome::Succeeded => None,
        Outcome::RolledBack(why) | Outcome::Failed(why) | Outcome::Aborted(why) => Some(why),
    };
    if promoted {
        actions.push(Action::Settle {
            status: if why.is_none() {
                PromotionStatus::Done
            } else {
                PromotionStatus::Failed
            },
            reason: why.cloned(),
        });
    }
    // A person's abort is a decision, not a failure; a rollback, a restart
    // or healing that fails is reported by its own caller.
    let failed = matches!(outcome, Outcome::RolledBack(_) | Outcome::Failed(_));
    let judged = matches!(
        cause,
        DeploymentCause::Auto | DeploymentCause::Promotion | DeploymentCause::Experiment
    );
    if failed && (judged || promoted) {
        actions.push(Action::OpenIncident);
    }
    if promoted && why.is_none() {
        actions.push(Action::FollowUps);
    }
    actions
}

/// Performs what [`decide`] says follows `ended`.
pub(crate) async fn follow(inner: &Arc<Inner>, ended: Ended<'_>) {
    let actions = decide(
        ended.cause,
        ended.promotion.is_some(),
        &ended.outcome,
        inner.shutdown.is_cancelled(),
    );
    for action in actions {
        match action {
            Action::Settle { status, reason } => {
                let Some(promotion) = ended.promotion else {
                    continue;
                };
                if let Some(deployment) = ended.deployment {
                    let _ = inner
                        .store
                        .set_promotion_deployment(promotion.id, deployment)
                        .await;
                }
                let _ = inner
                    .store
                    .set_promotion_status(promotion.id, status, None, reason.as_deref(), "sluice")
                    .await;
            }
            Action::OpenIncident => raise_incident(inner, &ended).await,
            Action::FollowUps => ask_for_automatic(inner, ended.release, Some(ended.env)).await,
        }
    }
}

/// What follows an experiment that ended with `outcome`: the promotion that
/// asked for it, if one did (still `deploying`), is settled by it.
pub(crate) async fn after_experiment(inner: &Arc<Inner>, x: &Experiment, outcome: Outcome) {
    let Ok(release) = inner.store.release_by_id(x.release_id).await else {
        return;
    };
    let promotion = inner
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
    follow(inner, ended).await
}

/// How an ended experiment came out, from what the store kept of it: a
/// person's abort or a test that kept A is no failure of B's; otherwise its
/// deployment says (B promoted onto the data may still have failed there).
pub(crate) fn outcome_of(x: &Experiment, deployment: &Deployment) -> Outcome {
    let why = || x.reason.clone().unwrap_or_default();
    match (x.status, deployment.status) {
        (ExperimentStatus::Aborted | ExperimentStatus::Concluded, _) => Outcome::Aborted(why()),
        (_, DeploymentStatus::Succeeded) => Outcome::Succeeded,
        (_, DeploymentStatus::RolledBack) => Outcome::RolledBack(why()),
        _ => Outcome::Failed(why()),
    }
}

/// Raises the incident a failed deployment or a rolled-back experiment is
/// (the incidents module folds it into an open one for the same cause).
async fn raise_incident(inner: &Inner, ended: &Ended<'_>) {
    let (Outcome::RolledBack(why) | Outcome::Failed(why)) = &ended.outcome else {
        return;
    };
    let judged = match ended.deployment {
        Some(id) => inner
            .store
            .experiments(Some(&ended.release.service), 1000)
            .await
            .unwrap_or_default()
            .iter()
            .any(|x| x.deployment_id == Some(id) && x.status != ExperimentStatus::Aborted),
        None => false,
    };
    let (name, env) = (ended.release.name(), ended.env);
    let (trigger, title) = if judged {
        (
            IncidentTrigger::Experiment,
            format!("the experiment of {name} in {env} was rolled back"),
        )
    } else {
        (
            IncidentTrigger::Deployment,
            format!("the deployment of {name} to {env} failed"),
        )
    };
    inner.raise(Alarm {
        service: ended.release.service.clone(),
        env: env.to_string(),
        trigger,
        title,
        detail: why.clone(),
    });
}

/// Asks for the automatic promotions that follow: environments with
/// `deploy: auto` and no `from` for a new release, or whose `from` is
/// `after`. Each is a pending promotion in the store (one per release and
/// environment), which the gatekeeper, woken now, takes through its gates.
/// A new release is asked for once wherever it went (the catch-up of a
/// restart may have asked first, and its promotion may have ended); what
/// follows an environment is asked again unless a promotion is still open.
pub(crate) async fn ask_for_automatic(inner: &Arc<Inner>, release: &Release, after: Option<&str>) {
    let Ok(spec) = sluice_spec::parse(sluice_spec::SPEC_FILE, &release.spec) else {
        return;
    };
    let _one_release_at_a_time = inner.asking.lock().await;
    let asked = inner
        .store
        .promotions(Some(&release.service), after.is_some(), 1000)
        .await
        .unwrap_or_default();
    for env in spec
        .environments
        .iter()
        .filter(|e| e.deploy.auto && e.from.as_deref() == after)
    {
        if asked
            .iter()
            .any(|p| p.environment == env.name && p.release == release.number)
        {
            continue;
        }
        if let Err(e) = inner
            .store
            .insert_promotion(&release.service, &env.name, release, "sluice")
            .await
        {
            tracing::warn!(service = %release.service, env = %env.name, error = %e, "automatic deployment not requested");
        }
    }
    inner.store.wake(Topic::PromotionAsked).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use DeploymentCause::*;

    fn failed() -> Outcome {
        Outcome::Failed("no instance became healthy".into())
    }

    fn rolled_back() -> Outcome {
        Outcome::RolledBack("B's error rate is higher".into())
    }

    #[test]
    fn what_follows_a_deployment() {
        let settle_done = Settle {
            status: PromotionStatus::Done,
            reason: None,
        };
        let settle_failed = |why: &str| Settle {
            status: PromotionStatus::Failed,
            reason: Some(why.into()),
        };
        let table: Vec<(DeploymentCause, bool, Outcome, Vec<Action>)> = vec![
            // A promotion that succeeded chains the next environments.
            (
                Promotion,
                true,
                Outcome::Succeeded,
                vec![settle_done.clone(), FollowUps],
            ),
            (Auto, true, Outcome::Succeeded, vec![settle_done, FollowUps]),
            // One that failed is settled and opens an incident; nothing follows.
            (
                Promotion,
                true,
                failed(),
                vec![settle_failed("no instance became healthy"), OpenIncident],
            ),
            (
                Auto,
                true,
                rolled_back(),
                vec![settle_failed("B's error rate is higher"), OpenIncident],
            ),
            // A person's abort settles the promotion and opens nothing.
            (
                Promotion,
                true,
                Outcome::Aborted("aborted by ana".into()),
                vec![settle_failed("aborted by ana")],
            ),
            // An experiment started by hand: an incident when rolled back.
            (Experiment, false, rolled_back(), vec![OpenIncident]),
            (Experiment, false, Outcome::Succeeded, vec![]),
            // Rollbacks, restarts and healing report their own failures.
            (Rollback, false, failed(), vec![]),
            (Reconcile, false, failed(), vec![]),
            (Heal, false, failed(), vec![]),
        ];
        for (cause, promoted, outcome, expected) in table {
            assert_eq!(
                decide(cause, promoted, &outcome, false),
                expected,
                "{cause} {promoted} {outcome:?}"
            );
        }
    }

    #[test]
    fn a_stopping_server_settles_nothing() {
        assert_eq!(decide(Promotion, true, &failed(), true), vec![]);
        assert_eq!(decide(Auto, true, &Outcome::Succeeded, true), vec![]);
    }
}
