//! Wake-ups between the loops that meet in the store: whoever writes a row
//! another loop watches says so by topic, and that loop looks at once
//! instead of at its next tick. In one process a topic is a `Notify`; on
//! PostgreSQL a wake-up also goes out by `NOTIFY`, so that a loop on
//! another server sharing the database hears it. A wake-up is only a hint:
//! every loop also looks now and then, so a lost one delays, never loses.
//!
//! On PostgreSQL the server that runs CI also tells every server what its
//! live streams show ([`Notice`]: a run's state, a stored piece of a log),
//! so that a server standing by serves those streams itself.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::{Notify, broadcast};

use crate::{Dialect, Store};

/// The PostgreSQL channel wake-ups travel on.
const CHANNEL: &str = "sluice_wake";
/// The PostgreSQL channel notices travel on.
const NOTICES: &str = "sluice_notices";

/// What a live stream shows, as the server running CI tells every server
/// sharing the database. Small by design (`NOTIFY` carries under 8000
/// bytes): a log's lines are read from the store, where they already are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// A run is now in `status`.
    Run {
        run_id: i64,
        status: crate::RunStatus,
    },
    /// Lines `from` to `through` of a run's log are stored.
    Logs {
        run_id: i64,
        from: i64,
        through: i64,
    },
}

/// What changed, named by who waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// A promotion waits for its gates (the gatekeeper looks).
    PromotionAsked,
    /// A promotion's gates opened (the deployments loop deploys it).
    PromotionOpened,
    /// An experiment was opened (the experiments loop takes it up).
    ExperimentOpened,
    /// An experiment ended (deployments waiting for its environment go on).
    ExperimentEnded,
    /// A person sent an experiment a command (its loop takes it).
    ExperimentCommand,
    /// A job was offered to agents (their long polls look).
    JobOffered,
    /// An instance was placed on an agent's host, or asked to stop there
    /// (that agent's long poll answers).
    PlacementChanged,
    /// A server held a webhook delivery (the server running CI turns it
    /// into a run).
    WebhookHeld,
    /// A run ended (the release maker looks for a green mainline run to
    /// release).
    RunEnded,
}

const TOPICS: [Topic; 9] = [
    Topic::PromotionAsked,
    Topic::PromotionOpened,
    Topic::ExperimentOpened,
    Topic::ExperimentEnded,
    Topic::ExperimentCommand,
    Topic::JobOffered,
    Topic::PlacementChanged,
    Topic::WebhookHeld,
    Topic::RunEnded,
];

impl Topic {
    fn name(self) -> &'static str {
        match self {
            Topic::PromotionAsked => "promotion-asked",
            Topic::PromotionOpened => "promotion-opened",
            Topic::ExperimentOpened => "experiment-opened",
            Topic::ExperimentEnded => "experiment-ended",
            Topic::ExperimentCommand => "experiment-command",
            Topic::JobOffered => "job-offered",
            Topic::PlacementChanged => "placement-changed",
            Topic::WebhookHeld => "webhook-held",
            Topic::RunEnded => "run-ended",
        }
    }

    fn index(self) -> usize {
        TOPICS.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// One process's side of the wake-ups and notices.
pub(crate) struct Wakes {
    topics: [Notify; TOPICS.len()],
    /// Names this process in what it sends, so that it skips its own echo.
    sender: String,
    /// Every notice heard on PostgreSQL, this server's own included (one
    /// that stands by and then takes over keeps its streams going).
    notices: broadcast::Sender<Notice>,
}

impl Wakes {
    pub(crate) fn new() -> Arc<Wakes> {
        Arc::new(Wakes {
            topics: Default::default(),
            sender: uuid::Uuid::new_v4().simple().to_string(),
            notices: broadcast::channel(4096).0,
        })
    }

    /// A notice as it came over the channel; anything else is ignored.
    fn heard_notice(&self, payload: &str) {
        if let Ok(notice) = serde_json::from_str::<Notice>(payload) {
            let _ = self.notices.send(notice);
        }
    }

    /// Wakes whoever waits now, and the next to wait if nobody does (a
    /// loop busy with its pass looks again right after it).
    fn fire(&self, topic: Topic) {
        let notify = &self.topics[topic.index()];
        notify.notify_waiters();
        notify.notify_one();
    }

    /// A wake-up as it came over the channel: `topic sender`.
    fn heard(&self, payload: &str) {
        let Some((name, sender)) = payload.split_once(' ') else {
            return;
        };
        if sender == self.sender {
            return;
        }
        if let Some(topic) = TOPICS.iter().find(|t| t.name() == name) {
            self.fire(*topic);
        }
    }
}

impl Store {
    /// Says that `topic` changed: to the loops of this process, and on
    /// PostgreSQL to those of every server sharing the database.
    pub async fn wake(&self, topic: Topic) {
        self.wakes.fire(topic);
        if self.dialect == Dialect::Postgres {
            let payload = format!("{} {}", topic.name(), self.wakes.sender);
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&self.pool)
                .await
            {
                tracing::debug!(error = %e, "a wake-up did not go out; the others look at their next tick");
            }
        }
    }

    /// Resolves when `topic` is woken (create it before looking, so that a
    /// wake-up during the look is not missed).
    pub fn woken(&self, topic: Topic) -> Notified<'_> {
        self.wakes.topics[topic.index()].notified()
    }

    /// Tells every server sharing the database what a live stream shows.
    /// With SQLite there is one server, which has its own events: nothing
    /// goes out. A notice that fails to go out is a stream a step behind,
    /// which the store catches up with at the run's end.
    pub async fn tell(&self, notice: &Notice) {
        if self.dialect != Dialect::Postgres {
            return;
        }
        let payload = serde_json::to_string(notice).unwrap_or_default();
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTICES)
            .bind(payload)
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %e, "a notice did not go out");
        }
    }

    /// The notices heard from now on (PostgreSQL only; with SQLite none come).
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.wakes.notices.subscribe()
    }
}

