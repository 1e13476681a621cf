//! Notification state: channels (their targets kept like secrets), the
//! routes that pick events for them, the outbox of notifications that the
//! change log fills in the same transaction as each event, and the messages
//! (one or several notifications collapsed) with every delivery attempt.

use serde::Serialize;
use sqlx::{AnyConnection, AssertSqlSafe, FromRow};

use crate::changelog::append_with;
use crate::{ChangeEvent, Flag, NewChangeEvent, Result, Store, StoreError, now_ms};

/// Retries of a message stop this long after it was made (or retried by hand).
pub const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;

/// A channel as anyone may see it: never its target.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Channel {
    pub name: String,
    pub kind: String,
    /// How long the first notification of a burst waits for others to join it.
    pub wait_ms: i64,
    /// The least time between two messages to the channel.
    pub interval_ms: i64,
    pub created_at: i64,
    pub created_by: String,
    /// The server-wide routes that feed it (`--on`, `--env`).
    #[sqlx(skip)]
    pub routes: Vec<RouteRow>,
    /// Notifications not yet in a message (a burst being gathered).
    pub waiting: i64,
}

/// A channel to add or replace.
#[derive(Clone, Debug)]
pub struct NewChannel {
    pub name: String,
    pub kind: String,
    /// What the sender needs, as JSON (URL, signing key, SMTP settings): secret.
    pub target: String,
    pub wait_ms: i64,
    pub interval_ms: i64,
    /// Server-wide routes to it; `service` is ignored.
    pub routes: Vec<RouteRow>,
}

/// One stored route: events of `kind` (a prefix when `prefix`), in
/// `environment` (any when `None`), of `service` (any when `None`) go to `channel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, FromRow)]
pub struct RouteRow {
    pub service: Option<String>,
    pub kind: String,
    #[sqlx(try_from = "i64")]
    pub prefix: Flag,
    pub environment: Option<String>,
    pub channel: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Waiting for its first or next attempt.
    Pending,
    Sent,
    /// Given up: a 4xx other than 429, or 24 hours of failures.
    Failed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
        }
    }
}

impl TryFrom<String> for MessageStatus {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "pending" => Ok(MessageStatus::Pending),
            "sent" => Ok(MessageStatus::Sent),
            "failed" => Ok(MessageStatus::Failed),
            other => Err(format!("unknown message status `{other}`")),
        }
    }
}

/// What goes out to a channel in one delivery.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Message {
    pub id: i64,
    pub channel: String,
    pub idempotency_key: String,
    #[sqlx(try_from = "String")]
    pub status: MessageStatus,
    /// The rendered payload, the same on every attempt.
    #[serde(skip)]
    pub body: String,
    pub attempts: i64,
    pub next_at: i64,
    pub give_up_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Attempt {
    pub at: i64,
    pub http_status: Option<i64>,
    pub error: Option<String>,
}

/// A channel's notifications not yet in a message.
#[derive(Clone, Debug, FromRow)]
pub struct Unbatched {
    pub channel: String,
    pub oldest_at: i64,
    /// When the channel's latest message was made, if ever.
    pub last_message_at: Option<i64>,
}

/// How an attempt ended, as the worker decided.
#[derive(Clone, Debug)]
pub struct AttemptResult {
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub status: MessageStatus,
    /// For a pending message: when to try again.
    pub next_at: i64,
}

const MESSAGE_COLUMNS: &str = "id, channel, idempotency_key, status, body, attempts, next_at, give_up_at, last_error, created_at, sent_at";

