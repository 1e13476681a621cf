//! Sluice's state: one `Store` over SQLite (the default, in WAL mode under the
//! data directory) or PostgreSQL, with migrations run at connect and the
//! append-only change log that every part writes to.
//!
//! The SQL is shared between the two databases through sqlx's `Any` driver;
//! what differs (DDL for ids, locking) is in [`Dialect`].

mod agents;
mod artifacts;
mod changelog;
mod controllers;
mod deploy;
mod experiments;
mod inbox;
mod incidents;
mod logs;
mod migrate;
mod notify;
mod placements;
mod processes;
mod repos;
mod rules;
mod runs;
mod sessions;
mod status;
mod tokens;
mod traffic;
mod wake;

pub mod testing;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

pub use agents::{Agent, AgentHello, Expired, JobAttempt, JobLease, LeaseState};
pub use artifacts::Artifact;
pub use changelog::{ChangeEvent, ChangeQuery, NewChangeEvent};
pub use controllers::{ControllersLease, Fence};
pub use deploy::{
    Approval, Deployment, EnvState, Flag, Instance, NewDeployment, Promotion, Release,
};
pub use experiments::{Experiment, ExperimentUser};
pub use inbox::{HELD_TAKEN_FOR_MS, HeldWebhook};
pub use incidents::{Incident, NewIncident, parse_incident_id};
pub use logs::LogLine;
pub use notify::{
    Attempt, AttemptResult, Channel, GIVE_UP_AFTER_MS, Message, MessageStatus, NewChannel,
    RouteRow, Unbatched,
};
pub use placements::{Placement, Reported};
pub use processes::TrackedProcess;
pub use repos::{NewRepo, Repo, Secret};
pub use rules::{NewRule, RuleBlock, RuleRecord, parse_rule_id};
pub use runs::{Change, Job, NewChange, PlannedJob, Run, RunDetail, RunFilter, RunStatus, Step};
pub use sessions::UiSession;
pub use status::{
    DeploymentCause, DeploymentStatus, DeploymentStrategy, ExperimentCommand, ExperimentStatus,
    IncidentStatus, IncidentTrigger, InstanceState, PromotionStatus,
};
pub use tokens::{Role, TokenRecord};
pub use traffic::{TRAFFIC_BUCKET_MS, TrafficBucket};
pub use wake::{Notice, Topic};

/// The database sluice keeps its state in.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    wakes: std::sync::Arc<wake::Wakes>,
    /// The controllers' term this server's acting writes must still hold.
    fence: controllers::FenceCell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the database cannot be written ({0}); check its file's and directory's permissions, or that it is not a read-only replica"
    )]
    ReadOnly(String),
    #[error(
        "this server lost the controllers' lease (it held term {0}); another server runs them now"
    )]
    Fenced(i64),
    #[error("unsupported database URL `{0}`: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl Store {
    /// A transaction that takes SQLite's write lock at once: a deferred one
    /// that reads and then writes fails with SQLITE_BUSY when another
    /// connection wrote in between, instead of waiting its turn.
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        })
    }

    /// Connects to `url` (`sqlite://PATH` or `postgres://…`) and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        if dialect == Dialect::Sqlite {
            // One writer at a time is all SQLite allows; WAL lets readers go on meanwhile.
            options = options.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
                        .await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(16);
        }
        let pool = options.connect(url).await?;
        let wakes = wake::Wakes::new();
        if dialect == Dialect::Postgres {
            wake::listen(url.to_string(), std::sync::Arc::downgrade(&wakes));
        }
        let store = Store {
            pool,
            dialect,
            wakes,
            fence: Default::default(),
        };
        migrate::run(&store).await?;
        store.check_writable().await?;
        Ok(store)
    }

    /// Fails when the database can be read but not written (a read-only
    /// file or file system, a replica): better at start than at the first
    /// change, after answering as healthy.
    async fn check_writable(&self) -> Result<()> {
        sqlx::query(
            "INSERT INTO write_probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::ReadOnly(e.to_string()))?;
        Ok(())
    }

    /// The SQLite database file under a data directory, created if missing.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            sluice_spec::Layout::new(data_dir).database().display()
        )
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch: how every time is stored.
/// A positive id, bare or after one of `prefixes` (`INC-7`, `R3`); `what`
/// ends the error: "`x` is not WHAT".
fn parse_named_id(text: &str, prefixes: &[&str], what: &str) -> Result<i64, String> {
    let digits = prefixes
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .unwrap_or(text);
    digits
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0 && digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            let shown: String = text.chars().take(40).collect();
            format!("`{}` is not {what}", shown.escape_debug())
        })
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