/// Hears other servers' wake-ups on PostgreSQL for as long as the store
/// lives, connecting again after a lost connection.
pub(crate) fn listen(url: String, wakes: Weak<Wakes>) {
    tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen for wake-ups; trying again");
                    if wakes.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if listener.listen_all([CHANNEL, NOTICES]).await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            loop {
                // Now and then, to stop once the store is gone.
                let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
                let Some(wakes) = wakes.upgrade() else {
                    return;
                };
                match heard {
                    Ok(Ok(notification)) if notification.channel() == NOTICES => {
                        wakes.heard_notice(notification.payload())
                    }
                    Ok(Ok(notification)) => wakes.heard(notification.payload()),
                    Ok(Err(_)) => break,
                    Err(_) => {}
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_up_reaches_every_store_on_the_same_database() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, url) in crate::testing::database_urls(dir.path()).await {
            let here = Store::connect(&url).await.unwrap();
            // Woken before anyone waits: the next wait returns at once.
            here.wake(Topic::PromotionOpened).await;
            here.woken(Topic::PromotionOpened).await;
            if kind == "postgres" {
                let there = Store::connect(&url).await.unwrap();
                // Wait until the other store listens: a wake-up it hears.
                for tries in 1.. {
                    assert!(tries < 100, "the other store never heard a wake-up");
                    let woken = there.woken(Topic::ExperimentCommand);
                    here.wake(Topic::ExperimentCommand).await;
                    if tokio::time::timeout(Duration::from_millis(200), woken)
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
                let woken = there.woken(Topic::ExperimentEnded);
                here.wake(Topic::ExperimentEnded).await;
                tokio::time::timeout(Duration::from_secs(10), woken)
                    .await
                    .expect("the other server heard the wake-up");
                // It listens by now: a notice reaches it, and the teller too.
                let (mut theirs, mut ours) = (there.notices(), here.notices());
                let notice = Notice::Logs {
                    run_id: 7,
                    from: 0,
                    through: 12,
                };
                here.tell(&notice).await;
                for heard in [&mut theirs, &mut ours] {
                    let got = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await;
                    assert_eq!(got.expect("a notice within 10 s").unwrap(), notice);
                }
            } else {
                let mut heard = here.notices();
                here.tell(&Notice::Run {
                    run_id: 1,
                    status: crate::RunStatus::Success,
                })
                .await;
                assert!(heard.try_recv().is_err(), "with SQLite no notice goes out");
            }
        }
    }

    #[test]
    fn a_store_skips_its_own_echo_and_unknown_topics() {
        let wakes = Wakes::new();
        wakes.heard(&format!("experiment-ended {}", wakes.sender));
        wakes.heard("no-such-topic other");
        wakes.heard("experiment-ended");
        let waiting = wakes.topics[Topic::ExperimentEnded.index()].notified();
        let mut waiting = std::pin::pin!(waiting);
        assert!(!waiting.as_mut().enable(), "nothing was fired yet");
        wakes.heard("experiment-ended other-server");
        let fired = futures_ready(waiting);
        assert!(fired, "another server's wake-up fires the topic");
    }

    fn futures_ready(f: std::pin::Pin<&mut Notified<'_>>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        std::future::Future::poll(f, &mut cx).is_ready()
    }
}
