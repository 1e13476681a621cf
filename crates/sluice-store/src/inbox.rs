//! Webhook deliveries held until the server running CI turns each into a
//! run. Whichever server a forge reaches holds a verified delivery here
//! before it answers, so a delivery answered is never lost: not while no
//! server acts (a takeover), and not to a crash half-way through.

use sqlx::FromRow;

use crate::{Result, Store, now_ms};

/// How long a delivery taken to be turned into a run may stay unfinished
/// before another pass takes it again: its taker died on the way. Turning
/// one into a run is a fetch at most, and queueing a run twice is a no-op.
pub const HELD_TAKEN_FOR_MS: i64 = 60_000;

/// A verified delivery waiting to be turned into a run.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct HeldWebhook {
    pub id: i64,
    pub repo_id: i64,
    /// The forge's id of the delivery, when it sent one.
    pub delivery_id: Option<String>,
    /// What the delivery announced, as JSON (the CI engine's own type).
    pub announced: String,
    pub received_at: i64,
}

impl Store {
    /// Holds a verified delivery; `None` when this delivery of this
    /// repository is held already (the forge sent it again meanwhile).
    pub async fn hold_webhook(
        &self,
        repo_id: i64,
        delivery_id: Option<&str>,
        announced: &str,
    ) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO held_webhooks (repo_id, delivery_id, announced, received_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (repo_id, delivery_id) DO NOTHING RETURNING id",
        )
        .bind(repo_id)
        .bind(delivery_id)
        .bind(announced)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The held deliveries nobody is turning into runs at `now`, oldest first.
    pub async fn held_webhooks(&self, now: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM held_webhooks WHERE taken_at IS NULL OR taken_at < $1 ORDER BY id",
        )
        .bind(now - HELD_TAKEN_FOR_MS)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes a held delivery at `now` to turn it into a run; `None` when
    /// it is gone or another server has it.
    pub async fn take_held_webhook(&self, id: i64, now: i64) -> Result<Option<HeldWebhook>> {
        Ok(sqlx::query_as(
            "UPDATE held_webhooks SET taken_at = $2
             WHERE id = $1 AND (taken_at IS NULL OR taken_at < $3)
             RETURNING id, repo_id, delivery_id, announced, received_at",
        )
        .bind(id)
        .bind(now)
        .bind(now - HELD_TAKEN_FOR_MS)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Lets a taken delivery go: its run is queued, it needed none, or it
    /// failed and whoever took it said so.
    pub async fn release_held_webhook(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM held_webhooks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_delivery_is_taken_once_and_again_only_when_its_taker_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, url) in crate::testing::database_urls(dir.path()).await {
            let store = Store::connect(&url).await.unwrap();
            let first = store.hold_webhook(1, Some("d-1"), "{}").await.unwrap();
            let first = first.expect("held");
            assert_eq!(
                store.hold_webhook(1, Some("d-1"), "{}").await.unwrap(),
                None,
                "{kind}: the same delivery is held once"
            );
            let other_repo = store.hold_webhook(2, Some("d-1"), "{}").await.unwrap();
            let unnamed = store.hold_webhook(1, None, "{}").await.unwrap();
            let again = store.hold_webhook(1, None, "{}").await.unwrap();
            assert!(
                other_repo.is_some() && unnamed.is_some() && again.is_some(),
                "{kind}"
            );

            let now = now_ms();
            let waiting = store.held_webhooks(now).await.unwrap();
            assert_eq!(waiting.len(), 4, "{kind}");
            assert_eq!(waiting[0], first, "{kind}: oldest first");
            let taken = store.take_held_webhook(first, now).await.unwrap();
            let taken = taken.expect("taken");
            assert_eq!(
                (taken.repo_id, taken.delivery_id.as_deref()),
                (1, Some("d-1"))
            );
            // Another pass, at once: it is someone's.
            assert_eq!(store.take_held_webhook(first, now + 1).await.unwrap(), None);
            assert!(!store.held_webhooks(now + 1).await.unwrap().contains(&first));
            // Its taker died: after the window another takes it.
            let later = now + HELD_TAKEN_FOR_MS + 1;
            assert!(store.held_webhooks(later).await.unwrap().contains(&first));
            assert!(
                store
                    .take_held_webhook(first, later)
                    .await
                    .unwrap()
                    .is_some()
            );
            store.release_held_webhook(first).await.unwrap();
            assert_eq!(
                store.take_held_webhook(first, later * 2).await.unwrap(),
                None
            );
            // Released, the same delivery may be held again (the forge's
            // redelivery is then refused by its recorded delivery id).
            assert!(
                store
                    .hold_webhook(1, Some("d-1"), "{}")
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    }
}
