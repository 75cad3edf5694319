//! Budget reservations, shared by every replica on the ledger database. A miss
//! reserves its expected cost before it calls a provider; the check of the key's
//! spend and the reservation it grants are one transaction, serialised per key
//! (see `write_tx`), so replicas racing for a key's last dollar cannot both get it.
//! A reservation expires after its TTL, so one held by a replica that died frees
//! itself; a live one goes when its charge settles.

use crate::backend::with_pool;
use crate::write_tx::{BeginWrite, LockName};
use crate::{Ledger, LedgerError};
use chrono::{DateTime, SecondsFormat, Utc};
use imagegate_core::Micros;
use serde::Serialize;
use std::time::Duration;

/// The bucket requests without an API key are reserved and booked under.
pub const ANONYMOUS_BUCKET: &str = "anonymous";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationId(pub i64);

/// A budget's period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetWindow {
    Daily,
    Monthly,
}

impl BudgetWindow {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetWindow::Daily => "daily",
            BudgetWindow::Monthly => "monthly",
        }
    }
}

/// A limit on what a key may spend from `since` on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpendLimit {
    pub window: BudgetWindow,
    pub since: DateTime<Utc>,
    pub limit: Micros,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reserve {
    Granted(ReservationId),
    /// `committed` (spent plus reserved) plus `needed` would pass `limit`.
    Refused {
        window: BudgetWindow,
        limit: Micros,
        committed: Micros,
        needed: Micros,
    },
}

fn ttl_ms(ttl: Duration) -> i64 {
    // A day at most: a reservation outliving that is a bug, not a long request.
    i64::try_from(ttl.as_millis()).map_or(86_400_000, |ms| ms.min(86_400_000))
}

fn bucket(api_key: Option<&str>) -> &str {
    api_key.unwrap_or(ANONYMOUS_BUCKET)
}

/// One key's spend since an instant: requests booked under it (settled or still in
/// progress). Anonymous requests have no key, so they are a query of their own (an
/// `=` the (api_key, created_at) index serves, unlike `IS NOT DISTINCT FROM`).
pub(crate) fn spent_sql(api_key: Option<&str>) -> &'static str {
    if api_key.is_some() {
        "SELECT CAST(COALESCE(SUM(micros), 0) AS BIGINT) FROM requests \
         WHERE api_key = $1 AND created_at >= $2"
    } else {
        "SELECT CAST(COALESCE(SUM(micros), 0) AS BIGINT) FROM requests \
         WHERE api_key IS NULL AND created_at >= $2 AND $1 IS NULL"
    }
}

