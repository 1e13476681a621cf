//! The index of stored artifacts; their bytes live in the data directory by
//! sha256, and in the database too when servers share it (PostgreSQL).

use serde::Serialize;
use sqlx::FromRow;

use crate::{Result, Store, StoreError, now_ms};

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

/// How an artifact's bytes are cut for the database: small enough for one
/// statement, large enough that a big artifact is few rows.
const CHUNK: usize = 1 << 20;

impl Store {
    /// Keeps the bytes of the artifact at `path` in the database too (see
    /// [`Store::shares_artifacts`]), replacing any earlier, partial copy.
    pub async fn keep_artifact_bytes(&self, sha256: &str, path: &std::path::Path) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StoreError::Conflict(format!("artifact {}: {e}", path.display())))?;
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM artifact_chunks WHERE sha256 = $1")
            .bind(sha256)
            .execute(&mut *tx)
            .await?;
        let mut buffer = vec![0u8; CHUNK];
        for seq in 0i64.. {
            let mut filled = 0;
            while filled < CHUNK {
                let n = file.read(&mut buffer[filled..]).await.map_err(|e| {
                    StoreError::Conflict(format!("artifact {}: {e}", path.display()))
                })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 && seq > 0 {
                break;
            }
            sqlx::query("INSERT INTO artifact_chunks (sha256, seq, bytes) VALUES ($1, $2, $3)")
                .bind(sha256)
                .bind(seq)
                .bind(buffer[..filled].to_vec())
                .execute(&mut *tx)
                .await?;
            if filled < CHUNK {
                break;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes the artifact's bytes kept in the database to `dest`; false
    /// when the database has none of them. The caller checks the sha256.
    pub async fn artifact_bytes_to(&self, sha256: &str, dest: &std::path::Path) -> Result<bool> {
        use tokio::io::AsyncWriteExt;
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM artifact_chunks WHERE sha256 = $1")
                .bind(sha256)
                .fetch_one(&self.pool)
                .await?;
        if count == 0 {
            return Ok(false);
        }
        let failed = |e: std::io::Error| StoreError::Conflict(format!("{}: {e}", dest.display()));
        let mut file = tokio::fs::File::create(dest).await.map_err(failed)?;
        // A chunk at a time, so that memory stays bounded by one.
        for seq in 0..count {
            let bytes: Vec<u8> = sqlx::query_scalar(
                "SELECT bytes FROM artifact_chunks WHERE sha256 = $1 AND seq = $2",
            )
            .bind(sha256)
            .bind(seq)
            .fetch_one(&self.pool)
            .await?;
            file.write_all(&bytes).await.map_err(failed)?;
        }
        file.sync_all().await.map_err(failed)?;
        Ok(true)
    }

    /// Whether artifacts' bytes go to the database too: with PostgreSQL,
    /// which several servers may share, so that any of them can deploy a
    /// release another packed. With SQLite there is one server, and its
    /// data directory is enough.
    pub fn shares_artifacts(&self) -> bool {
        self.dialect == crate::Dialect::Postgres
    }
}
