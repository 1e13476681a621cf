//! The dashboard's sessions: which token a browser's cookie signed in
//! with, and its CSRF token, until it expires. The cookie itself is never
//! stored: the server names each session by the cookie's digest.

use crate::{Result, Store, now_ms};

/// A live session: the token it signed in with, and its forms' CSRF token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UiSession {
    pub token_id: String,
    pub csrf: String,
}

impl Store {
    /// Records session `digest` for token `token_id` for `for_ms`, and
    /// forgets the sessions that have expired.
    pub async fn open_session(
        &self,
        digest: &str,
        token_id: &str,
        csrf: &str,
        for_ms: i64,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO ui_sessions (digest, token_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(digest)
            .bind(token_id)
            .bind(csrf)
            .bind(now)
            .bind(now.saturating_add(for_ms))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Session `digest`, unless it is unknown or has expired.
    pub async fn session(&self, digest: &str) -> Result<Option<UiSession>> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT token_id, csrf FROM ui_sessions WHERE digest = $1 AND expires_at > $2",
        )
        .bind(digest)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(token_id, csrf)| UiSession { token_id, csrf }))
    }

    pub async fn close_session(&self, digest: &str) -> Result<()> {
        sqlx::query("DELETE FROM ui_sessions WHERE digest = $1")
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