impl Ledger {
    /// Reserves `amount` for `api_key` (None: anonymous) unless a limit would be passed.
    pub async fn reserve(
        &self,
        api_key: Option<&str>,
        amount: Micros,
        limits: &[SpendLimit],
        ttl: Duration,
    ) -> Result<Reserve, LedgerError> {
        let now = self.pool.now_ms_sql();
        let bucket = bucket(api_key);
        let sinces: Vec<String> = limits
            .iter()
            .map(|l| l.since.to_rfc3339_opts(SecondsFormat::Millis, true))
            .collect();
        let drop_expired =
            format!("DELETE FROM reservations WHERE bucket = $1 AND expires_at <= {now}");
        let insert = format!(
            "INSERT INTO reservations (bucket, micros, expires_at) VALUES ($1, $2, {now} + $3) \
             RETURNING id"
        );
        let result = with_pool!(&self.pool, p => {
            async {
                let mut tx = p.begin_write().await?;
                tx.lock_name(&format!("budget:{bucket}")).await?;
                sqlx::query(&drop_expired).bind(bucket).execute(&mut *tx).await?;
                let reserved: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(micros), 0) AS BIGINT) FROM reservations \
                     WHERE bucket = $1",
                )
                .bind(bucket)
                .fetch_one(&mut *tx)
                .await?;
                for (limit, since) in limits.iter().zip(&sinces) {
                    let spent: i64 = sqlx::query_scalar(spent_sql(api_key))
                        .bind(api_key)
                        .bind(since)
                        .fetch_one(&mut *tx)
                        .await?;
                    let committed = Micros(spent) + Micros(reserved);
                    if committed + amount > limit.limit {
                        // Nothing written: the rollback on drop only releases the lock.
                        return Ok(Reserve::Refused {
                            window: limit.window,
                            limit: limit.limit,
                            committed,
                            needed: amount,
                        });
                    }
                }
                let id: i64 = sqlx::query_scalar(&insert)
                    .bind(bucket)
                    .bind(amount.0)
                    .bind(ttl_ms(ttl))
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Reserve::Granted(ReservationId(id)))
            }
            .await
        });
        result.map_err(|e| self.db(e))
    }

    /// Gives a reservation back (the request it was for will not spend it).
    pub async fn release_reservation(&self, id: ReservationId) -> Result<(), LedgerError> {
        with_pool!(&self.pool, p => {
            sqlx::query("DELETE FROM reservations WHERE id = $1")
                .bind(id.0)
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))
    }

    /// What `api_key` has spent since `since` plus what it holds reserved now.
    pub async fn committed(
        &self,
        api_key: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<Micros, LedgerError> {
        let now = self.pool.now_ms_sql();
        let reserved_sql = format!(
            "SELECT CAST(COALESCE(SUM(micros), 0) AS BIGINT) FROM reservations \
             WHERE bucket = $1 AND expires_at > {now}"
        );
        let since = since.to_rfc3339_opts(SecondsFormat::Millis, true);
        let (spent, reserved): (i64, i64) = with_pool!(&self.pool, p => {
            async {
                let spent: i64 = sqlx::query_scalar(spent_sql(api_key))
                    .bind(api_key)
                    .bind(&since)
                    .fetch_one(p)
                    .await?;
                let reserved: i64 = sqlx::query_scalar(&reserved_sql)
                    .bind(bucket(api_key))
                    .fetch_one(p)
                    .await?;
                Ok::<_, sqlx::Error>((spent, reserved))
            }
            .await
        })
        .map_err(|e| self.db(e))?;
        Ok(Micros(spent) + Micros(reserved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_both_backends, TestDb};
    use std::sync::Arc;

    on_both_backends!(
        replicas_racing_for_one_budget_never_pass_it,
        expired_reservations_free_themselves
    );

    fn daily(limit: i64) -> SpendLimit {
        SpendLimit {
            window: BudgetWindow::Daily,
            since: Utc::now() - chrono::Duration::hours(1),
            limit: Micros(limit),
        }
    }

    /// Two ledgers on one database (two replicas), 24 reservations at once for a
    /// budget that holds 3: exactly 3 are granted.
    async fn replicas_racing_for_one_budget_never_pass_it(db: TestDb) {
        let a = Arc::new(db.open().await);
        let b = Arc::new(db.open().await);
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let ledger = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    ledger
                        .reserve(
                            Some("team"),
                            Micros(2_000),
                            &[daily(6_500)],
                            Duration::from_secs(60),
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Reserve::Granted(_) => granted += 1,
                Reserve::Refused {
                    window, committed, ..
                } => {
                    assert_eq!(window, BudgetWindow::Daily);
                    assert!(committed <= Micros(6_500), "{committed}");
                }
            }
        }
        assert_eq!(granted, 3);
        assert_eq!(
            a.committed(Some("team"), daily(0).since).await.unwrap(),
            Micros(6_000)
        );
        // Another key's budget is its own.
        assert!(matches!(
            b.reserve(
                None,
                Micros(2_000),
                &[daily(6_500)],
                Duration::from_secs(60)
            )
            .await
            .unwrap(),
            Reserve::Granted(_)
        ));
        a.close().await;
        b.close().await;
    }

    async fn expired_reservations_free_themselves(db: TestDb) {
        let ledger = db.open().await;
        let granted = ledger
            .reserve(Some("k"), Micros(5_000), &[daily(6_000)], Duration::ZERO)
            .await
            .unwrap();
        assert!(matches!(granted, Reserve::Granted(_)));
        // The first expired at once (a replica that died): the second fits.
        let again = ledger
            .reserve(
                Some("k"),
                Micros(5_000),
                &[daily(6_000)],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let Reserve::Granted(id) = again else {
            panic!("an expired reservation still held the budget: {again:?}")
        };
        ledger.release_reservation(id).await.unwrap();
        assert_eq!(
            ledger.committed(Some("k"), daily(0).since).await.unwrap(),
            Micros::ZERO
        );
        ledger.close().await;
    }
}
