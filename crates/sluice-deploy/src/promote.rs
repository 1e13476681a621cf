//! Promotions: asking to move a release into an environment, the gates that
//! decide, approvals, rejections and freeze overrides, and the gatekeeper
//! that lets a blocked promotion proceed by itself once its gates clear.

use sluice_store::DeploymentStatus;
use sluice_store::PromotionStatus;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde::Serialize;
use sluice_store::{Promotion, Release, Topic};

use crate::gates::{self, Facts, GateCheck};
use crate::release::release_env;
use crate::{Actor, CdError, CdResult, Inner};

#[derive(Clone, Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct PromoteRequest {
    pub service: String,
    pub to: String,
    /// The release number; by default the one running in the `from` environment.
    pub release: Option<i64>,
}

/// A promotion with the state of each of its gates.
#[derive(Clone, Debug, Serialize)]
pub struct PromotionView {
    #[serde(flatten)]
    pub promotion: Promotion,
    pub gates: Vec<GateCheck>,
}

pub(crate) async fn request(
    inner: &Arc<Inner>,
    request: PromoteRequest,
    actor: &Actor,
) -> CdResult<PromotionView> {
    let release = match request.release {
        Some(number) => inner
            .store
            .release(&request.service, number)
            .await
            .map_err(|_| {
                CdError::NotFound(format!("{} has no release v{number}", request.service))
            })?,
        None => default_release(inner, &request.service, &request.to).await?,
    };
    release_env(&release, &request.to).map_err(|e| CdError::Invalid(format!("{e:#}")))?;
    let open = inner
        .store
        .promotions(Some(&request.service), true, 1000)
        .await?;
    if let Some(same) = open
        .iter()
        .find(|p| p.environment == request.to && p.release == release.number)
    {
        return view(inner, same.id).await;
    }
    let promotion = inner
        .store
        .insert_promotion(&request.service, &request.to, &release, &actor.name)
        .await?;
    advance(inner, promotion.id).await?;
    view(inner, promotion.id).await
}

/// The release running in the `from` environment, or the newest release when there is none.
async fn default_release(inner: &Arc<Inner>, service: &str, to: &str) -> CdResult<Release> {
    let latest = inner
        .store
        .releases(Some(service), 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| CdError::NotFound(format!("{service} has no release yet")))?;
    let (_, env) = release_env(&latest, to).map_err(|e| CdError::Invalid(format!("{e:#}")))?;
    let Some(from) = env.from else {
        return Ok(latest);
    };
    let state = inner.store.env_state(service, &from).await?;
    match state.and_then(|s| s.release_id) {
        Some(id) => Ok(inner.store.release_by_id(id).await?),
        None => Err(CdError::Conflict(format!(
            "{from} runs no release of {service} yet; promote one there first, or name one with --release vN"
        ))),
    }
}

pub(crate) async fn view(inner: &Arc<Inner>, id: i64) -> CdResult<PromotionView> {
    let promotion = inner.store.promotion(id).await?;
    let gates = match promotion.status {
        PromotionStatus::Pending => gates_of(inner, &promotion).await?,
        _ => Vec::new(),
    };
    Ok(PromotionView { promotion, gates })
}

pub(crate) async fn list(
    inner: &Arc<Inner>,
    service: Option<&str>,
    open_only: bool,
) -> CdResult<Vec<PromotionView>> {
    let mut out = Vec::new();
    for promotion in inner.store.promotions(service, open_only, 200).await? {
        out.push(view(inner, promotion.id).await?);
    }
    Ok(out)
}

