//! The controllers' lease: which of the servers sharing a database runs
//! the controllers, under which term, until when (by the database's clock,
//! so that servers' clocks need not agree). The server that holds it sets
//! its term as the store's fence: the writes that act (a release, a
//! deployment and its end, an instance, the release an environment runs, a
//! promotion's state, an experiment's step, a run's claim and its end) check
//! it in their own transaction and are refused once another server took the
//! lease over.

use std::sync::{Arc, RwLock};

use sqlx::FromRow;

use crate::{Dialect, Result, Store, StoreError};

/// The one lease every controller runs under.
const CONTROLLERS: &str = "controllers";

/// Who holds the controllers' lease.
#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub struct ControllersLease {
    /// The holding server's name (host, pid and a random part).
    pub holder: String,
    /// Where other servers forward requests to it.
    pub address: String,
    pub term: i64,
    /// Milliseconds until it expires unless renewed; negative once expired.
    pub left_ms: i64,
}

/// The term a store's writes must still hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub term: i64,
}

/// Shared by every clone of a store.
pub(crate) type FenceCell = Arc<RwLock<Option<Fence>>>;

impl Store {
    /// The database's clock in milliseconds, as an SQL expression.
    fn db_now(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Takes the controllers' lease for `ttl_ms` when no one holds it, the
    /// holder's ran out, or `holder` holds it already (the same server,
    /// restarted: the new term fences its previous process); the new term,
    /// or `None` when another holds it.
    pub async fn acquire_controllers(
        &self,
        holder: &str,
        address: &str,
        ttl_ms: i64,
    ) -> Result<Option<i64>> {
        let now = self.db_now();
        let sql = format!(
            "INSERT INTO controller_leases (name, holder, address, term, expires_at) VALUES ($1, $2, $3, 1, {now} + $4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, address = excluded.address, \
             term = controller_leases.term + 1, expires_at = excluded.expires_at \
             WHERE controller_leases.expires_at < {now} OR controller_leases.holder = excluded.holder RETURNING term"
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(CONTROLLERS)
            .bind(holder)
            .bind(address)
            .bind(ttl_ms)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Extends the lease `holder` holds at `term`; false when another server
    /// took it over. (One that ran out with no one taking it is still held:
    /// no one else acted meanwhile.)
    pub async fn renew_controllers(&self, holder: &str, term: i64, ttl_ms: i64) -> Result<bool> {
        let now = self.db_now();
        let sql = format!(
            "UPDATE controller_leases SET expires_at = {now} + $1 \
             WHERE name = $2 AND holder = $3 AND term = $4"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ttl_ms)
            .bind(CONTROLLERS)
            .bind(holder)
            .bind(term)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Says that server `name` is up and reached at `address`, so that
    /// agents learn where to turn when the server they reach is gone.
    pub async fn note_server(&self, name: &str, address: &str) -> Result<()> {
        let now = self.db_now();
        let sql = format!(
            "INSERT INTO servers (name, address, seen_at) VALUES ($1, $2, {now}) \
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, seen_at = excluded.seen_at"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(address)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A server that stops cleanly is no longer one to turn to.
    pub async fn forget_server(&self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM servers WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Where the servers heard from within `within` are reached, by name.
    pub async fn servers(&self, within: std::time::Duration) -> Result<Vec<String>> {
        let now = self.db_now();
        let sql = format!(
            "SELECT address FROM servers WHERE seen_at >= {now} - $1 ORDER BY name LIMIT 64"
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(within.as_millis()).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Gives the lease up at once (a clean shutdown), so that another server
    /// takes it over without waiting for it to run out.
    pub async fn release_controllers(&self, holder: &str, term: i64) -> Result<()> {
        sqlx::query(
            "UPDATE controller_leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND term = $3",
        )
        .bind(CONTROLLERS)
        .bind(holder)
        .bind(term)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who holds the controllers' lease, if anyone ever did.
    pub async fn controllers(&self) -> Result<Option<ControllersLease>> {
        let now = self.db_now();
        let sql = format!(
            "SELECT holder, address, term, expires_at - {now} AS left_ms FROM controller_leases WHERE name = $1"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(CONTROLLERS)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The secret the servers sharing this database sign forwarded
    /// requests with: made by the first that asks, the same for all.
    pub async fn peer_secret(&self) -> Result<String> {
        let made = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        sqlx::query("INSERT INTO server_secrets (name, secret) VALUES ('peers', $1) ON CONFLICT (name) DO NOTHING")
            .bind(made)
            .execute(&self.pool)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT secret FROM server_secrets WHERE name = 'peers'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// From now on, the writes that act hold `fence`: each checks, in its
    /// own transaction, that the lease is still held at that term.
    pub fn hold_fence(&self, fence: Fence) {
        *self.fence.write().unwrap() = Some(fence);
    }

    /// Refuses the write of `tx` when this store holds a fence whose term
    /// is no longer the lease's. On PostgreSQL the lease's row is locked
    /// for share until `tx` ends, so that no takeover commits in between.
    pub(crate) async fn check_fence(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<()> {
        let Some(fence) = self.fence.read().unwrap().clone() else {
            return Ok(());
        };
        let lock = match self.dialect {
            Dialect::Postgres => " FOR SHARE",
            Dialect::Sqlite => "",
        };
        let sql = format!(
            "SELECT term FROM controller_leases WHERE name = $1 AND holder = $2 AND term = $3{lock}"
        );
        let held: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(CONTROLLERS)
            .bind(&fence.holder)
            .bind(fence.term)
            .fetch_optional(&mut **tx)
            .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(StoreError::Fenced(fence.term)),
        }
    }
}
