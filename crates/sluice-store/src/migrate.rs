//! Schema migrations: numbered, applied once each in a transaction at connect.
//! Add a migration by appending to `MIGRATIONS`; never edit a released one.

use sqlx::{AssertSqlSafe, Executor};

use crate::{Dialect, Result, Store, now_ms};

/// `{id}` stands for an auto-increment primary key in the dialect at hand,
/// `{blob}` for a column of bytes.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_foundation.sql")),
    (2, include_str!("migrations/0002_deploy.sql")),
    (3, include_str!("migrations/0003_experiments.sql")),
    (4, include_str!("migrations/0004_incidents.sql")),
    (5, include_str!("migrations/0005_traffic.sql")),
    (6, include_str!("migrations/0006_review_secrets.sql")),
    (7, include_str!("migrations/0007_notifications.sql")),
    (8, include_str!("migrations/0008_experiment_users.sql")),
    (9, include_str!("migrations/0009_experiment_commands.sql")),
    (10, include_str!("migrations/0010_agents.sql")),
    (11, include_str!("migrations/0011_controllers.sql")),
    (12, include_str!("migrations/0012_ui_sessions.sql")),
    (13, include_str!("migrations/0013_instance_experiment.sql")),
    (14, include_str!("migrations/0014_placements.sql")),
    (15, include_str!("migrations/0015_servers.sql")),
    (16, include_str!("migrations/0016_agent_jobs.sql")),
    (17, include_str!("migrations/0017_held_webhooks.sql")),
    (18, include_str!("migrations/0018_controller_lookups.sql")),
];

pub async fn run(store: &Store) -> Result<()> {
    let id = match store.dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    let blob = match store.dialect {
        Dialect::Sqlite => "BLOB",
        Dialect::Postgres => "BYTEA",
    };
    let mut conn = store.pool.acquire().await?;
    if store.dialect == Dialect::Postgres {
        // Several servers may share one database; one migrates at a time.
        conn.execute("SELECT pg_advisory_lock(7300)").await?;
    }
    conn.execute("CREATE TABLE IF NOT EXISTS sluice_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .await?;
    let result = async {
        for (version, sql) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM sluice_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *conn)
                    .await?;
            if done.is_some() {
                continue;
            }
            tracing::info!(version, "applying migration");
            conn.execute("BEGIN").await?;
            let sql = sql.replace("{id}", id).replace("{blob}", blob);
            for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                if let Err(e) = conn.execute(AssertSqlSafe(statement)).await {
                    conn.execute("ROLLBACK").await?;
                    return Err(e.into());
                }
            }
            sqlx::query("INSERT INTO sluice_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
            conn.execute("COMMIT").await?;
        }
        Ok(())
    }
    .await;
    if store.dialect == Dialect::Postgres {
        conn.execute("SELECT pg_advisory_unlock(7300)").await?;
    }
    result
}
