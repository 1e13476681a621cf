//! Instances placed on agents' hosts: what each agent is to run, whether
//! the server asked it to stop one, and what the agent last reported of
//! each (its process, its exits). The agent's report is the truth about
//! its host; the rows are the server's wishes and its memory of that truth.

use serde::Serialize;
use sqlx::FromRow;

use crate::{Result, Store, now_ms};

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Placement {
    pub instance_id: String,
    pub agent: String,
    /// How to start it, as the agent reads it (JSON).
    pub spec: String,
    /// 1 when the server asked the agent to stop it.
    pub stop_asked: i64,
    pub pid: Option<i64>,
    pub exits: i64,
    /// 1 when the agent's last report had it running.
    pub running: i64,
    pub reported_at: Option<i64>,
    pub created_at: i64,
}

/// What an agent reports of one instance it runs.
#[derive(Clone, Debug)]
pub struct Reported {
    pub instance_id: String,
    pub pid: Option<i64>,
    pub exits: i64,
}

const COLUMNS: &str =
    "instance_id, agent, spec, stop_asked, pid, exits, running, reported_at, created_at";

impl Store {
    /// Asks `agent` to run an instance.
    pub async fn place(&self, instance_id: &str, agent: &str, spec: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        self.check_fence(&mut tx).await?;
        sqlx::query(
            "INSERT INTO placements (instance_id, agent, spec, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(instance_id)
        .bind(agent)
        .bind(spec)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Asks the agent running `instance_id` to stop it.
    pub async fn ask_stop(&self, instance_id: &str) -> Result<()> {
        sqlx::query("UPDATE placements SET stop_asked = $1 WHERE instance_id = $2")
            .bind(1i64)
            .bind(instance_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn placement(&self, instance_id: &str) -> Result<Option<Placement>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM placements WHERE instance_id = $1"
        )))
        .bind(instance_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every placement on `agent`, or on every agent.
    pub async fn placements(&self, agent: Option<&str>) -> Result<Vec<Placement>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM placements WHERE ($1 IS NULL OR agent = $1) ORDER BY created_at"
        )))
        .bind(agent)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes an agent's report of what its host runs: each placement it
    /// names is running with that process; every other of its placements
    /// is not, and one the server asked to stop is gone for good. Returns
    /// what the agent is to run now.
    pub async fn take_report(&self, agent: &str, running: &[Reported]) -> Result<Vec<Placement>> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE placements SET running = $1, reported_at = $2 WHERE agent = $3")
            .bind(0i64)
            .bind(now)
            .bind(agent)
            .execute(&mut *tx)
            .await?;
        for one in running {
            sqlx::query(
                "UPDATE placements SET running = $1, pid = $2, exits = $3 WHERE agent = $4 AND instance_id = $5",
            )
            .bind(1i64)
            .bind(one.pid)
            .bind(one.exits)
            .bind(agent)
            .bind(&one.instance_id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM placements WHERE agent = $1 AND stop_asked = $2 AND running = $3")
            .bind(agent)
            .bind(1i64)
            .bind(0i64)
            .execute(&mut *tx)
            .await?;
        let wanted = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM placements WHERE agent = $1 AND stop_asked = $2 ORDER BY created_at"
        )))
        .bind(agent)
        .bind(0i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(wanted)
    }

    /// Forgets a placement (its instance is stopped, or its host is gone).
    pub async fn drop_placement(&self, instance_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM placements WHERE instance_id = $1")
            .bind(instance_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
