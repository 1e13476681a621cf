//! Processes that sluice started and must not leave behind: recorded when
//! spawned, removed when reaped, killed at the next start if still there.

use serde::Serialize;
use sqlx::FromRow;

use crate::{Result, Store, now_ms};

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct TrackedProcess {
    pub pid: i64,
    /// The process's start time in clock ticks since boot, so that a reused pid is never mistaken for ours.
    pub start_ticks: i64,
    pub host: String,
    pub run_id: Option<i64>,
    pub what: String,
}

impl Store {
    pub async fn track_process(&self, process: &TrackedProcess) -> Result<()> {
        sqlx::query(
            "INSERT INTO processes (pid, start_ticks, host, run_id, what, started_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (host, pid) DO UPDATE SET start_ticks = excluded.start_ticks, run_id = excluded.run_id, what = excluded.what",
        )
        .bind(process.pid)
        .bind(process.start_ticks)
        .bind(&process.host)
        .bind(process.run_id)
        .bind(&process.what)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn untrack_process(&self, host: &str, pid: i64) -> Result<()> {
        sqlx::query("DELETE FROM processes WHERE host = $1 AND pid = $2")
            .bind(host)
            .bind(pid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn tracked_processes(&self, host: &str) -> Result<Vec<TrackedProcess>> {
        Ok(sqlx::query_as(
            "SELECT pid, start_ticks, host, run_id, what FROM processes WHERE host = $1",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await?)
    }
}