async fn gates_of(inner: &Arc<Inner>, promotion: &Promotion) -> CdResult<Vec<GateCheck>> {
    let release = inner.store.release_by_id(promotion.release_id).await?;
    let (_, target) = release_env(&release, &promotion.environment)?;
    let state = inner
        .store
        .env_state(&promotion.service, &promotion.environment)
        .await?;
    let (from_release, from_healthy_since) = match &target.from {
        Some(from) => {
            let from_state = inner.store.env_state(&promotion.service, from).await?;
            let live = inner.live_in(&promotion.service, from);
            let all_healthy = !live.is_empty() && live.iter().all(|l| l.backend.is_healthy());
            let since = from_state
                .as_ref()
                .and_then(|s| s.healthy_since)
                .filter(|_| all_healthy)
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            (from_state.and_then(|s| s.release), since)
        }
        None => (None, None),
    };
    // How the release's own deployment to `from` ended, when it did not succeed.
    let from_failure = match &target.from {
        Some(from) => inner
            .store
            .deployments(Some(&promotion.service), Some(from), None, 50)
            .await?
            .into_iter()
            .filter(|d| d.release == release.number)
            .max_by_key(|d| d.created_at)
            .filter(|d| {
                matches!(
                    d.status,
                    DeploymentStatus::RolledBack | DeploymentStatus::Failed
                )
            })
            .map(|d| d.reason.unwrap_or_else(|| d.status.to_string())),
        None => None,
    };
    let jobs: BTreeMap<String, String> = inner
        .store
        .jobs(release.run_id)
        .await?
        .into_iter()
        .map(|j| (j.name, j.status.to_string()))
        .collect();
    let rules = crate::rules::in_force(inner, &release).await?;
    let mut traffic = BTreeMap::new();
    if let Some(from) = &target.from {
        for rule in &rules {
            if let sluice_spec::RuleSpec::MetricGate { window, .. } = &rule.spec
                && let Ok(d) = sluice_spec::parse_duration(window)
            {
                let seconds = d.as_secs();
                traffic.insert(
                    seconds,
                    crate::rules::in_force::traffic(inner, &promotion.service, from, seconds),
                );
            }
        }
    }
    let config_now = match state.as_ref().and_then(|s| s.release_id) {
        Some(id) => {
            let running = inner.store.release_by_id(id).await?;
            release_env(&running, &promotion.environment)
                .ok()
                .map(|(_, e)| e.config)
        }
        None => None,
    };
    let facts = Facts {
        promotion_id: promotion.id,
        release: release.number,
        target: &target,
        requested_by: &promotion.requested_by,
        approvers: promotion
            .approvals
            .iter()
            .map(|a| a.approver.clone())
            .collect(),
        pinned: state
            .filter(|s| s.pinned.0)
            .map(|s| s.pin_reason.unwrap_or_default()),
        freeze_overridden: promotion
            .override_by
            .clone()
            .zip(promotion.override_reason.clone()),
        from_release,
        from_healthy_since,
        from_failure,
        jobs,
        config_next: target.config.clone(),
        config_now,
        rules,
        traffic,
    };
    Ok(gates::evaluate(&facts, inner.clock.now()))
}

/// Looks at a pending promotion's gates; when all are open, marks it
/// `deploying` for the deployments loop (`deploy::deployer`).
pub(crate) async fn advance(inner: &Arc<Inner>, id: i64) -> CdResult<()> {
    let _one_at_a_time = inner.advancing.lock().await;
    let promotion = inner.store.promotion(id).await?;
    if promotion.status != PromotionStatus::Pending {
        return Ok(());
    }
    let others = inner
        .store
        .promotions(Some(&promotion.service), false, 1000)
        .await?;
    if let Some(newer) = promotion.superseded_by(&others) {
        inner
            .store
            .set_promotion_status(
                id,
                PromotionStatus::Superseded,
                None,
                Some(&format!(
                    "v{newer} went to {} by a later promotion",
                    promotion.environment
                )),
                "sluice",
            )
            .await?;
        return Ok(());
    }
    let checks = gates_of(inner, &promotion).await?;
    for blocked in checks.iter().filter(|c| !c.passed) {
        if let Some(rule) = &blocked.rule {
            inner
                .store
                .record_block(
                    rule,
                    &promotion.service,
                    Some(&promotion.environment),
                    &format!("promotion {id}"),
                    &blocked.detail,
                )
                .await?;
        }
    }
    if let Some(closed) = checks.iter().find(|c| !c.passed) {
        let reason = match &closed.clears {
            Some(clears) => format!("{}; clears with {clears}", closed.detail),
            None => closed.detail.clone(),
        };
        inner
            .store
            .set_promotion_status(
                id,
                PromotionStatus::Pending,
                Some(&closed.gate),
                Some(&reason),
                "sluice",
            )
            .await?;
        return Ok(());
    }
    inner
        .store
        .set_promotion_status(id, PromotionStatus::Deploying, None, None, "sluice")
        .await?;
    // The deployments loop takes a promotion whose gates opened from here.
    inner.store.wake(Topic::PromotionOpened).await;
    Ok(())
}

