//! Releases, environments' state, deployments, instances, promotions and
//! approvals: what continuous deployment records.

use serde::Serialize;
use sqlx::{AssertSqlSafe, FromRow};

use crate::changelog::append_with;
use crate::status::*;
use crate::{NewChangeEvent, Result, Run, Store, StoreError, now_ms};

/// An immutable, numbered bundle: a green mainline run's artifact and the
/// `sluice.yaml` of its commit.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Release {
    pub id: i64,
    pub service: String,
    pub number: i64,
    pub run_id: i64,
    pub repo_id: i64,
    pub sha: String,
    pub branch: String,
    pub title: String,
    pub artifact_sha256: String,
    #[serde(skip)]
    pub spec: String,
    pub created_at: i64,
}

impl Release {
    /// `v7`.
    pub fn name(&self) -> String {
        format!("v{}", self.number)
    }
}

/// The recorded state of one environment of a service.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct EnvState {
    pub service: String,
    pub name: String,
    pub release_id: Option<i64>,
    pub release: Option<i64>,
    #[sqlx(try_from = "i64")]
    pub pinned: Flag,
    pub pin_reason: Option<String>,
    pub seeded_at: Option<i64>,
    /// Since when the current release has run with every instance healthy.
    pub healthy_since: Option<i64>,
    pub updated_at: i64,
}

/// A yes-or-no column, stored as 0 or 1 because sqlx's `Any` driver has no
/// boolean that both databases share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Flag(pub bool);

