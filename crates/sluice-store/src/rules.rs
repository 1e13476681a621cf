//! Rules as recorded: what each demands (as JSON the spec crate reads), the
//! incident it came from, who made it, when it expires or was disabled and
//! why, and what it has blocked.

use serde::Serialize;
use sqlx::{AssertSqlSafe, FromRow};

use crate::changelog::append_with;
use crate::{NewChangeEvent, Result, Store, StoreError, now_ms};

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct RuleRecord {
    pub id: i64,
    pub service: String,
    /// JSON, `sluice_spec::RuleSpec`.
    pub spec: String,
    /// Why the rule exists, in the words of whoever made it.
    pub note: String,
    pub incident_id: Option<i64>,
    pub incident_title: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub disabled_by: Option<String>,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
}

/// A rule's id as people write it: `R3`, `r3` or `3`.
pub fn parse_rule_id(text: &str) -> Result<i64, String> {
    crate::parse_named_id(text, &["R", "r"], "a rule; write RN, such as R3")
}

impl RuleRecord {
    /// `R3`.
    pub fn name(&self) -> String {
        format!("R{}", self.id)
    }

    /// `INC-7 "checkout fails"`.
    pub fn origin(&self) -> Option<String> {
        let id = self.incident_id?;
        Some(match &self.incident_title {
            Some(title) => format!("INC-{id} \"{title}\""),
            None => format!("INC-{id}"),
        })
    }

    pub fn is_active(&self, now_ms: i64) -> bool {
        self.disabled_at.is_none() && self.expires_at.is_none_or(|at| at > now_ms)
    }
}

pub struct NewRule<'a> {
    pub service: &'a str,
    pub spec: &'a serde_json::Value,
    pub note: &'a str,
    pub incident_id: Option<i64>,
    pub actor: &'a str,
    pub expires_at: Option<i64>,
    /// One sentence on what the rule demands, for the change log.
    pub description: &'a str,
}

/// One thing a rule stopped.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct RuleBlock {
    pub rule_id: String,
    pub service: String,
    /// `run 12`, `promotion 4`, `deployment 9`.
    pub subject: String,
    pub detail: String,
    pub at: i64,
}

const SELECT: &str = "SELECT r.id, r.service, r.spec, r.note, r.incident_id, i.title AS incident_title, r.created_by,
        r.created_at, r.expires_at, r.disabled_by, r.disabled_at, r.disabled_reason
    FROM rules r LEFT JOIN incidents i ON i.id = r.incident_id";

impl Store {
    pub async fn insert_rule(&self, new: NewRule<'_>) -> Result<RuleRecord> {
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO rules (service, spec, note, incident_id, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(new.service)
        .bind(new.spec.to_string())
        .bind(new.note)
        .bind(new.incident_id)
        .bind(new.actor)
        .bind(now_ms())
        .bind(new.expires_at)
        .fetch_one(&mut *tx)
        .await?;
        let from = new
            .incident_id
            .map(|i| format!(" from INC-{i}"))
            .unwrap_or_default();
        let event = NewChangeEvent {
            actor: new.actor.to_string(),
            kind: "rule.added".into(),
            service: Some(new.service.to_string()),
            environment: None,
            subject: format!("R{id}"),
            summary: format!("rule R{id}{from}: {}", new.description),
            before: None,
            after: Some(new.spec.clone()),
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        self.rule(id).await
    }

    pub async fn rule(&self, id: i64) -> Result<RuleRecord> {
        sqlx::query_as(AssertSqlSafe(format!("{SELECT} WHERE r.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "rule",
                id: format!("R{id}"),
            })
    }

    /// Oldest first; `active_only` leaves out disabled and expired ones.
    pub async fn rules(&self, service: Option<&str>, active_only: bool) -> Result<Vec<RuleRecord>> {
        let rows: Vec<RuleRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "{SELECT} WHERE ($1 IS NULL OR r.service = $1) ORDER BY r.id"
        )))
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        let now = now_ms();
        Ok(rows
            .into_iter()
            .filter(|r| !active_only || r.is_active(now))
            .collect())
    }

    pub async fn disable_rule(&self, id: i64, actor: &str, reason: &str) -> Result<RuleRecord> {
        let rule = self.rule(id).await?;
        if rule.disabled_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "R{id} was disabled already by {}",
                rule.disabled_by.unwrap_or_default()
            )));
        }
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE rules SET disabled_by = $1, disabled_at = $2, disabled_reason = $3 WHERE id = $4",
        )
        .bind(actor)
        .bind(now_ms())
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: "rule.disabled".into(),
            service: Some(rule.service.clone()),
            environment: None,
            subject: format!("R{id}"),
            summary: format!("rule R{id} disabled: {reason}"),
            before: None,
            after: None,
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        self.rule(id).await
    }

    /// Records that `rule_id` stopped `subject`, once per pair.
    pub async fn record_block(
        &self,
        rule_id: &str,
        service: &str,
        environment: Option<&str>,
        subject: &str,
        detail: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let seen: Option<i64> =
            sqlx::query_scalar("SELECT id FROM rule_blocks WHERE rule_id = $1 AND subject = $2")
                .bind(rule_id)
                .bind(subject)
                .fetch_optional(&mut *tx)
                .await?;
        if seen.is_some() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rule_blocks (rule_id, service, subject, detail, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(rule_id)
        .bind(service)
        .bind(subject)
        .bind(detail)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        // The first time a rule stops something is news; the gatekeeper
        // looking again every second is not.
        let event = NewChangeEvent {
            actor: "sluice".into(),
            kind: "rule.blocked".into(),
            service: Some(service.to_string()),
            environment: environment.map(String::from),
            subject: rule_id.to_string(),
            summary: format!("{rule_id} blocked {subject}: {detail}"),
            after: Some(serde_json::json!({ "rule": rule_id, "blocked": subject })),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// What rules stopped in a service lately, newest first.
    pub async fn service_blocks(&self, service: &str, limit: i64) -> Result<Vec<RuleBlock>> {
        let rows = sqlx::query_as(
            "SELECT rule_id, service, subject, detail, at FROM rule_blocks WHERE service = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(service)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    pub async fn rule_blocks(&self, rule_id: &str) -> Result<Vec<RuleBlock>> {
        let rows = sqlx::query_as(
            "SELECT rule_id, service, subject, detail, at FROM rule_blocks WHERE rule_id = $1 ORDER BY id DESC",
        )
        .bind(rule_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