impl Store {
    /// Adds a channel, or replaces the one of that name with its routes.
    pub async fn put_channel(&self, channel: NewChannel, actor: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let existed: Option<String> =
            sqlx::query_scalar("SELECT name FROM channels WHERE name = $1")
                .bind(&channel.name)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM channels WHERE name = $1")
            .bind(&channel.name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM notify_routes WHERE service IS NULL AND channel = $1")
            .bind(&channel.name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO channels (name, kind, target, wait_ms, interval_ms, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&channel.name)
        .bind(&channel.kind)
        .bind(&channel.target)
        .bind(channel.wait_ms)
        .bind(channel.interval_ms)
        .bind(now_ms())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        for route in &channel.routes {
            insert_route(&mut tx, None, route, &channel.name).await?;
        }
        let verb = if existed.is_some() {
            "replaced"
        } else {
            "added"
        };
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: "channel.added".into(),
            subject: format!("channel {}", channel.name),
            summary: format!(
                "{actor} {verb} the {} channel `{}`",
                channel.kind, channel.name
            ),
            after: Some(serde_json::json!({ "kind": channel.kind, "routes": channel.routes })),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_channel(&self, name: &str, actor: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query("DELETE FROM channels WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(StoreError::NotFound {
                what: "channel",
                id: name.to_string(),
            });
        }
        sqlx::query("DELETE FROM notify_routes WHERE service IS NULL AND channel = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let event = NewChangeEvent {
            actor: actor.to_string(),
            kind: "channel.removed".into(),
            subject: format!("channel {name}"),
            summary: format!("{actor} removed the channel `{name}`"),
            ..Default::default()
        };
        append_with(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let mut channels: Vec<Channel> = sqlx::query_as(
            "SELECT name, kind, wait_ms, interval_ms, created_at, created_by,
                    (SELECT COUNT(*) FROM notifications n WHERE n.channel = c.name AND n.message_id IS NULL) AS waiting
             FROM channels c ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let routes: Vec<RouteRow> = sqlx::query_as(
            "SELECT service, kind, prefix, environment, channel FROM notify_routes WHERE service IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for channel in &mut channels {
            channel.routes = routes
                .iter()
                .filter(|r| r.channel == channel.name)
                .cloned()
                .collect();
        }
        Ok(channels)
    }

    pub async fn channel(&self, name: &str) -> Result<Channel> {
        self.channels()
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| StoreError::NotFound {
                what: "channel",
                id: name.to_string(),
            })
    }

    /// The channel's kind and secret target, for the sender only.
    pub async fn channel_target(&self, name: &str) -> Result<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT kind, target FROM channels WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Replaces a service's `notify:` routes (from the spec it releases with).
    pub async fn set_service_routes(&self, service: &str, routes: &[RouteRow]) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM notify_routes WHERE service = $1")
            .bind(service)
            .execute(&mut *tx)
            .await?;
        for route in routes {
            insert_route(&mut tx, Some(service), route, &route.channel).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Channels with notifications waiting to be put in a message.
    pub async fn unbatched(&self) -> Result<Vec<Unbatched>> {
        Ok(sqlx::query_as(
            "SELECT n.channel AS channel, MIN(n.created_at) AS oldest_at,
                    (SELECT MAX(m.created_at) FROM messages m WHERE m.channel = n.channel) AS last_message_at
             FROM notifications n WHERE n.message_id IS NULL GROUP BY n.channel",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The oldest `limit` notifications of a channel not yet in a message,
    /// with their events: (notification id, event).
    pub async fn unbatched_events(
        &self,
        channel: &str,
        limit: i64,
    ) -> Result<Vec<(i64, ChangeEvent)>> {
        #[derive(FromRow)]
        struct Row {
            notification: i64,
            #[sqlx(flatten)]
            event: ChangeEvent,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT n.id AS notification, e.id, e.at, e.actor, e.kind, e.service, e.environment,
                    e.subject, e.summary, e.before_value, e.after_value
             FROM notifications n JOIN change_log e ON e.id = n.event_id
             WHERE n.channel = $1 AND n.message_id IS NULL ORDER BY n.id LIMIT $2",
        )
        .bind(channel)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.notification, r.event))
            .collect())
    }

    /// Puts notifications in a new message, unless another worker did first
    /// (then nothing changes and `None` is answered).
    pub async fn insert_message(
        &self,
        channel: &str,
        key: &str,
        body: &str,
        notifications: &[i64],
    ) -> Result<Option<i64>> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO messages (channel, idempotency_key, status, body, next_at, give_up_at, created_at)
             VALUES ($1, $2, 'pending', $3, $4, $5, $4) RETURNING id",
        )
        .bind(channel)
        .bind(key)
        .bind(body)
        .bind(now)
        .bind(now + GIVE_UP_AFTER_MS)
        .fetch_one(&mut *tx)
        .await?;
        for notification in notifications {
            let taken = sqlx::query(
                "UPDATE notifications SET message_id = $1 WHERE id = $2 AND message_id IS NULL",
            )
            .bind(id)
            .bind(notification)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if taken == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Pending messages whose time has come, oldest first.
    pub async fn due_messages(&self, now: i64, limit: i64) -> Result<Vec<Message>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE status = 'pending' AND next_at <= $1
             ORDER BY next_at, id LIMIT $2"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes a due message for one attempt: counts it and holds it until
    /// `lease_until`, so that a worker that dies mid-send leaves it to be
    /// tried again then, and no other worker sends it meanwhile.
    pub async fn claim_message(&self, message: &Message, lease_until: i64) -> Result<bool> {
        let claimed = sqlx::query(
            "UPDATE messages SET attempts = attempts + 1, next_at = $1
             WHERE id = $2 AND status = 'pending' AND attempts = $3 AND next_at = $4",
        )
        .bind(lease_until)
        .bind(message.id)
        .bind(message.attempts)
        .bind(message.next_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    /// Records an attempt and what follows it.
    pub async fn record_attempt(&self, id: i64, result: &AttemptResult) -> Result<()> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO message_attempts (message_id, at, http_status, error) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(now)
        .bind(result.http_status)
        .bind(&result.error)
        .execute(&mut *tx)
        .await?;
        let sent_at = (result.status == MessageStatus::Sent).then_some(now);
        sqlx::query(
            "UPDATE messages SET status = $1, next_at = $2, last_error = $3, sent_at = $4 WHERE id = $5",
        )
        .bind(result.status.as_str())
        .bind(result.next_at)
        .bind(&result.error)
        .bind(sent_at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest messages, of one channel or all.
    pub async fn messages(&self, channel: Option<&str>, limit: i64) -> Result<Vec<Message>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE ($1 IS NULL OR channel = $1)
             ORDER BY id DESC LIMIT $2"
        )))
        .bind(channel)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn message(&self, id: i64) -> Result<Message> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "message",
            id: id.to_string(),
        })
    }

