//! What a server and its agents say to each other over HTTP: the agent's
//! hello, a claimed job, its log lines, step ends and outcome. Every report
//! on a job carries the lease's generation, so that the server can refuse
//! one from an agent whose lease was taken over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_store::RunStatus;

/// The most log lines one report carries.
pub const MAX_LOG_LINES: usize = 1000;
/// The longest line an agent sends; longer output is split before.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What an agent says of itself when it registers.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hello {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub cores: u32,
    pub memory_mb: u64,
    pub version: String,
    /// The IP address its host's instances listen on and the server and
    /// entry points reach them at; by default, the one it connects from.
    #[serde(default)]
    pub address: Option<String>,
    /// How many jobs it runs at once; 0: none (environments only). A job
    /// waiting for an agent counts only those that run jobs.
    #[serde(default = "one_job")]
    pub jobs: u32,
}

fn one_job() -> u32 {
    1
}

/// The server's answer to a hello: how often to be heard from.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registered {
    pub agent: String,
    /// An agent silent this long loses its jobs.
    pub lease_ms: u64,
    /// How often it heartbeats and renews each lease it holds.
    pub renew_ms: u64,
}

/// A step as the agent runs it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WireStep {
    pub name: String,
    pub run: String,
}

/// A job as an agent gets it when it claims it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claimed {
    pub job_id: i64,
    /// Names this claim in every report on it.
    pub generation: i64,
    pub run_id: i64,
    pub repo: String,
    pub sha: String,
    pub job: String,
    pub steps: Vec<WireStep>,
    /// The job's `env`, the run's `SLUICE_*` facts and the secrets the run
    /// gets: sent to the agent that claimed the job, and to no other.
    pub env: BTreeMap<String, String>,
    /// The job's `timeout`.
    pub timeout_ms: u64,
    /// What is left of it at the claim: waiting for an agent counts.
    #[serde(default)]
    pub left_ms: u64,
    pub lease_ms: u64,
    pub renew_ms: u64,
    /// What to pack and upload once the job succeeds, when the run's
    /// artifact comes from this job (`artifact.from`).
    #[serde(default)]
    pub artifact: Option<Pack>,
}

/// The artifact's paths: `paths` must exist; `if_present` go in when they do
/// (`sluice.yaml`, the rules, templates, seed and scrub scripts).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pack {
    pub paths: Vec<String>,
    pub if_present: Vec<String>,
}

/// Which claim an uploaded artifact is of, and what it must hash to.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::IntoParams)]
pub struct Upload {
    pub generation: i64,
    pub sha256: String,
}

/// Which claim a report is about.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
pub struct Generation {
    pub generation: i64,
}

/// The server's answer to a renewal.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Renewal {
    /// The run was cancelled: stop the step.
    pub cancel: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WireLine {
    /// The step's index, or -1 for the agent's own words about the job.
    pub step: i64,
    /// `stdout`, `stderr` or `sluice`.
    pub stream: String,
    pub line: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogBatch {
    pub generation: i64,
    pub lines: Vec<WireLine>,
}

/// A step began (`running`) or ended.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepReport {
    pub generation: i64,
    pub step: usize,
    #[schema(value_type = String)]
    pub status: RunStatus,
    pub exit_code: Option<i32>,
}

/// How a job ended, as its agent reports it, and as the server keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finished {
    pub generation: i64,
    #[schema(value_type = String)]
    pub status: RunStatus,
    pub reason: Option<String>,
}
