//! Agents and the jobs they claim: who registered with which labels, which
//! job is offered, which agent holds its lease until when, and each claim's
//! end. Every write from an agent names the lease's generation; a write
//! with an older one changes nothing (fencing).

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::FromRow;

use crate::changelog::append_with;
use crate::{NewChangeEvent, Result, Store, StoreError, now_ms};

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Agent {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub token_id: String,
    #[serde(skip)]
    #[sqlx(rename = "labels")]
    pub labels_json: String,
    pub cores: i64,
    pub memory_mb: i64,
    pub version: String,
    pub registered_at: i64,
    pub seen_at: i64,
    /// The address its host's instances listen on and are reached at.
    pub address: String,
    /// The jobs it runs at once; 0: none (environments only).
    pub jobs: i64,
}

impl Agent {
    pub fn labels(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels_json).unwrap_or_default()
    }

    /// Whether it carries every label `wanted` names, with the same value.
    pub fn matches(&self, wanted: &BTreeMap<String, String>) -> bool {
        let labels = self.labels();
        wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Where an offered job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Waiting for an agent with the labels to claim it.
    Offered,
    /// An agent holds it until `lease_until`, unless it renews.
    Claimed,
    /// It ended: the outcome says how.
    Ended,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Claimed => "claimed",
            LeaseState::Ended => "ended",
        }
    }
}

impl TryFrom<String> for LeaseState {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        [LeaseState::Offered, LeaseState::Claimed, LeaseState::Ended]
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("unknown lease state `{text}`"))
    }
}

#[derive(Clone, Debug, FromRow)]
pub struct JobLease {
    pub job_id: i64,
    pub run_id: i64,
    #[sqlx(rename = "labels")]
    pub labels_json: String,
    /// What the agent is given (less the secrets, added at the claim), as JSON.
    pub offer: String,
    #[sqlx(try_from = "String")]
    pub state: LeaseState,
    pub agent_id: Option<i64>,
    pub generation: i64,
    pub lease_until: Option<i64>,
    pub lost_left: i64,
    pub cancel_asked: i64,
    /// How it ended, as JSON, once it did.
    pub outcome: Option<String>,
    /// The sha256 of the artifact its agent packed and uploaded, if it did.
    pub artifact: Option<String>,
    /// When it was first offered.
    pub created_at: i64,
}

impl JobLease {
    pub fn labels(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels_json).unwrap_or_default()
    }

    /// Whether `agent_id` holds it now, by the claim `generation`.
    pub fn held_by(&self, agent_id: i64, generation: i64) -> bool {
        self.state == LeaseState::Claimed
            && self.agent_id == Some(agent_id)
            && self.generation == generation
    }
}

/// One claim of a job by an agent.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct JobAttempt {
    #[serde(skip)]
    pub job_id: i64,
    pub generation: i64,
    pub agent: String,
    /// `running`, `ended` or `lost`.
    pub state: String,
    pub claimed_at: i64,
    pub ended_at: Option<i64>,
    pub reason: Option<String>,
}

/// What a lease that ran out became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// Offered again, for another agent to claim.
    OfferedAgain,
    /// No retry was left: the job ended lost.
    Lost,
}

const AGENT_COLUMNS: &str =
    "id, name, token_id, labels, cores, memory_mb, version, registered_at, seen_at, address, jobs";
const LEASE_COLUMNS: &str = "job_id, run_id, labels, offer, state, agent_id, generation, lease_until, lost_left, cancel_asked, outcome, artifact, created_at";

/// Who registers, as the agent says it.
#[derive(Clone, Debug)]
pub struct AgentHello<'a> {
    pub name: &'a str,
    pub token_id: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub cores: i64,
    pub memory_mb: i64,
    pub version: &'a str,
    pub address: &'a str,
    pub jobs: i64,
}

