//! Repositories that sluice watches, the refs it last saw in each, their
//! secrets, and the webhook deliveries already taken.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{AssertSqlSafe, FromRow};

use crate::changelog::append_with;
use crate::{NewChangeEvent, Result, Store, StoreError, now_ms};

/// A repository's secret: given to every run on the mainline, and to
/// review runs (changes anyone can propose) only when marked `review`.
#[derive(Clone, Debug)]
pub struct Secret {
    pub value: String,
    pub review: bool,
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Repo {
    pub id: i64,
    pub name: String,
    /// A path for a local repository, or a URL to fetch from.
    pub url: String,
    /// Set for local repositories: sluice reads refs and commits there directly.
    pub local_path: Option<String>,
    #[serde(skip)]
    pub webhook_secret: String,
    pub status_url: Option<String>,
    #[serde(skip)]
    pub status_token: Option<String>,
    /// How new commits are noticed: `hook` (installed), `poll`, or why not hooked.
    pub hook: String,
    pub created_at: i64,
}

#[derive(Clone, Debug)]
pub struct NewRepo {
    pub name: String,
    pub url: String,
    pub local_path: Option<String>,
    pub webhook_secret: String,
    pub status_url: Option<String>,
    pub status_token: Option<String>,
    pub hook: String,
}

const REPO_COLUMNS: &str =
    "id, name, url, local_path, webhook_secret, status_url, status_token, hook, created_at";

impl Store {
    pub async fn insert_repo(&self, repo: NewRepo, actor: &str) -> Result<Repo> {
        let mut tx = self.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM repos WHERE name = $1")
            .bind(&repo.name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "a repository named `{}` is already registered",
                repo.name
            )));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO repos (name, url, local_path, webhook_secret, status_url, status_token, hook, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(&repo.name)
        .bind(&repo.url)
        .bind(&repo.local_path)
        .bind(&repo.webhook_secret)
        .bind(&repo.status_url)
        .bind(&repo.status_token)
        .bind(&repo.hook)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: "repo.added".into(),
            subject: format!("repo {}", repo.name),
            summary: format!("repository `{}` added from {}", repo.name, repo.url),
            after: Some(
                serde_json::json!({ "name": repo.name, "url": repo.url, "hook": repo.hook }),
            ),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        self.repo_by_id(id).await
    }

    pub async fn set_repo_hook(&self, id: i64, hook: &str) -> Result<()> {
        sqlx::query("UPDATE repos SET hook = $1 WHERE id = $2")
            .bind(hook)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn repo(&self, name: &str) -> Result<Repo> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {REPO_COLUMNS} FROM repos WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "repository",
            id: name.to_string(),
        })
    }

    pub async fn repo_by_id(&self, id: i64) -> Result<Repo> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {REPO_COLUMNS} FROM repos WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "repository",
            id: id.to_string(),
        })
    }

    pub async fn repos(&self) -> Result<Vec<Repo>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {REPO_COLUMNS} FROM repos ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The refs (`refs/heads/main` → sha) seen at the last scan.
    pub async fn known_refs(&self, repo_id: i64) -> Result<BTreeMap<String, String>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT ref_name, sha FROM repo_refs WHERE repo_id = $1")
                .bind(repo_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn set_ref(&self, repo_id: i64, ref_name: &str, sha: Option<&str>) -> Result<()> {
        match sha {
            Some(sha) => {
                sqlx::query(
                    "INSERT INTO repo_refs (repo_id, ref_name, sha) VALUES ($1, $2, $3)
                     ON CONFLICT (repo_id, ref_name) DO UPDATE SET sha = excluded.sha",
                )
                .bind(repo_id)
                .bind(ref_name)
                .bind(sha)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM repo_refs WHERE repo_id = $1 AND ref_name = $2")
                    .bind(repo_id)
                    .bind(ref_name)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Stores a secret, given to review runs too when `review`; the change
    /// log records that it changed, never its value.
    pub async fn set_secret(
        &self,
        repo: &Repo,
        name: &str,
        value: &str,
        review: bool,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO secrets (repo_id, name, value, updated_at, review) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (repo_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, review = excluded.review",
        )
        .bind(repo.id)
        .bind(name)
        .bind(value)
        .bind(now_ms())
        .bind(i64::from(review))
        .execute(&mut *tx)
        .await?;
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: "secret.set".into(),
            subject: format!("repo {}", repo.name),
            summary: format!("secret `{name}` of `{}` set", repo.name),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A repository's secrets by name.
    pub async fn secrets(&self, repo_id: i64) -> Result<BTreeMap<String, Secret>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT name, value, review FROM secrets WHERE repo_id = $1")
                .bind(repo_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, value, review)| {
                let review = review != 0;
                (name, Secret { value, review })
            })
            .collect())
    }

    /// Deletes a secret; false when there was none by that name.
    pub async fn delete_secret(&self, repo: &Repo, name: &str, actor: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM secrets WHERE repo_id = $1 AND name = $2")
            .bind(repo.id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: "secret.deleted".into(),
            subject: format!("repo {}", repo.name),
            summary: format!("secret `{name}` of `{}` deleted", repo.name),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn delivery_seen(&self, repo_id: i64, delivery_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT repo_id FROM deliveries WHERE repo_id = $1 AND delivery_id = $2",
        )
        .bind(repo_id)
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Records a webhook delivery; false when it was taken before.
    pub async fn record_delivery(&self, repo_id: i64, delivery_id: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO deliveries (repo_id, delivery_id, received_at) VALUES ($1, $2, $3)
             ON CONFLICT (repo_id, delivery_id) DO NOTHING",
        )
        .bind(repo_id)
        .bind(delivery_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
