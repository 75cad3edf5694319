//! Leases: cross-replica single flight. Before generating a key a replica takes the
//! key's lease; replicas that fail to take it wait for the manifest instead. A lease
//! expires, so a holder that crashed blocks its key for one TTL at most; a live
//! holder renews well before then.
//!
//! Clock: expiry is judged by the database's clock alone, in both the write and the
//! check, never by a replica's. Replicas' clocks drift apart; the database is the one
//! thing they share, so a replica whose clock runs fast cannot steal a live lease and
//! one that runs slow cannot keep a dead one. A holder therefore never learns the
//! expiry instant in its own clock: it should renew after a fraction of the TTL
//! (e.g. a third) measured on its own monotonic clock, since durations agree even when
//! clocks do not.

use crate::backend::with_pool;
use crate::Ledger;
use crate::LedgerError;
use imagegate_core::ContentKey;
use std::time::Duration;

/// Longest TTL honoured (about a century), so `now + ttl` cannot overflow BIGINT.
const MAX_TTL_MS: i64 = 100 * 366 * 24 * 3600 * 1000;

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).map_or(MAX_TTL_MS, |ms| ms.min(MAX_TTL_MS))
}

impl Ledger {
    /// Takes `key`'s lease for `holder` for `ttl` if nobody holds it or the last
    /// holder's lease has expired; true when taken. Atomic across replicas: of any
    /// number of concurrent callers at most one gets true. Not re-entrant: a holder
    /// asking again while its lease is live gets false (use [`Ledger::renew_lease`]).
    pub async fn try_acquire_lease(
        &self,
        key: ContentKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, LedgerError> {
        // One statement: insert, or take over an expired row. The row lock of the
        // upsert serialises racers; whoever comes second sees the winner's fresh
        // expiry and its WHERE fails, so it changes no row.
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "INSERT INTO leases (key, holder, expires_at) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at WHERE leases.expires_at <= {now}"
        );
        let done = with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(key.to_hex())
                .bind(holder)
                .bind(ttl_ms(ttl))
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(done == 1)
    }

