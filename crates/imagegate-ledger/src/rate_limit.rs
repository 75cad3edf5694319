//! Per-key request rates shared by every replica: GCRA (the generic cell rate
//! algorithm, which the in-process `governor` limiter also runs) with its one piece
//! of state, the theoretical arrival time of the next request, kept per bucket in the
//! ledger database and updated in one statement, judged by the database's clock.

use crate::backend::with_pool;
use crate::{Ledger, LedgerError};
use std::time::Duration;

impl Ledger {
    /// Takes one request from `bucket`'s allowance of `per_minute` requests with
    /// bursts of up to `burst`: None when admitted, else how long to wait.
    pub async fn take_rate(
        &self,
        bucket: &str,
        per_minute: u32,
        burst: u32,
    ) -> Result<Option<Duration>, LedgerError> {
        let interval_us = 60_000_000 / i64::from(per_minute.max(1));
        let tolerance_us = interval_us.saturating_mul(i64::from(burst.max(1)));
        let now = format!("({} * 1000)", self.pool.now_ms_sql());
        let take = format!(
            "INSERT INTO rate_limits (bucket, tat_us) VALUES ($1, {now} + $2) \
             ON CONFLICT (bucket) DO UPDATE SET tat_us = \
               (CASE WHEN rate_limits.tat_us > {now} THEN rate_limits.tat_us ELSE {now} END) + $2 \
             WHERE (CASE WHEN rate_limits.tat_us > {now} THEN rate_limits.tat_us ELSE {now} END) \
               + $2 - {now} <= $3 \
             RETURNING tat_us"
        );
        let ahead = format!("SELECT tat_us - {now} FROM rate_limits WHERE bucket = $1");
        let wait_us: Option<i64> = with_pool!(&self.pool, p => {
            async {
                let admitted: Option<i64> = sqlx::query_scalar(&take)
                    .bind(bucket)
                    .bind(interval_us)
                    .bind(tolerance_us)
                    .fetch_optional(p)
                    .await?;
                if admitted.is_some() {
                    return Ok(None);
                }
                let ahead: i64 = sqlx::query_scalar(&ahead).bind(bucket).fetch_one(p).await?;
                Ok::<_, sqlx::Error>(Some(ahead + interval_us - tolerance_us))
            }
            .await
        })
        .map_err(|e| self.db(e))?;
        Ok(wait_us.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0).max(1))))
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{on_both_backends, TestDb};
    use std::sync::Arc;

    on_both_backends!(two_replicas_share_one_rate);

    /// A burst of 5 at 60 a minute, taken by two replicas at once: 5 pass between
    /// them, the rest are told to wait about a second.
    async fn two_replicas_share_one_rate(db: TestDb) {
        let a = Arc::new(db.open().await);
        let b = Arc::new(db.open().await);
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let ledger = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { ledger.take_rate("key-1", 60, 5).await.unwrap() })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            match t.await.unwrap() {
                None => admitted += 1,
                Some(wait) => assert!(
                    wait <= std::time::Duration::from_millis(1_500),
                    "waits about one interval, not {wait:?}"
                ),
            }
        }
        assert_eq!(admitted, 5);
        // Another bucket has its own allowance.
        assert_eq!(a.take_rate("key-2", 60, 5).await.unwrap(), None);
        a.close().await;
        b.close().await;
    }
}