pub(crate) async fn approve(inner: &Arc<Inner>, id: i64, actor: &Actor) -> CdResult<PromotionView> {
    let promotion = inner.store.promotion(id).await?;
    if promotion.status != PromotionStatus::Pending {
        return Err(CdError::Conflict(format!(
            "promotion {id} is {}; only pending promotions take approvals",
            promotion.status
        )));
    }
    if actor.name == promotion.requested_by {
        return Err(CdError::Forbidden(format!(
            "{} asked for promotion {id}, so someone else must approve it",
            actor.name
        )));
    }
    let release = inner.store.release_by_id(promotion.release_id).await?;
    let (_, target) = release_env(&release, &promotion.environment)?;
    let listed = &target.deploy.approvers;
    if !listed.is_empty()
        && !listed
            .iter()
            .any(|a| *a == actor.name || actor.groups.contains(a))
    {
        return Err(CdError::Forbidden(format!(
            "{}'s approvers are {}; `{}` is not one of them",
            promotion.environment,
            listed.join(", "),
            actor.name
        )));
    }
    if !inner.store.add_approval(&promotion, &actor.name).await? {
        return Err(CdError::Conflict(format!(
            "{} approved promotion {id} already",
            actor.name
        )));
    }
    advance(inner, id).await?;
    view(inner, id).await
}

pub(crate) async fn reject(
    inner: &Arc<Inner>,
    id: i64,
    reason: &str,
    actor: &Actor,
) -> CdResult<PromotionView> {
    let promotion = inner.store.promotion(id).await?;
    if promotion.status != PromotionStatus::Pending {
        return Err(CdError::Conflict(format!(
            "promotion {id} is {}; only pending promotions can be rejected",
            promotion.status
        )));
    }
    if reason.trim().is_empty() {
        return Err(CdError::Invalid(
            "a rejection needs a reason (--reason)".into(),
        ));
    }
    inner
        .store
        .set_promotion_status(
            id,
            PromotionStatus::Rejected,
            None,
            Some(&format!("rejected by {}: {reason}", actor.name)),
            &actor.name,
        )
        .await?;
    view(inner, id).await
}

pub(crate) async fn override_freeze(
    inner: &Arc<Inner>,
    id: i64,
    reason: &str,
    actor: &Actor,
) -> CdResult<PromotionView> {
    if reason.trim().is_empty() {
        return Err(CdError::Invalid(
            "an override needs a reason (--reason), which the change log keeps".into(),
        ));
    }
    let promotion = inner.store.promotion(id).await?;
    if promotion.status != PromotionStatus::Pending {
        return Err(CdError::Conflict(format!(
            "promotion {id} is {}",
            promotion.status
        )));
    }
    inner
        .store
        .set_override(&promotion, &actor.name, reason)
        .await?;
    advance(inner, id).await?;
    view(inner, id).await
}

/// Looks at every pending promotion, at once (after a restart too), then
/// when one is asked for and now and then: soak time passes, freezes end.
pub(crate) async fn gatekeeper(inner: Arc<Inner>) {
    crate::every_pass(inner, Topic::PromotionAsked, look_at_gates).await
}

async fn look_at_gates(inner: &Arc<Inner>) {
    let Ok(open) = inner.store.promotions(None, true, 1000).await else {
        return;
    };
    for promotion in open
        .into_iter()
        .filter(|p| p.status == PromotionStatus::Pending)
    {
        if let Err(e) = advance(inner, promotion.id).await {
            tracing::warn!(promotion = promotion.id, error = %e, "could not look at the promotion's gates");
        }
    }
}

#[cfg(test)]
mod tests {
    //! Promotions against the fake runtime: the automatic chain, and gates
    //! that block until a person clears them.

    use sluice_store::{Promotion, PromotionStatus};

    use crate::Actor;
    use crate::testing::Harness;

    const ENVIRONMENTS: &str = "  dev:
    deploy: auto
    instances: 1
    listen: 127.0.0.1:0
  pre-prod:
    deploy: auto
    from: dev
    instances: 1
    listen: 127.0.0.1:0
  prod:
    deploy: { approvals: 1 }
    from: pre-prod
    instances: 1
    listen: 127.0.0.1:0
";