impl From<i64> for Flag {
    fn from(value: i64) -> Self {
        Flag(value != 0)
    }
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Deployment {
    pub id: i64,
    pub service: String,
    pub environment: String,
    pub release_id: i64,
    pub release: i64,
    pub previous_release_id: Option<i64>,
    #[sqlx(try_from = "String")]
    pub strategy: DeploymentStrategy,
    #[sqlx(try_from = "String")]
    pub cause: DeploymentCause,
    pub actor: String,
    #[sqlx(try_from = "String")]
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// A deployment about to start.
pub struct NewDeployment<'a> {
    pub service: &'a str,
    pub env: &'a str,
    pub release: &'a Release,
    pub previous: Option<i64>,
    pub strategy: DeploymentStrategy,
    pub cause: DeploymentCause,
    pub actor: &'a str,
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub release_id: i64,
    pub release: i64,
    pub port: i64,
    pub pid: Option<i64>,
    pub start_ticks: Option<i64>,
    #[sqlx(try_from = "String")]
    pub state: InstanceState,
    pub restarts: i64,
    pub config_hash: String,
    /// The experiment this instance was started as the B of; `None`: its
    /// environment's own (a promoted B's become so); -1: not known (a
    /// config experiment's, started by a version that did not record it).
    pub experiment_id: Option<i64>,
    /// The agent whose host runs it; `None`: the server's own host.
    pub agent: Option<String>,
    pub created_at: i64,
    pub stopped_at: Option<i64>,
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Promotion {
    pub id: i64,
    pub service: String,
    pub environment: String,
    pub release_id: i64,
    pub release: i64,
    pub requested_by: String,
    #[sqlx(try_from = "String")]
    pub status: PromotionStatus,
    pub blocked_by: Option<String>,
    pub reason: Option<String>,
    pub override_by: Option<String>,
    pub override_reason: Option<String>,
    pub deployment_id: Option<i64>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    #[sqlx(skip)]
    pub approvals: Vec<Approval>,
}

impl Promotion {
    /// The newer release a later promotion took (or is taking) to the same
    /// environment, which makes this one moot while it waits: it would only
    /// deploy backwards, and its `from` gate could never clear. A rollback
    /// is not a promotion, so it supersedes nothing.
    pub fn superseded_by(&self, all: &[Promotion]) -> Option<i64> {
        all.iter()
            .filter(|other| {
                other.id > self.id
                    && other.environment == self.environment
                    && other.release > self.release
                    && matches!(
                        other.status,
                        PromotionStatus::Deploying | PromotionStatus::Done
                    )
            })
            .map(|other| other.release)
            .max()
    }
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Approval {
    pub approver: String,
    pub at: i64,
}

const RELEASE_COLUMNS: &str =
    "id, service, number, run_id, repo_id, sha, branch, title, artifact_sha256, spec, created_at";
const ENV_SELECT: &str = "SELECT e.service, e.name, e.release_id, r.number AS release, e.pinned, e.pin_reason, e.seeded_at,
        e.healthy_since, e.updated_at
    FROM environments e LEFT JOIN releases r ON r.id = e.release_id";
const DEPLOYMENT_SELECT: &str = "SELECT d.id, d.service, d.environment, d.release_id, r.number AS release, d.previous_release_id,
        d.strategy, d.cause, d.actor, d.status, d.reason, d.created_at, d.finished_at
    FROM deployments d JOIN releases r ON r.id = d.release_id";
const INSTANCE_SELECT: &str = "SELECT i.id, i.service, i.environment, i.release_id, r.number AS release, i.port, i.pid, i.start_ticks,
        i.state, i.restarts, i.config_hash, i.experiment_id, i.agent, i.created_at, i.stopped_at
    FROM instances i JOIN releases r ON r.id = i.release_id";
const PROMOTION_SELECT: &str = "SELECT p.id, p.service, p.environment, p.release_id, r.number AS release, p.requested_by, p.status,
        p.blocked_by, p.reason, p.override_by, p.override_reason, p.deployment_id, p.created_at, p.decided_at
    FROM promotions p JOIN releases r ON r.id = p.release_id";

fn event(
    actor: &str,
    kind: &str,
    service: &str,
    environment: Option<&str>,
    subject: String,
    summary: String,
) -> NewChangeEvent {
    NewChangeEvent {
        actor: actor.to_string(),
        kind: kind.to_string(),
        service: Some(service.to_string()),
        environment: environment.map(String::from),
        subject,
        summary,
        ..Default::default()
    }
}

impl Store {
    /// Makes the next release of a service from a green run; a run makes one release at most.
    pub async fn create_release(
        &self,
        service: &str,
        run: &Run,
        artifact: &str,
        spec: &str,
    ) -> Result<Release> {
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM releases WHERE run_id = $1")
            .bind(run.id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(id) = existing {
            return self.release_by_id(id).await;
        }
        let number: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE service = $1",
        )
        .bind(service)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO releases (service, number, run_id, repo_id, sha, branch, title, artifact_sha256, spec, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(service)
        .bind(number)
        .bind(run.id)
        .bind(run.repo_id)
        .bind(&run.sha)
        .bind(&run.branch)
        .bind(&run.title)
        .bind(artifact)
        .bind(spec)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let mut created = event(
            "sluice",
            "release.created",
            service,
            None,
            format!("release v{number}"),
            format!(
                "release v{number} of {service} from run {} ({})",
                run.id,
                &run.sha[..run.sha.len().min(10)]
            ),
        );
        created.after = Some(
            serde_json::json!({ "release": number, "run": run.id, "sha": run.sha, "artifact": artifact }),
        );
        append_with(&mut tx, created).await?;
        tx.commit().await?;
        self.release_by_id(id).await
    }

    pub async fn release_by_id(&self, id: i64) -> Result<Release> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "release",
            id: id.to_string(),
        })
    }

    pub async fn release(&self, service: &str, number: i64) -> Result<Release> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE service = $1 AND number = $2"
        )))
        .bind(service)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "release",
            id: format!("{service} v{number}"),
        })
    }

    pub async fn releases(&self, service: Option<&str>, limit: i64) -> Result<Vec<Release>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE ($1 IS NULL OR service = $1) ORDER BY id DESC LIMIT $2"
        )))
        .bind(service)
        .bind(if limit > 0 { limit } else { 100 })
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn env_state(&self, service: &str, env: &str) -> Result<Option<EnvState>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "{ENV_SELECT} WHERE e.service = $1 AND e.name = $2"
        )))
        .bind(service)
        .bind(env)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn env_states(&self, service: Option<&str>) -> Result<Vec<EnvState>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "{ENV_SELECT} WHERE ($1 IS NULL OR e.service = $1) ORDER BY e.service, e.name"
        )))
        .bind(service)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records that an environment exists, with no release yet.
    pub async fn ensure_env(&self, service: &str, env: &str) -> Result<()> {
        sqlx::query("INSERT INTO environments (service, name, updated_at) VALUES ($1, $2, $3) ON CONFLICT (service, name) DO NOTHING")
            .bind(service)
            .bind(env)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets the environment's release (a deployment succeeded) and logs before → after.
    pub async fn set_env_release(
        &self,
        service: &str,
        env: &str,
        release: &Release,
        actor: &str,
        kind: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        let before: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT r.number FROM environments e LEFT JOIN releases r ON r.id = e.release_id WHERE e.service = $1 AND e.name = $2",
        )
        .bind(service)
        .bind(env)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("UPDATE environments SET release_id = $1, healthy_since = $2, updated_at = $2 WHERE service = $3 AND name = $4")
            .bind(release.id)
            .bind(now_ms())
            .bind(service)
            .bind(env)
            .execute(&mut *tx)
            .await?;
        let before = before.flatten();
        let was = before.map_or("nothing".to_string(), |n| format!("v{n}"));
        let mut changed = event(
            actor,
            kind,
            service,
            Some(env),
            format!("release {}", release.name()),
            format!("{env} now runs {} (was {was})", release.name()),
        );
        changed.before = Some(serde_json::json!({ "release": before }));
        changed.after = Some(serde_json::json!({ "release": release.number, "sha": release.sha }));
        append_with(&mut tx, changed).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notes that the environment's data directory holds something: it
    /// cannot move to another host empty from now on.
    pub async fn mark_data_in_use(&self, service: &str, env: &str) -> Result<()> {
        sqlx::query("UPDATE environments SET data_in_use = 1 WHERE service = $1 AND name = $2")
            .bind(service)
            .bind(env)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The environments whose data directory was ever seen holding anything.
    pub async fn data_in_use(&self) -> Result<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT service, name FROM environments WHERE data_in_use = 1")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn mark_seeded(&self, service: &str, env: &str) -> Result<()> {
        sqlx::query("UPDATE environments SET seeded_at = $1 WHERE service = $2 AND name = $3")
            .bind(now_ms())
            .bind(service)
            .bind(env)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_pinned(
        &self,
        service: &str,
        env: &str,
        pinned: bool,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE environments SET pinned = $1, pin_reason = $2, updated_at = $3 WHERE service = $4 AND name = $5")
            .bind(i64::from(pinned))
            .bind(reason)
            .bind(now_ms())
            .bind(service)
            .bind(env)
            .execute(&mut *tx)
            .await?;
        let (kind, summary) = match pinned {
            true => (
                "env.pinned",
                format!("{env} pinned: {}", reason.unwrap_or("")),
            ),
            false => (
                "env.unpinned",
                format!("{env} unpinned; automation may deploy again"),
            ),
        };
        let mut changed = event(
            actor,
            kind,
            service,
            Some(env),
            format!("environment {env}"),
            summary,
        );
        changed.before = Some(serde_json::json!({ "pinned": !pinned }));
        changed.after = Some(serde_json::json!({ "pinned": pinned, "reason": reason }));
        append_with(&mut tx, changed).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_deployment(&self, new: NewDeployment<'_>) -> Result<i64> {
        let NewDeployment {
            service,
            env,
            release,
            previous,
            strategy,
            cause,
            actor,
        } = new;
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO deployments (service, environment, release_id, previous_release_id, strategy, cause, actor, status, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8) RETURNING id",
        )
        .bind(service)
        .bind(env)
        .bind(release.id)
        .bind(previous)
        .bind(strategy.as_str())
        .bind(cause.as_str())
        .bind(actor)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let started = event(
            actor,
            "deployment.started",
            service,
            Some(env),
            format!("deployment {id}"),
            format!(
                "deploying {} to {env} ({strategy}, {cause})",
                release.name()
            ),
        );
        append_with(&mut tx, started).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn finish_deployment(
        &self,
        id: i64,
        status: DeploymentStatus,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        sqlx::query("UPDATE deployments SET status = $1, reason = $2, finished_at = $3 WHERE id = $4 AND status = 'running'")
            .bind(status.as_str())
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let (service, env, release): (String, String, i64) = sqlx::query_as(
            "SELECT d.service, d.environment, r.number FROM deployments d JOIN releases r ON r.id = d.release_id WHERE d.id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let summary = match reason {
            Some(reason) => format!("deployment of v{release} to {env} {status}: {reason}"),
            None => format!("deployment of v{release} to {env} {status}"),
        };
        append_with(
            &mut tx,
            event(
                "sluice",
                &format!("deployment.{status}"),
                &service,
                Some(&env),
                format!("deployment {id}"),
                summary,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn deployment(&self, id: i64) -> Result<Deployment> {
        sqlx::query_as(AssertSqlSafe(format!(
            "{DEPLOYMENT_SELECT} WHERE d.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "deployment",
            id: id.to_string(),
        })
    }

    pub async fn deployments(
        &self,
        service: Option<&str>,
        env: Option<&str>,
        status: Option<DeploymentStatus>,
        limit: i64,
    ) -> Result<Vec<Deployment>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "{DEPLOYMENT_SELECT} WHERE ($1 IS NULL OR d.service = $1) AND ($2 IS NULL OR d.environment = $2) AND ($3 IS NULL OR d.status = $3)
             ORDER BY d.id DESC LIMIT $4"
        )))
        .bind(service)
        .bind(env)
        .bind(status.map(DeploymentStatus::as_str))
        .bind(if limit > 0 { limit } else { 100 })
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn insert_instance(&self, instance: &Instance) -> Result<()> {
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        sqlx::query(
            "INSERT INTO instances (id, service, environment, release_id, port, pid, start_ticks, state, restarts, config_hash, experiment_id, agent, created_at)
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, 0, $7, $8, $9, $10)",
        )
        .bind(&instance.id)
        .bind(&instance.service)
        .bind(&instance.environment)
        .bind(instance.release_id)
        .bind(instance.port)
        .bind(instance.state.as_str())
        .bind(&instance.config_hash)
        .bind(instance.experiment_id)
        .bind(&instance.agent)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_instance_process(
        &self,
        id: &str,
        pid: i64,
        start_ticks: i64,
        restarts: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE instances SET pid = $1, start_ticks = $2, restarts = $3 WHERE id = $4")
            .bind(pid)
            .bind(start_ticks)
            .bind(restarts)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A promoted experiment's B instances: its environment's own from now on.
    pub async fn instances_become_a(&self, experiment: i64) -> Result<()> {
        sqlx::query("UPDATE instances SET experiment_id = NULL WHERE experiment_id = $1")
            .bind(experiment)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_instance_state(&self, id: &str, state: InstanceState) -> Result<()> {
        let stopped = if state == InstanceState::Stopped {
            Some(now_ms())
        } else {
            None
        };
        sqlx::query(
            "UPDATE instances SET state = $1, stopped_at = COALESCE($2, stopped_at) WHERE id = $3",
        )
        .bind(state.as_str())
        .bind(stopped)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn instance(&self, id: &str) -> Result<Instance> {
        sqlx::query_as(AssertSqlSafe(format!("{INSTANCE_SELECT} WHERE i.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "instance",
                id: id.to_string(),
            })
    }

    /// Instances not stopped, of one environment or of all.
    pub async fn live_instances(
        &self,
        service: Option<&str>,
        env: Option<&str>,
    ) -> Result<Vec<Instance>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE i.stopped_at IS NULL AND ($1 IS NULL OR i.service = $1) AND ($2 IS NULL OR i.environment = $2)
             ORDER BY i.created_at"
        )))
        .bind(service)
        .bind(env)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn count_instances(&self, service: &str, env: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM instances WHERE service = $1 AND environment = $2",
        )
        .bind(service)
        .bind(env)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn insert_promotion(
        &self,
        service: &str,
        env: &str,
        release: &Release,
        requested_by: &str,
    ) -> Result<Promotion> {
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO promotions (service, environment, release_id, requested_by, status, created_at)
             VALUES ($1, $2, $3, $4, 'pending', $5) RETURNING id",
        )
        .bind(service)
        .bind(env)
        .bind(release.id)
        .bind(requested_by)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let mut requested = event(
            requested_by,
            "promotion.requested",
            service,
            Some(env),
            format!("promotion {id}"),
            format!(
                "{requested_by} asked to promote {} to {env}",
                release.name()
            ),
        );
        requested.after = Some(serde_json::json!({ "promotion": id, "release": release.number }));
        append_with(&mut tx, requested).await?;
        tx.commit().await?;
        self.promotion(id).await
    }

    pub async fn promotion(&self, id: i64) -> Result<Promotion> {
        let mut promotion: Promotion =
            sqlx::query_as(AssertSqlSafe(format!("{PROMOTION_SELECT} WHERE p.id = $1")))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "promotion",
                    id: id.to_string(),
                })?;
        promotion.approvals = sqlx::query_as(
            "SELECT approver, at FROM approvals WHERE promotion_id = $1 ORDER BY at",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(promotion)
    }

    /// The newest promotions (of one service, or all; open ones only when
    /// asked), newest first, each with its approvals: two queries, however
    /// many there are (the gatekeeper reads a service's every second).
    pub async fn promotions(
        &self,
        service: Option<&str>,
        open_only: bool,
        limit: i64,
    ) -> Result<Vec<Promotion>> {
        let mut promotions: Vec<Promotion> = sqlx::query_as(AssertSqlSafe(format!(
            "{PROMOTION_SELECT} WHERE ($1 IS NULL OR p.service = $1) AND ($2 = 0 OR p.status IN ('pending', 'deploying'))
             ORDER BY p.id DESC LIMIT $3"
        )))
        .bind(service)
        .bind(i64::from(open_only))
        .bind(if limit > 0 { limit } else { 100 })
        .fetch_all(&self.pool)
        .await?;
        let (Some(newest), Some(oldest)) = (promotions.first(), promotions.last()) else {
            return Ok(promotions);
        };
        let approvals: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT promotion_id, approver, at FROM approvals
             WHERE promotion_id BETWEEN $1 AND $2 ORDER BY at",
        )
        .bind(oldest.id)
        .bind(newest.id)
        .fetch_all(&self.pool)
        .await?;
        let mut by_promotion: std::collections::HashMap<i64, Vec<Approval>> = Default::default();
        for (promotion, approver, at) in approvals {
            by_promotion
                .entry(promotion)
                .or_default()
                .push(Approval { approver, at });
        }
        for promotion in &mut promotions {
            promotion.approvals = by_promotion.remove(&promotion.id).unwrap_or_default();
        }
        Ok(promotions)
    }

    /// Moves a promotion on; logs when it ends or its blocking gate changes.
    pub async fn set_promotion_status(
        &self,
        id: i64,
        status: PromotionStatus,
        blocked_by: Option<&str>,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<()> {
        let before = self.promotion(id).await?;
        if before.status == status && before.blocked_by.as_deref() == blocked_by {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        let decided = if status.is_final() {
            Some(now_ms())
        } else {
            None
        };
        sqlx::query("UPDATE promotions SET status = $1, blocked_by = $2, reason = $3, decided_at = COALESCE($4, decided_at) WHERE id = $5")
            .bind(status.as_str())
            .bind(blocked_by)
            .bind(reason)
            .bind(decided)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let summary = match (status, reason) {
            (PromotionStatus::Pending, Some(reason)) => format!(
                "promotion {id} of v{} to {} blocked: {reason}",
                before.release, before.environment
            ),
            (_, Some(reason)) => format!(
                "promotion {id} of v{} to {} {status}: {reason}",
                before.release, before.environment
            ),
            (_, None) => format!(
                "promotion {id} of v{} to {} {status}",
                before.release, before.environment
            ),
        };
        let kind = if status == PromotionStatus::Pending && blocked_by == Some("approvals") {
            "approval.needed".to_string()
        } else if status == PromotionStatus::Pending {
            "promotion.blocked".to_string()
        } else {
            format!("promotion.{status}")
        };
        let mut changed = event(
            actor,
            &kind,
            &before.service,
            Some(&before.environment),
            format!("promotion {id}"),
            summary,
        );
        changed.before =
            Some(serde_json::json!({ "status": before.status, "blocked_by": before.blocked_by }));
        changed.after = Some(serde_json::json!({ "status": status, "blocked_by": blocked_by }));
        append_with(&mut tx, changed).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_promotion_deployment(&self, id: i64, deployment: i64) -> Result<()> {
        sqlx::query("UPDATE promotions SET deployment_id = $1 WHERE id = $2")
            .bind(deployment)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records an approval; false when this approver had approved already.
    pub async fn add_approval(&self, promotion: &Promotion, approver: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("INSERT INTO approvals (promotion_id, approver, at) VALUES ($1, $2, $3) ON CONFLICT (promotion_id, approver) DO NOTHING")
            .bind(promotion.id)
            .bind(approver)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let summary = format!(
            "{approver} approved promotion {} of v{} to {}",
            promotion.id, promotion.release, promotion.environment
        );
        append_with(
            &mut tx,
            event(
                approver,
                "promotion.approved",
                &promotion.service,
                Some(&promotion.environment),
                format!("promotion {}", promotion.id),
                summary,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn set_override(
        &self,
        promotion: &Promotion,
        admin: &str,
        reason: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE promotions SET override_by = $1, override_reason = $2 WHERE id = $3")
            .bind(admin)
            .bind(reason)
            .bind(promotion.id)
            .execute(&mut *tx)
            .await?;
        let summary = format!(
            "{admin} overrode the freeze for promotion {} of v{} to {}: {reason}",
            promotion.id, promotion.release, promotion.environment
        );
        let mut changed = event(
            admin,
            "promotion.override",
            &promotion.service,
            Some(&promotion.environment),
            format!("promotion {}", promotion.id),
            summary,
        );
        changed.after = Some(serde_json::json!({ "override": "freeze", "reason": reason }));
        append_with(&mut tx, changed).await?;
        tx.commit().await?;
        Ok(())
    }
}