    /// Extends `holder`'s live lease on `key` to `ttl` from now; false when the lease
    /// is no longer ours (expired, taken over or released), in which case the caller
    /// must stop treating the key as its own.
    pub async fn renew_lease(
        &self,
        key: ContentKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "UPDATE leases SET expires_at = {now} + $3 \
             WHERE key = $1 AND holder = $2 AND expires_at > {now}"
        );
        let done = with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(key.to_hex())
                .bind(holder)
                .bind(ttl_ms(ttl))
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(done == 1)
    }

    /// Gives up `holder`'s lease on `key`; does nothing when someone else holds it.
    pub async fn release_lease(&self, key: ContentKey, holder: &str) -> Result<(), LedgerError> {
        with_pool!(&self.pool, p => {
            sqlx::query("DELETE FROM leases WHERE key = $1 AND holder = $2")
                .bind(key.to_hex())
                .bind(holder)
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_both_backends, TestDb};
    use std::sync::Arc;

    on_both_backends!(
        exactly_one_replica_wins_each_race,
        an_expired_lease_can_be_taken_over,
        a_released_lease_can_be_taken,
        only_the_holder_renews_or_releases,
        renewing_keeps_others_out,
    );

    const LONG: Duration = Duration::from_secs(60);

    fn key(n: u8) -> ContentKey {
        format!("{:02x}", n).repeat(32).parse().unwrap()
    }

    /// Two ledgers on one database, as two replicas; eight callers (four on each) race
    /// for one key at once, round after round. Even rounds race for a free key (the
    /// insert path), odd rounds for an expired one (the take-over path).
    async fn exactly_one_replica_wins_each_race(db: TestDb) {
        let replicas = [db.open().await, db.open().await];
        let k = key(1);
        let mut previous: Option<String> = None;
        for round in 0..30 {
            if let Some(winner) = previous.take() {
                replicas[round % 2].release_lease(k, &winner).await.unwrap();
            }
            if round % 2 == 1 {
                // A lease that is already over: expires_at = now.
                assert!(replicas[0]
                    .try_acquire_lease(k, "crashed", Duration::ZERO)
                    .await
                    .unwrap());
            }
            let start = Arc::new(tokio::sync::Barrier::new(8));
            let racers: Vec<_> = (0..8)
                .map(|i| {
                    let ledger = replicas[i % 2].clone();
                    let start = start.clone();
                    let holder = format!("replica-{}/request-{round}-{i}", i % 2);
                    tokio::spawn(async move {
                        start.wait().await;
                        let won = ledger.try_acquire_lease(k, &holder, LONG).await.unwrap();
                        won.then_some(holder)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for racer in racers {
                winners.extend(racer.await.unwrap());
            }
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            previous = winners.pop();
        }
    }

    async fn an_expired_lease_can_be_taken_over(db: TestDb) {
        let (a, b) = (db.open().await, db.open().await);
        let k = key(2);
        assert!(a
            .try_acquire_lease(k, "a", Duration::from_millis(300))
            .await
            .unwrap());
        assert!(!b.try_acquire_lease(k, "b", LONG).await.unwrap());
        // The holder "crashed": nobody renews.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(b.try_acquire_lease(k, "b", LONG).await.unwrap());
        // The old holder has lost it and cannot take it back by renewing or releasing.
        assert!(!a.renew_lease(k, "a", LONG).await.unwrap());
        a.release_lease(k, "a").await.unwrap();
        assert!(!a.try_acquire_lease(k, "a", LONG).await.unwrap());
    }

    async fn a_released_lease_can_be_taken(db: TestDb) {
        let (a, b) = (db.open().await, db.open().await);
        let k = key(3);
        assert!(a.try_acquire_lease(k, "a", LONG).await.unwrap());
        assert!(!b.try_acquire_lease(k, "b", LONG).await.unwrap());
        // Not re-entrant: the holder asking again is refused too.
        assert!(!a.try_acquire_lease(k, "a", LONG).await.unwrap());
        a.release_lease(k, "a").await.unwrap();
        assert!(b.try_acquire_lease(k, "b", LONG).await.unwrap());
        // Releasing twice, or a lease never held, is harmless.
        a.release_lease(k, "a").await.unwrap();
        b.release_lease(key(4), "b").await.unwrap();
    }

    async fn only_the_holder_renews_or_releases(db: TestDb) {
        let (a, b) = (db.open().await, db.open().await);
        let k = key(5);
        assert!(a.try_acquire_lease(k, "a", LONG).await.unwrap());
        assert!(!b.renew_lease(k, "b", LONG).await.unwrap());
        b.release_lease(k, "b").await.unwrap();
        assert!(!b.try_acquire_lease(k, "b", LONG).await.unwrap());
        assert!(a.renew_lease(k, "a", LONG).await.unwrap());
        // Keys are independent.
        assert!(b.try_acquire_lease(key(6), "b", LONG).await.unwrap());
        // Renewing a lease nobody holds is refused.
        assert!(!b.renew_lease(key(7), "b", LONG).await.unwrap());
    }

    async fn renewing_keeps_others_out(db: TestDb) {
        let (a, b) = (db.open().await, db.open().await);
        let k = key(8);
        let ttl = Duration::from_millis(400);
        assert!(a.try_acquire_lease(k, "a", ttl).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(a.renew_lease(k, "a", ttl).await.unwrap());
        // Past the first expiry, within the renewed one.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!b.try_acquire_lease(k, "b", LONG).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(b.try_acquire_lease(k, "b", LONG).await.unwrap());
    }

    #[test]
    fn ttls_are_whole_milliseconds_and_capped() {
        assert_eq!(ttl_ms(Duration::from_micros(1_999)), 1);
        assert_eq!(ttl_ms(Duration::MAX), MAX_TTL_MS);
    }
}