    pub async fn message_attempts(&self, id: i64) -> Result<Vec<Attempt>> {
        Ok(sqlx::query_as(
            "SELECT at, http_status, error FROM message_attempts WHERE message_id = $1 ORDER BY at",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The events a message carries.
    pub async fn message_events(&self, id: i64) -> Result<Vec<ChangeEvent>> {
        Ok(sqlx::query_as(
            "SELECT e.id, e.at, e.actor, e.kind, e.service, e.environment, e.subject, e.summary,
                    e.before_value, e.after_value
             FROM notifications n JOIN change_log e ON e.id = n.event_id
             WHERE n.message_id = $1 ORDER BY e.id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sends a failed message again, with another 24 hours of retries.
    pub async fn retry_message(&self, id: i64) -> Result<Message> {
        let message = self.message(id).await?;
        if message.status != MessageStatus::Failed {
            return Err(StoreError::Conflict(format!(
                "message {id} is {}; only a failed message can be retried",
                message.status.as_str()
            )));
        }
        let now = now_ms();
        sqlx::query(
            "UPDATE messages SET status = 'pending', next_at = $1, give_up_at = $2 WHERE id = $3 AND status = 'failed'",
        )
        .bind(now)
        .bind(now + GIVE_UP_AFTER_MS)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.message(id).await
    }
}

async fn insert_route(
    conn: &mut AnyConnection,
    service: Option<&str>,
    route: &RouteRow,
    channel: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO notify_routes (service, kind, prefix, environment, channel) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(service)
    .bind(&route.kind)
    .bind(i64::from(route.prefix.0))
    .bind(&route.environment)
    .bind(channel)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The outbox half of appending an event: a notification for each channel
/// a route sends the event to, in the event's own transaction.
pub(crate) async fn enqueue(
    conn: &mut AnyConnection,
    event_id: i64,
    event: &NewChangeEvent,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO notifications (event_id, channel, created_at)
         SELECT DISTINCT CAST($1 AS BIGINT), r.channel, CAST($2 AS BIGINT) FROM notify_routes r
         WHERE (r.service IS NULL OR r.service = $3)
           AND (r.environment IS NULL OR r.environment = $4)
           AND (r.kind = $5 OR (r.prefix = 1 AND substr($5, 1, length(r.kind)) = r.kind))",
    )
    .bind(event_id)
    .bind(now_ms())
    .bind(&event.service)
    .bind(&event.environment)
    .bind(&event.kind)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
