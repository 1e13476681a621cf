//! A/B experiments as recorded: their state, the decisions taken at each
//! look that changed something, and the final report.

use serde::Serialize;
use sqlx::{AssertSqlSafe, FromRow};

use crate::changelog::append_with;
use crate::status::*;
use crate::{NewChangeEvent, Release, Result, Store, StoreError, now_ms};

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Experiment {
    pub id: i64,
    pub service: String,
    pub environment: String,
    pub release_id: i64,
    /// B's release number.
    pub release: i64,
    pub baseline_release_id: i64,
    #[sqlx(try_from = "String")]
    pub status: ExperimentStatus,
    pub step: i64,
    pub weight_bp: i64,
    /// JSON: config values B runs with besides the environment's.
    pub overrides: String,
    /// JSON: goals given at its start, replacing its strategy's (`[]`: none).
    pub goals: String,
    pub deployment_id: Option<i64>,
    pub reason: Option<String>,
    /// JSON array of decisions.
    pub decisions: String,
    pub report: Option<String>,
    pub created_at: i64,
    pub step_started_at: i64,
    pub finished_at: Option<i64>,
}

impl Experiment {
    pub fn is_open(&self) -> bool {
        self.status.is_open()
    }
}

const SELECT: &str = "SELECT x.id, x.service, x.environment, x.release_id, r.number AS release, x.baseline_release_id, x.status,
        x.step, x.weight_bp, x.overrides, x.goals, x.deployment_id, x.reason, x.decisions, x.report, x.created_at,
        x.step_started_at, x.finished_at
    FROM experiments x JOIN releases r ON r.id = x.release_id";

