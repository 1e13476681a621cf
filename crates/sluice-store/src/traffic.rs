//! The proxy's traffic as kept: ten-second buckets of requests and 5xx
//! answers per environment and variant, added to as the proxy flushes them.

use serde::Serialize;
use sqlx::FromRow;

use crate::{Result, Store};

/// How long a bucket is, in milliseconds.
pub const TRAFFIC_BUCKET_MS: i64 = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, FromRow)]
pub struct TrafficBucket {
    pub service: String,
    pub environment: String,
    /// The bucket's start, ms since the epoch, a multiple of [`TRAFFIC_BUCKET_MS`].
    pub bucket: i64,
    pub a_requests: i64,
    pub a_errors: i64,
    pub b_requests: i64,
    pub b_errors: i64,
}

impl Store {
    /// Adds the buckets' counts to those kept (a bucket flushed in parts,
    /// across a restart say, sums up), in one transaction.
    pub async fn add_traffic(&self, buckets: &[TrafficBucket]) -> Result<()> {
        if buckets.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for b in buckets {
            sqlx::query(
                "INSERT INTO traffic (service, environment, bucket, a_requests, a_errors, b_requests, b_errors) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (service, environment, bucket) DO UPDATE SET \
                 a_requests = traffic.a_requests + excluded.a_requests, \
                 a_errors = traffic.a_errors + excluded.a_errors, \
                 b_requests = traffic.b_requests + excluded.b_requests, \
                 b_errors = traffic.b_errors + excluded.b_errors",
            )
            .bind(&b.service)
            .bind(&b.environment)
            .bind(b.bucket)
            .bind(b.a_requests)
            .bind(b.a_errors)
            .bind(b.b_requests)
            .bind(b.b_errors)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An environment's buckets from `since_ms` to `until_ms`, oldest first.
    pub async fn traffic(
        &self,
        service: &str,
        environment: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<TrafficBucket>> {
        let rows = sqlx::query_as(
            "SELECT service, environment, bucket, a_requests, a_errors, b_requests, b_errors FROM traffic \
             WHERE service = $1 AND environment = $2 AND bucket >= $3 AND bucket <= $4 ORDER BY bucket",
        )
        .bind(service)
        .bind(environment)
        .bind(since_ms)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Forgets the buckets that started before `before_ms`; returns how many.
    pub async fn forget_traffic_before(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM traffic WHERE bucket < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
