//! API tokens: a name, a role, and only a digest of the secret.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use crate::changelog::append_with;
use crate::{NewChangeEvent, Result, Store, StoreError, now_ms};

/// What a token may do; each role from `Viewer` on includes the ones
/// before it. `Agent` stands apart: an agent's work and nothing else, not
/// even reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Viewer,
    Developer,
    Approver,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Agent,
        Role::Viewer,
        Role::Developer,
        Role::Approver,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: RoleColumn,
    #[serde(skip)]
    pub hash: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    /// Comma-separated groups, such as `release-managers`, that approver lists may name.
    pub groups: String,
}

impl TokenRecord {
    pub fn groups(&self) -> Vec<String> {
        self.groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect()
    }
}

/// A role as stored: text in the database, a [`Role`] in code.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(transparent)]
pub struct RoleColumn(pub Role);

impl TryFrom<String> for RoleColumn {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Role::parse(&text)
            .map(RoleColumn)
            .ok_or_else(|| format!("unknown role `{text}`"))
    }
}

impl Store {
    pub async fn count_tokens(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn insert_token(
        &self,
        id: &str,
        name: &str,
        role: Role,
        groups: &[String],
        hash: &str,
        created_by: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO tokens (id, name, role, hash, created_at, created_by, groups) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(id)
            .bind(name)
            .bind(role.as_str())
            .bind(hash)
            .bind(now_ms())
            .bind(created_by)
            .bind(groups.join(","))
            .execute(&mut *tx)
            .await?;
        let event = NewChangeEvent {
            actor: created_by.to_string(),
            kind: "token.created".into(),
            subject: format!("token {name}"),
            summary: format!("token `{name}` created with role {role}"),
            after: Some(
                serde_json::json!({ "id": id, "name": name, "role": role, "groups": groups }),
            ),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn token(&self, id: &str) -> Result<TokenRecord> {
        sqlx::query_as("SELECT id, name, role, hash, created_at, created_by, revoked_at, groups FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "token", id: id.to_string() })
    }

    /// Replaces a token's stored hash (an argon2 hash by its digest).
    pub async fn set_token_hash(&self, id: &str, hash: &str) -> Result<()> {
        sqlx::query("UPDATE tokens SET hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(sqlx::query_as("SELECT id, name, role, hash, created_at, created_by, revoked_at, groups FROM tokens ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn revoke_token(&self, id: &str, actor: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "active token",
                id: id.to_string(),
            });
        }
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: "token.revoked".into(),
            subject: format!("token {id}"),
            summary: format!("token `{id}` revoked"),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }
}
