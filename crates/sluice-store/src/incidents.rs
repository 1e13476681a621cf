//! Incidents as recorded: what broke where, how it was noticed, its state
//! (open → mitigated → resolved) and its postmortem. Every transition and
//! every edit of the postmortem is a change-log event in the same transaction.

use serde::Serialize;
use sqlx::{AssertSqlSafe, FromRow};

use crate::changelog::append_with;
use crate::status::*;
use crate::{NewChangeEvent, Result, Store, StoreError, now_ms};

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Incident {
    pub id: i64,
    pub service: String,
    pub environment: Option<String>,
    pub title: String,
    #[sqlx(try_from = "String")]
    pub status: IncidentStatus,
    /// `manual`, `health`, `deployment` or `experiment`.
    #[sqlx(try_from = "String")]
    pub trigger_kind: IncidentTrigger,
    pub trigger_detail: Option<String>,
    pub opened_by: String,
    pub opened_at: i64,
    /// When the first symptom was seen; the timeline looks back from here.
    pub first_symptom_at: i64,
    pub mitigated_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub postmortem: Option<String>,
    pub postmortem_by: Option<String>,
    pub postmortem_at: Option<i64>,
}

/// An incident's id as people write it: `INC-7`, `inc-7` or `7`.
pub fn parse_incident_id(text: &str) -> Result<i64, String> {
    crate::parse_named_id(
        text,
        &["INC-", "inc-"],
        "an incident; write INC-N, such as INC-7",
    )
}

impl Incident {
    /// `INC-7`.
    pub fn name(&self) -> String {
        format!("INC-{}", self.id)
    }

    pub fn is_open(&self) -> bool {
        self.status != IncidentStatus::Resolved
    }
}

pub struct NewIncident<'a> {
    pub service: &'a str,
    pub environment: Option<&'a str>,
    pub title: &'a str,
    pub trigger_kind: IncidentTrigger,
    pub trigger_detail: Option<&'a str>,
    pub actor: &'a str,
    pub first_symptom_at: Option<i64>,
}

const SELECT: &str = "SELECT id, service, environment, title, status, trigger_kind, trigger_detail, opened_by,
        opened_at, first_symptom_at, mitigated_at, resolved_at, postmortem, postmortem_by, postmortem_at
    FROM incidents";

impl Store {
    pub async fn open_incident(&self, new: NewIncident<'_>) -> Result<Incident> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO incidents (service, environment, title, status, trigger_kind, trigger_detail, opened_by, opened_at, first_symptom_at)
             VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(new.service)
        .bind(new.environment)
        .bind(new.title)
        .bind(new.trigger_kind.as_str())
        .bind(new.trigger_detail)
        .bind(new.actor)
        .bind(now)
        .bind(new.first_symptom_at.unwrap_or(now))
        .fetch_one(&mut *tx)
        .await?;
        let event = NewChangeEvent {
            actor: new.actor.to_string(),
            kind: "incident.opened".into(),
            service: Some(new.service.to_string()),
            environment: new.environment.map(str::to_string),
            subject: format!("INC-{id}"),
            summary: format!("INC-{id} opened: {}", new.title),
            before: None,
            after: Some(
                serde_json::json!({ "trigger": new.trigger_kind, "detail": new.trigger_detail }),
            ),
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        self.incident(id).await
    }

    pub async fn incident(&self, id: i64) -> Result<Incident> {
        sqlx::query_as(AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "incident",
                id: format!("INC-{id}"),
            })
    }

    /// Newest first; `open_only` leaves out resolved ones.
    pub async fn incidents(
        &self,
        service: Option<&str>,
        open_only: bool,
        limit: i64,
    ) -> Result<Vec<Incident>> {
        let rows = sqlx::query_as(AssertSqlSafe(format!(
            "{SELECT} WHERE ($1 IS NULL OR service = $1) AND ($2 = 0 OR status <> 'resolved')
             ORDER BY id DESC LIMIT $3"
        )))
        .bind(service)
        .bind(i64::from(open_only))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Moves an incident on: `mitigated` or `resolved`, never back.
    pub async fn set_incident_status(
        &self,
        id: i64,
        status: IncidentStatus,
        actor: &str,
        note: Option<&str>,
    ) -> Result<Incident> {
        use IncidentStatus::*;
        let current = self.incident(id).await?;
        let allowed = matches!(
            (current.status, status),
            (Open, Mitigated) | (Open, Resolved) | (Mitigated, Resolved)
        );
        if !allowed {
            return Err(StoreError::Conflict(format!(
                "INC-{id} is {}; it can go open → mitigated → resolved, not to {status}",
                current.status
            )));
        }
        let column = if status == Mitigated {
            "mitigated_at"
        } else {
            "resolved_at"
        };
        let mut tx = self.begin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE incidents SET status = $1, {column} = $2 WHERE id = $3"
        )))
        .bind(status.as_str())
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let summary = match note {
            Some(note) => format!("INC-{id} {status}: {note}"),
            None => format!("INC-{id} {status}"),
        };
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: format!("incident.{status}"),
            service: Some(current.service.clone()),
            environment: current.environment.clone(),
            subject: format!("INC-{id}"),
            summary,
            before: Some(serde_json::json!(current.status)),
            after: Some(serde_json::json!(status)),
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        self.incident(id).await
    }

    /// Replaces the postmortem's Markdown.
    pub async fn set_postmortem(&self, id: i64, text: &str, actor: &str) -> Result<Incident> {
        let current = self.incident(id).await?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE incidents SET postmortem = $1, postmortem_by = $2, postmortem_at = $3 WHERE id = $4",
        )
        .bind(text)
        .bind(actor)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: "postmortem.edited".into(),
            service: Some(current.service.clone()),
            environment: current.environment.clone(),
            subject: format!("INC-{id}"),
            summary: format!(
                "the postmortem of INC-{id} was edited ({} bytes)",
                text.len()
            ),
            before: None,
            after: None,
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        self.incident(id).await
    }
}
