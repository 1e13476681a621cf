//! The controllers' lease among servers sharing PostgreSQL: taken at start
//! when free, else waited for while standing by; renewed while held; given
//! up at a clean stop. A holder that cannot renew in time stops acting
//! before its lease could run out, so that two servers never act at once
//! (and the store's fence refuses its acting writes if it did not).

use std::time::{Duration, Instant};

use sluice_store::{Fence, Store};
use tokio_util::sync::CancellationToken;

/// How this server takes part in the lease.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// This server's name in the lease (see [`crate::data_dir::server_name`]).
    pub holder: String,
    /// Where the other servers forward requests while this one holds it.
    pub address: String,
    /// How long the lease lasts unless renewed: another server takes it
    /// over at most this long (and a poll) after this one dies.
    pub ttl: Duration,
}

impl Candidate {
    /// `name` is the server's own, kept in its data directory: a restarted
    /// server takes its lease back at once instead of waiting it out.
    pub fn new(name: String, address: String, ttl: Duration) -> Candidate {
        Candidate {
            holder: name,
            address,
            ttl,
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Takes the lease if it is free: its term, set as the store's fence.
    pub async fn try_take(&self, store: &Store) -> anyhow::Result<Option<i64>> {
        let term = store
            .acquire_controllers(&self.holder, &self.address, self.ttl_ms())
            .await?;
        if let Some(term) = term {
            store.hold_fence(Fence {
                holder: self.holder.clone(),
                term,
            });
            tracing::info!(holder = %self.holder, term, "this server runs the controllers");
        }
        Ok(term)
    }

    /// Waits until this server takes the lease (another server died or
    /// stopped), trying every `poll`.
    pub async fn wait_to_take(&self, store: &Store, stop: &CancellationToken) -> Option<i64> {
        let poll = self.poll();
        loop {
            match self.try_take(store).await {
                Ok(Some(term)) => return Some(term),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not ask for the controllers' lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// How often a standby asks for the lease.
    fn poll(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Renews the lease held at `term` until `stop`; cancels `lost` when
    /// another server took it over, or when no renewal succeeded for
    /// [`Candidate::give_up_after`] (the database unreachable, say): past
    /// that, this server cannot know it still holds it.
    pub async fn keep(
        &self,
        store: Store,
        term: i64,
        stop: CancellationToken,
        lost: CancellationToken,
    ) {
        // A round (a wait and a renewal that may time out) lasts at most
        // 3/10 of the lease, so that giving up at 6/10 happens before 9/10.
        let (every, patience) = (self.ttl / 5, self.ttl / 10);
        let give_up = self.give_up_after();
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            // Sent before the database's clock extends the lease: counting
            // from here never overestimates what is left.
            let asked = Instant::now();
            match tokio::time::timeout(
                patience,
                store.renew_controllers(&self.holder, term, self.ttl_ms()),
            )
            .await
            {
                Ok(Ok(true)) => renewed = asked,
                Ok(Ok(false)) => {
                    tracing::error!(holder = %self.holder, term, "another server took the controllers' lease over");
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "could not renew the controllers' lease"),
                Err(_) => tracing::warn!("renewing the controllers' lease timed out"),
            }
            if renewed.elapsed() >= give_up {
                tracing::error!(holder = %self.holder, term, "the controllers' lease could not be renewed in time");
                lost.cancel();
                return;
            }
        }
    }

    /// How long a holder goes on without a renewal: well inside the lease,
    /// so that it stops before another server may take over.
    fn give_up_after(&self) -> Duration {
        self.ttl * 6 / 10
    }
}

/// How often a server says it is up (see [`Store::note_server`]).
const SAY_UP_EVERY: Duration = Duration::from_secs(5);

/// Says this server is up, and where, until `stop`: agents hear of every
/// server, to turn to another when the one they reach is gone.
pub async fn say_up(store: Store, me: Candidate, stop: CancellationToken) {
    loop {
        if let Err(e) = store.note_server(&me.holder, &me.address).await {
            tracing::debug!(error = %e, "could not say this server is up");
        }
        tokio::select! {
            _ = tokio::time::sleep(SAY_UP_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}
