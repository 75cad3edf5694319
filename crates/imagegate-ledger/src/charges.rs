//! Charges recorded when they are incurred. A miss pays its provider long before it
//! is answered; if anything after that fails (decode, the CPU pool, the store, a
//! caller who left, a crash) the money is spent all the same. So the request row is
//! written the moment the provider has answered, with the paid stage and the status
//! `in_progress`, durable before the work goes on; it is settled later with the
//! stages that followed and the final status. A budget reservation shrinks by what
//! the charge already holds, and goes when the charge settles, in the same
//! transaction, so a key's spend is never counted twice nor missed.

use crate::backend::with_pool;
use crate::reservations::ReservationId;
use crate::write_tx::BeginWrite;
use crate::{Ledger, LedgerError, RequestRecord, RequestStatus};
use chrono::{SecondsFormat, Utc};
use imagegate_core::{Micros, StageCost};
use std::time::Duration;

/// The request row of an open charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeId(pub i64);

const INSERT_STAGE: &str = "INSERT INTO stages (request, stage, micros, wall_ms, cpu_ms, \
     bytes_in, bytes_out, detail, created_at, unpriced) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Inserts `stages` for request row `request` in transaction `tx` (a macro, as the
/// transaction's type is one per database backend).
macro_rules! insert_stages {
    ($tx:ident, $request:expr, $stages:expr, $created_at:expr) => {
        for s in $stages {
            sqlx::query(INSERT_STAGE)
                .bind($request)
                .bind(s.stage.as_str())
                .bind(s.micros.0)
                .bind(s.wall_ms)
                .bind(s.cpu_ms)
                .bind(saturating_i64(s.bytes_in))
                .bind(saturating_i64(s.bytes_out))
                .bind(s.detail.to_string())
                .bind($created_at)
                .bind(i16::from(s.unpriced))
                .execute(&mut *$tx)
                .await?;
        }
    };
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn total(stages: &[StageCost]) -> Micros {
    stages.iter().map(|s| s.micros).sum()
}

impl Ledger {
    /// Writes `request` as `in_progress` with the stages paid so far (the provider's),
    /// durable on return, and takes their cost off `reservation`.
    pub async fn open_charge(
        &self,
        request: &RequestRecord,
        paid: &[StageCost],
        reservation: Option<ReservationId>,
    ) -> Result<ChargeId, LedgerError> {
        let created_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let micros = total(paid);
        let id = with_pool!(&self.pool, p => {
            async {
                let mut tx = p.begin_write().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO requests (request_id, content_key, cache, status, provider, \
                     model, api_key, profile, micros, wall_ms, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                )
                .bind(&request.request_id)
                .bind(request.key.to_hex())
                .bind(request.cache.as_str())
                .bind(RequestStatus::InProgress.as_str())
                .bind(&request.provider)
                .bind(&request.model)
                .bind(&request.api_key)
                .bind(&request.profile)
                .bind(micros.0)
                .bind(request.wall_ms)
                .bind(&created_at)
                .fetch_one(&mut *tx)
                .await?;
                insert_stages!(tx, id, paid, &created_at);
                if let Some(r) = reservation {
                    sqlx::query(
                        "UPDATE reservations SET micros = CASE WHEN micros > $2 \
                         THEN micros - $2 ELSE 0 END WHERE id = $1",
                    )
                    .bind(r.0)
                    .bind(micros.0)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok::<i64, sqlx::Error>(id)
            }
            .await
        })
        .map_err(|e| self.db(e))?;
        Ok(ChargeId(id))
    }

    /// Adds `stages` to the charge, sets its final `status` and wall time, and drops
    /// `reservation`: one transaction, durable on return. Settling twice adds the
    /// stages twice, so callers settle once.
    pub async fn settle_charge(
        &self,
        charge: ChargeId,
        status: RequestStatus,
        stages: &[StageCost],
        wall_ms: f64,
        reservation: Option<ReservationId>,
    ) -> Result<(), LedgerError> {
        let created_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let micros = total(stages);
        with_pool!(&self.pool, p => {
            async {
                let mut tx = p.begin_write().await?;
                insert_stages!(tx, charge.0, stages, &created_at);
                // Saturating in SQL as in Rust: a total never wraps.
                sqlx::query(
                    "UPDATE requests SET status = $2, wall_ms = $3, \
                     micros = CASE WHEN micros > $5 - $4 THEN $5 ELSE micros + $4 END \
                     WHERE id = $1",
                )
                .bind(charge.0)
                .bind(status.as_str())
                .bind(wall_ms)
                .bind(micros.0)
                .bind(i64::MAX)
                .execute(&mut *tx)
                .await?;
                if let Some(r) = reservation {
                    sqlx::query("DELETE FROM reservations WHERE id = $1")
                        .bind(r.0)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await
        })
        .map_err(|e| self.db(e))
    }

    /// Marks charges still `in_progress` after `older_than` as `abandoned`: their
    /// process died between paying a provider and settling. Returns how many. Their
    /// cost stays counted; only the status changes.
    pub async fn abandon_stale_charges(&self, older_than: Duration) -> Result<u64, LedgerError> {
        let before =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let before = before.to_rfc3339_opts(SecondsFormat::Millis, true);
        with_pool!(&self.pool, p => {
            sqlx::query("UPDATE requests SET status = $1 WHERE status = $2 AND created_at <= $3")
                .bind(RequestStatus::Abandoned.as_str())
                .bind(RequestStatus::InProgress.as_str())
                .bind(&before)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))
    }

    /// A request row's status, cost and stage count (tests and audits).
    pub async fn charge(&self, charge: ChargeId) -> Result<ChargeRow, LedgerError> {
        let (status, micros, stages): (String, i64, i64) = with_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT r.status, r.micros, (SELECT COUNT(*) FROM stages s WHERE s.request = r.id) \
                 FROM requests r WHERE r.id = $1",
            )
            .bind(charge.0)
            .fetch_one(p)
            .await
        })
        .map_err(|e| self.db(e))?;
        Ok(ChargeRow {
            status: RequestStatus::parse(&status).ok_or_else(|| {
                LedgerError::Invalid(format!("request {} has status {status:?}", charge.0))
            })?,
            micros: Micros(micros),
            stages,
        })
    }
}

/// What [`Ledger::charge`] reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRow {
    pub status: RequestStatus,
    pub micros: Micros,
    pub stages: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reservations::{BudgetWindow, Reserve, SpendLimit};
    use crate::testing::{on_both_backends, TestDb};
    use crate::CacheOutcome;
    use imagegate_core::Stage;

    on_both_backends!(
        a_charge_is_durable_before_it_settles_and_counts_once,
        stale_charges_are_abandoned_not_forgotten
    );

    fn request() -> RequestRecord {
        RequestRecord {
            request_id: "r1".into(),
            key: "ab".repeat(32).parse().unwrap(),
            cache: CacheOutcome::Miss,
            status: RequestStatus::InProgress,
            provider: Some("openai".into()),
            model: Some("gpt-image-2".into()),
            api_key: Some("k1".into()),
            profile: "default".into(),
            wall_ms: 0.0,
        }
    }

    fn stage(stage: Stage, micros: i64) -> StageCost {
        let mut s = StageCost::new(stage);
        s.micros = Micros(micros);
        s
    }

    async fn a_charge_is_durable_before_it_settles_and_counts_once(db: TestDb) {
        let ledger = db.open().await;
        let day = SpendLimit {
            window: BudgetWindow::Daily,
            since: Utc::now() - chrono::Duration::hours(1),
            limit: Micros(100_000),
        };
        let Reserve::Granted(reservation) = ledger
            .reserve(Some("k1"), Micros(50_000), &[day], Duration::from_secs(600))
            .await
            .unwrap()
        else {
            panic!("the first reservation fits")
        };
        let charge = ledger
            .open_charge(
                &request(),
                &[stage(Stage::Generate, 40_000)],
                Some(reservation),
            )
            .await
            .unwrap();
        // Reopened as another process would: the paid stage is there, in progress.
        let other = db.open().await;
        assert_eq!(
            other.charge(charge).await.unwrap(),
            ChargeRow {
                status: RequestStatus::InProgress,
                micros: Micros(40_000),
                stages: 1
            }
        );
        // Spent 40,000 plus what is left of the reservation (10,000): not 90,000.
        assert_eq!(
            other.committed(Some("k1"), day.since).await.unwrap(),
            Micros(50_000)
        );
        ledger
            .settle_charge(
                charge,
                RequestStatus::Failed,
                &[stage(Stage::Decode, 7)],
                12.5,
                Some(reservation),
            )
            .await
            .unwrap();
        assert_eq!(
            other.charge(charge).await.unwrap(),
            ChargeRow {
                status: RequestStatus::Failed,
                micros: Micros(40_007),
                stages: 2
            }
        );
        assert_eq!(
            other.committed(Some("k1"), day.since).await.unwrap(),
            Micros(40_007)
        );
        ledger.close().await;
        other.close().await;
    }

    async fn stale_charges_are_abandoned_not_forgotten(db: TestDb) {
        let ledger = db.open().await;
        let charge = ledger
            .open_charge(&request(), &[stage(Stage::Generate, 40_000)], None)
            .await
            .unwrap();
        assert_eq!(
            ledger
                .abandon_stale_charges(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "a fresh charge may still be running"
        );
        assert_eq!(
            ledger.abandon_stale_charges(Duration::ZERO).await.unwrap(),
            1
        );
        let row = ledger.charge(charge).await.unwrap();
        assert_eq!(
            (row.status, row.micros),
            (RequestStatus::Abandoned, Micros(40_000))
        );
        ledger.close().await;
    }
}
