//! Webhook deliveries into runs. A verified delivery is held in the store
//! first ([`sluice_store::HeldWebhook`]) by whichever server the forge
//! reached; the server running CI turns it into a run at once when the
//! delivery came to it, and otherwise when woken or at its next look. So a
//! delivery that was answered outlives a takeover and a crash.

use std::sync::Arc;

use anyhow::{Context, Result};
use sluice_store::{Repo, Store, Topic, now_ms};

use crate::Engine;
use crate::webhook::Announced;

/// What became of a delivery taken to be turned into a run.
#[derive(Debug)]
pub enum Accepted {
    /// Its run, by id, is queued.
    Queued(i64),
    /// Its commit on its ref has a run already.
    AlreadyRun,
    /// The same delivery is held already, or was taken before.
    Duplicate,
    /// Held, and another pass of this server took it meanwhile: its run
    /// is being queued.
    Held(i64),
}

/// Holds a verified delivery for the server running CI, and wakes it
/// wherever it runs; `None` when this delivery is held already.
pub async fn hold(
    store: &Store,
    repo: &Repo,
    announced: &Announced,
    delivery: Option<&str>,
) -> Result<Option<i64>> {
    let held = keep(store, repo, announced, delivery).await?;
    if held.is_some() {
        store.wake(Topic::WebhookHeld).await;
    }
    Ok(held)
}

/// Holds a delivery in the store; `None` when it is held already.
async fn keep(
    store: &Store,
    repo: &Repo,
    announced: &Announced,
    delivery: Option<&str>,
) -> Result<Option<i64>> {
    let json = serde_json::to_string(announced)?;
    Ok(store.hold_webhook(repo.id, delivery, &json).await?)
}

impl Engine {
    /// Holds a delivery that came to this server and turns it into a run now.
    pub(crate) async fn accept_delivery(
        &self,
        repo: &Repo,
        announced: &Announced,
        delivery: Option<&str>,
    ) -> Result<Accepted> {
        // Not woken: this server takes it now.
        let Some(id) = keep(&self.store, repo, announced, delivery).await? else {
            return Ok(Accepted::Duplicate);
        };
        Ok(self.take_held(id).await?.unwrap_or(Accepted::Held(id)))
    }

    /// Turns held delivery `id` into a run, once; `None` when another
    /// pass has it. A failed one is let go too: answered to the forge when
    /// it came here, else logged; the next scan of the repository still
    /// finds a branch's commit.
    async fn take_held(&self, id: i64) -> Result<Option<Accepted>> {
        let Some(held) = self.store.take_held_webhook(id, now_ms()).await? else {
            return Ok(None);
        };
        let queued = async {
            let repo = self.store.repo_by_id(held.repo_id).await?;
            let announced: Announced = serde_json::from_str(&held.announced)
                .context("a held webhook delivery is not what this server holds")?;
            self.accept(&repo, announced).await
        }
        .await;
        // Recorded before it is let go, so that a redelivery is refused.
        if queued.is_ok()
            && let Some(delivery) = &held.delivery_id
        {
            self.store.record_delivery(held.repo_id, delivery).await?;
        }
        self.store.release_held_webhook(held.id).await?;
        Ok(Some(match queued? {
            Some(run) => Accepted::Queued(run.id),
            None => Accepted::AlreadyRun,
        }))
    }

    /// Turns every held delivery nobody else is turning into a run.
    async fn take_every_held(&self) {
        let ids = match self.store.held_webhooks(now_ms()).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the held webhook deliveries");
                return;
            }
        };
        for id in ids {
            match self.take_held(id).await {
                Ok(Some(Accepted::Queued(run))) => {
                    tracing::info!(run, "a held webhook delivery queued a run");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(held = id, error = %format!("{e:#}"), "a held webhook delivery queued no run");
                }
            }
        }
    }
}

/// Takes the deliveries other servers hold: when one says so, and at each
/// poll for those whose word was lost or whose taker died.
pub(crate) async fn take_held_deliveries(engine: Arc<Engine>) {
    loop {
        // Made before the pass, so that a wake-up during it is not missed.
        let woken = engine.store.woken(Topic::WebhookHeld);
        engine.take_every_held().await;
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(engine.config.poll_interval) => {}
            _ = engine.shutdown.cancelled() => return,
        }
    }
}
