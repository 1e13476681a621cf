//! Run logs, stored in chunks of lines as they arrive, read back in order.

use serde::{Deserialize, Serialize};

use crate::{Result, Store};

/// One line of a step's output; `seq` orders the lines of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: i64,
    /// Milliseconds since the epoch when the line was read.
    pub at: i64,
    pub job: String,
    pub step: i64,
    /// `stdout`, `stderr`, or `sluice` for the executor's own words.
    pub stream: String,
    pub line: String,
}

impl Store {
    pub async fn append_log_chunk(&self, run_id: i64, lines: &[LogLine]) -> Result<()> {
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO log_chunks (run_id, first_seq, last_seq, lines) VALUES ($1, $2, $3, $4)",
        )
        .bind(run_id)
        .bind(first.seq)
        .bind(last.seq)
        .bind(serde_json::to_string(lines).unwrap_or_default())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// At most `limit` lines of a run with `seq` greater than `after`, read
    /// a few chunks at a time so that a page never loads the whole log.
    pub async fn logs_page(&self, run_id: i64, after: i64, limit: usize) -> Result<Vec<LogLine>> {
        let mut lines = Vec::new();
        let mut after = after;
        while lines.len() < limit {
            let chunks: Vec<(i64, String)> = sqlx::query_as(
                "SELECT last_seq, lines FROM log_chunks WHERE run_id = $1 AND last_seq > $2 ORDER BY first_seq LIMIT 16",
            )
            .bind(run_id)
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
            let Some((last, _)) = chunks.last() else {
                break;
            };
            let seen = after;
            after = *last;
            lines.extend(
                chunks
                    .iter()
                    .flat_map(|(_, c)| serde_json::from_str::<Vec<LogLine>>(c).unwrap_or_default())
                    .filter(|l| l.seq > seen),
            );
        }
        lines.truncate(limit);
        Ok(lines)
    }

    /// The last `limit` lines of a run.
    pub async fn log_tail(&self, run_id: i64, limit: usize) -> Result<Vec<LogLine>> {
        let mut chunks: Vec<String> = Vec::new();
        let mut count = 0;
        let mut before = i64::MAX;
        while count < limit {
            let page: Vec<(i64, String)> = sqlx::query_as(
                "SELECT first_seq, lines FROM log_chunks WHERE run_id = $1 AND first_seq < $2 ORDER BY first_seq DESC LIMIT 16",
            )
            .bind(run_id)
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
            let Some((first, _)) = page.last() else { break };
            before = *first;
            for (_, chunk) in page {
                count += chunk.matches("\"seq\":").count();
                chunks.push(chunk);
            }
        }
        let mut lines: Vec<LogLine> = chunks
            .iter()
            .rev()
            .flat_map(|c| serde_json::from_str::<Vec<LogLine>>(c).unwrap_or_default())
            .collect();
        let cut = lines.len().saturating_sub(limit);
        lines.drain(..cut);
        Ok(lines)
    }

    /// Deletes a run's stored chunks whose lines all come at or before `seq`.
    pub async fn drop_log_chunks(&self, run_id: i64, through_seq: i64) -> Result<()> {
        sqlx::query("DELETE FROM log_chunks WHERE run_id = $1 AND last_seq <= $2")
            .bind(run_id)
            .bind(through_seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Lines of a run with `seq` greater than `after` (pass -1 for all).
    pub async fn logs(&self, run_id: i64, after: i64) -> Result<Vec<LogLine>> {
        let chunks: Vec<String> = sqlx::query_scalar(
            "SELECT lines FROM log_chunks WHERE run_id = $1 AND last_seq > $2 ORDER BY first_seq",
        )
        .bind(run_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(chunks
            .iter()
            .flat_map(|c| serde_json::from_str::<Vec<LogLine>>(c).unwrap_or_default())
            .filter(|l| l.seq > after)
            .collect())
    }
}