impl Store {
    /// Registers an agent, or updates one that registers again under its
    /// name with the same token; a name held by another token is refused.
    pub async fn register_agent(&self, hello: AgentHello<'_>) -> Result<Agent> {
        let labels = serde_json::to_string(hello.labels).unwrap_or_default();
        let now = now_ms();
        let mut tx = self.begin().await?;
        let known: Option<(i64, String)> =
            sqlx::query_as("SELECT id, token_id FROM agents WHERE name = $1")
                .bind(hello.name)
                .fetch_optional(&mut *tx)
                .await?;
        match known {
            Some((_, token)) if token != hello.token_id => {
                return Err(StoreError::Conflict(format!(
                    "agent name `{}` is registered with another token",
                    hello.name
                )));
            }
            Some((id, _)) => {
                sqlx::query("UPDATE agents SET labels = $1, cores = $2, memory_mb = $3, version = $4, seen_at = $5, address = $6, jobs = $7 WHERE id = $8")
                    .bind(&labels)
                    .bind(hello.cores)
                    .bind(hello.memory_mb)
                    .bind(hello.version)
                    .bind(now)
                    .bind(hello.address)
                    .bind(hello.jobs)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query("INSERT INTO agents (name, token_id, labels, cores, memory_mb, version, registered_at, seen_at, address, jobs) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)")
                    .bind(hello.name)
                    .bind(hello.token_id)
                    .bind(&labels)
                    .bind(hello.cores)
                    .bind(hello.memory_mb)
                    .bind(hello.version)
                    .bind(now)
                    .bind(hello.address)
                    .bind(hello.jobs)
                    .execute(&mut *tx)
                    .await?;
                let event = NewChangeEvent {
                    actor: hello.name.to_string(),
                    kind: "agent.registered".into(),
                    subject: format!("agent {}", hello.name),
                    summary: format!(
                        "agent `{}` registered ({} cores, {} MiB, labels {labels})",
                        hello.name, hello.cores, hello.memory_mb
                    ),
                    ..Default::default()
                };
                append_with(&mut tx, event).await?;
            }
        }
        tx.commit().await?;
        self.agent_named(hello.name).await
    }

