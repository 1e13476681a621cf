//! The change log: an append-only timeline of everything that changed anything
//! (who, what, when, before → after). Rows are only ever inserted.

use serde::Serialize;
use sqlx::{AnyConnection, FromRow};

use crate::{Result, Store, now_ms};

/// One entry to append; `kind` is a dotted verb such as `repo.added` or `run.finished`.
#[derive(Clone, Debug, Default)]
pub struct NewChangeEvent {
    pub actor: String,
    pub kind: String,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub subject: String,
    pub summary: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct ChangeEvent {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub kind: String,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub subject: String,
    pub summary: String,
    #[sqlx(rename = "before_value")]
    pub before: Option<String>,
    #[sqlx(rename = "after_value")]
    pub after: Option<String>,
}

/// Which events to list; every field narrows the answer.
#[derive(Clone, Debug, Default)]
pub struct ChangeQuery {
    pub service: Option<String>,
    pub environment: Option<String>,
    pub kind_prefix: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: i64,
}

impl Store {
    /// Appends an event on its own.
    pub async fn append_change(&self, event: NewChangeEvent) -> Result<i64> {
        let mut tx = self.begin().await?;
        let id = append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn changes_log(&self, query: &ChangeQuery) -> Result<Vec<ChangeEvent>> {
        let limit = if query.limit > 0 { query.limit } else { 200 };
        let rows = sqlx::query_as::<_, ChangeEvent>(
            "SELECT id, at, actor, kind, service, environment, subject, summary, before_value, after_value
             FROM change_log
             WHERE ($1 IS NULL OR service = $1)
               AND ($2 IS NULL OR environment = $2)
               AND ($3 IS NULL OR kind LIKE $3)
               AND at >= $4
             ORDER BY id DESC LIMIT $5",
        )
        .bind(&query.service)
        .bind(&query.environment)
        .bind(query.kind_prefix.as_ref().map(|k| format!("{k}%")))
        .bind(query.since_ms.unwrap_or(0))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// Appends in the caller's transaction, so that a change, its event and
/// the notifications the event causes commit together.
pub(crate) async fn append_with(conn: &mut AnyConnection, event: NewChangeEvent) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO change_log (at, actor, kind, service, environment, subject, summary, before_value, after_value)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(now_ms())
    .bind(&event.actor)
    .bind(&event.kind)
    .bind(&event.service)
    .bind(&event.environment)
    .bind(&event.subject)
    .bind(&event.summary)
    .bind(event.before.as_ref().map(|v| v.to_string()))
    .bind(event.after.as_ref().map(|v| v.to_string()))
    .fetch_one(&mut *conn)
    .await?;
    crate::notify::enqueue(conn, id, &event).await?;
    Ok(id)
}