impl Store {
    /// Opens an experiment, `starting`: the experiments loop starts B's
    /// group and records it as started (`experiment.started`) once users see B.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_experiment(
        &self,
        b: &Release,
        baseline: &Release,
        env: &str,
        weight_bp: i64,
        overrides: &serde_json::Value,
        goals: &serde_json::Value,
        deployment: i64,
    ) -> Result<Experiment> {
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO experiments (service, environment, release_id, baseline_release_id, status, step, weight_bp, overrides,
                 deployment_id, decisions, created_at, step_started_at, goals)
             VALUES ($1, $2, $3, $4, 'starting', 0, $5, $6, $7, '[]', $8, $8, $9) RETURNING id",
        )
        .bind(&b.service)
        .bind(env)
        .bind(b.id)
        .bind(baseline.id)
        .bind(weight_bp)
        .bind(overrides.to_string())
        .bind(deployment)
        .bind(now)
        .bind(goals.to_string())
        .fetch_one(&self.pool)
        .await?;
        self.experiment(id).await
    }

    pub async fn experiment(&self, id: i64) -> Result<Experiment> {
        sqlx::query_as(AssertSqlSafe(format!("{SELECT} WHERE x.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "experiment",
                id: id.to_string(),
            })
    }

    /// The experiments still running (of one service, or all), oldest
    /// first: what the controllers look at each pass, read without the
    /// ended ones and their reports.
    pub async fn open_experiments(&self, service: Option<&str>) -> Result<Vec<Experiment>> {
        let open: Vec<String> = ExperimentStatus::ALL
            .iter()
            .filter(|s| s.is_open())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "{SELECT} WHERE ($1 IS NULL OR x.service = $1) AND x.status IN ({}) ORDER BY x.id",
            open.join(", ")
        )))
        .bind(service)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn experiments(&self, service: Option<&str>, limit: i64) -> Result<Vec<Experiment>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "{SELECT} WHERE ($1 IS NULL OR x.service = $1) ORDER BY x.id DESC LIMIT $2"
        )))
        .bind(service)
        .bind(if limit > 0 { limit } else { 50 })
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves an experiment on and records why, in its decisions and the change log.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_experiment(
        &self,
        id: i64,
        status: ExperimentStatus,
        step: i64,
        weight_bp: i64,
        step_started_at: i64,
        decision: &serde_json::Value,
        kind: &str,
        summary: &str,
        actor: &str,
    ) -> Result<()> {
        let before = self.experiment(id).await?;
        let mut decisions: Vec<serde_json::Value> =
            serde_json::from_str(&before.decisions).unwrap_or_default();
        decisions.push(decision.clone());
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        let finished = if status.is_open() {
            None
        } else {
            Some(now_ms())
        };
        sqlx::query(
            "UPDATE experiments SET status = $1, step = $2, weight_bp = $3, step_started_at = $4, decisions = $5,
                 reason = $6, finished_at = COALESCE($7, finished_at) WHERE id = $8",
        )
        .bind(status.as_str())
        .bind(step)
        .bind(weight_bp)
        .bind(step_started_at)
        .bind(serde_json::to_string(&decisions).unwrap_or_default())
        .bind(decision["reason"].as_str())
        .bind(finished)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: kind.to_string(),
            service: Some(before.service.clone()),
            environment: Some(before.environment.clone()),
            subject: format!("experiment {id}"),
            summary: summary.to_string(),
            before: Some(
                serde_json::json!({ "status": before.status, "weight": before.weight_bp as f64 / 100.0 }),
            ),
            after: Some(
                serde_json::json!({ "status": status, "weight": weight_bp as f64 / 100.0, "decision": decision }),
            ),
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_experiment_report(&self, id: i64, report: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE experiments SET report = $1 WHERE id = $2")
            .bind(report.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// One user an experiment with goals counted (see `sluice_proxy::goals`).
#[derive(Clone, Debug, PartialEq, FromRow)]
pub struct ExperimentUser {
    pub user_id: i64,
    pub b: i64,
    pub share_b: f64,
    pub reached: i64,
    /// JSON `[[goal index, total], ...]`.
    pub totals: String,
}

impl Store {
    /// Keeps the users given (new ones added, known ones replaced), in one
    /// transaction.
    pub async fn save_experiment_users(
        &self,
        experiment: i64,
        users: &[ExperimentUser],
    ) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for user in users {
            sqlx::query(
                "INSERT INTO experiment_users (experiment_id, user_id, b, share_b, reached, totals) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (experiment_id, user_id) DO UPDATE SET \
                 b = excluded.b, share_b = excluded.share_b, reached = excluded.reached, totals = excluded.totals",
            )
            .bind(experiment)
            .bind(user.user_id)
            .bind(user.b)
            .bind(user.share_b)
            .bind(user.reached)
            .bind(&user.totals)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every user an experiment has kept.
    pub async fn experiment_users(&self, experiment: i64) -> Result<Vec<ExperimentUser>> {
        Ok(sqlx::query_as::<_, ExperimentUser>(
            "SELECT user_id, b, share_b, reached, totals FROM experiment_users WHERE experiment_id = $1",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Forgets an experiment's users (its test began counting afresh, or it ended).
    /// Keeps a person's command for the running experiment `experiment`.
    pub async fn add_experiment_command(
        &self,
        experiment: i64,
        command: ExperimentCommand,
        actor: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO experiment_commands (experiment_id, command, actor, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(experiment)
        .bind(command.as_str())
        .bind(actor)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The commands waiting for experiment `experiment`, oldest first, each
    /// with who sent it; each is handed out once, to whoever takes it first.
    pub async fn take_experiment_commands(
        &self,
        experiment: i64,
    ) -> Result<Vec<(ExperimentCommand, String)>> {
        let waiting: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, command, actor FROM experiment_commands
             WHERE experiment_id = $1 AND taken_at IS NULL ORDER BY id",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        let mut taken = Vec::new();
        for (id, command, actor) in waiting {
            let claimed = sqlx::query(
                "UPDATE experiment_commands SET taken_at = $1 WHERE id = $2 AND taken_at IS NULL",
            )
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if claimed == 1
                && let Some(command) = ExperimentCommand::parse(&command)
            {
                taken.push((command, actor));
            }
        }
        Ok(taken)
    }

    pub async fn forget_experiment_users(&self, experiment: i64) -> Result<()> {
        sqlx::query("DELETE FROM experiment_users WHERE experiment_id = $1")
            .bind(experiment)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