    pub async fn agent_named(&self, name: &str) -> Result<Agent> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "agent",
            id: name.to_string(),
        })
    }

    pub async fn agents(&self) -> Result<Vec<Agent>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {AGENT_COLUMNS} FROM agents ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Notes that the agent was heard from now.
    pub async fn agent_seen(&self, agent_id: i64) -> Result<()> {
        sqlx::query("UPDATE agents SET seen_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Offers a job to the agents whose labels include `labels`.
    pub async fn offer_job(
        &self,
        job_id: i64,
        run_id: i64,
        labels: &BTreeMap<String, String>,
        offer: &str,
        lost_left: u32,
    ) -> Result<()> {
        sqlx::query("INSERT INTO job_leases (job_id, run_id, labels, offer, state, generation, lost_left, cancel_asked, created_at) VALUES ($1, $2, $3, $4, 'offered', 0, $5, 0, $6)")
            .bind(job_id)
            .bind(run_id)
            .bind(serde_json::to_string(labels).unwrap_or_default())
            .bind(offer)
            .bind(i64::from(lost_left))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn job_lease(&self, job_id: i64) -> Result<JobLease> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {LEASE_COLUMNS} FROM job_leases WHERE job_id = $1"
        )))
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "job lease",
            id: job_id.to_string(),
        })
    }

    /// The oldest offered jobs, for an agent to pick one its labels match.
    pub async fn offered_jobs(&self, limit: i64) -> Result<Vec<JobLease>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {LEASE_COLUMNS} FROM job_leases WHERE state = 'offered' ORDER BY job_id LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Gives `agent` the lease of an offered job until `lease_ms` from now;
    /// returns the new generation, or `None` when another agent was first.
    pub async fn claim_job(
        &self,
        offered: &JobLease,
        agent: &Agent,
        lease_ms: i64,
    ) -> Result<Option<i64>> {
        let now = now_ms();
        let generation = offered.generation + 1;
        let mut tx = self.begin().await?;
        let claimed = sqlx::query("UPDATE job_leases SET state = 'claimed', agent_id = $1, generation = $2, lease_until = $3 WHERE job_id = $4 AND state = 'offered' AND generation = $5")
            .bind(agent.id)
            .bind(generation)
            .bind(now + lease_ms)
            .bind(offered.job_id)
            .bind(offered.generation)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        sqlx::query("INSERT INTO job_attempts (job_id, generation, agent, state, claimed_at) VALUES ($1, $2, $3, 'running', $4)")
            .bind(offered.job_id)
            .bind(generation)
            .bind(&agent.name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(generation))
    }

    /// Whether `agent_id` holds the job's lease at `generation`.
    pub async fn holds_lease(&self, job_id: i64, agent_id: i64, generation: i64) -> Result<bool> {
        match self.job_lease(job_id).await {
            Ok(lease) => Ok(lease.held_by(agent_id, generation)),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Extends the holder's lease; `None` when it no longer holds it (the
    /// job was taken over or ended), else whether a cancel was asked.
    pub async fn renew_lease(
        &self,
        job_id: i64,
        agent_id: i64,
        generation: i64,
        lease_ms: i64,
    ) -> Result<Option<bool>> {
        let renewed = sqlx::query("UPDATE job_leases SET lease_until = $1 WHERE job_id = $2 AND agent_id = $3 AND generation = $4 AND state = 'claimed'")
            .bind(now_ms() + lease_ms)
            .bind(job_id)
            .bind(agent_id)
            .bind(generation)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if renewed == 0 {
            return Ok(None);
        }
        let lease = self.job_lease(job_id).await?;
        Ok(Some(lease.cancel_asked != 0))
    }

    /// Records the artifact the holder uploaded; false when it is stale.
    pub async fn set_lease_artifact(
        &self,
        job_id: i64,
        agent_id: i64,
        generation: i64,
        sha256: &str,
    ) -> Result<bool> {
        let set = sqlx::query("UPDATE job_leases SET artifact = $1 WHERE job_id = $2 AND agent_id = $3 AND generation = $4 AND state = 'claimed'")
            .bind(sha256)
            .bind(job_id)
            .bind(agent_id)
            .bind(generation)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(set > 0)
    }

    /// Ends the job as its holder reports; false when the report is stale.
    pub async fn finish_lease(
        &self,
        job_id: i64,
        agent_id: i64,
        generation: i64,
        outcome: &str,
        reason: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let ended = sqlx::query("UPDATE job_leases SET state = 'ended', outcome = $1, lease_until = NULL WHERE job_id = $2 AND agent_id = $3 AND generation = $4 AND state = 'claimed'")
            .bind(outcome)
            .bind(job_id)
            .bind(agent_id)
            .bind(generation)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if ended == 0 {
            return Ok(false);
        }
        end_attempt(&mut tx, job_id, generation, "ended", reason).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Takes the lease back from a holder silent past it, once (by its
    /// generation): the job is offered again while retries are left and
    /// `may_retry`, else it ends with `outcome_if_lost`. `None` when the
    /// lease had not run out.
    pub async fn expire_lease(
        &self,
        job_id: i64,
        generation: i64,
        reason: &str,
        outcome_if_lost: &str,
        may_retry: bool,
    ) -> Result<Option<Expired>> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let lost_left: Option<i64> = sqlx::query_scalar("SELECT lost_left FROM job_leases WHERE job_id = $1 AND generation = $2 AND state = 'claimed' AND lease_until < $3")
            .bind(job_id)
            .bind(generation)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(lost_left) = lost_left else {
            return Ok(None);
        };
        let expired = if lost_left > 0 && may_retry {
            Expired::OfferedAgain
        } else {
            Expired::Lost
        };
        let (state, outcome) = match expired {
            Expired::OfferedAgain => ("offered", None),
            Expired::Lost => ("ended", Some(outcome_if_lost)),
        };
        sqlx::query("UPDATE job_leases SET state = $1, outcome = $2, lost_left = $3, agent_id = NULL, lease_until = NULL WHERE job_id = $4 AND generation = $5")
            .bind(state)
            .bind(outcome)
            .bind((lost_left - 1).max(0))
            .bind(job_id)
            .bind(generation)
            .execute(&mut *tx)
            .await?;
        end_attempt(&mut tx, job_id, generation, "lost", Some(reason)).await?;
        tx.commit().await?;
        Ok(Some(expired))
    }

    /// Asks the holder to cancel; an offer nobody claimed yet ends at once
    /// with `outcome`. Returns true when the offer was withdrawn so.
    pub async fn cancel_job_lease(&self, job_id: i64, outcome: &str) -> Result<bool> {
        sqlx::query("UPDATE job_leases SET cancel_asked = 1 WHERE job_id = $1")
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        let withdrawn = sqlx::query("UPDATE job_leases SET state = 'ended', outcome = $1 WHERE job_id = $2 AND state = 'offered'")
            .bind(outcome)
            .bind(job_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(withdrawn > 0)
    }

    /// Ends a job's lease whatever holds it (its run ended without it): the
    /// holder is refused at its next renewal and stops.
    pub async fn end_job_lease(&self, job_id: i64, outcome: &str) -> Result<()> {
        sqlx::query("UPDATE job_leases SET state = 'ended', cancel_asked = 1, outcome = $1, lease_until = NULL WHERE job_id = $2 AND state <> 'ended'")
            .bind(outcome)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every claim of the jobs of a run, oldest first.
    pub async fn job_attempts(&self, run_id: i64) -> Result<Vec<JobAttempt>> {
        Ok(sqlx::query_as(
            "SELECT a.job_id, a.generation, a.agent, a.state, a.claimed_at, a.ended_at, a.reason
             FROM job_attempts a JOIN jobs j ON j.id = a.job_id
             WHERE j.run_id = $1 ORDER BY a.job_id, a.generation",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

async fn end_attempt(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: i64,
    generation: i64,
    state: &str,
    reason: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE job_attempts SET state = $1, ended_at = $2, reason = $3 WHERE job_id = $4 AND generation = $5")
        .bind(state)
        .bind(now_ms())
        .bind(reason)
        .bind(job_id)
        .bind(generation)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
