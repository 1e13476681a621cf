//! The delivery worker: every tick it turns each channel's due burst of
//! notifications into one message, and sends the messages whose time has
//! come, recording each attempt. All its state is in the store, so a
//! restart (or a kill) loses nothing; a message taken for an attempt is
//! leased, so two servers on one database never send it both.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_store::{AttemptResult, ChangeEvent, Channel, Message, MessageStatus, Store, now_ms};
use tokio::sync::{Semaphore, watch};

use crate::channel::{ChannelKind, Target};
use crate::deliver::{self, ATTEMPT_TIMEOUT, Delivery};
use crate::render::{self, Batch};
use crate::retry;

/// How the worker runs.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// The dashboard's address as readers of a message reach it.
    pub public_url: String,
    /// How often it looks for work.
    pub tick: Duration,
}

/// The most notifications one message carries.
const PER_MESSAGE: i64 = 50;
/// The most attempts under way at once.
const IN_FLIGHT: usize = 8;

/// A running worker; dropping it does not stop it, `shutdown` does.
pub struct Notifier {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Notifier {
    pub fn start(store: Store, config: NotifyConfig) -> Notifier {
        let (stop, mut stopped) = watch::channel(false);
        let worker = Worker {
            store,
            http: deliver::http_client(),
            config,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            missing: HashSet::new(),
        };
        let task = tokio::spawn(async move {
            let mut worker = worker;
            loop {
                if let Err(e) = worker.tick().await {
                    tracing::warn!("notifications: {e:#}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(worker.config.tick) => {}
                    _ = stopped.changed() => break,
                }
            }
        });
        Notifier { stop, task }
    }

    /// Stops looking for work; attempts under way are dropped and, being
    /// leased, tried again after the next start.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Worker {
    store: Store,
    http: reqwest::Client,
    config: NotifyConfig,
    in_flight: Arc<Semaphore>,
    /// Channels that routes name but nobody added; warned about once.
    missing: HashSet<String>,
}

impl Worker {
    async fn tick(&mut self) -> anyhow::Result<()> {
        self.batch().await?;
        self.send_due().await
    }

    /// Each channel's due burst becomes one message.
    async fn batch(&mut self) -> anyhow::Result<()> {
        let waiting = self.store.unbatched().await?;
        if waiting.is_empty() {
            return Ok(());
        }
        let channels = self.store.channels().await?;
        let now = now_ms();
        for unbatched in waiting {
            let Some(channel) = channels.iter().find(|c| c.name == unbatched.channel) else {
                if self.missing.insert(unbatched.channel.clone()) {
                    tracing::warn!(
                        channel = %unbatched.channel,
                        "notifications wait for a channel that does not exist; add it with `sluice channel add`"
                    );
                }
                continue;
            };
            if retry::batch_due(&unbatched, channel.wait_ms, channel.interval_ms, now) {
                self.make_message(channel).await?;
            }
        }
        Ok(())
    }

    async fn make_message(&self, channel: &Channel) -> anyhow::Result<()> {
        let taken = self
            .store
            .unbatched_events(&channel.name, PER_MESSAGE)
            .await?;
        if taken.is_empty() {
            return Ok(());
        }
        let kind = ChannelKind::parse(&channel.kind).map_err(anyhow::Error::msg)?;
        let key = uuid::Uuid::new_v4().to_string();
        let events: Vec<ChangeEvent> = taken.iter().map(|(_, e)| e.clone()).collect();
        let batch = Batch {
            events: &events,
            public_url: &self.config.public_url,
            key: &key,
        };
        let body = render::payload(kind, &batch).to_string();
        let ids: Vec<i64> = taken.iter().map(|(id, _)| *id).collect();
        self.store
            .insert_message(&channel.name, &key, &body, &ids)
            .await?;
        Ok(())
    }

    /// Starts an attempt for each message whose time has come.
    async fn send_due(&self) -> anyhow::Result<()> {
        let now = now_ms();
        for message in self.store.due_messages(now, 32).await? {
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                break;
            };
            // Held until the attempt ends, or for another try if we die first.
            let lease = now + ATTEMPT_TIMEOUT.as_millis() as i64 * 3;
            if !self.store.claim_message(&message, lease).await? {
                continue;
            }
            let (store, http) = (self.store.clone(), self.http.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = attempt(&store, &http, message).await {
                    tracing::warn!("notification attempt: {e:#}");
                }
            });
        }
        Ok(())
    }
}

/// One attempt at a claimed message, recorded with what follows it.
async fn attempt(store: &Store, http: &reqwest::Client, message: Message) -> anyhow::Result<()> {
    let attempts = message.attempts + 1;
    let delivery = match channel_of(store, &message.channel).await? {
        Some((kind, target)) => {
            let payload: Value = serde_json::from_str(&message.body)?;
            deliver::deliver(http, kind, &target, &payload, &message.idempotency_key).await
        }
        None => Delivery::Rejected(format!(
            "the channel `{}` was removed; add it again and retry",
            message.channel
        )),
    };
    let result = retry::after_attempt(
        &delivery,
        attempts,
        now_ms(),
        message.give_up_at,
        rand::random::<f64>(),
    );
    log(&message, attempts, &result);
    store.record_attempt(message.id, &result).await?;
    Ok(())
}

fn log(message: &Message, attempts: i64, result: &AttemptResult) {
    match result.status {
        MessageStatus::Sent => {
            tracing::info!(message = message.id, channel = %message.channel, attempts, "notification sent")
        }
        status => tracing::warn!(
            message = message.id,
            channel = %message.channel,
            attempts,
            status = status.as_str(),
            error = result.error.as_deref().unwrap_or(""),
            "notification not sent"
        ),
    }
}

async fn channel_of(store: &Store, name: &str) -> anyhow::Result<Option<(ChannelKind, Target)>> {
    let Some((kind, target)) = store.channel_target(name).await? else {
        return Ok(None);
    };
    let kind = ChannelKind::parse(&kind).map_err(anyhow::Error::msg)?;
    Ok(Some((kind, serde_json::from_str(&target)?)))
}

/// Sends a test message to a channel now, outside the outbox: what the
/// receiver answered, for `sluice channel test`.
pub async fn test_channel(
    store: &Store,
    name: &str,
    actor: &str,
    public_url: &str,
) -> anyhow::Result<Result<(), String>> {
    let Some((kind, target)) = channel_of(store, name).await? else {
        anyhow::bail!("no channel named `{name}`");
    };
    let event = ChangeEvent {
        id: 0,
        at: now_ms(),
        actor: actor.to_string(),
        kind: "channel.test".into(),
        service: None,
        environment: None,
        subject: format!("channel {name}"),
        summary: format!("A test message to `{name}`, sent by {actor}: this channel works."),
        before: None,
        after: None,
    };
    let key = uuid::Uuid::new_v4().to_string();
    let events = [event];
    let batch = Batch {
        events: &events,
        public_url,
        key: &key,
    };
    let payload = render::payload(kind, &batch);
    Ok(
        match deliver::deliver(&deliver::http_client(), kind, &target, &payload, &key).await {
            Delivery::Sent { .. } => Ok(()),
            other => Err(describe(&other)),
        },
    )
}

fn describe(delivery: &Delivery) -> String {
    match delivery {
        Delivery::Sent { .. } => "sent".into(),
        Delivery::Refused { status, detail, .. } if detail.is_empty() => {
            format!("answered {status}")
        }
        Delivery::Refused { status, detail, .. } => format!("answered {status}: {detail}"),
        Delivery::Rejected(why) | Delivery::Unreachable(why) => why.clone(),
    }
}
