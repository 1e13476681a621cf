//! The index of stored artifacts; their bytes live in the data directory by sha256.

use serde::Serialize;
use sqlx::FromRow;

use crate::{Result, Store, now_ms};

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Artifact {
    pub sha256: String,
    pub size: i64,
    pub created_at: i64,
}

impl Store {
    /// Records an artifact; storing the same content twice is a no-op.
    pub async fn insert_artifact(&self, sha256: &str, size: i64) -> Result<()> {
        sqlx::query("INSERT INTO artifacts (sha256, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
            .bind(sha256)
            .bind(size)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn artifact(&self, sha256: &str) -> Result<Option<Artifact>> {
        Ok(
            sqlx::query_as("SELECT sha256, size, created_at FROM artifacts WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
