//! What the CI engine tells its listeners as it happens: run states and log lines.

use serde::Serialize;
use sluice_store::{LogLine, RunStatus};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Run { run_id: i64, status: RunStatus },
    Log { run_id: i64, line: LogLine },
}
