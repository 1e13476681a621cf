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