    async fn promotion_to(world: &Harness, env: &str, status: PromotionStatus) -> Promotion {
        world
            .until(&format!("a promotion to {env} {status}"), || async {
                world
                    .store()
                    .promotions(Some("shop"), false, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|p| p.environment == env && p.status == status)
            })
            .await
    }

    fn promotion(id: i64, env: &str, release: i64, status: PromotionStatus) -> Promotion {
        Promotion {
            id,
            service: "shop".into(),
            environment: env.into(),
            release_id: release,
            release,
            requested_by: "sluice".into(),
            status,
            blocked_by: None,
            reason: None,
            override_by: None,
            override_reason: None,
            deployment_id: None,
            created_at: 0,
            decided_at: None,
            approvals: Vec::new(),
        }
    }

    #[test]
    fn a_later_promotion_of_a_newer_release_supersedes_a_pending_one() {
        use PromotionStatus::*;
        let waiting = promotion(5, "prod", 3, Pending);
        let table = [
            (promotion(7, "prod", 4, Done), Some(4)),
            (promotion(7, "prod", 4, Deploying), Some(4)),
            // Not yet gone anywhere, failed or rejected: nothing moot yet.
            (promotion(7, "prod", 4, Pending), None),
            (promotion(7, "prod", 4, Failed), None),
            (promotion(7, "prod", 4, Rejected), None),
            // Another environment, an older release, an earlier promotion.
            (promotion(7, "dev", 4, Done), None),
            (promotion(7, "prod", 2, Done), None),
            (promotion(4, "prod", 4, Done), None),
        ];
        for (other, expected) in table {
            assert_eq!(
                waiting.superseded_by(std::slice::from_ref(&other)),
                expected,
                "{other:?}"
            );
        }
    }

    fn person(name: &str) -> Actor {
        Actor {
            name: name.into(),
            groups: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_soak_gate_blocks_until_the_clock_has_moved_past_it() {
        let world = Harness::new().await;
        let environments = "  dev:
    deploy: auto
    instances: 1
    listen: 127.0.0.1:0
  prod:
    deploy: { auto: true, soak: 1h }
    from: dev
    instances: 1
    listen: 127.0.0.1:0
";
        let release = world
            .release(&crate::testing::spec("serve", environments))
            .await;
        crate::aftermath::ask_for_automatic(&world.cd.inner, &release, None).await;
        let waiting = world
            .until("prod's promotion blocked by its soak", || async {
                world
                    .store()
                    .promotions(Some("shop"), false, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|p| p.environment == "prod" && p.blocked_by.as_deref() == Some("soak"))
            })
            .await;
        assert_eq!(waiting.status, PromotionStatus::Pending);
        world.clock.advance(std::time::Duration::from_secs(3601));
        world
            .cd
            .inner
            .store
            .wake(sluice_store::Topic::PromotionAsked)
            .await;
        promotion_to(&world, "prod", PromotionStatus::Done).await;
        assert_eq!(world.answer("prod").await, "v1");
    }

    #[tokio::test]
    async fn a_release_goes_dev_then_pre_prod_by_itself_and_waits_for_prod_s_approval() {
        let world = Harness::new().await;
        let release = world
            .release(&crate::testing::spec("serve", ENVIRONMENTS))
            .await;
        crate::aftermath::ask_for_automatic(&world.cd.inner, &release, None).await;
        let dev = promotion_to(&world, "dev", PromotionStatus::Done).await;
        assert_eq!(dev.requested_by, "sluice");
        promotion_to(&world, "pre-prod", PromotionStatus::Done).await;
        assert_eq!(world.answer("pre-prod").await, "v1");

        // prod follows pre-prod only when asked, and then waits for an approval.
        let asked = world
            .cd
            .promote(
                super::PromoteRequest {
                    service: "shop".into(),
                    to: "prod".into(),
                    release: None,
                },
                &person("ana"),
            )
            .await
            .unwrap();
        assert_eq!(asked.promotion.status, PromotionStatus::Pending);
        assert_eq!(asked.promotion.blocked_by.as_deref(), Some("approvals"));
        let refused = world
            .cd
            .approve(asked.promotion.id, &person("ana"))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("someone else"), "{refused}");
        world
            .cd
            .approve(asked.promotion.id, &person("bo"))
            .await
            .unwrap();
        promotion_to(&world, "prod", PromotionStatus::Done).await;
        assert_eq!(world.answer("prod").await, "v1");
    }
}
