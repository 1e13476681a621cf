//! Changes (one commit on one ref), their runs, and each run's jobs and steps.

use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, FromRow};

use crate::changelog::append_with;
use crate::{Dialect, NewChangeEvent, Result, Store, StoreError, now_ms};

/// The state of a run, a job or a step. `Skipped` is for jobs and steps
/// only; `Lost` for a job whose agent went silent with no retry left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Success,
    Failure,
    Cancelled,
    Error,
    Skipped,
    Lost,
}

impl RunStatus {
    const ALL: [RunStatus; 8] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Success,
        RunStatus::Failure,
        RunStatus::Cancelled,
        RunStatus::Error,
        RunStatus::Skipped,
        RunStatus::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failure => "failure",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Error => "error",
            RunStatus::Skipped => "skipped",
            RunStatus::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for RunStatus {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        RunStatus::parse(&text).ok_or_else(|| format!("unknown status `{text}`"))
    }
}

#[derive(Clone, Debug)]
pub struct NewChange {
    pub repo_id: i64,
    pub ref_name: String,
    pub branch: String,
    pub sha: String,
    /// `mainline` or `review`.
    pub kind: String,
    /// `hook`, `poll`, `webhook` or `add`: how sluice learned of it.
    pub source: String,
    pub pull_request: Option<i64>,
    pub title: String,
    pub author: String,
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Change {
    pub id: i64,
    pub repo_id: i64,
    pub repo: String,
    pub ref_name: String,
    pub branch: String,
    pub sha: String,
    pub kind: String,
    pub source: String,
    pub pull_request: Option<i64>,
    pub title: String,
    pub author: String,
    pub created_at: i64,
    /// The status of the change's latest run.
    pub status: Option<String>,
    pub run_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Run {
    pub id: i64,
    pub change_id: i64,
    pub repo_id: i64,
    pub repo: String,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub reason: Option<String>,
    pub service: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub artifact_sha256: Option<String>,
    pub ref_name: String,
    pub branch: String,
    pub sha: String,
    pub kind: String,
    pub title: String,
    pub pull_request: Option<i64>,
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Job {
    pub id: i64,
    pub run_id: i64,
    pub name: String,
    pub position: i64,
    #[serde(skip)]
    pub needs: String,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub reason: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    #[sqlx(skip)]
    pub steps: Vec<Step>,
    /// Each claim by an agent, for a job that runs on agents.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<crate::JobAttempt>,
}

impl Job {
    pub fn needs(&self) -> Vec<String> {
        serde_json::from_str(&self.needs).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Step {
    pub id: i64,
    pub job_id: i64,
    pub position: i64,
    pub name: String,
    pub command: String,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub exit_code: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A run with its change's jobs and steps, as `GET /runs/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub jobs: Vec<Job>,
}

/// A job as the pipeline declares it, before it runs.
#[derive(Clone, Debug)]
pub struct PlannedJob {
    pub name: String,
    pub needs: Vec<String>,
    /// `(name, command)` of each step, in order.
    pub steps: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub repo: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: i64,
}

pub(crate) const RUN_SELECT: &str =
    "SELECT r.id, r.change_id, r.repo_id, p.name AS repo, r.status, r.reason, r.service,
        r.created_at, r.started_at, r.finished_at, r.artifact_sha256,
        c.ref_name, c.branch, c.sha, c.kind, c.title, c.pull_request
    FROM runs r JOIN changes c ON c.id = r.change_id JOIN repos p ON p.id = r.repo_id";

impl Store {
    /// Records a change and queues its run; `None` when that commit on that ref was seen before.
    pub async fn insert_change(&self, change: NewChange) -> Result<Option<Run>> {
        let mut tx = self.begin().await?;
        let change_id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO changes (repo_id, ref_name, branch, sha, kind, source, pull_request, title, author, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (repo_id, ref_name, sha) DO NOTHING RETURNING id",
        )
        .bind(change.repo_id)
        .bind(&change.ref_name)
        .bind(&change.branch)
        .bind(&change.sha)
        .bind(&change.kind)
        .bind(&change.source)
        .bind(change.pull_request)
        .bind(&change.title)
        .bind(&change.author)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(change_id) = change_id else {
            return Ok(None);
        };
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (change_id, repo_id, status, created_at) VALUES ($1, $2, 'queued', $3) RETURNING id",
        )
        .bind(change_id)
        .bind(change.repo_id)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let short = &change.sha[..change.sha.len().min(10)];
        let event = NewChangeEvent {
            actor: change.author.clone(),
            kind: format!("change.{}", change.kind),
            subject: format!("run {run_id}"),
            summary: format!(
                "{} {short} on {}: {}",
                change.kind, change.branch, change.title
            ),
            after: Some(
                serde_json::json!({ "ref": change.ref_name, "sha": change.sha, "run": run_id, "source": change.source }),
            ),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(Some(self.run(run_id).await?))
    }

    pub async fn changes(&self, repo: Option<&str>, limit: i64) -> Result<Vec<Change>> {
        Ok(sqlx::query_as(
            "SELECT c.id, c.repo_id, p.name AS repo, c.ref_name, c.branch, c.sha, c.kind, c.source, c.pull_request,
                    c.title, c.author, c.created_at,
                    (SELECT r.status FROM runs r WHERE r.change_id = c.id ORDER BY r.id DESC LIMIT 1) AS status,
                    (SELECT r.id FROM runs r WHERE r.change_id = c.id ORDER BY r.id DESC LIMIT 1) AS run_id
             FROM changes c JOIN repos p ON p.id = c.repo_id
             WHERE ($1 IS NULL OR p.name = $1)
             ORDER BY c.id DESC LIMIT $2",
        )
        .bind(repo)
        .bind(if limit > 0 { limit } else { 100 })
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn run(&self, id: i64) -> Result<Run> {
        sqlx::query_as(AssertSqlSafe(format!("{RUN_SELECT} WHERE r.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "run",
                id: id.to_string(),
            })
    }

    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "{RUN_SELECT} WHERE ($1 IS NULL OR p.name = $1) AND ($2 IS NULL OR r.status = $2) ORDER BY r.id DESC LIMIT $3"
        )))
        .bind(&filter.repo)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(if filter.limit > 0 { filter.limit } else { 100 })
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn run_detail(&self, id: i64) -> Result<RunDetail> {
        let run = self.run(id).await?;
        let mut jobs = self.jobs(id).await?;
        for attempt in self.job_attempts(id).await? {
            if let Some(job) = jobs.iter_mut().find(|j| j.id == attempt.job_id) {
                job.attempts.push(attempt);
            }
        }
        Ok(RunDetail { run, jobs })
    }

    pub async fn jobs(&self, run_id: i64) -> Result<Vec<Job>> {
        let mut jobs: Vec<Job> = sqlx::query_as(
            "SELECT id, run_id, name, position, needs, status, reason, started_at, finished_at
             FROM jobs WHERE run_id = $1 ORDER BY position",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let steps: Vec<Step> = sqlx::query_as(
            "SELECT s.id, s.job_id, s.position, s.name, s.command, s.status, s.exit_code, s.started_at, s.finished_at
             FROM steps s JOIN jobs j ON j.id = s.job_id WHERE j.run_id = $1 ORDER BY s.job_id, s.position",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        for step in steps {
            if let Some(job) = jobs.iter_mut().find(|j| j.id == step.job_id) {
                job.steps.push(step);
            }
        }
        Ok(jobs)
    }

    /// Takes the oldest queued run and marks it running; several servers may
    /// share a PostgreSQL database, so the claim skips rows another one holds.
    pub async fn claim_queued_run(&self) -> Result<Option<Run>> {
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        let id: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE runs SET status = 'running', started_at = $1
             WHERE id = (SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1 {lock})
               AND status = 'queued'
             RETURNING id"
        )))
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        match id {
            Some(id) => Ok(Some(self.run(id).await?)),
            None => Ok(None),
        }
    }

    /// Creates the jobs and steps of a run in one transaction.
    pub async fn insert_jobs(&self, run_id: i64, service: &str, jobs: &[PlannedJob]) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE runs SET service = $1 WHERE id = $2")
            .bind(service)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        for (position, PlannedJob { name, needs, steps }) in jobs.iter().enumerate() {
            let job_id: i64 = sqlx::query_scalar(
                "INSERT INTO jobs (run_id, name, position, needs, status) VALUES ($1, $2, $3, $4, 'queued') RETURNING id",
            )
            .bind(run_id)
            .bind(name)
            .bind(position as i64)
            .bind(serde_json::to_string(needs).unwrap_or_default())
            .fetch_one(&mut *tx)
            .await?;
            for (index, (step_name, command)) in steps.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO steps (job_id, position, name, command, status) VALUES ($1, $2, $3, $4, 'queued')",
                )
                .bind(job_id)
                .bind(index as i64)
                .bind(step_name)
                .bind(command)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_job_status(
        &self,
        job_id: i64,
        status: RunStatus,
        reason: Option<&str>,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET status = $1, reason = COALESCE($2, reason),
                 started_at = CASE WHEN $1 = 'running' THEN $3 ELSE started_at END,
                 finished_at = CASE WHEN $1 IN ('running', 'queued') THEN NULL ELSE $3 END
             WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_step_status(
        &self,
        step_id: i64,
        status: RunStatus,
        exit_code: Option<i32>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE steps SET status = $1, exit_code = $2,
                 started_at = CASE WHEN $1 = 'running' THEN $3 ELSE started_at END,
                 finished_at = CASE WHEN $1 IN ('running', 'queued') THEN NULL ELSE $3 END
             WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(exit_code.map(i64::from))
        .bind(now_ms())
        .bind(step_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a run and logs it; returns false when it had already ended.
    pub async fn finish_run(
        &self,
        run_id: i64,
        status: RunStatus,
        reason: Option<&str>,
        artifact: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        let done = sqlx::query(
            "UPDATE runs SET status = $1, reason = $2, artifact_sha256 = $3, finished_at = $4
             WHERE id = $5 AND status IN ('queued', 'running')",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(artifact)
        .bind(now_ms())
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // Whatever was still pending inside the run ends with it.
        let leftover = if status == RunStatus::Success {
            "skipped"
        } else {
            status.as_str()
        };
        for table in ["jobs", "steps"] {
            let scope = if table == "jobs" {
                "run_id = $3"
            } else {
                "job_id IN (SELECT id FROM jobs WHERE run_id = $3)"
            };
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE {table} SET status = CASE WHEN status = 'queued' THEN 'skipped' ELSE $1 END, finished_at = $2
                 WHERE {scope} AND status IN ('queued', 'running')"
            )))
            .bind(leftover)
            .bind(now_ms())
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        let service: Option<String> = sqlx::query_scalar("SELECT service FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
        let event = NewChangeEvent {
            actor: "sluice".into(),
            kind: "run.finished".into(),
            service,
            subject: format!("run {run_id}"),
            summary: match reason {
                Some(reason) => format!("run {run_id} ended {status}: {reason}"),
                None => format!("run {run_id} ended {status}"),
            },
            after: Some(serde_json::json!({ "status": status, "artifact": artifact })),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Unfinished runs of the same repository and ref, older than `run_id`.
    pub async fn superseded_runs(&self, run: &Run) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT r.id FROM runs r JOIN changes c ON c.id = r.change_id
             WHERE r.repo_id = $1 AND c.ref_name = $2 AND r.id < $3 AND r.status IN ('queued', 'running')",
        )
        .bind(run.repo_id)
        .bind(&run.ref_name)
        .bind(run.id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Green mainline runs with an artifact that made no release and are
    /// newer than their repository's newest release, less those already
    /// found off their branch: what the release maker has to do. One
    /// range per repository (`runs_repo`), so a pass reads what is new
    /// since each newest release, not every run ever recorded.
    pub async fn runs_awaiting_release(&self) -> Result<Vec<Run>> {
        let repos: Vec<i64> = sqlx::query_scalar("SELECT id FROM repos ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut awaiting = Vec::new();
        for repo in repos {
            let newest: Option<i64> =
                sqlx::query_scalar("SELECT MAX(run_id) FROM releases WHERE repo_id = $1")
                    .bind(repo)
                    .fetch_one(&self.pool)
                    .await?;
            let runs: Vec<Run> = sqlx::query_as(AssertSqlSafe(format!(
                "{RUN_SELECT} WHERE r.repo_id = $1 AND r.id > $2
                   AND r.status = 'success' AND c.kind = 'mainline'
                   AND r.artifact_sha256 IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM releases x WHERE x.run_id = r.id)
                   AND NOT EXISTS (SELECT 1 FROM change_log l WHERE l.kind = 'release.skipped' AND l.subject = 'run ' || r.id)
                 ORDER BY r.id"
            )))
            .bind(repo)
            .bind(newest.unwrap_or(0))
            .fetch_all(&self.pool)
            .await?;
            awaiting.extend(runs);
        }
        awaiting.sort_by_key(|r| r.id);
        Ok(awaiting)
    }

    /// Runs left `running` by a server that stopped; each becomes `error`.
    pub async fn interrupt_running_runs(&self) -> Result<Vec<i64>> {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE status = 'running'")
            .fetch_all(&self.pool)
            .await?;
        for id in &ids {
            self.finish_run(
                *id,
                RunStatus::Error,
                Some("interrupted: the server stopped while this run was running"),
                None,
            )
            .await?;
        }
        Ok(ids)
    }
}
